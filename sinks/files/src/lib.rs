//! File sinks (JSONL, Parquet, Arrow IPC) and the small `blackhole` and
//! `stdout` sinks.
//!
//! # Layout
//! `PATH/<schema>.<table>/<10-digit sequence>.<ext>`. Within a table, files
//! in name order and rows in order are commit order.
//!
//! # Exactly once
//! Files are written hidden (`.0000000042.jsonl`) and closed (fsync) when
//! they roll (rows, bytes, schema change) or at a flush; a flush also fsyncs
//! the directories holding them, so the checkpoint never names a file a
//! machine crash could take back. A flush returns the
//! list of closed hidden files with their final names as sink state; the
//! runtime writes it into the checkpoint; only then are they renamed into
//! place (`checkpointed`). On `open`, renames recorded in the checkpoint are
//! completed and every other hidden file — written after the checkpoint, so
//! the source will send its rows again — is deleted, and sequence numbers
//! resume from the checkpoint. Every committed change thus ends up in exactly
//! one completed file, once. One output directory belongs to one pipeline.

mod columnar;
mod small;

pub use columnar::{parse_decimal128, parse_decimal256, BatchBuilder};
pub use small::{BlackholeSink, StdoutSink};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sluice_core::checkpoint::sync_dir;
use sluice_core::config::{FileFormat, FilesSinkConfig};
use sluice_core::error::SinkError;
use sluice_core::{ChangeEvent, Sink, TableId, TableSchema};

const COLUMNAR_BATCH_ROWS: usize = 8192;
/// Per open file; many tables may have a file open at once.
const WRITE_BUFFER: usize = 64 * 1024;
/// JSONL bytes after which the kernel is asked to start writing a file's
/// new pages to disk (without waiting): the fsync at the file's close then
/// finds little left to do instead of the whole file. Measured with 600k
/// rows from MariaDB (~200 MB): see bench/README.md.
const WRITEBACK_EVERY: u64 = 2 << 20;

/// JSONL lines are encoded straight into this buffer (no copy through a
/// line buffer), written to the file whenever it holds [`WRITE_BUFFER`].
struct JsonlWriter {
    file: File,
    buf: Vec<u8>,
}

impl JsonlWriter {
    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        // A huge row may have grown the buffer: give the memory back, as
        // many tables can have a file open at once.
        if self.buf.capacity() > 2 * WRITE_BUFFER {
            self.buf.shrink_to(WRITE_BUFFER + 4096);
        }
        Ok(())
    }
}

enum Writer {
    Jsonl(JsonlWriter),
    Parquet(Box<ArrowWriter<File>>, BatchBuilder),
    Arrow(Box<arrow_ipc::writer::FileWriter<BufWriter<File>>>, BatchBuilder),
}

struct OpenFile {
    writer: Writer,
    /// Handle kept for fsync after the writer is finished.
    sync: File,
    hidden: PathBuf,
    final_name: PathBuf,
    rows: u64,
    bytes: u64,
    /// JSONL bytes whose writeback has been started.
    written_back: u64,
    /// The source schema version the file was opened for (columnar formats).
    schema_version: u64,
    arrow_schema: Option<Arc<Schema>>,
}

struct TableFiles {
    dir: PathBuf,
    next_seq: u64,
    /// First sequence number not yet handed to the checkpoint.
    committed_seq: u64,
    open: Option<OpenFile>,
    /// Closed hidden files not yet in a checkpoint.
    staged: Vec<(PathBuf, PathBuf)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Next sequence number per table directory.
    tables: BTreeMap<String, u64>,
    /// Hidden files to rename into place (relative to the sink path).
    pending: Vec<(String, String)>,
}

/// FNV-1a: the table map is looked up once per event with a short key;
/// SipHash's DoS resistance buys nothing here.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub struct FilesSink {
    cfg: FilesSinkConfig,
    tables: HashMap<TableId, TableFiles, std::hash::BuildHasherDefault<Fnv>>,
    state: State,
    /// Renames recorded by the last flush, done in `checkpointed`.
    to_publish: Vec<(PathBuf, PathBuf)>,
    unflushed: bool,
    /// Tables held back at the last flush (snapshot copy in progress).
    held: HashSet<TableId>,
    scratch: String,
    pub files_written: u64,
    pub rows_written: u64,
    lossy_warned: bool,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SinkError {
    let c = context.into();
    move |e| SinkError::io(c, e)
}

