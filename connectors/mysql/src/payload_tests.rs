//! MySQL 8 formats the MariaDB test server cannot produce, built from the
//! documented byte layouts: a ZSTD-compressed `TRANSACTION_PAYLOAD_EVENT`
//! holding a `TABLE_MAP_EVENT` with full optional metadata, a
//! `WRITE_ROWS_EVENT` v2 with binary JSON, and an `XID_EVENT` — unpacked the
//! way `mysql_async`'s binlog stream does, then decoded by our code.

use std::io::Cursor;

use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::{TableMapEvent, TransactionPayloadEvent};
use mysql_common::binlog::EventStreamReader;
use sluice_core::{ColumnType, TableId, Value};

use crate::decoding;

fn lenenc(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Common header: timestamp, type, server id, size, next position, flags.
fn event(ty: u8, body: &[u8], log_pos: u32) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    e.push(ty);
    e.extend_from_slice(&7u32.to_le_bytes());
    e.extend_from_slice(&((19 + body.len()) as u32).to_le_bytes());
    e.extend_from_slice(&log_pos.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(body);
    e
}

fn tlv(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    lenenc(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn table_map() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&[9, 0, 0, 0, 0, 0]); // table id 9
    b.extend_from_slice(&[1, 0]); // flags
    b.push(4);
    b.extend_from_slice(b"shop\0");
    b.push(6);
    b.extend_from_slice(b"orders\0");
    lenenc(&mut b, 4);
    b.extend_from_slice(&[8, 15, 245, 246]); // BIGINT, VARCHAR, JSON, NEWDECIMAL
    let meta = [80u8, 0, 4, 10, 2]; // varchar max 80 bytes; json 4 length bytes; decimal(10,2)
    lenenc(&mut b, meta.len() as u64);
    b.extend_from_slice(&meta);
    b.push(0b1110); // nullable: all but the id
                    // Optional metadata (binlog_row_metadata=FULL).
    tlv(&mut b, 1, &[0b1000_0000]); // SIGNEDNESS: BIGINT unsigned, DECIMAL signed
    tlv(&mut b, 2, &[45]); // DEFAULT_CHARSET utf8mb4_general_ci, no exceptions
    let mut names = Vec::new();
    for n in ["id", "note", "doc", "amount"] {
        lenenc(&mut names, n.len() as u64);
        names.extend_from_slice(n.as_bytes());
    }
    tlv(&mut b, 4, &names);
    tlv(&mut b, 8, &[0]); // SIMPLE_PRIMARY_KEY: column 0
    b
}

fn write_rows() -> Vec<u8> {
    let mut b = vec![9, 0, 0, 0, 0, 0, 1, 0, 2, 0]; // table id, flags, extra data length 2 (none)
    lenenc(&mut b, 4);
    b.push(0b1111);
    // Row 1: everything set.
    b.push(0);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&[5, b'h', 0xc3, 0xa9, b'l', b'o']); // "hélo"
    let json = [0x02u8, 0x01, 0x00, 0x07, 0x00, 0x04, 0x02, 0x00]; // [false]
    b.extend_from_slice(&(json.len() as u32).to_le_bytes());
    b.extend_from_slice(&json);
    b.extend_from_slice(&[0x80, 0x00, 0x00, 0x0c, 0x22]); // 12.34
                                                          // Row 2: NULLs.
    b.push(0b1110);
    b.extend_from_slice(&1u64.to_le_bytes());
    b
}

#[test]
fn compressed_transaction_payload_with_v2_rows_and_binary_json() {
    let mut inner = Vec::new();
    inner.extend(event(19, &table_map(), 0));
    inner.extend(event(30, &write_rows(), 0));
    inner.extend(event(16, &42u64.to_le_bytes(), 0));
    let compressed = zstd::bulk::compress(&inner, 3).unwrap();
    let mut body = Vec::new();
    tlv(&mut body, 1, &{
        let mut v = Vec::new();
        lenenc(&mut v, compressed.len() as u64);
        v
    });
    tlv(&mut body, 2, &[0]); // ZSTD
    tlv(&mut body, 3, &{
        let mut v = Vec::new();
        lenenc(&mut v, inner.len() as u64);
        v
    });
    body.push(0); // end of header
    body.extend_from_slice(&compressed);
    let outer = event(40, &body, 4096);

    let mut esr = EventStreamReader::new(BinlogVersion::Version4);
    let ev = esr.read(&outer[..]).unwrap().unwrap();
    assert_eq!(ev.header().event_type_raw(), 40);
    let tpe: TransactionPayloadEvent<'_> = ev.read_event().unwrap();
    let mut cur = Cursor::new(tpe.danger_decompress());
    let mut plan = None;
    let mut rows = Vec::new();
    let mut xid = false;
    while let Some(e) = esr.read_decompressed(&mut cur).unwrap() {
        match e.header().event_type_raw() {
            19 => {
                let tme: TableMapEvent<'_> = e.read_event().unwrap();
                let cols = decoding::map_columns(&tme, false, &crate::charset::Collations::builtin()).unwrap();
                let p = decoding::plan("shop", TableId::new("shop", "orders"), cols, None, 0);
                let tys: Vec<_> = p.schema.columns.iter().map(|c| c.ty.clone()).collect();
                assert_eq!(
                    tys,
                    vec![
                        ColumnType::UInt64,
                        ColumnType::Text,
                        ColumnType::Json,
                        ColumnType::Numeric { precision: Some(10), scale: Some(2) }
                    ]
                );
                assert!(p.schema.columns[0].key && !p.schema.columns[1].key);
                plan = Some(p);
            }
            30 => {
                let p = plan.as_ref().expect("table map first");
                let (kind, v2) = decoding::rows_kind(30).unwrap();
                let h = decoding::parse_rows_header(e.data(), kind, v2, 10).unwrap();
                let mut at = h.rows_at;
                while at < e.data().len() {
                    rows.push(decoding::decode_row(p, e.data(), &mut at, h.present_after, 4).unwrap());
                }
            }
            16 => xid = true,
            other => panic!("unexpected inner event {other}"),
        }
    }
    assert!(xid, "the XID inside the payload was not read");
    assert_eq!(
        rows,
        vec![
            vec![
                Value::UInt(u64::MAX),
                Value::Text("hélo".into()),
                Value::Json("[false]".into()),
                Value::Numeric("12.34".into())
            ],
            vec![Value::UInt(1), Value::Null, Value::Null, Value::Null],
        ]
    );
}
