//! Durability of the target's commits.
//!
//! Invariant: a source position is confirmed only once the target
//! transaction that stored it (data and checkpoint row) is durable. With
//! `innodb_flush_log_at_trx_commit` 1 (or MariaDB's 3) a `COMMIT` returns
//! after the redo log is flushed. With 0 or 2 it returns before, and the log
//! is flushed about once per `innodb_flush_log_at_timeout` seconds (0 loses
//! the last second's commits when the server stops hard, 2 when its machine
//! does). The setting is global, not per session, so the sink follows it:
//! each commit's redo log position is remembered (the current LSN right
//! after it) and reported durable once the flushed LSN has passed it
//! (MariaDB `Innodb_lsn_current`/`Innodb_lsn_flushed`, MySQL 8.0.30+
//! `Innodb_redo_log_current_lsn`/`Innodb_redo_log_flushed_to_disk_lsn`).
//! A server that reports neither is given the flush interval twice over,
//! measured on a monotonic clock from the commit.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_core::preflight::{Report, Status};
use sluice_core::sink::CommitWatermark;
use sluice_core::SinkError;

use crate::sql_err;

/// How the target's commits become durable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// At `COMMIT`.
    Commit,
    /// When the redo log's flushed LSN passes the commit's.
    Lsn,
    /// About `Duration` after the commit (no LSN is reported).
    Delay(Duration),
}

/// The variables of the two status dialects: (current, flushed).
const STATUS: &str = "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_lsn_current', 'Innodb_lsn_flushed', \
                      'Innodb_redo_log_current_lsn', 'Innodb_redo_log_flushed_to_disk_lsn')";

async fn settings(conn: &mut Conn) -> Result<(u64, u64), SinkError> {
    let row: Option<(u64, u64)> = conn
        .query_first("SELECT @@innodb_flush_log_at_trx_commit, @@innodb_flush_log_at_timeout")
        .await
        .map_err(|e| sql_err("reading innodb_flush_log_at_trx_commit", e))?;
    Ok(row.unwrap_or((1, 1)))
}

/// The redo log's (current, flushed) LSNs, when the server reports them.
async fn lsns(conn: &mut Conn) -> Result<Option<(u64, u64)>, SinkError> {
    let rows: Vec<(String, String)> =
        conn.query(STATUS).await.map_err(|e| sql_err("reading the redo log position", e))?;
    let get = |names: [&str; 2]| {
        let v = |n: &str| rows.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).and_then(|(_, v)| v.parse().ok());
        v(names[0]).zip(v(names[1]))
    };
    Ok(get(["Innodb_lsn_current", "Innodb_lsn_flushed"])
        .or_else(|| get(["Innodb_redo_log_current_lsn", "Innodb_redo_log_flushed_to_disk_lsn"])))
}

/// How this target's commits become durable.
pub(crate) async fn mode(conn: &mut Conn) -> Result<Mode, SinkError> {
    let (flush, timeout) = settings(conn).await?;
    if flush == 1 || flush == 3 {
        return Ok(Mode::Commit);
    }
    let mode = match lsns(conn).await? {
        Some(_) => Mode::Lsn,
        None => Mode::Delay(Duration::from_secs(2 * timeout.max(1) + 1)),
    };
    tracing::info!(
        "the target flushes its redo log after commits (innodb_flush_log_at_trx_commit = {flush}): source positions \
         are confirmed once it is flushed past them"
    );
    Ok(mode)
}

/// Milliseconds on a monotonic clock, the "log position" of [`Mode::Delay`].
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Record a commit that just returned.
pub(crate) async fn committed(conn: &mut Conn, mode: Mode, commits: &mut CommitWatermark) -> Result<(), SinkError> {
    match mode {
        Mode::Commit => commits.committed(None),
        Mode::Lsn => match lsns(conn).await? {
            Some((current, flushed)) => {
                commits.committed(Some(current));
                commits.flushed_to(flushed);
            }
            None => return Err(SinkError::fatal("mysql sink: the target stopped reporting its redo log position")),
        },
        Mode::Delay(d) => commits.committed(Some(monotonic_ms() + d.as_millis() as u64)),
    }
    Ok(())
}

/// Bring `commits` up to date with the flushed redo log. With `wait` (the run
/// is ending), wait up to the flush interval for the last commits.
pub(crate) async fn probe(
    conn: &mut Conn,
    mode: Mode,
    wait: bool,
    commits: &mut CommitWatermark,
) -> Result<(), SinkError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match mode {
            Mode::Commit => commits.all_durable(),
            Mode::Lsn => {
                if let Some((_, flushed)) = lsns(conn).await? {
                    commits.flushed_to(flushed);
                }
            }
            Mode::Delay(_) => commits.flushed_to(monotonic_ms()),
        }
        if !wait || !commits.pending() || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sluice check` findings about the target's durability settings.
pub(crate) async fn findings(conn: &mut Conn, report: &mut Report) -> Result<(), SinkError> {
    let (flush, timeout) = settings(conn).await?;
    if flush == 1 || flush == 3 {
        report.push(Status::Ok, "sink durability", format!("target innodb_flush_log_at_trx_commit = {flush}"));
    } else {
        let how = match lsns(conn).await? {
            Some(_) => "once the redo log is flushed past them".to_string(),
            None => {
                format!("{} s after their commit (the server reports no redo log position)", 2 * timeout.max(1) + 1)
            }
        };
        report.push(
            Status::Warn,
            "sink durability",
            format!(
                "target innodb_flush_log_at_trx_commit = {flush}: commits return before they are durable, and a \
                 crash of the target undoes up to {timeout} s of them; Sluice confirms source positions only {how}, \
                 so the source sends those again (nothing is lost, confirmations lag); set it to 1 for durable commits"
            ),
        );
    }
    let row: Option<(u64, u64)> =
        conn.query_first("SELECT @@log_bin, @@sync_binlog").await.map_err(|e| sql_err("reading sync_binlog", e))?;
    if let Some((1, sync)) = row {
        if sync != 1 {
            report.push(
                Status::Warn,
                "sink durability",
                format!(
                    "target sync_binlog = {sync} with the binary log on: after a crash of its machine the target's \
                     binlog can lack transactions its tables kept (replicas or CDC reading the target diverge; \
                     Sluice's own checkpoint is not affected); set sync_binlog = 1"
                ),
            );
        }
    }
    Ok(())
}
