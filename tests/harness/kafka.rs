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
    /// The value's bytes (Avro is binary).
    pub raw: Option<Vec<u8>>,
    pub raw_key: Option<Vec<u8>>,
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
                    raw: m.payload().map(|v| v.to_vec()),
                    raw_key: m.key().map(|v| v.to_vec()),
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

/// An in-process stand-in for the Confluent Schema Registry: the REST
/// endpoints the producer uses (`POST /subjects/{subject}/versions`,
/// `GET /schemas/ids/{id}`), schemas kept in memory. Subjects listed in
/// `refuse` answer 409 (incompatible) to any new version.
pub struct RegistryStandIn {
    pub url: String,
    pub state: std::sync::Arc<std::sync::Mutex<RegistryState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct RegistryState {
    /// Schema text by id (ids from 1).
    pub schemas: Vec<String>,
    /// Subject → ids of its versions, in order.
    pub subjects: BTreeMap<String, Vec<u32>>,
    pub refuse: HashSet<String>,
}

impl RegistryStandIn {
    pub async fn start() -> RegistryStandIn {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = std::sync::Arc::new(std::sync::Mutex::new(RegistryState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    // Read the head, then Content-Length bytes of body.
                    let (head, body) = loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((h, b)) = text.split_once("\r\n\r\n") {
                            let len: usize = h
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if b.len() >= len {
                                break (h.to_string(), b.to_string());
                            }
                        }
                    };
                    let mut parts = head.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let (status, reply) = {
                        let mut s = st.lock().unwrap();
                        if method == "POST" && path.starts_with("/subjects/") && path.ends_with("/versions") {
                            let subject = path["/subjects/".len()..path.len() - "/versions".len()].to_string();
                            let schema = serde_json::from_str::<serde_json::Value>(&body).unwrap()["schema"]
                                .as_str()
                                .unwrap()
                                .to_string();
                            let existing = s.subjects.get(&subject).and_then(|ids| {
                                ids.iter().find(|id| s.schemas[(**id - 1) as usize] == schema).copied()
                            });
                            match existing {
                                Some(id) => (200, format!("{{\"id\":{id}}}")),
                                None if s.refuse.contains(&subject) && s.subjects.contains_key(&subject) => (
                                    409,
                                    "{\"error_code\":409,\"message\":\"Schema being registered is incompatible\"}"
                                        .into(),
                                ),
                                None => {
                                    s.schemas.push(schema);
                                    let id = s.schemas.len() as u32;
                                    s.subjects.entry(subject).or_default().push(id);
                                    (200, format!("{{\"id\":{id}}}"))
                                }
                            }
                        } else if let Some(id) =
                            path.strip_prefix("/schemas/ids/").and_then(|i| i.parse::<usize>().ok())
                        {
                            match s.schemas.get(id.wrapping_sub(1)) {
                                Some(schema) => (200, serde_json::json!({"schema": schema}).to_string()),
                                None => (404, "{\"error_code\":40403}".into()),
                            }
                        } else {
                            (404, "{\"error_code\":404}".into())
                        }
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        RegistryStandIn { url, state, task }
    }

    /// The parsed schema with this id.
    pub fn schema(&self, id: u32) -> apache_avro::Schema {
        let s = self.state.lock().unwrap();
        apache_avro::Schema::parse_str(&s.schemas[(id - 1) as usize]).unwrap()
    }
}

impl Drop for RegistryStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decode a Confluent-framed Avro message into JSON (unions unwrapped,
/// decimals as exact strings with the schema's scale, logical types as their
/// numbers).
pub fn avro_to_json(reg: &RegistryStandIn, bytes: &[u8]) -> serde_json::Value {
    assert_eq!(bytes[0], 0, "magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    let schema = reg.schema(id);
    let v = apache_avro::from_avro_datum(&schema, &mut &bytes[5..], None).expect("valid Avro datum");
    let rs = apache_avro::schema::ResolvedSchema::try_from(&schema).unwrap();
    to_json(&v, &schema, rs.get_names())
}

type Names<'a> = std::collections::HashMap<apache_avro::schema::Name, &'a apache_avro::Schema>;

fn to_json(v: &apache_avro::types::Value, schema: &apache_avro::Schema, names: &Names<'_>) -> serde_json::Value {
    use apache_avro::schema::Schema as S;
    use apache_avro::types::Value as V;
    use serde_json::json;
    match (v, schema) {
        (_, S::Ref { name }) => to_json(v, names[name], names),
        (V::Union(i, inner), S::Union(u)) => to_json(inner, &u.variants()[*i as usize], names),
        (V::Record(fields), S::Record(r)) => {
            let mut m = serde_json::Map::new();
            for ((name, fv), f) in fields.iter().zip(&r.fields) {
                m.insert(name.clone(), to_json(fv, &f.schema, names));
            }
            serde_json::Value::Object(m)
        }
        (V::Null, _) => serde_json::Value::Null,
        (V::Boolean(b), _) => json!(b),
        (V::Int(i), _) | (V::Date(i), _) => json!(i),
        (V::Long(i), _) | (V::TimeMicros(i), _) | (V::TimestampMicros(i), _) | (V::LocalTimestampMicros(i), _) => {
            json!(i)
        }
        (V::Float(f), _) => json!(f),
        (V::Double(f), _) => json!(f),
        (V::String(s), _) => json!(s),
        (V::Uuid(u), _) => json!(u.to_string()),
        (V::Bytes(b), _) => json!(b),
        (V::Decimal(d), S::Decimal(ds)) => {
            let bytes: Vec<u8> = d.try_into().unwrap();
            let mut n: i128 = if bytes.first().is_some_and(|b| b & 0x80 != 0) { -1 } else { 0 };
            for b in bytes {
                n = (n << 8) | b as i128;
            }
            let neg = n < 0;
            let digits = n.unsigned_abs().to_string();
            let scale = ds.scale;
            let digits = format!("{:0>w$}", digits, w = scale + 1);
            let (i, f) = digits.split_at(digits.len() - scale);
            let s = if scale > 0 { format!("{i}.{f}") } else { i.to_string() };
            json!(if neg { format!("-{s}") } else { s })
        }
        (other, s) => panic!("unexpected Avro value {other:?} for {s:?}"),
    }
}
