//! Scenario 8: `SELECT 1` over `/sql` logged in with a JWT (`Authorization: Bearer`, role
//! `authenticated`) next to the same with a password, in the same run, at each concurrency.
//! The JWT path verifies the token (EdDSA, key set inline in the rule, so no fetch is timed)
//! and hands its claims to SQL (`auth.begin`) on every request; the p50 difference is that
//! cost per request. Goal: JWT p50 within 1.3× of the password path's.
//!
//! The rule is made through the wake service's API on endpoint `db` (any earlier `bench`
//! rule is deleted first) with a key pair made for this run.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::admin;
use crate::client::{Dial, HttpTarget, Statement};
use crate::measure;
use crate::report::{Goal, Row};
use crate::scenarios::{Plan, Stack};

/// The JWT role the bench logs in as.
const ROLE: &str = "authenticated";
const PROVIDER: &str = "bench";
/// The goal: JWT p50 / password p50.
const GOAL_RATIO: f64 = 1.3;

/// A key pair and the inline JWKS rule made from it.
struct Issuer {
    key: Ed25519KeyPair,
}

impl Issuer {
    fn new() -> anyhow::Result<Issuer> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("cannot read the Ed25519 key"))?;
        Ok(Issuer { key })
    }

    fn rule(&self) -> serde_json::Value {
        let x = b64(self.key.public_key().as_ref());
        serde_json::json!({
            "provider_name": PROVIDER,
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "bench-1", "alg": "EdDSA", "use": "sig"}]},
            "algorithms": ["EdDSA"],
            "role_names": [ROLE],
        })
    }

    /// A token for `sub`, valid for an hour.
    fn token(&self, sub: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = b64(br#"{"alg":"EdDSA","kid":"bench-1","typ":"JWT"}"#);
        let payload = serde_json::json!({"sub": sub, "iat": now, "exp": now + 3600});
        let payload = b64(payload.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", b64(signature.as_ref())))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Scenario 8's rows: one per concurrency.
pub async fn run(stack: &Stack, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let issuer = Issuer::new()?;
    admin::replace_jwks_rule(
        &stack.wake,
        &stack.wake_token,
        "db",
        PROVIDER,
        &issuer.rule(),
    )
    .await
    .context("adding the bench's JWKS rule to endpoint db")?;
    let token = issuer.token("bench-user")?;
    let dials = [
        Dial::Http(Arc::new(HttpTarget::new(stack.gateway, "db.localtest.me")?)),
        Dial::Http(Arc::new(HttpTarget::with_token(
            stack.gateway,
            "db.localtest.me",
            ROLE,
            &token,
        )?)),
    ];
    let statement = Arc::new(Statement::new("SELECT 1", "SELECT 1", 1));
    let timeouts = plan.timeouts();
    let mut rows = Vec::new();
    for &c in &plan.concurrency {
        let mut figures = Vec::new();
        for dial in &dials {
            let (opened, sessions) = measure::open_many(dial, c, 32, None, timeouts).await;
            let (recorder, sessions) =
                measure::closed_loop(sessions, statement.clone(), plan.window(), timeouts.query)
                    .await;
            let mut f = recorder.figures(Some(plan.window().measure));
            f.errors += opened.errors();
            let error = recorder
                .first_error()
                .or(opened.first_error())
                .map(str::to_string);
            measure::close_many(sessions, 64, timeouts.connect).await;
            figures.push((f, error));
        }
        let (password, _) = figures[0].clone();
        let (jwt, error) = figures[1].clone();
        let cost_us = match (jwt.p50_ms, password.p50_ms) {
            (Some(a), Some(b)) => format!("{:.0} µs", (a - b) * 1000.0),
            _ => "—".into(),
        };
        let row = Row::new(
            "8",
            format!("SELECT 1, c={c}"),
            "gateway HTTP /sql with a JWT",
            jwt,
            Some(("password", password)),
        );
        let ratio = row.ratio_p50;
        let errors = row.figures.errors;
        rows.push(
            row.goal(Goal::new(
                ratio.is_some_and(|r| r <= GOAL_RATIO) && errors == 0,
                format!(
                    "p50 ≤ {GOAL_RATIO}× the password path's ({}; claims and verification cost {cost_us} per request)",
                    ratio.map_or("—".into(), |r| format!("{r:.2}×"))
                ),
            ))
            .note(error),
        );
    }
    Ok(rows)
}
