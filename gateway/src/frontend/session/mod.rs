//! Postgres sessions: the wire protocol from clients on plain TCP, TLS (after SSLRequest or
//! direct) and WebSocket, handshaken by the gateway and then relayed byte for byte to one
//! backend connection of the session's own.
//!
//! Handshake, within `handshake_timeout` of the first byte:
//! 1. Startup packets: SSLRequest is answered `S` + TLS on plain TCP when a certificate is
//!    configured, `N` otherwise; GSSENCRequest `N`; a CancelRequest is looked up in the
//!    [`crate::proxy::cancel::Cancels`] and forwarded (to the session's backend, or to the
//!    peer gateway whose key it is), then the connection closes.
//! 2. The endpoint ([`credentials`]): host (WebSocket address, Host, SNI), `options`, password
//!    hack, default.
//! 3. Authentication, before the endpoint is resolved, woken or connected to. What the client
//!    proves its password against ([`crate::auth::Verifier`]): on a static route, Postgres;
//!    otherwise the role's SCRAM secret from the control plane, or a mock secret when the
//!    endpoint or role is unknown (same messages, same work, same FATAL `28P01` as a wrong
//!    password, and nothing woken or opened). A control plane that cannot be asked, with no
//!    secret cached, is FATAL `57P03`: the client is never let through to a backend unchecked.
//!    Roles created in SQL have no secret in the control plane and cannot log in through the
//!    gateway. How the client proves it:
//!    - WebSocket clients, and TLS clients whose endpoint is still unknown (the password
//!      hack), send a cleartext password (asked for with AuthenticationCleartextPassword);
//!      it is checked against the secret ([`crate::auth::PasswordCache::check`], PBKDF2 on
//!      the blocking pool), and the gateway logs in to the backend with the keys the match
//!      gives (SCRAM). On a static route the password is used for whatever the backend asks.
//!    - Plain TCP and TLS clients with a known endpoint run SCRAM-SHA-256 with the gateway
//!      itself ([`crate::pgwire::scram::ScramServer`]; `SCRAM-SHA-256` offered, no `-PLUS`):
//!      the proof gives the ClientKey, with which (and the secret's ServerKey) the gateway logs
//!      in to the backend, Postgres or PgBouncer for `-pooler` (both hold the same verifier).
//!      The SASLFinal with the server's signature is held until the backend accepted the
//!      login; a refusal ends the exchange with the same FATAL `28P01` as a wrong password.
//!      On a static route the backend's own challenge is relayed instead, message by message,
//!      so Postgres judges the password; a password never crosses plain TCP either way.
//!
//!    The endpoint's address then comes from the route table (woken if needed; `57P03` when
//!    the control plane cannot provide it), and a cached address that refuses is replaced by
//!    a new wake ([`crate::control_plane::routes::RouteTable::connect`]).
//! 4. The client hears AuthenticationOk, the backend's ParameterStatus values, a
//!    gateway-issued BackendKeyData and exactly one ReadyForQuery. Bytes the client sent ahead
//!    (the driver pipelines startup, password and first query) go to the backend only then.
//! 5. [`relay`] copies both ways until either side closes, the session idles out, or a drain
//!    runs out of time.

pub mod credentials;
mod jwt;
pub mod relay;

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::JwtError;
use crate::auth::Verifier;
use crate::base::endpoint::{EndpointId, Password};
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::host;
use crate::base::limits::{EndpointSlot, Limit, Refused};
use crate::compute::{Backend, BackendError, ConnectParams, DbError, Login};
use crate::control_plane::activity::ActivityGuard;
use crate::control_plane::client::ControlPlaneError;
use crate::control_plane::routes::{ConnectError, Route};
use crate::frontend::state::AppState;
use crate::obs::labels::{Label, ScramProof, SessionOutcome, Transport as TransportLabel};
use crate::pgwire::client::{ClientError, ClientStream};
use crate::pgwire::frame::{self, FrameError};
use crate::pgwire::scram::{Proven, ScramError, ScramSecret, ScramServer};
use crate::pgwire::startup::{self, Startup, StartupError, StartupPacket};
use crate::proxy::login::{Checked, Connected, LoginError};
use credentials::CredentialsError;
use relay::{Counters, Direction, RelayEnd, RelayLimits};

/// Password and SASL messages larger than this are refused.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;
/// SSLRequest/GSSENCRequest rounds before a client must send its startup.
const MAX_NEGOTIATIONS: usize = 4;

