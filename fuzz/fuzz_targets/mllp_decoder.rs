//! The MLLP decoder, the HL7 v2 parser and the acknowledgement builder
//! against arbitrary bytes.
//!
//! Run: `cargo +nightly fuzz run mllp_decoder` (from fuzz/).
#![no_main]

use kouan_agent::hl7::Hl7Options;
use kouan_agent::hl7::message::{AckCode, Message, ack};
use kouan_agent::hl7::mllp::{Decoder, Frame};
use libfuzzer_sys::fuzz_target;

const MAX_LEN: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&split, wire)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(MAX_LEN);
    let mut frames = Vec::new();
    for chunk in wire.chunks(1 + usize::from(split)) {
        frames.extend(decoder.push(chunk));
        assert!(decoder.pending() <= MAX_LEN);
    }

    for frame in frames {
        let Frame::Message(bytes) = frame else {
            continue;
        };
        assert!(bytes.len() <= MAX_LEN);
        let utf8 = split & 1 == 0;
        let options = Hl7Options {
            encoding: if utf8 { "utf-8" } else { "gbk" }.into(),
            ..Hl7Options::default()
        };
        let encoding = options.encoding().expect("a known code page");
        let message = Message::parse(&bytes, encoding).ok();
        let readings = message.as_ref().map(Message::readings);
        if let (Some(message), Some(readings)) = (&message, &readings) {
            let results = message.segments.iter().filter(|s| s.name == "OBX").count();
            assert_eq!(readings.len(), results);
            let _ = message.control_id();
        }

        // The reply always parses back; in UTF-8, which can write back
        // whatever it decoded, it names the same control id.
        let reply = ack(
            message.as_ref(),
            AckCode::Error,
            Some("fuzz"),
            "20261203101500",
            encoding,
        );
        let parsed = Message::parse(&reply, encoding).expect("an ACK parses");
        assert_eq!(parsed.message_type().0, "ACK");
        if let (Some(message), true) = (&message, utf8) {
            assert_eq!(parsed.control_id(), message.control_id());
        }
    }
});
