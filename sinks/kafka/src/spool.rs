//! Snapshot spool: a table's snapshot messages staged on local disk.
//!
//! Invariants:
//! - Snapshot rows are never produced while their table is being copied: a
//!   copy interrupted by a crash is redone in a new snapshot, and rows
//!   already in a topic could not be taken back. They are encoded into a
//!   spool file instead; once the copy is complete the file is fsynced and
//!   recorded in the checkpoint, and only after that checkpoint is durable
//!   are its messages produced. A crash while producing them replays the same
//!   file, so the same messages get the same sequence numbers.
//! - A spool file not named in the checkpoint is garbage (an interrupted copy
//!   or one already published) and is deleted on open.
//!
//! Record layout (little-endian): topic length u16, topic, partition i32,
//! key length i32 (-1: none), key, value length i32 (-1: tombstone), value,
//! position length u16, position, tx length u16, tx.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sluice_core::SinkError;

/// One staged message.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub position: String,
    pub tx: String,
}

pub struct SpoolWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    pub records: u64,
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> SinkError {
    let ctx = format!("cannot {what} snapshot spool {}", path.display());
    move |e| SinkError::io(ctx, e)
}

impl SpoolWriter {
    /// A writer for `path`; the file is created with the first record.
    pub fn new(path: PathBuf) -> Self {
        SpoolWriter { path, out: None, records: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        position: &str,
        tx: &str,
    ) -> Result<(), SinkError> {
        if self.out.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(io(&self.path, "create the directory of"))?;
            }
            let f = File::create(&self.path).map_err(io(&self.path, "create"))?;
            self.out = Some(BufWriter::with_capacity(1 << 20, f));
        }
        let out = self.out.as_mut().expect("opened above");
        let mut rec = Vec::with_capacity(32 + topic.len() + key.map_or(0, |k| k.len()) + value.map_or(0, |v| v.len()));
        put_short(&mut rec, topic.as_bytes());
        rec.extend_from_slice(&partition.to_le_bytes());
        put_opt(&mut rec, key);
        put_opt(&mut rec, value);
        put_short(&mut rec, position.as_bytes());
        put_short(&mut rec, tx.as_bytes());
        out.write_all(&rec).map_err(io(&self.path, "write"))?;
        self.records += 1;
        Ok(())
    }

    /// Flush and fsync; returns the number of records (0: no file was written).
    pub fn finish(mut self) -> Result<u64, SinkError> {
        if let Some(out) = self.out.take() {
            let f = out
                .into_inner()
                .map_err(|e| SinkError::io(format!("cannot write {}", self.path.display()), e.into_error()))?;
            f.sync_all().map_err(io(&self.path, "fsync"))?;
            if let Some(dir) = self.path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync"))?;
            }
        }
        Ok(self.records)
    }
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// Reads a spool file written by [`SpoolWriter`].
pub struct SpoolReader {
    path: PathBuf,
    inp: BufReader<File>,
}

impl SpoolReader {
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let f = File::open(path).map_err(io(path, "open"))?;
        Ok(SpoolReader { path: path.to_path_buf(), inp: BufReader::with_capacity(1 << 20, f) })
    }

    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<SpoolRecord>, SinkError> {
        let mut len = [0u8; 2];
        match self.inp.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(&self.path, "read")(e)),
        }
        let topic = self.string(u16::from_le_bytes(len) as usize)?;
        let mut p = [0u8; 4];
        self.inp.read_exact(&mut p).map_err(io(&self.path, "read"))?;
        let key = self.opt()?;
        let value = self.opt()?;
        let position = self.short_string()?;
        let tx = self.short_string()?;
        Ok(Some(SpoolRecord { topic, partition: i32::from_le_bytes(p), key, value, position, tx }))
    }

    fn short_string(&mut self) -> Result<String, SinkError> {
        let mut len = [0u8; 2];
        self.inp.read_exact(&mut len).map_err(io(&self.path, "read"))?;
        self.string(u16::from_le_bytes(len) as usize)
    }

    fn string(&mut self, n: usize) -> Result<String, SinkError> {
        let mut b = vec![0u8; n];
        self.inp.read_exact(&mut b).map_err(io(&self.path, "read"))?;
        String::from_utf8(b).map_err(|_| SinkError::fatal(format!("snapshot spool {} is corrupt", self.path.display())))
    }

    fn opt(&mut self) -> Result<Option<Vec<u8>>, SinkError> {
        let mut len = [0u8; 4];
        self.inp.read_exact(&mut len).map_err(io(&self.path, "read"))?;
        let n = i32::from_le_bytes(len);
        if n < 0 {
            return Ok(None);
        }
        let mut b = vec![0u8; n as usize];
        self.inp.read_exact(&mut b).map_err(io(&self.path, "read"))?;
        Ok(Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-test-{}", std::process::id()));
        let path = dir.join("a.spool");
        let mut w = SpoolWriter::new(path.clone());
        w.append("t", 3, Some(b"k"), Some(b"v"), "0/1", "7").unwrap();
        w.append("t2", 0, None, None, "", "").unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let mut r = SpoolReader::open(&path).unwrap();
        let a = r.next_record().unwrap().unwrap();
        assert_eq!(
            (a.topic.as_str(), a.partition, a.key.as_deref(), a.value.as_deref()),
            ("t", 3, Some(&b"k"[..]), Some(&b"v"[..]))
        );
        assert_eq!((a.position.as_str(), a.tx.as_str()), ("0/1", "7"));
        let b = r.next_record().unwrap().unwrap();
        assert_eq!((b.key, b.value), (None, None));
        assert!(r.next_record().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        // A writer that never got a record writes no file.
        assert_eq!(SpoolWriter::new(dir.join("none")).finish().unwrap(), 0);
        assert!(!dir.join("none").exists());
    }
}
