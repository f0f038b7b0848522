//! Initial snapshot: copy tables consistently with a replication slot.
//!
//! Invariants:
//! - Every table is read inside a transaction that imported the snapshot
//!   exported when the slot (or a temporary slot) was created, so the copy
//!   holds exactly the transactions that committed before that slot's
//!   consistent point; the stream supplies the rest. A worker's transaction
//!   covers at most [`TABLES_PER_TX`] tables (locks are held until it
//!   ends), then the worker imports the same snapshot again.
//! - Rows are streamed from `COPY ... TO STDOUT (FORMAT binary)` in batches;
//!   a table is never held in memory. Built-in types the schemas crate can
//!   decode from their binary form come as such; every other column is cast
//!   to text in the query and parsed from its text form, so snapshot and
//!   stream give identical values.
//! - When the runtime allows it and every column comes in binary form, rows
//!   are passed on as the server sent them (`RawRows`, Postgres binary COPY
//!   tuples checked for framing and column count only); whoever needs
//!   values decodes them with [`decode_raw`], exactly as below.
//! - A table's rows are bracketed by `TableSnapshotStarted`/`Done`; the
//!   runtime keeps them unpublished until `Done`, so a crash mid-table means
//!   the table is copied again, not duplicated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sluice_core::error::SourceError;
use sluice_core::schema::quote_ident;
use sluice_core::{
    ChangeEvent, EventPosition, Op, Position, RawFormat, RawRows, Row, SourceMessage, TableSchema, Value,
};
use tokio::sync::mpsc;

use sluice_client_postgres::{ConnInfo, ReplicationConn};

pub struct SnapshotJob {
    pub schema: Arc<TableSchema>,
    pub estimated_rows: u64,
    /// Partitioned tables can only be copied through a query.
    pub partitioned: bool,
}

const BATCH: usize = 1024;
/// Tables read in one transaction before a worker starts another in the
/// same snapshot (each holds a lock until its transaction ends; a table
/// read through a query also locks its indexes).
const TABLES_PER_TX: usize = 32;
/// Bytes of raw rows per message.
const RAW_CHUNK: usize = 256 << 10;

