//! JWT logins (issue 15): the login material the wake service makes per endpoint, and the SQL
//! that prepares a compute's Postgres for it (the gateway's side is in ARCHITECTURE.md, "Life of a JWT login").
//!
//! The material: one HMAC-SHA-256 key that authenticates claims envelopes to SQL (`kid` 1,
//! 32 random bytes) and, per JWT role, a random password of which only its SCRAM-SHA-256
//! verifier and ClientKey are kept (what Postgres and the gateways need; nobody ever types it).
//!
//! The SQL is run as the superuser and is idempotent (each part first sets `search_path` to
//! `pg_catalog, pg_temp` for its connection, so nothing a tenant made is resolved by it): [`cluster_sql`] once per compute (the
//! roles are cluster-wide), [`DATABASE_SQL`], [`database_grants`] and [`UPSERT_KEY`] in every
//! database that allows connections. It needs only stock Postgres 15 (the built-in `sha256`),
//! and runs the same over any plain superuser connection.
//!
//! Architecture invariant: JWT roles are not API roles. They are `LOGIN NOINHERIT NOBYPASSRLS`,
//! members of nothing, their password is never handed out (the proxy API's access control
//! gives an empty secret for them), and their names can never be API role names.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use wake_api::admin::CreateJwks;
use wake_api::names::valid_object_name;
use wake_api::proxy::{JwksSettings, SUPPORTED_JWT_ALGORITHMS};

use crate::roles::{quote_ident, quote_literal};

/// The role that owns the `auth` and `gw_auth` schemas and their objects (NOLOGIN).
pub const OWNER: &str = "gw_auth_owner";

/// The JWT roles a rule gets when it names none (Neon's and Drizzle's names).
pub const DEFAULT_ROLES: [&str; 2] = ["authenticated", "anonymous"];

/// The attributes of every JWT role.
pub const ROLE_ATTRIBUTES: &str =
    "LOGIN NOINHERIT NOBYPASSRLS NOCREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION";

/// The `kid` of an endpoint's first (and, for now, only) claims key.
pub const FIRST_KID: i32 = 1;

/// The most rules one endpoint may have.
pub const MAX_RULES: usize = 10;
/// The largest inline key set (serialized JSON).
pub const MAX_INLINE_JWKS: usize = 64 * 1024;
/// The most roles one rule may name.
const MAX_ROLES: usize = 16;
/// The longest URL, audience or issuer accepted.
const MAX_TEXT: usize = 2048;

/// HMAC-SHA-256 block size: the key is zero-padded to it before the pads are taken.
const BLOCK: usize = 64;

/// A rule as requested, checked (the API's rules: README, "JWT auth and row-level security") and completed with `id`; the
/// message of an error says what to fix.
pub fn rule(request: &CreateJwks, id: String) -> Result<JwksSettings, String> {
    let provider = request.provider_name.chars().count();
    if !(1..=64).contains(&provider) {
        return Err("provider_name must be 1-64 characters".into());
    }
    let jwks_url = match (&request.jwks_url, &request.jwks) {
        (Some(url), None) => {
            check_url(url)?;
            url.clone()
        }
        (None, Some(set)) => {
            check_inline(set)?;
            String::new()
        }
        _ => return Err("give exactly one of jwks_url and jwks".into()),
    };
    for (field, value) in [
        ("jwt_audience", &request.jwt_audience),
        ("jwt_issuer", &request.jwt_issuer),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_TEXT)
        {
            return Err(format!("{field} must be 1-{MAX_TEXT} bytes when given"));
        }
    }
    Ok(JwksSettings {
        id,
        jwks_url,
        provider_name: request.provider_name.clone(),
        jwt_audience: request.jwt_audience.clone(),
        role_names: role_names(request.role_names.as_deref())?,
        jwt_issuer: request.jwt_issuer.clone(),
        algorithms: algorithms(request.algorithms.as_deref())?,
        jwks: request.jwks.clone(),
    })
}

/// An http(s) URL with a host, and without userinfo, query or fragment.
fn check_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("jwks_url {why}"));
    if url.len() > MAX_TEXT {
        return bad(&format!("is longer than {MAX_TEXT} bytes"));
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("is not a valid URL");
    };
    if !matches!(parsed.scheme(), "https" | "http") {
        return bad("must be an https (or, for tests, http) URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return bad("must name a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("must not carry a user name or password");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return bad("must not have a query or a fragment");
    }
    Ok(())
}

