//! Column types → Arrow data types (used by the Parquet and Arrow IPC writers).
//!
//! | column type | Arrow |
//! |---|---|
//! | bool | Boolean |
//! | int2 / int4 / int8 | Int16 / Int32 / Int64 |
//! | oid | Int64 |
//! | float4 / float8 | Float32 / Float64 |
//! | numeric(p,s), p ≤ 38 | Decimal128(p,s) |
//! | numeric(p,s), p ≤ 76 | Decimal256(p,s) |
//! | numeric without precision | Utf8 (exact digits) |
//! | text, varchar, char, uuid, enums, other | Utf8 |
//! | json / jsonb | Utf8 (JSON text) |
//! | bytea | Binary |
//! | date | Date32 |
//! | time | Time64(µs) |
//! | timestamp | Timestamp(µs) |
//! | timestamptz | Timestamp(µs, "UTC") |
//! | arrays | Utf8 (the JSON array, as in JSONL) |
//!
//! Every file also carries `__op` (Utf8), `__position` (UInt64, the commit
//! LSN), `__commit_ts` (Timestamp(µs, "UTC")) and `__unchanged` (List<Utf8>, the
//! columns left out of the row because the source did not send them).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use sluice_core::{ColumnType, TableSchema};

pub const META_COLUMNS: [&str; 4] = ["__op", "__position", "__commit_ts", "__unchanged"];

pub fn data_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 | ColumnType::UInt32 => DataType::Int64,
        ColumnType::UInt64 => DataType::UInt64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Numeric { precision: Some(p), scale: Some(s) } if *p <= 38 && *s <= *p => {
            DataType::Decimal128(*p as u8, *s as i8)
        }
        ColumnType::Numeric { precision: Some(p), scale: Some(s) } if *p <= 76 && *s <= *p => {
            DataType::Decimal256(*p as u8, *s as i8)
        }
        ColumnType::Bytes => DataType::Binary,
        ColumnType::Date => DataType::Date32,
        ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Numeric { .. }
        | ColumnType::Text
        | ColumnType::Other
        | ColumnType::Uuid
        | ColumnType::Json
        | ColumnType::Array(_) => DataType::Utf8,
    }
}

/// The Arrow schema of a table's files: its columns (all nullable: deletes
/// carry only key columns) plus the metadata columns.
pub fn table_schema(t: &TableSchema) -> Arc<Schema> {
    let mut fields: Vec<Field> = t.columns.iter().map(|c| Field::new(&c.name, data_type(&c.ty), true)).collect();
    fields.push(Field::new("__op", DataType::Utf8, false));
    fields.push(Field::new("__position", DataType::UInt64, false));
    fields.push(Field::new("__commit_ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false));
    fields.push(Field::new("__unchanged", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true));
    let mut meta = std::collections::HashMap::new();
    meta.insert("sluice.table".to_string(), t.id.to_string());
    Arc::new(Schema::new_with_metadata(fields, meta))
}
