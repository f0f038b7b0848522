//! Statement parameters: each batch column travels as one array parameter,
//! in binary where the column has a binary encoding (encoded as the change is
//! queued, so a value the column cannot take is found on its own table's
//! change), else as text cast by the statement.

use sluice_core::Value;
use sluice_schemas::target::{pg_text, Conv};
use tokio_postgres::types::{Kind as PgTypeKind, ToSql, Type};

use crate::copy;

/// One statement parameter: an array's elements in binary form (encoded as
/// they are queued, so a value the column cannot take is found on its own
/// table's change), or text values cast by the statement.
#[derive(Debug)]
pub(crate) enum Param {
    Text(Vec<Option<String>>, Conv),
    Bin { enc: copy::Enc, elems: Vec<u8>, n: usize, nulls: bool },
}

impl Param {
    pub(crate) fn new(enc: Option<copy::Enc>, conv: Conv) -> Param {
        match enc {
            Some(enc) => Param::Bin { enc, elems: Vec::new(), n: 0, nulls: false },
            None => Param::Text(Vec::new(), conv),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Param::Text(v, _) => v.len(),
            Param::Bin { elems, .. } => elems.len(),
        }
    }

    pub(crate) fn push(&mut self, v: &Value) -> Result<(), String> {
        match self {
            Param::Text(vals, conv) => vals.push(pg_text(v, *conv)),
            Param::Bin { enc, elems, n, nulls } => {
                copy::field(v, *enc, elems)?;
                *n += 1;
                *nulls |= matches!(v, Value::Null | Value::Unchanged);
            }
        }
        Ok(())
    }

    /// Take back everything after `len` (a row that could not be encoded whole).
    pub(crate) fn truncate(&mut self, len: usize, rows: usize) {
        match self {
            Param::Text(v, _) => v.truncate(len),
            Param::Bin { elems, n, .. } => {
                elems.truncate(len);
                *n = rows;
            }
        }
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Text(v, _) => v.to_sql(ty, out),
            Param::Bin { elems, n, nulls, .. } => {
                let PgTypeKind::Array(member) = ty.kind() else {
                    return Err(format!("{ty} is not an array type").into());
                };
                let mut header = Vec::with_capacity(20);
                copy::array_header(*n, *nulls, member.oid(), &mut header);
                out.extend_from_slice(&header);
                out.extend_from_slice(elems);
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), PgTypeKind::Array(_))
    }

    tokio_postgres::types::to_sql_checked!();
}