/// Copy `jobs` with up to `parallelism` sessions, all in snapshot `snapshot_name`.
pub async fn copy_tables(
    info: &ConnInfo,
    snapshot_name: &str,
    consistent_lsn: u64,
    mut jobs: Vec<SnapshotJob>,
    parallelism: usize,
    raw: Option<RawFormat>,
    tx: &mpsc::Sender<Vec<SourceMessage>>,
) -> Result<(), SourceError> {
    if jobs.is_empty() {
        return Ok(());
    }
    // Largest first, so the long tail is short.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.estimated_rows));
    let workers = parallelism.clamp(1, jobs.len());
    let queue = Arc::new(Mutex::new(jobs.into_iter().collect::<VecDeque<_>>()));
    // Workers import the snapshot while the exporting session is idle: it
    // stays idle (and the snapshot importable) until the copy is over.
    let begin = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        sluice_core::schema::quote_literal(snapshot_name)
    );
    // A transaction keeps a lock on every table it read until it ends: with
    // thousands of tables that would exhaust the server's lock table
    // (`max_locks_per_transaction`), so each worker starts a new
    // transaction in the same snapshot every TABLES_PER_TX tables.
    let renew = format!("COMMIT; {begin}");
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        let mut client = ReplicationConn::connect_plain(info).await?;
        client.simple_query(&begin).await?;
        clients.push(client);
    }
    let mut tasks = Vec::new();
    for mut client in clients {
        let queue = queue.clone();
        let tx = tx.clone();
        let renew = renew.clone();
        tasks.push(tokio::spawn(async move {
            let mut in_tx = 0;
            loop {
                let job = queue.lock().unwrap().pop_front();
                let Some(job) = job else { break };
                if in_tx >= TABLES_PER_TX {
                    // The exporting session must still be there: if it was
                    // ended (e.g. idle_in_transaction_session_timeout), the
                    // run restarts; copied tables are kept, the others are
                    // copied in a new snapshot.
                    client.simple_query(&renew).await.map_err(|e| {
                        SourceError::transient(format!(
                            "snapshot: importing the exported snapshot again: {}",
                            e.message
                        ))
                    })?;
                    in_tx = 0;
                }
                copy_one(&mut client, &job, consistent_lsn, raw, &tx).await?;
                // A partitioned table locks each of its partitions.
                in_tx += if job.partitioned { TABLES_PER_TX } else { 1 };
            }
            client.simple_query("COMMIT").await?;
            client.terminate().await;
            Ok::<(), SourceError>(())
        }));
    }
    let mut first_err = None;
    for t in tasks {
        let r = t.await.map_err(|e| SourceError::fatal(format!("snapshot worker failed: {e}")))?;
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

async fn send(tx: &mpsc::Sender<Vec<SourceMessage>>, batch: Vec<SourceMessage>) -> Result<(), SourceError> {
    tx.send(batch).await.map_err(|_| SourceError::transient("pipeline stopped"))
}

async fn copy_one(
    client: &mut ReplicationConn,
    job: &SnapshotJob,
    consistent_lsn: u64,
    raw: Option<RawFormat>,
    tx: &mpsc::Sender<Vec<SourceMessage>>,
) -> Result<(), SourceError> {
    let schema = &job.schema;
    let id = schema.id.clone();
    tracing::info!(table = %id, estimated_rows = job.estimated_rows, "snapshot: copying");
    send(
        tx,
        vec![SourceMessage::TableSnapshotStarted {
            schema: schema.clone(),
            position: Position::Postgres { lsn: consistent_lsn },
            estimated_rows: job.estimated_rows,
        }],
    )
    .await?;
    // Binary COPY: built-in types arrive in their binary form (cheaper to
    // produce and to decode); any other column is cast to text in the query
    // and parsed from its text form, as the stream does.
    let binary: Vec<bool> =
        schema.columns.iter().map(|c| sluice_schemas::postgres::binary_decodable(c.type_id)).collect();
    let cols = schema.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let sql = if binary.iter().all(|b| *b) && !job.partitioned {
        format!("COPY {} ({cols}) TO STDOUT (FORMAT binary)", id.quoted())
    } else {
        let select = schema
            .columns
            .iter()
            .zip(&binary)
            .map(|(c, b)| if *b { quote_ident(&c.name) } else { format!("{}::text", quote_ident(&c.name)) })
            .collect::<Vec<_>>()
            .join(", ");
        format!("COPY (SELECT {select} FROM {}) TO STDOUT (FORMAT binary)", id.quoted())
    };
    client.copy_out(&sql).await.map_err(|e| SourceError::new(e.kind, format!("snapshot of {id}: {}", e.message)))?;
    let ts = now_us();
    let raw = raw.filter(|f| *f == RawFormat::PgBinaryCopy && binary.iter().all(|b| *b));
    let mut batch = Vec::with_capacity(BATCH);
    let mut chunk = RawRows {
        schema: schema.clone(),
        format: RawFormat::PgBinaryCopy,
        data: Vec::new(),
        rows: 0,
        commit_position: EventPosition::Lsn(consistent_lsn),
        commit_ts_us: ts,
        decode: decode_raw,
    };
    let mut rows = 0u64;
    let mut header = true;
    let bad = |what: String| SourceError::fatal(format!("COPY of {id}: {what}"));
    while let Some(data) = client.copy_row().await? {
        let mut b: &[u8] = &data;
        if header {
            // PGCOPY\n\377\r\n\0, flags, header extension length and extension.
            if b.len() < 19 || &b[..11] != b"PGCOPY\n\xff\r\n\0" {
                return Err(bad("not a binary COPY stream".into()));
            }
            let ext = u32::from_be_bytes([b[15], b[16], b[17], b[18]]) as usize;
            b = b.get(19 + ext..).ok_or_else(|| bad("truncated header".into()))?;
            header = false;
        }
        while b.len() >= 2 {
            if b[..2] == (-1i16).to_be_bytes() {
                break; // trailer
            }
            if raw.is_some() {
                let len = tuple_len(b, schema).map_err(bad)?;
                chunk.data.extend_from_slice(&b[..len]);
                chunk.rows += 1;
                b = &b[len..];
            } else {
                let values = decode_tuple(&mut b, schema, &binary).map_err(bad)?;
                batch.push(SourceMessage::Event(read_event(schema, values, EventPosition::Lsn(consistent_lsn), ts)));
            }
            rows += 1;
        }
        if chunk.data.len() >= RAW_CHUNK {
            let next =
                RawRows { data: Vec::with_capacity(RAW_CHUNK + (16 << 10)), rows: 0, schema: schema.clone(), ..chunk };
            batch.push(SourceMessage::RawRows(std::mem::replace(&mut chunk, next)));
        }
        if batch.len() >= BATCH || (raw.is_some() && !batch.is_empty()) {
            send(tx, std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).await?;
        }
    }
    if chunk.rows > 0 {
        batch.push(SourceMessage::RawRows(chunk));
    }
    batch.push(SourceMessage::TableSnapshotDone { table: schema.id.clone(), rows });
    send(tx, batch).await?;
    tracing::info!(table = %schema.id, rows, "snapshot: table done");
    Ok(())
}

/// A snapshot row as an event.
fn read_event(schema: &Arc<TableSchema>, values: Vec<Value>, at: EventPosition, ts: i64) -> ChangeEvent {
    ChangeEvent {
        op: Op::Read,
        table: schema.clone(),
        before: None,
        after: Some(Row::new(values)),
        commit_position: at,
        position: at,
        tx_id: None,
        commit_ts_us: ts,
        snapshot: true,
        mysql: None,
    }
}

/// The length of the binary COPY tuple at the start of `b`, checking its
/// column count and that every field is whole.
fn tuple_len(b: &[u8], schema: &TableSchema) -> Result<usize, String> {
    let ncols = schema.columns.len();
    let n = i16::from_be_bytes(b.get(..2).ok_or("truncated row")?.try_into().expect("2"));
    if n as usize != ncols {
        return Err(format!("expected {ncols} columns, got {n} (did the table change during the snapshot?)"));
    }
    let mut at = 2;
    for _ in 0..ncols {
        let len = i32::from_be_bytes(b.get(at..at + 4).ok_or("truncated row")?.try_into().expect("4"));
        at += 4;
        if len > 0 {
            at += len as usize;
        }
    }
    if at > b.len() {
        return Err("truncated row".into());
    }
    Ok(at)
}

/// Decode the binary COPY tuple at the start of `b` (and step past it):
/// columns marked in `binary` from their binary form, the others (cast to
/// text by the query) from their text form.
fn decode_tuple(b: &mut &[u8], schema: &TableSchema, binary: &[bool]) -> Result<Vec<Value>, String> {
    let len = tuple_len(b, schema)?;
    let mut t = &b[2..len];
    *b = &b[len..];
    let mut values = Vec::with_capacity(schema.columns.len());
    for (c, bin) in schema.columns.iter().zip(binary) {
        let len = i32::from_be_bytes(t[..4].try_into().expect("4"));
        t = &t[4..];
        if len < 0 {
            values.push(Value::Null);
            continue;
        }
        let (field, rest) = t.split_at(len as usize);
        t = rest;
        let v = if *bin {
            sluice_schemas::postgres::parse_binary(c.type_id, field)
        } else {
            std::str::from_utf8(field)
                .map_err(|_| sluice_schemas::postgres::ParseError("invalid UTF-8".into()))
                .and_then(|s| sluice_schemas::postgres::parse_text(&c.ty, s))
        };
        values.push(v.map_err(|e| format!("column {}: {e}", c.name))?);
    }
    Ok(values)
}

/// Decode raw snapshot rows (every column in binary form) into events.
pub fn decode_raw(raw: &RawRows, out: &mut Vec<ChangeEvent>) -> Result<(), SourceError> {
    let binary = vec![true; raw.schema.columns.len()];
    let mut b: &[u8] = &raw.data;
    while !b.is_empty() {
        let values = decode_tuple(&mut b, &raw.schema, &binary)
            .map_err(|e| SourceError::fatal(format!("COPY of {}: {e}", raw.schema.id)))?;
        out.push(read_event(&raw.schema, values, raw.commit_position, raw.commit_ts_us));
    }
    Ok(())
}
