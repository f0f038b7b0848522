//! Durability of the target's commits.
//!
//! Invariant: a source position is confirmed only once the target
//! transaction that stored it (data and checkpoint row) is durable. With
//! `synchronous_commit` on (or `local`, `remote_write`, `remote_apply`) a
//! `COMMIT` returns after the WAL is flushed, so every commit is durable when
//! it returns. With `synchronous_commit = off` — common on replicas, and the
//! default of Postgres's own apply workers — it returns before: as the apply
//! worker does, each commit's WAL position is remembered
//! (`pg_current_wal_insert_lsn()` right after it, which is at or past the end
//! of its commit record) and reported durable once `pg_current_wal_flush_lsn()`
//! has passed it. Asynchronous commit keeps its speed; a target stopped hard
//! loses only commits whose positions were never confirmed, and the source
//! sends them again.

use sluice_core::event::parse_lsn;
use sluice_core::preflight::{Report, Status};
use sluice_core::sink::CommitWatermark;
use sluice_core::SinkError;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::sql_err;

/// True when the session's commits return before their WAL is flushed.
pub(crate) async fn asynchronous(client: &Client) -> Result<bool, SinkError> {
    let row =
        client.query_one("SHOW synchronous_commit", &[]).await.map_err(|e| sql_err("SHOW synchronous_commit", e))?;
    Ok(row.get::<_, String>(0) == "off")
}

/// Commit the open transaction and record it in `commits`.
pub(crate) async fn commit(
    client: &Client,
    asynchronous: bool,
    commits: &mut CommitWatermark,
) -> Result<(), SinkError> {
    if !asynchronous {
        client.batch_execute("COMMIT").await.map_err(|e| sql_err("COMMIT", e))?;
        commits.committed(None);
        return Ok(());
    }
    // One round trip: the commit, then where the WAL ends and how far it is flushed.
    let msgs = client
        .simple_query("COMMIT; SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text")
        .await
        .map_err(|e| sql_err("COMMIT", e))?;
    let row = msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    let lsn = |i: usize| row.and_then(|r| r.get(i)).and_then(parse_lsn);
    match (lsn(0), lsn(1)) {
        (Some(end), Some(flushed)) => {
            commits.committed(Some(end));
            commits.flushed_to(flushed);
            Ok(())
        }
        _ => Err(SinkError::fatal("postgres sink: the target did not report its WAL position after COMMIT")),
    }
}

/// Bring `commits` up to date with the target's flushed WAL. With `force`,
/// make every commit so far durable now: a transaction committed with
/// `synchronous_commit = on` waits for the WAL to be flushed up to its own
/// commit record, which follows every earlier commit's.
pub(crate) async fn probe(
    client: &Client,
    checkpoint_table: &str,
    pipeline: &str,
    force: bool,
    commits: &mut CommitWatermark,
) -> Result<(), SinkError> {
    if force {
        client
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
            .await
            .map_err(|e| sql_err("making the last commits durable", e))?;
        // Writing the checkpoint row's time gives the transaction a commit record.
        let touched = client
            .execute(&format!("UPDATE {checkpoint_table} SET updated_at = now() WHERE pipeline = $1"), &[&pipeline])
            .await;
        let done = client.batch_execute("COMMIT").await;
        touched.and(done).map_err(|e| sql_err("making the last commits durable", e))?;
        commits.all_durable();
        return Ok(());
    }
    let row = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(|e| sql_err("reading the target's flushed WAL position", e))?;
    if let Some(flushed) = row.get::<_, Option<String>>(0).as_deref().and_then(parse_lsn) {
        commits.flushed_to(flushed);
    }
    Ok(())
}

/// `sluice check` findings about the target's durability settings.
pub(crate) async fn findings(client: &Client, report: &mut Report) -> Result<(), SinkError> {
    let setting = |name: &'static str| async move {
        client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .map_err(|e| sql_err(name, e))
    };
    let sync = setting("synchronous_commit").await?;
    let how = if sync == "off" {
        "commits return before the WAL is flushed; source positions are confirmed once the target's WAL is flushed \
         past them (pg_current_wal_flush_lsn)"
    } else {
        "commits are durable when they return"
    };
    report.push(Status::Ok, "sink durability", format!("target synchronous_commit = {sync}: {how}"));
    if setting("fsync").await? == "off" {
        report.push(
            Status::Warn,
            "sink durability",
            "the target runs with fsync = off: a crash of its machine can lose commits whose source positions were \
             already confirmed (the replica then misses them); turn fsync on",
        );
    }
    Ok(())
}
