//! Key changes of rows whose large values are TOASTed and unchanged, into
//! every output a consumer cannot merge: Kafka (JSON and Avro), JSONL,
//! Parquet and Arrow, with SIGKILLs in between. Each output is replayed by a
//! plain consumer (a fresh row is taken as sent, a key change is a delete of
//! the old key plus the new row, an update changes only what it carries) and
//! must equal the source, unchanged TOASTed values included. The Parquet
//! files are also loaded with the documented DuckDB `MERGE` recipe.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::harness::kafka::{avro_to_json, read_topics, KMsg, RegistryStandIn, Tansu};
use crate::harness::*;

/// `big` is stored out of line uncompressed, `doc` out of line compressed.
const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, qty integer NOT NULL, big text, doc jsonb);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
INSERT INTO items
SELECT g, 0, repeat(md5(g::text), 100),
       (SELECT jsonb_build_object('g', g, 'pad', string_agg(md5((g * 1000 + i)::text), '')) FROM generate_series(1, 300) i)
FROM generate_series(1, 600) g;
";

const SOURCE: &str = "SELECT json_build_object('id', id, 'qty', qty, 'big', big, 'doc', doc) FROM items";

/// Transactions of key changes that leave `big` and `doc` unchanged (also
/// twice in a row, and of rows deleted right after), updates with and
/// without the large values, deletes, inserts, and now and then 150 key
/// changes in one transaction.
async fn workload(url: String, seed: u64, rounds: usize) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next: i64 = 10_000_000 + (seed % 1000) as i64 * 100_000;
    for round in 0..rounds {
        c.batch_execute(&format!("SELECT setseed({})", (round as f64) / (rounds as f64 + 1.0))).await.unwrap();
        let ids: Vec<i64> = c
            .query("SELECT id FROM items ORDER BY random() LIMIT 10", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sql = String::from("BEGIN;");
        for id in ids {
            match rng.gen_range(0..10) {
                0..=4 => {
                    sql.push_str(&format!("UPDATE items SET id = {next}, qty = qty + 1 WHERE id = {id};"));
                    next += 1;
                }
                5 => {
                    sql.push_str(&format!(
                        "UPDATE items SET id = {next}, qty = qty + 1 WHERE id = {id};\
                         UPDATE items SET id = {}, qty = qty + 1 WHERE id = {next};",
                        next + 1
                    ));
                    next += 2;
                }
                6 => {
                    sql.push_str(&format!(
                        "UPDATE items SET id = {next} WHERE id = {id}; DELETE FROM items WHERE id = {next};"
                    ));
                    next += 1;
                }
                7 => sql.push_str(&format!("UPDATE items SET qty = qty + 1 WHERE id = {id};")),
                8 => sql.push_str(&format!(
                    "UPDATE items SET big = repeat(md5(random()::text), 100), qty = qty + 1 WHERE id = {id};"
                )),
                _ => sql.push_str(&format!("DELETE FROM items WHERE id = {id};")),
            }
        }
        if rng.gen_bool(0.3) {
            sql.push_str(&format!(
                "INSERT INTO items VALUES ({next}, 1, repeat(md5(random()::text), 100), \
                 (SELECT jsonb_build_object('n', {next}, 'pad', string_agg(md5(random()::text), '')) FROM generate_series(1, 300)));"
            ));
            next += 1;
        }
        if round % 15 == 7 {
            sql.push_str(
                "UPDATE items SET id = id + 1000000000, qty = qty + 1 \
                 WHERE id IN (SELECT id FROM items WHERE id < 1000000000 ORDER BY id LIMIT 150);",
            );
        }
        sql.push_str(if rng.gen_bool(0.1) { "ROLLBACK;" } else { "COMMIT;" });
        c.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
    }
}

