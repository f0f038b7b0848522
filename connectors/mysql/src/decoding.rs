//! Row-image decoding: binlog bytes straight into [`Value`]s.
//!
//! A `TABLE_MAP` event describes the column types and metadata of the rows
//! events that follow it; [`TablePlan`] turns one into a per-column decoding
//! plan plus the [`TableSchema`] the events carry. Rows are then decoded from
//! the rows event's bytes without intermediate values.
//!
//! Invariants:
//! - A plan describes exactly the rows written with its table map, so DDL
//!   (ADD/DROP/MODIFY COLUMN) between events never misaligns decoding: the
//!   table map of each transaction is authoritative. Names, signedness,
//!   ENUM/SET labels, character sets and the primary key come from the table
//!   map's optional metadata (`binlog_row_metadata=FULL`).
//! - Values decode to the same [`Value`] as the snapshot reads for the same
//!   stored data (see `snapshot`): FLOAT through its shortest `f32` text,
//!   TIMESTAMP as UTC microseconds, DECIMAL as its exact text with the
//!   column's scale, zero dates as NULL, BIT(n) as a string of n `0`/`1`.
//! - Malformed bytes are an error naming the table and column, never a panic.

use std::sync::Arc;

use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::constants::ColumnType as MyType;
use sluice_core::value::days_from_civil;

use crate::charset::{Charset, Collations};
use sluice_core::{Column, ColumnType, ReplicaIdentity, TableId, TableSchema, Value};

/// How one column's bytes are laid out.
#[derive(Debug, Clone)]
pub enum Kind {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    /// Old (pre-5.6.4) TIME / DATETIME / TIMESTAMP formats.
    TimeOld,
    DateTimeOld,
    TimestampOld,
    Time2 {
        fsp: u8,
    },
    DateTime2 {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    Bit {
        bits: u16,
    },
    Enum {
        pack: u8,
        labels: Arc<Vec<String>>,
    },
    Set {
        pack: u8,
        labels: Arc<Vec<String>>,
    },
    /// CHAR / VARCHAR: length prefix of `len_bytes` (1 or 2). BINARY(n) is
    /// logged without its trailing zero bytes: `pad` restores them.
    Str {
        len_bytes: u8,
        cs: Charset,
        pad: u16,
    },
    /// BLOB / TEXT family: length prefix of `len_bytes` (1..=4).
    Blob {
        len_bytes: u8,
        cs: Charset,
    },
    /// MySQL binary JSON.
    Json {
        len_bytes: u8,
    },
    Geometry {
        len_bytes: u8,
    },
}

/// Decoding plan for one table map.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<Kind>,
}

/// A row or table map that cannot be decoded. `per_table`: the event is
/// well formed but a value of this table cannot be represented (bytes not
/// valid in the column's character set, a character set Sluice does not
/// know): the table is stopped, the others go on. Otherwise the event itself
/// is malformed and the stream cannot go on.
#[derive(Debug)]
pub struct DecodeError {
    pub message: String,
    pub per_table: bool,
}

impl DecodeError {
    fn new(message: impl Into<String>) -> DecodeError {
        DecodeError { message: message.into(), per_table: false }
    }
    fn table(message: impl Into<String>) -> DecodeError {
        DecodeError { message: message.into(), per_table: true }
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::new(msg))
}

/// Column description from a table map event (before merging with the catalog).
pub struct MappedColumn {
    pub name: String,
    pub kind: Kind,
    pub ty: ColumnType,
    pub source_type: String,
    pub nullable: bool,
    pub key: bool,
}

