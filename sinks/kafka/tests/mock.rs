//! The Kafka sink against librdkafka's built-in mock cluster (no broker to
//! install): produce and read back, exactly once across a simulated crash,
//! snapshot spools, delivery errors, a broker going down and coming back,
//! and the transactional call sequence.
//!
//! The mock's admin API does not answer, so topics are created with
//! `MockCluster::create_topic` and the sink runs with `create_topics: false`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_core::config::KafkaSinkConfig;
use sluice_core::testing::{self, col, key};
use sluice_core::{ChangeEvent, Checkpoint, ColumnType, ErrorKind, Op, Row, Sink, TableSchema, Value};
use sluice_sink_kafka::KafkaSink;

fn config(brokers: &str, extra: &str) -> KafkaSinkConfig {
    let yaml = format!(
        "brokers: \"{brokers}\"\ntopic: \"t.{{schema}}.{{table}}\"\ncreate_topics: false\nproducer:\n  message.timeout.ms: 3000\n{extra}"
    );
    serde_saphyr::from_str(&yaml).expect("valid sink config")
}

fn table() -> Arc<TableSchema> {
    Arc::new(testing::table("s", "items", vec![key("id", ColumnType::Int64), col("v", ColumnType::Text)]))
}

/// Transaction `tx` (commit position 1000 + tx) inserting row `id`.
fn insert(t: &Arc<TableSchema>, tx: u64, id: i64) -> ChangeEvent {
    ChangeEvent {
        op: Op::Create,
        table: t.clone(),
        before: None,
        after: Some(Row::new(vec![Value::Int(id), Value::Text(format!("v{id}"))])),
        commit_position: sluice_core::EventPosition::Lsn(1000 + tx),
        position: sluice_core::EventPosition::Lsn(1000 + tx),
        tx_id: Some(tx),
        commit_ts_us: 0,
        snapshot: false,
        mysql: None,
    }
}

fn snapshot_row(t: &Arc<TableSchema>, id: i64) -> ChangeEvent {
    ChangeEvent {
        op: Op::Read,
        snapshot: true,
        commit_position: sluice_core::EventPosition::Lsn(500),
        position: sluice_core::EventPosition::Lsn(500),
        tx_id: None,
        ..insert(t, 0, id)
    }
}

/// Every message of a topic: (partition, key, value, seq header).
fn read_all(brokers: &str, topic: &str, partitions: i32) -> Vec<(i32, Option<String>, Option<String>, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while eof.len() < partitions as usize {
        assert!(std::time::Instant::now() < deadline, "timed out reading {topic}");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let seq = m
                    .headers()
                    .and_then(|h| h.iter().find(|x| x.key == "sluice.seq").and_then(|x| x.value))
                    .map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap())
                    .expect("every message has sluice.seq");
                out.push((
                    m.partition(),
                    m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
                    seq,
                ));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}

fn ids(msgs: &[(i32, Option<String>, Option<String>, u64)]) -> Vec<i64> {
    let mut v: Vec<(u64, i64)> = msgs
        .iter()
        .filter_map(|(_, _, v, seq)| {
            let v: serde_json::Value = serde_json::from_str(v.as_ref()?).unwrap();
            Some((*seq, v["after"]["id"].as_i64()?))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, id)| id).collect()
}

async fn flush(sink: &mut KafkaSink) -> serde_json::Value {
    let state = sink.flush(&HashSet::new(), &Checkpoint::new("p")).await.expect("flush");
    sink.checkpointed().await.expect("checkpointed");
    state
}

