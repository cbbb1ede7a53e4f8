//! SCRAM-SHA-256 messages, both sides (`auth::scram`): the server exchange with a client
//! (`ScramServer::start` on a client-first-message, `finish` on a client-final-message), the
//! client exchange with a backend (`ServerFirst::parse` on a server-first-message, then
//! `client_final`), and role secrets (`ScramSecret::parse`, what the control plane hands out).
//!
//! Input: one byte picking what is fuzzed, then the message(s); for the server side the
//! client-first and client-final messages are separated by the first NUL.
//!
//! Checks: for every client-first-message the server accepts with the `n,,` header, the
//! gateway's own client side answers the server-first-message with a client-final-message
//! whose proof the server accepts, and the server signatures of both sides agree.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine;
use gateway::fuzzing::scram::{
    ClientKeys, ScramError, ScramSecret, ScramServer, ServerFirst, MAX_CLIENT_MESSAGE,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const KEYS: ClientKeys = ClientKeys {
    client_key: [0x11; 32],
    server_key: [0x22; 32],
};
const SERVER_NONCE: &str = "fuzzServerNonce0123456789";

/// A secret whose keys are known, so no PBKDF2 runs: the exchange costs a few hashes.
static SECRET: LazyLock<Arc<ScramSecret>> = LazyLock::new(|| {
    let base64 = base64::engine::general_purpose::STANDARD;
    let secret = format!(
        "SCRAM-SHA-256$4096:{}${}:{}",
        base64.encode(b"sixteen byte salt"),
        base64.encode(Sha256::digest(KEYS.client_key)),
        base64.encode(KEYS.server_key),
    );
    Arc::new(ScramSecret::parse(&secret).expect("a valid secret"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&what, data)) = data.split_first() else {
        return;
    };
    match what % 3 {
        0 => secret(data),
        1 => server(data),
        _ => client(data),
    }
});

fn secret(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(secret) = ScramSecret::parse(text) {
        assert!(secret.iterations() > 0);
        assert!(!secret.salt().is_empty());
    }
}

fn server(data: &[u8]) {
    let (client_first, client_final) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(server) = ScramServer::start(SECRET.clone(), client_first, SERVER_NONCE) else {
        return;
    };
    let server_first = server.server_first().to_owned();
    let _ = server.finish(client_final);

    // The gateway's client side against its server side, on this client-first-message.
    let Some(bare) = client_first.strip_prefix(b"n,,") else {
        return;
    };
    let bare = std::str::from_utf8(bare).expect("the server took it as UTF-8");
    let nonce = bare
        .split(',')
        .nth(1)
        .and_then(|r| r.strip_prefix("r="))
        .expect("the server found the client's nonce");
    let parsed = ServerFirst::parse(nonce, server_first.as_bytes())
        .expect("the client side takes the server's first message");
    assert_eq!(parsed.salt(), SECRET.salt());
    assert_eq!(parsed.iterations(), SECRET.iterations());
    let (client_final, signature) = parsed.client_final(bare, &KEYS);
    let server = ScramServer::start(SECRET.clone(), client_first, SERVER_NONCE)
        .expect("the same message again");
    if client_final.len() > MAX_CLIENT_MESSAGE {
        // A client nonce of nearly the whole limit makes an answer over the limit: refused
        // like any other, so such a client cannot log in (real ones send about 24 bytes).
        assert_eq!(
            server.finish(client_final.as_bytes()).err(),
            Some(ScramError::TooLong)
        );
        return;
    }
    let proven = server
        .finish(client_final.as_bytes())
        .expect("well formed")
        .expect("the proof holds");
    let base64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        proven.server_final,
        format!("v={}", base64.encode(signature))
    );
    assert_eq!(
        proven.keys.for_server(SECRET.salt(), SECRET.iterations()),
        Some(KEYS)
    );
}

fn client(server_first: &[u8]) {
    let nonce = "clientNonce";
    if let Ok(parsed) = ServerFirst::parse(nonce, server_first) {
        assert!(parsed.iterations() > 0);
        let (client_final, _signature) = parsed.client_final(&format!("n=,r={nonce}"), &KEYS);
        assert!(client_final.starts_with("c=biws,r=clientNonce"));
    }
}
