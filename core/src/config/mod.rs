//! The pipeline file: parsing, `${VAR}` substitution and validation.
//!
//! Parsing and validation are pure (no I/O beyond reading the file) and
//! report every problem at once; connecting happens later, in the
//! components. Unknown keys are errors that name the key and its line.
//!
//! Each component's types and their `validate` live together:
//! [`source`], [`sink`], [`transform`]; [`validate`] checks the pipeline as a
//! whole and calls them; [`yaml`] reads the text (`${VAR}` substitution, YAML
//! error locations, the transform list item by item).

use std::path::PathBuf;

use serde::Deserialize;

mod sink;
mod source;
#[cfg(test)]
mod tests;
mod transform;
mod validate;
mod yaml;

pub use sink::*;
pub use source::*;
pub use transform::*;
pub use validate::redact_url;
pub use yaml::{load_pipeline, parse_pipeline_text, parse_pipeline_text_with, substitute_env};

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
