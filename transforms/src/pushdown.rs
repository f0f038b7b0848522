//! What a Postgres 15+ publication can do for the transform stage.
//!
//! A publication may carry, per table, a column list and a row filter
//! (`CREATE PUBLICATION p FOR TABLE t (a, b) WHERE (...)`). Postgres then
//! decodes less and sends less, and turns UPDATEs moving rows in or out of
//! the filter into INSERTs and DELETEs itself.
//!
//! Invariants:
//! - Pushdown never changes results: Sluice still runs every transform on
//!   what arrives (a pushed filter then keeps everything it sees), and only
//!   expressions Postgres evaluates exactly like Sluice are pushed (see
//!   [`crate::expr`]: typed constants, `COLLATE "C"` orderings, no text
//!   I/O of dates and times).
//! - Pushdown never breaks the source: Postgres refuses UPDATE and DELETE
//!   on a table whose publication row filter reads columns outside the
//!   replica identity, or whose column list leaves out identity columns. So
//!   filters are pushed only when they read identity columns (any column
//!   under REPLICA IDENTITY FULL), column lists only when they keep every
//!   key column, and never under FULL.
//! - Only filters that see the source's own columns are pushed: the leading
//!   steps for the table, before any mask or column rename.

use std::sync::Arc;

use sluice_core::pushdown::{PushdownPlanner, TablePushdown};
use sluice_core::{ReplicaIdentity, TableSchema};

use crate::Chain;

/// The transform stage's [`PushdownPlanner`] for a Postgres source.
pub struct PostgresPlanner(std::sync::Mutex<Chain>);

impl PostgresPlanner {
    /// `None` when the stage has no steps (nothing to push down) or does not
    /// compile (the stage itself reports that).
    pub fn for_transforms(transforms: &[sluice_core::config::TransformConfig]) -> Option<Arc<dyn PushdownPlanner>> {
        if transforms.is_empty() {
            return None;
        }
        let chain = Chain::new(transforms).ok()?;
        Some(Arc::new(PostgresPlanner(std::sync::Mutex::new(chain))))
    }
}

impl PushdownPlanner for PostgresPlanner {
    fn plan(&self, schema: &Arc<TableSchema>) -> TablePushdown {
        let mut chain = self.0.lock().unwrap_or_else(|p| p.into_inner());
        postgres(&mut chain, schema)
    }
}

/// What the publication can take over for `schema` (its catalog schema).
pub fn postgres(chain: &mut Chain, schema: &Arc<TableSchema>) -> TablePushdown {
    let Ok(plan) = chain.plan(schema) else { return TablePushdown::default() };
    let mut out = TablePushdown::default();
    let in_identity = |name: &str| match schema.replica_identity {
        ReplicaIdentity::Full => true,
        ReplicaIdentity::Default | ReplicaIdentity::Index => schema.columns.iter().any(|c| c.name == name && c.key),
        ReplicaIdentity::Nothing => false,
    };
    let filters = &plan.source_filters;
    if !filters.is_empty()
        && plan.filters_all_on_source
        && filters.iter().all(|f| f.pushdown.is_some() && f.column_names.iter().all(|n| in_identity(n)))
    {
        let parts: Vec<String> = filters.iter().filter_map(|f| f.pushdown.clone()).collect();
        out.row_filter = Some(if parts.len() == 1 { parts[0].clone() } else { parts.join(" AND ") });
    }
    // Columns every filter reads stay published: the in-process filters
    // read them too.
    let read: Vec<&String> = plan.source_filters.iter().flat_map(|f| f.column_names.iter()).collect();
    let dropped: Vec<&String> = plan.dropped_source_columns.iter().filter(|n| !read.contains(n)).collect();
    let key_dropped = schema.columns.iter().any(|c| c.key && dropped.contains(&&c.name));
    if !dropped.is_empty()
        && !key_dropped
        && matches!(schema.replica_identity, ReplicaIdentity::Default | ReplicaIdentity::Index)
        && schema.columns.iter().any(|c| c.key)
    {
        out.columns =
            Some(schema.columns.iter().filter(|c| !dropped.contains(&&c.name)).map(|c| c.name.clone()).collect());
    }
    out
}