/// Directory name for a table: `schema.table`, with `/` escaped.
pub fn table_dir_name(id: &TableId) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    let name = format!("{}.{}", esc(&id.schema), esc(&id.name));
    match name.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => name,
    }
}

fn seq_of(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() == 10 && stem.bytes().all(|b| b.is_ascii_digit()) {
        stem.parse().ok()
    } else {
        None
    }
}

impl FilesSink {
    pub fn new(cfg: FilesSinkConfig) -> Self {
        FilesSink {
            cfg,
            tables: HashMap::default(),
            state: State::default(),
            to_publish: Vec::new(),
            unflushed: false,
            held: HashSet::new(),
            scratch: String::new(),
            files_written: 0,
            rows_written: 0,
            lossy_warned: false,
        }
    }

    fn ext(&self) -> &'static str {
        self.cfg.format.extension()
    }

    fn recover(&mut self, state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        let base = self.cfg.path.clone();
        fs::create_dir_all(&base).map_err(io(format!("creating output directory {}", base.display())))?;
        self.state = match state {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| SinkError::fatal(format!("checkpoint holds unreadable files-sink state: {e}")))?,
            None => State::default(),
        };
        // Finish renames the checkpoint recorded.
        let mut dirs = HashSet::new();
        for (hidden, fin) in &self.state.pending {
            let (h, f) = (base.join(hidden), base.join(fin));
            if h.exists() {
                fs::rename(&h, &f).map_err(io(format!("publishing {}", f.display())))?;
            } else if !f.exists() {
                return Err(SinkError::fatal(format!(
                    "output file {} recorded in the checkpoint is missing (was the output directory changed by hand?)",
                    f.display()
                )));
            }
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        // Remove everything written after the checkpoint; sequence numbers resume.
        let ext = self.ext();
        for entry in fs::read_dir(&base).map_err(io(format!("reading {}", base.display())))? {
            let entry = entry.map_err(io("reading output directory"))?;
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let dir = entry.path();
            let dname = entry.file_name().to_string_lossy().to_string();
            let mut max_seq = None;
            for f in fs::read_dir(&dir).map_err(io(format!("reading {}", dir.display())))? {
                let f = f.map_err(io("reading output directory"))?;
                let name = f.file_name().to_string_lossy().to_string();
                if let Some(hidden) = name.strip_prefix('.') {
                    if seq_of(hidden, ext).is_some() {
                        fs::remove_file(f.path()).map_err(io(format!("removing {}", f.path().display())))?;
                        dirs.insert(dir.clone());
                    }
                } else if let Some(s) = seq_of(&name, ext) {
                    max_seq = max_seq.max(Some(s));
                }
            }
            let next = self.state.tables.entry(dname).or_insert(0);
            if let Some(m) = max_seq {
                *next = (*next).max(m + 1);
            }
        }
        for d in dirs {
            sync_dir(&d).map_err(io(format!("syncing {}", d.display())))?;
        }
        self.state.pending.clear();
        Ok(())
    }

    fn table_mut(&mut self, id: &TableId) -> Result<&mut TableFiles, SinkError> {
        if !self.tables.contains_key(id) {
            let dname = table_dir_name(id);
            let dir = self.cfg.path.join(&dname);
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                sync_dir(&self.cfg.path).map_err(io("syncing output directory"))?;
            }
            let seq = self.state.tables.get(&dname).copied().unwrap_or(0);
            self.tables.insert(
                id.clone(),
                TableFiles { dir, next_seq: seq, committed_seq: seq, open: None, staged: Vec::new() },
            );
        }
        Ok(self.tables.get_mut(id).expect("inserted"))
    }

    fn open_file(
        format: FileFormat,
        t: &mut TableFiles,
        schema: &TableSchema,
        ext: &str,
    ) -> Result<OpenFile, SinkError> {
        let seq = t.next_seq;
        t.next_seq += 1;
        let hidden = t.dir.join(format!(".{seq:010}.{ext}"));
        let final_name = t.dir.join(format!("{seq:010}.{ext}"));
        let file = File::create(&hidden).map_err(io(format!("creating {}", hidden.display())))?;
        let sync = file.try_clone().map_err(io("cloning file handle"))?;
        let (writer, arrow_schema) = match format {
            FileFormat::Jsonl => {
                (Writer::Jsonl(JsonlWriter { file, buf: Vec::with_capacity(WRITE_BUFFER + 4096) }), None)
            }
            FileFormat::Parquet => {
                let aschema = sluice_schemas::arrow::table_schema(schema);
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(128 * 1024))
                    .build();
                let w = ArrowWriter::try_new(file, aschema.clone(), Some(props)).map_err(|e| {
                    SinkError::fatal(format!("creating Parquet writer for {}", hidden.display())).with_source(e)
                })?;
                (Writer::Parquet(Box::new(w), BatchBuilder::new(aschema.clone(), schema.columns.len())), Some(aschema))
            }
            FileFormat::Arrow => {
                let aschema = sluice_schemas::arrow::table_schema(schema);
                let w = arrow_ipc::writer::FileWriter::try_new(BufWriter::with_capacity(WRITE_BUFFER, file), &aschema)
                    .map_err(|e| {
                        SinkError::fatal(format!("creating Arrow writer for {}", hidden.display())).with_source(e)
                    })?;
                (Writer::Arrow(Box::new(w), BatchBuilder::new(aschema.clone(), schema.columns.len())), Some(aschema))
            }
        };
        Ok(OpenFile {
            writer,
            sync,
            hidden,
            final_name,
            rows: 0,
            bytes: 0,
            written_back: 0,
            schema_version: schema.version,
            arrow_schema,
        })
    }

    /// Finish and fsync a file; returns (hidden, final).
    fn close_file(mut f: OpenFile) -> Result<(PathBuf, PathBuf), SinkError> {
        let ctx = format!("finishing {}", f.hidden.display());
        match &mut f.writer {
            Writer::Jsonl(w) => w.drain().map_err(io(ctx.clone()))?,
            Writer::Parquet(w, b) => {
                if b.rows() > 0 {
                    let batch = b.finish();
                    w.write(&batch).map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                }
            }
            Writer::Arrow(w, b) => {
                if b.rows() > 0 {
                    let batch = b.finish();
                    w.write(&batch).map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                }
            }
        }
        match f.writer {
            Writer::Jsonl(w) => drop(w),
            Writer::Parquet(w, _) => {
                w.close().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
            }
            Writer::Arrow(mut w, _) => {
                w.finish().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                let mut inner = w.into_inner().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                inner.flush().map_err(io(ctx.clone()))?;
            }
        }
        f.sync.sync_all().map_err(io(ctx))?;
        Ok((f.hidden, f.final_name))
    }

    fn write_one(&mut self, ev: &ChangeEvent, now: i64) -> Result<(), SinkError> {
        let format = self.cfg.format;
        let ext = self.ext();
        let roll_rows = self.cfg.roll.rows;
        let roll_bytes = self.cfg.roll.bytes;
        let mut scratch = std::mem::take(&mut self.scratch);
        let t = self.table_mut(&ev.table.id)?;
        // A schema change starts a new file for columnar formats.
        if let Some(open) = &t.open {
            if open.arrow_schema.is_some() && open.schema_version != ev.table.version {
                let new_schema = sluice_schemas::arrow::table_schema(&ev.table);
                if open.arrow_schema.as_ref() != Some(&new_schema) {
                    let f = t.open.take().expect("open");
                    let closed = Self::close_file(f)?;
                    t.staged.push(closed);
                } else if let Some(o) = t.open.as_mut() {
                    o.schema_version = ev.table.version;
                }
            }
        }
        if t.open.is_none() {
            t.open = Some(Self::open_file(format, t, &ev.table, ext)?);
        }
        let f = t.open.as_mut().expect("open");
        let mut lossy = 0;
        let mut rows = 1;
        match &mut f.writer {
            Writer::Jsonl(w) => {
                let before = w.buf.len();
                sluice_schemas::json::write_event(&mut w.buf, ev, now, &mut scratch);
                w.buf.push(b'\n');
                f.bytes += (w.buf.len() - before) as u64;
                let flush_back = f.bytes - f.written_back >= WRITEBACK_EVERY;
                if w.buf.len() >= WRITE_BUFFER || flush_back {
                    w.drain().map_err(|e| SinkError::io(format!("writing {}", f.hidden.display()), e))?;
                }
                if flush_back {
                    start_writeback(&f.sync, f.written_back, f.bytes);
                    f.written_back = f.bytes;
                }
            }
            Writer::Parquet(w, b) => {
                rows = b.append(ev);
                if b.rows() >= COLUMNAR_BATCH_ROWS {
                    lossy = std::mem::take(&mut b.lossy);
                    let batch = b.finish();
                    w.write(&batch)
                        .map_err(|e| SinkError::fatal(format!("writing {}", f.hidden.display())).with_source(e))?;
                    f.bytes = (w.bytes_written() + w.in_progress_size()) as u64;
                }
            }
            Writer::Arrow(w, b) => {
                rows = b.append(ev);
                if b.rows() >= COLUMNAR_BATCH_ROWS {
                    lossy = std::mem::take(&mut b.lossy);
                    let batch = b.finish();
                    f.bytes += batch.get_array_memory_size() as u64;
                    w.write(&batch)
                        .map_err(|e| SinkError::fatal(format!("writing {}", f.hidden.display())).with_source(e))?;
                }
            }
        }
        f.rows += rows as u64;
        if f.rows >= roll_rows || f.bytes >= roll_bytes {
            let f = t.open.take().expect("open");
            let closed = Self::close_file(f)?;
            t.staged.push(closed);
        }
        self.scratch = scratch;
        if lossy > 0 && !self.lossy_warned {
            self.lossy_warned = true;
            tracing::warn!(
                table = %ev.table.id,
                "some values cannot be represented in the column's Arrow type (e.g. NaN in a decimal column) and were written as null; use the jsonl format to keep them"
            );
        }
        self.rows_written += 1;
        self.unflushed = true;
        Ok(())
    }
}

