//! File sinks (JSONL, Parquet, Arrow IPC) and the small `blackhole` and
//! `stdout` sinks.
//!
//! # Layout
//! `PATH/<schema>.<table>/<10-digit sequence>.<ext>`. Within a table, files
//! in name order and rows in order are commit order.
//!
//! # Exactly once
//! Files are written hidden (`.0000000042.jsonl`) and closed when they roll
//! (rows, bytes, schema change, the sink's descriptor or memory bounds) or
//! at a flush; a flush makes them and the directories holding them durable
//! (fsync, or one `syncfs` for many), so the checkpoint never names a file
//! a machine crash could take back. A flush returns the
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
/// JSONL bytes a file buffers before writing them out. Buffers start empty
/// and grow to this: many tables may have a file open at once.
const WRITE_BUFFER: usize = 64 * 1024;
/// JSONL bytes after which the kernel is asked to start writing a file's
/// new pages to disk (without waiting): the sync at the flush then finds
/// little left to do instead of the whole file. Measured with 600k
/// rows from MariaDB (~200 MB): see bench/README.md.
const WRITEBACK_EVERY: u64 = 2 << 20;
/// Descriptors held at once. Past it, JSONL files are parked (buffer
/// written, descriptor closed, reopened for appending when written again:
/// still one file per table between checkpoints) and open Parquet/Arrow
/// files are closed (the table's next rows start a new file).
const MAX_DESCRIPTORS: usize = 256;
/// Estimated memory all open files may buffer together (JSONL buffers,
/// Arrow builders, Parquet row groups in progress). Past it, the biggest
/// are written out (JSONL) or closed (Parquet/Arrow) until half is left.
const MAX_BUFFERED: usize = 64 << 20;

/// JSONL lines are encoded straight into this buffer (no copy through a
/// line buffer), written to the file whenever it holds [`WRITE_BUFFER`].
struct JsonlWriter {
    /// None until the first write, and while parked.
    file: Option<File>,
    buf: Vec<u8>,
}

enum Writer {
    Jsonl(JsonlWriter),
    /// The Parquet/Arrow writer is created with the file, when the first
    /// batch is written out (a table with few rows between checkpoints
    /// holds only its builder).
    Parquet(Option<Box<ArrowWriter<File>>>, BatchBuilder),
    Arrow(Option<Box<arrow_ipc::writer::FileWriter<BufWriter<File>>>>, BatchBuilder),
}

struct OpenFile {
    writer: Writer,
    hidden: PathBuf,
    final_name: PathBuf,
    /// The hidden file exists on disk (it is created at the first write out).
    created: bool,
    rows: u64,
    bytes: u64,
    /// JSONL bytes whose writeback has been started.
    written_back: u64,
    /// The source schema version the file was opened for (columnar formats).
    schema_version: u64,
    arrow_schema: Option<Arc<Schema>>,
    /// Memory this file buffers, as last added to [`FilesSink::buffered`].
    mem: usize,
    /// Memory of the Parquet writer's row group in progress.
    writer_mem: usize,
}

impl OpenFile {
    fn has_descriptor(&self) -> bool {
        match &self.writer {
            Writer::Jsonl(w) => w.file.is_some(),
            Writer::Parquet(w, _) => w.is_some(),
            Writer::Arrow(w, _) => w.is_some(),
        }
    }

    fn memory(&self) -> usize {
        match &self.writer {
            Writer::Jsonl(w) => w.buf.capacity(),
            Writer::Parquet(_, b) => b.memory() + self.writer_mem,
            Writer::Arrow(w, b) => b.memory() + if w.is_some() { WRITE_BUFFER } else { 0 },
        }
    }

