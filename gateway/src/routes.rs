//! Where each endpoint's Postgres listens. Today the table is static (`endpoint=host:port`
//! from config): the mode for users who already run a Postgres. The wake service will add
//! looked-up, cached routes behind the same `resolve`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::conn_info::EndpointId;

/// A backend address for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub endpoint: EndpointId,
    /// `host:port`, resolved at connect time.
    pub address: String,
}

impl FromStr for Route {
    type Err = String;

    /// Parses `endpoint=host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, address) = s
            .split_once('=')
            .ok_or_else(|| format!("route '{s}' is not of the form endpoint=host:port"))?;
        let endpoint = EndpointId::parse(id.trim())
            .ok_or_else(|| format!("route '{s}': invalid endpoint id '{id}'"))?;
        let address = address.trim();
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("route '{s}': address '{address}' has no port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("route '{s}': address '{address}' is not host:port"));
        }
        Ok(Route {
            endpoint,
            address: address.to_owned(),
        })
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.endpoint, self.address)
    }
}

/// The route table the data plane consults for every new backend connection.
#[derive(Debug, Default)]
pub struct Routes {
    fixed: HashMap<EndpointId, Route>,
}

impl Routes {
    pub fn from_static(routes: impl IntoIterator<Item = Route>) -> Self {
        Routes {
            fixed: routes
                .into_iter()
                .map(|route| (route.endpoint.clone(), route))
                .collect(),
        }
    }

    /// The backend for `endpoint`, or `None` when no such endpoint exists.
    pub fn resolve(&self, endpoint: &EndpointId) -> Option<&Route> {
        self.fixed.get(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(&str, &str), ()>) {
        let got = input
            .parse::<Route>()
            .map(|r| (r.endpoint.as_str().to_owned(), r.address))
            .map_err(|_| ());
        let expected = expected.map(|(e, a)| (e.to_owned(), a.to_owned()));
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn parse_routes() {
        check("db=127.0.0.1:5432", Ok(("db", "127.0.0.1:5432")));
        check("EP-1 = pg.internal:6432", Ok(("ep-1", "pg.internal:6432")));
        check("db=[::1]:5432", Ok(("db", "[::1]:5432")));
        check("db=127.0.0.1", Err(()));
        check("db=:5432", Err(()));
        check("db=host:99999", Err(()));
        check("bad_id=host:1", Err(()));
        check("host:1", Err(()));
    }

    #[test]
    fn resolve_is_exact() {
        let routes = Routes::from_static(["db=127.0.0.1:1".parse().expect("route")]);
        let db = EndpointId::parse("db").expect("id");
        let other = EndpointId::parse("db-pooler").expect("id");
        assert_eq!(
            routes.resolve(&db).map(|r| r.address.as_str()),
            Some("127.0.0.1:1")
        );
        assert_eq!(routes.resolve(&other), None);
    }
}