/// How the client reached the gateway.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp,
    Tls {
        sni: Option<String>,
    },
    WebSocket {
        tls: bool,
        /// The `address` query parameter (`host:port`), as `neonConfig.wsProxy` strings send it.
        address: Option<String>,
        host: Option<String>,
        sni: Option<String>,
        /// What the client may send until the session is ready.
        handshake: crate::frontend::handshake::HandshakeBudget,
    },
}

impl Transport {
    pub fn label(&self) -> &'static str {
        self.metric_label().label()
    }

    /// The `transport` label of the session metrics.
    pub fn metric_label(&self) -> TransportLabel {
        match self {
            Transport::Tcp => TransportLabel::Tcp,
            Transport::Tls { .. } => TransportLabel::Tls,
            Transport::WebSocket { tls: false, .. } => TransportLabel::Ws,
            Transport::WebSocket { tls: true, .. } => TransportLabel::Wss,
        }
    }

    /// Whether the client's bytes are encrypted (TLS, or a WebSocket over TLS).
    fn encrypted(&self) -> bool {
        match self {
            Transport::Tcp => false,
            Transport::Tls { .. } => true,
            Transport::WebSocket { tls, .. } => *tls,
        }
    }

    /// What the host the client dialled names (an endpoint, perhaps one of its databases).
    fn host_target(&self, domains: &[String]) -> Result<Option<host::Target>, CredentialsError> {
        let by_name = |name: &Option<String>| {
            name.as_deref()
                .and_then(|n| host::from_server_name(n, domains))
        };
        match self {
            Transport::Tcp => Ok(None),
            Transport::Tls { sni } => Ok(by_name(sni)),
            Transport::WebSocket {
                address, host, sni, ..
            } => match address {
                Some(address) => Ok(host::from_connection_host(address, domains)?),
                None => Ok(by_name(host).or_else(|| by_name(sni))),
            },
        }
    }
}

/// What a session can fail with before or while relaying. Each case says what the client is
/// told (a FATAL ErrorResponse) and how it is classified.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
    /// Wrong password, unknown role, or unknown endpoint: deliberately indistinguishable.
    #[error("password authentication failed for user '{user}'")]
    AuthFailed { user: String },
    #[error("received unencrypted data after SSL request")]
    UnencryptedData,
    #[error("{0}")]
    Protocol(String),
    /// A malformed SCRAM message (a wrong proof is `AuthFailed`).
    #[error(transparent)]
    Scram(#[from] ScramError),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    #[error(
        "WebSocket text frames are not supported: send the Postgres protocol in binary frames"
    )]
    TextFrame,
    #[error("canceling authentication due to timeout")]
    HandshakeTimeout,
    #[error("terminating connection due to idle-session timeout")]
    Idle,
    #[error("terminating connection due to administrator command")]
    Shutdown,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("the client closed the connection")]
    ClientGone,
    #[error("i/o error on the client connection: {0}")]
    Io(io::Error),
    /// Postgres refused the session after authentication (no such database, too many
    /// connections): passed on as Postgres said it.
    #[error("{}", .0.message)]
    Postgres(Box<DbError>),
    /// The backend could not be reached or failed. The cause is logged, not shown.
    #[error("could not connect to the database")]
    Backend(#[source] BackendError),
    /// The control plane could not give an address (down, refused, or the endpoint did not
    /// wake in time). Worth retrying; the cause is logged, not shown.
    #[error("{}", crate::control_plane::client::unavailable(.0))]
    Unavailable(#[source] Arc<ControlPlaneError>),
    /// A limit protecting the gateway or other tenants ([`crate::base::limits`]).
    #[error(transparent)]
    Limited(#[from] Refused),
    /// The password was taken as a token and is not valid, whatever the reason (logged).
    #[error(transparent)]
    Jwt(JwtError),
    #[error("role '{role}' may not log in with a JWT on this endpoint")]
    JwtRoleNotAllowed { role: String },
    #[error("could not pass the token's claims to the database")]
    ClaimsRefused,
    /// The session's token expired: the session ends with it.
    #[error("terminating connection because its JWT expired")]
    JwtExpired,
}

impl From<LoginError> for SessionError {
    fn from(error: LoginError) -> Self {
        match error {
            LoginError::AuthFailed { user } => SessionError::AuthFailed { user },
            LoginError::Unavailable(e) => SessionError::Unavailable(e),
            LoginError::Limited(refused) => SessionError::Limited(refused),
            LoginError::TooManyConnections => SessionError::Limited(Refused::new(
                Limit::EndpointConnections,
                "too many connections to this endpoint; please try again later",
            )),
            LoginError::Postgres(db) => SessionError::Postgres(db),
            LoginError::Backend(e) => SessionError::Backend(e),
            LoginError::Jwt(e) => SessionError::Jwt(e),
            LoginError::JwtRoleNotAllowed { role } => SessionError::JwtRoleNotAllowed { role },
            LoginError::ClaimsRefused => SessionError::ClaimsRefused,
        }
    }
}

impl From<ClientError> for SessionError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Closed => SessionError::ClientGone,
            ClientError::Io(e) => e.into(),
            ClientError::Startup(e) => SessionError::Startup(e),
            ClientError::Frame(FrameError::InvalidLength) => {
                SessionError::Protocol("invalid message length".into())
            }
            ClientError::Frame(FrameError::TooLarge { len, max }) => {
                SessionError::MessageTooLarge { len, max }
            }
        }
    }
}