    /// The JSONL file, created at the first call and reopened after parking.
    fn jsonl_file<'a>(file: &'a mut Option<File>, created: &mut bool, path: &Path) -> std::io::Result<&'a mut File> {
        if file.is_none() {
            let f = if *created { fs::OpenOptions::new().append(true).open(path)? } else { File::create(path)? };
            *created = true;
            *file = Some(f);
        }
        Ok(file.as_mut().expect("opened"))
    }

    /// Write the JSONL buffer out (no-op for other formats).
    fn drain(&mut self) -> Result<(), SinkError> {
        let Writer::Jsonl(w) = &mut self.writer else { return Ok(()) };
        if w.buf.is_empty() {
            return Ok(());
        }
        let ctx = || format!("writing {}", self.hidden.display());
        let file =
            Self::jsonl_file(&mut w.file, &mut self.created, &self.hidden).map_err(|e| SinkError::io(ctx(), e))?;
        file.write_all(&w.buf).map_err(|e| SinkError::io(ctx(), e))?;
        w.buf.clear();
        // A huge row may have grown the buffer: give the memory back.
        if w.buf.capacity() > 2 * WRITE_BUFFER {
            w.buf.shrink_to(WRITE_BUFFER + 4096);
        }
        if self.bytes - self.written_back >= WRITEBACK_EVERY {
            if let Some(f) = &w.file {
                start_writeback(f, self.written_back, self.bytes);
            }
            self.written_back = self.bytes;
        }
        Ok(())
    }

    /// Write a JSONL file's buffer out, free it, and close the descriptor
    /// (the file stays open for the sink: the next write reopens it).
    fn park(&mut self) -> Result<(), SinkError> {
        self.drain()?;
        if let Writer::Jsonl(w) = &mut self.writer {
            w.file = None;
            w.buf = Vec::new();
        }
        Ok(())
    }

    /// Create the file and its Parquet/Arrow writer if not yet done.
    fn ensure_writer(&mut self) -> Result<(), SinkError> {
        let ctx = || format!("creating {}", self.hidden.display());
        let create = |path: &Path| File::create(path).map_err(|e| SinkError::io(ctx(), e));
        match &mut self.writer {
            Writer::Jsonl(_) => {}
            Writer::Parquet(w @ None, b) => {
                let file = create(&self.hidden)?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(128 * 1024))
                    .build();
                let aw = ArrowWriter::try_new(file, b.schema().clone(), Some(props))
                    .map_err(|e| SinkError::fatal(ctx()).with_source(e))?;
                *w = Some(Box::new(aw));
                self.created = true;
            }
            Writer::Arrow(w @ None, b) => {
                let file = create(&self.hidden)?;
                let iw =
                    arrow_ipc::writer::FileWriter::try_new(BufWriter::with_capacity(WRITE_BUFFER, file), b.schema())
                        .map_err(|e| SinkError::fatal(ctx()).with_source(e))?;
                *w = Some(Box::new(iw));
                self.created = true;
            }
            Writer::Parquet(Some(_), _) | Writer::Arrow(Some(_), _) => {}
        }
        Ok(())
    }

    /// Write the rows an Arrow builder holds into the file's writer,
    /// creating both on first use.
    fn write_batch(&mut self) -> Result<(), SinkError> {
        match &self.writer {
            Writer::Parquet(_, b) | Writer::Arrow(_, b) if b.rows() > 0 => self.ensure_writer()?,
            _ => return Ok(()),
        }
        let ctx = || format!("writing {}", self.hidden.display());
        match &mut self.writer {
            Writer::Jsonl(_) => {}
            Writer::Parquet(w, b) => {
                let aw = w.as_mut().expect("created");
                let batch = b.finish();
                aw.write(&batch).map_err(|e| SinkError::fatal(ctx()).with_source(e))?;
                self.bytes = (aw.bytes_written() + aw.in_progress_size()) as u64;
                self.writer_mem = aw.memory_size();
            }
            Writer::Arrow(w, b) => {
                let iw = w.as_mut().expect("created");
                let batch = b.finish();
                self.bytes += batch.get_array_memory_size() as u64;
                iw.write(&batch).map_err(|e| SinkError::fatal(ctx()).with_source(e))?;
            }
        }
        Ok(())
    }
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
    /// Open files holding a descriptor (at most [`MAX_DESCRIPTORS`]).
    descriptors: usize,
    /// Estimated memory buffered by all open files (at most [`MAX_BUFFERED`]).
    buffered: usize,
    /// A file of a table not held back was closed since the last flush.
    rolled: bool,
    /// Table directories created since the last flush.
    new_dirs: bool,
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
            descriptors: 0,
            buffered: 0,
            rolled: false,
            new_dirs: false,
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
        // Table directories an earlier run created may not be durable yet.
        dirs.insert(base.clone());
        for d in dirs {
            sync_dir(&d).map_err(io(format!("syncing {}", d.display())))?;
        }
        self.state.pending.clear();
        Ok(())
    }

    /// Start keeping files for table `id` (its directory made when missing).
    fn add_table(&mut self, id: &TableId) -> Result<(), SinkError> {
        let dname = table_dir_name(id);
        let dir = self.cfg.path.join(&dname);
        if !dir.exists() {
            // Made durable by the flush before a checkpoint names a file in it.
            fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            self.new_dirs = true;
        }
        let seq = self.state.tables.get(&dname).copied().unwrap_or(0);
        self.tables
            .insert(id.clone(), TableFiles { dir, next_seq: seq, committed_seq: seq, open: None, staged: Vec::new() });
        Ok(())
    }

    /// A new file for table `t` (created on disk at its first write out).
    fn open_file(format: FileFormat, t: &mut TableFiles, schema: &TableSchema, ext: &str) -> OpenFile {
        let seq = t.next_seq;
        t.next_seq += 1;
        let hidden = t.dir.join(format!(".{seq:010}.{ext}"));
        let final_name = t.dir.join(format!("{seq:010}.{ext}"));
        let (writer, arrow_schema) = match format {
            FileFormat::Jsonl => (Writer::Jsonl(JsonlWriter { file: None, buf: Vec::new() }), None),
            FileFormat::Parquet => {
                let aschema = sluice_schemas::arrow::table_schema(schema);
                (Writer::Parquet(None, BatchBuilder::new(aschema.clone(), schema.columns.len())), Some(aschema))
            }
            FileFormat::Arrow => {
                let aschema = sluice_schemas::arrow::table_schema(schema);
                (Writer::Arrow(None, BatchBuilder::new(aschema.clone(), schema.columns.len())), Some(aschema))
            }
        };
        OpenFile {
            writer,
            hidden,
            final_name,
            created: false,
            rows: 0,
            bytes: 0,
            written_back: 0,
            schema_version: schema.version,
            arrow_schema,
            mem: 0,
            writer_mem: 0,
        }
    }

    /// Finish a file; returns (hidden, final). It is made durable by the
    /// flush that hands it to a checkpoint ([`make_durable`]). The caller
    /// has already taken `f.mem` and its descriptor off the sink's totals.
    fn close_file(mut f: OpenFile) -> Result<(PathBuf, PathBuf), SinkError> {
        let ctx = format!("finishing {}", f.hidden.display());
        f.drain()?;
        f.write_batch()?;
        f.ensure_writer()?;
        match f.writer {
            Writer::Jsonl(mut w) => {
                if !f.created {
                    // Never written out: an empty file.
                    OpenFile::jsonl_file(&mut w.file, &mut f.created, &f.hidden).map_err(io(ctx.clone()))?;
                }
            }
            Writer::Parquet(w, _) => {
                let w = w.expect("ensured");
                w.close().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
            }
            Writer::Arrow(w, _) => {
                let mut w = w.expect("ensured");
                w.finish().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                let mut inner = w.into_inner().map_err(|e| SinkError::fatal(ctx.clone()).with_source(e))?;
                inner.flush().map_err(io(ctx))?;
            }
        }
        Ok((f.hidden, f.final_name))
    }

    /// Close table `t`'s open file into its staged list, taking it off the totals.
    fn close_open(&mut self, id: &TableId) -> Result<(), SinkError> {
        let Some(t) = self.tables.get_mut(id) else { return Ok(()) };
        let Some(f) = t.open.take() else { return Ok(()) };
        self.buffered -= f.mem;
        self.descriptors -= f.has_descriptor() as usize;
        t.staged.push(Self::close_file(f)?);
        if !self.held.contains(id) {
            self.rolled = true;
        }
        Ok(())
    }

    fn write_one(&mut self, ev: &ChangeEvent, now: i64) -> Result<(), SinkError> {
        let format = self.cfg.format;
        let ext = self.ext();
        let roll_rows = self.cfg.roll.rows;
        let roll_bytes = self.cfg.roll.bytes;
        let id = &ev.table.id;
        // One map lookup per event on the common path (a known table, its
        // file open, no schema change): it showed in profiles at ~6%.
        let t = match self.tables.get_mut(id) {
            Some(t) => t,
            None => {
                self.add_table(id)?;
                self.tables.get_mut(id).expect("added above")
            }
        };
        // A schema change starts a new file for columnar formats.
        let mut reopen = false;
        if let Some(open) = &mut t.open {
            if open.arrow_schema.is_some() && open.schema_version != ev.table.version {
                let new_schema = sluice_schemas::arrow::table_schema(&ev.table);
                if open.arrow_schema.as_ref() != Some(&new_schema) {
                    reopen = true;
                } else {
                    open.schema_version = ev.table.version;
                }
            }
        }
        let t = if reopen {
            self.close_open(id)?;
            self.tables.get_mut(id).expect("added above")
        } else {
            t
        };
        if t.open.is_none() {
            let f = Self::open_file(format, t, &ev.table, ext);
            t.open = Some(f);
        }
        let f = t.open.as_mut().expect("opened");
        let had_descriptor = f.has_descriptor();
        let mut lossy = 0;
        let mut rows = 1;
        match &mut f.writer {
            Writer::Jsonl(w) => {
                let before = w.buf.len();
                sluice_schemas::json::write_event(&mut w.buf, ev, now, &mut self.scratch);
                w.buf.push(b'\n');
                f.bytes += (w.buf.len() - before) as u64;
                if w.buf.len() >= WRITE_BUFFER || f.bytes - f.written_back >= WRITEBACK_EVERY {
                    f.drain()?;
                }
            }
            Writer::Parquet(_, b) | Writer::Arrow(_, b) => {
                rows = b.append(ev).map_err(SinkError::fatal)?;
                // Counted per event, not per written batch: a table's last
                // batch is written when its file closes, and must warn too.
                lossy = std::mem::take(&mut b.lossy);
                if b.rows() >= COLUMNAR_BATCH_ROWS {
                    f.write_batch()?;
                }
            }
        }
        f.rows += rows as u64;
        let mem = f.memory();
        self.buffered = self.buffered + mem - f.mem;
        f.mem = mem;
        self.descriptors = self.descriptors + f.has_descriptor() as usize - had_descriptor as usize;
        if f.rows >= roll_rows || f.bytes >= roll_bytes {
            self.close_open(id)?;
        }
        if self.descriptors > MAX_DESCRIPTORS {
            self.release_descriptors()?;
        }
        if self.buffered > MAX_BUFFERED {
            self.release_memory()?;
        }
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

    /// Too many descriptors: park every JSONL file holding one, close every
    /// Parquet/Arrow file holding one (rare: each has written a full batch
    /// since the last checkpoint).
    fn release_descriptors(&mut self) -> Result<(), SinkError> {
        let mut close = Vec::new();
        for (id, t) in self.tables.iter_mut() {
            let Some(f) = t.open.as_mut().filter(|f| f.has_descriptor()) else { continue };
            if matches!(f.writer, Writer::Jsonl(_)) {
                f.park()?;
                self.buffered -= f.mem;
                f.mem = 0;
                self.descriptors -= 1;
            } else {
                close.push(id.clone());
            }
        }
        for id in close {
            self.close_open(&id)?;
        }
        Ok(())
    }

    /// Too much memory buffered: write out (JSONL, parked after) or close
    /// (Parquet/Arrow) the files holding the most until half is left.
    fn release_memory(&mut self) -> Result<(), SinkError> {
        let mut by_size: Vec<(usize, TableId)> = self
            .tables
            .iter()
            .filter_map(|(id, t)| t.open.as_ref().filter(|f| f.mem > 0).map(|f| (f.mem, id.clone())))
            .collect();
        by_size.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        for (_, id) in by_size {
            if self.buffered <= MAX_BUFFERED / 2 {
                break;
            }
            let f = self.tables.get_mut(&id).and_then(|t| t.open.as_mut()).expect("listed above");
            if matches!(f.writer, Writer::Jsonl(_)) {
                let had = f.has_descriptor();
                f.park()?;
                self.buffered -= f.mem;
                f.mem = 0;
                self.descriptors -= had as usize;
            } else {
                self.close_open(&id)?;
            }
        }
        Ok(())
    }
}

