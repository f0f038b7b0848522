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
use sluice_core::config::{DbSinkConfig, PipelineConfig, SinkConfig, SourceConfig};
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
    /// The pipeline's transforms, for source rows (the target holds their output).
    plan: Option<std::sync::Arc<sluice_transforms::Plan>>,
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
            plan: None,
        }
    }

    fn add(&mut self, values: Vec<Value>) {
        let values = match &self.plan {
            None => values,
            Some(p) => match p.row(values) {
                Some(v) => v,
                None => return,
            },
        };
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
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let cols = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let filter = range.filter(&quote_ident);
    let stream = client
        .copy_out(&format!("COPY (SELECT {cols} FROM {target}{filter}) TO STDOUT"))
        .await
        .with_context(|| format!("reading {target}"))?;
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {target}"))?;
        let mut fields = Vec::new();
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            sluice_schemas::postgres::split_copy_line(line, &mut fields).map_err(|e| anyhow!("{target}: {e}"))?;
            let mut values = Vec::with_capacity(fields.len());
            for (f, c) in fields.iter().zip(&schema.columns) {
                values.push(match f {
                    None => Value::Null,
                    Some(s) => target_value(&c.ty, pg_type(c).1, c.type_id == 0, s)
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
        return s
            .parse::<f32>()
            .map(|f| Value::Float(sluice_source_mysql::decoding::widen_f32(f)))
            .map_err(|e| e.to_string());
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

async fn read_my_source(
    conn: &mut mysql_async::Conn,
    schema: &TableSchema,
    snap: &[sluice_source_mysql::catalog::SnapColumn],
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let q = sluice_client_mysql::quote_ident;
    // Text in legacy character sets is read as bytes and decoded as the snapshot does.
    let cols = sluice_source_mysql::snapshot::select_list(schema, snap);
    let sql = format!("SELECT {cols} FROM {}.{}{}", q(&schema.id.schema), q(&schema.id.name), range.filter(&q));
    let mut result = conn.exec_iter(sql, ()).await.with_context(|| format!("reading {}", schema.id))?;
    while let Some(row) = result.next().await.with_context(|| format!("reading {}", schema.id))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for ((v, c), s) in row.unwrap().into_iter().zip(&schema.columns).zip(snap) {
            values
                .push(sluice_source_mysql::snapshot::convert(v, &c.ty, s).map_err(|e| anyhow!("{}: {e}", schema.id))?);
        }
        acc.add(values);
    }
    Ok(())
}

enum SourceConn {
    Pg(Box<(tokio_postgres::Client, String, sluice_source_postgres::catalog::Domains)>),
    My(mysql_async::Conn),
}

struct Table {
    /// The source table.
    schema: TableSchema,
    /// The replica's table: `schema` through the pipeline's transforms.
    out: TableSchema,
    plan: Option<std::sync::Arc<sluice_transforms::Plan>>,
    snap: Vec<sluice_source_mysql::catalog::SnapColumn>,
    estimate: u64,
}

async fn source_tables(cfg: &PipelineConfig, src: &mut SourceConn) -> anyhow::Result<Vec<Table>> {
    let mut chain = sluice_transforms::Chain::new(&cfg.transforms)
        .map_err(|errors| sluice_core::config::ConfigError { file: cfg.name.clone(), errors })?;
    let mut plan = |schema: TableSchema| -> anyhow::Result<(TableSchema, TableSchema, Option<_>)> {
        if chain.is_empty() {
            return Ok((schema.clone(), schema, None));
        }
        let p = chain
            .plan(&std::sync::Arc::new(schema.clone()))
            .map_err(|e| sluice_core::config::ConfigError { file: cfg.name.clone(), errors: vec![e.message] })?;
        Ok((schema, (*p.output).clone(), Some(p)))
    };
    let mut out = Vec::new();
    match src {
        SourceConn::Pg(pg) => {
            let (client, db, domains) = &**pg;
            for t in sluice_source_postgres::catalog::included_tables(client, &cfg.tables).await? {
                let schema = sluice_source_postgres::catalog::table_schema(client, db, &t.id, domains).await?;
                let (schema, o, p) = plan(schema)?;
                out.push(Table { schema, out: o, plan: p, snap: Vec::new(), estimate: t.estimated_rows });
            }
        }
        SourceConn::My(conn) => {
            for t in sluice_source_mysql::catalog::included_tables(conn, &cfg.tables).await? {
                if let Some((schema, snap)) = sluice_source_mysql::catalog::table_schema(conn, &t.id).await? {
                    let (schema, o, p) = plan(schema)?;
                    out.push(Table { schema, out: o, plan: p, snap, estimate: t.estimated_rows });
                }
            }
        }
    }
    Ok(out)
}

/// A slice of a table by an integer key column: `[lo, hi)`, open where `None`.
#[derive(Clone, Debug, Default)]
struct KeyRange {
    column: Option<String>,
    lo: Option<i128>,
    hi: Option<i128>,
    /// Hash buckets for this range's summary.
    buckets: usize,
}

impl KeyRange {
    fn filter(&self, quote: &dyn Fn(&str) -> String) -> String {
        let Some(c) = &self.column else { return String::new() };
        let c = quote(c);
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!(" WHERE {c} >= {lo} AND {c} < {hi}"),
            // The last range also holds replica rows without a key value.
            (Some(lo), None) => format!(" WHERE {c} >= {lo} OR {c} IS NULL"),
            (None, Some(hi)) => format!(" WHERE {c} < {hi}"),
            (None, None) => String::new(),
        }
    }

    fn label(&self) -> String {
        match (&self.column, self.lo, self.hi) {
            (None, ..) => "the whole table".into(),
            (Some(c), lo, hi) => format!(
                "{c} in [{}, {})",
                lo.map_or("-inf".into(), |v| v.to_string()),
                hi.map_or("+inf".into(), |v| v.to_string())
            ),
        }
    }
}

async fn summarize_source(
    src: &mut SourceConn,
    t: &Table,
    range: &KeyRange,
    buckets: usize,
    mysql_target: bool,
    detail: Option<Vec<bool>>,
) -> anyhow::Result<Accum> {
    let mut acc = Accum::new(buckets, &t.out, mysql_target, detail);
    acc.plan = t.plan.clone();
    match src {
        SourceConn::Pg(pg) => read_pg_target(&pg.0, &t.schema.id.quoted(), &t.schema, range, &mut acc).await?,
        SourceConn::My(conn) => read_my_source(conn, &t.schema, &t.snap, range, &mut acc).await?,
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
async fn read_my_target(
    conn: &mut mysql_async::Conn,
    target: &str,
    t: &Table,
    range: &KeyRange,
    acc: &mut Accum,
) -> anyhow::Result<()> {
    let q = sluice_client_mysql::quote_ident;
    let schema = &t.out;
    let cols = schema.columns.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {cols} FROM {target}{}", range.filter(&q));
    let mut result = conn.exec_iter(sql, ()).await.with_context(|| format!("reading {target}"))?;
    // Per-column read facts of the source column of the same name (once per
    // table); the target's text is read as the server converts it.
    let snaps: Vec<sluice_source_mysql::catalog::SnapColumn> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let j = if t.plan.is_none() { Some(i) } else { t.schema.column_index(&c.name) };
            let snap = j.and_then(|j| t.snap.get(j)).cloned().unwrap_or_default();
            sluice_source_mysql::catalog::SnapColumn { charset: None, ..snap }
        })
        .collect();
    while let Some(row) = result.next().await.with_context(|| format!("reading {target}"))? {
        let mut values = Vec::with_capacity(schema.columns.len());
        for ((v, c), snap) in row.unwrap().into_iter().zip(&schema.columns).zip(&snaps) {
            values.push(
                sluice_source_mysql::snapshot::convert(v, &c.ty, snap)
                    .map_err(|e| anyhow!("{target}, column {}: {e}", c.name))?,
            );
        }
        acc.add(values);
    }
    Ok(())
}

/// The replica's name for a table, quoted for its engine.
fn target_name(target: &TargetConn, db: &str, t: &Table) -> String {
    match target {
        TargetConn::Pg(_) => format!("{}.{}", quote_ident(db), quote_ident(&t.out.id.name)),
        TargetConn::My(_) => {
            let q = sluice_client_mysql::quote_ident;
            format!("{}.{}", q(db), q(&t.out.id.name))
        }
    }
}

async fn target_exists(target: &mut TargetConn, db: &str, t: &Table) -> anyhow::Result<bool> {
    let name = target_name(target, db, t);
    Ok(match target {
        TargetConn::Pg(client) => client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .with_context(|| format!("looking up {name}"))?
            .get(0),
        TargetConn::My(conn) => conn
            .exec_first::<u64, _, _>(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (db, &t.out.id.name),
            )
            .await
            .with_context(|| format!("looking up {name}"))?
            .is_some(),
    })
}

async fn summarize_target(
    target: &mut TargetConn,
    db: &str,
    t: &Table,
    range: &KeyRange,
    buckets: usize,
    detail: Option<Vec<bool>>,
) -> anyhow::Result<Accum> {
    let name = target_name(target, db, t);
    let mut acc = Accum::new(buckets, &t.out, matches!(target, TargetConn::My(_)), detail);
    match target {
        TargetConn::Pg(client) => read_pg_target(client, &name, &t.out, range, &mut acc).await?,
        TargetConn::My(conn) => read_my_target(conn, &name, t, range, &mut acc).await?,
    }
    Ok(acc)
}

async fn connect_source(cfg: &PipelineConfig) -> anyhow::Result<SourceConn> {
    Ok(match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_source_postgres::conn_info(pg)?;
            let client = sluice_client_postgres::connect_sql(&info).await.context("connecting to the source")?;
            client.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3").await?;
            let domains = sluice_source_postgres::catalog::domains(&client).await?;
            SourceConn::Pg(Box::new((client, info.dbname.clone(), domains)))
        }
        SourceConfig::Mysql(my) => {
            let info = sluice_source_mysql::conn_info(my)?;
            SourceConn::My(info.connect().await.context("connecting to the source")?)
        }
    })
}

