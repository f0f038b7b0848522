//! Connection settings and ordinary SQL sessions (tokio-postgres).
//!
//! Invariants: settings are parsed and checked without I/O
//! ([`ConnInfo::from_url`]); every session runs with the settings in
//! [`sluice_schemas::postgres::SESSION_SETTINGS`], so values arrive in one
//! canonical text form; connection errors name the server and, for bad
//! credentials or an unknown database, the configuration field to fix.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use sluice_core::config::{TlsConfig, TlsMode};
use sluice_core::error::{ClientError, ErrorKind};

use crate::error::classify_sqlstate;

/// Where and as whom to connect, parsed from a `url` and `tls` block.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub connect_timeout: Duration,
    pub tls: crate::tls::Tls,
    /// The configuration block these settings came from (`source`, `sink`), for messages.
    pub field: &'static str,
}

#[derive(Debug, Clone)]
pub enum Host {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Tcp(h) => write!(f, "{}@{}:{}/{}", self.user, h, self.port, self.dbname),
            Host::Unix(p) => write!(f, "{}@{}:{}/{}", self.user, p.display(), self.port, self.dbname),
        }
    }
}

impl ConnInfo {
    /// Parse a `postgres://` URL or `key=value` string (TLS from its `sslmode`).
    fn parse(url: &str, field: &'static str) -> Result<(ConnInfo, TlsMode), ClientError> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| {
            ClientError::new(ErrorKind::Config, format!("{field}.url is not a valid Postgres connection string"))
                .with_source(e)
        })?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => Host::Unix(p.clone()),
            None => Host::Tcp("localhost".into()),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let password =
            cfg.get_password().map(|p| p.to_vec()).or_else(|| std::env::var("PGPASSWORD").ok().map(String::into_bytes));
        let dbname = cfg.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
        let connect_timeout = cfg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
        let mode = match cfg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => TlsMode::Disable,
            tokio_postgres::config::SslMode::Require => TlsMode::Require,
            _ => TlsMode::Prefer,
        };
        let tls = crate::tls::Tls::disabled();
        Ok((ConnInfo { host, port, user, password, dbname, connect_timeout, tls, field }, mode))
    }

    /// Connection info from a URL and the `tls` block beside it, found under
    /// `field` (`source`, `sink`); the block overrides the URL's `sslmode`.
    pub fn from_url(url: &str, tls: Option<&TlsConfig>, field: &'static str) -> Result<ConnInfo, ClientError> {
        let (mut info, url_mode) = Self::parse(url, field)?;
        info.tls = crate::tls::Tls::from_config(tls, url_mode, field)?;
        Ok(info)
    }

    /// A tokio-postgres config for ordinary SQL sessions.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(self.port).user(&self.user).dbname(&self.dbname).application_name("sluice");
        c.connect_timeout(self.connect_timeout);
        c.ssl_mode(match self.tls.mode {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if let Some(p) = &self.password {
            c.password(p);
        }
        c.options(session_options());
        c
    }
}

/// `-c k=v` options applied to every session.
pub fn session_options() -> String {
    sluice_schemas::postgres::SESSION_SETTINGS.iter().map(|(k, v)| format!("-c {k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Open an SQL session.
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, ClientError> {
    let cfg = info.sql_config();
    match &info.tls.config {
        Some(tls) => {
            let make = crate::tls::MakeRustls { config: tls.clone() };
            let (client, conn) = cfg.connect(make).await.map_err(|e| connect_error(info, e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres connection closed");
                }
            });
            Ok(client)
        }
        None => {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| connect_error(info, e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "postgres connection closed");
                }
            });
            Ok(client)
        }
    }
}

fn connect_error(info: &ConnInfo, e: tokio_postgres::Error) -> ClientError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let field = info.field;
        let hint = match code {
            "28P01" | "28000" => format!("; check the user and password in {field}.url"),
            "3D000" => format!("; check the database name in {field}.url"),
            _ => String::new(),
        };
        return ClientError::new(
            classify_sqlstate(code),
            format!("cannot connect to Postgres at {info}: {}{hint}", db.message()),
        );
    }
    let text = e.to_string();
    let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    ClientError::new(
        crate::error::classify(&e),
        format!(
            "cannot connect to Postgres at {info}: {text}{}",
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        ),
    )
}

/// Connect over TCP, trying each resolved address. On loopback the receive
/// buffer is set small before connecting; see [`LOOPBACK_RECV_BUFFER`].
pub(crate) async fn connect_tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host name did not resolve");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        let default = if addr.ip().is_loopback() { LOOPBACK_RECV_BUFFER } else { 0 };
        let rb: u32 = std::env::var("SLUICE_RCVBUF").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        if rb > 0 {
            sock.set_recv_buffer_size(rb)?;
        }
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Receive buffer for replication connections to a loopback address.
///
/// The walsender sends every pgoutput message with its own `send()`. Over
/// loopback the sender's `send()` also runs the receiver's TCP input path,
/// so with a wide-open window the walsender spends most of its time in the
/// kernel, once per message. A small window keeps it closed most of the
/// time: `send()` then only copies into the socket buffer, and data moves in
/// large segments when we read. Measured here (1M inserts, blackhole sink):
/// ~5.5 s with the kernel default, ~4 s with 16 KiB. Over real networks the
/// window must cover the bandwidth-delay product, so the kernel default is
/// kept there. `SLUICE_RCVBUF` overrides (0: kernel default).
///
/// The trade-off (measured 2026-12-04, bench/README.md): streams of
/// single-row transactions run ~17% faster with the kernel default, 10k-row
/// transactions ~10% faster with 16 KiB. The choice can only be made at
/// connect time: shrinking the window of a live connection below what it
/// advertised stalls it, and a window widened later grows back slowly.
pub const LOOPBACK_RECV_BUFFER: u32 = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_sslmode_and_the_tls_block_that_overrides_it() {
        let url = "postgres://u:pw@db.example:6543/app?sslmode=require";
        let info = ConnInfo::from_url(url, None, "source").unwrap();
        assert_eq!((info.tls.mode, info.port, info.dbname.as_str()), (TlsMode::Require, 6543, "app"));
        assert!(info.tls.config.is_some());
        let off = TlsConfig { mode: TlsMode::Disable, ca_file: None };
        let info = ConnInfo::from_url(url, Some(&off), "source").unwrap();
        assert_eq!(info.tls.mode, TlsMode::Disable);
        assert!(info.tls.config.is_none());
        let plain = ConnInfo::from_url("postgres://u@h/db?sslmode=disable", None, "sink").unwrap();
        assert_eq!(plain.tls.mode, TlsMode::Disable);
        let default = ConnInfo::from_url("postgres://u@h/db", None, "sink").unwrap();
        assert_eq!(default.tls.mode, TlsMode::Prefer);
        // The password never shows in the connection's description.
        assert!(!ConnInfo::from_url(url, None, "source").unwrap().to_string().contains("pw"));
    }

    #[test]
    fn settings_errors_name_the_field() {
        let e = ConnInfo::from_url("postgres://u@h:notaport/db", None, "sink").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.starts_with("sink.url is not a valid Postgres connection string"), "{}", e.message);
        let verify = TlsConfig { mode: TlsMode::VerifyFull, ca_file: None };
        let e = ConnInfo::from_url("postgres://u@h/db", Some(&verify), "source").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.starts_with("source.tls.ca_file: required"), "{}", e.message);
    }
}
