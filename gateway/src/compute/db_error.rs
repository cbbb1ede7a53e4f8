//! A Postgres ErrorResponse with every field the driver copies onto its errors.

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorResponseBody;

/// The fields of an ErrorResponse, by their protocol names (`position` and `line` stay text).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{severity}: {message}")]
pub struct DbError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub position: Option<String>,
    pub internal_position: Option<String>,
    pub internal_query: Option<String>,
    pub where_: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub data_type: Option<String>,
    pub constraint: Option<String>,
    pub file: Option<String>,
    pub line: Option<String>,
    pub routine: Option<String>,
}

impl DbError {
    pub fn parse(body: &ErrorResponseBody) -> std::io::Result<DbError> {
        let mut error = DbError::default();
        let mut fields = body.fields();
        while let Some(field) = fields.next()? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                b'P' => error.position = Some(value),
                b'p' => error.internal_position = Some(value),
                b'q' => error.internal_query = Some(value),
                b'W' => error.where_ = Some(value),
                b's' => error.schema = Some(value),
                b't' => error.table = Some(value),
                b'c' => error.column = Some(value),
                b'd' => error.data_type = Some(value),
                b'n' => error.constraint = Some(value),
                b'F' => error.file = Some(value),
                b'L' => error.line = Some(value),
                b'R' => error.routine = Some(value),
                // 'V' (non-localized severity) and fields added by future servers.
                _ => {}
            }
        }
        Ok(error)
    }

    /// Errors after which the server closes the session.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }

    /// `57P03` cannot_connect_now: the server is starting up or shutting down (a compute
    /// resuming or being suspended). Worth connecting again, after a wake.
    pub fn is_cannot_connect_now(&self) -> bool {
        self.code == "57P03"
    }

    /// A FATAL for an operator intervention (`57P01` admin shutdown, `57P02` crash shutdown,
    /// `57P05` idle-session timeout, …): the server ends the session for reasons of its own,
    /// not because of anything the client sent.
    pub fn is_server_going_away(&self) -> bool {
        self.is_fatal() && self.code.starts_with("57P")
    }

    /// Authentication failures (wrong password, no such role, rejected by pg_hba).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self.code.as_str(), "28P01" | "28000")
    }
}
