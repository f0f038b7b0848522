//! Preflight checks for `sluice check`: each function ensures one thing and
//! says how to fix it when it does not hold.

use sluice_core::config::{PipelineConfig, PostgresSourceConfig};
use sluice_core::error::SourceError;
use sluice_core::{CheckpointStore, FileCheckpointStore, ReplicaIdentity};
use tokio_postgres::Client;

use crate::catalog;
use sluice_client_postgres::{connect_sql, ConnInfo, ReplicationConn};

pub use sluice_core::preflight::{Finding, Report, Status};

async fn setting(client: &Client, name: &str) -> Option<String> {
    client.query_one("SELECT current_setting($1)", &[&name]).await.ok().map(|r| r.get(0))
}

/// The start-up check of `run`: the source is reachable and decodes
/// logically (`check` lists every requirement).
pub async fn require_settings(pg: &PostgresSourceConfig) -> Result<(), SourceError> {
    let client = connect_sql(&crate::conn_info(pg)?).await?;
    let wal_level = setting(&client, "wal_level").await.unwrap_or_default();
    if wal_level != "logical" {
        return Err(SourceError::fatal(format!(
            "the source has wal_level = {wal_level}; set wal_level = logical and restart it (`sluice check` lists all \
             requirements)"
        )));
    }
    Ok(())
}

/// Run every check; connection failures end the report early.
pub async fn check(cfg: &PipelineConfig) -> Report {
    let mut r = Report::default();
    let info = match crate::pg_config(cfg).and_then(crate::conn_info) {
        Ok(i) => i,
        Err(e) => {
            r.push(Status::Fail, "connection", e.message);
            return r;
        }
    };
    let client = match connect_sql(&info).await {
        Ok(c) => c,
        Err(e) => {
            r.push(Status::Fail, "connection", e.message);
            return r;
        }
    };
    let version = setting(&client, "server_version").await.unwrap_or_default();
    let major: u32 = setting(&client, "server_version_num").await.and_then(|v| v.parse().ok()).unwrap_or(0) / 10000;
    r.push(Status::Ok, "connection", format!("connected to {info} (PostgreSQL {version})"));
    if major < 10 {
        r.push(
            Status::Fail,
            "server version",
            format!("PostgreSQL {version} has no pgoutput; 10 or newer is required"),
        );
    }
    ensure_wal_level_logical(&client, &mut r).await;
    ensure_replication_privilege(&client, &mut r).await;
    ensure_replication_connection(&info, &mut r).await;
    ensure_slot_available(cfg, &client, &mut r).await;
    ensure_tables(cfg, &info, &client, &mut r).await;
    ensure_checkpoint_matches_slot(cfg, &client, &mut r).await;
    r
}

async fn ensure_wal_level_logical(client: &Client, r: &mut Report) {
    match setting(client, "wal_level").await.as_deref() {
        Some("logical") => r.push(Status::Ok, "wal_level", "wal_level = logical"),
        Some(other) => r.push(
            Status::Fail,
            "wal_level",
            format!("wal_level = {other}; set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart the server"),
        ),
        None => r.push(Status::Fail, "wal_level", "cannot read wal_level"),
    }
}

async fn ensure_replication_privilege(client: &Client, r: &mut Report) {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            let user: String = row.get(0);
            if row.get::<_, bool>(1) {
                r.push(Status::Ok, "privileges", format!("role {user} may replicate"));
            } else {
                r.push(
                    Status::Fail,
                    "privileges",
                    format!("role {user} lacks the REPLICATION attribute; run ALTER ROLE \"{user}\" WITH REPLICATION"),
                );
            }
        }
        Err(e) => r.push(Status::Fail, "privileges", format!("cannot read pg_roles: {e}")),
    }
}

