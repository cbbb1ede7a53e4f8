//! Connection strings (`Neon-Connection-String`, `conn_info::parse`) and the other places an
//! endpoint is read from client text: a host, a WebSocket `address`, a TLS server name.
//!
//! Checks: a host names the same endpoint as a server name and as a connection-string host
//! whenever both name one; an accepted connection string names a valid endpoint and a non-empty database and
//! user with no NUL (nor a NUL in the password); writing those back percent-encoded into a new
//! connection string parses to the very same values (decoding is lossless and unambiguous).
#![no_main]

use gateway::fuzzing::conn_info;
use gateway::fuzzing::endpoint::EndpointId;
use gateway::fuzzing::host;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_encode, utf8_percent_encode, NON_ALPHANUMERIC};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let default = EndpointId::parse("db").expect("valid");
    for domains in [vec![], vec!["example.com".to_owned()]] {
        let by_name = host::from_server_name(text, &domains);
        if let Some(named) = &by_name {
            // A server name that names an endpoint names it as a connection host too.
            assert_eq!(
                host::from_connection_host(text, &domains).as_ref(),
                Ok(&Some(named.clone()))
            );
        }
    }
    if let Some(id) = EndpointId::parse(text) {
        assert_eq!(EndpointId::parse(id.as_str()).as_ref(), Some(&id));
        let _ = (id.without_pooler(), id.pooler());
    }

    let Ok(info) = conn_info::parse(text, &default, &[]) else {
        return;
    };
    assert_eq!(
        EndpointId::parse(info.endpoint.as_str()).as_ref(),
        Some(&info.endpoint)
    );
    assert!(!info.database.is_empty() && !info.database.contains('\0'));
    assert!(!info.user.is_empty() && !info.user.contains('\0'));
    assert!(!info.password.as_bytes().contains(&0));
    let again = format!(
        "postgres://{}:{}@{}.example.com/{}",
        utf8_percent_encode(&info.user, NON_ALPHANUMERIC),
        percent_encode(info.password.as_bytes(), NON_ALPHANUMERIC),
        info.endpoint,
        utf8_percent_encode(&info.database, NON_ALPHANUMERIC),
    );
    assert_eq!(conn_info::parse(&again, &default, &[]), Ok(info), "{again}");
});
