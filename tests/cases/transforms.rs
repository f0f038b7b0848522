//! The transform stage end to end: filters (rows moving in and out by
//! UPDATE, key changes, TOASTed values), column subsets, masks, renames and
//! op skipping, on both sources, into the files sink and replica databases.
//! The replayed output must equal the source query the pipeline stands for;
//! pushed-down and in-process filtering must give the same output.

use std::time::Duration;

use rand::SeedableRng;

use crate::harness::*;

/// Postgres source tables: `orders` has REPLICA IDENTITY FULL (exact filter
/// semantics), `customers` the default identity, `events` is append-only
/// downstream, `audit_log` is excluded.
const PG_SETUP: &str = "CREATE SCHEMA shop; \
    CREATE TABLE shop.orders (id int PRIMARY KEY, status text NOT NULL, amount numeric(10,2) NOT NULL, note text); \
    ALTER TABLE shop.orders REPLICA IDENTITY FULL; \
    CREATE TABLE shop.customers (id int PRIMARY KEY, name text, email text, phone text, ssn text, internal_notes text); \
    CREATE TABLE shop.events (id bigserial PRIMARY KEY, kind text, payload text); \
    CREATE TABLE shop.audit_log (id int PRIMARY KEY, x text); \
    CREATE TABLE public.deleted_events (id bigint, kind text, payload text); \
    INSERT INTO shop.orders SELECT g, CASE WHEN g % 4 = 0 THEN 'test' ELSE 'paid' END, (g % 250)::numeric + 0.5, \
      CASE WHEN g % 9 = 0 THEN (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 120) i) END \
      FROM generate_series(1, 2000) g; \
    INSERT INTO shop.customers SELECT g, 'name ' || g, CASE WHEN g % 10 <> 0 THEN 'c' || g || '@example.com' END, \
      '+1-555-' || lpad(g::text, 4, '0'), 'ssn-' || g, 'secret ' || g FROM generate_series(1, 500) g; \
    INSERT INTO shop.events (kind, payload) SELECT 'k' || (g % 3), 'p' || g FROM generate_series(1, 300) g; \
    INSERT INTO shop.audit_log SELECT g, 'a' FROM generate_series(1, 10) g;";

/// The same pipeline's transforms for every test here.
const TRANSFORMS: &str = r#"transforms:
  - filter:
      tables: ["shop.orders"]
      where: "status <> 'test' AND amount >= 100"
  - columns:
      tables: ["shop.customers"]
      include: ["id", "name", "email", "phone"]
  - mask:
      tables: ["shop.customers"]
      columns: ["email"]
      with: sha256
      salt: ${SLUICE_TEST_MASK_SALT:-pepper}
  - mask:
      tables: ["shop.customers"]
      columns: ["phone"]
      with: keep_last(4)
  - rename:
      tables: ["shop.*"]
      to: "analytics.{table}"
  - rename:
      tables: ["shop.orders"]
      columns: {amount: total}
  - ops:
      tables: ["shop.events"]
      skip: [delete]
"#;

/// What each output table stands for, as Postgres queries on the source.
const PG_EXPECTED: &[(&str, &str, &[&str])] = &[
    (
        "analytics.orders",
        "SELECT json_build_object('id', id, 'status', status, 'total', amount::text, 'note', note) FROM shop.orders \
         WHERE status <> 'test' AND amount >= 100",
        &["id"],
    ),
    (
        "analytics.customers",
        "SELECT json_build_object('id', id, 'name', name, 'email', encode(sha256((email || 'pepper')::bytea), 'hex'), \
         'phone', repeat('*', greatest(length(phone) - 4, 0)) || right(phone, 4)) FROM shop.customers",
        &["id"],
    ),
    (
        "analytics.events",
        "SELECT json_build_object('id', id, 'kind', kind, 'payload', payload) FROM \
         (SELECT * FROM shop.events UNION ALL SELECT * FROM public.deleted_events) e",
        &["id"],
    ),
];

