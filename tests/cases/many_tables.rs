//! Thousands of tables in one pipeline (issue 15, item 5): the snapshot
//! reads them in transactions that fit the server's lock table, and the
//! files sink keeps bounded descriptors and memory while every table has
//! changes between checkpoints.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::harness::*;

const TABLES: usize = 2000;
/// Tables created after the first run (more than one publication statement's worth).
const ADDED: usize = 150;

/// Text of a JSON value (ids are numbers in JSONL, text in Parquet).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Per table `m.tN`: id → v, replayed from a files sink's output.
fn replayed(out: &BTreeMap<String, Vec<Event>>) -> BTreeMap<String, BTreeMap<String, String>> {
    out.iter()
        .map(|(table, events)| {
            let rows = replay(events, &["id"]).unwrap_or_else(|e| panic!("{table}: {e}"));
            (table.clone(), rows.values().map(|r| (text(&r["id"]), text(&r["v"]))).collect())
        })
        .filter(|(_, rows): &(String, BTreeMap<String, String>)| !rows.is_empty())
        .collect()
}

/// The same, read from the source (20 tables a query: the lock table is small).
async fn source(c: &tokio_postgres::Client) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut want: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let ids: Vec<usize> = (1..=TABLES + ADDED).collect();
    for chunk in ids.chunks(20) {
        let sql = chunk
            .iter()
            .map(|i| format!("SELECT 'm.t{i}', id::text, v FROM m.t{i}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for r in c.query(&sql, &[]).await.unwrap() {
            want.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
        }
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tables_in_one_pipeline() {
    // Room for ~1,300 locks in the whole server: reading 2,000 tables in
    // one snapshot transaction per worker would run out ("out of shared
    // memory ... increase max_locks_per_transaction").
    let env = Env::with_settings("many", &[("max_locks_per_transaction", "10"), ("max_connections", "20")]);
    let c = env.client().await;
    c.batch_execute("CREATE SCHEMA m").await.unwrap();
    // 0 to 3 rows per table; committed every 20 tables (the lock table is small).
    c.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{TABLES} LOOP
           EXECUTE format('CREATE TABLE m.t%s (id int PRIMARY KEY, v text, n numeric)', i);
           EXECUTE format('INSERT INTO m.t%s SELECT g, ''t%s-'' || g, g * 0.5 FROM generate_series(1, %s) g', i, i, i % 4);
           IF i % 20 = 0 THEN COMMIT; END IF;
         END LOOP; END $$"
    ))
    .await
    .unwrap();
    let formats = ["jsonl", "parquet"];
    let pipelines: Vec<_> = formats
        .iter()
        .map(|f| env.pipeline(&format!("many_{f}"), &["m.*"], &env.files_sink(&format!("many_{f}"), f), ""))
        .collect();
    for p in &pipelines {
        catch_up(p).await;
    }
    // More tables, picked up by the include glob: added to the publication
    // in several statements and copied through a temporary slot. Both
    // publications are also left as a run stopped half-way through changing
    // them would: 50 of the new tables already in, with a row filter the
    // pipeline does not have, and the comment saying the change is under
    // way. The next run must put those 50 in again, without the filter.
    c.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN {} .. {} LOOP
           EXECUTE format('CREATE TABLE m.t%s (id int PRIMARY KEY, v text, n numeric)', i);
           EXECUTE format('INSERT INTO m.t%s SELECT g, ''t%s-'' || g, g FROM generate_series(1, 2) g', i, i);
           IF i % 20 = 0 THEN COMMIT; END IF;
         END LOOP; END $$",
        TABLES + 1,
        TABLES + ADDED
    ))
    .await
    .unwrap();
    for f in formats {
        let publication = format!("sluice_many_{f}");
        let comment: String = c
            .query_one(
                "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .unwrap()
            .get(0);
        let filtered =
            (TABLES + 1..=TABLES + 50).map(|i| format!("m.t{i} WHERE (id < 0)")).collect::<Vec<_>>().join(", ");
        c.batch_execute(&format!(
            "ALTER PUBLICATION {publication} ADD TABLE {filtered}; COMMENT ON PUBLICATION {publication} IS '{comment} (being changed)'"
        ))
        .await
        .unwrap();
    }
    // Every table changes between two checkpoints: an insert in each, an
    // update and a delete where rows exist, 20 tables a transaction.
    let changes = |rounds: std::ops::RangeInclusive<usize>| {
        format!(
            "DO $$ BEGIN FOR r IN {}..{} LOOP FOR i IN 1..{} LOOP
               EXECUTE format('INSERT INTO m.t%s VALUES (%s, ''new'', 1)', i, 100 + r);
               EXECUTE format('UPDATE m.t%s SET v = v || ''+'' WHERE id = 1', i);
               EXECUTE format('DELETE FROM m.t%s WHERE id = 2', i);
               IF i % 20 = 0 THEN COMMIT; END IF;
             END LOOP; END LOOP; END $$",
            rounds.start(),
            rounds.end(),
            TABLES + ADDED
        )
    };
    c.batch_execute(&changes(1..=3)).await.unwrap();
    for p in &pipelines {
        catch_up(p).await;
    }
    // Changes after the publications were completed (a filter left behind
    // would drop those of the 50 tables).
    c.batch_execute(&changes(4..=4)).await.unwrap();
    for p in &pipelines {
        catch_up(p).await;
    }
    for f in formats {
        let (n, comment): (i64, String) = {
            let r = c
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_publication_tables WHERE pubname = p.pubname), obj_description(p.oid, 'pg_publication')
                     FROM pg_publication p WHERE pubname = $1",
                    &[&format!("sluice_many_{f}")],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(n as usize, TABLES + ADDED, "{f}: tables in the publication");
        assert!(!comment.ends_with("(being changed)"), "{f}: {comment}");
    }
    let want = source(&c).await;
    assert_eq!(want.len(), TABLES + ADDED, "every table has rows after the changes");
    for f in formats {
        let out = env.out(&format!("many_{f}"));
        let got = replayed(&if f == "jsonl" { read_jsonl(&out) } else { read_parquet(&out) });
        assert_eq!(got.len(), TABLES + ADDED, "{f}: tables in the output");
        for (table, rows) in &want {
            assert_eq!(got.get(table), Some(rows), "{f}: {table}");
        }
    }
}

