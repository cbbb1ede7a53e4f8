//! Opening a backend connection: TCP, StartupMessage, authentication (cleartext, MD5 or
//! SCRAM-SHA-256, whichever the server asks for) and the startup messages up to ReadyForQuery.

use std::io;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use hmac::{Hmac, Mac};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;

use super::{Backend, BackendError, DbError};
use crate::auth::scram::ClientKeys;
use crate::auth::PasswordCache;

/// Who connects to which database. The password is used for this handshake only.
pub struct ConnectParams<'a> {
    pub user: &'a str,
    pub password: &'a [u8],
    pub database: &'a str,
    /// Further startup parameters (`application_name`, `options`, settings). `client_encoding`
    /// is UTF8 unless given here.
    pub startup: &'a [(&'a str, &'a str)],
    /// Where SCRAM client keys are derived and remembered.
    pub keys: &'a PasswordCache,
}

/// Connects to the backend at `addr` (`host:port`) and authenticates, all within `timeout`.
pub async fn connect(
    addr: &str,
    params: &ConnectParams<'_>,
    timeout: Duration,
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let handshake = async {
        let mut backend = open(
            addr,
            params.user,
            params.database,
            params.startup,
            max_message_bytes,
        )
        .await?;
        authenticate(&mut backend, params).await?;
        backend.finish_startup().await?;
        Ok(backend)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| BackendError::ConnectTimeout)?
}

/// [`open`], then wait for the server's first message, all within `timeout`. A server that
/// refuses the session before authentication (an ErrorResponse, such as `57P03` while it starts
/// or shuts down) fails here, so the caller can retry elsewhere before a client has seen any of
/// it; otherwise the message (the authentication request) stays buffered in the [`Backend`].
pub async fn open_within(
    timeout: Duration,
    addr: &str,
    user: &str,
    database: &str,
    startup: &[(&str, &str)],
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let opening = async {
        let mut backend = open(addr, user, database, startup, max_message_bytes).await?;
        backend.check_refusal().await?;
        Ok(backend)
    };
    tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| BackendError::ConnectTimeout)?
}

/// Opens a TCP connection to `addr` and sends the StartupMessage. Authentication is the
/// caller's: [`connect`] answers the server itself, a session may relay the exchange.
pub async fn open(
    addr: &str,
    user: &str,
    database: &str,
    startup: &[(&str, &str)],
    max_message_bytes: usize,
) -> Result<Backend, BackendError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let mut backend = Backend::new(stream, peer, max_message_bytes);
    let mut params = vec![("user", user), ("database", database)];
    if !startup
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("client_encoding"))
    {
        params.push(("client_encoding", "UTF8"));
    }
    params.extend(
        startup
            .iter()
            .filter(|(name, _)| !matches!(*name, "user" | "database")),
    );
    frontend::startup_message(params, backend.write_buf())?;
    backend.flush().await?;
    Ok(backend)
}

async fn authenticate(
    backend: &mut Backend,
    params: &ConnectParams<'_>,
) -> Result<(), BackendError> {
    match backend.next_message().await? {
        Message::AuthenticationOk => return Ok(()),
        Message::AuthenticationCleartextPassword => {
            frontend::password_message(params.password, backend.write_buf())?;
        }
        Message::AuthenticationMd5Password(body) => {
            let hash = md5_hash(params.user.as_bytes(), params.password, body.salt());
            frontend::password_message(hash.as_bytes(), backend.write_buf())?;
        }
        Message::AuthenticationSasl(body) => {
            let mut mechanisms = body.mechanisms();
            let mut scram_offered = false;
            while let Some(mechanism) = mechanisms.next()? {
                scram_offered |= mechanism == sasl::SCRAM_SHA_256;
            }
            if !scram_offered {
                return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
            }
            scram(backend, params.password, params.keys).await?;
        }
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationGss
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSspi => {
            return Err(BackendError::UnsupportedAuth("Kerberos, GSS, SSPI or SCM"))
        }
        other => return Err(BackendError::unexpected(&other)),
    }
    backend.flush().await?;
    match backend.next_message().await? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(body) => Err(DbError::parse(&body)?.into()),
        other => Err(BackendError::unexpected(&other)),
    }
}