/// Rows moving into and out of the filter by UPDATE (also of TOASTed rows,
/// whose note the update does not send), key changes, deletes, inserts,
/// updates of excluded and masked columns, deletes of append-only rows.
async fn pg_workload(url: String, rounds: i64) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for r in 0..rounds {
        let base = 10_000 + r * 100;
        c.batch_execute(&format!(
            "BEGIN;
             UPDATE shop.orders SET status = 'test' WHERE id % 50 = {m} AND id < 2000;
             UPDATE shop.orders SET amount = amount + 100 WHERE amount < 100 AND id % 7 = {m7};
             UPDATE shop.orders SET status = 'paid' WHERE status = 'test' AND id % 9 = 0 AND id % 11 = {m11};
             UPDATE shop.orders SET amount = amount - 150 WHERE amount >= 150 AND id % 13 = {m13};
             INSERT INTO shop.orders SELECT g, CASE WHEN g % 3 = 0 THEN 'test' ELSE 'new' END, (g % 300)::numeric, NULL
               FROM generate_series({base}, {base} + 19) g;
             UPDATE shop.orders SET id = id + 100000 WHERE id BETWEEN {base} AND {base} + 4;
             DELETE FROM shop.orders WHERE id % 97 = {m97};
             COMMIT;
             UPDATE shop.customers SET email = 'new' || id || '@example.org', ssn = 'x' WHERE id % 20 = {m20};
             UPDATE shop.customers SET internal_notes = 'only excluded columns change' WHERE id % 30 = {m30};
             UPDATE shop.customers SET phone = NULL WHERE id = {r} + 1;
             INSERT INTO shop.customers VALUES ({base}, 'late', NULL, '12', 's', 'n');
             DELETE FROM shop.customers WHERE id = {r} + 200;
             WITH d AS (DELETE FROM shop.events WHERE id % 17 = {m17} RETURNING *) INSERT INTO public.deleted_events SELECT * FROM d;
             INSERT INTO shop.events (kind, payload) VALUES ('late', 'r{r}');
             UPDATE shop.events SET payload = payload || '+' WHERE id % 23 = {m23};
             INSERT INTO shop.audit_log VALUES ({base}, 'never delivered');",
            m = r % 50,
            m7 = r % 7,
            m11 = r % 11,
            m13 = r % 13,
            m97 = r % 97,
            m20 = r % 20,
            m30 = r % 30,
            m17 = r % 17,
            m23 = r % 23,
        ))
        .await
        .unwrap();
        // Paced over ~8 s, so the crash tests' kills land while it runs.
        tokio::time::sleep(std::time::Duration::from_millis(8_000 / rounds as u64)).await;
    }
}

fn pg_pipeline(env: &Env, name: &str, sink: &str, pushdown: bool) -> std::path::PathBuf {
    let p = env.pipeline(name, &["shop.*"], sink, TRANSFORMS);
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replace("  include: [\"shop.*\"]", "  include: [\"shop.*\"]\n  exclude: [\"shop.audit_*\"]");
    let text = if pushdown {
        text
    } else {
        text.replace("  type: postgres\n  url:", "  type: postgres\n  pushdown: false\n  url:")
    };
    std::fs::write(&p, text).unwrap();
    p
}

fn assert_output(
    label: &str,
    out: &std::collections::BTreeMap<String, Vec<Event>>,
    table: &str,
    key: &[&str],
    want: &Rows,
) {
    let evs = out.get(table).unwrap_or_else(|| panic!("{label}: no output for {table}; have {:?}", out.keys()));
    let got = replay(evs, key).unwrap_or_else(|e| panic!("{label} {table}: {e}"));
    assert!(!want.is_empty(), "{table}: expected rows");
    assert_same(&format!("{label} {table}"), &got, want);
}

type Rows = std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>;

