//! Property tests of the node link: round trips, and the decoder against
//! arbitrary garbage and arbitrary chunking.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use kouan_protocol::{
    AgentMsg, Command, CommandResult, Decoder, Hello, NodeMsg, NodeTime, Outcome, Quantity, Sample,
    SensorInfo, Status, Unit, frame,
};
use proptest::prelude::*;

fn quantity() -> impl Strategy<Value = Quantity> {
    prop_oneof![
        Just(Quantity::Temperature),
        Just(Quantity::RelativeHumidity),
        Just(Quantity::GasConcentration),
        Just(Quantity::DoseRate),
        Just(Quantity::CountRate),
        Just(Quantity::Other),
        Just(Quantity::AlarmOutput),
    ]
}

fn unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        Just(Unit::DegreeCelsius),
        Just(Unit::PercentRh),
        Just(Unit::Ppm),
        Just(Unit::PercentLel),
        Just(Unit::MicrosievertPerHour),
        Just(Unit::CountsPerMinute),
        Just(Unit::None),
    ]
}

/// A string of at most `max` UTF-8 bytes, multi-byte characters included.
fn bounded_string<const N: usize>() -> impl Strategy<Value = heapless::String<N>> {
    "[a-z0-9.\\-µ°口岸]{0,16}".prop_map(|s| {
        let mut out = heapless::String::new();
        for c in s.chars() {
            if out.push(c).is_err() {
                break;
            }
        }
        out
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    let sensor = (any::<u8>(), quantity(), unit(), any::<u32>()).prop_map(
        |(id, quantity, unit, interval_ms)| SensorInfo {
            id,
            quantity,
            unit,
            interval_ms,
        },
    );
    (
        any::<u16>(),
        bounded_string(),
        bounded_string(),
        any::<u32>(),
        prop::collection::vec(sensor, 0..=8),
    )
        .prop_map(|(protocol, node_id, firmware, boot, sensors)| Hello {
            protocol,
            node_id,
            firmware,
            boot,
            sensors: heapless::Vec::from_slice(&sensors).expect("at most 8 sensors"),
        })
}

fn node_msg() -> impl Strategy<Value = NodeMsg> {
    let sample = (
        any::<u32>(),
        any::<u8>(),
        any::<f32>(),
        unit(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(seq, sensor, value, unit, ms, synced)| Sample {
            seq,
            sensor,
            value,
            unit,
            time: NodeTime { ms, synced },
        });
    let status = any::<(u16, u16, u32, u32, u32, u32)>().prop_map(|t| Status {
        buffered: t.0,
        capacity: t.1,
        dropped: t.2,
        retransmitted: t.3,
        corrupt_frames: t.4,
        uptime_s: t.5,
    });
    let outcome = prop_oneof![
        Just(Outcome::Done),
        Just(Outcome::Unsupported),
        Just(Outcome::Invalid)
    ];
    let result = (any::<u16>(), outcome).prop_map(|(id, outcome)| CommandResult { id, outcome });
    prop_oneof![
        hello().prop_map(NodeMsg::Hello),
        sample.prop_map(NodeMsg::Sample),
        status.prop_map(NodeMsg::Status),
        result.prop_map(NodeMsg::CommandResult),
    ]
}

fn agent_msg() -> impl Strategy<Value = AgentMsg> {
    let command = prop_oneof![
        (any::<bool>(), any::<u8>()).prop_map(|(on, level)| Command::Alarm { on, level }),
        (any::<u8>(), any::<u32>()).prop_map(|(sensor, interval_ms)| Command::SetInterval {
            sensor,
            interval_ms
        }),
        any::<u16>().prop_map(|seconds| Command::Identify { seconds }),
        any::<u64>().prop_map(|unix_ms| Command::TimeSync { unix_ms }),
        Just(Command::SendHello),
    ];
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(boot, through)| AgentMsg::Ack { boot, through }),
        (any::<u16>(), command).prop_map(|(id, command)| AgentMsg::Command { id, command }),
    ]
}

/// What goes on the line between two points in time.
#[derive(Debug, Clone)]
enum Segment {
    Frame(NodeMsg),
    Garbage(Vec<u8>),
}

fn segment() -> impl Strategy<Value = Segment> {
    // A frame cut short, as when a node resets mid-send.
    let truncated = (node_msg(), any::<prop::sample::Index>()).prop_map(|(msg, cut)| {
        let wire = frame::encode(&msg).unwrap();
        let inner = &wire[1..wire.len() - 1];
        inner[..cut.index(inner.len())].to_vec()
    });
    // A frame with one byte changed on the way.
    let damaged =
        (node_msg(), any::<prop::sample::Index>(), 1..=255u8).prop_map(|(msg, at, flip)| {
            let wire = frame::encode(&msg).unwrap();
            let mut inner = wire[1..wire.len() - 1].to_vec();
            let i = at.index(inner.len());
            inner[i] ^= flip;
            inner
        });
    let noise = prop::collection::vec(any::<u8>(), 0..400);
    prop_oneof![
        3 => node_msg().prop_map(Segment::Frame),
        1 => noise.prop_map(Segment::Garbage),
        1 => truncated.prop_map(Segment::Garbage),
        1 => damaged.prop_map(Segment::Garbage),
    ]
}

/// Feeds `stream` to a fresh decoder in chunks of the given sizes (cycled).
fn decode_chunked(stream: &[u8], sizes: &[usize]) -> (Vec<NodeMsg>, Decoder<NodeMsg>) {
    let mut decoder = Decoder::<NodeMsg>::new();
    let mut messages = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        messages.extend(decoder.feed(chunk).filter_map(Result::ok));
    }
    (messages, decoder)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn node_messages_round_trip(msg in node_msg()) {
        let wire = frame::encode(&msg).unwrap();
        let decoded: Vec<_> = Decoder::<NodeMsg>::new().feed(&wire).collect();
        prop_assert_eq!(decoded.len(), 1);
        let decoded = decoded[0].clone().unwrap();
        // Compare the bytes, so that a NaN value compares equal to itself.
        prop_assert_eq!(frame::encode(&decoded).unwrap(), wire);
    }

    #[test]
    fn agent_messages_round_trip(msg in agent_msg()) {
        let wire = frame::encode(&msg).unwrap();
        let decoded: Vec<_> = Decoder::<AgentMsg>::new().feed(&wire).collect();
        prop_assert_eq!(decoded, vec![Ok(msg)]);
    }

    #[test]
    fn garbage_and_chunking_yield_exactly_the_valid_frames(
        segments in prop::collection::vec(segment(), 0..40),
        sizes in prop::collection::vec(1..64usize, 1..8),
    ) {
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        // Garbage between two frames is one run of bytes, cut by any zeros in it.
        let mut garbage_run = Vec::new();
        let mut expected_corrupt = 0u64;
        let mut close_run = |run: &mut Vec<u8>| -> Result<(), TestCaseError> {
            for piece in run.split(|&b| b == frame::DELIMITER).filter(|p| !p.is_empty()) {
                let mut copy = piece.to_vec();
                let valid = piece.len() <= frame::MAX_ENCODED_LEN
                    && frame::decode_in_place::<NodeMsg>(&mut copy).is_ok();
                // A random run that is a valid frame (CRC-32 and all) is not garbage.
                prop_assume!(!valid);
                expected_corrupt += 1;
            }
            run.clear();
            Ok(())
        };
        for segment in &segments {
            match segment {
                Segment::Frame(msg) => {
                    close_run(&mut garbage_run)?;
                    stream.extend_from_slice(&frame::encode(msg).unwrap());
                    sent.push(msg.clone());
                }
                Segment::Garbage(bytes) => {
                    garbage_run.extend_from_slice(bytes);
                    stream.extend_from_slice(bytes);
                }
            }
        }
        // A final delimiter ends trailing garbage, as the next frame would.
        close_run(&mut garbage_run)?;
        stream.push(frame::DELIMITER);

        let (received, decoder) = decode_chunked(&stream, &sizes);
        let to_bytes = |msgs: &[NodeMsg]| -> Vec<Vec<u8>> {
            msgs.iter().map(|m| frame::encode(m).unwrap().to_vec()).collect()
        };
        prop_assert_eq!(to_bytes(&received), to_bytes(&sent));
        let stats = decoder.stats();
        prop_assert_eq!(stats.frames, sent.len() as u64);
        prop_assert_eq!(stats.corrupt(), expected_corrupt);
        prop_assert_eq!(stats.bytes, stream.len() as u64);
        prop_assert!(!decoder.in_frame());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut node = Decoder::<NodeMsg>::new();
        let mut agent = Decoder::<AgentMsg>::new();
        let frames = node.feed(&bytes).count() as u64;
        agent.feed(&bytes).for_each(drop);
        prop_assert_eq!(node.stats().frames + node.stats().corrupt(), frames);
        prop_assert_eq!(agent.stats().bytes, bytes.len() as u64);
    }
}

#[test]
fn oversize_run_is_one_corrupt_frame_and_the_next_frame_survives() {
    let ack = AgentMsg::Ack {
        boot: 1,
        through: 2,
    };
    let mut stream = vec![0x55; frame::MAX_ENCODED_LEN * 3];
    stream.extend_from_slice(&frame::encode(&ack).unwrap());
    let mut decoder = Decoder::<AgentMsg>::new();
    let out: Vec<_> = decoder.feed(&stream).collect();
    assert_eq!(
        out,
        vec![Err(kouan_protocol::FrameError::Oversize), Ok(ack)]
    );
}

#[test]
fn frame_of_the_other_direction_is_a_payload_error() {
    // A node Hello is not an agent message: the decoder must say so, not misread it.
    let status = NodeMsg::Status(Status {
        buffered: 1,
        capacity: 2,
        dropped: 3,
        retransmitted: 4,
        corrupt_frames: 5,
        uptime_s: 6,
    });
    let wire = frame::encode(&status).unwrap();
    let out: Vec<_> = Decoder::<AgentMsg>::new().feed(&wire).collect();
    assert_eq!(out, vec![Err(kouan_protocol::FrameError::Payload)]);
}
