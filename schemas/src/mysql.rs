//! MySQL/MariaDB column types → engine-neutral [`ColumnType`].
//!
//! | MySQL / MariaDB                         | ColumnType            | JSON                          |
//! |-----------------------------------------|-----------------------|-------------------------------|
//! | TINYINT, SMALLINT, YEAR                 | Int16 (SMALLINT UNSIGNED: Int32) | number             |
//! | MEDIUMINT, INT                          | Int32 (INT UNSIGNED: Int64)      | number             |
//! | BIGINT / BIGINT UNSIGNED                | Int64 / UInt64        | number (up to 18446744073709551615) |
//! | DECIMAL(p,s)                            | Numeric(p,s)          | string, exact, `s` decimals   |
//! | FLOAT / DOUBLE                          | Float32 / Float64     | number (FLOAT: shortest f32 form) |
//! | BIT(n)                                  | Other                 | string of n `0`/`1`           |
//! | CHAR, VARCHAR, TEXT (any charset), ENUM, SET | Text             | string (SET: `a,b`)           |
//! | BINARY, VARBINARY, BLOB                 | Bytes                 | base64                        |
//! | GEOMETRY and subtypes                   | Bytes                 | base64 of the WKB (SRID dropped) |
//! | DATE                                    | Date                  | `YYYY-MM-DD`                  |
//! | TIME(fsp)                               | Time                  | `[-]HHH:MM:SS[.ffffff]`       |
//! | DATETIME(fsp)                           | Timestamp             | ISO 8601 without zone         |
//! | TIMESTAMP(fsp)                          | TimestampTz           | ISO 8601 UTC (`Z`)            |
//! | JSON (MySQL binary, MariaDB text)       | Json                  | the JSON value                |
//! | UUID (MariaDB 10.7+)                    | Uuid                  | string                        |
//!
//! Zero dates (`0000-00-00`, `2024-00-10`, `0000-00-00 00:00:00`) have no
//! calendar value: they are NULL in events (Debezium does the same).
//! `TINYINT(1)`/`BOOL` stays an integer (it can hold 2..127); its source type
//! says `tinyint(1)`.

use sluice_core::ColumnType;

/// Map an `information_schema.COLUMNS` row. `data_type` is `DATA_TYPE`,
/// `column_type` is `COLUMN_TYPE`; `json` marks MariaDB's JSON alias (a
/// LONGTEXT with a `json_valid` check).
pub fn column_type(
    data_type: &str,
    column_type: &str,
    precision: Option<u64>,
    scale: Option<u64>,
    json: bool,
) -> ColumnType {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" | "year" => ColumnType::Int16,
        "smallint" if unsigned => ColumnType::Int32,
        "smallint" => ColumnType::Int16,
        "mediumint" => ColumnType::Int32,
        "int" | "integer" if unsigned => ColumnType::Int64,
        "int" | "integer" => ColumnType::Int32,
        "bigint" if unsigned => ColumnType::UInt64,
        "bigint" => ColumnType::Int64,
        "decimal" | "numeric" | "dec" | "fixed" => {
            ColumnType::Numeric { precision: precision.map(|p| p as u32), scale: Some(scale.unwrap_or(0) as u32) }
        }
        "float" => ColumnType::Float32,
        "double" | "real" | "double precision" => ColumnType::Float64,
        "bit" => ColumnType::Other,
        "date" => ColumnType::Date,
        "time" => ColumnType::Time,
        "datetime" => ColumnType::Timestamp,
        "timestamp" => ColumnType::TimestampTz,
        "json" => ColumnType::Json,
        "uuid" => ColumnType::Uuid,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            if json {
                ColumnType::Json
            } else {
                ColumnType::Text
            }
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnType::Bytes,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" => ColumnType::Bytes,
        _ => ColumnType::Other,
    }
}

/// Is `data_type` a spatial type (stored as SRID + WKB)?
pub fn is_geometry(data_type: &str) -> bool {
    matches!(
        data_type.to_ascii_lowercase().as_str(),
        "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        assert_eq!(column_type("bigint", "bigint(20) unsigned", Some(20), Some(0), false), ColumnType::UInt64);
        assert_eq!(column_type("int", "int(11)", Some(10), Some(0), false), ColumnType::Int32);
        assert_eq!(column_type("int", "int(10) unsigned", Some(10), Some(0), false), ColumnType::Int64);
        assert_eq!(
            column_type("decimal", "decimal(10,2)", Some(10), Some(2), false),
            ColumnType::Numeric { precision: Some(10), scale: Some(2) }
        );
        assert_eq!(column_type("longtext", "longtext", None, None, true), ColumnType::Json);
        assert_eq!(column_type("varbinary", "varbinary(4)", None, None, false), ColumnType::Bytes);
        assert!(is_geometry("POINT"));
    }
}