fn state_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-kafka-mock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_crash_writes_nothing_twice() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t.s.items", 4, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let cfg = config(&brokers, "");
    let dir = state_dir("replay");
    let t = table();

    // Run 1: a snapshot of 20 rows and 10 transactions, checkpointed; then 10
    // more delivered but not checkpointed (the crash).
    let mut a = KafkaSink::new(cfg.clone(), "p", &dir);
    a.open(None).await.unwrap();
    flush(&mut a).await; // the first checkpoint records the epoch
    a.snapshot_started(&t).await.unwrap();
    let snap: Vec<ChangeEvent> = (1..=20).map(|i| snapshot_row(&t, i)).collect();
    a.write(&snap).await.unwrap();
    assert!(read_all(&brokers, "t.s.items", 4).is_empty(), "snapshot rows wait for their checkpoint");
    let state = flush(&mut a).await;
    let evs: Vec<ChangeEvent> = (1..=10).map(|i| insert(&t, i, 100 + i as i64)).collect();
    a.write(&evs).await.unwrap();
    let state = {
        // The spools published after the first checkpoint are delivered by the second.
        let s = flush(&mut a).await;
        assert!(s["spools"].as_array().unwrap().is_empty());
        assert!(state["spools"].as_array().unwrap().len() == 1);
        s
    };
    let more: Vec<ChangeEvent> = (11..=20).map(|i| insert(&t, i, 100 + i as i64)).collect();
    a.write(&more).await.unwrap();
    let _ = a.flush(&HashSet::new(), &Checkpoint::new("p")).await.unwrap(); // delivered, checkpoint not saved
    drop(a);

    // Run 2 resumes from the saved state: the same 10 again, then 5 new.
    let mut b = KafkaSink::new(cfg.clone(), "p", &dir);
    b.open(Some(&state)).await.unwrap();
    let replay: Vec<ChangeEvent> = (11..=25).map(|i| insert(&t, i, 100 + i as i64)).collect();
    b.write(&replay).await.unwrap();
    flush(&mut b).await;
    assert!(b.describe().contains("10 already there skipped"), "{}", b.describe());

    let msgs = read_all(&brokers, "t.s.items", 4);
    let mut want: Vec<i64> = (1..=20).collect();
    want.extend(101..=125);
    assert_eq!(ids(&msgs), want, "every row once, in order");
    let seqs: Vec<u64> = msgs.iter().map(|m| m.3).collect();
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), seqs.len(), "no sequence number twice");
    // All changes of one key in one partition, the partition of its key.
    for (p, k, _, _) in &msgs {
        let k = k.as_ref().expect("keyed");
        assert_eq!(*p, sluice_sink_kafka::encode::partition_for(Some(k.as_bytes()), 4));
    }
    assert!(msgs.iter().map(|m| m.0).collect::<HashSet<_>>().len() > 1, "spread over partitions");

    // at_least_once: the same replay writes duplicates.
    mock.create_topic("t2.s.items", 1, 1).unwrap();
    let cfg2 = config(&brokers, "delivery: at_least_once\n");
    let cfg2 = KafkaSinkConfig { topic: "t2.{schema}.{table}".into(), ..cfg2 };
    let dir2 = state_dir("alo");
    let mut c = KafkaSink::new(cfg2.clone(), "q", &dir2);
    c.open(None).await.unwrap();
    flush(&mut c).await; // the first checkpoint records the epoch
    c.write(&evs).await.unwrap();
    let s = flush(&mut c).await;
    c.write(&more).await.unwrap();
    let _ = c.flush(&HashSet::new(), &Checkpoint::new("q")).await.unwrap();
    drop(c);
    let mut d = KafkaSink::new(cfg2, "q", &dir2);
    d.open(Some(&s)).await.unwrap();
    d.write(&more).await.unwrap();
    flush(&mut d).await;
    assert_eq!(read_all(&brokers, "t2.s.items", 1).len(), 30);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_publishing_a_snapshot_resumes_it() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t.s.items", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let cfg = config(&brokers, "");
    let dir = state_dir("spool");
    let t = table();
    let mut a = KafkaSink::new(cfg.clone(), "p", &dir);
    a.open(None).await.unwrap();
    flush(&mut a).await; // the first checkpoint records the epoch
    a.snapshot_started(&t).await.unwrap();
    a.write(&(1..=1000).map(|i| snapshot_row(&t, i)).collect::<Vec<_>>()).await.unwrap();
    // The checkpoint naming the spool is durable; publishing starts and the process dies.
    let state = a.flush(&HashSet::new(), &Checkpoint::new("p")).await.unwrap();
    a.checkpointed().await.unwrap();
    drop(a);
    let mut b = KafkaSink::new(cfg, "p", &dir);
    b.open(Some(&state)).await.unwrap();
    b.write(&[insert(&t, 1, 5000)]).await.unwrap();
    flush(&mut b).await;
    let msgs = read_all(&brokers, "t.s.items", 2);
    let mut want: Vec<i64> = (1..=1000).collect();
    want.push(5000);
    assert_eq!(ids(&msgs), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_errors_stop_or_retry() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t.s.items", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let t = table();

    // A permanent error names topic and table and is fatal.
    let dir = state_dir("err");
    let mut a = KafkaSink::new(config(&brokers, ""), "p", &dir);
    a.open(None).await.unwrap();
    flush(&mut a).await; // the first checkpoint records the epoch
    mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1]);
    a.write(&[insert(&t, 1, 1)]).await.unwrap();
    let e = a.flush(&HashSet::new(), &Checkpoint::new("p")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Fatal, "{e}");
    assert!(e.message.contains("t.s.items") && e.message.contains("s.items"), "{e}");
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    drop(a);

    // A broker that stays down past message.timeout.ms: transient (restart from the checkpoint).
    let mut b = KafkaSink::new(config(&brokers, ""), "p2", &dir);
    b.open(None).await.unwrap();
    flush(&mut b).await; // the first checkpoint records the epoch
    b.write(&[insert(&t, 1, 1)]).await.unwrap();
    flush(&mut b).await;
    mock.broker_down(1).unwrap();
    b.write(&[insert(&t, 2, 2)]).await.unwrap();
    let e = b.flush(&HashSet::new(), &Checkpoint::new("p")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    drop(b);

    // Down briefly: the producer retries and delivery completes.
    mock.broker_up(1).unwrap();
    let mut c = KafkaSink::new(config(&brokers, ""), "p3", &dir);
    c.open(None).await.unwrap();
    flush(&mut c).await; // the first checkpoint records the epoch
    c.write(&[insert(&t, 1, 7)]).await.unwrap();
    flush(&mut c).await;
    mock.broker_down(1).unwrap();
    c.write(&[insert(&t, 2, 8)]).await.unwrap();
    let up = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        mock.broker_up(1).unwrap();
    };
    tokio::join!(flush(&mut c), up);
    let got = ids(&read_all(&brokers, "t.s.items", 1));
    assert!(got.ends_with(&[7, 8]), "{got:?}");
    drop(mock);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_call_sequence() {
    // The mock accepts the transactional protocol (it ignores its semantics).
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t.s.items", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let dir = state_dir("txn");
    let t = table();
    let mut a = KafkaSink::new(config(&brokers, "delivery: transactional\n"), "p", &dir);
    a.open(None).await.unwrap();
    flush(&mut a).await; // the first checkpoint records the epoch
    for round in 0..3 {
        a.write(&[insert(&t, round, round as i64)]).await.unwrap();
        flush(&mut a).await;
    }
    assert_eq!(ids(&read_all(&brokers, "t.s.items", 1)), vec![0, 1, 2]);
    let _ = std::fs::remove_dir_all(&dir);
}
