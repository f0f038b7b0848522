//! Avro encoding with a Confluent Schema Registry.
//!
//! Invariants:
//! - A table's key and value schemas are derived from its `TableSchema`
//!   alone (Debezium-style names: `<topic>.Key`, `<topic>.Envelope`,
//!   `<topic>.Value`), registered under `<topic>-key` / `<topic>-value`
//!   before the first message that uses them, and again when the table's
//!   columns change (a new version; a registry refusing it is a fatal error
//!   naming table and subject).
//! - Messages are in the Confluent wire format: magic byte 0, the schema id
//!   (4 bytes, big-endian), the Avro binary datum.
//! - Every non-key column is a union with `null`: a value the source did not
//!   send (unchanged TOAST) is `null`, and its column is named in the
//!   `sluice.unchanged` header — never a made-up value.
//! - Datums are written straight from our values for the schemas built here
//!   (no generic Avro value tree); the unit tests decode them with
//!   `apache-avro` against the same schemas.
//! - Registry calls are the only I/O; encoding itself does none.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use base64::Engine;
use serde_json::{json, Value as Json};
use sluice_core::{ChangeEvent, ColumnType, ErrorKind, Op, Row, SinkError, TableSchema, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An Avro name part: letters, digits and `_`, not starting with a digit.
fn name_part(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The Avro namespace for a topic (`sluice.public.orders`).
pub fn namespace(topic: &str) -> String {
    topic.split('.').map(name_part).collect::<Vec<_>>().join(".")
}

/// Avro type of a column (without the null union).
fn column_type(ty: &ColumnType) -> Json {
    match ty {
        ColumnType::Bool => json!("boolean"),
        ColumnType::Int16 | ColumnType::Int32 => json!("int"),
        ColumnType::Int64 | ColumnType::UInt32 => json!("long"),
        ColumnType::UInt64 => json!({"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 0}),
        ColumnType::Float32 => json!("float"),
        ColumnType::Float64 => json!("double"),
        ColumnType::Numeric { precision: Some(p), scale } if *p <= 38 => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": scale.unwrap_or(0)})
        }
        ColumnType::Numeric { .. } => json!("string"),
        ColumnType::Bytes => json!("bytes"),
        ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
        ColumnType::Time => json!({"type": "long", "logicalType": "time-micros"}),
        ColumnType::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        ColumnType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
        ColumnType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
        ColumnType::Json | ColumnType::Array(_) => json!({"type": "string", "connect.name": "io.debezium.data.Json"}),
        ColumnType::Text | ColumnType::Other => json!("string"),
    }
}

fn row_record(table: &TableSchema, ns: &str, name: &str, only_key: bool) -> Json {
    let fields: Vec<Json> = table
        .columns
        .iter()
        .filter(|c| !only_key || c.key)
        .map(|c| {
            let t = column_type(&c.ty);
            if only_key {
                json!({"name": name_part(&c.name), "type": t})
            } else {
                json!({"name": name_part(&c.name), "type": ["null", t], "default": null})
            }
        })
        .collect();
    json!({"type": "record", "name": name, "namespace": ns, "fields": fields})
}

/// The key schema of a table (None without key columns).
pub fn key_schema(table: &TableSchema, topic: &str) -> Option<Json> {
    table.columns.iter().any(|c| c.key).then(|| row_record(table, &namespace(topic), "Key", true))
}

/// The value schema (Debezium's envelope).
pub fn value_schema(table: &TableSchema, topic: &str, mysql: bool) -> Json {
    let ns = namespace(topic);
    let value = row_record(table, &ns, "Value", false);
    let f = |name: &str, t: Json| json!({"name": name, "type": t});
    let opt = |name: &str, t: &str| json!({"name": name, "type": ["null", t], "default": null});
    let source = if mysql {
        json!({"type": "record", "name": "Source", "namespace": "io.debezium.connector.mysql", "fields": [
            f("version", json!("string")), f("connector", json!("string")), f("db", json!("string")),
            f("table", json!("string")), f("server_id", json!("long")), opt("gtid", "string"),
            f("file", json!("string")), f("pos", json!("long")), f("row", json!("int")),
            f("ts_ms", json!("long")), f("snapshot", json!("string"))]})
    } else {
        json!({"type": "record", "name": "Source", "namespace": "io.debezium.connector.postgresql", "fields": [
            f("version", json!("string")), f("connector", json!("string")), f("db", json!("string")),
            f("schema", json!("string")), f("table", json!("string")), opt("lsn", "long"), opt("txId", "long"),
            f("ts_ms", json!("long")), f("snapshot", json!("string")), f("sequence", json!("string"))]})
    };
    json!({
        "type": "record", "name": "Envelope", "namespace": ns,
        "fields": [
            {"name": "before", "type": ["null", value], "default": null},
            {"name": "after", "type": ["null", format!("{ns}.Value")], "default": null},
            f("source", source),
            f("op", json!("string")),
            opt("ts_ms", "long"),
        ],
    })
}

/// Minimal two's-complement big-endian bytes of `v`.
fn decimal_bytes(v: i128) -> Vec<u8> {
    let b = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (x, next) = (b[start], b[start + 1]);
        if (x == 0 && next & 0x80 == 0) || (x == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    b[start..].to_vec()
}

/// `"-12.5"` at scale 2 → -1250; `None` for NaN, infinities, too many digits
/// or more decimals than the scale (nothing is rounded).
pub fn scaled(text: &str, scale: u32) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        v = v.checked_mul(10)?.checked_add((c - b'0') as i128)?;
    }
    for _ in frac.len()..scale as usize {
        v = v.checked_mul(10)?;
    }
    Some(if neg { -v } else { v })
}

fn value_err(table: &TableSchema, col: &str, what: &str) -> SinkError {
    SinkError::fatal(format!(
        "table {}: column {col}: {what} cannot be written as Avro (use format: json, or exclude the column)",
        table.id
    ))
}

fn zz(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    zz(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// One column value in Avro binary (not wrapped in the null union), written
/// straight from our value for the type `column_type` declares. `v` is not
/// null.
fn put_value(
    out: &mut Vec<u8>,
    table: &TableSchema,
    ci: usize,
    v: &Value,
    scratch: &mut String,
) -> Result<(), SinkError> {
    let col = &table.columns[ci];
    let range = || value_err(table, &col.name, "an out-of-range integer");
    match (&col.ty, v) {
        (ColumnType::Bool, Value::Bool(b)) => out.push(*b as u8),
        (ColumnType::Int16 | ColumnType::Int32, Value::Int(i)) => {
            zz(out, i32::try_from(*i).map_err(|_| range())? as i64)
        }
        (ColumnType::Int64 | ColumnType::UInt32, Value::Int(i)) => zz(out, *i),
        (ColumnType::Int64 | ColumnType::UInt32, Value::UInt(u)) => zz(out, i64::try_from(*u).map_err(|_| range())?),
        (ColumnType::UInt64, Value::UInt(u)) => put_bytes(out, &decimal_bytes(*u as i128)),
        (ColumnType::UInt64, Value::Int(i)) => put_bytes(out, &decimal_bytes(*i as i128)),
        (ColumnType::Float32, Value::Float(f)) => out.extend_from_slice(&(*f as f32).to_le_bytes()),
        (ColumnType::Float64, Value::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (ColumnType::Numeric { precision: Some(p), scale }, Value::Numeric(s)) if *p <= 38 => {
            let n =
                scaled(s, scale.unwrap_or(0)).ok_or_else(|| value_err(table, &col.name, &format!("numeric {s}")))?;
            put_bytes(out, &decimal_bytes(n));
        }
        (ColumnType::Bytes, Value::Bytes(b)) => put_bytes(out, b),
        (ColumnType::Date, Value::Date(d)) => zz(out, *d as i64),
        (ColumnType::Time, Value::Time(t)) | (ColumnType::Timestamp, Value::Timestamp(t)) => zz(out, *t),
        (ColumnType::TimestampTz, Value::TimestampTz(t)) => zz(out, *t),
        (ty, other) => {
            // The remaining declared types are strings: text as is, anything
            // else (JSON documents, arrays) as its JSON text.
            if column_type(ty) != json!("string")
                && !matches!(ty, ColumnType::Uuid | ColumnType::Json | ColumnType::Array(_))
            {
                return Err(value_err(table, &col.name, &format!("a {other:?} value in a {ty:?} column")));
            }
            match other {
                Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) | Value::Json(s) => put_bytes(out, s.as_bytes()),
                _ => {
                    let mut buf = Vec::new();
                    sluice_schemas::json::write_value(&mut buf, other, scratch);
                    let text = if buf.len() >= 2 && buf[0] == b'"' && buf[buf.len() - 1] == b'"' {
                        &buf[1..buf.len() - 1]
                    } else {
                        &buf[..]
                    };
                    put_bytes(out, text);
                }
            }
        }
    }
    Ok(())
}

fn put_row(
    out: &mut Vec<u8>,
    table: &TableSchema,
    row: &Row,
    only_key: bool,
    scratch: &mut String,
) -> Result<(), SinkError> {
    for (i, c) in table.columns.iter().enumerate() {
        if only_key && !c.key {
            continue;
        }
        let v = row.values.get(i).unwrap_or(&Value::Null);
        let null = matches!(v, Value::Null | Value::Unchanged);
        if only_key {
            if null {
                return Err(value_err(table, &c.name, "a NULL key value"));
            }
        } else if null {
            zz(out, 0);
            continue;
        } else {
            zz(out, 1);
        }
        put_value(out, table, i, v, scratch)?;
    }
    Ok(())
}

/// The Avro key datum of a row.
pub fn key_datum(table: &TableSchema, row: &Row, scratch: &mut String) -> Result<Vec<u8>, SinkError> {
    let mut out = Vec::with_capacity(16);
    put_row(&mut out, table, row, true, scratch)?;
    Ok(out)
}

/// The Avro envelope datum of an event, and the columns the source did not send.
pub fn value_datum(ev: &ChangeEvent, now_ms: i64, scratch: &mut String) -> Result<(Vec<u8>, Vec<String>), SinkError> {
    let t = &ev.table;
    let mut out = Vec::with_capacity(128);
    for image in [&ev.before, &ev.after] {
        match image {
            Some(r) => {
                zz(&mut out, 1);
                put_row(&mut out, t, r, false, scratch)?;
            }
            None => zz(&mut out, 0),
        }
    }
    let unchanged: Vec<String> = match &ev.after {
        Some(r) => t
            .columns
            .iter()
            .zip(&r.values)
            .filter(|(_, v)| matches!(v, Value::Unchanged))
            .map(|(c, _)| c.name.clone())
            .collect(),
        None => Vec::new(),
    };
    let snapshot: &[u8] = if ev.snapshot { b"true" } else { b"false" };
    let ts = ev.commit_ts_us.div_euclid(1000);
    put_bytes(&mut out, env!("CARGO_PKG_VERSION").as_bytes());
    match &ev.mysql {
        Some(m) => {
            put_bytes(&mut out, b"mysql");
            put_bytes(&mut out, t.id.schema.as_bytes());
            put_bytes(&mut out, t.id.name.as_bytes());
            zz(&mut out, m.server_id as i64);
            match m.gtid {
                sluice_core::EventGtid::None => zz(&mut out, 0),
                g => {
                    zz(&mut out, 1);
                    put_bytes(&mut out, g.to_string().as_bytes());
                }
            }
            put_bytes(&mut out, m.file.to_string().as_bytes());
            zz(&mut out, m.pos as i64);
            zz(&mut out, m.row as i64);
            zz(&mut out, ts);
            put_bytes(&mut out, snapshot);
        }
        None => {
            put_bytes(&mut out, b"postgresql");
            put_bytes(&mut out, t.database.as_bytes());
            put_bytes(&mut out, t.id.schema.as_bytes());
            put_bytes(&mut out, t.id.name.as_bytes());
            zz(&mut out, 1);
            zz(&mut out, ev.position.lsn() as i64);
            match ev.tx_id {
                Some(x) => {
                    zz(&mut out, 1);
                    zz(&mut out, x as i64);
                }
                None => zz(&mut out, 0),
            }
            zz(&mut out, ts);
            put_bytes(&mut out, snapshot);
            put_bytes(&mut out, format!("[\"{}\",\"{}\"]", ev.commit_position.lsn(), ev.position.lsn()).as_bytes());
        }
    }
    let op: &[u8] = match ev.op {
        Op::Read => b"r",
        Op::Create => b"c",
        Op::Update => b"u",
        Op::Delete => b"d",
        Op::Truncate => b"t",
    };
    put_bytes(&mut out, op);
    zz(&mut out, 1);
    zz(&mut out, now_ms);
    Ok((out, unchanged))
}

/// Prefix a datum with the Confluent wire-format header.
pub fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// A table's registered schemas.
pub struct Registered {
    pub schema: Arc<TableSchema>,
    pub key: Option<(Schema, u32)>,
    pub value: (Schema, u32),
}

/// A small Confluent Schema Registry client (HTTP/1.1, `http://` URLs, basic
/// auth from the URL's user info).
pub struct Registry {
    host: String,
    port: u16,
    base_path: String,
    auth: Option<String>,
}

impl Registry {
    pub fn new(url: &str) -> Result<Self, SinkError> {
        let bad = || SinkError::new(ErrorKind::Config, format!("sink.schema_registry: {url:?} is not an http:// URL"));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(base64::engine::general_purpose::STANDARD.encode(u)), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (hostport.to_string(), 80),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Registry { host, port, base_path: path.to_string(), auth })
    }

    /// Register `schema` under `subject`; its id. The registry returns the
    /// existing id when the schema is already registered.
    pub async fn register(&self, subject: &str, schema: &Json, table: &str) -> Result<u32, SinkError> {
        let body = json!({"schema": schema.to_string()}).to_string();
        let path = format!("{}/subjects/{}/versions", self.base_path, subject);
        let (status, text) = tokio::time::timeout(Duration::from_secs(30), self.post(&path, &body))
            .await
            .map_err(|_| SinkError::new(ErrorKind::Transient, "the schema registry did not answer within 30 s"))??;
        match status {
            200 => {
                let v: Json = serde_json::from_str(&text).map_err(|e| {
                    SinkError::new(ErrorKind::Transient, format!("schema registry answered {text:?}: {e}"))
                })?;
                v["id"].as_u64().map(|id| id as u32).ok_or_else(|| {
                    SinkError::new(ErrorKind::Transient, format!("schema registry answer without id: {text}"))
                })
            }
            409 => Err(SinkError::fatal(format!(
                "the schema registry refused the new schema of table {table} for subject {subject} as incompatible ({text}); \
                 relax the subject's compatibility or write the table to a new topic"
            ))),
            401 | 403 => Err(SinkError::new(
                ErrorKind::Config,
                format!("the schema registry refused the credentials ({status}): check sink.schema_registry"),
            )),
            s if s >= 500 => {
                Err(SinkError::new(ErrorKind::Transient, format!("schema registry error {s} for {subject}: {text}")))
            }
            s => Err(SinkError::fatal(format!("schema registry refused subject {subject} ({s}): {text}"))),
        }
    }

    async fn post(&self, path: &str, body: &str) -> Result<(u16, String), SinkError> {
        let transient = |e: std::io::Error| {
            SinkError::new(
                ErrorKind::Transient,
                format!("cannot reach the schema registry at {}:{}: {e}", self.host, self.port),
            )
        };
        let mut s = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(transient)?;
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
             Accept: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.host,
            self.port,
            body.len()
        );
        if let Some(a) = &self.auth {
            req.push_str(&format!("Authorization: Basic {a}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.map_err(transient)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(transient)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(rest) } else { rest.to_string() };
        Ok((status, body))
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Parse a schema built here.
pub fn parse(schema: &Json) -> Result<Schema, SinkError> {
    Schema::parse(schema).map_err(|e| SinkError::fatal(format!("internal: invalid Avro schema {schema}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Av;
    use sluice_core::testing::{col, key, table};

    #[test]
    fn decimals_and_names() {
        assert_eq!(scaled("-12.5", 2), Some(-1250));
        assert_eq!(scaled("12.50", 1), Some(125));
        assert_eq!(scaled("0.125", 2), None, "never rounded");
        assert_eq!(scaled("NaN", 2), None);
        assert_eq!(decimal_bytes(0), vec![0]);
        assert_eq!(decimal_bytes(255), vec![0, 255]);
        assert_eq!(decimal_bytes(-1), vec![0xff]);
        assert_eq!(decimal_bytes(-129), vec![0xff, 0x7f]);
        assert_eq!(namespace("sluice.My Schema.9t-x"), "sluice.My_Schema._9t_x");
    }

    #[test]
    fn schemas_parse_and_events_encode() {
        let t = Arc::new(table(
            "public",
            "t",
            vec![
                key("id", ColumnType::Int64),
                col("n", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
                col("ts", ColumnType::TimestampTz),
                col("u", ColumnType::Uuid),
                col("j", ColumnType::Json),
                col("a", ColumnType::Array(Box::new(ColumnType::Int32))),
                col("big", ColumnType::Text),
            ],
        ));
        let vs = parse(&value_schema(&t, "sluice.public.t", false)).unwrap();
        let ks = parse(&key_schema(&t, "sluice.public.t").unwrap()).unwrap();
        let ev = ChangeEvent {
            op: Op::Update,
            table: t.clone(),
            before: None,
            after: Some(Row::new(vec![
                Value::Int(1),
                Value::Numeric("-3.5".into()),
                Value::TimestampTz(1_700_000_000_000_000),
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                Value::Json("{\"a\":1}".into()),
                Value::Array(vec![Value::Int(1), Value::Null]),
                Value::Unchanged,
            ])),
            commit_position: sluice_core::EventPosition::Lsn(10),
            position: sluice_core::EventPosition::Lsn(9),
            tx_id: Some(5),
            commit_ts_us: 0,
            snapshot: false,
            mysql: None,
        };
        let mut scratch = String::new();
        let (datum, unchanged) = value_datum(&ev, 1, &mut scratch).unwrap();
        assert_eq!(unchanged, vec!["big".to_string()]);
        let back = apache_avro::from_avro_datum(&vs, &mut &datum[..], None).unwrap();
        let Av::Record(fields) = back else { panic!() };
        assert_eq!(fields[3], ("op".to_string(), Av::String("u".into())), "{fields:?}");
        let Av::Union(1, after) = &fields[1].1 else { panic!("after") };
        let Av::Record(cols) = after.as_ref() else { panic!() };
        assert_eq!(cols[0].1, Av::Union(1, Box::new(Av::Long(1))));
        assert_eq!(cols[4].1, Av::Union(1, Box::new(Av::String("{\"a\":1}".into()))));
        assert_eq!(cols[5].1, Av::Union(1, Box::new(Av::String("[1,null]".into()))));
        assert_eq!(cols[6].1, Av::Union(0, Box::new(Av::Null)));
        let key = key_datum(&t, ev.after.as_ref().unwrap(), &mut scratch).unwrap();
        assert_eq!(key, vec![2], "zigzag 1");
        let k = apache_avro::from_avro_datum(&ks, &mut &key[..], None).unwrap();
        assert_eq!(k, Av::Record(vec![("id".into(), Av::Long(1))]));
        // NaN in a decimal column is refused, naming the column.
        let mut bad = ev.clone();
        bad.after.as_mut().unwrap().values[1] = Value::Numeric("NaN".into());
        let e = value_datum(&bad, 1, &mut scratch).unwrap_err();
        assert!(e.message.contains("column n"), "{e}");
        assert_eq!(framed(7, &[1]), vec![0, 0, 0, 0, 7, 1]);
    }
}
