//! What the listener knows about a client connection that handlers further in need.

use std::sync::Arc;

use crate::base::limits::ConnectionSlot;

/// What an HTTP request's connection was: handlers that start sessions need it.
#[derive(Default)]
pub struct ConnectionInfo {
    pub tls: bool,
    pub sni: Option<String>,
    /// The connection's place under the connection limits: a WebSocket session keeps it after
    /// the upgrade, for as long as it lives.
    pub slot: Option<Arc<ConnectionSlot>>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("tls", &self.tls)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}
