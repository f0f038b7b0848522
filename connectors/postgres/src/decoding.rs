//! pgoutput decoding (protocol versions 1 and 2, text values).
//!
//! With protocol 2 and `streaming`, large in-progress transactions arrive in
//! stream blocks (`S` ... `E`) before they commit. Their messages are not
//! decoded on arrival: [`Decoder::decode`] hands them back as
//! [`StreamAction::Spool`] so the caller can park them on disk, and at the
//! stream commit they are replayed through [`Decoder::decode_streamed`]
//! between [`Decoder::begin_replay`] and [`Decoder::end_replay`] — so a
//! transaction that aborts never reaches a sink, and memory stays bounded.
//!
//! Invariants:
//! - A relation's schema is replaced only by a later `Relation` message; each
//!   change becomes a new [`TableSchema`] version so sinks see ADD/DROP COLUMN
//!   mid-stream.
//! - Unchanged TOAST columns (`u`) decode to [`Value::Unchanged`], never NULL.
//! - A transaction whose commit LSN is before the resume point is dropped
//!   whole; a change to a table whose snapshot was taken after the change's
//!   commit is dropped (the snapshot already holds it).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use sluice_core::error::SourceError;
use sluice_core::{
    ChangeEvent, Column, ColumnType, EventPosition, Op, Position, ReplicaIdentity, Row, SourceMessage, TableId,
    TableSchema, Value,
};

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

struct Relation {
    schema: Arc<TableSchema>,
    types: Vec<ColumnType>,
    included: bool,
    /// Changes of transactions committing before this LSN are dropped.
    snapshot_lsn: u64,
}

/// Decides per table whether it is replicated and from which LSN on.
pub trait TableFilter: Send {
    /// `None`: not replicated. `Some(lsn)`: replicate changes of transactions
    /// committing at or after `lsn`.
    fn admit(&self, table: &TableId) -> Option<u64>;
}

/// What the caller must do with a protocol-2 streaming message.
#[derive(Debug)]
pub enum StreamAction {
    /// A stream block of top-level transaction `xid` begins.
    Start { xid: u32, first_segment: bool },
    /// The stream block ends.
    Stop,
    /// Park this message (of subtransaction `sub_xid`) with transaction `xid`.
    Spool { xid: u32, sub_xid: u32, lsn: u64, message: Bytes },
    /// Transaction `xid` committed: replay what was parked.
    Commit { xid: u32, commit_lsn: u64, end_lsn: u64, ts_us: i64 },
    /// `sub_xid == xid`: the whole transaction aborted; otherwise that subtransaction.
    Abort { xid: u32, sub_xid: u32 },
}

pub struct Decoder<F: TableFilter> {
    database: String,
    filter: F,
    relations: HashMap<u32, Relation>,
    type_names: HashMap<u32, String>,
    /// Transactions committing before this are already delivered.
    resume_lsn: u64,
    tx: Option<TxState>,
    versions: u64,
    commit_end: Option<u64>,
    /// Top-level transaction of the open stream block (protocol 2).
    stream_xid: Option<u32>,
    /// Domain types known at start, decoded as their base types.
    domains: crate::catalog::Domains,
}

struct TxState {
    commit_lsn: u64,
    xid: u32,
    ts_us: i64,
    skip: bool,
}

fn cstr(b: &mut Bytes) -> Result<String, SourceError> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| malformed("unterminated string"))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn malformed(what: &str) -> SourceError {
    SourceError::fatal(format!("malformed pgoutput message: {what}"))
}

fn need(b: &Bytes, n: usize) -> Result<(), SourceError> {
    if b.remaining() < n {
        Err(malformed("message too short"))
    } else {
        Ok(())
    }
}

impl<F: TableFilter> Decoder<F> {
    pub fn new(database: String, filter: F, resume_lsn: u64, domains: crate::catalog::Domains) -> Self {
        Decoder {
            domains,
            database,
            filter,
            relations: HashMap::new(),
            type_names: HashMap::new(),
            resume_lsn,
            tx: None,
            versions: 0,
            commit_end: None,
            stream_xid: None,
        }
    }

