//! The WebSocket tunnel: an upgrade on any path (`/v1`, `/v2`, with or without `?address=`)
//! turns the connection into a byte stream of the Postgres protocol, which [`crate::frontend::session`]
//! serves like any other. Binary frames carry the bytes (many messages per frame, or one
//! message across frames); a text frame ends the session with an error; pings are answered;
//! a close frame is the end of the stream.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::frontend::connection::ConnectionInfo;
use crate::frontend::handshake::Budgeted;
use crate::frontend::session::{self, Transport};
use crate::frontend::state::AppState;
use crate::pgwire::ws::{ws_config, WsStream};

/// Whether `headers` ask to upgrade to a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Answers an upgrade request with 101 and starts the session once the switch happens.
pub async fn upgrade(state: Arc<AppState>, mut request: Request) -> Response {
    let headers = request.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned));
    let address = request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "address")
            .map(|(_, value)| value.into_owned())
    });
    let info = request.extensions().get::<Arc<ConnectionInfo>>().cloned();
    // The connection's place under the connection limits goes with the session.
    let slot = info.as_ref().and_then(|i| i.slot.clone());
    let peer = slot
        .as_ref()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| s.ip());
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded to a WebSocket (use HTTP/1.1)",
        );
    };
    let budget = state.handshake_pool.budget();
    let transport = Transport::WebSocket {
        tls: info.as_ref().is_some_and(|i| i.tls),
        address,
        host,
        sni: info.and_then(|i| i.sni.clone()),
        handshake: budget.clone(),
    };
    let config = ws_config(state.sessions.max_message_bytes);
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                let raw = Budgeted::new(TokioIo::new(upgraded), budget);
                let ws = WebSocketStream::from_raw_socket(raw, Role::Server, config).await;
                session::serve_stream(WsStream::new(ws), &[], transport, peer, state).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn refuse(status: StatusCode, message: &'static str) -> Response {
    (status, axum::Json(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_headers() {
        let mut headers = HeaderMap::new();
        assert!(!is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&headers));
    }
}
