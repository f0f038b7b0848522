//! MySQL/MariaDB replica sink: Postgres → MySQL and MySQL → MySQL with
//! snapshot, streaming, SIGKILLs at random points, a table without a key,
//! quoted identifiers, schema changes and every type; the replica must
//! equal the source row for row, and `verify` must agree.

use rand::SeedableRng;

use crate::harness::*;

fn seed() -> u64 {
    std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

/// The same rows, as JSON objects, on the Postgres source and the MySQL replica.
pub(crate) const PG_MY: &[(&str, &str, &str, &[&str])] = &[
    (
        "acct",
        "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM acct",
        "SELECT JSON_OBJECT('id', id, 'v', v, 'n', CAST(n AS CHAR), 'ver', ver) FROM public.acct",
        &["id"],
    ),
    (
        "hist",
        "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM hist",
        "SELECT JSON_OBJECT('id', id, 'acct', acct, 'note', note) FROM public.hist",
        &["id"],
    ),
    (
        "nokey",
        "SELECT json_build_object('a', a, 'b', b) FROM nokey",
        "SELECT JSON_OBJECT('a', a, 'b', b) FROM public.nokey",
        &[],
    ),
    (
        "Odd",
        "SELECT json_build_object('Key', \"Key\", 'select', \"select\", 'ts', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
         'j', j, 'arr', to_json(arr), 'by', encode(\"by\", 'hex'), 'u', u) FROM \"Odd Schema\".\"Odd Table\"",
        "SELECT JSON_OBJECT('Key', `Key`, 'select', `select` COLLATE utf8mb4_bin, 'ts', DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), \
         'j', JSON_EXTRACT(j, '$'), 'arr', JSON_EXTRACT(arr, '$'), 'by', LOWER(HEX(`by`)), 'u', CAST(u AS CHAR) COLLATE utf8mb4_bin) FROM `Odd Schema`.`Odd Table`",
        &["Key"],
    ),
];

/// Rows of the replica (its text columns have a binary collation, the
/// session's literals must too).
pub(crate) fn replica_rows(
    dst: &MyCluster,
    sql: &str,
    key: &[&str],
) -> std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> {
    my_rows(dst, &format!("SET NAMES utf8mb4 COLLATE utf8mb4_nopad_bin; {sql}"), key)
}

async fn assert_pg_my(src: &tokio_postgres::Client, dst: &MyCluster) {
    for (name, pg_sql, my_sql, key) in PG_MY {
        let want = source_rows(src, pg_sql, key).await;
        let got = replica_rows(dst, my_sql, key);
        assert!(!want.is_empty(), "{name}: empty source");
        assert_same(&format!("mysql replica {name}"), &got, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mysql_exactly_once() {
    let env = Env::new("pg2my");
    let target = MyCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(super::crash::SETUP).await.unwrap();
    c.batch_execute(super::pg_sink::ODD_SETUP).await.unwrap();
    let sink = format!("  type: mysql\n  url: {}\n  batch:\n    max_rows: 5000\n    max_delay_ms: 100\n", target.url());
    let p = env.pipeline("pgm", &["public.*", "Odd Schema.*"], &sink, "snapshot:\n  parallelism: 2\n");
    let seed = seed();
    eprintln!("pg->mysql crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let work = tokio::spawn(super::pg_sink::replica_workload(env.url(), seed));
    let kills = kill_repeatedly(&p, work, &mut rng, 200..800).await;
    catch_up(&p).await;
    kills.assert_mid_work();
    assert_pg_my(&c, &target).await;
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
    target
        .sql(&format!(
            "UPDATE public.acct SET v = 'tampered' WHERE id = {a}; DELETE FROM public.hist WHERE id = {h}; \
             INSERT INTO `Odd Schema`.`Odd Table` (`Key`) VALUES (-5);"
        ))
        .unwrap();
    // In key ranges of about 20k rows (acct has 140k), compared two at a time.
    let v = sluice(&["verify", p.to_str().unwrap(), "--chunk-rows", "20000", "--parallel", "2"]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    for want in [
        &format!("differs: {a}"),
        &format!("missing in target: {h}"),
        "extra in target: -5",
        "3 of 4 tables differ",
        "MISMATCH (1 rows in id in [",
    ] {
        assert!(v.stdout.contains(want), "verify output lacks {want:?}:\n{}", v.stdout);
    }
    target.sql("DELETE FROM `Odd Schema`.`Odd Table` WHERE `Key` = -5").unwrap();
    // The checkpoint lives in the target, with the data.
    let t = target
        .sql("SELECT JSON_VALUE(checkpoint, '$.position.type') FROM sluice.sluice_checkpoints WHERE pipeline = 'pgm'")
        .unwrap();
    assert_eq!(t.trim(), "postgres");

    // Schema changes while the pipeline runs: a column added inside a
    // transaction that already wrote the table (the target transaction is
    // rolled back and replayed), a column added between transactions, and a
    // dropped column.
    // The tampered rows come back with their next change (updates are upserts by key).
    c.batch_execute(&format!(
        "UPDATE acct SET ver = ver + 1 WHERE id = {a}; UPDATE hist SET note = note || '.' WHERE id = {h};"
    ))
    .await
    .unwrap();
    c.batch_execute(
        "BEGIN; INSERT INTO hist (acct, note) VALUES (1, 'before'); ALTER TABLE hist ADD COLUMN extra int; \
         INSERT INTO hist (acct, note, extra) VALUES (1, 'new', 6); UPDATE hist SET extra = 7 WHERE id = 1; COMMIT; \
         ALTER TABLE acct ADD COLUMN \"Added Col\" text; UPDATE acct SET \"Added Col\" = 'x' WHERE id BETWEEN 1 AND 9; \
         INSERT INTO nokey VALUES (98, 'x'); ALTER TABLE nokey DROP COLUMN b; INSERT INTO nokey VALUES (99); \
         ALTER TABLE hist ADD COLUMN c text; UPDATE hist SET c = 'one' WHERE id IN (SELECT id FROM hist ORDER BY id LIMIT 3); \
         ALTER TABLE hist DROP COLUMN c; INSERT INTO hist (acct, note) VALUES (2, 'between'); \
         ALTER TABLE hist ADD COLUMN c text; INSERT INTO hist (acct, note, c) VALUES (3, 'after', 'kept');",
    )
    .await
    .unwrap();
    let r = catch_up(&p).await;
    assert!(r.stderr.contains("columns added mid-transaction"), "the replay path was not taken:\n{}", r.stderr);
    let sql = "SELECT json_build_object('id', id, 'note', note, 'extra', extra) FROM hist WHERE extra IS NOT NULL OR note = 'before'";
    let want = source_rows(&c, sql, &["id"]).await;
    assert!(want.len() >= 2, "{want:?}");
    let got = replica_rows(
        &target,
        "SELECT JSON_OBJECT('id', id, 'note', note, 'extra', extra) FROM public.hist WHERE extra IS NOT NULL OR note = 'before'",
        &["id"],
    );
    assert_same("hist after ADD COLUMN", &got, &want);
    let n = target.sql("SELECT COUNT(*) FROM public.acct WHERE `Added Col` = 'x'").unwrap();
    let want: i64 = c.query_one("SELECT count(*) FROM acct WHERE \"Added Col\" = 'x'", &[]).await.unwrap().get(0);
    assert!(want > 0);
    assert_eq!(n.trim(), want.to_string());
    let cols = target
        .sql("SELECT GROUP_CONCAT(COLUMN_NAME) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'public' AND TABLE_NAME = 'nokey'")
        .unwrap();
    assert_eq!(cols.trim(), "a", "the dropped column goes");
    let n = target.sql("SELECT COUNT(*) FROM public.nokey WHERE a IN (98, 99)").unwrap();
    assert_eq!(n.trim(), "2");
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 4 tables match"), "{}", v.stdout);
    // teardown forgets the checkpoint in the target too.
    let t = sluice(&["teardown", p.to_str().unwrap(), "--yes"]).await;
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert!(t.stdout.contains("removed 1 checkpoint row"), "{}", t.stdout);
}

/// Postgres → MySQL: every Postgres type lands in its documented MySQL type
/// with the same value (snapshot and stream); keys that differ only in case
/// or trailing spaces stay apart; a value MySQL cannot hold stops the run
/// with an error naming the table and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mysql_types() {
    let env = Env::new("pg2mytypes");
    let target = MyCluster::start(&[]).unwrap();
    let c = env.client().await;
    let rows = |base: i32| {
        format!(
            "INSERT INTO ty VALUES \
             ({}, true, -32768, 9223372036854775807, 1.1, 0.1, 123456789012345678901234567890.123456789012345678901234567890, 12345678.99, \
              'it''s ünïcode', 'ab', E'tab\\there\\nnl \\\\ \"q\"', '\\x00ff10', '0001-01-01', '24:00:00', '9999-12-31 23:59:59.999999', \
              '2024-02-29 12:34:56.123456+02', '1 year 2 mons -3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
              '{{\"b\": [1, 2.5, null], \"a\": \"x\"}}', '{{\"k\": {{\"n\": -1}}}}', ARRAY['x', NULL, 'y \"z\"'], 4000000000, 'happy'), \
             ({}, false, 0, -1, -3.4e38, 1.7976931348623157e308, -0.5, -0.01, '', 'abcde', '', '', '2024-02-29', '00:00:00.000001', \
              '1970-01-01 00:00:00', '1969-12-31 23:59:59.999999+00', '0 seconds', '00000000-0000-0000-0000-000000000000', '[]', 'null', '{{}}', 0, 'sad'), \
             ({}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
            base + 1,
            base + 2,
            base + 3
        )
    };
    c.batch_execute(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); \
         CREATE TABLE ty (id int PRIMARY KEY, b bool, i2 smallint, i8 bigint, r real, d double precision, n numeric, n2 numeric(10,2), \
           vc varchar(20), ch char(5), t text, by bytea, dt date, tm time, ts timestamp, tz timestamptz, iv interval, u uuid, \
           j json, jb jsonb, arr text[], o oid, m mood); \
         CREATE TABLE ci (k text PRIMARY KEY, v int); INSERT INTO ci VALUES ('a', 1), ('A', 2), ('a ', 3), ('ä', 4); {}",
        rows(0)
    ))
    .await
    .unwrap();
    let sink = format!("  type: mysql\n  url: {}/analytics\n  schema: replica\n", target.url());
    let p = env.pipeline("pgmt", &["public.*"], &sink, "");
    catch_up(&p).await;
    c.batch_execute(&format!(
        "{} UPDATE ty SET t = 'changed', arr = ARRAY['u'] WHERE id IN (2, 11); DELETE FROM ty WHERE id = 3; \
         UPDATE ci SET v = v + 10 WHERE k = 'A'; DELETE FROM ci WHERE k = 'a ';",
        rows(10)
    ))
    .await
    .unwrap();
    catch_up(&p).await;
    let pg_sql = "SELECT json_build_object('id', id, 'b', b, 'i2', i2, 'i8', i8, 'n', trim_scale(n)::text, 'n2', n2::text, \
        'vc', vc, 'ch', ch, 't', t, 'by', encode(by, 'hex'), 'dt', dt::text, \
        'ts', to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), 'tz', to_char(tz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
        'iv', iv::text, 'u', u::text, 'j', j, 'jb', jb, 'arr', to_json(arr), 'o', o::text::bigint, 'm', m::text) FROM ty";
    let my_sql = "SELECT JSON_OBJECT('id', id, 'b', IF(b IS NULL, NULL, IF(b, JSON_EXTRACT('true', '$'), JSON_EXTRACT('false', '$'))), \
        'i2', i2, 'i8', i8, 'n', IF(LOCATE('.', n) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST(n AS CHAR))), CAST(n AS CHAR)), \
        'n2', CAST(n2 AS CHAR), 'vc', vc COLLATE utf8mb4_bin, 'ch', ch COLLATE utf8mb4_bin, 't', t COLLATE utf8mb4_bin, 'by', LOWER(HEX(`by`)), 'dt', CAST(dt AS CHAR), \
        'ts', DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), 'tz', DATE_FORMAT(tz, '%Y-%m-%d %H:%i:%s.%f'), 'iv', iv COLLATE utf8mb4_bin, 'u', CAST(u AS CHAR) COLLATE utf8mb4_bin, \
        'j', JSON_EXTRACT(j, '$'), 'jb', JSON_EXTRACT(jb, '$'), 'arr', JSON_EXTRACT(arr, '$'), 'o', o, 'm', m COLLATE utf8mb4_bin) FROM replica.ty";
    let want = source_rows(&c, pg_sql, &["id"]).await;
    assert_eq!(want.len(), 5);
    assert_same("replica.ty", &replica_rows(&target, my_sql, &["id"]), &want);
    let want = source_rows(&c, "SELECT json_build_object('k', k, 'v', v) FROM ci", &["k"]).await;
    let got = replica_rows(&target, "SELECT JSON_OBJECT('k', k, 'v', v) FROM replica.ci", &["k"]);
    assert_eq!(want.len(), 3);
    assert_same("replica.ci (case and trailing spaces)", &got, &want);
    // verify reads every column of both sides back as the source types.
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 2 tables match"), "{}", v.stdout);
    target.sql("UPDATE replica.ty SET r = 1.2 WHERE id = 1").unwrap();
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("differs: 1"), "{}", v.stdout);
    // The documented target types.
    let types = target
        .sql(
            "SELECT CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = 'replica' AND TABLE_NAME = 'ty' ORDER BY ORDINAL_POSITION",
        )
        .unwrap();
    for want in [
        "b tinyint(1)",
        "n decimal(65,30)",
        "n2 decimal(10,2)",
        "vc varchar(20)",
        "ch varchar(5)",
        "t longtext",
        "by longblob",
        "tm time(6)",
        "ts datetime(6)",
        "tz datetime(6)",
        "u char(36)",
        "arr longtext",
        "o int(10) unsigned",
        "m longtext",
    ] {
        assert!(types.lines().any(|l| l == want), "no column {want:?} in\n{types}");
    }
    // The checkpoint sits in the URL's database.
    let n = target.sql("SELECT COUNT(*) FROM analytics.sluice_checkpoints WHERE pipeline = 'pgmt'").unwrap();
    assert_eq!(n.trim(), "1");
    // MySQL has no NaN: that table stops with an error naming it and the
    // column, the others go on; the run ends with exit 1.
    c.batch_execute("BEGIN; INSERT INTO ci VALUES ('nan', 1); INSERT INTO ty (id, d) VALUES (100, 'NaN'); COMMIT;")
        .await
        .unwrap();
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("table public.ty is stopped") && r.stderr.contains("column d") && r.stderr.contains("NaN"),
        "{}",
        r.stderr
    );
    assert_eq!(target.sql("SELECT COUNT(*) FROM replica.ci WHERE k = 'nan'").unwrap().trim(), "1");
    // It stays stopped across restarts (the state is in the checkpoint row),
    // and the other tables keep going.
    c.batch_execute("INSERT INTO ci VALUES ('after', 2); UPDATE ty SET t = 'skipped' WHERE id = 1;").await.unwrap();
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("table public.ty is stopped"), "{}", r.stderr);
    assert_eq!(target.sql("SELECT COUNT(*) FROM replica.ci WHERE k = 'after'").unwrap().trim(), "1");
    assert_eq!(target.sql("SELECT COUNT(*) FROM replica.ty WHERE t = 'skipped'").unwrap().trim(), "0");
    // Fixed at the source, then copied again (out of tables.include for one
    // run, back in the next): the table is back in line.
    c.batch_execute("DELETE FROM ty WHERE id = 100").await.unwrap();
    let only_ci = env.pipeline("pgmt", &["public.ci"], &sink, "");
    catch_up(&only_ci).await;
    let p = env.pipeline("pgmt", &["public.*"], &sink, "");
    catch_up(&p).await;
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(target.sql("SELECT COUNT(*) FROM replica.ty WHERE t = 'skipped'").unwrap().trim(), "1");
}

