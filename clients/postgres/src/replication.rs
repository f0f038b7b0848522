//! Our own client of the Postgres wire protocol, for replication sessions
//! and for the snapshot's `COPY ... TO STDOUT`.
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
//! canonical text form; server errors are classified by SQLSTATE
//! ([`crate::error::classify_sqlstate`]).

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use sluice_core::config::TlsMode;
use sluice_core::error::{ClientError, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{connect_tcp, session_options, ConnInfo, Host};
use crate::error::classify_sqlstate;

/// SSLRequest, then the TLS handshake when the server agrees (libpq's
/// `sslmode` semantics; see [`crate::tls`]).
async fn negotiate_tls(
    mut s: tokio::net::TcpStream,
    host: &str,
    info: &ConnInfo,
) -> Result<Box<dyn Stream>, ClientError> {
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
                ClientError::new(ErrorKind::Fatal, format!("TLS handshake with Postgres at {info} failed: {e}"))
            })?;
            Ok(Box::new(tls))
        }
        _ if info.tls.mode == TlsMode::Prefer => Ok(Box::new(s)),
        _ => Err(ClientError::new(
            ErrorKind::Fatal,
            format!(
                "Postgres at {info} does not accept TLS connections, but {}.tls.mode asks for {:?}",
                info.field, info.tls.mode
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
    pub fn into_error(self, context: &str) -> ClientError {
        let mut m = format!("{context}: {}", self.message);
        if let Some(d) = &self.detail {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = &self.hint {
            m.push_str(&format!("; hint: {h}"));
        }
        ClientError::new(classify_sqlstate(&self.code), m)
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

fn io_err(context: &str, e: io::Error) -> ClientError {
    ClientError::transient(format!("{context}: {e}")).with_source(e)
}

/// Microseconds since 2000-01-01 (Postgres epoch).
pub fn pg_now() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_micros() as i64 - 946_684_800_000_000
}

impl ReplicationConn {
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConn, ClientError> {
        Self::open(info, true).await
    }

    /// An ordinary (non-replication) session on the same protocol client,
    /// used for the snapshot's `COPY`: rows are split out of one read buffer
    /// instead of travelling through tokio-postgres's per-message channel.
    pub async fn connect_plain(info: &ConnInfo) -> Result<ReplicationConn, ClientError> {
        Self::open(info, false).await
    }

    async fn open(info: &ConnInfo, replication: bool) -> Result<ReplicationConn, ClientError> {
        let mut tcp_fd = None;
        let io: Box<dyn Stream> = match &info.host {
            Host::Tcp(h) => {
                let fut = connect_tcp(h.as_str(), info.port);
                let s = tokio::time::timeout(info.connect_timeout, fut)
                    .await
                    .map_err(|_| ClientError::transient(format!("cannot connect to Postgres at {info}: timed out")))?
                    .map_err(|e| ClientError::transient(format!("cannot connect to Postgres at {info}: {e}")))?;
                s.set_nodelay(true).ok();
                tcp_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&s));
                negotiate_tls(s, h, info).await?
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", info.port));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| ClientError::transient(format!("cannot connect to Postgres at {info}: {e}")))?;
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

    async fn startup(&mut self, info: &ConnInfo, replication: bool) -> Result<(), ClientError> {
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
                        return Err(ClientError::fatal("protocol error: short authentication message"));
                    }
                    let code = body.get_i32();
                    let password = || {
                        info.password.clone().ok_or_else(|| {
                            ClientError::fatal(format!(
                                "Postgres at {info} asks for a password but {}.url has none (add it to the URL, e.g. via ${{PGPASSWORD}})",
                                info.field
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
                                return Err(ClientError::fatal("protocol error: short MD5 salt"));
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
                                return Err(ClientError::fatal(format!(
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
                            let s = scram.as_mut().ok_or_else(|| ClientError::fatal("unexpected SASL continue"))?;
                            s.update(&body)
                                .map_err(|e| ClientError::fatal(format!("SCRAM authentication failed: {e}")))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf).map_err(|e| io_err("auth", e))?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| ClientError::fatal("unexpected SASL final"))?;
                            s.finish(&body)
                                .map_err(|e| ClientError::fatal(format!("SCRAM authentication failed: {e}")))?;
                        }
                        other => {
                            return Err(ClientError::fatal(format!(
                                "unsupported authentication method {other} requested by {info}"
                            )))
                        }
                    }
                }
                b'E' => {
                    let e = ServerError::parse(body);
                    let hint = match e.code.as_str() {
                        "28P01" | "28000" => format!(
                            "; check the user and password in {}.url, and that pg_hba.conf allows replication \
                             connections for this user",
                            info.field
                        ),
                        "3D000" => format!("; check the database name in {}.url", info.field),
                        _ => String::new(),
                    };
                    return Err(ClientError::new(
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
                    return Err(ClientError::fatal(format!("unexpected message {:?} during startup", other as char)))
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await.map_err(|e| io_err("write to Postgres", e))?;
            self.wbuf.clear();
        }
        self.io.flush().await.map_err(|e| io_err("write to Postgres", e))
    }

    /// A complete message from the buffer, if there is one.
    pub fn try_message(&mut self) -> Result<Option<(u8, Bytes)>, ClientError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(ClientError::fatal(format!("protocol error: message length {len} from the server")));
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
    pub async fn fill(&mut self) -> Result<(), ClientError> {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(1 << 20);
        }
        let n = self.io.read_buf(&mut self.rbuf).await.map_err(|e| io_err("read from Postgres", e))?;
        if n == 0 {
            return Err(ClientError::transient("Postgres closed the replication connection"));
        }
        Ok(())
    }

    async fn read_message(&mut self) -> Result<(u8, Bytes), ClientError> {
        loop {
            if let Some(m) = self.try_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Run a replication command or SQL query with the simple protocol;
    /// returns the rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ClientError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            let (tag, mut body) = self.read_message().await?;
            match tag {
                b'D' => {
                    let bad = || ClientError::fatal("protocol error: malformed DataRow");
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
            Some(e) => {
                Err(e.into_error(&format!("`{}` failed", sql.split_whitespace().take(3).collect::<Vec<_>>().join(" "))))
            }
            None => Ok(rows),
        }
    }

    /// Start `COPY ... TO STDOUT`; then call [`Self::copy_row`] until it returns None.
    pub async fn copy_out(&mut self, sql: &str) -> Result<(), ClientError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'H' => return Ok(()),
                b'E' => {
                    let e = ServerError::parse(body);
                    self.drain_to_ready().await?;
                    return Err(e.into_error("COPY failed"));
                }
                b'N' => {}
                other => return Err(ClientError::fatal(format!("unexpected message {:?} after COPY", other as char))),
            }
        }
    }

    /// The next row of a `COPY ... TO STDOUT` (one CopyData message, with its
    /// trailing newline), or None at the end.
    pub async fn copy_row(&mut self) -> Result<Option<Bytes>, ClientError> {
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
                    return Err(e.into_error("COPY failed"));
                }
                other => return Err(ClientError::fatal(format!("unexpected message {:?} during COPY", other as char))),
            }
        }
    }

    async fn drain_to_ready(&mut self) -> Result<(), ClientError> {
        loop {
            let (tag, _) = self.read_message().await?;
            if tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// Issue `START_REPLICATION`; the connection then streams.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), ClientError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| io_err("query", e))?;
        self.flush().await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = ServerError::parse(body);
                    // Drain to ReadyForQuery is unnecessary: the caller drops the connection.
                    return Err(e.into_error("START_REPLICATION failed"));
                }
                b'N' => {}
                other => {
                    return Err(ClientError::fatal(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// Parse one streaming message that is already buffered.
    pub fn try_repl_message(&mut self) -> Result<Option<ReplMessage>, ClientError> {
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
                                return Err(ClientError::fatal("protocol error: short XLogData message"));
                            }
                            let start = body.get_u64();
                            let _wal_end = body.get_u64();
                            let _ts = body.get_i64();
                            return Ok(Some(ReplMessage::XLogData { start, data: body }));
                        }
                        b'k' => {
                            if body.len() < 17 {
                                return Err(ClientError::fatal("protocol error: short keepalive message"));
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
                    return Err(e.into_error("replication stream failed"));
                }
                b'c' => return Err(ClientError::transient("the server ended the replication stream")),
                _ => continue,
            }
        }
    }

    /// Standby status update: `flush` is what Sluice has made durable.
    pub async fn send_status(&mut self, write: u64, flush: u64, reply: bool) -> Result<(), ClientError> {
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
