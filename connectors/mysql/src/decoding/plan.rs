//! Table-map planning: a `TABLE_MAP` event read into columns with its
//! optional metadata ([`map_columns`]), then merged with the catalog's schema
//! of the table into a per-column decoding plan ([`plan`] → [`TablePlan`]).
//!
//! Invariants:
//! - A plan has exactly one [`Kind`] per column of its table map, in order,
//!   whatever the catalog says: the table map describes the rows that follow
//!   it. The catalog's schema is used only when it has the same column names
//!   and compatible types, so snapshot and stream events carry identical
//!   schemas.
//! - Column names come only from the table map's optional metadata
//!   (`binlog_row_metadata=FULL`): without them, or with a binlog type Sluice
//!   cannot decode, the table map is an error; a character set Sluice does
//!   not know is an error for that table only.

use std::sync::Arc;

use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_common::constants::ColumnType as MyType;

use super::{err, DecodeError, Kind, TablePlan};
use crate::charset::{Charset, Collations};
use sluice_core::{Column, ColumnType, ReplicaIdentity, TableId, TableSchema};

/// Column description from a table map event (before merging with the catalog).
pub struct MappedColumn {
    pub name: String,
    pub kind: Kind,
    pub ty: ColumnType,
    pub source_type: String,
    pub nullable: bool,
    pub key: bool,
}

/// A table map's optional metadata (`binlog_row_metadata=FULL`): each list
/// in the order of the columns it applies to.
struct OptionalMeta {
    names: Vec<String>,
    signedness: Vec<bool>,
    charsets: Vec<u16>,
    default_cs: Option<u16>,
    non_default: Vec<(usize, u16)>,
    enum_labels: Vec<Arc<Vec<String>>>,
    set_labels: Vec<Arc<Vec<String>>>,
    pk: Vec<usize>,
}

/// Gather the optional metadata fields of a table map.
fn optional_meta(tme: &TableMapEvent<'_>) -> Result<OptionalMeta, DecodeError> {
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
    Ok(OptionalMeta { names, signedness, charsets, default_cs, non_default, enum_labels, set_labels, pk })
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
    let OptionalMeta { names, signedness, charsets, default_cs, non_default, enum_labels, set_labels, pk } =
        optional_meta(tme)?;
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
