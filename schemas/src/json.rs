//! JSON encoding of values and change events (Debezium value payload).
//!
//! Values: integers → numbers; numeric → string with exact digits; floats →
//! numbers, NaN/±Infinity → `"NaN"`, `"Infinity"`, `"-Infinity"`; bytea →
//! base64; date → `YYYY-MM-DD`; time → `HH:MM:SS[.ffffff]`; timestamp → ISO
//! 8601 without zone; timestamptz → ISO 8601 UTC with `Z`; json → the JSON
//! value itself; arrays → JSON arrays; anything else → its text form.
//! Unchanged (TOAST) columns are left out of the image.

use base64::Engine;
use sluice_core::value::{format_date, format_time, format_timestamp};
use std::sync::Arc;

use sluice_core::{BinlogFile, ChangeEvent, EventGtid, MysqlOrigin, Row, TableSchema, Value};

/// Does any byte of `x` need escaping (`< 0x20`, `"` or `\\`)? Word at a time.
#[inline]
fn word_needs_escape(x: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let control = x.wrapping_sub(LO * 0x20) & !x & HI;
    (control | has_zero(x ^ (LO * b'"' as u64)) | has_zero(x ^ (LO * b'\\' as u64))) != 0
}

/// Append `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip clean 8-byte words quickly; most strings need no escaping.
        if i + 8 <= bytes.len() {
            let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            if !word_needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

/// Append one value as JSON. `Unchanged` must be handled by the caller.
pub fn write_value(out: &mut Vec<u8>, v: &Value, scratch: &mut String) {
    match v {
        Value::Null | Value::Unchanged => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write_int(out, *i),
        Value::UInt(u) => write_int(out, *u),
        Value::Float(f) => {
            if f.is_nan() {
                out.extend_from_slice(b"\"NaN\"");
            } else if f.is_infinite() {
                out.extend_from_slice(if *f > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" });
            } else {
                let mut b = ryu::Buffer::new();
                out.extend_from_slice(b.format_finite(*f).as_bytes());
            }
        }
        Value::Numeric(s) | Value::Text(s) | Value::Uuid(s) => write_str(out, s),
        Value::Bytes(b) => {
            scratch.clear();
            base64::engine::general_purpose::STANDARD.encode_string(b, scratch);
            write_str(out, scratch);
        }
        Value::Date(d) => {
            scratch.clear();
            format_date(*d, scratch);
            write_str(out, scratch);
        }
        Value::Time(t) => {
            scratch.clear();
            format_time(*t, scratch);
            write_str(out, scratch);
        }
        Value::Timestamp(t) => {
            scratch.clear();
            format_timestamp(*t, false, scratch);
            write_str(out, scratch);
        }
        Value::TimestampTz(t) => {
            scratch.clear();
            format_timestamp(*t, true, scratch);
            write_str(out, scratch);
        }
        Value::Json(j) => out.extend_from_slice(j.as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, it, scratch);
            }
            out.push(b']');
        }
    }
}

/// Append a row image as a JSON object; unchanged columns are left out.
pub fn write_row(out: &mut Vec<u8>, schema: &TableSchema, row: &Row, scratch: &mut String) {
    write_row_opts(out, schema, row, scratch, false);
}

/// [`write_row`], with JSON documents and arrays written as JSON strings
/// holding their text when `json_text` (Kafka Connect's `io.debezium.data.Json`).
pub fn write_row_opts(out: &mut Vec<u8>, schema: &TableSchema, row: &Row, scratch: &mut String, json_text: bool) {
    out.push(b'{');
    let mut first = true;
    for (col, v) in schema.columns.iter().zip(&row.values) {
        if matches!(v, Value::Unchanged) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, &col.name);
        out.push(b':');
        if json_text && matches!(v, Value::Json(_) | Value::Array(_)) {
            let mut inner = Vec::new();
            write_value(&mut inner, v, scratch);
            write_str(out, &String::from_utf8_lossy(&inner));
        } else {
            write_value(out, v, scratch);
        }
    }
    out.push(b'}');
}

/// Append one change event as a Debezium-style JSON object (no newline).
pub fn write_event(out: &mut Vec<u8>, ev: &ChangeEvent, now_ms: i64, scratch: &mut String) {
    write_event_opts(out, ev, now_ms, scratch, false);
}

