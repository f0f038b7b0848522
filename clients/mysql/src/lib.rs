//! sluice-client-mysql: everything Sluice needs to talk to a MySQL or
//! MariaDB server, for the source, the replica sink and `verify` alike:
//! connection settings from a URL and a `tls` block, sessions in UTC and
//! utf8mb4, the server's flavor and version, identifier quoting, and one
//! classification of errors ([`conn::classify`]).
//!
//! This crate knows nothing of sources, sinks or transforms; its errors are
//! [`ClientError`]s, which convert into both source and sink errors.

pub mod conn;

pub use conn::{classify, quote_ident, server_version, sql_error, variable, ConnInfo, Flavor};
pub use sluice_core::error::ClientError;
