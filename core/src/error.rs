//! Error kinds shared by sources and sinks.
//!
//! Every error says what to do about it: retry ([`ErrorKind::Transient`]),
//! stop one table ([`ErrorKind::Table`]), or stop the pipeline
//! ([`ErrorKind::Fatal`], including configuration problems found late).

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Lost connection, server restart, timeout: restart from the checkpoint.
    Transient,
    /// Tied to one table's data; other tables could go on.
    Table,
    /// Needs a human: bad credentials, missing privilege, purged WAL, ...
    Fatal,
    /// The configuration is wrong (exit code 2).
    Config,
}

impl ErrorKind {
    /// A per-table error as fatal: for callers whose transaction the error
    /// aborted (a replica sink's target transaction holds other tables'
    /// changes too), so that one table's changes cannot be dropped alone.
    pub fn or_fatal_for_table(self) -> ErrorKind {
        if self == ErrorKind::Table {
            ErrorKind::Fatal
        } else {
            self
        }
    }
}

#[derive(Debug, Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SourceError { kind, message: message.into(), source: None }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}

/// An error of a database client (`clients/*`), classified once for sources
/// and sinks alike; it converts into either.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct ClientError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ClientError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ClientError { kind, message: message.into(), source: None }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}

impl From<ClientError> for SourceError {
    fn from(e: ClientError) -> Self {
        SourceError { kind: e.kind, message: e.message, source: e.source }
    }
}

impl From<ClientError> for SinkError {
    fn from(e: ClientError) -> Self {
        SinkError { kind: e.kind, message: e.message, source: e.source, table: None }
    }
}

#[derive(Debug, Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// For a per-table error: the table, when it is not the one of the
    /// change being written (a batch of another table failed on its flush).
    pub table: Option<crate::TableId>,
}

impl SinkError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SinkError { kind, message: message.into(), source: None, table: None }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    pub fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        SinkError { kind: ErrorKind::Fatal, message: context.into(), source: Some(Box::new(e)), table: None }
    }
    /// A per-table error of `table`.
    pub fn for_table(mut self, table: &crate::TableId) -> Self {
        self.table = Some(table.clone());
        self
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}