    /// The end LSN of the last commit decoded since the previous call
    /// (including transactions skipped as already delivered).
    pub fn take_commit_end(&mut self) -> Option<u64> {
        self.commit_end.take()
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Decode one pgoutput message starting at WAL position `lsn`. Streaming
    /// messages (protocol 2) are returned as a [`StreamAction`] instead.
    pub fn decode(
        &mut self,
        lsn: u64,
        mut b: Bytes,
        out: &mut Vec<SourceMessage>,
    ) -> Result<Option<StreamAction>, SourceError> {
        need(&b, 1)?;
        let tag = b[0];
        if let Some(xid) = self.stream_xid {
            match tag {
                b'I' | b'U' | b'D' | b'T' | b'R' | b'M' => {
                    need(&b, 5)?;
                    let sub_xid = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
                    return Ok(Some(StreamAction::Spool { xid, sub_xid, lsn, message: b }));
                }
                b'Y' => {
                    // Type names are harmless to learn at once.
                    need(&b, 5)?;
                    b.advance(5);
                    self.type_message(&mut b)?;
                    return Ok(None);
                }
                b'E' => {
                    self.stream_xid = None;
                    return Ok(Some(StreamAction::Stop));
                }
                other => {
                    return Err(malformed(&format!("message {:?} inside a stream block", other as char)));
                }
            }
        }
        b.advance(1);
        match tag {
            b'S' => {
                need(&b, 5)?;
                let xid = b.get_u32();
                let first_segment = b.get_u8() == 1;
                self.stream_xid = Some(xid);
                return Ok(Some(StreamAction::Start { xid, first_segment }));
            }
            b'c' => {
                need(&b, 29)?;
                let xid = b.get_u32();
                let _flags = b.get_u8();
                let commit_lsn = b.get_u64();
                let end_lsn = b.get_u64();
                let ts = b.get_i64();
                return Ok(Some(StreamAction::Commit { xid, commit_lsn, end_lsn, ts_us: ts + PG_EPOCH_OFFSET_US }));
            }
            b'A' => {
                need(&b, 8)?;
                let xid = b.get_u32();
                let sub_xid = b.get_u32();
                return Ok(Some(StreamAction::Abort { xid, sub_xid }));
            }
            _ => {}
        }
        self.decode_body(tag, lsn, b, out)?;
        Ok(None)
    }

    /// Start replaying streamed transaction `xid`, which committed at `commit_lsn`.
    pub fn begin_replay(&mut self, xid: u32, commit_lsn: u64, ts_us: i64, out: &mut Vec<SourceMessage>) {
        let skip = commit_lsn < self.resume_lsn;
        self.tx = Some(TxState { commit_lsn, xid, ts_us, skip });
        if !skip {
            out.push(SourceMessage::Begin { commit_position: EventPosition::Lsn(commit_lsn) });
        }
    }

    /// True when the transaction being replayed is already delivered.
    pub fn replay_skipped(&self) -> bool {
        self.tx.as_ref().map(|t| t.skip).unwrap_or(false)
    }

    /// Decode one parked message (it still carries its xid field).
    pub fn decode_streamed(&mut self, lsn: u64, mut b: Bytes, out: &mut Vec<SourceMessage>) -> Result<(), SourceError> {
        need(&b, 5)?;
        let tag = b[0];
        b.advance(5);
        self.decode_body(tag, lsn, b, out)
    }

    /// Finish replaying: the commit.
    pub fn end_replay(&mut self, end_lsn: u64, out: &mut Vec<SourceMessage>) {
        if let Some(tx) = self.tx.take() {
            self.commit_end = Some(end_lsn);
            if !tx.skip {
                out.push(SourceMessage::Commit { position: Position::Postgres { lsn: end_lsn } });
            }
        }
    }

    fn type_message(&mut self, b: &mut Bytes) -> Result<(), SourceError> {
        need(b, 4)?;
        let oid = b.get_u32();
        let ns = cstr(b)?;
        let name = cstr(b)?;
        let full = if ns == "pg_catalog" || ns == "public" { name } else { format!("{ns}.{name}") };
        self.type_names.insert(oid, full);
        Ok(())
    }

    fn decode_body(
        &mut self,
        tag: u8,
        lsn: u64,
        mut b: Bytes,
        out: &mut Vec<SourceMessage>,
    ) -> Result<(), SourceError> {
        match tag {
            b'B' => {
                need(&b, 20)?;
                let final_lsn = b.get_u64();
                let ts = b.get_i64();
                let xid = b.get_u32();
                let skip = final_lsn < self.resume_lsn;
                self.tx = Some(TxState { commit_lsn: final_lsn, xid, ts_us: ts + PG_EPOCH_OFFSET_US, skip });
                if !skip {
                    out.push(SourceMessage::Begin { commit_position: EventPosition::Lsn(final_lsn) });
                }
            }
            b'C' => {
                need(&b, 25)?;
                let _flags = b.get_u8();
                let _commit_lsn = b.get_u64();
                let end_lsn = b.get_u64();
                let tx = self.tx.take().ok_or_else(|| malformed("COMMIT outside a transaction"))?;
                self.commit_end = Some(end_lsn);
                if !tx.skip {
                    out.push(SourceMessage::Commit { position: Position::Postgres { lsn: end_lsn } });
                }
            }
            b'R' => self.relation(&mut b)?,
            b'Y' => self.type_message(&mut b)?,
            b'I' | b'U' | b'D' => self.change(tag, lsn, &mut b, out)?,
            b'T' => {
                need(&b, 5)?;
                let n = b.get_u32();
                let _opts = b.get_u8();
                for _ in 0..n {
                    need(&b, 4)?;
                    let relid = b.get_u32();
                    if let Some(ev) = self.event_base(relid, lsn, Op::Truncate)? {
                        out.push(SourceMessage::Event(ev));
                    }
                }
            }
            b'O' | b'M' => {}
            other => {
                return Err(SourceError::fatal(format!(
                    "unsupported pgoutput message type {:?} (is the server newer than this Sluice?)",
                    other as char
                )))
            }
        }
        Ok(())
    }

    fn relation(&mut self, b: &mut Bytes) -> Result<(), SourceError> {
        need(b, 4)?;
        let relid = b.get_u32();
        let ns = cstr(b)?;
        let name = cstr(b)?;
        need(b, 3)?;
        let ident = match b.get_u8() {
            b'd' => ReplicaIdentity::Default,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Nothing,
        };
        let n = b.get_u16();
        let mut columns = Vec::with_capacity(n as usize);
        let mut types = Vec::with_capacity(n as usize);
        for _ in 0..n {
            need(b, 1)?;
            let flags = b.get_u8();
            let cname = cstr(b)?;
            need(b, 8)?;
            let oid = b.get_u32();
            let typmod = b.get_i32();
            let (mut ty, mut tname) = crate::catalog::resolve_type(&self.domains, oid, typmod);
            let is_domain = self.domains.contains_key(&oid);
            if let Some(custom) = self.type_names.get(&oid).filter(|_| !is_domain) {
                // A user-defined type; `_name` is the array type of `name`.
                let (ns, base) = custom.rsplit_once('.').map(|(n, b)| (Some(n), b)).unwrap_or((None, custom.as_str()));
                match base.strip_prefix('_') {
                    Some(elem) if tname.starts_with("oid:") => {
                        ty = ColumnType::Array(Box::new(ColumnType::Other));
                        tname = match ns {
                            Some(ns) => format!("{ns}.{elem}[]"),
                            None => format!("{elem}[]"),
                        };
                    }
                    _ => tname = custom.clone(),
                }
            } else if let Some(custom) = self.type_names.get(&oid) {
                tname = custom.clone();
            }
            types.push(ty.clone());
            columns.push(Column {
                name: cname,
                ty,
                source_type: tname,
                type_id: oid,
                type_modifier: typmod,
                key: flags & 1 == 1,
                nullable: true,
            });
        }
        let id = TableId::new(ns, name);
        let admit = self.filter.admit(&id);
        if let Some(old) = self.relations.get(&relid) {
            if old.schema.columns == columns && old.schema.id == id && old.schema.replica_identity == ident {
                return Ok(());
            }
            if old.schema.id == id && old.included {
                tracing::info!(table = %id, "table schema changed mid-stream");
            }
        }
        self.versions += 1;
        let schema = Arc::new(TableSchema {
            database: self.database.clone(),
            id,
            columns,
            replica_identity: ident,
            version: self.versions,
        });
        self.relations
            .insert(relid, Relation { schema, types, included: admit.is_some(), snapshot_lsn: admit.unwrap_or(0) });
        Ok(())
    }

    /// The event shell for a change to `relid`, or None when it is dropped.
    fn event_base(&self, relid: u32, lsn: u64, op: Op) -> Result<Option<ChangeEvent>, SourceError> {
        let tx = self.tx.as_ref().ok_or_else(|| malformed("change outside a transaction"))?;
        if tx.skip {
            return Ok(None);
        }
        let rel = self
            .relations
            .get(&relid)
            .ok_or_else(|| malformed(&format!("change for relation {relid} before its RELATION message")))?;
        if !rel.included || tx.commit_lsn < rel.snapshot_lsn {
            return Ok(None);
        }
        Ok(Some(ChangeEvent {
            op,
            table: rel.schema.clone(),
            before: None,
            after: None,
            commit_position: EventPosition::Lsn(tx.commit_lsn),
            position: EventPosition::Lsn(lsn),
            tx_id: Some(tx.xid as u64),
            commit_ts_us: tx.ts_us,
            snapshot: false,
            mysql: None,
        }))
    }

    fn change(&mut self, tag: u8, lsn: u64, b: &mut Bytes, out: &mut Vec<SourceMessage>) -> Result<(), SourceError> {
        need(b, 4)?;
        let relid = b.get_u32();
        let op = match tag {
            b'I' => Op::Create,
            b'U' => Op::Update,
            _ => Op::Delete,
        };
        let Some(mut ev) = self.event_base(relid, lsn, op)? else { return Ok(()) };
        let types = &self.relations[&relid].types;
        need(b, 1)?;
        let mut kind = b.get_u8();
        if kind == b'K' || kind == b'O' {
            let mut before = read_tuple(b, types)?;
            if kind == b'K' {
                // Only key columns are sent; the others are unknown, not NULL.
                let schema = &ev.table;
                for (v, c) in before.values.iter_mut().zip(&schema.columns) {
                    if !c.key && v.is_null() {
                        *v = Value::Unchanged;
                    }
                }
            }
            ev.before = Some(before);
            if tag == b'U' {
                need(b, 1)?;
                kind = b.get_u8();
            }
        }
        if kind == b'N' {
            let mut after = read_tuple(b, types)?;
            if let (Some(before), Op::Update) = (&ev.before, op) {
                // An unchanged TOAST value that is also in the old row (replica
                // identity FULL) is known: fill it in.
                for (a, o) in after.values.iter_mut().zip(&before.values) {
                    if matches!(a, Value::Unchanged) && !matches!(o, Value::Unchanged) {
                        *a = o.clone();
                    }
                }
            }
            ev.after = Some(after);
        }
        out.push(SourceMessage::Event(ev));
        Ok(())
    }
}

fn read_tuple(b: &mut Bytes, types: &[ColumnType]) -> Result<Row, SourceError> {
    need(b, 2)?;
    let n = b.get_u16() as usize;
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        need(b, 1)?;
        let v = match b.get_u8() {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                need(b, 4)?;
                let len = b.get_i32() as usize;
                need(b, len)?;
                let raw = &b[..len];
                let s = std::str::from_utf8(raw).map_err(|_| malformed("value is not UTF-8"))?;
                let ty = types.get(i).unwrap_or(&ColumnType::Other);
                let v = sluice_schemas::postgres::parse_text(ty, s)
                    .map_err(|e| SourceError::fatal(format!("cannot decode column {}: {e}", i + 1)))?;
                b.advance(len);
                v
            }
            b'b' => {
                need(b, 4)?;
                let len = b.get_i32() as usize;
                need(b, len)?;
                let v = Value::Bytes(b[..len].to_vec());
                b.advance(len);
                v
            }
            other => return Err(malformed(&format!("unknown tuple column kind {:?}", other as char))),
        };
        values.push(v);
    }
    // Columns added by ALTER TABLE after this row version are absent.
    values.resize(types.len().max(n), Value::Null);
    Ok(Row::new(values))
}
