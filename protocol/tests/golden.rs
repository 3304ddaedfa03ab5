//! Golden bytes: every message kind, pinned byte for byte.
//!
//! These are the examples of `docs/node-link.md`. A change to the wire
//! format fails here first, and the documentation check below fails until
//! the specification shows the new bytes too.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use kouan_protocol::{
    AgentMsg, Command, CommandResult, Decoder, Hello, NodeMsg, NodeTime, Outcome, Quantity, Sample,
    SensorInfo, Status, Unit, frame,
};

/// A message and its bytes: postcard payload and the whole frame on the wire.
struct Golden {
    name: &'static str,
    msg: Msg,
    payload: &'static [u8],
    wire: &'static [u8],
}

#[derive(Debug, Clone, PartialEq)]
enum Msg {
    Node(NodeMsg),
    Agent(AgentMsg),
}

fn hello() -> Hello {
    let mut sensors = heapless::Vec::new();
    for (id, quantity, unit) in [
        (0, Quantity::Temperature, Unit::DegreeCelsius),
        (1, Quantity::RelativeHumidity, Unit::PercentRh),
    ] {
        let sensor = SensorInfo {
            id,
            quantity,
            unit,
            interval_ms: 10_000,
        };
        sensors.push(sensor).unwrap();
    }
    Hello {
        protocol: 1,
        node_id: "wh3-climate".try_into().unwrap(),
        firmware: "0.1.0".try_into().unwrap(),
        boot: 7,
        sensors,
    }
}

fn command(id: u16, command: Command) -> Msg {
    Msg::Agent(AgentMsg::Command { id, command })
}

