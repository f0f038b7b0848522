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
        let mut c = crate::client_config(cfg);
        c.set("group.id", format!("sluice-{pipeline}-probe"));
        c.set("enable.auto.commit", "false");
        c.set("enable.partition.eof", "true");
        c.set("isolation.level", "read_committed");
        c.set("allow.auto.create.topics", "false");
        c.set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = c.create().map_err(|e| {
            SinkError::new(ErrorKind::Config, format!("sink: cannot create the Kafka client: {e}")).with_source(e)
        })?;
        Ok(Probe { consumer: Arc::new(consumer), cfg: cfg.clone() })
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
        let c = self.consumer.clone();
        let (t, p) = (topic.to_string(), pipeline.to_string());
        let cfg = self.cfg.clone();
        blocking(move || -> Result<Vec<u64>, SinkError> {
            let mut out = Vec::with_capacity(partitions as usize);
            for part in 0..partitions {
                out.push(last_seq(&c, &t, part, epoch, &p).map_err(|e| unreachable(&cfg, e))?);
            }
            Ok(out)
        })
        .await?
    }
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    let h = m.headers()?;
    h.iter().find(|x| x.key == key).and_then(|x| x.value)
}

fn parse_u64(b: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(b?).ok()?.parse().ok()
}

/// The highest `sluice.seq` of `epoch` among the last data messages of one partition.
fn last_seq(c: &BaseConsumer, topic: &str, partition: i32, epoch: u64, pipeline: &str) -> Result<u64, KafkaError> {
    let (low, high) = c.fetch_watermarks(topic, partition, TIMEOUT)?;
    if high <= low {
        return Ok(0);
    }
    let mut window = 8i64;
    loop {
        let start = (high - window).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
        c.assign(&tpl)?;
        let mut best: Option<u64> = None;
        let mut any_data = false;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if Instant::now() > deadline {
                c.unassign()?;
                return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut));
            }
            match c.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    c.unassign()?;
                    return Err(e);
                }
                Some(Ok(m)) => {
                    any_data = true;
                    let ours = parse_u64(header(&m, "sluice.epoch")) == Some(epoch)
                        && header(&m, "sluice.pipeline") == Some(pipeline.as_bytes());
                    let seq = if ours { parse_u64(header(&m, "sluice.seq")) } else { None };
                    // Only the latest data message decides: a later message of
                    // another epoch means this epoch wrote nothing after it.
                    best = seq;
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
            }
        }
        c.unassign()?;
        if any_data || start == low {
            return Ok(best.unwrap_or(0));
        }
        window *= 16;
    }
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
