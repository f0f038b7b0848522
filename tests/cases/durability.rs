//! Replica targets that acknowledge commits before they are durable: a
//! Postgres target with `synchronous_commit = off` and a MariaDB target with
//! `innodb_flush_log_at_trx_commit = 0`, each stopped hard twice while a
//! workload runs and one `sluice run` keeps going. The commits the target
//! loses must never have been confirmed to the source: the run retries
//! through both outages (it does not stop on a slot that passed its
//! checkpoint), and afterwards the replica equals the source.

use std::time::Duration;

use crate::harness::*;

/// Run the crash workload in rounds until `outages` is done.
async fn workload_until(url: String, seed: u64, outages: &tokio::task::JoinHandle<()>) {
    let mut round = 0;
    while !outages.is_finished() || round < 2 {
        super::crash::workload(url.clone(), seed + round, 60).await;
        round += 1;
    }
}

/// `sluice run P` through `outages` and the workload: it must still be running
/// at the end (the outages are transient), then stop it and catch up.
async fn run_through(p: &std::path::Path, url: String, outages: tokio::task::JoinHandle<()>) {
    let mut run = spawn_run(p);
    workload_until(url, rand::random::<u64>() % 1000 * 7, &outages).await;
    outages.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        run.try_wait().unwrap().is_none(),
        "sluice run stopped during the target outages (did it confirm commits the target lost?)"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGTERM) };
    let st = run.wait().await.unwrap();
    assert_eq!(st.code(), Some(0), "sluice run after SIGTERM");
    catch_up(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_target_with_asynchronous_commit_stopped_hard() {
    let env = Env::new("durpg");
    // Commits wait in the WAL buffers for up to 10 s: an immediate stop loses the last ones.
    let target = std::sync::Arc::new(
        PgCluster::start(&[
            ("synchronous_commit", "off"),
            ("wal_writer_delay", "'10s'"),
            ("wal_writer_flush_after", "'1GB'"),
        ])
        .unwrap(),
    );
    let c = env.client().await;
    c.batch_execute(super::crash::SETUP).await.unwrap();
    let sink = format!(
        "  type: postgres\n  url: {}\n  batch:\n    max_rows: 5000\n    max_delay_ms: 100\n",
        target.url("postgres")
    );
    let p = env.pipeline("durpg", &["public.*"], &sink, "");
    let check = sluice(&["check", p.to_str().unwrap()]).await;
    assert!(
        check.stdout.contains("synchronous_commit = off: commits return before the WAL is flushed"),
        "{}",
        check.stdout
    );
    let t = target.clone();
    let outages = tokio::task::spawn_blocking(move || {
        for _ in 0..2 {
            std::thread::sleep(Duration::from_secs(4));
            t.restart_after("immediate", Duration::from_secs(6)).unwrap();
        }
    });
    run_through(&p, env.url(), outages).await;
    let (dst, conn) = tokio_postgres::connect(&target.url("postgres"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for (name, sql, key) in [
        ("acct", "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM acct", &["id"]),
        ("hist", "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM hist", &["id"]),
    ] {
        let want = source_rows(&c, sql, key).await;
        assert!(want.len() > 100, "{name}: source too small");
        assert_same(&format!("replica {name}"), &source_rows(&dst, sql, key).await, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_target_without_durable_commits_killed() {
    let env = Env::new("durmy");
    // The redo log is written and flushed once a second: a SIGKILL loses the last second's commits.
    let target = std::sync::Arc::new(tokio::sync::Mutex::new(
        MyCluster::start(&["--innodb-flush-log-at-trx-commit=0"]).unwrap(),
    ));
    let c = env.client().await;
    c.batch_execute(super::crash::SETUP).await.unwrap();
    let url = target.lock().await.url();
    let sink = format!("  type: mysql\n  url: {url}\n  batch:\n    max_rows: 5000\n    max_delay_ms: 100\n");
    let p = env.pipeline("durmy", &["public.*"], &sink, "");
    let check = sluice(&["check", p.to_str().unwrap()]).await;
    assert!(check.stdout.contains("innodb_flush_log_at_trx_commit = 0: commits return before"), "{}", check.stdout);
    let t = target.clone();
    let outages = tokio::spawn(async move {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut g = t.lock().await;
            tokio::task::block_in_place(|| g.restart_after(true, Duration::from_secs(6))).unwrap();
        }
    });
    run_through(&p, env.url(), outages).await;
    let dst = target.lock().await;
    for (name, pg_sql, my_sql, key) in &super::my_sink::PG_MY[..2] {
        let want = source_rows(&c, pg_sql, key).await;
        assert!(want.len() > 100, "{name}: source too small");
        let got = super::my_sink::replica_rows(&dst, my_sql, key);
        assert_same(&format!("mysql replica {name}"), &got, &want);
    }
}
