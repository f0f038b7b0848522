//! Current rows by key, read over an ordinary SQL session: the runtime's
//! [`RowReader`] for completing new rows whose unchanged TOASTed values the
//! stream did not carry (see `sluice_core::whole_rows`).
//!
//! Invariants:
//! - Values come back in the same text form the walsender sends (the same
//!   session settings, each type's output function through the simple query
//!   protocol) and are parsed by the same function as stream values, so a
//!   value read here equals the one the stream would have carried.
//! - Keys are matched by the primary key / replica identity columns with
//!   `IN`, so Postgres uses the key's index; key values are sent as escaped
//!   string literals (`E'...'`, independent of `standard_conforming_strings`)
//!   whose type Postgres resolves from the column.
//! - The read runs in a snapshot that sees the events' own transactions: the
//!   walsender may send a commit before the committing backend has made it
//!   visible to other sessions; such a snapshot is dropped and taken again.
//! - A table or column that no longer exists (the whole read: a column
//!   dropped since leaves the other columns of that read unsent too), or a key that cannot be
//!   written back as text, reads as "no row" (the stream carries the DDL or
//!   the delete that explains it); connection losses are transient; anything
//!   else (a missing privilege) is fatal with the statement's error.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sluice_core::schema::quote_ident;
use sluice_core::whole_rows::{BoxFuture, RowReader};
use sluice_core::{ErrorKind, SourceError, TableId, TableSchema, Value};
use tokio::sync::Mutex;
use tokio_postgres::{Client, SimpleQueryMessage};

use sluice_client_postgres::{connect_sql, sql_error, ConnInfo};

pub struct PgRowReader {
    info: ConnInfo,
    client: Mutex<Option<Client>>,
    /// Tables already warned about (one warning per table and run).
    warned: std::sync::Mutex<HashSet<TableId>>,
}

impl PgRowReader {
    pub fn new(info: ConnInfo) -> Self {
        PgRowReader { info, client: Mutex::new(None), warned: Default::default() }
    }

    async fn read_rows(
        &self,
        table: &TableSchema,
        columns: &[usize],
        keys: &[Vec<Value>],
        txs: &[u64],
    ) -> Result<Vec<Option<Vec<Value>>>, SourceError> {
        let none = || vec![None; keys.len()];
        let key_cols: Vec<usize> = table.key_columns().map(|(i, _)| i).collect();
        let Some(sql) = select_sql(table, &key_cols, columns, keys) else {
            self.warn(table, "a key value has no text form");
            return Ok(none());
        };
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect_sql(&self.info).await?);
        }
        let client = guard.as_ref().expect("connected above");
        let result = read_visible(client, &sql, txs).await;
        if result.is_err() {
            let _ = client.simple_query("ROLLBACK").await;
        }
        let msgs = match result {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.warn(
                    table,
                    &format!(
                        "the server streamed transactions {txs:?} but other sessions did not see them within \
                         {VISIBLE_WITHIN:?} (is this slot a synchronous standby?)"
                    ),
                );
                return Ok(none());
            }
            Err(e) => {
                if let Some(db) = e.as_db_error() {
                    // Gone or changed since the event: its DDL is in the stream.
                    if matches!(db.code().code(), "42P01" | "42703" | "42883" | "42804" | "22P02" | "3F000") {
                        self.warn(table, db.message());
                        return Ok(none());
                    }
                }
                if e.is_closed() {
                    *guard = None;
                }
                let denied = e.as_db_error().is_some_and(|d| d.code().code() == "42501");
                let err = sql_error(&format!("reading current rows of {} to complete key changes", table.id), e);
                return Err(match err.kind {
                    ErrorKind::Transient => err.into(),
                    _ if denied => SourceError::fatal(format!(
                        "{}; the source user needs SELECT on the table (rows whose unchanged TOASTed values the \
                         stream did not send are read from it)",
                        err.message
                    )),
                    _ => SourceError::fatal(err.message),
                });
            }
        };
        let mut out = none();
        for m in msgs {
            let SimpleQueryMessage::Row(r) = m else { continue };
            let mut key = Vec::with_capacity(key_cols.len());
            for (j, &c) in key_cols.iter().enumerate() {
                key.push(parse(table, c, r.get(j))?);
            }
            let Some(k) = keys.iter().position(|k| *k == key) else { continue };
            let mut values = Vec::with_capacity(columns.len());
            for (j, &c) in columns.iter().enumerate() {
                values.push(parse(table, c, r.get(key_cols.len() + j))?);
            }
            out[k] = Some(values);
        }
        Ok(out)
    }

    fn warn(&self, table: &TableSchema, why: &str) {
        if self.warned.lock().map(|mut w| w.insert(table.id.clone())).unwrap_or(false) {
            tracing::warn!(
                table = %table.id,
                "cannot read current rows to complete key changes ({why}); such rows keep their unchanged TOASTed \
                 values unsent until the change that explains it (logged once per table)"
            );
        }
    }
}

