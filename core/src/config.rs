//! The pipeline file: parsing, `${VAR}` substitution and validation.
//!
//! Parsing and validation are pure (no I/O beyond reading the file) and
//! report every problem at once; connecting happens later, in the
//! components. Unknown keys are errors that name the key and its line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// All configuration problems found in a pipeline file.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub file: String,
    pub errors: Vec<String>,
}

impl ConfigError {
    fn render(&self) -> String {
        if self.errors.len() == 1 {
            format!("invalid pipeline {}: {}", self.file, self.errors[0])
        } else {
            let mut s = format!("invalid pipeline {} ({} problems):", self.file, self.errors.len());
            for e in &self.errors {
                s.push_str("\n  - ");
                s.push_str(e);
            }
            s
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub version: u32,
    pub name: String,
    pub source: SourceConfig,
    pub tables: TablesConfig,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    pub sink: SinkConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// The filter and transform stage, applied in order (see `sluice-transforms`).
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
}

/// One step of the transform stage. In YAML a one-key map: `- filter: {...}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keep rows matching a SQL boolean expression.
    Filter(FilterConfig),
    /// Keep or drop columns.
    Columns(ColumnsConfig),
    /// Replace column values before any sink sees them.
    Mask(MaskConfig),
    /// Rename tables (sink tables, Kafka topics, file directories) and columns.
    Rename(RenameConfig),
    /// Drop whole kinds of changes.
    Ops(OpsConfig),
}

impl TransformConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            TransformConfig::Filter(_) => "filter",
            TransformConfig::Columns(_) => "columns",
            TransformConfig::Mask(_) => "mask",
            TransformConfig::Rename(_) => "rename",
            TransformConfig::Ops(_) => "ops",
        }
    }
    /// The `tables:` globs (every table when left out).
    pub fn tables(&self) -> &[String] {
        match self {
            TransformConfig::Filter(c) => &c.tables,
            TransformConfig::Columns(c) => &c.tables,
            TransformConfig::Mask(c) => &c.tables,
            TransformConfig::Rename(c) => &c.tables,
            TransformConfig::Ops(c) => &c.tables,
        }
    }
    /// Does this step apply to the source table `schema.table`?
    pub fn applies_to(&self, schema: &str, table: &str) -> bool {
        let full = format!("{schema}.{table}");
        self.tables().iter().any(|g| glob_match(g, &full))
    }
}

fn all_tables() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    /// A SQL boolean expression over the row's columns.
    #[serde(rename = "where")]
    pub condition: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnsConfig {
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    pub columns: Vec<String>,
    /// `sha256`, `redact`, `null` or `keep_last(N)` (YAML's bare `null` too).
    #[serde(deserialize_with = "null_as_text")]
    pub with: String,
    /// Appended to the value before hashing (`sha256` only).
    pub salt: Option<String>,
}

/// A string where YAML's bare `null` means the word `null`.
fn null_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(|| "null".to_string()))
}

/// A parsed `mask.with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskMethod {
    /// Lower-case hex SHA-256 of the value's text form followed by the salt.
    Sha256,
    /// The constant [`REDACTED`].
    Redact,
    /// NULL.
    Null,
    /// Every character but the last N replaced by `*`.
    KeepLast(usize),
}

/// What `mask: {with: redact}` writes.
pub const REDACTED: &str = "****";

