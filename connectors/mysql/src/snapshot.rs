//! Initial snapshot: copy tables consistently with a binlog coordinate.
//!
//! Invariants:
//! - Every worker session opens `START TRANSACTION WITH CONSISTENT SNAPSHOT`
//!   and learns the binlog coordinate of exactly that snapshot: MariaDB
//!   reports it per session (`binlog_snapshot_file/position`); on MySQL all
//!   sessions open their snapshot under one brief `FLUSH TABLES WITH READ
//!   LOCK` and share `SHOW MASTER STATUS`. Each table is announced with its
//!   worker's coordinate; the stream applies a table's changes only from
//!   transactions starting at or after it.
//! - Rows are streamed (binary protocol, one row at a time) in batches; a
//!   table is never held in memory.
//! - A table's rows are bracketed by `TableSnapshotStarted`/`Done`; a crash
//!   mid-table means the table is copied again, not duplicated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value as MyValue};
use sluice_core::error::SourceError;
use sluice_core::{
    BinlogFile, ChangeEvent, ColumnType, EventGtid, MysqlOrigin, Op, Position, Row, SourceMessage, TableSchema, Value,
};
use tokio::sync::mpsc;

use crate::catalog::{self, SnapColumn};
use crate::decoding::{bit_string, refine, strip_srid, widen_f32};
use crate::position::Coord;
use sluice_client_mysql::{quote_ident, sql_error, ConnInfo, Flavor};

pub struct SnapshotJob {
    pub schema: Arc<TableSchema>,
    pub snap: Vec<SnapColumn>,
    pub estimated_rows: u64,
}

/// Where a worker's snapshot sits in the binlog.
#[derive(Debug, Clone)]
pub struct SnapPoint {
    pub coord: Coord,
    pub gtid: Option<String>,
}

const BATCH: usize = 1024;

/// Copy `jobs` with up to `parallelism` sessions. Returns each table's
/// snapshot point.
pub async fn copy_tables(
    info: &ConnInfo,
    flavor: Flavor,
    mut jobs: Vec<SnapshotJob>,
    parallelism: usize,
    tx: &mpsc::Sender<Vec<SourceMessage>>,
) -> Result<Vec<(sluice_core::TableId, SnapPoint)>, SourceError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.estimated_rows));
    let workers = parallelism.clamp(1, jobs.len());
    let mut sessions = Vec::with_capacity(workers);
    match flavor {
        Flavor::MariaDb => {
            for _ in 0..workers {
                let mut c = info.connect().await?;
                start_snapshot(&mut c).await?;
                let rows: Vec<(String, String)> = c
                    .query("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
                    .await
                    .map_err(|e| sql_error("reading binlog_snapshot_file/position", e))?;
                let get = |k: &str| rows.iter().find(|r| r.0.eq_ignore_ascii_case(k)).map(|r| r.1.clone());
                let file = get("binlog_snapshot_file").unwrap_or_default();
                let pos: u64 = get("binlog_snapshot_position").and_then(|p| p.parse().ok()).unwrap_or(0);
                if file.is_empty() {
                    return Err(SourceError::new(
                        sluice_core::ErrorKind::Config,
                        "the server reports no binlog snapshot position (log_bin is OFF?): start it with --log-bin",
                    ));
                }
                let gtid = catalog::mariadb_gtid_at(&mut c, &file, pos).await?;
                sessions.push((c, SnapPoint { coord: Coord { file, pos }, gtid }));
            }
        }
        Flavor::Mysql => {
            let mut lock = info.connect().await?;
            lock.query_drop("FLUSH TABLES WITH READ LOCK").await.map_err(|e| {
                sql_error("FLUSH TABLES WITH READ LOCK (needs the RELOAD privilege) for a consistent snapshot", e)
            })?;
            let mut conns = Vec::with_capacity(workers);
            for _ in 0..workers {
                let mut c = info.connect().await?;
                start_snapshot(&mut c).await?;
                conns.push(c);
            }
            let (file, pos, gtid) = catalog::master_status(&mut lock).await?;
            lock.query_drop("UNLOCK TABLES").await.map_err(|e| sql_error("UNLOCK TABLES", e))?;
            drop(lock);
            for c in conns {
                sessions.push((c, SnapPoint { coord: Coord { file: file.clone(), pos }, gtid: gtid.clone() }));
            }
        }
    }
    let queue = Arc::new(Mutex::new(jobs.into_iter().collect::<VecDeque<_>>()));
    let mut tasks = Vec::new();
    for (mut conn, point) in sessions {
        let queue = queue.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(job) = job else { break };
                copy_one(&mut conn, &job, &point, &tx).await?;
                done.push((job.schema.id.clone(), point.clone()));
            }
            let _ = conn.query_drop("COMMIT").await;
            let _ = conn.disconnect().await;
            Ok::<_, SourceError>(done)
        }));
    }
    let mut first_err = None;
    let mut points = Vec::new();
    for t in tasks {
        match t.await.map_err(|e| SourceError::fatal(format!("snapshot worker failed: {e}")))? {
            Ok(d) => points.extend(d),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(points),
    }
}