impl RowReader for PgRowReader {
    fn read<'a>(
        &'a self,
        table: &'a TableSchema,
        columns: &'a [usize],
        keys: &'a [Vec<Value>],
        txs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<Value>>>, SourceError>> {
        Box::pin(self.read_rows(table, columns, keys, txs))
    }
}

/// How long a streamed commit may take to become visible to other sessions.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// Run `sql` in a snapshot that sees the transactions `txs` (32-bit xids).
/// The walsender can send a commit as soon as its WAL is flushed, before the
/// committing backend has left the proc array (at once, or only after the
/// synchronous standbys confirmed it): a snapshot taken then would still see
/// the old rows. Such a snapshot is dropped and taken again; `None` when the
/// transactions stay invisible (reading older rows would be wrong).
async fn read_visible(
    client: &Client,
    sql: &str,
    txs: &[u64],
) -> Result<Option<Vec<SimpleQueryMessage>>, tokio_postgres::Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let snap = client
            .simple_query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                 SELECT txid_snapshot_xmin(s)::text, txid_snapshot_xmax(s)::text, \
                 array(SELECT txid_snapshot_xip(s))::text FROM txid_current_snapshot() s",
            )
            .await?;
        let visible = snap.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(Snapshot::parse(r.get(0), r.get(1), r.get(2))),
            _ => None,
        });
        let visible = visible.flatten().is_none_or(|s| txs.iter().all(|&x| s.sees(x)));
        if visible {
            // One round trip: an error skips the COMMIT (the caller rolls back).
            return Ok(Some(client.simple_query(&format!("{sql}; COMMIT")).await?));
        }
        client.simple_query("ROLLBACK").await?;
        if started.elapsed() > VISIBLE_WITHIN {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A snapshot's bounds (64-bit transaction ids with epoch).
struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    fn parse(xmin: Option<&str>, xmax: Option<&str>, xip: Option<&str>) -> Option<Snapshot> {
        let xip = xip?.trim_matches(|c| c == '{' || c == '}');
        Some(Snapshot {
            xmin: xmin?.parse().ok()?,
            xmax: xmax?.parse().ok()?,
            xip: xip.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect::<Option<_>>()?,
        })
    }

    /// Does the snapshot see the (committed) transaction with 32-bit id `xid`?
    fn sees(&self, xid: u64) -> bool {
        // How far before xmax the id is, modulo 2^32 (as Postgres compares
        // 32-bit ids): 0 or more than 2^31 means at or after xmax.
        let behind = (self.xmax as u32).wrapping_sub(xid as u32) as u64;
        if behind == 0 || behind > 1 << 31 || behind > self.xmax {
            return false;
        }
        let full = self.xmax - behind;
        full < self.xmin || !self.xip.contains(&full)
    }
}

