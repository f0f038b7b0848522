//! sluice-client-postgres: everything Sluice needs to talk to a Postgres
//! server, for the source, the replica sink and `verify` alike.
//!
//! - [`conn`]: connection settings from a URL and a `tls` block, SQL
//!   sessions (tokio-postgres), the session settings every session uses;
//! - [`replication`]: our own wire-protocol client for replication sessions
//!   and the snapshot's `COPY ... TO STDOUT`;
//! - [`tls`]: libpq's `sslmode` semantics on rustls;
//! - [`error`]: one classification of errors by SQLSTATE.
//!
//! This crate knows nothing of sources, sinks or transforms; its errors are
//! [`ClientError`]s, which convert into both source and sink errors.

pub mod conn;
pub mod error;
pub mod replication;
pub mod tls;

pub use conn::{connect_sql, session_options, ConnInfo, Host, LOOPBACK_RECV_BUFFER};
pub use error::{classify, classify_sqlstate, sql_error};
pub use replication::{pg_now, ReplMessage, ReplicationConn, ServerError};
pub use sluice_core::error::ClientError;
pub use sluice_core::schema::quote_ident;

/// The server's version number (`server_version_num`, e.g. 150019).
pub async fn server_version_num(client: &tokio_postgres::Client) -> Result<i32, ClientError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| sql_error("reading server_version_num", e))?;
    Ok(row.get(0))
}