impl MaskMethod {
    pub fn parse(s: &str) -> Option<MaskMethod> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "sha256" => Some(MaskMethod::Sha256),
            "redact" => Some(MaskMethod::Redact),
            "null" => Some(MaskMethod::Null),
            _ => {
                let n = t.strip_prefix("keep_last(")?.strip_suffix(')')?;
                n.trim().parse().ok().map(MaskMethod::KeepLast)
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    /// New name, a template over `{schema}` and `{table}`: `analytics.{table}`
    /// (schema and table) or `{table}_v2` (table only, schema kept).
    pub to: Option<String>,
    /// Column renames: `{old: new}`.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    /// Kinds of changes to drop: `insert`, `update`, `delete`, `truncate`
    /// (or Debezium's `c`, `u`, `d`, `t`).
    pub skip: Vec<String>,
}

/// A change kind named in `ops.skip`.
pub fn parse_op_name(s: &str) -> Option<crate::event::Op> {
    use crate::event::Op;
    match s.trim().to_ascii_lowercase().as_str() {
        "insert" | "create" | "c" => Some(Op::Create),
        "update" | "u" => Some(Op::Update),
        "delete" | "d" => Some(Op::Delete),
        "truncate" | "t" => Some(Op::Truncate),
        _ => None,
    }
}

/// Render a rename template for `schema.table`: the new table name and, when
/// the template has a `schema.` part, the new schema.
pub fn render_table_template(template: &str, schema: &str, table: &str) -> (String, Option<String>) {
    let name = template.replace("{schema}", schema).replace("{table}", table);
    match name.split_once('.') {
        Some((s, t)) => (t.to_string(), Some(s.to_string())),
        None => (name, None),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    Postgres(PostgresSourceConfig),
    Mysql(MysqlSourceConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// `mysql://user:password@host:port` (a database path is allowed and ignored:
    /// tables are chosen by `tables.include`).
    pub url: String,
    /// Replica server id this pipeline registers with; default derived from
    /// the pipeline name. Must differ from every real replica's `server_id`.
    pub server_id: Option<u32>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// `postgres://user:password@host:port/db?sslmode=...` or `key=value` pairs.
    pub url: String,
    /// Replication slot; default `sluice_<name>`. Created if missing.
    pub slot: Option<String>,
    /// Publication; default `sluice_<name>`. Created if missing.
    pub publication: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Ask for protocol v2 `streaming` of in-progress transactions when the
    /// server supports it (default true).
    #[serde(default)]
    pub streaming: Option<bool>,
    /// Push column lists and row filters of the transform stage down into
    /// the publication where Postgres (15+) can apply them (default true).
    #[serde(default)]
    pub pushdown: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM file with the CA certificate(s) to trust (verify-ca/verify-full).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl TablesConfig {
    /// Does `schema.table` pass the include/exclude globs?
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        let full = format!("{schema}.{table}");
        self.include.iter().any(|g| glob_match(g, &full)) && !self.exclude.iter().any(|g| glob_match(g, &full))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    #[serde(default)]
    pub mode: SnapshotMode,
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig { mode: SnapshotMode::Initial, parallelism: default_parallelism() }
    }
}

fn default_parallelism() -> usize {
    4
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    #[default]
    Initial,
    Never,
}

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
    pub producer: std::collections::BTreeMap<String, serde_yaml::Value>,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the checkpoint file; default `.sluice/<name>`.
    pub path: Option<PathBuf>,
}

impl PipelineConfig {
    /// Default slot/publication name: `sluice_<name>` with the name lowered
    /// and anything but `[a-z0-9_]` turned into `_`.
    pub fn default_object_name(&self) -> String {
        let n: String =
            self.name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        format!("sluice_{n}")
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint.path.clone().unwrap_or_else(|| PathBuf::from(".sluice").join(&self.name))
    }

    /// The Postgres source settings, if the source is Postgres.
    pub fn postgres(&self) -> Option<&PostgresSourceConfig> {
        match &self.source {
            SourceConfig::Postgres(p) => Some(p),
            _ => None,
        }
    }

    /// The MySQL/MariaDB source settings, if the source is MySQL.
    pub fn mysql(&self) -> Option<&MysqlSourceConfig> {
        match &self.source {
            SourceConfig::Mysql(m) => Some(m),
            _ => None,
        }
    }

    pub fn slot_name(&self) -> String {
        self.postgres().and_then(|p| p.slot.clone()).unwrap_or_else(|| self.default_object_name())
    }

    pub fn publication_name(&self) -> String {
        self.postgres().and_then(|p| p.publication.clone()).unwrap_or_else(|| self.default_object_name())
    }

    /// The replica server id a MySQL pipeline registers with: the configured
    /// one, or one derived from the pipeline name (FNV-1a, in
    /// 1_000_000..=4_000_000_000 so it stays clear of small hand-picked ids).
    pub fn mysql_server_id(&self) -> u32 {
        if let Some(id) = self.mysql().and_then(|m| m.server_id) {
            return id;
        }
        let mut h: u32 = 0x811c_9dc5;
        for b in self.name.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        1_000_000 + h % 3_000_000_000
    }

    /// Pure validation: every problem, at once.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.version != 1 {
            errs.push(format!("version: unsupported version {} (this Sluice reads version 1)", self.version));
        }
        if self.name.is_empty() || self.name.len() > 50 {
            errs.push("name: must be 1 to 50 characters".into());
        } else if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            errs.push(format!("name: {:?} may only contain letters, digits, '_' and '-'", self.name));
        }
        match &self.source {
            SourceConfig::Postgres(pg) => {
                let url = pg.url.trim();
                if url.is_empty() {
                    errs.push("source.url: must not be empty".into());
                } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=')) {
                    errs.push(format!(
                        "source.url: {:?} is not a Postgres connection string (postgres://user:password@host:port/db)",
                        redact_url(url)
                    ));
                }
                for (key, v) in [("slot", &pg.slot), ("publication", &pg.publication)] {
                    if let Some(v) = v {
                        if !valid_slot_name(v) {
                            errs.push(format!(
                                "source.{key}: {v:?} must be 1-63 characters of lower-case letters, digits and '_'"
                            ));
                        }
                    }
                }
                if let Some(tls) = &pg.tls {
                    if matches!(tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && tls.ca_file.is_none() {
                        errs.push("source.tls.ca_file: required for verify-ca and verify-full".into());
                    }
                }
            }
            SourceConfig::Mysql(my) => {
                let url = my.url.trim();
                if url.is_empty() {
                    errs.push("source.url: must not be empty".into());
                } else if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
                    errs.push(format!(
                        "source.url: {:?} is not a MySQL URL (mysql://user:password@host:port)",
                        redact_url(url)
                    ));
                }
                if my.server_id == Some(0) {
                    errs.push("source.server_id: must be between 1 and 4294967295 (0 is reserved)".into());
                }
                if let Some(tls) = &my.tls {
                    if matches!(tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && tls.ca_file.is_none() {
                        errs.push("source.tls.ca_file: required for verify-ca and verify-full".into());
                    }
                }
            }
        }
        if self.tables.include.is_empty() {
            errs.push("tables.include: list at least one table glob (e.g. \"public.*\")".into());
        }
        for (key, globs) in [("include", &self.tables.include), ("exclude", &self.tables.exclude)] {
            for g in globs.iter() {
                if !g.contains('.') {
                    errs.push(format!("tables.{key}: {g:?} must be schema.table (globs allowed, e.g. \"public.*\")"));
                }
            }
        }
        if self.snapshot.parallelism == 0 || self.snapshot.parallelism > 64 {
            errs.push(format!("snapshot.parallelism: {} must be between 1 and 64", self.snapshot.parallelism));
        }
        if let SinkConfig::Postgres(d) | SinkConfig::Mysql(d) = &self.sink {
            let url = d.url.trim();
            if matches!(self.sink, SinkConfig::Postgres(_))
                && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('='))
            {
                errs.push(format!(
                    "sink.url: {:?} is not a Postgres connection string (postgres://user:password@host:port/db)",
                    redact_url(url)
                ));
            }
            if matches!(self.sink, SinkConfig::Mysql(_))
                && !(url.starts_with("mysql://") || url.starts_with("mariadb://"))
            {
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
        if let SinkConfig::Kafka(k) = &self.sink {
            validate_kafka(k, &mut errs);
        }
        for (i, t) in self.transforms.iter().enumerate() {
            validate_transform(i, t, &mut errs);
        }
        if let SinkConfig::Files(f) = &self.sink {
            if f.path.as_os_str().is_empty() {
                errs.push("sink.path: must not be empty".into());
            }
            if f.roll.rows == 0 || f.roll.bytes == 0 || f.roll.seconds == 0 {
                errs.push("sink.roll: rows, bytes and seconds must be positive".into());
            }
        }
        errs
    }
}

