//! Error classification: every module has its own `thiserror` enum and says which
//! [`ErrorKind`] each case is ([`ReportableError`]). The kind drives the log level and the
//! metric label. What a client is shown is decided by its front end
//! (`frontend::http::error` for `/sql`, `frontend::session` for sessions).

/// Who is to blame, which fixes how loudly we log and how the metric is labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something wrong (bad JSON, wrong password, limits exceeded).
    User,
    /// The client went away while we worked.
    ClientDisconnect,
    /// A limit protecting the backends was hit.
    RateLimit,
    /// The control plane failed or refused.
    ControlPlane,
    /// The backend Postgres could not be reached or broke the protocol.
    Compute,
    /// Postgres reported an error for the user's statement.
    Postgres,
    /// A bug or an unexpected condition in the gateway itself.
    Internal,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::User => "user",
            ErrorKind::ClientDisconnect => "client_disconnect",
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::ControlPlane => "control_plane",
            ErrorKind::Compute => "compute",
            ErrorKind::Postgres => "postgres",
            ErrorKind::Internal => "internal",
        }
    }

    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::User,
        ErrorKind::ClientDisconnect,
        ErrorKind::RateLimit,
        ErrorKind::ControlPlane,
        ErrorKind::Compute,
        ErrorKind::Postgres,
        ErrorKind::Internal,
    ];
}

pub trait ReportableError: std::error::Error {
    fn kind(&self) -> ErrorKind;
}
