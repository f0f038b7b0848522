//! Live progress on a terminal (one rewritten line), log lines otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::runtime::Stats;

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

pub fn clear_line() {
    if stderr_is_tty() {
        eprint!("\r\x1b[K");
    }
}

/// One status line: snapshot tables in progress (rows, rows/s, ETA), then stream counters.
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
    let done = stats.snapshot_tables.lock().unwrap().iter().filter(|t| t.done).count();
    parts.push(format!(
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
    ));
    parts.join(" | ")
}

pub fn spawn(stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = stderr_is_tty();
        let mut last = (Instant::now(), 0u64);
        let mut last_log = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ev = stats.events.load(Ordering::Relaxed);
            let rate = (ev - last.1) as f64 / last.0.elapsed().as_secs_f64().max(0.001);
            last = (Instant::now(), ev);
            let l = line(&stats, rate);
            if tty {
                let width = 200;
                let shown: String = l.chars().take(width).collect();
                eprint!("\r\x1b[K{shown}");
                let _ = std::io::stderr().flush();
            } else if last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                tracing::info!("progress: {l}");
            }
        }
    })
}
