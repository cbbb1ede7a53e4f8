//! Who a request is for: endpoint, database, role and password, read from the connection string
//! the driver sends in `Neon-Connection-String`.
//!
//! The host names the endpoint by [`crate::base::host`]'s rule (`ep-x.region.example.com` →
//! `ep-x`, `ep-x--br-1.region.example.com` → `ep-x` and its database `br-1` whatever the path
//! says); `localhost` or an IP literal names none and goes to the configured default. The
//! Host header, the port and the URL's query string play no part.

use percent_encoding::percent_decode_str;

use crate::base::endpoint::{EndpointId, Password};
use crate::base::error::{ErrorKind, ReportableError};
use crate::base::host::{self, HostError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub endpoint: EndpointId,
    pub database: String,
    pub user: String,
    pub password: Password,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error("missing connection string: send it in the Neon-Connection-String header")]
    Missing,
    #[error("connection string is not valid UTF-8")]
    NotUtf8,
    #[error("invalid connection string: {0}")]
    Invalid(String),
    #[error("incorrect scheme in connection string: expected postgres:// or postgresql://")]
    IncorrectScheme,
    #[error("missing hostname in connection string")]
    MissingHostname,
    #[error(transparent)]
    Host(HostError),
    #[error("missing database name in connection string")]
    MissingDatabase,
    #[error("missing user name in connection string")]
    MissingUser,
    #[error("{0} in connection string is not valid UTF-8 after percent-decoding")]
    BadEncoding(&'static str),
    #[error("{0} in connection string must not contain a NUL byte")]
    Nul(&'static str),
}

impl ReportableError for ConnInfoError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::User
    }
}

/// Parses `postgres://user:password@host[:port]/database[?…]`; the host names the endpoint by
/// [`crate::base::host`]'s rule (`localhost` and IP literals: `default`).
pub fn parse(
    connection_string: &str,
    default: &EndpointId,
    domains: &[String],
) -> Result<ConnInfo, ConnInfoError> {
    let url =
        url::Url::parse(connection_string).map_err(|e| ConnInfoError::Invalid(e.to_string()))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(ConnInfoError::IncorrectScheme);
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(ConnInfoError::MissingHostname)?;
    let target = host::from_connection_host(host, domains).map_err(ConnInfoError::Host)?;

    let database = url
        .path_segments()
        .and_then(|mut segments| segments.next())
        .unwrap_or_default();
    let database = decode_text(database, "database name")?;
    if database.is_empty() {
        return Err(ConnInfoError::MissingDatabase);
    }
    let user = decode_text(url.username(), "user name")?;
    if user.is_empty() {
        return Err(ConnInfoError::MissingUser);
    }
    let password: Vec<u8> = percent_decode_str(url.password().unwrap_or_default()).collect();
    if password.contains(&0) {
        return Err(ConnInfoError::Nul("password"));
    }
    // A host `<id>--<database>` chooses the database ([`crate::base::host`]).
    let (endpoint, database) = match target {
        Some(host::Target {
            endpoint,
            database: Some(chosen),
        }) => (endpoint, chosen),
        Some(host::Target { endpoint, .. }) => (endpoint, database),
        None => (default.clone(), database),
    };
    Ok(ConnInfo {
        endpoint,
        database,
        user,
        password: Password::new(password),
    })
}

fn decode_text(raw: &str, what: &'static str) -> Result<String, ConnInfoError> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ConnInfoError::BadEncoding(what))?;
    if decoded.contains('\0') {
        return Err(ConnInfoError::Nul(what));
    }
    Ok(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> EndpointId {
        EndpointId::parse("db").expect("valid")
    }

    fn check(input: &str, expected: Result<(&str, &str, &str, &[u8]), ConnInfoError>) {
        let got = parse(input, &default(), &[]).map(|c| {
            (
                c.endpoint.as_str().to_owned(),
                c.database,
                c.user,
                c.password.as_bytes().to_vec(),
            )
        });
        let expected =
            expected.map(|(e, d, u, p)| (e.to_owned(), d.to_owned(), u.to_owned(), p.to_vec()));
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn connection_strings() {
        check(
            "postgres://postgres:postgres@db.localtest.me:4444/main",
            Ok(("db", "main", "postgres", b"postgres")),
        );
        check(
            "postgresql://alice:p%40ss%3Aw%2Fd@ep-cool-123.us-east-2.aws.example.com/neondb?sslmode=require&channel_binding=require",
            Ok(("ep-cool-123", "neondb", "alice", b"p@ss:w/d")),
        );
        check(
            "postgres://Bob%20B:x@EP-Upper.example.com/my%20db",
            Ok(("ep-upper", "my db", "Bob B", b"x")),
        );
        check(
            "postgres://u:p@localhost/main",
            Ok(("db", "main", "u", b"p")),
        );
        check(
            "postgres://u:p@127.0.0.1:5432/main",
            Ok(("db", "main", "u", b"p")),
        );
        check(
            "postgres://u:p@[::1]:5432/main",
            Ok(("db", "main", "u", b"p")),
        );
        check(
            "postgres://u@db-pooler.x/main",
            Ok(("db-pooler", "main", "u", b"")),
        );
        check(
            "postgres://u:p@db--br-cool-dawn-12345678.x/neondb",
            Ok(("db", "br-cool-dawn-12345678", "u", b"p")),
        );
        check(
            "postgres://u:p@db--br-1-pooler.x/neondb",
            Ok(("db-pooler", "br-1", "u", b"p")),
        );
        check(
            "postgres://u:%FF%00@db.x/main",
            Err(ConnInfoError::Nul("password")),
        );
        check("mysql://u:p@db.x/main", Err(ConnInfoError::IncorrectScheme));
        check("postgres://u:p@db.x/", Err(ConnInfoError::MissingDatabase));
        check("postgres://u:p@db.x", Err(ConnInfoError::MissingDatabase));
        check("postgres://:p@db.x/main", Err(ConnInfoError::MissingUser));
        check(
            "postgres://u:p@db_x.y/main",
            Err(ConnInfoError::Host(HostError::InvalidEndpoint(
                "db_x".into(),
            ))),
        );
        check(
            "postgres://%FF:p@db.x/main",
            Err(ConnInfoError::BadEncoding("user name")),
        );
        assert!(matches!(
            parse("not a url", &default(), &[]),
            Err(ConnInfoError::Invalid(_))
        ));
    }

    #[test]
    fn password_bytes_need_not_be_utf8() {
        let info = parse("postgres://u:%FF%FE@db.x/main", &default(), &[]).expect("parses");
        assert_eq!(info.password.as_bytes(), &[0xff, 0xfe]);
        assert_eq!(format!("{:?}", info.password), "Password(<redacted>)");
    }
}
