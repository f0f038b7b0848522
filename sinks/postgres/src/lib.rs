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

mod copy;
mod durable;
mod indexes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use sluice_client_postgres::error::ClassifiedExt;
use sluice_client_postgres::{connect_sql, ConnInfo};
use sluice_core::config::DbSinkConfig;
use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::schema::quote_ident;
use sluice_core::sink::{CommitWatermark, StoppedTables};
use sluice_core::{
    ChangeEvent, Checkpoint, Op, RawFormat, RawRows, ReplicaIdentity, Sink, TableId, TableSchema, Value,
};
use sluice_schemas::target::{pg_text, pg_type, Conv};
use tokio_postgres::types::{Kind as Kind_, ToSql, Type};
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Upsert,
    Update,
    Delete,
}

struct Batch {
    table: TableId,
    kind: Kind,
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

/// One statement parameter: an array's elements in binary form (encoded as
/// they are queued, so a value the column cannot take is found on its own
/// table's change), or text values cast by the statement.
#[derive(Debug)]
enum Param {
    Text(Vec<Option<String>>, Conv),
    Bin { enc: copy::Enc, elems: Vec<u8>, n: usize, nulls: bool },
}

impl Param {
    fn new(enc: Option<copy::Enc>, conv: Conv) -> Param {
        match enc {
            Some(enc) => Param::Bin { enc, elems: Vec::new(), n: 0, nulls: false },
            None => Param::Text(Vec::new(), conv),
        }
    }

    fn len(&self) -> usize {
        match self {
            Param::Text(v, _) => v.len(),
            Param::Bin { elems, .. } => elems.len(),
        }
    }

    fn push(&mut self, v: &Value) -> Result<(), String> {
        match self {
            Param::Text(vals, conv) => vals.push(pg_text(v, *conv)),
            Param::Bin { enc, elems, n, nulls } => {
                copy::field(v, *enc, elems)?;
                *n += 1;
                *nulls |= matches!(v, Value::Null | Value::Unchanged);
            }
        }
        Ok(())
    }

    /// Take back everything after `len` (a row that could not be encoded whole).
    fn truncate(&mut self, len: usize, rows: usize) {
        match self {
            Param::Text(v, _) => v.truncate(len),
            Param::Bin { elems, n, .. } => {
                elems.truncate(len);
                *n = rows;
            }
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Text(v, _) => v.to_sql(ty, out),
            Param::Bin { elems, n, nulls, .. } => {
                let Kind_::Array(member) = ty.kind() else { return Err(format!("{ty} is not an array type").into()) };
                let mut header = Vec::with_capacity(20);
                copy::array_header(*n, *nulls, member.oid(), &mut header);
                out.extend_from_slice(&header);
                out.extend_from_slice(elems);
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind_::Array(_))
    }

    tokio_postgres::types::to_sql_checked!();
}

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

    fn checkpoint_table(&self) -> String {
        format!("{}.sluice_checkpoints", quote_ident(self.cfg.checkpoint_schema.as_deref().unwrap_or("public")))
    }

    /// The session, once every pipelined statement has been answered.
    async fn client(&mut self) -> Result<Arc<Client>, SinkError> {
        self.settle(0).await?;
        self.client.clone().ok_or_else(|| SinkError::new(ErrorKind::Transient, "postgres sink: not connected"))
    }

    /// Await pipelined statements until at most `keep` are in flight.
    async fn settle(&mut self, keep: usize) -> Result<(), SinkError> {
        while self.pending.len() > keep {
            let (what, plain, answer) = self.pending.pop_front().expect("pending");
            if let Err(e) = answer.await {
                self.pending.clear();
                return Err(self.apply_err(what, plain, e));
            }
        }
        Ok(())
    }

    /// The error of an apply statement. A plain insert that found its key in
    /// the target marks the table for upserts and asks for a replay.
    fn apply_err(&self, what: String, plain: Option<TableId>, e: tokio_postgres::Error) -> SinkError {
        let unique = e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
        match plain {
            Some(table) if unique => {
                let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default().to_string();
                self.upserts.lock().unwrap_or_else(|p| p.into_inner()).insert(table.clone());
                SinkError::new(
                    ErrorKind::Transient,
                    format!(
                        "postgres sink: {table}: an inserted row is already in the target ({detail}); replaying from \
                         the checkpoint with upserts for this table"
                    ),
                )
            }
            _ => sql_err(what, e),
        }
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        if !self.in_tx {
            self.client().await?.batch_execute("BEGIN").await.map_err(|e| sql_err("BEGIN", e))?;
            self.in_tx = true;
        }
        Ok(())
    }

