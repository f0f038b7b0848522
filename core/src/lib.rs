//! Sluice core: the types every connector and sink shares, the component
//! traits with their contracts, the pipeline runtime and the pipeline config.
//!
//! ```text
//! pipelines/*.yaml ─▶ config (parse, validate: all errors at once)
//!                          │
//!  connectors/postgres ─┐  ▼
//!                       └▶ SourceMessage batches ─▶ transforms ─▶ sinks
//!         ▲                                                        │ flush → state
//!         └──── confirm(position) ◀── checkpoint (atomic file) ◀───┘
//! ```
//!
//! The ordering rule that makes resume exact: a position is confirmed to the
//! source only after every change before it has been made durable by the sink
//! *and* the checkpoint naming it has been written. The checkpoint therefore
//! always names the lowest position not yet acknowledged.

pub mod checkpoint;
pub mod config;
pub mod datetime;
pub mod error;
pub mod event;
pub mod preflight;
pub mod pushdown;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transform;
pub mod value;
pub mod whole_rows;

pub use checkpoint::{Checkpoint, CheckpointRow, CheckpointStore, FileCheckpointStore, SnapshotState, TableState};
pub use error::{ClientError, ErrorKind, SinkError, SourceError};
pub use event::{BinlogFile, ChangeEvent, EventGtid, EventPosition, MysqlOrigin, Op, Position};
pub use schema::{Column, ColumnType, ReplicaIdentity, TableId, TableSchema};
pub use sink::Sink;
pub use source::{RawFormat, RawRows, Source, SourceContext, SourceMessage};
pub use transform::{NoTransforms, Transform, TransformError};
pub use value::{Row, Value};
pub use whole_rows::RowReader;
