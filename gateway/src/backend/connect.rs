//! Opening a backend connection: TCP, StartupMessage, authentication (cleartext, MD5 or
//! SCRAM-SHA-256, whichever the server asks for) and the startup messages up to ReadyForQuery.

use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::net::TcpStream;

use super::{Backend, BackendError, DbError};

/// Who connects to which database. The password is used for this handshake only.
pub struct ConnectParams<'a> {
    pub user: &'a str,
    pub password: &'a [u8],
    pub database: &'a str,
    /// Further startup parameters (`application_name`, `options`, settings). `client_encoding`
    /// is UTF8 unless given here.
    pub startup: &'a [(&'a str, &'a str)],
}

/// Connects to the backend at `addr` (`host:port`) and authenticates, all within `timeout`.
pub async fn connect(
    addr: &str,
    params: &ConnectParams<'_>,
    timeout: Duration,
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let handshake = async {
        let mut backend = open(
            addr,
            params.user,
            params.database,
            params.startup,
            max_message_bytes,
        )
        .await?;
        authenticate(&mut backend, params).await?;
        backend.finish_startup().await?;
        Ok(backend)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| BackendError::ConnectTimeout)?
}

/// [`open`], then wait for the server's first message, all within `timeout`. A server that
/// refuses the session before authentication (an ErrorResponse, such as `57P03` while it starts
/// or shuts down) fails here, so the caller can retry elsewhere before a client has seen any of
/// it; otherwise the message (the authentication request) stays buffered in the [`Backend`].
pub async fn open_within(
    timeout: Duration,
    addr: &str,
    user: &str,
    database: &str,
    startup: &[(&str, &str)],
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let opening = async {
        let mut backend = open(addr, user, database, startup, max_message_bytes).await?;
        backend.check_refusal().await?;
        Ok(backend)
    };
    tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| BackendError::ConnectTimeout)?
}

/// Opens a TCP connection to `addr` and sends the StartupMessage. Authentication is the
/// caller's: [`connect`] answers the server itself, a session may relay the exchange.
pub async fn open(
    addr: &str,
    user: &str,
    database: &str,
    startup: &[(&str, &str)],
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let mut backend = Backend::new(stream, peer, max_message_bytes);
    let mut params = vec![("user", user), ("database", database)];
    if !startup
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("client_encoding"))
    {
        params.push(("client_encoding", "UTF8"));
    }
    params.extend(
        startup
            .iter()
            .filter(|(name, _)| !matches!(*name, "user" | "database")),
    );
    frontend::startup_message(params, backend.write_buf())?;
    backend.flush().await?;
    Ok(backend)
}

async fn authenticate(
    backend: &mut Backend,
    params: &ConnectParams<'_>,
) -> Result<(), BackendError> {
    match backend.next_message().await? {
        Message::AuthenticationOk => return Ok(()),
        Message::AuthenticationCleartextPassword => {
            frontend::password_message(params.password, backend.write_buf())?;
        }
        Message::AuthenticationMd5Password(body) => {
            let hash = md5_hash(params.user.as_bytes(), params.password, body.salt());
            frontend::password_message(hash.as_bytes(), backend.write_buf())?;
        }
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            let mut scram_offered = false;
            while let Some(mechanism) = mechanisms.next()? {
                scram_offered |= mechanism == sasl::SCRAM_SHA_256;
            }
            if !scram_offered {
                return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
            }
            scram(backend, params.password).await?;
        }
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationGss
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSspi => {
            return Err(BackendError::UnsupportedAuth("Kerberos, GSS, SSPI or SCM"))
        }
        other => return Err(BackendError::unexpected(&other)),
    }
    backend.flush().await?;
    match backend.next_message().await? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(body) => Err(DbError::parse(&body)?.into()),
        other => Err(BackendError::unexpected(&other)),
    }
}

/// SCRAM-SHA-256 without channel binding (the backend link is plain TCP). On return the server's
/// signature has been verified, so a server that does not know the password cannot pretend to
/// accept it; AuthenticationOk is still to be read.
async fn scram(backend: &mut Backend, password: &[u8]) -> Result<(), BackendError> {
    let mut scram = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), backend.write_buf())?;
    backend.flush().await?;
    match backend.next_message().await? {
        Message::AuthenticationSaslContinue(body) => scram.update(body.data())?,
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    }
    frontend::sasl_response(scram.message(), backend.write_buf())?;
    backend.flush().await?;
    match backend.next_message().await? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    }
    Ok(())
}
