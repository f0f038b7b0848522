//! On-disk parking of streamed in-progress transactions (protocol 2).
//!
//! Invariants:
//! - One file per top-level transaction, holding its messages in arrival
//!   order as `[u64 lsn][u32 len][message]` records; memory use does not
//!   depend on transaction size.
//! - A subtransaction abort truncates the file at that subtransaction's
//!   first message and forgets subtransactions seen after it, as Postgres's
//!   own apply worker does.
//! - Files live in a private directory removed when the spool is dropped;
//!   after a restart the server streams open transactions again from their
//!   first segment, so nothing here needs to survive a crash.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use sluice_core::error::SourceError;

struct SpoolFile {
    path: PathBuf,
    writer: BufWriter<File>,
    len: u64,
    /// (subtransaction xid, offset of its first message)
    subxacts: Vec<(u32, u64)>,
}

pub struct Spool {
    dir: PathBuf,
    files: HashMap<u32, SpoolFile>,
}

fn io(context: &str, e: std::io::Error) -> SourceError {
    SourceError::fatal(format!("spooling a streamed transaction: {context}: {e}"))
}

impl Spool {
    pub fn new() -> Result<Spool, SourceError> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-spool-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        fs::create_dir_all(&dir).map_err(|e| io("creating the spool directory", e))?;
        Ok(Spool { dir, files: HashMap::new() })
    }

    /// A stream block of `xid` starts.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), SourceError> {
        if first_segment || !self.files.contains_key(&xid) {
            let path = self.dir.join(format!("{xid}.spool"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("creating a spool file", e))?;
            self.files.insert(
                xid,
                SpoolFile { path, writer: BufWriter::with_capacity(1 << 20, f), len: 0, subxacts: Vec::new() },
            );
        }
        Ok(())
    }

    pub fn append(&mut self, xid: u32, sub_xid: u32, lsn: u64, message: &[u8]) -> Result<(), SourceError> {
        let f = self.files.get_mut(&xid).ok_or_else(|| {
            SourceError::fatal(format!("streamed change for transaction {xid} outside a stream block"))
        })?;
        if sub_xid != xid && !f.subxacts.iter().any(|(s, _)| *s == sub_xid) {
            f.subxacts.push((sub_xid, f.len));
        }
        f.writer.write_all(&lsn.to_be_bytes()).map_err(|e| io("write", e))?;
        f.writer.write_all(&(message.len() as u32).to_be_bytes()).map_err(|e| io("write", e))?;
        f.writer.write_all(message).map_err(|e| io("write", e))?;
        f.len += 12 + message.len() as u64;
        Ok(())
    }

    pub fn abort(&mut self, xid: u32, sub_xid: u32) -> Result<(), SourceError> {
        if xid == sub_xid {
            if let Some(f) = self.files.remove(&xid) {
                drop(f.writer);
                let _ = fs::remove_file(&f.path);
            }
            return Ok(());
        }
        let Some(f) = self.files.get_mut(&xid) else { return Ok(()) };
        let Some(idx) = f.subxacts.iter().rposition(|(s, _)| *s == sub_xid) else { return Ok(()) };
        let offset = f.subxacts[idx].1;
        f.subxacts.truncate(idx);
        f.writer.flush().map_err(|e| io("flush", e))?;
        let file = f.writer.get_mut();
        file.set_len(offset).map_err(|e| io("truncate", e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| io("seek", e))?;
        f.len = offset;
        Ok(())
    }

    /// Take the parked messages of a committed transaction (None if none were parked).
    pub fn take(&mut self, xid: u32) -> Result<Option<SpoolReader>, SourceError> {
        let Some(f) = self.files.remove(&xid) else { return Ok(None) };
        let mut file = f.writer.into_inner().map_err(|e| io("flush", e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| io("seek", e))?;
        let _ = fs::remove_file(&f.path);
        Ok(Some(SpoolReader { reader: BufReader::with_capacity(1 << 20, file), left: f.len, buf: BytesMut::new() }))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.files.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct SpoolReader {
    reader: BufReader<File>,
    left: u64,
    /// Messages are split off one growing buffer instead of each allocating.
    buf: BytesMut,
}

impl SpoolReader {
    pub fn next_message(&mut self) -> Result<Option<(u64, Bytes)>, SourceError> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut head = [0u8; 12];
        self.reader.read_exact(&mut head).map_err(|e| io("read", e))?;
        let lsn = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        if self.buf.capacity() < len {
            self.buf.reserve(len.max(1 << 20));
        }
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf[..]).map_err(|e| io("read", e))?;
        self.left = self.left.saturating_sub(12 + len as u64);
        Ok(Some((lsn, self.buf.split_to(len).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtransaction_abort_truncates() {
        let mut s = Spool::new().unwrap();
        s.start(10, true).unwrap();
        s.append(10, 10, 1, b"a").unwrap();
        s.append(10, 11, 2, b"b").unwrap();
        s.append(10, 12, 3, b"c").unwrap();
        s.append(10, 10, 4, b"d").unwrap();
        s.abort(10, 11).unwrap();
        s.append(10, 10, 5, b"e").unwrap();
        let mut r = s.take(10).unwrap().unwrap();
        let mut got = Vec::new();
        while let Some((lsn, m)) = r.next_message().unwrap() {
            got.push((lsn, m.to_vec()));
        }
        assert_eq!(got, vec![(1, b"a".to_vec()), (5, b"e".to_vec())]);
        s.start(20, true).unwrap();
        s.append(20, 20, 1, b"x").unwrap();
        s.abort(20, 20).unwrap();
        assert!(s.take(20).unwrap().is_none());
    }
}
