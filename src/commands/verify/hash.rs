//! The comparison itself, free of I/O: every row is reduced to a canonical
//! encoding, hashed, and summed into buckets; two summaries are compared
//! bucket by bucket, and the rows of differing buckets key by key.
//!
//! Invariants:
//! - A value's canonical bytes depend only on the value as the source
//!   types it (replica values arrive here already parsed back into the
//!   source column's type), never on the engine it was read from, except
//!   where a MySQL target stores it differently ([`canonical`]).
//! - A row's bucket depends only on its key columns (all columns for a
//!   table without a usable key), so both sides put the same row in the
//!   same bucket.
//! - A bucket keeps a row count and a wrapping sum of row hashes: the order
//!   in which an engine returns rows never matters.
//! - Both sides of one range use the same bucket count, so their bucket
//!   vectors line up.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use sluice_core::{ColumnType, TableSchema, Value};
use sluice_schemas::target::{pg_type, Conv};

/// One side's summary of a table.
pub(super) struct Summary {
    pub(super) rows: u64,
    pub(super) buckets: Vec<(u64, u64)>,
}

/// For a second pass: key → row hash, only for the selected buckets.
pub(super) type Detail = BTreeMap<String, u64>;

pub(super) fn bucket_count(estimate: u64) -> usize {
    ((estimate / 5_000) as usize).clamp(16, 4096)
}

