//! Change events and positions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::schema::TableSchema;
use crate::value::Row;

/// Debezium's operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Snapshot read (`r`).
    Read,
    /// Insert (`c`).
    Create,
    /// Update (`u`).
    Update,
    /// Delete (`d`).
    Delete,
    /// Truncate (`t`).
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// A source position. Exact and wide.
///
/// For Postgres the position is an LSN with the meaning "every transaction
/// whose commit record lies before this LSN has been handled"; a transaction
/// is therefore already delivered iff its commit LSN is `< lsn`.
///
/// For MySQL/MariaDB it is a binlog coordinate with the same meaning: `file`
/// and `pos` point just past the commit (XID / COMMIT) event of the last
/// handled transaction, and `gtid` is the server's GTID state at that point
/// (MariaDB `domain-server-seq` list, MySQL GTID set) when GTIDs are in use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Position {
    Postgres {
        lsn: u64,
    },
    Mysql {
        file: String,
        pos: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gtid: Option<String>,
    },
}

impl Position {
    /// The Postgres LSN (0 for other engines).
    pub fn lsn(&self) -> u64 {
        match self {
            Position::Postgres { lsn } => *lsn,
            Position::Mysql { .. } => 0,
        }
    }
}

/// Positions of one source are totally ordered: Postgres by LSN; MySQL and
/// MariaDB by binlog file number (the digits after the last `.`, so
/// `binlog.1000000` follows `binlog.999999`), then offset, then GTID state
/// (an equal coordinate reported without one sorts first). Positions of
/// different engines never meet in one pipeline; Postgres sorts first.
impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (Position::Postgres { lsn: a }, Position::Postgres { lsn: b }) => a.cmp(b),
            (Position::Mysql { file: fa, pos: pa, gtid: ga }, Position::Mysql { file: fb, pos: pb, gtid: gb }) => {
                (binlog_number(fa), fa, pa, ga).cmp(&(binlog_number(fb), fb, pb, gb))
            }
            (Position::Postgres { .. }, Position::Mysql { .. }) => Ordering::Less,
            (Position::Mysql { .. }, Position::Postgres { .. }) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The number of a binlog file name (`mysql-bin.000042` → 42; 0 without one).
fn binlog_number(file: &str) -> u64 {
    file.rsplit_once('.').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Postgres { lsn } => f.write_str(&format_lsn(*lsn)),
            Position::Mysql { file, pos, gtid: None } => write!(f, "{file}:{pos}"),
            Position::Mysql { file, pos, gtid: Some(g) } => write!(f, "{file}:{pos} (gtid {g})"),
        }
    }
}

/// Where an event sits in its source's change stream: the coordinate part
/// of a [`Position`], without the GTID state, so that every event can carry
/// it by value (it is `Copy`, 24 bytes, no heap).
///
/// Events and `Begin` carry one for their transaction's commit (Postgres:
/// the commit record's LSN; MySQL/MariaDB: the binlog coordinate of the
/// transaction's start, which is where a resume re-reads it) and one for the
/// change itself. Positions of one source are totally ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventPosition {
    /// A Postgres WAL LSN.
    Lsn(u64),
    /// A binlog coordinate: the file's number (`binlog.000042` → 42) and the
    /// byte offset in it. Ordered by file, then offset.
    Binlog { file: u64, offset: u64 },
}

impl Default for EventPosition {
    fn default() -> Self {
        EventPosition::Lsn(0)
    }
}

impl EventPosition {
    /// The Postgres LSN (0 for other engines).
    pub fn lsn(&self) -> u64 {
        match self {
            EventPosition::Lsn(l) => *l,
            EventPosition::Binlog { .. } => 0,
        }
    }

    /// The position as one `u64`, for output formats that have one integer
    /// column for it (Parquet/Arrow `__position`): the LSN, or for a binlog
    /// coordinate the file number in the high 24 bits and the offset in the
    /// low 40. `None` when a binlog coordinate does not fit (file number of
    /// 2^24 or more, offset of 1 TiB or more); it is never masked.
    pub fn packed(&self) -> Option<u64> {
        match *self {
            EventPosition::Lsn(l) => Some(l),
            EventPosition::Binlog { file, offset } if file < 1 << 24 && offset < 1 << 40 => Some((file << 40) | offset),
            EventPosition::Binlog { .. } => None,
        }
    }
}

impl std::fmt::Display for EventPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventPosition::Lsn(l) => f.write_str(&format_lsn(*l)),
            EventPosition::Binlog { file, offset } => write!(f, "{file}:{offset}"),
        }
    }
}

impl Position {
    /// The coordinate part of a checkpoint position (MySQL: without the
    /// GTID state), comparable with the positions events carry.
    pub fn coordinate(&self) -> EventPosition {
        match self {
            Position::Postgres { lsn } => EventPosition::Lsn(*lsn),
            Position::Mysql { file, pos, .. } => EventPosition::Binlog { file: binlog_number(file), offset: *pos },
        }
    }
}

/// Where a MySQL/MariaDB change came from (the `source` block of its event).
/// Plain data, no heap and no reference counts: it is copied into every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MysqlOrigin {
    /// Binlog file of the row event (snapshot rows: of the snapshot point).
    pub file: BinlogFile,
    /// The transaction's GTID, when the server uses GTIDs.
    pub gtid: EventGtid,
    /// Offset of the row event in `file`.
    pub pos: u64,
    /// Server id of the server that wrote the event (0 for snapshot rows).
    pub server_id: u32,
    /// Index of the row within its rows event.
    pub row: u32,
}

