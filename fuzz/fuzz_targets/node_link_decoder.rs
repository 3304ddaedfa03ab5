//! The node-link decoder against arbitrary bytes in arbitrary chunks.
//!
//! Run: `cargo +nightly fuzz run node_link_decoder` (from the repository root).
#![no_main]

use kouan_protocol::{AgentMsg, Decoder, NodeMsg, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks chunk sizes, so the fuzzer explores splits too.
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(seed % 64) + 1;

    let mut node = Decoder::<NodeMsg>::new();
    let mut agent = Decoder::<AgentMsg>::new();
    let mut outcomes = 0u64;
    for piece in bytes.chunks(chunk) {
        for msg in node.feed(piece) {
            outcomes += 1;
            if let Ok(msg) = msg {
                // Whatever decodes must encode again, within the frame limit.
                frame::encode(&msg).expect("a decoded node message re-encodes");
            }
        }
        for msg in agent.feed(piece).flatten() {
            let wire = frame::encode(&msg).expect("a decoded agent message re-encodes");
            let again: Vec<_> = Decoder::<AgentMsg>::new().feed(&wire).collect();
            assert_eq!(again, [Ok(msg)]);
        }
    }

    let stats = node.stats();
    assert_eq!(stats.bytes, bytes.len() as u64);
    assert_eq!(stats.frames + stats.corrupt(), outcomes);
});
