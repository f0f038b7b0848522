//! The binlog stream: dump request, event loop, transaction boundaries.
//!
//! Invariants:
//! - The position only advances at a transaction's end: its XID event (or
//!   `COMMIT`/`ROLLBACK` query for non-transactional tables) or, for a
//!   standalone statement (DDL), the end of that statement's event. The
//!   position sent is the byte just past that event, plus the GTID state
//!   including the transaction, so a restart from it resumes with the next
//!   transaction — by GTID (`@slave_connect_state` on MariaDB,
//!   COM_BINLOG_DUMP_GTID on MySQL) when a GTID state is known, else by file
//!   and offset.
//! - Changes of a table are emitted only from transactions that start at or
//!   after that table's snapshot coordinate.
//! - A transaction with no change to an included table produces no
//!   `Begin`/`Commit`, only a `Progress` with its end position.
//! - A purged binlog (server error 1236) is fatal with what to do, never
//!   skipped. Lost or silent connections (no event, not even a heartbeat, for
//!   three heartbeat periods) are transient.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn};
use mysql_common::binlog::events::{Event, TableMapEvent};
use sluice_core::config::TablesConfig;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::{
    BinlogFile, ChangeEvent, EventGtid, MysqlOrigin, Op, Position, Row, SourceContext, SourceMessage, TableId,
    TableSchema,
};

use crate::catalog;
use crate::charset::Collations;
use crate::conn::{classify, sql_error, ConnInfo, Flavor};
use crate::decoding::{self, TablePlan};
use crate::position::{file_seq, pack, Coord, Gtid, GtidState};

/// Heartbeat period asked of the server.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
const BATCH: usize = 1024;
const LINGER: Duration = Duration::from_millis(5);

/// Where to start reading.
pub struct Start {
    pub coord: Coord,
    pub gtid: GtidState,
    /// Resume by GTID rather than by file and offset.
    pub by_gtid: bool,
}

pub struct StreamSetup {
    pub info: ConnInfo,
    pub flavor: Flavor,
    pub server_id: u32,
    pub tables: TablesConfig,
    /// Table → snapshot coordinate key: changes from transactions starting
    /// before it are in the copy.
    pub admit_from: HashMap<TableId, (u64, u64)>,
    /// `--until-caught-up` target (the binlog end when the run started).
    pub target: Option<Coord>,
    /// Catalog schemas already read (by the snapshot).
    pub schemas: HashMap<TableId, Arc<TableSchema>>,
    /// The included tables that existed at start. A matching table first
    /// seen in the stream was created since: it is announced as snapshotted
    /// (empty) at its first transaction, so a restart does not copy it again.
    pub known: std::collections::HashSet<TableId>,
    /// The server's collation ids (read when the stream starts).
    pub collations: Collations,
    /// Tables whose changes cannot be decoded: stopped (announced with
    /// [`SourceMessage::TableFailed`]), their changes skipped.
    pub failed: std::collections::HashSet<TableId>,
}

/// The next row change of a rows event of `kind` (`c`, `d` or `u`).
fn decode_change(
    kind: u8,
    plan: &TablePlan,
    rows: &[u8],
    at: &mut usize,
    hdr: &decoding::RowsHeader<'_>,
    nb: usize,
    na: usize,
) -> Result<(Op, Option<Row>, Option<Row>), decoding::DecodeError> {
    Ok(match kind {
        b'c' => (Op::Create, None, Some(Row::new(decoding::decode_row(plan, rows, at, hdr.present_after, na)?))),
        b'd' => (Op::Delete, Some(Row::new(decoding::decode_row(plan, rows, at, hdr.present_before, nb)?)), None),
        _ => {
            let b = decoding::decode_row(plan, rows, at, hdr.present_before, nb)?;
            let a = decoding::decode_row(plan, rows, at, hdr.present_after, na)?;
            (Op::Update, Some(Row::new(b)), Some(Row::new(a)))
        }
    })
}

/// Stop `id` (once): a change of it cannot be decoded.
fn fail_table(setup: &mut StreamSetup, out: &mut Vec<SourceMessage>, id: &TableId, error: String) {
    if setup.failed.insert(id.clone()) {
        out.push(SourceMessage::TableFailed { table: id.clone(), error });
    }
}

