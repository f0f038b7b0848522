//! The runtime's own rules, with a scripted source and a recording sink (no
//! servers): the checkpoint names the lowest unacknowledged position,
//! held tables stay pending, a sink failure mid-batch restarts from the
//! checkpoint without loss or duplicates, a transactional sink's stored
//! checkpoint wins over the file, and filtered stretches advance the
//! position.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::event::{ChangeEvent, EventPosition, Op};
use crate::schema::{Column, ColumnType, TableSchema};
use crate::testing::key;
use crate::transform::NoTransforms;
use crate::value::{Row, Value};

fn table(name: &str) -> Arc<TableSchema> {
    let id = Column { source_type: "bigint".into(), type_id: 20, ..key("id", ColumnType::Int64) };
    Arc::new(crate::testing::table("public", name, vec![id]))
}

fn insert(t: &Arc<TableSchema>, id: i64, lsn: u64, snapshot: bool) -> SourceMessage {
    SourceMessage::Event(ChangeEvent {
        op: if snapshot { Op::Read } else { Op::Create },
        table: t.clone(),
        before: None,
        after: Some(Row::new(vec![Value::Int(id)])),
        commit_position: EventPosition::Lsn(lsn),
        position: EventPosition::Lsn(lsn),
        tx_id: None,
        commit_ts_us: 0,
        snapshot,
        mysql: None,
    })
}

fn pg(lsn: u64) -> Position {
    Position::Postgres { lsn }
}

/// One step of a scripted source.
#[derive(Clone)]
enum Step {
    /// A transaction committing at `lsn` with inserts of these ids into `t`.
    Tx(Arc<TableSchema>, u64, Vec<i64>),
    /// A whole snapshot copy of `t` at `lsn`.
    Snapshot(Arc<TableSchema>, u64, Vec<i64>),
    /// A snapshot copy of `t` that starts here and ends at `SnapshotEnd`.
    SnapshotStart(Arc<TableSchema>, u64, Vec<i64>),
    SnapshotEnd(TableId, u64),
    /// Idle progress outside transactions (keepalives, filtered WAL).
    Progress(u64),
}

impl Step {
    /// The stream position this step reaches (snapshots reach none).
    fn lsn(&self) -> Option<u64> {
        match self {
            Step::Tx(_, lsn, _) | Step::Progress(lsn) => Some(*lsn),
            _ => None,
        }
    }
}

#[derive(Default)]
struct SourceLog {
    /// The checkpoint position each run started from.
    started_from: Vec<Option<Position>>,
    /// Every position confirmed to the source, in order.
    confirmed: Vec<Position>,
}

struct ScriptedSource {
    script: Vec<Step>,
    log: Arc<Mutex<SourceLog>>,
}

