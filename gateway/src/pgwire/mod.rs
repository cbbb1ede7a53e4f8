//! The Postgres wire protocol as bytes: framing, startup and authentication messages, SCRAM
//! for both sides, and the WebSocket byte stream the tunnel carries them in. No I/O policy, no
//! knowledge of endpoints.

pub mod client;
pub mod frame;
pub mod scram;
pub mod startup;
pub mod ws;