impl From<io::Error> for SessionError {
    fn from(error: io::Error) -> Self {
        if crate::pgwire::ws::is_text_frame(&error) {
            return SessionError::TextFrame;
        }
        if crate::frontend::handshake::is_handshake_overrun(&error) {
            return SessionError::Limited(Refused::new(
                Limit::HandshakeMessageBytes,
                "too much data is waiting for authentication on this gateway; please try again later",
            ));
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => SessionError::ClientGone,
            _ => SessionError::Io(error),
        }
    }
}

impl ReportableError for SessionError {
    fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Startup(_)
            | SessionError::Credentials(_)
            | SessionError::MissingUser
            | SessionError::AuthFailed { .. }
            | SessionError::UnencryptedData
            | SessionError::Protocol(_)
            | SessionError::Scram(_)
            | SessionError::MessageTooLarge { .. }
            | SessionError::TextFrame
            | SessionError::HandshakeTimeout
            | SessionError::Idle
            | SessionError::Shutdown
            | SessionError::JwtRoleNotAllowed { .. }
            | SessionError::JwtExpired
            | SessionError::Tls(_) => ErrorKind::User,
            SessionError::Jwt(e) => e.kind(),
            SessionError::ClaimsRefused => ErrorKind::Compute,
            SessionError::ClientGone | SessionError::Io(_) => ErrorKind::ClientDisconnect,
            SessionError::Postgres(_) => ErrorKind::Postgres,
            SessionError::Backend(e) => e.kind(),
            SessionError::Unavailable(_) => ErrorKind::ControlPlane,
            SessionError::Limited(_) => ErrorKind::RateLimit,
        }
    }
}

impl SessionError {
    /// The SQLSTATE and hint the client is told, or `None` when it cannot be told anything.
    fn client_code(&self) -> Option<(&str, Option<&str>)> {
        Some(match self {
            SessionError::Startup(StartupError::Protocol { .. }) => ("0A000", None),
            SessionError::Startup(_)
            | SessionError::UnencryptedData
            | SessionError::Protocol(_)
            | SessionError::Scram(_)
            | SessionError::MessageTooLarge { .. }
            | SessionError::TextFrame => ("08P01", None),
            SessionError::Credentials(_) | SessionError::MissingUser => ("28000", None),
            SessionError::AuthFailed { .. } | SessionError::Jwt(_) => ("28P01", None),
            SessionError::JwtRoleNotAllowed { .. } | SessionError::JwtExpired => ("28000", None),
            SessionError::ClaimsRefused => ("08001", None),
            SessionError::HandshakeTimeout => ("08006", None),
            SessionError::Idle => ("57P05", None),
            SessionError::Shutdown => ("57P01", None),
            SessionError::Postgres(db) => (db.code.as_str(), db.hint.as_deref()),
            SessionError::Backend(_) => ("08001", None),
            // cannot_connect_now: what Postgres says while it starts; clients retry it.
            SessionError::Unavailable(_) => ("57P03", None),
            SessionError::Limited(refused) => (refused.sqlstate(), None),
            SessionError::Tls(_) | SessionError::ClientGone | SessionError::Io(_) => return None,
        })
    }
}

