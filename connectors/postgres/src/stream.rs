//! The replication stream: `START_REPLICATION` on the slot, pgoutput in,
//! batches out, confirmations back.
//!
//! Invariants:
//! - The flush position reported to the server is only ever one the runtime
//!   has confirmed (sink durable + checkpoint written).
//! - Idle progress (keepalive `wal_end`) is forwarded only outside
//!   transactions, so the runtime can confirm it and an idle or filtered
//!   database does not pin WAL.
//! - Sending to a full channel keeps answering the server, so a slow sink
//!   never trips `wal_sender_timeout`.

use std::time::{Duration, Instant};

use sluice_core::error::SourceError;
use sluice_core::{Position, SourceContext, SourceMessage};

use crate::decoding::{Decoder, StreamAction, TableFilter};
use crate::spool::Spool;
use sluice_client_postgres::{ReplMessage, ReplicationConn};

const STATUS_INTERVAL: Duration = Duration::from_secs(5);
const MAX_BATCH: usize = 4096;
/// How long a partly filled batch may wait for more messages: fewer, fuller
/// batches mean fewer wake-ups of the sink side, which on a small machine
/// leaves the walsender its core (measured: ~10% more throughput).
const LINGER: Duration = Duration::from_millis(5);
/// Bytes that must be queued before a busy stream is read.
const LOW_WATER: i32 = 64 * 1024;
/// Quiet time after which any byte is read.
const RELAX_AFTER: Duration = Duration::from_millis(2);

pub struct StreamState {
    /// Flush position to report.
    pub confirmed: u64,
    pub server_end: u64,
    pub last_status: Instant,
}

async fn status(conn: &mut ReplicationConn, st: &mut StreamState) -> Result<(), SourceError> {
    st.last_status = Instant::now();
    Ok(conn.send_status(st.confirmed, st.confirmed, false).await?)
}

fn update_confirmed(ctx: &SourceContext, st: &mut StreamState) {
    if let Some(p) = &*ctx.confirmed.borrow() {
        st.confirmed = st.confirmed.max(p.lsn());
    }
}

/// Send a batch; while the channel is full, keep the server happy.
async fn send_batch(
    conn: &mut ReplicationConn,
    ctx: &SourceContext,
    st: &mut StreamState,
    batch: Vec<SourceMessage>,
) -> Result<bool, SourceError> {
    let reserve = ctx.tx.reserve();
    tokio::pin!(reserve);
    loop {
        tokio::select! {
            permit = &mut reserve => {
                return match permit {
                    Ok(p) => {
                        p.send(batch);
                        Ok(true)
                    }
                    Err(_) => Ok(false),
                };
            }
            _ = tokio::time::sleep(STATUS_INTERVAL) => {
                update_confirmed(ctx, st);
                status(conn, st).await?;
            }
        }
    }
}