fn validate_transform(i: usize, t: &TransformConfig, errs: &mut Vec<String>) {
    let at = format!("transforms[{i}].{}", t.kind());
    if t.tables().is_empty() || t.tables().iter().any(|g| g.trim().is_empty()) {
        errs.push(format!(
            "{at}.tables: list one or more table globs (schema.table), or leave the key out for every table"
        ));
    }
    match t {
        TransformConfig::Filter(f) => {
            if f.condition.trim().is_empty() {
                errs.push(format!("{at}.where: must be a SQL boolean expression, e.g. \"status <> 'test'\""));
            }
        }
        TransformConfig::Columns(c) => match (&c.include, &c.exclude) {
            (Some(_), Some(_)) => errs.push(format!("{at}: give include or exclude, not both")),
            (None, None) => errs.push(format!("{at}: give include: [columns to keep] or exclude: [columns to drop]")),
            (Some(l), None) if l.is_empty() => errs.push(format!("{at}.include: keeps no column; list at least one")),
            _ => {}
        },
        TransformConfig::Mask(m) => {
            if m.columns.is_empty() {
                errs.push(format!("{at}.columns: list the columns to mask"));
            }
            match MaskMethod::parse(&m.with) {
                None => errs
                    .push(format!("{at}.with: {:?} is not a mask; use sha256, redact, null or keep_last(N)", m.with)),
                Some(MaskMethod::Sha256) => {}
                Some(_) if m.salt.is_some() => {
                    errs.push(format!("{at}.salt: only sha256 takes a salt"));
                }
                Some(_) => {}
            }
        }
        TransformConfig::Rename(r) => {
            if r.to.is_none() && r.columns.is_empty() {
                errs.push(format!("{at}: give to: \"<template>\" and/or columns: {{old: new}}"));
            }
            if let Some(to) = &r.to {
                let rest = to.replace("{schema}", "").replace("{table}", "");
                if rest.contains('{') || rest.contains('}') {
                    errs.push(format!("{at}.to: {to:?} may only use the placeholders {{schema}} and {{table}}"));
                }
                let parts: Vec<&str> = to.split('.').collect();
                if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                    errs.push(format!("{at}.to: {to:?} must be \"table\" or \"schema.table\" (one dot at most)"));
                }
            }
            for (old, new) in &r.columns {
                if old.is_empty() || new.is_empty() {
                    errs.push(format!("{at}.columns: column names must not be empty"));
                }
            }
        }
        TransformConfig::Ops(o) => {
            if o.skip.is_empty() {
                errs.push(format!("{at}.skip: list the operations to drop (insert, update, delete, truncate)"));
            }
            for s in &o.skip {
                if parse_op_name(s).is_none() {
                    errs.push(format!("{at}.skip: {s:?} is not an operation; use insert, update, delete or truncate"));
                }
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
            matches!(v, serde_yaml::Value::String(_) | serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_));
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
pub fn yaml_scalar_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Hide the password in a connection URL for messages.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let creds = &rest[..at];
            if let Some(colon) = creds.find(':') {
                return format!("{}://{}:***{}", &url[..scheme_end], &creds[..colon], &rest[at..]);
            }
        }
    }
    url.to_string()
}

