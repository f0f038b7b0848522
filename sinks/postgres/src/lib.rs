//! The Postgres replica sink: apply change events to tables in a Postgres
//! database, exactly once.
//!
//! Invariants:
//! - One target transaction holds whole source transactions (several of
//!   them: commits happen only when the runtime flushes, which it does only
//!   between source transactions) plus the checkpoint row of this pipeline in
//!   `<checkpoint_schema>.sluice_checkpoints`. A crash at any instant leaves
//!   the target at some committed prefix of source transactions together with
//!   the position to resume from; on start the runtime takes the checkpoint
//!   from that table.
//! - Values are always sent as parameters (text arrays with casts to the
//!   column types), identifiers always quoted: no value is spliced into SQL.
//! - Consecutive changes of one table and kind are applied as one statement
//!   over `unnest(...)` arrays; a batch is cut whenever a key repeats, so the
//!   order of changes to one row is kept.
//! - Inserts are upserts by key. A table's inserts go as plain `INSERT`s
//!   (no speculative insertion: markedly cheaper) until one of them finds its
//!   key already in the target, which a replica written only by this
//!   pipeline never does. That unique violation aborts the target
//!   transaction: the table is remembered (`UpsertTables`: shared by the
//!   sinks of one run, then kept in the checkpoint state), the error is
//!   transient, and the runtime replays from the checkpoint, after which the
//!   table's inserts carry `ON CONFLICT (key) DO UPDATE`. Nothing of the aborted transaction is committed, so nothing is
//!   lost or applied twice. Updates set only the columns the source
//!   sent (unchanged TOAST values are never overwritten with NULL) and may
//!   change the key; tables without a key match rows by their full old image
//!   and change one row (`ctid`) at a time.
//! - A table's snapshot copy starts with `TRUNCATE` (`DELETE` for a table
//!   referenced by a foreign key) in the same target transaction, so a copy
//!   interrupted by a crash and started again never leaves duplicates. Snapshot rows are loaded with `COPY ... FROM STDIN`
//!   (binary format where every column has a binary encoding, see `copy`),
//!   buffered per table and sent before any other change is applied, so
//!   the order of a table's snapshot and its later changes is kept. The
//!   table's indexes are dropped for the copy and rebuilt after it (see
//!   `indexes`).

//!
//! Where things are: `schema` (target tables and their DDL), `copy`
//! (snapshot loads), `apply` (change batches and their SQL), `params`
//! (statement parameters), `checkpoint` (the checkpoint row), `durable`
//! (when a commit is durable), `indexes` (dropped for a copy, rebuilt after).

mod apply;
mod checkpoint;
mod copy;
mod durable;
mod indexes;
mod params;
mod schema;

pub use checkpoint::forget;
use params::Param;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sluice_client_postgres::{connect_sql, ConnInfo};
use sluice_core::config::DbSinkConfig;
use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::schema::quote_ident;
use sluice_core::sink::{CommitWatermark, StoppedTables};
use sluice_core::{ChangeEvent, Checkpoint, Op, RawFormat, RawRows, ReplicaIdentity, Sink, TableId, TableSchema};
use sluice_schemas::target::{pg_text, pg_type, Conv};
use tokio_postgres::Client;

/// Rows per statement (each column is one array parameter).
const STATEMENT_ROWS: usize = 2000;
/// Apply statements sent ahead of their answers.
const MAX_IN_FLIGHT: usize = 4;
/// Snapshot rows buffered for one table before they go into its COPY.
const COPY_CHUNK: usize = 256 << 10;

struct Target {
    /// Quoted `schema.table`.
    name: String,
    schema: Arc<TableSchema>,
    types: Vec<String>,
    convs: Vec<Conv>,
    key: Vec<usize>,
    /// Per column, its binary encoding (COPY and statement parameters), if it has one.
    bin: Vec<Option<copy::Enc>>,
    /// Every target column has the very type (OID) of its Postgres source
    /// column: the source's binary COPY tuples load unchanged.
    same_types: bool,
    /// The target has a unique index on exactly the key (checked before the
    /// first insert: without one, inserts could not be matched to rows).
    arbiter: bool,
}

/// Snapshot rows of one table (of one schema) waiting for their COPY.
struct CopyBuf {
    schema: Arc<TableSchema>,
    /// The target's quoted name and encodings when the buffer was started.
    name: String,
    bin: Vec<Option<copy::Enc>>,
    convs: Vec<Conv>,
    binary: bool,
    /// Raw rows from the source may be appended as they are.
    same_types: bool,
    data: Vec<u8>,
}

