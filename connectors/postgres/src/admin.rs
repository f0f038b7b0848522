//! `status` and `teardown` against the source.

use sluice_core::config::PipelineConfig;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::schema::quote_ident;

use crate::catalog;
use sluice_client_postgres::{connect_sql, sql_error};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStatus {
    pub reachable: bool,
    pub error: Option<String>,
    pub current_wal_lsn: Option<u64>,
    pub slot_exists: bool,
    pub slot_active: bool,
    pub slot_confirmed_lsn: Option<u64>,
    /// Bytes of WAL between the slot's confirmed position and the server's end.
    pub lag_bytes: Option<u64>,
}

pub async fn status(cfg: &PipelineConfig) -> SourceStatus {
    let mut s = SourceStatus::default();
    let res: Result<(), SourceError> = async {
        let info = crate::pg_config(cfg).and_then(crate::conn_info)?;
        let client = connect_sql(&info).await?;
        s.reachable = true;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| sql_error("reading pg_current_wal_lsn()", e))?;
        s.current_wal_lsn = sluice_core::event::parse_lsn(&row.get::<_, String>(0));
        if let Some(slot) = catalog::slot_info(&client, &cfg.slot_name()).await? {
            s.slot_exists = true;
            s.slot_active = slot.active_pid.is_some();
            s.slot_confirmed_lsn = slot.confirmed_flush;
            if let (Some(cur), Some(conf)) = (s.current_wal_lsn, slot.confirmed_flush) {
                s.lag_bytes = Some(cur.saturating_sub(conf));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        s.error = Some(e.message);
    }
    s
}

/// Drop the slot and (if Sluice created it) the publication. Returns what was done.
pub async fn teardown(cfg: &PipelineConfig) -> Result<Vec<String>, SourceError> {
    let info = crate::pg_config(cfg).and_then(crate::conn_info)?;
    let client = connect_sql(&info).await?;
    let mut done = Vec::new();
    let slot = cfg.slot_name();
    if let Some(s) = catalog::slot_info(&client, &slot).await? {
        if let Some(pid) = s.active_pid {
            return Err(SourceError::new(
                ErrorKind::Fatal,
                format!("replication slot {slot} is in use by server process {pid}; stop the pipeline first"),
            ));
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(|e| sql_error(&format!("dropping slot {slot}"), e))?;
        done.push(format!("dropped replication slot {slot}"));
    } else {
        done.push(format!("replication slot {slot} did not exist"));
    }
    let pubname = cfg.publication_name();
    match catalog::publication_info(&client, &pubname).await? {
        Some(p) if p.ours => {
            client
                .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&pubname)))
                .await
                .map_err(|e| sql_error(&format!("dropping publication {pubname}"), e))?;
            done.push(format!("dropped publication {pubname}"));
        }
        Some(_) => done.push(format!("kept publication {pubname} (not created by Sluice)")),
        None => done.push(format!("publication {pubname} did not exist")),
    }
    Ok(done)
}
