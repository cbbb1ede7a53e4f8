//! Opening a backend connection: TCP, StartupMessage, authentication and the startup
//! messages up to ReadyForQuery.
//!
//! How the gateway logs in ([`Login`]):
//! - on a static route, with the client's password, by whatever method the server asks for
//!   (cleartext, MD5 or SCRAM-SHA-256; SCRAM only up to the gateway's iteration cap, its keys
//!   derived off the runtime's workers: [`ClientKeySource`]);
//! - on a route from the control plane, with SCRAM-SHA-256 only and the keys the client proved
//!   against the role's secret ([`ScramKeys`]): the computes always use SCRAM, so a server
//!   that asks for a cleartext or MD5 password is not one of them (say, a process bound to a
//!   suspended compute's port) and is refused before it learns anything; a server-first
//!   message with another salt or iteration count than the secret's is refused too, and the
//!   server's signature must verify (it proves the server holds the role's verifier).

use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;

use super::{Backend, BackendError, DbError};
use crate::pgwire::scram::{self, ClientKeys, ScramKeys};

/// Who connects to which database. The credentials are used for this handshake only.
pub struct ConnectParams<'a> {
    pub user: &'a str,
    pub database: &'a str,
    /// Further startup parameters (`application_name`, `options`, settings). `client_encoding`
    /// is UTF8 unless given here.
    pub startup: &'a [(&'a str, &'a str)],
    pub login: Login<'a>,
}

/// How to authenticate to the backend.
#[derive(Clone, Copy)]
pub enum Login<'a> {
    /// A static route: the client's password, for whatever the server asks; SCRAM client keys
    /// are derived (within the iteration cap) and remembered in `keys`.
    Password {
        password: &'a [u8],
        keys: &'a dyn ClientKeySource,
    },
    /// A route from the control plane: SCRAM-SHA-256 with keys proven against the role's
    /// secret, and nothing else.
    Scram(&'a ScramKeys),
}

/// Where a password login gets its SCRAM client keys (the PBKDF2 step): the auth layer's
/// cache, which rations hashing and refuses iteration counts over the cap.
#[async_trait::async_trait]
pub trait ClientKeySource: Send + Sync {
    async fn client_keys(
        &self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ClientKeys, BackendError>;
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
        Message::AuthenticationCleartextPassword => match params.login {
            Login::Password { password, .. } => {
                frontend::password_message(password, backend.write_buf())?;
            }
            Login::Scram(_) => return Err(BackendError::UnsupportedAuth(NOT_A_COMPUTE)),
        },
        Message::AuthenticationMd5Password(body) => match params.login {
            Login::Password { password, .. } => {
                let hash = md5_hash(params.user.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), backend.write_buf())?;
            }
            Login::Scram(_) => return Err(BackendError::UnsupportedAuth(NOT_A_COMPUTE)),
        },
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            let mut scram_offered = false;
            while let Some(mechanism) = mechanisms.next()? {
                scram_offered |= mechanism == sasl::SCRAM_SHA_256;
            }
            if !scram_offered {
                return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
            }
            scram(backend, params.login).await?;
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

/// Why a control-plane login refuses a cleartext or MD5 request.
const NOT_A_COMPUTE: &str =
    "a cleartext or MD5 password, from a server reached through the control plane";

/// SCRAM-SHA-256 without channel binding (the backend link is plain TCP), RFC 5802. On return
/// the server's signature has been verified, so a server that does not know the password cannot
/// pretend to accept it; AuthenticationOk is still to be read.
///
/// With a password, the PBKDF2 step (`ClientKey`, `ServerKey`) comes from
/// [`ClientKeySource`]: on the blocking pool, behind the hashing queue, and refused
/// at once ([`BackendError::Limited`]) when the server asks for more iterations than the cap
/// (a role's verifier is whatever its tenant set in SQL); a role that logged in before with the
/// same password costs a few hashes, not 4096 HMACs. With [`ScramKeys`], there is no PBKDF2 at
/// all, and only the secret's salt and iteration count are answered.
async fn scram(backend: &mut Backend, login: Login<'_>) -> Result<(), BackendError> {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut nonce = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce = base64.encode(nonce);
    // The user name is taken from the startup packet; Postgres ignores this one.
    let client_first_bare = format!("n=,r={nonce}");
    let client_first = format!("n,,{client_first_bare}");
    frontend::sasl_initial_response(
        sasl::SCRAM_SHA_256,
        client_first.as_bytes(),
        backend.write_buf(),
    )?;
    backend.flush().await?;
    let server_first = match backend.next_message().await? {
        Message::AuthenticationSaslContinue(body) => body.data().to_vec(),
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    };
    let invalid = |what| {
        BackendError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid SCRAM server-first-message: {what}"),
        ))
    };
    let server_first = scram::ServerFirst::parse(&nonce, &server_first).map_err(invalid)?;
    let (salt, iterations) = (server_first.salt(), server_first.iterations());
    let keys = match login {
        Login::Password { password, keys } => keys.client_keys(password, salt, iterations).await?,
        Login::Scram(keys) => keys
            .for_server(salt, iterations)
            .ok_or_else(|| invalid("salt or iteration count differ from the role's secret"))?,
    };
    let (client_final, expected) = server_first.client_final(&client_first_bare, &keys);
    frontend::sasl_response(client_final.as_bytes(), backend.write_buf())?;
    backend.flush().await?;
    let server_final = match backend.next_message().await? {
        Message::AuthenticationSaslFinal(body) => body.data().to_vec(),
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    };
    let verifier = std::str::from_utf8(&server_final)
        .ok()
        .and_then(|text| text.strip_prefix("v="))
        .map(|v| v.split(',').next().unwrap_or(v))
        .and_then(|v| base64.decode(v).ok())
        .ok_or_else(|| {
            BackendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid SCRAM server-final-message",
            ))
        })?;
    if !bool::from(verifier.ct_eq(&expected[..])) {
        return Err(BackendError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SCRAM server signature mismatch",
        )));
    }
    Ok(())
}
