//! Preflight checks for `sluice check` on a MySQL/MariaDB source: each one
//! ensures one thing and, when it does not hold, names the setting and the fix.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use sluice_core::config::PipelineConfig;
use sluice_core::error::{ErrorKind, SourceError};
use sluice_core::{CheckpointStore, FileCheckpointStore, Position};

pub use sluice_core::preflight::{Finding, Report, Status};

use crate::catalog;
use sluice_client_mysql::{self as conn, Flavor};

/// The server settings a run cannot do without (checked at start, too).
const REQUIRED: [(&str, &str, &str); 4] = [
    ("log_bin", "ON", "start the server with --log-bin (log_bin = ON)"),
    ("binlog_format", "ROW", "SET GLOBAL binlog_format = 'ROW' (and binlog_format = ROW in the server's config)"),
    (
        "binlog_row_image",
        "FULL",
        "SET GLOBAL binlog_row_image = 'FULL' (and binlog_row_image = FULL in the server's config)",
    ),
    (
        "binlog_row_metadata",
        "FULL",
        "SET GLOBAL binlog_row_metadata = 'FULL' (and binlog_row_metadata = FULL in the server's config; MySQL 8.0.1+ / MariaDB 10.5+)",
    ),
];

/// Fail with a configuration error naming the first wrong setting.
pub async fn require_settings(c: &mut Conn) -> Result<(), SourceError> {
    for (name, want, fix) in REQUIRED {
        let got = conn::variable(c, name).await?;
        if !got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(want)) {
            return Err(SourceError::new(
                ErrorKind::Fatal,
                format!(
                    "the source has {name} = {}; Sluice needs {want}: {fix} (`sluice check` lists all requirements)",
                    got.as_deref().unwrap_or("(not supported)")
                ),
            ));
        }
    }
    Ok(())
}

/// Run every check; a connection failure ends the report early.
pub async fn check(cfg: &PipelineConfig) -> Report {
    let mut r = Report::default();
    let info = match crate::my_config(cfg).and_then(crate::conn_info) {
        Ok(i) => i,
        Err(e) => {
            r.push(Status::Fail, "connection", e.message);
            return r;
        }
    };
    let mut c = match info.connect().await {
        Ok(c) => c,
        Err(e) => {
            r.push(Status::Fail, "connection", e.message);
            return r;
        }
    };
    if let Err(e) = run_checks(cfg, &mut c, &mut r).await {
        r.push(Status::Fail, "query", e.message);
    }
    let _ = c.disconnect().await;
    r
}