#[rustfmt::skip]
fn goldens() -> Vec<Golden> {
    vec![
        Golden {
            name: "hello",
            msg: Msg::Node(NodeMsg::Hello(hello())),
            payload: &[
                0x00, 0x01, 0x0b, 0x77, 0x68, 0x33, 0x2d, 0x63, 0x6c, 0x69, 0x6d, 0x61,
                0x74, 0x65, 0x05, 0x30, 0x2e, 0x31, 0x2e, 0x30, 0x07, 0x02, 0x00, 0x00,
                0x00, 0x90, 0x4e, 0x01, 0x01, 0x01, 0x90, 0x4e,
            ],
            wire: &[
                0x00, 0x01, 0x16, 0x01, 0x0b, 0x77, 0x68, 0x33, 0x2d, 0x63, 0x6c, 0x69,
                0x6d, 0x61, 0x74, 0x65, 0x05, 0x30, 0x2e, 0x31, 0x2e, 0x30, 0x07, 0x02,
                0x01, 0x01, 0x0c, 0x90, 0x4e, 0x01, 0x01, 0x01, 0x90, 0x4e, 0x5e, 0x76,
                0x27, 0xfa, 0x00,
            ],
        },
        Golden {
            name: "sample",
            msg: Msg::Node(NodeMsg::Sample(Sample {
                seq: 42,
                sensor: 0,
                value: 21.5,
                unit: Unit::DegreeCelsius,
                time: NodeTime { ms: 1_764_756_000_123, synced: true },
            })),
            payload: &[
                0x01, 0x2a, 0x00, 0x00, 0x00, 0xac, 0x41, 0x00, 0xfb, 0x9a, 0x9e, 0x9d,
                0xae, 0x33, 0x01,
            ],
            wire: &[
                0x00, 0x03, 0x01, 0x2a, 0x01, 0x01, 0x03, 0xac, 0x41, 0x0c, 0xfb, 0x9a,
                0x9e, 0x9d, 0xae, 0x33, 0x01, 0x95, 0x59, 0xe4, 0xa0, 0x00,
            ],
        },
        Golden {
            name: "status",
            msg: Msg::Node(NodeMsg::Status(Status {
                buffered: 3,
                capacity: 64,
                dropped: 0,
                retransmitted: 2,
                corrupt_frames: 1,
                uptime_s: 3600,
            })),
            payload: &[0x02, 0x03, 0x40, 0x00, 0x02, 0x01, 0x90, 0x1c],
            wire: &[
                0x00, 0x04, 0x02, 0x03, 0x40, 0x09, 0x02, 0x01, 0x90, 0x1c, 0x0c, 0xbc,
                0x3c, 0xd7, 0x00,
            ],
        },
        Golden {
            name: "command-result",
            msg: Msg::Node(NodeMsg::CommandResult(CommandResult {
                id: 5,
                outcome: Outcome::Done,
            })),
            payload: &[0x03, 0x05, 0x00],
            wire: &[0x00, 0x03, 0x03, 0x05, 0x05, 0x0e, 0x93, 0x70, 0x80, 0x00],
        },
        Golden {
            name: "ack",
            msg: Msg::Agent(AgentMsg::Ack { boot: 7, through: 42 }),
            payload: &[0x00, 0x07, 0x2a],
            wire: &[0x00, 0x01, 0x07, 0x07, 0x2a, 0x03, 0x86, 0xbb, 0x6b, 0x00],
        },
        Golden {
            name: "alarm",
            msg: command(5, Command::Alarm { on: true, level: 1 }),
            payload: &[0x01, 0x05, 0x00, 0x01, 0x01],
            wire: &[0x00, 0x03, 0x01, 0x05, 0x07, 0x01, 0x01, 0x48, 0x2f, 0x80, 0xa2, 0x00],
        },
        Golden {
            name: "set-interval",
            msg: command(6, Command::SetInterval { sensor: 1, interval_ms: 60_000 }),
            payload: &[0x01, 0x06, 0x01, 0x01, 0xe0, 0xd4, 0x03],
            wire: &[
                0x00, 0x0c, 0x01, 0x06, 0x01, 0x01, 0xe0, 0xd4, 0x03, 0x03, 0xf8, 0x21,
                0xbd, 0x00,
            ],
        },
        Golden {
            name: "identify",
            msg: command(7, Command::Identify { seconds: 30 }),
            payload: &[0x01, 0x07, 0x02, 0x1e],
            wire: &[0x00, 0x09, 0x01, 0x07, 0x02, 0x1e, 0x1d, 0xf1, 0x8e, 0x54, 0x00],
        },
        Golden {
            name: "time-sync",
            msg: command(8, Command::TimeSync { unix_ms: 1_764_756_000_000 }),
            payload: &[0x01, 0x08, 0x03, 0x80, 0x9a, 0x9e, 0x9d, 0xae, 0x33],
            wire: &[
                0x00, 0x0e, 0x01, 0x08, 0x03, 0x80, 0x9a, 0x9e, 0x9d, 0xae, 0x33, 0xe9,
                0x67, 0x79, 0xb1, 0x00,
            ],
        },
        Golden {
            name: "send-hello",
            msg: command(9, Command::SendHello),
            payload: &[0x01, 0x09, 0x04],
            wire: &[0x00, 0x08, 0x01, 0x09, 0x04, 0x75, 0xcc, 0x2c, 0x28, 0x00],
        },
    ]
}

/// The postcard payload and the wire frame of a message.
fn encode(msg: &Msg) -> (Vec<u8>, Vec<u8>) {
    match msg {
        Msg::Node(m) => (
            postcard::to_allocvec(m).unwrap(),
            frame::encode(m).unwrap().to_vec(),
        ),
        Msg::Agent(m) => (
            postcard::to_allocvec(m).unwrap(),
            frame::encode(m).unwrap().to_vec(),
        ),
    }
}

/// Decodes `wire` with a decoder of the same direction as `like`.
fn decode(like: &Msg, wire: &[u8]) -> Vec<Msg> {
    match like {
        Msg::Node(_) => Decoder::<NodeMsg>::new()
            .feed(wire)
            .map(|m| Msg::Node(m.unwrap()))
            .collect(),
        Msg::Agent(_) => Decoder::<AgentMsg>::new()
            .feed(wire)
            .map(|m| Msg::Agent(m.unwrap()))
            .collect(),
    }
}