/// Read a table map into columns. Fails when the server did not log column
/// names (`binlog_row_metadata` is not FULL) or a text column's character
/// set is unknown (`collations`: the source server's collation ids). `mariadb`: MariaDB lists a
/// character set for GEOMETRY columns too (they are BLOBs there).
pub fn map_columns(
    tme: &TableMapEvent<'_>,
    mariadb: bool,
    collations: &Collations,
) -> Result<Vec<MappedColumn>, DecodeError> {
    let n = tme.columns_count() as usize;
    let mut names: Vec<String> = Vec::new();
    let mut signedness: Vec<bool> = Vec::new();
    let mut charsets: Vec<u16> = Vec::new();
    let mut default_cs: Option<u16> = None;
    let mut non_default: Vec<(usize, u16)> = Vec::new();
    let mut enum_labels: Vec<Arc<Vec<String>>> = Vec::new();
    let mut set_labels: Vec<Arc<Vec<String>>> = Vec::new();
    let mut pk: Vec<usize> = Vec::new();
    for f in tme.iter_optional_meta() {
        let f = f.map_err(|e| DecodeError::new(format!("table map optional metadata: {e}")))?;
        match f {
            OptionalMetadataField::Signedness(bits) => signedness = bits.iter().map(|b| *b).collect(),
            OptionalMetadataField::DefaultCharset(d) => {
                default_cs = Some(d.default_charset());
                for x in d.iter_non_default() {
                    let x = x.map_err(|e| DecodeError::new(format!("table map charset: {e}")))?;
                    non_default.push((x.column_index() as usize, x.charset()));
                }
            }
            OptionalMetadataField::ColumnCharset(c) => {
                for x in c.iter_charsets() {
                    charsets.push(x.map_err(|e| DecodeError::new(format!("table map charset: {e}")))?);
                }
            }
            OptionalMetadataField::ColumnName(c) => {
                for x in c.iter_names() {
                    names.push(
                        x.map_err(|e| DecodeError::new(format!("table map column name: {e}")))?.name().into_owned(),
                    );
                }
            }
            OptionalMetadataField::EnumStrValue(v) => {
                for x in v.iter_values() {
                    let x = x.map_err(|e| DecodeError::new(format!("table map enum labels: {e}")))?;
                    enum_labels.push(Arc::new(x.values().iter().map(|s| s.value().into_owned()).collect()));
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for x in v.iter_values() {
                    let x = x.map_err(|e| DecodeError::new(format!("table map set labels: {e}")))?;
                    set_labels.push(Arc::new(x.values().iter().map(|s| s.value().into_owned()).collect()));
                }
            }
            OptionalMetadataField::SimplePrimaryKey(k) => {
                for x in k.iter_indexes() {
                    pk.push(x.map_err(|e| DecodeError::new(format!("table map primary key: {e}")))? as usize);
                }
            }
            OptionalMetadataField::PrimaryKeyWithPrefix(k) => {
                for x in k.iter_keys() {
                    pk.push(
                        x.map_err(|e| DecodeError::new(format!("table map primary key: {e}")))?.column_index() as usize
                    );
                }
            }
            _ => {}
        }
    }
    if names.len() != n {
        return err(format!(
            "the binlog has no column names for {}.{}: set binlog_row_metadata = FULL on the server",
            tme.database_name(),
            tme.table_name()
        ));
    }
    let nulls = tme.null_bitmask();
    let (mut num_i, mut cs_i, mut char_i, mut enum_i, mut set_i) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut out = Vec::with_capacity(n);
    for (i, name) in names.into_iter().enumerate() {
        let raw = tme
            .get_raw_column_type(i)
            .map_err(|e| DecodeError::new(format!("column {name}: {e}")))?
            .ok_or_else(|| DecodeError::new(format!("column {name}: no type")))?;
        let real = tme
            .get_column_type(i)
            .map_err(|e| DecodeError::new(format!("column {name}: {e:?}")))?
            .ok_or_else(|| DecodeError::new(format!("column {name}: no type")))?;
        let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
        let unsigned = if raw.is_numeric_type() {
            let u = signedness.get(num_i).copied().unwrap_or(false);
            num_i += 1;
            u
        } else {
            false
        };
        let is_char =
            (raw.is_character_type() && !real.is_enum_or_set_type()) || (mariadb && raw == MyType::MYSQL_TYPE_GEOMETRY);
        let cs = if is_char {
            let id = if let Some(d) = default_cs {
                non_default.iter().find(|(c, _)| *c == char_i).map(|(_, cs)| *cs).unwrap_or(d)
            } else {
                charsets.get(cs_i).copied().unwrap_or(45)
            };
            char_i += 1;
            cs_i += 1;
            collations.charset(id).map_err(|e| {
                DecodeError::table(format!("column {name} of {}.{}: {e}", tme.database_name(), tme.table_name()))
            })?
        } else {
            Charset::Utf8
        };
        let m0 = meta.first().copied().unwrap_or(0);
        let m1 = meta.get(1).copied().unwrap_or(0);
        let (kind, ty, st): (Kind, ColumnType, String) = match real {
            MyType::MYSQL_TYPE_TINY => (Kind::Int { bytes: 1, unsigned }, ColumnType::Int16, "tinyint".into()),
            MyType::MYSQL_TYPE_SHORT => (
                Kind::Int { bytes: 2, unsigned },
                if unsigned { ColumnType::Int32 } else { ColumnType::Int16 },
                "smallint".into(),
            ),
            MyType::MYSQL_TYPE_INT24 => (Kind::Int { bytes: 3, unsigned }, ColumnType::Int32, "mediumint".into()),
            MyType::MYSQL_TYPE_LONG => (
                Kind::Int { bytes: 4, unsigned },
                if unsigned { ColumnType::Int64 } else { ColumnType::Int32 },
                "int".into(),
            ),
            MyType::MYSQL_TYPE_LONGLONG => (
                Kind::Int { bytes: 8, unsigned },
                if unsigned { ColumnType::UInt64 } else { ColumnType::Int64 },
                "bigint".into(),
            ),
            MyType::MYSQL_TYPE_FLOAT => (Kind::Float, ColumnType::Float32, "float".into()),
            MyType::MYSQL_TYPE_DOUBLE => (Kind::Double, ColumnType::Float64, "double".into()),
            MyType::MYSQL_TYPE_NEWDECIMAL => (
                Kind::Decimal { precision: m0, scale: m1 },
                ColumnType::Numeric { precision: Some(m0 as u32), scale: Some(m1 as u32) },
                format!("decimal({m0},{m1})"),
            ),
            MyType::MYSQL_TYPE_YEAR => (Kind::Year, ColumnType::Int16, "year".into()),
            MyType::MYSQL_TYPE_DATE | MyType::MYSQL_TYPE_NEWDATE => (Kind::Date, ColumnType::Date, "date".into()),
            MyType::MYSQL_TYPE_TIME => (Kind::TimeOld, ColumnType::Time, "time".into()),
            MyType::MYSQL_TYPE_TIME2 => (Kind::Time2 { fsp: m0 }, ColumnType::Time, with_fsp("time", m0)),
            MyType::MYSQL_TYPE_DATETIME => (Kind::DateTimeOld, ColumnType::Timestamp, "datetime".into()),
            MyType::MYSQL_TYPE_DATETIME2 => {
                (Kind::DateTime2 { fsp: m0 }, ColumnType::Timestamp, with_fsp("datetime", m0))
            }
            MyType::MYSQL_TYPE_TIMESTAMP => (Kind::TimestampOld, ColumnType::TimestampTz, "timestamp".into()),
            MyType::MYSQL_TYPE_TIMESTAMP2 => {
                (Kind::Timestamp2 { fsp: m0 }, ColumnType::TimestampTz, with_fsp("timestamp", m0))
            }
            MyType::MYSQL_TYPE_BIT => {
                let bits = m1 as u16 * 8 + m0 as u16;
                (Kind::Bit { bits }, ColumnType::Other, format!("bit({bits})"))
            }
            MyType::MYSQL_TYPE_ENUM => {
                let labels = enum_labels.get(enum_i).cloned().unwrap_or_default();
                enum_i += 1;
                (Kind::Enum { pack: m1, labels }, ColumnType::Text, "enum".into())
            }
            MyType::MYSQL_TYPE_SET => {
                let labels = set_labels.get(set_i).cloned().unwrap_or_default();
                set_i += 1;
                (Kind::Set { pack: m1, labels }, ColumnType::Text, "set".into())
            }
            MyType::MYSQL_TYPE_STRING => {
                // Real type STRING: max length is packed into the two metadata bytes.
                let max_len =
                    if (m0 & 0x30) != 0x30 { ((((m0 & 0x30) ^ 0x30) as u16) << 4) | m1 as u16 } else { m1 as u16 };
                let len_bytes = if max_len > 255 { 2 } else { 1 };
                let (ty, st) = if cs.is_binary() { (ColumnType::Bytes, "binary") } else { (ColumnType::Text, "char") };
                let pad = if cs.is_binary() { max_len } else { 0 };
                (Kind::Str { len_bytes, cs, pad }, ty, st.into())
            }
            MyType::MYSQL_TYPE_VARCHAR | MyType::MYSQL_TYPE_VAR_STRING => {
                let max_len = u16::from_le_bytes([m0, m1]);
                let len_bytes = if max_len > 255 { 2 } else { 1 };
                let (ty, st) =
                    if cs.is_binary() { (ColumnType::Bytes, "varbinary") } else { (ColumnType::Text, "varchar") };
                (Kind::Str { len_bytes, cs, pad: 0 }, ty, st.into())
            }
            MyType::MYSQL_TYPE_BLOB
            | MyType::MYSQL_TYPE_TINY_BLOB
            | MyType::MYSQL_TYPE_MEDIUM_BLOB
            | MyType::MYSQL_TYPE_LONG_BLOB => {
                let (ty, st) = if cs.is_binary() { (ColumnType::Bytes, "blob") } else { (ColumnType::Text, "text") };
                (Kind::Blob { len_bytes: m0, cs }, ty, st.into())
            }
            MyType::MYSQL_TYPE_JSON => (Kind::Json { len_bytes: m0 }, ColumnType::Json, "json".into()),
            MyType::MYSQL_TYPE_GEOMETRY => (Kind::Geometry { len_bytes: m0 }, ColumnType::Bytes, "geometry".into()),
            other => {
                return err(format!(
                    "column {name} of {}.{} has binlog type {other:?}, which Sluice cannot decode",
                    tme.database_name(),
                    tme.table_name()
                ))
            }
        };
        out.push(MappedColumn {
            key: pk.contains(&i),
            nullable: nulls.get(i).map(|b| *b).unwrap_or(true),
            name,
            kind,
            ty,
            source_type: if unsigned { format!("{st} unsigned") } else { st },
        });
    }
    Ok(out)
}

/// `datetime`, `datetime(3)`: the type as MySQL declares it.
fn with_fsp(base: &str, fsp: u8) -> String {
    if fsp == 0 {
        base.to_string()
    } else {
        format!("{base}({fsp})")
    }
}

/// Build a plan from table-map columns; where the catalog's description of
/// the table has the same column names and compatible types, its schema
/// (source types, JSON/UUID columns, nullability, key) is used, so snapshot
/// and stream events carry identical schemas.
pub fn plan(
    database: &str,
    id: TableId,
    cols: Vec<MappedColumn>,
    catalog: Option<&TableSchema>,
    version: u64,
) -> TablePlan {
    let same = catalog.is_some_and(|c| {
        c.columns.len() == cols.len()
            && c.columns.iter().zip(&cols).all(|(a, b)| a.name == b.name && compatible(&a.ty, &b.ty))
    });
    let mut kinds = Vec::with_capacity(cols.len());
    let schema = if same {
        let c = catalog.expect("checked");
        for m in cols {
            kinds.push(m.kind);
        }
        TableSchema { version, ..c.clone() }
    } else {
        let mut columns = Vec::with_capacity(cols.len());
        let has_key = cols.iter().any(|c| c.key);
        for m in cols {
            columns.push(Column {
                name: m.name,
                ty: m.ty,
                source_type: m.source_type,
                type_id: 0,
                type_modifier: -1,
                key: m.key,
                nullable: m.nullable,
            });
            kinds.push(m.kind);
        }
        TableSchema {
            database: database.to_string(),
            id,
            columns,
            replica_identity: if has_key { ReplicaIdentity::Default } else { ReplicaIdentity::Full },
            version,
        }
    };
    TablePlan { schema: Arc::new(schema), kinds }
}

/// The catalog type may refine the binlog type: text columns holding JSON
/// (MariaDB) or UUIDs, and `tinyint(1)`.
fn compatible(catalog: &ColumnType, binlog: &ColumnType) -> bool {
    catalog == binlog
        || matches!((catalog, binlog), (ColumnType::Json, ColumnType::Text) | (ColumnType::Uuid, ColumnType::Bytes))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.at + n > self.b.len() {
            return err(format!("row image truncated (need {n} bytes at offset {})", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    #[inline]
    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        if n > 8 {
            return err(format!("bad length width {n} in table map metadata"));
        }
        let s = self.take(n)?;
        let mut v = 0u64;
        for (i, b) in s.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        Ok(v)
    }
    #[inline]
    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        if n > 8 {
            return err(format!("bad value width {n}"));
        }
        let s = self.take(n)?;
        let mut v = 0u64;
        for b in s {
            v = (v << 8) | *b as u64;
        }
        Ok(v)
    }
}

/// A text column's value (a `binary` one's bytes).
#[inline]
fn text(b: &[u8], cs: Charset) -> Result<Value, DecodeError> {
    match cs {
        Charset::Binary => Ok(Value::Bytes(b.to_vec())),
        cs => cs.decode(b).map(Value::Text).map_err(|e| DecodeError::table(e.to_string())),
    }
}

/// FLOAT as the f64 nearest to its shortest decimal form (1.1f32 → 1.1).
pub fn widen_f32(f: f32) -> f64 {
    if !f.is_finite() {
        return f as f64;
    }
    let mut b = ryu::Buffer::new();
    b.format_finite(f).parse().unwrap_or(f as f64)
}

/// BIT(n) as a string of n binary digits, from big-endian bytes.
pub fn bit_string(bytes: &[u8], bits: u16) -> String {
    let mut s = String::with_capacity(bits as usize);
    let total = bytes.len() * 8;
    for i in (total.saturating_sub(bits as usize))..total {
        let byte = bytes[i / 8];
        s.push(if byte & (0x80 >> (i % 8)) != 0 { '1' } else { '0' });
    }
    while s.len() < bits as usize {
        s.insert(0, '0');
    }
    s
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Size in bytes of a binary DECIMAL(precision, scale).
pub fn decimal_size(precision: u8, scale: u8) -> usize {
    let intg = (precision - scale.min(precision)) as usize;
    let frac = scale as usize;
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// Digits of a decimal (at most 65 + a group of slack), on the stack.
struct Digits {
    buf: [u8; 90],
    len: usize,
}

impl Digits {
    /// Append `v` as exactly `width` decimal digits (zero-padded).
    #[inline]
    fn push(&mut self, mut v: u64, width: usize) {
        let start = self.len;
        let end = (start + width).min(self.buf.len());
        self.buf[start..end].fill(b'0');
        let mut i = end;
        while v > 0 && i > start {
            i -= 1;
            self.buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len = end;
    }
}

/// Decode MySQL's binary DECIMAL into its exact text (`-12.50`).
pub fn decode_decimal(raw: &[u8], precision: u8, scale: u8) -> Result<String, DecodeError> {
    let size = decimal_size(precision, scale);
    if raw.len() < size || size == 0 {
        return err("decimal truncated");
    }
    let negative = raw[0] & 0x80 == 0;
    let mask: u8 = if negative { 0xff } else { 0 };
    let byte = |i: usize| -> u8 {
        let b = raw[i] ^ mask;
        if i == 0 {
            b ^ 0x80
        } else {
            b
        }
    };
    let mut at = 0usize;
    let mut be = |n: usize| -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | byte(at) as u64;
            at += 1;
        }
        v
    };
    let intg = (precision - scale.min(precision)) as usize;
    let frac = scale as usize;
    // Digits of the integer part, then of the fraction, in one buffer.
    let mut d = Digits { buf: [0; 90], len: 0 };
    let lead = intg % 9;
    if lead > 0 {
        let v = be(DIG2BYTES[lead]);
        d.push(v, lead);
    }
    for _ in 0..intg / 9 {
        let v = be(4);
        d.push(v, 9);
    }
    let int_len = d.len;
    for _ in 0..frac / 9 {
        let v = be(4);
        d.push(v, 9);
    }
    let trail = frac % 9;
    if trail > 0 {
        let v = be(DIG2BYTES[trail]);
        d.push(v, trail);
    }
    let digits = &d.buf[..d.len];
    let first = digits[..int_len].iter().position(|&d| d != b'0').unwrap_or(int_len);
    let zero = first == int_len && digits[int_len..].iter().all(|&d| d == b'0');
    let mut out = String::with_capacity(digits.len() + 3);
    if negative && !zero {
        out.push('-');
    }
    if first == int_len {
        out.push('0');
    } else {
        out.push_str(std::str::from_utf8(&digits[first..int_len]).unwrap_or("0"));
    }
    if frac > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[int_len..]).unwrap_or(""));
    }
    Ok(out)
}