/// Ask the kernel to start writing `file`'s pages in `from..to` to disk,
/// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability
/// still comes from the fsync at close; this only spreads its work out. A
/// failure is ignored for the same reason (the fsync reports real errors).
fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor `file` keeps open.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).to_string_lossy().to_string()
}

impl Sink for FilesSink {
    async fn open(&mut self, state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        self.tables.clear();
        self.to_publish.clear();
        tokio::task::block_in_place(|| self.recover(state))
    }

    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        // One clock read per batch: `ts_ms` is when Sluice wrote the batch.
        let now = now_ms();
        tokio::task::block_in_place(|| {
            for ev in events {
                self.write_one(ev, now)?;
            }
            Ok(())
        })
    }

    fn wants_flush(&self) -> bool {
        // Rolled files wait for the next checkpoint, except those of tables
        // being copied (held until their copy is complete).
        self.tables.iter().any(|(id, t)| !t.staged.is_empty() && !self.held.contains(id))
    }

    fn has_unflushed(&self) -> bool {
        self.unflushed
    }

    fn max_flush_delay(&self) -> Duration {
        Duration::from_secs(self.cfg.roll.seconds)
    }

    async fn flush(
        &mut self,
        hold: &HashSet<TableId>,
        _next: &sluice_core::Checkpoint,
    ) -> Result<serde_json::Value, SinkError> {
        let base = self.cfg.path.clone();
        tokio::task::block_in_place(|| {
            let mut publish = Vec::new();
            self.held = hold.clone();
            for (id, t) in self.tables.iter_mut() {
                if hold.contains(id) {
                    continue;
                }
                if let Some(f) = t.open.take() {
                    if f.rows > 0 {
                        let closed = Self::close_file(f)?;
                        t.staged.push(closed);
                    } else {
                        let _ = fs::remove_file(&f.hidden);
                        t.next_seq -= 1;
                    }
                }
                publish.append(&mut t.staged);
                t.committed_seq = t.next_seq;
            }
            for t in self.tables.values() {
                let dname = t.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                self.state.tables.insert(dname, t.committed_seq);
            }
            // The checkpoint will name these hidden files: their directory
            // entries must be durable before it is (the files themselves were
            // fsynced when closed), or a machine crash could leave a
            // checkpoint whose files do not exist.
            let dirs: HashSet<&Path> = publish.iter().filter_map(|(h, _)| h.parent()).collect();
            for d in dirs {
                sync_dir(d).map_err(io(format!("syncing {}", d.display())))?;
            }
            self.state.pending = publish.iter().map(|(h, f)| (rel(&base, h), rel(&base, f))).collect();
            self.files_written += publish.len() as u64;
            self.to_publish = publish;
            self.unflushed = false;
            Ok(())
        })?;
        let v = serde_json::to_value(&self.state).expect("state serializes");
        Ok(v)
    }

    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        let publish = std::mem::take(&mut self.to_publish);
        tokio::task::block_in_place(|| {
            let mut dirs = HashSet::new();
            for (h, f) in &publish {
                fs::rename(h, f).map_err(io(format!("publishing {}", f.display())))?;
                if let Some(d) = f.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
            for d in dirs {
                sync_dir(&d).map_err(io(format!("syncing {}", d.display())))?;
            }
            Ok::<(), SinkError>(())
        })?;
        self.state.pending.clear();
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} files under {}", self.cfg.format.extension(), self.cfg.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::RollConfig;
    use sluice_core::{Checkpoint, Column, ColumnType, Op, ReplicaIdentity, Row, Value};

    fn column(name: &str, ty: ColumnType, key: bool) -> Column {
        Column { name: name.into(), ty, source_type: String::new(), type_id: 0, type_modifier: -1, key, nullable: !key }
    }

    /// Lines are encoded straight into each file's buffer, drained at 64 KiB
    /// and pushed to disk every 2 MiB: across all those boundaries (lines of
    /// irregular length, ~20 MB, two rolled files) the files hold exactly the
    /// events, one whole line each, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jsonl_files_hold_every_event_whole_across_buffer_and_writeback_boundaries() {
        let dir = std::env::temp_dir().join(format!("sluice-files-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let roll = RollConfig { rows: 30_000, ..RollConfig::default() };
        let mut sink = FilesSink::new(FilesSinkConfig { format: FileFormat::Jsonl, path: dir.clone(), roll });
        sink.open(None).await.expect("open");
        let table = Arc::new(TableSchema {
            database: "db".into(),
            id: TableId::new("public", "t"),
            columns: vec![column("id", ColumnType::Int64, true), column("s", ColumnType::Text, false)],
            replica_identity: ReplicaIdentity::Default,
            version: 1,
        });
        let events: Vec<ChangeEvent> = (0..40_000i64)
            .map(|i| ChangeEvent {
                op: Op::Create,
                table: table.clone(),
                before: None,
                // Every 9,999th row is ~1.5 MB: bigger than the buffer (which then shrinks back).
                after: Some(Row::new(vec![
                    Value::Int(i),
                    Value::Text("é\"x".repeat(if i % 9_999 == 5 { 300_000 } else { (i * 7919 % 200) as usize })),
                ])),
                commit_lsn: 100 + i as u64,
                lsn: 100 + i as u64,
                tx_id: Some(i as u64),
                commit_ts_us: 1_700_000_000_000_000 + i,
                snapshot: false,
                mysql: None,
            })
            .collect();
        for chunk in events.chunks(1000) {
            sink.write(chunk).await.expect("write");
        }
        sink.flush(&HashSet::new(), &Checkpoint::new("p")).await.expect("flush");
        sink.checkpointed().await.expect("checkpointed");

        let tdir = dir.join("public.t");
        let mut files: Vec<PathBuf> = fs::read_dir(&tdir)
            .expect("table dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "30k-row roll: two files");
        let text: String = files.iter().map(|f| fs::read_to_string(f).expect("read")).collect();
        assert!(text.len() > 16 << 20, "the test crosses the writeback threshold ({} bytes)", text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), events.len());
        let mut scratch = String::new();
        for (line, ev) in lines.iter().zip(&events) {
            let got: serde_json::Value = serde_json::from_str(line).expect("whole JSON line");
            let mut want = Vec::new();
            sluice_schemas::json::write_event(&mut want, ev, got["ts_ms"].as_i64().expect("ts_ms"), &mut scratch);
            assert_eq!(line.as_bytes(), want.as_slice());
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