impl Source for ScriptedSource {
    async fn run(self, mut ctx: SourceContext) -> Result<(), SourceError> {
        let from = ctx.checkpoint.position.as_ref().map(Position::lsn).unwrap_or(0);
        self.log.lock().unwrap().started_from.push(ctx.checkpoint.position.clone());
        let done = |t: &TableId| ctx.checkpoint.tables.get(t).is_some_and(|s| s.snapshot == SnapshotState::Done);
        for step in &self.script {
            let batch = match step {
                Step::Tx(t, lsn, ids) if *lsn > from => {
                    let mut b = vec![SourceMessage::Begin { commit_position: EventPosition::Lsn(*lsn) }];
                    b.extend(ids.iter().map(|&id| insert(t, id, *lsn, false)));
                    b.push(SourceMessage::Commit { position: pg(*lsn) });
                    b
                }
                Step::Snapshot(t, lsn, ids) | Step::SnapshotStart(t, lsn, ids) if !done(&t.id) => {
                    let mut b = vec![SourceMessage::TableSnapshotStarted {
                        schema: t.clone(),
                        position: pg(*lsn),
                        estimated_rows: ids.len() as u64,
                    }];
                    b.extend(ids.iter().map(|&id| insert(t, id, *lsn, true)));
                    if matches!(step, Step::Snapshot(..)) {
                        b.push(SourceMessage::TableSnapshotDone { table: t.id.clone(), rows: ids.len() as u64 });
                    }
                    b
                }
                Step::SnapshotEnd(id, rows) if !done(id) => {
                    vec![SourceMessage::TableSnapshotDone { table: id.clone(), rows: *rows }]
                }
                Step::Progress(lsn) if *lsn > from => vec![SourceMessage::Progress { position: pg(*lsn) }],
                _ => continue,
            };
            if ctx.tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
        let _ = ctx.tx.send(vec![SourceMessage::CaughtUp]).await;
        // Record what the runtime confirms until the last scripted position
        // (or until the runtime lets go of the source).
        let last = self.script.iter().filter_map(Step::lsn).max().unwrap_or(0).max(from);
        while ctx.confirmed.changed().await.is_ok() {
            if let Some(p) = ctx.confirmed.borrow_and_update().clone() {
                let done = p.lsn() >= last;
                self.log.lock().unwrap().confirmed.push(p);
                if done {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// A change made durable by the sink: table, id, commit position.
type Row3 = (String, i64, u64);

#[derive(Default)]
struct SinkLog {
    /// What the destination holds durably.
    durable: Vec<Row3>,
    /// The `hold` set of every flush.
    holds: Vec<Vec<String>>,
    /// Flush number (1-based, over all runs) that fails with a transient error, once.
    fail_flush: Option<usize>,
    flushes: usize,
    /// A transactional sink: the checkpoint stored with the data.
    stored: Option<Checkpoint>,
    transactional: bool,
    /// Flush only when the runtime must (like the Kafka sink: no flush per
    /// boundary), and ask for a checkpoint after every copy.
    lazy: bool,
    /// Writes (`w table id`) and flushes (`f`), in order.
    trace: Vec<String>,
}

struct RecordingSink {
    log: Arc<Mutex<SinkLog>>,
    pending: Vec<Row3>,
}

impl Sink for RecordingSink {
    async fn open(&mut self, state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        // Back to exactly the checkpointed state: drop what came after it.
        let mut log = self.log.lock().unwrap();
        let keep = match (log.transactional, state) {
            (true, _) => log.durable.len(),
            (false, Some(s)) => s["rows"].as_u64().unwrap_or(0) as usize,
            (false, None) => 0,
        };
        log.durable.truncate(keep);
        Ok(())
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        for ev in events {
            let Some(Value::Int(id)) = ev.after.as_ref().map(|r| r.values[0].clone()) else { panic!("{ev:?}") };
            self.pending.push((ev.table.id.name.clone(), id, ev.commit_position.lsn()));
            self.log.lock().unwrap().trace.push(format!("w {} {id}", ev.table.id.name));
        }
        Ok(())
    }

    /// Flush at every transaction boundary: many checkpoints, many places to fail.
    fn wants_flush(&self) -> bool {
        !self.pending.is_empty() && !self.log.lock().unwrap().lazy
    }
    fn has_unflushed(&self) -> bool {
        !self.pending.is_empty()
    }
    fn max_flush_delay(&self) -> Duration {
        if self.log.lock().unwrap().lazy {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(10)
        }
    }
    fn checkpoint_after_copy(&self) -> bool {
        self.log.lock().unwrap().lazy
    }

    async fn flush(&mut self, hold: &HashSet<TableId>, next: &Checkpoint) -> Result<serde_json::Value, SinkError> {
        let mut log = self.log.lock().unwrap();
        log.flushes += 1;
        log.trace.push("f".into());
        let mut held: Vec<String> = hold.iter().map(|t| t.name.clone()).collect();
        held.sort();
        log.holds.push(held);
        if log.fail_flush == Some(log.flushes) {
            // Mid-batch: part of the data reached the target, uncommitted.
            log.fail_flush = None;
            return Err(SinkError::new(ErrorKind::Transient, "target connection lost mid-flush"));
        }
        let (keep, now): (Vec<Row3>, Vec<Row3>) =
            self.pending.drain(..).partition(|(t, _, _)| hold.iter().any(|h| &h.name == t));
        self.pending = keep;
        log.durable.extend(now);
        if log.transactional {
            log.stored = Some(next.clone());
        }
        Ok(serde_json::json!({ "rows": log.durable.len() }))
    }

    async fn stored_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.log.lock().unwrap().stored.clone())
    }

    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "recording".into()
    }
}

#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<Option<Checkpoint>>>);

impl CheckpointStore for MemoryStore {
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&mut self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        *self.0.lock().unwrap() = Some(cp.clone());
        Ok(())
    }
    fn clear(&mut self) -> Result<(), CheckpointError> {
        *self.0.lock().unwrap() = None;
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

struct Harness {
    source: Arc<Mutex<SourceLog>>,
    sink: Arc<Mutex<SinkLog>>,
    store: MemoryStore,
    stats: Arc<Stats>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            source: Default::default(),
            sink: Default::default(),
            store: MemoryStore::default(),
            stats: Default::default(),
        }
    }

    async fn run(&self, script: &[Step]) -> Result<RunSummary, PipelineError> {
        let mut opts = RuntimeOptions::new("p");
        opts.until_caught_up = true;
        opts.checkpoint_interval =
            if self.sink.lock().unwrap().lazy { Duration::from_secs(3600) } else { Duration::from_millis(20) };
        opts.max_backoff = Duration::from_millis(10);
        let (_stop, shutdown) = watch::channel(false);
        let mut store = self.store.clone();
        let result = run_pipeline(
            &opts,
            || ScriptedSource { script: script.to_vec(), log: self.source.clone() },
            || RecordingSink { log: self.sink.clone(), pending: Vec::new() },
            &mut NoTransforms,
            &mut store,
            shutdown,
            self.stats.clone(),
        )
        .await;
        result
    }

    fn durable(&self) -> Vec<Row3> {
        self.sink.lock().unwrap().durable.clone()
    }

    fn checkpoint(&self) -> Checkpoint {
        self.store.0.lock().unwrap().clone().expect("a checkpoint")
    }
}

/// Every scripted change, in order, once.
fn expected(script: &[Step]) -> Vec<Row3> {
    let mut out = Vec::new();
    for step in script {
        if let Step::Tx(t, lsn, ids) | Step::Snapshot(t, lsn, ids) | Step::SnapshotStart(t, lsn, ids) = step {
            out.extend(ids.iter().map(|&id| (t.id.name.clone(), id, *lsn)));
        }
    }
    out
}

fn sorted(mut v: Vec<Row3>) -> Vec<Row3> {
    v.sort();
    v
}

#[tokio::test]
async fn checkpoint_names_the_last_durable_commit_and_only_it_is_confirmed() {
    let (a, b) = (table("a"), table("b"));
    let script = vec![
        Step::Snapshot(b.clone(), 50, vec![10, 11]),
        Step::Tx(a.clone(), 100, vec![1, 2]),
        Step::Tx(b.clone(), 200, vec![3]),
        Step::Tx(a, 300, vec![4]),
    ];
    let h = Harness::new();
    let summary = h.run(&script).await.unwrap();
    assert!(summary.caught_up);
    assert_eq!(h.durable(), expected(&script));
    assert_eq!(h.checkpoint().position, Some(pg(300)));
    let confirmed = h.source.lock().unwrap().confirmed.clone();
    assert_eq!(confirmed.last(), Some(&pg(300)), "{confirmed:?}");
    // Nothing is confirmed beyond what is durable, and confirmations only move forward.
    assert!(confirmed.windows(2).all(|w| w[0].lsn() <= w[1].lsn()), "{confirmed:?}");
    // A second run starts from the checkpoint and sends nothing again.
    h.run(&script).await.unwrap();
    assert_eq!(h.source.lock().unwrap().started_from, vec![None, Some(pg(300))]);
    assert_eq!(h.durable(), expected(&script));
}

#[tokio::test]
async fn a_sink_failure_mid_flush_restarts_from_the_checkpoint_without_loss_or_duplicates() {
    let a = table("a");
    let script: Vec<Step> =
        (1..=6).map(|i| Step::Tx(a.clone(), i * 100, vec![i as i64 * 10, i as i64 * 10 + 1])).collect();
    for fail_at in 1..=3 {
        let h = Harness::new();
        h.sink.lock().unwrap().fail_flush = Some(fail_at);
        h.run(&script).await.unwrap();
        assert_eq!(h.durable(), expected(&script), "failing flush {fail_at}");
        assert_eq!(h.stats.restarts.load(Ordering::Relaxed), 1, "failing flush {fail_at}");
        assert_eq!(h.checkpoint().position, Some(pg(600)));
        let started = h.source.lock().unwrap().started_from.clone();
        assert_eq!(started.len(), 2, "{started:?}");
        // The restart began at the checkpoint written before the failure.
        assert!(started[1].as_ref().map_or(0, Position::lsn) < 600, "{started:?}");
    }
}

#[tokio::test]
async fn a_table_being_copied_is_held_until_its_copy_is_done() {
    let (a, b) = (table("a"), table("b"));
    let script = vec![
        Step::SnapshotStart(b.clone(), 50, vec![1, 2, 3]),
        Step::Tx(a.clone(), 100, vec![7]),
        Step::Progress(150),
        Step::SnapshotEnd(b.id.clone(), 3),
        Step::Tx(b.clone(), 200, vec![4]),
    ];
    let h = Harness::new();
    h.run(&script).await.unwrap();
    assert_eq!(sorted(h.durable()), sorted(expected(&script)));
    let log = h.sink.lock().unwrap();
    // Some flush ran while b was being copied, and it held b back.
    assert!(log.holds.iter().any(|h| h == &["b".to_string()]), "{:?}", log.holds);
    // b's copied rows became durable after a's change (they were held).
    let pos = |t: &str, id: i64| log.durable.iter().position(|r| r.0 == t && r.1 == id).unwrap();
    assert!(pos("b", 1) > pos("a", 7), "{:?}", log.durable);
    drop(log);
    let cp = h.checkpoint();
    assert_eq!(cp.tables[&b.id].snapshot, SnapshotState::Done);
    assert_eq!(cp.tables[&b.id].snapshot_rows, 3);
}

#[tokio::test]
async fn a_transactional_sinks_stored_checkpoint_wins_over_a_lagging_file() {
    let a = table("a");
    let script = vec![Step::Tx(a.clone(), 100, vec![1]), Step::Tx(a.clone(), 200, vec![2])];
    let h = Harness::new();
    h.sink.lock().unwrap().transactional = true;
    h.run(&script).await.unwrap();
    // The file lags behind the target: it was written before the last commit.
    let mut old = h.checkpoint();
    old.position = Some(pg(100));
    *h.store.0.lock().unwrap() = Some(old);
    let more = [script.clone(), vec![Step::Tx(a, 300, vec![3])]].concat();
    h.run(&more).await.unwrap();
    assert_eq!(h.source.lock().unwrap().started_from.last(), Some(&Some(pg(200))));
    assert_eq!(h.durable(), expected(&more), "the change at 200 must not be applied twice");
}

#[tokio::test]
async fn filtered_stretches_advance_the_confirmed_position() {
    let a = table("a");
    // Nothing but progress after one commit: WAL of other databases or of
    // tables the pipeline leaves out.
    let script = vec![Step::Tx(a, 100, vec![1]), Step::Progress(5_000), Step::Progress(9_000)];
    let h = Harness::new();
    h.run(&script).await.unwrap();
    assert_eq!(h.checkpoint().position, Some(pg(9_000)));
    assert_eq!(h.source.lock().unwrap().confirmed.last(), Some(&pg(9_000)));
}

#[tokio::test]
async fn an_older_keepalive_never_moves_the_position_back() {
    let a = table("a");
    let script = vec![Step::Tx(a, 500, vec![1]), Step::Progress(400)];
    let h = Harness::new();
    h.run(&script).await.unwrap();
    assert_eq!(h.checkpoint().position, Some(pg(500)));
    let confirmed = h.source.lock().unwrap().confirmed.clone();
    assert!(confirmed.iter().all(|p| p.lsn() <= 500) && confirmed.last() == Some(&pg(500)), "{confirmed:?}");
}

fn my(file: &str, pos: u64) -> Position {
    Position::Mysql { file: file.into(), pos, gtid: None }
}

#[test]
fn positions_of_one_source_are_ordered() {
    assert!(pg(10) < pg(11));
    assert!(my("binlog.000009", 900) < my("binlog.000010", 4));
    assert!(my("binlog.999999", 10) < my("binlog.1000000", 4), "numbers, not text");
    assert!(my("binlog.000002", 4) < my("binlog.000002", 5));
    let with_gtid = Position::Mysql { file: "binlog.000002".into(), pos: 4, gtid: Some("0-1-5".into()) };
    assert!(my("binlog.000002", 4) < with_gtid);
    assert_ne!(my("binlog.000002", 4), with_gtid);
}

#[test]
fn idle_progress_never_moves_back_and_commits_always_move() {
    assert_eq!(later(Some(pg(500)), pg(400)), pg(500));
    assert_eq!(later(Some(pg(500)), pg(600)), pg(600));
    assert_eq!(later(Some(my("binlog.000003", 100)), my("binlog.000002", 900)), my("binlog.000003", 100));
    assert_eq!(later(None, my("binlog.000002", 900)), my("binlog.000002", 900));
    // A Postgres commit never goes behind a keepalive that passed it.
    assert_eq!(committed(Some(pg(500)), pg(450)), pg(500));
    // A MySQL source resumed by GTID on another server numbers its files anew.
    assert_eq!(committed(Some(my("binlog.000090", 100)), my("binlog.000001", 900)), my("binlog.000001", 900));
}

/// A sink that produces a copy only once a checkpoint names it (Kafka) gets
/// that checkpoint before the table's first stream change, however soon the
/// change follows the copy.
#[tokio::test]
async fn a_checkpoint_follows_each_copy_when_the_sink_asks_for_it() {
    let a = table("a");
    let script = vec![Step::Snapshot(a.clone(), 50, vec![1, 2]), Step::Tx(a, 100, vec![3])];
    let h = Harness::new();
    h.sink.lock().unwrap().lazy = true;
    h.run(&script).await.unwrap();
    assert_eq!(h.durable(), expected(&script));
    let trace = h.sink.lock().unwrap().trace.clone();
    let first_change = trace.iter().position(|t| t == "w a 3").expect("the change was written");
    assert!(trace[..first_change].iter().any(|t| t == "f"), "no checkpoint between the copy and the change: {trace:?}");
}
