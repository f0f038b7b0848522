//! Protocol 2 streaming of large in-progress transactions: with a tiny
//! `logical_decoding_work_mem` the server streams transactions before they
//! commit; only committed work (minus rolled-back subtransactions) may
//! arrive, in commit order, exactly once.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_commit_abort_and_subtransactions() {
    let env = Env::with_settings("streaming", &[("logical_decoding_work_mem", "'64kB'")]);
    let c = env.client().await;
    c.batch_execute("CREATE TABLE s (id int PRIMARY KEY, v text, n int)").await.unwrap();
    let p = env.pipeline("streaming", &["public.s"], &env.files_sink("streaming", "jsonl"), "");
    catch_up(&p).await;

    // Committed, large: streamed in several blocks.
    c.batch_execute("INSERT INTO s SELECT g, repeat('x', 50), 0 FROM generate_series(1, 20000) g").await.unwrap();
    // Aborted, large: streamed, then discarded.
    c.batch_execute("BEGIN; INSERT INTO s SELECT g, 'aborted', 0 FROM generate_series(100001, 120000) g; ROLLBACK")
        .await
        .unwrap();
    // Committed with a rolled-back subtransaction in the middle, and updates/deletes.
    c.batch_execute(
        "BEGIN;
         INSERT INTO s SELECT g, 'kept', 1 FROM generate_series(20001, 30000) g;
         SAVEPOINT a;
         INSERT INTO s SELECT g, 'sub rolled back', 2 FROM generate_series(30001, 40000) g;
         UPDATE s SET v = 'sub rolled back' WHERE id <= 5000;
         ROLLBACK TO SAVEPOINT a;
         SAVEPOINT b;
         UPDATE s SET n = n + 10 WHERE id BETWEEN 5001 AND 15000;
         RELEASE SAVEPOINT b;
         DELETE FROM s WHERE id % 7 = 0;
         COMMIT",
    )
    .await
    .unwrap();
    // Two large transactions interleaved from two sessions; the later commit comes second.
    let c2 = env.client().await;
    c.batch_execute("BEGIN; INSERT INTO s SELECT g, 'first started', 3 FROM generate_series(50001, 60000) g")
        .await
        .unwrap();
    c2.batch_execute("BEGIN; INSERT INTO s SELECT g, 'second started', 4 FROM generate_series(60001, 70000) g")
        .await
        .unwrap();
    c.batch_execute("UPDATE s SET n = 33 WHERE id BETWEEN 50001 AND 50100").await.unwrap();
    c2.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();

    let r = catch_up(&p).await;
    assert!(r.stderr.contains("streaming=true") || r.stderr.contains("streaming: true"), "{}", r.stderr);
    // The server did stream (not spill) the large transactions to us. Its
    // statistics arrive asynchronously: wait for them.
    let sec = std::time::Duration::from_secs(1);
    wait_until(30 * sec, sec / 5, "expected streamed transactions", || async {
        let streamed: i64 = c
            .query_one("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'sluice_streaming'", &[])
            .await
            .unwrap()
            .get(0);
        if streamed >= 3 {
            Ok(())
        } else {
            Err(format!("server reports {streamed}"))
        }
    })
    .await;
    let out = read_jsonl(&env.out("streaming"));
    let evs = &out["public.s"];
    let text: String = evs.iter().map(|e| e.raw.to_string()).collect();
    assert!(!text.contains("aborted"), "aborted streamed transaction delivered");
    assert!(!text.contains("sub rolled back"), "rolled-back subtransaction delivered");
    // Commit order: the second session committed first.
    let first_of = |v: &str| evs.iter().position(|e| e.after.as_ref().map(|a| a["v"] == v).unwrap_or(false)).unwrap();
    assert!(first_of("second started") < first_of("first started"));
    let got = replay(evs, &["id"]).unwrap();
    let want = source_rows(&c, "SELECT to_json(x) FROM s x", &["id"]).await;
    assert_same("s", &got, &want);
}
