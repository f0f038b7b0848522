//! Source settings (`source:`) and their validation.

use std::path::PathBuf;

use serde::Deserialize;

use super::validate::redact_url;

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

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl SourceConfig {
    /// Checks of `source:` (pure; every problem is pushed to `errs`).
    pub fn validate(&self, errs: &mut Vec<String>) {
        match self {
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
    }
}