struct CachedMap {
    raw: Vec<u8>,
    plan: Option<Arc<TablePlan>>,
}

fn purged(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1236)
}

fn stream_error(e: mysql_async::Error, start: &Start) -> SourceError {
    if purged(&e) {
        return SourceError::fatal(format!(
            "the binlog holding the checkpoint position {}:{}{} is no longer on the server ({e}): the changes since then \
             are lost to Sluice. Run `sluice teardown --yes PIPELINE.yaml` and run the pipeline again to take a new \
             snapshot (and keep binlogs longer: binlog_expire_logs_seconds / expire_logs_days)",
            start.coord.file,
            start.coord.pos,
            start.gtid.render().map(|g| format!(" (GTID {g})")).unwrap_or_default()
        ));
    }
    let kind = match classify(&e) {
        ErrorKind::Fatal if matches!(e, mysql_async::Error::Server(ref s) if s.code == 1227 || s.code == 1045) => {
            ErrorKind::Fatal
        }
        ErrorKind::Fatal => ErrorKind::Fatal,
        k => k,
    };
    SourceError::new(kind, format!("binlog stream: {e}")).with_source(e)
}

/// Open the dump connection.
async fn open(setup: &StreamSetup, start: &Start) -> Result<mysql_async::BinlogStream, SourceError> {
    let mut conn: Conn = setup.info.connect().await?;
    let ns = HEARTBEAT.as_nanos() as u64;
    conn.query_drop(format!("SET @master_heartbeat_period = {ns}"))
        .await
        .map_err(|e| sql_error("setting the heartbeat period", e))?;
    let mut req = BinlogStreamRequest::new(setup.server_id);
    match setup.flavor {
        Flavor::MariaDb => {
            // Without capability 4 MariaDB rewrites GTID events as BEGIN queries.
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(|e| sql_error("SET @mariadb_slave_capability", e))?;
            if start.by_gtid {
                let g = start.gtid.render().unwrap_or_default();
                conn.exec_drop("SET @slave_connect_state = ?", (g,))
                    .await
                    .map_err(|e| sql_error("SET @slave_connect_state", e))?;
                conn.query_drop("SET @slave_gtid_strict_mode = 0, @slave_gtid_ignore_duplicates = 0")
                    .await
                    .map_err(|e| sql_error("SET @slave_gtid_strict_mode", e))?;
                // An empty file name with @slave_connect_state set = resume by GTID.
                req = req.with_pos(4u64);
            } else {
                req = req.with_filename(start.coord.file.as_bytes()).with_pos(start.coord.pos);
            }
        }
        Flavor::Mysql => {
            if start.by_gtid {
                let set = start.gtid.render().unwrap_or_default();
                let mut sids = Vec::new();
                for part in set.split(',').filter(|p| !p.trim().is_empty()) {
                    let sid: mysql_common::packets::Sid<'static> = part
                        .trim()
                        .parse()
                        .map_err(|e| SourceError::fatal(format!("checkpoint GTID set {set:?} is not valid ({e:?})")))?;
                    sids.push(sid);
                }
                req = req.with_gtid().with_gtid_set(sids);
            } else {
                req = req.with_filename(start.coord.file.as_bytes()).with_pos(start.coord.pos);
            }
        }
    }
    conn.get_binlog_stream(req).await.map_err(|e| stream_error(e, start))
}

struct State {
    cur: Coord,
    gtid: GtidState,
    in_tx: bool,
    began: bool,
    tx_start: Coord,
    tx_gtid: Option<Gtid>,
    tx_event_gtid: EventGtid,
    file: BinlogFile,
    /// A GTID event opened the current group (its start is set).
    opened: bool,
    fde_seen: bool,
}

impl State {
    fn position(&self) -> Position {
        Position::Mysql { file: self.cur.file.clone(), pos: self.cur.pos, gtid: self.gtid.render() }
    }
}

