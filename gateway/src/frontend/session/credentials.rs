//! Which endpoint a session is for. In order: the host the client dialled (the WebSocket
//! `address` parameter, the Host header, or TLS SNI), then `endpoint=<id>` in the startup
//! `options`, then the password hack `endpoint=<id>;<password>`, then the default endpoint.
//! Hosts name endpoints by [`crate::base::host`]'s rule.

use crate::base::endpoint::EndpointId;
use crate::base::host::HostError;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("invalid endpoint id '{0}': use letters, digits and '-'")]
    InvalidEndpoint(String),
    /// The WebSocket `address` names no usable endpoint ([`crate::base::host`]).
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(
        "inconsistent endpoint name inferred from the host ('{host}') and the endpoint option \
         ('{option}')"
    )]
    Inconsistent { host: String, option: String },
}

/// Splits startup `options` into the endpoint it names (`endpoint=<id>` or the older
/// `project=<id>`) and the options to pass on to Postgres, with those tokens removed.
pub fn split_options(options: &str) -> Result<(Option<EndpointId>, String), CredentialsError> {
    let mut endpoint = None;
    let mut kept: Vec<&str> = Vec::new();
    for token in tokens(options) {
        let id = token
            .strip_prefix("endpoint=")
            .or_else(|| token.strip_prefix("project="));
        match id {
            Some(id) => {
                endpoint = Some(
                    EndpointId::parse(id)
                        .ok_or_else(|| CredentialsError::InvalidEndpoint(id.to_owned()))?,
                );
            }
            None => kept.push(token),
        }
    }
    Ok((endpoint, kept.join(" ")))
}

/// The whitespace-separated tokens of an options string; a backslash escapes the next byte,
/// so `-c search_path=a\ b` stays one token (and keeps its backslash for Postgres to read).
fn tokens(options: &str) -> impl Iterator<Item = &str> {
    let bytes = options.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at >= bytes.len() {
            return None;
        }
        let start = at;
        while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
            at += if bytes[at] == b'\\' { 2 } else { 1 };
        }
        at = at.min(bytes.len());
        options.get(start..at)
    })
}

/// The host endpoint and the options endpoint must agree when both are given.
pub fn reconcile(
    host: Option<EndpointId>,
    option: Option<EndpointId>,
) -> Result<Option<EndpointId>, CredentialsError> {
    match (host, option) {
        (Some(host), Some(option)) if host != option => Err(CredentialsError::Inconsistent {
            host: host.to_string(),
            option: option.to_string(),
        }),
        (host, option) => Ok(host.or(option)),
    }
}

/// The password hack for clients that can pass nothing else: `endpoint=<id>;<password>` (or
/// `project=`, or `$` as the separator).
pub fn password_hack(password: &[u8]) -> Option<(EndpointId, &[u8])> {
    let rest = password
        .strip_prefix(b"endpoint=")
        .or_else(|| password.strip_prefix(b"project="))?;
    let end = rest.iter().position(|&b| b == b';' || b == b'$')?;
    let id = EndpointId::parse(std::str::from_utf8(&rest[..end]).ok()?)?;
    Some((id, &rest[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Option<EndpointId> {
        EndpointId::parse(s)
    }

    #[test]
    fn options() {
        assert_eq!(split_options("endpoint=db"), Ok((id("db"), String::new())));
        assert_eq!(
            split_options("-c search_path=a\\ b  project=ep-2 --work_mem=64kB"),
            Ok((
                id("ep-2"),
                "-c search_path=a\\ b --work_mem=64kB".to_owned()
            ))
        );
        assert_eq!(
            split_options("-c statement_timeout=5s"),
            Ok((None, "-c statement_timeout=5s".to_owned()))
        );
        assert_eq!(
            split_options("endpoint=no_pe"),
            Err(CredentialsError::InvalidEndpoint("no_pe".into()))
        );
        assert_eq!(
            split_options("trailing\\"),
            Ok((None, "trailing\\".to_owned()))
        );
    }

    #[test]
    fn reconciling() {
        assert_eq!(reconcile(id("a"), id("a")), Ok(id("a")));
        assert_eq!(reconcile(None, id("b")), Ok(id("b")));
        assert_eq!(reconcile(id("a"), None), Ok(id("a")));
        assert!(matches!(
            reconcile(id("a"), id("b")),
            Err(CredentialsError::Inconsistent { .. })
        ));
    }

    #[test]
    fn password_hacks() {
        assert_eq!(
            password_hack(b"endpoint=ep-1;secret;x"),
            Some((EndpointId::parse("ep-1").expect("id"), &b"secret;x"[..]))
        );
        assert_eq!(
            password_hack(b"project=db$pw"),
            Some((EndpointId::parse("db").expect("id"), &b"pw"[..]))
        );
        assert_eq!(password_hack(b"endpoint=db"), None);
        assert_eq!(password_hack(b"endpoint=b@d;pw"), None);
        assert_eq!(password_hack(b"plain password"), None);
    }
}
