//! Startup packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) and the two
//! authentication replies the gateway reads itself (PasswordMessage, SASLInitialResponse), as
//! `pgwire::startup` parses them, then what the session reads out of them (`options`, the
//! password hack).
//!
//! Checks: a parsed StartupMessage re-encodes (postgres-protocol's encoder) to exactly the bytes
//! it came from; the fixed-size packets have their exact sizes; a password and a SASL initial
//! response re-encode to their bodies.
#![no_main]

use bytes::BytesMut;
use gateway::fuzzing::credentials;
use gateway::fuzzing::startup::{self, StartupPacket};
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::frontend;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<4>() {
        if let Ok(length) = startup::startup_length(*header) {
            assert!((8..=startup::MAX_STARTUP_PACKET).contains(&length));
        }
    }
    match startup::parse_startup(data) {
        Ok(StartupPacket::Startup(startup)) => {
            let mut encoded = BytesMut::new();
            frontend::startup_message(
                startup.params.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                &mut encoded,
            )
            .expect("parsed parameters hold no NUL");
            let code = (3u32 << 16) | u32::from(startup.minor_version);
            assert_eq!(data[4..8], code.to_be_bytes(), "protocol version");
            assert_eq!(encoded[8..], data[8..], "parameters round-trip");
            let _ = startup.protocol_options();
            if let Some(options) = startup.get("options") {
                let _ = credentials::split_options(options);
            }
        }
        Ok(StartupPacket::Cancel {
            process_id,
            secret_key,
        }) => {
            assert_eq!(data.len(), 16);
            assert_eq!(data[8..12], process_id.to_be_bytes());
            assert_eq!(data[12..16], secret_key.to_be_bytes());
        }
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => assert_eq!(data.len(), 8),
        Err(_) => {}
    }

    // The same bytes as the body of a PasswordMessage or a SASLInitialResponse.
    if let Some(password) = startup::password(data) {
        let mut encoded = BytesMut::new();
        frontend::password_message(password, &mut encoded).expect("no NUL in a password");
        assert_eq!(encoded[5..], *data);
        if let Some((_endpoint, rest)) = credentials::password_hack(password) {
            assert!(rest.len() < password.len());
        }
    }
    if let Some((mechanism, response)) = startup::sasl_initial_response(data) {
        let mut encoded = BytesMut::new();
        frontend::sasl_initial_response(mechanism, response, &mut encoded)
            .expect("no NUL in a mechanism");
        assert_eq!(encoded[5..], *data);
    }
});