/// An object with a `keys` array, at most [`MAX_INLINE_JWKS`] bytes as JSON.
fn check_inline(set: &serde_json::Value) -> Result<(), String> {
    if !set.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err("jwks must be an object with a \"keys\" array".into());
    }
    if set.to_string().len() > MAX_INLINE_JWKS {
        return Err(format!("jwks is larger than {MAX_INLINE_JWKS} bytes"));
    }
    Ok(())
}

/// The rule's roles: the default when none are given; each a valid name that is neither
/// reserved (`cloud_admin`, `pg_*`) nor the schemas' owner.
fn role_names(given: Option<&[String]>) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = match given {
        None => DEFAULT_ROLES.iter().map(|r| (*r).to_owned()).collect(),
        Some(names) => names.to_vec(),
    };
    dedup(&mut names);
    if names.is_empty() || names.len() > MAX_ROLES {
        return Err(format!("role_names must name 1-{MAX_ROLES} roles"));
    }
    if let Some(bad) = names
        .iter()
        .find(|n| !valid_object_name(n) || n.as_str() == OWNER)
    {
        return Err(format!(
            "role name '{bad}' is not allowed: use 1-63 letters, digits, '_' and '-', starting with a letter or '_'; pg_* names, cloud_admin and {OWNER} are reserved"
        ));
    }
    Ok(names)
}

/// The rule's algorithms: empty (the default) when none are given; each supported.
fn algorithms(given: Option<&[String]>) -> Result<Vec<String>, String> {
    let mut algorithms = given.unwrap_or_default().to_vec();
    if let Some(bad) = algorithms
        .iter()
        .find(|a| !SUPPORTED_JWT_ALGORITHMS.contains(&a.as_str()))
    {
        return Err(format!(
            "algorithm '{bad}' is not supported: use {}",
            SUPPORTED_JWT_ALGORITHMS.join(", ")
        ));
    }
    dedup(&mut algorithms);
    Ok(algorithms)
}

/// Drops repeated values, keeping the first of each in place.
fn dedup(values: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    values.retain(|v| seen.insert(v.clone()));
}

/// A new rule id: `jwks-` and 16 random hex digits.
pub fn new_rule_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("jwks-{}", hex(&bytes))
}

/// Why login material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("the SCRAM verifier made for a JWT role is malformed")]
    Verifier,
}

/// A JWT role's login: its SCRAM verifier and the matching ClientKey (both secret).
#[derive(Clone, PartialEq, Eq)]
pub struct RoleLogin {
    pub name: String,
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub secret: String,
    /// The SCRAM ClientKey (32 bytes).
    pub client_key: Vec<u8>,
}

impl std::fmt::Debug for RoleLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleLogin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RoleLogin {
    /// A random password for `name`, kept only as its verifier and ClientKey.
    pub fn generate(name: &str) -> Result<RoleLogin, MaterialError> {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let password = BASE64.encode(bytes);
        let secret = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let client_key = client_key(&secret, password.as_bytes())?;
        Ok(RoleLogin {
            name: name.to_owned(),
            secret,
            client_key,
        })
    }

    /// The wire form for the proxy API.
    pub fn to_wire(&self) -> wake_api::proxy::JwtRoleLogin {
        wake_api::proxy::JwtRoleLogin {
            name: self.name.clone(),
            secret: self.secret.clone(),
            client_key: BASE64.encode(&self.client_key),
        }
    }
}

/// RFC 5802 ClientKey of `password` under `secret`'s salt and iterations, checked against the
/// verifier's StoredKey (`SHA-256(ClientKey)`).
fn client_key(secret: &str, password: &[u8]) -> Result<Vec<u8>, MaterialError> {
    let (iterations, salt, stored_key) = parse_verifier(secret).ok_or(MaterialError::Verifier)?;
    let salted = hi(password, &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    if Sha256::digest(&client_key).as_slice() != stored_key.as_slice() {
        return Err(MaterialError::Verifier);
    }
    Ok(client_key)
}

/// `(iterations, salt, StoredKey)` of a `SCRAM-SHA-256$i:salt$stored:server` verifier.
pub fn parse_verifier(secret: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let rest = secret.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, _server) = keys.split_once(':')?;
    Some((
        iterations.parse().ok().filter(|i| *i > 0)?,
        BASE64.decode(salt).ok()?,
        BASE64.decode(stored).ok()?,
    ))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 5802 `Hi()` (PBKDF2-HMAC-SHA-256, one block).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut message = salt.to_vec();
    message.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &message);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// A new random claims key (32 bytes).
