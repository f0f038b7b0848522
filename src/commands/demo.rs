//! `sluice demo`: a throwaway Postgres with sample tables and ongoing
//! writes, a pipeline into Parquet files, live progress, then catch up and a
//! summary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_core::config::parse_pipeline_text;
use sluice_core::runtime::Stats;
use tokio::sync::watch;

use crate::commands::run::run_config;
use crate::{progress, Failure};
use sluice_testkit::PgCluster;

const SETUP: &str = r#"
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id serial PRIMARY KEY, name text NOT NULL, email text, country char(2), created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL, tags text[], attrs jsonb);
CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer_id int NOT NULL, product_id int NOT NULL, quantity int NOT NULL,
  amount numeric(12,2) NOT NULL, status text NOT NULL, ordered_on date NOT NULL DEFAULT current_date, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO shop.customers (name, email, country)
  SELECT 'customer ' || g, 'c' || g || '@example.com', (ARRAY['DE','FR','US','JP','BR'])[1 + g % 5] FROM generate_series(1, 20000) g;
INSERT INTO shop.products SELECT g, 'product ' || g, (g % 500) + 0.99, ARRAY['tag' || (g % 7), 'tag' || (g % 3)], jsonb_build_object('color', (ARRAY['red','green','blue'])[1 + g % 3], 'weight', g % 17)
  FROM generate_series(1, 500) g;
INSERT INTO shop.orders (customer_id, product_id, quantity, amount, status)
  SELECT 1 + g % 20000, 1 + g % 500, 1 + g % 5, ((g % 500) + 0.99) * (1 + g % 5), (ARRAY['new','paid','shipped'])[1 + g % 3] FROM generate_series(1, 100000) g;
"#;

pub async fn run(seconds: u64, dir: Option<PathBuf>) -> Result<u8, Failure> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    println!("sluice demo: starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(&[]))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| anyhow::anyhow!("cannot start a throwaway PostgreSQL: {e}"))?;
    println!("  PostgreSQL from {} on port {}", cluster.bindir.display(), cluster.port);
    let url = cluster.url("postgres");
    let (client, conn) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.context("connecting to the demo server")?;
    tokio::spawn(conn);
    client.batch_execute(SETUP).await.context("creating sample tables")?;
    println!("  created shop.customers (20000 rows), shop.products (500), shop.orders (100000)");

    let yaml = format!(
        "version: 1\nname: demo\nsource:\n  type: postgres\n  url: {url}\ntables:\n  include: [\"shop.*\"]\nsnapshot:\n  mode: initial\n  parallelism: 3\n\
         sink:\n  type: files\n  format: parquet\n  path: {}\n  roll:\n    seconds: 5\ncheckpoint:\n  path: {}\n",
        dir.join("data").display(),
        dir.join("state").display()
    );
    let pipeline_file = dir.join("pipeline.yaml");
    std::fs::write(&pipeline_file, &yaml).context("writing pipeline.yaml")?;
    let cfg = parse_pipeline_text(&yaml, &pipeline_file.display().to_string())?;
    let writer = Writer::start(&url).await?;

    println!("  running pipeline `demo` into {} for {seconds}s (Ctrl-C stops early)", dir.join("data").display());
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let prog = progress::spawn(stats.clone());
    let timer = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });
    let first = run_config(&cfg, false, stop_rx, stats.clone()).await;
    timer.abort();
    let writes = writer.stop().await;
    first?;
    progress::clear_line();
    println!("  stopped the writes ({writes} row changes written); catching up ...");
    let (_never_tx, never) = watch::channel(false);
    let summary = run_config(&cfg, true, never, stats.clone()).await?;
    prog.abort();
    let _ = prog.await;
    progress::clear_line();
    let elapsed = started.elapsed().as_secs_f64();

    let data = dir.join("data");
    let (verified, counts) = verify(&client, &data).await;
    drop(client);
    drop(cluster);
    print_summary(&stats, &data, elapsed, &counts, summary.caught_up, verified);
    println!("pipeline file: {} (the server is gone; point source.url at your own database)", pipeline_file.display());
    Ok(if verified { 0 } else { 1 })
}

