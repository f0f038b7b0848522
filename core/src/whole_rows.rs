//! Whole new rows for consumers that cannot merge a change into a row they
//! already hold.
//!
//! Postgres leaves an unchanged TOASTed value out of an UPDATE's new row
//! ([`Value::Unchanged`]). A replica applies the update onto the row it has
//! and keeps the value. A consumer that gets a *fresh* row cannot: a key
//! change sent as a delete of the old key and a create of the new one
//! (Kafka, Parquet/Arrow), a filter that turns an update into an upsert
//! (`c`), or an insert that arrives with unsent values. For those events the
//! runtime reads the missing columns of the new key from the source
//! ([`RowReader`]) before the transforms run (so masks and filters see them).
//!
//! Invariants:
//! - Only values the source did not send are filled; nothing sent changes.
//! - A value read this way is as new as the event's or newer (the read comes
//!   after the event's commit), and the stream delivers every later change
//!   of that row after it, so a consumer replaying the output converges to
//!   the source. A row gone by the time of the read (deleted or moved to
//!   another key later) stays as it was: the change that removed it follows.
//! - The read sees the events' own transactions (a server may send a commit
//!   before other sessions see it: the reader waits until they do).
//! - One read per table per batch of source messages, whatever its size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::SourceError;
use crate::event::{ChangeEvent, Op};
use crate::schema::TableSchema;
use crate::source::SourceMessage;
use crate::transform::Transform;
use crate::value::Value;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reads current rows of source tables by key (provided by a source whose
/// updates can leave values out).
pub trait RowReader: Send + Sync {
    /// The current values of `columns` (indices into `table.columns`) of the
    /// rows whose key columns (in column order) equal each of `keys`; `None`
    /// for a key no row has now. The read must see the effects of the source
    /// transactions `txs` (the events' own: a server can stream a commit
    /// before other sessions see it). A table or column that no longer
    /// exists reads as `None` (its drop or change is in the stream).
    fn read<'a>(
        &'a self,
        table: &'a TableSchema,
        columns: &'a [usize],
        keys: &'a [Vec<Value>],
        txs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<Value>>>, SourceError>>;
}

/// How many keys one read asks for at most.
const KEYS_PER_READ: usize = 500;

/// Fills the unsent values of the events that need them.
pub(crate) struct Completer {
    pub reader: Arc<dyn RowReader>,
    /// The sink sends a key change as a fresh row of the new key.
    pub key_changes: bool,
}

impl Completer {
    /// Does `ev` need its unsent values (before transforms)?
    fn needs(&self, ev: &ChangeEvent, transforms: &mut dyn Transform) -> bool {
        let Some(after) = &ev.after else { return false };
        if !after.values.iter().any(|v| matches!(v, Value::Unchanged)) {
            return false;
        }
        match ev.op {
            Op::Create | Op::Read => true,
            Op::Update => (self.key_changes && ev.key_changed()) || transforms.updates_become_rows(&ev.table),
            Op::Delete | Op::Truncate => false,
        }
    }

    /// Complete the events of `batch` that need it, in place. Returns how
    /// many events were filled.
    pub async fn complete(
        &self,
        batch: &mut [SourceMessage],
        transforms: &mut dyn Transform,
    ) -> Result<u64, SourceError> {
        // Events to fill, grouped by table schema (few tables per batch).
        let mut groups: Vec<(Arc<TableSchema>, Vec<usize>)> = Vec::new();
        for (i, msg) in batch.iter().enumerate() {
            let SourceMessage::Event(ev) = msg else { continue };
            if !self.needs(ev, transforms) {
                continue;
            }
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &ev.table)) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((ev.table.clone(), vec![i])),
            }
        }
        let mut read = 0;
        for (table, idx) in groups {
            read += self.complete_table(&table, &idx, batch).await?;
        }
        Ok(read)
    }

    async fn complete_table(
        &self,
        table: &TableSchema,
        idx: &[usize],
        batch: &mut [SourceMessage],
    ) -> Result<u64, SourceError> {
        let key_cols: Vec<usize> = table.key_columns().map(|(i, _)| i).collect();
        if key_cols.is_empty() {
            return Ok(0);
        }
        let after = |m: &SourceMessage| match m {
            SourceMessage::Event(ChangeEvent { after: Some(a), .. }) => a.values.clone(),
            _ => Vec::new(),
        };
        // The columns any of them lacks, and their distinct keys.
        let mut columns: Vec<usize> = Vec::new();
        let mut keys: Vec<Vec<Value>> = Vec::new();
        let mut txs: Vec<u64> = Vec::new();
        let mut event_key: Vec<Option<usize>> = Vec::with_capacity(idx.len());
        for &i in idx {
            if let SourceMessage::Event(ChangeEvent { tx_id: Some(tx), .. }) = &batch[i] {
                if !txs.contains(tx) {
                    txs.push(*tx);
                }
            }
            let values = after(&batch[i]);
            for (c, v) in values.iter().enumerate() {
                if matches!(v, Value::Unchanged) && !columns.contains(&c) {
                    columns.push(c);
                }
            }
            let key: Vec<Value> = key_cols.iter().map(|&c| values.get(c).cloned().unwrap_or(Value::Null)).collect();
            if key.iter().any(|v| matches!(v, Value::Null | Value::Unchanged)) {
                event_key.push(None);
                continue;
            }
            let k = match keys.iter().position(|k| *k == key) {
                Some(k) => k,
                None => {
                    keys.push(key);
                    keys.len() - 1
                }
            };
            event_key.push(Some(k));
        }
        columns.sort_unstable();
        let mut rows: Vec<Option<Vec<Value>>> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_READ) {
            let got = self.reader.read(table, &columns, chunk, &txs).await?;
            if got.len() != chunk.len() {
                return Err(SourceError::fatal(format!(
                    "reading rows of {} to complete key changes: asked for {} keys, got {} answers",
                    table.id,
                    chunk.len(),
                    got.len()
                )));
            }
            rows.extend(got);
        }
        let mut filled = 0;
        for (&i, k) in idx.iter().zip(event_key) {
            let Some(row) = k.and_then(|k| rows[k].as_ref()) else { continue };
            let SourceMessage::Event(ChangeEvent { after: Some(a), .. }) = &mut batch[i] else { continue };
            for (&c, v) in columns.iter().zip(row) {
                if let Some(slot) = a.values.get_mut(c) {
                    if matches!(slot, Value::Unchanged) {
                        *slot = v.clone();
                    }
                }
            }
            filled += 1;
        }
        Ok(filled)
    }
}
