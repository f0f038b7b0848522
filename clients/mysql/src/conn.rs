//! Connections to the MySQL/MariaDB server (through `mysql_async`).
//!
//! Invariants:
//! - Every session Sluice opens runs in UTC (`time_zone = '+00:00'`), so
//!   `TIMESTAMP` values read by the snapshot and decoded from the binlog (which
//!   stores seconds since the epoch) agree, and in `utf8mb4`, so text arrives
//!   as UTF-8 whatever the column's character set.
//! - Errors are classified once, here: bad credentials, missing privileges and
//!   unknown databases are fatal; lost connections, refused connections and
//!   server shutdowns are transient.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts};
use sluice_core::config::{TlsConfig, TlsMode};
use sluice_core::error::{ClientError, ErrorKind};

/// Which server we talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    Mysql,
}

/// Connection settings, validated without I/O.
#[derive(Clone)]
pub struct ConnInfo {
    pub opts: Opts,
    /// `host:port` for messages.
    pub addr: String,
    pub user: String,
    tls: Option<TlsMode>,
    /// The configuration block these settings came from (`source`, `sink`), for messages.
    field: &'static str,
}

impl ConnInfo {
    /// Settings from a URL and TLS block found under `field` (`source`, `sink`).
    pub fn from_url(url: &str, tls_cfg: Option<&TlsConfig>, field: &'static str) -> Result<ConnInfo, ClientError> {
        let url = url.trim();
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = Opts::from_url(&url).map_err(|e| {
            ClientError::new(
                ErrorKind::Config,
                format!(
                    "{field}.url: {e} in {:?} (expected mysql://user:password@host:port)",
                    sluice_core::config::redact_url(&url)
                ),
            )
        })?;
        let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
        let user = opts.user().unwrap_or("root").to_string();
        let mut b = OptsBuilder::from_opts(opts)
            .db_name(None::<String>)
            .stmt_cache_size(16)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .prefer_socket(false)
            .init(vec!["SET time_zone = '+00:00', NAMES utf8mb4, SESSION sql_mode = ''".to_string()]);
        let mut tls = None;
        if let Some(t) = tls_cfg {
            tls = Some(t.mode);
            let ssl = match t.mode {
                TlsMode::Disable => None,
                TlsMode::Prefer | TlsMode::Require => Some(
                    SslOpts::default().with_danger_accept_invalid_certs(true).with_danger_skip_domain_validation(true),
                ),
                TlsMode::VerifyCa => {
                    // mysql_async's rustls verifier cannot skip only the name
                    // check with current rustls (it matches an error string
                    // that changed), so verify-ca would silently be verify-full.
                    return Err(ClientError::new(
                        ErrorKind::Config,
                        format!(
                            "{field}.tls.mode: verify-ca is not supported for MySQL; use verify-full (the \
                             certificate must name the host in {field}.url) or require"
                        ),
                    ));
                }
                TlsMode::VerifyFull => {
                    let ca = t.ca_file.clone().ok_or_else(|| {
                        ClientError::new(ErrorKind::Config, format!("{field}.tls.ca_file: required for verify-full"))
                    })?;
                    if !ca.exists() {
                        return Err(ClientError::new(
                            ErrorKind::Config,
                            format!("{field}.tls.ca_file: {} does not exist", ca.display()),
                        ));
                    }
                    Some(SslOpts::default().with_root_certs(vec![ca.into()]).with_disable_built_in_roots(true))
                }
            };
            b = b.ssl_opts(ssl);
        }
        Ok(ConnInfo { opts: b.into(), addr, user, tls, field })
    }

    /// Open a session (UTC, utf8mb4). `prefer` falls back to plain text when
    /// the server offers no TLS.
    pub async fn connect(&self) -> Result<Conn, ClientError> {
        match Conn::new(self.opts.clone()).await {
            Ok(c) => Ok(c),
            Err(e) if self.tls == Some(TlsMode::Prefer) && is_tls_unsupported(&e) => {
                let plain: Opts = OptsBuilder::from_opts(self.opts.clone()).ssl_opts(None::<SslOpts>).into();
                Conn::new(plain).await.map_err(|e| self.connect_error(e))
            }
            Err(e) => Err(self.connect_error(e)),
        }
    }

