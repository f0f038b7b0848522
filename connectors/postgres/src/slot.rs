//! The replication slots of a run: the pipeline's own slot, created with an
//! exported snapshot or checked against the checkpoint, and temporary slots
//! whose snapshots copy tables when the main slot already exists.
//!
//! Invariants:
//! - A slot is never created when the checkpoint has a position: a missing
//!   slot then means changes were lost, and the run stops saying so.
//! - A slot another consumer advanced past the checkpoint, one of another
//!   plugin or database, or one that lost WAL is refused, never used.
//! - The returned base LSN is the slot's confirmed position: the lowest the
//!   server may be told is durable.

use sluice_core::checkpoint::Checkpoint;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::event::format_lsn;
use sluice_core::schema::quote_ident;
use sluice_core::SnapshotState;

use sluice_client_postgres::ReplicationConn;

use crate::catalog::SlotInfo;

/// A slot created by this run: its consistent point and exported snapshot.
pub(crate) type Created = (u64, String);

/// Create the pipeline's slot if it is missing, or check the one that
/// exists. Returns the slot's base LSN and, when it was created now, its
/// consistent point and snapshot.
pub(crate) async fn open(
    repl: &mut ReplicationConn,
    slot: Option<&SlotInfo>,
    slot_name: &str,
    dbname: &str,
    cp: &Checkpoint,
) -> Result<(u64, Option<Created>), SourceError> {
    let resume_at = resume_at(cp);
    let Some(s) = slot else {
        if let Some(at) = resume_at {
            return Err(SourceError::fatal(format!(
                "replication slot {slot_name} no longer exists, but the checkpoint is at {}: changes since then are lost. \
                 Run `sluice teardown` and start again (the snapshot is taken anew)",
                format_lsn(at)
            )));
        }
        tracing::info!(slot = %slot_name, "creating replication slot (waits for transactions running now to finish)");
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                quote_ident(slot_name)
            ))
            .await?;
        let (lsn, snap) = parse_created(&rows)?;
        tracing::info!(slot = %slot_name, consistent_point = %format_lsn(lsn), "created replication slot");
        return Ok((lsn, Some((lsn, snap))));
    };
    check_existing(s, slot_name, dbname, resume_at)?;
    Ok((s.confirmed_flush.unwrap_or(0), None))
}

/// Where the stream must resume: the checkpoint, or before its first
/// stream checkpoint, the consistent point of the tables already copied.
fn resume_at(cp: &Checkpoint) -> Option<u64> {
    cp.position.as_ref().map(|p| p.lsn()).or_else(|| {
        cp.tables
            .values()
            .filter(|t| t.snapshot == SnapshotState::Done)
            .filter_map(|t| t.snapshot_position.as_ref().map(|p| p.lsn()))
            .min()
    })
}

fn check_existing(s: &SlotInfo, slot_name: &str, dbname: &str, resume_at: Option<u64>) -> Result<(), SourceError> {
    if s.plugin.as_deref() != Some("pgoutput") {
        return Err(SourceError::new(
            ErrorKind::Config,
            format!(
                "replication slot {slot_name} exists but uses plugin {:?}, not pgoutput; choose another source.slot",
                s.plugin
            ),
        ));
    }
    if s.database.as_deref() != Some(dbname) {
        return Err(SourceError::new(
            ErrorKind::Config,
            format!("replication slot {slot_name} belongs to database {:?}, not {:?}", s.database, dbname),
        ));
    }
    if s.wal_status.as_deref() == Some("lost") {
        return Err(SourceError::fatal(format!(
            "replication slot {slot_name} has lost required WAL (max_slot_wal_keep_size); run `sluice teardown` and start again"
        )));
    }
    if let Some(pid) = s.active_pid {
        return Err(SourceError::transient(format!(
            "replication slot {slot_name} is in use by server process {pid} (another Sluice running, or a connection not yet closed)"
        )));
    }
    let confirmed = s.confirmed_flush.unwrap_or(0);
    match resume_at {
        Some(at) if confirmed > at => Err(SourceError::fatal(format!(
            "replication slot {slot_name} has been advanced to {} past the checkpoint at {} by another consumer: \
             changes in between are lost. Run `sluice teardown` and start again",
            format_lsn(confirmed),
            format_lsn(at)
        ))),
        _ => Ok(()),
    }
}

/// A temporary slot on its own connection, for a snapshot of tables added
/// while the main slot exists. The connection must stay open until the copy
/// is done (closing it drops the slot and its snapshot).
pub(crate) async fn temporary(
    info: &sluice_client_postgres::ConnInfo,
    tables: usize,
) -> Result<(ReplicationConn, Created), SourceError> {
    let mut c = ReplicationConn::connect(info).await?;
    let name = format!("sluice_tmp_{}_{}", std::process::id(), rand_suffix());
    let rows = c
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(&name)
        ))
        .await?;
    let created = parse_created(&rows)?;
    tracing::info!(tables, consistent_point = %format_lsn(created.0), "snapshot through a temporary slot");
    Ok((c, created))
}

fn parse_created(rows: &[Vec<Option<String>>]) -> Result<Created, SourceError> {
    let row = rows.first().ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT returned no row"))?;
    let lsn = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|s| sluice_core::event::parse_lsn(&s))
        .ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT returned no consistent point"))?;
    let snap = row
        .get(2)
        .cloned()
        .flatten()
        .ok_or_else(|| SourceError::fatal("CREATE_REPLICATION_SLOT exported no snapshot"))?;
    Ok((lsn, snap))
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.subsec_nanos() % 1_000_000
}