async fn connect_target(sink: &DbSinkConfig, mysql: bool) -> anyhow::Result<TargetConn> {
    Ok(if mysql {
        let info = sluice_client_mysql::ConnInfo::from_url(&sink.url, sink.tls.as_ref(), "sink")?;
        TargetConn::My(info.connect().await.context("connecting to the target")?)
    } else {
        let tinfo = sluice_client_postgres::ConnInfo::from_url(&sink.url, sink.tls.as_ref(), "sink")?;
        let client = sluice_client_postgres::connect_sql(&tinfo).await.context("connecting to the target")?;
        client
            .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET IntervalStyle = 'postgres'")
            .await?;
        TargetConn::Pg(client)
    })
}

/// Split a table whose key has an integer column into ranges of that
/// column's values of about `chunk_rows` rows (by the source's min and max;
/// any key column will do, since the summaries still match rows by their
/// whole key); others are one range.
/// The first and last ranges are open, so replica rows outside the source's
/// key span are compared too.
async fn plan_ranges(src: &mut SourceConn, t: &Table, chunk_rows: u64) -> anyhow::Result<Vec<KeyRange>> {
    let key = key_of(&t.schema);
    let integer = |ty: &ColumnType| {
        matches!(
            ty,
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt32 | ColumnType::UInt64
        )
    };
    let whole = vec![KeyRange { buckets: bucket_count(t.estimate), ..KeyRange::default() }];
    let column = key.iter().map(|&i| &t.schema.columns[i]).find(|c| {
        // (A MySQL TINYINT(1) key is a boolean in a Postgres replica: no ranges.)
        integer(&c.ty) && pg_type(c).1 == Conv::AsIs
            // Ranges name the column on both sides: only when the transforms keep it as is.
            && (t.plan.is_none() || t.out.columns.iter().any(|o| o.key && o == *c))
    });
    let Some(column) = column else { return Ok(whole) };
    // The catalog's estimate may be stale: count while reading the span.
    let col = column.name.clone();
    let bounds: Option<(String, String, i64)> = match src {
        SourceConn::Pg(pg) => {
            let k = quote_ident(&col);
            let sql = format!("SELECT min({k})::text, max({k})::text, count(*) FROM {}", t.schema.id.quoted());
            let row = pg.0.query_one(&sql, &[]).await?;
            row.get::<_, Option<String>>(0).zip(row.get::<_, Option<String>>(1)).map(|(a, b)| (a, b, row.get(2)))
        }
        SourceConn::My(conn) => {
            let q = sluice_client_mysql::quote_ident;
            let k = q(&col);
            let sql = format!(
                "SELECT CAST(MIN({k}) AS CHAR), CAST(MAX({k}) AS CHAR), COUNT(*) FROM {}.{}",
                q(&t.schema.id.schema),
                q(&t.schema.id.name)
            );
            conn.query_first::<(Option<String>, Option<String>, i64), _>(sql)
                .await?
                .and_then(|(a, b, n)| a.zip(b).map(|(a, b)| (a, b, n)))
        }
    };
    let Some((lo, hi, rows)) = bounds else { return Ok(whole) };
    let chunks = (rows as u64 / chunk_rows).min(256);
    if chunks < 2 {
        return Ok(vec![KeyRange { buckets: bucket_count(rows as u64), ..KeyRange::default() }]);
    }
    let buckets = bucket_count(rows as u64 / chunks);
    let (lo, hi): (i128, i128) = (lo.parse()?, hi.parse()?);
    let step = ((hi - lo) / chunks as i128).max(1);
    let mut out = Vec::new();
    let mut start: Option<i128> = None;
    let mut next = lo + step;
    while next <= hi {
        out.push(KeyRange { column: Some(col.clone()), lo: start, hi: Some(next), buckets });
        start = Some(next);
        next += step;
    }
    out.push(KeyRange { column: Some(col), lo: start, hi: None, buckets });
    Ok(out)
}