/// Ask the kernel to start writing `file`'s pages in `from..to` to disk,
/// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability
/// still comes from the sync at the flush; this only spreads its work out.
/// A failure is ignored for the same reason (the sync reports real errors).
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

/// Files and directories synced one by one up to this many; past it, one
/// `syncfs` of the output's file system (thousands of small tables would
/// otherwise cost an fsync, and a journal commit, each).
const SYNC_EACH_UP_TO: usize = 16;

/// Make `files` and `dirs` (under `base`) durable. `syncfs` reports
/// writeback errors only since Linux 5.8: older kernels sync one by one.
fn make_durable(base: &Path, files: &[&Path], dirs: &HashSet<&Path>) -> Result<(), SinkError> {
    #[cfg(target_os = "linux")]
    if files.len() + dirs.len() > SYNC_EACH_UP_TO && syncfs_reports_errors() {
        use std::os::fd::AsRawFd;
        let d = File::open(base).map_err(io(format!("opening {}", base.display())))?;
        // SAFETY: a plain syscall on a descriptor `d` keeps open.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(SinkError::io(
                format!("syncing the file system of {}", base.display()),
                std::io::Error::last_os_error(),
            ));
        }
        return Ok(());
    }
    let _ = base;
    for f in files {
        File::open(f).and_then(|h| h.sync_all()).map_err(io(format!("syncing {}", f.display())))?;
    }
    for d in dirs {
        sync_dir(d).map_err(io(format!("syncing {}", d.display())))?;
    }
    Ok(())
}

