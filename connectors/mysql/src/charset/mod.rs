//! Character sets of text columns: how a column's bytes in the binlog become
//! Unicode text.
//!
//! A table map names each text column's collation by id; the ids are the
//! server's own (MySQL 8 and MariaDB number some collations differently), so
//! [`Collations`] is read from the source server's catalog at stream start
//! and maps an id to its character set by name.
//!
//! Invariants:
//! - A value decodes to exactly the text the server returns for it when it
//!   converts to `utf8mb4` (what the snapshot reads): single-byte character
//!   sets use tables generated from the server's own conversion
//!   (`single_byte.rs`, by `scripts/gen-single-byte-charsets.py`), multi-byte
//!   ones tables of every sequence the server converts (`tables/*.bin`, by
//!   `scripts/gen-multi-byte-charsets.py`; the WHATWG tables of browsers
//!   differ from the server's in hundreds of places), UTF-16/UTF-32/UCS-2
//!   are decoded here. `gb18030` (MySQL 8 only) is not supported: there is
//!   no server here to take its table from.
//! - Bytes that do not decode are an error naming the character set, never
//!   replaced: silently altered text is worse than a stopped pipeline.

mod single_byte;

use std::collections::HashMap;

/// How one character set decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `utf8mb3` and `utf8mb4`: validated, copied.
    Utf8,
    /// `binary`: bytes, not text.
    Binary,
    /// One byte per character, through a table of the server's mapping.
    SingleByte { name: &'static str, table: &'static [u16; 256] },
    /// A multi-byte legacy encoding, through a table of the server's mapping.
    Multi { name: &'static str, table: MultiTable },
    /// `utf16` and `ucs2` (big-endian).
    Utf16Be { name: &'static str },
    /// `utf16le`.
    Utf16Le,
    /// `utf32` (big-endian).
    Utf32,
}

/// A value's bytes are not valid in its character set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub charset: &'static str,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the value holds bytes that are not valid {} text (the server stored them but cannot convert them \
             either: it reads them as '?')",
            self.charset
        )
    }
}

impl Charset {
    /// The character set called `name` on the server (None: unknown to Sluice).
    pub fn by_name(name: &str) -> Option<Charset> {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "utf8" | "utf8mb3" | "utf8mb4" => Some(Charset::Utf8),
            "binary" => Some(Charset::Binary),
            "utf16" => Some(Charset::Utf16Be { name: "utf16" }),
            "ucs2" => Some(Charset::Utf16Be { name: "ucs2" }),
            "utf16le" => Some(Charset::Utf16Le),
            "utf32" => Some(Charset::Utf32),
            "big5" => multi("big5", include_bytes!("tables/big5.bin")),
            "cp932" => multi("cp932", include_bytes!("tables/cp932.bin")),
            "eucjpms" => multi("eucjpms", include_bytes!("tables/eucjpms.bin")),
            "euckr" => multi("euckr", include_bytes!("tables/euckr.bin")),
            "gb2312" => multi("gb2312", include_bytes!("tables/gb2312.bin")),
            "gbk" => multi("gbk", include_bytes!("tables/gbk.bin")),
            "sjis" => multi("sjis", include_bytes!("tables/sjis.bin")),
            "ujis" => multi("ujis", include_bytes!("tables/ujis.bin")),
            _ => single_byte::TABLES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(name, table)| Charset::SingleByte { name, table }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Charset::Utf8 => "utf8mb4",
            Charset::Binary => "binary",
            Charset::SingleByte { name, .. } | Charset::Multi { name, .. } | Charset::Utf16Be { name } => name,
            Charset::Utf16Le => "utf16le",
            Charset::Utf32 => "utf32",
        }
    }

    pub fn is_binary(&self) -> bool {
        *self == Charset::Binary
    }

    /// The text of `b` (for [`Charset::Binary`], its bytes read as UTF-8).
    pub fn decode(&self, b: &[u8]) -> Result<String, Undecodable> {
        let bad = || Undecodable { charset: self.name() };
        match self {
            Charset::Utf8 | Charset::Binary => std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad()),
            Charset::SingleByte { table, .. } => single(b, table).ok_or_else(bad),
            Charset::Multi { table, .. } => table.decode(b).ok_or_else(bad),
            Charset::Utf16Be { .. } => utf16(b, u16::from_be_bytes).ok_or_else(bad),
            Charset::Utf16Le => utf16(b, u16::from_le_bytes).ok_or_else(bad),
            Charset::Utf32 => utf32(b).ok_or_else(bad),
        }
    }
}

