//! CORS, set in one place: every `/sql` answer (results, errors, refusals) may be read by a
//! page of any origin (the driver runs in browsers and edge functions), and the preflight
//! allows the driver's headers.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The request headers the driver sends.
const ALLOWED_HEADERS: &str = "Authorization, Neon-Connection-String, Neon-Raw-Text-Output, \
     Neon-Array-Mode, Neon-Pool-Opt-In, Neon-Batch-Read-Only, Neon-Batch-Isolation-Level, \
     Neon-Batch-Deferrable";

/// The header line for answers written without the router (refusals on accept).
pub const ALLOW_ANY_ORIGIN_LINE: &str = "access-control-allow-origin: *\r\n";

/// Lets any origin read this answer. Every HTTP answer of the public router gets it except a
/// protocol switch.
pub fn allow_any_origin(response: &mut Response) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
}

/// `OPTIONS /sql`: the CORS preflight.
pub fn preflight() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers: &mut HeaderMap = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}
