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
use sluice_core::config::TablesConfig;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::{BinlogFile, EventGtid, Op, Position, Row, SourceContext, SourceMessage, TableId, TableSchema};

mod events;

use events::handle_event;

use crate::catalog;
use crate::charset::Collations;
use crate::decoding::{self, TablePlan};
use crate::position::{Coord, Gtid, GtidState};
use sluice_client_mysql::{classify, sql_error, ConnInfo, Flavor};

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
        let v = sluice_client_mysql::variable(&mut c, "binlog_checksum").await?.unwrap_or_default();
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

fn advance(st: &mut State, end: u64) {
    if end > 0 {
        st.cur.pos = end;
    }
}

fn begin(st: &mut State, out: &mut Vec<SourceMessage>) {
    if !st.began {
        st.began = true;
        out.push(SourceMessage::Begin { commit_position: st.tx_start.event_position() });
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
