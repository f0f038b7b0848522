//! Catalog queries: which tables are included, their schemas, and the
//! publication and slot Sluice manages.

use std::collections::HashSet;

use sluice_core::config::TablesConfig;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::schema::quote_ident;
use sluice_core::{Column, ReplicaIdentity, TableId, TableSchema};
use tokio_postgres::Client;

use sluice_client_postgres::sql_error;

/// Marks publications Sluice created (and may alter or drop).
pub const PUBLICATION_COMMENT_PREFIX: &str = "created by sluice for pipeline ";

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub id: TableId,
    pub replica_identity: ReplicaIdentity,
    pub has_primary_key: bool,
    pub estimated_rows: u64,
    /// Columns that can be TOASTed (varlena with non-plain storage).
    pub toastable: Vec<String>,
    /// A partitioned table (copied with `COPY (SELECT ...)`).
    pub partitioned: bool,
}

/// `pg_class.relreplident` → [`ReplicaIdentity`].
fn replica_identity(code: &str) -> ReplicaIdentity {
    match code {
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        "n" => ReplicaIdentity::Nothing,
        _ => ReplicaIdentity::Default,
    }
}

/// Tables matching the include/exclude globs: ordinary tables and
/// partitioned tables (as a whole: their partitions are not listed, changes
/// to them are published as the root table's through
/// `publish_via_partition_root`).
pub async fn included_tables(client: &Client, tables: &TablesConfig) -> Result<Vec<TableInfo>, SourceError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    CASE WHEN c.relkind = 'p' THEN
                      COALESCE((SELECT sum(GREATEST(p.reltuples, 0)) FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhrelid
                                WHERE h.inhparent = c.oid), 0)::float8
                    ELSE GREATEST(c.reltuples, 0)::float8 END,
                    COALESCE((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                      JOIN pg_type t ON t.oid = a.atttypid
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND t.typlen = -1 AND a.attstorage <> 'p'), '{}'),
                    c.relkind = 'p'
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| sql_error("listing tables", e))?;
    let mut out = Vec::new();
    for r in rows {
        let schema: String = r.get(0);
        let name: String = r.get(1);
        if !tables.matches(&schema, &name) {
            continue;
        }
        let ident: String = r.get(2);
        out.push(TableInfo {
            id: TableId::new(schema, name),
            replica_identity: replica_identity(&ident),
            has_primary_key: r.get(3),
            estimated_rows: r.get::<_, f64>(4) as u64,
            toastable: r.get(5),
            partitioned: r.get(6),
        });
    }
    Ok(out)
}

/// Domains by OID → their base type and modifier (resolved through
/// domains over domains), so a domain column decodes like its base type.
pub type Domains = std::collections::HashMap<u32, (u32, i32)>;

pub async fn domains(client: &Client) -> Result<Domains, SourceError> {
    let rows = client
        .query("SELECT oid, typbasetype, typtypmod FROM pg_type WHERE typtype = 'd'", &[])
        .await
        .map_err(|e| sql_error("reading domain types", e))?;
    let direct: Domains = rows.iter().map(|r| (r.get::<_, u32>(0), (r.get::<_, u32>(1), r.get::<_, i32>(2)))).collect();
    let mut out = Domains::new();
    for (&oid, &(mut base, mut typmod)) in &direct {
        let mut hops = 0;
        while let Some(&(b, m)) = direct.get(&base) {
            base = b;
            if typmod < 0 {
                typmod = m;
            }
            hops += 1;
            if hops > 32 {
                break;
            }
        }
        out.insert(oid, (base, typmod));
    }
    Ok(out)
}

/// Column type of `oid`/`typmod`, looking through domains.
pub fn resolve_type(domains: &Domains, oid: u32, typmod: i32) -> (sluice_core::ColumnType, String) {
    match domains.get(&oid) {
        Some(&(base, base_mod)) => {
            sluice_schemas::postgres::column_type(base, if typmod >= 0 { typmod } else { base_mod })
        }
        None => sluice_schemas::postgres::column_type(oid, typmod),
    }
}

/// The current schema of a table, with key flags as pgoutput sets them
/// (replica identity columns; all columns for FULL).
pub async fn table_schema(
    client: &Client,
    database: &str,
    id: &TableId,
    domains: &Domains,
) -> Result<TableSchema, SourceError> {
    let mut all = table_schemas(client, database, std::slice::from_ref(id), domains).await?;
    all.pop().expect("one schema per table")
}