/// MySQL → MySQL: every type through the snapshot and the binlog, then
/// SIGKILLs during a snapshot and a random workload; the replica ends equal
/// to the source (row by row with the same query on both, and by `verify`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_mysql_exactly_once() {
    use super::mysql_types::{ROWS, TABLE};
    let env = MyEnv::new("my2my");
    let target = MyCluster::start(&[]).unwrap();
    env.sql(super::mysql_stream::SETUP);
    env.sql(TABLE);
    env.sql(
        "CREATE TABLE shop.`odd ``name``` (`select` INT, `Mixed Case` VARCHAR(10)); \
         INSERT INTO shop.`odd ``name``` VALUES (1, 'a'), (1, 'a'), (2, NULL);",
    );
    super::mysql_types::insert_rows(&env, 0);
    let sink =
        format!("  type: mysql\n  url: {}\n  keep_dropped_columns: true\n  batch:\n    max_rows: 3000\n", target.url());
    let p = env.pipeline("m2m", &["shop.*"], &sink, "");
    let seed = seed();
    eprintln!("mysql->mysql crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let url = env.url();
    let work = tokio::spawn(super::mysql_stream::workload(url, seed, 120));
    let kills = kill_repeatedly(&p, work, &mut rng, 100..400).await;
    super::mysql_types::insert_rows(&env, 100);
    env.sql(
        "UPDATE shop.types SET vc = 'changed', u64 = 7, tm6 = '-01:00:00.25', bits = b'101' WHERE id IN (101, 3); \
         DELETE FROM shop.types WHERE id = 2; \
         UPDATE shop.`odd ``name``` SET `Mixed Case` = 'b' WHERE `select` = 1 LIMIT 1; \
         DELETE FROM shop.`odd ``name``` WHERE `select` = 2;",
    );
    catch_up(&p).await;
    kills.assert_mid_work();
    let b64 = |c: &str| format!("REPLACE(TO_BASE64({c}), '\\n', '')");
    let types_sql = format!(
        "SELECT JSON_OBJECT('id', id, 'i8', i8, 'u8', u8, 'i16', i16, 'u16', u16, 'i24', i24, 'u24', u24, 'i32', i32, \
         'u32', u32, 'i64', i64, 'u64', u64, 'dec1', CAST(dec1 AS CHAR), 'dec2', CAST(dec2 AS CHAR), 'dec3', dec3, \
         'f', CAST(f AS CHAR), 'd', CAST(d AS CHAR), 'bits', BIN(bits), 'bit1', BIN(bit1), 'flag', flag, 'c', c, 'vc', vc, \
         'tx', tx, 'lat', lat, 'latt', latt, 'bin', {}, 'vbin', {}, 'bl', {}, 'dt', CAST(dt AS CHAR), 'tm', CAST(tm AS CHAR), \
         'tm6', CAST(tm6 AS CHAR), 'dtm', CAST(dtm AS CHAR), 'dtm3', CAST(dtm3 AS CHAR), 'dtm6', CAST(dtm6 AS CHAR), \
         'ts', CAST(ts AS CHAR), 'yr', yr + 0, 'e', e, 'st', st, 'j', JSON_EXTRACT(j, '$'), 'uu', CAST(uu AS CHAR), \
         'g', {}, 'pt', ST_AsText(pt), 'tm2', CAST(tm2 AS CHAR)) FROM shop.types",
        b64("bin"),
        b64("vbin"),
        b64("bl"),
        b64("ST_AsWKB(g)"),
    );
    // Zero dates are NULL in events (documented), so the replica holds NULL there.
    let want = env.rows(&types_sql.replace("FROM shop.types", "FROM shop.types WHERE id NOT IN (5, 105)"), &["id"]);
    // (MariaDB's JSON columns are utf8mb4_bin, the replica's other text columns utf8mb4_nopad_bin.)
    let replica_sql = types_sql
        .replace("FROM shop.types", "FROM shop.types WHERE id NOT IN (5, 105)")
        .replace("JSON_EXTRACT(j, '$')", "JSON_EXTRACT(j COLLATE utf8mb4_nopad_bin, '$')");
    let got = replica_rows(&target, &replica_sql, &["id"]);
    assert_eq!(want.len(), ROWS.len() * 2 - 3);
    assert_same("shop.types replica", &got, &want);
    for (name, sql, key) in [
        ("acct", "SELECT JSON_OBJECT('id', id, 'v', v, 'n', CAST(n AS CHAR), 'ver', ver) FROM shop.acct", &["id"][..]),
        ("hist", "SELECT JSON_OBJECT('id', id, 'acct', acct, 'note', note) FROM shop.hist", &["id"][..]),
        ("odd", "SELECT JSON_OBJECT('select', `select`, 'Mixed Case', `Mixed Case`) FROM shop.`odd ``name```", &[][..]),
    ] {
        assert_same(&format!("shop.{name} replica"), &replica_rows(&target, sql, key), &env.rows(sql, key));
    }
    // keep_dropped_columns: a column the source drops stays, new rows leave it NULL.
    env.sql(
        "INSERT INTO shop.hist (acct, note) VALUES (-1, 'kept'); ALTER TABLE shop.hist DROP COLUMN note; \
         INSERT INTO shop.hist (acct) VALUES (-2);",
    );
    catch_up(&p).await;
    let kept = target.sql("SELECT acct, IFNULL(note, 'NULL') FROM shop.hist WHERE acct < 0 ORDER BY acct").unwrap();
    assert_eq!(kept.trim(), "-2\tNULL\n-1\tkept");
    // The replica keeps the source's declared types.
    let types = target
        .sql(
            "SELECT CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = 'shop' AND TABLE_NAME = 'types' AND COLUMN_NAME IN ('u32', 'dec2', 'e', 'bits', 'dtm3', 'uu', 'pt')",
        )
        .unwrap();
    for want in [
        "u32 int(10) unsigned",
        "dec2 decimal(65,30)",
        "e enum('small','medium','large')",
        "bits bit(10)",
        "dtm3 datetime(3)",
        "uu uuid",
        "pt point",
    ] {
        assert!(types.lines().any(|l| l == want), "no column {want:?} in\n{types}");
    }
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("all 4 tables match"), "{}", v.stdout);
    target.sql("UPDATE shop.types SET e = 'small' WHERE id = 1; DELETE FROM shop.acct WHERE id = 5").unwrap();
    let v = sluice(&["verify", p.to_str().unwrap()]).await;
    assert_eq!(v.code, 1, "{}\n{}", v.stdout, v.stderr);
    for want in ["differs: 1", "missing in target: 5"] {
        assert!(v.stdout.contains(want), "verify output lacks {want:?}:\n{}", v.stdout);
    }
}