/// One table's outcome, summed over its ranges.
#[derive(Default)]
struct Outcome {
    source_rows: u64,
    target_rows: u64,
    problems: Vec<String>,
    ranges: Vec<String>,
}

/// Compare one range of one table: summaries first, the keys of differing
/// buckets on a second pass.
async fn compare(
    src: &mut SourceConn,
    target: &mut TargetConn,
    db: &str,
    t: &Table,
    range: &KeyRange,
    mysql_target: bool,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let buckets = range.buckets;
    let (s, d) = tokio::try_join!(
        summarize_source(src, t, range, buckets, mysql_target, None),
        summarize_target(target, db, t, range, buckets, None)
    )?;
    out.source_rows += s.summary.rows;
    out.target_rows += d.summary.rows;
    let differing: Vec<bool> = s.summary.buckets.iter().zip(&d.summary.buckets).map(|(a, b)| a != b).collect();
    if !differing.iter().any(|x| *x) {
        return Ok(());
    }
    out.ranges.push(range.label());
    let (s2, d2) = tokio::try_join!(
        summarize_source(src, t, range, buckets, mysql_target, Some(differing.clone())),
        summarize_target(target, db, t, range, buckets, Some(differing))
    )?;
    let (sd, dd) = (s2.detail.expect("detail").1, d2.detail.expect("detail").1);
    for (k, h) in &sd {
        match dd.get(k) {
            None => out.problems.push(format!("missing in target: {k}")),
            Some(x) if x != h => out.problems.push(format!("differs: {k}")),
            _ => {}
        }
    }
    for k in dd.keys() {
        if !sd.contains_key(k) {
            out.problems.push(format!("extra in target: {k}"));
        }
    }
    Ok(())
}