/// The COPY the session is in.
struct ActiveCopy {
    schema: Arc<TableSchema>,
    binary: bool,
    sink: std::pin::Pin<Box<tokio_postgres::CopyInSink<bytes::Bytes>>>,
}

/// What one batch statement does to its rows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StatementKind {
    Upsert,
    Update,
    Delete,
}

struct Batch {
    table: TableId,
    kind: StatementKind,
    /// Columns carried (for updates: the columns the source sent).
    mask: Vec<bool>,
    /// Per parameter, the values so far (for updates: old key columns first,
    /// then the masked columns), already encoded.
    cols: Vec<Param>,
    rows: usize,
    /// Hashes of the keys the batch touches (a collision only cuts a batch early).
    keys: HashSet<u64>,
}

/// Tables whose plain inserts met a row already in the target: their
/// inserts are upserts from then on. Kept in the sink's checkpoint state
/// (`upsert_tables`, stored in the target with the data), and shared by the
/// sinks one run makes ([`PostgresSink::with_upsert_tables`]): the conflict
/// aborts the target transaction, so the replay that follows, by a new sink,
/// must learn it before any checkpoint could record it.
pub type UpsertTables = Arc<std::sync::Mutex<BTreeSet<TableId>>>;

/// A statement already sent, its answer not yet read.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send>>;

pub struct PostgresSink {
    cfg: DbSinkConfig,
    pipeline: String,
    client: Option<Arc<Client>>,
    /// Apply statements sent and not yet answered (pipelined within the
    /// transaction; all are awaited before anything else uses the session).
    /// With each: what it does, and for a plain insert, its table.
    pending: std::collections::VecDeque<(String, Option<TableId>, Pending)>,
    in_tx: bool,
    targets: HashMap<TableId, Target>,
    batch: Option<Batch>,
    unflushed: bool,
    applied: u64,
    copying: HashSet<TableId>,
    copies: Vec<CopyBuf>,
    active: Option<ActiveCopy>,
    /// Prepared apply statements by SQL text (cleared by DDL).
    stmts: HashMap<String, tokio_postgres::Statement>,
    stored: Option<Checkpoint>,
    stopped: StoppedTables,
    /// Tables whose indexes were dropped for their copy, with the statements
    /// that rebuild them.
    deferred: BTreeMap<TableId, Vec<String>>,
    total: u64,
    /// The target's commits return before they are durable (see `durable`).
    asynchronous: bool,
    commits: CommitWatermark,
    upserts: UpsertTables,
}

/// A target error, classified like every Postgres error
/// ([`sluice_client_postgres::classify`]). A per-table (data) error is fatal
/// here: it aborted the target transaction, which holds other tables'
/// changes too (per-table errors are found before a statement is sent, see
/// `absorb`).
fn sql_err(what: impl std::fmt::Display, e: tokio_postgres::Error) -> SinkError {
    let kind = sluice_client_postgres::classify(&e).or_fatal_for_table();
    let detail = match e.as_db_error() {
        Some(db) => format!("{}{}", db.message(), db.detail().map(|d| format!(" ({d})")).unwrap_or_default()),
        None => e.to_string(),
    };
    SinkError::new(kind, format!("postgres sink: {what}: {detail}"))
}

impl PostgresSink {
    pub fn new(cfg: DbSinkConfig, pipeline: &str) -> PostgresSink {
        PostgresSink {
            cfg,
            pipeline: pipeline.to_string(),
            client: None,
            pending: std::collections::VecDeque::new(),
            in_tx: false,
            targets: HashMap::new(),
            batch: None,
            unflushed: false,
            applied: 0,
            copying: HashSet::new(),
            copies: Vec::new(),
            active: None,
            stmts: HashMap::new(),
            stored: None,
            stopped: StoppedTables::default(),
            deferred: BTreeMap::new(),
            total: 0,
            asynchronous: false,
            commits: CommitWatermark::default(),
            upserts: UpsertTables::default(),
        }
    }

    /// Share the tables that take upserts with the other sinks of this run
    /// (the runtime makes a new sink for every restart).
    pub fn with_upsert_tables(mut self, upserts: UpsertTables) -> PostgresSink {
        self.upserts = upserts;
        self
    }

    fn takes_upserts(&self, table: &TableId) -> bool {
        self.upserts.lock().unwrap_or_else(|p| p.into_inner()).contains(table)
    }

    /// The session, once every pipelined statement has been answered.
    async fn client(&mut self) -> Result<Arc<Client>, SinkError> {
        self.settle(0).await?;
        self.client.clone().ok_or_else(|| SinkError::new(ErrorKind::Transient, "postgres sink: not connected"))
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        if !self.in_tx {
            self.client().await?.batch_execute("BEGIN").await.map_err(|e| sql_err("BEGIN", e))?;
            self.in_tx = true;
        }
        Ok(())
    }
}