/// A Postgres connection on the public port (its first byte was that of a startup packet).
pub async fn serve_tcp(stream: TcpStream, state: Arc<AppState>) {
    let deadline = Instant::now() + state.sessions.handshake_timeout;
    let peer = stream
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let mut client = ClientStream::new(stream);
    let tls = state.tls.as_ref();
    let first = timeout_at(deadline, first_packet(&mut client, tls.is_some()))
        .await
        .unwrap_or_else(|_| startup_timed_out(&state));
    match (first, tls) {
        (Ok(StartupPacket::SslRequest), Some(tls)) => {
            // Anything sent after SSLRequest but before our answer could be injected by a
            // man in the middle; Postgres refuses it too (CVE-2021-23222).
            if client.buffered() > 0 {
                return fail(
                    client,
                    &Transport::Tcp,
                    SessionError::UnencryptedData,
                    &state,
                )
                .await;
            }
            client.write_buf().put_u8(b'S');
            if let Err(e) = client.flush().await {
                return fail(client, &Transport::Tcp, e.into(), &state).await;
            }
            let (tcp, _) = client.into_parts();
            match timeout_at(deadline, tls.acceptor().accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let sni = stream.get_ref().1.server_name().map(str::to_owned);
                    let transport = Transport::Tls { sni };
                    run(ClientStream::new(stream), transport, peer, deadline, &state).await;
                }
                Ok(Err(e)) => record(&Transport::Tcp, &SessionError::Tls(e), &state),
                Err(_) => record(&Transport::Tcp, &SessionError::HandshakeTimeout, &state),
            }
        }
        (first, _) => proceed(client, first, Transport::Tcp, peer, deadline, &state).await,
    }
}

/// A session on a stream that is already set up: direct TLS, or a WebSocket. `ahead` holds
/// bytes already read from it while telling protocols apart; `peer` is the client's address.
pub async fn serve_stream<S>(
    io: S,
    ahead: &[u8],
    transport: Transport,
    peer: IpAddr,
    state: Arc<AppState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = Instant::now() + state.sessions.handshake_timeout;
    let mut client = ClientStream::new(io);
    client.push_ahead(ahead);
    run(client, transport, peer, deadline, &state).await;
}

async fn run<S>(
    mut client: ClientStream<S>,
    transport: Transport,
    peer: IpAddr,
    deadline: Instant,
    state: &Arc<AppState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let first = timeout_at(deadline, first_packet(&mut client, false))
        .await
        .unwrap_or_else(|_| startup_timed_out(state));
    proceed(client, first, transport, peer, deadline, state).await;
}

/// No startup packet within the handshake timeout: the first-request deadline.
fn startup_timed_out(state: &AppState) -> Result<StartupPacket, SessionError> {
    state.metrics.limit_hit(Limit::FirstRequestTimeout);
    Err(SessionError::HandshakeTimeout)
}

/// Reads startup packets, refusing encryption requests (`N`) except an SSLRequest the caller
/// will accept, until a StartupMessage or CancelRequest arrives.
async fn first_packet<S>(
    client: &mut ClientStream<S>,
    accept_ssl: bool,
) -> Result<StartupPacket, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_NEGOTIATIONS {
        match client.read_startup().await? {
            StartupPacket::SslRequest if accept_ssl => return Ok(StartupPacket::SslRequest),
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.write_buf().put_u8(b'N');
                client.flush().await?;
            }
            other => return Ok(other),
        }
    }
    Err(SessionError::Protocol(
        "too many encryption requests before the startup packet".into(),
    ))
}

async fn proceed<S>(
    mut client: ClientStream<S>,
    first: Result<StartupPacket, SessionError>,
    transport: Transport,
    peer: IpAddr,
    deadline: Instant,
    state: &Arc<AppState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let startup = match first {
        Ok(StartupPacket::Startup(startup)) => startup,
        Ok(StartupPacket::Cancel {
            process_id,
            secret_key,
        }) => {
            // Here, or on the peer gateway whose key it is (see `proxy::cancel`).
            state.cancels.cancel(process_id, secret_key, peer).await;
            state
                .metrics
                .sessions
                .inc(transport.metric_label(), SessionOutcome::CancelRequest);
            return client.close().await;
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            let error = SessionError::Protocol("unexpected encryption request".into());
            return fail(client, &transport, error, state).await;
        }
        Err(e) => return fail(client, &transport, e, state).await,
    };
    // Boxed, and freed once done: the session's task then only holds what the relay needs.
    let handshake = Box::pin(handshake(&mut client, &startup, &transport, state));
    match timeout_at(deadline, handshake).await {
        Ok(Ok(ready)) => {
            if let Transport::WebSocket { handshake, .. } = &transport {
                handshake.lift();
            }
            relay_session(client, ready, &transport, state).await
        }
        Ok(Err(e)) => fail(client, &transport, e, state).await,
        Err(_) => fail(client, &transport, SessionError::HandshakeTimeout, state).await,
    }
}

/// An authenticated backend, ready for the relay.
struct Ready {
    backend: Backend,
    endpoint: EndpointId,
    /// Counts the session as open on its endpoint until the relay ends.
    activity: ActivityGuard,
    /// The session's place under its endpoint's limits, held until the relay ends.
    admitted: EndpointSlot,
    /// A session logged in with a token ends when the token expires.
    expires_in: Option<std::time::Duration>,
}

