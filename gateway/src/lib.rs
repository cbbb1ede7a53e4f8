//! The data plane in front of plain Postgres, compatible with the `@neondatabase/serverless`
//! driver: SQL over HTTP, the WebSocket tunnel and Postgres TCP/TLS on one port. See
//! ARCHITECTURE.md for the map.

pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod base;
pub(crate) mod compute;
pub(crate) mod control_plane;
pub(crate) mod frontend;
pub(crate) mod obs;
pub(crate) mod pgwire;
pub(crate) mod proxy;

pub use crate::app::config::{Args, Config, TlsFiles};
pub use crate::app::{run, serve};
/// JWT validation and the JWKS cache, for the tests that drive them over real sockets.
pub use crate::auth::jwt::{
    JwksSource, JwtConfig, JwtError, JwtRule, JwtValidator, RuleError, VerifiedJwt,
};
pub use crate::base::endpoint::EndpointId;
pub use crate::base::retry::RetryConfig;
pub use crate::control_plane::routes::Route;
pub use crate::obs::metrics::Metrics;
/// Message framing (tag, length, body), for clients of the protocol such as the tests' own.
pub use crate::pgwire::frame;
pub use crate::pgwire::ws::WsStream;

/// The parsers `gateway/fuzz` drives, reachable only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::base::{conn_info, endpoint, host};
    pub use crate::compute::{BackendError, DbError};
    pub use crate::frontend::http::sql::Payload;
    pub use crate::frontend::query;
    pub use crate::frontend::session::{credentials, SessionError};
    pub use crate::pgwire::{client, frame, scram, startup, ws};
}
