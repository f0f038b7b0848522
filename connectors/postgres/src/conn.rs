//! Connections: ordinary SQL sessions (tokio-postgres) and our own
//! replication-protocol client.
//!
//! `tokio-postgres` does not speak the streaming replication sub-protocol,
//! so [`ReplicationConn`] implements the startup/authentication handshake
//! (trust, cleartext, MD5, SCRAM-SHA-256), simple queries (replication
//! commands) and CopyBoth streaming directly on a socket. Reading goes into
//! one large buffer; each message is split off without copying, which keeps
//! the hot path free of per-message allocations.
//!
//! Invariant: every session runs with the settings in
//! [`sluice_schemas::postgres::SESSION_SETTINGS`], so values arrive in one
//! canonical text form.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use sluice_core::error::{ErrorKind, SourceError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where and as whom to connect, parsed from `source.url`.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub connect_timeout: Duration,
    pub tls: crate::tls::Tls,
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
    fn parse(url: &str) -> Result<(ConnInfo, sluice_core::config::TlsMode), SourceError> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| {
            SourceError::new(ErrorKind::Config, "source.url is not a valid Postgres connection string").with_source(e)
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
            tokio_postgres::config::SslMode::Disable => sluice_core::config::TlsMode::Disable,
            tokio_postgres::config::SslMode::Require => sluice_core::config::TlsMode::Require,
            _ => sluice_core::config::TlsMode::Prefer,
        };
        Ok((ConnInfo { host, port, user, password, dbname, connect_timeout, tls: crate::tls::Tls::disabled() }, mode))
    }

    /// Connection info from the source config: the URL plus the `tls` block.
    pub fn from_config(pg: &sluice_core::config::PostgresSourceConfig) -> Result<ConnInfo, SourceError> {
        let (mut info, url_mode) = Self::parse(&pg.url)?;
        info.tls = crate::tls::Tls::from_config(pg, url_mode)?;
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
        use sluice_core::config::TlsMode;
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

/// Classify a tokio-postgres error.
pub fn sql_error(context: &str, e: tokio_postgres::Error) -> SourceError {
    let kind = match e.as_db_error() {
        Some(db) => classify_sqlstate(db.code().code()),
        None if e.is_closed() => ErrorKind::Transient,
        None => {
            // Connection-level failures (refused, reset, timeout) are transient.
            let s = e.to_string();
            if s.contains("password") || s.contains("authentication") {
                ErrorKind::Fatal
            } else {
                ErrorKind::Transient
            }
        }
    };
    let msg = match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{context}: {}", db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            return SourceError::new(kind, m);
        }
        None => context.to_string(),
    };
    SourceError::new(kind, msg).with_source(e)
}

/// Transient SQLSTATE classes: connection exceptions, admin shutdown, and
/// "object in use" (a slot still held by a dying walsender).
pub fn classify_sqlstate(code: &str) -> ErrorKind {
    match code {
        c if c.starts_with("08") => ErrorKind::Transient,
        "57P01" | "57P02" | "57P03" | "55006" | "53300" | "40001" | "40P01" => ErrorKind::Transient,
        c if c.starts_with("28") => ErrorKind::Fatal,
        _ => ErrorKind::Fatal,
    }
}

/// Open an SQL session.
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, SourceError> {
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

fn connect_error(info: &ConnInfo, e: tokio_postgres::Error) -> SourceError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let hint = match code {
            "28P01" | "28000" => "; check the user and password in source.url",
            "3D000" => "; check the database name in source.url",
            _ => "",
        };
        return SourceError::new(
            classify_sqlstate(code),
            format!("cannot connect to Postgres at {info}: {}{hint}", db.message()),
        );
    }
    let text = e.to_string();
    let detail = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    SourceError::new(
        ErrorKind::Transient,
        format!(
            "cannot connect to Postgres at {info}: {text}{}",
            if detail.is_empty() { String::new() } else { format!(": {detail}") }
        ),
    )
}

/// Connect over TCP, trying each resolved address. On loopback the receive
/// buffer is set small before connecting; see [`LOOPBACK_RECV_BUFFER`].
async fn connect_tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
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