/// The current schemas of `ids`, in that order, read in one query (a
/// pipeline may hold thousands of tables). A table that does not exist (or
/// has no columns) is a per-table error in its place.
pub async fn table_schemas(
    client: &Client,
    database: &str,
    ids: &[TableId],
    domains: &Domains,
) -> Result<Vec<Result<TableSchema, SourceError>>, SourceError> {
    let schemas: Vec<&str> = ids.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = ids.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT w.i::int, a.attname::text, a.atttypid::oid, a.atttypmod, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    c.relreplident::text,
                    COALESCE(a.attnum = ANY (COALESCE(
                      (SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = c.oid AND
                         ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)) LIMIT 1),
                      '{}'::int2[])), false),
                    (SELECT t.typcategory = 'A' FROM pg_type t WHERE t.oid = a.atttypid)
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(nsp, rel, i)
             JOIN pg_namespace n ON n.nspname = w.nsp
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel
             JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY w.i, a.attnum",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| match ids {
            [one] => sql_error(&format!("reading the columns of {one}"), e),
            _ => sql_error(&format!("reading the columns of {} tables", ids.len()), e),
        })?;
    let mut columns: Vec<Vec<tokio_postgres::Row>> = ids.iter().map(|_| Vec::new()).collect();
    for r in rows {
        let i: i32 = r.get(0);
        columns[(i - 1) as usize].push(r);
    }
    Ok(ids
        .iter()
        .zip(columns)
        .map(|(id, rows)| {
            if rows.is_empty() {
                return Err(SourceError::new(ErrorKind::Table, format!("table {id} does not exist or has no columns")));
            }
            Ok(schema_from_rows(database, id, &rows, domains))
        })
        .collect())
}

/// One table's `pg_attribute` rows (as [`table_schemas`] reads them) as its schema.
fn schema_from_rows(database: &str, id: &TableId, rows: &[tokio_postgres::Row], domains: &Domains) -> TableSchema {
    let replica_identity = replica_identity(rows[0].get(6));
    let columns = rows
        .iter()
        .map(|r| {
            let oid: u32 = r.get(2);
            let typmod: i32 = r.get(3);
            let (mut ty, builtin_name) = resolve_type(domains, oid, typmod);
            let formatted: String = r.get(4);
            let builtin_name = if domains.contains_key(&oid) { formatted.clone() } else { builtin_name };
            if builtin_name.starts_with("oid:") && r.get::<_, Option<bool>>(8) == Some(true) {
                // An array of a user-defined type (enum[], domain[], ...).
                ty = sluice_core::ColumnType::Array(Box::new(sluice_core::ColumnType::Other));
            }
            Column {
                name: r.get(1),
                ty,
                source_type: if builtin_name.starts_with("oid:") { formatted } else { builtin_name },
                type_id: oid,
                type_modifier: typmod,
                key: replica_identity == ReplicaIdentity::Full || r.get::<_, bool>(7),
                nullable: !r.get::<_, bool>(5),
            }
        })
        .collect();
    TableSchema { database: database.to_string(), id: id.clone(), columns, replica_identity, version: 0 }
}

#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<u64>,
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text, active_pid, wal_status
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_error("reading pg_replication_slots", e))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        confirmed_flush: r.get::<_, Option<String>>(2).and_then(|s| sluice_core::event::parse_lsn(&s)),
        active_pid: r.get(3),
        wal_status: r.get(4),
    }))
}

#[derive(Debug, Clone)]
pub struct PublicationInfo {
    pub all_tables: bool,
    pub ours: bool,
    pub tables: Vec<TableId>,
    /// Fingerprint of the column lists and row filters Sluice pushed down
    /// (kept in the comment; empty when none).
    pub pushdown: String,
    /// False while Sluice is changing the publication table by table (a run
    /// that stopped half-way): its tables' entries are then not known.
    pub complete: bool,
}

/// Marks the comment of a publication whose tables Sluice is changing.
const INCOMPLETE: &str = " (being changed)";

/// Tables per statement when a publication is created or changed: each
/// statement locks its tables until it commits, and a server's lock table
/// (`max_locks_per_transaction` × connections) may hold fewer than a
/// pipeline's tables.
const PUBLICATION_CHUNK: usize = 100;

