//! Message encoding: topic names, keys, values, partitions.
//!
//! Invariants:
//! - A message's partition is a pure function of its key bytes and the
//!   topic's partition count (Kafka's Java default, murmur2), so all changes
//!   to a row land in one partition in commit order, and a replay puts every
//!   message where it went the first time. Messages without a key go to
//!   partition 0.
//! - `json` values are exactly the JSONL event of the files sink; `json_schema`
//!   wraps the same payload (JSON documents and arrays as JSON text) in Kafka
//!   Connect's `{"schema": ..., "payload": ...}` with a Debezium-style schema.
//! - Encoding does no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value as Json};
use sluice_core::config::KafkaFormat;
use sluice_core::{ChangeEvent, ColumnType, Op, Row, SinkError, TableId, TableSchema, Value};
use sluice_schemas::json::{write_event_opts, write_str, write_value};

/// The topic for a table: the template with `{schema}`, `{table}` and
/// `{database}` filled in, characters Kafka refuses replaced by `_` (as Debezium does).
pub fn topic_for(template: &str, table: &TableSchema) -> String {
    let filled = template
        .replace("{schema}", &table.id.schema)
        .replace("{table}", &table.id.name)
        .replace("{database}", &table.database);
    sanitize_topic(&filled)
}

pub fn sanitize_topic(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    s.truncate(249);
    s
}

/// Kafka's murmur2 (the Java client's default partitioner hash).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of a message with `key` in a topic of `partitions` partitions.
pub fn partition_for(key: Option<&[u8]>, partitions: i32) -> i32 {
    match key {
        Some(k) if partitions > 1 => ((murmur2(k) & 0x7fff_ffff) % partitions as u32) as i32,
        _ => 0,
    }
}

/// One message to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// Avro values: the columns the source did not send, comma-separated
    /// (the `sluice.unchanged` header; empty: none).
    pub unchanged: String,
}

/// Avro schemas (with registry ids) of one table version.
pub struct AvroTable {
    pub schema: Arc<TableSchema>,
    pub key: Option<(apache_avro::Schema, u32)>,
    pub value: (apache_avro::Schema, u32),
}

/// Connect schema strings of one table version.
struct TableSchemas {
    version: u64,
    schema: Arc<TableSchema>,
    key: String,
    value: String,
}

/// Encodes change events into messages, caching per-table schemas.
pub struct Encoder {
    format: KafkaFormat,
    with_key: bool,
    tombstones: bool,
    scratch: String,
    schemas: HashMap<TableId, TableSchemas>,
    avro: HashMap<TableId, AvroTable>,
    /// Columns the source did not send in the last Avro value (`sluice.unchanged`).
    unchanged: Vec<String>,
}

impl Encoder {
    pub fn new(format: KafkaFormat, with_key: bool, tombstones: bool) -> Self {
        Encoder {
            format,
            with_key,
            tombstones,
            scratch: String::new(),
            schemas: HashMap::new(),
            avro: HashMap::new(),
            unchanged: Vec::new(),
        }
    }

    /// Does `table` (this version of it) need its Avro schemas registered?
    pub fn needs_avro(&self, table: &Arc<TableSchema>) -> bool {
        self.format == KafkaFormat::Avro
            && !self.avro.get(&table.id).is_some_and(|a| Arc::ptr_eq(&a.schema, table) || a.schema.same_shape(table))
    }

    pub fn set_avro(&mut self, t: AvroTable) {
        self.avro.insert(t.schema.id.clone(), t);
    }

    fn schemas(&mut self, table: &Arc<TableSchema>, topic: &str, mysql: bool) -> &TableSchemas {
        let fresh = match self.schemas.get(&table.id) {
            Some(s) => s.version != table.version || !Arc::ptr_eq(&s.schema, table) && !s.schema.same_shape(table),
            None => true,
        };
        if fresh {
            let s = TableSchemas {
                version: table.version,
                schema: table.clone(),
                key: key_schema(table, topic).to_string(),
                value: envelope_schema(table, topic, mysql).to_string(),
            };
            self.schemas.insert(table.id.clone(), s);
        }
        &self.schemas[&table.id]
    }

