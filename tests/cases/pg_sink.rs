//! Postgres replica sink: Postgres → Postgres with snapshot, streaming,
//! SIGKILLs at random points, a table without a key, quoted identifiers and
//! a schema change; the replica must equal the source row for row.

use std::time::Duration;

use rand::SeedableRng;

use crate::harness::*;

async fn target_client(pg: &PgCluster) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3").await.unwrap();
    c
}

const QUERIES: &[(&str, &str, &[&str])] = &[
    ("acct", "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM acct", &["id"]),
    ("hist", "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM hist", &["id"]),
    ("nokey", "SELECT json_build_object('a', a, 'b', b) FROM nokey", &[]),
    (
        "Odd",
        "SELECT json_build_object('Key', \"Key\", 'select', \"select\", 'ts', ts, 'j', j, 'arr', arr, 'by', encode(\"by\", 'hex'), 'u', u) FROM \"Odd Schema\".\"Odd Table\"",
        &["Key"],
    ),
];

/// Beside `crash::SETUP`: a keyless table (REPLICA IDENTITY FULL) and quoted,
/// mixed-case identifiers with reserved words and many types.
pub(crate) const ODD_SETUP: &str = "CREATE TABLE nokey (a int, b text); ALTER TABLE nokey REPLICA IDENTITY FULL; \
     INSERT INTO nokey SELECT g % 50, 'b' || g FROM generate_series(1, 200) g; \
     CREATE SCHEMA \"Odd Schema\"; \
     CREATE TABLE \"Odd Schema\".\"Odd Table\" (\"Key\" int PRIMARY KEY, \"select\" text, ts timestamptz, j jsonb, arr int[], \"by\" bytea, u uuid); \
     INSERT INTO \"Odd Schema\".\"Odd Table\" SELECT g, 'it''s \"q\" `b` ' || g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour 1 microsecond', \
       jsonb_build_object('g', g, 'a', array[g, g + 1]), array[g, NULL, -g], decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid \
     FROM generate_series(1, 300) g;";

/// The crash workload, then updates and deletes of single keyless rows,
/// JSON and text updates and key changes of the odd table.
pub(crate) async fn replica_workload(url: String, seed: u64) {
    super::crash::workload(url.clone(), seed, 120).await;
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for i in 0..200 {
        c.batch_execute(&format!(
            "UPDATE nokey SET b = b || '+' WHERE ctid = (SELECT ctid FROM nokey WHERE a = {} LIMIT 1); \
             DELETE FROM nokey WHERE ctid = (SELECT ctid FROM nokey WHERE a = {} AND {} % 4 = 0 LIMIT 1); \
             UPDATE \"Odd Schema\".\"Odd Table\" SET \"select\" = \"select\" || '!', j = j || '{{\"x\": 1}}' WHERE \"Key\" = {}; \
             UPDATE \"Odd Schema\".\"Odd Table\" SET \"Key\" = \"Key\" + 10000 WHERE \"Key\" = {};",
            i % 50,
            (i + 7) % 50,
            i,
            i + 1,
            300 - i
        ))
        .await
        .unwrap();
    }
}