/// Canonical value: the pipeline's JSON encoding, with JSON documents
/// normalized and MySQL TINYINT(1) as a boolean. Against a MySQL target
/// (`mysql`), arrays (stored as JSON) compare as JSON documents and
/// unconstrained numerics (stored as DECIMAL(65,30)) without trailing zeros.
fn canonical(v: Value, conv: Conv, ty: &ColumnType, mysql: bool, out: &mut Vec<u8>, scratch: &mut String) {
    let normalize = |j: String| match serde_json::from_str::<serde_json::Value>(&j) {
        Ok(p) => Value::Json(p.to_string()),
        Err(_) => Value::Json(j),
    };
    let v = match (v, conv) {
        (Value::Int(i), Conv::IntToBool) => Value::Bool(i != 0),
        (Value::Int(i), _) if *ty == ColumnType::Bool => Value::Bool(i != 0),
        (Value::Json(j), _) => normalize(j),
        (v @ Value::Array(_), _) if mysql => {
            let mut b = Vec::new();
            sluice_schemas::json::write_value(&mut b, &v, scratch);
            normalize(String::from_utf8_lossy(&b).into_owned())
        }
        (Value::Text(t), _) if mysql && matches!(ty, ColumnType::Array(_)) => normalize(t),
        (Value::Numeric(n), _) if mysql && matches!(ty, ColumnType::Numeric { precision: None, .. }) => {
            match n.split_once('.') {
                Some((i, f)) if f.bytes().all(|b| b.is_ascii_digit()) => {
                    let f = f.trim_end_matches('0');
                    Value::Numeric(if f.is_empty() { i.to_string() } else { format!("{i}.{f}") })
                }
                _ => Value::Numeric(n),
            }
        }
        (v, _) => v,
    };
    sluice_schemas::json::write_value(out, &v, scratch);
    out.push(0x1f);
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// One side's running summary of one range of a table: rows are fed with
/// [`Accum::add`] in any order.
pub(super) struct Accum {
    pub(super) summary: Summary,
    /// Second pass: the selected buckets, and the key → row hash of their rows.
    pub(super) detail: Option<(Vec<bool>, Detail)>,
    key_idx: Vec<usize>,
    convs: Vec<Conv>,
    types: Vec<ColumnType>,
    mysql_target: bool,
    row: Vec<u8>,
    key: Vec<u8>,
    scratch: String,
    /// The pipeline's transforms, for source rows (the target holds their output).
    pub(super) plan: Option<std::sync::Arc<sluice_transforms::Plan>>,
}

impl Accum {
    pub(super) fn new(buckets: usize, schema: &TableSchema, mysql_target: bool, detail: Option<Vec<bool>>) -> Accum {
        Accum {
            summary: Summary { rows: 0, buckets: vec![(0, 0); buckets] },
            detail: detail.map(|d| (d, BTreeMap::new())),
            key_idx: key_of(schema),
            convs: schema.columns.iter().map(|c| pg_type(c).1).collect(),
            types: schema.columns.iter().map(|c| c.ty.clone()).collect(),
            mysql_target,
            row: Vec::new(),
            key: Vec::new(),
            scratch: String::new(),
            plan: None,
        }
    }

    pub(super) fn add(&mut self, values: Vec<Value>) {
        let values = match &self.plan {
            None => values,
            Some(p) => match p.row(values) {
                Some(v) => v,
                None => return,
            },
        };
        self.row.clear();
        self.key.clear();
        let all_key = self.key_idx.is_empty();
        for (i, (v, (conv, ty))) in values.into_iter().zip(self.convs.iter().zip(&self.types)).enumerate() {
            let start = self.row.len();
            canonical(v, *conv, ty, self.mysql_target, &mut self.row, &mut self.scratch);
            if all_key || self.key_idx.contains(&i) {
                let piece = self.row[start..].to_vec();
                self.key.extend_from_slice(&piece);
            }
        }
        let rh = hash_bytes(&self.row);
        let kh = hash_bytes(&self.key);
        let b = (kh % self.summary.buckets.len() as u64) as usize;
        let e = &mut self.summary.buckets[b];
        e.0 += 1;
        e.1 = e.1.wrapping_add(rh);
        self.summary.rows += 1;
        if let Some((sel, d)) = &mut self.detail {
            if sel[b] {
                let mut k = String::from_utf8_lossy(&self.key).replace('\u{1f}', ", ");
                k.truncate(k.trim_end_matches(", ").len());
                // Keyless tables: identical rows are one key with a count.
                let mut n = 0;
                while d.contains_key(&format!("{k}#{n}")) {
                    n += 1;
                }
                d.insert(if all_key { format!("{k}#{n}") } else { k }, rh);
            }
        }
    }
}

/// The columns that identify a row (empty: the whole row does).
pub(super) fn key_of(schema: &TableSchema) -> Vec<usize> {
    if matches!(schema.replica_identity, sluice_core::ReplicaIdentity::Full | sluice_core::ReplicaIdentity::Nothing) {
        return Vec::new();
    }
    schema.key_columns().map(|(i, _)| i).collect()
}

/// The buckets whose row count or hash sum differ between the two sides'
/// summaries of one range.
pub(super) fn differing_buckets(source: &Summary, target: &Summary) -> Vec<bool> {
    source.buckets.iter().zip(&target.buckets).map(|(a, b)| a != b).collect()
}

/// Name the rows that differ between the two sides' second-pass details:
/// source keys missing in the target or with another row hash, then target
/// keys the source does not have.
pub(super) fn diff_details(source: &Detail, target: &Detail, problems: &mut Vec<String>) {
    for (k, h) in source {
        match target.get(k) {
            None => problems.push(format!("missing in target: {k}")),
            Some(x) if x != h => problems.push(format!("differs: {k}")),
            _ => {}
        }
    }
    for k in target.keys() {
        if !source.contains_key(k) {
            problems.push(format!("extra in target: {k}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{self, col, key};

    fn encode(v: Value, conv: Conv, ty: &ColumnType, mysql: bool) -> Vec<u8> {
        let mut out = Vec::new();
        canonical(v, conv, ty, mysql, &mut out, &mut String::new());
        out
    }

    /// `id bigint` (the key), `name text`.
    fn table() -> TableSchema {
        let columns = vec![key("id", ColumnType::Int64), col("name", ColumnType::Text)];
        TableSchema { version: 0, ..testing::table("s", "t", columns) }
    }

    fn rows(names: [&str; 3]) -> Vec<Vec<Value>> {
        (1..=3).zip(names).map(|(i, n)| vec![Value::Int(i), Value::Text(n.into())]).collect()
    }

    #[test]
    fn bucket_counts_are_clamped() {
        assert_eq!(bucket_count(0), 16);
        assert_eq!(bucket_count(500_000), 100);
        assert_eq!(bucket_count(50_000_000), 4096);
    }

    #[test]
    fn canonical_forms_agree_across_engines() {
        // A MySQL TINYINT(1) against a Postgres boolean.
        assert_eq!(
            encode(Value::Int(1), Conv::IntToBool, &ColumnType::Int16, false),
            encode(Value::Bool(true), Conv::AsIs, &ColumnType::Bool, false)
        );
        // JSON documents compare parsed, not as text.
        assert_eq!(
            encode(Value::Json(r#"{ "a" : 1 }"#.into()), Conv::AsIs, &ColumnType::Json, false),
            encode(Value::Json(r#"{"a":1}"#.into()), Conv::AsIs, &ColumnType::Json, false)
        );
        // Unconstrained numerics in a MySQL target (DECIMAL(65,30)) compare
        // without trailing zeros; elsewhere the text is kept as is.
        let num = ColumnType::Numeric { precision: None, scale: None };
        assert_eq!(
            encode(Value::Numeric("1.500".into()), Conv::AsIs, &num, true),
            encode(Value::Numeric("1.5".into()), Conv::AsIs, &num, true)
        );
        assert_eq!(
            encode(Value::Numeric("2.000".into()), Conv::AsIs, &num, true),
            encode(Value::Numeric("2".into()), Conv::AsIs, &num, true)
        );
        assert_ne!(
            encode(Value::Numeric("1.500".into()), Conv::AsIs, &num, false),
            encode(Value::Numeric("1.5".into()), Conv::AsIs, &num, false)
        );
    }

    #[test]
    fn summaries_ignore_row_order_and_name_differing_keys() {
        let schema = table();
        let summarize = |rows: Vec<Vec<Value>>, detail: Option<Vec<bool>>| {
            let mut acc = Accum::new(16, &schema, false, detail);
            for r in rows {
                acc.add(r);
            }
            acc
        };
        let a = summarize(rows(["a", "b", "c"]), None);
        let mut reversed = rows(["a", "b", "c"]);
        reversed.reverse();
        let b = summarize(reversed, None);
        assert_eq!(a.summary.rows, 3);
        assert_eq!(b.summary.rows, 3);
        assert!(!differing_buckets(&a.summary, &b.summary).iter().any(|d| *d));

        let c = summarize(rows(["a", "x", "c"]), None);
        let differing = differing_buckets(&a.summary, &c.summary);
        assert_eq!(differing.iter().filter(|d| **d).count(), 1);

        let a2 = summarize(rows(["a", "b", "c"]), Some(differing.clone()));
        let c2 = summarize(rows(["a", "x", "c"]), Some(differing));
        let mut problems = Vec::new();
        diff_details(&a2.detail.expect("detail").1, &c2.detail.expect("detail").1, &mut problems);
        assert_eq!(problems, ["differs: 2"]);
    }

    fn detail(rows: &[(&str, u64)]) -> Detail {
        rows.iter().map(|(k, h)| (k.to_string(), *h)).collect()
    }

    #[test]
    fn details_name_missing_differing_and_extra_keys() {
        let source = detail(&[("1", 10), ("2", 20), ("3", 30)]);
        let target = detail(&[("2", 20), ("3", 31), ("4", 40)]);
        let mut problems = Vec::new();
        diff_details(&source, &target, &mut problems);
        assert_eq!(problems, ["missing in target: 1", "differs: 3", "extra in target: 4"]);
    }
}
