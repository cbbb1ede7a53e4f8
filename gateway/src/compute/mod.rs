//! Connections from the gateway to backend Postgres servers: connect and authenticate, exchange
//! protocol messages with a bounded read buffer, reset a session, and cancel a running query.

mod claims;
mod connect;
mod db_error;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::base::error::{ErrorKind, ReportableError};
use crate::base::limits::Refused;
use crate::pgwire::frame::{self, FrameError};

pub use claims::{ClaimsError, ClaimsKey};
pub use connect::{connect, open_within, ClientKeySource, ConnectParams, Login};
pub use db_error::DbError;

/// Transaction status from the last ReadyForQuery: idle, in a transaction, or in a failed one.
pub const TX_IDLE: u8 = b'I';

/// An authenticated connection to a backend, between requests always at a ReadyForQuery boundary.
pub struct Backend {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    cancel: CancelKey,
    tx_status: u8,
    /// True from the moment a request is written until its ReadyForQuery has been read.
    in_flight: bool,
    /// No single backend message may be larger than this (bounds memory per connection).
    max_message_bytes: usize,
    /// The server's ParameterStatus values from startup, in arrival order.
    parameters: Vec<(String, String)>,
    /// Bytes written and messages read since the connection opened: whether a request reached
    /// the server, and whether the server answered it, is told by comparing them with a
    /// [`Progress`] taken before.
    written: u64,
    read: u64,
    /// Set once claims were handed to this backend ([`Backend::begin_claims`]).
    claims: Option<claims::Binding>,
}

/// How far a connection's conversation had got: see [`Backend::progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub bytes_written: u64,
    pub messages_read: u64,
}

/// What it takes to cancel this backend's running query from another connection.
#[derive(Clone, Copy, Debug)]
pub struct CancelKey {
    pub addr: SocketAddr,
    pub process_id: i32,
    pub secret_key: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("i/o error talking to the backend: {0}")]
    Io(#[from] io::Error),
    #[error("{}", .0.message)]
    Db(Box<DbError>),
    #[error("backend protocol error: {0}")]
    Protocol(String),
    #[error("backend asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(&'static str),
    #[error("backend message of {len} bytes exceeds the {max} byte limit")]
    MessageTooLarge { len: usize, max: usize },
    #[error("timed out connecting to the backend")]
    ConnectTimeout,
    /// A limit of the gateway's refused the login (a SCRAM iteration count above the cap, a
    /// full hashing queue): told to the client as it is, never retried.
    #[error(transparent)]
    Limited(Refused),
}

impl From<DbError> for BackendError {
    fn from(error: DbError) -> Self {
        BackendError::Db(Box::new(error))
    }
}

impl ReportableError for BackendError {
    fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Db(_) => ErrorKind::Postgres,
            BackendError::MessageTooLarge { .. } => ErrorKind::User,
            BackendError::Limited(_) => ErrorKind::RateLimit,
            _ => ErrorKind::Compute,
        }
    }
}

/// Neon's rule for connecting to a compute: only failures to reach it are worth another try
/// (it may be starting, or have moved, or be suspending). That includes Postgres refusing the
/// connection with `57P03` (cannot_connect_now: "the database system is starting up" / "is
/// shutting down"), which it sends before authentication, and a connection cut before the
/// login finished (a postmaster that exits for a suspend resets the connections still in its
/// accept queue): this is only ever asked about a connect, so nothing of the client's has
/// reached the backend yet. Authentication and other Postgres errors are final.
impl crate::base::retry::Retryable for BackendError {
    fn is_retryable(&self) -> bool {
        match self {
            BackendError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            BackendError::ConnectTimeout => true,
            BackendError::Db(db) => db.is_cannot_connect_now(),
            _ => false,
        }
    }
}

impl BackendError {
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        BackendError::Protocol(what.into())
    }

    pub(crate) fn unexpected(message: &Message) -> Self {
        BackendError::Protocol(format!("unexpected message {}", message_name(message)))
    }
}