/// Stream until the runtime goes away, an error occurs, or (with `target`)
/// everything before `target` has been sent and confirmed.
pub async fn run_stream<F: TableFilter>(
    conn: &mut ReplicationConn,
    decoder: &mut Decoder<F>,
    ctx: &mut SourceContext,
    base: u64,
    durable: u64,
    target: Option<u64>,
) -> Result<(), SourceError> {
    // Only a durable position is ever reported: the slot's own or the checkpoint's.
    let mut st = StreamState { confirmed: durable, server_end: 0, last_status: Instant::now() };
    update_confirmed(ctx, &mut st);
    // Every transaction committing before `last_end` has been handled.
    let mut last_end = base;
    let mut batch: Vec<SourceMessage> = Vec::with_capacity(MAX_BATCH);
    let mut caught_up = false;
    let mut expected = 0;
    let mut relaxed = false;
    let mut spool = Spool::new()?;
    let mut batch_started: Option<Instant> = None;
    conn.set_read_low_water(LOW_WATER);
    let mut reply = false;
    loop {
        while batch.len() < MAX_BATCH {
            match conn.try_repl_message()? {
                None => break,
                Some(ReplMessage::XLogData { start, data }) => {
                    if let Some(action) = decoder.decode(start, data, &mut batch)? {
                        match action {
                            StreamAction::Start { xid, first_segment } => spool.start(xid, first_segment)?,
                            StreamAction::Stop => {}
                            StreamAction::Spool { xid, sub_xid, lsn, message } => {
                                spool.append(xid, sub_xid, lsn, &message)?
                            }
                            StreamAction::Abort { xid, sub_xid } => spool.abort(xid, sub_xid)?,
                            StreamAction::Commit { xid, commit_lsn, end_lsn, ts_us } => {
                                // Replay the parked transaction, sending as batches fill.
                                // A transaction already delivered is replayed too (its
                                // changes are dropped): its RELATION messages still count.
                                decoder.begin_replay(xid, commit_lsn, ts_us, &mut batch);
                                match spool.take(xid)? {
                                    Some(mut reader) => {
                                        while let Some((lsn, msg)) = reader.next_message()? {
                                            decoder.decode_streamed(lsn, msg, &mut batch)?;
                                            if batch.len() >= MAX_BATCH {
                                                let b = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
                                                if !send_batch(conn, ctx, &mut st, b).await? {
                                                    return Ok(());
                                                }
                                            }
                                        }
                                    }
                                    None if decoder.replay_skipped() => {}
                                    None => {
                                        return Err(SourceError::fatal(format!(
                                            "streamed transaction {xid} committed but none of its changes were received"
                                        )))
                                    }
                                }
                                decoder.end_replay(end_lsn, &mut batch);
                            }
                        }
                    }
                    if let Some(end) = decoder.take_commit_end() {
                        last_end = last_end.max(end);
                    }
                }
                Some(ReplMessage::Keepalive { wal_end, reply: r }) => {
                    st.server_end = st.server_end.max(wal_end);
                    // Outside transactions, the server's position is progress. (An
                    // open streamed transaction commits after it and is resent
                    // after a restart, so it does not hold this back.)
                    if !decoder.in_transaction() && wal_end > last_end {
                        batch.push(SourceMessage::Progress { position: Position::Postgres { lsn: wal_end } });
                    }
                    reply |= r;
                }
            }
        }
        if let Some(t) = target {
            // A streamed transaction still open commits after the server's
            // current position, so it does not hold this back.
            if !caught_up && !decoder.in_transaction() && (last_end >= t || st.server_end >= t) {
                // Outside a transaction, everything before both is handled.
                expected = last_end.max(st.server_end);
                batch.push(SourceMessage::Progress { position: Position::Postgres { lsn: expected } });
                batch.push(SourceMessage::CaughtUp);
                caught_up = true;
            }
        }
        if !batch.is_empty() && batch.len() < MAX_BATCH && !caught_up {
            // Linger briefly for a fuller batch: fewer wake-ups of the sink side.
            let started = *batch_started.get_or_insert_with(Instant::now);
            let left = LINGER.saturating_sub(started.elapsed());
            if !left.is_zero() {
                if let Ok(r) = tokio::time::timeout(left, conn.fill()).await {
                    r?;
                    continue;
                }
            }
        }
        if !batch.is_empty() {
            batch_started = None;
            let b = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            if !send_batch(conn, ctx, &mut st, b).await? {
                return Ok(());
            }
        }
        if caught_up {
            return finish(conn, ctx, &mut st, expected).await;
        }
        update_confirmed(ctx, &mut st);
        if reply || st.last_status.elapsed() >= STATUS_INTERVAL {
            status(conn, &mut st).await?;
        }
        if batch.is_empty() && conn_has_message(conn) {
            continue;
        }
        // Busy stream: wake only per LOW_WATER bytes; after a quiet spell,
        // relax to one byte so small tails, keepalives and the end of a
        // stream are read promptly.
        tokio::select! {
            r = conn.fill() => {
                r?;
                if relaxed {
                    relaxed = false;
                    conn.set_read_low_water(LOW_WATER);
                }
            }
            _ = tokio::time::sleep(RELAX_AFTER), if !relaxed => {
                relaxed = true;
                conn.set_read_low_water(1);
            }
            r = ctx.confirmed.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                update_confirmed(ctx, &mut st);
                status(conn, &mut st).await?;
            }
            _ = tokio::time::sleep(STATUS_INTERVAL) => {
                update_confirmed(ctx, &mut st);
                status(conn, &mut st).await?;
            }
        }
    }
}

fn conn_has_message(conn: &mut ReplicationConn) -> bool {
    conn.has_buffered_message()
}

/// After `CaughtUp`: wait for the runtime's final confirmation and report it.
pub async fn finish(
    conn: &mut ReplicationConn,
    ctx: &mut SourceContext,
    st: &mut StreamState,
    expected: u64,
) -> Result<(), SourceError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        update_confirmed(ctx, st);
        if st.confirmed >= expected {
            status(conn, st).await?;
            break;
        }
        tokio::select! {
            r = ctx.confirmed.changed() => {
                if r.is_err() {
                    break;
                }
                update_confirmed(ctx, st);
                status(conn, st).await?;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(())
}
