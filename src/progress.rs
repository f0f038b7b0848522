//! Live progress. On a terminal: one bar per table being copied (rows of
//! the estimate, rate, ETA) and one status line for the stream (counts per
//! operation, events per second, the checkpoint), drawn by `indicatif`; log
//! lines are printed above the bars ([`LogWriter`]). Not on a terminal: a
//! plain `progress:` log line every 10 seconds, nothing redrawn.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_core::runtime::Stats;

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// The bars of this process (hidden when stderr is not a terminal).
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        let target = if stderr_is_tty() { ProgressDrawTarget::stderr_with_hz(4) } else { ProgressDrawTarget::hidden() };
        MultiProgress::with_draw_target(target)
    })
}

/// Log output: stderr, with the bars lifted while a line is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Take the bars off the screen (before printing a summary); they come
/// back at the next update while the progress task runs.
pub fn clear_line() {
    let _ = bars().clear();
}

/// The stream part of the status: counts per operation, rate, checkpoint.
fn stream_line(stats: &Stats, rate: f64) -> String {
    let done = stats.snapshot_tables.lock().unwrap().iter().filter(|t| t.done).count();
    format!(
        "snapshot tables done {done}, rows {} | stream c {} u {} d {} t {} tx {} | {:.0} events/s | checkpoint {}",
        stats.snapshot_rows.load(Ordering::Relaxed),
        stats.inserts.load(Ordering::Relaxed),
        stats.updates.load(Ordering::Relaxed),
        stats.deletes.load(Ordering::Relaxed),
        stats.truncates.load(Ordering::Relaxed),
        stats.transactions.load(Ordering::Relaxed),
        rate,
        match stats.checkpoint.lock().map(|g| g.clone()).unwrap_or_default() {
            s if s.is_empty() => "-".to_string(),
            s => s,
        },
    )
}

/// One status line for logs: snapshot tables in progress (rows, rows/s,
/// ETA), then the stream.
pub fn line(stats: &Stats, rate: f64) -> String {
    let mut parts = Vec::new();
    for t in stats.snapshot_tables.lock().unwrap().iter().filter(|t| !t.done) {
        let secs = t.started.elapsed().as_secs_f64().max(0.001);
        let r = t.rows as f64 / secs;
        let eta = if t.estimated > t.rows && r > 0.0 {
            format!(" ETA {:.0}s", (t.estimated - t.rows) as f64 / r)
        } else {
            String::new()
        };
        parts.push(format!("{} {}/{} rows {:.0}/s{eta}", t.table, t.rows, t.estimated, r));
    }
    parts.push(stream_line(stats, rate));
    parts.join(" | ")
}

/// The bars of the tables being copied, kept in step with `stats`.
struct TableBars {
    bars: HashMap<String, ProgressBar>,
    status: ProgressBar,
}

impl TableBars {
    fn new() -> TableBars {
        let status = bars().add(ProgressBar::new_spinner());
        status.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        TableBars { bars: HashMap::new(), status }
    }

    fn update(&mut self, stats: &Stats, rate: f64) {
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {human_pos}/{human_len} rows, {per_sec}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        for t in stats.snapshot_tables.lock().unwrap().iter() {
            if t.done {
                if let Some(bar) = self.bars.remove(&t.table) {
                    bar.finish_and_clear();
                }
                continue;
            }
            let bar = self.bars.entry(t.table.clone()).or_insert_with(|| {
                let bar = bars().insert_before(&self.status, ProgressBar::new(t.estimated));
                bar.set_style(style.clone());
                bar.set_prefix(t.table.clone());
                bar
            });
            // Estimates come from the catalog's statistics: never let one
            // make the bar run past its end.
            bar.set_length(t.estimated.max(t.rows));
            bar.set_position(t.rows);
        }
        self.status.set_message(stream_line(stats, rate));
        self.status.tick();
    }
}

impl Drop for TableBars {
    fn drop(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
        self.status.finish_and_clear();
    }
}

pub fn spawn(stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = stderr_is_tty();
        let mut shown = tty.then(TableBars::new);
        let mut last = (Instant::now(), 0u64);
        let mut last_log = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ev = stats.events.load(Ordering::Relaxed);
            let rate = (ev - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
            last = (Instant::now(), ev);
            match &mut shown {
                Some(bars) => bars.update(&stats, rate),
                None if last_log.elapsed() >= Duration::from_secs(10) => {
                    last_log = Instant::now();
                    tracing::info!("progress: {}", line(&stats, rate));
                }
                None => {}
            }
        }
    })
}