async fn run_checks(cfg: &PipelineConfig, c: &mut Conn, r: &mut Report) -> Result<(), SourceError> {
    let (flavor, ver) = conn::server_version(c).await?;
    let ok_version = match flavor {
        Flavor::MariaDb => ver >= (10, 5, 0),
        Flavor::Mysql => ver >= (8, 0, 1),
    };
    r.push(
        if ok_version { Status::Ok } else { Status::Fail },
        "server version",
        format!(
            "{} {}.{}.{}{}",
            if flavor == Flavor::MariaDb { "MariaDB" } else { "MySQL" },
            ver.0,
            ver.1,
            ver.2,
            if ok_version { "" } else { ": Sluice needs MariaDB 10.5+ or MySQL 8.0.1+ (binlog_row_metadata)" }
        ),
    );
    r.push(Status::Ok, "connection", format!("connected to {} as {}", info_addr(c), c.opts().user().unwrap_or("")));
    for (name, want, fix) in REQUIRED {
        let got = conn::variable(c, name).await?;
        if got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(want)) {
            r.push(Status::Ok, name, format!("{name} = {want}"));
        } else {
            r.push(Status::Fail, name, format!("{name} = {}: {fix}", got.as_deref().unwrap_or("(not supported)")));
        }
    }
    if let Some(v) = conn::variable(c, "binlog_row_value_options").await? {
        if v.to_ascii_uppercase().contains("PARTIAL_JSON") {
            r.push(
                Status::Fail,
                "binlog_row_value_options",
                "binlog_row_value_options = PARTIAL_JSON: SET GLOBAL binlog_row_value_options = '' (Sluice needs full JSON images)",
            );
        }
    }
    if flavor == Flavor::MariaDb {
        let comp = conn::variable(c, "log_bin_compress").await?;
        if comp.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("ON")) {
            r.push(Status::Fail, "log_bin_compress", "log_bin_compress = ON: SET GLOBAL log_bin_compress = OFF");
        }
    }
    // Privileges.
    let grants: Vec<String> = c.query("SHOW GRANTS").await.map_err(|e| conn::sql_error("SHOW GRANTS", e))?;
    let all = grants.join("\n").to_ascii_uppercase();
    let has = |p: &str| all.contains("ALL PRIVILEGES ON *.*") || all.contains(p);
    let mut missing = Vec::new();
    if !(has("REPLICATION SLAVE") || has("REPLICATION REPLICA")) {
        missing.push("REPLICATION SLAVE");
    }
    if !(has("REPLICATION CLIENT") || has("BINLOG MONITOR") || has("SUPER")) {
        missing.push(if flavor == Flavor::MariaDb { "BINLOG MONITOR" } else { "REPLICATION CLIENT" });
    }
    if !(has("SELECT") || all.contains("ALL PRIVILEGES")) {
        missing.push("SELECT");
    }
    if flavor == Flavor::Mysql && !(has("RELOAD")) {
        missing.push("RELOAD (for the snapshot's brief FLUSH TABLES WITH READ LOCK)");
    }
    if missing.is_empty() {
        r.push(Status::Ok, "privileges", "replication and SELECT privileges granted");
    } else {
        r.push(
            Status::Fail,
            "privileges",
            format!("missing {}: GRANT {} ON *.* TO <user>", missing.join(", "), missing.join(", ")),
        );
    }
    // server_id.
    let ours = cfg.mysql_server_id();
    let theirs: Option<u32> = conn::variable(c, "server_id").await?.and_then(|v| v.parse().ok());
    let replicas: Vec<mysql_async::Row> = match c.query("SHOW SLAVE HOSTS").await {
        Ok(r) => r,
        Err(_) => c.query("SHOW REPLICAS").await.unwrap_or_default(),
    };
    let clash = replicas.into_iter().any(|mut row| row.take::<u32, _>(0) == Some(ours));
    if theirs == Some(ours) || clash {
        r.push(
            Status::Fail,
            "server_id",
            format!(
                "server id {ours} is already used by {}: set source.server_id to an unused id",
                if theirs == Some(ours) { "the source server itself" } else { "a connected replica" }
            ),
        );
    } else {
        r.push(Status::Ok, "server_id", format!("this pipeline registers as replica server id {ours}"));
    }
    // Binlog retention.
    let secs: Option<u64> = conn::variable(c, "binlog_expire_logs_seconds").await?.and_then(|v| v.parse().ok());
    let days: Option<f64> = conn::variable(c, "expire_logs_days").await?.and_then(|v| v.parse().ok());
    let retention = secs.filter(|s| *s > 0).or(days.filter(|d| *d > 0.0).map(|d| (d * 86400.0) as u64));
    match retention {
        None => r.push(Status::Ok, "binlog retention", "binlogs are kept until purged by hand"),
        Some(s) if s < 86_400 => r.push(
            Status::Warn,
            "binlog retention",
            format!(
                "binlogs expire after {s} s: a pipeline stopped longer than that must re-snapshot; \
                 raise binlog_expire_logs_seconds"
            ),
        ),
        Some(s) => r.push(Status::Ok, "binlog retention", format!("binlogs expire after {} h", s / 3600)),
    }
    // Tables.
    let tables = catalog::included_tables(c, &cfg.tables).await?;
    if tables.is_empty() {
        r.push(Status::Warn, "tables", "no table matches tables.include (yet)");
    } else {
        r.push(Status::Ok, "tables", format!("{} table(s) included", tables.len()));
        let mut no_key = Vec::new();
        for t in &tables {
            if let Some((s, _)) = catalog::table_schema(c, &t.id).await? {
                if !s.columns.iter().any(|c| c.key) {
                    no_key.push(t.id.to_string());
                }
            }
        }
        if !no_key.is_empty() {
            r.push(
                Status::Warn,
                "primary keys",
                format!("no primary key (rows are identified by their full old image): {}", no_key.join(", ")),
            );
        }
    }
    // The checkpoint's binlog must still exist.
    let store = FileCheckpointStore::new(cfg.checkpoint_dir());
    if let Ok(Some(cp)) = store.load() {
        if let Some(Position::Mysql { file, pos, gtid }) = &cp.position {
            let logs = catalog::binary_logs(c).await?;
            if logs.iter().any(|l| l == file) {
                r.push(Status::Ok, "checkpoint", format!("resumes at {file}:{pos}"));
            } else if gtid.is_some() {
                r.push(
                    Status::Warn,
                    "checkpoint",
                    format!(
                        "binlog {file} is gone; resuming by GTID {} works only if no later change was purged",
                        gtid.as_deref().unwrap_or("")
                    ),
                );
            } else {
                r.push(
                    Status::Fail,
                    "checkpoint",
                    format!("binlog {file} of the checkpoint has been purged: run `sluice teardown --yes` and run again (new snapshot)"),
                );
            }
        }
    }
    Ok(())
}

fn info_addr(c: &Conn) -> String {
    format!("{}:{}", c.opts().ip_or_hostname(), c.opts().tcp_port())
}
