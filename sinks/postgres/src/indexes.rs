//! Index builds deferred past a table's snapshot copy.
//!
//! Loading rows into a table and building its indexes afterwards is much
//! cheaper than maintaining the indexes row by row (pgcopydb and `pg_restore`
//! load the same way). When a table's copy starts (right after its
//! `TRUNCATE`, in the same target transaction) its indexes and the
//! constraints they back are dropped, and the statements that rebuild them
//! are kept.
//!
//! Invariants:
//! - A table's indexes are dropped only inside the transaction that empties
//!   it for a copy, and nothing but that table's snapshot rows is applied to
//!   it until they are rebuilt: any other change of the table (and any
//!   schema change) rebuilds them first.
//! - A transaction that commits while the copy is still running (the
//!   runtime flushes on its timer) carries the rebuild statements in the
//!   checkpoint row it writes. That table is still being copied in that
//!   checkpoint, so a restart copies it again and rebuilds the indexes from
//!   the stored statements when the copy is done; a table no longer being
//!   copied gets its indexes back at the next flush.
//! - Tables whose indexes cannot be dropped and rebuilt without losing
//!   something are left alone: partitioned tables, tables referenced by a
//!   foreign key, a replica identity or `CLUSTER` on an index, indexes in
//!   another tablespace, invalid or commented indexes.

use sluice_core::schema::quote_ident;
use tokio_postgres::Client;

/// What emptying a target table for its copy involves.
pub struct Plan {
    /// Another table references it by a foreign key: it cannot be truncated.
    pub referenced: bool,
    /// Its indexes, when they can be dropped for the copy.
    pub deferral: Option<Deferral>,
}

/// What dropping a table's indexes for its copy involves.
pub struct Deferral {
    /// Statements that drop the indexes (constraints first).
    pub drop: Vec<String>,
    /// Statements that rebuild them, in order.
    pub rebuild: Vec<String>,
}

/// How to empty the target table `name` (quoted `schema.table`) for its
/// copy, and its indexes when they can be dropped for it and rebuilt
/// afterwards (one catalog query).
pub async fn plan(client: &Client, name: &str) -> Result<Plan, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), con.conname::text, \
               pg_get_constraintdef(con.oid), \
               i.indisclustered OR NOT i.indisvalid OR ic.reltablespace <> 0 OR t.relkind <> 'r' \
                 OR t.relreplident = 'i' OR obj_description(i.indexrelid, 'pg_class') IS NOT NULL \
                 OR (con.oid IS NOT NULL AND obj_description(con.oid, 'pg_constraint') IS NOT NULL), \
               EXISTS (SELECT 1 FROM pg_constraint f WHERE f.confrelid = t.oid AND f.contype = 'f') \
             FROM pg_class t LEFT JOIN pg_index i ON i.indrelid = t.oid LEFT JOIN pg_class ic ON ic.oid = i.indexrelid \
             LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = t.oid \
               AND con.contype IN ('p', 'u', 'x') \
             WHERE t.oid = $1::text::regclass \
             ORDER BY con.contype = 'p' DESC NULLS LAST, con.oid IS NULL, i.indexrelid",
            &[&name],
        )
        .await?;
    let referenced = rows.first().is_some_and(|r| r.get::<_, bool>(5));
    // No index (one row of NULLs), or one that must stay; referenced tables
    // keep theirs too (the foreign key depends on one).
    if referenced || rows.iter().any(|r| r.get::<_, Option<String>>(0).is_none() || r.get::<_, bool>(4)) {
        return Ok(Plan { referenced, deferral: None });
    }
    let mut d = Deferral { drop: Vec::new(), rebuild: Vec::new() };
    for r in &rows {
        let (index, indexdef) = (r.get::<_, String>(0), r.get::<_, String>(1));
        match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
            (Some(con), Some(def)) => {
                d.drop.push(format!("ALTER TABLE {name} DROP CONSTRAINT {}", quote_ident(&con)));
                d.rebuild.push(format!("ALTER TABLE {name} ADD CONSTRAINT {} {def}", quote_ident(&con)));
            }
            _ => {
                d.drop.push(format!("DROP INDEX {index}"));
                d.rebuild.push(indexdef);
            }
        }
    }
    Ok(Plan { referenced, deferral: Some(d) })
}

/// As sink checkpoint state: `[[schema, table, [statement, ...]], ...]`.
pub fn to_state<'a>(
    deferred: impl Iterator<Item = (&'a sluice_core::TableId, &'a Vec<String>)>,
) -> Vec<serde_json::Value> {
    deferred.map(|(t, s)| serde_json::json!([t.schema, t.name, s])).collect()
}

/// From [`to_state`]'s output (entries that do not parse are skipped).
pub fn from_state(state: &serde_json::Value) -> Vec<(sluice_core::TableId, Vec<String>)> {
    let mut out = Vec::new();
    for t in state.as_array().into_iter().flatten() {
        let (Some(s), Some(n), Some(stmts)) =
            (t.get(0).and_then(|v| v.as_str()), t.get(1).and_then(|v| v.as_str()), t.get(2).and_then(|v| v.as_array()))
        else {
            continue;
        };
        let stmts: Vec<String> = stmts.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        out.push((sluice_core::TableId::new(s, n), stmts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let t = sluice_core::TableId::new("Odd Schema", "t");
        let stmts = vec!["ALTER TABLE x ADD CONSTRAINT \"p\" PRIMARY KEY (id)".to_string()];
        let state = serde_json::Value::Array(to_state([(&t, &stmts)].into_iter()));
        assert_eq!(from_state(&state), vec![(t, stmts)]);
        assert!(from_state(&serde_json::Value::Null).is_empty());
        assert!(from_state(&serde_json::json!([["a", 1, []]])).is_empty());
    }
}