/// Ongoing writes: small transactions of inserts, updates and deletes.
struct Writer {
    stop: Arc<AtomicBool>,
    /// Row changes written so far.
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(url: &str) -> Result<Writer, Failure> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (w, wconn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting the writer")?;
        tokio::spawn(wconn);
        let task = tokio::spawn({
            let (stop, writes) = (stop.clone(), writes.clone());
            async move {
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO shop.orders (customer_id, product_id, quantity, amount, status)
                           SELECT 1 + (random() * 19999)::int, 1 + (random() * 499)::int, q, q * 9.99, 'new' FROM generate_series(1, 20) q;
                         UPDATE shop.orders SET status = 'paid' WHERE id = (SELECT max(id) - {} FROM shop.orders);
                         UPDATE shop.customers SET email = 'changed{i}@example.com' WHERE id = {};
                         DELETE FROM shop.orders WHERE id = (SELECT min(id) FROM shop.orders);
                         COMMIT;",
                        i % 50,
                        1 + i % 20000
                    );
                    if let Err(e) = w.batch_execute(&sql).await {
                        eprintln!("demo writer: {e}");
                        break;
                    }
                    writes.fetch_add(23, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Ok(Writer { stop, writes, task })
    }

    /// Stop writing; the number of row changes written.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.writes.load(Ordering::Relaxed)
    }
}

/// Replay the delivered changes and compare with what the source holds:
/// whether every table matches, and each table's row count at the source.
async fn verify(client: &tokio_postgres::Client, data: &std::path::Path) -> (bool, Vec<(&'static str, usize)>) {
    let mut counts = Vec::new();
    let mut verified = true;
    for t in ["customers", "products", "orders"] {
        let ids: Vec<i64> = client
            .query(&format!("SELECT id::int8 FROM shop.{t}"), &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        let source: std::collections::BTreeSet<i64> = ids.into_iter().collect();
        let result = replay_ids(&data.join(format!("shop.{t}")));
        if !matches!(&result, Ok(out) if *out == source) {
            verified = false;
            let why = match &result {
                Ok(out) => format!("output has {} rows, source {}", out.len(), source.len()),
                Err(e) => e.clone(),
            };
            eprintln!("  verification of shop.{t} failed: {why}");
        }
        counts.push((t, source.len()));
    }
    (verified, counts)
}

fn print_summary(
    stats: &Stats,
    data: &std::path::Path,
    elapsed: f64,
    counts: &[(&str, usize)],
    caught_up: bool,
    verified: bool,
) {
    let mut files = 0;
    let mut tables = Vec::new();
    if let Ok(rd) = std::fs::read_dir(data) {
        for e in rd.flatten() {
            let n = std::fs::read_dir(e.path())
                .map(|r| r.flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".parquet")).count())
                .unwrap_or(0);
            files += n;
            tables.push((e.file_name().to_string_lossy().to_string(), n));
        }
    }
    tables.sort();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (inserts, updates, deletes) = (load(&stats.inserts), load(&stats.updates), load(&stats.deletes));
    println!();
    println!("summary");
    println!("  tables      {}", tables.iter().map(|(t, n)| format!("{t} ({n} files)")).collect::<Vec<_>>().join(", "));
    println!(
        "  rows        {} snapshot + {} changes (c {inserts} / u {updates} / d {deletes}) in {} transactions",
        load(&stats.snapshot_rows),
        inserts + updates + deletes,
        load(&stats.transactions)
    );
    println!("  files       {files} Parquet files");
    println!("  throughput  {:.0} rows/s over {elapsed:.1}s", load(&stats.events) as f64 / elapsed.max(0.001));
    println!("  source now  {}", counts.iter().map(|(t, n)| format!("{t} {n} rows")).collect::<Vec<_>>().join(", "));
    println!("  caught up   {}", if caught_up { "yes" } else { "no" });
    println!(
        "  verified    {}",
        if verified {
            "replaying the Parquet output gives exactly the source's rows (no loss, no duplicates)"
        } else {
            "NO: the output does not match the source (see above)"
        }
    );
    println!();
    println!("output: {}", data.display());
    println!("  one directory per table; files in name order, rows in order, are commit order.");
    println!("  columns: the table's columns plus __op (r/c/u/d/t), __position (commit LSN), __commit_ts, __unchanged");
    println!("read it with, e.g.:");
    println!("  duckdb -c \"SELECT __op, count(*) FROM '{}/shop.orders/*.parquet' GROUP BY 1\"", data.display());
    println!("  python3 -c \"import pandas; print(pandas.read_parquet('{}/shop.orders'))\"", data.display());
}

/// Replay a table's Parquet files by primary key `id`: the set of live ids.
/// Strict: a second insert of a live id, or an update/delete of a missing
/// one, is an error.
fn replay_ids(dir: &std::path::Path) -> Result<std::collections::BTreeSet<i64>, String> {
    use arrow_array::{Array, Int32Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().map(|x| x == "parquet").unwrap_or(false))
        .filter(|p| !p.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(true))
        .collect();
    files.sort();
    let mut live = std::collections::BTreeSet::new();
    for f in files {
        let file = std::fs::File::open(&f).map_err(|e| e.to_string())?;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(|e| e.to_string())?;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let ids = batch.column_by_name("id").ok_or("no id column")?;
            let ops = batch.column_by_name("__op").ok_or("no __op column")?;
            let ops = ops.as_any().downcast_ref::<StringArray>().ok_or("__op is not text")?;
            for row in 0..batch.num_rows() {
                let id = if let Some(a) = ids.as_any().downcast_ref::<Int64Array>() {
                    a.value(row)
                } else if let Some(a) = ids.as_any().downcast_ref::<Int32Array>() {
                    a.value(row) as i64
                } else {
                    return Err("id is not an integer column".into());
                };
                match ops.value(row) {
                    "r" | "c" if !live.insert(id) => return Err(format!("id {id} delivered twice")),
                    "u" if !live.contains(&id) => return Err(format!("update of undelivered id {id}")),
                    "d" if !live.remove(&id) => return Err(format!("delete of undelivered id {id}")),
                    "t" => live.clear(),
                    _ => {}
                }
            }
        }
    }
    Ok(live)
}