/// Bad sink settings: one clear error each, exit 2 for configuration and 1
/// for a target that refuses or cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sink_errors() {
    let env = Env::new("mysinkerr");
    let target = MyCluster::start(&[]).unwrap();
    target.sql("CREATE USER app@'%' IDENTIFIED BY 'right'; GRANT ALL ON *.* TO app@'%';").unwrap();
    env.client().await.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    let port = target.port;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (sink, code, want) in [
        ("  type: mysql\n  url: postgres://x@127.0.0.1/db\n".to_string(), 2, "is not a MySQL URL"),
        (
            format!("  type: mysql\n  url: mysql://app:wrong@127.0.0.1:{port}\n"),
            1,
            "check the user and password in sink.url",
        ),
        (format!("  type: mysql\n  url: mysql://app@127.0.0.1:{closed}\n"), 1, "cannot connect to MySQL"),
        (
            format!("  type: mysql\n  url: mysql://app:right@127.0.0.1:{port}\n  batch:\n    max_rows: 0\n"),
            2,
            "sink.batch",
        ),
    ] {
        let p = env.pipeline("bad", &["public.t"], &sink, "");
        let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
        assert_eq!(r.code, code, "{sink}\n{}", r.stderr);
        assert!(r.stderr.contains(want), "{sink}: stderr lacks {want:?}:\n{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // And with the right password it runs.
    let p =
        env.pipeline("good", &["public.t"], &format!("  type: mysql\n  url: mysql://app:right@127.0.0.1:{port}\n"), "");
    catch_up(&p).await;
    assert_eq!(target.sql("SELECT COUNT(*) FROM public.t").unwrap().trim(), "0");
}

/// A target's own unique index must not turn an insert into an update of
/// another row (what a bare ON DUPLICATE KEY UPDATE does), and a target
/// without a unique index on the key must not collect second rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sink_guards_other_unique_indexes() {
    let env = Env::new("myuniq");
    let target = MyCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE uq (id int PRIMARY KEY, email varchar(50), v int); \
         INSERT INTO uq VALUES (1, 'a@x', 1), (2, 'b@x', 2); \
         CREATE TABLE nk (id int PRIMARY KEY, v int); INSERT INTO nk VALUES (1, 1); \
         CREATE TABLE ok (id int PRIMARY KEY, v int);",
    )
    .await
    .unwrap();
    target
        .sql(
            "CREATE DATABASE public; CREATE TABLE public.uq (id int NOT NULL PRIMARY KEY, email varchar(50), v int, \
             UNIQUE KEY by_email (email)); CREATE TABLE public.nk (id int, v int);",
        )
        .unwrap();
    let sink = format!("  type: mysql\n  url: {}\n", target.url());
    let p = env.pipeline("uniq", &["public.*"], &sink, "");
    let run = || async { sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await };
    let r = run().await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("table public.nk is stopped") && r.stderr.contains("no primary key or unique index on (id)"),
        "{}",
        r.stderr
    );
    assert_eq!(target.sql("SELECT COUNT(*) FROM public.nk").unwrap().trim(), "0");
    // Upserts of the guarded table that match their own key work.
    c.batch_execute(
        "UPDATE uq SET v = 10 WHERE id = 1; INSERT INTO uq VALUES (3, 'c@x', 3); INSERT INTO ok VALUES (1, 1);",
    )
    .await
    .unwrap();
    let r = run().await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let rows = |sql: &str| target.sql(sql).unwrap().trim().replace('\t', " ");
    assert_eq!(rows("SELECT id, email, v FROM public.uq ORDER BY id"), "1 a@x 10\n2 b@x 2\n3 c@x 3");
    // A new key whose email is row 1's in the target's unique index: stopped, row 1 untouched.
    c.batch_execute("INSERT INTO uq VALUES (4, 'a@x', 4); INSERT INTO ok VALUES (2, 2);").await.unwrap();
    let r = run().await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("table public.uq is stopped") && r.stderr.contains("unique index other than the key"),
        "{}",
        r.stderr
    );
    assert_eq!(rows("SELECT id, email, v FROM public.uq ORDER BY id"), "1 a@x 10\n2 b@x 2\n3 c@x 3");
    assert_eq!(rows("SELECT id, v FROM public.ok ORDER BY id"), "1 1\n2 2");
}
