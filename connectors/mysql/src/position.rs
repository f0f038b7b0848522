//! Binlog coordinates and GTID state.
//!
//! Invariants:
//! - A coordinate `(file, pos)` orders by the file's numeric suffix, then the
//!   offset; coordinates are exact (`pos` is the byte just past an event).
//! - The GTID state is advanced only when a transaction's commit event has
//!   been read, so the state stored with a checkpoint names exactly the
//!   transactions delivered.

use std::collections::BTreeMap;

use sluice_core::EventPosition;

/// `binlog.000042` → 42.
pub fn file_seq(file: &str) -> u64 {
    file.rsplit('.').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A binlog coordinate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coord {
    pub file: String,
    pub pos: u64,
}

impl Coord {
    pub fn key(&self) -> (u64, u64) {
        (file_seq(&self.file), self.pos)
    }
    /// The coordinate as events carry it (file number and offset, unpacked).
    pub fn event_position(&self) -> EventPosition {
        EventPosition::Binlog { file: file_seq(&self.file), offset: self.pos }
    }
}

/// GTID state of either flavor, as the server writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GtidState {
    #[default]
    None,
    /// MariaDB: domain → (server id, sequence number).
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// MySQL: server uuid → sorted, merged intervals (inclusive).
    Mysql(BTreeMap<String, Vec<(u64, u64)>>),
}

impl GtidState {
    /// Parse `0-1-100,1-2-5` (MariaDB) or `uuid:1-5:7,uuid2:1-3` (MySQL).
    pub fn parse(s: &str) -> Option<GtidState> {
        let s = s.trim();
        if s.is_empty() {
            return Some(GtidState::None);
        }
        if s.contains(':') {
            let mut m = BTreeMap::new();
            for part in s.split(',') {
                let mut it = part.trim().split(':');
                let uuid = it.next()?.trim().to_ascii_lowercase();
                let mut ivs = Vec::new();
                for iv in it {
                    let (a, b) = match iv.split_once('-') {
                        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                        None => {
                            let a: u64 = iv.parse().ok()?;
                            (a, a)
                        }
                    };
                    ivs.push((a, b));
                }
                m.insert(uuid, ivs);
            }
            Some(GtidState::Mysql(m))
        } else {
            let mut m = BTreeMap::new();
            for part in s.split(',') {
                let mut it = part.trim().split('-');
                let d: u32 = it.next()?.parse().ok()?;
                let sv: u32 = it.next()?.parse().ok()?;
                let q: u64 = it.next()?.parse().ok()?;
                m.insert(d, (sv, q));
            }
            Some(GtidState::MariaDb(m))
        }
    }

    /// Record a committed transaction's GTID.
    pub fn add(&mut self, g: &Gtid) {
        match g {
            Gtid::MariaDb { domain, server, seq } => {
                if !matches!(self, GtidState::MariaDb(_)) {
                    *self = GtidState::MariaDb(BTreeMap::new());
                }
                if let GtidState::MariaDb(m) = self {
                    m.insert(*domain, (*server, *seq));
                }
            }
            Gtid::Mysql { uuid, gno } => {
                if !matches!(self, GtidState::Mysql(_)) {
                    *self = GtidState::Mysql(BTreeMap::new());
                }
                if let GtidState::Mysql(m) = self {
                    let ivs = m.entry(uuid.clone()).or_default();
                    ivs.push((*gno, *gno));
                    ivs.sort_unstable();
                    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
                    for &(a, b) in ivs.iter() {
                        match merged.last_mut() {
                            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                            _ => merged.push((a, b)),
                        }
                    }
                    *ivs = merged;
                }
            }
        }
    }

    pub fn render(&self) -> Option<String> {
        match self {
            GtidState::None => None,
            GtidState::MariaDb(m) => {
                Some(m.iter().map(|(d, (s, q))| format!("{d}-{s}-{q}")).collect::<Vec<_>>().join(","))
            }
            GtidState::Mysql(m) => Some(
                m.iter()
                    .map(|(u, ivs)| {
                        let mut s = u.clone();
                        for (a, b) in ivs {
                            if a == b {
                                s.push_str(&format!(":{a}"));
                            } else {
                                s.push_str(&format!(":{a}-{b}"));
                            }
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }
}

/// One transaction's GTID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtid {
    MariaDb { domain: u32, server: u32, seq: u64 },
    Mysql { uuid: String, gno: u64 },
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gtid::MariaDb { domain, server, seq } => write!(f, "{domain}-{server}-{seq}"),
            Gtid::Mysql { uuid, gno } => write!(f, "{uuid}:{gno}"),
        }
    }
}

/// Format 16 bytes as a MySQL server uuid.
pub fn uuid_string(b: &[u8]) -> String {
    crate::decoding::uuid_text(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_state() {
        let mut s = GtidState::parse("0-1-100,2-5-7").unwrap();
        s.add(&Gtid::MariaDb { domain: 0, server: 1, seq: 101 });
        s.add(&Gtid::MariaDb { domain: 1, server: 3, seq: 1 });
        assert_eq!(s.render().unwrap(), "0-1-101,1-3-1,2-5-7");
    }

    #[test]
    fn mysql_state() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut s = GtidState::parse(&format!("{u}:1-5:7")).unwrap();
        s.add(&Gtid::Mysql { uuid: u.into(), gno: 6 });
        assert_eq!(s.render().unwrap(), format!("{u}:1-7"));
        s.add(&Gtid::Mysql { uuid: u.into(), gno: 9 });
        assert_eq!(s.render().unwrap(), format!("{u}:1-7:9"));
    }

    #[test]
    fn coords() {
        let a = Coord { file: "binlog.000009".into(), pos: 900 };
        let b = Coord { file: "binlog.000010".into(), pos: 4 };
        assert!(a.key() < b.key());
        assert!(a.event_position() < b.event_position());
    }
}
