//! What the server's catalog says: included tables, their columns and keys,
//! binlog files and positions.
//!
//! Invariants:
//! - System schemas (`mysql`, `information_schema`, `performance_schema`,
//!   `sys`) are never included, whatever the globs say.
//! - A table's schema read here and the schema decoded from a table map of
//!   the same table version are equal (see `decoding::plan`), so snapshot and
//!   stream events of a table carry the same `Arc`'d schema shape.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_core::config::TablesConfig;
use sluice_core::error::SourceError;
use sluice_core::{Column, ReplicaIdentity, TableId, TableSchema};

use crate::charset::{Charset, Collations};
use sluice_client_mysql::sql_error;

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub id: TableId,
    pub estimated_rows: u64,
}

const SYSTEM: &str = "('mysql','information_schema','performance_schema','sys')";

/// The server's collation ids and their character sets. MariaDB 10.10+
/// lists collations of several character sets (the UCA 14 ones) only in
/// `COLLATION_CHARACTER_SET_APPLICABILITY`; older servers lack its `ID`.
pub async fn collations(conn: &mut Conn) -> Result<Collations, SourceError> {
    let mut rows: Vec<(u16, String)> = conn
        .query("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL")
        .await
        .map_err(|e| sql_error("reading the server's collations", e))?;
    let applicable: Result<Vec<(u16, String)>, _> = conn
        .query(
            "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY \
             WHERE ID IS NOT NULL",
        )
        .await;
    if let Ok(more) = applicable {
        rows.extend(more);
    }
    Ok(Collations::from_rows(rows))
}

/// Base tables matching the include/exclude globs (`database.table`).
pub async fn included_tables(conn: &mut Conn, tables: &TablesConfig) -> Result<Vec<TableInfo>, SourceError> {
    let rows: Vec<(String, String, Option<u64>)> = conn
        .query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN {SYSTEM} ORDER BY 1, 2"
        ))
        .await
        .map_err(|e| sql_error("listing tables", e))?;
    Ok(rows
        .into_iter()
        .filter(|(s, t, _)| tables.matches(s, t))
        .map(|(s, t, n)| TableInfo { id: TableId::new(s, t), estimated_rows: n.unwrap_or(0) })
        .collect())
}

/// Per-column facts the snapshot needs beyond the schema.
#[derive(Debug, Clone, Default)]
pub struct SnapColumn {
    /// BIT(n): n.
    pub bits: Option<u16>,
    /// Spatial column: drop the SRID prefix.
    pub geometry: bool,
    /// A text column in a character set other than UTF-8: the snapshot
    /// reads its bytes (`CAST(... AS BINARY)`) and decodes them the way the
    /// stream does, so a byte sequence the server cannot convert stops the
    /// table instead of arriving as `?`. `Err`: a character set Sluice
    /// cannot decode (the table is stopped).
    pub charset: Option<Result<Charset, String>>,
}

