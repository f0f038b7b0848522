//! Test harness: throwaway Postgres clusters (own data dir, free port,
//! logical replication), pipeline files, running the `sluice` binary, and
//! replaying its output to compare with the source.

#![allow(dead_code)]

pub use sluice_testkit::{mycluster, pgcluster};

pub mod duckdb;
pub mod kafka;
pub mod kill;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub use kill::{kill_all_repeatedly, kill_repeatedly, KillPlan};
pub use mycluster::MyCluster;
pub use pgcluster::PgCluster;
use serde_json::{Map, Value};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A test's scratch directory (removed on drop, kept when the test fails)
/// and the pipeline files it writes, for a source of either engine.
pub struct Scratch {
    pub dir: PathBuf,
    /// `postgres` or `mysql`.
    source_type: &'static str,
    source_url: String,
}

impl Scratch {
    fn new(name: &str, port: u16, source_type: &'static str, source_url: String) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sluice-test-{name}-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir, source_type, source_url }
    }

    /// Write a pipeline file; `sink` is the YAML body of the `sink:` mapping (indented by 2).
    pub fn pipeline(&self, name: &str, include: &[&str], sink: &str, extra: &str) -> PathBuf {
        let include = include.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let yaml = format!(
            "version: 1\nname: {name}\nsource:\n  type: {}\n  url: {}\ntables:\n  include: [{include}]\nsink:\n{sink}\ncheckpoint:\n  path: {}\n{extra}",
            self.source_type,
            self.source_url,
            self.dir.join(format!("state-{name}")).display()
        );
        let p = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        p
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.join(format!("out-{name}"))
    }

    /// A files sink body writing `format` under `out(name)`.
    pub fn files_sink(&self, name: &str, format: &str) -> String {
        format!("  type: files\n  format: {format}\n  path: {}\n", self.out(name).display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}", self.dir.display());
        }
    }
}

/// A Postgres-source test's world: a throwaway cluster and a [`Scratch`]
/// directory (pipeline files, outputs: through `Deref`).
pub struct Env {
    pub pg: PgCluster,
    scratch: Scratch,
}

impl std::ops::Deref for Env {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.scratch
    }
}

impl Env {
    pub fn new(name: &str) -> Env {
        Self::with_settings(name, &[])
    }

    pub fn with_settings(name: &str, extra: &[(&str, &str)]) -> Env {
        let pg = PgCluster::start(extra).unwrap_or_else(|e| panic!("cannot start Postgres: {e}"));
        let scratch = Scratch::new(name, pg.port, "postgres", pg.url("postgres"));
        Env { pg, scratch }
    }

    pub fn url(&self) -> String {
        self.pg.url("postgres")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        c.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3").await.unwrap();
        c
    }
}

/// A MySQL-source test's world: a throwaway MariaDB and a [`Scratch`] directory.
pub struct MyEnv {
    pub my: MyCluster,
    scratch: Scratch,
}

impl std::ops::Deref for MyEnv {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.scratch
    }
}

impl MyEnv {
    pub fn new(name: &str) -> MyEnv {
        Self::with_args(name, &[])
    }

    pub fn with_args(name: &str, extra: &[&str]) -> MyEnv {
        let my = MyCluster::start(extra).unwrap_or_else(|e| panic!("cannot start MariaDB: {e}"));
        let scratch = Scratch::new(name, my.port, "mysql", my.url());
        MyEnv { my, scratch }
    }

    /// Run SQL (panics with the server's message on failure).
    pub fn sql(&self, sql: &str) -> String {
        self.my.sql(sql).unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
    }

    pub fn url(&self) -> String {
        self.my.url()
    }

    /// Rows of a query returning one JSON object per row (in UTC).
    pub fn rows(&self, sql: &str, key: &[&str]) -> BTreeMap<String, Map<String, Value>> {
        my_rows(&self.my, sql, key)
    }
}

/// Rows of a MySQL query returning one JSON object per row (in UTC), by key.
pub fn my_rows(my: &MyCluster, sql: &str, key: &[&str]) -> BTreeMap<String, Map<String, Value>> {
    let text = my.sql(&format!("SET time_zone = '+00:00'; {sql}")).unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"));
    by_key(text.lines().filter(|l| !l.is_empty()).map(|l| (sql, l)), key)
}

