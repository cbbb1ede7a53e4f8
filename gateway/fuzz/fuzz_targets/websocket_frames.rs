//! The WebSocket tunnel as a session reads it: client bytes through a `tokio::io::duplex` into
//! a server-role `WebSocketStream` with the gateway's own configuration (`pgwire::ws::ws_config`)
//! wrapped in `pgwire::ws::WsStream`, read until error or end of stream, then answered and
//! closed the way a session ends.
//!
//! Input: one byte (bit 0: raw bytes or frames built from the input; the other bits pick the
//! message limit, the read size, whether a close frame ends the frames), then the bytes.
//!
//! - Raw: the input is whatever a client could send; nothing may panic or hang.
//! - Frames: the input describes binary messages (split into up to four fragments), pings and
//!   pongs, encoded as a client would (masked); the byte stream read must be exactly the
//!   binary payloads in order, and a close frame must end it cleanly.
#![no_main]

use std::io;

use bytes::Bytes;
use gateway::fuzzing::ws::{ws_config, WsStream};
use gateway_fuzz::runtime;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The gateway's default `--max-session-message-bytes`.
const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let read_size = [1, 7, 4096, 16 * 1024][usize::from((mode >> 1) & 3)];
    runtime().block_on(async {
        if mode & 1 == 0 {
            let max = [DEFAULT_MAX_MESSAGE, 300, 4096, 1 << 20][usize::from((mode >> 3) & 3)];
            let _ = serve(rest, max, read_size).await;
        } else {
            let close = mode & 8 != 0;
            let (stream, expected) = frames(rest, [mode, 0x5a, 0xc3, !mode], close);
            let (got, end) = serve(&stream, DEFAULT_MAX_MESSAGE, read_size).await;
            assert_eq!(got, expected, "the binary payloads, in order");
            if close {
                assert!(
                    end.is_ok(),
                    "a close frame ends the stream cleanly: {end:?}"
                );
            }
        }
    });
});

/// Plays `client_bytes` to a server-side `WsStream` and reads it to the end: what it read, and
/// how the reading ended.
async fn serve(client_bytes: &[u8], max: usize, read_size: usize) -> (Vec<u8>, io::Result<()>) {
    // Room for everything the server writes back (pongs, a reply, the close), never read.
    let (mut client, server) = tokio::io::duplex(1 << 20);
    client.write_all(client_bytes).await.expect("fits the pipe");
    client.shutdown().await.expect("shutdown");
    let ws = WebSocketStream::from_raw_socket(server, Role::Server, ws_config(max)).await;
    let mut stream = WsStream::new(ws);
    let mut got = Vec::new();
    let mut buf = vec![0u8; read_size];
    let end = loop {
        match stream.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    // As a session ends: whatever it still has to say, then the close frame.
    let _ = stream.write_all(b"Z\0\0\0\x05I").await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    drop(client);
    (got, end)
}

/// Client frames described by `input`, and the byte stream their binary messages carry.
fn frames(mut input: &[u8], mask: [u8; 4], close: bool) -> (Vec<u8>, Vec<u8>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut push = |mut frame: Frame| {
        frame.header_mut().mask = Some(mask);
        frame.format(&mut stream).expect("into a Vec");
    };
    while let [op, len, rest @ ..] = input {
        let len = usize::from(*len).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        input = rest;
        match op % 4 {
            0 | 1 => {
                expected.extend_from_slice(payload);
                let fragments = 1 + usize::from(op >> 2) % 4;
                let size = payload.len().div_ceil(fragments).max(1);
                let mut parts: Vec<&[u8]> = payload.chunks(size).collect();
                if parts.is_empty() {
                    parts.push(&[]);
                }
                let last = parts.len() - 1;
                for (i, part) in parts.into_iter().enumerate() {
                    let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                    push(Frame::message(
                        Bytes::copy_from_slice(part),
                        OpCode::Data(opcode),
                        i == last,
                    ));
                }
            }
            2 => push(Frame::ping(Bytes::copy_from_slice(
                &payload[..len.min(125)],
            ))),
            _ => push(Frame::pong(Bytes::copy_from_slice(
                &payload[..len.min(125)],
            ))),
        }
    }
    if close {
        push(Frame::close(None));
    }
    (stream, expected)
}