impl Ready {
    fn new(endpoint: EndpointId, connected: Connected) -> Self {
        Ready {
            backend: connected.backend,
            endpoint,
            activity: connected.activity,
            admitted: connected.admitted,
            expires_in: None,
        }
    }
}

/// What the client's startup packet asks for.
struct Requested<'a> {
    user: &'a str,
    /// The startup packet's, unless the host named one (`<id>--<database>`).
    database: Cow<'a, str>,
    /// The endpoint the host name, SNI or `options` named, if any.
    named: Option<EndpointId>,
    /// Every other parameter, passed on to Postgres as the client set it.
    forward: Vec<(&'a str, &'a str)>,
}

/// Reads what the startup packet asks for; answers NegotiateProtocolVersion if needed.
fn requested<'a, S>(
    client: &mut ClientStream<S>,
    startup: &'a Startup,
    options: &'a mut String,
    transport: &Transport,
    state: &AppState,
) -> Result<Requested<'a>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unsupported = startup.protocol_options();
    if startup.minor_version > 0 || !unsupported.is_empty() {
        startup::negotiate_protocol_version(client.write_buf(), &unsupported);
    }
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or(SessionError::MissingUser)?;
    let (option_endpoint, rest) =
        credentials::split_options(startup.get("options").unwrap_or_default())?;
    *options = rest;
    let target = transport.host_target(&state.sessions.domains)?;
    let database = match target.as_ref().and_then(|t| t.database.clone()) {
        Some(database) => Cow::Owned(database),
        None => Cow::Borrowed(
            startup
                .get("database")
                .filter(|d| !d.is_empty())
                .unwrap_or(user),
        ),
    };
    let named = credentials::reconcile(target.map(|t| t.endpoint), option_endpoint)?;
    // Everything else the client set reaches Postgres as it would directly.
    let mut forward: Vec<(&str, &str)> = startup
        .params
        .iter()
        .filter(|(name, _)| {
            !matches!(name.as_str(), "user" | "database" | "options") && !name.starts_with("_pq_.")
        })
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if !options.is_empty() {
        forward.push(("options", options.as_str()));
    }
    Ok(Requested {
        user,
        database,
        named,
        forward,
    })
}

/// A Postgres connection on the public port (its first byte was that of a startup packet).
async fn handshake<S>(
    client: &mut ClientStream<S>,
    startup: &Startup,
    transport: &Transport,
    state: &AppState,
) -> Result<Ready, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut options = String::new();
    let requested = requested(client, startup, &mut options, transport, state)?;
    if state.require_tls && !transport.encrypted() {
        return Err(SessionError::Limited(Refused::new(
            Limit::TlsRequired,
            "this gateway requires TLS: connect with sslmode=require (or wss://)",
        )));
    }
    let cleartext = match transport {
        Transport::WebSocket { .. } => true,
        Transport::Tls { .. } => requested.named.is_none(),
        Transport::Tcp => false,
    };
    if cleartext {
        return cleartext_login(client, requested, state).await;
    }
    let endpoint = requested
        .named
        .clone()
        .unwrap_or_else(|| state.default_endpoint.clone());
    // A JWT role's password is a token: asked for in cleartext, as Postgres asks for one
    // under `password` authentication.
    if jwt::is_jwt_role(state, &endpoint, requested.user).await {
        return cleartext_login(client, requested, state).await;
    }
    let verifier = state.login().verifier(&endpoint, requested.user).await?;
    match &verifier {
        Verifier::Postgres => relayed_login(client, requested, endpoint, state).await,
        Verifier::Secret(secret) | Verifier::Mock(secret) => {
            let real = matches!(verifier, Verifier::Secret(_));
            scram_login(client, requested, endpoint, secret, real, state).await
        }
    }
}

