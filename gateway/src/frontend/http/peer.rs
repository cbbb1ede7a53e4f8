//! `POST /internal/cancel` on the admin listener: the cancel requests other gateway replicas
//! forward to this one (see [`crate::proxy::cancel`]). Signed with the peer key, looked up among
//! this gateway's own sessions only, and charged to the client's cancel rate like a
//! CancelRequest of its own.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use wake_api::proxy::PeerCancelReply;

use crate::frontend::state::AppState;
use crate::proxy::cancel::PeerAnswer;

/// The largest body taken: a [`wake_api::proxy::PeerCancel`] is about 100 bytes.
pub const MAX_BODY: usize = 1024;

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.cancels.peer_cancel(authorization, &body).await {
        PeerAnswer::Cancelled(cancelled) => {
            axum::Json(PeerCancelReply { cancelled }).into_response()
        }
        PeerAnswer::Unauthorized => StatusCode::UNAUTHORIZED.into_response(),
        PeerAnswer::RateLimited => StatusCode::TOO_MANY_REQUESTS.into_response(),
        PeerAnswer::NotTaken => StatusCode::NOT_FOUND.into_response(),
        PeerAnswer::Invalid => StatusCode::BAD_REQUEST.into_response(),
    }
}