    /// The messages for one event, in order: a primary-key change becomes a
    /// delete of the old key (plus tombstone) and a create of the new one, as
    /// Debezium does; a delete is followed by a tombstone unless disabled.
    pub fn encode(&mut self, ev: &ChangeEvent, topic: &str, now_ms: i64, out: &mut Vec<Msg>) -> Result<(), SinkError> {
        self.unchanged.clear();
        let key_row = match ev.op {
            Op::Delete => ev.before.as_ref(),
            Op::Truncate => None,
            _ => ev.after.as_ref(),
        };
        if ev.op == Op::Update {
            if let (Some(before), Some(after)) = (&ev.before, &ev.after) {
                if ev.key_changed() {
                    let old_key = self.key(ev, before, topic)?;
                    let mut del = ev.clone();
                    del.op = Op::Delete;
                    del.after = None;
                    let value = Some(self.value(&del, topic, now_ms)?);
                    out.push(Msg { key: old_key.clone(), value, unchanged: self.take_unchanged() });
                    // A tombstone needs a key to delete (none with `key: none`).
                    if self.tombstones && old_key.is_some() {
                        out.push(Msg { key: old_key, value: None, unchanged: String::new() });
                    }
                    let mut create = ev.clone();
                    create.op = Op::Create;
                    create.before = None;
                    let new_key = self.key(ev, after, topic)?;
                    let value = Some(self.value(&create, topic, now_ms)?);
                    out.push(Msg { key: new_key, value, unchanged: self.take_unchanged() });
                    return Ok(());
                }
            }
        }
        let key = match key_row {
            Some(r) => self.key(ev, r, topic)?,
            None => None,
        };
        let value = self.value(ev, topic, now_ms)?;
        let tomb = ev.op == Op::Delete && self.tombstones && key.is_some();
        out.push(Msg { key: key.clone(), value: Some(value), unchanged: self.take_unchanged() });
        if tomb {
            out.push(Msg { key, value: None, unchanged: String::new() });
        }
        Ok(())
    }

    /// The columns the last Avro value left unsent, as the header text.
    fn take_unchanged(&mut self) -> String {
        let s = self.unchanged.join(",");
        self.unchanged.clear();
        s
    }

    /// The message key: the key columns as a JSON object (`None` without key columns).
    fn key(&mut self, ev: &ChangeEvent, row: &Row, topic: &str) -> Result<Option<Vec<u8>>, SinkError> {
        let table = &ev.table;
        if !self.with_key || !table.columns.iter().any(|c| c.key) {
            return Ok(None);
        }
        if self.format == KafkaFormat::Avro {
            let a = self.avro.get(&table.id).expect("registered before encoding");
            let Some((_, id)) = &a.key else { return Ok(None) };
            let datum = crate::avro::key_datum(table, row, &mut self.scratch)?;
            return Ok(Some(crate::avro::framed(*id, &datum)));
        }
        let mut out = Vec::with_capacity(32);
        if self.format == KafkaFormat::JsonSchema {
            out.extend_from_slice(b"{\"schema\":");
            let s = self.schemas(table, topic, ev.mysql.is_some()).key.clone();
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b",\"payload\":");
        }
        out.push(b'{');
        let mut first = true;
        for (i, col) in table.key_columns() {
            if !first {
                out.push(b',');
            }
            first = false;
            write_str(&mut out, &col.name);
            out.push(b':');
            write_value(&mut out, row.values.get(i).unwrap_or(&Value::Null), &mut self.scratch);
        }
        out.push(b'}');
        if self.format == KafkaFormat::JsonSchema {
            out.push(b'}');
        }
        Ok(Some(out))
    }

    fn value(&mut self, ev: &ChangeEvent, topic: &str, now_ms: i64) -> Result<Vec<u8>, SinkError> {
        let mut out = Vec::with_capacity(256);
        match self.format {
            KafkaFormat::Avro => {
                let a = self.avro.get(&ev.table.id).expect("registered before encoding");
                let (datum, unchanged) = crate::avro::value_datum(ev, now_ms, &mut self.scratch)?;
                self.unchanged = unchanged;
                return Ok(crate::avro::framed(a.value.1, &datum));
            }
            KafkaFormat::JsonSchema => {
                out.extend_from_slice(b"{\"schema\":");
                let s = &self.schemas(&ev.table, topic, ev.mysql.is_some()).value;
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b",\"payload\":");
                write_event_opts(&mut out, ev, now_ms, &mut self.scratch, true);
                out.push(b'}');
            }
            KafkaFormat::Json => write_event_opts(&mut out, ev, now_ms, &mut self.scratch, false),
        }
        Ok(out)
    }
}