async fn ensure_replication_connection(info: &ConnInfo, r: &mut Report) {
    match ReplicationConn::connect(info).await {
        Ok(mut c) => match c.simple_query("IDENTIFY_SYSTEM").await {
            Ok(_) => {
                r.push(Status::Ok, "replication connection", "replication connections are accepted");
                c.terminate().await;
            }
            Err(e) => r.push(Status::Fail, "replication connection", e.message),
        },
        Err(e) => r.push(Status::Fail, "replication connection", e.message),
    }
}

async fn ensure_slot_available(cfg: &PipelineConfig, client: &Client, r: &mut Report) {
    let slot = cfg.slot_name();
    match catalog::slot_info(client, &slot).await {
        Ok(Some(s)) => {
            if s.plugin.as_deref() != Some("pgoutput") {
                r.push(
                    Status::Fail,
                    "replication slot",
                    format!("slot {slot} exists with plugin {:?}; pgoutput is required", s.plugin),
                );
            } else if let Some(pid) = s.active_pid {
                r.push(
                    Status::Warn,
                    "replication slot",
                    format!("slot {slot} exists and is in use by server process {pid}"),
                );
            } else {
                r.push(
                    Status::Ok,
                    "replication slot",
                    format!(
                        "slot {slot} exists (confirmed up to {})",
                        s.confirmed_flush.map(sluice_core::event::format_lsn).unwrap_or_else(|| "-".into())
                    ),
                );
            }
        }
        Ok(None) => {
            let row = client
                .query_one(
                    "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                            current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int",
                    &[],
                )
                .await;
            match row {
                Ok(row) => {
                    let free_slots: i32 = row.get(0);
                    let free_senders: i32 = row.get(1);
                    if free_slots < 1 {
                        r.push(
                            Status::Fail,
                            "replication slot",
                            "no free replication slot; raise max_replication_slots (restart needed) or drop unused slots",
                        );
                    } else {
                        r.push(
                            Status::Ok,
                            "replication slot",
                            format!("slot {slot} will be created ({free_slots} free)"),
                        );
                    }
                    if free_senders < 1 {
                        r.push(
                            Status::Fail,
                            "wal senders",
                            "no free WAL sender; raise max_wal_senders (restart needed)",
                        );
                    }
                }
                Err(e) => r.push(Status::Fail, "replication slot", format!("cannot count slots: {e}")),
            }
        }
        Err(e) => r.push(Status::Fail, "replication slot", e.message),
    }
}

