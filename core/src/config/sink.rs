//! Sink settings (`sink:`) and their validation.

use std::path::PathBuf;

use serde::Deserialize;

use super::validate::redact_url;
use super::TlsConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    Files(FilesSinkConfig),
    Postgres(DbSinkConfig),
    Mysql(DbSinkConfig),
    Kafka(KafkaSinkConfig),
    Blackhole {},
    Stdout {},
}

/// A replica database sink (`type: postgres` or `type: mysql`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSinkConfig {
    /// `postgres://user:password@host:port/db` or `mysql://user:password@host:port[/db]`.
    pub url: String,
    /// Put every table in this schema (MySQL: database); default: the source's schema (MySQL: database) name.
    pub schema: Option<String>,
    /// Create missing target tables from the source schema (default true).
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// Keep a column the source drops (new rows leave it NULL) instead of dropping it.
    #[serde(default)]
    pub keep_dropped_columns: bool,
    /// Schema of the `sluice_checkpoints` table (Postgres default `public`;
    /// MySQL: a database, default the URL's database, else `sluice`).
    pub checkpoint_schema: Option<String>,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_true() -> bool {
    true
}

/// The Kafka sink (`type: kafka`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic name template over `{schema}`, `{table}` and `{database}`
    /// (`{database}`: the MySQL database, or the Postgres database name).
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default)]
    pub format: KafkaFormat,
    /// Confluent Schema Registry base URL (required for `avro`).
    pub schema_registry: Option<String>,
    #[serde(default)]
    pub key: KafkaKey,
    #[serde(default)]
    pub delivery: KafkaDelivery,
    /// Follow every delete with a tombstone (same key, null value).
    #[serde(default = "default_true")]
    pub tombstones: bool,
    /// Topic for transaction BEGIN/END events (off when unset).
    pub transaction_topic: Option<String>,
    /// Create missing topics through the admin API (else a missing topic is an error).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics Sluice creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics Sluice creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// librdkafka producer settings, passed through (`compression.type: zstd`, `linger.ms: 20`, ...).
    #[serde(default)]
    pub producer: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub tls: Option<KafkaTlsConfig>,
    #[serde(default)]
    pub sasl: Option<KafkaSaslConfig>,
}

fn default_topic() -> String {
    "sluice.{schema}.{table}".into()
}
fn default_partitions() -> i32 {
    1
}
fn default_replication() -> i32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// Debezium's value payload (the JSONL event), no schema.
    #[default]
    Json,
    /// Debezium's `{"schema": ..., "payload": ...}` JSON converter format.
    JsonSchema,
    /// Avro through a Confluent Schema Registry (wire format: magic 0, schema id, Avro binary).
    Avro,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// The row's key columns (keyless tables: no key).
    #[default]
    PrimaryKey,
    /// No message key.
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaDelivery {
    /// Idempotent producer plus position headers: replays skip what is already in the topic.
    #[default]
    ExactlyOnce,
    /// Idempotent producer; a crash may repeat messages written after the last checkpoint.
    AtLeastOnce,
    /// Kafka transactions (one per checkpoint), for brokers that support them.
    Transactional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTlsConfig {
    /// PEM file with the CA certificate(s) to trust (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Check the broker's host name against its certificate (default true).
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

/// How much is applied per target transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Commit (at the next source transaction boundary) once this many rows are applied.
    #[serde(default = "default_batch_rows")]
    pub max_rows: u64,
    /// Longest time an applied change waits for its commit.
    #[serde(default = "default_batch_delay")]
    pub max_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_rows: default_batch_rows(), max_delay_ms: default_batch_delay() }
    }
}

fn default_batch_rows() -> u64 {
    10_000
}

fn default_batch_delay() -> u64 {
    200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Jsonl,
    Parquet,
    Arrow,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Parquet => "parquet",
            FileFormat::Arrow => "arrow",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSinkConfig {
    pub format: FileFormat,
    pub path: PathBuf,
    #[serde(default)]
    pub roll: RollConfig,
}

/// When a file is completed and a new one started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollConfig {
    #[serde(default = "default_roll_rows")]
    pub rows: u64,
    #[serde(default = "default_roll_bytes")]
    pub bytes: u64,
    #[serde(default = "default_roll_seconds")]
    pub seconds: u64,
}

impl Default for RollConfig {
    fn default() -> Self {
        RollConfig { rows: default_roll_rows(), bytes: default_roll_bytes(), seconds: default_roll_seconds() }
    }
}

fn default_roll_rows() -> u64 {
    1_000_000
}
fn default_roll_bytes() -> u64 {
    128 << 20
}
fn default_roll_seconds() -> u64 {
    10
}