/// `*` matches any run of characters, `?` one character; nothing else is special.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Replace `${VAR}` (and `${VAR:-default}`) with environment values; `$$`
/// is a literal `$`. Returns every unset variable as an error.
pub fn substitute_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errs = Vec::new();
    let mut rest = text;
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let expr = &body[..end];
                    let (name, default) = match expr.split_once(":-") {
                        Some((n, d)) => (n, Some(d)),
                        None => (expr, None),
                    };
                    let offset = text.len() - rest.len() + i;
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        errs.push(format!("line {}: ${{{expr}}} is not a valid variable reference", line_of(offset)));
                    } else {
                        match lookup(name).or_else(|| default.map(str::to_string)) {
                            Some(v) => out.push_str(&v),
                            None => errs.push(format!(
                                "line {}: environment variable {name} is not set (referenced as ${{{name}}})",
                                line_of(offset)
                            )),
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    let offset = text.len() - rest.len() + i;
                    errs.push(format!("line {}: unterminated ${{ (missing '}}')", line_of(offset)));
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// Find the line of `key:` below the top-level `section:` (for messages).
fn locate_key(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut in_section = section.is_none();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(sec) = section {
            if indent == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
                in_section = trimmed.starts_with(&format!("{sec}:"));
                continue;
            }
        }
        if in_section {
            let t = trimmed.trim_start_matches("- ");
            if t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":")) {
                return Some(i + 1);
            }
        }
    }
    None
}

