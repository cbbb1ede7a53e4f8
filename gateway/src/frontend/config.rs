//! The front ends' settings, grouped per protocol; built once from the command line by
//! `app::config` and read-only after.

use std::time::Duration;

/// Limits of HTTP connections and `/sql` requests.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// No request in flight for this long closes the connection.
    pub idle_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// From the request head to the end of its body.
    pub body_read_timeout: Duration,
    /// The largest `/sql` body.
    pub max_request_bytes: usize,
    /// The largest `/sql` response.
    pub max_response_bytes: usize,
    /// Most rows in one `/sql` response.
    pub max_response_rows: usize,
}

/// What the listener admits: connections in all and per address, what WebSocket clients in
/// their handshake may hold together, and whether plaintext is refused.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshake_bytes: usize,
    /// Plaintext HTTP, `ws://` and Postgres without TLS are refused.
    pub require_tls: bool,
}

/// Limits and settings for sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// From the first byte to ReadyForQuery (TLS, startup, authentication, backend connect).
    pub handshake_timeout: Duration,
    /// A session with no traffic either way for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// The largest single message a client may send (WebSocket messages too).
    pub max_message_bytes: usize,
    /// Domains under which a Host header or SNI name `<endpoint>.<domain>` picks the endpoint.
    pub domains: Vec<String>,
}
