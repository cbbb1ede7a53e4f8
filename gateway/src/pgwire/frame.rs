//! Framing of tagged protocol messages (a tag byte, a 4-byte big-endian length that counts
//! itself, the body): the one header check every reader uses — client messages, backend
//! messages, the relay's boundary tracker and the tests' own client.

use bytes::{BufMut, BytesMut};

/// Bytes of a message header: the tag and the length.
pub const HEADER_LEN: usize = 5;

/// A header that no message may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A declared length below 4 (it counts itself).
    #[error("invalid message length")]
    InvalidLength,
    /// A message of `len` bytes (tag included) over the reader's limit of `max`.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// The length in bytes (tag included) of the message whose header is `header`, checked
/// against `max`.
pub fn message_length(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let [_, a, b, c, d] = header;
    let declared = u32::from_be_bytes([a, b, c, d]) as usize;
    if declared < 4 {
        return Err(FrameError::InvalidLength);
    }
    let len = declared + 1;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// The length (tag included) of the message `buf` starts with, once its header is there.
pub fn frame_length(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    match buf.get(..HEADER_LEN) {
        Some(&[tag, a, b, c, d]) => message_length([tag, a, b, c, d], max).map(Some),
        _ => Ok(None),
    }
}

/// Appends one message: `tag`, its length, then whatever `body` writes. Every message the
/// gateway writes itself goes through here (or through `postgres-protocol`'s writers).
pub fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = u32::try_from(buf.len() - at).expect("a message under 4 GiB");
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// One message with `body` as its bytes, for tests.
#[cfg(test)]
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_message(&mut buf, tag, |b| b.put_slice(body));
    buf.to_vec()
}

/// Follows message boundaries through a byte stream fed in chunks of any size, without
/// keeping the messages.
#[derive(Debug, Default)]
pub struct Boundary {
    header: [u8; HEADER_LEN],
    header_len: usize,
    body_left: usize,
}

impl Boundary {
    /// Takes the next bytes of the stream; fails on the first header no message may have.
    pub fn feed(&mut self, mut data: &[u8], max: usize) -> Result<(), FrameError> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == HEADER_LEN {
                self.body_left = message_length(self.header, max)? - HEADER_LEN;
                self.header_len = 0;
            }
        }
        Ok(())
    }

    /// Whether everything fed so far ends on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }
}

#[cfg(feature = "fuzzing")]
/// What the boundary tracker says after one chunk: see [`track_boundaries`].
#[derive(Debug, PartialEq, Eq)]
pub enum Tracked {
    /// Whether everything so far ends on a message boundary.
    Boundary(bool),
    /// A message of this many bytes (tag included) over the limit.
    TooLarge(usize),
    /// A length below 4.
    Framing,
}

#[cfg(feature = "fuzzing")]
/// The boundary tracker on its own, for the fuzz target (`gateway/fuzz`): feeds `chunks` in
/// order and says what it saw after each, up to the first error.
pub fn track_boundaries<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> Vec<Tracked> {
    let mut boundary = Boundary::default();
    let mut seen = Vec::new();
    for chunk in chunks {
        match boundary.feed(chunk, max) {
            Ok(()) => seen.push(Tracked::Boundary(boundary.at_boundary())),
            Err(FrameError::TooLarge { len, .. }) => {
                seen.push(Tracked::TooLarge(len));
                break;
            }
            Err(FrameError::InvalidLength) => {
                seen.push(Tracked::Framing);
                break;
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        header: [u8; HEADER_LEN],
        max: usize,
        expect: Result<usize, FrameError>,
    }

    #[test]
    fn headers() {
        let cases = [
            Case {
                name: "empty body",
                header: [b'Z', 0, 0, 0, 4],
                max: 5,
                expect: Ok(5),
            },
            Case {
                name: "length below 4",
                header: [b'Z', 0, 0, 0, 3],
                max: 100,
                expect: Err(FrameError::InvalidLength),
            },
            Case {
                name: "one byte over the limit",
                header: [b'D', 0, 0, 0, 100],
                max: 100,
                expect: Err(FrameError::TooLarge { len: 101, max: 100 }),
            },
            Case {
                name: "the largest length on 64-bit",
                header: [b'D', 0xff, 0xff, 0xff, 0xff],
                max: usize::MAX,
                expect: Ok(0x1_0000_0000),
            },
        ];
        for case in cases {
            assert_eq!(
                message_length(case.header, case.max),
                case.expect,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn partial_headers_wait() {
        assert_eq!(frame_length(&[b'Z', 0, 0], 10), Ok(None));
        assert_eq!(frame_length(&[b'Z', 0, 0, 0, 5, 1], 10), Ok(Some(6)));
    }

    #[test]
    fn boundaries_across_any_split() {
        let mut stream = message(b'Q', b"SELECT 1\0");
        stream.extend(message(b'X', b""));
        stream.extend(message(b'd', &[7u8; 300]));
        for split in 0..=stream.len() {
            let mut boundary = Boundary::default();
            let (a, b) = stream.split_at(split);
            assert!(boundary.feed(a, 1000).is_ok());
            assert!(boundary.feed(b, 1000).is_ok());
            assert!(boundary.at_boundary(), "split at {split}");
        }
        let mut boundary = Boundary::default();
        assert!(boundary.feed(&stream[..7], 1000).is_ok());
        assert!(!boundary.at_boundary());
    }

    #[test]
    fn oversized_and_broken_lengths() {
        let mut boundary = Boundary::default();
        let big = message(b'd', &[0u8; 100]);
        assert!(matches!(
            boundary.feed(&big, 50),
            Err(FrameError::TooLarge { len: 105, max: 50 })
        ));
        let mut boundary = Boundary::default();
        assert!(matches!(
            boundary.feed(&[b'Q', 0, 0, 0, 3], 50),
            Err(FrameError::InvalidLength)
        ));
        let mut boundary = Boundary::default();
        assert!(matches!(
            boundary.feed(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