/// The MySQL source reads the catalog of a database with many included
/// tables in two queries: every table's columns come out in order, with
/// their types (MariaDB's JSON, recognised by its CHECK, stays JSON;
/// BIT keeps its width), through the snapshot and the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_many_tables_catalog_read_at_once() {
    let env = MyEnv::new("mymany");
    let n = 40;
    let mut ddl = String::from("CREATE DATABASE m; USE m;");
    for i in 1..=n {
        // Column order differs between tables, so a mix-up shows.
        let cols = if i % 2 == 0 { "v TEXT, j JSON, b BIT(3)" } else { "b BIT(3), j JSON, v TEXT" };
        ddl.push_str(&format!(
            "CREATE TABLE t{i} (id INT PRIMARY KEY, {cols}); \
             INSERT INTO t{i} (id, v, j, b) VALUES (1, 't{i}', '{{\"k\": {i}}}', b'101');"
        ));
    }
    env.sql(&ddl);
    let p = env.pipeline("mymany", &["m.*"], &env.files_sink("mymany", "jsonl"), "");
    catch_up(&p).await;
    let mut more = String::from("USE m;");
    for i in 1..=n {
        more.push_str(&format!("INSERT INTO t{i} (id, v, j, b) VALUES (2, 'x{i}', '[{i}]', b'11');"));
    }
    env.sql(&more);
    catch_up(&p).await;
    let out = read_jsonl(&env.out("mymany"));
    assert_eq!(out.len(), n, "tables in the output");
    for i in 1..=n {
        let events = &out[&format!("m.t{i}")];
        let rows = replay(events, &["id"]).unwrap_or_else(|e| panic!("m.t{i}: {e}"));
        let got: Vec<(Value, Value, Value)> =
            rows.values().map(|r| (r["v"].clone(), r["j"].clone(), r["b"].clone())).collect();
        assert_eq!(got.len(), 2, "m.t{i}: {rows:?}");
        assert_eq!(got[0].0, Value::from(format!("t{i}")), "m.t{i}");
        assert_eq!(got[0].1, serde_json::json!({ "k": i }), "m.t{i}: JSON stays JSON");
        assert_eq!(got[1].1, serde_json::json!([i]), "m.t{i}");
        assert_eq!(got[1].0, Value::from(format!("x{i}")), "m.t{i}");
        assert_eq!((got[0].2.clone(), got[1].2.clone()), (Value::from("101"), Value::from("011")), "m.t{i}: BIT(3)");
    }
}