fn frac_us(r: &mut Reader<'_>, fsp: u8) -> Result<i64, DecodeError> {
    Ok(match fsp {
        0 => 0,
        1 | 2 => r.be(1)? as i64 * 10_000,
        3 | 4 => r.be(2)? as i64 * 100,
        _ => r.be(3)? as i64,
    })
}

/// Days since the epoch, or `None` for zero / partial-zero dates.
fn civil_days(y: i64, m: u32, d: u32) -> Option<i32> {
    if m == 0 || d == 0 || m > 12 || d > 31 {
        return None;
    }
    Some(days_from_civil(y, m, d) as i32)
}

fn datetime_us(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> Option<i64> {
    let days = civil_days(y, mo, d)? as i64;
    Some(days * 86_400_000_000 + ((h * 60 + mi) * 60 + s) * 1_000_000 + us)
}

/// Decode one value of `kind`; `ty` is the schema's type (JSON text, UUIDs).
fn decode_value(r: &mut Reader<'_>, kind: &Kind, ty: &ColumnType) -> Result<Value, DecodeError> {
    Ok(match kind {
        Kind::Int { bytes, unsigned } => {
            let n = *bytes as usize;
            let v = r.le(n)?;
            if *unsigned {
                if n == 8 {
                    Value::UInt(v)
                } else {
                    Value::Int(v as i64)
                }
            } else {
                let shift = 64 - 8 * n as u32;
                Value::Int(((v << shift) as i64) >> shift)
            }
        }
        Kind::Float => Value::Float(widen_f32(f32::from_bits(r.le(4)? as u32))),
        Kind::Double => Value::Float(f64::from_bits(r.le(8)?)),
        Kind::Decimal { precision, scale } => {
            let n = decimal_size(*precision, *scale);
            Value::Numeric(decode_decimal(r.take(n)?, *precision, *scale)?)
        }
        Kind::Year => {
            let v = r.le(1)?;
            Value::Int(if v == 0 { 0 } else { 1900 + v as i64 })
        }
        Kind::Date => {
            let v = r.le(3)?;
            match civil_days((v >> 9) as i64, ((v >> 5) & 15) as u32, (v & 31) as u32) {
                Some(d) => Value::Date(d),
                None => Value::Null,
            }
        }
        Kind::TimeOld => {
            let v = r.le(3)? as i64;
            let v = (v << 40) >> 40;
            let (neg, a) = (v < 0, v.abs());
            let us = ((a / 10000) * 3600 + (a / 100 % 100) * 60 + a % 100) * 1_000_000;
            Value::Time(if neg { -us } else { us })
        }
        Kind::Time2 { fsp } => {
            // my_time_packed_from_binary: 3-byte offset integer part, then the fraction.
            let packed: i64 = match fsp {
                0 => (r.be(3)? as i64 - 0x80_0000) << 24,
                1 | 2 => {
                    let mut int = r.be(3)? as i64 - 0x80_0000;
                    let mut frac = r.be(1)? as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x100;
                    }
                    (int << 24) + frac * 10_000
                }
                3 | 4 => {
                    let mut int = r.be(3)? as i64 - 0x80_0000;
                    let mut frac = r.be(2)? as i64;
                    if int < 0 && frac != 0 {
                        int += 1;
                        frac -= 0x10000;
                    }
                    (int << 24) + frac * 100
                }
                _ => r.be(6)? as i64 - 0x8000_0000_0000,
            };
            let (neg, p) = (packed < 0, packed.abs());
            let hms = p >> 24;
            let us = p % (1 << 24);
            let hour = (hms >> 12) % (1 << 10);
            let minute = (hms >> 6) % (1 << 6);
            let second = hms % (1 << 6);
            let total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + us;
            Value::Time(if neg { -total } else { total })
        }
        Kind::DateTimeOld => {
            let v = r.le(8)? as i64;
            let (date, time) = (v / 1_000_000, v % 1_000_000);
            match datetime_us(
                date / 10000,
                (date / 100 % 100) as u32,
                (date % 100) as u32,
                time / 10000,
                time / 100 % 100,
                time % 100,
                0,
            ) {
                Some(t) => Value::Timestamp(t),
                None => Value::Null,
            }
        }
        Kind::DateTime2 { fsp } => {
            let int = r.be(5)? as i64 - 0x80_0000_0000;
            let us = frac_us(r, *fsp)?;
            let ymd = int >> 17;
            let ym = ymd >> 5;
            let hms = int % (1 << 17);
            match datetime_us(ym / 13, (ym % 13) as u32, (ymd % 32) as u32, hms >> 12, (hms >> 6) % 64, hms % 64, us) {
                Some(t) => Value::Timestamp(t),
                None => Value::Null,
            }
        }
        Kind::TimestampOld => match r.le(4)? as i64 {
            0 => Value::Null,
            s => Value::TimestampTz(s * 1_000_000),
        },
        Kind::Timestamp2 { fsp } => {
            let s = r.be(4)? as i64;
            let us = frac_us(r, *fsp)?;
            if s == 0 && us == 0 {
                Value::Null
            } else {
                Value::TimestampTz(s * 1_000_000 + us)
            }
        }
        Kind::Bit { bits } => {
            let n = (*bits as usize).div_ceil(8);
            Value::Text(bit_string(r.take(n)?, *bits))
        }
        Kind::Enum { pack, labels } => {
            let i = r.le(*pack as usize)? as usize;
            Value::Text(if i == 0 { String::new() } else { labels.get(i - 1).cloned().unwrap_or_default() })
        }
        Kind::Set { pack, labels } => {
            let bits = r.le(*pack as usize)?;
            let mut s = String::new();
            for (i, l) in labels.iter().enumerate() {
                if bits & (1u64 << i) != 0 {
                    if !s.is_empty() {
                        s.push(',');
                    }
                    s.push_str(l);
                }
            }
            Value::Text(s)
        }
        Kind::Str { len_bytes, cs, pad } => {
            let n = r.le(*len_bytes as usize)? as usize;
            let b = r.take(n)?;
            if n < *pad as usize {
                let mut v = b.to_vec();
                v.resize(*pad as usize, 0);
                refine(Value::Bytes(v), ty)
            } else {
                refine(text(b, *cs)?, ty)
            }
        }
        Kind::Blob { len_bytes, cs } => {
            let n = r.le(*len_bytes as usize)? as usize;
            let b = r.take(n)?;
            refine(text(b, *cs)?, ty)
        }
        Kind::Json { len_bytes } => {
            let n = r.le(*len_bytes as usize)? as usize;
            Value::Json(json_from_binary(r.take(n)?)?)
        }
        Kind::Geometry { len_bytes } => {
            let n = r.le(*len_bytes as usize)? as usize;
            Value::Bytes(strip_srid(r.take(n)?).to_vec())
        }
    })
}