/// The comment on a publication Sluice creates: the pipeline, and the
/// fingerprint of what was pushed down into it.
fn publication_comment(pipeline: &str, fingerprint: &str) -> String {
    if fingerprint.is_empty() {
        format!("{PUBLICATION_COMMENT_PREFIX}{pipeline}")
    } else {
        format!("{PUBLICATION_COMMENT_PREFIX}{pipeline}; pushdown {fingerprint}")
    }
}

/// Column lists and row filters to put in the publication, per table.
pub use sluice_core::pushdown::Pushdowns;

/// One `FOR TABLE` entry: `"s"."t" ("a", "b") WHERE (...)`.
fn table_entry(t: &TableId, pushdown: &Pushdowns) -> String {
    let mut s = t.quoted();
    if let Some(p) = pushdown.get(t) {
        if let Some(cols) = &p.columns {
            s.push_str(&format!(" ({})", cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")));
        }
        if let Some(f) = &p.row_filter {
            s.push_str(&format!(" WHERE ({f})"));
        }
    }
    s
}

/// A stable fingerprint (FNV-1a, hex) of the pushed-down entries.
fn fingerprint(tables: &[TableId], pushdown: &Pushdowns) -> String {
    let mut entries: Vec<String> = tables
        .iter()
        .filter(|t| pushdown.get(*t).is_some_and(|p| !p.is_empty()))
        .map(|t| table_entry(t, pushdown))
        .collect();
    if entries.is_empty() {
        return String::new();
    }
    entries.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in entries.join("\n").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub async fn publication_info(client: &Client, name: &str) -> Result<Option<PublicationInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT p.puballtables, COALESCE(obj_description(p.oid, 'pg_publication'), '') FROM pg_publication p WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| sql_error("reading pg_publication", e))?;
    let Some(row) = row else { return Ok(None) };
    let comment: String = row.get(1);
    let (comment, complete) = match comment.strip_suffix(INCOMPLETE) {
        Some(c) => (c.to_string(), false),
        None => (comment, true),
    };
    let rows = client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| sql_error("reading pg_publication_tables", e))?;
    let pushdown = comment.split_once("; pushdown ").map(|(_, f)| f.trim().to_string()).unwrap_or_default();
    Ok(Some(PublicationInfo {
        pushdown,
        all_tables: row.get(0),
        ours: comment.starts_with(PUBLICATION_COMMENT_PREFIX),
        complete,
        tables: rows.iter().map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1))).collect(),
    }))
}