    fn connect_error(&self, e: mysql_async::Error) -> ClientError {
        let msg = match &e {
            mysql_async::Error::Server(s) if s.code == 1045 => format!(
                "cannot log in to MySQL at {} as {}: {} (check the user and password in {}.url)",
                self.addr, self.user, s.message, self.field
            ),
            mysql_async::Error::Io(io) => format!(
                "cannot connect to MySQL at {}: {io} (is the server running and reachable, and is the port right?)",
                self.addr
            ),
            _ => format!("cannot connect to MySQL at {}: {e}", self.addr),
        };
        let kind = classify(&e);
        ClientError::new(kind, msg).with_source(e)
    }
}

fn is_tls_unsupported(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
}

/// Transient, fatal or configuration?
pub fn classify(e: &mysql_async::Error) -> ErrorKind {
    match e {
        mysql_async::Error::Io(_) => ErrorKind::Transient,
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => ErrorKind::Transient,
        mysql_async::Error::Driver(_) => ErrorKind::Fatal,
        mysql_async::Error::Server(s) => match s.code {
            // Access denied, unknown database, command denied, table access denied.
            1044 | 1045 | 1049 | 1142 | 1143 | 1227 | 1370 => ErrorKind::Fatal,
            // Server shutdown, lost connection, too many connections, lock wait
            // timeout, deadlock, query interrupted.
            1040 | 1053 | 1077 | 1152 | 1159 | 1161 | 1205 | 1213 | 1317 | 2006 | 2013 => ErrorKind::Transient,
            // About one row's data: NULL into NOT NULL, duplicate key, value
            // out of range or too long, wrong value for the column, foreign
            // key, check constraint (MySQL 3819, MariaDB 4025), bad JSON.
            1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1406 | 1451 | 1452 | 1690 | 3140 | 3819 | 4025 => {
                ErrorKind::Table
            }
            _ => ErrorKind::Fatal,
        },
        _ => ErrorKind::Fatal,
    }
}

/// Quote an identifier (`name` → `` `name` ``).
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Wrap a query error with what was being done.
pub fn sql_error(what: &str, e: mysql_async::Error) -> ClientError {
    ClientError::new(classify(&e), format!("{what}: {e}")).with_source(e)
}

/// Server flavor and version (`10.11.19-MariaDB-log` → MariaDB, (10, 11, 19)).
pub async fn server_version(conn: &mut Conn) -> Result<(Flavor, (u16, u16, u16)), ClientError> {
    let v: Option<String> = conn.query_first("SELECT VERSION()").await.map_err(|e| sql_error("SELECT VERSION()", e))?;
    let v = v.unwrap_or_default();
    let flavor = if v.to_ascii_lowercase().contains("mariadb") { Flavor::MariaDb } else { Flavor::Mysql };
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0));
    let ver = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    Ok((flavor, ver))
}

/// A global variable's value (`None` if the server does not know it).
pub async fn variable(conn: &mut Conn, name: &str) -> Result<Option<String>, ClientError> {
    let row: Option<(String, Option<String>)> = conn
        .exec_first("SHOW GLOBAL VARIABLES WHERE Variable_name = ?", (name,))
        .await
        .map_err(|e| sql_error(&format!("reading {name}"), e))?;
    Ok(row.and_then(|r| r.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError { code, message: String::new(), state: String::new() })
    }

    #[test]
    fn server_errors_by_code() {
        for code in [1040, 1053, 1077, 1152, 1159, 1161, 1205, 1213, 1317, 2006, 2013] {
            assert_eq!(classify(&server(code)), ErrorKind::Transient, "{code}");
        }
        for code in [1044, 1045, 1049, 1142, 1143, 1227, 1370, 1064, 1146, 1236] {
            assert_eq!(classify(&server(code)), ErrorKind::Fatal, "{code}");
        }
        for code in [1048, 1062, 1264, 1265, 1292, 1366, 1406, 1451, 1452, 1690, 3140, 3819, 4025] {
            assert_eq!(classify(&server(code)), ErrorKind::Table, "{code}");
            assert_eq!(classify(&server(code)).or_fatal_for_table(), ErrorKind::Fatal, "{code}");
        }
        let io =
            mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(classify(&io), ErrorKind::Transient);
        let closed = mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed);
        assert_eq!(classify(&closed), ErrorKind::Transient);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("plain"), "`plain`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn settings_errors_name_the_field() {
        let e = ConnInfo::from_url("http://x", None, "sink").err().unwrap();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.message.starts_with("sink.url: "), "{}", e.message);
        let tls = TlsConfig { mode: TlsMode::VerifyCa, ca_file: None };
        let e = ConnInfo::from_url("mysql://root@127.0.0.1:1/x", Some(&tls), "source").err().unwrap();
        assert!(e.message.starts_with("source.tls.mode: verify-ca"), "{}", e.message);
    }
}