impl Backend {
    fn new(stream: TcpStream, addr: SocketAddr, max_message_bytes: usize) -> Self {
        Backend {
            stream,
            read_buf: BytesMut::with_capacity(8 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            cancel: CancelKey {
                addr,
                process_id: 0,
                secret_key: 0,
            },
            tx_status: TX_IDLE,
            in_flight: false,
            max_message_bytes,
            parameters: Vec::new(),
            written: 0,
            read: 0,
            claims: None,
        }
    }

    /// Bytes written to and messages read from the server so far.
    pub fn progress(&self) -> Progress {
        Progress {
            bytes_written: self.written,
            messages_read: self.read,
        }
    }

    /// After the StartupMessage: waits for the server's first message and fails with its
    /// ErrorResponse if that is what it is (Postgres refuses with `57P03` while starting or
    /// shutting down, before any authentication). Anything else stays buffered for the caller.
    pub async fn check_refusal(&mut self) -> Result<(), BackendError> {
        self.fill_message().await?;
        if self.read_buf[0] != b'E' {
            return Ok(());
        }
        match self.read_message().await? {
            Message::ErrorResponse(body) => Err(DbError::parse(&body)?.into()),
            other => Err(BackendError::unexpected(&other)),
        }
    }

    /// Reads the rest of startup after AuthenticationOk: parameter values and the cancel key,
    /// up to the first ReadyForQuery. Notices are dropped.
    pub async fn finish_startup(&mut self) -> Result<(), BackendError> {
        loop {
            match self.read_message().await? {
                Message::ParameterStatus(body) => {
                    self.parameters
                        .push((body.name()?.to_owned(), body.value()?.to_owned()));
                }
                Message::BackendKeyData(body) => {
                    self.cancel.process_id = body.process_id();
                    self.cancel.secret_key = body.secret_key();
                }
                Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(body) => {
                    self.tx_status = body.status();
                    self.in_flight = false;
                    return Ok(());
                }
                Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
                other => return Err(BackendError::unexpected(&other)),
            }
        }
    }

    /// The server's ParameterStatus values reported during startup.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.parameters
    }

    /// Reads one whole message without parsing it (tag, length and body), for relaying.
    pub async fn read_frame(&mut self) -> Result<BytesMut, BackendError> {
        let total = self.fill_message().await?;
        self.read += 1;
        Ok(self.read_buf.split_to(total))
    }

    /// Writes bytes that are already framed messages, as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The socket and whatever was read past the last message, for byte-for-byte relaying.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.read_buf)
    }

    pub fn cancel_key(&self) -> CancelKey {
        self.cancel
    }

    pub fn tx_status(&self) -> u8 {
        self.tx_status
    }

    /// Whether a request was sent whose ReadyForQuery has not been read yet. Such a connection
    /// must be cancelled and closed, never reused.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Messages to send are appended here and written by [`Backend::flush`].
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    pub async fn flush(&mut self) -> Result<(), BackendError> {
        self.in_flight = true;
        // `write_all`, counting what the server may have received.
        while !self.write_buf.is_empty() {
            let n = self.stream.write(&self.write_buf).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.written += n as u64;
            self.write_buf.advance(n);
        }
        self.write_buf.clear();
        Ok(())
    }

    /// Reads the next message, skipping the asynchronous ones (notices, parameter status,
    /// notifications) that may arrive at any time.
    pub async fn next_message(&mut self) -> Result<Message, BackendError> {
        loop {
            match self.read_message().await? {
                Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => continue,
                Message::ReadyForQuery(body) => {
                    self.tx_status = body.status();
                    self.in_flight = false;
                    return Ok(Message::ReadyForQuery(body));
                }
                message => return Ok(message),
            }
        }
    }

    async fn read_message(&mut self) -> Result<Message, BackendError> {
        self.fill_message().await?;
        self.read += 1;
        Message::parse(&mut self.read_buf)?
            .ok_or_else(|| BackendError::protocol("incomplete message"))
    }

    /// Reads until the buffer holds one whole message and returns its length in bytes.
    async fn fill_message(&mut self) -> Result<usize, BackendError> {
        loop {
            if let Some(total) = frame::frame_length(&self.read_buf, self.max_message_bytes)? {
                if self.read_buf.len() >= total {
                    return Ok(total);
                }
                self.read_buf.reserve(total - self.read_buf.len());
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection",
                )
                .into());
            }
        }
    }

    /// Runs one simple-protocol statement whose result rows are not needed.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), BackendError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        self.finish_simple().await
    }

    /// Runs one simple-protocol statement of the gateway's own and returns its rows as text.
    pub async fn simple_query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        self.read_simple(|row| rows.push(row)).await?;
        Ok(rows)
    }

    /// Reads the replies of one simple Query up to its ReadyForQuery, returning its error if any.
    async fn finish_simple(&mut self) -> Result<(), BackendError> {
        self.read_simple(|_| {}).await
    }

    async fn read_simple(
        &mut self,
        mut on_row: impl FnMut(Vec<Option<String>>),
    ) -> Result<(), BackendError> {
        let mut error: Option<DbError> = None;
        loop {
            let message = match self.next_message().await {
                Ok(message) => message,
                // A FATAL is followed by the server closing the connection: report the FATAL.
                Err(e) => {
                    return Err(match error {
                        Some(fatal) if fatal.is_fatal() => fatal.into(),
                        _ => e,
                    })
                }
            };
            match message {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => error = Some(DbError::parse(&body)?),
                Message::DataRow(row) => {
                    let buf = row.buffer();
                    let values = row
                        .ranges()
                        .map(|range| {
                            Ok(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()))
                        })
                        .collect()?;
                    on_row(values);
                }
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                other => return Err(BackendError::unexpected(&other)),
            }
        }
        match error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Returns the session to a clean state for the next user of the pool: ends any transaction
    /// and discards session state (settings, prepared statements, temp tables, listeners, locks).
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        let rollback = self.tx_status != TX_IDLE;
        if rollback {
            frontend::query("ROLLBACK", &mut self.write_buf)?;
        }
        // DISCARD ALL cannot run inside a multi-statement string, so it is its own message. A
        // backend with claims keeps its counter's register (see [`claims`]).
        let discard = match self.claims {
            Some(_) => claims::RESET,
            None => "DISCARD ALL",
        };
        frontend::query(discard, &mut self.write_buf)?;
        self.flush().await?;
        if rollback {
            self.finish_simple().await?;
        }
        self.finish_simple().await
    }

    /// True when the connection can no longer be used: the server closed it, or sent something
    /// unsolicited (typically a FATAL error before closing). Never blocks.
    pub fn is_closed(&self) -> bool {
        if !self.read_buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Politely ends the session (best effort, for at most [`TERMINATE_TIMEOUT`]: a backend
    /// that stopped reading is just dropped) and closes the socket.
    pub async fn terminate(mut self) {
        self.write_buf.clear();
        frontend::terminate(&mut self.write_buf);
        let goodbye = async {
            let _ = self.stream.write_all(&self.write_buf).await;
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(TERMINATE_TIMEOUT, goodbye).await;
    }
}

/// How long [`Backend::terminate`] may take.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(2);

impl From<FrameError> for BackendError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::InvalidLength => BackendError::protocol("invalid message length"),
            FrameError::TooLarge { len, max } => BackendError::MessageTooLarge { len, max },
        }
    }
}

