//! Checkpoints: where to resume, and what the sink had made durable.
//!
//! Invariant: a checkpoint is written only after the sink has made durable
//! every change before `position` (and every snapshot row of the tables it
//! marks `done`). It is written atomically (temp file, fsync, rename, fsync
//! of the directory), so after a crash it is either the old or the new one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::Position;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Not copied yet.
    Pending,
    /// Copy in progress (never durable: a restart copies the table again).
    Copying,
    /// Copied; its rows are durable in the sink.
    Done,
    /// `snapshot.mode: never`.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    pub snapshot: SnapshotState,
    /// The consistent point of the snapshot this table was copied in: stream
    /// changes of transactions that committed before it are already in the
    /// copy and are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_position: Option<Position>,
    #[serde(default)]
    pub snapshot_rows: u64,
    /// Fingerprint of the transforms the table was copied through (empty:
    /// none). When it changes, the table is copied again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transforms: String,
    /// The source could not decode a change of the table (the error): its
    /// changes are skipped until it is copied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub pipeline: String,
    /// Stream resume point (None before the first checkpoint of a stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Per-table snapshot state, keyed by `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<String, TableState>,
    /// Source-specific state (e.g. the slot and publication it created).
    #[serde(default)]
    pub source: serde_json::Value,
    /// Sink-specific state returned by the sink's last flush.
    #[serde(default)]
    pub sink: serde_json::Value,
    /// Wall-clock time of the write, milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated_ms: u64,
}

impl Checkpoint {
    pub fn new(pipeline: &str) -> Self {
        Checkpoint {
            version: 1,
            pipeline: pipeline.to_string(),
            position: None,
            tables: BTreeMap::new(),
            source: serde_json::Value::Null,
            sink: serde_json::Value::Null,
            updated_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write checkpoint {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where checkpoints live.
///
/// Contract: `save` returns only once the checkpoint is durable; `load`
/// returns the last saved checkpoint (never a torn one).
pub trait CheckpointStore: Send {
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError>;
    fn save(&mut self, cp: &Checkpoint) -> Result<(), CheckpointError>;
    fn clear(&mut self) -> Result<(), CheckpointError>;
    fn describe(&self) -> String;
}

/// A JSON file in a directory: `DIR/checkpoint.json`.
pub struct FileCheckpointStore {
    dir: PathBuf,
}

impl FileCheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileCheckpointStore { dir: dir.into() }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }
}

/// fsync a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::Read { path, source: e }),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| CheckpointError::Corrupt { path, message: e.to_string() })
    }

    fn save(&mut self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path();
        let werr = |e| CheckpointError::Write { path: path.clone(), source: e };
        if !self.dir.is_dir() {
            fs::create_dir_all(&self.dir).map_err(werr)?;
            if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(werr)?;
            }
        }
        let tmp = self.dir.join(".checkpoint.json.tmp");
        let mut cp = cp.clone();
        cp.updated_ms = now_ms();
        let body = serde_json::to_vec_pretty(&cp).expect("checkpoint serializes");
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&body).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr)?;
        sync_dir(&self.dir).map_err(werr)?;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), CheckpointError> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CheckpointError::Write { path, source: e }),
        }
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("sluice-cp-{}", std::process::id()));
        let mut store = FileCheckpointStore::new(&dir);
        assert!(store.load().unwrap().is_none());
        let mut cp = Checkpoint::new("p");
        cp.position = Some(Position::Postgres { lsn: u64::MAX - 1 });
        cp.tables.insert(
            "a.b".into(),
            TableState {
                snapshot: SnapshotState::Done,
                snapshot_position: None,
                snapshot_rows: 3,
                transforms: String::new(),
                stopped: Some("bad bytes".into()),
            },
        );
        store.save(&cp).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.position, cp.position);
        assert_eq!(back.tables, cp.tables);
        store.clear().unwrap();
        assert!(store.load().unwrap().is_none());
        let _ = fs::remove_dir_all(dir);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
