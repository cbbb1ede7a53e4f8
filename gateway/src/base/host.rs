//! Which endpoint a host name names: the one rule for the host of a connection string (and of
//! the WebSocket `?address=` the driver derives from it), the Host header and the TLS SNI name.
//!
//! A host names an endpoint by its first DNS label: `ep-x.pg.example.com` names `ep-x`. With
//! `--domain` set, only `<id>.<domain>` names one. `localhost` and IP literals name none. The
//! two kinds of source differ only where they must: a host the client wrote in its connection
//! string is meant as an endpoint, so a bare name (`db`) names that endpoint and a name outside
//! the domains is an error; a name the client merely dialled (Host, SNI) may be a service name
//! (`gateway:4444`) or another domain, which name no endpoint.
//!
//! A label `<id>--<database>` (or `<id>--<database>-pooler`) names endpoint `<id>` (or its
//! PgBouncer) and one of its databases, which the session gets whatever database the client
//! names: a Neon branch has a host of its own and keeps its databases' names, and here a
//! branch is a database, so its host names it ([`wake_api::DATABASE_SEPARATOR`]). The database
//! is the tenant's own, reachable by name on the endpoint's host anyway: the host only chooses
//! it; roles and privileges decide as always.

use std::net::IpAddr;

use crate::base::endpoint::EndpointId;

/// Why a connection-string host names no usable endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "invalid endpoint id '{0}': use letters, digits and '-' (or '<id>--<database>' for one of its databases)"
    )]
    InvalidEndpoint(String),
    #[error("host '{0}' is not under this gateway's domain")]
    OutsideDomains(String),
}

/// What a host names: an endpoint, and with `<id>--<database>` one of its databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub endpoint: EndpointId,
    /// The database the session gets, whatever the client names (lower case, as hosts are).
    pub database: Option<String>,
}

impl Target {
    /// `label`'s endpoint and database, if it is a valid endpoint id or `<id>--<database>`.
    fn parse(label: &str) -> Option<Target> {
        let label = label.to_ascii_lowercase();
        let (base, pooler) = wake_api::split_pooler(&label);
        let Some((id, database)) = base.split_once(wake_api::DATABASE_SEPARATOR) else {
            return EndpointId::parse(&label).map(|endpoint| Target {
                endpoint,
                database: None,
            });
        };
        if !wake_api::names::valid_object_name(database) {
            return None;
        }
        let id = if pooler {
            format!("{id}{}", wake_api::POOLER_SUFFIX)
        } else {
            id.to_owned()
        };
        Some(Target {
            endpoint: EndpointId::parse(&id)?,
            database: Some(database.to_owned()),
        })
    }
}

/// What a host name says, before a source's policy applies.
enum Shape<'a> {
    /// `localhost` or an IP literal.
    Local,
    /// A name without a dot.
    Bare(&'a str),
    /// `<label>.<rest>` with `rest` one of the domains (or any, without domains).
    Label(&'a str),
    /// A dotted name outside the domains.
    Elsewhere,
}

fn classify<'a>(host: &'a str, domains: &[String]) -> Shape<'a> {
    let host = strip_port(host).trim_end_matches('.');
    if is_local(host) {
        return Shape::Local;
    }
    match host.split_once('.') {
        None => Shape::Bare(host),
        Some((label, rest)) => {
            if domains.is_empty() || domains.iter().any(|d| d.eq_ignore_ascii_case(rest)) {
                Shape::Label(label)
            } else {
                Shape::Elsewhere
            }
        }
    }
}

/// What the host of a connection string (or `?address=`, `host[:port]`) names; `None` for
/// `localhost` and IP literals (the default endpoint's).
pub fn from_connection_host(host: &str, domains: &[String]) -> Result<Option<Target>, HostError> {
    let label = match classify(host, domains) {
        Shape::Local => return Ok(None),
        Shape::Bare(label) if domains.is_empty() => label,
        Shape::Label(label) => label,
        Shape::Bare(_) | Shape::Elsewhere => {
            return Err(HostError::OutsideDomains(host.to_owned()))
        }
    };
    Target::parse(label)
        .map(Some)
        .ok_or_else(|| HostError::InvalidEndpoint(label.to_owned()))
}

/// What a Host header or SNI name names, if anything: only `<id>.<domain>` (any dotted name's
/// first label without domains), never a bare name, a local one or an invalid label.
pub fn from_server_name(name: &str, domains: &[String]) -> Option<Target> {
    match classify(name, domains) {
        Shape::Label(label) => Target::parse(label),
        Shape::Local | Shape::Bare(_) | Shape::Elsewhere => None,
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

    fn id(name: &str) -> Option<Target> {
        Some(Target {
            endpoint: EndpointId::parse(name).expect("endpoint id"),
            database: None,
        })
    }

    fn in_database(name: &str, database: &str) -> Option<Target> {
        Some(Target {
            endpoint: EndpointId::parse(name).expect("endpoint id"),
            database: Some(database.to_owned()),
        })
    }

    struct Case {
        host: &'static str,
        domains: &'static [&'static str],
        connection: Result<Option<Target>, HostError>,
        server_name: Option<Target>,
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
            // <endpoint>--<database>: a branch's own host.
            Case {
                host: "db--br-cool-dawn-12345678.localtest.me:4444",
                domains: &[],
                connection: Ok(in_database("db", "br-cool-dawn-12345678")),
                server_name: in_database("db", "br-cool-dawn-12345678"),
            },
            Case {
                host: "EP-1--Br_X-pooler.pg.example.com",
                domains: pg,
                connection: Ok(in_database("ep-1-pooler", "br_x")),
                server_name: in_database("ep-1-pooler", "br_x"),
            },
            Case {
                host: "db--pg_catalog.localtest.me",
                domains: &[],
                connection: Err(HostError::InvalidEndpoint("db--pg_catalog".into())),
                server_name: None,
            },
            Case {
                host: "db--.localtest.me",
                domains: &[],
                connection: Err(HostError::InvalidEndpoint("db--".into())),
                server_name: None,
            },
            Case {
                host: "--main.localtest.me",
                domains: &[],
                connection: Err(HostError::InvalidEndpoint("--main".into())),
                server_name: None,
            },
            Case {
                host: "db--main-pooler-pooler.localtest.me",
                domains: &[],
                connection: Ok(in_database("db-pooler", "main-pooler")),
                server_name: in_database("db-pooler", "main-pooler"),
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
