//! Transforms: synchronous functions from one event to zero or more events.
//!
//! Invariants:
//! - No I/O, no waiting: a transform sees one event at a time and decides
//!   from the event alone (and what it compiled from the configuration).
//! - Filtered-out events still count as handled for checkpoints: positions
//!   travel with transaction boundaries, not with events, so a long run of
//!   dropped events still advances the confirmed position.
//! - A transform may change a table's name and columns; it then says so
//!   through [`Transform::table_schema`], and every event it emits for that
//!   table carries exactly that schema (the same `Arc`), so sinks see one
//!   consistent shape per source schema version.

use std::sync::Arc;

use crate::error::ErrorKind;
use crate::event::ChangeEvent;
use crate::schema::{TableId, TableSchema};

/// A transform that cannot apply to a table (an unknown column, a type
/// error). These are configuration errors: the user has to change the
/// pipeline file or the table.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransformError {
    pub message: String,
}

impl TransformError {
    pub fn new(message: impl Into<String>) -> Self {
        TransformError { message: message.into() }
    }
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Config
    }
}

pub trait Transform: Send {
    /// The schema sinks see for events of the source table `schema`.
    fn table_schema(&mut self, schema: &Arc<TableSchema>) -> Result<Arc<TableSchema>, TransformError>;
    /// The sink-side name of a source table.
    fn table_id(&self, id: &TableId) -> TableId;
    /// Turn one event into zero or more, appended to `out`.
    fn apply(&mut self, event: ChangeEvent, out: &mut Vec<ChangeEvent>) -> Result<(), TransformError>;
    /// True when this transform passes every event through unchanged.
    fn is_identity(&self) -> bool {
        false
    }
    /// True when updates of the source table `schema` may leave this stage
    /// as fresh rows (`c`, e.g. a filter that cannot tell whether the old row
    /// matched): their unsent values must then be read from the source
    /// first (see [`crate::whole_rows`]).
    fn updates_become_rows(&mut self, _schema: &Arc<TableSchema>) -> bool {
        false
    }
    /// A fingerprint of what this transform does to the source table `id`
    /// (empty: nothing). A table copied under another fingerprint is copied
    /// again, so a changed filter or mask reaches the rows already copied.
    fn fingerprint(&self, _id: &TableId) -> String {
        String::new()
    }
}

/// The empty transform stage.
pub struct NoTransforms;

impl Transform for NoTransforms {
    fn table_schema(&mut self, schema: &Arc<TableSchema>) -> Result<Arc<TableSchema>, TransformError> {
        Ok(schema.clone())
    }
    fn table_id(&self, id: &TableId) -> TableId {
        id.clone()
    }
    fn apply(&mut self, event: ChangeEvent, out: &mut Vec<ChangeEvent>) -> Result<(), TransformError> {
        out.push(event);
        Ok(())
    }
    fn is_identity(&self) -> bool {
        true
    }
}