/// Kafka Connect type (and Debezium semantic name) of a column as our JSON writes it.
fn connect_type(ty: &ColumnType) -> (&'static str, Option<&'static str>) {
    match ty {
        ColumnType::Bool => ("boolean", None),
        ColumnType::Int16 => ("int16", None),
        ColumnType::Int32 => ("int32", None),
        ColumnType::Int64 | ColumnType::UInt32 | ColumnType::UInt64 => ("int64", None),
        ColumnType::Float32 => ("float", None),
        ColumnType::Float64 => ("double", None),
        ColumnType::Numeric { .. } => ("string", None),
        ColumnType::Bytes => ("bytes", None),
        ColumnType::Date => ("string", Some("io.debezium.time.IsoDate")),
        ColumnType::Time => ("string", Some("io.debezium.time.IsoTime")),
        ColumnType::Timestamp => ("string", Some("io.debezium.time.IsoTimestamp")),
        ColumnType::TimestampTz => ("string", Some("io.debezium.time.ZonedTimestamp")),
        ColumnType::Uuid => ("string", Some("io.debezium.data.Uuid")),
        ColumnType::Json | ColumnType::Array(_) => ("string", Some("io.debezium.data.Json")),
        ColumnType::Text | ColumnType::Other => ("string", None),
    }
}

fn field(name: &str, ty: &ColumnType, optional: bool) -> Json {
    let (t, semantic) = connect_type(ty);
    let mut f = json!({"type": t, "optional": optional, "field": name});
    if let Some(n) = semantic {
        f["name"] = json!(n);
        f["version"] = json!(1);
    }
    f
}

fn row_struct(table: &TableSchema, name: String, only_key: bool) -> Json {
    let fields: Vec<Json> = table
        .columns
        .iter()
        .filter(|c| !only_key || c.key)
        .map(|c| field(&c.name, &c.ty, if only_key { false } else { c.nullable && !c.key }))
        .collect();
    json!({"type": "struct", "fields": fields, "optional": !only_key, "name": name})
}

/// The Connect schema of a table's key.
pub fn key_schema(table: &TableSchema, topic: &str) -> Json {
    row_struct(table, format!("{topic}.Key"), true)
}

