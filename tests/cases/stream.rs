//! Stream semantics: TOAST, key changes, rollbacks, TRUNCATE, tables without
//! a primary key, quoted names, schema changes — replayed and compared with
//! the source.

use serde_json::Value;

use crate::harness::*;

const SETUP: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, note text);
CREATE TABLE docs (id int PRIMARY KEY, big text, small int);
ALTER TABLE docs ALTER big SET STORAGE EXTERNAL;
CREATE TABLE docs_full (id int PRIMARY KEY, big text, small int);
ALTER TABLE docs_full ALTER big SET STORAGE EXTERNAL;
ALTER TABLE docs_full REPLICA IDENTITY FULL;
CREATE TABLE trunc_me (id int PRIMARY KEY, v text);
CREATE TABLE nopk (a int, b text);
ALTER TABLE nopk REPLICA IDENTITY FULL;
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Odd Table" ("Id" int PRIMARY KEY, "select" text, "Mixed Case" int);
INSERT INTO items SELECT g, 'item ' || g, 'note ' || g FROM generate_series(1, 50) g;
INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 200) x), g FROM generate_series(1, 3) g;
INSERT INTO docs_full SELECT * FROM docs;
INSERT INTO trunc_me SELECT g, 'v' FROM generate_series(1, 10) g;
INSERT INTO nopk VALUES (1, 'dup'), (1, 'dup'), (2, 'two');
INSERT INTO "My Schema"."Odd Table" VALUES (1, 'from', 10);
"#;

const CHANGES: &str = r#"
UPDATE docs SET small = small + 100 WHERE id = 1;
UPDATE docs_full SET small = small + 100 WHERE id = 1;
UPDATE docs SET big = 'short now' WHERE id = 2;
UPDATE items SET id = 1000 WHERE id = 1;
UPDATE items SET name = 'renamed' WHERE id = 2;
DELETE FROM items WHERE id = 3;
BEGIN; INSERT INTO items VALUES (999, 'rolled back', NULL); UPDATE items SET name = 'rolled back' WHERE id = 4; ROLLBACK;
BEGIN; INSERT INTO items VALUES (500, 'sub', NULL); SAVEPOINT s; INSERT INTO items VALUES (501, 'sub rolled back', NULL); ROLLBACK TO s; COMMIT;
TRUNCATE trunc_me;
INSERT INTO trunc_me VALUES (42, 'after truncate');
UPDATE nopk SET b = 'changed' WHERE ctid = (SELECT ctid FROM nopk WHERE a = 1 LIMIT 1);
DELETE FROM nopk WHERE a = 2;
INSERT INTO nopk VALUES (3, NULL);
UPDATE "My Schema"."Odd Table" SET "select" = 'where', "Mixed Case" = NULL WHERE "Id" = 1;
INSERT INTO "My Schema"."Odd Table" VALUES (2, 'quote''s "here"', 20);
ALTER TABLE items ADD COLUMN extra text;
INSERT INTO items VALUES (2000, 'with extra', NULL, 'extra!');
UPDATE items SET extra = 'set later' WHERE id = 5;
ALTER TABLE items DROP COLUMN note;
INSERT INTO items VALUES (2001, 'after drop', 'x');
UPDATE items SET name = 'after drop too' WHERE id = 6;
"#;

fn table_sql(t: &str) -> String {
    format!("SELECT to_json(x) FROM {t} x")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_semantics_replay_to_source() {
    let env = Env::new("stream");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let p = env.pipeline(
        "stream",
        &["public.*", "My Schema.*"],
        &env.files_sink("stream", "jsonl"),
        "snapshot:\n  parallelism: 2\n",
    );
    catch_up(&p).await;
    // One line, one transaction (a multi-statement query would be one transaction).
    for line in CHANGES.lines().filter(|l| !l.trim().is_empty()) {
        c.batch_execute(line).await.unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    catch_up(&p).await;
    let out = read_jsonl(&env.out("stream"));

    // Unchanged TOAST: left out of `after` (never null) with replica identity DEFAULT...
    let docs = &out["public.docs"];
    let u1 = docs.iter().find(|e| e.op == "u" && e.after.as_ref().unwrap()["id"] == 1).expect("docs update");
    let a = u1.after.as_ref().unwrap();
    assert!(!a.contains_key("big"), "unchanged TOAST column must be left out: {a:?}");
    assert_eq!(a["small"], 101);
    // ...and present with FULL, where the old row carries it.
    let full = &out["public.docs_full"];
    let u = full.iter().find(|e| e.op == "u").unwrap();
    assert_eq!(u.after.as_ref().unwrap()["big"].as_str().unwrap().len(), 6400);
    assert_eq!(u.before.as_ref().unwrap()["small"], 1);

    // Primary key change: before has the old key.
    let items = &out["public.items"];
    let pk = items.iter().find(|e| e.op == "u" && e.after.as_ref().unwrap()["id"] == 1000).unwrap();
    assert_eq!(pk.before.as_ref().unwrap()["id"], 1);
    // Rolled back work never appears.
    for e in items {
        let s = e.raw.to_string();
        assert!(!s.contains("rolled back"), "rolled back change delivered: {s}");
    }
    // TRUNCATE is an event.
    assert!(out["public.trunc_me"].iter().any(|e| e.op == "t"));
    // Mid-stream schema change shows up in the events.
    assert!(items.iter().any(|e| e
        .after
        .as_ref()
        .map(|a| a.get("extra") == Some(&Value::from("extra!")))
        .unwrap_or(false)));

    // Replay each table and compare with the source.
    let keyed: [(&str, &str, &[&str]); 6] = [
        ("public.items", "items", &["id"]),
        ("public.docs", "docs", &["id"]),
        ("public.docs_full", "docs_full", &["id"]),
        ("public.trunc_me", "trunc_me", &["id"]),
        ("public.nopk", "nopk", &[]),
        ("My Schema.Odd Table", "\"My Schema\".\"Odd Table\"", &["Id"]),
    ];
    for (dir, sql_name, key) in keyed {
        let mut got = replay(&out[dir], key).unwrap_or_else(|e| panic!("{dir}: {e}"));
        if dir == "public.items" {
            // A consumer applies ADD COLUMN (null for old rows) and DROP COLUMN.
            for row in got.values_mut() {
                row.entry("extra").or_insert(Value::Null);
                row.remove("note");
            }
        }
        let want = source_rows(&c, &table_sql(sql_name), key).await;
        assert_same(dir, &got, &want);
    }
}

/// A partitioned table is replicated as one table: its partitions' changes,
/// including rows moving between partitions, arrive under the root's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_as_one() {
    let env = Env::new("partitioned");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
         INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let p = env.pipeline("part", &["public.*"], &env.files_sink("part", "jsonl"), "");
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.stdout);
    catch_up(&p).await;
    c.batch_execute(
        "INSERT INTO m VALUES (1000, 'eu', 1); UPDATE m SET v = -v WHERE id <= 10;
         UPDATE m SET region = 'us' WHERE id = 2; DELETE FROM m WHERE id = 3;",
    )
    .await
    .unwrap();
    catch_up(&p).await;
    let out = read_jsonl(&env.out("part"));
    assert_eq!(out.keys().collect::<Vec<_>>(), ["public.m"], "partitions must not appear on their own");
    let got = replay(&out["public.m"], &["id", "region"]).unwrap();
    let want = source_rows(&c, "SELECT to_json(x) FROM m x", &["id", "region"]).await;
    assert_same("m", &got, &want);
}
