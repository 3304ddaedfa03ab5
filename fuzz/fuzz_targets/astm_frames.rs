//! The ASTM E1381 receiver against arbitrary bytes, chunks, times and
//! store answers.
//!
//! Run: `cargo +nightly fuzz run astm_frames` (from fuzz/).
#![no_main]

use std::time::{Duration, Instant};

use kouan_agent::astm::link::{Event, LinkConfig, MessageEnd, Receiver};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the configuration, the rest is the wire;
    // each chunk's first byte says how long it is, how much time passed
    // and whether the store takes the next message.
    let Some((&[frame_cap, flags], mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let config = LinkConfig {
        receive_timeout: Duration::from_secs(15),
        frame_cap: 8 + usize::from(frame_cap),
        max_message_len: 512,
        message_end: if flags & 1 == 0 {
            MessageEnd::TerminatorRecord
        } else {
            MessageEnd::EveryFrame
        },
    };
    let mut receiver = Receiver::new(config.clone());
    receiver.set_busy(flags & 2 != 0);
    let mut now = Instant::now();

    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3f).min(tail.len());
        let (chunk, after) = tail.split_at(len);
        rest = after;
        now += Duration::from_secs(u64::from(control >> 6) * 8);

        let mut events = receiver.on_bytes(chunk, now);
        events.extend(receiver.on_tick(now));
        let stored = control & 0x20 == 0;
        while receiver.awaiting_confirm() {
            events.extend(receiver.confirm(stored, now));
        }
        for event in events {
            match event {
                Event::Message(text) | Event::Incomplete(text) => {
                    assert!(text.len() <= config.max_message_len);
                }
                Event::Send(byte) => assert!(byte == 0x06 || byte == 0x15),
                Event::SessionEnded { .. } | Event::Timeout => {}
            }
        }
    }
});