async fn ensure_tables(cfg: &PipelineConfig, info: &ConnInfo, client: &Client, r: &mut Report) {
    let tables = match catalog::included_tables(client, &cfg.tables).await {
        Ok(t) => t,
        Err(e) => {
            r.push(Status::Fail, "tables", e.message);
            return;
        }
    };
    if tables.is_empty() {
        r.push(
            Status::Fail,
            "tables",
            format!("no table matches include {:?} / exclude {:?}", cfg.tables.include, cfg.tables.exclude),
        );
        return;
    }
    r.push(Status::Ok, "tables", format!("{} table(s) included", tables.len()));
    for t in &tables {
        let name = format!("table {}", t.id);
        match (t.replica_identity, t.has_primary_key) {
            (ReplicaIdentity::Full, _) => {
                r.push(Status::Ok, &name, "REPLICA IDENTITY FULL: updates and deletes carry the whole old row")
            }
            (ReplicaIdentity::Default, true) | (ReplicaIdentity::Index, _) => {
                r.push(Status::Ok, &name, "updates and deletes carry the old key columns in `before`");
                if !t.toastable.is_empty() {
                    r.push(
                        Status::Warn,
                        &name,
                        format!(
                            "columns {} can be TOASTed: an UPDATE that leaves them unchanged omits them from `after`; \
                             where a consumer needs the whole row (a key change into files or Kafka, a filter that \
                             sends updates as upserts) Sluice reads them from this table by the new key (one query \
                             per batch); ALTER TABLE {} REPLICA IDENTITY FULL to always receive them in the stream",
                            t.toastable.join(", "),
                            t.id.quoted()
                        ),
                    );
                }
            }
            (ReplicaIdentity::Default, false) | (ReplicaIdentity::Nothing, _) => r.push(
                Status::Fail,
                &name,
                format!(
                    "no primary key and no usable replica identity: once published, UPDATE and DELETE on it fail. \
                     Add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL",
                    t.id.quoted()
                ),
            ),
        }
    }
    let pubname = cfg.publication_name();
    match catalog::publication_info(client, &pubname).await {
        Ok(None) => {
            let own = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE NOT pg_has_role(c.relowner, 'USAGE'))::int8 FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname || '.' || c.relname) = ANY($1)",
                    &[&tables.iter().map(|t| t.id.to_string()).collect::<Vec<_>>()],
                )
                .await
                .map(|row| row.get::<_, i64>(0))
                .unwrap_or(0);
            let superuser = setting(client, "is_superuser").await.as_deref() == Some("on");
            let can_create: bool = client
                .query_one("SELECT has_database_privilege(current_database(), 'CREATE')", &[])
                .await
                .map(|row| row.get(0))
                .unwrap_or(false);
            if !can_create {
                r.push(
                    Status::Fail,
                    "publication",
                    format!("publication {pubname} must be created, but the role may not create objects in this database; GRANT CREATE ON DATABASE {} TO <role>, or create the publication yourself", info.dbname),
                );
            } else if own > 0 && !superuser {
                r.push(Status::Fail, "publication", format!("publication {pubname} must be created, but the role does not own {own} included table(s); create it as their owner"));
            } else {
                r.push(
                    Status::Ok,
                    "publication",
                    format!("publication {pubname} will be created for the included tables"),
                );
            }
        }
        Ok(Some(p)) => {
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !p.all_tables && !p.tables.contains(&t.id))
                .map(|t| t.id.to_string())
                .collect();
            if missing.is_empty() || p.ours {
                r.push(
                    Status::Ok,
                    "publication",
                    format!("publication {pubname} exists{}", if p.ours { " (managed by Sluice)" } else { "" }),
                );
            } else {
                r.push(
                    Status::Fail,
                    "publication",
                    format!(
                        "publication {pubname} lacks {}; ALTER PUBLICATION {pubname} ADD TABLE ...",
                        missing.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.push(Status::Fail, "publication", e.message),
    }
}

async fn ensure_checkpoint_matches_slot(cfg: &PipelineConfig, client: &Client, r: &mut Report) {
    let store = FileCheckpointStore::new(cfg.checkpoint_dir());
    match store.load() {
        Ok(Some(cp)) => {
            if let Some(p) = cp.position {
                match catalog::slot_info(client, &cfg.slot_name()).await {
                    Ok(None) => r.push(
                        Status::Fail,
                        "checkpoint",
                        format!(
                            "checkpoint {} is at {} but slot {} does not exist: changes are lost; run `sluice teardown` to start over",
                            store.describe(),
                            sluice_core::event::format_lsn(p.lsn()),
                            cfg.slot_name()
                        ),
                    ),
                    Ok(Some(slot)) if slot.confirmed_flush.map(|c| c > p.lsn()).unwrap_or(false) => r.push(
                        Status::Fail,
                        "checkpoint",
                        format!(
                            "slot {} has been advanced to {} past the checkpoint at {} by another consumer: changes in between are lost; run `sluice teardown` to start over",
                            cfg.slot_name(),
                            sluice_core::event::format_lsn(slot.confirmed_flush.unwrap_or(0)),
                            sluice_core::event::format_lsn(p.lsn())
                        ),
                    ),
                    Ok(Some(_)) => r.push(Status::Ok, "checkpoint", format!("resumes from {}", sluice_core::event::format_lsn(p.lsn()))),
                    Err(_) => {}
                }
            }
        }
        Ok(None) => r.push(Status::Ok, "checkpoint", format!("no checkpoint yet at {}", store.describe())),
        Err(e) => r.push(Status::Fail, "checkpoint", e.to_string()),
    }
}
