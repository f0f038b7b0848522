//! `sluice verify`: compare every included table of the source with its
//! replica in a database sink.
//!
//! Both sides are read in full (streamed, never held in memory) and every
//! row is reduced to a canonical encoding: the source's typed values, read
//! with the same conversions the pipeline uses, and the replica's values
//! parsed back into the source column's type (so `numeric(20,0)` holding a
//! MySQL `BIGINT UNSIGNED` or an `interval` holding a MySQL `TIME` compare as
//! the source value). Rows are spread over buckets by a hash of their key;
//! each bucket keeps a row count and an order-independent sum of row hashes,
//! so engines that sort keys differently still agree. Buckets that differ
//! are read again to name the differing keys.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use sluice_core::config::{PipelineConfig, PostgresSourceConfig, SinkConfig, SourceConfig};
use sluice_core::schema::quote_ident;
use sluice_core::{ColumnType, TableSchema, Value};
use sluice_schemas::target::{pg_type, Conv};

/// One side's summary of a table.
struct Summary {
    rows: u64,
    buckets: Vec<(u64, u64)>,
}

/// For a second pass: key → row hash, only for the selected buckets.
type Detail = BTreeMap<String, u64>;

fn bucket_count(estimate: u64) -> usize {
    ((estimate / 5_000) as usize).clamp(16, 4096)
}

/// Canonical value: the pipeline's JSON encoding, with JSON documents
/// normalized and MySQL TINYINT(1) as a boolean. Against a MySQL target
/// (`mysql`), arrays (stored as JSON) compare as JSON documents and
/// unconstrained numerics (stored as DECIMAL(65,30)) without trailing zeros.
fn canonical(v: Value, conv: Conv, ty: &ColumnType, mysql: bool, out: &mut Vec<u8>, scratch: &mut String) {
    let normalize = |j: String| match serde_json::from_str::<serde_json::Value>(&j) {
        Ok(p) => Value::Json(p.to_string()),
        Err(_) => Value::Json(j),
    };
    let v = match (v, conv) {
        (Value::Int(i), Conv::IntToBool) => Value::Bool(i != 0),
        (Value::Int(i), _) if *ty == ColumnType::Bool => Value::Bool(i != 0),
        (Value::Json(j), _) => normalize(j),
        (v @ Value::Array(_), _) if mysql => {
            let mut b = Vec::new();
            sluice_schemas::json::write_value(&mut b, &v, scratch);
            normalize(String::from_utf8_lossy(&b).into_owned())
        }
        (Value::Text(t), _) if mysql && matches!(ty, ColumnType::Array(_)) => normalize(t),
        (Value::Numeric(n), _) if mysql && matches!(ty, ColumnType::Numeric { precision: None, .. }) => {
            match n.split_once('.') {
                Some((i, f)) if f.bytes().all(|b| b.is_ascii_digit()) => {
                    let f = f.trim_end_matches('0');
                    Value::Numeric(if f.is_empty() { i.to_string() } else { format!("{i}.{f}") })
                }
                _ => Value::Numeric(n),
            }
        }
        (v, _) => v,
    };
    sluice_schemas::json::write_value(out, &v, scratch);
    out.push(0x1f);
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

struct Accum {
    summary: Summary,
    detail: Option<(Vec<bool>, Detail)>,
    key_idx: Vec<usize>,
    convs: Vec<Conv>,
    types: Vec<ColumnType>,
    mysql_target: bool,
    row: Vec<u8>,
    key: Vec<u8>,
    scratch: String,
}

impl Accum {
    fn new(buckets: usize, schema: &TableSchema, mysql_target: bool, detail: Option<Vec<bool>>) -> Accum {
        Accum {
            summary: Summary { rows: 0, buckets: vec![(0, 0); buckets] },
            detail: detail.map(|d| (d, BTreeMap::new())),
            key_idx: key_of(schema),
            convs: schema.columns.iter().map(|c| pg_type(c).1).collect(),
            types: schema.columns.iter().map(|c| c.ty.clone()).collect(),
            mysql_target,
            row: Vec::new(),
            key: Vec::new(),
            scratch: String::new(),
        }
    }

    fn add(&mut self, values: Vec<Value>) {
        self.row.clear();
        self.key.clear();
        let all_key = self.key_idx.is_empty();
        for (i, (v, (conv, ty))) in values.into_iter().zip(self.convs.iter().zip(&self.types)).enumerate() {
            let start = self.row.len();
            canonical(v, *conv, ty, self.mysql_target, &mut self.row, &mut self.scratch);
            if all_key || self.key_idx.contains(&i) {
                let piece = self.row[start..].to_vec();
                self.key.extend_from_slice(&piece);
            }
        }
        let rh = hash_bytes(&self.row);
        let kh = hash_bytes(&self.key);
        let b = (kh % self.summary.buckets.len() as u64) as usize;
        let e = &mut self.summary.buckets[b];
        e.0 += 1;
        e.1 = e.1.wrapping_add(rh);
        self.summary.rows += 1;
        if let Some((sel, d)) = &mut self.detail {
            if sel[b] {
                let mut k = String::from_utf8_lossy(&self.key).replace('\u{1f}', ", ");
                k.truncate(k.trim_end_matches(", ").len());
                // Keyless tables: identical rows are one key with a count.
                let mut n = 0;
                while d.contains_key(&format!("{k}#{n}")) {
                    n += 1;
                }
                d.insert(if all_key { format!("{k}#{n}") } else { k }, rh);
            }
        }
    }
}

fn key_of(schema: &TableSchema) -> Vec<usize> {
    if matches!(schema.replica_identity, sluice_core::ReplicaIdentity::Full | sluice_core::ReplicaIdentity::Nothing) {
        return Vec::new();
    }
    schema.key_columns().map(|(i, _)| i).collect()
}

/// Read the replica table (Postgres) through COPY text, parsing each value
/// as the source column's type.
async fn read_pg_target(
    client: &tokio_postgres::Client,
    target: &str,
    schema: &TableSchema,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let cols = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let stream = client
        .copy_out(&format!("COPY (SELECT {cols} FROM {target}) TO STDOUT"))
        .await
        .with_context(|| format!("reading {target}"))?;
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {target}"))?;
        let mut fields = Vec::new();
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            sluice_schemas::postgres::split_copy_line(line, &mut fields).map_err(|e| anyhow!("{target}: {e}"))?;
            let mut values = Vec::with_capacity(fields.len());
            for (f, (c, conv)) in fields.iter().zip(schema.columns.iter().zip(&acc.convs)) {
                values.push(match f {
                    None => Value::Null,
                    Some(s) => target_value(&c.ty, *conv, c.type_id == 0, s)
                        .map_err(|e| anyhow!("{target}, column {}: {e}", c.name))?,
                });
            }
            acc.add(values);
        }
    }
    Ok(())
}

