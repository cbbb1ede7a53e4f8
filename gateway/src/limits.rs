//! The limits that keep one client, tenant or endpoint from taking the gateway away from the
//! others. Every limit has a name here, and every time one is hit it is counted once in
//! `gateway_limit_hits_total{limit}` ([`crate::metrics::Metrics::limit_hit`]) where the client
//! is refused; ARCHITECTURE.md lists each limit, its flag, its default and what the client sees.

/// A limit that refused or cut off a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `--max-client-connections`: all client connections together.
    ClientConnections,
    /// `--max-connections-per-ip`: client connections from one IP address.
    ConnectionsPerIp,
    /// `--handshake-timeout-seconds`: a connection that did not send its first request (HTTP
    /// request head, HTTP/2 preface, startup packet, TLS handshake) in time.
    FirstRequestTimeout,
    /// `--http-idle-timeout-seconds`: an HTTP connection (HTTP/1 keep-alive or HTTP/2) with
    /// nothing in flight for this long.
    HttpIdleTimeout,
    /// `--body-read-timeout-seconds`: a `/sql` body that did not arrive in time.
    BodyReadTimeout,
    /// `--max-request-bytes`: a `/sql` body over the limit.
    RequestBytes,
    /// `--max-response-bytes` (with a per-row overhead) or `--max-response-rows`.
    ResponseSize,
    /// The bounded queue in front of password hashing (`--max-password-hash-queue`).
    PasswordHashQueue,
    /// A SCRAM iteration count from a backend or secret above the cap.
    ScramIterations,
    /// `--max-endpoint-connections`: sessions and requests in flight on one endpoint.
    EndpointConnections,
    /// `--max-endpoint-rps`: new requests and sessions per second on one endpoint.
    EndpointRate,
    /// A WebSocket message during the handshake above the handshake limit.
    HandshakeMessageBytes,
    /// `--require-tls`: a plaintext HTTP request, `ws://` upgrade or Postgres startup.
    TlsRequired,
}

impl Limit {
    pub const ALL: [Limit; 13] = [
        Limit::ClientConnections,
        Limit::ConnectionsPerIp,
        Limit::FirstRequestTimeout,
        Limit::HttpIdleTimeout,
        Limit::BodyReadTimeout,
        Limit::RequestBytes,
        Limit::ResponseSize,
        Limit::PasswordHashQueue,
        Limit::ScramIterations,
        Limit::EndpointConnections,
        Limit::EndpointRate,
        Limit::HandshakeMessageBytes,
        Limit::TlsRequired,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ClientConnections => "client_connections",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::FirstRequestTimeout => "first_request_timeout",
            Limit::HttpIdleTimeout => "http_idle_timeout",
            Limit::BodyReadTimeout => "body_read_timeout",
            Limit::RequestBytes => "request_bytes",
            Limit::ResponseSize => "response_size",
            Limit::PasswordHashQueue => "password_hash_queue",
            Limit::ScramIterations => "scram_iterations",
            Limit::EndpointConnections => "endpoint_connections",
            Limit::EndpointRate => "endpoint_rate",
            Limit::HandshakeMessageBytes => "handshake_message_bytes",
            Limit::TlsRequired => "tls_required",
        }
    }
}

/// A client refused by a limit: what it is told, in the driver's shape (HTTP status and JSON
/// error for `/sql`, a FATAL with this SQLSTATE for sessions).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub limit: Limit,
    pub message: String,
}

impl Refused {
    pub fn new(limit: Limit, message: impl Into<String>) -> Self {
        Refused {
            limit,
            message: message.into(),
        }
    }

    /// The HTTP status of a refused `/sql` request.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self.limit {
            Limit::ClientConnections
            | Limit::ConnectionsPerIp
            | Limit::PasswordHashQueue
            | Limit::EndpointConnections
            | Limit::EndpointRate => StatusCode::TOO_MANY_REQUESTS,
            Limit::FirstRequestTimeout | Limit::BodyReadTimeout | Limit::HttpIdleTimeout => {
                StatusCode::REQUEST_TIMEOUT
            }
            Limit::RequestBytes | Limit::HandshakeMessageBytes => StatusCode::PAYLOAD_TOO_LARGE,
            Limit::ResponseSize => StatusCode::INSUFFICIENT_STORAGE,
            Limit::ScramIterations => StatusCode::BAD_GATEWAY,
            Limit::TlsRequired => StatusCode::FORBIDDEN,
        }
    }

    /// The SQLSTATE of a refused session.
    pub fn sqlstate(&self) -> &'static str {
        match self.limit {
            // too_many_connections
            Limit::ClientConnections
            | Limit::ConnectionsPerIp
            | Limit::PasswordHashQueue
            | Limit::EndpointConnections
            | Limit::EndpointRate => "53300",
            // connection_failure, as a handshake timeout
            Limit::FirstRequestTimeout | Limit::BodyReadTimeout | Limit::HttpIdleTimeout => {
                "08006"
            }
            // program_limit_exceeded
            Limit::RequestBytes | Limit::ResponseSize | Limit::HandshakeMessageBytes => "54000",
            // sqlclient_unable_to_establish_sqlconnection
            Limit::ScramIterations => "08001",
            // invalid_authorization_specification, as Postgres for a hostssl-only pg_hba
            Limit::TlsRequired => "28000",
        }
    }
}