fn describe_serde_error(text: &str, section: Option<&str>, e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string();
    // serde_yaml only knows locations when parsing text; add the line of an
    // unknown key ourselves when we parsed a section from a Value.
    if e.location().is_none() {
        if let Some(start) = msg.find("unknown field `") {
            let rest = &msg[start + 15..];
            if let Some(end) = rest.find('`') {
                let key = rest[..end].to_string();
                if let Some(line) = locate_key(text, section, &key) {
                    msg = format!("{msg} (line {line})");
                }
            }
        }
    }
    match section {
        Some(s) => format!("{s}: {msg}"),
        None => msg,
    }
}

/// The `transforms:` list, item by item (each error names its item).
fn parse_transforms(map: &serde_yaml::Mapping, text: &str, errors: &mut Vec<String>) -> Vec<TransformConfig> {
    const KINDS: &str = "filter, columns, mask, rename, ops";
    let Some(v) = map.get("transforms") else { return Vec::new() };
    let items = match v {
        serde_yaml::Value::Null => return Vec::new(),
        serde_yaml::Value::Sequence(s) => s,
        _ => {
            errors.push(format!("transforms: must be a list of steps (- filter: ..., - mask: ...; kinds: {KINDS})"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (kind, body) = match item {
            serde_yaml::Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                (k.as_str().unwrap_or(""), v.clone())
            }
            _ => {
                errors.push(format!("transforms[{i}]: each step is a one-key mapping naming its kind ({KINDS})"));
                continue;
            }
        };
        if !["filter", "columns", "mask", "rename", "ops"].contains(&kind) {
            errors.push(format!("transforms[{i}]: unknown kind `{kind}`; expected one of {KINDS}"));
            continue;
        }
        fn body_of<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, serde_yaml::Error> {
            // `- ops:` with nothing under it is an empty mapping, not null.
            let v = if v.is_null() { serde_yaml::Value::Mapping(Default::default()) } else { v };
            serde_yaml::from_value(v)
        }
        let parsed = match kind {
            "filter" => body_of(body).map(TransformConfig::Filter),
            "columns" => body_of(body).map(TransformConfig::Columns),
            "mask" => body_of(body).map(TransformConfig::Mask),
            "rename" => body_of(body).map(TransformConfig::Rename),
            _ => body_of(body).map(TransformConfig::Ops),
        };
        match parsed {
            Ok(t) => out.push(t),
            Err(e) => {
                let msg = describe_serde_error(text, None, &e);
                errors.push(format!("transforms[{i}].{kind}: {msg}"));
            }
        }
    }
    out
}

/// Parse pipeline text (after substitution) into a config, reporting every
/// structural and semantic problem at once.
pub fn parse_pipeline_text(text: &str, file: &str) -> Result<PipelineConfig, ConfigError> {
    parse_pipeline_text_with(text, file, |k| std::env::var(k).ok())
}

/// As [`parse_pipeline_text`], with `${VAR}` looked up by `lookup`.
pub fn parse_pipeline_text_with(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigError> {
    let err = |errors: Vec<String>| ConfigError { file: file.to_string(), errors };
    let substituted = substitute_env(text, lookup).map_err(err)?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&substituted).map_err(|e| err(vec![format!("YAML syntax: {e}")]))?;
    let map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Err(err(vec!["the file is empty".into()])),
        _ => return Err(err(vec!["the top level must be a mapping of keys (version, name, source, ...)".into()])),
    };
    // Section by section, so that one bad section doesn't hide the others.
    let mut errors = Vec::new();
    const KNOWN: [&str; 8] = ["version", "name", "source", "tables", "snapshot", "sink", "checkpoint", "transforms"];
    for k in map.keys() {
        let key = k.as_str().unwrap_or("?");
        if !KNOWN.contains(&key) {
            let line = locate_key(&substituted, None, key).map(|l| format!(" (line {l})")).unwrap_or_default();
            errors.push(format!("unknown key `{key}`{line}; expected one of {}", KNOWN.join(", ")));
        }
    }
    for required in ["version", "name", "source", "tables", "sink"] {
        if !map.contains_key(required) {
            errors.push(format!("missing required key `{required}`"));
        }
    }
    fn section<T: serde::de::DeserializeOwned>(
        map: &serde_yaml::Mapping,
        key: &str,
        text: &str,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        let v = map.get(key)?;
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(describe_serde_error(text, Some(key), &e));
                None
            }
        }
    }
    let version: Option<u32> = section(&map, "version", &substituted, &mut errors);
    let name: Option<String> = section(&map, "name", &substituted, &mut errors);
    let source: Option<SourceConfig> = section(&map, "source", &substituted, &mut errors);
    let tables: Option<TablesConfig> = section(&map, "tables", &substituted, &mut errors);
    let snapshot: Option<SnapshotConfig> = section(&map, "snapshot", &substituted, &mut errors);
    let sink: Option<SinkConfig> = section(&map, "sink", &substituted, &mut errors);
    let checkpoint: Option<CheckpointConfig> = section(&map, "checkpoint", &substituted, &mut errors);
    let transforms = parse_transforms(&map, &substituted, &mut errors);
    if !errors.is_empty() {
        return Err(err(errors));
    }
    let cfg = PipelineConfig {
        version: version.expect("checked"),
        name: name.expect("checked"),
        source: source.expect("checked"),
        tables: tables.expect("checked"),
        snapshot: snapshot.unwrap_or_default(),
        sink: sink.expect("checked"),
        checkpoint: checkpoint.unwrap_or_default(),
        transforms,
    };
    let errors = cfg.validate();
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(err(errors))
    }
}