/// Run `verify`: print a result line per table; `Ok(true)` when all match.
/// Tables whose key has an integer column are compared in ranges of it of about
/// `chunk_rows` rows, `parallel` ranges at a time.
pub async fn run(cfg: &PipelineConfig, chunk_rows: u64, parallel: usize) -> anyhow::Result<bool> {
    let (sink, mysql_target) = match &cfg.sink {
        SinkConfig::Postgres(d) => (d.clone(), false),
        SinkConfig::Mysql(d) => (d.clone(), true),
        _ => {
            return Err(sluice_core::error::SinkError::new(
                sluice_core::ErrorKind::Config,
                "verify compares the source with a replica database: sink.type must be postgres or mysql",
            )
            .into())
        }
    };
    let mut target = connect_target(&sink, mysql_target).await?;
    let mut src = connect_source(cfg).await?;
    let tables = source_tables(cfg, &mut src).await?;
    if tables.is_empty() {
        return Err(anyhow!("no table matches tables.include"));
    }
    let db_of = |t: &Table| sink.schema.clone().unwrap_or_else(|| t.out.id.schema.clone());
    // Plan: every present table's key ranges, largest tables first.
    let mut missing = vec![false; tables.len()];
    let mut units: Vec<(usize, KeyRange)> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        if target_exists(&mut target, &db_of(t), t).await? {
            for r in plan_ranges(&mut src, t, chunk_rows).await? {
                units.push((i, r));
            }
        } else {
            missing[i] = true;
        }
    }
    units.sort_by_key(|(i, _)| std::cmp::Reverse(tables[*i].estimate));
    let tables = std::sync::Arc::new(tables);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(units)));
    let outcomes =
        std::sync::Arc::new(std::sync::Mutex::new((0..tables.len()).map(|_| Outcome::default()).collect::<Vec<_>>()));
    let workers = parallel.min(queue.lock().expect("queue").len()).max(1);
    let mut handles = Vec::new();
    let mut first = Some((src, target));
    for _ in 0..workers {
        let (tables, queue, outcomes, sink, cfg) =
            (tables.clone(), queue.clone(), outcomes.clone(), sink.clone(), cfg.clone());
        let conns = first.take();
        handles.push(tokio::spawn(async move {
            let (mut src, mut target) = match conns {
                Some(c) => c,
                None => (connect_source(&cfg).await?, connect_target(&sink, mysql_target).await?),
            };
            loop {
                let Some((i, range)) = queue.lock().expect("queue").pop_front() else { break };
                let t = &tables[i];
                let db = sink.schema.clone().unwrap_or_else(|| t.out.id.schema.clone());
                let mut out = Outcome::default();
                compare(&mut src, &mut target, &db, t, &range, mysql_target, &mut out).await?;
                let mut all = outcomes.lock().expect("outcomes");
                let o = &mut all[i];
                o.source_rows += out.source_rows;
                o.target_rows += out.target_rows;
                o.problems.extend(out.problems);
                o.ranges.extend(out.ranges);
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await.context("a verify worker failed")??;
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes"));
    println!("{:<40} {:>12} {:>12}  result", "table", "source rows", "target rows");
    let mut failed = 0usize;
    for (i, (t, mut o)) in tables.iter().zip(outcomes).enumerate() {
        let name = t.schema.id.to_string();
        if missing[i] {
            println!(
                "{name:<40} {:>12} {:>12}  MISSING (no table {}.{} in the target)",
                "-",
                "-",
                db_of(t),
                t.out.id.name
            );
            failed += 1;
            continue;
        }
        if o.ranges.is_empty() {
            println!("{name:<40} {:>12} {:>12}  ok", o.source_rows, o.target_rows);
            continue;
        }
        failed += 1;
        o.problems.sort();
        let n = o.problems.len();
        o.problems.truncate(5);
        o.ranges.sort();
        o.ranges.truncate(3);
        println!(
            "{name:<40} {:>12} {:>12}  MISMATCH ({n} rows in {}; first: {})",
            o.source_rows,
            o.target_rows,
            o.ranges.join(", "),
            o.problems.join("; ")
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
