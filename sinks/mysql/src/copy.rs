//! Snapshot copies: a table's copy starts when its first snapshot row
//! arrives (or the runtime announces it), from an empty target table; its
//! rows then go through the change batches (see `apply`) as upserts.
//!
//! Invariant: `TRUNCATE` (an implicit commit, like DDL) is never used: a
//! table's snapshot copy starts with `DELETE FROM`, in the same transaction,
//! so an interrupted copy never leaves duplicates.

use std::sync::Arc;

use mysql_async::prelude::Queryable;
use sluice_core::error::SinkError;
use sluice_core::TableSchema;

use crate::{sql_err, MysqlSink};

impl MysqlSink {
    /// A table's copy in this run starts from empty (TRUNCATE would commit).
    pub(crate) async fn start_copy(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        // Marked first: a table that fails here is stopped once, not per row.
        self.copying.insert(schema.id.clone());
        self.target(schema).await?;
        self.flush_batch().await?;
        self.begin().await?;
        self.copying.insert(schema.id.clone());
        self.touched.insert(schema.id.clone());
        self.unflushed = true;
        let sql = format!("DELETE FROM {}", self.targets[&schema.id].name);
        self.conn()?.query_drop(&sql).await.map_err(|e| sql_err(&sql, e))
    }
}
