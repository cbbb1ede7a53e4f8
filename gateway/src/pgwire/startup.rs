//! The server side of the Postgres v3 protocol, as far as the gateway speaks it itself: it reads
//! startup packets and authentication replies from clients, and writes authentication requests,
//! ParameterStatus, BackendKeyData, ReadyForQuery, NegotiateProtocolVersion and ErrorResponse.
//! Everything after startup is relayed without being parsed.

use bytes::{BufMut, BytesMut};

use super::frame;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: u16 = 3;

/// As Postgres (`MAX_STARTUP_PACKET_LENGTH`): longer startup packets are refused.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// The first packet of a connection (or the next one, after a refused encryption request).
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { process_id: i32, secret_key: i32 },
    Startup(Startup),
}

/// A StartupMessage: protocol 3.x and its parameters, in the order sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Startup {
    pub minor_version: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of parameter `name` (the last one wins, as in Postgres).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the gateway does not implement; all of them, today.
    pub fn protocol_options(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(n, _)| n.starts_with("_pq_."))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    Length,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    Protocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Layout,
    #[error("invalid startup packet: parameters are not valid UTF-8")]
    Utf8,
}

/// The length a startup packet declares in its first four bytes, checked against the limits.
pub fn startup_length(header: [u8; 4]) -> Result<usize, StartupError> {
    let length = u32::from_be_bytes(header) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&length) {
        return Err(StartupError::Length);
    }
    Ok(length)
}

/// Parses a whole startup packet, its length prefix included.
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::Length);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    let fixed = |len: usize, packet: StartupPacket| {
        if body.len() == len {
            Ok(packet)
        } else {
            Err(StartupError::Length)
        }
    };
    match code {
        SSL_REQUEST => fixed(0, StartupPacket::SslRequest),
        GSSENC_REQUEST => fixed(0, StartupPacket::GssEncRequest),
        CANCEL_REQUEST if body.len() == 8 => Ok(StartupPacket::Cancel {
            process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        CANCEL_REQUEST => Err(StartupError::Length),
        _ => {
            let major = (code as u32 >> 16) as u16;
            let minor = (code as u32 & 0xffff) as u16;
            if major != PROTOCOL_3 {
                return Err(StartupError::Protocol { major, minor });
            }
            Ok(StartupPacket::Startup(Startup {
                minor_version: minor,
                params: parse_params(body)?,
            }))
        }
    }
}

/// `name\0value\0…\0`.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let Some((&0, mut rest)) = body.split_last() else {
        return Err(StartupError::Layout);
    };
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after) = cstr(rest)?;
        let (value, after) = cstr(after)?;
        params.push((name, value));
        rest = after;
    }
    Ok(params)
}

fn cstr(bytes: &[u8]) -> Result<(String, &[u8]), StartupError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Layout)?;
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| StartupError::Utf8)?;
    Ok((text.to_owned(), &bytes[end + 1..]))
}

/// The text of a PasswordMessage body: the password up to its terminating NUL.
pub fn password(body: &[u8]) -> Option<&[u8]> {
    match body.split_last() {
        Some((&0, password)) if !password.contains(&0) => Some(password),
        _ => None,
    }
}

/// A SASLInitialResponse body: the mechanism and the client-first message.
pub fn sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..end]).ok()?;
    let rest = &body[end + 1..];
    if rest.len() < 4 {
        return None;
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    (usize::try_from(len).ok() == Some(data.len())).then_some((mechanism, data))
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

pub fn authentication_ok(buf: &mut BytesMut) {
    frame::put_message(buf, b'R', |b| b.put_i32(0));
}

pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    frame::put_message(buf, b'R', |b| b.put_i32(3));
}

pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    frame::put_message(buf, b'R', |b| {
        b.put_i32(10);
        for mechanism in mechanisms {
            put_cstr(b, mechanism.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame::put_message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame::put_message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    frame::put_message(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    frame::put_message(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    frame::put_message(buf, b'Z', |b| b.put_u8(status));
}

/// Tells a client asking for protocol 3.x (x > 0) or `_pq_` options that we speak 3.0 only.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unrecognized: &[&str]) {
    frame::put_message(buf, b'v', |b| {
        b.put_i32(0);
        b.put_i32(unrecognized.len() as i32);
        for option in unrecognized {
            put_cstr(b, option.as_bytes());
        }
    });
}

/// A FATAL ErrorResponse, the last thing a client hears before the connection closes.
pub fn fatal(buf: &mut BytesMut, code: &str, message_text: &str, hint: Option<&str>) {
    frame::put_message(buf, b'E', |b| {
        for (field, value) in [
            (b'S', Some("FATAL")),
            (b'V', Some("FATAL")),
            (b'C', Some(code)),
            (b'M', Some(message_text)),
            (b'H', hint),
        ] {
            if let Some(value) = value {
                b.put_u8(field);
                put_cstr(b, value.as_bytes());
            }
        }
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn startup_packets() {
        let body = b"user\0alice\0database\0main\0options\0endpoint=db\0\0";
        let parsed = parse_startup(&packet(196_608, body)).expect("valid");
        let StartupPacket::Startup(startup) = parsed else {
            panic!("not a startup: {parsed:?}");
        };
        assert_eq!(startup.minor_version, 0);
        assert_eq!(startup.get("user"), Some("alice"));
        assert_eq!(startup.get("options"), Some("endpoint=db"));
        assert_eq!(startup.get("nope"), None);

        let minor = parse_startup(&packet(196_610, b"user\0a\0_pq_.x\0y\0\0")).expect("3.2");
        let StartupPacket::Startup(startup) = minor else {
            panic!("not a startup");
        };
        assert_eq!(startup.minor_version, 2);
        assert_eq!(startup.protocol_options(), vec!["_pq_.x"]);

        assert_eq!(
            parse_startup(&packet(SSL_REQUEST, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse_startup(&packet(GSSENC_REQUEST, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        let mut cancel = 7i32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse_startup(&packet(CANCEL_REQUEST, &cancel)),
            Ok(StartupPacket::Cancel {
                process_id: 7,
                secret_key: -9
            })
        );
    }

    #[test]
    fn malformed_startup_packets() {
        assert_eq!(
            parse_startup(&packet(SSL_REQUEST, b"x")),
            Err(StartupError::Length)
        );
        assert_eq!(
            parse_startup(&packet(CANCEL_REQUEST, b"1234")),
            Err(StartupError::Length)
        );
        assert_eq!(
            parse_startup(&packet(2 << 16, b"\0")),
            Err(StartupError::Protocol { major: 2, minor: 0 })
        );
        assert_eq!(
            parse_startup(&packet(196_608, b"user\0alice\0")),
            Err(StartupError::Layout),
            "no final terminator"
        );
        assert_eq!(
            parse_startup(&packet(196_608, b"user\0\0")),
            Err(StartupError::Layout),
            "a name without a value"
        );
        assert_eq!(
            parse_startup(&packet(196_608, b"user\0\xff\0\0")),
            Err(StartupError::Utf8)
        );
        assert_eq!(parse_startup(&[0, 0, 0, 8]), Err(StartupError::Length));
        assert_eq!(startup_length([0, 0, 0, 7]), Err(StartupError::Length));
        assert_eq!(
            startup_length([0, 0, 0x27, 0x11]),
            Err(StartupError::Length)
        );
        assert_eq!(
            startup_length([0xff, 0xff, 0xff, 0xff]),
            Err(StartupError::Length)
        );
        assert_eq!(startup_length([0, 0, 0, 8]), Ok(8));
    }

    #[test]
    fn client_messages() {
        assert_eq!(password(b"secret\0"), Some(&b"secret"[..]));
        assert_eq!(password(b"secret"), None);
        assert_eq!(password(b"se\0cret\0"), None);
        let mut initial = b"SCRAM-SHA-256\0".to_vec();
        initial.extend_from_slice(&5i32.to_be_bytes());
        initial.extend_from_slice(b"n,,xy");
        assert_eq!(
            sasl_initial_response(&initial),
            Some(("SCRAM-SHA-256", &b"n,,xy"[..]))
        );
        initial.push(b'!');
        assert_eq!(sasl_initial_response(&initial), None);
    }

    #[test]
    fn server_messages() {
        let mut buf = BytesMut::new();
        authentication_cleartext_password(&mut buf);
        assert_eq!(&buf[..], b"R\0\0\0\x08\0\0\0\x03");
        buf.clear();
        authentication_sasl_final(&mut buf, b"v=x");
        assert_eq!(&buf[..], b"R\0\0\0\x0b\0\0\0\x0cv=x");
        buf.clear();
        ready_for_query(&mut buf, b'I');
        assert_eq!(&buf[..], b"Z\0\0\0\x05I");
        buf.clear();
        fatal(&mut buf, "28P01", "no", None);
        assert_eq!(&buf[..], b"E\0\0\0\x1eSFATAL\0VFATAL\0C28P01\0Mno\0\0");
    }
}
