//! The `Sink` trait: what a destination promises the runtime.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::Checkpoint;
use crate::error::SinkError;
use crate::event::ChangeEvent;
use crate::schema::{TableId, TableSchema};

/// A destination for change events.
///
/// Contract:
/// - `open` is called once, with the sink state stored in the last
///   checkpoint (`None` on a first run). It must bring the destination back
///   to exactly that state: whatever was written after the checkpoint is
///   discarded or ignored, because the source will send it again.
/// - `write` may buffer. Nothing written is durable until `flush`.
/// - `flush` makes every event written so far durable — except events of the
///   tables in `hold`, which stay pending (their snapshot is still being
///   copied) — and returns the state to record in the checkpoint. The runtime
///   calls it only at transaction boundaries.
/// - `checkpointed` is called after that checkpoint is durable; a sink may
///   only now publish what it staged (e.g. rename files into place). A crash
///   before it is called must be repaired by the next `open`.
/// - Transactional sinks (databases) keep the checkpoint themselves, in the
///   same target transaction as the data: `flush` receives the checkpoint
///   being taken (`next`) to store with the data, and `stored_checkpoint`
///   returns the last one stored; the runtime then starts from it rather
///   than from its own file, which may lag behind the target.
/// - Order: events of one table are kept in the order written.
pub trait Sink: Send {
    fn open(&mut self, state: Option<&serde_json::Value>) -> impl Future<Output = Result<(), SinkError>> + Send;
    fn write(&mut self, events: &[ChangeEvent]) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// True when buffered data should be flushed at the next transaction boundary.
    fn wants_flush(&self) -> bool;
    /// True when something was written since the last flush.
    fn has_unflushed(&self) -> bool;
    /// Longest time written data may wait for a flush.
    fn max_flush_delay(&self) -> Duration;
    fn flush(
        &mut self,
        hold: &HashSet<TableId>,
        next: &Checkpoint,
    ) -> impl Future<Output = Result<serde_json::Value, SinkError>> + Send;
    /// The checkpoint stored in the destination with the data (after `open`).
    fn stored_checkpoint(&mut self) -> impl Future<Output = Result<Option<Checkpoint>, SinkError>> + Send {
        async { Ok(None) }
    }
    fn checkpointed(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// A table's snapshot copy begins (before any of its rows, also for an
    /// empty table). Replica sinks create the table and empty it here, in
    /// the transaction that will hold the rows.
    fn snapshot_started(&mut self, schema: &Arc<TableSchema>) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = schema;
        async { Ok(()) }
    }
    /// True when the sink may be handed snapshot rows in `format` unchanged
    /// ([`Self::write_raw`]).
    fn accepts_raw(&self, format: crate::source::RawFormat) -> bool {
        let _ = format;
        false
    }
    /// Snapshot rows in the source's wire form (only of a format
    /// [`Self::accepts_raw`] accepted). Returns false when the sink would
    /// rather have them decoded: the runtime then writes the decoded events.
    fn write_raw(&mut self, raw: &crate::source::RawRows) -> impl Future<Output = Result<bool, SinkError>> + Send {
        let _ = raw;
        async { Ok(false) }
    }
    /// The tables this run includes (sent once at start): state kept for
    /// other tables may be forgotten.
    fn tables_included(&mut self, included: &[TableId]) {
        let _ = included;
    }
    /// Tables this sink stopped applying after a per-table error, with the
    /// error; the run reports them and ends with a failure.
    fn stopped_tables(&self) -> Vec<(TableId, String)> {
        Vec::new()
    }
    /// Human-readable summary for the end-of-run report.
    fn describe(&self) -> String;
}

/// Tables a sink has stopped after a per-table error ([`crate::ErrorKind::Table`]):
/// their changes are skipped, the other tables go on. Kept in the sink's
/// checkpoint state (so a restart keeps them stopped), and lifted when the
/// table's snapshot starts again (a re-copy brings it back in line).
#[derive(Debug, Default, Clone)]
pub struct StoppedTables {
    tables: std::collections::BTreeMap<TableId, String>,
}

impl StoppedTables {
    pub fn contains(&self, id: &TableId) -> bool {
        !self.tables.is_empty() && self.tables.contains_key(id)
    }

    /// The outcome of applying a change of `id`: a per-table error stops
    /// that table, or the one it names (and is consumed), anything else
    /// passes through.
    pub fn absorb(&mut self, id: &TableId, r: Result<(), SinkError>) -> Result<(), SinkError> {
        match r {
            Err(e) if e.kind == crate::ErrorKind::Table => {
                self.stop(e.table.as_ref().unwrap_or(id), &e);
                Ok(())
            }
            r => r,
        }
    }

    /// Stop `id` because of `error`.
    pub fn stop(&mut self, id: &TableId, error: &SinkError) {
        tracing::error!(
            table = %id,
            "{error}; the table is stopped (its changes are skipped, the other tables go on); fix the cause, then \
             re-copy it: drop it from tables.include for one run and add it back"
        );
        self.tables.insert(id.clone(), error.message.clone());
    }

    /// Forget tables no longer included (added back, they are copied again).
    pub fn retain(&mut self, included: &[TableId]) {
        self.tables.retain(|t, _| included.contains(t));
    }

    /// The table's snapshot starts again: apply it again.
    pub fn resume(&mut self, id: &TableId) {
        if self.tables.remove(id).is_some() {
            tracing::info!(table = %id, "stopped table is copied again; applying its changes again");
        }
    }

    pub fn list(&self) -> Vec<(TableId, String)> {
        self.tables.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// As sink checkpoint state (`null` when none).
    pub fn to_state(&self) -> serde_json::Value {
        if self.tables.is_empty() {
            return serde_json::Value::Null;
        }
        let list: Vec<serde_json::Value> =
            self.tables.iter().map(|(k, v)| serde_json::json!([k.schema, k.name, v])).collect();
        serde_json::json!({ "stopped_tables": list })
    }

    /// From sink checkpoint state written by [`Self::to_state`].
    pub fn from_state(state: &serde_json::Value) -> StoppedTables {
        let mut out = StoppedTables::default();
        for t in state.get("stopped_tables").and_then(|v| v.as_array()).into_iter().flatten() {
            if let (Some(s), Some(n), Some(e)) = (t.get(0), t.get(1), t.get(2)) {
                if let (Some(s), Some(n), Some(e)) = (s.as_str(), n.as_str(), e.as_str()) {
                    let id = TableId::new(s, n);
                    tracing::error!(table = %id, "table stopped earlier: {e}; its changes are skipped until it is copied again");
                    out.tables.insert(id, e.to_string());
                }
            }
        }
        out
    }
}
