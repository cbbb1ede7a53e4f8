//! Which endpoint a host name names: the one rule for the host of a connection string (and of
//! the WebSocket `?address=` the driver derives from it), the Host header and the TLS SNI name.
//!
//! A host names an endpoint by its first DNS label: `ep-x.pg.example.com` names `ep-x`. With
//! `--domain` set, only `<id>.<domain>` names one. `localhost` and IP literals name none. The
//! two kinds of source differ only where they must: a host the client wrote in its connection
//! string is meant as an endpoint, so a bare name (`db`) names that endpoint and a name outside
//! the domains is an error; a name the client merely dialled (Host, SNI) may be a service name
//! (`gateway:4444`) or another domain, which name no endpoint.

use std::net::IpAddr;

use crate::base::endpoint::EndpointId;

/// Why a connection-string host names no usable endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("invalid endpoint id '{0}': use letters, digits and '-'")]
    InvalidEndpoint(String),
    #[error("host '{0}' is not under this gateway's domain")]
    OutsideDomains(String),
}

/// What a host name says, before a source's policy applies.
enum Named<'a> {
    /// `localhost` or an IP literal.
    Local,
    /// A name without a dot.
    Bare(&'a str),
    /// `<label>.<rest>` with `rest` one of the domains (or any, without domains).
    Label(&'a str),
    /// A dotted name outside the domains.
    Elsewhere,
}

fn classify<'a>(host: &'a str, domains: &[String]) -> Named<'a> {
    let host = strip_port(host).trim_end_matches('.');
    if is_local(host) {
        return Named::Local;
    }
    match host.split_once('.') {
        None => Named::Bare(host),
        Some((label, rest)) => {
            if domains.is_empty() || domains.iter().any(|d| d.eq_ignore_ascii_case(rest)) {
                Named::Label(label)
            } else {
                Named::Elsewhere
            }
        }
    }
}

/// The endpoint the host of a connection string (or `?address=`, `host[:port]`) names; `None`
/// for `localhost` and IP literals (the default endpoint's).
pub fn from_connection_host(
    host: &str,
    domains: &[String],
) -> Result<Option<EndpointId>, HostError> {
    let label = match classify(host, domains) {
        Named::Local => return Ok(None),
        Named::Bare(label) if domains.is_empty() => label,
        Named::Label(label) => label,
        Named::Bare(_) | Named::Elsewhere => {
            return Err(HostError::OutsideDomains(host.to_owned()))
        }
    };
    EndpointId::parse(label)
        .map(Some)
        .ok_or_else(|| HostError::InvalidEndpoint(label.to_owned()))
}

/// The endpoint a Host header or SNI name names, if any: only `<id>.<domain>` (any dotted
/// name's first label without domains), never a bare name, a local one or an invalid label.
pub fn from_server_name(name: &str, domains: &[String]) -> Option<EndpointId> {
    match classify(name, domains) {
        Named::Label(label) => EndpointId::parse(label),
        Named::Local | Named::Bare(_) | Named::Elsewhere => None,
    }
}

fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or_default();
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => address,
    }
}

fn is_local(host: &str) -> bool {
    host.is_empty() || host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Option<EndpointId> {
        Some(EndpointId::parse(name).expect("endpoint id"))
    }

    struct Case {
        host: &'static str,
        domains: &'static [&'static str],
        connection: Result<Option<EndpointId>, HostError>,
        server_name: Option<EndpointId>,
    }

    #[test]
    fn one_rule_for_every_source() {
        let pg = &["pg.example.com"];
        let cases = [
            Case {
                host: "db.localtest.me:4444",
                domains: &[],
                connection: Ok(id("db")),
                server_name: id("db"),
            },
            Case {
                host: "EP-1.example.com",
                domains: &[],
                connection: Ok(id("ep-1")),
                server_name: id("ep-1"),
            },
            Case {
                host: "postgres:5432",
                domains: &[],
                connection: Ok(id("postgres")),
                server_name: None,
            },
            Case {
                host: "localhost:5432",
                domains: &[],
                connection: Ok(None),
                server_name: None,
            },
            Case {
                host: "[::1]:5432",
                domains: &[],
                connection: Ok(None),
                server_name: None,
            },
            Case {
                host: "::1",
                domains: &[],
                connection: Ok(None),
                server_name: None,
            },
            Case {
                host: "127.0.0.1:4444",
                domains: pg,
                connection: Ok(None),
                server_name: None,
            },
            Case {
                host: "db_x.y",
                domains: &[],
                connection: Err(HostError::InvalidEndpoint("db_x".into())),
                server_name: None,
            },
            Case {
                host: "ep-1.pg.example.com.",
                domains: pg,
                connection: Ok(id("ep-1")),
                server_name: id("ep-1"),
            },
            Case {
                host: "ep-1.other.com",
                domains: pg,
                connection: Err(HostError::OutsideDomains("ep-1.other.com".into())),
                server_name: None,
            },
            Case {
                host: "a.b.pg.example.com",
                domains: pg,
                connection: Err(HostError::OutsideDomains("a.b.pg.example.com".into())),
                server_name: None,
            },
            Case {
                host: "db",
                domains: pg,
                connection: Err(HostError::OutsideDomains("db".into())),
                server_name: None,
            },
        ];
        for case in cases {
            let domains: Vec<String> = case.domains.iter().map(|d| d.to_string()).collect();
            assert_eq!(
                from_connection_host(case.host, &domains),
                case.connection,
                "{} as a connection host",
                case.host
            );
            assert_eq!(
                from_server_name(case.host, &domains),
                case.server_name,
                "{} as a server name",
                case.host
            );
        }
    }
}
