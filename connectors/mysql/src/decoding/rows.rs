//! Rows-event framing: the header of a `WRITE`/`UPDATE`/`DELETE_ROWS`
//! event (v1 or v2, MySQL or MariaDB) with its columns-present bitmaps
//! ([`rows_kind`], [`parse_rows_header`], [`count_present`]), then row
//! images, each a null bitmap over the present columns followed by their
//! values, decoded with a [`TablePlan`] ([`decode_row`]). An UPDATE row is a
//! before image then an after image (the stream pairs them in
//! `stream::decode_change`).
//!
//! Invariants:
//! - Columns absent from the present bitmap (MINIMAL row images) decode to
//!   [`Value::Unchanged`]; the null bitmap covers the present columns only.
//! - A decoded image moves the offset exactly past itself, so images decode
//!   back to back; a truncated image is an error, never a panic.
//! - A value's error names the table and column.

use super::values::decode_value;
use super::{err, DecodeError, Reader, TablePlan};
use sluice_core::Value;

/// Decode one row image. `present` is the columns-present bitmap of the
/// event; absent columns are [`Value::Unchanged`]. Returns the values.
pub fn decode_row(
    plan: &TablePlan,
    data: &[u8],
    at: &mut usize,
    present: &[u8],
    present_count: usize,
) -> Result<Vec<Value>, DecodeError> {
    let ncols = plan.kinds.len();
    let null_len = present_count.div_ceil(8);
    let mut r = Reader { b: data, at: *at };
    let nulls = r.take(null_len)?;
    let mut values = Vec::with_capacity(ncols);
    let mut pi = 0usize;
    for (i, kind) in plan.kinds.iter().enumerate() {
        if !matches!(present.get(i / 8), Some(b) if b & (1 << (i % 8)) != 0) {
            values.push(Value::Unchanged);
            continue;
        }
        let is_null = nulls[pi / 8] & (1 << (pi % 8)) != 0;
        pi += 1;
        if is_null {
            values.push(Value::Null);
            continue;
        }
        let ty = &plan.schema.columns[i].ty;
        let v = decode_value(&mut r, kind, ty).map_err(|e| DecodeError {
            message: format!("{}, column {}: {}", plan.schema.id, plan.schema.columns[i].name, e.message),
            ..e
        })?;
        values.push(v);
    }
    *at = r.at;
    Ok(values)
}

/// Parsed header of a rows event (v1 or v2, MySQL or MariaDB).
pub struct RowsHeader<'a> {
    pub table_id: u64,
    pub ncols: usize,
    pub present_before: &'a [u8],
    pub present_after: &'a [u8],
    /// Offset of the first row in the event data.
    pub rows_at: usize,
}

/// Event types of rows events: (v1: 23..=25, v2: 30..=32).
pub fn rows_kind(event_type: u8) -> Option<(u8, bool)> {
    match event_type {
        23 | 30 => Some((b'c', event_type == 30)),
        24 | 31 => Some((b'u', event_type == 31)),
        25 | 32 => Some((b'd', event_type == 32)),
        _ => None,
    }
}

fn lenenc(r: &mut Reader<'_>) -> Result<u64, DecodeError> {
    let first = r.le(1)?;
    Ok(match first {
        0..=250 => first,
        252 => r.le(2)?,
        253 => r.le(3)?,
        254 => r.le(8)?,
        _ => return err("bad length-encoded integer"),
    })
}

/// Parse a rows event's header. `post_header_len` comes from the format
/// description event (6 → 4-byte table ids, otherwise 6-byte).
pub fn parse_rows_header(data: &[u8], kind: u8, v2: bool, post_header_len: u8) -> Result<RowsHeader<'_>, DecodeError> {
    let mut r = Reader { b: data, at: 0 };
    let table_id = if post_header_len == 6 { r.le(4)? } else { r.le(6)? };
    let _flags = r.le(2)?;
    if v2 {
        let extra = r.le(2)? as usize;
        if extra < 2 {
            return err("rows event: bad extra data length");
        }
        r.take(extra - 2)?;
    }
    let ncols = lenenc(&mut r)? as usize;
    let bl = ncols.div_ceil(8);
    let present_before = r.take(bl)?;
    let present_after = if kind == b'u' { r.take(bl)? } else { present_before };
    Ok(RowsHeader { table_id, ncols, present_before, present_after, rows_at: r.at })
}

