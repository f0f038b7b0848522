//! Promises the README makes that no other test exercised: configuration
//! errors only found once connected (exit 2), a slot that is gone or was
//! moved past the checkpoint (fatal), a second signal exiting 130, the
//! `stdout` sink, and `sslmode` in the URL against the `tls` block.

use std::time::Duration;

use crate::harness::*;

const SETUP: &str = "CREATE TABLE t1 (id int PRIMARY KEY, v text); CREATE TABLE t2 (id int PRIMARY KEY); \
    INSERT INTO t1 SELECT g, 'v' || g FROM generate_series(1, 100) g; INSERT INTO t2 VALUES (1);";

/// A pipeline file with extra lines in the `source:` block.
fn pipeline_with_source(env: &Env, name: &str, source_extra: &str, include: &str, sink: &str) -> std::path::PathBuf {
    pipeline_with_url(env, &env.url(), name, source_extra, include, sink)
}

/// The same, with another source URL.
fn pipeline_with_url(
    env: &Env,
    url: &str,
    name: &str,
    source_extra: &str,
    include: &str,
    sink: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "version: 1\nname: {name}\nsource:\n  type: postgres\n  url: {url}\n{source_extra}tables:\n  include: [{include}]\n\
         sink:\n{sink}checkpoint:\n  path: {}\n",
        env.dir.join(format!("state-{name}")).display()
    );
    let p = env.dir.join(format!("{name}.yaml"));
    std::fs::write(&p, yaml).unwrap();
    p
}

async fn run(p: &std::path::Path) -> Run {
    sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_found_after_connecting_exit_2() {
    let env = Env::new("late_config");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let bh = "  type: blackhole\n";

    let p = pipeline_with_source(&env, "nomatch", "", "\"nosuch.*\"", bh);
    let r = run(&p).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no tables match tables.include/exclude"), "{}", r.stderr);

    c.batch_execute("SELECT pg_create_logical_replication_slot('other_plugin', 'test_decoding')").await.unwrap();
    let p = pipeline_with_source(&env, "plugin", "  slot: other_plugin\n", "\"public.*\"", bh);
    let r = run(&p).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("uses plugin") && r.stderr.contains("not pgoutput"), "{}", r.stderr);

    c.batch_execute("CREATE DATABASE elsewhere").await.unwrap();
    let (e, conn) = tokio_postgres::connect(&env.pg.url("elsewhere"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    e.batch_execute("SELECT pg_create_logical_replication_slot('other_db', 'pgoutput')").await.unwrap();
    let p = pipeline_with_source(&env, "otherdb", "  slot: other_db\n", "\"public.*\"", bh);
    let r = run(&p).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("belongs to database"), "{}", r.stderr);

    c.batch_execute("CREATE PUBLICATION theirs FOR TABLE t1").await.unwrap();
    let p = pipeline_with_source(&env, "pubx", "  publication: theirs\n", "\"public.*\"", bh);
    let r = run(&p).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("lacks included tables") && r.stderr.contains("t2"), "{}", r.stderr);

    // One pipeline's checkpoint directory given to another.
    let a = pipeline_with_source(&env, "owner", "", "\"public.*\"", bh);
    assert_eq!(run(&a).await.code, 0);
    let b = env.dir.join("intruder.yaml");
    let text = std::fs::read_to_string(&a).unwrap().replace("name: owner", "name: intruder");
    std::fs::write(&b, text).unwrap();
    let r = run(&b).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("checkpoint belongs to pipeline \"owner\""), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_or_moved_past_the_checkpoint_is_fatal() {
    let env = Env::new("slot_gone");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let p = env.pipeline("gone", &["public.*"], "  type: blackhole\n", "");
    catch_up(&p).await;
    slot_released(&c).await;
    c.batch_execute("SELECT pg_drop_replication_slot('sluice_gone')").await.unwrap();
    let r = run(&p).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no longer exists") && r.stderr.contains("changes since then are lost"), "{}", r.stderr);

    // Start over, then let another consumer move the slot past the checkpoint.
    let t = sluice(&["teardown", p.to_str().unwrap(), "--yes"]).await;
    assert_eq!(t.code, 0, "{}", t.stderr);
    catch_up(&p).await;
    slot_released(&c).await;
    // Committed (and flushed) first: a slot advances only over flushed WAL.
    c.batch_execute("INSERT INTO t1 VALUES (1000, 'later')").await.unwrap();
    c.batch_execute("SELECT pg_replication_slot_advance('sluice_gone', pg_current_wal_lsn())").await.unwrap();
    let r = run(&p).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("has been advanced") && r.stderr.contains("past the checkpoint"), "{}", r.stderr);
}

