//! Pushdown plans: the part of the transform stage a source may apply
//! itself (Postgres 15+ publications: column lists and row filters).
//!
//! The plan is plain data. The transform stage computes it
//! ([`PushdownPlanner`], implemented by the transforms crate) and the binary
//! hands the planner to the source, so no source depends on the transform
//! stage. Invariant: a plan only ever narrows what the source sends to what
//! the transform stage would keep anyway; the stage still runs every step.

use std::collections::HashMap;
use std::sync::Arc;

use crate::schema::{TableId, TableSchema};

/// The publication clauses for one table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TablePushdown {
    /// Columns to publish (`None`: all).
    pub columns: Option<Vec<String>>,
    /// Row filter in Postgres syntax (`None`: every row).
    pub row_filter: Option<String>,
}

impl TablePushdown {
    pub fn is_empty(&self) -> bool {
        self.columns.is_none() && self.row_filter.is_none()
    }
}

/// The plans of the tables that have one.
pub type Pushdowns = HashMap<TableId, TablePushdown>;

/// Computes what a Postgres publication can take over for a table, from
/// the table's catalog schema.
pub trait PushdownPlanner: Send + Sync {
    fn plan(&self, schema: &Arc<TableSchema>) -> TablePushdown;
}