pub fn generate_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

/// The key's HMAC pads as `gw_auth.keys` holds them: the key zero-padded to 64 bytes, XOR
/// 0x36 (`k_ipad`) and XOR 0x5c (`k_opad`).
pub fn pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut padded = [0u8; BLOCK];
    padded[..key.len().min(BLOCK)].copy_from_slice(&key[..key.len().min(BLOCK)]);
    (
        padded.iter().map(|b| b ^ 0x36).collect(),
        padded.iter().map(|b| b ^ 0x5c).collect(),
    )
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster-wide part, once per compute: the schemas' owner and every JWT role as
/// [`ROLE_ATTRIBUTES`] says, with its verifier, its own setting defaults replaced by
/// `track_activities = off`, and no membership of any role.
pub fn cluster_sql(roles: &[RoleLogin]) -> String {
    let mut sql = format!(
        "SET search_path = pg_catalog, pg_temp;
         DO $owner$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {owner_literal}) THEN
                CREATE ROLE {owner} NOLOGIN;
            END IF;
         END $owner$;
         ALTER ROLE {owner} WITH NOLOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
         GRANT pg_read_all_stats TO {owner};\n",
        owner = quote_ident(OWNER),
        owner_literal = quote_literal(OWNER),
    );
    for role in roles {
        let ident = quote_ident(&role.name);
        sql.push_str(&format!(
            "DO $role$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {literal}) THEN
                    CREATE ROLE {ident};
                END IF;
             END $role$;
             ALTER ROLE {ident} WITH {ROLE_ATTRIBUTES} PASSWORD {secret};
             ALTER ROLE {ident} RESET ALL;
             ALTER ROLE {ident} SET track_activities = off;
             DO $members$ DECLARE r record; BEGIN
                FOR r IN SELECT g.rolname FROM pg_catalog.pg_auth_members a
                         JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
                         JOIN pg_catalog.pg_roles m ON m.oid = a.member
                         WHERE m.rolname = {literal}
                LOOP
                    EXECUTE pg_catalog.format('REVOKE %I FROM %I CASCADE', r.rolname, {literal});
                END LOOP;
             END $members$;\n",
            literal = quote_literal(&role.name),
            secret = quote_literal(&role.secret),
        ));
    }
    sql
}

/// Installs (or replaces) claims key `$1` (`int4`) with its pads `$2` (`k_ipad`) and `$3`
/// (`k_opad`), in the database the connection is in. Bind parameters, so the key never
/// appears in SQL text.
pub const UPSERT_KEY: &str = "INSERT INTO gw_auth.keys (kid, k_ipad, k_opad, not_after)
     VALUES ($1, $2, $3, NULL)
     ON CONFLICT (kid) DO UPDATE
     SET k_ipad = excluded.k_ipad, k_opad = excluded.k_opad, not_after = NULL";

/// Who may call `auth.begin` in a database: exactly `roles` (run after [`DATABASE_SQL`]).
pub fn database_grants(roles: &[RoleLogin]) -> String {
    let mut sql = String::from(
        "SET search_path = pg_catalog, pg_temp;\n\
         REVOKE ALL ON FUNCTION auth.begin(text, text) FROM PUBLIC;\n\
         DO $grants$ DECLARE r record; BEGIN
            FOR r IN SELECT g.grantee::pg_catalog.regrole::text AS grantee
                     FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) g
                     WHERE p.oid = 'auth.begin(text, text)'::pg_catalog.regprocedure
                       AND g.grantee <> p.proowner AND g.grantee <> 0
            LOOP
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION auth.begin(text, text) FROM %s', r.grantee);
            END LOOP;
         END $grants$;\n",
    );
    for role in roles {
        sql.push_str(&format!(
            "GRANT EXECUTE ON FUNCTION auth.begin(text, text) TO {};\n",
            quote_ident(&role.name)
        ));
    }
    sql
}

