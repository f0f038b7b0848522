//! `blackhole` (discard, for benchmarks) and `stdout` (JSONL to standard output).

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use sluice_core::error::SinkError;
use sluice_core::{ChangeEvent, Sink, TableId};

/// Discards events; everything is "durable" at once.
#[derive(Default)]
pub struct BlackholeSink {
    pub events: u64,
    unflushed: bool,
}

impl Sink for BlackholeSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        Ok(())
    }
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        self.events += events.len() as u64;
        self.unflushed = true;
        Ok(())
    }
    fn wants_flush(&self) -> bool {
        false
    }
    fn has_unflushed(&self) -> bool {
        self.unflushed
    }
    fn max_flush_delay(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn flush(
        &mut self,
        _hold: &HashSet<TableId>,
        _next: &sluice_core::Checkpoint,
    ) -> Result<serde_json::Value, SinkError> {
        self.unflushed = false;
        Ok(serde_json::Value::Null)
    }
    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        format!("{} events discarded", self.events)
    }
    /// Nothing to complete: the events are discarded.
    fn merges_rows(&self) -> bool {
        true
    }
}

/// Writes JSONL events to standard output; durable once flushed (at-least-once
/// across crashes, since stdout cannot be rolled back).
#[derive(Default)]
pub struct StdoutSink {
    buf: Vec<u8>,
    scratch: String,
    events: u64,
}

impl Sink for StdoutSink {
    async fn open(&mut self, _state: Option<&serde_json::Value>) -> Result<(), SinkError> {
        Ok(())
    }
    async fn write(&mut self, events: &[ChangeEvent]) -> Result<(), SinkError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for ev in events {
            sluice_schemas::json::write_event(&mut self.buf, ev, now, &mut self.scratch);
            self.buf.push(b'\n');
        }
        self.events += events.len() as u64;
        if self.buf.len() > 1 << 20 {
            self.write_out()?;
        }
        Ok(())
    }
    fn wants_flush(&self) -> bool {
        false
    }
    fn has_unflushed(&self) -> bool {
        !self.buf.is_empty()
    }
    fn max_flush_delay(&self) -> Duration {
        Duration::from_millis(200)
    }
    async fn flush(
        &mut self,
        _hold: &HashSet<TableId>,
        _next: &sluice_core::Checkpoint,
    ) -> Result<serde_json::Value, SinkError> {
        self.write_out()?;
        Ok(serde_json::Value::Null)
    }
    async fn checkpointed(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        format!("{} events written to stdout", self.events)
    }
}

impl StdoutSink {
    fn write_out(&mut self) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf).and_then(|_| out.flush()).map_err(|e| SinkError::io("writing to stdout", e))?;
        self.buf.clear();
        Ok(())
    }
}
