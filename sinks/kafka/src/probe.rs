//! Broker-side preparation: reachability, topics, and what a topic already holds.
//!
//! Invariants:
//! - Topics are created only when `create_topics` allows it; a missing topic
//!   otherwise is a configuration error naming it.
//! - [`Probe::written`] reports, per partition, the highest `sluice.seq` of
//!   the given epoch among the partition's last data messages (0 when the
//!   partition's last data message is not from this epoch). It reads only
//!   committed data (`read_committed`), stepping back over control records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaSinkConfig;
use sluice_core::{ErrorKind, SinkError};

const TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct Probe {
    consumer: Arc<BaseConsumer>,
    cfg: KafkaSinkConfig,
}

fn unreachable(cfg: &KafkaSinkConfig, e: KafkaError) -> SinkError {
    SinkError::new(
        ErrorKind::Transient,
        format!("cannot reach the Kafka brokers {}: {e} (check sink.brokers, tls and sasl)", cfg.brokers),
    )
    .with_source(e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::fatal(format!("Kafka client task failed: {e}")))
}

impl Probe {
    pub fn new(cfg: &KafkaSinkConfig, pipeline: &str) -> Result<Self, SinkError> {
        let consumer = Self::consumer(cfg, pipeline).map_err(|e| {
            SinkError::new(ErrorKind::Config, format!("sink: cannot create the Kafka client: {e}")).with_source(e)
        })?;
        Ok(Probe { consumer: Arc::new(consumer), cfg: cfg.clone() })
    }

    fn consumer(cfg: &KafkaSinkConfig, pipeline: &str) -> Result<BaseConsumer, KafkaError> {
        let mut c = crate::client_config(cfg);
        c.set("group.id", format!("sluice-{pipeline}-probe"));
        c.set("enable.auto.commit", "false");
        c.set("enable.partition.eof", "true");
        c.set("isolation.level", "read_committed");
        c.set("allow.auto.create.topics", "false");
        c.set("auto.offset.reset", "earliest");
        c.create()
    }

    /// Partition count of `topic`, `None` when it does not exist.
    async fn partitions(&self, topic: &str) -> Result<Option<i32>, SinkError> {
        let c = self.consumer.clone();
        let t = topic.to_string();
        let md = blocking(move || c.fetch_metadata(Some(&t), TIMEOUT)).await?.map_err(|e| unreachable(&self.cfg, e))?;
        let Some(mt) = md.topics().iter().find(|x| x.name() == topic) else { return Ok(None) };
        match mt.error() {
            None if !mt.partitions().is_empty() => Ok(Some(mt.partitions().len() as i32)),
            None => Ok(None),
            Some(e) => match RDKafkaErrorCode::from(e) {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => Ok(None),
                RDKafkaErrorCode::TopicAuthorizationFailed => Err(SinkError::fatal(format!(
                    "not authorized to describe topic {topic}; grant the Kafka user DESCRIBE and WRITE on it"
                ))),
                code => Err(SinkError::new(ErrorKind::Transient, format!("metadata of topic {topic}: {code}"))),
            },
        }
    }

