//! Table schemas as sources describe them.

use std::fmt;

/// Fully qualified table name (`schema.table` for Postgres).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId { schema: schema.into(), name: name.into() }
    }
    /// Identifiers quoted for SQL (`"My Schema"."Odd ""Table"""`).
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quote an SQL identifier with double quotes, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quote an SQL string literal (only for identifiers sent to replication
/// commands, which take no parameters; never for data values).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Engine-neutral logical column type.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    /// Postgres `oid` and friends, MySQL `INT UNSIGNED`: unsigned 32 bit.
    UInt32,
    /// MySQL `BIGINT UNSIGNED`.
    UInt64,
    Float32,
    Float64,
    /// `precision`/`scale` when declared (`numeric(p,s)`).
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    Text,
    Bytes,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Array(Box<ColumnType>),
    /// Anything else (enums, intervals, ranges, geometric, network, ...):
    /// carried as the source's text form.
    Other,
}

/// What the source sends as the old row for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key columns only.
    Default,
    /// A unique index's columns.
    Index,
    /// The whole old row.
    Full,
    /// Nothing: updates/deletes carry no old row.
    Nothing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The source's own type name (e.g. `character varying(20)`), for sinks
    /// that create tables and for humans.
    pub source_type: String,
    /// Source type identifier (Postgres type OID).
    pub type_id: u32,
    /// Source type modifier (Postgres `atttypmod`, -1 when none).
    pub type_modifier: i32,
    /// Part of the key used to identify rows (primary key / replica identity).
    pub key: bool,
    pub nullable: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// The database the table lives in (Postgres: the connection's database).
    pub database: String,
    pub id: TableId,
    pub columns: Vec<Column>,
    pub replica_identity: ReplicaIdentity,
    /// Bumped by the source each time the column list changes mid-stream, so
    /// sinks can cheaply tell schema versions apart.
    pub version: u64,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.key)
    }
    /// Same columns (names and types) as `other`, ignoring the version.
    pub fn same_shape(&self, other: &TableSchema) -> bool {
        self.columns == other.columns && self.id == other.id
    }
}
