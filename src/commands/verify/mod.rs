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
//!
//! This module is the command: connections, the tables and their key
//! ranges, the workers that compare ranges in parallel, and the report.
//! [`hash`] holds the comparison itself (canonical values, bucket
//! summaries, diffs), [`postgres`] and [`mysql`] read rows from each engine.
//!
//! Invariants:
//! - Source rows go through the pipeline's transforms before they are
//!   summarized; the replica holds their output (`Table::out`).
//! - Both sides of a range are summarized with the same bucket count and
//!   the same key filter, then compared bucket by bucket; only ranges with
//!   differing buckets are read a second time.
//! - Key ranges cover the whole key space (the first and last are open), so
//!   replica rows outside the source's key span are compared too.
//! - The exit status is the report's: `Ok(true)` only when every table is
//!   present in the target and every range matches.

mod hash;
mod mysql;
mod postgres;

use anyhow::{anyhow, Context};
use mysql_async::prelude::Queryable;
use sluice_core::config::{DbSinkConfig, PipelineConfig, SinkConfig, SourceConfig};
use sluice_core::schema::quote_ident;
use sluice_core::{ColumnType, TableSchema};
use sluice_schemas::target::{pg_type, Conv};

use hash::{bucket_count, diff_details, differing_buckets, key_of, Accum};

enum SourceConn {
    Pg(Box<(tokio_postgres::Client, String, sluice_source_postgres::Domains)>),
    My(mysql_async::Conn),
}

struct Table {
    /// The source table.
    schema: TableSchema,
    /// The replica's table: `schema` through the pipeline's transforms.
    out: TableSchema,
    plan: Option<std::sync::Arc<sluice_transforms::Plan>>,
    snap: Vec<sluice_source_mysql::SnapColumn>,
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
            for t in sluice_source_postgres::included_tables(client, &cfg.tables).await? {
                let schema = sluice_source_postgres::table_schema(client, db, &t.id, domains).await?;
                let (schema, o, p) = plan(schema)?;
                out.push(Table { schema, out: o, plan: p, snap: Vec::new(), estimate: t.estimated_rows });
            }
        }
        SourceConn::My(conn) => {
            for t in sluice_source_mysql::included_tables(conn, &cfg.tables).await? {
                if let Some((schema, snap)) = sluice_source_mysql::table_schema(conn, &t.id).await? {
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
        SourceConn::Pg(pg) => postgres::read_table(&pg.0, &t.schema.id.quoted(), &t.schema, range, &mut acc).await?,
        SourceConn::My(conn) => mysql::read_source(conn, &t.schema, &t.snap, range, &mut acc).await?,
    }
    Ok(acc)
}

/// The replica's session.
enum TargetConn {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
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
        TargetConn::Pg(client) => postgres::read_table(client, &name, &t.out, range, &mut acc).await?,
        TargetConn::My(conn) => mysql::read_target(conn, &name, t, range, &mut acc).await?,
    }
    Ok(acc)
}

async fn connect_source(cfg: &PipelineConfig) -> anyhow::Result<SourceConn> {
    Ok(match &cfg.source {
        SourceConfig::Postgres(pg) => {
            let info = sluice_source_postgres::conn_info(pg)?;
            let client = sluice_client_postgres::connect_sql(&info).await.context("connecting to the source")?;
            client.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3").await?;
            let domains = sluice_source_postgres::domains(&client).await?;
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
    let differing = differing_buckets(&s.summary, &d.summary);
    if !differing.iter().any(|x| *x) {
        return Ok(());
    }
    out.ranges.push(range.label());
    let (s2, d2) = tokio::try_join!(
        summarize_source(src, t, range, buckets, mysql_target, Some(differing.clone())),
        summarize_target(target, db, t, range, buckets, Some(differing))
    )?;
    let (sd, dd) = (s2.detail.expect("detail").1, d2.detail.expect("detail").1);
    diff_details(&sd, &dd, &mut out.problems);
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