/// JSON object rows by their key columns (keyless: duplicates numbered `#0`, `#1`, ...).
fn by_key<'a>(rows: impl Iterator<Item = (&'a str, &'a str)>, key: &[&str]) -> BTreeMap<String, Map<String, Value>> {
    let mut out = BTreeMap::new();
    let mut multi: BTreeMap<String, usize> = BTreeMap::new();
    for (sql, line) in rows {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{sql}: bad JSON {line}: {e}"));
        let m = v.as_object().unwrap().clone();
        let k = key_of(&m, key);
        if key.is_empty() {
            let n = multi.entry(k.clone()).or_default();
            out.insert(format!("{k}#{n}"), m);
            *n += 1;
        } else {
            out.insert(k, m);
        }
    }
    out
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run `sluice ARGS` to completion (with a generous time limit).
pub async fn sluice(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(SLUICE)
        .args(args)
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice");
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
        .await
        .expect("sluice did not finish within 10 minutes")
        .expect("wait");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    r
}

/// `sluice run P --until-caught-up`, asserting success.
pub async fn catch_up(pipeline: &Path) -> Run {
    let r = sluice(&["run", pipeline.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 0, "sluice run --until-caught-up failed:\n{}\n{}", r.stdout, r.stderr);
    r
}

pub fn spawn_run(pipeline: &Path) -> tokio::process::Child {
    tokio::process::Command::new(SLUICE)
        .args(["run", pipeline.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sluice")
}

/// One decoded output event.
#[derive(Debug, Clone)]
pub struct Event {
    pub table: String,
    pub op: String,
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    pub raw: Value,
}

/// Completed output files of a table directory, in name order (hidden files excluded).
pub fn completed_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().to_string();
                    !n.starts_with('.') && n.ends_with(&format!(".{ext}"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The table directories of an output directory: (table name, path).
fn table_dirs(out: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(out) else { return Vec::new() };
    rd.flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| (d.file_name().to_string_lossy().to_string(), d.path()))
        .collect()
}

/// All events of a JSONL output directory, per table in file order.
pub fn read_jsonl(out: &Path) -> BTreeMap<String, Vec<Event>> {
    let mut res = BTreeMap::new();
    for (table, dir) in table_dirs(out) {
        let mut evs = Vec::new();
        for f in completed_files(&dir, "jsonl") {
            let text = std::fs::read_to_string(&f).unwrap();
            for line in text.lines() {
                let v: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON in {}: {e}: {line}", f.display()));
                evs.push(Event {
                    table: table.clone(),
                    op: v["op"].as_str().unwrap().to_string(),
                    before: v["before"].as_object().cloned(),
                    after: v["after"].as_object().cloned(),
                    raw: v,
                });
            }
        }
        res.insert(table, evs);
    }
    res
}

/// All rows of a Parquet output directory as events (values rendered as text).
pub fn read_parquet(out: &Path) -> BTreeMap<String, Vec<Event>> {
    read_columnar(out, "parquet")
}

/// All rows of an Arrow IPC output directory as events (values rendered as text).
pub fn read_arrow(out: &Path) -> BTreeMap<String, Vec<Event>> {
    read_columnar(out, "arrow")
}

/// The record batches of one columnar file (`parquet` or `arrow`).
fn columnar_batches(f: &Path, ext: &str) -> Vec<arrow_array::RecordBatch> {
    let file = std::fs::File::open(f).unwrap();
    if ext == "arrow" {
        arrow_ipc::reader::FileReader::try_new(file, None).unwrap().map(|b| b.unwrap()).collect()
    } else {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
    }
}

fn read_columnar(out: &Path, ext: &str) -> BTreeMap<String, Vec<Event>> {
    use arrow_array::Array;
    let mut res = BTreeMap::new();
    for (table, dir) in table_dirs(out) {
        let mut evs = Vec::new();
        for f in completed_files(&dir, ext) {
            for batch in columnar_batches(&f, ext) {
                let schema = batch.schema();
                let fmt = arrow_cast::display::FormatOptions::default();
                // Zoned timestamps are rendered as UTC with a `Z` (arrow-cast
                // needs chrono-tz for named zones).
                let mut zoned = Vec::new();
                let columns: Vec<arrow_array::ArrayRef> = batch
                    .columns()
                    .iter()
                    .map(|c| match c.data_type() {
                        arrow_schema::DataType::Timestamp(u, Some(_)) => {
                            zoned.push(true);
                            arrow_cast::cast(c, &arrow_schema::DataType::Timestamp(*u, None)).unwrap()
                        }
                        _ => {
                            zoned.push(false);
                            c.clone()
                        }
                    })
                    .collect();
                let formatters: Vec<_> = columns
                    .iter()
                    .map(|c| arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &fmt).unwrap())
                    .collect();
                for row in 0..batch.num_rows() {
                    let mut m = Map::new();
                    let mut op = String::new();
                    let mut unchanged: Vec<String> = Vec::new();
                    for (i, field) in schema.fields().iter().enumerate() {
                        let col = batch.column(i);
                        let name = field.name().as_str();
                        match name {
                            "__op" => op = formatters[i].value(row).to_string(),
                            "__unchanged" => {
                                let s = formatters[i].value(row).to_string();
                                let s = s.trim_matches(|c| c == '[' || c == ']');
                                unchanged = s.split(", ").filter(|x| !x.is_empty()).map(str::to_string).collect();
                            }
                            "__position" | "__commit_ts" => {}
                            _ => {
                                let v = if col.is_null(row) {
                                    Value::Null
                                } else {
                                    let mut s = formatters[i].value(row).to_string();
                                    if zoned[i] {
                                        s.push('Z');
                                    }
                                    Value::String(s)
                                };
                                m.insert(name.to_string(), v);
                            }
                        }
                    }
                    for u in unchanged {
                        m.remove(&u);
                    }
                    let (before, after) = if op == "d" { (Some(m), None) } else { (None, Some(m)) };
                    evs.push(Event { table: table.clone(), op, before, after, raw: Value::Null });
                }
            }
        }
        res.insert(table, evs);
    }
    res
}

fn key_of(row: &Map<String, Value>, key: &[&str]) -> String {
    if key.is_empty() {
        return serde_json::to_string(row).unwrap();
    }
    key.iter().map(|k| row.get(*k).map(|v| v.to_string()).unwrap_or_default()).collect::<Vec<_>>().join("|")
}

/// Apply events to an empty table, strictly: an insert of an existing key, or
/// an update/delete of a missing one, is an error (duplicate or lost change).
/// `key` empty means rows are identified by their full content (no primary key).
pub fn replay(events: &[Event], key: &[&str]) -> Result<BTreeMap<String, Map<String, Value>>, String> {
    let mut rows: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut multi: BTreeMap<String, usize> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        match e.op.as_str() {
            "r" | "c" => {
                let a = e.after.clone().ok_or(format!("event {i}: {} without after", e.op))?;
                let k = key_of(&a, key);
                if key.is_empty() {
                    *multi.entry(k.clone()).or_default() += 1;
                    rows.insert(k, a);
                } else if rows.insert(k.clone(), a).is_some() {
                    return Err(format!("event {i}: duplicate insert of key {k} in {}", e.table));
                }
            }
            "u" => {
                let a = e.after.clone().ok_or(format!("event {i}: u without after"))?;
                let old_key = match &e.before {
                    Some(b) if key.is_empty() || key.iter().all(|k| b.contains_key(*k)) => key_of(b, key),
                    _ => key_of(&a, key),
                };
                let mut old = if key.is_empty() {
                    let n = multi.get_mut(&old_key).ok_or(format!("event {i}: update of missing row {old_key}"))?;
                    *n -= 1;
                    let r = rows.get(&old_key).cloned().unwrap();
                    if *n == 0 {
                        multi.remove(&old_key);
                        rows.remove(&old_key);
                    }
                    r
                } else {
                    rows.remove(&old_key).ok_or(format!("event {i}: update of missing key {old_key} in {}", e.table))?
                };
                for (k, v) in a {
                    old.insert(k, v);
                }
                let nk = key_of(&old, key);
                if key.is_empty() {
                    *multi.entry(nk.clone()).or_default() += 1;
                    rows.insert(nk, old);
                } else if rows.insert(nk.clone(), old).is_some() {
                    return Err(format!("event {i}: update onto existing key {nk}"));
                }
            }
            "d" => {
                let b = e.before.clone().ok_or(format!("event {i}: d without before"))?;
                let k = key_of(&b, key);
                if key.is_empty() {
                    let n = multi.get_mut(&k).ok_or(format!("event {i}: delete of missing row {k}"))?;
                    *n -= 1;
                    if *n == 0 {
                        multi.remove(&k);
                        rows.remove(&k);
                    }
                } else if rows.remove(&k).is_none() {
                    return Err(format!("event {i}: delete of missing key {k} in {}", e.table));
                }
            }
            "t" => {
                rows.clear();
                multi.clear();
            }
            other => return Err(format!("event {i}: unknown op {other}")),
        }
    }
    if key.is_empty() {
        // Expand multiset counts into distinct entries.
        let mut out = BTreeMap::new();
        for (k, n) in multi {
            for j in 0..n {
                out.insert(format!("{k}#{j}"), rows[&k].clone());
            }
        }
        return Ok(out);
    }
    Ok(rows)
}

/// Apply events the way a consumer that cannot merge does (a warehouse
/// loader, a Kafka consumer keeping a table): `r`/`c` insert the row as
/// sent; `u` first deletes the old key when the key changed, then updates the
/// row of its key with the values sent (columns left out keep theirs) or,
/// when there is none, inserts it as sent; `d` deletes by key. Strict: a
/// duplicate insert or an update/delete of a missing key is an error.
/// With `upserts` (a filter's output), a `c` replaces the row of its key and
/// a `d` of a key never sent is ignored.
pub fn replay_plain(
    events: &[Event],
    key: &[&str],
    upserts: bool,
) -> Result<BTreeMap<String, Map<String, Value>>, String> {
    let mut rows: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let what = format!("event {i} ({} of {})", e.op, e.table);
        match e.op.as_str() {
            "r" | "c" => {
                let a = e.after.clone().ok_or(format!("{what}: no after"))?;
                let k = key_of(&a, key);
                if rows.insert(k.clone(), a).is_some() && !upserts {
                    return Err(format!("{what}: duplicate insert of key {k}"));
                }
            }
            "u" => {
                let a = e.after.clone().ok_or(format!("{what}: no after"))?;
                let k = key_of(&a, key);
                let moved = e.before.as_ref().filter(|b| key.iter().all(|c| b.contains_key(*c)));
                match moved.map(|b| key_of(b, key)).filter(|old| *old != k) {
                    Some(old) => {
                        rows.remove(&old).ok_or(format!("{what}: key change of missing key {old}"))?;
                        if rows.insert(k.clone(), a).is_some() {
                            return Err(format!("{what}: key change onto existing key {k}"));
                        }
                    }
                    None => {
                        let row = rows.get_mut(&k).ok_or(format!("{what}: update of missing key {k}"))?;
                        row.extend(a);
                    }
                }
            }
            "d" => {
                let b = e.before.clone().ok_or(format!("{what}: no before"))?;
                let k = key_of(&b, key);
                // A filter's delete by key may name a row it never sent.
                if rows.remove(&k).is_none() && !upserts {
                    return Err(format!("{what}: delete of missing key {k}"));
                }
            }
            "t" => rows.clear(),
            other => return Err(format!("{what}: unknown op {other}")),
        }
    }
    Ok(rows)
}

/// Rows of a source query, each a JSON object (the query must return one json column).
pub async fn source_rows(c: &tokio_postgres::Client, sql: &str, key: &[&str]) -> BTreeMap<String, Map<String, Value>> {
    let wrapped = format!("SELECT j::text FROM ({sql}) AS q(j)");
    let rows = c.query(&wrapped, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    by_key(rows.iter().map(|r| (sql, r.get::<_, &str>(0))), key)
}

/// Assert that replayed output equals the source rows, with a readable diff.
pub fn assert_same(
    table: &str,
    got: &BTreeMap<String, Map<String, Value>>,
    want: &BTreeMap<String, Map<String, Value>>,
) {
    let mut problems = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => problems.push(format!("missing {k}: {}", Value::Object(w.clone()))),
            Some(g) if g != w => problems.push(format!(
                "differs {k}:\n   got  {}\n   want {}",
                Value::Object(g.clone()),
                Value::Object(w.clone())
            )),
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            problems.push(format!("extra {k}: {}", Value::Object(got[k].clone())));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(10);
        panic!(
            "{table}: output differs from the source in {n} rows (got {}, want {}):\n{}",
            got.len(),
            want.len(),
            problems.join("\n")
        );
    }
}

/// Poll `check` every `every` until it returns `Ok`; after `within`, fail
/// with `what` and the last state `check` reported (its `Err`).
pub async fn wait_until<T, F, Fut>(within: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => assert!(std::time::Instant::now() < deadline, "{what} within {within:?}: {state}"),
        }
        tokio::time::sleep(every).await;
    }
}