/// A replica's text value as the source type.
fn target_value(ty: &ColumnType, conv: Conv, mysql: bool, s: &str) -> Result<Value, String> {
    if conv == Conv::IntToBool {
        return Ok(Value::Int(if s == "t" { 1 } else { 0 }));
    }
    if mysql && *ty == ColumnType::Time {
        return parse_interval_time(s).ok_or_else(|| format!("bad interval {s:?}"));
    }
    if *ty == ColumnType::Float32 {
        return s.parse::<f32>().map(|f| Value::Float(sluice_mysql::decoding::widen_f32(f))).map_err(|e| e.to_string());
    }
    sluice_schemas::postgres::parse_text(ty, s).map_err(|e| e.to_string())
}

/// `[-]H+:MM:SS[.ffffff]` (a MySQL TIME stored as a Postgres interval).
fn parse_interval_time(s: &str) -> Option<Value> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut it = rest.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec = it.next()?;
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut us = 0i64;
    if !frac.is_empty() {
        let f = format!("{frac:0<6}");
        us = f.get(..6)?.parse().ok()?;
    }
    let t = ((h * 60 + m) * 60 + sec) * 1_000_000 + us;
    Some(Value::Time(if neg { -t } else { t }))
}

async fn read_pg_source(client: &tokio_postgres::Client, schema: &TableSchema, acc: &mut Accum) -> anyhow::Result<()> {
    read_pg_target(client, &schema.id.quoted(), schema, acc).await
}

async fn read_my_source(
    conn: &mut mysql_async::Conn,
    schema: &TableSchema,
    snap: &[sluice_mysql::catalog::SnapColumn],
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let q = sluice_mysql::snapshot::quote_my;
    let cols = schema.columns.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {cols} FROM {}.{}", q(&schema.id.schema), q(&schema.id.name));
    let mut result = conn.exec_iter(sql, ()).await.with_context(|| format!("reading {}", schema.id))?;
    while let Some(row) = result.next().await.with_context(|| format!("reading {}", schema.id))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for ((v, c), s) in row.unwrap().into_iter().zip(&schema.columns).zip(snap) {
            values.push(sluice_mysql::snapshot::convert(v, &c.ty, s).map_err(|e| anyhow!("{}: {e}", schema.id))?);
        }
        acc.add(values);
    }
    Ok(())
}