/// Asks for the password in cleartext (WebSocket clients, and TLS clients whose endpoint is
/// not in the host name: the endpoint may come with the password, `endpoint=<id>;<password>`)
/// and logs in with it, checked as SQL over HTTP checks it.
async fn cleartext_login<S>(
    client: &mut ClientStream<S>,
    requested: Requested<'_>,
    state: &AppState,
) -> Result<Ready, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    startup::authentication_cleartext_password(client.write_buf());
    client.flush().await?;
    let body = read_auth_message(client).await?;
    let password = startup::password(&body)
        .ok_or_else(|| SessionError::Protocol("invalid password packet".into()))?;
    let (endpoint, password) = match requested.named.clone() {
        Some(endpoint) => (endpoint, password),
        None => credentials::password_hack(password)
            .unwrap_or_else(|| (state.default_endpoint.clone(), password)),
    };
    if jwt::looks_like_jwt(password) && jwt::is_jwt_role(state, &endpoint, requested.user).await {
        return jwt::login(&requested, &endpoint, password, state).await;
    }
    let login = state.login();
    let proof = Password::new(password.to_vec());
    let checked = login
        .check_password(&endpoint, requested.user, &proof)
        .await?;
    let backend_login = match &checked {
        Checked::Proven(keys) => Login::Scram(keys),
        Checked::Unchecked => Login::Password {
            password,
            keys: state.pool.passwords(),
        },
    };
    let params = ConnectParams {
        user: requested.user,
        database: &requested.database,
        startup: &requested.forward,
        login: backend_login,
    };
    let connected = login
        .connect(&endpoint, &params, state.sessions.max_message_bytes)
        .await?;
    Ok(Ready::new(endpoint, connected))
}

/// A static route over TCP/TLS: Postgres asks for the password itself, the client answers.
async fn relayed_login<S>(
    client: &mut ClientStream<S>,
    requested: Requested<'_>,
    endpoint: EndpointId,
    state: &AppState,
) -> Result<Ready, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let login = state.login();
    let route = login.route(&endpoint, requested.user).await?;
    let activity = state.activity.session(&endpoint);
    let backend = relay_authentication(client, state, route, &requested).await?;
    state.usage.endpoint(&endpoint).add_connection();
    // Postgres judged the password: only now is the client known.
    let admitted = login.admit(&endpoint)?;
    Ok(Ready::new(
        endpoint,
        Connected {
            backend,
            activity,
            admitted,
        },
    ))
}

/// SCRAM with the client against the role's secret (or a mock one), then the backend login
/// with the keys the proof gave.
async fn scram_login<S>(
    client: &mut ClientStream<S>,
    requested: Requested<'_>,
    endpoint: EndpointId,
    secret: &Arc<ScramSecret>,
    real: bool,
    state: &AppState,
) -> Result<Ready, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let proven = scram_exchange(client, secret, real, requested.user, state).await?;
    let params = ConnectParams {
        user: requested.user,
        database: &requested.database,
        startup: &requested.forward,
        login: Login::Scram(&proven.keys),
    };
    let connected = state
        .login()
        .connect(&endpoint, &params, state.sessions.max_message_bytes)
        .await?;
    // Only now that the backend accepted the keys does the client hear that the gateway
    // knows its password; AuthenticationOk follows in the relay's start.
    startup::authentication_sasl_final(client.write_buf(), proven.server_final.as_bytes());
    Ok(Ready::new(endpoint, connected))
}

/// The server side of SCRAM-SHA-256 against `secret`, up to the client's proof: the same
/// messages and the same work for a real secret and a mock one (`real` false), whose proofs
/// are always refused. A proof that does not hold is a wrong password; a malformed message a
/// protocol violation (as Postgres treats both).
async fn scram_exchange<S>(
    client: &mut ClientStream<S>,
    secret: &Arc<ScramSecret>,
    real: bool,
    user: &str,
    state: &AppState,
) -> Result<Proven, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use base64::Engine;
    startup::authentication_sasl(client.write_buf(), &[SCRAM_SHA_256]);
    client.flush().await?;
    let body = read_auth_message(client).await?;
    let (mechanism, client_first) = startup::sasl_initial_response(&body)
        .ok_or_else(|| SessionError::Protocol("malformed SASL initial response".into()))?;
    if mechanism != SCRAM_SHA_256 {
        return Err(SessionError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    // As Postgres: 18 random bytes, base64.
    let mut nonce = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    let server = ScramServer::start(secret.clone(), client_first, &nonce)?;
    startup::authentication_sasl_continue(client.write_buf(), server.server_first().as_bytes());
    client.flush().await?;
    let client_final = read_auth_message(client).await?;
    let proven = server.finish(&client_final)?;
    let outcome = match (&proven, real) {
        (_, false) => ScramProof::Mock,
        (Some(_), true) => ScramProof::Match,
        (None, true) => ScramProof::Mismatch,
    };
    state.metrics.scram_proofs.inc(outcome);
    match proven {
        Some(proven) if real => Ok(proven),
        _ => Err(SessionError::AuthFailed {
            user: user.to_owned(),
        }),
    }
}

/// The only SASL mechanism the gateway offers (no `-PLUS`: no channel binding).
const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The body of the client's next PasswordMessage (which also carries SASL responses).
async fn read_auth_message<S>(client: &mut ClientStream<S>) -> Result<BytesMut, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match client.read_message(MAX_AUTH_MESSAGE).await? {
        (b'p', body) => Ok(body),
        (tag, _) => Err(SessionError::Protocol(format!(
            "expected password response, got message type {}",
            char::from(tag).escape_default()
        ))),
    }
}