/// Rows keyed by id, each `{id, qty, big, doc}` with numbers as numbers and
/// `doc` as JSON, whatever encoding the output used.
fn canon(rows: &BTreeMap<String, Map<String, Value>>) -> BTreeMap<String, Map<String, Value>> {
    let num = |v: &Value| match v {
        Value::String(s) => Value::from(s.parse::<i64>().unwrap_or_else(|_| panic!("not a number: {s}"))),
        v => v.clone(),
    };
    rows.values()
        .map(|r| {
            let mut m = Map::new();
            for (k, v) in r {
                let v = match k.as_str() {
                    "id" | "qty" => num(v),
                    "doc" => match v {
                        Value::String(s) => serde_json::from_str(s).unwrap(),
                        v => v.clone(),
                    },
                    _ => v.clone(),
                };
                m.insert(k.clone(), v);
            }
            (m["id"].to_string(), m)
        })
        .collect()
}

/// Like `assert_same`, but shows only the columns that differ (the values are large).
fn assert_rows(label: &str, got: &BTreeMap<String, Map<String, Value>>, want: &BTreeMap<String, Map<String, Value>>) {
    let mut problems = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => problems.push(format!("missing id {k}")),
            Some(g) => {
                for col in ["qty", "big", "doc"] {
                    if g.get(col) != w.get(col) {
                        let short = |v: Option<&Value>| v.map(|v| v.to_string().chars().take(40).collect::<String>());
                        problems.push(format!(
                            "id {k} {col}: got {:?} want {:?}",
                            short(g.get(col)),
                            short(w.get(col))
                        ));
                    }
                }
            }
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("extra id {k}"));
    }
    assert!(
        problems.is_empty(),
        "{label}: {} of {} rows wrong:\n{}",
        problems.len(),
        want.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn replayed(label: &str, events: &[Event]) -> BTreeMap<String, Map<String, Value>> {
    canon(&replay_plain(events, &["id"], false).unwrap_or_else(|e| panic!("{label}: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_with_unchanged_toast_replay_from_every_output() {
    let env = Env::new("keychg");
    let kafka = Tansu::start();
    let reg = RegistryStandIn::start().await;
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let external: i64 = c
        .query_one("SELECT count(*) FROM items WHERE pg_column_size(big) > 2100 AND pg_column_size(doc) > 2100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(external, 600, "both large columns must be stored out of line");

    let roll = "  roll:\n    rows: 300\n    seconds: 1\n";
    let kafka_sink = |prefix: &str, extra: &str| {
        format!(
            "  type: kafka\n  brokers: {}\n  topic: \"{prefix}.{{schema}}.{{table}}\"\n  partitions: 1\n{extra}",
            kafka.brokers()
        )
    };
    let pipelines = [
        env.pipeline("kj", &["public.items"], &kafka_sink("kj", ""), ""),
        env.pipeline(
            "ka",
            &["public.items"],
            &kafka_sink("ka", &format!("  format: avro\n  schema_registry: {}\n", reg.url)),
            "",
        ),
        env.pipeline("fj", &["public.items"], &format!("{}{roll}", env.files_sink("fj", "jsonl")), ""),
        env.pipeline("fp", &["public.items"], &format!("{}{roll}", env.files_sink("fp", "parquet")), ""),
        env.pipeline("fa", &["public.items"], &format!("{}{roll}", env.files_sink("fa", "arrow")), ""),
    ];

    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("key change seed {seed} (set SLUICE_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(workload(env.url(), seed, 90));
    let mut kills = 0;
    while !work.is_finished() || kills < 4 {
        let mut running: Vec<_> = pipelines.iter().map(|p| spawn_run(p)).collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(400..2500))).await;
        for r in &mut running {
            r.start_kill().unwrap();
        }
        for mut r in running {
            let _ = r.wait().await;
        }
        kills += 1;
        if kills > 25 {
            break;
        }
    }
    work.await.unwrap();
    eprintln!("killed the pipelines {kills} times");
    for p in &pipelines {
        catch_up(p).await;
    }
    let want = canon(&source_rows(&c, SOURCE, &["id"]).await);

    // JSONL: key changes stay `u` events with the old key in `before`.
    let out = read_jsonl(&env.out("fj"));
    let events = &out["public.items"];
    let key_changes = events
        .iter()
        .filter(|e| {
            e.op == "u" && e.before.as_ref().is_some_and(|b| Some(&b["id"]) != e.after.as_ref().map(|a| &a["id"]))
        })
        .count();
    assert!(key_changes > 500, "the workload made only {key_changes} key changes");
    assert_rows("jsonl", &replayed("jsonl", events), &want);

    for (label, name) in [("parquet", "fp"), ("arrow", "fa")] {
        let out = if label == "parquet" { read_parquet(&env.out(name)) } else { read_arrow(&env.out(name)) };
        assert_rows(label, &replayed(label, &out["public.items"]), &want);
    }

    let msgs = read_topics(&kafka.brokers(), "kj.");
    let out = super::kafka::decode(&msgs, None);
    assert_rows("kafka json", &replayed("kafka json", &out["public.items"]), &want);
    let msgs: Vec<KMsg> = read_topics(&kafka.brokers(), "ka.");
    // Avro has no "left out": an unsent value is null, named in `sluice.unchanged`.
    let out = super::kafka::decode_with(&msgs, None, &|m: &KMsg| {
        let mut v = avro_to_json(&reg, m.raw.as_ref().unwrap());
        let unsent = m.headers.get("sluice.unchanged").cloned().unwrap_or_default();
        if let Some(after) = v["after"].as_object_mut() {
            for c in unsent.split(',').filter(|c| !c.is_empty()) {
                after.remove(c);
            }
        }
        v
    });
    assert_rows("kafka avro", &replayed("kafka avro", &out["public.items"]), &want);

    // The warehouse recipe, in two batches of files.
    assert_rows("duckdb merge", &duckdb_merge(&env.out("fp").join("public.items")), &want);
}

/// Load the Parquet files of `dir` into a DuckDB table with
/// `recipes/duckdb-merge.sql`, the first half of the files, then the rest.
fn duckdb_merge(dir: &Path) -> BTreeMap<String, Map<String, Value>> {
    let files: Vec<String> = completed_files(dir, "parquet").iter().map(|p| p.display().to_string()).collect();
    assert!(files.len() >= 2, "expected several files, got {files:?}");
    let (a, b) = files.split_at(files.len() / 2);
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/duckdb-merge.sql");
    let script = format!(
        r#"
import duckdb, json
con = duckdb.connect()
con.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, qty INTEGER, big VARCHAR, doc VARCHAR)")
recipe = open({recipe:?}).read()
for batch in [{a:?}, {b:?}]:
    con.execute("SET VARIABLE files = " + repr(batch))
    con.execute(recipe)
for id, qty, big, doc in con.execute("SELECT id, qty, big, doc FROM items ORDER BY id").fetchall():
    print(json.dumps({{"id": id, "qty": qty, "big": big, "doc": json.loads(doc) if doc is not None else None}}))
"#,
        recipe = recipe.display().to_string(),
    );
    let out = duckdb::run_python(&script);
    let rows: BTreeMap<String, Map<String, Value>> = out
        .lines()
        .map(|l| {
            let m: Map<String, Value> = serde_json::from_str(l).unwrap();
            (m["id"].to_string(), m)
        })
        .collect();
    canon(&rows)
}

/// A filter on a non-key column under REPLICA IDENTITY DEFAULT sends updates
/// as upserts (`c`): those fresh rows carry the unchanged TOASTed values too,
/// read from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_upserts_carry_unchanged_toast() {
    let env = Env::new("keychgfilter");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let transforms = "transforms:\n  - filter:\n      tables: [\"public.items\"]\n      where: \"qty % 3 <> 1\"\n";
    let p = env.pipeline("ff", &["public.items"], &env.files_sink("ff", "jsonl"), transforms);
    catch_up(&p).await;
    // Rows move in and out of the filter, change keys, and come back.
    for r in 0..6 {
        c.batch_execute(&format!(
            "UPDATE items SET qty = qty + 1 WHERE id % 5 = {m};
             UPDATE items SET id = id + 100000, qty = qty + 1 WHERE id % 7 = {m} AND id < 100000;
             UPDATE items SET qty = qty + 2 WHERE id % 11 = {m};",
            m = r % 5
        ))
        .await
        .unwrap();
    }
    catch_up(&p).await;
    let out = read_jsonl(&env.out("ff"));
    let events = &out["public.items"];
    assert!(events.iter().filter(|e| e.op == "c").count() > 100, "the filter sent few upserts");
    let got = canon(&replay_plain(events, &["id"], true).unwrap());
    let want = canon(&source_rows(&c, &format!("{SOURCE} WHERE qty % 3 <> 1"), &["id"]).await);
    assert_rows("filtered jsonl", &got, &want);
}

/// The DuckDB recipe over a TRUNCATE inside a batch, a column added
/// mid-stream (a new file with another schema in the same batch), and key
/// changes back and forth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_recipe_over_truncate_and_schema_change() {
    let env = Env::new("keychgduck");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let p = env.pipeline("fd", &["public.items"], &env.files_sink("fd", "parquet"), "");
    catch_up(&p).await;
    c.batch_execute(
        "UPDATE items SET id = id + 5000, qty = qty + 1 WHERE id <= 100;
         UPDATE items SET qty = qty + 1 WHERE id > 5000;
         TRUNCATE items;
         INSERT INTO items SELECT g, g, repeat(md5(g::text), 100), '{\"a\": 1}' FROM generate_series(1, 50) g;
         UPDATE items SET id = id + 100, qty = qty + 1 WHERE id <= 10;
         UPDATE items SET id = id - 100 WHERE id BETWEEN 101 AND 105;
         ALTER TABLE items ADD COLUMN extra int;
         UPDATE items SET qty = qty + 1, extra = 7 WHERE id % 2 = 0;
         DELETE FROM items WHERE id % 5 = 0;",
    )
    .await
    .unwrap();
    catch_up(&p).await;
    let want = canon(&source_rows(&c, SOURCE, &["id"]).await);
    assert!(want.len() > 30);
    assert_rows("duckdb merge", &duckdb_merge(&env.out("fd").join("public.items")), &want);
}

/// Key changes of a table whose key has text with quotes and backslashes,
/// timestamptz, uuid, numeric, bytea, date, an enum and a domain: the rows
/// are read back by those keys (literals Postgres must turn into each type)
/// and matched to the events by value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_over_every_kind_of_key_column() {
    let env = Env::new("keychgtypes");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN pos AS numeric(10,2) CHECK (VALUE > 0);
         CREATE TABLE kt (k1 text, k2 timestamptz, k3 uuid, k4 numeric, k5 bytea, k6 date, k7 mood, k8 pos,
                          v int NOT NULL, big text, PRIMARY KEY (k1, k2, k3, k4, k5, k6, k7, k8));
         ALTER TABLE kt ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO kt SELECT 'it''s \\ ' || g, '2024-02-29 12:34:56.789012+00'::timestamptz + g * interval '1 hour',
                md5(g::text)::uuid, g / 7.0, decode(md5(g::text), 'hex'), date '2000-01-01' + g,
                (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood, g + 0.5, g, repeat(md5(g::text), 100)
         FROM generate_series(1, 300) g;",
    )
    .await
    .unwrap();
    let p = env.pipeline("kt", &["public.kt"], &env.files_sink("kt", "jsonl"), "");
    catch_up(&p).await;
    for (i, set) in [
        "k1 = k1 || '''\\x'",
        "k2 = k2 + interval '1 microsecond'",
        "k3 = md5(k3::text)::uuid",
        "k4 = k4 * 3",
        "k5 = k5 || '\\x00ff'::bytea",
        "k6 = k6 + 1, k7 = 'happy'",
        "k8 = k8 + 0.25",
    ]
    .iter()
    .enumerate()
    {
        c.batch_execute(&format!("UPDATE kt SET {set}, v = v + 1000 WHERE v % 7 = {i}")).await.unwrap();
    }
    catch_up(&p).await;
    let out = read_jsonl(&env.out("kt"));
    let key = ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"];
    let got: BTreeMap<i64, Value> = replay_plain(&out["public.kt"], &key, false)
        .unwrap()
        .values()
        .map(|r| (r["v"].as_i64().unwrap(), r.get("big").cloned().unwrap_or(Value::Null)))
        .collect();
    let rows = c.query("SELECT v, big FROM kt", &[]).await.unwrap();
    let want: BTreeMap<i64, Value> =
        rows.iter().map(|r| (r.get::<_, i32>(0) as i64, Value::from(r.get::<_, String>(1)))).collect();
    assert_eq!(got.len(), 300);
    let wrong: Vec<_> = want.iter().filter(|(v, b)| got.get(v) != Some(b)).map(|(v, _)| v).collect();
    assert!(wrong.is_empty(), "rows without their unchanged value after a key change: {wrong:?}");
    assert!(got.keys().all(|v| *v > 1000), "every row changed its key");
}

