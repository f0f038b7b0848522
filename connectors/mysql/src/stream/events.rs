//! One handler per binlog event kind; [`handle_event`] dispatches.
//!
//! Invariants (see the module above for the whole stream's):
//! - The position advances past an event only once it is handled
//!   ([`advance`]); a commit event closes the group ([`commit`]).
//! - A handler that cannot decode a table's change stops that table
//!   ([`fail_table`]) and never the others; anything it cannot represent at
//!   all (XA, partial JSON, compressed events, incidents) stops the
//!   pipeline with what to change.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_async::Conn;
use mysql_common::binlog::events::{Event, TableMapEvent};
use sluice_client_mysql::Flavor;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::{
    BinlogFile, ChangeEvent, EventGtid, EventPosition, MysqlOrigin, Op, Position, SourceMessage, TableId, TableSchema,
};

use super::{
    advance, begin, catalog_schema, commit, decode_change, fail_table, le, truncated_table, CachedMap, State,
    StreamSetup,
};
use crate::decoding;
use crate::position::{file_seq, Coord, Gtid, GtidState};

/// Where an event sits: its header, payload and coordinates.
struct At<'a> {
    header: mysql_common::binlog::events::BinlogEventHeader,
    data: &'a [u8],
    /// The position just past the event (0 inside a MySQL 8 transaction payload).
    end: u64,
    start_pos: u64,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn handle_event(
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
    let end = h.log_pos() as u64;
    // Events unpacked from a MySQL 8 TRANSACTION_PAYLOAD carry no position:
    // they sit where the payload event ended.
    let start_pos = if end == 0 { st.cur.pos } else { end.saturating_sub(h.event_size() as u64) };
    let at = At { header: h, data: ev.data(), end, start_pos };
    match ty {
        4 => rotate(st, &at, checksum_tail),
        15 => st.fde_seen = true,
        162 => mariadb_gtid(st, &at),
        33 | 34 => mysql_gtid(st, &at, ty),
        163 => gtid_list(st, &at),
        2 => query(st, &at, setup, maps, versions, catalog_conn, out).await?,
        // XID: commit of a transactional group.
        16 => {
            advance(st, end);
            commit(st, out);
        }
        19 => table_map(ev, st, &at, setup, maps, versions, catalog_conn, out).await?,
        // Rows events (v1 MariaDB/MySQL 5.x, v2 MySQL 8).
        23..=25 | 30..=32 => rows(st, &at, ty, setup, maps, out)?,
        27 => heartbeat(st, &at, out),
        38 | 39 | 42 | 164..=171 | 20..=22 | 26 => return Err(unsupported(st, &at, ty)),
        _ => advance(st, end),
    }
    Ok(())
}