/// Whether the running kernel's `syncfs` returns writeback errors (5.8+).
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (5, 8)
    })
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
        (self.descriptors, self.buffered, self.rolled) = (0, 0, false);
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
        self.rolled
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
            let ids: Vec<TableId> = self
                .tables
                .iter()
                .filter(|(id, t)| t.open.is_some() && !hold.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                let t = self.tables.get_mut(&id).expect("listed");
                if t.open.as_ref().is_some_and(|f| f.rows > 0) {
                    self.close_open(&id)?;
                } else if let Some(f) = t.open.take() {
                    self.buffered -= f.mem;
                    self.descriptors -= f.has_descriptor() as usize;
                    if f.created {
                        let _ = fs::remove_file(&f.hidden);
                    }
                    t.next_seq -= 1;
                }
            }
            for (id, t) in self.tables.iter_mut() {
                if hold.contains(id) {
                    continue;
                }
                publish.append(&mut t.staged);
                if t.committed_seq != t.next_seq {
                    t.committed_seq = t.next_seq;
                    let dname = t.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    self.state.tables.insert(dname, t.committed_seq);
                }
            }
            self.rolled = false;
            // The checkpoint will name these hidden files: they and their
            // directory entries must be durable before it is, or a machine
            // crash could leave a checkpoint whose files do not exist.
            let files: Vec<&Path> = publish.iter().map(|(h, _)| h.as_path()).collect();
            let mut dirs: HashSet<&Path> = publish.iter().filter_map(|(h, _)| h.parent()).collect();
            if self.new_dirs {
                dirs.insert(&base);
            }
            make_durable(&base, &files, &dirs)?;
            self.new_dirs = false;
            self.state.pending = publish.iter().map(|(h, f)| (rel(&base, h), rel(&base, f))).collect();
            self.files_written += publish.len() as u64;
            self.to_publish = publish;
            self.unflushed = false;
            Ok::<(), SinkError>(())
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
                    dirs.insert(d);
                }
            }
            make_durable(&self.cfg.path, &[], &dirs)?;
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
    use sluice_core::testing::{self, col, key};
    use sluice_core::{Checkpoint, ColumnType, Op, Row, Value};

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
        let columns = vec![key("id", ColumnType::Int64), col("s", ColumnType::Text)];
        let table = Arc::new(testing::table("public", "t", columns));
        // Every 9,999th row is ~1.5 MB: bigger than the buffer (which then shrinks back).
        let events: Vec<ChangeEvent> = (0..40_000i64)
            .map(|i| insert(&table, i, "é\"x".repeat(if i % 9_999 == 5 { 300_000 } else { (i * 7919 % 200) as usize })))
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

    fn table(i: usize) -> Arc<TableSchema> {
        let columns = vec![key("id", ColumnType::Int64), col("s", ColumnType::Text)];
        Arc::new(testing::table("public", &format!("t{i}"), columns))
    }

    fn insert(table: &Arc<TableSchema>, id: i64, text: String) -> ChangeEvent {
        ChangeEvent {
            op: Op::Create,
            table: table.clone(),
            before: None,
            after: Some(Row::new(vec![Value::Int(id), Value::Text(text)])),
            commit_position: sluice_core::EventPosition::Lsn(100 + id as u64),
            position: sluice_core::EventPosition::Lsn(100 + id as u64),
            tx_id: Some(id as u64),
            commit_ts_us: 1_700_000_000_000_000 + id,
            snapshot: false,
            mysql: None,
        }
    }

    /// Files of one table in name order, with the ids their rows hold, in order.
    fn ids_in(dir: &Path, format: FileFormat) -> (usize, Vec<i64>) {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .expect("table dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        files.sort();
        let mut ids = Vec::new();
        for f in &files {
            match format {
                FileFormat::Jsonl => {
                    for line in fs::read_to_string(f).expect("read").lines() {
                        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                        ids.push(v["after"]["id"].as_i64().expect("id"));
                    }
                }
                _ => {
                    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        File::open(f).expect("open"),
                    )
                    .expect("parquet")
                    .build()
                    .expect("reader");
                    for batch in reader {
                        let batch = batch.expect("batch");
                        let col = batch
                            .column_by_name("id")
                            .expect("id column")
                            .as_any()
                            .downcast_ref::<arrow_array::Int64Array>()
                            .expect("int64")
                            .clone();
                        ids.extend(col.values().iter().copied());
                    }
                }
            }
        }
        (files.len(), ids)
    }

    /// 600 tables written in turn (every transaction touches every table):
    /// the sink never holds more than MAX_DESCRIPTORS descriptors or
    /// MAX_BUFFERED bytes of buffers, and every table's rows come out whole
    /// and in order. JSONL keeps one file per table (files are parked and
    /// reopened, not rolled); Parquet rows of ~100 KB fill the memory budget,
    /// so files are closed early (more files, same rows).
    async fn many_tables(format: FileFormat, text_len: usize, rounds: i64) {
        let dir = std::env::temp_dir().join(format!("sluice-files-many-{}-{format:?}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut sink = FilesSink::new(FilesSinkConfig { format, path: dir.clone(), roll: RollConfig::default() });
        sink.open(None).await.expect("open");
        let tables: Vec<Arc<TableSchema>> = (0..600).map(table).collect();
        let mut peak = (0, 0);
        for r in 0..rounds {
            let events: Vec<ChangeEvent> = tables.iter().map(|t| insert(t, r, "x".repeat(text_len))).collect();
            for ev in events.chunks(1) {
                sink.write(ev).await.expect("write");
                peak = (peak.0.max(sink.descriptors), peak.1.max(sink.buffered));
            }
        }
        assert!(peak.0 <= MAX_DESCRIPTORS, "descriptors held: {}", peak.0);
        assert!(peak.1 <= MAX_BUFFERED, "bytes buffered: {}", peak.1);
        sink.flush(&HashSet::new(), &Checkpoint::new("p")).await.expect("flush");
        sink.checkpointed().await.expect("checkpointed");
        assert_eq!((sink.descriptors, sink.buffered), (0, 0), "a flush closes every file");
        let mut files = 0;
        for t in &tables {
            let (n, ids) = ids_in(&dir.join(table_dir_name(&t.id)), format);
            assert_eq!(ids, (0..rounds).collect::<Vec<_>>(), "rows of {}", t.id);
            files += n;
        }
        if format == FileFormat::Jsonl {
            assert_eq!(files, tables.len(), "one JSONL file per table");
            assert_eq!(peak.0, MAX_DESCRIPTORS, "the test reaches the descriptor cap");
        } else {
            assert!(files > tables.len(), "the memory budget closed files early ({files} files)");
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jsonl_many_tables_bounded_descriptors_one_file_each() {
        // 2 KB rows: each table's buffer passes 64 KiB and is written out
        // (the file then holds a descriptor): 600 tables pass the cap.
        many_tables(FileFormat::Jsonl, 2000, 60).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parquet_many_tables_bounded_memory() {
        // 600 tables x 2 rows x ~100 KB > MAX_BUFFERED: files are closed early.
        many_tables(FileFormat::Parquet, 100_000, 2).await;
    }
}
