//! The `Source` trait: what a connector promises the runtime.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::checkpoint::Checkpoint;
use crate::error::SourceError;
use crate::event::{ChangeEvent, EventPosition, Position};
use crate::schema::{TableId, TableSchema};

/// What a source sends to the runtime, in order, in batches.
#[derive(Debug)]
pub enum SourceMessage {
    /// A change. Stream changes arrive between `Begin` and `Commit`.
    Event(ChangeEvent),
    /// A stream transaction starts; no checkpoint may be taken until its `Commit`.
    Begin { commit_position: EventPosition },
    /// The transaction is complete. Everything before `position` has now been sent.
    Commit { position: Position },
    /// Outside any transaction: everything before `position` has been sent
    /// (keepalives on an idle or filtered database). Lets the runtime confirm
    /// positions so the source does not pin its log.
    Progress { position: Position },
    /// The tables this run includes. Snapshot state of any other table is
    /// forgotten with the next checkpoint, so a table dropped from the
    /// configuration and added back later is copied again.
    Tables { included: Vec<TableId> },
    /// A table's snapshot copy begins, in a snapshot consistent with
    /// `position`; its rows will carry `schema`. Sent for empty tables too,
    /// so replicas start the table from empty.
    TableSnapshotStarted { schema: Arc<TableSchema>, position: Position, estimated_rows: u64 },
    /// Snapshot rows of a table in the source's own wire form (only when
    /// [`SourceContext::raw_snapshot`] allows it).
    RawRows(RawRows),
    /// All of the table's snapshot rows have been sent.
    TableSnapshotDone { table: TableId, rows: u64 },
    /// A change of `table` cannot be represented (e.g. its bytes are not
    /// valid in the column's character set): the table is stopped (recorded
    /// in the checkpoint, its changes skipped until it is copied again), the
    /// other tables go on, and the run ends with a failure. The source skips
    /// the table's changes from here on.
    TableFailed { table: TableId, error: String },
    /// `--until-caught-up`: the end position noted at start has been reached
    /// (every change before it has been sent).
    CaughtUp,
}

/// Wire forms of [`RawRows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// Tuples of Postgres's binary COPY format (no header or trailer), each
    /// field in its type's `send` form: a Postgres target whose columns have
    /// the very same types loads them unchanged.
    PgBinaryCopy,
}

/// Snapshot rows of one table still in the form the source read them in.
/// A sink that can load them as they are saves decoding and encoding every
/// value; any other consumer gets the same `Op::Read` events through
/// `decode` that the source would have sent.
#[derive(Debug)]
pub struct RawRows {
    pub schema: Arc<TableSchema>,
    pub format: RawFormat,
    /// Whole rows, back to back (already checked to be well framed).
    pub data: Vec<u8>,
    pub rows: u64,
    /// What the decoded events carry: the snapshot's consistent point and
    /// the time the copy started.
    pub commit_position: EventPosition,
    pub commit_ts_us: i64,
    /// Decode every row into an event, appended to `out`.
    pub decode: fn(&RawRows, &mut Vec<ChangeEvent>) -> Result<(), SourceError>,
}

/// What the runtime gives a source.
pub struct SourceContext {
    /// Bounded: a slow sink slows the source down instead of growing memory.
    pub tx: mpsc::Sender<Vec<SourceMessage>>,
    /// Positions the runtime has made durable (sink flushed *and* checkpoint
    /// written). Only these may be confirmed to the server.
    pub confirmed: watch::Receiver<Option<Position>>,
    /// The checkpoint this run starts from.
    pub checkpoint: Checkpoint,
    /// Stop with `CaughtUp` once the source's current end (noted at start) is reached.
    pub until_caught_up: bool,
    /// Snapshot rows may be sent as [`SourceMessage::RawRows`] in this form
    /// (the sink can take them and no transform needs their values).
    pub raw_snapshot: Option<RawFormat>,
}

/// A change source.
///
/// Contract:
/// - Resume from `ctx.checkpoint`: never send a change of a transaction the
///   checkpoint position already covers, never skip one it does not cover.
/// - For each table whose snapshot is not `done`, copy it in a snapshot
///   consistent with a position `P` (announced in `TableSnapshotStarted`),
///   then send that table's stream changes only for transactions committing
///   at or after `P`.
/// - Stream changes arrive in commit order, bracketed by `Begin`/`Commit`;
///   rolled-back transactions never appear.
/// - Confirm to the server only positions received on `ctx.confirmed`.
/// - Return `Err` with [`crate::ErrorKind::Transient`] for problems that a
///   restart from the checkpoint may fix; the runtime then restarts it.
pub trait Source: Send + 'static {
    fn run(self, ctx: SourceContext) -> impl Future<Output = Result<(), SourceError>> + Send;
    /// Reads current rows by key, for a source whose changes can leave values
    /// out ([`crate::Value::Unchanged`]): the runtime completes the events
    /// whose consumers need whole rows ([`crate::whole_rows`]).
    fn row_reader(&self) -> Option<Arc<dyn crate::whole_rows::RowReader>> {
        None
    }
}
