//! Row-image decoding: binlog bytes straight into [`Value`]s.
//!
//! A `TABLE_MAP` event describes the column types and metadata of the rows
//! events that follow it; [`TablePlan`] turns one into a per-column decoding
//! plan plus the [`TableSchema`] the events carry. Rows are then decoded from
//! the rows event's bytes without intermediate values.
//!
//! Invariants:
//! - A plan describes exactly the rows written with its table map, so DDL
//!   (ADD/DROP/MODIFY COLUMN) between events never misaligns decoding: the
//!   table map of each transaction is authoritative. Names, signedness,
//!   ENUM/SET labels, character sets and the primary key come from the table
//!   map's optional metadata (`binlog_row_metadata=FULL`).
//! - Values decode to the same [`Value`] as the snapshot reads for the same
//!   stored data (see `snapshot`): FLOAT through its shortest `f32` text,
//!   TIMESTAMP as UTC microseconds, DECIMAL as its exact text with the
//!   column's scale, zero dates as NULL, BIT(n) as a string of n `0`/`1`.
//! - Malformed bytes are an error naming the table and column, never a panic.
//!
//! Layout:
//! - `plan`: a `TABLE_MAP` event (and the catalog's schema of the table)
//!   into a [`TablePlan`].
//! - `values`: one binlog value of each MySQL type into a [`Value`]; the
//!   snapshot reads through the same helpers ([`widen_f32`], [`bit_string`],
//!   [`strip_srid`], [`refine`]).
//! - `rows`: rows-event framing: header, column bitmaps, row images.
//!
//! This module holds what they share: [`Kind`], [`TablePlan`],
//! [`DecodeError`] and the byte reader. Every item the rest of the crate
//! uses is re-exported here, so callers name it `decoding::X`.
//!
//! [`Value`]: sluice_core::Value

use std::sync::Arc;

use crate::charset::Charset;
use sluice_core::TableSchema;

mod plan;
mod rows;
mod values;

pub use self::plan::{map_columns, plan};
pub use self::rows::{count_present, decode_row, parse_rows_header, rows_kind, RowsHeader};
pub use self::values::{bit_string, refine, strip_srid, uuid_text, widen_f32};

/// How one column's bytes are laid out.
#[derive(Debug, Clone)]
pub enum Kind {
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Year,
    Date,
    /// Old (pre-5.6.4) TIME / DATETIME / TIMESTAMP formats.
    TimeOld,
    DateTimeOld,
    TimestampOld,
    Time2 {
        fsp: u8,
    },
    DateTime2 {
        fsp: u8,
    },
    Timestamp2 {
        fsp: u8,
    },
    Bit {
        bits: u16,
    },
    Enum {
        pack: u8,
        labels: Arc<Vec<String>>,
    },
    Set {
        pack: u8,
        labels: Arc<Vec<String>>,
    },
    /// CHAR / VARCHAR: length prefix of `len_bytes` (1 or 2). BINARY(n) is
    /// logged without its trailing zero bytes: `pad` restores them.
    Str {
        len_bytes: u8,
        cs: Charset,
        pad: u16,
    },
    /// BLOB / TEXT family: length prefix of `len_bytes` (1..=4).
    Blob {
        len_bytes: u8,
        cs: Charset,
    },
    /// MySQL binary JSON.
    Json {
        len_bytes: u8,
    },
    Geometry {
        len_bytes: u8,
    },
}

/// Decoding plan for one table map.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<Kind>,
}

/// A row or table map that cannot be decoded. `per_table`: the event is
/// well formed but a value of this table cannot be represented (bytes not
/// valid in the column's character set, a character set Sluice does not
/// know): the table is stopped, the others go on. Otherwise the event itself
/// is malformed and the stream cannot go on.
#[derive(Debug)]
pub struct DecodeError {
    pub message: String,
    pub per_table: bool,
}

impl DecodeError {
    fn new(message: impl Into<String>) -> DecodeError {
        DecodeError { message: message.into(), per_table: false }
    }
    fn table(message: impl Into<String>) -> DecodeError {
        DecodeError { message: message.into(), per_table: true }
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::new(msg))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.at + n > self.b.len() {
            return err(format!("row image truncated (need {n} bytes at offset {})", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    #[inline]
    fn le(&mut self, n: usize) -> Result<u64, DecodeError> {
        if n > 8 {
            return err(format!("bad length width {n} in table map metadata"));
        }
        let s = self.take(n)?;
        let mut v = 0u64;
        for (i, b) in s.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        Ok(v)
    }
    #[inline]
    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        if n > 8 {
            return err(format!("bad value width {n}"));
        }
        let s = self.take(n)?;
        let mut v = 0u64;
        for b in s {
            v = (v << 8) | *b as u64;
        }
        Ok(v)
    }
}