/// Stored geometry is a 4-byte SRID followed by WKB; events carry the WKB.
pub fn strip_srid(b: &[u8]) -> &[u8] {
    if b.len() >= 4 {
        &b[4..]
    } else {
        b
    }
}

/// Adjust a decoded text/bytes value to the schema's type.
pub fn refine(v: Value, ty: &ColumnType) -> Value {
    match (ty, v) {
        (ColumnType::Json, Value::Text(s)) => {
            if s.is_empty() {
                Value::Json("null".into())
            } else {
                Value::Json(s)
            }
        }
        (ColumnType::Uuid, Value::Bytes(b)) if b.len() == 16 => Value::Uuid(uuid_text(&b)),
        (ColumnType::Uuid, Value::Text(s)) => Value::Uuid(s.to_ascii_lowercase()),
        (_, v) => v,
    }
}

/// Hyphenated lower-case form of 16 bytes.
pub fn uuid_text(b: &[u8]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// MySQL binary JSON → JSON text.
pub fn json_from_binary(b: &[u8]) -> Result<String, DecodeError> {
    if b.is_empty() {
        return Ok("null".into());
    }
    let mut buf = mysql_common::io::ParseBuf(b);
    let v: mysql_common::binlog::jsonb::Value<'_> =
        buf.parse(()).map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let dom = v.parse().map_err(|e| DecodeError::new(format!("binary JSON: {e}")))?;
    let j: serde_json::Value = dom.into();
    Ok(j.to_string())
}

/// Decode one row image. `present` is the columns-present bitmap of the
/// event; absent columns are [`Value::Unchanged`]. Returns the values.
pub fn decode_row(
    plan: &TablePlan,
    data: &[u8],
    at: &mut usize,
    present: &[u8],
    present_count: usize,
) -> Result<Vec<Value>, DecodeError> {
    let ncols = plan.kinds.len();
    let null_len = present_count.div_ceil(8);
    let mut r = Reader { b: data, at: *at };
    let nulls = r.take(null_len)?;
    let mut values = Vec::with_capacity(ncols);
    let mut pi = 0usize;
    for (i, kind) in plan.kinds.iter().enumerate() {
        if !matches!(present.get(i / 8), Some(b) if b & (1 << (i % 8)) != 0) {
            values.push(Value::Unchanged);
            continue;
        }
        let is_null = nulls[pi / 8] & (1 << (pi % 8)) != 0;
        pi += 1;
        if is_null {
            values.push(Value::Null);
            continue;
        }
        let ty = &plan.schema.columns[i].ty;
        let v = decode_value(&mut r, kind, ty).map_err(|e| DecodeError {
            message: format!("{}, column {}: {}", plan.schema.id, plan.schema.columns[i].name, e.message),
            ..e
        })?;
        values.push(v);
    }
    *at = r.at;
    Ok(values)
}

/// Parsed header of a rows event (v1 or v2, MySQL or MariaDB).
pub struct RowsHeader<'a> {
    pub table_id: u64,
    pub ncols: usize,
    pub present_before: &'a [u8],
    pub present_after: &'a [u8],
    /// Offset of the first row in the event data.
    pub rows_at: usize,
}