enum SourceConn {
    Pg(Box<(tokio_postgres::Client, String, sluice_postgres::catalog::Domains)>),
    My(mysql_async::Conn),
}

struct Table {
    schema: TableSchema,
    snap: Vec<sluice_mysql::catalog::SnapColumn>,
    estimate: u64,
}

async fn source_tables(cfg: &PipelineConfig, src: &mut SourceConn) -> anyhow::Result<Vec<Table>> {
    let mut out = Vec::new();
    match src {
        SourceConn::Pg(pg) => {
            let (client, db, domains) = &**pg;
            for t in sluice_postgres::catalog::included_tables(client, &cfg.tables).await? {
                let schema = sluice_postgres::catalog::table_schema(client, db, &t.id, domains).await?;
                out.push(Table { schema, snap: Vec::new(), estimate: t.estimated_rows });
            }
        }
        SourceConn::My(conn) => {
            for t in sluice_mysql::catalog::included_tables(conn, &cfg.tables).await? {
                if let Some((schema, snap)) = sluice_mysql::catalog::table_schema(conn, &t.id).await? {
                    out.push(Table { schema, snap, estimate: t.estimated_rows });
                }
            }
        }
    }
    Ok(out)
}

async fn summarize_source(
    src: &mut SourceConn,
    t: &Table,
    buckets: usize,
    mysql_target: bool,
    detail: Option<Vec<bool>>,
) -> anyhow::Result<Accum> {
    let mut acc = Accum::new(buckets, &t.schema, mysql_target, detail);
    match src {
        SourceConn::Pg(pg) => read_pg_source(&pg.0, &t.schema, &mut acc).await?,
        SourceConn::My(conn) => read_my_source(conn, &t.schema, &t.snap, &mut acc).await?,
    }
    Ok(acc)
}

/// The replica's session.
enum TargetConn {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

/// Read the replica table (MySQL) through the binary protocol, each value
/// as the source column's type.
async fn read_my_target(conn: &mut mysql_async::Conn, target: &str, t: &Table, acc: &mut Accum) -> anyhow::Result<()> {
    let q = sluice_mysql::snapshot::quote_my;
    let schema = &t.schema;
    let cols = schema.columns.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    let mut result = conn
        .exec_iter(format!("SELECT {cols} FROM {target}"), ())
        .await
        .with_context(|| format!("reading {target}"))?;
    let plain = sluice_mysql::catalog::SnapColumn::default();
    while let Some(row) = result.next().await.with_context(|| format!("reading {target}"))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for (i, (v, c)) in row.unwrap().into_iter().zip(&schema.columns).enumerate() {
            let snap = t.snap.get(i).unwrap_or(&plain);
            values.push(
                sluice_mysql::snapshot::convert(v, &c.ty, snap)
                    .map_err(|e| anyhow!("{target}, column {}: {e}", c.name))?,
            );
        }
        acc.add(values);
    }
    Ok(())
}

async fn summarize_target(
    target: &mut TargetConn,
    db: &str,
    t: &Table,
    buckets: usize,
    detail: Option<Vec<bool>>,
) -> anyhow::Result<Option<Accum>> {
    match target {
        TargetConn::Pg(client) => {
            let name = format!("{}.{}", quote_ident(db), quote_ident(&t.schema.id.name));
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .with_context(|| format!("looking up {name}"))?
                .get(0);
            if !exists {
                return Ok(None);
            }
            let mut acc = Accum::new(buckets, &t.schema, false, detail);
            read_pg_target(client, &name, &t.schema, &mut acc).await?;
            Ok(Some(acc))
        }
        TargetConn::My(conn) => {
            let q = sluice_mysql::snapshot::quote_my;
            let name = format!("{}.{}", q(db), q(&t.schema.id.name));
            let exists: Option<u64> = conn
                .exec_first(
                    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (db, &t.schema.id.name),
                )
                .await
                .with_context(|| format!("looking up {name}"))?;
            if exists.is_none() {
                return Ok(None);
            }
            let mut acc = Accum::new(buckets, &t.schema, true, detail);
            read_my_target(conn, &name, t, &mut acc).await?;
            Ok(Some(acc))
        }
    }
}

