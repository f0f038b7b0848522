//! Kafka sink: change events as Debezium-style messages, exactly once
//! without broker transactions.
//!
//! Invariants:
//! - Every message this pipeline produces gets the next number of one
//!   sequence (`sluice.seq` header, with the run's `sluice.epoch`). The
//!   checkpoint stores the sequence number reached, and is only written after
//!   delivery reports for every message before it. Replaying from a
//!   checkpoint yields the same messages in the same order (same source
//!   changes, same encoding, same partition from the key), so each gets the
//!   same number again.
//! - On start, the last messages of each partition a message is about to go
//!   to are read back once; a replayed message whose number is at or below
//!   the highest number of its epoch already in its partition is skipped.
//!   With the idempotent producer a partition holds a gap-free prefix of what
//!   was sent to it, so nothing is lost and nothing is written twice.
//! - Snapshot rows go through the on-disk spool (see [`spool`]), never
//!   straight to a topic.
//! - `delivery: at_least_once` skips nothing on replay; `transactional` wraps
//!   each checkpoint interval in a Kafka transaction (and still skips).
//! - Backpressure: a full producer queue makes `write` wait; memory does not grow.

pub mod avro;
pub mod encode;
mod probe;
pub mod spool;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::json;
use sluice_core::config::{yaml_scalar_text, KafkaDelivery, KafkaKey, KafkaSinkConfig};
use sluice_core::event::format_lsn;
use sluice_core::{ChangeEvent, Checkpoint, ErrorKind, EventPosition, Sink, SinkError, TableId, TableSchema};

use encode::{partition_for, topic_for, Encoder, Msg};
use spool::{SpoolReader, SpoolWriter};

pub use probe::check;

/// Delivery bookkeeping shared with librdkafka's callback thread.
#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// The first delivery error: (topic, error).
    error: Mutex<Option<(String, KafkaError)>>,
}

struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(target: "librdkafka", "{fac}: {msg}")
            }
            _ => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.shared.delivered.fetch_add(1, Ordering::Release);
            }
            Err((e, m)) => {
                let mut g = self.shared.error.lock().unwrap_or_else(|p| p.into_inner());
                if g.is_none() {
                    *g = Some((m.topic().to_string(), e.clone()));
                }
                drop(g);
                self.shared.failed.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// Errors the broker will keep returning: stop instead of retrying.
fn permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TransactionalIdAuthorizationFailed
            | InvalidRecord
            | InvalidMessage
            | InvalidMessageSize
            | InvalidTopic
            | UnknownTopic
            | SaslAuthenticationFailed
            | Authentication
            | PolicyViolation
            | UnsupportedForMessageFormat
            | MessageBatchTooLarge
    )
}

fn kafka_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// A topic this run writes to.
struct TopicState {
    partitions: i32,
    /// Highest sequence number of this epoch already in each partition.
    written: Vec<u64>,
}

/// Per-table routing, cached.
struct Route {
    topic: String,
    schema: Arc<TableSchema>,
}

/// A finished snapshot spool recorded in (or about to be recorded in) the checkpoint.
#[derive(Debug, Clone)]
struct SpoolRef {
    table: String,
    file: String,
    records: u64,
}

/// The open stream transaction, for transaction metadata.
struct OpenTx {
    id: String,
    commit: EventPosition,
    /// Header text of `commit` (`sluice.position` of BEGIN and END).
    position: String,
    ts_ms: i64,
    counts: Vec<(TableId, u64)>,
}

pub struct KafkaSink {
    cfg: KafkaSinkConfig,
    pipeline: String,
    spool_dir: PathBuf,
    shared: Arc<Shared>,
    producer: Option<Arc<ThreadedProducer<Ctx>>>,
    probe: Option<probe::Probe>,
    encoder: Encoder,
    epoch: u64,
    seq: u64,
    produced: u64,
    skipped: u64,
    since_flush: u64,
    topics: HashMap<String, TopicState>,
    routes: HashMap<TableId, Route>,
    snapshotting: HashMap<TableId, SpoolWriter>,
    /// Spools finished at the last flush: produced once that checkpoint is durable.
    ready: Vec<SpoolRef>,
    /// Spools produced since the last flush: deleted after the next checkpoint.
    published: Vec<SpoolRef>,
    delete_after_checkpoint: Vec<SpoolRef>,
    in_kafka_tx: bool,
    open_tx: Option<OpenTx>,
    msgs: Vec<Msg>,
    spool_seq: u64,
    /// False until a checkpoint holds this run's epoch: nothing may be
    /// produced before (a crash would start another epoch and repeat it).
    epoch_saved: bool,
    registry: Option<avro::Registry>,
    /// `sluice.unchanged` for the next message (Avro values only).
    unchanged_header: String,
    /// The last transaction's id text, by commit position.
    tx_text: (EventPosition, String),
}

