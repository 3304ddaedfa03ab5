//! Model-based property test of the node's sample buffer and link rules.
//!
//! Random runs of values taken, acks (right, stale, for another boot, out
//! of order), corrupt bytes and time passing drive a [`Node`] through its
//! public API, as the agent and the board would. After every step the
//! messages the node sent are checked against what docs/node-link.md
//! promises:
//!
//! - sample numbers start at 1 and each new one is the last plus one, so
//!   the agent sees no holes; a value that finds the buffer full is counted
//!   in `dropped` instead;
//! - every value is either numbered or dropped, never both, never neither;
//! - nothing acknowledged for this boot is ever sent again; acks for
//!   another boot change nothing;
//! - a sample goes again only after its timeout, from the oldest
//!   unacknowledged one, at most a burst at a time, and is counted;
//! - the buffer never holds more than its capacity.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use kouan_firmware::node::{
    Config, NoOutputs, Node, RETRANSMIT_BURST, RETRANSMIT_TIMEOUT_MS, SensorSpec,
};
use kouan_protocol::{AgentMsg, NodeMsg, Quantity, Unit, frame};
use proptest::prelude::*;

const BOOT: u32 = 42;
const CAPACITY: usize = 8;

#[derive(Debug, Clone)]
enum Step {
    /// The board records a value.
    Take,
    /// The agent acknowledges through the newest number sent, minus `back`.
    Ack { back: u32 },
    /// An ack for another boot, through a number in this boot's range.
    OtherBoot { through: u32 },
    /// Line noise from the agent.
    Noise(Vec<u8>),
    /// Time passes.
    Wait { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Take),
        2 => (0u32..4).prop_map(|back| Step::Ack { back }),
        1 => (0u32..40).prop_map(|through| Step::OtherBoot { through }),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Step::Noise),
        3 => prop_oneof![0u64..100, Just(RETRANSMIT_TIMEOUT_MS), 0u64..5_000]
            .prop_map(|ms| Step::Wait { ms }),
    ]
}

/// What the agent has seen, to check each message against.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    taken: u32,
    /// Highest number sent so far (new numbers must follow it).
    newest: u32,
    /// Highest number acknowledged for this boot.
    acked: u32,
    /// When the node last sent each number, by number (index 0 unused).
    last_sent: Vec<u64>,
    retransmitted: u32,
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let sensors = [SensorSpec::periodic(
        0,
        Quantity::Temperature,
        Unit::DegreeCelsius,
        1_000,
        100,
    )];
    let config = Config {
        node_id: "model",
        firmware: "0.1.0",
        boot: BOOT,
        sensors: &sensors,
    };
    let mut node = Node::<CAPACITY>::new(&config).unwrap();
    let mut model = Model {
        last_sent: vec![0],
        ..Model::default()
    };

    for step in steps {
        match step {
            Step::Take => {
                node.record(0, model.taken as f32, model.now);
                model.taken += 1;
            }
            Step::Ack { back } => {
                let through = model.newest.saturating_sub(back).max(model.acked);
                let ack = AgentMsg::Ack {
                    boot: BOOT,
                    through,
                };
                node.receive(&frame::encode(&ack).unwrap(), model.now, &mut NoOutputs);
                model.acked = through;
            }
            Step::OtherBoot { through } => {
                let ack = AgentMsg::Ack {
                    boot: BOOT + 1,
                    through,
                };
                node.receive(&frame::encode(&ack).unwrap(), model.now, &mut NoOutputs);
            }
            Step::Noise(bytes) => {
                // Noise ends at a delimiter, as the agent's next frame would
                // begin, so it cannot swallow a later ack.
                node.receive(&bytes, model.now, &mut NoOutputs);
                node.receive(&[0], model.now, &mut NoOutputs);
            }
            Step::Wait { ms } => model.now += ms,
        }
        check_sent(&mut node, &mut model)?;
    }
    Ok(())
}

/// Drains what the node sends now and checks it against the model.
fn check_sent(node: &mut Node<CAPACITY>, model: &mut Model) -> Result<(), TestCaseError> {
    let mut burst = 0;
    let mut expected_repeat: Option<u32> = None;
    while let Some(msg) = node.transmit(model.now) {
        let sample = match msg {
            NodeMsg::Sample(sample) => sample,
            NodeMsg::Hello(hello) => {
                prop_assert_eq!(hello.boot, BOOT);
                continue;
            }
            NodeMsg::Status(_) | NodeMsg::CommandResult(_) => continue,
        };

        prop_assert!(
            sample.seq > model.acked,
            "{} sent after ack {}",
            sample.seq,
            model.acked
        );
        if sample.seq > model.newest {
            prop_assert_eq!(sample.seq, model.newest + 1, "a hole in the numbers");
            model.newest = sample.seq;
            model.last_sent.push(model.now);
            continue;
        }

        // A repeat: go-back-N from the oldest unacknowledged number, which
        // was last sent at least a timeout ago; then in order, at most a
        // burst at a time.
        let seq = sample.seq;
        match expected_repeat {
            None => {
                prop_assert_eq!(seq, model.acked + 1, "a go-back starts at the oldest");
                let sent = model.last_sent[seq as usize];
                prop_assert!(
                    model.now >= sent + RETRANSMIT_TIMEOUT_MS,
                    "{} sent again {} ms after its last send",
                    seq,
                    model.now - sent
                );
            }
            Some(next) => prop_assert_eq!(seq, next, "repeats go in order"),
        }
        expected_repeat = Some(seq + 1);
        burst += 1;
        prop_assert!(burst <= RETRANSMIT_BURST);
        model.last_sent[seq as usize] = model.now;
        model.retransmitted += 1;
    }

    let status = node.status(model.now);
    prop_assert!(usize::from(status.buffered) <= CAPACITY);
    prop_assert_eq!(status.retransmitted, model.retransmitted);
    // Every value is numbered or dropped, exactly once; the model drains
    // after every step, so every numbered value has been sent.
    prop_assert_eq!(model.newest + status.dropped, model.taken);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn node_keeps_the_link_rules(steps in prop::collection::vec(step(), 1..200)) {
        run(steps)?;
    }
}