/// Run the stream until the pipeline stops, an error occurs, or (with a
/// target) the binlog end noted at start is reached.
pub async fn run_stream(mut setup: StreamSetup, start: Start, ctx: &mut SourceContext) -> Result<(), SourceError> {
    let checksum_tail = {
        let mut c = setup.info.connect().await?;
        let v = crate::conn::variable(&mut c, "binlog_checksum").await?.unwrap_or_default();
        setup.collations = crate::catalog::collations(&mut c).await?;
        let _ = c.disconnect().await;
        !v.eq_ignore_ascii_case("NONE")
    };
    let mut stream = open(&setup, &start).await?;
    let mut catalog_conn: Option<Conn> = None;
    tracing::info!(
        from = %format!("{}:{}", start.coord.file, start.coord.pos),
        gtid = %start.gtid.render().unwrap_or_default(),
        by_gtid = start.by_gtid,
        "replicating"
    );
    let mut st = State {
        cur: start.coord.clone(),
        gtid: start.gtid.clone(),
        in_tx: false,
        began: false,
        tx_start: start.coord.clone(),
        tx_gtid: None,
        tx_event_gtid: EventGtid::None,
        file: BinlogFile::parse(&start.coord.file),
        opened: false,
        fde_seen: false,
    };
    let mut maps: HashMap<u64, CachedMap> = HashMap::new();
    let mut versions: HashMap<TableId, Arc<TableSchema>> = HashMap::new();
    let mut out = new_batch();
    let silent_limit = HEARTBEAT * 3 + Duration::from_secs(5);

    loop {
        // Caught up? Only between transactions.
        if let Some(t) = &setup.target {
            if !st.in_tx && st.fde_seen && st.cur.key() >= t.key() {
                out.push(SourceMessage::Progress { position: st.position() });
                out.push(SourceMessage::CaughtUp);
                let _ = ctx.tx.send(std::mem::take(&mut out)).await;
                return Ok(());
            }
        }
        let next = if out.is_empty() {
            match tokio::time::timeout(silent_limit, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(SourceError::transient(format!(
                        "binlog stream: no event or heartbeat from {} for {}s",
                        setup.info.addr,
                        silent_limit.as_secs()
                    )))
                }
            }
        } else {
            match tokio::time::timeout(LINGER, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    if ctx.tx.send(std::mem::replace(&mut out, new_batch())).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            }
        };
        let ev = match next {
            None => return Err(SourceError::transient("binlog stream ended (server closed the connection)")),
            Some(Err(e)) => return Err(stream_error(e, &start)),
            Some(Ok(ev)) => ev,
        };
        handle_event(&ev, &mut st, &mut setup, &mut maps, &mut versions, &mut catalog_conn, &mut out, checksum_tail)
            .await?;
        if out.len() >= BATCH && ctx.tx.send(std::mem::replace(&mut out, new_batch())).await.is_err() {
            return Ok(());
        }
    }
}

/// An empty batch with room for a full one: a batch handed to the runtime is
/// freed on its thread, and one grown from empty reallocates (and faults in
/// fresh memory) about ten times before it is sent.
fn new_batch() -> Vec<SourceMessage> {
    // A rows event's rows may take a batch past BATCH before it is sent.
    Vec::with_capacity(BATCH + BATCH / 2)
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..n {
        v |= (*b.get(at + i).unwrap_or(&0) as u64) << (8 * i);
    }
    v
}