/// [`write_event`], with JSON and array values as JSON strings when `json_text`.
pub fn write_event_opts(out: &mut Vec<u8>, ev: &ChangeEvent, now_ms: i64, scratch: &mut String, json_text: bool) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(ev.op.code().as_bytes());
    out.extend_from_slice(b"\",\"before\":");
    match &ev.before {
        Some(r) => write_row_opts(out, &ev.table, r, scratch, json_text),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"after\":");
    match &ev.after {
        Some(r) => write_row_opts(out, &ev.table, r, scratch, json_text),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(m) = &ev.mysql {
        // Everything of the source block up to the file name is the same for
        // every row of a rows event (and usually of a transaction): encoded
        // once, copied for each row.
        MYSQL_SOURCE.with(|cache| {
            let mut c = cache.borrow_mut();
            let hit = c.key.as_ref().is_some_and(|(t, file, gtid, server)| {
                Arc::ptr_eq(t, &ev.table) && *file == m.file && *gtid == m.gtid && *server == m.server_id
            });
            if !hit {
                let MysqlSourceCache { key, bytes } = &mut *c;
                bytes.clear();
                write_mysql_source_head(bytes, ev, m, scratch);
                *key = Some((ev.table.clone(), m.file, m.gtid, m.server_id));
            }
            out.extend_from_slice(&c.bytes);
        });
        out.extend_from_slice(b",\"pos\":");
        write_int(out, m.pos);
        out.extend_from_slice(b",\"row\":");
        write_int(out, m.row);
        out.extend_from_slice(b",\"ts_ms\":");
        write_int(out, ev.commit_ts_us.div_euclid(1000));
        out.extend_from_slice(b",\"snapshot\":");
        out.extend_from_slice(if ev.snapshot { b"\"true\"" } else { b"\"false\"" });
        out.extend_from_slice(b"},\"ts_ms\":");
        write_int(out, now_ms);
        out.push(b'}');
        return;
    }
    write_source_start(out, b"postgresql");
    write_str(out, &ev.table.database);
    out.extend_from_slice(b",\"schema\":");
    write_str(out, &ev.table.id.schema);
    out.extend_from_slice(b",\"table\":");
    write_str(out, &ev.table.id.name);
    out.extend_from_slice(b",\"lsn\":");
    write_int(out, ev.position.lsn());
    out.extend_from_slice(b",\"txId\":");
    match ev.tx_id {
        Some(x) => write_int(out, x),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts_ms\":");
    write_int(out, ev.commit_ts_us.div_euclid(1000));
    out.extend_from_slice(b",\"snapshot\":");
    out.extend_from_slice(if ev.snapshot { b"\"true\"" } else { b"\"false\"" });
    out.extend_from_slice(b",\"sequence\":\"[\\\"");
    write_int(out, ev.commit_position.lsn());
    out.extend_from_slice(b"\\\",\\\"");
    write_int(out, ev.position.lsn());
    out.extend_from_slice(b"\\\"]\"},\"ts_ms\":");
    write_int(out, now_ms);
    out.push(b'}');
}

/// The encoded head of a MySQL event's source block, per table, binlog
/// file, GTID and server (see [`write_mysql_source_head`]).
#[derive(Default)]
struct MysqlSourceCache {
    key: Option<(Arc<TableSchema>, BinlogFile, EventGtid, u32)>,
    bytes: Vec<u8>,
}

thread_local! {
    static MYSQL_SOURCE: std::cell::RefCell<MysqlSourceCache> = std::cell::RefCell::default();
}

/// `,"source":{"version":"…","connector":"<connector>","db":` — the start of
/// every event's source block.
fn write_source_start(out: &mut Vec<u8>, connector: &[u8]) {
    out.extend_from_slice(b",\"source\":{\"version\":\"");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\",\"connector\":\"");
    out.extend_from_slice(connector);
    out.extend_from_slice(b"\",\"db\":");
}

