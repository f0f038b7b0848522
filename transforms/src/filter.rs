//! Row filters on change events.
//!
//! A filter keeps the events that keep a downstream replica equal to
//! "source rows matching the expression":
//!
//! | event  | old row matched | new row matches | sent                      |
//! |--------|-----------------|-----------------|---------------------------|
//! | r / c  |                 | yes / no        | as is / nothing           |
//! | u      | yes             | yes             | `u`                       |
//! | u      | no              | yes             | `c` with the new row      |
//! | u      | yes             | no              | `d` with the old row      |
//! | u      | no              | no              | nothing                   |
//! | u      | unknown         | yes             | `c` (an upsert by key); after a key change `d` of the old key first |
//! | u      | unknown         | no              | `d` by key                |
//! | u      | any             | unknown         | `u` as is                 |
//! | d      | yes / unknown   |                 | `d`                       |
//! | d      | no              |                 | nothing                   |
//! | t      |                 |                 | `t`                       |
//!
//! "Unknown" means the image lacks a column the expression reads. The old
//! row is complete under REPLICA IDENTITY FULL (Postgres) and with
//! `binlog_row_image=FULL` (MySQL). Under Postgres's DEFAULT identity an
//! UPDATE carries only the key of the old row, so a filter on other columns
//! cannot tell whether the row was inside: the update is sent as an upsert
//! (`c`) when the new row matches, and as a delete by key when it does not
//! (deleting a row the replica never had is harmless). The upsert must be a
//! whole row: for such tables ([`RowFilter::upserts_updates`]) the runtime
//! reads unchanged TOASTed values from the source before the filter runs
//! (`sluice_core::whole_rows`). A new row can therefore only be unknown when
//! its row was gone by the time of that read; such an update passes
//! unchanged (the change that removed the row follows).
//! `sluice check` warns about filters in this situation.

use std::borrow::Cow;

use sluice_core::{ChangeEvent, Op, ReplicaIdentity, Row, TableSchema, Value};

use crate::expr::{Compiled, Tri};

/// What a filter makes of one event. Returned by value and consumed at
/// once, so the size of `Two` costs a move, not memory held.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Out {
    Drop,
    One(ChangeEvent),
    /// A delete of the old key, then an insert of the new row.
    Two(ChangeEvent, ChangeEvent),
}

impl Out {
    fn keep(ev: ChangeEvent, keep: bool) -> Out {
        if keep {
            Out::One(ev)
        } else {
            Out::Drop
        }
    }
}

#[derive(Debug, Clone)]
pub struct RowFilter {
    pub expr: Compiled,
    /// Key columns of the layout the filter runs on.
    key: Vec<usize>,
}

impl RowFilter {
    pub fn new(expr: Compiled, schema: &TableSchema) -> RowFilter {
        let key = schema.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
        RowFilter { expr, key }
    }

    fn test(&self, values: &[Value], warn: &mut dyn FnMut(&str, &str)) -> Tri {
        match self.expr.test(values) {
            Ok(t) => t,
            Err(e) => {
                warn(self.expr.text(), &e.0);
                Tri::False
            }
        }
    }

