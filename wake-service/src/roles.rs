//! The SQL the wake service runs inside a compute's Postgres, as `cloud_admin`, to manage login
//! roles and to keep every tenant role unprivileged.
//!
//! What a role created through the API is: `LOGIN CREATEDB BYPASSRLS` and
//! `NOSUPERUSER NOCREATEROLE NOREPLICATION`, a member of `pg_read_all_data`,
//! `pg_write_all_data`, `pg_monitor` and `pg_signal_backend` (so the roles of one endpoint see
//! each other's data, as Neon's `neon_superuser` members do). Never `CREATEROLE`: on Postgres 15
//! it may grant any non-superuser role, `pg_execute_server_program` (`COPY … TO PROGRAM`, a
//! shell on the host) among them. Role management goes through the API instead.
//!
//! The security baseline ([`BASELINE`]) is applied to computes made by earlier versions and
//! whenever the store asks for a sync: no role but `cloud_admin` is superuser, has
//! `CREATEROLE` or `REPLICATION`, holds a membership of the roles that reach the server's
//! files and programs, or holds an admin option on any role.
//!
//! Role names are checked by [`wake_api::names::valid_object_name`] before they get here;
//! they and the verifiers are quoted all the same.

/// The superuser every compute is created with; it logs in only from the wake service.
pub const SUPERUSER: &str = "cloud_admin";

/// The attributes of every API role.
pub const ATTRIBUTES: &str = "LOGIN CREATEDB BYPASSRLS NOSUPERUSER NOCREATEROLE NOREPLICATION";

/// The predefined roles every API role is a member of.
pub const MEMBERSHIPS: &str = "pg_read_all_data, pg_write_all_data, pg_monitor, pg_signal_backend";

/// The predefined roles that reach the server's OS: no tenant role may ever hold them.
pub const SERVER_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Takes from every role but the superuser what would let it leave its endpoint. Idempotent;
/// runs as `cloud_admin` with `search_path = pg_catalog`.
pub const BASELINE: &str = r#"DO $baseline$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT rolname FROM pg_catalog.pg_roles
             WHERE rolname <> 'cloud_admin' AND rolname !~ '^pg_'
               AND (rolsuper OR rolcreaterole OR rolreplication)
    LOOP
        EXECUTE pg_catalog.format('ALTER ROLE %I NOSUPERUSER NOCREATEROLE NOREPLICATION', r.rolname);
    END LOOP;
    FOR r IN SELECT g.rolname AS granted, m.rolname AS member, a.admin_option
             FROM pg_catalog.pg_auth_members a
             JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
             JOIN pg_catalog.pg_roles m ON m.oid = a.member
             WHERE m.rolname <> 'cloud_admin'
               AND (a.admin_option OR g.rolname IN
                    ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files'))
    LOOP
        IF r.granted IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files') THEN
            EXECUTE pg_catalog.format('REVOKE %I FROM %I CASCADE', r.granted, r.member);
        ELSE
            EXECUTE pg_catalog.format('REVOKE ADMIN OPTION FOR %I FROM %I CASCADE', r.granted, r.member);
        END IF;
    END LOOP;
END
$baseline$"#;

/// `CREATE ROLE` for an API role with its verifier (fails with `duplicate_object` when a role
/// of that name exists).
pub fn create(name: &str, secret: &str) -> String {
    format!(
        "CREATE ROLE {} WITH {ATTRIBUTES} PASSWORD {} IN ROLE {MEMBERSHIPS}",
        quote_ident(name),
        quote_literal(secret)
    )
}

/// Makes `name` an API role with `secret` whether or not it exists: its attributes, verifier
/// and memberships as [`create`] gives them.
pub fn ensure(name: &str, secret: &str) -> String {
    let role = quote_ident(name);
    let secret = quote_literal(secret);
    format!(
        "DO $ensure$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {name_literal}) THEN
                CREATE ROLE {role};
            END IF;
         END $ensure$;
         ALTER ROLE {role} WITH {ATTRIBUTES} PASSWORD {secret};
         GRANT {MEMBERSHIPS} TO {role}",
        name_literal = quote_literal(name),
    )
}

/// A new verifier for an existing role.
pub fn set_password(name: &str, secret: &str) -> String {
    format!(
        "ALTER ROLE {} WITH PASSWORD {}",
        quote_ident(name),
        quote_literal(secret)
    )
}

/// What makes a role's sessions end (before it is dropped).
pub const TERMINATE_SESSIONS: &str =
    "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid))
     FROM pg_catalog.pg_stat_activity WHERE usename = $1";

/// The databases a role owns (it cannot be dropped while it owns any).
pub const OWNED_DATABASES: &str = "SELECT d.datname FROM pg_catalog.pg_database d
     JOIN pg_catalog.pg_roles r ON r.oid = d.datdba WHERE r.rolname = $1 ORDER BY 1";

/// Every database a role may own objects in, with its owner and whether the owner is a
/// superuser.
pub const DATABASES: &str = "SELECT d.datname, r.rolname, r.rolsuper FROM pg_catalog.pg_database d
     JOIN pg_catalog.pg_roles r ON r.oid = d.datdba WHERE d.datallowconn ORDER BY 1";

/// Run in each database before a role is dropped: what it owns there goes to the database's
/// owner, or is dropped when the owner is a superuser (an object handed to `cloud_admin` —
/// a `SECURITY DEFINER` function — would run as superuser for whoever calls it).
pub fn release_owned(name: &str, owner: &str, owner_is_superuser: bool) -> String {
    let role = quote_ident(name);
    if owner_is_superuser || owner == SUPERUSER {
        format!("DROP OWNED BY {role}")
    } else {
        format!(
            "REASSIGN OWNED BY {role} TO {}; DROP OWNED BY {role}",
            quote_ident(owner)
        )
    }
}

/// `DROP ROLE IF EXISTS`.
pub fn drop(name: &str) -> String {
    format!("DROP ROLE IF EXISTS {}", quote_ident(name))
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        assert_eq!(
            create("alice", "SCRAM-SHA-256$4096:c2FsdA==$a:b"),
            "CREATE ROLE \"alice\" WITH LOGIN CREATEDB BYPASSRLS NOSUPERUSER NOCREATEROLE \
             NOREPLICATION PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b' IN ROLE pg_read_all_data, \
             pg_write_all_data, pg_monitor, pg_signal_backend"
        );
        assert!(!ATTRIBUTES.contains(" CREATEROLE"));
        assert_eq!(
            release_owned("bob", "alice", false),
            "REASSIGN OWNED BY \"bob\" TO \"alice\"; DROP OWNED BY \"bob\""
        );
        assert_eq!(
            release_owned("bob", "cloud_admin", true),
            "DROP OWNED BY \"bob\""
        );
        assert_eq!(drop("a\"b"), "DROP ROLE IF EXISTS \"a\"\"b\"");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
