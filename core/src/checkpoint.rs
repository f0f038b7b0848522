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
use crate::schema::TableId;

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
    /// Per-table snapshot state (keys in files: see [`table_keys`]).
    #[serde(default, with = "table_keys")]
    pub tables: BTreeMap<TableId, TableState>,
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
    /// The state of `table`. A file of the earlier format named a table in a
    /// schema with a dot in its name ambiguously (`my.schema.t` loads as
    /// schema `my`, table `schema.t`): such a key is found by its text.
    pub fn table_state(&self, table: &TableId) -> Option<&TableState> {
        self.tables.get(table).or_else(|| {
            let text = table.to_string();
            self.tables.iter().find(|(k, _)| k.to_string() == text).map(|(_, v)| v)
        })
    }

    /// Give the tables of `included` their own keys where the checkpoint
    /// holds them under an ambiguous key of the earlier format (see
    /// [`Self::table_state`]).
    pub fn rekey_legacy(&mut self, included: &[TableId]) {
        for id in included {
            if self.tables.contains_key(id) {
                continue;
            }
            let text = id.to_string();
            if let Some(k) = self.tables.keys().find(|k| k.to_string() == text).cloned() {
                let state = self.tables.remove(&k).expect("found above");
                self.tables.insert(id.clone(), state);
            }
        }
    }

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

/// The checkpoint row a replica sink keeps in its own target
/// (`sluice_checkpoints`: pipeline, position text, checkpoint JSON). It is
/// written in the target transaction that applies the changes it covers, so
/// data and position commit together; both replica sinks use this one form.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRow {
    /// The stream position as text (for people reading the table).
    pub position: Option<String>,
    /// The whole checkpoint as JSON, as the runtime will store it.
    pub body: String,
}

impl CheckpointRow {
    /// The row for `next`, with the sink's `state` in place of `next.sink`.
    pub fn new(next: &Checkpoint, state: &serde_json::Value) -> CheckpointRow {
        let body = serde_json::to_string(&Checkpoint { sink: state.clone(), ..next.clone() })
            .expect("a checkpoint always serializes");
        CheckpointRow { position: next.position.as_ref().map(|p| p.to_string()), body }
    }

    /// Read a stored row's checkpoint; `place` says where it was read (`the
    /// checkpoint of P in T`) for the error, which is fatal: a corrupt row
    /// cannot be resumed from, and guessing would lose or repeat changes.
    pub fn parse(body: &str, place: &str) -> Result<Checkpoint, crate::error::SinkError> {
        serde_json::from_str(body).map_err(|e| {
            crate::error::SinkError::fatal(format!(
                "{place} is corrupt: {e}; remove the row (sluice teardown) to start over"
            ))
        })
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

/// How tables are named in checkpoint files: `schema.table`, as every
/// earlier version wrote them, when neither name holds a `.` or a `"`;
/// otherwise both names quoted like SQL identifiers (`"my.schema"."t"`),
/// so that no key is ambiguous. Keys of files written before (always
/// unquoted) load as they always did: split at the first `.`.
pub mod table_keys {
    use std::collections::BTreeMap;

    use serde::de::Deserializer;
    use serde::ser::{SerializeMap, Serializer};
    use serde::Deserialize;

    use super::TableState;
    use crate::schema::{quote_ident, TableId};

    /// The key of `id`.
    pub fn key(id: &TableId) -> String {
        let plain = |s: &str| !s.contains('.') && !s.contains('"');
        if plain(&id.schema) && plain(&id.name) {
            format!("{}.{}", id.schema, id.name)
        } else {
            format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
        }
    }

    /// The table a key names.
    pub fn parse(key: &str) -> TableId {
        if let Some((schema, rest)) = quoted(key) {
            if let Some((name, "")) = rest.strip_prefix('.').and_then(quoted) {
                return TableId::new(schema, name);
            }
        }
        match key.split_once('.') {
            Some((s, n)) => TableId::new(s, n),
            None => TableId::new("", key),
        }
    }

    /// A leading `"..."` identifier (`""` inside is one `"`), and the rest.
    fn quoted(s: &str) -> Option<(String, &str)> {
        let mut chars = s.strip_prefix('"')?.char_indices().peekable();
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                out.push(c);
            } else if chars.peek().is_some_and(|&(_, n)| n == '"') {
                out.push('"');
                chars.next();
            } else {
                return Some((out, &s[i + 2..]));
            }
        }
        None
    }