async fn start_snapshot(c: &mut Conn) -> Result<(), SourceError> {
    c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(|e| sql_error("setting the snapshot isolation level", e))?;
    c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(|e| sql_error("START TRANSACTION WITH CONSISTENT SNAPSHOT", e).into())
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

async fn send(tx: &mpsc::Sender<Vec<SourceMessage>>, batch: Vec<SourceMessage>) -> Result<(), SourceError> {
    tx.send(batch).await.map_err(|_| SourceError::transient("pipeline stopped"))
}

/// The select list that reads `schema`'s columns for [`convert`]: text in a
/// character set other than UTF-8 as its stored bytes (decoded by Sluice
/// like the stream does), everything else as is.
pub fn select_list(schema: &sluice_core::TableSchema, snap: &[SnapColumn]) -> String {
    let mut cols = Vec::with_capacity(schema.columns.len());
    for (i, c) in schema.columns.iter().enumerate() {
        let q = quote_ident(&c.name);
        cols.push(match snap.get(i).and_then(|s| s.charset.as_ref()) {
            Some(Ok(_)) => format!("CAST({q} AS BINARY)"),
            _ => q,
        });
    }
    cols.join(", ")
}

/// A value [`convert`] cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    pub message: String,
    /// The stored value itself cannot be represented (its bytes are not
    /// valid in its character set): only its table stops.
    pub per_table: bool,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ConvertError {
    fn from(message: String) -> Self {
        ConvertError { message, per_table: false }
    }
}

impl From<&str> for ConvertError {
    fn from(message: &str) -> Self {
        ConvertError { message: message.into(), per_table: false }
    }
}

async fn copy_one(
    conn: &mut Conn,
    job: &SnapshotJob,
    point: &SnapPoint,
    tx: &mpsc::Sender<Vec<SourceMessage>>,
) -> Result<(), SourceError> {
    let schema = &job.schema;
    let id = schema.id.clone();
    tracing::info!(table = %id, estimated_rows = job.estimated_rows, "snapshot: copying");
    let position = Position::Mysql { file: point.coord.file.clone(), pos: point.coord.pos, gtid: point.gtid.clone() };
    send(
        tx,
        vec![SourceMessage::TableSnapshotStarted {
            schema: schema.clone(),
            position,
            estimated_rows: job.estimated_rows,
        }],
    )
    .await?;
    // A character set Sluice cannot decode: the table stops before any row.
    for (c, s) in schema.columns.iter().zip(&job.snap) {
        if let Some(Err(name)) = &s.charset {
            let error = format!(
                "column {} of {id} is in character set {name}, which Sluice cannot decode (its text would be \
                 altered); convert the column to utf8mb4 or exclude the table",
                c.name
            );
            send(tx, vec![SourceMessage::TableFailed { table: id.clone(), error }]).await?;
            return Ok(());
        }
    }
    let cols = select_list(schema, &job.snap);
    let sql = format!("SELECT {cols} FROM {}.{}", quote_ident(&id.schema), quote_ident(&id.name));
    let mut result = conn.exec_iter(sql, ()).await.map_err(|e| sql_error(&format!("snapshot of {id}"), e))?;
    let ts = now_us();
    let at = point.coord.event_position();
    let origin = MysqlOrigin {
        file: BinlogFile::parse(&point.coord.file),
        gtid: EventGtid::None,
        pos: point.coord.pos,
        server_id: 0,
        row: 0,
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut rows = 0u64;
    while let Some(row) = result.next().await.map_err(|e| sql_error(&format!("snapshot of {id}"), e))? {
        let raw = row.unwrap();
        if raw.len() != schema.columns.len() {
            return Err(SourceError::fatal(format!(
                "snapshot of {id}: expected {} columns, got {}",
                schema.columns.len(),
                raw.len()
            )));
        }
        let mut values = Vec::with_capacity(raw.len());
        for ((v, c), s) in raw.into_iter().zip(&schema.columns).zip(&job.snap) {
            match convert(v, &c.ty, s) {
                Ok(v) => values.push(v),
                Err(e) if e.per_table => {
                    // The copy stays incomplete (never published); the table
                    // is copied again on the next run, after the data is fixed.
                    drop(result);
                    batch.push(SourceMessage::TableFailed {
                        table: id.clone(),
                        error: format!("snapshot of {id}, column {}: {e}", c.name),
                    });
                    send(tx, batch).await?;
                    return Ok(());
                }
                Err(e) => return Err(SourceError::fatal(format!("snapshot of {id}, column {}: {e}", c.name))),
            }
        }
        batch.push(SourceMessage::Event(ChangeEvent {
            op: Op::Read,
            table: schema.clone(),
            before: None,
            after: Some(Row::new(values)),
            commit_position: at,
            position: at,
            tx_id: None,
            commit_ts_us: ts,
            snapshot: true,
            mysql: Some(origin),
        }));
        rows += 1;
        if batch.len() >= BATCH {
            send(tx, std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).await?;
        }
    }
    drop(result);
    batch.push(SourceMessage::TableSnapshotDone { table: schema.id.clone(), rows });
    send(tx, batch).await?;
    tracing::info!(table = %schema.id, rows, "snapshot: table done");
    Ok(())
}

/// A binary-protocol value → [`Value`], matching what the binlog decoder
/// produces for the same stored data.
pub fn convert(v: MyValue, ty: &ColumnType, snap: &SnapColumn) -> Result<Value, ConvertError> {
    Ok(match v {
        MyValue::NULL => Value::Null,
        MyValue::Int(i) => match ty {
            ColumnType::UInt64 => Value::UInt(i as u64),
            _ => Value::Int(i),
        },
        MyValue::UInt(u) => match ty {
            ColumnType::UInt64 => Value::UInt(u),
            _ => Value::Int(i64::try_from(u).map_err(|_| format!("{u} out of range"))?),
        },
        MyValue::Float(f) => Value::Float(widen_f32(f)),
        MyValue::Double(d) => match ty {
            ColumnType::Float32 => Value::Float(widen_f32(d as f32)),
            _ => Value::Float(d),
        },
        MyValue::Date(y, mo, d, h, mi, s, us) => {
            if mo == 0 || d == 0 {
                return Ok(Value::Null);
            }
            let days = sluice_core::value::days_from_civil(y as i64, mo as u32, d as u32);
            let t = days * 86_400_000_000 + ((h as i64 * 60 + mi as i64) * 60 + s as i64) * 1_000_000 + us as i64;
            match ty {
                ColumnType::Date => Value::Date(days as i32),
                ColumnType::TimestampTz => Value::TimestampTz(t),
                _ => Value::Timestamp(t),
            }
        }
        MyValue::Time(neg, days, h, mi, s, us) => {
            let t = (((days as i64 * 24 + h as i64) * 60 + mi as i64) * 60 + s as i64) * 1_000_000 + us as i64;
            Value::Time(if neg { -t } else { t })
        }
        MyValue::Bytes(b) => match ty {
            _ if matches!(snap.charset, Some(Ok(_))) => {
                let Some(Ok(cs)) = snap.charset else { unreachable!() };
                let text = cs.decode(&b).map_err(|e| ConvertError { message: e.to_string(), per_table: true })?;
                refine(Value::Text(text), ty)
            }
            ColumnType::Numeric { .. } => Value::Numeric(String::from_utf8(b).map_err(|e| e.to_string())?),
            ColumnType::Bytes if snap.geometry => Value::Bytes(strip_srid(&b).to_vec()),
            ColumnType::Bytes => Value::Bytes(b),
            ColumnType::Other if snap.bits.is_some() => Value::Text(bit_string(&b, snap.bits.unwrap_or(0))),
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
                Value::Int(std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse().ok()).ok_or("not an integer")?)
            }
            ColumnType::UInt64 => {
                Value::UInt(std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse().ok()).ok_or("not an integer")?)
            }
            ColumnType::Float32 | ColumnType::Float64 => {
                Value::Float(std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse().ok()).ok_or("not a number")?)
            }
            _ => refine(
                Value::Text(match String::from_utf8(b) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                }),
                ty,
            ),
        },
    })
}