/// Run `verify`: print a result line per table; `Ok(true)` when all match.
pub async fn run(cfg: &PipelineConfig) -> anyhow::Result<bool> {
    let (sink, mysql_target) = match &cfg.sink {
        SinkConfig::Postgres(d) => (d, false),
        SinkConfig::Mysql(d) => (d, true),
        _ => {
            return Err(sluice_core::error::SinkError::new(
                sluice_core::ErrorKind::Config,
                "verify compares the source with a replica database: sink.type must be postgres or mysql",
            )
            .into())
        }
    };
    let mut target = if mysql_target {
        let info = sluice_mysql::conn::ConnInfo::from_url(&sink.url, sink.tls.as_ref(), "sink")?;
        TargetConn::My(info.connect().await.context("connecting to the target")?)
    } else {
        let tinfo = sluice_postgres::conn::ConnInfo::from_config(&PostgresSourceConfig {
            url: sink.url.clone(),
            slot: None,
            publication: None,
            tls: sink.tls.clone(),
            streaming: None,
        })?;
        let client = sluice_postgres::conn::connect_sql(&tinfo).await.context("connecting to the target")?;
        client
            .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET IntervalStyle = 'postgres'")
            .await?;
        TargetConn::Pg(client)
    };
    let mut src = match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_postgres::conn::ConnInfo::from_config(pg)?;
            let client = sluice_postgres::conn::connect_sql(&info).await.context("connecting to the source")?;
            client.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3").await?;
            let domains = sluice_postgres::catalog::domains(&client).await?;
            SourceConn::Pg(Box::new((client, info.dbname.clone(), domains)))
        }
        SourceConfig::Mysql(my) => {
            let info = sluice_mysql::conn::ConnInfo::from_config(my)?;
            SourceConn::My(info.connect().await.context("connecting to the source")?)
        }
    };
    let tables = source_tables(cfg, &mut src).await?;
    if tables.is_empty() {
        return Err(anyhow!("no table matches tables.include"));
    }
    println!("{:<40} {:>12} {:>12}  result", "table", "source rows", "target rows");
    let mut failed = 0usize;
    for t in &tables {
        let tschema = sink.schema.clone().unwrap_or_else(|| t.schema.id.schema.clone());
        let buckets = bucket_count(t.estimate);
        let s = summarize_source(&mut src, t, buckets, mysql_target, None).await?;
        let d = summarize_target(&mut target, &tschema, t, buckets, None).await?;
        let Some(d) = d else {
            println!(
                "{:<40} {:>12} {:>12}  MISSING (no table {tschema}.{} in the target)",
                t.schema.id.to_string(),
                s.summary.rows,
                "-",
                t.schema.id.name
            );
            failed += 1;
            continue;
        };
        let differing: Vec<bool> = s.summary.buckets.iter().zip(&d.summary.buckets).map(|(a, b)| a != b).collect();
        if !differing.iter().any(|x| *x) {
            println!("{:<40} {:>12} {:>12}  ok", t.schema.id.to_string(), s.summary.rows, d.summary.rows);
            continue;
        }
        failed += 1;
        // Second pass over the differing buckets only: name the keys.
        let s2 = summarize_source(&mut src, t, buckets, mysql_target, Some(differing.clone())).await?;
        let d2 = summarize_target(&mut target, &tschema, t, buckets, Some(differing)).await?.expect("exists");
        let (sd, dd) = (s2.detail.expect("detail").1, d2.detail.expect("detail").1);
        let mut problems = Vec::new();
        for (k, h) in &sd {
            match dd.get(k) {
                None => problems.push(format!("missing in target: {k}")),
                Some(x) if x != h => problems.push(format!("differs: {k}")),
                _ => {}
            }
        }
        for k in dd.keys() {
            if !sd.contains_key(k) {
                problems.push(format!("extra in target: {k}"));
            }
        }
        let n = problems.len();
        problems.truncate(5);
        println!(
            "{:<40} {:>12} {:>12}  MISMATCH ({n} rows; first: {})",
            t.schema.id.to_string(),
            s.summary.rows,
            d.summary.rows,
            problems.join("; ")
        );
    }
    if failed == 0 {
        println!("all {} tables match", tables.len());
    } else {
        println!("{failed} of {} tables differ", tables.len());
    }
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_times() {
        assert_eq!(parse_interval_time("-838:59:59.99"), Some(Value::Time(-(3_020_399 * 1_000_000 + 990_000))));
        assert_eq!(parse_interval_time("00:00:01"), Some(Value::Time(1_000_000)));
        assert_eq!(parse_interval_time("x"), None);
    }
}