/// The Connect schema of a table's change events (Debezium's envelope).
pub fn envelope_schema(table: &TableSchema, topic: &str, mysql: bool) -> Json {
    let value = row_struct(table, format!("{topic}.Value"), false);
    let mut before = value.clone();
    before["field"] = json!("before");
    let mut after = value;
    after["field"] = json!("after");
    let s = |name: &str, t: &str, optional: bool| json!({"type": t, "optional": optional, "field": name});
    let source = if mysql {
        json!({"type": "struct", "optional": false, "name": "io.debezium.connector.mysql.Source", "field": "source",
            "fields": [s("version", "string", false), s("connector", "string", false), s("db", "string", false),
                s("table", "string", true), s("server_id", "int64", false), s("gtid", "string", true),
                s("file", "string", false), s("pos", "int64", false), s("row", "int32", false),
                s("ts_ms", "int64", false), s("snapshot", "string", true)]})
    } else {
        json!({"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source",
            "fields": [s("version", "string", false), s("connector", "string", false), s("db", "string", false),
                s("schema", "string", false), s("table", "string", false), s("lsn", "int64", true),
                s("txId", "int64", true), s("ts_ms", "int64", false), s("snapshot", "string", true),
                s("sequence", "string", true)]})
    };
    json!({
        "type": "struct",
        "fields": [before, after, source, s("op", "string", false), s("ts_ms", "int64", true)],
        "optional": false,
        "name": format!("{topic}.Envelope"),
        "version": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{self, col, key};
    use sluice_core::Column;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Vectors from Kafka's UtilsTest.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        assert_eq!(partition_for(None, 8), 0);
        assert_eq!(partition_for(Some(b"x"), 1), 0);
        let p = partition_for(Some(b"{\"id\":1}"), 8);
        assert!((0..8).contains(&p));
        assert_eq!(p, partition_for(Some(b"{\"id\":1}"), 8));
    }

    fn table() -> Arc<TableSchema> {
        let columns = vec![
            Column { type_id: 23, ..key("id", ColumnType::Int32) },
            Column { type_id: 23, ..col("doc", ColumnType::Json) },
        ];
        Arc::new(testing::table("My Schema", "t", columns))
    }

    fn event(op: Op, before: Option<Vec<Value>>, after: Option<Vec<Value>>) -> ChangeEvent {
        ChangeEvent {
            op,
            table: table(),
            before: before.map(Row::new),
            after: after.map(Row::new),
            commit_position: sluice_core::EventPosition::Lsn(100),
            position: sluice_core::EventPosition::Lsn(90),
            tx_id: Some(7),
            commit_ts_us: 1_000_000,
            snapshot: false,
            mysql: None,
        }
    }

    #[test]
    fn topics_keys_tombstones_and_key_changes() {
        assert_eq!(topic_for("sluice.{schema}.{table}", &table()), "sluice.My_Schema.t");
        let mut enc = Encoder::new(KafkaFormat::Json, true, true);
        let mut out = Vec::new();
        enc.encode(&event(Op::Delete, Some(vec![Value::Int(1), Value::Unchanged]), None), "t", 5, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key.as_deref(), Some(&b"{\"id\":1}"[..]));
        assert!(out[0].value.as_ref().unwrap().starts_with(b"{\"op\":\"d\""));
        assert_eq!(out[1], Msg { key: Some(b"{\"id\":1}".to_vec()), value: None, unchanged: String::new() });
        out.clear();
        let doc = Value::Json("{\"a\":1}".into());
        enc.encode(
            &event(Op::Update, Some(vec![Value::Int(1), Value::Unchanged]), Some(vec![Value::Int(2), doc.clone()])),
            "t",
            5,
            &mut out,
        )
        .unwrap();
        let ops: Vec<String> = out
            .iter()
            .map(|m| match &m.value {
                Some(v) => serde_json::from_slice::<Json>(v).unwrap()["op"].as_str().unwrap().to_string(),
                None => "tombstone".into(),
            })
            .collect();
        assert_eq!(ops, ["d", "tombstone", "c"]);
        assert_eq!(out[2].key.as_deref(), Some(&b"{\"id\":2}"[..]));
        // Same key: one message.
        out.clear();
        enc.encode(&event(Op::Update, None, Some(vec![Value::Int(2), doc.clone()])), "t", 5, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let v: Json = serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["after"]["doc"], json!({"a": 1}));

        // `key: none`: no keys, so no tombstones, also for a key change.
        let mut unkeyed = Encoder::new(KafkaFormat::Json, false, true);
        out.clear();
        unkeyed
            .encode(
                &event(Op::Update, Some(vec![Value::Int(1), Value::Unchanged]), Some(vec![Value::Int(2), doc.clone()])),
                "t",
                5,
                &mut out,
            )
            .unwrap();
        unkeyed
            .encode(&event(Op::Delete, Some(vec![Value::Int(2), Value::Unchanged]), None), "t", 5, &mut out)
            .unwrap();
        assert_eq!(out.len(), 3, "a delete and a create, then a delete: {out:?}");
        assert!(out.iter().all(|m| m.key.is_none() && m.value.is_some()), "{out:?}");

        let mut enc = Encoder::new(KafkaFormat::JsonSchema, true, false);
        out.clear();
        enc.encode(&event(Op::Delete, Some(vec![Value::Int(1), Value::Unchanged]), None), "t", 5, &mut out).unwrap();
        assert_eq!(out.len(), 1, "no tombstone when disabled");
        out.clear();
        enc.encode(&event(Op::Create, None, Some(vec![Value::Int(3), doc])), "t", 5, &mut out).unwrap();
        let v: Json = serde_json::from_slice(out[0].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["payload"]["after"]["doc"], json!("{\"a\":1}"));
        assert_eq!(v["schema"]["name"], json!("t.Envelope"));
        assert_eq!(v["schema"]["fields"][1]["fields"][1]["name"], json!("io.debezium.data.Json"));
        let k: Json = serde_json::from_slice(out[0].key.as_ref().unwrap()).unwrap();
        assert_eq!(k["payload"], json!({"id": 3}));
        assert_eq!(k["schema"]["fields"][0]["type"], json!("int32"));
    }
}