/// Event types of rows events: (v1: 23..=25, v2: 30..=32).
pub fn rows_kind(event_type: u8) -> Option<(u8, bool)> {
    match event_type {
        23 | 30 => Some((b'c', event_type == 30)),
        24 | 31 => Some((b'u', event_type == 31)),
        25 | 32 => Some((b'd', event_type == 32)),
        _ => None,
    }
}

fn lenenc(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let first = r.le(1)?;
    Ok(match first {
        0..=250 => first,
        252 => r.le(2)?,
        253 => r.le(3)?,
        254 => r.le(8)?,
        _ => return err("bad length-encoded integer"),
    })
}

/// Parse a rows event's header. `post_header_len` comes from the format
/// description event (6 → 4-byte table ids, otherwise 6-byte).
pub fn parse_rows_header(data: &[u8], kind: u8, v2: bool, post_header_len: u8) -> Result<RowsHeader<'_>, DecodeError> {
    let mut r = Reader { b: data, at: 0 };
    let table_id = if post_header_len == 6 { r.le(4)? } else { r.le(6)? };
    let _flags = r.le(2)?;
    if v2 {
        let extra = r.le(2)? as usize;
        if extra < 2 {
            return err("rows event: bad extra data length");
        }
        r.take(extra - 2)?;
    }
    let ncols = lenenc(&mut r)? as usize;
    let bl = ncols.div_ceil(8);
    let present_before = r.take(bl)?;
    let present_after = if kind == b'u' { r.take(bl)? } else { present_before };
    Ok(RowsHeader { table_id, ncols, present_before, present_after, rows_at: r.at })
}