    pub fn serialize<S: Serializer>(tables: &BTreeMap<TableId, TableState>, ser: S) -> Result<S::Ok, S::Error> {
        let mut map = ser.serialize_map(Some(tables.len()))?;
        for (id, state) in tables {
            map.serialize_entry(&key(id), state)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BTreeMap<TableId, TableState>, D::Error> {
        let raw = BTreeMap::<String, TableState>::deserialize(de)?;
        Ok(raw.into_iter().map(|(k, v)| (parse(&k), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_are_unambiguous_and_compatible() {
        for (schema, name, key) in [
            ("public", "acct", "public.acct"),
            ("my.schema", "t", "\"my.schema\".\"t\""),
            ("s", "a.b", "\"s\".\"a.b\""),
            ("we\"ird", "x.\"y", "\"we\"\"ird\".\"x.\"\"y\""),
            ("", "t", ".t"),
        ] {
            let id = TableId::new(schema, name);
            assert_eq!(table_keys::key(&id), key);
            assert_eq!(table_keys::parse(key), id, "{key}");
        }
        // Keys of earlier files: unquoted, split at the first dot.
        assert_eq!(table_keys::parse("shop.acct"), TableId::new("shop", "acct"));
        assert_eq!(table_keys::parse("s.a.b"), TableId::new("s", "a.b"));
        assert_eq!(table_keys::parse("\"broken"), TableId::new("", "\"broken"));
    }

    /// A checkpoint file as Sluice wrote it before tables were keyed by
    /// `TableId` (the format of every release so far) still loads, and is
    /// written back the same.
    #[test]
    fn a_checkpoint_file_of_the_earlier_format_loads() {
        let old = r#"{
  "version": 1,
  "pipeline": "orders",
  "position": { "type": "postgres", "lsn": 23456789 },
  "tables": {
    "public.acct": { "snapshot": "done", "snapshot_position": { "type": "postgres", "lsn": 1234 }, "snapshot_rows": 300 },
    "shop.orders": { "snapshot": "copying", "snapshot_rows": 0, "transforms": "f1" },
    "public.bad": { "snapshot": "done", "snapshot_rows": 1, "stopped": "bad bytes" }
  },
  "source": { "slot": "sluice_orders" },
  "sink": { "files": 3 },
  "updated_ms": 1700000000000
}"#;
        let cp: Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!(cp.pipeline, "orders");
        assert_eq!(cp.position, Some(Position::Postgres { lsn: 23456789 }));
        let acct = &cp.tables[&TableId::new("public", "acct")];
        assert_eq!((acct.snapshot, acct.snapshot_rows), (SnapshotState::Done, 300));
        assert_eq!(acct.snapshot_position, Some(Position::Postgres { lsn: 1234 }));
        assert_eq!(cp.tables[&TableId::new("shop", "orders")].snapshot, SnapshotState::Copying);
        assert_eq!(cp.tables[&TableId::new("public", "bad")].stopped.as_deref(), Some("bad bytes"));
        // A schema with a dot in its name was keyed ambiguously: found by its text, then re-keyed.
        let mut cp = cp;
        let dotted = TableId::new("my.schema", "t");
        cp.tables.insert(TableId::new("my", "schema.t"), cp.tables[&TableId::new("public", "bad")].clone());
        assert_eq!(cp.table_state(&dotted).and_then(|t| t.stopped.as_deref()), Some("bad bytes"));
        cp.rekey_legacy(std::slice::from_ref(&dotted));
        assert!(cp.tables.contains_key(&dotted) && !cp.tables.contains_key(&TableId::new("my", "schema.t")));
        cp.tables.remove(&dotted);
        let again: serde_json::Value = serde_json::to_value(&cp).unwrap();
        let before: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again["tables"], before["tables"]);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("sluice-cp-{}", std::process::id()));
        let mut store = FileCheckpointStore::new(&dir);
        assert!(store.load().unwrap().is_none());
        let mut cp = Checkpoint::new("p");
        cp.position = Some(Position::Postgres { lsn: u64::MAX - 1 });
        cp.tables.insert(
            TableId::new("a.x", "b"),
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

    #[test]
    fn checkpoint_rows_round_trip_with_the_sink_state() {
        let mut next = Checkpoint::new("p");
        next.position = Some(Position::Mysql { file: "binlog.000002".into(), pos: 77, gtid: Some("0-1-9".into()) });
        next.sink = serde_json::json!({"stale": true});
        let state = serde_json::json!({"upsert_tables": [["s", "t"]]});
        let row = CheckpointRow::new(&next, &state);
        assert_eq!(row.position.as_deref(), Some("binlog.000002:77 (gtid 0-1-9)"));
        let back = CheckpointRow::parse(&row.body, "the checkpoint of p in x").unwrap();
        assert_eq!(back.position, next.position);
        assert_eq!(back.sink, state);
        let e = CheckpointRow::parse("{not json", "the checkpoint of p in x").unwrap_err();
        assert!(e.message.contains("the checkpoint of p in x is corrupt"), "{}", e.message);
        assert_eq!(e.kind, crate::ErrorKind::Fatal);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