impl CancelKey {
    /// Sends a CancelRequest for this backend's running query over a new connection.
    pub async fn cancel(&self) -> io::Result<()> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let mut buf = BytesMut::with_capacity(16);
        frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
        stream.write_all(&buf).await?;
        // The server closes the connection once it has processed the request.
        let mut ignored = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut ignored)).await;
        Ok(())
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationMd5Password(_) => "AuthenticationMd5Password",
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationSasl(_) => "AuthenticationSasl",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSaslContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSaslFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::retry::Retryable;

    fn db(severity: &str, code: &str) -> BackendError {
        DbError {
            severity: severity.into(),
            code: code.into(),
            ..DbError::default()
        }
        .into()
    }

    #[test]
    fn connect_retry_rules() {
        let io = |kind: io::ErrorKind| BackendError::Io(io::Error::from(kind));
        // (error, worth connecting again after a wake)
        let cases = [
            (io(io::ErrorKind::ConnectionRefused), true),
            (io(io::ErrorKind::TimedOut), true),
            (BackendError::ConnectTimeout, true),
            // "the database system is starting up" / "is shutting down"
            (db("FATAL", "57P03"), true),
            // cut before the login finished (a postmaster exiting with connections queued)
            (io(io::ErrorKind::ConnectionReset), true),
            (io(io::ErrorKind::UnexpectedEof), true),
            (io(io::ErrorKind::PermissionDenied), false),
            (db("FATAL", "28P01"), false),
            (db("FATAL", "57P01"), false),
            (db("FATAL", "3D000"), false),
            (BackendError::protocol("x"), false),
            (
                BackendError::Limited(Refused::new(
                    crate::base::limits::Limit::ScramIterations,
                    "too many",
                )),
                false,
            ),
        ];
        for (error, retryable) in cases {
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
        }
    }

    #[test]
    fn server_going_away() {
        let check = |severity: &str, code: &str| match db(severity, code) {
            BackendError::Db(db) => db.is_server_going_away(),
            _ => unreachable!(),
        };
        assert!(check("FATAL", "57P01"));
        assert!(check("FATAL", "57P05"));
        assert!(!check("ERROR", "57P01"), "only a FATAL ends the session");
        assert!(
            !check("FATAL", "08P01"),
            "a protocol error is about what was sent"
        );
        assert!(!check("ERROR", "57014"), "a cancelled statement ran");
    }
}