/// The publication's column list and row filter for `table`.
async fn publication_entry(
    c: &tokio_postgres::Client,
    publication: &str,
    table: &str,
) -> (Vec<String>, Option<String>) {
    let r = c
        .query_one(
            "SELECT attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2",
            &[&publication, &table],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transforms_to_files_pushdown_and_in_process() {
    let env = Env::new("xform");
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    let push = pg_pipeline(&env, "xpush", &env.files_sink("xpush", "jsonl"), true);
    let local = pg_pipeline(&env, "xlocal", &env.files_sink("xlocal", "jsonl"), false);

    // `check` reports the filter semantics of the default-identity table
    // only where a filter reads non-key columns (none here: orders is FULL).
    let r = sluice(&["check", push.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("transforms") && r.stdout.contains("7 step(s) apply to 3 table(s)"), "{}", r.stdout);
    assert!(!r.stdout.contains("WARN  filter semantics"), "{}", r.stdout);
    assert!(
        r.stdout.contains("shop.orders: WHERE")
            && r.stdout.contains("shop.customers: columns (id, name, email, phone)"),
        "{}",
        r.stdout
    );
    let r = sluice(&["check", local.to_str().unwrap()]).await;
    assert!(r.stdout.contains("off (source.pushdown: false)"), "{}", r.stdout);

    // Snapshot (before the workload: the append-only table's expected rows
    // include rows deleted later), then a workload with SIGKILLs of the
    // pushed-down pipeline.
    catch_up(&local).await;
    catch_up(&push).await;
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("transforms crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(pg_workload(env.url(), 60));
    let kills = kill_repeatedly(&push, work, &mut rng, 300..1500).await;
    catch_up(&push).await;
    kills.assert_mid_work();
    catch_up(&local).await;

    // Pushdown happened where Postgres can do it, and only there.
    let (cols, filter) = publication_entry(&c, "sluice_xpush", "orders").await;
    assert_eq!(cols, ["id", "status", "amount", "note"], "FULL identity: no column list");
    let filter = filter.expect("the orders filter is pushed down");
    assert!(filter.contains("'test'") && filter.contains("100"), "{filter}");
    let (cols, filter) = publication_entry(&c, "sluice_xpush", "customers").await;
    assert_eq!(cols, ["id", "name", "email", "phone"], "columns not included are not published");
    assert_eq!(filter, None);
    let (cols, filter) = publication_entry(&c, "sluice_xlocal", "customers").await;
    assert_eq!((cols.len(), filter), (6, None), "pushdown: false publishes everything");

    let outs = [("pushdown", read_jsonl(&env.out("xpush"))), ("in-process", read_jsonl(&env.out("xlocal")))];
    for (label, out) in &outs {
        assert!(!out.contains_key("shop.audit_log") && !out.contains_key("analytics.audit_log"), "{:?}", out.keys());
        assert_eq!(out.keys().collect::<Vec<_>>(), ["analytics.customers", "analytics.events", "analytics.orders"]);
        for (table, sql, key) in PG_EXPECTED {
            let want = source_rows(&c, sql, key).await;
            assert_output(label, out, table, key, &want);
        }
        // Rows did move in (c from an update) and out (d), and deletes of
        // the append-only table were dropped.
        let orders = &out["analytics.orders"];
        let streamed_c =
            orders.iter().filter(|e| e.op == "c" && e.after.as_ref().unwrap()["id"].as_i64() < Some(2000)).count();
        assert!(streamed_c > 20, "{label}: expected updates turned into inserts, got {streamed_c}");
        assert!(orders.iter().any(|e| e.op == "d"), "{label}: expected deletes");
        assert!(out["analytics.events"].iter().all(|e| e.op != "d"), "{label}: deletes were skipped");
        // Masked and excluded columns never leave the database.
        let text: String = out.values().flatten().map(|e| e.raw.to_string()).collect();
        assert!(!text.contains("ssn-") && !text.contains("secret ") && !text.contains("@example"), "{label}: leaked");
    }
    // The two paths agree event for event on what the filter let through.
    let ids = |out: &std::collections::BTreeMap<String, Vec<Event>>| {
        let mut v: Vec<String> = out["analytics.orders"]
            .iter()
            .map(|e| format!("{}{}", e.op, e.after.as_ref().or(e.before.as_ref()).unwrap()["id"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&outs[0].1), ids(&outs[1].1));

    // A long stretch of filtered-out transactions still advances the slots.
    for i in 0..300 {
        c.batch_execute(&format!("INSERT INTO shop.orders VALUES ({}, 'test', 500, NULL)", 500_000 + i)).await.unwrap();
    }
    let end: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    catch_up(&push).await;
    catch_up(&local).await;
    for slot in ["sluice_xpush", "sluice_xlocal"] {
        let behind: bool = c
            .query_one(
                "SELECT confirmed_flush_lsn < $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &end],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!behind, "{slot} did not advance past filtered-out transactions");
    }
}

const REPLICA_TRANSFORMS: &str = r#"transforms:
  - filter:
      tables: ["shop.orders"]
      where: "status IN ('paid', 'new') AND (amount BETWEEN 100 AND 10000 OR note IS NOT NULL)"
  - columns:
      tables: ["shop.customers"]
      exclude: ["phone", "ssn", "internal_notes"]
  - mask:
      tables: ["shop.customers"]
      columns: ["email"]
      with: sha256
  - rename:
      tables: ["shop.*"]
      to: "mirror_{table}"
"#;

const ORDERS_JSON: &str = "json_build_object('id', id, 'status', status, 'amount', amount::text, 'note', note)";

/// The source orders `REPLICA_TRANSFORMS`' filter admits, with `statuses` in its IN list.
fn filtered_orders_sql(statuses: &str) -> String {
    format!(
        "SELECT {ORDERS_JSON} FROM shop.orders WHERE status IN ({statuses}) AND (amount BETWEEN 100 AND 10000 OR note IS NOT NULL)"
    )
}

/// The replica's `mirror_orders` equals the source orders that pass
/// `REPLICA_TRANSFORMS`' filter with `statuses` in its IN list.
async fn assert_mirror_orders(src: &tokio_postgres::Client, dst: &tokio_postgres::Client, statuses: &str, label: &str) {
    let want = source_rows(src, &filtered_orders_sql(statuses), &["id"]).await;
    let got = source_rows(dst, &format!("SELECT {ORDERS_JSON} FROM replica.mirror_orders"), &["id"]).await;
    assert_same(label, &got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transforms_into_a_postgres_replica() {
    let env = Env::new("xreplica");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    let sink = format!("  type: postgres\n  url: {}\n  schema: replica\n", target.url("postgres"));
    let p = env.pipeline("xrep", &["shop.orders", "shop.customers"], &sink, REPLICA_TRANSFORMS);
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("transform replica crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(pg_workload(env.url(), 40));
    let kills = kill_repeatedly(&p, work, &mut rng, 100..600).await;
    catch_up(&p).await;
    kills.assert_mid_work();
    let (dst, conn) = tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    assert_mirror_orders(&c, &dst, "'paid', 'new'", "replica.mirror_orders").await;
    let want = source_rows(
        &c,
        "SELECT json_build_object('id', id, 'name', name, 'email', encode(sha256(email::bytea), 'hex')) FROM shop.customers",
        &["id"],
    )
    .await;
    let got = source_rows(
        &dst,
        "SELECT json_build_object('id', id, 'name', name, 'email', email) FROM replica.mirror_customers",
        &["id"],
    )
    .await;
    assert_same("replica.mirror_customers", &got, &want);
    // The replica has the transformed shape: no excluded columns, text hashes.
    let cols: Vec<String> = dst
        .query(
            "SELECT column_name || ':' || data_type FROM information_schema.columns \
             WHERE table_schema = 'replica' AND table_name = 'mirror_customers' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cols, ["id:integer", "name:text", "email:text"]);
    // verify compares the source through the same transforms with the replica.
    let v = sluice(&["verify", p.to_str().unwrap(), "--chunk-rows", "500"]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 2 tables match"), "{}", v.stdout);
    // A row the filter excludes, present in the replica, is a mismatch.
    let outside: i32 = c.query_one("SELECT min(id) FROM shop.orders WHERE status = 'test'", &[]).await.unwrap().get(0);
    dst.batch_execute(&format!("INSERT INTO replica.mirror_orders VALUES ({outside}, 'test', 1, NULL)")).await.unwrap();
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains(&format!("extra in target: {outside}")), "{}", v.stdout);

    // Widening the filter later copies the table again: the replica then
    // holds the rows the new filter admits, including old ones.
    let text =
        std::fs::read_to_string(&p).unwrap().replace("status IN ('paid', 'new')", "status IN ('paid', 'new', 'test')");
    std::fs::write(&p, text).unwrap();
    let r = catch_up(&p).await;
    assert!(r.stderr.contains("transforms changed since it was copied"), "{}", r.stderr);
    assert_mirror_orders(&c, &dst, "'paid', 'new', 'test'", "replica.mirror_orders after widening the filter").await;
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

/// MariaDB source tables (binlog images are always whole: filters are exact).
const MY_SETUP: &str = "CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop; \
    CREATE TABLE shop.orders (id INT PRIMARY KEY, status VARCHAR(10) NOT NULL, amount DECIMAL(10,2) NOT NULL, note TEXT); \
    CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), phone VARCHAR(20), ssn VARCHAR(20), internal_notes TEXT); \
    CREATE TABLE shop.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, kind VARCHAR(10), payload VARCHAR(100)); \
    CREATE TABLE shop.audit_log (id INT PRIMARY KEY, x VARCHAR(10)); \
    CREATE TABLE shop.deleted_events (id BIGINT, kind VARCHAR(10), payload VARCHAR(100)); \
    INSERT INTO shop.orders SELECT seq, IF(seq % 4 = 0, 'test', 'paid'), (seq % 250) + 0.5, IF(seq % 9 = 0, REPEAT(MD5(seq), 40), NULL) FROM seq_1_to_2000; \
    INSERT INTO shop.customers SELECT seq, CONCAT('name ', seq), IF(seq % 10 <> 0, CONCAT('c', seq, '@example.com'), NULL), \
      CONCAT('+1-555-', LPAD(seq, 4, '0')), CONCAT('ssn-', seq), CONCAT('secret ', seq) FROM seq_1_to_500; \
    INSERT INTO shop.events (kind, payload) SELECT CONCAT('k', seq % 3), CONCAT('p', seq) FROM seq_1_to_300; \
    INSERT INTO shop.audit_log SELECT seq, 'a' FROM seq_1_to_10;";

fn my_workload(env: &MyEnv, rounds: std::ops::Range<i64>) {
    for r in rounds {
        let base = 10_000 + r * 100;
        env.sql(&format!(
            "USE shop; START TRANSACTION;
             UPDATE shop.orders SET status = 'test' WHERE id % 50 = {m} AND id < 2000;
             UPDATE shop.orders SET amount = amount + 100 WHERE amount < 100 AND id % 7 = {m7};
             UPDATE shop.orders SET status = 'paid' WHERE status = 'test' AND id % 9 = 0 AND id % 11 = {m11};
             UPDATE shop.orders SET amount = amount - 150 WHERE amount >= 150 AND id % 13 = {m13};
             INSERT INTO shop.orders SELECT seq, IF(seq % 3 = 0, 'test', 'new'), seq % 300, NULL FROM seq_{base}_to_{end};
             UPDATE shop.orders SET id = id + 100000 WHERE id BETWEEN {base} AND {base} + 4;
             DELETE FROM shop.orders WHERE id % 97 = {m97};
             COMMIT;
             UPDATE shop.customers SET email = CONCAT('new', id, '@example.org'), ssn = 'x' WHERE id % 20 = {m20};
             UPDATE shop.customers SET internal_notes = 'only excluded columns change' WHERE id % 30 = {m30};
             UPDATE shop.customers SET phone = NULL WHERE id = {r} + 1;
             INSERT INTO shop.customers VALUES ({base}, 'late', NULL, '12', 's', 'n');
             DELETE FROM shop.customers WHERE id = {r} + 200;
             INSERT INTO shop.deleted_events SELECT * FROM shop.events WHERE id % 17 = {m17};
             DELETE FROM shop.events WHERE id % 17 = {m17};
             INSERT INTO shop.events (kind, payload) VALUES ('late', 'r{r}');
             UPDATE shop.events SET payload = CONCAT(payload, '+') WHERE id % 23 = {m23};
             INSERT INTO shop.audit_log VALUES ({base}, 'never');",
            end = base + 19,
            m = r % 50,
            m7 = r % 7,
            m11 = r % 11,
            m13 = r % 13,
            m97 = r % 97,
            m20 = r % 20,
            m30 = r % 30,
            m17 = r % 17,
            m23 = r % 23,
        ));
    }
}

const MY_EXPECTED: &[(&str, &str, &[&str])] = &[
    (
        "analytics.orders",
        "SELECT JSON_OBJECT('id', id, 'status', status, 'total', CAST(amount AS CHAR), 'note', note) FROM shop.orders \
         WHERE status <> 'test' AND amount >= 100",
        &["id"],
    ),
    (
        "analytics.customers",
        "SELECT JSON_OBJECT('id', id, 'name', name, 'email', SHA2(CONCAT(email, 'pepper'), 256), \
         'phone', CONCAT(REPEAT('*', GREATEST(CHAR_LENGTH(phone) - 4, 0)), RIGHT(phone, 4))) FROM shop.customers",
        &["id"],
    ),
    (
        "analytics.events",
        "SELECT JSON_OBJECT('id', id, 'kind', kind, 'payload', payload) FROM \
         (SELECT * FROM shop.events UNION ALL SELECT * FROM shop.deleted_events) e",
        &["id"],
    ),
];

fn my_pipeline(env: &MyEnv, name: &str, sink: &str) -> std::path::PathBuf {
    let p = env.pipeline(name, &["shop.*"], sink, TRANSFORMS);
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "  include: [\"shop.*\"]",
        "  include: [\"shop.*\"]\n  exclude: [\"shop.audit_*\", \"shop.deleted_*\"]",
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_transforms_to_files() {
    let env = MyEnv::new("myxform");
    env.sql(MY_SETUP);
    let p = my_pipeline(&env, "myx", &env.files_sink("myx", "jsonl"));
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("7 step(s) apply to 3 table(s)"), "{}", r.stdout);
    catch_up(&p).await;
    my_workload(&env, 0..30);
    catch_up(&p).await;
    let out = read_jsonl(&env.out("myx"));
    assert_eq!(out.keys().collect::<Vec<_>>(), ["analytics.customers", "analytics.events", "analytics.orders"]);
    for (table, sql, key) in MY_EXPECTED {
        assert_output("mysql", &out, table, key, &env.rows(sql, key));
    }
    let orders = &out["analytics.orders"];
    assert!(orders.iter().filter(|e| e.op == "c").count() > 20 && orders.iter().any(|e| e.op == "d"));
    let text: String = out.values().flatten().map(|e| e.raw.to_string()).collect();
    assert!(!text.contains("ssn-") && !text.contains("secret ") && !text.contains("@example"), "leaked");
}

/// A catch-up test, not a crash test: one kill while the first part of the
/// workload is written, then everything is caught up (the crash tests of
/// the MySQL source are in `mysql_stream` and `my_sink`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_transforms_into_a_postgres_replica_catch_up() {
    let env = MyEnv::new("myxrep");
    let target = PgCluster::start(&[]).unwrap();
    env.sql(MY_SETUP);
    let sink = format!("  type: postgres\n  url: {}\n", target.url("postgres"));
    let p = env.pipeline("myxr", &["shop.orders", "shop.customers"], &sink, REPLICA_TRANSFORMS);
    catch_up(&p).await;
    let mut a = spawn_run(&p);
    my_workload(&env, 0..20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.start_kill().unwrap();
    let _ = a.wait().await;
    my_workload(&env, 20..25);
    catch_up(&p).await;
    let (dst, conn) = tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let want = env.rows(
        "SELECT JSON_OBJECT('id', id, 'status', status, 'amount', CAST(amount AS CHAR), 'note', note) FROM shop.orders \
         WHERE status IN ('paid', 'new') AND (amount BETWEEN 100 AND 10000 OR note IS NOT NULL)",
        &["id"],
    );
    let got = source_rows(
        &dst,
        "SELECT json_build_object('id', id, 'status', status, 'amount', amount::text, 'note', note) FROM shop.mirror_orders",
        &["id"],
    )
    .await;
    assert_same("shop.mirror_orders", &got, &want);
    let want =
        env.rows("SELECT JSON_OBJECT('id', id, 'name', name, 'email', SHA2(email, 256)) FROM shop.customers", &["id"]);
    let got = source_rows(
        &dst,
        "SELECT json_build_object('id', id, 'name', name, 'email', email) FROM shop.mirror_customers",
        &["id"],
    )
    .await;
    assert_same("shop.mirror_customers", &got, &want);
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 2 tables match"), "{}", v.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transforms_are_configuration_errors() {
    let env = Env::new("xbad");
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    let cases: &[(&str, &[&str])] = &[
        // Syntax: found without connecting.
        ("- filter: {where: \"amount >= \"}", &["transforms[0].filter.where", "amount >= "]),
        ("- filter: {where: \"amount >= 1 status\"}", &["after the expression", "line 1, column 13"]),
        // Unknown columns and type errors: found against the tables at start.
        (
            "- filter: {tables: [\"shop.orders\"], where: \"status = 'x' AND amont > 1\"}",
            &["unknown column amont in table shop.orders", "line 1, column 18", "status = 'x' AND amont > 1"],
        ),
        (
            "- filter: {tables: [\"shop.orders\"], where: \"status > 5\"}",
            &["cannot compare text with integer", "column 1"],
        ),
        ("- filter: {tables: [\"shop.orders\"], where: \"amount\"}", &["expected a boolean"]),
        ("- filter: {tables: [\"shop.orders\"], where: \"frob(status)\"}", &["unknown function frob"]),
        ("- mask: {tables: [\"shop.customers\"], columns: [id], with: redact}", &["part of the key"]),
        ("- columns: {tables: [\"shop.customers\"], exclude: [snn]}", &["no table it applies to has a column \"snn\""]),
        ("- mask: {columns: [x], with: blur}", &["transforms[0].mask.with"]),
        ("- filter: {tables: [\"shop.order\"], where: \"id > 1\"}", &["matches none of the included tables"]),
    ];
    for (i, (step, wants)) in cases.iter().enumerate() {
        let p = env.pipeline(
            &format!("xbad{i}"),
            &["shop.*"],
            &env.files_sink("xbad", "jsonl"),
            &format!("transforms:\n  {step}\n"),
        );
        for cmd in ["run", "check"] {
            let r = sluice(&[cmd, p.to_str().unwrap()]).await;
            let all = format!("{}{}", r.stdout, r.stderr);
            assert_eq!(r.code, 2, "{cmd} {step}: {all}");
            for w in *wants {
                assert!(all.contains(w), "{cmd} {step}: {w:?} missing in:\n{all}");
            }
            assert!(!all.contains("panicked"), "{all}");
        }
    }
    // A filter reading non-key columns of a default-identity table: check warns.
    let p = env.pipeline(
        "xwarn",
        &["shop.customers"],
        &env.files_sink("xwarn", "jsonl"),
        "transforms:\n  - filter: {where: \"name LIKE 'name 1%'\"}\n",
    );
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("WARN  filter semantics") && r.stdout.contains("REPLICA IDENTITY FULL"), "{}", r.stdout);
    assert!(!env.out("xbad").exists(), "nothing was written by failed runs");
}

/// Renames name Kafka topics (and the events' source blocks), as they name
/// replica tables and file directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_tables_name_kafka_topics() {
    use crate::harness::kafka::{read_topics, Tansu};
    let env = Env::new("xkafka");
    let kafka = Tansu::start();
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    let sink = format!("  type: kafka\n  brokers: {}\n  topic: \"xk.{{schema}}.{{table}}\"\n", kafka.brokers());
    let p = pg_pipeline(&env, "xk", &sink, true);
    catch_up(&p).await;
    pg_workload(env.url(), 15).await;
    catch_up(&p).await;
    let msgs = read_topics(&kafka.brokers(), "xk.");
    let topics: std::collections::BTreeSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        topics.into_iter().collect::<Vec<_>>(),
        ["xk.analytics.customers", "xk.analytics.events", "xk.analytics.orders"]
    );
    let out = super::kafka::decode(&msgs, None);
    for (table, sql, key) in PG_EXPECTED {
        let want = source_rows(&c, sql, key).await;
        assert_output("kafka", &out, table, key, &want);
    }
}

/// Each kind of step alone, on both sources: (pipeline, table included,
/// step, output table, Postgres query, MySQL query) — the queries are what
/// the output must equal.
const SINGLE_STEPS: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "one_filter",
        "shop.orders",
        "- filter: {where: \"status <> 'test' AND amount >= 100\"}",
        "shop.orders",
        "SELECT json_build_object('id', id, 'status', status, 'amount', amount::text, 'note', note) FROM shop.orders WHERE status <> 'test' AND amount >= 100",
        "SELECT JSON_OBJECT('id', id, 'status', status, 'amount', CAST(amount AS CHAR), 'note', note) FROM shop.orders WHERE status <> 'test' AND amount >= 100",
    ),
    (
        "one_columns",
        "shop.orders",
        "- columns: {exclude: [note]}",
        "shop.orders",
        "SELECT json_build_object('id', id, 'status', status, 'amount', amount::text) FROM shop.orders",
        "SELECT JSON_OBJECT('id', id, 'status', status, 'amount', CAST(amount AS CHAR)) FROM shop.orders",
    ),
    (
        "one_mask",
        "shop.orders",
        "- mask: {columns: [status], with: redact}\n  - mask: {columns: [note], with: null}",
        "shop.orders",
        "SELECT json_build_object('id', id, 'status', '****', 'amount', amount::text, 'note', NULL) FROM shop.orders",
        "SELECT JSON_OBJECT('id', id, 'status', '****', 'amount', CAST(amount AS CHAR), 'note', NULL) FROM shop.orders",
    ),
    (
        "one_rename",
        "shop.orders",
        "- rename: {to: \"x_{table}\", columns: {status: state}}",
        "shop.x_orders",
        "SELECT json_build_object('id', id, 'state', status, 'amount', amount::text, 'note', note) FROM shop.orders",
        "SELECT JSON_OBJECT('id', id, 'state', status, 'amount', CAST(amount AS CHAR), 'note', note) FROM shop.orders",
    ),
    (
        "one_ops",
        "shop.events",
        "- ops: {skip: [delete]}",
        "shop.events",
        "SELECT json_build_object('id', id, 'kind', kind, 'payload', payload) FROM (SELECT * FROM shop.events UNION ALL SELECT * FROM public.deleted_events) e",
        "SELECT JSON_OBJECT('id', id, 'kind', kind, 'payload', payload) FROM (SELECT * FROM shop.events UNION ALL SELECT * FROM shop.deleted_events) e",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_alone_on_both_sources() {
    let env = Env::new("xsingle");
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    let my = MyEnv::new("myxsingle");
    my.sql(MY_SETUP);
    let mut pg_pipes = Vec::new();
    let mut my_pipes = Vec::new();
    for (name, table, step, ..) in SINGLE_STEPS {
        let extra = format!("transforms:\n  {step}\n");
        let p = env.pipeline(name, &[table], &env.files_sink(name, "jsonl"), &extra);
        catch_up(&p).await;
        pg_pipes.push(p);
        let p = my.pipeline(name, &[table], &my.files_sink(name, "jsonl"), &extra);
        catch_up(&p).await;
        my_pipes.push(p);
    }
    pg_workload(env.url(), 25).await;
    my_workload(&my, 0..25);
    for (i, (name, _, _, out_table, pg_sql, my_sql)) in SINGLE_STEPS.iter().enumerate() {
        catch_up(&pg_pipes[i]).await;
        catch_up(&my_pipes[i]).await;
        let pg_out = read_jsonl(&env.out(name));
        assert_output(
            &format!("postgres {name}"),
            &pg_out,
            out_table,
            &["id"],
            &source_rows(&c, pg_sql, &["id"]).await,
        );
        let my_out = read_jsonl(&my.out(name));
        assert_output(&format!("mysql {name}"), &my_out, out_table, &["id"], &my.rows(my_sql, &["id"]));
    }
}

/// Postgres → MariaDB replica: masked columns become text columns in MySQL
/// (a sha256-masked key stays a key), renamed tables, a filter; verify agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transforms_into_a_mysql_replica() {
    let env = Env::new("xmy");
    let target = MyCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(PG_SETUP).await.unwrap();
    c.batch_execute(
        "CREATE TABLE shop.cards (number text PRIMARY KEY, holder text, spent int); \
         INSERT INTO shop.cards SELECT '4111-' || lpad(g::text, 8, '0'), 'holder ' || g, g FROM generate_series(1, 300) g",
    )
    .await
    .unwrap();
    let transforms = format!(
        "{REPLICA_TRANSFORMS}  - mask:\n      tables: [\"shop.cards\"]\n      columns: [number]\n      with: sha256\n  - mask:\n      tables: [\"shop.cards\"]\n      columns: [holder]\n      with: keep_last(3)\n"
    );
    let sink = format!("  type: mysql\n  url: {}\n  schema: replica\n", target.url());
    let p = env.pipeline("xmy", &["shop.orders", "shop.customers", "shop.cards"], &sink, &transforms);
    catch_up(&p).await;
    pg_workload(env.url(), 20).await;
    c.batch_execute(
        "UPDATE shop.cards SET spent = spent + 1, holder = holder || '!' WHERE spent % 3 = 0; \
         UPDATE shop.cards SET number = number || 'x' WHERE spent % 7 = 0; DELETE FROM shop.cards WHERE spent % 11 = 0",
    )
    .await
    .unwrap();
    catch_up(&p).await;
    let rows =
        |sql: &str, key: &[&str]| my_rows(&target, &format!("SET NAMES utf8mb4 COLLATE utf8mb4_nopad_bin; {sql}"), key);
    let want = source_rows(&c, &filtered_orders_sql("'paid', 'new'"), &["id"]).await;
    let got = rows(
        "SELECT JSON_OBJECT('id', id, 'status', status, 'amount', CAST(amount AS CHAR), 'note', note) FROM replica.mirror_orders",
        &["id"],
    );
    assert_same("mysql replica.mirror_orders", &got, &want);
    let want = source_rows(
        &c,
        "SELECT json_build_object('number', encode(sha256(number::bytea), 'hex'), 'holder', \
         repeat('*', greatest(length(holder) - 3, 0)) || right(holder, 3), 'spent', spent) FROM shop.cards",
        &["number"],
    )
    .await;
    let got = rows(
        "SELECT JSON_OBJECT('number', number, 'holder', holder, 'spent', spent) FROM replica.mirror_cards",
        &["number"],
    );
    assert_same("mysql replica.mirror_cards", &got, &want);
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 3 tables match"), "{}", v.stdout);
}