/// The column to read back is dropped before Sluice gets to the key change:
/// the read fails, the run goes on (the value is gone at the source too),
/// says so once, and leaves the values unsent rather than inventing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_read_after_the_column_was_dropped() {
    let env = Env::new("keychgdrop");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let p = env.pipeline("kd", &["public.items"], &env.files_sink("kd", "jsonl"), "");
    catch_up(&p).await;
    c.batch_execute("UPDATE items SET id = id + 100000 WHERE id <= 10; ALTER TABLE items DROP COLUMN big;")
        .await
        .unwrap();
    let run = catch_up(&p).await;
    assert!(run.stderr.contains("cannot read current rows to complete key changes"), "{}", run.stderr);
    let out = read_jsonl(&env.out("kd"));
    let moved: Vec<&Event> = out["public.items"].iter().filter(|e| e.op == "u").collect();
    assert_eq!(moved.len(), 10);
    for e in moved {
        let a = e.after.as_ref().unwrap();
        // The whole read failed: neither value is made up (doc could have been read; see the note in rows.rs).
        assert!(!a.contains_key("big") && !a.contains_key("doc") && a["qty"] == 0, "{a:?}");
    }
}

/// REPLICA IDENTITY USING INDEX on a unique column that is not the primary
/// key: the identity columns are the key, read back by them, into Parquet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_under_replica_identity_index() {
    let env = Env::new("keychgidx");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE ri (id bigint PRIMARY KEY, code text NOT NULL, v int NOT NULL, big text);
         CREATE UNIQUE INDEX ri_code ON ri (code);
         ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code;
         ALTER TABLE ri ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO ri SELECT g, 'c' || g, g, repeat(md5(g::text), 100) FROM generate_series(1, 200) g;",
    )
    .await
    .unwrap();
    let p = env.pipeline("ri", &["public.ri"], &env.files_sink("ri", "parquet"), "");
    catch_up(&p).await;
    c.batch_execute(
        "UPDATE ri SET code = code || 'x', v = v + 1000 WHERE id % 2 = 0; DELETE FROM ri WHERE id % 9 = 0;",
    )
    .await
    .unwrap();
    catch_up(&p).await;
    let out = read_parquet(&env.out("ri"));
    let got = replay_plain(&out["public.ri"], &["code"], false).unwrap();
    let got: BTreeMap<String, Value> = got
        .values()
        .map(|r| (r["code"].as_str().unwrap().to_string(), r.get("big").cloned().unwrap_or(Value::Null)))
        .collect();
    let rows = c.query("SELECT code, big FROM ri", &[]).await.unwrap();
    let want: BTreeMap<String, Value> =
        rows.iter().map(|r| (r.get::<_, String>(0), Value::from(r.get::<_, String>(1)))).collect();
    assert!(got.keys().filter(|k| k.ends_with('x')).count() > 80, "few key changes");
    assert_eq!(got, want);
}
