//! The checkpoint row: `<checkpoint_schema>.sluice_checkpoints` in the
//! target, one row per pipeline, written in the target transaction that
//! applies the changes it covers (see [`sluice_core::CheckpointRow`]), and the
//! sink's own state kept in it (tables stopped, indexes still to rebuild,
//! tables that take upserts).

use sluice_core::config::DbSinkConfig;
use sluice_core::error::SinkError;
use sluice_core::schema::quote_ident;
use sluice_core::{Checkpoint, CheckpointRow, TableId};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::*;

impl PostgresSink {
    /// Create the checkpoint table if it is missing and load this
    /// pipeline's row: the checkpoint to resume from and the sink state
    /// stored with it.
    pub(crate) async fn load_checkpoint(&mut self, client: &Client) -> Result<(), SinkError> {
        let cs = self.cfg.checkpoint_schema.as_deref().unwrap_or("public");
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} (pipeline text PRIMARY KEY, position text, \
             checkpoint jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())",
            quote_ident(cs),
            self.checkpoint_table()
        );
        client.batch_execute(&ddl).await.map_err(|e| sql_err("creating sluice_checkpoints", e))?;
        let row = client
            .query_opt(
                &format!("SELECT checkpoint::text FROM {} WHERE pipeline = $1", self.checkpoint_table()),
                &[&self.pipeline],
            )
            .await
            .map_err(|e| sql_err("reading sluice_checkpoints", e))?;
        if let Some(r) = row {
            let text: String = r.get(0);
            let place = format!("postgres sink: the checkpoint of {} in sluice_checkpoints", self.pipeline);
            let cp = CheckpointRow::parse(&text, &place)?;
            self.stopped = StoppedTables::from_state(&cp.sink);
            self.deferred =
                cp.sink.get("deferred_indexes").map(indexes::from_state).unwrap_or_default().into_iter().collect();
            let stored_upserts = cp.sink.get("upsert_tables").and_then(|v| v.as_array()).into_iter().flatten();
            let mut upserts = self.upserts.lock().unwrap_or_else(|p| p.into_inner());
            for t in stored_upserts {
                if let (Some(schema), Some(name)) = (t[0].as_str(), t[1].as_str()) {
                    upserts.insert(TableId::new(schema, name));
                }
            }
            drop(upserts);
            self.stored = Some(cp);
        }
        Ok(())
    }

    /// Write the checkpoint row for `next` in the open target transaction.
    /// Returns the sink state stored in it.
    pub(crate) async fn write_checkpoint(&mut self, next: &Checkpoint) -> Result<serde_json::Value, SinkError> {
        // The checkpoint as the runtime will store it: with this sink's state.
        let state = self.state();
        let row = CheckpointRow::new(next, &state);
        let sql = format!(
            "INSERT INTO {} (pipeline, position, checkpoint, updated_at) VALUES ($1, $2, $3::text::jsonb, now()) \
             ON CONFLICT (pipeline) DO UPDATE SET position = EXCLUDED.position, checkpoint = EXCLUDED.checkpoint, \
             updated_at = now()",
            self.checkpoint_table()
        );
        let client = self.client().await?;
        let stmt = client
            .prepare_typed(&sql, &[Type::TEXT, Type::TEXT, Type::TEXT])
            .await
            .map_err(|e| sql_err("writing the checkpoint", e))?;
        client
            .execute(&stmt, &[&self.pipeline, &row.position, &row.body])
            .await
            .map_err(|e| sql_err("writing the checkpoint", e))?;
        Ok(state)
    }

    pub(crate) fn checkpoint_table(&self) -> String {
        format!("{}.sluice_checkpoints", quote_ident(self.cfg.checkpoint_schema.as_deref().unwrap_or("public")))
    }

    /// The sink's checkpoint state: stopped tables, deferred index builds
    /// and the tables that take upserts.
    pub(crate) fn state(&self) -> serde_json::Value {
        let mut state = self.stopped.to_state();
        if !self.deferred.is_empty() {
            if state.is_null() {
                state = serde_json::json!({});
            }
            state["deferred_indexes"] = serde_json::Value::Array(indexes::to_state(self.deferred.iter()));
        }
        let upserts = self.upserts.lock().unwrap_or_else(|p| p.into_inner());
        if !upserts.is_empty() {
            if state.is_null() {
                state = serde_json::json!({});
            }
            state["upsert_tables"] = upserts.iter().map(|t| serde_json::json!([t.schema, t.name])).collect();
        }
        state
    }
}

/// `teardown`: forget the pipeline's checkpoint in the target (the
/// replicated tables stay). Returns what was done.
pub async fn forget(cfg: &DbSinkConfig, pipeline: &str) -> Result<String, SinkError> {
    let client = connect(cfg).await?;
    let sink = PostgresSink::new(cfg.clone(), pipeline);
    let table = sink.checkpoint_table();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| sql_err("looking up sluice_checkpoints", e))?
        .get(0);
    if !exists {
        return Ok("target: no sluice_checkpoints table".into());
    }
    let n = client
        .execute(&format!("DELETE FROM {table} WHERE pipeline = $1"), &[&pipeline])
        .await
        .map_err(|e| sql_err("deleting the checkpoint", e))?;
    Ok(format!("target: removed {n} checkpoint row(s) of {pipeline} from {table} (the replica tables stay)"))
}