/// Number of set bits among the first `n` of `bitmap`.
pub fn count_present(bitmap: &[u8], n: usize) -> usize {
    (0..n).filter(|i| bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::charset::Charset;
    use crate::decoding::Kind;
    use sluice_core::testing::{col, table};
    use sluice_core::{Column, ColumnType, TableSchema};

    fn plan_of(kinds: Vec<Kind>) -> TablePlan {
        // c0 is the key (and stays nullable).
        let columns = kinds
            .iter()
            .enumerate()
            .map(|(i, _)| Column { key: i == 0, ..col(&format!("c{i}"), ColumnType::Other) })
            .collect();
        TablePlan {
            schema: Arc::new(TableSchema { database: "d".into(), version: 0, ..table("d", "t", columns) }),
            kinds,
        }
    }

    /// MySQL 8 `UPDATE_ROWS_EVENT` v2 (type 31) with extra row info, built
    /// from the documented layout: post-header (table id, flags, extra-data
    /// length + extra data), column count, two column bitmaps, then
    /// before/after images (null bitmap + values).
    #[test]
    fn update_rows_v2_event() {
        let plan = plan_of(vec![
            Kind::Int { bytes: 4, unsigned: false },
            Kind::Str { len_bytes: 1, cs: Charset::Utf8, pad: 0 },
            Kind::Int { bytes: 8, unsigned: true },
        ]);
        let mut ev: Vec<u8> = Vec::new();
        ev.extend_from_slice(&[0x2a, 0, 0, 0, 0, 0]); // table id 42
        ev.extend_from_slice(&[0x01, 0x00]); // flags: end of statement
        ev.extend_from_slice(&[5, 0, 0x00, 0x01, 0x07]); // extra data: length 5 (incl. itself), 3 bytes
        ev.push(3); // column count
        ev.push(0b111); // before image: all columns
        ev.push(0b011); // after image: c0, c1 (c2 not logged: MINIMAL-style image)
                        // before: nulls 0b100 (c2 null), c0 = -7, c1 = "ab"
        ev.push(0b100);
        ev.extend_from_slice(&(-7i32).to_le_bytes());
        ev.extend_from_slice(&[2, b'a', b'b']);
        // after: nulls 0, c0 = 8, c1 = "€"
        ev.push(0);
        ev.extend_from_slice(&8i32.to_le_bytes());
        ev.extend_from_slice(&[3, 0xe2, 0x82, 0xac]);
        let (kind, v2) = rows_kind(31).unwrap();
        assert!(v2 && kind == b'u');
        let h = parse_rows_header(&ev, kind, v2, 10).unwrap();
        assert_eq!((h.table_id, h.ncols), (42, 3));
        let nb = count_present(h.present_before, h.ncols);
        let na = count_present(h.present_after, h.ncols);
        let mut at = h.rows_at;
        let before = decode_row(&plan, &ev, &mut at, h.present_before, nb).unwrap();
        let after = decode_row(&plan, &ev, &mut at, h.present_after, na).unwrap();
        assert_eq!(at, ev.len());
        assert_eq!(before, vec![Value::Int(-7), Value::Text("ab".into()), Value::Null]);
        assert_eq!(after, vec![Value::Int(8), Value::Text("€".into()), Value::Unchanged]);
        // Truncated images are errors, not panics.
        let mut at = h.rows_at;
        assert!(decode_row(&plan, &ev[..ev.len() - 2], &mut at, h.present_before, nb).is_ok());
        assert!(decode_row(&plan, &ev[..ev.len() - 2], &mut at, h.present_after, na).is_err());
    }

    /// MySQL binary JSON inside a `WRITE_ROWS_EVENT` v2 (type 30) row.
    #[test]
    fn write_rows_v2_with_binary_json() {
        let plan = plan_of(vec![Kind::Int { bytes: 2, unsigned: true }, Kind::Json { len_bytes: 4 }]);
        let json = [0x00u8, 0x01, 0x00, 0x0c, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, b'a'];
        let mut ev: Vec<u8> = vec![7, 0, 0, 0, 0, 0, 0x01, 0x00, 2, 0, 2, 0b11];
        ev.push(0);
        ev.extend_from_slice(&65535u16.to_le_bytes());
        ev.extend_from_slice(&(json.len() as u32).to_le_bytes());
        ev.extend_from_slice(&json);
        let h = parse_rows_header(&ev, b'c', true, 10).unwrap();
        let mut at = h.rows_at;
        let row = decode_row(&plan, &ev, &mut at, h.present_after, 2).unwrap();
        assert_eq!(row, vec![Value::Int(65535), Value::Json(r#"{"a":1}"#.into())]);
    }
}
