//! Replica sink options and events the crash tests do not make: `TRUNCATE`
//! applied by both replica sinks, `create_tables: false` (existing tables
//! are used, a missing one stops only that table) and `checkpoint_schema`
//! (the checkpoint row lives there and nowhere else).

use crate::harness::*;

const SOURCE: &str = "CREATE TABLE keep (id int PRIMARY KEY, v text); \
     CREATE TABLE trunc (id int PRIMARY KEY, v text); \
     CREATE TABLE trunc2 (id int PRIMARY KEY, v text); \
     CREATE TABLE missing (id int PRIMARY KEY); \
     INSERT INTO trunc2 SELECT g, 'u' || g FROM generate_series(1, 50) g; \
     INSERT INTO keep SELECT g, 'k' || g FROM generate_series(1, 100) g; \
     INSERT INTO trunc SELECT g, 't' || g FROM generate_series(1, 100) g; \
     INSERT INTO missing SELECT generate_series(1, 10);";

/// Changes after the snapshot: `trunc` gets rows before and after a
/// `TRUNCATE` of its own, `trunc2` before and after one in the middle of a
/// transaction.
const STREAM: &str = "INSERT INTO keep SELECT g, 'k' || g FROM generate_series(101, 150) g; \
     UPDATE keep SET v = v || '!' WHERE id % 7 = 0; \
     INSERT INTO trunc VALUES (500, 'before'); \
     TRUNCATE trunc; \
     INSERT INTO trunc SELECT g, 'after' || g FROM generate_series(1000, 1010) g; \
     BEGIN; INSERT INTO trunc2 VALUES (2000, 'gone'); TRUNCATE trunc2; INSERT INTO trunc2 VALUES (2001, 'kept'); COMMIT; \
     INSERT INTO missing VALUES (11);";

const Q_KEEP: &str = "SELECT json_build_object('id', id, 'v', v) FROM keep";
const Q_TRUNC: &str = "SELECT json_build_object('id', id, 'v', v) FROM trunc";
const Q_TRUNC2: &str = "SELECT json_build_object('id', id, 'v', v) FROM trunc2";

/// Two runs (snapshot, then the stream); each exits 1 because the table
/// without a target is stopped, and says so.
async fn run_twice(env: &Env, p: &std::path::Path) {
    for round in 0..2 {
        if round == 1 {
            env.client().await.batch_execute(STREAM).await.unwrap();
        }
        let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
        assert_eq!(r.code, 1, "round {round}: the missing table should stop:\n{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("table public.missing is stopped")
                && r.stderr.contains("does not exist (create it, or set sink.create_tables: true)")
                && r.stderr.contains("1 table(s) stopped; the others are up to date"),
            "round {round}:\n{}",
            r.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_truncate_create_tables_false_checkpoint_schema() {
    let env = Env::new("pgopts");
    let target = PgCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(SOURCE).await.unwrap();
    let (t, conn) = tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // The user's own tables: a column of theirs, and no `missing`.
    t.batch_execute(
        "CREATE TABLE keep (id int PRIMARY KEY, v text, note text DEFAULT 'mine'); \
         CREATE TABLE trunc (id int PRIMARY KEY, v text); CREATE TABLE trunc2 (id int PRIMARY KEY, v text);",
    )
    .await
    .unwrap();
    let sink = format!(
        "  type: postgres\n  url: {}\n  create_tables: false\n  checkpoint_schema: sluice_meta\n",
        target.url("postgres")
    );
    let p = env.pipeline("pgopts", &["public.*"], &sink, "");
    run_twice(&env, &p).await;
    for (name, q) in [("keep", Q_KEEP), ("trunc", Q_TRUNC), ("trunc2", Q_TRUNC2)] {
        assert_same(name, &source_rows(&t, q, &["id"]).await, &source_rows(&c, q, &["id"]).await);
    }
    let trunc: Vec<i32> =
        t.query("SELECT id FROM trunc ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(trunc, (1000..=1010).collect::<Vec<i32>>());
    let trunc2: Vec<i32> = t.query("SELECT id FROM trunc2", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(trunc2, [2001]);
    let notes: i64 = t.query_one("SELECT count(*) FROM keep WHERE note = 'mine'", &[]).await.unwrap().get(0);
    assert_eq!(notes, 150, "the user's column keeps its default");
    let missing: Option<String> = t.query_one("SELECT to_regclass('public.missing')::text", &[]).await.unwrap().get(0);
    assert_eq!(missing, None, "create_tables: false created a table");
    let rows: i64 = t
        .query_one("SELECT count(*) FROM sluice_meta.sluice_checkpoints WHERE pipeline = 'pgopts'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let public: Option<String> =
        t.query_one("SELECT to_regclass('public.sluice_checkpoints')::text", &[]).await.unwrap().get(0);
    assert_eq!(public, None, "the checkpoint row belongs in checkpoint_schema only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_replica_truncate_create_tables_false_checkpoint_schema() {
    let env = Env::new("myopts");
    let target = MyCluster::start(&[]).unwrap();
    let c = env.client().await;
    c.batch_execute(SOURCE).await.unwrap();
    target
        .sql(
            "CREATE DATABASE public; \
             CREATE TABLE public.keep (id int PRIMARY KEY, v longtext, note varchar(10) DEFAULT 'mine'); \
             CREATE TABLE public.trunc (id int PRIMARY KEY, v longtext); \
             CREATE TABLE public.trunc2 (id int PRIMARY KEY, v longtext);",
        )
        .unwrap();
    let sink =
        format!("  type: mysql\n  url: {}\n  create_tables: false\n  checkpoint_schema: sluice_meta\n", target.url());
    let p = env.pipeline("myopts", &["public.*"], &sink, "");
    run_twice(&env, &p).await;
    for (name, q, my) in [
        ("keep", Q_KEEP, "SELECT JSON_OBJECT('id', id, 'v', v) FROM public.keep"),
        ("trunc", Q_TRUNC, "SELECT JSON_OBJECT('id', id, 'v', v) FROM public.trunc"),
        ("trunc2", Q_TRUNC2, "SELECT JSON_OBJECT('id', id, 'v', v) FROM public.trunc2"),
    ] {
        assert_same(name, &my_rows(&target, my, &["id"]), &source_rows(&c, q, &["id"]).await);
    }
    let trunc = target.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM public.trunc").unwrap();
    assert_eq!(trunc.trim(), "1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010");
    assert_eq!(target.sql("SELECT GROUP_CONCAT(id) FROM public.trunc2").unwrap().trim(), "2001");
    assert_eq!(target.sql("SELECT COUNT(*) FROM public.keep WHERE note = 'mine'").unwrap().trim(), "150");
    let tables = target
        .sql(
            "SELECT GROUP_CONCAT(CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) ORDER BY 1) FROM information_schema.TABLES \
             WHERE TABLE_NAME IN ('missing', 'sluice_checkpoints')",
        )
        .unwrap();
    assert_eq!(tables.trim(), "sluice_meta.sluice_checkpoints", "no `missing` table, one checkpoint table");
    let rows = target.sql("SELECT COUNT(*) FROM sluice_meta.sluice_checkpoints WHERE pipeline = 'myopts'").unwrap();
    assert_eq!(rows.trim(), "1");
}