/// The walsender of a finished run lets go of the slot a moment later.
async fn slot_released(c: &tokio_postgres::Client) {
    wait_until(Duration::from_secs(30), Duration::from_millis(50), "the slot is released", || async {
        let active: bool = c
            .query_one("SELECT active FROM pg_replication_slots WHERE slot_name = 'sluice_gone'", &[])
            .await
            .unwrap()
            .get(0);
        if active {
            Err("still active".to_string())
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_130_and_the_next_run_resumes() {
    let env = Env::new("twice");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    c.batch_execute("INSERT INTO t2 SELECT g FROM generate_series(2, 300000) g").await.unwrap();
    let p = env.pipeline("twice", &["public.*"], &env.files_sink("twice", "jsonl"), "");
    let mut child = spawn_run(&p);
    // While the snapshot is being copied: SIGINT, then SIGTERM at once.
    let state = env.dir.join("state-twice");
    wait_until(Duration::from_secs(60), Duration::from_millis(20), "the run starts", || async {
        if state.exists() {
            Ok(())
        } else {
            Err("no checkpoint directory yet".to_string())
        }
    })
    .await;
    let pid = child.id().unwrap() as i32;
    // SAFETY: plain kill(2) on our child's pid.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert_eq!(status.code(), Some(130));
    // Nothing was lost: the next run finishes the copy, exactly once.
    catch_up(&p).await;
    let out = read_jsonl(&env.out("twice"));
    let got = replay(&out["public.t2"], &["id"]).unwrap();
    assert_eq!(got.len(), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdout_sink_prints_each_change_as_one_json_line() {
    let env = Env::new("stdout");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let p = env.pipeline("out", &["public.t1"], "  type: stdout\n", "");
    let r = catch_up(&p).await;
    let events: Vec<serde_json::Value> =
        r.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(events.len(), 100, "{}", r.stdout);
    let ids: std::collections::BTreeSet<i64> = events.iter().map(|e| e["after"]["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=100).collect());
    assert!(events.iter().all(|e| e["op"] == "r" && e["source"]["table"] == "t1"), "{}", events[0]);
    // Then a change streams out the same way.
    c.batch_execute("UPDATE t1 SET v = 'changed' WHERE id = 7").await.unwrap();
    let r = catch_up(&p).await;
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", r.stdout);
    assert_eq!((lines[0]["op"].as_str(), lines[0]["after"]["v"].as_str()), (Some("u"), Some("changed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_in_the_url_and_the_tls_block_that_overrides_it() {
    // The test server has no TLS: `sslmode=require` must fail clearly, and
    // a `tls` block with `mode: disable` overrides the URL.
    let env = Env::new("sslmode");
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let url = format!("{}?sslmode=require", env.url());
    let write = |name: &str, tls: &str| pipeline_with_url(&env, &url, name, tls, "\"public.*\"", "  type: blackhole\n");
    let r = run(&write("req", "")).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("tls") || r.stderr.contains("SSL"), "{}", r.stderr);
    let r = run(&write("off", "  tls:\n    mode: disable\n")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// `sluice demo`: the quickstart runs end to end, and its Parquet output,
/// replayed here, holds as many rows per table as it says the source held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_output_replays_to_the_source_counts() {
    let dir = std::env::temp_dir().join(format!("sluice-test-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = sluice(&["demo", "--seconds", "6", "--dir", dir.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("verified    replaying the Parquet output gives exactly the source's rows"),
        "{}",
        r.stdout
    );
    let counts = r.stdout.lines().find(|l| l.trim_start().starts_with("source now")).expect("source counts line");
    let out = read_parquet(&dir.join("data"));
    for t in ["customers", "products", "orders"] {
        let n: usize = counts
            .split(&format!("{t} "))
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no count of {t} in {counts:?}"));
        let rows = replay(&out[&format!("shop.{t}")], &["id"]).unwrap();
        assert_eq!(rows.len(), n, "shop.{t}: replayed output vs the source's count");
    }
    let ops: std::collections::BTreeSet<&str> = out.values().flatten().map(|e| e.op.as_str()).collect();
    assert!(ops.contains("r") && ops.contains("c") && ops.contains("u") && ops.contains("d"), "{ops:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