async fn connect(cfg: &DbSinkConfig) -> Result<Client, SinkError> {
    let info = ConnInfo::from_url(&cfg.url, cfg.tls.as_ref(), "sink")?;
    connect_sql(&info).await.map_err(|e| SinkError::new(e.kind, format!("postgres sink: {}", e.message)))
}

/// Start-up check: the target is reachable and the credentials work (later
/// connection losses are retried).
pub async fn check(cfg: &DbSinkConfig) -> Result<(), SinkError> {
    connect(cfg).await.map(drop)
}

/// `sluice check` findings about the target (its durability settings).
pub async fn preflight(cfg: &DbSinkConfig, report: &mut sluice_core::preflight::Report) -> Result<(), SinkError> {
    durable::findings(&connect(cfg).await?, report).await
}

impl Sink for PostgresSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let client = connect(&self.cfg).await?;
        self.load_checkpoint(&client).await?;
        self.asynchronous = durable::asynchronous(&client).await?;
        if self.asynchronous {
            tracing::info!(
                "the target commits asynchronously (synchronous_commit = off): source positions are confirmed once \
                 its WAL is flushed past them"
            );
        }
        self.client = Some(Arc::new(client));
        Ok(())
    }

    async fn stored_checkpoint(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.stored.take())
    }

    async fn snapshot_started(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        self.stopped.resume(&schema.id);
        let r = self.start_copy(schema).await;
        self.stopped.absorb(&schema.id, r)
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        for ev in events {
            if self.stopped.contains(&ev.table.id) {
                continue;
            }
            let r = if ev.op == Op::Read {
                self.copy_row(ev).await
            } else {
                match self.flush_copies().await {
                    Ok(()) => match self.rebuild_indexes(&ev.table.id).await {
                        Ok(()) => self.add(ev).await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            };
            // A per-table error stops this table; the others go on.
            self.stopped.absorb(&ev.table.id, r)?;
        }
        self.unflushed = true;
        Ok(())
    }

    fn accepts_raw(&self, format: RawFormat) -> bool {
        format == RawFormat::PgBinaryCopy
    }

    async fn write_raw(&mut self, raw: &RawRows) -> Result<bool, SinkError> {
        if self.stopped.contains(&raw.schema.id) {
            return Ok(true);
        }
        let taken = match self.copy_raw(raw).await {
            Ok(taken) => taken,
            Err(e) => {
                self.stopped.absorb(&raw.schema.id, Err(e))?;
                true
            }
        };
        self.unflushed |= taken;
        Ok(taken)
    }

    fn stopped_tables(&self) -> Vec<(TableId, String)> {
        self.stopped.list()
    }

    fn tables_included(&mut self, included: &[TableId]) {
        self.stopped.retain(included);
    }

    fn wants_flush(&self) -> bool {
        self.applied >= self.cfg.batch.max_rows
    }

    fn has_unflushed(&self) -> bool {
        self.unflushed
    }

    fn max_flush_delay(&self) -> Duration {
        Duration::from_millis(self.cfg.batch.max_delay_ms)
    }

    async fn flush(
        &mut self,
        hold: &std::collections::HashSet<TableId>,
        next: &Checkpoint,
    ) -> Result<serde_json::Value, SinkError> {
        self.flush_copies().await?;
        self.flush_batch().await?;
        // Tables whose copy is done get their indexes back; those still being
        // copied keep the rebuild statements in the checkpoint.
        let done: Vec<TableId> = self.deferred.keys().filter(|t| !hold.contains(*t)).cloned().collect();
        for t in &done {
            self.rebuild_indexes(t).await?;
        }
        self.begin().await?;
        let state = self.write_checkpoint(next).await?;
        let client = self.client().await?;
        durable::commit(&client, self.asynchronous, &mut self.commits).await?;
        self.in_tx = false;
        self.applied = 0;
        self.unflushed = false;
        Ok(state)
    }

    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn durable_flushes(&mut self, wait: bool) -> Result<u64, SinkError> {
        if !self.asynchronous {
            return Ok(u64::MAX);
        }
        // Only between target transactions: the session is then idle.
        if self.commits.pending() && !self.in_tx {
            let client = self.client().await?;
            let table = self.checkpoint_table();
            durable::probe(&client, &table, &self.pipeline, wait, &mut self.commits).await?;
        }
        Ok(self.commits.durable())
    }

    fn describe(&self) -> String {
        format!("{} changes applied to Postgres", self.total)
    }

    /// A key change is an UPDATE of the stored row: unsent values stay.
    fn merges_rows(&self) -> bool {
        true
    }
}
