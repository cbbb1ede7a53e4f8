//! Sessions (WebSocket, TCP, TLS) that log in with a token as the password: a role some JWKS
//! rule of the endpoint names takes a JWT, never a password (it has none anyone knows). The
//! gateway logs in to the endpoint's Postgres itself (never its PgBouncer) as that role, hands
//! the token's claims to SQL once, and ends the session when the token expires.

use std::time::Duration;

use super::{Ready, Requested, SessionError};
use crate::base::endpoint::EndpointId;
use crate::compute::{ConnectParams, Login};
use crate::frontend::state::AppState;
use crate::proxy::login::LoginError;

/// Whether `role` logs in with a token on `endpoint`. When the control plane cannot be asked
/// the answer is no: the password path then decides, with what it has cached.
pub(super) async fn is_jwt_role(state: &AppState, endpoint: &EndpointId, role: &str) -> bool {
    match state.login().jwt_rules(endpoint).await {
        Ok(rules) => rules.role(role).is_some(),
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, "JWKS rules unavailable; taking the password path");
            false
        }
    }
}

/// Whether a password has the shape of a JWS compact token (`<b64>.<b64>.<b64>`, header
/// first, a JSON object): only those are taken as tokens.
pub(super) fn looks_like_jwt(password: &[u8]) -> bool {
    password.starts_with(b"eyJ") && password.iter().filter(|&&b| b == b'.').count() == 2
}

/// Logs in as `requested.user` on `endpoint` with `token`: verified against the endpoint's
/// rules, then a backend logged in with the role's own keys and given the token's claims.
/// The client's `options` do not reach Postgres.
pub(super) async fn login(
    requested: &Requested<'_>,
    endpoint: &EndpointId,
    token: &[u8],
    state: &AppState,
) -> Result<Ready, SessionError> {
    let login = state.login();
    let token = std::str::from_utf8(token).map_err(|_| SessionError::AuthFailed {
        user: requested.user.to_owned(),
    })?;
    let checked = login.check_jwt(endpoint, requested.user, token).await?;
    let startup: Vec<(&str, &str)> = requested
        .forward
        .iter()
        .filter(|(name, _)| *name != "options")
        .copied()
        .collect();
    let params = ConnectParams {
        user: requested.user,
        database: &requested.database,
        startup: &startup,
        login: Login::Scram(&checked.keys),
    };
    let mut connected = login
        .connect(&checked.endpoint, &params, state.sessions.max_message_bytes)
        .await?;
    checked
        .begin(&mut connected.backend)
        .await
        .map_err(|e| LoginError::from_claims(e, requested.user))?;
    let mut ready = Ready::new(checked.endpoint.clone(), connected);
    ready.expires_in = Some(checked.remaining().max(Duration::from_millis(1)));
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes() {
        assert!(looks_like_jwt(b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(!looks_like_jwt(b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0"));
        assert!(!looks_like_jwt(b"correct horse.battery.staple"));
        assert!(!looks_like_jwt(b""));
    }
}