/// SCRAM-SHA-256 without channel binding (the backend link is plain TCP), RFC 5802. On return
/// the server's signature has been verified, so a server that does not know the password cannot
/// pretend to accept it; AuthenticationOk is still to be read.
///
/// The PBKDF2 step (`ClientKey`, `ServerKey`) comes from [`PasswordCache::client_keys`], so a
/// role that logged in before with the same password costs a few hashes, not 4096 HMACs.
async fn scram(
    backend: &mut Backend,
    password: &[u8],
    keys: &PasswordCache,
) -> Result<(), BackendError> {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut nonce = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce = base64.encode(nonce);
    // The user name is taken from the startup packet; Postgres ignores this one.
    let client_first_bare = format!("n=,r={nonce}");
    let client_first = format!("n,,{client_first_bare}");
    frontend::sasl_initial_response(
        sasl::SCRAM_SHA_256,
        client_first.as_bytes(),
        backend.write_buf(),
    )?;
    backend.flush().await?;
    let server_first = match backend.next_message().await? {
        Message::AuthenticationSaslContinue(body) => body.data().to_vec(),
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    };
    let (client_final, expected) = scram_client_final(
        &client_first_bare,
        &nonce,
        &server_first,
        |salt, iterations| keys.client_keys(password, salt, iterations),
    )
    .map_err(|what| {
        BackendError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid SCRAM server-first-message: {what}"),
        ))
    })?;
    frontend::sasl_response(client_final.as_bytes(), backend.write_buf())?;
    backend.flush().await?;
    let server_final = match backend.next_message().await? {
        Message::AuthenticationSaslFinal(body) => body.data().to_vec(),
        Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
        other => return Err(BackendError::unexpected(&other)),
    };
    let verifier = std::str::from_utf8(&server_final)
        .ok()
        .and_then(|text| text.strip_prefix("v="))
        .map(|v| v.split(',').next().unwrap_or(v))
        .and_then(|v| base64.decode(v).ok())
        .ok_or_else(|| {
            BackendError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid SCRAM server-final-message",
            ))
        })?;
    if !bool::from(verifier.ct_eq(&expected[..])) {
        return Err(BackendError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SCRAM server signature mismatch",
        )));
    }
    Ok(())
}

/// The client-final-message answering `server_first`, and the server signature to expect.
fn scram_client_final(
    client_first_bare: &str,
    nonce: &str,
    server_first: &[u8],
    keys: impl FnOnce(&[u8], u32) -> ClientKeys,
) -> Result<(String, [u8; 32]), &'static str> {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let server_first = std::str::from_utf8(server_first).map_err(|_| "not UTF-8")?;
    let (server_nonce, salt, iterations) = parse_server_first(server_first).ok_or("malformed")?;
    if !server_nonce.starts_with(nonce) || server_nonce.len() == nonce.len() {
        return Err("nonce mismatch");
    }
    let salt = base64.decode(salt).map_err(|_| "invalid salt")?;
    let keys = keys(&salt, iterations);
    // c=biws: base64 of the GS2 header "n,," (no channel binding).
    let without_proof = format!("c=biws,r={server_nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let mut proof = keys.client_key;
    for (p, s) in proof.iter_mut().zip(signature) {
        *p ^= s;
    }
    let client_final = format!("{without_proof},p={}", base64.encode(proof));
    Ok((
        client_final,
        hmac(&keys.server_key, auth_message.as_bytes()),
    ))
}

/// `r=<nonce>,s=<salt>,i=<iterations>[,extensions]` → (nonce, base64 salt, iterations).
fn parse_server_first(message: &str) -> Option<(&str, &str, u32)> {
    let mut parts = message.split(',');
    let nonce = parts.next()?.strip_prefix("r=")?;
    let salt = parts.next()?.strip_prefix("s=")?;
    let iterations: u32 = parts.next()?.strip_prefix("i=")?.parse().ok()?;
    (iterations > 0 && nonce.bytes().all(|b| b.is_ascii_graphic() && b != b','))
        .then_some((nonce, salt, iterations))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 exchange of RFC 7677, section 3.
    #[test]
    fn rfc_7677_exchange() {
        let nonce = "rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, server_signature) = scram_client_final(
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            nonce,
            server_first.as_bytes(),
            |salt, iterations| ClientKeys::derive(b"pencil", salt, iterations),
        )
        .expect("valid");
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let derive = |_: &[u8], _: u32| ClientKeys::derive(b"pencil", b"salt", 1);
        for bad in [
            "r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            "r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096",
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            assert!(
                scram_client_final("n=,r=x", nonce, bad.as_bytes(), derive).is_err(),
                "{bad}"
            );
        }
    }
}