    /// The columns of `schema` the filter reads that an update's old image
    /// lacks (non-key columns, unless the identity is FULL).
    fn unknown_old_columns<'a>(&'a self, schema: &TableSchema) -> Vec<&'a str> {
        if matches!(schema.replica_identity, ReplicaIdentity::Full) {
            return Vec::new();
        }
        self.expr
            .column_names
            .iter()
            .filter(|n| schema.columns.iter().any(|c| c.name == **n && !c.key))
            .map(|s| s.as_str())
            .collect()
    }

    /// True when updates of `schema` may leave as upserts (`c`): the filter
    /// cannot tell whether the old row matched. Their new rows must be whole.
    pub fn upserts_updates(&self, schema: &TableSchema) -> bool {
        !self.unknown_old_columns(schema).is_empty()
    }

    /// The `sluice check` warning for `schema`, if the filter reads old
    /// values its source does not send.
    pub fn identity_warning(&self, schema: &TableSchema) -> Option<String> {
        let non_key = self.unknown_old_columns(schema);
        if non_key.is_empty() {
            return None;
        }
        Some(format!(
            "table {} has REPLICA IDENTITY {:?} and the filter {:?} reads non-key columns ({}): updates carry no old values for them, so every update of a matching row is sent as an upsert (c) and every other update as a delete by key; unchanged TOASTed values of such rows are read from the source; ALTER TABLE {} REPLICA IDENTITY FULL gives exact u/c/d",
            schema.id,
            schema.replica_identity,
            self.expr.text(),
            non_key.join(", "),
            schema.id.quoted()
        ))
    }

    pub fn apply(&self, mut ev: ChangeEvent, warn: &mut dyn FnMut(&str, &str)) -> Out {
        match ev.op {
            Op::Truncate => Out::One(ev),
            Op::Read | Op::Create => {
                let t = ev.after.as_ref().map(|r| self.test(&r.values, warn)).unwrap_or(Tri::Unknown);
                Out::keep(ev, t != Tri::False)
            }
            Op::Delete => {
                let t = ev.before.as_ref().map(|r| self.test(&r.values, warn)).unwrap_or(Tri::Unknown);
                Out::keep(ev, t != Tri::False)
            }
            Op::Update => {
                let Some(after) = ev.after.as_ref() else { return Out::One(ev) };
                // The old row: the image sent, or (no image: the key did not
                // change) the new row's key with everything else unknown.
                // Borrowed where possible: most updates pass unchanged.
                let old: Cow<[Value]> = match &ev.before {
                    Some(b) => Cow::Borrowed(&b.values),
                    None => Cow::Owned(
                        after
                            .values
                            .iter()
                            .enumerate()
                            .map(|(i, v)| if self.key.contains(&i) { v.clone() } else { Value::Unchanged })
                            .collect(),
                    ),
                };
                // Unchanged values of the new row are the old row's.
                let new: Cow<[Value]> = if after.values.iter().any(|v| matches!(v, Value::Unchanged)) {
                    let mut n = after.values.clone();
                    for (i, v) in n.iter_mut().enumerate() {
                        if matches!(v, Value::Unchanged) {
                            if let Some(o) = old.get(i) {
                                *v = o.clone();
                            }
                        }
                    }
                    Cow::Owned(n)
                } else {
                    Cow::Borrowed(&after.values)
                };
                let was = self.test(&old, warn);
                let is = self.test(&new, warn);
                // The key changed (the old image carries a different key).
                let key_changed = self
                    .key
                    .iter()
                    .any(|&i| !matches!(old.get(i), Some(Value::Unchanged) | None) && old.get(i) != new.get(i));
                let outcome = match (was, is) {
                    (_, Tri::Unknown) | (Tri::True, Tri::True) => return Out::One(ev),
                    (Tri::False, Tri::False) => return Out::Drop,
                    other => other,
                };
                let (old, new) = (old.into_owned(), new.into_owned());
                match outcome {
                    // (Both returned above.)
                    (_, Tri::Unknown) | (Tri::True, Tri::True) | (Tri::False, Tri::False) => Out::One(ev),
                    (Tri::Unknown, Tri::True) if key_changed => {
                        // The old key may be in the replica: delete it, then
                        // insert the new row.
                        let mut delete = ev.clone();
                        delete.op = Op::Delete;
                        delete.before = Some(Row::new(old));
                        delete.after = None;
                        ev.op = Op::Create;
                        ev.before = None;
                        ev.after = Some(Row::new(new));
                        Out::Two(delete, ev)
                    }
                    (Tri::False | Tri::Unknown, Tri::True) => {
                        ev.op = Op::Create;
                        ev.before = None;
                        ev.after = Some(Row::new(new));
                        Out::One(ev)
                    }
                    (Tri::True | Tri::Unknown, Tri::False) => {
                        ev.op = Op::Delete;
                        ev.before = Some(Row::new(old));
                        ev.after = None;
                        Out::One(ev)
                    }
                }
            }
        }
    }
}
