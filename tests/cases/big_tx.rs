//! A one-million-row transaction passes through with bounded memory.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction() {
    let env = Env::new("bigtx");
    let c = env.client().await;
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)").await.unwrap();
    let p = env.pipeline(
        "bigtx",
        &["public.big"],
        &format!("{}  roll:\n    rows: 200000\n", env.files_sink("bigtx", "jsonl")),
        "",
    );
    catch_up(&p).await;
    c.batch_execute("INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 1000000) g").await.unwrap();
    let r = catch_up(&p).await;
    let rss: u64 = r
        .stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in output: {}", r.stderr));
    assert!(rss < 300, "peak RSS {rss} MB for a 1M-row transaction");
    let dir = env.out("bigtx").join("public.big");
    let files = completed_files(&dir, "jsonl");
    assert_eq!(files.len(), 5, "1M rows rolled every 200k rows: {files:?}");
    let mut n = 0u64;
    let mut sum = 0u64;
    let mut txids = std::collections::HashSet::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["op"], "c");
            n += 1;
            sum += v["after"]["id"].as_u64().unwrap();
            txids.insert(v["source"]["txId"].as_u64().unwrap());
        }
    }
    assert_eq!(n, 1_000_000);
    assert_eq!(sum, 1_000_000 * 1_000_001 / 2);
    assert_eq!(txids.len(), 1);
}

/// The same through the MySQL source: one transaction of a million rows
/// (many rows events) streams through with bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_million_row_transaction() {
    let env = MyEnv::new("mybigtx");
    env.sql("CREATE DATABASE shop; CREATE TABLE shop.big (id INT PRIMARY KEY, v TEXT)");
    let p = env.pipeline(
        "mybigtx",
        &["shop.big"],
        &format!("{}  roll:\n    rows: 200000\n", env.files_sink("mybigtx", "jsonl")),
        "",
    );
    catch_up(&p).await;
    env.sql("USE shop; INSERT INTO big SELECT seq, CONCAT('row ', seq) FROM seq_1_to_1000000");
    let r = catch_up(&p).await;
    let rss: u64 = r
        .stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in output: {}", r.stderr));
    assert!(rss < 300, "peak RSS {rss} MB for a 1M-row transaction");
    let files = completed_files(&env.out("mybigtx").join("shop.big"), "jsonl");
    assert_eq!(files.len(), 5, "1M rows rolled every 200k rows: {files:?}");
    let (mut n, mut sum) = (0u64, 0u64);
    let mut gtids = std::collections::HashSet::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["op"], "c");
            n += 1;
            sum += v["after"]["id"].as_u64().unwrap();
            gtids.insert(v["source"]["gtid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(n, 1_000_000);
    assert_eq!(sum, 1_000_000 * 1_000_001 / 2);
    assert_eq!(gtids.len(), 1, "one source transaction, one GTID");
}
