//! Snapshot rows into the target with `COPY ... FROM STDIN`.
//!
//! Invariants:
//! - A table's copy starts with `TRUNCATE` (`DELETE` for a table referenced
//!   by a foreign key) in the same target transaction, so a copy interrupted
//!   by a crash and started again never leaves duplicates.
//! - Snapshot rows are buffered per table and sent before any other change
//!   is applied, so a table's snapshot and its later changes keep their order.
//! - The table's indexes are dropped for the copy and rebuilt after it (see
//!   `indexes`); the rebuild statements stay in the checkpoint until then.
//! - Encoding (`encode`) never guesses: a value its column cannot take is an
//!   error naming the column.

mod encode;

pub use encode::*;

use futures_util::SinkExt;

use std::sync::Arc;

use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::{ChangeEvent, RawRows, TableId, TableSchema};

use crate::*;

impl PostgresSink {
    /// A table's copy in this run starts from empty.
    pub(crate) async fn start_copy(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        self.flush_copies().await?;
        self.target(schema).await?;
        self.flush_batch().await?;
        self.begin().await?;
        self.copying.insert(schema.id.clone());
        let name = self.targets[&schema.id].name.clone();
        self.unflushed = true;
        let client = self.client().await?;
        let plan = indexes::plan(&client, &name)
            .await
            .map_err(|e| sql_err(format!("reading the indexes and foreign keys of {name}"), e))?;
        // A table another table references by a foreign key cannot be
        // truncated: its rows are deleted (which fails, clearly, only if
        // some referencing row needs them).
        let mut sql = if plan.referenced { format!("DELETE FROM {name}") } else { format!("TRUNCATE {name}") };
        // Indexes dropped for an earlier copy (in this transaction or in a
        // committed one, as the checkpoint says) stay dropped.
        let deferral = plan.deferral.filter(|_| !self.deferred.contains_key(&schema.id));
        if let Some(d) = &deferral {
            sql = std::iter::once(sql).chain(d.drop.iter().cloned()).collect::<Vec<_>>().join("; ");
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| sql_err(format!("emptying {name} for its copy (and dropping its indexes)"), e))?;
        if let Some(d) = deferral {
            tracing::debug!(table = %schema.id, "{} index(es) dropped for the copy, rebuilt after it", d.rebuild.len());
            self.deferred.insert(schema.id.clone(), d.rebuild);
        }
        Ok(())
    }

    /// Build the indexes dropped for `id`'s copy (after every row buffered
    /// for it has gone in).
    pub(crate) async fn rebuild_indexes(&mut self, id: &TableId) -> Result<(), SinkError> {
        if !self.deferred.contains_key(id) {
            return Ok(());
        }
        self.flush_copies().await?;
        self.begin().await?;
        let stmts = self.deferred.remove(id).expect("deferred");
        let client = self.client().await?;
        client
            .batch_execute(&stmts.join("; "))
            .await
            .map_err(|e| sql_err(format!("rebuilding the indexes of {id} after its copy"), e))?;
        tracing::debug!(table = %id, "{} index(es) rebuilt after the copy", stmts.len());
        Ok(())
    }

    /// The COPY buffer for snapshot rows of `table` (`None` when starting
    /// its copy stopped the table).
    pub(crate) async fn copy_buf(&mut self, table: &Arc<TableSchema>) -> Result<Option<usize>, SinkError> {
        // The common case, per row: a buffer of this very schema exists.
        if let Some(i) = self.copies.iter().position(|c| Arc::ptr_eq(&c.schema, table)) {
            return Ok(Some(i));
        }
        if !self.copying.contains(&table.id) {
            // No TableSnapshotStarted seen for it: start it here.
            self.snapshot_started(table).await?;
            if self.stopped.contains(&table.id) {
                return Ok(None);
            }
        }
        if !self.targets.get(&table.id).is_some_and(|t| t.schema.same_shape(table)) {
            // A new table, or a new schema: rows buffered so far go first.
            self.flush_copies().await?;
            self.target(table).await?;
        }
        let t = self.targets.get(&table.id).expect("target");
        self.copies.push(CopyBuf {
            schema: table.clone(),
            name: t.name.clone(),
            bin: t.bin.clone(),
            convs: t.convs.clone(),
            binary: t.bin.iter().all(Option::is_some),
            same_types: t.same_types,
            data: Vec::with_capacity(COPY_CHUNK + (64 << 10)),
        });
        Ok(Some(self.copies.len() - 1))
    }

