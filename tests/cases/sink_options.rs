//! Documented options no other test sets: the files sink's `roll.bytes`,
//! the Postgres source's `streaming: false`, and the Kafka sink's
//! `key: none`. Each is checked by what it does to the data, and the data
//! is replayed against the source.

use crate::harness::kafka::{read_topics, Tansu};
use crate::harness::*;

const ROWS: &str = "SELECT json_build_object('id', id, 'v', v) FROM r";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_bytes() {
    let env = Env::new("rollbytes");
    let c = env.client().await;
    c.batch_execute("CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 3000) g")
        .await
        .unwrap();
    let limit = 64 * 1024;
    let sink = format!("{}  roll:\n    bytes: {limit}\n", env.files_sink("rollbytes", "jsonl"));
    let p = env.pipeline("rollbytes", &["public.r"], &sink, "");
    catch_up(&p).await;
    c.batch_execute("UPDATE r SET v = v || '!' WHERE id % 3 = 0; DELETE FROM r WHERE id % 10 = 0").await.unwrap();
    catch_up(&p).await;
    let files = completed_files(&env.out("rollbytes").join("public.r"), "jsonl");
    let sizes: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).collect();
    // ~4,000 events of ~400 bytes: far more than one file's worth.
    assert!(files.len() >= 10, "expected the byte limit to roll files: {sizes:?}");
    let longest_line = files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(|l| l.len() as u64 + 1).collect::<Vec<_>>())
        .max()
        .unwrap();
    for (f, size) in files.iter().zip(&sizes) {
        assert!(*size < limit + longest_line, "{} has {size} bytes, the limit is {limit}", f.display());
    }
    let out = read_jsonl(&env.out("rollbytes"));
    assert_same("rolled files", &replay(&out["public.r"], &["id"]).unwrap(), &source_rows(&c, ROWS, &["id"]).await);
}

/// With `streaming: false` a transaction larger than
/// `logical_decoding_work_mem` is spilled by the server and sent whole at
/// its commit, never streamed; the output is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streaming_false_spills_instead() {
    let env = Env::with_settings("nostream", &[("logical_decoding_work_mem", "'64kB'")]);
    let c = env.client().await;
    c.batch_execute("CREATE TABLE r (id int PRIMARY KEY, v text)").await.unwrap();
    let p = env.pipeline("nostream", &["public.r"], &env.files_sink("nostream", "jsonl"), "");
    let yaml =
        std::fs::read_to_string(&p).unwrap().replace("  type: postgres\n", "  type: postgres\n  streaming: false\n");
    std::fs::write(&p, yaml).unwrap();
    catch_up(&p).await;
    c.batch_execute(
        "BEGIN; INSERT INTO r SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g; \
         UPDATE r SET v = 'u' WHERE id % 5 = 0; DELETE FROM r WHERE id % 11 = 0; COMMIT",
    )
    .await
    .unwrap();
    c.batch_execute("BEGIN; INSERT INTO r SELECT g, 'aborted' FROM generate_series(100001, 120000) g; ROLLBACK")
        .await
        .unwrap();
    let r = catch_up(&p).await;
    let sec = std::time::Duration::from_secs(1);
    wait_until(30 * sec, sec / 5, "the server to report spilled transactions", || async {
        let row = c
            .query_one(
                "SELECT stream_txns, spill_txns FROM pg_stat_replication_slots WHERE slot_name = 'sluice_nostream'",
                &[],
            )
            .await
            .unwrap();
        let (streamed, spilled): (i64, i64) = (row.get(0), row.get(1));
        match (streamed, spilled) {
            (0, s) if s >= 1 => Ok(()),
            (0, _) => Err("nothing spilled yet".to_string()),
            (n, _) => panic!("streaming: false, yet the server streamed {n} transactions:\n{}", r.stderr),
        }
    })
    .await;
    let out = read_jsonl(&env.out("nostream"));
    let evs = &out["public.r"];
    assert!(evs.iter().all(|e| !e.raw.to_string().contains("aborted")), "rolled-back rows arrived");
    assert_same("unstreamed", &replay(evs, &["id"]).unwrap(), &source_rows(&c, ROWS, &["id"]).await);
}

/// `key: none`: messages carry no key (so no tombstones either), and their
/// values still replay to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_key_none() {
    let env = Env::new("kafkanokey");
    let kafka = Tansu::start();
    let c = env.client().await;
    c.batch_execute("CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        .await
        .unwrap();
    let sink = format!(
        "  type: kafka\n  brokers: {}\n  topic: \"nk.{{table}}\"\n  key: none\n  partitions: 1\n",
        kafka.brokers()
    );
    let p = env.pipeline("nk", &["public.r"], &sink, "");
    catch_up(&p).await;
    c.batch_execute("UPDATE r SET v = 'u' WHERE id % 4 = 0; DELETE FROM r WHERE id % 9 = 0; UPDATE r SET id = id + 1000 WHERE id = 7")
        .await
        .unwrap();
    catch_up(&p).await;
    let msgs = read_topics(&kafka.brokers(), "nk.");
    // 500 snapshot rows, 125 updates, 55 deletes, and the key change as a
    // delete and a create: 682 messages, none keyed, none a tombstone.
    assert_eq!(msgs.len(), 682, "{msgs:?}");
    assert!(msgs.iter().all(|m| m.key.is_none() && m.raw_key.is_none()), "a message has a key");
    assert!(msgs.iter().all(|m| m.value.is_some()), "a tombstone without a key");
    let out = super::kafka::decode(&msgs, None);
    assert_same("key: none", &replay(&out["public.r"], &["id"]).unwrap(), &source_rows(&c, ROWS, &["id"]).await);
}