    /// Make sure `topic` exists (creating it when allowed); its partition count.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        create: bool,
        partitions: i32,
        replication: i32,
    ) -> Result<i32, SinkError> {
        if let Some(n) = self.partitions(topic).await? {
            return Ok(n);
        }
        if !create {
            return Err(SinkError::new(
                ErrorKind::Config,
                format!("Kafka topic {topic} does not exist; create it, or set sink.create_topics: true"),
            ));
        }
        let admin: AdminClient<DefaultClientContext> = crate::client_config(&self.cfg)
            .create()
            .map_err(|e| SinkError::fatal(format!("cannot create the Kafka admin client: {e}")))?;
        let nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
        let res = admin.create_topics([&nt], &opts).await.map_err(|e| unreachable(&self.cfg, e))?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed)) => {
                    return Err(SinkError::fatal(format!(
                        "not authorized to create Kafka topic {topic}; create it yourself or grant CREATE"
                    )))
                }
                Err((_, code)) => {
                    return Err(SinkError::fatal(format!("cannot create Kafka topic {topic}: {code}")));
                }
            }
        }
        tracing::info!(topic, partitions, replication, "created Kafka topic");
        let start = Instant::now();
        loop {
            if let Some(n) = self.partitions(topic).await? {
                return Ok(n);
            }
            if start.elapsed() > TIMEOUT {
                return Err(SinkError::new(
                    ErrorKind::Transient,
                    format!("topic {topic} was created but does not show up"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Per partition: the highest sequence number of `epoch` among its last
    /// data messages (0 when none).
    pub async fn written(
        &self,
        topic: &str,
        partitions: i32,
        epoch: u64,
        pipeline: &str,
    ) -> Result<Vec<u64>, SinkError> {
        let (t, p) = (topic.to_string(), pipeline.to_string());
        let cfg = self.cfg.clone();
        blocking(move || last_seqs(&cfg, &p, &t, partitions, epoch).map_err(|e| unreachable(&cfg, e))).await?
    }
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    let h = m.headers()?;
    h.iter().find(|x| x.key == key).and_then(|x| x.value)
}

fn parse_u64(b: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(b?).ok()?.parse().ok()
}

/// Per partition, the highest `sluice.seq` of `epoch` among its last data
/// messages. The end of each partition is taken from the fetch (partition
/// EOF), not from the listed high watermark alone: some Kafka-compatible
/// brokers (tansu 0.6) under-report it for multi-record batches, so the
/// window only ever starts earlier than needed.
fn last_seqs(
    cfg: &KafkaSinkConfig,
    pipeline: &str,
    topic: &str,
    partitions: i32,
    epoch: u64,
) -> Result<Vec<u64>, KafkaError> {
    // A fresh consumer per topic: no events of an earlier assignment linger.
    let c = Probe::consumer(cfg, pipeline)?;
    let mut out = vec![0u64; partitions as usize];
    let mut window = 64i64;
    let mut todo: Vec<(i32, i64, i64)> = Vec::new();
    for p in 0..partitions {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        if high > low {
            todo.push((p, low, high));
        }
    }
    while !todo.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, low, high) in &todo {
            tpl.add_partition_offset(topic, *p, Offset::Offset((high - window).max(*low)))?;
        }
        c.assign(&tpl)?;
        // Per partition: (reached the end, saw any data, seq of the latest data message if ours).
        let mut state: std::collections::HashMap<i32, (bool, bool, Option<u64>)> =
            todo.iter().map(|(p, _, _)| (*p, (false, false, None))).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while state.values().any(|s| !s.0) {
            if Instant::now() > deadline {
                return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut));
            }
            match c.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(s) = state.get_mut(&p) {
                        s.0 = true;
                    }
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    if m.topic() != topic {
                        continue;
                    }
                    if let Some(s) = state.get_mut(&m.partition()) {
                        let ours = parse_u64(header(&m, "sluice.epoch")) == Some(epoch);
                        // Only the latest data message decides: a later message of
                        // another epoch means this epoch wrote nothing after it.
                        s.1 = true;
                        s.2 = if ours { parse_u64(header(&m, "sluice.seq")) } else { None };
                    }
                }
            }
        }
        c.unassign()?;
        let mut again = Vec::new();
        for (p, low, high) in todo {
            let (_, any, seq) = state[&p];
            if any || high - window <= low {
                out[p as usize] = seq.unwrap_or(0);
            } else {
                // Only control records in the window: look further back.
                again.push((p, low, high));
            }
        }
        todo = again;
        window = window.saturating_mul(16);
    }
    Ok(out)
}

/// Start-up check: the brokers answer and the producer settings are valid.
pub async fn check(cfg: &KafkaSinkConfig) -> Result<(), SinkError> {
    let _: rdkafka::producer::BaseProducer = crate::producer_config(cfg, "check").create().map_err(|e| {
        SinkError::new(ErrorKind::Config, format!("sink.producer: librdkafka refuses the settings: {e}")).with_source(e)
    })?;
    let probe = Probe::new(cfg, "check")?;
    let c = probe.consumer.clone();
    let md = blocking(move || c.fetch_metadata(None, TIMEOUT)).await?;
    match md {
        Ok(m) if !m.brokers().is_empty() => Ok(()),
        Ok(_) => Err(SinkError::fatal(format!("the Kafka brokers {} reported no brokers", cfg.brokers))),
        Err(e) => Err(SinkError::fatal(format!(
            "cannot reach the Kafka brokers {}: {e} (check sink.brokers, tls and sasl)",
            cfg.brokers
        ))),
    }
}