/// A binlog file name as base name (interned once per distinct base) and
/// number: `binlog.000042`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinlogFile {
    pub base: &'static str,
    pub seq: u32,
    /// Digits of the number as the server writes it (6 for `000042`).
    pub width: u8,
}

impl BinlogFile {
    /// Split `binlog.000042`; base names are interned (a server has one or
    /// two over its life), so events carry no allocation.
    pub fn parse(name: &str) -> BinlogFile {
        let (base, num) = name.rsplit_once('.').unwrap_or((name, ""));
        BinlogFile { base: intern(base), seq: num.parse().unwrap_or(0), width: num.len().min(255) as u8 }
    }
}

impl std::fmt::Display for BinlogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:0w$}", self.base, self.seq, w = self.width as usize)
    }
}

fn intern(s: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    names.push(leaked);
    leaked
}

/// One transaction's GTID, inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventGtid {
    #[default]
    None,
    /// MariaDB `domain-server-seq`.
    MariaDb { domain: u32, server: u32, seq: u64 },
    /// MySQL `uuid:gno`.
    Mysql { uuid: [u8; 16], gno: u64 },
}

impl std::fmt::Display for EventGtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventGtid::None => Ok(()),
            EventGtid::MariaDb { domain, server, seq } => write!(f, "{domain}-{server}-{seq}"),
            EventGtid::Mysql { uuid, gno } => {
                for (i, x) in uuid.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{x:02x}")?;
                }
                write!(f, ":{gno}")
            }
        }
    }
}

/// Render a Postgres LSN as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parse a Postgres LSN from `X/Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return None;
    }
    Some((hi << 32) | lo)
}

/// One change to one row (or, for TRUNCATE, to one table).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub op: Op,
    pub table: Arc<TableSchema>,
    /// Old row image, as far as the source provides it (key columns for
    /// replica identity DEFAULT, all columns for FULL). Columns the source
    /// did not send are [`crate::Value::Unchanged`].
    pub before: Option<Row>,
    /// New row image. Unchanged TOASTed columns are [`crate::Value::Unchanged`].
    pub after: Option<Row>,
    /// Commit position of the transaction holding this change (for snapshot
    /// rows: the snapshot's consistent point). See [`EventPosition`].
    pub commit_position: EventPosition,
    /// The change's own position (Postgres: the WAL record's LSN; MySQL: the
    /// rows event's coordinate).
    pub position: EventPosition,
    /// Transaction id, when the source has one.
    pub tx_id: Option<u64>,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts_us: i64,
    /// True for snapshot rows.
    pub snapshot: bool,
    /// MySQL/MariaDB events: binlog coordinates (Postgres: `None`).
    pub mysql: Option<MysqlOrigin>,
}

impl ChangeEvent {
    /// True for an update whose old image carries a different key than its
    /// new row (a key column the old image does not have is not compared).
    pub fn key_changed(&self) -> bool {
        let (Op::Update, Some(before), Some(after)) = (self.op, &self.before, &self.after) else { return false };
        self.table.key_columns().any(|(i, _)| {
            let (b, a) = (before.values.get(i), after.values.get(i));
            !matches!(b, None | Some(crate::Value::Unchanged))
                && !matches!(a, None | Some(crate::Value::Unchanged))
                && b != a
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my(file: &str, pos: u64) -> Position {
        Position::Mysql { file: file.into(), pos, gtid: None }
    }

    #[test]
    fn event_positions_order_as_checkpoint_positions_do() {
        let ps = [my("binlog.000009", 900), my("binlog.000010", 4), my("binlog.999999", 10), my("binlog.1000000", 4)];
        for w in ps.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].coordinate() < w[1].coordinate(), "{} < {}", w[0], w[1]);
        }
        let pg = |lsn| Position::Postgres { lsn };
        assert!(pg(10).coordinate() < pg(11).coordinate());
        assert_eq!(pg(0x16_0000_0028).coordinate().to_string(), "16/28");
        assert_eq!(my("binlog.000042", 1234).coordinate(), EventPosition::Binlog { file: 42, offset: 1234 });
    }

    #[test]
    fn packed_positions_never_mask() {
        assert_eq!(EventPosition::Lsn(u64::MAX).packed(), Some(u64::MAX));
        assert_eq!(EventPosition::Binlog { file: 3, offset: 7 }.packed(), Some((3 << 40) | 7));
        let last = EventPosition::Binlog { file: (1 << 24) - 1, offset: (1 << 40) - 1 };
        assert_eq!(last.packed(), Some(u64::MAX));
        // Packing keeps the order of the positions that fit.
        let a = EventPosition::Binlog { file: 9, offset: (1 << 40) - 1 };
        let b = EventPosition::Binlog { file: 10, offset: 0 };
        assert!(a < b && a.packed() < b.packed());
        assert_eq!(EventPosition::Binlog { file: 1 << 24, offset: 4 }.packed(), None);
        assert_eq!(EventPosition::Binlog { file: 1, offset: 1 << 40 }.packed(), None);
    }
}
