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
    /// Returns how many messages tagged with one of `counted` began in `data`: a message
    /// counts once its whole header has arrived and was accepted, in the chunk that completed
    /// it, so one split across chunks counts once. Costs one comparison per tag per message.
    pub fn feed(&mut self, mut data: &[u8], max: usize, counted: &[u8]) -> Result<u64, FrameError> {
        let mut began = 0;
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
                began += u64::from(counted.contains(&self.header[0]));
            }
        }
        Ok(began)
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
        match boundary.feed(chunk, max, &[]) {
            Ok(_) => seen.push(Tracked::Boundary(boundary.at_boundary())),
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
            assert!(boundary.feed(a, 1000, &[]).is_ok());
            assert!(boundary.feed(b, 1000, &[]).is_ok());
            assert!(boundary.at_boundary(), "split at {split}");
        }
        let mut boundary = Boundary::default();
        assert!(boundary.feed(&stream[..7], 1000, &[]).is_ok());
        assert!(!boundary.at_boundary());
    }

    /// A client's stream as the relay sees it: what the extended protocol sends for one
    /// statement, a simple query, a query whose text holds the bytes of a header (`Q` with a
    /// length), a COPY payload, and a Terminate.
    fn client_stream() -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        let parts = [
            message(b'P', b"\0SELECT $1\0\0\0"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'D', b"P\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
            message(b'Q', b"SELECT 'Q\0\0\0\x09E'\0"),
            message(b'd', b"E\0\0\0\x04Q\0\0\0\x04"),
            message(b'X', b""),
        ];
        for part in parts {
            stream.extend(part);
            ends.push(stream.len());
        }
        (stream, ends)
    }

    fn check_counts(chunks: &[&[u8]], counted: &[u8], expected: &[u64]) {
        let mut boundary = Boundary::default();
        let got: Vec<u64> = chunks
            .iter()
            .map(|chunk| boundary.feed(chunk, 1000, counted).expect("valid framing"))
            .collect();
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(got, expected, "chunks of {lens:?} bytes");
    }

    #[test]
    fn counts_tagged_messages_once_whatever_the_chunks() {
        let (stream, ends) = client_stream();
        // Whole: one Execute and one Query; bytes inside bodies never count.
        check_counts(&[&stream], b"QE", &[2]);
        check_counts(&[&stream], b"", &[0]);
        check_counts(&[&stream], b"X", &[1]);
        // One message per chunk: each counts in its own chunk.
        let mut chunks = Vec::new();
        let mut start = 0;
        for &end in &ends {
            chunks.push(&stream[start..end]);
            start = end;
        }
        check_counts(&chunks, b"QE", &[0, 0, 0, 1, 0, 1, 0, 0]);
        // Split anywhere: the two messages count once in all, in the chunk that completes
        // their header.
        let execute_header_end = ends[2] + HEADER_LEN;
        let query_header_end = ends[4] + HEADER_LEN;
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let in_a = |header_end: usize| u64::from(split >= header_end);
            let first = in_a(execute_header_end) + in_a(query_header_end);
            check_counts(&[a, b], b"QE", &[first, 2 - first]);
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let mut boundary = Boundary::default();
        let total: u64 = bytes
            .iter()
            .map(|b| boundary.feed(b, 1000, b"QE").expect("valid framing"))
            .sum();
        assert_eq!(total, 2);
        assert!(boundary.at_boundary());
    }

    #[test]
    fn oversized_and_broken_lengths() {
        let mut boundary = Boundary::default();
        let big = message(b'd', &[0u8; 100]);
        assert!(matches!(
            boundary.feed(&big, 50, &[]),
            Err(FrameError::TooLarge { len: 105, max: 50 })
        ));
        let mut boundary = Boundary::default();
        assert!(matches!(
            boundary.feed(&[b'Q', 0, 0, 0, 3], 50, b"Q"),
            Err(FrameError::InvalidLength)
        ));
        let mut boundary = Boundary::default();
        assert!(matches!(
            boundary.feed(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1 << 20, b"Q"),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
