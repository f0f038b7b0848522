//! Fixtures for the unit tests of every crate: plain columns, key columns
//! and table schemas with the usual defaults, so tests spell out only what
//! they care about (use struct update syntax for the rest, e.g.
//! `Column { type_id: 23, ..col("id", ColumnType::Int32) }`).
//!
//! Other crates get this module by enabling the `testing` feature of
//! `sluice-core` under their `[dev-dependencies]`. It is not part of the
//! runtime API.

use crate::schema::{Column, ColumnType, ReplicaIdentity, TableId, TableSchema};

/// A nullable, non-key column: no source type name, type id 0, no modifier.
pub fn col(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.to_string(),
        ty,
        source_type: String::new(),
        type_id: 0,
        type_modifier: -1,
        key: false,
        nullable: true,
    }
}

/// A key column (not nullable), otherwise like [`col`].
pub fn key(name: &str, ty: ColumnType) -> Column {
    Column { key: true, nullable: false, ..col(name, ty) }
}

/// Table `schema.name` in database `db`, default replica identity, version 1.
pub fn table(schema: &str, name: &str, columns: Vec<Column>) -> TableSchema {
    TableSchema {
        database: "db".to_string(),
        id: TableId::new(schema, name),
        columns,
        replica_identity: ReplicaIdentity::Default,
        version: 1,
    }
}