/// `,"source":{"version":…,"connector":"mysql","db":…,"table":…,"server_id":…,"gtid":…,"file":"…"`
fn write_mysql_source_head(out: &mut Vec<u8>, ev: &ChangeEvent, m: &MysqlOrigin, scratch: &mut String) {
    write_source_start(out, b"mysql");
    write_str(out, &ev.table.id.schema);
    out.extend_from_slice(b",\"table\":");
    write_str(out, &ev.table.id.name);
    out.extend_from_slice(b",\"server_id\":");
    write_int(out, m.server_id);
    out.extend_from_slice(b",\"gtid\":");
    match m.gtid {
        EventGtid::None => out.extend_from_slice(b"null"),
        EventGtid::MariaDb { domain, server, seq } => {
            out.push(b'"');
            write_int(out, domain);
            out.push(b'-');
            write_int(out, server);
            out.push(b'-');
            write_int(out, seq);
            out.push(b'"');
        }
        g => {
            use std::fmt::Write;
            scratch.clear();
            let _ = write!(scratch, "{g}");
            write_str(out, scratch);
        }
    }
    out.extend_from_slice(b",\"file\":");
    write_str(out, m.file.base);
    out.pop();
    out.push(b'.');
    let mut b = itoa::Buffer::new();
    let digits = b.format(m.file.seq);
    for _ in digits.len()..m.file.width as usize {
        out.push(b'0');
    }
    out.extend_from_slice(digits.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{self, col};
    use sluice_core::ColumnType;

    #[test]
    fn strings_escape_like_serde() {
        for s in [
            "",
            "plain ascii text that is long enough for words",
            "quote \" and backslash \\ inside a long string",
            "ctl \u{1}\u{1f}\n\r\t end",
            "ünïcödé 😀 and \u{7f} del",
            "12345678\"",
            "\\2345678",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn event_json_parses_back() {
        let columns = vec![
            col("a", ColumnType::Int64),
            col("b\n", ColumnType::Text),
            col("c", ColumnType::Float64),
            col("d", ColumnType::Bytes),
            col("e", ColumnType::Json),
            col("f", ColumnType::Text),
        ];
        let schema = std::sync::Arc::new(TableSchema { version: 0, ..testing::table("s", "t\"q", columns) });
        let ev = ChangeEvent {
            op: sluice_core::Op::Update,
            table: schema,
            before: None,
            after: Some(Row::new(vec![
                Value::Int(-5),
                Value::Text("x\"\\\u{1}é".into()),
                Value::Float(f64::NAN),
                Value::Bytes(vec![1, 2, 3]),
                Value::Json("{\"k\": [1, 2]}".into()),
                Value::Unchanged,
            ])),
            commit_position: sluice_core::EventPosition::Lsn(100),
            position: sluice_core::EventPosition::Lsn(90),
            tx_id: Some(7),
            commit_ts_us: 1_500_000,
            snapshot: false,
            mysql: None,
        };
        let mut out = Vec::new();
        write_event(&mut out, &ev, 42, &mut String::new());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["op"], "u");
        assert_eq!(v["after"]["a"], -5);
        assert_eq!(v["after"]["b\n"], "x\"\\\u{1}é");
        assert_eq!(v["after"]["c"], "NaN");
        assert_eq!(v["after"]["d"], "AQID");
        assert_eq!(v["after"]["e"]["k"][1], 2);
        assert!(v["after"].get("f").is_none());
        assert_eq!(v["source"]["table"], "t\"q");
        assert_eq!(v["source"]["lsn"], 90);
        assert_eq!(v["source"]["ts_ms"], 1500);
        assert_eq!(v["source"]["snapshot"], "false");
        assert_eq!(v["source"]["sequence"], "[\"100\",\"90\"]");
    }

    /// The MySQL source block's head is cached: rows of one event share it,
    /// and a change of table, file, GTID or server id is never written with
    /// a stale one.
    #[test]
    fn mysql_source_blocks_follow_every_change() {
        let table = |name: &str| {
            Arc::new(TableSchema {
                database: String::new(),
                version: 0,
                ..testing::table("shop", name, vec![col("id", ColumnType::Int64)])
            })
        };
        let (a, b) = (table("a"), table("b\"x"));
        let ev = |t: &Arc<TableSchema>, file: &str, gtid: EventGtid, server_id: u32, pos: u64, row: u32| ChangeEvent {
            op: sluice_core::Op::Create,
            table: t.clone(),
            before: None,
            after: Some(Row::new(vec![Value::Int(row as i64)])),
            commit_position: sluice_core::EventPosition::Lsn(1),
            position: sluice_core::EventPosition::Lsn(1),
            tx_id: None,
            commit_ts_us: 2_000_000,
            snapshot: false,
            mysql: Some(MysqlOrigin { file: BinlogFile::parse(file), gtid, pos, server_id, row }),
        };
        let g1 = EventGtid::MariaDb { domain: 0, server: 1, seq: 7 };
        let g2 = EventGtid::MariaDb { domain: 0, server: 1, seq: 8 };
        let cases = [
            (ev(&a, "binlog.000001", g1, 1, 100, 0), "shop", "a", "binlog.000001", "0-1-7", 1, 100, 0),
            (ev(&a, "binlog.000001", g1, 1, 100, 1), "shop", "a", "binlog.000001", "0-1-7", 1, 100, 1),
            (ev(&b, "binlog.000001", g1, 1, 200, 0), "shop", "b\"x", "binlog.000001", "0-1-7", 1, 200, 0),
            (ev(&b, "binlog.000001", g2, 1, 300, 0), "shop", "b\"x", "binlog.000001", "0-1-8", 1, 300, 0),
            (ev(&b, "binlog.000002", g2, 1, 4, 0), "shop", "b\"x", "binlog.000002", "0-1-8", 1, 4, 0),
            (ev(&b, "binlog.000002", g2, 9, 4, 1), "shop", "b\"x", "binlog.000002", "0-1-8", 9, 4, 1),
            (ev(&a, "binlog.000002", EventGtid::None, 9, 5, 0), "shop", "a", "binlog.000002", "", 9, 5, 0),
        ];
        for (e, db, t, file, gtid, server, pos, row) in cases {
            let mut out = Vec::new();
            write_event(&mut out, &e, 42, &mut String::new());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let s = &v["source"];
            assert_eq!(s["connector"], "mysql");
            assert_eq!((s["db"].as_str(), s["table"].as_str(), s["file"].as_str()), (Some(db), Some(t), Some(file)));
            assert_eq!(s["gtid"].as_str().unwrap_or(""), gtid);
            assert_eq!(
                (s["server_id"].as_u64(), s["pos"].as_u64(), s["row"].as_u64()),
                (Some(server), Some(pos), Some(row as u64))
            );
            assert_eq!(
                (s["ts_ms"].as_i64(), v["ts_ms"].as_i64(), v["after"]["id"].as_i64()),
                (Some(2000), Some(42), Some(row as i64))
            );
        }
    }
}