#[allow(clippy::too_many_arguments)]
async fn handle_event(
    ev: &Event,
    st: &mut State,
    setup: &mut StreamSetup,
    maps: &mut HashMap<u64, CachedMap>,
    versions: &mut HashMap<TableId, Arc<TableSchema>>,
    catalog_conn: &mut Option<Conn>,
    out: &mut Vec<SourceMessage>,
    checksum_tail: bool,
) -> Result<(), SourceError> {
    let h = ev.header();
    let ty = h.event_type_raw();
    let data = ev.data();
    let end = h.log_pos() as u64;
    // Events unpacked from a MySQL 8 TRANSACTION_PAYLOAD carry no position:
    // they sit where the payload event ended.
    let start_pos = if end == 0 { st.cur.pos } else { end.saturating_sub(h.event_size() as u64) };
    match ty {
        // ROTATE
        4 => {
            let pos = le(data, 0, 8);
            let mut name = &data[8.min(data.len())..];
            // The first (fake) rotate arrives before the format description, so
            // its checksum is still attached to the file name.
            if !st.fde_seen && checksum_tail && name.len() > 4 {
                name = &name[..name.len() - 4];
            }
            let name = String::from_utf8_lossy(name).into_owned();
            if name != st.cur.file {
                st.file = BinlogFile::parse(&name);
            }
            st.cur = Coord { file: name, pos };
        }
        // FORMAT_DESCRIPTION
        15 => st.fde_seen = true,
        // MariaDB GTID
        162 => {
            let seq = le(data, 0, 8);
            let domain = le(data, 8, 4) as u32;
            let flags = data.get(12).copied().unwrap_or(0);
            let g = Gtid::MariaDb { domain, server: h.server_id(), seq };
            st.tx_event_gtid = EventGtid::MariaDb { domain, server: h.server_id(), seq };
            st.tx_gtid = Some(g);
            st.tx_start = Coord { file: st.cur.file.clone(), pos: start_pos };
            st.began = false;
            st.opened = true;
            // Standalone (DDL): no BEGIN follows; the next statement is the group.
            st.in_tx = flags & 1 == 0;
            advance(st, end);
        }
        // MySQL GTID / anonymous GTID
        33 | 34 => {
            if ty == 33 && data.len() >= 25 {
                let uuid = crate::position::uuid_string(&data[1..17]);
                let gno = le(data, 17, 8);
                let mut raw = [0u8; 16];
                raw.copy_from_slice(&data[1..17]);
                st.tx_event_gtid = EventGtid::Mysql { uuid: raw, gno };
                let g = Gtid::Mysql { uuid, gno };
                st.tx_gtid = Some(g);
            } else {
                st.tx_gtid = None;
                st.tx_event_gtid = EventGtid::None;
            }
            st.tx_start = Coord { file: st.cur.file.clone(), pos: start_pos };
            st.began = false;
            st.opened = true;
            advance(st, end);
        }
        // MariaDB GTID_LIST: the full state at the start of a binlog file.
        163 => {
            if st.gtid == GtidState::None {
                let n = (le(data, 0, 4) & 0x0fff_ffff) as usize;
                let mut s = GtidState::None;
                for i in 0..n {
                    let at = 4 + i * 16;
                    s.add(&Gtid::MariaDb {
                        domain: le(data, at, 4) as u32,
                        server: le(data, at + 4, 4) as u32,
                        seq: le(data, at + 8, 8),
                    });
                }
                st.gtid = s;
            }
            advance(st, end);
        }
        // QUERY
        2 => {
            let db_len = data.get(8).copied().unwrap_or(0) as usize;
            let status_len = le(data, 11, 2) as usize;
            let db_at = 13 + status_len;
            let db = String::from_utf8_lossy(data.get(db_at..db_at + db_len).unwrap_or_default()).into_owned();
            let q = data.get(db_at + db_len + 1..).unwrap_or_default();
            let q = String::from_utf8_lossy(q);
            let qt = q.trim();
            let upper = qt.get(..3).unwrap_or("").to_ascii_uppercase();
            if upper == "XA " {
                return Err(SourceError::fatal(format!(
                    "XA transaction in the binlog at {}:{start_pos}: Sluice does not replicate XA transactions",
                    st.cur.file
                )));
            }
            if qt.eq_ignore_ascii_case("BEGIN") {
                st.in_tx = true;
                st.began = false;
                // A GTID event opened the group already and set its start.
                if !st.opened {
                    st.tx_start = Coord { file: st.cur.file.clone(), pos: start_pos };
                }
                advance(st, end);
            } else if qt.eq_ignore_ascii_case("COMMIT") || qt.eq_ignore_ascii_case("ROLLBACK") {
                advance(st, end);
                commit(st, out);
            } else if st.in_tx {
                // A statement inside a transaction (SAVEPOINT, ...): nothing to decode.
                advance(st, end);
            } else if qt.len() > 17
                && qt.get(qt.len() - 17..).is_some_and(|t| t.eq_ignore_ascii_case("START TRANSACTION"))
            {
                // MySQL 8.0.21+ atomic CREATE TABLE ... SELECT: the DDL opens a
                // group whose rows and XID follow.
                maps.clear();
                setup.schemas.clear();
                st.in_tx = true;
                st.began = false;
                if !st.opened {
                    st.tx_start = Coord { file: st.cur.file.clone(), pos: start_pos };
                }
                advance(st, end);
            } else {
                // DDL (or another standalone statement): schemas may have changed.
                maps.clear();
                setup.schemas.clear();
                if !st.opened {
                    // No GTID event before it (servers without GTIDs): the statement is the group.
                    st.tx_start = Coord { file: st.cur.file.clone(), pos: start_pos };
                }
                if let Some(t) = truncated_table(qt, &db) {
                    if setup.tables.matches(&t.schema, &t.name) {
                        let schema = match versions.get(&t) {
                            Some(s) => Some(s.clone()),
                            None => catalog_schema(setup, catalog_conn, &t).await?,
                        };
                        if let Some(schema) = schema {
                            let admitted = !matches!(setup.admit_from.get(&t), Some(a) if st.tx_start.key() < *a);
                            if admitted {
                                begin(st, out);
                                out.push(SourceMessage::Event(ChangeEvent {
                                    op: Op::Truncate,
                                    table: schema,
                                    before: None,
                                    after: None,
                                    commit_lsn: st.tx_start.packed(),
                                    lsn: pack(file_seq(&st.cur.file), start_pos),
                                    tx_id: None,
                                    commit_ts_us: h.timestamp() as i64 * 1_000_000,
                                    snapshot: false,
                                    mysql: Some(MysqlOrigin {
                                        file: st.file,
                                        gtid: st.tx_event_gtid,
                                        pos: start_pos,
                                        server_id: h.server_id(),
                                        row: 0,
                                    }),
                                }));
                            }
                        }
                    }
                }
                advance(st, end);
                commit(st, out);
            }
        }
        // XID: commit of a transactional group.
        16 => {
            advance(st, end);
            commit(st, out);
        }
        // TABLE_MAP
        19 => {
            let table_id = le(data, 0, 6);
            let fresh = match maps.get(&table_id) {
                Some(c) => c.raw != data,
                None => true,
            };
            if fresh {
                let tme: TableMapEvent<'_> =
                    ev.read_event().map_err(|e| SourceError::fatal(format!("bad table map event: {e}")))?;
                let id = TableId::new(tme.database_name().into_owned(), tme.table_name().into_owned());
                let system =
                    matches!(id.schema.as_str(), "mysql" | "information_schema" | "performance_schema" | "sys");
                let included = !system && setup.tables.matches(&id.schema, &id.name) && !setup.failed.contains(&id);
                let cols = if included {
                    match decoding::map_columns(&tme, setup.flavor == Flavor::MariaDb, &setup.collations) {
                        Ok(cols) => Some(cols),
                        Err(e) if e.per_table => {
                            fail_table(setup, out, &id, e.message);
                            None
                        }
                        Err(e) => return Err(SourceError::fatal(e.message)),
                    }
                } else {
                    None
                };
                let plan = if let Some(cols) = cols {
                    let cat = match setup.schemas.get(&id) {
                        Some(s) => Some(s.clone()),
                        None => catalog_schema(setup, catalog_conn, &id).await?,
                    };
                    let prev = versions.get(&id).cloned();
                    let mut p = decoding::plan(&id.schema, id.clone(), cols, cat.as_deref(), 0);
                    match &prev {
                        Some(prev)
                            if prev.same_shape(&p.schema) && prev.replica_identity == p.schema.replica_identity =>
                        {
                            p.schema = prev.clone();
                        }
                        Some(prev) => {
                            let mut s = (*p.schema).clone();
                            s.version = prev.version + 1;
                            p.schema = Arc::new(s);
                            tracing::info!(table = %id, version = p.schema.version, "table schema changed");
                        }
                        None => {
                            if let Some(c) = &cat {
                                if c.same_shape(&p.schema) {
                                    p.schema = c.clone();
                                }
                            }
                        }
                    }
                    versions.insert(id.clone(), p.schema.clone());
                    Some(Arc::new(p))
                } else {
                    None
                };
                maps.insert(table_id, CachedMap { raw: data.to_vec(), plan });
            }
            advance(st, end);
        }
        // Rows events (v1 MariaDB/MySQL 5.x, v2 MySQL 8).
        23..=25 | 30..=32 => {
            let (kind, v2) = decoding::rows_kind(ty).expect("rows type");
            let hdr = decoding::parse_rows_header(data, kind, v2, 8).map_err(|e| SourceError::fatal(e.message))?;
            let plan = match maps.get(&hdr.table_id) {
                Some(CachedMap { plan: Some(p), .. }) => p.clone(),
                Some(_) => {
                    advance(st, end);
                    return Ok(());
                }
                None => {
                    return Err(SourceError::fatal(format!(
                        "rows event for unknown table id {} at {}:{start_pos}",
                        hdr.table_id, st.cur.file
                    )))
                }
            };
            let id = &plan.schema.id;
            if setup.failed.contains(id) {
                advance(st, end);
                return Ok(());
            }
            if let Some(a) = setup.admit_from.get(id) {
                if st.tx_start.key() < *a {
                    advance(st, end);
                    return Ok(());
                }
            }
            if !setup.known.contains(id) {
                tracing::info!(table = %id, "new table: streaming it from its first change");
                setup.known.insert(id.clone());
                setup.admit_from.insert(id.clone(), st.tx_start.key());
                let position =
                    Position::Mysql { file: st.tx_start.file.clone(), pos: st.tx_start.pos, gtid: st.gtid.render() };
                out.push(SourceMessage::TableSnapshotStarted {
                    schema: plan.schema.clone(),
                    position,
                    estimated_rows: 0,
                });
                out.push(SourceMessage::TableSnapshotDone { table: id.clone(), rows: 0 });
            }
            if hdr.ncols != plan.kinds.len() {
                return Err(SourceError::fatal(format!(
                    "rows event for {id} has {} columns, its table map {}",
                    hdr.ncols,
                    plan.kinds.len()
                )));
            }
            begin(st, out);
            let nb = decoding::count_present(hdr.present_before, hdr.ncols);
            let na = decoding::count_present(hdr.present_after, hdr.ncols);
            let rows = data;
            let mut at = hdr.rows_at;
            let ts = h.timestamp() as i64 * 1_000_000;
            let lsn = pack(file_seq(&st.cur.file), start_pos);
            let commit_lsn = st.tx_start.packed();
            let mut row_i = 0u32;
            let first_of_event = out.len();
            while at < rows.len() {
                let (op, before, after) = match decode_change(kind, &plan, rows, &mut at, &hdr, nb, na) {
                    Ok(change) => change,
                    Err(e) if e.per_table => {
                        // This event's changes of the table are dropped with it.
                        out.truncate(first_of_event);
                        let error = format!("{} (binlog {}:{start_pos})", e.message, st.cur.file);
                        let id = id.clone();
                        fail_table(setup, out, &id, error);
                        break;
                    }
                    Err(e) => return Err(SourceError::fatal(e.message)),
                };
                out.push(SourceMessage::Event(ChangeEvent {
                    op,
                    table: plan.schema.clone(),
                    before,
                    after,
                    commit_lsn,
                    lsn,
                    tx_id: None,
                    commit_ts_us: ts,
                    snapshot: false,
                    mysql: Some(MysqlOrigin {
                        file: st.file,
                        gtid: st.tx_event_gtid,
                        pos: start_pos,
                        server_id: h.server_id(),
                        row: row_i,
                    }),
                }));
                row_i += 1;
            }
            advance(st, end);
        }
        // HEARTBEAT: the server's current position while idle.
        27 => {
            if end > 0 && !st.in_tx {
                let name = String::from_utf8_lossy(data).into_owned();
                let name = name.trim_end_matches('\0').to_string();
                if !name.is_empty()
                    && name != st.cur.file
                    && name.starts_with(st.cur.file.split('.').next().unwrap_or(""))
                {
                    st.file = BinlogFile::parse(&name);
                    st.cur.file = name;
                }
                if end >= st.cur.pos {
                    st.cur.pos = end;
                }
                out.push(SourceMessage::Progress { position: st.position() });
            }
        }
        // XA prepare (MariaDB), partial JSON updates and tagged GTIDs (MySQL):
        // not supported; refusing beats silently losing changes.
        38 | 39 | 42 => {
            let what = match ty {
                38 => "an XA PREPARE event: Sluice does not replicate XA transactions",
                39 => "a partial JSON update event: set binlog_row_value_options = '' on the server",
                _ => "a tagged GTID event (MySQL 8.3+ GTID tags), which Sluice does not support yet",
            };
            return Err(SourceError::new(
                ErrorKind::Fatal,
                format!("the binlog holds {what} (at {}:{start_pos})", st.cur.file),
            ));
        }
        // MariaDB compressed events / encryption: not decodable here.
        164..=171 => {
            return Err(SourceError::new(
                ErrorKind::Config,
                format!(
                    "the binlog has a compressed or encrypted event (type {ty}) at {}:{start_pos}; set \
                     log_bin_compress = OFF (and do not encrypt binlogs) on the server",
                    st.cur.file
                ),
            ))
        }
        // Row events of other formats (pre-5.1), incidents.
        20..=22 => {
            return Err(SourceError::fatal(format!(
                "old-format rows event (type {ty}) at {}:{start_pos}; Sluice needs a MySQL 5.6+ / MariaDB 10.5+ binlog",
                st.cur.file
            )))
        }
        26 => {
            return Err(SourceError::fatal(format!(
                "the binlog holds an INCIDENT event at {}:{start_pos} (the server lost changes); re-snapshot with \
                 `sluice teardown --yes` and a new run",
                st.cur.file
            )))
        }
        _ => advance(st, end),
    }
    Ok(())
}