fn parse(table: &TableSchema, col: usize, text: Option<&str>) -> Result<Value, SourceError> {
    let c = &table.columns[col];
    match text {
        None => Ok(Value::Null),
        Some(s) => sluice_schemas::postgres::parse_text(&c.ty, s).map_err(|e| {
            SourceError::fatal(format!("reading current rows of {}: cannot decode column {}: {e}", table.id, c.name))
        }),
    }
}

/// `SELECT key..., columns... FROM t WHERE (key) IN ((...), ...)`, or `None`
/// when a key value has no text form.
fn select_sql(table: &TableSchema, key_cols: &[usize], columns: &[usize], keys: &[Vec<Value>]) -> Option<String> {
    let name = |i: &usize| quote_ident(&table.columns[*i].name);
    let select: Vec<String> = key_cols.iter().chain(columns).map(name).collect();
    let mut sql = format!("SELECT {} FROM {} WHERE ", select.join(", "), table.id.quoted());
    let key_list: Vec<String> = key_cols.iter().map(name).collect();
    if key_cols.len() == 1 {
        sql.push_str(&key_list[0]);
    } else {
        let _ = write!(sql, "({})", key_list.join(", "));
    }
    sql.push_str(" IN (");
    for (n, key) in keys.iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        if key_cols.len() > 1 {
            sql.push('(');
        }
        for (j, v) in key.iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            let text = sluice_schemas::target::pg_text(v, sluice_schemas::target::Conv::AsIs)?;
            push_literal(&mut sql, &text);
        }
        if key_cols.len() > 1 {
            sql.push(')');
        }
    }
    sql.push(')');
    Some(sql)
}

/// An escape-string literal: `E'...'` with `\` and `'` doubled.
fn push_literal(sql: &mut String, text: &str) {
    sql.push_str("E'");
    for ch in text.chars() {
        match ch {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("''"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing::{col, key, table};
    use sluice_core::ColumnType;

    #[test]
    fn snapshot_visibility_across_epochs() {
        let s = Snapshot::parse(Some("1000"), Some("1010"), Some("{1003,1007}")).unwrap();
        assert!(s.sees(999) && s.sees(1004) && !s.sees(1003) && !s.sees(1007) && !s.sees(1010) && !s.sees(1200));
        let e = 5u64 << 32;
        let s = Snapshot::parse(Some(&(e + 10).to_string()), Some(&(e + 20).to_string()), Some("{}")).unwrap();
        assert!(s.sees(5) && s.sees(15) && !s.sees(25));
        // Just after a wraparound: xmax in the new epoch, xid of the old one.
        let s = Snapshot::parse(Some(&(e - 5).to_string()), Some(&(e + 3).to_string()), Some("{}")).unwrap();
        assert!(s.sees(0xffff_fff0) && s.sees(0xffff_fffd) && s.sees(1) && !s.sees(3) && !s.sees(4));
        let s =
            Snapshot::parse(Some(&(e - 5).to_string()), Some(&(e + 3).to_string()), Some(&format!("{{{}}}", e - 2)))
                .unwrap();
        assert!(!s.sees(0xffff_fffe) && s.sees(0xffff_ffff));
    }

    #[test]
    fn statement_for_one_and_two_key_columns() {
        let columns = vec![key("id", ColumnType::Int64), col("b", ColumnType::Text)];
        let t = TableSchema { database: "d".into(), ..table("s", "t\"x", columns) };
        let sql = select_sql(&t, &[0], &[1], &[vec![Value::Int(1)], vec![Value::Int(-2)]]).unwrap();
        assert_eq!(sql, r#"SELECT "id", "b" FROM "s"."t""x" WHERE "id" IN (E'1', E'-2')"#);
        let sql = select_sql(&t, &[0, 1], &[], &[vec![Value::Int(1), Value::Text("it's a \\ path".into())]]).unwrap();
        assert_eq!(sql, r#"SELECT "id", "b" FROM "s"."t""x" WHERE ("id", "b") IN ((E'1', E'it''s a \\ path'))"#);
        assert!(select_sql(&t, &[0], &[1], &[vec![Value::Null]]).is_none());
    }
}
