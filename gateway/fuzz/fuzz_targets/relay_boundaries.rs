//! The relay's message-boundary tracker (`pgwire::frame::track_boundaries`, what both
//! directions of a session run every chunk through), on a stream cut into chunks at arbitrary
//! points.
//!
//! Input: one byte picking the client message limit, one seeding the chunk sizes, then the
//! stream.
//!
//! Checks: after every chunk the tracker agrees with a plain reference framing of the whole
//! stream (at a boundary exactly when the bytes so far end where a message ends); it refuses
//! the first message whose length is below 4 or over the limit, in the chunk that completes
//! that message's header, and never before.
#![no_main]

use gateway::fuzzing::frame::{track_boundaries, Tracked};
use gateway_fuzz::Splitter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max_message = [usize::MAX, 5, 64, 1024][usize::from(limit & 3)];
    let chunks = Splitter::new(*seed).split(stream);
    let tracked = track_boundaries(chunks.iter().copied(), max_message);

    // Reference: the offsets where messages start, and the first bad header.
    let mut starts = vec![0];
    let mut refused = None;
    let mut at = 0;
    while let Some(header) = stream.get(at..at + 5) {
        let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if declared < 4 {
            refused = Some((at + 5, Tracked::Framing));
            break;
        }
        if declared + 1 > max_message {
            refused = Some((at + 5, Tracked::TooLarge(declared + 1)));
            break;
        }
        at += declared + 1;
        starts.push(at);
    }

    let mut expected = Vec::new();
    let mut end = 0;
    for chunk in &chunks {
        end += chunk.len();
        match refused {
            Some((header_end, ref error)) if header_end <= end => {
                expected.push(match error {
                    Tracked::TooLarge(len) => Tracked::TooLarge(*len),
                    _ => Tracked::Framing,
                });
                break;
            }
            _ => expected.push(Tracked::Boundary(starts.binary_search(&end).is_ok())),
        }
    }
    assert_eq!(
        tracked,
        expected,
        "chunks {:?}",
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
});