    /// Append raw binary COPY tuples of the source to the table's COPY, when
    /// the target's columns have the source's very types (false: they need
    /// decoding and encoding for the target's types).
    pub(crate) async fn copy_raw(&mut self, raw: &RawRows) -> Result<bool, SinkError> {
        let Some(i) = self.copy_buf(&raw.schema).await? else { return Ok(true) };
        let buf = &mut self.copies[i];
        if !(buf.binary && buf.same_types) {
            return Ok(false);
        }
        buf.data.extend_from_slice(&raw.data);
        self.total += raw.rows;
        if buf.data.len() >= COPY_CHUNK {
            self.send_chunk(i).await?;
        }
        Ok(true)
    }

    /// Buffer one snapshot row for the table's COPY.
    pub(crate) async fn copy_row(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        let Some(i) = self.copy_buf(&ev.table).await? else { return Ok(()) };
        let buf = &mut self.copies[i];
        let row = &ev.after.as_ref().expect("snapshot row").values;
        if buf.binary {
            let start = buf.data.len();
            if let Err(e) = copy::binary_row(&mut buf.data, row, &buf.bin) {
                buf.data.truncate(start); // no half row in the stream
                return Err(SinkError::new(ErrorKind::Table, format!("postgres sink: {}: {e}", buf.schema.id)));
            }
        } else {
            copy::text_row(&mut buf.data, row, &buf.convs);
        }
        // Not counted towards `batch.max_rows`: an interrupted table is
        // copied again from scratch, so commits inside a copy buy nothing.
        self.total += 1;
        if buf.data.len() >= COPY_CHUNK {
            self.send_chunk(i).await?;
        }
        Ok(())
    }

    /// Send buffer `i`'s rows into its table's COPY, starting that COPY (and
    /// ending another) if needed. The COPY stays open, so the server loads
    /// while the next rows are encoded.
    pub(crate) async fn send_chunk(&mut self, i: usize) -> Result<(), SinkError> {
        let what = format!("copying snapshot rows into {}", self.copies[i].name);
        if !self.active.as_ref().is_some_and(|a| Arc::ptr_eq(&a.schema, &self.copies[i].schema)) {
            self.finish_copy().await?;
            self.begin().await?;
            let client = self.client().await?;
            let buf = &self.copies[i];
            let cols = buf.schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
            let format = if buf.binary { " (FORMAT binary)" } else { "" };
            let sql = format!("COPY {} ({cols}) FROM STDIN{format}", buf.name);
            let mut sink = Box::pin(client.copy_in::<_, bytes::Bytes>(&sql).await.map_err(|e| sql_err(&what, e))?);
            if buf.binary {
                let mut header = Vec::new();
                copy::binary_header(&mut header);
                sink.send(bytes::Bytes::from(header)).await.map_err(|e| sql_err(&what, e))?;
            }
            self.active = Some(ActiveCopy { schema: buf.schema.clone(), binary: buf.binary, sink });
        }
        let data = std::mem::replace(&mut self.copies[i].data, Vec::with_capacity(COPY_CHUNK + (64 << 10)));
        let a = self.active.as_mut().expect("active copy");
        a.sink.send(bytes::Bytes::from(data)).await.map_err(|e| sql_err(what, e))
    }

    /// End the open COPY, if any.
    pub(crate) async fn finish_copy(&mut self) -> Result<(), SinkError> {
        let Some(mut a) = self.active.take() else { return Ok(()) };
        let what = format!("copying snapshot rows into {}", a.schema.id);
        if a.binary {
            let mut trailer = Vec::new();
            copy::binary_trailer(&mut trailer);
            a.sink.send(bytes::Bytes::from(trailer)).await.map_err(|e| sql_err(&what, e))?;
        }
        a.sink.as_mut().finish().await.map_err(|e| sql_err(&what, e))?;
        Ok(())
    }

    /// Send every buffered snapshot row and end the COPY: the session is free
    /// for other statements afterwards.
    pub(crate) async fn flush_copies(&mut self) -> Result<(), SinkError> {
        for i in 0..self.copies.len() {
            if !self.copies[i].data.is_empty() {
                self.send_chunk(i).await?;
            }
        }
        self.copies.clear();
        self.finish_copy().await
    }
}
