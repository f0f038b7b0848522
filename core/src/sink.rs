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
/// - `flush` makes every event written so far durable and returns the state
///   to record in the checkpoint. The runtime calls it only at transaction
///   boundaries. Tables in `hold` are still being copied (the checkpoint
///   records their copy as in progress): a sink may keep their rows pending
///   (the files sink does, so a file never shows part of a copy) or make
///   them durable with the rest (the replica sinks do, in the same target
///   transaction as the checkpoint). Either way a copy interrupted by a
///   crash is done again from scratch, so rows made durable early must be
///   replaced when it starts again (`snapshot_started`: the replicas empty
///   the table in the transaction that holds the new rows).
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
    /// The checkpoint of the last flush is stored. A sink may write more
    /// now (what it staged until that checkpoint named it); it then reports
    /// [`Sink::wrote_after_checkpoint`].
    fn checkpointed(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// True when a table's stream changes may be written only after a
    /// checkpoint has recorded that its copy is complete (the Kafka sink
    /// produces a copy once the checkpoint names it, and the table's changes
    /// must follow it). The runtime then checkpoints at the first boundary
    /// after a copy completes, before it takes the source's next batch.
    fn checkpoint_after_copy(&self) -> bool {
        false
    }
    /// True when `checkpointed` wrote data that no flush has covered yet.
    /// Before a run ends the runtime flushes again while this holds (at
    /// most three times; whatever is left, the next run replays from the
    /// stored checkpoint).
    fn wrote_after_checkpoint(&self) -> bool {
        false
    }
    /// How many of this sink's `flush` calls so far are durable. A target
    /// that acknowledges commits before making them durable (Postgres with
    /// `synchronous_commit = off`, InnoDB with `innodb_flush_log_at_trx_commit`
    /// 0 or 2) is tracked by each commit's log position against the target's
    /// flushed log ([`CommitWatermark`]); the runtime confirms a position to
    /// the source only once the flush that stored it is durable. With `wait`
    /// the run is ending: make the flushes durable now where the target has a
    /// way, or wait for them a little. Default: a flush is durable when it
    /// returns.
    fn durable_flushes(&mut self, wait: bool) -> impl Future<Output = Result<u64, SinkError>> + Send {
        let _ = wait;
        async { Ok(u64::MAX) }
    }
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
    /// True when the destination applies an update onto the row it already
    /// holds (replicas), so values the source did not send keep their stored
    /// value even across a key change. False for sinks whose consumers get a
    /// key change as a fresh row of the new key (files, Kafka): the runtime
    /// then reads such rows' unsent values from the source first
    /// ([`crate::whole_rows`]).
    fn merges_rows(&self) -> bool {
        false
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

/// Which of a transactional sink's commits are durable, for targets that
/// acknowledge a commit before flushing it: each commit's position in the
/// target's log (WAL, redo log) is remembered, and a commit is durable once
/// the target's flushed log has passed it. A log is written in order, so a
/// durable commit makes every earlier one durable too.
#[derive(Debug, Default)]
pub struct CommitWatermark {
    /// Commits so far (the sink's `flush` calls that committed).
    commits: u64,
    /// Commits known durable.
    durable: u64,
    /// (commit number, end of its commit record in the target's log), oldest first.
    pending: std::collections::VecDeque<(u64, u64)>,
}

impl CommitWatermark {
    /// A commit whose record ends at `log_pos` in the target's log, or, with
    /// `None`, one that is durable already (and so is every earlier one).
    pub fn committed(&mut self, log_pos: Option<u64>) {
        self.commits += 1;
        match log_pos {
            Some(p) => self.pending.push_back((self.commits, p)),
            None => self.all_durable(),
        }
    }

    /// The target's log is durable up to `flushed`.
    pub fn flushed_to(&mut self, flushed: u64) {
        while let Some(&(n, p)) = self.pending.front() {
            if p > flushed {
                break;
            }
            self.durable = n;
            self.pending.pop_front();
        }
    }

    /// Everything committed so far is durable.
    pub fn all_durable(&mut self) {
        self.durable = self.commits;
        self.pending.clear();
    }

    /// Commits known durable (the answer to [`Sink::durable_flushes`]).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Commits not yet known durable.
    pub fn pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The log position the newest pending commit needs flushed.
    pub fn newest_pending(&self) -> Option<u64> {
        self.pending.back().map(|&(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::CommitWatermark;

    #[test]
    fn watermark_follows_the_flushed_log() {
        let mut w = CommitWatermark::default();
        w.committed(Some(100));
        w.committed(Some(200));
        w.committed(Some(300));
        assert_eq!(w.durable(), 0);
        w.flushed_to(99);
        assert_eq!(w.durable(), 0);
        w.flushed_to(200);
        assert_eq!(w.durable(), 2);
        assert!(w.pending());
        assert_eq!(w.newest_pending(), Some(300));
        // A synchronous commit makes every earlier one durable.
        w.committed(None);
        assert_eq!(w.durable(), 4);
        assert!(!w.pending());
        // The flushed log never moves a watermark back.
        w.committed(Some(400));
        w.flushed_to(50);
        assert_eq!(w.durable(), 4);
    }
}
