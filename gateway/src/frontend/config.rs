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
