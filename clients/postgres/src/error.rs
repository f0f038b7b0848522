//! One classification of Postgres errors, for the source and the sink alike.
//!
//! Invariants:
//! - A server error is classified by its SQLSTATE alone
//!   ([`classify_sqlstate`]), never by its message text.
//! - An error without a SQLSTATE is classified by tokio-postgres's own kind
//!   of error (a lost or refused connection is transient; a value this side
//!   cannot encode or decode, bad credentials or a bad configuration are
//!   not), see [`classify`].
//! - Per-table ([`ErrorKind::Table`]) means the error is about the data of
//!   one row (SQLSTATE classes 22 and 23). A caller that cannot drop just
//!   that table's changes (a replica's target transaction is aborted by the
//!   error) treats it as fatal; see [`ErrorKind::or_fatal_for_table`].

use sluice_core::error::{ClientError, ErrorKind};

/// What to do about a server error with this SQLSTATE.
pub fn classify_sqlstate(code: &str) -> ErrorKind {
    match code {
        // Protocol violation: a bug on one side, which a retry repeats.
        "08P01" => ErrorKind::Fatal,
        // Connection exceptions: the session is gone or never opened.
        c if c.starts_with("08") => ErrorKind::Transient,
        // Administrator/crash shutdown, cannot connect now (recovery, start-up).
        "57P01" | "57P02" | "57P03" => ErrorKind::Transient,
        // Object in use: a slot still held by a walsender that is going away.
        "55006" => ErrorKind::Transient,
        // Too many connections.
        "53300" => ErrorKind::Transient,
        // Serialization failure, deadlock: the transaction can be run again.
        "40001" | "40P01" => ErrorKind::Transient,
        // Data exceptions and integrity violations: about one table's rows.
        c if c.starts_with("22") || c.starts_with("23") => ErrorKind::Table,
        // Invalid authorization, missing privilege, unknown object, purged
        // WAL, ...: a human must act.
        _ => ErrorKind::Fatal,
    }
}

/// What to do about an error of tokio-postgres.
pub fn classify(e: &tokio_postgres::Error) -> ErrorKind {
    if let Some(db) = e.as_db_error() {
        return classify_sqlstate(db.code().code());
    }
    if e.is_closed() {
        return ErrorKind::Transient;
    }
    classify_client_kind(&e.to_string())
}

/// tokio-postgres errors without a SQLSTATE, by the library's kind of error
/// (the fixed description its `Display` starts with; the library does not
/// expose the kind otherwise). Errors in talking to the server (I/O, a
/// refused connection, a timeout, a message cut short) are transient; a
/// value this side cannot encode or decode, bad credentials and a bad
/// configuration are fatal.
pub fn classify_client_kind(text: &str) -> ErrorKind {
    const FATAL: [&str; 8] = [
        "error serializing",
        "error deserializing",
        "invalid column",
        "query returned an unexpected number",
        "expected ",
        "authentication error",
        "invalid connection string",
        "invalid configuration",
    ];
    if FATAL.iter().any(|p| text.starts_with(p)) {
        ErrorKind::Fatal
    } else {
        ErrorKind::Transient
    }
}

/// A tokio-postgres error with what was being done: the server's message,
/// detail and hint when it sent one.
pub fn sql_error(context: &str, e: tokio_postgres::Error) -> ClientError {
    let kind = classify(&e);
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{context}: {}", db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                m.push_str(&format!("; hint: {h}"));
            }
            ClientError::new(kind, m)
        }
        None => ClientError::new(kind, context.to_string()).with_source(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        let cases = [
            ("08000", ErrorKind::Transient),
            ("08006", ErrorKind::Transient),
            ("08P01", ErrorKind::Fatal),
            ("57P01", ErrorKind::Transient),
            ("57P02", ErrorKind::Transient),
            ("57P03", ErrorKind::Transient),
            ("55006", ErrorKind::Transient),
            ("53300", ErrorKind::Transient),
            ("40001", ErrorKind::Transient),
            ("40P01", ErrorKind::Transient),
            ("22001", ErrorKind::Table),
            ("22P02", ErrorKind::Table),
            ("23502", ErrorKind::Table),
            ("23505", ErrorKind::Table),
            ("28000", ErrorKind::Fatal),
            ("28P01", ErrorKind::Fatal),
            ("3D000", ErrorKind::Fatal),
            ("42501", ErrorKind::Fatal),
            ("42P01", ErrorKind::Fatal),
            ("42704", ErrorKind::Fatal),
            ("55000", ErrorKind::Fatal),
            ("58P01", ErrorKind::Fatal),
            ("53100", ErrorKind::Fatal),
            ("XX000", ErrorKind::Fatal),
            ("", ErrorKind::Fatal),
        ];
        for (code, want) in cases {
            assert_eq!(classify_sqlstate(code), want, "{code}");
        }
    }

    #[test]
    fn errors_without_a_sqlstate() {
        for t in [
            "error communicating with the server: Connection reset by peer (os error 104)",
            "error connecting to server: Connection refused (os error 111)",
            "timeout waiting for server",
            "unexpected message from server",
            "error parsing response from server",
            "error performing TLS handshake: received corrupt message",
            "connection closed",
        ] {
            assert_eq!(classify_client_kind(t), ErrorKind::Transient, "{t}");
        }
        for t in [
            "error serializing parameter 3: value too large to transmit",
            "error deserializing column 0: invalid UTF-8",
            "authentication error: password missing",
            "invalid configuration: password missing",
            "invalid connection string: unexpected EOF",
            "query returned an unexpected number of rows",
        ] {
            assert_eq!(classify_client_kind(t), ErrorKind::Fatal, "{t}");
        }
    }

    #[test]
    fn per_table_can_be_made_fatal() {
        assert_eq!(ErrorKind::Table.or_fatal_for_table(), ErrorKind::Fatal);
        assert_eq!(ErrorKind::Transient.or_fatal_for_table(), ErrorKind::Transient);
    }
}
