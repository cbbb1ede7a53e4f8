//! Wire types that cross the gateway ↔ wake-service boundary, defined once.
//!
//! - [`admin`]: the wake service's own REST API (`/v1/...`), used by operators, the CLI and tests.
//! - [`proxy`]: the Neon-compatible proxy API (`/proxy/api/v1/...`) the gateway calls to wake an
//!   endpoint and to learn its role secrets.
//! - [`usage`]: the usage API's answers, consumption events, and prices.
//!
//! Enums are forward-compatible: a value this version does not know parses as `Unknown`.

pub mod admin;
pub mod proxy;
pub mod usage;

/// The suffix of an endpoint name that selects the endpoint's PgBouncer instead of Postgres.
pub const POOLER_SUFFIX: &str = "-pooler";

/// What separates an endpoint from one of its databases in a host name:
/// `<endpoint>--<database>[-pooler].<domain>` reaches that database whatever database the
/// client names (how a Neon branch's own host is served here). New endpoint ids may not
/// contain it ([`names::valid_new_endpoint_id`]).
pub const DATABASE_SEPARATOR: &str = "--";

/// Splits an "endpointish" (`ep` or `ep-pooler`) into the endpoint id and whether the pooler
/// was asked for.
pub fn split_pooler(endpointish: &str) -> (&str, bool) {
    match endpointish.strip_suffix(POOLER_SUFFIX) {
        Some(id) if !id.is_empty() => (id, true),
        _ => (endpointish, false),
    }
}

/// Endpoint, role and database names: what the API accepts.
pub mod names {
    /// Endpoint ids: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not
    /// ending with `-` and not ending with `-pooler` (one DNS label, lower case).
    pub fn valid_endpoint_id(id: &str) -> bool {
        let bytes = id.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && !id.ends_with('-')
            && !id.ends_with(super::POOLER_SUFFIX)
    }

    /// An id for a new endpoint: [`valid_endpoint_id`] without [`super::DATABASE_SEPARATOR`],
    /// so that its host names it alone. (Endpoints made before the rule keep their ids; a host
    /// cannot name them, `options=endpoint=<id>` still can.)
    pub fn valid_new_endpoint_id(id: &str) -> bool {
        valid_endpoint_id(id) && !id.contains(super::DATABASE_SEPARATOR)
    }

    /// Role and database names: 1–63 characters of letters, digits, `_` and `-`, starting with
    /// a letter or `_`, and not reserved (`pg_*`, and the names the compute keeps for itself).
    pub fn valid_object_name(name: &str) -> bool {
        let bytes = name.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            && !name.to_ascii_lowercase().starts_with("pg_")
            && !RESERVED.contains(&name)
    }

    /// Names the compute reserves: its admin role and template databases.
    pub const RESERVED: &[&str] = &[
        "cloud_admin",
        "template0",
        "template1",
        "pgbouncer",
        "public",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooler_suffix() {
        assert_eq!(split_pooler("db"), ("db", false));
        assert_eq!(split_pooler("db-pooler"), ("db", true));
        assert_eq!(split_pooler("-pooler"), ("-pooler", false));
    }

    #[test]
    fn endpoint_ids() {
        for ok in ["db", "ep-cool-darkness-123", "a"] {
            assert!(names::valid_endpoint_id(ok), "{ok}");
        }
        for bad in ["", "Db", "1db", "db-", "db_x", "db-pooler", &"a".repeat(64)] {
            assert!(!names::valid_endpoint_id(bad), "{bad}");
        }
        assert!(names::valid_endpoint_id("a--b"));
        assert!(!names::valid_new_endpoint_id("a--b"));
        assert!(names::valid_new_endpoint_id("ep-a-b"));
    }

    #[test]
    fn object_names() {
        for ok in ["postgres", "app_user", "Main", "_x", "my-db"] {
            assert!(names::valid_object_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1x",
            "pg_monitor",
            "a b",
            "x;drop",
            "cloud_admin",
            "template1",
        ] {
            assert!(!names::valid_object_name(bad), "{bad}");
        }
    }
}