    /// Make sure the target table exists and matches `schema` (adding and
    /// dropping columns as the source did).
    async fn target(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        if let Some(t) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(&t.schema, schema) || t.schema.same_shape(schema) {
                return Ok(());
            }
        }
        self.flush_batch().await?;
        // Indexes dropped for a copy come back before the table changes shape.
        if self.targets.contains_key(&schema.id) {
            self.rebuild_indexes(&schema.id).await?;
        }
        self.begin().await?;
        let tschema = self.cfg.schema.clone().unwrap_or_else(|| schema.id.schema.clone());
        let name = format!("{}.{}", quote_ident(&tschema), quote_ident(&schema.id.name));
        let mut types = Vec::new();
        let mut convs = Vec::new();
        for c in &schema.columns {
            let (t, conv) = pg_type(c);
            types.push(t);
            convs.push(conv);
        }
        // Under REPLICA IDENTITY FULL every column is "identity": such tables
        // are matched by their whole old row, like tables without a key.
        let key: Vec<usize> = if matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing) {
            Vec::new()
        } else {
            schema.key_columns().map(|(i, _)| i).collect()
        };
        let client = self.client().await?;
        let mut same_types = false;
        match self.targets.get(&schema.id) {
            None => {
                if self.cfg.create_tables {
                    let cols: Vec<String> = schema
                        .columns
                        .iter()
                        .zip(&types)
                        .map(|(c, t)| format!("{} {t}", quote_ident(&c.name)))
                        .collect();
                    let pk = if key.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", PRIMARY KEY ({})",
                            key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect::<Vec<_>>().join(", ")
                        )
                    };
                    let ddl = format!(
                        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {name} ({}{pk})",
                        quote_ident(&tschema),
                        cols.join(", ")
                    );
                    client.batch_execute(&ddl).await.map_err(|e| sql_err(format!("creating {name}"), e))?;
                }
                // The table may predate this run: add the columns the source
                // has gained since (columns the target has beyond the source's
                // are kept: they may be the user's).
                // Each target column's type, and the type the source's column
                // maps to (both as OIDs, so spellings do not matter).
                let rows = client
                    .query(
                        "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), \
                           (SELECT to_regtype(w.t)::oid::int8 FROM unnest($3::text[], $4::text[]) AS w(n, t) WHERE w.n = a.attname) \
                         FROM pg_attribute a WHERE a.attrelid = to_regclass($1 || '.' || $2) AND a.attnum > 0 AND NOT a.attisdropped",
                        &[
                            &quote_ident(&tschema),
                            &quote_ident(&schema.id.name),
                            &schema.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                            &types,
                        ],
                    )
                    .await
                    .map_err(|e| sql_err(format!("reading the columns of {name}"), e))?;
                for r in &rows {
                    let (col, have, have_name, want) =
                        (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, String>(2), r.get::<_, Option<i64>>(3));
                    if want.is_some_and(|w| w != have) {
                        let want_name = &types[schema.column_index(&col).expect("source column")];
                        return Err(SinkError::new(
                            ErrorKind::Table,
                            format!(
                                "postgres sink: {}: column {col} changed type: it is {have_name} in the target table \
                                 {name} but {want_name} from the source; Sluice does not follow type changes: alter \
                                 the target column and copy the table again",
                                schema.id
                            ),
                        ));
                    }
                }
                if rows.is_empty() {
                    return Err(SinkError::new(
                        ErrorKind::Table,
                        format!("postgres sink: target table {name} does not exist (create it, or set sink.create_tables: true)"),
                    ));
                }
                same_types = schema.columns.iter().all(|c| {
                    rows.iter().any(|r| r.get::<_, String>(0) == c.name && r.get::<_, i64>(1) == c.type_id as i64)
                });
                let have: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
                let add: Vec<String> = schema
                    .columns
                    .iter()
                    .zip(&types)
                    .filter(|(c, _)| !have.contains(&c.name))
                    .map(|(c, t)| format!("ADD COLUMN IF NOT EXISTS {} {t}", quote_ident(&c.name)))
                    .collect();
                if !add.is_empty() {
                    let sql = format!("ALTER TABLE {name} {}", add.join(", "));
                    client.batch_execute(&sql).await.map_err(|e| sql_err(format!("altering {name}"), e))?;
                    tracing::info!(table = %schema.id, "target table altered: {}", add.join(", "));
                }
            }
            Some(old) => {
                // Schema change mid-stream: follow ADD and DROP COLUMN.

                let mut ddl = Vec::new();
                for (c, t) in schema.columns.iter().zip(&types) {
                    match old.schema.columns.iter().position(|o| o.name == c.name) {
                        None => ddl.push(format!("ADD COLUMN IF NOT EXISTS {} {t}", quote_ident(&c.name))),
                        Some(j) if old.types[j] != *t => {
                            return Err(SinkError::new(
                                ErrorKind::Table,
                                format!(
                                    "postgres sink: {}: column {} changed type from {} to {t}; Sluice does not follow \
                                     type changes: alter the target column and restart",
                                    schema.id, c.name, old.types[j]
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                for o in &old.schema.columns {
                    if schema.column_index(&o.name).is_none() && !self.cfg.keep_dropped_columns {
                        ddl.push(format!("DROP COLUMN IF EXISTS {}", quote_ident(&o.name)));
                    }
                }
                if !ddl.is_empty() {
                    let sql = format!("ALTER TABLE {name} {}", ddl.join(", "));
                    client.batch_execute(&sql).await.map_err(|e| sql_err(format!("altering {name}"), e))?;
                    tracing::info!(table = %schema.id, "target table altered: {}", ddl.join(", "));
                }
            }
        }
        let bin = schema
            .columns
            .iter()
            .zip(types.iter().zip(&convs))
            .map(|(c, (t, v))| copy::encoding(t, *v, &c.ty))
            .collect();
        self.stmts.clear();
        self.targets.insert(
            schema.id.clone(),
            Target { name, schema: schema.clone(), types, convs, key, bin, same_types, arbiter: false },
        );
        Ok(())
    }

    /// A table's copy in this run starts from empty.
    async fn start_copy(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
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
    async fn rebuild_indexes(&mut self, id: &TableId) -> Result<(), SinkError> {
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

    /// The sink's checkpoint state: stopped tables, deferred index builds
    /// and the tables that take upserts.
    fn state(&self) -> serde_json::Value {
        let mut state = self.stopped.to_state();
        if !self.deferred.is_empty() {
            if state.is_null() {
                state = serde_json::json!({});
            }
            state["deferred_indexes"] = serde_json::Value::Array(indexes::to_state(self.deferred.iter()));
        }
        let upserts = self.upserts.lock().unwrap_or_else(|p| p.into_inner());
        if !upserts.is_empty() {
            if state.is_null() {
                state = serde_json::json!({});
            }
            state["upsert_tables"] = upserts.iter().map(|t| serde_json::json!([t.schema, t.name])).collect();
        }
        state
    }

    /// The COPY buffer for snapshot rows of `table` (`None` when starting
    /// its copy stopped the table).
    async fn copy_buf(&mut self, table: &Arc<TableSchema>) -> Result<Option<usize>, SinkError> {
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
    async fn copy_raw(&mut self, raw: &RawRows) -> Result<bool, SinkError> {
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
    async fn copy_row(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
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
    async fn send_chunk(&mut self, i: usize) -> Result<(), SinkError> {
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
    async fn finish_copy(&mut self) -> Result<(), SinkError> {
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
    async fn flush_copies(&mut self) -> Result<(), SinkError> {
        for i in 0..self.copies.len() {
            if !self.copies[i].data.is_empty() {
                self.send_chunk(i).await?;
            }
        }
        self.copies.clear();
        self.finish_copy().await
    }

    fn key_values(t: &Target, row: &[Value]) -> Vec<Value> {
        t.key.iter().map(|&i| row[i].clone()).collect()
    }

    /// A hash of the key columns' values.
    fn key_hash(t: &Target, row: &[Value]) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for &i in &t.key {
            hash_value(&row[i], &mut h);
        }
        h.finish()
    }

    /// Before a table's first insert: it must have a unique index (or
    /// primary key) on exactly the key columns, immediate, without predicate
    /// or expressions: the arbiter `ON CONFLICT (key)` needs, and what makes
    /// a plain insert of a key the target has fail instead of adding a
    /// second row.
    async fn check_arbiter(&mut self, id: &TableId) -> Result<(), SinkError> {
        let t = &self.targets[id];
        if t.arbiter || t.key.is_empty() {
            return Ok(());
        }
        let name = t.name.clone();
        let key: Vec<String> = t.key.iter().map(|&i| t.schema.columns[i].name.clone()).collect();
        let client = self.client().await?;
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::text::regclass AND i.indisunique \
                   AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
                   AND i.indnkeyatts = cardinality($2::text[]) \
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                        FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                        WHERE k.ord <= i.indnkeyatts) \
                     = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
                &[&name, &key],
            )
            .await
            .map_err(|e| sql_err(format!("reading the unique indexes of {name}"), e))?
            .get(0);
        if !found {
            return Err(SinkError::new(
                ErrorKind::Table,
                format!(
                    "postgres sink: {id}: the target table {name} has no primary key or unique index on ({}), the \
                     source's key, so changes cannot be matched to its rows; add PRIMARY KEY ({}) to it",
                    key.join(", "),
                    key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.targets.get_mut(id).expect("target").arbiter = true;
        Ok(())
    }

    /// Queue one change; flushes the current batch when it cannot take it.
    async fn add(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.target(&ev.table).await?;
        if ev.op == Op::Create {
            self.check_arbiter(&ev.table.id).await?;
        }
        let keyless = self.targets.get(&ev.table.id).expect("target").key.is_empty();
        if keyless && matches!(ev.op, Op::Update | Op::Delete) {
            self.flush_batch().await?;
            return self.apply_keyless(ev).await;
        }
        if ev.op == Op::Truncate {
            self.flush_batch().await?;
            self.begin().await?;
            let sql = format!("TRUNCATE {}", self.targets.get(&ev.table.id).expect("target").name);
            self.client().await?.batch_execute(&sql).await.map_err(|e| sql_err(&sql, e))?;
            return Ok(());
        }
        let t = self.targets.get(&ev.table.id).expect("target");
        let masked =
            |row: &[Value]| -> Vec<Value> { row.iter().filter(|v| !matches!(v, Value::Unchanged)).cloned().collect() };
        // (kind, column mask, the keys it touches, values)
        let (kind, mask, touched, values) = match ev.op {
            Op::Read | Op::Create => {
                let row = &ev.after.as_ref().expect("insert has a row").values;
                let mask: Vec<bool> = row.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                (Kind::Upsert, mask, vec![Self::key_hash(t, row)], masked(row))
            }
            Op::Update => {
                let after = &ev.after.as_ref().expect("update has a row").values;
                let old = match &ev.before {
                    Some(b) if t.key.iter().all(|&i| !matches!(b.values[i], Value::Unchanged)) => &b.values,
                    _ => after,
                };
                let mask: Vec<bool> = after.iter().map(|v| !matches!(v, Value::Unchanged)).collect();
                let mut vals = Self::key_values(t, old);
                vals.extend(masked(after));
                // Both keys count as touched: a chain a→b, b→c must not share a statement.
                (Kind::Update, mask, vec![Self::key_hash(t, old), Self::key_hash(t, after)], vals)
            }
            Op::Delete => {
                let before = &ev.before.as_ref().expect("delete has a row").values;
                (Kind::Delete, vec![], vec![Self::key_hash(t, before)], Self::key_values(t, before))
            }
            Op::Truncate => unreachable!("handled above"),
        };
        let fits = match &self.batch {
            Some(b) => {
                b.table == ev.table.id
                    && b.kind == kind
                    && b.mask == mask
                    && b.rows < STATEMENT_ROWS
                    && (keyless || !touched.iter().any(|k| b.keys.contains(k)))
            }
            None => false,
        };
        if !fits {
            self.flush_batch().await?;
            let t = self.targets.get(&ev.table.id).expect("target");
            let cols = param_columns(t, kind, &mask).into_iter().map(|i| Param::new(t.bin[i], t.convs[i])).collect();
            self.batch = Some(Batch { table: ev.table.id.clone(), kind, mask, cols, rows: 0, keys: HashSet::new() });
        }
        let b = self.batch.as_mut().expect("batch");
        let lens: Vec<usize> = b.cols.iter().map(Param::len).collect();
        for (p, (c, v)) in b.cols.iter_mut().zip(&values).enumerate() {
            if let Err(e) = c.push(v) {
                for (c, len) in b.cols.iter_mut().zip(&lens) {
                    c.truncate(*len, b.rows);
                }
                let t = &self.targets[&ev.table.id];
                let col = &t.schema.columns[param_columns(t, kind, &b.mask)[p]].name;
                return Err(SinkError::new(
                    ErrorKind::Table,
                    format!("postgres sink: {}: column {col}: {e}", ev.table.id),
                ));
            }
        }
        b.rows += 1;
        if !keyless {
            b.keys.extend(touched);
        }
        Ok(())
    }

    async fn flush_batch(&mut self) -> Result<(), SinkError> {
        let Some(b) = self.batch.take() else { return Ok(()) };
        if b.rows == 0 {
            return Ok(());
        }
        self.begin().await?;
        let t = self.targets.get(&b.table).expect("target");
        let s = &t.schema;
        let q = |i: usize| quote_ident(&s.columns[i].name);
        let cast = |p: usize, i: usize| format!("u.p{p}::{}", t.types[i]);
        let param_cols = param_columns(t, b.kind, &b.mask);
        let param = |p: usize| match t.bin[param_cols[p]] {
            Some(_) => format!("${}::{}[]", p + 1, t.types[param_cols[p]]),
            None => format!("${}::text[]", p + 1),
        };
        // Inserts of a table that never met a conflict go without ON CONFLICT.
        let plain =
            (b.kind == Kind::Upsert && !t.key.is_empty() && !self.takes_upserts(&b.table)).then(|| b.table.clone());
        let sql = match b.kind {
            Kind::Upsert => {
                let cols: Vec<usize> = (0..s.columns.len()).filter(|&i| b.mask[i]).collect();
                let aliases = (0..cols.len()).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..cols.len()).map(param).collect::<Vec<_>>().join(", ");
                let select = cols.iter().enumerate().map(|(p, &i)| cast(p, i)).collect::<Vec<_>>().join(", ");
                let names = cols.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                let conflict = if t.key.is_empty() || plain.is_some() {
                    String::new()
                } else {
                    let keys = t.key.iter().map(|&i| q(i)).collect::<Vec<_>>().join(", ");
                    let sets: Vec<String> = cols
                        .iter()
                        .filter(|i| !t.key.contains(i))
                        .map(|&i| format!("{} = EXCLUDED.{}", q(i), q(i)))
                        .collect();
                    if sets.is_empty() {
                        format!(" ON CONFLICT ({keys}) DO NOTHING")
                    } else {
                        format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", sets.join(", "))
                    }
                };
                format!(
                    "INSERT INTO {} ({names}) SELECT {select} FROM unnest({params}) AS u({aliases}){conflict}",
                    t.name
                )
            }
            Kind::Update => {
                let nk = t.key.len();
                let cols: Vec<usize> = (0..s.columns.len()).filter(|&i| b.mask[i]).collect();
                let total = nk + cols.len();
                let aliases = (0..total).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..total).map(param).collect::<Vec<_>>().join(", ");
                let sets = cols
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| format!("{} = {}", q(i), cast(nk + j, i)))
                    .collect::<Vec<_>>();
                let conds =
                    t.key.iter().enumerate().map(|(p, &i)| format!("t.{} = {}", q(i), cast(p, i))).collect::<Vec<_>>();
                format!(
                    "UPDATE {} AS t SET {} FROM unnest({params}) AS u({aliases}) WHERE {}",
                    t.name,
                    sets.join(", "),
                    conds.join(" AND ")
                )
            }
            Kind::Delete => {
                let nk = t.key.len();
                let aliases = (0..nk).map(|p| format!("p{p}")).collect::<Vec<_>>().join(", ");
                let params = (0..nk).map(param).collect::<Vec<_>>().join(", ");
                let conds =
                    t.key.iter().enumerate().map(|(p, &i)| format!("t.{} = {}", q(i), cast(p, i))).collect::<Vec<_>>();
                format!(
                    "DELETE FROM {} AS t USING unnest({params}) AS u({aliases}) WHERE {}",
                    t.name,
                    conds.join(" AND ")
                )
            }
        };
        let rows = b.rows as u64;
        let params = b.cols;
        let what = format!("applying changes to {}", s.id);
        let preparing = format!("preparing for {}", s.id);
        let client = self.client.clone().ok_or_else(|| SinkError::new(ErrorKind::Transient, "not connected"))?;
        let stmt = match self.stmts.get(&sql) {
            Some(st) => st.clone(),
            None => {
                // An earlier statement's error must be the one reported, not
                // the aborted transaction's refusal to prepare.
                self.settle(0).await?;
                let st = client.prepare(&sql).await.map_err(|e| sql_err(&preparing, e))?;
                self.stmts.insert(sql, st.clone());
                st
            }
        };
        // Pipelined: the server applies this batch while the next is built.
        // The first poll sends the request, so requests leave in order.
        self.settle(MAX_IN_FLIGHT - 1).await?;
        let mut answer: Pending = Box::pin(async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            client.execute(&stmt, &refs).await
        });
        match std::future::poll_fn(|cx| std::task::Poll::Ready(answer.as_mut().poll(cx))).await {
            std::task::Poll::Ready(r) => {
                if let Err(e) = r {
                    return Err(self.apply_err(what, plain, e));
                }
            }
            std::task::Poll::Pending => self.pending.push_back((what, plain, answer)),
        }
        self.applied += rows;
        self.total += rows;
        Ok(())
    }

    /// Update/delete one row of a table without a key, matched by its full old image.
    async fn apply_keyless(&mut self, ev: &ChangeEvent) -> Result<(), SinkError> {
        self.begin().await?;
        let client = self.client().await?;
        let t = self.targets.get(&ev.table.id).expect("target");
        let s = &t.schema;
        let before = &ev.before.as_ref().ok_or_else(|| {
            SinkError::new(
                ErrorKind::Table,
                format!("postgres sink: {}: an update/delete without the old row (set REPLICA IDENTITY FULL)", s.id),
            )
        })?;
        let mut params: Vec<Option<String>> = Vec::new();
        let mut conds = Vec::new();
        for (i, v) in before.values.iter().enumerate() {
            if matches!(v, Value::Unchanged) {
                continue;
            }
            params.push(pg_text(v, t.convs[i]));
            let n = params.len();
            let (lhs, rhs) = if t.types[i].contains("json") {
                (format!("{}::jsonb", quote_ident(&s.columns[i].name)), format!("${n}::jsonb"))
            } else {
                (quote_ident(&s.columns[i].name), format!("${n}::text::{}", t.types[i]))
            };
            conds.push(format!("{lhs} IS NOT DISTINCT FROM {rhs}"));
        }
        let target_row = format!("SELECT ctid FROM {} WHERE {} LIMIT 1", t.name, conds.join(" AND "));
        let sql = match ev.op {
            Op::Delete => format!("DELETE FROM {} WHERE ctid = ({target_row})", t.name),
            _ => {
                let after = &ev.after.as_ref().expect("row").values;
                let mut sets = Vec::new();
                for (i, v) in after.iter().enumerate() {
                    if matches!(v, Value::Unchanged) {
                        continue;
                    }
                    params.push(pg_text(v, t.convs[i]));
                    sets.push(format!("{} = ${}::text::{}", quote_ident(&s.columns[i].name), params.len(), t.types[i]));
                }
                format!("UPDATE {} SET {} WHERE ctid = ({target_row})", t.name, sets.join(", "))
            }
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let types = vec![Type::TEXT; refs.len()];
        let stmt =
            client.prepare_typed(&sql, &types).await.map_err(|e| sql_err(format!("preparing for {}", s.id), e))?;
        client.execute(&stmt, &refs).await.map_err(|e| sql_err(format!("applying a change to {}", s.id), e))?;
        self.applied += 1;
        self.total += 1;
        Ok(())
    }
}

/// The table column behind each parameter of a batch statement: updates
/// carry the old key, then the columns sent; upserts the columns sent;
/// deletes the key.
fn param_columns(t: &Target, kind: Kind, mask: &[bool]) -> Vec<usize> {
    let sent = (0..t.schema.columns.len()).filter(|&i| mask.get(i).copied().unwrap_or(false));
    match kind {
        Kind::Upsert => sent.collect(),
        Kind::Update => t.key.iter().copied().chain(sent).collect(),
        Kind::Delete => t.key.clone(),
    }
}

/// Feed a value into a hasher (floats by their bits).
fn hash_value(v: &Value, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null | Value::Unchanged => {}
        Value::Bool(b) => b.hash(h),
        Value::Int(i) | Value::Time(i) | Value::Timestamp(i) | Value::TimestampTz(i) => i.hash(h),
        Value::UInt(u) => u.hash(h),
        Value::Float(f) => f.to_bits().hash(h),
        Value::Date(d) => d.hash(h),
        Value::Numeric(t) | Value::Text(t) | Value::Uuid(t) | Value::Json(t) => t.hash(h),
        Value::Bytes(b) => b.hash(h),
        Value::Array(items) => items.iter().for_each(|x| hash_value(x, h)),
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

/// `teardown`: forget the pipeline's checkpoint in the target (the
/// replicated tables stay). Returns what was done.
pub async fn forget(cfg: &DbSinkConfig, pipeline: &str) -> Result<String, SinkError> {
    let client = connect(cfg).await?;
    let sink = PostgresSink::new(cfg.clone(), pipeline);
    let table = sink.checkpoint_table();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| sql_err("looking up sluice_checkpoints", e))?
        .get(0);
    if !exists {
        return Ok("target: no sluice_checkpoints table".into());
    }
    let n = client
        .execute(&format!("DELETE FROM {table} WHERE pipeline = $1"), &[&pipeline])
        .await
        .map_err(|e| sql_err("deleting the checkpoint", e))?;
    Ok(format!("target: removed {n} checkpoint row(s) of {pipeline} from {table} (the replica tables stay)"))
}

impl Sink for PostgresSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let client = connect(&self.cfg).await?;
        let cs = self.cfg.checkpoint_schema.as_deref().unwrap_or("public");
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} (pipeline text PRIMARY KEY, position text, \
             checkpoint jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
            quote_ident(cs),
            self.checkpoint_table()
        );
        client.batch_execute(&ddl).await.map_err(|e| sql_err("creating sluice_checkpoints", e))?;
        let row = client
            .query_opt(
                &format!("SELECT checkpoint::text FROM {} WHERE pipeline = $1", self.checkpoint_table()),
                &[&self.pipeline],
            )
            .await
            .map_err(|e| sql_err("reading sluice_checkpoints", e))?;
        if let Some(r) = row {
            let text: String = r.get(0);
            let cp: Checkpoint = serde_json::from_str(&text).map_err(|e| {
                SinkError::fatal(format!(
                    "postgres sink: the checkpoint of {} in sluice_checkpoints is corrupt: {e}",
                    self.pipeline
                ))
            })?;
            self.stopped = StoppedTables::from_state(&cp.sink);
            self.deferred =
                cp.sink.get("deferred_indexes").map(indexes::from_state).unwrap_or_default().into_iter().collect();
            let stored_upserts = cp.sink.get("upsert_tables").and_then(|v| v.as_array()).into_iter().flatten();
            let mut upserts = self.upserts.lock().unwrap_or_else(|p| p.into_inner());
            for t in stored_upserts {
                if let (Some(schema), Some(name)) = (t[0].as_str(), t[1].as_str()) {
                    upserts.insert(TableId::new(schema, name));
                }
            }
            drop(upserts);
            self.stored = Some(cp);
        }
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
        // The checkpoint as the runtime will store it: with this sink's state.
        let state = self.state();
        let body =
            serde_json::to_string(&Checkpoint { sink: state.clone(), ..next.clone() }).expect("checkpoint serializes");
        let position = next.position.as_ref().map(|p| p.to_string());
        let sql = format!(
            "INSERT INTO {} (pipeline, position, checkpoint, updated_at) VALUES ($1, $2, $3::text::jsonb, now()) \
             ON CONFLICT (pipeline) DO UPDATE SET position = EXCLUDED.position, checkpoint = EXCLUDED.checkpoint, \
             updated_at = now()",
            self.checkpoint_table()
        );
        let client = self.client().await?;
        let stmt = client
            .prepare_typed(&sql, &[Type::TEXT, Type::TEXT, Type::TEXT])
            .await
            .map_err(|e| sql_err("writing the checkpoint", e))?;
        client
            .execute(&stmt, &[&self.pipeline, &position, &body])
            .await
            .map_err(|e| sql_err("writing the checkpoint", e))?;
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