/// Everything per database but the key and the grants of `auth.begin`: the schemas, the key
/// table, the register, the functions and the privileges of each. `jwt.sql` says what each
/// function checks.
pub const DATABASE_SQL: &str = include_str!("jwt.sql");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_login_matches_its_verifier() {
        let login = RoleLogin::generate("authenticated").expect("material");
        let (iterations, salt, stored) = parse_verifier(&login.secret).expect("verifier");
        assert_eq!(iterations, 4096);
        assert_eq!(salt.len(), 16);
        assert_eq!(login.client_key.len(), 32);
        assert_eq!(Sha256::digest(&login.client_key).as_slice(), stored);
        assert!(!format!("{login:?}").contains("SCRAM"));
        let wire = login.to_wire();
        assert_eq!(
            BASE64.decode(wire.client_key).expect("base64"),
            login.client_key
        );
    }

    #[test]
    fn rfc7677_client_key() {
        // RFC 7677's example: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = hi(b"pencil", &salt, 4096);
        let stored = Sha256::digest(hmac(&salted, b"Client Key"));
        let secret = format!(
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${}:x",
            BASE64.encode(stored)
        );
        assert!(client_key(&secret, b"pencil").is_ok());
        assert!(client_key(&secret, b"pencil2").is_err());
    }

    #[test]
    fn pads_and_hmac_agree() {
        let key = [7u8; 32];
        let (ipad, opad) = pads(&key);
        assert_eq!((ipad.len(), opad.len()), (64, 64));
        let message = b"{\"v\":1}";
        let inner = Sha256::digest([ipad.as_slice(), message].concat());
        let outer = Sha256::digest([opad.as_slice(), inner.as_slice()].concat());
        assert_eq!(outer.as_slice(), hmac(&key, message));
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    fn check(body: serde_json::Value) -> Result<JwksSettings, String> {
        let request: CreateJwks = serde_json::from_value(body).expect("request");
        rule(&request, "jwks-1".into())
    }

    #[test]
    fn rules() {
        use serde_json::json;
        let ok = check(json!({"provider_name": "p", "jwks_url": "https://h/k.json"})).expect("ok");
        assert_eq!(ok.role_names, ["authenticated", "anonymous"]);
        assert!(ok.algorithms.is_empty());
        let inline = check(json!({"provider_name": "p", "jwks": {"keys": []}, "algorithms": ["ES256"], "role_names": ["app_user"]}))
            .expect("inline");
        assert_eq!((inline.jwks_url.as_str(), inline.algorithms.len()), ("", 1));
        for (body, mentions) in [
            (
                json!({"provider_name": "", "jwks_url": "https://h/"}),
                "provider_name",
            ),
            (json!({"provider_name": "p"}), "exactly one"),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "jwks": {"keys": []}}),
                "exactly one",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "ftp://h/"}),
                "https",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://u:p@h/"}),
                "user name",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/?a=1"}),
                "query",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/#f"}),
                "fragment",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "not a url"}),
                "valid URL",
            ),
            (json!({"provider_name": "p", "jwks": []}), "keys"),
            (
                json!({"provider_name": "p", "jwks": {"keys": ["x".repeat(MAX_INLINE_JWKS)]}}),
                "larger",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "algorithms": ["HS256"]}),
                "HS256",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "algorithms": ["none"]}),
                "none",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "role_names": []}),
                "role_names",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "role_names": ["cloud_admin"]}),
                "cloud_admin",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "role_names": ["pg_monitor"]}),
                "pg_monitor",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "role_names": ["gw_auth_owner"]}),
                "gw_auth_owner",
            ),
            (
                json!({"provider_name": "p", "jwks_url": "https://h/", "jwt_issuer": ""}),
                "jwt_issuer",
            ),
        ] {
            let error = check(body.clone()).expect_err(&body.to_string());
            assert!(error.contains(mentions), "{body}: {error}");
        }
    }

    #[test]
    fn sql_quotes_names() {
        let role = RoleLogin {
            name: "a\"b".into(),
            secret: "it's".into(),
            client_key: vec![],
        };
        let sql = cluster_sql(std::slice::from_ref(&role));
        assert!(sql.contains("ALTER ROLE \"a\"\"b\" WITH LOGIN NOINHERIT"));
        assert!(sql.contains("PASSWORD 'it''s'"));
        assert!(database_grants(&[role]).contains("TO \"a\"\"b\""));
    }
}