/// Number of set bits among the first `n` of `bitmap`.
pub fn count_present(bitmap: &[u8], n: usize) -> usize {
    (0..n).filter(|i| bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        // DECIMAL(10,2) 1234.56: intg 8 -> lead 8 digits (4 bytes), frac 2 (1 byte).
        let mut b = vec![0x80, 0x00, 0x04, 0xd2, 0x38];
        assert_eq!(decode_decimal(&b, 10, 2).unwrap(), "1234.56");
        for x in b.iter_mut() {
            *x ^= 0xff;
        }
        assert_eq!(decode_decimal(&b, 10, 2).unwrap(), "-1234.56");
        // DECIMAL(4,2) 0.05
        assert_eq!(decode_decimal(&[0x80, 0x05], 4, 2).unwrap(), "0.05");
        // DECIMAL(5,0) 0
        assert_eq!(decode_decimal(&[0x80, 0x00, 0x00], 5, 0).unwrap(), "0");
        assert_eq!(decimal_size(65, 30), 30);
    }

    #[test]
    fn times() {
        // TIME(0) '-838:59:59' and '838:59:59'
        let enc = |packed_int: i64| -> Vec<u8> {
            let v = (packed_int + 0x80_0000) as u32;
            vec![(v >> 16) as u8, (v >> 8) as u8, v as u8]
        };
        let hms = (838i64 << 12) | (59 << 6) | 59;
        let mut r = Reader { b: &enc(hms), at: 0 };
        assert_eq!(
            decode_value(&mut r, &Kind::Time2 { fsp: 0 }, &ColumnType::Time).unwrap(),
            Value::Time(3_020_399_000_000)
        );
        let mut r = Reader { b: &enc(-hms), at: 0 };
        assert_eq!(
            decode_value(&mut r, &Kind::Time2 { fsp: 0 }, &ColumnType::Time).unwrap(),
            Value::Time(-3_020_399_000_000)
        );
        // TIME(6) '-00:00:00.000001': packed = -1 -> 6 bytes of 0x800000000000 - 1.
        let v: u64 = 0x8000_0000_0000 - 1;
        let b: Vec<u8> = (0..6).rev().map(|i| (v >> (8 * i)) as u8).collect();
        let mut r = Reader { b: &b, at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 6 }, &ColumnType::Time).unwrap(), Value::Time(-1));
        // TIME(2) '-00:00:00.01': integer part 0x7fffff (-1), fraction byte 0xff (read unsigned).
        let mut r = Reader { b: &[0x7f, 0xff, 0xff, 0xff], at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 2 }, &ColumnType::Time).unwrap(), Value::Time(-10_000));
        // TIME(4) '-00:00:00.0001': fraction 0xffff.
        let mut r = Reader { b: &[0x7f, 0xff, 0xff, 0xff, 0xff], at: 0 };
        assert_eq!(decode_value(&mut r, &Kind::Time2 { fsp: 4 }, &ColumnType::Time).unwrap(), Value::Time(-100));
    }

    #[test]
    fn bits_floats_latin1() {
        assert_eq!(bit_string(&[0b101], 3), "101");
        assert_eq!(bit_string(&[0x01, 0xff], 10), "0111111111");
        assert_eq!(widen_f32(1.1f32), 1.1f64);
        let latin1 = Charset::by_name("latin1").unwrap();
        assert_eq!(text(&[0x80, b'a', 0xe9], latin1).unwrap(), Value::Text("€aé".into()));
        assert!(text(&[0xe9], Charset::Utf8).unwrap_err().message.contains("utf8mb4"));
    }

    #[test]
    fn mysql_binary_json() {
        // {"a": 1}: small object, 1 element, size, key entry, value entry (int16 inline), key.
        let doc: Vec<u8> = vec![
            0x00, // small object
            0x01, 0x00, // element count
            0x0c, 0x00, // size
            0x0b, 0x00, 0x01, 0x00, // key offset 11, length 1
            0x05, 0x01, 0x00, // int16 inline 1
            b'a',
        ];
        assert_eq!(json_from_binary(&doc).unwrap(), r#"{"a":1}"#);
        // [true, -5, "hi", 1.5]: small array, 4 entries of 3 bytes, data after them.
        let mut doc: Vec<u8> = vec![0x02, 0x04, 0x00, 27, 0x00];
        doc.extend_from_slice(&[0x04, 0x01, 0x00]); // literal true, inline
        doc.extend_from_slice(&[0x05, 0xfb, 0xff]); // int16 -5, inline
        doc.extend_from_slice(&[0x0c, 16, 0x00]); // string at offset 16
        doc.extend_from_slice(&[0x0b, 19, 0x00]); // double at offset 19
        doc.extend_from_slice(&[2, b'h', b'i']);
        doc.extend_from_slice(&1.5f64.to_le_bytes());
        assert_eq!(json_from_binary(&doc).unwrap(), r#"[true,-5,"hi",1.5]"#);
        // A bare scalar document: int64 and an escaped string.
        let mut doc = vec![0x09];
        doc.extend_from_slice(&(-9_007_199_254_740_993i64).to_le_bytes());
        assert_eq!(json_from_binary(&doc).unwrap(), "-9007199254740993");
        assert_eq!(json_from_binary(&[0x0c, 3, b'a', b'"', b'b']).unwrap(), r#""a\"b""#);
        assert!(json_from_binary(&[0x02, 0x09]).is_err());
    }

    fn plan_of(kinds: Vec<Kind>) -> TablePlan {
        let columns = kinds
            .iter()
            .enumerate()
            .map(|(i, _)| Column {
                name: format!("c{i}"),
                ty: ColumnType::Other,
                source_type: String::new(),
                type_id: 0,
                type_modifier: -1,
                key: i == 0,
                nullable: true,
            })
            .collect();
        TablePlan {
            schema: Arc::new(TableSchema {
                database: "d".into(),
                id: TableId::new("d", "t"),
                columns,
                replica_identity: ReplicaIdentity::Default,
                version: 0,
            }),
            kinds,
        }
    }

    /// MySQL 8 `UPDATE_ROWS_EVENT` v2 (type 31) with extra row info, built
    /// from the documented layout: post-header (table id, flags, extra-data
    /// length + extra data), column count, two column bitmaps, then
    /// before/after images (null bitmap + values).
    #[test]
    fn update_rows_v2_event() {
        let plan = plan_of(vec![
            Kind::Int { bytes: 4, unsigned: false },
            Kind::Str { len_bytes: 1, cs: Charset::Utf8, pad: 0 },
            Kind::Int { bytes: 8, unsigned: true },
        ]);
        let mut ev: Vec<u8> = Vec::new();
        ev.extend_from_slice(&[0x2a, 0, 0, 0, 0, 0]); // table id 42
        ev.extend_from_slice(&[0x01, 0x00]); // flags: end of statement
        ev.extend_from_slice(&[5, 0, 0x00, 0x01, 0x07]); // extra data: length 5 (incl. itself), 3 bytes
        ev.push(3); // column count
        ev.push(0b111); // before image: all columns
        ev.push(0b011); // after image: c0, c1 (c2 not logged: MINIMAL-style image)
                        // before: nulls 0b100 (c2 null), c0 = -7, c1 = "ab"
        ev.push(0b100);
        ev.extend_from_slice(&(-7i32).to_le_bytes());
        ev.extend_from_slice(&[2, b'a', b'b']);
        // after: nulls 0, c0 = 8, c1 = "€"
        ev.push(0);
        ev.extend_from_slice(&8i32.to_le_bytes());
        ev.extend_from_slice(&[3, 0xe2, 0x82, 0xac]);
        let (kind, v2) = rows_kind(31).unwrap();
        assert!(v2 && kind == b'u');
        let h = parse_rows_header(&ev, kind, v2, 10).unwrap();
        assert_eq!((h.table_id, h.ncols), (42, 3));
        let nb = count_present(h.present_before, h.ncols);
        let na = count_present(h.present_after, h.ncols);
        let mut at = h.rows_at;
        let before = decode_row(&plan, &ev, &mut at, h.present_before, nb).unwrap();
        let after = decode_row(&plan, &ev, &mut at, h.present_after, na).unwrap();
        assert_eq!(at, ev.len());
        assert_eq!(before, vec![Value::Int(-7), Value::Text("ab".into()), Value::Null]);
        assert_eq!(after, vec![Value::Int(8), Value::Text("€".into()), Value::Unchanged]);
        // Truncated images are errors, not panics.
        let mut at = h.rows_at;
        assert!(decode_row(&plan, &ev[..ev.len() - 2], &mut at, h.present_before, nb).is_ok());
        assert!(decode_row(&plan, &ev[..ev.len() - 2], &mut at, h.present_after, na).is_err());
    }

    /// MySQL binary JSON inside a `WRITE_ROWS_EVENT` v2 (type 30) row.
    #[test]
    fn write_rows_v2_with_binary_json() {
        let plan = plan_of(vec![Kind::Int { bytes: 2, unsigned: true }, Kind::Json { len_bytes: 4 }]);
        let json = [0x00u8, 0x01, 0x00, 0x0c, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, b'a'];
        let mut ev: Vec<u8> = vec![7, 0, 0, 0, 0, 0, 0x01, 0x00, 2, 0, 2, 0b11];
        ev.push(0);
        ev.extend_from_slice(&65535u16.to_le_bytes());
        ev.extend_from_slice(&(json.len() as u32).to_le_bytes());
        ev.extend_from_slice(&json);
        let h = parse_rows_header(&ev, b'c', true, 10).unwrap();
        let mut at = h.rows_at;
        let row = decode_row(&plan, &ev, &mut at, h.present_after, 2).unwrap();
        assert_eq!(row, vec![Value::Int(65535), Value::Json(r#"{"a":1}"#.into())]);
    }
}