#[test]
fn every_message_kind_encodes_to_its_golden_bytes() {
    for golden in goldens() {
        let (payload, wire) = encode(&golden.msg);
        assert_eq!(payload, golden.payload, "payload of {}", golden.name);
        assert_eq!(wire, golden.wire, "wire bytes of {}", golden.name);
    }
}

#[test]
fn every_golden_frame_decodes_to_its_message() {
    for golden in goldens() {
        let decoded = decode(&golden.msg, golden.wire);
        assert_eq!(decoded, [golden.msg], "{}", golden.name);
    }
}

#[test]
fn goldens_cover_every_message_kind() {
    let mut node = [false; 4];
    let mut agent = [false; 2];
    let mut commands = [false; 5];
    for golden in goldens() {
        match golden.msg {
            Msg::Node(NodeMsg::Hello(_)) => node[0] = true,
            Msg::Node(NodeMsg::Sample(_)) => node[1] = true,
            Msg::Node(NodeMsg::Status(_)) => node[2] = true,
            Msg::Node(NodeMsg::CommandResult(_)) => node[3] = true,
            Msg::Agent(AgentMsg::Ack { .. }) => agent[0] = true,
            Msg::Agent(AgentMsg::Command { command, .. }) => {
                agent[1] = true;
                let index = match command {
                    Command::Alarm { .. } => 0,
                    Command::SetInterval { .. } => 1,
                    Command::Identify { .. } => 2,
                    Command::TimeSync { .. } => 3,
                    Command::SendHello => 4,
                };
                commands[index] = true;
            }
        }
    }
    assert!(node.iter().chain(&agent).chain(&commands).all(|&seen| seen));
}

/// One example as written in the specification.
#[derive(Debug, Default)]
struct DocExample {
    wire: Vec<u8>,
    payload: Vec<u8>,
    crc: Vec<u8>,
}

/// Reads the examples of `docs/node-link.md`: blocks that start with
/// `# example: NAME` and hold `wire`, `payload` and `crc` lines. Each line
/// has a label column of 9 characters, then hex bytes separated by single
/// spaces, then (after two or more spaces) an annotation. Lines with an
/// empty label continue the field above.
fn doc_examples() -> Vec<(String, DocExample)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/node-link.md");
    let text = std::fs::read_to_string(path).expect("docs/node-link.md is readable");
    let mut examples: Vec<(String, DocExample)> = Vec::new();
    let mut field = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# example: ") {
            examples.push((name.trim().to_owned(), DocExample::default()));
            field = "";
            continue;
        }
        let Some((_, example)) = examples.last_mut() else {
            continue;
        };
        if line.starts_with("```") {
            field = "";
            continue;
        }
        let (label, rest) = line.split_at(line.len().min(9));
        match label.trim() {
            "" => {}
            "wire" => field = "wire",
            "payload" => field = "payload",
            "crc" => field = "crc",
            _ => field = "",
        }
        let hex = rest.trim_start().split("  ").next().unwrap_or("");
        let bytes = hex
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(|t| u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("bad hex {t:?}")));
        match field {
            "wire" => example.wire.extend(bytes),
            "payload" => example.payload.extend(bytes),
            "crc" => example.crc.extend(bytes),
            _ => {}
        }
    }
    examples
}

#[test]
fn specification_shows_the_golden_bytes() {
    let examples = doc_examples();
    let goldens = goldens();
    assert_eq!(
        examples
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        goldens.iter().map(|g| g.name).collect::<Vec<_>>(),
        "docs/node-link.md has one example per golden, in the same order"
    );
    for ((name, example), golden) in examples.iter().zip(&goldens) {
        assert_eq!(
            example.wire, golden.wire,
            "wire bytes of {name} in the docs"
        );
        assert_eq!(
            example.payload, golden.payload,
            "annotated payload of {name}"
        );
        let crc = frame::crc32(golden.payload).to_le_bytes();
        assert_eq!(example.crc, crc, "annotated CRC of {name}");
    }
}
