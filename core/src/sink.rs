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
    /// Human-readable summary for the end-of-run report.
    fn describe(&self) -> String;
}
