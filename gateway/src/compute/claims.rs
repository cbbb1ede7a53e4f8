//! A verified token's claims, handed to SQL on a backend so that the session's own SQL cannot
//! forge them (the design is in the wake service's `jwt` module, which installs the SQL side).
//!
//! The gateway logs in as the JWT role itself and, before a client's statements run, calls
//! `auth.begin(env, mac)` with bind parameters. `env` is an envelope of compact JSON
//! `{"v":1,"pid":…,"bs":…,"role":…,"exp":…,"ctr":…,"claims":…}` binding the claims to this
//! backend (its pid and start time, in µs), to the login role, to an expiry and to a counter;
//! `mac` is `v1.<kid>.<hex HMAC-SHA-256(key, env)>` with the endpoint's claims key, which the
//! database holds where the session cannot read it. `auth.begin` checks the MAC and the
//! binding and holds the accepted envelope's digest where the session cannot write it;
//! `auth.session()` takes only the envelope with that digest, so a `set_config` of the settings
//! that carry it, an envelope made for another backend, or an older one of this backend (the
//! counter only goes up) yields NULL.
//!
//! The counter: [`Backend::begin_claims`] first binds a fresh backend (reads its pid and start
//! time, then sends counter 1 with no claims), then sends counter n+1 for each use. A backend
//! whose `auth.begin` does not return true must be discarded by the caller.
//! [`Backend::reset`] of a bound backend keeps the counter's register (no `DISCARD ALL`,
//! which would clear it and let counter 1 in again).

use std::fmt;

use fallible_iterator::FallibleIterator;
use hmac::{Hmac, Mac};
use postgres_protocol::message::{backend::Message, frontend};
use postgres_protocol::IsNull;
use sha2::Sha256;

use super::{Backend, BackendError, DbError};

/// What reads the backend's identity: the same expression `auth.begin` compares with.
const IDENTITY: &str = "SELECT pid, (extract(epoch from backend_start) * 1000000)::bigint \
     FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid())";

/// The call that hands an envelope to SQL.
const BEGIN: &str = "SELECT auth.begin($1, $2)";

/// The reset of a bound backend between users: `DISCARD ALL` without `DISCARD SEQUENCES`
/// (the counter's register stays) and without `DISCARD PLANS`: cached plans carry nothing of
/// a user (they are invalidated by DDL and checked against the `search_path` by Postgres
/// itself), and dropping them would make every request plan `auth.begin`'s statements again.
pub(super) const RESET: &str = "CLOSE ALL; RESET ALL; DEALLOCATE ALL; UNLISTEN *; \
     SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP";

/// An endpoint's claims key: HMAC-SHA-256, 32 bytes. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimsKey {
    kid: i32,
    key: [u8; 32],
}

impl fmt::Debug for ClaimsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimsKey({}, <redacted>)", self.kid)
    }
}

impl ClaimsKey {
    /// From the control plane's `kid` and 64 hex digits.
    pub fn from_hex(kid: i32, hex: &str) -> Option<ClaimsKey> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            key[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(ClaimsKey { kid, key })
    }