impl SinkConfig {
    /// Checks of `sink:` (pure; every problem is pushed to `errs`).
    pub fn validate(&self, errs: &mut Vec<String>) {
        if let SinkConfig::Postgres(d) | SinkConfig::Mysql(d) = self {
            let url = d.url.trim();
            if matches!(self, SinkConfig::Postgres(_))
                && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('='))
            {
                errs.push(format!(
                    "sink.url: {:?} is not a Postgres connection string (postgres://user:password@host:port/db)",
                    redact_url(url)
                ));
            }
            if matches!(self, SinkConfig::Mysql(_)) && !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
                errs.push(format!(
                    "sink.url: {:?} is not a MySQL URL (mysql://user:password@host:port[/database])",
                    redact_url(url)
                ));
            }
            if d.batch.max_rows == 0 || d.batch.max_delay_ms == 0 {
                errs.push("sink.batch: max_rows and max_delay_ms must be positive".into());
            }
            for (key, v) in [("schema", &d.schema), ("checkpoint_schema", &d.checkpoint_schema)] {
                if v.as_deref().is_some_and(|v| v.is_empty() || v.len() > 63) {
                    errs.push(format!("sink.{key}: must be 1 to 63 characters"));
                }
            }
        }
        if let SinkConfig::Kafka(k) = self {
            validate_kafka(k, errs);
        }
        if let SinkConfig::Files(f) = self {
            if f.path.as_os_str().is_empty() {
                errs.push("sink.path: must not be empty".into());
            }
            if f.roll.rows == 0 || f.roll.bytes == 0 || f.roll.seconds == 0 {
                errs.push("sink.roll: rows, bytes and seconds must be positive".into());
            }
        }
    }
}

fn validate_kafka(k: &KafkaSinkConfig, errs: &mut Vec<String>) {
    if k.brokers.trim().is_empty() {
        errs.push("sink.brokers: list at least one broker (host:port)".into());
    }
    for (key, t) in [("topic", Some(&k.topic)), ("transaction_topic", k.transaction_topic.as_ref())] {
        let Some(t) = t else { continue };
        let mut rest = t.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                errs.push(format!("sink.{key}: {t:?} has an unclosed '{{'"));
                break;
            };
            let name = &rest[open + 1..open + close];
            if key == "transaction_topic" || !matches!(name, "schema" | "table" | "database") {
                errs.push(format!(
                    "sink.{key}: {t:?} uses {{{name}}}; {}",
                    if key == "topic" {
                        "the template knows {schema}, {table} and {database}"
                    } else {
                        "it takes no placeholders"
                    }
                ));
            }
            rest = &rest[open + close + 1..];
        }
        let plain: String = t.replace(['{', '}'], "");
        if t.is_empty()
            || t.len() > 249
            || !plain.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            errs.push(format!(
                "sink.{key}: {t:?} is not a valid topic name (1-249 characters of letters, digits, '.', '_', '-')"
            ));
        }
    }
    if k.format == KafkaFormat::Avro && k.schema_registry.is_none() {
        errs.push("sink.schema_registry: required for format: avro (the Confluent Schema Registry URL)".into());
    }
    if let Some(r) = &k.schema_registry {
        if !r.starts_with("http://") {
            errs.push(format!(
                "sink.schema_registry: {r:?} must be an http:// URL (https registries are not supported yet)"
            ));
        }
    }
    if k.partitions < 1 {
        errs.push(format!("sink.partitions: {} must be at least 1", k.partitions));
    }
    if k.replication_factor < 1 {
        errs.push(format!("sink.replication_factor: {} must be at least 1", k.replication_factor));
    }
    for (key, v) in &k.producer {
        let text =
            matches!(v, serde_json::Value::String(_) | serde_json::Value::Number(_) | serde_json::Value::Bool(_));
        if !text {
            errs.push(format!("sink.producer.{key}: must be a string, number or boolean"));
        }
        let owned = [
            "bootstrap.servers",
            "transactional.id",
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "sasl.password",
        ];
        if owned.contains(&key.as_str()) {
            errs.push(format!("sink.producer.{key}: set by Sluice (use brokers, delivery, tls and sasl instead)"));
        } else if k.delivery != KafkaDelivery::AtLeastOnce {
            if let Some(why) = weakens_delivery(key, &yaml_scalar_text(v)) {
                errs.push(format!(
                    "sink.producer.{key}: {} {why}, which exactly-once delivery needs; remove it, or set \
                     `delivery: at_least_once` to accept lost or repeated messages",
                    yaml_scalar_text(v)
                ));
            }
        }
    }
    if let Some(s) = &k.sasl {
        if !matches!(s.mechanism.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
            errs.push(format!(
                "sink.sasl.mechanism: {:?} is not supported (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                s.mechanism
            ));
        }
    }
    if let Some(t) = &k.tls {
        if t.cert_file.is_some() != t.key_file.is_some() {
            errs.push("sink.tls: cert_file and key_file go together".into());
        }
    }
}

/// Why a librdkafka producer setting weakens the idempotent, all-replica
/// acknowledged delivery Sluice's exactly-once modes rest on (None: it does not).
pub fn weakens_delivery(key: &str, value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    let int = v.parse::<i64>().ok();
    match key {
        "acks" | "request.required.acks" | "topic.request.required.acks" if !matches!(v.as_str(), "all" | "-1") => {
            Some("gives up the acknowledgement by all in-sync replicas (acks=all)")
        }
        "enable.idempotence" if !matches!(v.as_str(), "true" | "1") => {
            Some("turns off the idempotent producer (no duplicates, no reordering on retry)")
        }
        "max.in.flight.requests.per.connection" | "max.in.flight" if int.is_none_or(|n| n > 5) => {
            Some("allows more than 5 requests in flight, more than the idempotent producer keeps in order")
        }
        "retries" | "message.send.max.retries" if int == Some(0) => Some("turns off retries"),
        _ => None,
    }
}

/// A producer setting from the YAML file as the text librdkafka takes.
pub fn yaml_scalar_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}