/// Opens the backend connection and lets the client answer the backend's own authentication
/// challenge (SCRAM-SHA-256 normally), message by message.
async fn relay_authentication<S>(
    client: &mut ClientStream<S>,
    state: &AppState,
    route: Route,
    requested: &Requested<'_>,
) -> Result<Backend, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (user, database, forward) = (requested.user, &*requested.database, &requested.forward);
    let failed = |e| SessionError::from(LoginError::from_backend(e, user));
    let timeout = state.pool.config().connect_timeout;
    let max_message_bytes = state.sessions.max_message_bytes;
    // Opening is TCP, the StartupMessage and the server's first answer: a refused or
    // timed-out connect, or a `57P03` refusal (a compute stopping or starting), at a cached
    // address wakes the endpoint again, before the client has seen any challenge.
    let started = Instant::now();
    let opened = state
        .routes
        .connect(route, |address| async move {
            crate::compute::open_within(
                timeout,
                &address,
                user,
                database,
                forward,
                max_message_bytes,
            )
            .await
        })
        .await;
    state
        .metrics
        .backend_connect_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut backend = opened.map_err(|e| match e {
        ConnectError::Connect(e) => failed(e),
        ConnectError::Route(e) => LoginError::from_route(e, user).into(),
    })?;
    answer_challenges(client, &mut backend, user).await?;
    backend.finish_startup().await.map_err(failed)?;
    Ok(backend)
}

/// Passes the backend's authentication requests to the client and its answers back, until
/// AuthenticationOk.
async fn answer_challenges<S>(
    client: &mut ClientStream<S>,
    backend: &mut Backend,
    user: &str,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |e| SessionError::from(LoginError::from_backend(e, user));
    loop {
        let mut message = backend.read_frame().await.map_err(failed)?;
        let tag = message[0];
        let code = message
            .get(5..9)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        match (tag, code) {
            (b'R', Some(0)) => break,
            // Cleartext, MD5, SASL, SASLContinue: the client answers.
            (b'R', Some(3 | 5 | 10 | 11)) => {
                client.write_buf().extend_from_slice(&message);
                client.flush().await?;
                let body = read_auth_message(client).await?;
                let mut reply = BytesMut::with_capacity(body.len() + frame::HEADER_LEN);
                frame::put_message(&mut reply, b'p', |b| b.extend_from_slice(&body));
                backend.send_raw(&reply).await.map_err(failed)?;
            }
            // SASLFinal: the client checks the server's signature; AuthenticationOk follows.
            (b'R', Some(12)) => client.write_buf().extend_from_slice(&message),
            (b'R', _) => {
                return Err(SessionError::Backend(BackendError::UnsupportedAuth(
                    "Kerberos, GSS, SSPI or SCM",
                )))
            }
            (b'E', _) => {
                let error = match Message::parse(&mut message) {
                    Ok(Some(Message::ErrorResponse(body))) => DbError::parse(&body)
                        .map(BackendError::from)
                        .unwrap_or_else(BackendError::from),
                    _ => BackendError::protocol("malformed ErrorResponse"),
                };
                return Err(failed(error));
            }
            (b'N', _) => {}
            _ => {
                return Err(SessionError::Backend(BackendError::protocol(format!(
                    "unexpected message type {} during authentication",
                    char::from(tag).escape_default()
                ))))
            }
        }
    }
    Ok(())
}

/// Tells the client the session is ready, then relays until it ends.
async fn relay_session<S>(
    mut client: ClientStream<S>,
    ready: Ready,
    transport: &Transport,
    state: &Arc<AppState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Ready {
        backend,
        endpoint,
        activity,
        admitted,
        expires_in,
    } = ready;
    let key = state.cancels.register(backend.cancel_key());
    let out = client.write_buf();
    startup::authentication_ok(out);
    for (name, value) in backend.parameters() {
        startup::parameter_status(out, name, value);
    }
    startup::backend_key_data(out, key.process_id, key.secret_key);
    startup::ready_for_query(out, backend.tx_status());
    if let Err(e) = client.flush().await {
        return fail(client, transport, e.into(), state).await;
    }

    let active = state.metrics.sessions_active.with(transport.metric_label());
    active.inc();
    tracing::debug!(%endpoint, transport = transport.label(), "session relaying");
    let (stop, expiry) = session_end(state, expires_in);
    let relayed = relay_counted(client, backend, &endpoint, &stop, state).await;
    let expired = match expiry {
        Some(timer) => {
            timer.abort();
            stop.is_cancelled() && !state.stop_sessions.is_cancelled()
        }
        None => false,
    };
    active.dec();
    drop(key);
    drop(activity);
    drop(admitted);
    let error = relay_error(relayed.end, expired);
    let client = ClientStream::new(relayed.client);
    match error {
        None => {
            state
                .metrics
                .sessions
                .inc(transport.metric_label(), SessionOutcome::Ok);
            client.close().await;
        }
        // A FATAL can only be appended between two backend messages.
        Some(error) if !relayed.at_boundary => {
            record(transport, &error, state);
            client.close().await;
        }
        Some(error) => fail(client, transport, error, state).await,
    }
}