    /// `v1.<kid>.<hex HMAC-SHA-256(key, envelope)>`.
    pub fn mac(&self, envelope: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(envelope.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = format!("v1.{}.", self.kid);
        for byte in digest {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

/// What a backend's envelopes are bound to, learnt once per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Binding {
    pid: i32,
    /// `backend_start` in µs since the epoch.
    started_us: i64,
    role: String,
    /// The counter of the last envelope `auth.begin` accepted.
    counter: u64,
}

/// Why claims could not be handed to a backend: the backend must be discarded.
#[derive(Debug, thiserror::Error)]
pub enum ClaimsError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// `auth.begin` returned false: the database does not hold the key, or the backend's
    /// register was cleared (`DISCARD SEQUENCES`), or the clock is off.
    #[error("the database refused the claims envelope")]
    Refused,
}

/// The envelope's compact JSON, keys in a fixed order.
pub fn envelope(
    binding: &Binding,
    exp: u64,
    counter: u64,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    let role = serde_json::Value::from(binding.role.as_str());
    let claims = claims.map_or_else(
        || "null".to_owned(),
        |c| serde_json::Value::Object(c.clone()).to_string(),
    );
    format!(
        r#"{{"v":1,"pid":{},"bs":{},"role":{role},"exp":{exp},"ctr":{counter},"claims":{claims}}}"#,
        binding.pid, binding.started_us
    )
}

impl Backend {
    /// Hands `claims` (a verified token's payload, valid until `exp`, unix seconds) to SQL for
    /// what runs next on this backend, logged in as `role`. Binds a fresh backend first.
    pub async fn begin_claims(
        &mut self,
        key: &ClaimsKey,
        role: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        exp: u64,
    ) -> Result<(), ClaimsError> {
        if self.claims.is_none() {
            self.bind_claims(key, role, exp).await?;
        }
        let Some(binding) = self.claims.clone() else {
            return Err(ClaimsError::Refused);
        };
        let counter = binding.counter + 1;
        self.send_envelope(key, &envelope(&binding, exp, counter, Some(claims)))
            .await?;
        if let Some(binding) = &mut self.claims {
            binding.counter = counter;
        }
        Ok(())
    }

    /// Reads the backend's pid and start time and sends counter 1, with no claims.
    async fn bind_claims(
        &mut self,
        key: &ClaimsKey,
        role: &str,
        exp: u64,
    ) -> Result<(), ClaimsError> {
        let rows = self.simple_query_rows(IDENTITY).await?;
        let parse = |row: &Vec<Option<String>>, i: usize| -> Option<i64> {
            row.get(i)?.as_deref()?.parse().ok()
        };
        let (pid, started_us) = match rows.first() {
            Some(row) => (parse(row, 0), parse(row, 1)),
            None => (None, None),
        };
        let (Some(pid), Some(started_us)) = (pid.and_then(|p| i32::try_from(p).ok()), started_us)
        else {
            return Err(
                BackendError::protocol("the backend did not tell its pid and start time").into(),
            );
        };
        let binding = Binding {
            pid,
            started_us,
            role: role.to_owned(),
            counter: 1,
        };
        self.send_envelope(key, &envelope(&binding, exp, 1, None))
            .await?;
        self.claims = Some(binding);
        Ok(())
    }

    /// `SELECT auth.begin($1, $2)` with the envelope and its MAC as bind parameters.
    async fn send_envelope(&mut self, key: &ClaimsKey, env: &str) -> Result<(), ClaimsError> {
        let mac = key.mac(env);
        let buf = &mut self.write_buf;
        frontend::parse("", BEGIN, [], buf).map_err(BackendError::Io)?;
        let values = [env, mac.as_str()];
        frontend::bind(
            "",
            "",
            [0i16],
            values,
            |value, out| {
                out.extend_from_slice(value.as_bytes());
                Ok(IsNull::No)
            },
            [0i16],
            buf,
        )
        .map_err(|_| BackendError::protocol("could not encode the claims envelope"))?;
        frontend::execute("", 0, buf).map_err(BackendError::Io)?;
        frontend::sync(buf);
        self.flush().await?;
        let accepted = self.read_begin().await?;
        match accepted {
            true => Ok(()),
            false => Err(ClaimsError::Refused),
        }
    }

    /// The replies to [`Self::send_envelope`] up to ReadyForQuery: whether it returned true.
    async fn read_begin(&mut self) -> Result<bool, BackendError> {
        let mut accepted = false;
        let mut error: Option<DbError> = None;
        loop {
            match self.next_message().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => error = Some(DbError::parse(&body)?),
                Message::DataRow(row) => {
                    let first = row.ranges().next()?;
                    accepted = matches!(first, Some(Some(r)) if row.buffer().get(r.clone()) == Some(&b"t"[..]));
                }
                Message::ParseComplete | Message::BindComplete | Message::CommandComplete(_) => {}
                other => return Err(BackendError::unexpected(&other)),
            }
        }
        match error {
            Some(error) => Err(error.into()),
            None => Ok(accepted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_mac() {
        let binding = Binding {
            pid: 42,
            started_us: 1_700_000_000_123_456,
            role: "authenticated".into(),
            counter: 1,
        };
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        assert_eq!(
            envelope(&binding, 1_800_000_000, 2, Some(&claims)),
            r#"{"v":1,"pid":42,"bs":1700000000123456,"role":"authenticated","exp":1800000000,"ctr":2,"claims":{"sub":"alice"}}"#
        );
        assert_eq!(
            envelope(&binding, 5, 1, None),
            r#"{"v":1,"pid":42,"bs":1700000000123456,"role":"authenticated","exp":5,"ctr":1,"claims":null}"#
        );
        // HMAC-SHA-256(key = 32 bytes of 0x0b, "Hi There"), computed independently (Python's
        // hmac module).
        let key = ClaimsKey::from_hex(7, &"0b".repeat(32)).expect("key");
        assert_eq!(
            key.mac("Hi There"),
            "v1.7.198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"
        );
        assert!(format!("{key:?}").contains("redacted"));
        assert!(ClaimsKey::from_hex(1, "zz").is_none());
        assert!(ClaimsKey::from_hex(1, &"g0".repeat(32)).is_none());
    }
}