async fn assert_replica(src: &tokio_postgres::Client, dst: &tokio_postgres::Client) {
    for (name, sql, key) in QUERIES {
        let want = source_rows(src, sql, key).await;
        let got = source_rows(dst, sql, key).await;
        assert!(!want.is_empty(), "{name}: empty source");
        assert_same(&format!("replica {name}"), &got, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_exactly_once() {
    let env = Env::new("pgsink");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(super::crash::SETUP).await.unwrap();
    c.batch_execute(ODD_SETUP).await.unwrap();
    let sink = format!(
        "  type: postgres\n  url: {}\n  batch:\n    max_rows: 5000\n    max_delay_ms: 100\n",
        target.url("postgres")
    );
    let p = env.pipeline("pgs", &["public.*", "Odd Schema.*"], &sink, "snapshot:\n  parallelism: 2\n");
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("pg sink crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(replica_workload(env.url(), seed));
    let kills = kill_repeatedly(&p, work, &mut rng, 200..800).await;
    catch_up(&p).await;
    kills.assert_mid_work();
    let dst = target_client(&target).await;
    assert_replica(&c, &dst).await;
    // Primary keys dropped for the copies are back, whatever the kills interrupted.
    let keys: Vec<String> = index_defs(&dst, &["acct", "hist", "nokey"]).await.into_iter().map(|i| i.0).collect();
    assert_eq!(keys, ["acct_pkey", "hist_pkey"]);
    // verify agrees, and names what differs once the replica is tampered with.
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 4 tables match"), "{}", v.stdout);
    // Tamper with rows that exist (the workload deletes and rolls back at random).
    let (a, h): (i64, i64) = {
        let r = c
            .query_one("SELECT (SELECT min(id) FROM acct WHERE id > 0), (SELECT max(id) FROM hist)", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    dst.batch_execute(&format!(
        "UPDATE acct SET v = 'tampered' WHERE id = {a}; DELETE FROM hist WHERE id = {h}; \
         INSERT INTO \"Odd Schema\".\"Odd Table\" (\"Key\") VALUES (-5);"
    ))
    .await
    .unwrap();
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    for want in
        [&format!("differs: {a}"), &format!("missing in target: {h}"), "extra in target: -5", "3 of 4 tables differ"]
    {
        assert!(v.stdout.contains(want), "verify output lacks {want:?}:\n{}", v.stdout);
    }
    dst.batch_execute("DELETE FROM \"Odd Schema\".\"Odd Table\" WHERE \"Key\" = -5").await.unwrap();
    // The checkpoint lives in the target, with the data.
    let row = dst
        .query_one(
            "SELECT position, checkpoint->'position'->>'type' FROM public.sluice_checkpoints WHERE pipeline = 'pgs'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("postgres"));

    // Schema change mid-stream: ADD and DROP COLUMN follow.
    c.batch_execute(
        "ALTER TABLE hist ADD COLUMN extra int DEFAULT 5; INSERT INTO hist (acct, note, extra) VALUES (1, 'new', 6); \
         UPDATE hist SET extra = 7 WHERE id = 1; ALTER TABLE nokey DROP COLUMN b; INSERT INTO nokey VALUES (99);",
    )
    .await
    .unwrap();
    catch_up(&p).await;
    let want = source_rows(
        &c,
        "SELECT json_build_object('id', id, 'note', note, 'extra', extra) FROM hist WHERE extra <> 5",
        &["id"],
    )
    .await;
    let got = source_rows(
        &dst,
        "SELECT json_build_object('id', id, 'note', note, 'extra', extra) FROM hist WHERE extra IS NOT NULL",
        &["id"],
    )
    .await;
    assert_same("hist after ADD COLUMN", &got, &want);
    // A column dropped while the pipeline was stopped stays (it may be the user's); new rows leave it NULL.
    let n: i64 = dst.query_one("SELECT count(*) FROM nokey WHERE a = 99 AND b IS NULL", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

/// MySQL → Postgres: every MySQL type lands in its documented Postgres type
/// with the same value, through the snapshot and the binlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_postgres_types() {
    use super::mysql_types::{ROWS, TABLE};
    let env = MyEnv::new("my2pg");
    let target = PgCluster::start(&[]).unwrap();
    env.sql("CREATE DATABASE shop CHARACTER SET utf8mb4");
    env.sql(TABLE);
    let insert = |base: usize| super::mysql_types::insert_rows(&env, base);
    insert(0);
    let sink = format!("  type: postgres\n  url: {}\n  schema: replica\n", target.url("postgres"));
    let p = env.pipeline("my2pg", &["shop.*"], &sink, "");
    catch_up(&p).await;
    insert(100);
    env.sql("UPDATE shop.types SET vc = 'changed', u64 = 7, tm6 = '-01:00:00.25' WHERE id IN (101, 3); DELETE FROM shop.types WHERE id = 2;");
    catch_up(&p).await;

    let b64 = |c: &str| format!("REPLACE(TO_BASE64({c}), '\\n', '')");
    let date = |c: &str| format!("IF(MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0, NULL, DATE_FORMAT({c}, '%Y-%m-%d'))");
    let frac = |c: &str| {
        format!("IF(LOCATE('.', CAST({c} AS CHAR)) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({c} AS CHAR))), CAST({c} AS CHAR))")
    };
    let my_sql = format!(
        "SELECT JSON_OBJECT('id', id, 'i8', i8, 'u64', u64, 'dec1', CAST(dec1 AS CHAR), 'dec2', CAST(dec2 AS CHAR), \
         'flag', IF(flag IS NULL, NULL, IF(flag <> 0, JSON_EXTRACT('true', '$'), JSON_EXTRACT('false', '$'))), \
         'd', d, 'bits', LPAD(BIN(bits), 10, '0'), 'vc', vc, 'lat', lat, 'bin', {}, 'bl', {}, 'dt', {}, 'tm6', {}, \
         'dtm6', IF(MONTH(dtm6) = 0, NULL, REPLACE({}, ' ', 'T')), \
         'ts', IF(UNIX_TIMESTAMP(ts) = 0, NULL, CONCAT(REPLACE({}, ' ', 'T'), 'Z')), \
         'yr', yr + 0, 'st', st, 'j', JSON_EXTRACT(j, '$'), 'uu', CAST(uu AS CHAR), 'g', {}) FROM shop.types",
        b64("bin"),
        b64("bl"),
        date("dt"),
        frac("tm6"),
        frac("dtm6"),
        frac("ts"),
        b64("ST_AsWKB(g)"),
    );
    let want = env.rows(&my_sql, &["id"]);
    let dst = target_client(&target).await;
    dst.batch_execute("SET extra_float_digits = 1").await.unwrap();
    let pg_sql = "SELECT json_build_object('id', id, 'i8', i8, 'u64', u64, 'dec1', dec1::text, 'dec2', dec2::text, \
         'flag', flag, 'd', d, 'bits', bits, 'vc', vc, 'lat', lat, 'bin', replace(encode(bin, 'base64'), E'\\n', ''), \
         'bl', replace(encode(bl, 'base64'), E'\\n', ''), 'dt', dt, 'tm6', tm6::text, \
         'dtm6', to_json(dtm6) #>> '{}', 'ts', replace(to_json(ts) #>> '{}', '+00:00', 'Z'), 'yr', yr, 'st', st, 'j', j, \
         'uu', uu, 'g', replace(encode(g, 'base64'), E'\\n', '')) FROM replica.types";
    let got = source_rows(&dst, pg_sql, &["id"]).await;
    assert_eq!(got.len(), ROWS.len() * 2 - 1);
    assert_same("replica.types", &got, &want);
    // verify compares across engines, every type included.
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 1 tables match"), "{}", v.stdout);
    dst.batch_execute("UPDATE replica.types SET tm6 = '00:00:00' WHERE id = 1").await.unwrap();
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("differs: 1"), "{}", v.stdout);
    // The documented target types.
    let types: Vec<(String, String)> = dst
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'replica' AND table_name = 'types' AND column_name IN ('flag', 'u64', 'tm', 'j', 'ts', 'bin', 'dec1')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (c, t) in [
        ("flag", "boolean"),
        ("u64", "numeric"),
        ("tm", "interval"),
        ("j", "jsonb"),
        ("ts", "timestamp with time zone"),
        ("bin", "bytea"),
        ("dec1", "numeric"),
    ] {
        assert!(types.contains(&(c.to_string(), t.to_string())), "{c} is not {t}: {types:?}");
    }
}

/// MySQL → Postgres under SIGKILLs during the snapshot and the stream: the
/// replica ends equal to the source (row by row and by `verify`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_postgres_sigkill_exactly_once() {
    let env = MyEnv::new("my2pgcrash");
    let target = PgCluster::start(&[]).unwrap();
    env.sql(super::mysql_stream::SETUP);
    let sink = format!("  type: postgres\n  url: {}\n  batch:\n    max_rows: 3000\n", target.url("postgres"));
    let p = env.pipeline("m2pc", &["shop.*"], &sink, "");
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("mysql->pg crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(super::mysql_stream::workload(env.url(), seed, 120));
    let kills = kill_repeatedly(&p, work, &mut rng, 100..400).await;
    catch_up(&p).await;
    kills.assert_mid_work();
    let dst = target_client(&target).await;
    let want =
        env.rows("SELECT JSON_OBJECT('id', id, 'v', v, 'n', CAST(n AS CHAR), 'ver', ver) FROM shop.acct", &["id"]);
    let got = source_rows(
        &dst,
        "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM shop.acct",
        &["id"],
    )
    .await;
    assert_same("shop.acct replica", &got, &want);
    let want = env.rows("SELECT JSON_OBJECT('id', id, 'acct', acct, 'note', note) FROM shop.hist", &["id"]);
    let got =
        source_rows(&dst, "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM shop.hist", &["id"])
            .await;
    assert_same("shop.hist replica", &got, &want);
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // teardown forgets the checkpoint in the target too: the next run copies anew.
    let t = sluice(&["teardown", p.to_str().unwrap(), "--yes"]).await;
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert!(t.stdout.contains("removed 1 checkpoint row"), "{}", t.stdout);
    catch_up(&p).await;
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
}

/// Postgres → Postgres: every type the binary COPY path encodes (and the
/// text path for the rest) arrives with the same value through the snapshot
/// and the stream, special values included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_types() {
    let env = Env::new("pgsinktypes");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    let rows = |base: i32| {
        format!(
            "INSERT INTO bin VALUES \
             ({}, true, -32768, -2147483648, -9223372036854775808, -3.4e38, 'NaN', '-123.4500', 'NaN', \
              'it''s\ttab\nnl\\\\', 'ab', '\\x00ff', '-infinity', '24:00:00', 'infinity', '-infinity', \
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": [1, 2.5]}}', '{{\"b\":  1,  \"a\":2}}', 12345678901234567890.123, 'Infinity'), \
             ({}, false, 32767, 2147483647, 9223372036854775807, 1.17549435e-38, -0.0, '0.00001234', '-Infinity', \
              '', 'abcde', '', '0044-03-15 BC', '00:00:00.000001', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00+00', \
              '00000000-0000-0000-0000-000000000000', 'null', '[]', 0, '10000'), \
             ({}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
            base + 1,
            base + 2,
            base + 3
        )
    };
    c.batch_execute(&format!(
        "CREATE TABLE bin (id int PRIMARY KEY, b bool, i2 smallint, i4 int, i8 bigint, r real, d double precision, \
           n numeric(10,4), nn numeric, t text, ch char(5), by bytea, dt date, tm time, ts timestamp, tz timestamptz, \
           u uuid, j json, jb jsonb, n2 numeric(30,3), n3 numeric); \
         CREATE TABLE txt (id int PRIMARY KEY, iv interval, ip inet, arr text[], m money); \
         INSERT INTO txt VALUES (1, '1 year -2 days 03:00:00.5', '10.0.0.1/8', ARRAY['a\tb', NULL, 'c\\d'], 12.5), (2, NULL, NULL, '{{}}', NULL); {}",
        rows(0)
    ))
    .await
    .unwrap();
    let sink = format!("  type: postgres\n  url: {}\n  schema: replica\n", target.url("postgres"));
    let p = env.pipeline("pgt", &["public.*"], &sink, "");
    catch_up(&p).await;
    c.batch_execute(&format!(
        "{} UPDATE bin SET t = 'x' WHERE id = 1; INSERT INTO txt VALUES (3, '-1 mon', '::1', ARRAY['z'], 1);",
        rows(10)
    ))
    .await
    .unwrap();
    catch_up(&p).await;
    let dst = target_client(&target).await;
    for (name, cols) in [
        ("bin", "id, b, i2, i4, i8, r::text, d::text, n::text, nn::text, t, ch, by, dt, tm, ts, tz, u, j::text, jb, n2::text, n3::text"),
        ("txt", "id, iv::text, ip::text, arr, m::text"),
    ] {
        let want = source_rows(&c, &format!("SELECT to_json(x) FROM (SELECT {cols} FROM public.{name}) x"), &["id"]).await;
        let got = source_rows(&dst, &format!("SELECT to_json(x) FROM (SELECT {cols} FROM replica.{name}) x"), &["id"]).await;
        assert!(want.len() >= 3);
        assert_same(&format!("replica.{name}"), &got, &want);
    }
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // A type change the mapping cannot follow stops that table alone.
    c.batch_execute(
        "ALTER TABLE txt ALTER COLUMN m TYPE numeric USING m::numeric; INSERT INTO txt (id, m) VALUES (4, 5); \
         INSERT INTO bin (id, t) VALUES (50, 'still applied');",
    )
    .await
    .unwrap();
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("table public.txt is stopped") && r.stderr.contains("changed type"), "{}", r.stderr);
    let n: i64 = dst.query_one("SELECT count(*) FROM replica.bin WHERE id = 50", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let n: i64 = dst.query_one("SELECT count(*) FROM replica.txt WHERE id = 4", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

/// The target's index definitions on `tables`, by index name, each with the
/// kind of constraint it backs (`-` for none).
async fn index_defs(c: &tokio_postgres::Client, tables: &[&str]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in tables {
        for r in c
            .query(
                "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid), \
                   COALESCE((SELECT contype::text FROM pg_constraint WHERE conindid = indexrelid AND conrelid = indrelid), '-') \
                 FROM pg_index WHERE indrelid = to_regclass($1) ORDER BY 1",
                &[t],
            )
            .await
            .unwrap()
        {
            out.push((r.get(0), r.get(1), r.get(2)));
        }
    }
    out
}

/// Snapshot loading drops a target table's indexes (a primary key, a unique
/// constraint, a partial and an expression index) for the copy and rebuilds
/// them after it; a SIGKILL after a commit in the middle of the copy, while
/// they are dropped, leaves the rebuild statements in the checkpoint, and the
/// next run copies the table again and restores them exactly. A table
/// referenced by a foreign key keeps its indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_rebuilds_indexes_after_copy() {
    let env = Env::new("pgsinkidx");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    let ddl =
        "CREATE TABLE big (id bigint PRIMARY KEY, code text NOT NULL, v int, CONSTRAINT big_code UNIQUE (code)); \
               CREATE TABLE ref (id int PRIMARY KEY, name text);";
    c.batch_execute(&format!(
        "{ddl} INSERT INTO big SELECT g, 'c' || g, g % 100 FROM generate_series(1, 300000) g; \
         INSERT INTO ref SELECT g, 'r' || g FROM generate_series(1, 10) g; \
         CREATE TABLE misc (id int PRIMARY KEY, o oid, nm name); \
         INSERT INTO misc SELECT g, g * 1000000, 'n' || g FROM generate_series(1, 50) g; \
         CREATE TABLE pair (b text, a int, v int, PRIMARY KEY (b, a)); \
         INSERT INTO pair SELECT 'k' || (g % 7), g, g FROM generate_series(1, 30000) g;"
    ))
    .await
    .unwrap();
    let dst = target_client(&target).await;
    dst.batch_execute(&format!(
        "{ddl} CREATE INDEX big_v ON big (v) WHERE v > 10; CREATE INDEX \"Big Lower\" ON big (lower(code)); \
         CREATE TABLE note (ref int REFERENCES ref, t text);"
    ))
    .await
    .unwrap();
    let want_indexes = index_defs(&dst, &["big", "ref"]).await;
    let kinds: Vec<&str> = want_indexes.iter().map(|i| i.2.as_str()).collect();
    assert_eq!(kinds, ["-", "u", "p", "-", "p"], "{want_indexes:?}");
    // Flushes every few milliseconds: the copy of `big` spans several commits.
    let sink = format!(
        "  type: postgres\n  url: {}\n  batch:\n    max_rows: 5000\n    max_delay_ms: 5\n",
        target.url("postgres")
    );
    // The sink has no binary encoding of `oid` and `name` (it loads `misc`
    // in text form): its rows, sent as the server's binary tuples, are
    // decoded by the runtime.
    let p = env.pipeline(
        "pgidx",
        &["public.big", "public.ref", "public.misc", "public.pair"],
        &sink,
        "snapshot:\n  parallelism: 1\n",
    );
    let mut run = spawn_run(&p);
    let mut seen = false;
    for _ in 0..2000 {
        let r = dst
            .query_opt(
                "SELECT 1 FROM sluice_checkpoints WHERE pipeline = 'pgidx' AND checkpoint->'sink' ? 'deferred_indexes'",
                &[],
            )
            .await;
        if matches!(r, Ok(Some(_))) {
            run.start_kill().unwrap();
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = run.wait().await;
    assert!(seen, "no checkpoint was committed in the middle of the copy of big");
    let n: i64 =
        dst.query_one("SELECT count(*) FROM pg_index WHERE indrelid = 'big'::regclass", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "big's indexes are dropped while its copy runs");

    catch_up(&p).await;
    assert_eq!(index_defs(&dst, &["big", "ref"]).await, want_indexes);
    for (t, sql) in [
        ("big", "SELECT json_build_object('id', id, 'code', code, 'v', v) FROM big"),
        ("ref", "SELECT json_build_object('id', id, 'name', name) FROM ref"),
        ("misc", "SELECT json_build_object('id', id, 'o', o::text, 'nm', nm::text) FROM misc"),
    ] {
        assert_same(t, &source_rows(&dst, sql, &["id"]).await, &source_rows(&c, sql, &["id"]).await);
    }
    let types: Vec<String> = dst
        .query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'misc'::regclass AND attnum > 1 ORDER BY attnum", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["oid", "name"]);
    // The rebuilt constraints are the ones upserts rely on.
    c.batch_execute("INSERT INTO big VALUES (0, 'zero', 1) ON CONFLICT (id) DO UPDATE SET v = 2; UPDATE big SET code = 'one' WHERE id = 1;")
        .await
        .unwrap();
    catch_up(&p).await;
    let r = dst
        .query_one("SELECT (SELECT code FROM big WHERE id = 0), (SELECT code FROM big WHERE id = 1)", &[])
        .await
        .unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1)), ("zero".to_string(), "one".to_string()));
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    // A composite key with an integer column is compared in ranges of it.
    dst.batch_execute("UPDATE pair SET v = -1 WHERE a = 12345").await.unwrap();
    let v = sluice(&["verify", p.to_str().unwrap(), "--chunk-rows", "5000"]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    let line = v.stdout.lines().find(|l| l.starts_with("public.pair")).unwrap_or_default();
    assert!(line.contains("MISMATCH (1 rows in a in [") && line.contains("differs: "), "{}", v.stdout);
    let (lo, hi) = line.split_once("a in [").unwrap().1.split_once(')').unwrap().0.split_once(", ").unwrap();
    assert!(lo.parse::<i64>().unwrap() <= 12345 && 12345 < hi.parse::<i64>().unwrap(), "{line}");
    assert!(v.stdout.contains("1 of 4 tables differ"), "{}", v.stdout);
}

/// Inserts go as plain INSERTs until one meets a row already in the target
/// (written there by someone else): that target transaction is rolled back
/// and replayed with upserts, so the source's row wins and nothing else in
/// the transaction is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_upserts_rows_already_in_target() {
    let env = Env::new("pgconflict");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE u (id int PRIMARY KEY, v text); CREATE TABLE log (a int, b text); \
         ALTER TABLE log REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let dst = target_client(&target).await;
    dst.batch_execute("CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (2, 'stale'), (9, 'theirs');")
        .await
        .unwrap();
    let sink = format!("  type: postgres\n  url: {}\n", target.url("postgres"));
    let p = env.pipeline("conf", &["public.*"], &sink, "snapshot:\n  mode: never\n");
    catch_up(&p).await;
    // One source transaction: a keyless row (applied twice would show) and a key the target already has.
    c.batch_execute(
        "BEGIN; INSERT INTO log VALUES (1, 'once'); INSERT INTO u VALUES (1, 'a'), (2, 'b'), (3, 'c'); COMMIT; \
         INSERT INTO u VALUES (4, 'd'); INSERT INTO log VALUES (2, 'once');",
    )
    .await
    .unwrap();
    let r = catch_up(&p).await;
    assert!(r.stderr.contains("replaying from the checkpoint with upserts"), "{}", r.stderr);
    let u: Vec<(i32, String)> =
        dst.query("SELECT id, v FROM u ORDER BY id", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i32, String)> =
        [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (9, "theirs")].iter().map(|(i, v)| (*i, v.to_string())).collect();
    assert_eq!(u, want);
    let log: Vec<(i32, String)> =
        dst.query("SELECT a, b FROM log ORDER BY a", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(log, [(1, "once".to_string()), (2, "once".to_string())]);
    // A conflict in a later run (a new process, which starts with plain inserts again) is replayed the same way.
    c.batch_execute("INSERT INTO log VALUES (3, 'once'); INSERT INTO u VALUES (9, 'ours');").await.unwrap();
    catch_up(&p).await;
    let v: String = dst.query_one("SELECT v FROM u WHERE id = 9", &[]).await.unwrap().get(0);
    assert_eq!(v, "ours");
    let n: i64 = dst.query_one("SELECT count(*) FROM log", &[]).await.unwrap().get(0);
    assert_eq!(n, 3);
    // A target table without a unique index on the source's key cannot take
    // upserts: that table stops (no second row for a key), the others go on.
    dst.batch_execute("CREATE TABLE nopk (id int, v text); INSERT INTO nopk VALUES (1, 'theirs')").await.unwrap();
    c.batch_execute("CREATE TABLE nopk (id int PRIMARY KEY, v text)").await.unwrap();
    catch_up(&p).await; // publishes the new table
    c.batch_execute("INSERT INTO nopk VALUES (1, 'ours'); INSERT INTO log VALUES (4, 'once');").await.unwrap();
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("table public.nopk is stopped")
            && r.stderr.contains("no primary key or unique index on (id)"),
        "{}",
        r.stderr
    );
    let n: i64 = dst.query_one("SELECT count(*) FROM nopk", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let n: i64 = dst.query_one("SELECT count(*) FROM log", &[]).await.unwrap().get(0);
    assert_eq!(n, 4);
}