/// Read and parse a pipeline file.
pub fn load_pipeline(path: &Path) -> Result<PipelineConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: file.clone(), errors: vec![format!("cannot read the file: {e}")] })?;
    parse_pipeline_text(&text, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version: 1
name: orders
source:
  type: postgres
  url: postgres://u:${SLUICE_TEST_PW}@localhost:5432/db
tables:
  include: ["shop.*", "public.Odd Table"]
  exclude: ["shop.audit_*"]
sink:
  type: files
  format: jsonl
  path: ./out
"#;

    #[test]
    fn transforms_parse_and_validate() {
        let text = format!(
            "{GOOD}transforms:
  - filter:
      tables: [\"shop.orders\"]
      where: \"status <> 'test' AND amount >= 100\"
  - columns:
      tables: [\"shop.customers\"]
      exclude: [\"ssn\", \"internal_notes\"]
  - mask:
      tables: [\"shop.customers\"]
      columns: [\"email\", \"phone\"]
      with: sha256
      salt: ${{MASK_SALT}}
  - mask:
      columns: [card]
      with: keep_last(4)
  - mask:
      columns: [notes]
      with: null
  - rename:
      tables: [\"shop.*\"]
      to: \"analytics.{{table}}\"
      columns: {{amount: total}}
  - ops:
      tables: [\"shop.events\"]
      skip: [delete]
"
        );
        let cfg = parse_pipeline_text_with(&text, "t.yaml", |k| match k {
            "SLUICE_TEST_PW" => Some("pw".into()),
            "MASK_SALT" => Some("pepper".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.transforms.len(), 7);
        match &cfg.transforms[4] {
            TransformConfig::Mask(m) => assert_eq!(MaskMethod::parse(&m.with), Some(MaskMethod::Null)),
            other => panic!("{other:?}"),
        }
        match &cfg.transforms[2] {
            TransformConfig::Mask(m) => {
                assert_eq!(m.salt.as_deref(), Some("pepper"));
                assert_eq!(MaskMethod::parse(&m.with), Some(MaskMethod::Sha256));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.transforms[3].tables(), ["*".to_string()]);
        assert!(cfg.transforms[5].applies_to("shop", "x"));
        assert_eq!(render_table_template("analytics.{table}", "shop", "x"), ("x".into(), Some("analytics".into())));
        assert_eq!(render_table_template("{table}_v2", "shop", "x"), ("x_v2".into(), None));

        let bad = format!(
            "{GOOD}transforms:
  - filter: {{where: \"\"}}
  - columns: {{include: [a], exclude: [b]}}
  - mask: {{columns: [a], with: blur}}
  - rename: {{to: \"{{db}}.x\"}}
  - ops: {{skip: [upsert]}}
  - frobnicate: {{}}
  - mask: {{columns: [a], with: sha256, colour: red}}
"
        );
        let e = parse_pipeline_text_with(&bad, "t.yaml", |_| Some("pw".into())).unwrap_err().to_string();
        assert!(e.contains("transforms[5]: unknown kind `frobnicate`"), "{e}");
        assert!(e.contains("transforms[6].mask") && e.contains("colour"), "{e}");
        let bad = bad
            .replace("  - frobnicate: {}\n", "")
            .replace("  - mask: {columns: [a], with: sha256, colour: red}\n", "");
        let e = parse_pipeline_text_with(&bad, "t.yaml", |_| Some("pw".into())).unwrap_err().to_string();
        for want in [
            "transforms[0].filter.where",
            "transforms[1].columns: give include or exclude, not both",
            "transforms[2].mask.with: \"blur\"",
            "transforms[3].rename.to",
            "transforms[4].ops.skip: \"upsert\"",
        ] {
            assert!(e.contains(want), "{want} missing in {e}");
        }
    }

    #[test]
    fn kafka_producer_settings_may_weaken_only_at_least_once() {
        let kafka = |delivery: &str, producer: &str| {
            let text = GOOD.replace(
                "  type: files\n  format: jsonl\n  path: ./out\n",
                &format!("  type: kafka\n  brokers: b:9092\n  delivery: {delivery}\n  producer:\n{producer}"),
            );
            parse_pipeline_text_with(&text, "k.yaml", |_| Some("pw".into())).map_err(|e| e.to_string())
        };
        let weak = "    acks: 1\n    enable.idempotence: false\n    retries: 0\n";
        for delivery in ["exactly_once", "transactional"] {
            let e = kafka(delivery, weak).unwrap_err();
            for key in ["acks", "enable.idempotence", "retries"] {
                assert!(e.contains(&format!("sink.producer.{key}:")), "{key} missing in {e}");
            }
            kafka(delivery, "    acks: all\n    max.in.flight.requests.per.connection: 5\n    linger.ms: 50\n")
                .unwrap();
            kafka(delivery, "    acks: -1\n    enable.idempotence: true\n").unwrap();
        }
        kafka("at_least_once", weak).unwrap();
        assert!(kafka("at_least_once", "    bootstrap.servers: x\n").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("shop.*", "shop.orders"));
        assert!(glob_match("shop.audit_*", "shop.audit_log"));
        assert!(!glob_match("shop.audit_*", "shop.orders"));
        assert!(glob_match("public.Odd Table", "public.Odd Table"));
        assert!(glob_match("*.t?", "a.tx"));
        assert!(!glob_match("*.t?", "a.txy"));
    }

    #[test]
    fn parses_good_file() {
        let cfg =
            parse_pipeline_text_with(GOOD, "good.yaml", |k| (k == "SLUICE_TEST_PW").then(|| "secret".into())).unwrap();
        assert_eq!(cfg.slot_name(), "sluice_orders");
        assert_eq!(cfg.postgres().unwrap().url, "postgres://u:secret@localhost:5432/db");
        assert!(cfg.tables.matches("shop", "orders"));
        assert!(!cfg.tables.matches("shop", "audit_x"));
        assert!(cfg.tables.matches("public", "Odd Table"));
        assert_eq!(cfg.snapshot.parallelism, 4);
    }

    #[test]
    fn reports_every_error_with_lines() {
        let text = "version: 2\nname: x\nsource:\n  type: postgres\n  url: postgres://h/db\n  slott: a\ntables:\n  include: []\nsink:\n  type: files\n  format: csv\n  path: o\nextra: 1\n";
        let e = parse_pipeline_text(text, "bad.yaml").unwrap_err();
        let all = e.errors.join("\n");
        assert!(all.contains("unknown key `extra` (line 13)"), "{all}");
        assert!(all.contains("slott") && all.contains("line 6"), "{all}");
        assert!(all.contains("csv"), "{all}");
        assert!(e.errors.len() >= 3);
    }

    #[test]
    fn unset_variables_are_errors() {
        let e = substitute_env("a: ${NOPE_NOT_SET_X}\nb: ${ALSO_NOT_SET_Y}", |_| None).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[1].contains("line 2") && e[1].contains("ALSO_NOT_SET_Y"));
        assert_eq!(substitute_env("$${X} ${Y:-d}", |_| None).unwrap(), "${X} d");
    }
}
