//! The transform stage's steps as the pipeline file names them, and their
//! validation (expressions are compiled later, by `sluice-transforms`).

use serde::Deserialize;

use super::glob_match;

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

impl TransformConfig {
    /// Checks of transform step `i` (pure; every problem is pushed to `errs`).
    pub fn validate(&self, i: usize, errs: &mut Vec<String>) {
        let t = self;
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
                (None, None) => {
                    errs.push(format!("{at}: give include: [columns to keep] or exclude: [columns to drop]"))
                }
                (Some(l), None) if l.is_empty() => {
                    errs.push(format!("{at}.include: keeps no column; list at least one"))
                }
                _ => {}
            },
            TransformConfig::Mask(m) => {
                if m.columns.is_empty() {
                    errs.push(format!("{at}.columns: list the columns to mask"));
                }
                match MaskMethod::parse(&m.with) {
                    None => errs.push(format!(
                        "{at}.with: {:?} is not a mask; use sha256, redact, null or keep_last(N)",
                        m.with
                    )),
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
                        errs.push(format!(
                            "{at}.skip: {s:?} is not an operation; use insert, update, delete or truncate"
                        ));
                    }
                }
            }
        }
    }
}