/// SSLRequest, then the TLS handshake when the server agrees (libpq's
/// `sslmode` semantics; see [`crate::tls`]).
async fn negotiate_tls(
    mut s: tokio::net::TcpStream,
    host: &str,
    info: &ConnInfo,
) -> Result<Box<dyn Stream>, SourceError> {
    use sluice_core::config::TlsMode;
    let Some(config) = info.tls.config.clone() else { return Ok(Box::new(s)) };
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    s.write_all(&req).await.map_err(|e| io_err("TLS request", e))?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.map_err(|e| io_err("TLS request", e))?;
    match answer[0] {
        b'S' => {
            let name = crate::tls::Tls::server_name(host)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, s).await.map_err(|e| {
                SourceError::new(ErrorKind::Fatal, format!("TLS handshake with Postgres at {info} failed: {e}"))
            })?;
            Ok(Box::new(tls))
        }
        _ if info.tls.mode == TlsMode::Prefer => Ok(Box::new(s)),
        _ => Err(SourceError::new(
            ErrorKind::Fatal,
            format!(
                "Postgres at {info} does not accept TLS connections, but source.tls.mode asks for {:?}",
                info.tls.mode
            ),
        )),
    }
}

/// Largest protocol message accepted (Postgres's own limit for a field is 1 GiB).
const MAX_MESSAGE: usize = (1 << 30) + 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A server error or notice.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    fn parse(mut body: Bytes) -> ServerError {
        let mut e = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        while body.has_remaining() {
            let t = body.get_u8();
            if t == 0 {
                break;
            }
            let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            let v = String::from_utf8_lossy(&body[..end]).into_owned();
            body.advance((end + 1).min(body.len()));
            match t {
                b'S' => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        e
    }
    pub fn into_source_error(self, context: &str) -> SourceError {
        let mut m = format!("{context}: {}", self.message);
        if let Some(d) = &self.detail {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = &self.hint {
            m.push_str(&format!("; hint: {h}"));
        }
        SourceError::new(classify_sqlstate(&self.code), m)
    }
}

/// Messages of the replication stream.
#[derive(Debug)]
pub enum ReplMessage {
    /// `XLogData`: one pgoutput message starting at `start`.
    XLogData { start: u64, data: Bytes },
    /// Primary keepalive: the server has sent everything before `wal_end`.
    Keepalive { wal_end: u64, reply: bool },
}

/// A replication-protocol session (`replication=database`).
pub struct ReplicationConn {
    io: Box<dyn Stream>,
    /// The TCP socket's descriptor, for `SO_RCVLOWAT` tuning.
    tcp_fd: Option<std::os::fd::RawFd>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub server_version: u32,
}

fn io_err(context: &str, e: io::Error) -> SourceError {
    SourceError::transient(format!("{context}: {e}")).with_source(e)
}

/// Microseconds since 2000-01-01 (Postgres epoch).
pub fn pg_now() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - 946_684_800_000_000
}

impl ReplicationConn {
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConn, SourceError> {
        Self::open(info, true).await
    }

    /// An ordinary (non-replication) session on the same protocol client,
    /// used for the snapshot's `COPY`: rows are split out of one read buffer
    /// instead of travelling through tokio-postgres's per-message channel.
    pub async fn connect_plain(info: &ConnInfo) -> Result<ReplicationConn, SourceError> {
        Self::open(info, false).await
    }

    async fn open(info: &ConnInfo, replication: bool) -> Result<ReplicationConn, SourceError> {
        let mut tcp_fd = None;
        let io: Box<dyn Stream> = match &info.host {
            Host::Tcp(h) => {
                let fut = connect_tcp(h.as_str(), info.port);
                let s = tokio::time::timeout(info.connect_timeout, fut)
                    .await
                    .map_err(|_| SourceError::transient(format!("cannot connect to Postgres at {info}: timed out")))?
                    .map_err(|e| SourceError::transient(format!("cannot connect to Postgres at {info}: {e}")))?;
                s.set_nodelay(true).ok();
                tcp_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&s));
                negotiate_tls(s, h, info).await?
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| SourceError::transient(format!("cannot connect to Postgres at {info}: {e}")))?;
                Box::new(s)
            }
        };
        let mut c = ReplicationConn {
            io,
            tcp_fd,
            rbuf: BytesMut::with_capacity(1 << 20),
            wbuf: BytesMut::new(),
            server_version: 0,
        };
        c.startup(info, replication).await?;
        Ok(c)
    }

    async fn startup(&mut self, info: &ConnInfo, replication: bool) -> Result<(), SourceError> {
        let options = session_options();
        let mut params = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", "sluice"),
            ("options", options.as_str()),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| io_err("startup", e))?;
        self.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'R' => {
                    if body.len() < 4 {
                        return Err(SourceError::fatal("protocol error: short authentication message"));
                    }
                    let code = body.get_i32();
                    let password = || {
                        info.password.clone().ok_or_else(|| {
                            SourceError::fatal(format!(
                                "Postgres at {info} asks for a password but source.url has none (add it to the URL, e.g. via ${{PGPASSWORD}})"
                            ))
                        })
                    };
                    match code {
                        0 => {}
                        3 => {
                            let pw = password()?;
                            frontend::password_message(&pw, &mut self.wbuf).map_err(|e| io_err("auth", e))?;
                            self.flush().await?;
                        }
                        5 => {
                            if body.len() < 4 {
                                return Err(SourceError::fatal("protocol error: short MD5 salt"));
                            }
                            let mut salt = [0u8; 4];
                            body.copy_to_slice(&mut salt);
                            let pw = password()?;
                            let hash = postgres_protocol::authentication::md5_hash(info.user.as_bytes(), &pw, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(|e| io_err("auth", e))?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechs = String::from_utf8_lossy(&body).to_string();
                            if !mechs.split('\0').any(|m| m == SCRAM_SHA_256) {
                                return Err(SourceError::fatal(format!(
                                    "unsupported SASL mechanisms offered: {mechs:?}"
                                )));
                            }
                            let pw = password()?;
                            let s = ScramSha256::new(&pw, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.wbuf)
                                .map_err(|e| io_err("auth", e))?;
                            self.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| SourceError::fatal("unexpected SASL continue"))?;
                            s.update(&body)
                                .map_err(|e| SourceError::fatal(format!("SCRAM authentication failed: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|e| io_err("auth", e))?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| SourceError::fatal("unexpected SASL final"))?;
                            s.finish(&body)
                                .map_err(|e| SourceError::fatal(format!("SCRAM authentication failed: {e}")))?;
                        }
                        other => {
                            return Err(SourceError::fatal(format!(
                                "unsupported authentication method {other} requested by {info}"
                            )))
                        }
                    }
                }
                b'E' => {
                    let e = ServerError::parse(body);
                    let hint = match e.code.as_str() {
                        "28P01" | "28000" => "; check the user and password in source.url, and that pg_hba.conf allows replication connections for this user",
                        "3D000" => "; check the database name in source.url",
                        _ => "",
                    };
                    return Err(SourceError::new(
                        classify_sqlstate(&e.code),
                        format!("cannot open a replication connection to {info}: {}{hint}", e.message),
                    ));
                }
                b'S' => {
                    // ParameterStatus: name NUL value NUL. Keep the major version.
                    let s = String::from_utf8_lossy(&body).to_string();
                    let mut parts = s.split('\0');
                    if parts.next() == Some("server_version") {
                        let v = parts.next().unwrap_or("");
                        self.server_version =
                            v.split(|c: char| !c.is_ascii_digit()).next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    }
                }
                b'K' | b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(SourceError::fatal(format!("unexpected message {:?} during startup", other as char)))
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await.map_err(|e| io_err("write to Postgres", e))?;
            self.wbuf.clear();
        }
        self.io.flush().await.map_err(|e| io_err("write to Postgres", e))
    }

    /// A complete message from the buffer, if there is one.
    pub fn try_message(&mut self) -> Result<Option<(u8, Bytes)>, SourceError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(SourceError::fatal(format!("protocol error: message length {len} from the server")));
        }
        if self.rbuf.len() < 1 + len {
            self.rbuf.reserve(1 + len - self.rbuf.len());
            return Ok(None);
        }
        let mut m = self.rbuf.split_to(1 + len);
        let tag = m[0];
        m.advance(5);
        Ok(Some((tag, m.freeze())))
    }

    /// Ask the kernel to report the socket readable only once `bytes` are
    /// queued (TCP only; a no-op otherwise). While the stream is busy this
    /// turns one wake-up per message into one per `bytes`, which also spares
    /// the walsender the cost of waking us for every message it sends.
    pub fn set_read_low_water(&mut self, bytes: i32) {
        if let Some(fd) = self.tcp_fd {
            // SAFETY: fd is the live socket owned by `self.io`; the option value is a plain int.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVLOWAT,
                    &bytes as *const i32 as *const libc::c_void,
                    std::mem::size_of::<i32>() as libc::socklen_t,
                );
            }
        }
    }

    /// True when a complete message (or a malformed header, reported by the
    /// next read) is buffered.
    pub fn has_buffered_message(&self) -> bool {
        if self.rbuf.len() < 5 {
            return false;
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        !(4..=MAX_MESSAGE).contains(&len) || self.rbuf.len() > len
    }

    /// Read more bytes from the socket (cancel-safe).
    pub async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(1 << 20);
        }
        let n = self.io.read_buf(&mut self.rbuf).await.map_err(|e| io_err("read from Postgres", e))?;
        if n == 0 {
            return Err(SourceError::transient("Postgres closed the replication connection"));
        }
        Ok(())
    }

    async fn read_message(&mut self) -> Result<(u8, Bytes), SourceError> {
        loop {
            if let Some(m) = self.try_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Run a replication command or SQL query with the simple protocol;
    /// returns the rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'D' => {
                    let bad = || SourceError::fatal("protocol error: malformed DataRow");
                    if body.len() < 2 {
                        return Err(bad());
                    }
                    let n = body.get_u16();
                    let mut row = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        if body.len() < 4 {
                            return Err(bad());
                        }
                        let len = body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            if body.len() < len as usize {
                                return Err(bad());
                            }
                            let v = body.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(ServerError::parse(body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e.into_source_error(&format!(
                "`{}` failed",
                sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            ))),
            None => Ok(rows),
        }
    }

    /// Start `COPY ... TO STDOUT`; then call [`Self::copy_row`] until it returns None.
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'H' => return Ok(()),
                b'E' => {
                    let e = ServerError::parse(body);
                    self.drain_to_ready().await?;
                    return Err(e.into_source_error("COPY failed"));
                }
                b'N' => {}
                other => return Err(SourceError::fatal(format!("unexpected message {:?} after COPY", other as char))),
            }
        }
    }

    /// The next row of a `COPY ... TO STDOUT` (one CopyData message, with its
    /// trailing newline), or None at the end.
    pub async fn copy_row(&mut self) -> Result<Option<Bytes>, SourceError> {
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'd' => return Ok(Some(body)),
                b'c' | b'N' => {}
                b'C' => {
                    self.drain_to_ready().await?;
                    return Ok(None);
                }
                b'E' => {
                    let e = ServerError::parse(body);
                    self.drain_to_ready().await?;
                    return Err(e.into_source_error("COPY failed"));
                }
                other => return Err(SourceError::fatal(format!("unexpected message {:?} during COPY", other as char))),
            }
        }
    }

    async fn drain_to_ready(&mut self) -> Result<(), SourceError> {
        loop {
            let (tag, _) = self.read_message().await?;
            if tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// Issue `START_REPLICATION`; the connection then streams.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = ServerError::parse(body);
                    // Drain to ReadyForQuery is unnecessary: the caller drops the connection.
                    return Err(e.into_source_error("START_REPLICATION failed"));
                }
                b'N' => {}
                other => {
                    return Err(SourceError::fatal(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// Parse one streaming message that is already buffered.
    pub fn try_repl_message(&mut self) -> Result<Option<ReplMessage>, SourceError> {
        loop {
            let Some((tag, mut body)) = self.try_message()? else { return Ok(None) };
            match tag {
                b'd' => {
                    if body.is_empty() {
                        continue;
                    }
                    match body.get_u8() {
                        b'w' => {
                            if body.len() < 24 {
                                return Err(SourceError::fatal("protocol error: short XLogData message"));
                            }
                            let start = body.get_u64();
                            let _wal_end = body.get_u64();
                            let _ts = body.get_i64();
                            return Ok(Some(ReplMessage::XLogData { start, data: body }));
                        }
                        b'k' => {
                            if body.len() < 17 {
                                return Err(SourceError::fatal("protocol error: short keepalive message"));
                            }
                            let wal_end = body.get_u64();
                            let _ts = body.get_i64();
                            let reply = body.get_u8() == 1;
                            return Ok(Some(ReplMessage::Keepalive { wal_end, reply }));
                        }
                        _ => continue,
                    }
                }
                b'E' => {
                    let e = ServerError::parse(body);
                    return Err(e.into_source_error("replication stream failed"));
                }
                b'c' => return Err(SourceError::transient("the server ended the replication stream")),
                _ => continue,
            }
        }
    }

    /// Standby status update: `flush` is what Sluice has made durable.
    pub async fn send_status(&mut self, write: u64, flush: u64, reply: bool) -> Result<(), SourceError> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(write);
        payload.put_u64(flush);
        payload.put_u64(flush);
        payload.put_i64(pg_now());
        payload.put_u8(reply as u8);
        self.wbuf.put_u8(b'd');
        self.wbuf.put_u32(4 + payload.len() as u32);
        self.wbuf.extend_from_slice(&payload);
        self.flush().await
    }

    /// End the session politely.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
}