fn multi(name: &'static str, table: &'static [u8]) -> Option<Charset> {
    Some(Charset::Multi { name, table: MultiTable::new(table) })
}

/// A generated table of a multi-byte character set (format: see
/// `scripts/gen-multi-byte-charsets.py`): little-endian u16 code points,
/// single bytes, then two-byte sequences (lead 0x81..=0xFE, trail
/// 0x40..=0xFE), then, for the EUC-JP family, `0x8F` three-byte sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultiTable(&'static [u8]);

const DOUBLE_AT: usize = 256;
const TRAILS: usize = 0xFF - 0x40;
const TRIPLE_AT: usize = DOUBLE_AT + 126 * TRAILS;
const EUC: std::ops::RangeInclusive<u8> = 0xA1..=0xFE;

impl MultiTable {
    fn new(bytes: &'static [u8]) -> MultiTable {
        debug_assert!(bytes.len() == TRIPLE_AT * 2 || bytes.len() == (TRIPLE_AT + 94 * 94) * 2);
        MultiTable(bytes)
    }

    fn at(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.0[2 * i], self.0[2 * i + 1]])
    }

    fn has_triples(&self) -> bool {
        self.0.len() > TRIPLE_AT * 2
    }

    fn decode(&self, b: &[u8]) -> Option<String> {
        let mut s = String::with_capacity(b.len() * 3 / 2);
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            let (u, len) = match self.at(c as usize) {
                u if u != single_byte::UNMAPPED => (u, 1),
                _ if c == 0x8F && self.has_triples() => {
                    let (t1, t2) = (*b.get(i + 1)?, *b.get(i + 2)?);
                    if !EUC.contains(&t1) || !EUC.contains(&t2) {
                        return None;
                    }
                    (self.at(TRIPLE_AT + (t1 - 0xA1) as usize * 94 + (t2 - 0xA1) as usize), 3)
                }
                _ => {
                    let t = *b.get(i + 1)?;
                    if !(0x81..=0xFE).contains(&c) || !(0x40..=0xFE).contains(&t) {
                        return None;
                    }
                    (self.at(DOUBLE_AT + (c - 0x81) as usize * TRAILS + (t - 0x40) as usize), 2)
                }
            };
            if u == single_byte::UNMAPPED {
                return None;
            }
            s.push(char::from_u32(u as u32)?);
            i += len;
        }
        Some(s)
    }
}

fn single(b: &[u8], table: &[u16; 256]) -> Option<String> {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        let u = table[c as usize];
        if u == single_byte::UNMAPPED {
            return None;
        }
        s.push(char::from_u32(u as u32)?);
    }
    Some(s)
}

fn utf16(b: &[u8], unit: fn([u8; 2]) -> u16) -> Option<String> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let units = b.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    char::decode_utf16(units).collect::<Result<String, _>>().ok()
}

fn utf32(b: &[u8]) -> Option<String> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    b.chunks_exact(4).map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
}

/// Collation id → character set, as one server numbers its collations.
#[derive(Debug, Clone, Default)]
pub struct Collations {
    by_id: HashMap<u16, Result<Charset, String>>,
}

impl Collations {
    /// From `(collation id, character set name)` rows of the server's catalog.
    pub fn from_rows(rows: impl IntoIterator<Item = (u16, String)>) -> Collations {
        let by_id = rows.into_iter().map(|(id, name)| (id, Charset::by_name(&name).ok_or(name))).collect();
        Collations { by_id }
    }

    /// The collations every MySQL and MariaDB numbers alike, for tests that
    /// decode events without a server: the UTF-8, latin1 and binary ones.
    #[cfg(test)]
    pub fn builtin() -> Collations {
        let mut rows: Vec<(u16, String)> = vec![(63, "binary".into())];
        rows.extend([5u16, 8, 15, 31, 47, 48, 49, 94].map(|id| (id, "latin1".into())));
        rows.extend([33u16, 83, 192, 223].map(|id| (id, "utf8mb3".into())));
        rows.extend([45u16, 46, 224, 246, 255].map(|id| (id, "utf8mb4".into())));
        Collations::from_rows(rows)
    }

