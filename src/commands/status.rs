//! `sluice status`: the checkpoint, per-table snapshot state and the
//! source's position and lag.

use std::path::Path;

use sluice_core::{CheckpointStore, FileCheckpointStore};

use crate::sources;
use crate::{load, Failure};

pub(crate) async fn cmd_status(path: &Path, json: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    let store = FileCheckpointStore::new(cfg.checkpoint_dir());
    let cp = store.load()?;
    let src = sources::status(&cfg).await;
    if json {
        let (src_json, lag) = match &src {
            sources::Status::Postgres(s) => (serde_json::to_value(s).expect("json"), serde_json::json!(s.lag_bytes)),
            sources::Status::Mysql(s) => (serde_json::to_value(s).expect("json"), serde_json::Value::Null),
        };
        let v = serde_json::json!({
            "pipeline": cfg.name,
            "checkpoint_file": store.describe(),
            "checkpoint": cp.as_ref().map(|c| serde_json::json!({
                "position": match &c.position {
                    Some(sluice_core::Position::Postgres { lsn }) => serde_json::json!(lsn),
                    Some(p) => serde_json::to_value(p).expect("json"),
                    None => serde_json::Value::Null,
                },
                "position_text": c.position.as_ref().map(|p| p.to_string()),
                "updated_ms": c.updated_ms,
                "tables": serde_json::to_value(c).expect("json")["tables"],
            })),
            "source": src_json,
            "lag_bytes": lag,
        });
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(0);
    }
    println!("pipeline {}", cfg.name);
    match &cp {
        None => println!("  checkpoint: none yet ({})", store.describe()),
        Some(c) => {
            println!(
                "  checkpoint: {} ({})",
                c.position.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "snapshot in progress".into()),
                store.describe()
            );
            for (t, s) in &c.tables {
                println!("    {:<40} snapshot {:?} ({} rows)", t.to_string(), s.snapshot, s.snapshot_rows);
            }
        }
    }
    match src {
        sources::Status::Postgres(src) if src.reachable => println!(
            "  source: slot {} {}; lag {}",
            cfg.slot_name(),
            if src.slot_exists {
                if src.slot_active {
                    "active"
                } else {
                    "inactive"
                }
            } else {
                "missing"
            },
            src.lag_bytes.map(|b| format!("{b} bytes")).unwrap_or_else(|| "-".into())
        ),
        sources::Status::Mysql(src) if src.reachable => println!(
            "  source: binlog at {}:{}{}",
            src.binlog_file.unwrap_or_default(),
            src.binlog_pos.unwrap_or(0),
            src.gtid.map(|g| format!(" (gtid {g})")).unwrap_or_default()
        ),
        sources::Status::Postgres(sluice_source_postgres::admin::SourceStatus { error, .. })
        | sources::Status::Mysql(sluice_source_mysql::admin::SourceStatus { error, .. }) => {
            println!("  source: unreachable ({})", error.unwrap_or_default())
        }
    }
    Ok(0)
}
