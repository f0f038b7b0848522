//! A throwaway Kafka-protocol broker (tansu 0.6.0, in-memory storage) on a
//! free loopback port, and a reader that consumes whole topics back.
//!
//! tansu is found through `$SLUICE_TANSU`, then
//! `$XDG_CACHE_HOME/sluice/tansu-0.6.0/bin/tansu` (or `~/.cache/...`), then
//! `PATH`. When it is nowhere, it is installed into that cache with
//! `cargo install` (once, under a lock; about 15 minutes on 2 cores).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const TANSU_VERSION: &str = "0.6.0";

fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("sluice").join(format!("tansu-{TANSU_VERSION}"))
}

/// The tansu binary, installing it when missing.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TANSU") {
        return PathBuf::from(p);
    }
    let cached = cache_root().join("bin/tansu");
    if cached.exists() {
        return cached;
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    // Install once (other test processes wait on the lock).
    let root = cache_root();
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("flock")
        .arg(root.join(".lock"))
        .args(["sh", "-c"])
        .arg(format!(
            "[ -x '{bin}' ] || cargo install --locked --version {TANSU_VERSION} --features dynostore tansu --root '{root}'",
            bin = cached.display(),
            root = root.display()
        ))
        .status()
        .expect("run cargo install tansu");
    assert!(status.success() && cached.exists(), "cannot install tansu {TANSU_VERSION} into {}", root.display());
    cached
}

/// A running broker; killed and its directory removed on drop.
pub struct Tansu {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Tansu {
    pub fn start() -> Tansu {
        let bin = tansu_binary();
        let port = super::pgcluster::free_port();
        let dir = std::env::temp_dir().join(format!("sluice-tansu-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tansu.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let t = Tansu { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", t.brokers()).create().unwrap();
            if c.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer on port {port}; see {}",
                t.dir.join("tansu.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct KMsg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl KMsg {
    pub fn seq(&self) -> u64 {
        self.headers.get("sluice.seq").and_then(|s| s.parse().ok()).expect("sluice.seq header")
    }
}

/// Every message of every topic whose name starts with `prefix`, partition
/// by partition in offset order.
pub fn read_topics(brokers: &str, prefix: &str) -> Vec<KMsg> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-test-reader")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut want = HashSet::new();
    for t in md.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        for p in t.partitions() {
            let (lo, hi) = c.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10)).expect("watermarks");
            if hi > lo {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(lo)).unwrap();
                want.insert((t.name().to_string(), p.id()));
            }
        }
    }
    let mut out = Vec::new();
    if want.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let mut done = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.len() < want.len() {
        assert!(Instant::now() < deadline, "timed out reading topics {prefix}*");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(KMsg {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
                    headers,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                // EOF is per topic-partition; the error carries only the partition.
                for (t, q) in &want {
                    if *q == p && !done.contains(&(t.clone(), p)) {
                        let (_, hi) = c.fetch_watermarks(t, p, Duration::from_secs(10)).unwrap();
                        let seen = out.iter().filter(|m| &m.topic == t && m.partition == p).map(|m| m.offset).max();
                        if seen.is_some_and(|o| o + 1 >= hi) {
                            done.insert((t.clone(), p));
                        }
                    }
                }
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}