/// ROTATE: the next events are in another file.
fn rotate(st: &mut State, at: &At<'_>, checksum_tail: bool) {
    let data = at.data;
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

/// MariaDB GTID: a group starts.
fn mariadb_gtid(st: &mut State, at: &At<'_>) {
    let (h, data, end, start_pos) = (&at.header, at.data, at.end, at.start_pos);
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

/// MySQL GTID / anonymous GTID: a group starts.
fn mysql_gtid(st: &mut State, at: &At<'_>, ty: u8) {
    let (data, end, start_pos) = (at.data, at.end, at.start_pos);
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

/// MariaDB GTID_LIST: the full state at the start of a binlog file.
fn gtid_list(st: &mut State, at: &At<'_>) {
    let (data, end) = (at.data, at.end);
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

/// QUERY: BEGIN, COMMIT/ROLLBACK, statements inside a transaction, DDL
/// (TRUNCATE of an included table becomes a truncate event).
async fn query(
    st: &mut State,
    at: &At<'_>,
    setup: &mut StreamSetup,
    maps: &mut HashMap<u64, CachedMap>,
    versions: &mut HashMap<TableId, Arc<TableSchema>>,
    catalog_conn: &mut Option<Conn>,
    out: &mut Vec<SourceMessage>,
) -> Result<(), SourceError> {
    let (h, data, end, start_pos) = (&at.header, at.data, at.end, at.start_pos);
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
    } else if qt.len() > 17 && qt.get(qt.len() - 17..).is_some_and(|t| t.eq_ignore_ascii_case("START TRANSACTION")) {
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
                            commit_position: st.tx_start.event_position(),
                            position: EventPosition::Binlog { file: file_seq(&st.cur.file), offset: start_pos },
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
    Ok(())
}

/// TABLE_MAP: plan the decoding of the table's rows (cached while the map
/// is unchanged; a changed shape is a new schema version).
#[allow(clippy::too_many_arguments)]
async fn table_map(
    ev: &Event,
    st: &mut State,
    at: &At<'_>,
    setup: &mut StreamSetup,
    maps: &mut HashMap<u64, CachedMap>,
    versions: &mut HashMap<TableId, Arc<TableSchema>>,
    catalog_conn: &mut Option<Conn>,
    out: &mut Vec<SourceMessage>,
) -> Result<(), SourceError> {
    let (data, end) = (at.data, at.end);
    let table_id = le(data, 0, 6);
    let fresh = match maps.get(&table_id) {
        Some(c) => c.raw != data,
        None => true,
    };
    if fresh {
        let tme: TableMapEvent<'_> =
            ev.read_event().map_err(|e| SourceError::fatal(format!("bad table map event: {e}")))?;
        let id = TableId::new(tme.database_name().into_owned(), tme.table_name().into_owned());
        let system = matches!(id.schema.as_str(), "mysql" | "information_schema" | "performance_schema" | "sys");
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
                Some(prev) if prev.same_shape(&p.schema) && prev.replica_identity == p.schema.replica_identity => {
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
    Ok(())
}

/// Rows events: one change event per row, for included tables.
fn rows(
    st: &mut State,
    at: &At<'_>,
    ty: u8,
    setup: &mut StreamSetup,
    maps: &HashMap<u64, CachedMap>,
    out: &mut Vec<SourceMessage>,
) -> Result<(), SourceError> {
    let (h, data, end, start_pos) = (&at.header, at.data, at.end, at.start_pos);
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
        let position = Position::Mysql { file: st.tx_start.file.clone(), pos: st.tx_start.pos, gtid: st.gtid.render() };
        out.push(SourceMessage::TableSnapshotStarted { schema: plan.schema.clone(), position, estimated_rows: 0 });
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
    let position = EventPosition::Binlog { file: file_seq(&st.cur.file), offset: start_pos };
    let commit_position = st.tx_start.event_position();
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
            commit_position,
            position,
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
    Ok(())
}

/// HEARTBEAT: the server's current position while idle.
fn heartbeat(st: &mut State, at: &At<'_>, out: &mut Vec<SourceMessage>) {
    let (data, end) = (at.data, at.end);
    if end > 0 && !st.in_tx {
        let name = String::from_utf8_lossy(data).into_owned();
        let name = name.trim_end_matches('\0').to_string();
        if !name.is_empty() && name != st.cur.file && name.starts_with(st.cur.file.split('.').next().unwrap_or("")) {
            st.file = BinlogFile::parse(&name);
            st.cur.file = name;
        }
        if end >= st.cur.pos {
            st.cur.pos = end;
        }
        out.push(SourceMessage::Progress { position: st.position() });
    }
}

/// Events Sluice refuses: refusing beats silently losing changes.
fn unsupported(st: &State, at: &At<'_>, ty: u8) -> SourceError {
    let start_pos = at.start_pos;
    match ty {
        // XA prepare (MariaDB), partial JSON updates and tagged GTIDs (MySQL).
        38 | 39 | 42 => {
            let what = match ty {
                38 => "an XA PREPARE event: Sluice does not replicate XA transactions",
                39 => "a partial JSON update event: set binlog_row_value_options = '' on the server",
                _ => "a tagged GTID event (MySQL 8.3+ GTID tags), which Sluice does not support yet",
            };
            SourceError::new(ErrorKind::Fatal, format!("the binlog holds {what} (at {}:{start_pos})", st.cur.file))
        }
        // MariaDB compressed events / encryption: not decodable here.
        164..=171 => SourceError::new(
            ErrorKind::Config,
            format!(
                "the binlog has a compressed or encrypted event (type {ty}) at {}:{start_pos}; set \
                 log_bin_compress = OFF (and do not encrypt binlogs) on the server",
                st.cur.file
            ),
        ),
        // Row events of other formats (pre-5.1).
        20..=22 => SourceError::fatal(format!(
            "old-format rows event (type {ty}) at {}:{start_pos}; Sluice needs a MySQL 5.6+ / MariaDB 10.5+ binlog",
            st.cur.file
        )),
        _ => SourceError::fatal(format!(
            "the binlog holds an INCIDENT event at {}:{start_pos} (the server lost changes); re-snapshot with \
             `sluice teardown --yes` and a new run",
            st.cur.file
        )),
    }
}