/// Relays until the session ends, counting on its endpoint (`obs::usage`: the session itself,
/// its bytes and its queries) and its bytes in the metrics.
async fn relay_counted<S>(
    client: ClientStream<S>,
    backend: Backend,
    endpoint: &EndpointId,
    stop: &CancellationToken,
    state: &AppState,
) -> relay::Relayed<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let traffic = state.usage.endpoint(endpoint);
    traffic.add_session();
    let bytes = |direction: Direction, n: usize| {
        traffic.add(direction, n as u64);
        state.metrics.session_bytes.inc_by(direction, n as u64);
    };
    let counters = Counters {
        bytes: &bytes,
        queries: &|n| traffic.add_queries(n),
    };
    let limits = RelayLimits {
        idle_timeout: state.sessions.idle_timeout,
        max_client_message: state.sessions.max_message_bytes,
    };
    relay::relay(
        client.into_parts().into(),
        backend.into_parts().into(),
        &limits,
        stop,
        &counters,
    )
    .await
}

/// What ends a relay early: the gateway's drain running out of time, or the session's token
/// expiring (the timer's task is aborted once the relay is over).
fn session_end(
    state: &AppState,
    expires_in: Option<std::time::Duration>,
) -> (CancellationToken, Option<tokio::task::JoinHandle<()>>) {
    let stop = state.stop_sessions.child_token();
    let expiry = expires_in.map(|after| {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            stop.cancel();
        })
    });
    (stop, expiry)
}

/// The error a relay ended with, if any (`expired`: the session's token ran out).
fn relay_error(end: RelayEnd, expired: bool) -> Option<SessionError> {
    match end {
        RelayEnd::ClientClosed | RelayEnd::BackendClosed => None,
        RelayEnd::Idle => Some(SessionError::Idle),
        RelayEnd::Shutdown if expired => Some(SessionError::JwtExpired),
        RelayEnd::Shutdown => Some(SessionError::Shutdown),
        RelayEnd::MessageTooLarge { len, max } => Some(SessionError::MessageTooLarge { len, max }),
        RelayEnd::BadMessage => Some(SessionError::Protocol("invalid message length".into())),
        RelayEnd::ClientError(e) => Some(SessionError::from(e)),
        RelayEnd::BackendError(e) => Some(SessionError::Backend(BackendError::Io(e))),
    }
}

/// Reports `error` once (log, metrics), tells the client when it can be told, and closes.
async fn fail<S>(
    mut client: ClientStream<S>,
    transport: &Transport,
    error: SessionError,
    state: &AppState,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    record(transport, &error, state);
    if let Some((code, hint)) = error.client_code() {
        startup::fatal(client.write_buf(), code, &error.to_string(), hint);
    }
    client.close().await;
}

fn record(transport: &Transport, error: &SessionError, state: &AppState) {
    let kind = error.kind();
    if let SessionError::Limited(refused) = error {
        state.metrics.limit_hit(refused.limit);
    }
    // Timeouts and drains end sessions normally; they are outcomes, not errors.
    let outcome = match error {
        SessionError::Idle => SessionOutcome::IdleTimeout,
        SessionError::Shutdown => SessionOutcome::Shutdown,
        _ => {
            state.metrics.errors.inc(kind);
            SessionOutcome::Error(kind)
        }
    };
    state
        .metrics
        .sessions
        .inc(transport.metric_label(), outcome);
    match kind {
        ErrorKind::Internal | ErrorKind::Compute | ErrorKind::ControlPlane => {
            tracing::warn!(transport = transport.label(), error = %error, cause = ?std::error::Error::source(error), "session failed")
        }
        _ => tracing::debug!(transport = transport.label(), error = %error, "session ended"),
    }
}