    /// The character set of collation `id`, or an error saying what is unknown.
    pub fn charset(&self, id: u16) -> Result<Charset, String> {
        match self.by_id.get(&id) {
            Some(Ok(cs)) => Ok(*cs),
            Some(Err(name)) => Err(format!("character set {name} (collation id {id}) is not supported by Sluice")),
            None => Err(format!("collation id {id} is not in the server's catalog")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(name: &str) -> Charset {
        Charset::by_name(name).unwrap()
    }

    #[test]
    fn decodes_each_family() {
        assert_eq!(cs("cp1251").decode(&[0xcf, 0xf0, 0xe8]).unwrap(), "При");
        assert_eq!(cs("latin1").decode(&[0x80, 0x81, b'a', 0xe9]).unwrap(), "\u{20ac}\u{81}aé");
        assert_eq!(cs("koi8r").decode(&[0xf0, 0xd2]).unwrap(), "Пр");
        assert_eq!(cs("swe7").decode(b"[").unwrap(), "Ä");
        assert_eq!(cs("gbk").decode(&[0xc4, 0xe3, 0xba, 0xc3]).unwrap(), "你好");
        assert_eq!(cs("sjis").decode(&[0x82, 0xb1, 0x82, 0xf1]).unwrap(), "こん");
        assert_eq!(cs("ujis").decode(&[0x8e, 0xb1, 0x8f, 0xb0, 0xa1, b'a']).unwrap(), "ｱ丂a");
        assert_eq!(cs("utf16").decode(&[0x00, b'h', 0xd8, 0x3d, 0xde, 0x00]).unwrap(), "h😀");
        assert_eq!(cs("utf16le").decode(&[b'h', 0x00, 0x13, 0x27]).unwrap(), "h✓");
        assert_eq!(cs("utf32").decode(&[0, 0, 0, b'h', 0, 1, 0xf6, 0]).unwrap(), "h😀");
        assert_eq!(cs("ucs2").decode(&[0x04, 0x1f]).unwrap(), "П");
    }

    /// Where the server's tables differ from the WHATWG ones (browsers,
    /// `encoding_rs`): the value must be what a snapshot reads.
    #[test]
    fn multi_byte_sets_follow_the_server_not_whatwg() {
        assert_eq!(cs("sjis").decode(&[0x81, 0x5f, 0x81, 0x60, 0x81, 0x7c]).unwrap(), "\\〜−");
        assert_eq!(cs("cp932").decode(&[0x81, 0x5f, 0x81, 0x60, 0x81, 0x7c]).unwrap(), "＼～－");
        assert_eq!(cs("big5").decode(&[0xa1, 0x45, 0xa1, 0xc2]).unwrap(), "•‾");
        assert_eq!(cs("gb2312").decode(&[0xa1, 0xa4]).unwrap(), "・");
        assert_eq!(cs("eucjpms").decode(&[0x8f, 0xf3, 0xf3]).unwrap(), "ⅰ");
        assert_eq!(cs("ujis").decode(&[0x8f, 0xf5, 0xa1]).unwrap(), "\u{e3ac}");
    }

    #[test]
    fn undecodable_bytes_are_errors_not_replacements() {
        for (name, bytes) in [
            ("ascii", &[0x80u8][..]),
            ("utf8mb4", &[0xff, 0x41][..]),
            ("gbk", &[0xc4][..]),
            ("sjis", &[0x82][..]),
            ("sjis", &[0x82, 0x20][..]),
            ("ujis", &[0x8f, 0xb0][..]),
            ("big5", &[0xff][..]),
            ("utf16", &[0x00][..]),
            ("utf16", &[0xd8, 0x3d, 0x00, 0x41][..]),
            ("utf32", &[0x00, 0x11, 0x00, 0x00][..]),
        ] {
            let e = cs(name).decode(bytes).unwrap_err();
            assert_eq!(e.charset, cs(name).name(), "{name}");
        }
    }

    #[test]
    fn every_server_charset_is_known() {
        for name in [
            "big5", "dec8", "cp850", "hp8", "koi8r", "latin1", "latin2", "swe7", "ascii", "ujis", "sjis", "hebrew",
            "tis620", "euckr", "koi8u", "gb2312", "greek", "cp1250", "gbk", "latin5", "armscii8", "utf8mb3", "ucs2",
            "cp866", "keybcs2", "macce", "macroman", "cp852", "latin7", "utf8mb4", "cp1251", "utf16", "utf16le",
            "cp1256", "cp1257", "utf32", "binary", "geostd8", "cp932", "eucjpms", "utf8",
        ] {
            assert!(Charset::by_name(name).is_some(), "{name}");
        }
        assert_eq!(Charset::by_name("gb18030"), None);
        let c = Collations::from_rows([(8, "latin1".to_string()), (300, "klingon".to_string())]);
        assert_eq!(c.charset(8).unwrap().name(), "latin1");
        assert!(c.charset(300).unwrap_err().contains("klingon"));
        assert!(c.charset(7).unwrap_err().contains("collation id 7"));
    }
}