impl KafkaSink {
    /// `state_dir`: the pipeline's checkpoint directory (snapshot spools live below it).
    pub fn new(cfg: KafkaSinkConfig, pipeline: &str, state_dir: &Path) -> Self {
        let encoder = Encoder::new(cfg.format, cfg.key == KafkaKey::PrimaryKey, cfg.tombstones);
        KafkaSink {
            cfg,
            pipeline: pipeline.to_string(),
            spool_dir: state_dir.join("kafka-spool"),
            shared: Arc::new(Shared::default()),
            producer: None,
            probe: None,
            encoder,
            epoch: 0,
            seq: 0,
            produced: 0,
            skipped: 0,
            since_flush: 0,
            topics: HashMap::new(),
            routes: HashMap::new(),
            snapshotting: HashMap::new(),
            ready: Vec::new(),
            published: Vec::new(),
            delete_after_checkpoint: Vec::new(),
            in_kafka_tx: false,
            open_tx: None,
            msgs: Vec::new(),
            spool_seq: 0,
            epoch_saved: false,
            registry: None,
            unchanged_header: String::new(),
            tx_text: (EventPosition::default(), String::new()),
        }
    }

    fn producer(&self) -> &ThreadedProducer<Ctx> {
        self.producer.as_ref().expect("open() creates the producer")
    }

    /// Route of a table (topic resolved and prepared on first use).
    async fn route(&mut self, table: &Arc<TableSchema>) -> Result<String, SinkError> {
        if let Some(r) = self.routes.get(&table.id) {
            if Arc::ptr_eq(&r.schema, table) {
                return Ok(r.topic.clone());
            }
        }
        let topic = topic_for(&self.cfg.topic, table);
        self.prepare_topic(&topic, self.cfg.partitions).await?;
        self.routes.insert(table.id.clone(), Route { topic: topic.clone(), schema: table.clone() });
        Ok(topic)
    }

    /// Register a table's Avro schemas (first use, and after column changes).
    async fn ensure_avro(&mut self, table: &Arc<TableSchema>, topic: &str, mysql: bool) -> Result<(), SinkError> {
        if !self.encoder.needs_avro(table) {
            return Ok(());
        }
        if self.registry.is_none() {
            let url = self.cfg.schema_registry.clone().unwrap_or_default();
            self.registry = Some(avro::Registry::new(&url)?);
        }
        let reg = self.registry.as_ref().expect("set above");
        let name = table.id.to_string();
        let value_json = avro::value_schema(table, topic, mysql);
        let value_id = reg.register(&format!("{topic}-value"), &value_json, &name).await?;
        let key = match (self.cfg.key, avro::key_schema(table, topic)) {
            (KafkaKey::PrimaryKey, Some(k)) => {
                let id = reg.register(&format!("{topic}-key"), &k, &name).await?;
                Some((avro::parse(&k)?, id))
            }
            _ => None,
        };
        tracing::info!(table = %table.id, subject = %format!("{topic}-value"), id = value_id, "Avro schema registered");
        self.encoder.set_avro(encode::AvroTable {
            schema: table.clone(),
            key,
            value: (avro::parse(&value_json)?, value_id),
        });
        Ok(())
    }

    /// Make sure `topic` exists and learn what this epoch already wrote to it.
    async fn prepare_topic(&mut self, topic: &str, partitions: i32) -> Result<(), SinkError> {
        if self.topics.contains_key(topic) {
            return Ok(());
        }
        let probe = self.probe.as_ref().expect("open() creates the probe");
        let n = probe.ensure_topic(topic, self.cfg.create_topics, partitions, self.cfg.replication_factor).await?;
        let written = if self.cfg.delivery == KafkaDelivery::AtLeastOnce {
            vec![0; n as usize]
        } else {
            probe.written(topic, n, self.epoch, &self.pipeline).await?
        };
        if written.iter().any(|w| *w > self.seq) {
            tracing::info!(topic, "messages after the checkpoint are already in the topic; skipping them on replay");
        }
        self.topics.insert(topic.to_string(), TopicState { partitions: n, written });
        Ok(())
    }

