//! The protocols clients speak: the listener that sniffs TLS, HTTP and Postgres on one port,
//! `POST /sql`, the WebSocket tunnel and Postgres sessions over TCP or WebSocket.

pub mod config;
pub mod connection;
pub mod handshake;
pub mod http;
pub mod query;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod websocket;
