//! `status` and `teardown` against a MySQL/MariaDB source.

use sluice_core::config::PipelineConfig;
use sluice_core::error::SourceError;

use crate::catalog;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStatus {
    pub reachable: bool,
    pub error: Option<String>,
    /// The server's binlog end.
    pub binlog_file: Option<String>,
    pub binlog_pos: Option<u64>,
    pub gtid: Option<String>,
}

pub async fn status(cfg: &PipelineConfig) -> SourceStatus {
    let mut s = SourceStatus::default();
    let res: Result<(), SourceError> = async {
        let info = crate::conn_info(crate::my_config(cfg)?)?;
        let mut c = info.connect().await?;
        s.reachable = true;
        let (file, pos, gtid) = catalog::master_status(&mut c).await?;
        s.gtid = match gtid {
            Some(g) => Some(g),
            None => catalog::mariadb_gtid_at(&mut c, &file, pos).await.ok().flatten(),
        };
        s.binlog_file = Some(file);
        s.binlog_pos = Some(pos);
        let _ = c.disconnect().await;
        Ok(())
    }
    .await;
    if let Err(e) = res {
        s.error = Some(e.message);
    }
    s
}

/// A MySQL source keeps no state on the server (no slot): nothing to drop.
pub async fn teardown(_cfg: &PipelineConfig) -> Result<Vec<String>, SourceError> {
    Ok(vec!["MySQL source: nothing to drop on the server (Sluice keeps no server-side state)".to_string()])
}