/// Create the publication for `tables`, or bring one Sluice created up to
/// date, with the column lists and row filters in `pushdown` (Postgres 15+;
/// a publication Sluice did not create is left as it is, and everything is
/// then done in Sluice).
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    pipeline: &str,
    tables: &[TableId],
    pushdown: &Pushdowns,
) -> Result<(), SourceError> {
    if tables.is_empty() {
        return Err(SourceError::new(
            ErrorKind::Config,
            "no tables match tables.include/exclude; check the globs (schema.table) against the source database",
        ));
    }
    let fp = fingerprint(tables, pushdown);
    let comment = |complete: bool| {
        let c = publication_comment(pipeline, &fp);
        let c = if complete { c } else { format!("{c}{INCOMPLETE}") };
        format!("COMMENT ON PUBLICATION {} IS {}", quote_ident(name), sluice_core::schema::quote_literal(&c))
    };
    let entries = |ts: &[TableId]| ts.iter().map(|t| table_entry(t, pushdown)).collect::<Vec<_>>().join(", ");
    let names = |ts: &[TableId]| ts.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let exec = |sql: String, doing: &'static str| async move {
        client.batch_execute(&sql).await.map_err(|e| sql_error(&format!("{doing} publication {name}"), e))
    };
    match publication_info(client, name).await? {
        None => {
            // Partitioned tables are published as their root (Postgres 13+).
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(|e| sql_error("reading server_version_num", e))?
                .get(0);
            let with = if version >= 130000 { " WITH (publish_via_partition_root = true)" } else { "" };
            let mut chunks = tables.chunks(PUBLICATION_CHUNK);
            let first = chunks.next().expect("tables is not empty");
            let more = tables.len() > PUBLICATION_CHUNK;
            exec(
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {}{with}; {}",
                    quote_ident(name),
                    entries(first),
                    comment(!more)
                ),
                "creating",
            )
            .await?;
            for chunk in chunks {
                exec(format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(name), entries(chunk)), "creating")
                    .await?;
            }
            if more {
                exec(comment(true), "creating").await?;
            }
            tracing::info!(publication = name, tables = tables.len(), "created publication");
        }
        Some(p) => {
            let have: HashSet<&TableId> = p.tables.iter().collect();
            let want: HashSet<&TableId> = tables.iter().collect();
            if p.all_tables || (have == want && ((p.pushdown == fp && p.complete) || !p.ours)) {
                if !p.ours && !fp.is_empty() {
                    tracing::info!(
                        publication = name,
                        "the publication was not created by Sluice: column lists and row filters are applied in Sluice, not pushed down"
                    );
                }
                return Ok(());
            }
            if p.ours {
                // Table by table, a chunk per transaction; the comment says
                // the change is under way until it is complete.
                exec(comment(false), "updating").await?;
                let mut drop: Vec<TableId> = p.tables.iter().filter(|t| !want.contains(t)).cloned().collect();
                drop.sort();
                for chunk in drop.chunks(PUBLICATION_CHUNK) {
                    exec(format!("ALTER PUBLICATION {} DROP TABLE {}", quote_ident(name), names(chunk)), "updating")
                        .await?;
                }
                // Tables kept whose column lists or row filters may differ
                // are dropped and added again in one transaction.
                if p.pushdown != fp || !p.complete {
                    let kept: Vec<TableId> = tables.iter().filter(|t| have.contains(t)).cloned().collect();
                    for chunk in kept.chunks(PUBLICATION_CHUNK) {
                        let q = quote_ident(name);
                        exec(
                            format!(
                                "ALTER PUBLICATION {q} DROP TABLE {}; ALTER PUBLICATION {q} ADD TABLE {}",
                                names(chunk),
                                entries(chunk)
                            ),
                            "updating",
                        )
                        .await?;
                    }
                }
                let add: Vec<TableId> = tables.iter().filter(|t| !have.contains(t)).cloned().collect();
                for chunk in add.chunks(PUBLICATION_CHUNK) {
                    exec(format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(name), entries(chunk)), "updating")
                        .await?;
                }
                exec(comment(true), "updating").await?;
                tracing::info!(publication = name, tables = tables.len(), pushdown = %fp, "updated the publication's tables, column lists and row filters");
            } else {
                let mut missing: Vec<String> =
                    want.iter().filter(|t| !have.contains(*t)).map(|t| t.to_string()).collect();
                missing.sort();
                if !missing.is_empty() {
                    return Err(SourceError::new(
                        ErrorKind::Config,
                        format!(
                            "publication {name} exists, was not created by Sluice, and lacks included tables: {}; add them (ALTER PUBLICATION {name} ADD TABLE ...) or use another publication name",
                            missing.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `pg_current_wal_insert_lsn()`: the end of WAL including records not yet
/// flushed (acknowledged commits under `synchronous_commit=off` may lie past
/// `pg_current_wal_lsn()`).
///
/// When the insert position sits just after a page header (after a WAL
/// switch, or when the last record ended on a page boundary) no record ends
/// there and the server never reports reaching it; the page boundary itself
/// is the end of the last record, so that is returned instead.
pub async fn current_wal_insert_lsn(client: &Client) -> Result<u64, SourceError> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int8,
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await
        .map_err(|e| sql_error("reading pg_current_wal_insert_lsn()", e))?;
    let s: String = row.get(0);
    let lsn = sluice_core::event::parse_lsn(&s).ok_or_else(|| SourceError::fatal(format!("bad LSN {s:?}")))?;
    Ok(record_end(lsn, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64))
}

/// Map an insert position right after a page header back to the page boundary.
pub fn record_end(lsn: u64, block: u64, segment: u64) -> u64 {
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    if segment > 0 && lsn % segment == LONG_HEADER {
        lsn - LONG_HEADER
    } else if block > 0 && lsn % block == SHORT_HEADER {
        lsn - SHORT_HEADER
    } else {
        lsn
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_end_skips_page_headers() {
        let seg = 16 << 20;
        assert_eq!(super::record_end(3 * seg + 40, 8192, seg), 3 * seg);
        assert_eq!(super::record_end(3 * seg + 8192 + 24, 8192, seg), 3 * seg + 8192);
        assert_eq!(super::record_end(3 * seg + 8192 + 96, 8192, seg), 3 * seg + 8192 + 96);
    }
}
