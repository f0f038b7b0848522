//! Masks: column values replaced before any sink sees them.
//!
//! Invariants:
//! - Applied to every row image (snapshot rows, `after`, `before`).
//! - NULL stays NULL; a value the source did not send stays unsent.
//! - `sha256` is deterministic (same value and salt, same hash), so it may
//!   mask key columns; the others would merge distinct keys and are refused
//!   on key columns.
//! - A masked column whose values become text is text in the output
//!   schema, so sinks create and type it as such.

use sha2::{Digest, Sha256};
use sluice_core::config::{MaskMethod, REDACTED};
use sluice_core::{ColumnType, ReplicaIdentity, TableSchema, Value};

use crate::text::text_form;

#[derive(Debug, Clone)]
pub struct RowMask {
    columns: Vec<usize>,
    method: MaskMethod,
    salt: String,
}

/// The hex SHA-256 of `text` followed by `salt`.
pub fn sha256_hex(text: &str, salt: &str) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    h.update(salt.as_bytes());
    let d = h.finalize();
    let mut s = String::with_capacity(64);
    for b in d {
        s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
    }
    s
}

/// `*` for every character but the last `n`.
pub fn keep_last(text: &str, n: usize) -> String {
    let len = text.chars().count();
    text.chars().enumerate().map(|(i, c)| if i + n < len { '*' } else { c }).collect()
}

impl RowMask {
    /// Mask `names` of `schema` (updating its column types). Columns the
    /// table lacks are skipped (`check` reports names no table has).
    pub fn new(
        schema: &mut TableSchema,
        names: &[String],
        method: MaskMethod,
        salt: Option<String>,
    ) -> Result<Option<RowMask>, String> {
        let mut columns = Vec::new();
        for n in names {
            let Some(i) = schema.column_index(n) else { continue };
            let full = schema.replica_identity == ReplicaIdentity::Full;
            let c = &mut schema.columns[i];
            // Under REPLICA IDENTITY FULL every column identifies the row
            // and sinks match whole rows, so equal masked rows stay apart.
            if c.key && method != MaskMethod::Sha256 && !full {
                return Err(format!(
                    "column {n} is part of the key; only sha256 keeps keys distinct (use with: sha256, or drop the column)"
                ));
            }
            let mysql = c.type_id == 0;
            match method {
                MaskMethod::Null => c.nullable = true,
                MaskMethod::KeepLast(_) if c.ty == ColumnType::Text => {}
                MaskMethod::Sha256 | MaskMethod::Redact | MaskMethod::KeepLast(_) => {
                    let (st, oid) = match (method, mysql) {
                        (_, false) => ("text", 25),
                        (MaskMethod::Sha256, true) => ("char(64)", 0),
                        (MaskMethod::Redact, true) => ("varchar(16)", 0),
                        (_, true) => ("longtext", 0),
                    };
                    c.ty = ColumnType::Text;
                    c.source_type = st.to_string();
                    c.type_id = oid;
                    c.type_modifier = -1;
                }
            }
            columns.push(i);
        }
        if columns.is_empty() {
            return Ok(None);
        }
        Ok(Some(RowMask { columns, method, salt: salt.unwrap_or_default() }))
    }

    pub fn apply(&self, values: &mut [Value]) {
        for &i in &self.columns {
            let Some(v) = values.get_mut(i) else { continue };
            if matches!(v, Value::Null | Value::Unchanged) {
                continue;
            }
            *v = match self.method {
                MaskMethod::Null => Value::Null,
                MaskMethod::Redact => Value::Text(REDACTED.to_string()),
                MaskMethod::Sha256 => Value::Text(sha256_hex(&text_form(v).unwrap_or_default(), &self.salt)),
                MaskMethod::KeepLast(n) => Value::Text(keep_last(&text_form(v).unwrap_or_default(), n)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(sha256_hex("abc", ""), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex("ab", "c"), sha256_hex("abc", ""));
        assert_eq!(keep_last("4111111111111111", 4), "************1111");
        assert_eq!(keep_last("ab", 4), "ab");
        assert_eq!(keep_last("äöüß", 1), "***ß");
    }
}