fn advance(st: &mut State, end: u64) {
    if end > 0 {
        st.cur.pos = end;
    }
}

fn begin(st: &mut State, out: &mut Vec<SourceMessage>) {
    if !st.began {
        st.began = true;
        out.push(SourceMessage::Begin { commit_lsn: st.tx_start.packed() });
    }
}

/// End of a group: advance the GTID state, then Commit (if anything was
/// emitted) or Progress.
fn commit(st: &mut State, out: &mut Vec<SourceMessage>) {
    if let Some(g) = st.tx_gtid.take() {
        st.gtid.add(&g);
    }
    st.tx_event_gtid = EventGtid::None;
    st.in_tx = false;
    st.opened = false;
    if st.began {
        out.push(SourceMessage::Commit { position: st.position() });
    } else {
        out.push(SourceMessage::Progress { position: st.position() });
    }
    st.began = false;
}

async fn catalog_schema(
    setup: &mut StreamSetup,
    conn: &mut Option<Conn>,
    id: &TableId,
) -> Result<Option<Arc<TableSchema>>, SourceError> {
    if conn.is_none() {
        *conn = Some(setup.info.connect().await?);
    }
    let c = conn.as_mut().expect("connected");
    match catalog::table_schema(c, id).await {
        Ok(Some((s, _))) => {
            let s = Arc::new(s);
            setup.schemas.insert(id.clone(), s.clone());
            Ok(Some(s))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// `TRUNCATE [TABLE] [db.]t` → the table.
fn truncated_table(q: &str, default_db: &str) -> Option<TableId> {
    let lower = q.to_ascii_lowercase();
    let rest = lower.strip_prefix("truncate")?;
    if !rest.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let offset = q.len() - rest.len();
    let mut s = q[offset..].trim_start();
    if s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("table"))
        && s.get(5..).is_some_and(|r| r.starts_with(|c: char| c.is_whitespace()))
    {
        s = s[5..].trim_start();
    }
    let (first, rest) = ident(s)?;
    if let Some(r) = rest.strip_prefix('.') {
        let (second, _) = ident(r)?;
        Some(TableId::new(first, second))
    } else {
        Some(TableId::new(default_db, first))
    }
}

fn ident(s: &str) -> Option<(String, &str)> {
    if let Some(r) = s.strip_prefix('`') {
        let mut out = String::new();
        let mut chars = r.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if r[i + 1..].starts_with('`') {
                    out.push('`');
                    chars.next();
                } else {
                    return Some((out, &r[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((s[..end].to_string(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_parsing() {
        assert_eq!(truncated_table("TRUNCATE TABLE t", "d"), Some(TableId::new("d", "t")));
        assert_eq!(truncated_table("truncate `a b`.`c``d`", "d"), Some(TableId::new("a b", "c`d")));
        assert_eq!(truncated_table("truncate  shop.orders", "d"), Some(TableId::new("shop", "orders")));
        assert_eq!(truncated_table("truncated", "d"), None);
        assert_eq!(truncated_table("ALTER TABLE t ADD c INT", "d"), None);
        assert_eq!(truncated_table("TRUNCATE 订单", "d"), Some(TableId::new("d", "订单")));
        assert_eq!(truncated_table("truncate tablé", "d"), Some(TableId::new("d", "tablé")));
    }
}
