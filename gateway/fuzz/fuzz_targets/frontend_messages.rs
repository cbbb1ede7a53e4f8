//! A client's side of the handshake as the session reads it (`pgwire::client::ClientStream`
//! over a stream that delivers the input in arbitrary chunks): up to four startup packets
//! (encryption requests first), then tagged messages (PasswordMessage, SASL responses) under a
//! size limit, each body read as a password and as a SASL initial response.
//!
//! Input: one byte picking the message limit and how the bytes are split, then the stream.
//!
//! Checks: every packet and message is the one a plain reference framing of the same bytes
//! finds (same tag, same body, same errors); what the reader holds beyond the last message is
//! exactly the next bytes of the stream (a pipelined query reaches the backend intact).
#![no_main]

use gateway::fuzzing::client::{ClientError, ClientStream};
use gateway::fuzzing::frame::FrameError;
use gateway::fuzzing::startup::{self, StartupPacket};
use gateway_fuzz::{runtime, Playback};
use libfuzzer_sys::fuzz_target;

/// As `session::first_packet`: encryption requests before the startup packet.
const MAX_NEGOTIATIONS: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // The session's limit for authentication messages (8 KiB), and smaller ones.
    let max = [8 * 1024, 5, 64, 300][usize::from(seed >> 6)];
    runtime().block_on(handshake(stream, seed, max));
});

async fn handshake(stream: &[u8], seed: u8, max: usize) {
    let mut client = ClientStream::new(Playback::new(stream, seed));
    // Reference framing: where the next packet starts.
    let mut at = 0;
    let mut started = false;
    for _ in 0..MAX_NEGOTIATIONS {
        let got = client.read_startup().await;
        let Some(header) = stream.get(at..at + 4) else {
            assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
            return;
        };
        let declared = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(8..=startup::MAX_STARTUP_PACKET).contains(&declared) {
            assert!(matches!(got, Err(ClientError::Startup(_))), "{got:?}");
            return;
        }
        let Some(packet) = stream.get(at..at + declared) else {
            assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
            return;
        };
        at += declared;
        assert_eq!(
            got.as_ref().map_err(ToString::to_string),
            startup::parse_startup(packet)
                .as_ref()
                .map_err(ToString::to_string),
        );
        match got {
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => continue,
            Ok(StartupPacket::Startup(_)) => {
                started = true;
                break;
            }
            Ok(StartupPacket::Cancel { .. }) | Err(_) => return,
        }
    }
    if !started {
        return;
    }
    loop {
        let got = client.read_message(max).await;
        let Some(header) = stream.get(at..at + 5) else {
            assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
            break;
        };
        let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if declared < 4 {
            assert!(
                matches!(got, Err(ClientError::Frame(FrameError::InvalidLength))),
                "{got:?}"
            );
            return;
        }
        if declared + 1 > max {
            assert!(
                matches!(got, Err(ClientError::Frame(FrameError::TooLarge { len, max: m })) if len == declared + 1 && m == max),
                "{got:?}"
            );
            return;
        }
        let Some(message) = stream.get(at..at + declared + 1) else {
            assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
            break;
        };
        at += declared + 1;
        let (tag, body) = got.expect("a whole message is read");
        assert_eq!(tag, message[0]);
        assert_eq!(body[..], message[5..]);
        if tag == b'p' {
            let _ = startup::password(&body);
            let _ = startup::sasl_initial_response(&body);
        }
        // The bytes read beyond this message are the stream's next ones.
        let ahead = client.buffered();
        assert!(at + ahead <= stream.len());
    }
    let buffered = client.buffered();
    let (io, ahead) = client.into_parts();
    assert_eq!(ahead.len(), buffered);
    assert_eq!(io.read(), at + buffered, "nothing read is lost");
    assert_eq!(ahead[..], stream[at..at + buffered]);
}