/// The table's schema from `information_schema` (`None` if it does not exist).
pub async fn table_schema(
    conn: &mut Conn,
    id: &TableId,
) -> Result<Option<(TableSchema, Vec<SnapColumn>)>, SourceError> {
    let rows: Vec<ColFields> = conn
        .exec(
            format!("SELECT {COLUMNS} FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"),
            (&id.schema, &id.name),
        )
        .await
        .map_err(|e| sql_error(&format!("reading the columns of {id}"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    // MariaDB's JSON is LONGTEXT plus an automatic CHECK (json_valid(`col`)).
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&id.schema, &id.name),
        )
        .await
        .unwrap_or_default();
    Ok(Some(schema_from_rows(id, rows, &checks)))
}

/// Tables of one database from which [`table_schemas`] reads the whole
/// database's catalog at once instead of table by table.
const WHOLE_DATABASE_FROM: usize = 16;

/// The schemas of `ids`, in that order (None: the table does not exist).
/// Where many tables of one database are asked for, its columns and checks
/// are read in two queries (a pipeline may hold thousands of tables).
pub async fn table_schemas(
    conn: &mut Conn,
    ids: &[TableId],
) -> Result<Vec<Option<(TableSchema, Vec<SnapColumn>)>>, SourceError> {
    let mut per_db: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for id in ids {
        *per_db.entry(id.schema.as_str()).or_default() += 1;
    }
    let mut whole: std::collections::HashMap<(String, String), (Vec<ColFields>, Vec<String>)> = Default::default();
    for (db, n) in &per_db {
        if *n < WHOLE_DATABASE_FROM {
            continue;
        }
        type TableColFields =
            (String, String, String, String, String, String, Option<u64>, Option<u64>, Option<String>);
        let rows: Vec<TableColFields> = conn
            .exec(
                format!("SELECT TABLE_NAME, {COLUMNS} FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION"),
                (db,),
            )
            .await
            .map_err(|e| sql_error(&format!("reading the columns of the tables of {db}"), e))?;
        for (table, a, b, c, d, e, f, g, h) in rows {
            whole.entry((db.to_string(), table)).or_default().0.push((a, b, c, d, e, f, g, h));
        }
        let checks: Vec<(String, String)> = conn
            .exec(
                "SELECT TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ?",
                (db,),
            )
            .await
            .unwrap_or_default();
        for (table, clause) in checks {
            whole.entry((db.to_string(), table)).or_default().1.push(clause);
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if per_db[id.schema.as_str()] < WHOLE_DATABASE_FROM {
            out.push(table_schema(conn, id).await?);
            continue;
        }
        out.push(match whole.remove(&(id.schema.clone(), id.name.clone())) {
            Some((rows, checks)) if !rows.is_empty() => Some(schema_from_rows(id, rows, &checks)),
            _ => None,
        });
    }
    Ok(out)
}

/// The columns read from `information_schema.COLUMNS`, in [`ColFields`] order.
const COLUMNS: &str =
    "COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY, NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_SET_NAME";
type ColFields = (String, String, String, String, String, Option<u64>, Option<u64>, Option<String>);

/// One table's columns (in order) and check clauses as its schema.
fn schema_from_rows(id: &TableId, rows: Vec<ColFields>, checks: &[String]) -> (TableSchema, Vec<SnapColumn>) {
    let has_pk = rows.iter().any(|r| r.4 == "PRI");
    let mut columns = Vec::with_capacity(rows.len());
    let mut snap = Vec::with_capacity(rows.len());
    for (name, data_type, column_type, nullable, key, precision, scale, charset) in rows {
        let json_check = format!("json_valid(`{}`)", name.replace('`', "``"));
        let json = checks.iter().any(|c| c.trim() == json_check);
        let ty = sluice_schemas::mysql::column_type(&data_type, &column_type, precision, scale, json);
        snap.push(SnapColumn {
            bits: if data_type.eq_ignore_ascii_case("bit") { precision.map(|p| p as u16) } else { None },
            geometry: sluice_schemas::mysql::is_geometry(&data_type),
            charset: legacy_charset(&data_type, charset.as_deref(), json),
        });
        columns.push(Column {
            name,
            ty,
            source_type: if json { "json".into() } else { column_type },
            type_id: 0,
            type_modifier: -1,
            key: key == "PRI",
            nullable: nullable == "YES",
        });
    }
    (
        TableSchema {
            database: id.schema.clone(),
            id: id.clone(),
            columns,
            replica_identity: if has_pk { ReplicaIdentity::Default } else { ReplicaIdentity::Full },
            version: 0,
        },
        snap,
    )
}

/// The character set of a text column whose bytes Sluice decodes itself
/// (`None`: UTF-8, binary, or not a text column; ENUM/SET labels and JSON
/// are converted by the server).
fn legacy_charset(data_type: &str, charset: Option<&str>, json: bool) -> Option<Result<Charset, String>> {
    let text = ["char", "varchar", "tinytext", "text", "mediumtext", "longtext"];
    if json || !text.iter().any(|t| data_type.eq_ignore_ascii_case(t)) {
        return None;
    }
    let name = charset?;
    match Charset::by_name(name) {
        Some(Charset::Utf8 | Charset::Binary) => None,
        Some(cs) => Some(Ok(cs)),
        None => Some(Err(name.to_string())),
    }
}

/// The binary logs the server still has, oldest first.
pub async fn binary_logs(conn: &mut Conn) -> Result<Vec<String>, SourceError> {
    let rows: Vec<mysql_async::Row> =
        conn.query("SHOW BINARY LOGS").await.map_err(|e| sql_error("SHOW BINARY LOGS", e))?;
    Ok(rows.into_iter().filter_map(|mut r| r.take::<String, _>(0)).collect())
}

/// The server's current binlog end: (file, position, executed GTID set for MySQL).
pub async fn master_status(conn: &mut Conn) -> Result<(String, u64, Option<String>), SourceError> {
    let mut rows: Vec<mysql_async::Row> = match conn.query("SHOW MASTER STATUS").await {
        Ok(r) => r,
        // MySQL 8.4 renamed it.
        Err(_) => conn.query("SHOW BINARY LOG STATUS").await.map_err(|e| sql_error("SHOW BINARY LOG STATUS", e))?,
    };
    let Some(row) = rows.first_mut() else {
        return Err(SourceError::new(
            sluice_core::ErrorKind::Config,
            "the server has no binary log (log_bin is OFF): start it with --log-bin",
        ));
    };
    let file: String = row.take(0).unwrap_or_default();
    let pos: u64 = row.take(1).unwrap_or(0);
    let gtid: Option<String> = if row.len() > 4 { row.take::<Option<String>, _>(4).flatten() } else { None };
    Ok((file, pos, gtid.map(|g| g.replace('\n', "")).filter(|g| !g.is_empty())))
}

/// MariaDB: the GTID state at a binlog coordinate.
pub async fn mariadb_gtid_at(conn: &mut Conn, file: &str, pos: u64) -> Result<Option<String>, SourceError> {
    let v: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos))
        .await
        .map_err(|e| sql_error("BINLOG_GTID_POS", e))?;
    Ok(v.flatten())
}
