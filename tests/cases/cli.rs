//! `check`, `status`, `teardown` and `run` shutdown behaviour.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_status_teardown() {
    let env = Env::new("cli");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE good (id int PRIMARY KEY, body text);
         CREATE TABLE nokey (a int);
         INSERT INTO good SELECT g, 'x' FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let p = env.pipeline("cli", &["public.*"], &env.files_sink("cli", "jsonl"), "");
    let ps = p.to_str().unwrap();
    let r = sluice(&["check", ps]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    let line = |needle: &str| r.stdout.lines().find(|l| l.contains(needle)).unwrap_or_default().to_string();
    let nokey = line("table public.nokey");
    assert!(nokey.contains("FAIL") && nokey.contains("REPLICA IDENTITY FULL"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().filter(|l| l.trim_start().starts_with("FAIL")).count(), 1, "{}", r.stdout);
    let toast = r.stdout.lines().find(|l| l.contains("WARN") && l.contains("table public.good")).unwrap_or_default();
    assert!(toast.contains("body") && toast.contains("TOAST"), "TOAST warning expected:\n{}", r.stdout);
    c.batch_execute("ALTER TABLE nokey REPLICA IDENTITY FULL").await.unwrap();
    let r = sluice(&["check", ps]).await;
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("ready"));

    catch_up(&p).await;
    let lag = |out: &str| serde_json::from_str::<serde_json::Value>(out).unwrap()["lag_bytes"].as_u64().unwrap();
    let before = lag(&sluice(&["status", ps, "--json"]).await.stdout);
    c.batch_execute("INSERT INTO good SELECT g, 'later' FROM generate_series(1000, 2000) g").await.unwrap();
    let r = sluice(&["status", ps, "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(lag(&r.stdout) > before, "lag must grow with unconsumed WAL: {before} -> {v}");
    assert!(v["checkpoint"]["position"].as_u64().unwrap() > 0);
    assert_eq!(v["checkpoint"]["tables"]["public.good"]["snapshot"], "done");
    assert_eq!(v["checkpoint"]["tables"]["public.good"]["snapshot_rows"], 100);
    assert_eq!(v["source"]["slot_exists"], true);
    let r = sluice(&["status", ps]).await;
    assert!(r.stdout.contains("public.good") && r.stdout.contains("lag"), "{}", r.stdout);

    let r = sluice(&["teardown", ps, "--yes"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("dropped replication slot sluice_cli"));
    assert!(r.stdout.contains("dropped publication sluice_cli"));
    let n: i64 = c.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    let n: i64 = c.query_one("SELECT count(*) FROM pg_publication", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    let r = sluice(&["status", ps, "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["checkpoint"].is_null());
}

/// The slot's confirmed position follows the checkpoint, also when the
/// changes are in tables the pipeline does not include (no WAL pinned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_filtered_changes_advance_the_slot() {
    let env = Env::new("idle");
    let c = env.client().await;
    c.batch_execute("CREATE TABLE mine (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);").await.unwrap();
    let p = env.pipeline("idle", &["public.mine"], &env.files_sink("idle", "jsonl"), "");
    catch_up(&p).await;
    c.batch_execute("INSERT INTO other SELECT generate_series(1, 10000)").await.unwrap();
    let before: String =
        c.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots", &[]).await.unwrap().get(0);
    let end: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    catch_up(&p).await;
    let lsn = |s: &str| sluice_core::event::parse_lsn(s).unwrap();
    // The server applies confirmations asynchronously: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let after: String =
            c.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots", &[]).await.unwrap().get(0);
        if lsn(&after) >= lsn(&end) || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(lsn(&after) > lsn(&before), "slot did not advance: {before} -> {after}");
    assert!(lsn(&after) >= lsn(&end), "slot {after} behind the end {end} noted before catching up");
    assert!(completed_files(&env.out("idle").join("public.mine"), "jsonl").is_empty());
}

/// A table dropped from the configuration and added back later is copied
/// again: its changes while it was out are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_removed_and_added_back_is_copied_again() {
    let env = Env::new("readd");
    let c = env.client().await;
    c.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b VALUES (1, 'one');")
        .await
        .unwrap();
    let sink = env.files_sink("readd", "jsonl");
    let both = env.pipeline("readd", &["public.a", "public.b"], &sink, "");
    catch_up(&both).await;
    let only_a = env.pipeline("readd", &["public.a"], &sink, "");
    c.batch_execute("INSERT INTO a VALUES (1); INSERT INTO b VALUES (2, 'while out'); UPDATE b SET v = 'changed while out' WHERE id = 1;")
        .await
        .unwrap();
    catch_up(&only_a).await;
    let both = env.pipeline("readd", &["public.a", "public.b"], &sink, "");
    c.batch_execute("INSERT INTO b VALUES (3, 'before the copy')").await.unwrap();
    catch_up(&both).await;
    // And it streams again after the new copy.
    c.batch_execute("INSERT INTO b VALUES (4, 'streamed'); DELETE FROM b WHERE id = 2;").await.unwrap();
    catch_up(&both).await;
    let out = read_jsonl(&env.out("readd"));
    // The second copy replaces the first: replay from the last snapshot of b.
    let evs = &out["public.b"];
    let copy_lsn = |e: &Event| if e.op == "r" { e.raw["source"]["lsn"].as_u64() } else { None };
    let last = evs.iter().rev().find_map(copy_lsn).unwrap();
    let first = evs.iter().find_map(copy_lsn).unwrap();
    assert_ne!(first, last, "b was not copied again");
    let start = evs.iter().position(|e| copy_lsn(e) == Some(last)).unwrap();
    let got = replay(&evs[start..], &["id"]).unwrap();
    let want = source_rows(&c, "SELECT to_json(x) FROM b x", &["id"]).await;
    assert_same("b", &got, &want);
}