    /// Produce one message as the next in the sequence (or skip it when this
    /// epoch already wrote it to its partition).
    async fn send(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        position: &str,
        tx: &str,
    ) -> Result<(), SinkError> {
        if !self.epoch_saved {
            return Err(SinkError::fatal("internal: a Kafka message before the first checkpoint"));
        }
        self.seq += 1;
        let seq = self.seq;
        let unchanged = std::mem::take(&mut self.unchanged_header);
        let state = self.topics.get(topic).expect("topic prepared before sending");
        if state.written.get(partition as usize).is_some_and(|w| seq <= *w) {
            self.skipped += 1;
            return Ok(());
        }
        if self.cfg.delivery == KafkaDelivery::Transactional && !self.in_kafka_tx {
            self.producer().begin_transaction().map_err(|e| kafka_err("cannot begin a Kafka transaction", e))?;
            self.in_kafka_tx = true;
        }
        let mut seq_buf = itoa::Buffer::new();
        let mut epoch_buf = itoa::Buffer::new();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header { key: "sluice.position", value: Some(position) })
            .insert(Header { key: "sluice.tx", value: Some(tx) })
            .insert(Header { key: "sluice.seq", value: Some(seq_buf.format(seq)) })
            .insert(Header { key: "sluice.epoch", value: Some(epoch_buf.format(self.epoch)) });
        let headers = if unchanged.is_empty() {
            headers
        } else {
            headers.insert(Header { key: "sluice.unchanged", value: Some(unchanged.as_str()) })
        };
        let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic).partition(partition).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        let mut waited: Option<Instant> = None;
        loop {
            match self.producer.as_ref().expect("open").send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.check_failed()?;
                    let since = *waited.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        tracing::warn!(topic, "the producer queue has been full for 30 s: the broker is slow or down");
                        waited = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    let kind = match kafka_code(&e) {
                        Some(c) if permanent(c) => ErrorKind::Fatal,
                        _ => ErrorKind::Transient,
                    };
                    return Err(SinkError::new(kind, format!("cannot produce to topic {topic}: {e}")).with_source(e));
                }
            }
        }
        self.produced += 1;
        self.since_flush += 1;
        Ok(())
    }

    fn check_failed(&self) -> Result<(), SinkError> {
        if self.shared.failed.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let g = self.shared.error.lock().unwrap_or_else(|p| p.into_inner());
        let (topic, e) = g.clone().unwrap_or_else(|| (String::new(), KafkaError::Canceled));
        let table = self.routes.values().find(|r| r.topic == topic).map(|r| r.schema.id.to_string());
        let what = match &table {
            Some(t) => format!("topic {topic} (table {t})"),
            None => format!("topic {topic}"),
        };
        let kind = match kafka_code(&e) {
            Some(c) if permanent(c) => ErrorKind::Fatal,
            _ => ErrorKind::Transient,
        };
        let hint = match kafka_code(&e) {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
                "; raise the topic's max.message.bytes and producer.message.max.bytes, or exclude the column"
            }
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => "; grant the user WRITE and DESCRIBE on the topic",
            _ => "",
        };
        Err(SinkError::new(kind, format!("delivery to {what} failed: {e}{hint}")))
    }

    /// Wait for delivery reports of everything produced so far.
    async fn wait_delivered(&self) -> Result<(), SinkError> {
        let mut since = Instant::now();
        loop {
            self.check_failed()?;
            let done = self.shared.delivered.load(Ordering::Acquire);
            if done >= self.produced {
                return Ok(());
            }
            if since.elapsed() > Duration::from_secs(30) {
                tracing::warn!(
                    pending = self.produced - done,
                    "still waiting for delivery reports after 30 s: the broker is slow or down"
                );
                since = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Transaction metadata: END of the open transaction.
    async fn end_tx(&mut self) -> Result<(), SinkError> {
        let Some(tx) = self.open_tx.take() else { return Ok(()) };
        let Some(topic) = self.cfg.transaction_topic.clone() else { return Ok(()) };
        let total: u64 = tx.counts.iter().map(|(_, n)| n).sum();
        let collections: Vec<_> =
            tx.counts.iter().map(|(t, n)| json!({"data_collection": t.to_string(), "event_count": n})).collect();
        let value = json!({"status": "END", "id": tx.id, "event_count": total, "data_collections": collections, "ts_ms": tx.ts_ms});
        let key = json!({"id": tx.id});
        let pos = tx.position;
        self.send(&topic, 0, Some(key.to_string().as_bytes()), Some(value.to_string().as_bytes()), &pos, &tx.id).await
    }

    async fn begin_tx(&mut self, ev: &ChangeEvent, tx: &str) -> Result<(), SinkError> {
        if self.cfg.transaction_topic.is_none() {
            return Ok(());
        }
        if self.open_tx.as_ref().is_some_and(|t| t.commit == ev.commit_position) {
            return Ok(());
        }
        self.end_tx().await?;
        let topic = self.cfg.transaction_topic.clone().expect("checked");
        self.prepare_topic(&topic, 1).await?;
        let ts_ms = ev.commit_ts_us.div_euclid(1000);
        let value = json!({"status": "BEGIN", "id": tx, "event_count": null, "data_collections": null, "ts_ms": ts_ms});
        let key = json!({"id": tx});
        let pos = commit_position_text(ev);
        self.send(&topic, 0, Some(key.to_string().as_bytes()), Some(value.to_string().as_bytes()), &pos, tx).await?;
        self.open_tx =
            Some(OpenTx { id: tx.to_string(), commit: ev.commit_position, position: pos, ts_ms, counts: Vec::new() });
        Ok(())
    }

    /// Produce a finished spool's messages (after the checkpoint naming it is durable).
    async fn publish_spool(&mut self, s: &SpoolRef) -> Result<(), SinkError> {
        let path = self.spool_dir.join(&s.file);
        if s.records == 0 {
            return Ok(());
        }
        let mut r = SpoolReader::open(&path)?;
        let mut n = 0u64;
        while let Some(rec) = r.next_record()? {
            self.prepare_topic(&rec.topic, self.cfg.partitions).await?;
            self.send(&rec.topic, rec.partition, rec.key.as_deref(), rec.value.as_deref(), &rec.position, &rec.tx)
                .await?;
            n += 1;
        }
        if n != s.records {
            return Err(SinkError::fatal(format!(
                "snapshot spool {} holds {n} messages, the checkpoint says {}; copy table {} again",
                path.display(),
                s.records,
                s.table
            )));
        }
        tracing::info!(table = %s.table, messages = n, "snapshot published");
        Ok(())
    }

    fn remove_spool(&self, s: &SpoolRef) {
        let _ = std::fs::remove_file(self.spool_dir.join(&s.file));
    }
}

fn kafka_err(what: &str, e: KafkaError) -> SinkError {
    SinkError::new(ErrorKind::Transient, format!("{what}: {e}")).with_source(e)
}

/// An event's position, as header text (`sluice.position`).
fn event_position(ev: &ChangeEvent) -> String {
    match &ev.mysql {
        Some(m) => format!("{}:{}:{}", m.file, m.pos, m.row),
        None => format_lsn(ev.position.lsn()),
    }
}

/// The commit position of an event's transaction, as header text of its
/// BEGIN and END messages: the commit LSN, or MySQL `file:pos` of the
/// transaction's start.
fn commit_position_text(ev: &ChangeEvent) -> String {
    match &ev.mysql {
        Some(m) => format!("{}:{}", m.file, binlog_offset(ev.commit_position)),
        None => format_lsn(ev.commit_position.lsn()),
    }
}

/// The offset of a binlog coordinate (0 for an LSN).
fn binlog_offset(p: EventPosition) -> u64 {
    match p {
        EventPosition::Binlog { offset, .. } => offset,
        EventPosition::Lsn(_) => 0,
    }
}

/// An event's transaction id, as header text (`sluice.tx`).
fn event_tx(ev: &ChangeEvent) -> String {
    match (&ev.mysql, ev.tx_id) {
        (Some(m), _) => match m.gtid {
            sluice_core::EventGtid::None => format!("{}:{}", m.file, binlog_offset(ev.commit_position)),
            g => g.to_string(),
        },
        (None, Some(x)) => format!("{x}:{}", ev.commit_position.lsn()),
        (None, None) => ev.commit_position.lsn().to_string(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// librdkafka settings for this sink (producer side).
pub(crate) fn client_config(cfg: &KafkaSinkConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.trim());
    c.set("socket.connection.setup.timeout.ms", "10000");
    match (&cfg.tls, &cfg.sasl) {
        (Some(_), Some(_)) => c.set("security.protocol", "sasl_ssl"),
        (Some(_), None) => c.set("security.protocol", "ssl"),
        (None, Some(_)) => c.set("security.protocol", "sasl_plaintext"),
        (None, None) => c.set("security.protocol", "plaintext"),
    };
    if let Some(t) = &cfg.tls {
        if let Some(ca) = &t.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
            c.set("ssl.certificate.location", cert.display().to_string());
            c.set("ssl.key.location", key.display().to_string());
        }
        c.set("ssl.endpoint.identification.algorithm", if t.verify_hostname { "https" } else { "none" });
    }
    if let Some(s) = &cfg.sasl {
        c.set("sasl.mechanism", &s.mechanism);
        c.set("sasl.username", &s.username);
        c.set("sasl.password", &s.password);
    }
    c
}

fn producer_config(cfg: &KafkaSinkConfig, pipeline: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    // Defaults a user may override through `producer:`.
    c.set("linger.ms", "5");
    c.set("queue.buffering.max.kbytes", "65536");
    c.set("queue.buffering.max.messages", "100000");
    c.set("message.timeout.ms", "120000");
    c.set("compression.type", "none");
    // Exactly-once rests on these; `delivery: at_least_once` may weaken them
    // through `producer:` (validation refuses that for the other modes).
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    for (k, v) in &cfg.producer {
        c.set(k, yaml_scalar_text(v));
    }
    if cfg.delivery == KafkaDelivery::Transactional {
        c.set("transactional.id", format!("sluice-{pipeline}"));
    }
    c
}

fn state_u64(state: Option<&serde_json::Value>, key: &str) -> Option<u64> {
    state.and_then(|s| s.get(key)).and_then(|v| v.as_u64())
}

impl Sink for KafkaSink {
    async fn open(&mut self, state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let ctx = Ctx { shared: self.shared.clone() };
        let producer: ThreadedProducer<Ctx> =
            producer_config(&self.cfg, &self.pipeline).create_with_context(ctx).map_err(|e| {
                SinkError::new(ErrorKind::Config, format!("sink: cannot create the Kafka producer: {e}")).with_source(e)
            })?;
        let producer = Arc::new(producer);
        if self.cfg.delivery == KafkaDelivery::Transactional {
            let p = producer.clone();
            tokio::task::spawn_blocking(move || p.init_transactions(Duration::from_secs(30)))
                .await
                .map_err(|e| SinkError::fatal(format!("transaction setup task failed: {e}")))?
                .map_err(|e| kafka_err("cannot initialise Kafka transactions (does the broker support them?)", e))?;
        }
        self.producer = Some(producer);
        self.probe = Some(probe::Probe::new(&self.cfg, &self.pipeline)?);
        self.epoch = state_u64(state, "epoch").unwrap_or_else(|| now_ms() as u64);
        self.epoch_saved = state_u64(state, "epoch").is_some();
        self.seq = state_u64(state, "seq").unwrap_or(0);
        let spools: Vec<SpoolRef> = state
            .and_then(|s| s.get("spools"))
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some(SpoolRef {
                    table: s.get("table")?.as_str()?.to_string(),
                    file: s.get("file")?.as_str()?.to_string(),
                    records: s.get("records")?.as_u64()?,
                })
            })
            .collect();
        // Spool files the checkpoint does not name are garbage.
        let keep: HashSet<&str> = spools.iter().map(|s| s.file.as_str()).collect();
        if let Ok(dir) = std::fs::read_dir(&self.spool_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.contains(name.as_str()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        self.spool_seq = state_u64(state, "spool_seq").unwrap_or(0);
        for s in &spools {
            self.publish_spool(s).await?;
        }
        self.published = spools;
        Ok(())
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        let now = now_ms();
        for ev in events {
            let topic = self.route(&ev.table).await?;
            let position = event_position(ev);
            // One transaction id text per transaction, not per event.
            if self.tx_text.0 != ev.commit_position || self.tx_text.1.is_empty() {
                self.tx_text = (ev.commit_position, event_tx(ev));
            }
            let tx = std::mem::take(&mut self.tx_text.1);
            let mut msgs = std::mem::take(&mut self.msgs);
            msgs.clear();
            self.ensure_avro(&ev.table, &topic, ev.mysql.is_some()).await?;
            self.encoder.encode(ev, &topic, now, &mut msgs)?;
            let partitions = self.topics[&topic].partitions;
            if ev.snapshot {
                let w = self.snapshotting.entry(ev.table.id.clone()).or_insert_with(|| {
                    self.spool_seq += 1;
                    SpoolWriter::new(self.spool_dir.join(format!("{:08}.spool", self.spool_seq)))
                });
                for m in &msgs {
                    let p = partition_for(m.key.as_deref(), partitions);
                    w.append(&topic, p, m.key.as_deref(), m.value.as_deref(), &position, &tx)?;
                }
                self.msgs = msgs;
                self.tx_text.1 = tx;
                continue;
            }
            if let Some(w) = self.snapshotting.get(&ev.table.id) {
                if w.records > 0 {
                    return Err(SinkError::fatal(format!(
                        "internal: a change of {} arrived before its snapshot was complete",
                        ev.table.id
                    )));
                }
                self.snapshotting.remove(&ev.table.id);
            }
            self.begin_tx(ev, &tx).await?;
            for m in &msgs {
                let p = partition_for(m.key.as_deref(), partitions);
                if m.value.is_some() {
                    self.unchanged_header.clone_from(&m.unchanged);
                }
                self.send(&topic, p, m.key.as_deref(), m.value.as_deref(), &position, &tx).await?;
            }
            if let Some(open) = &mut self.open_tx {
                match open.counts.iter_mut().find(|(t, _)| *t == ev.table.id) {
                    Some((_, n)) => *n += 1,
                    None => open.counts.push((ev.table.id.clone(), 1)),
                }
            }
            self.msgs = msgs;
            self.tx_text.1 = tx;
        }
        Ok(())
    }

    async fn snapshot_started(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        // A copy started again within this run: what was staged is stale.
        if let Some(w) = self.snapshotting.remove(&schema.id) {
            let path = w.path().to_path_buf();
            drop(w);
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.since_flush >= 50_000 || !self.epoch_saved
    }

    fn has_unflushed(&self) -> bool {
        !self.epoch_saved || self.since_flush > 0 || !self.snapshotting.is_empty() || self.open_tx.is_some()
    }

    fn max_flush_delay(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// A copy is produced from its spool once a checkpoint names the spool;
    /// the table's stream changes must come after it in the topic.
    fn checkpoint_after_copy(&self) -> bool {
        true
    }

    /// Finished snapshot spools are produced in `checkpointed`.
    fn wrote_after_checkpoint(&self) -> bool {
        self.since_flush > 0
    }

    async fn flush(&mut self, hold: &HashSet<TableId>, _next: &Checkpoint) -> Result<serde_json::Value, SinkError> {
        self.end_tx().await?;
        // Finish the spools of tables whose copy is complete.
        let done: Vec<TableId> = self.snapshotting.keys().filter(|t| !hold.contains(*t)).cloned().collect();
        let mut finished = Vec::new();
        for t in done {
            let w = self.snapshotting.remove(&t).expect("listed above");
            let file = w.path().file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            let records = w.finish()?;
            if records > 0 {
                finished.push(SpoolRef { table: t.to_string(), file, records });
            }
        }
        if self.in_kafka_tx {
            let p = self.producer.clone().expect("open");
            tokio::task::spawn_blocking(move || p.commit_transaction(Duration::from_secs(60)))
                .await
                .map_err(|e| SinkError::fatal(format!("transaction commit task failed: {e}")))?
                .map_err(|e| kafka_err("cannot commit the Kafka transaction", e))?;
            self.in_kafka_tx = false;
        }
        self.wait_delivered().await?;
        self.since_flush = 0;
        self.delete_after_checkpoint.append(&mut self.published);
        let spools: Vec<_> =
            finished.iter().map(|s| json!({"table": s.table, "file": s.file, "records": s.records})).collect();
        self.ready = finished;
        Ok(json!({"epoch": self.epoch, "seq": self.seq, "spool_seq": self.spool_seq, "spools": spools}))
    }

    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        self.epoch_saved = true;
        for s in std::mem::take(&mut self.delete_after_checkpoint) {
            self.remove_spool(&s);
        }
        for s in std::mem::take(&mut self.ready) {
            self.publish_spool(&s).await?;
            self.published.push(s);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let topics = self.topics.len();
        if self.skipped > 0 {
            format!(
                "{} messages produced to {topics} Kafka topic(s), {} already there skipped",
                self.produced, self.skipped
            )
        } else {
            format!("{} messages produced to {topics} Kafka topic(s)", self.produced)
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Unflushed messages are covered by the checkpoint's replay; do not
        // wait for them.
        if let Some(p) = &self.producer {
            p.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
    }
}
