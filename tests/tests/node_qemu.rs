//! The emulated sensor node end to end: the lm3s6965evb image under
//! qemu-system-arm, its UART on a pty, and this test as the agent's end of
//! the node link, spoken with kouan-protocol.
//!
//! Each test runs its own QEMU. Waits have generous deadlines that only
//! keep a broken node from hanging the run; no assertion depends on how
//! fast anything happens.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use kouan_firmware::sim;
use kouan_firmware::station::{ALARM, COUNT_RATE, DOSE_RATE, GAS, HUMIDITY, TEMPERATURE};
use kouan_protocol::{
    AgentMsg, Command, CommandResult, Decoder, Hello, NodeMsg, Outcome, PROTOCOL_VERSION, Quantity,
    Sample, Status, Unit, frame,
};
use kouan_tests::qemu::{self, Node};
use serialport::TTYPort;

/// Longest wait for one expected message: far beyond the node's 60 s
/// status period, so every rule has time to show.
const WAIT: Duration = Duration::from_secs(90);

/// The image's sample buffer (firmware/boards/lm3s6965evb/src/main.rs).
const CAPACITY: u16 = 128;

/// The agent's end of the link to one emulated node.
struct Link {
    // Declared before the node, so the pty is closed before QEMU is killed.
    port: TTYPort,
    decoder: Decoder<NodeMsg>,
    received: VecDeque<NodeMsg>,
    /// Skip corrupt frames instead of failing.
    tolerate_corrupt: bool,
    node: Node,
    dir: tempfile::TempDir,
}

impl Link {
    /// Starts a node, opens its pty, lets it run.
    fn start() -> Link {
        let dir = tempfile::tempdir().unwrap();
        let mut node = Node::start(dir.path());
        let port = serialport::new(node.pty().to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap_or_else(|e| panic!("open {}: {e}", node.pty().display()));
        node.resume();
        Link {
            port,
            decoder: Decoder::new(),
            received: VecDeque::new(),
            tolerate_corrupt: false,
            node,
            dir,
        }
    }

    /// The next message from the node.
    fn recv(&mut self) -> NodeMsg {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 256];
        loop {
            if let Some(msg) = self.received.pop_front() {
                return msg;
            }
            assert!(Instant::now() < deadline, "the node fell silent");
            match self.port.read(&mut buf) {
                Ok(n) => {
                    for outcome in self.decoder.feed(&buf[..n]) {
                        match outcome {
                            Ok(msg) => self.received.push_back(msg),
                            Err(_) if self.tolerate_corrupt => {}
                            Err(e) => panic!("bad frame from the node: {e}"),
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => {}
                Err(e) => panic!("reading the node's pty: {e}"),
            }
        }
    }

    /// Receives until `f` returns something for a message.
    fn recv_until<T>(&mut self, mut f: impl FnMut(&mut Self, NodeMsg) -> Option<T>) -> T {
        loop {
            let msg = self.recv();
            if let Some(found) = f(self, msg) {
                return found;
            }
        }
    }

    fn send(&mut self, msg: &AgentMsg) {
        let bytes = frame::encode(msg).unwrap();
        self.port.write_all(&bytes).unwrap();
        self.port.flush().unwrap();
    }

    fn ack(&mut self, boot: u32, through: u32) {
        self.send(&AgentMsg::Ack { boot, through });
    }

    /// The hello the node sends at boot.
    fn hello(&mut self) -> Hello {
        match self.recv() {
            NodeMsg::Hello(hello) => hello,
            other => panic!("a node says hello first, not {other:?}"),
        }
    }

    /// Sends a command and waits for its result; samples meanwhile go to
    /// `samples`.
    fn command(&mut self, id: u16, command: Command, samples: &mut Samples) -> Outcome {
        self.send(&AgentMsg::Command { id, command });
        self.recv_until(|link, msg| match msg {
            NodeMsg::CommandResult(CommandResult { id: got, outcome }) if got == id => {
                Some(outcome)
            }
            msg => samples.take(link, msg),
        })
    }
}

/// What an agent keeps of the samples: the numbers seen, acknowledging
/// every contiguous prefix as it grows.
#[derive(Default)]
struct Samples {
    boot: u32,
    /// Highest number below which all are in.
    through: u32,
    seen: BTreeSet<u32>,
    all: Vec<Sample>,
    ack: bool,
}

impl Samples {
    fn acking(boot: u32) -> Samples {
        Samples {
            boot,
            ack: true,
            ..Default::default()
        }
    }

    /// Keeps a sample (once per number) and acks; other messages are
    /// ignored. Returns nothing, to end a [`Link::recv_until`] closure.
    fn take<T>(&mut self, link: &mut Link, msg: NodeMsg) -> Option<T> {
        let NodeMsg::Sample(sample) = msg else {
            return None;
        };
        if self.seen.insert(sample.seq) {
            self.all.push(sample);
        }
        while self.seen.contains(&(self.through + 1)) {
            self.through += 1;
        }
        if self.ack {
            link.ack(self.boot, self.through);
        }
        None
    }

    /// `msg` if it is a sample whose number was seen before.
    fn repeat(&self, msg: &NodeMsg) -> Option<Sample> {
        sample(msg).filter(|s| self.seen.contains(&s.seq))
    }
}

fn sample(msg: &NodeMsg) -> Option<Sample> {
    match msg {
        NodeMsg::Sample(sample) => Some(*sample),
        _ => None,
    }
}

#[test]
fn hello_then_samples_numbered_from_one_with_the_simulated_values() {
    let mut link = Link::start();

    let hello = link.hello();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.node_id, "qemu-node");
    assert_eq!(hello.boot, link.node.first_boot());
    let announced: Vec<_> = hello
        .sensors
        .iter()
        .map(|s| (s.id, s.quantity, s.unit))
        .collect();
    assert_eq!(
        announced,
        [
            (TEMPERATURE, Quantity::Temperature, Unit::DegreeCelsius),
            (HUMIDITY, Quantity::RelativeHumidity, Unit::PercentRh),
            (GAS, Quantity::GasConcentration, Unit::Ppm),
            (DOSE_RATE, Quantity::DoseRate, Unit::MicrosievertPerHour),
            (COUNT_RATE, Quantity::CountRate, Unit::CountsPerMinute),
            (ALARM, Quantity::AlarmOutput, Unit::None),
        ]
    );

    let mut samples = Samples::acking(hello.boot);
    while samples.all.len() < 25 {
        let msg = link.recv();
        samples.take::<()>(&mut link, msg);
    }

    // Numbered from 1 in the order taken, the alarm's state at boot first.
    let seqs: Vec<u32> = samples.all.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    assert_eq!((samples.all[0].sensor, samples.all[0].value), (ALARM, 0.0));

    // The SHT3x's pattern, one measurement per step for both quantities,
    // and the gas channel through its calibration (0.5 V is zero gas,
    // 0.01 V one ppm).
    let of = |sensor| samples.all.iter().filter(move |s| s.sensor == sensor);
    for (n, s) in of(TEMPERATURE).enumerate() {
        assert!(
            (s.value - sim::sht3x_temperature(n as u32)).abs() < 0.01,
            "{s:?}"
        );
        assert!(!s.time.synced);
    }
    for (n, s) in of(HUMIDITY).enumerate() {
        assert!(
            (s.value - sim::sht3x_humidity(n as u32)).abs() < 0.01,
            "{s:?}"
        );
    }
    for (n, s) in of(GAS).enumerate() {
        let ppm = (sim::ads1115_volts(n as u32) - 0.5) * 100.0;
        assert!((s.value - ppm).abs() < 0.1, "{s:?}");
    }
    // 30 counts per minute once the tube's pattern has run a while.
    assert!(of(COUNT_RATE).all(|s| s.value > 0.0 && s.unit == Unit::CountsPerMinute));
    let times: Vec<u64> = of(TEMPERATURE).map(|s| s.time.ms).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
}

#[test]
fn unacknowledged_samples_come_again_from_the_oldest() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    let mut samples = Samples::default();

    // Nothing acknowledged: the first sample sent twice is number 1, and
    // the next one sent twice is number 2.
    let first =
        link.recv_until(|link, msg| samples.repeat(&msg).or_else(|| samples.take(link, msg)));
    assert_eq!(first.seq, 1);
    let second =
        link.recv_until(|link, msg| samples.repeat(&msg).or_else(|| samples.take(link, msg)));
    assert_eq!(second.seq, 2);

    // Acknowledged through k: what goes again starts after k, and nothing
    // up to k is sent again once it has.
    let k = samples.through;
    link.ack(boot, k);
    let again = link.recv_until(|link, msg| {
        let repeat = samples.repeat(&msg).filter(|s| s.seq > k);
        repeat.or_else(|| samples.take(link, msg))
    });
    assert_eq!(again.seq, k + 1);
    let fresh_until = samples.through + 10;
    link.recv_until(|link, msg| {
        let s = sample(&msg)?;
        assert!(
            s.seq > k,
            "sample {} came again after the ack through {k}",
            s.seq
        );
        let done = (s.seq > fresh_until).then_some(());
        done.or_else(|| samples.take(link, msg))
    });
}

#[test]
fn ack_for_another_boot_frees_nothing() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    link.ack(boot.wrapping_add(1_000), 1_000);
    let mut samples = Samples::default();

    let first_again =
        link.recv_until(|link, msg| samples.repeat(&msg).or_else(|| samples.take(link, msg)));

    assert_eq!(first_again.seq, 1);
}

#[test]
fn alarm_command_reaches_the_node_and_it_reports_the_output_state() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    let mut samples = Samples::acking(boot);

    let on = Command::Alarm { on: true, level: 2 };
    assert_eq!(link.command(7, on, &mut samples), Outcome::Done);
    let state = link.recv_until(|link, msg| {
        let state = sample(&msg).filter(|s| s.sensor == ALARM && s.seq > 1);
        state.or_else(|| samples.take(link, msg))
    });
    assert_eq!((state.value, state.unit), (2.0, Unit::None));

    let bad_level = Command::Alarm { on: true, level: 9 };
    assert_eq!(link.command(8, bad_level, &mut samples), Outcome::Invalid);

    let off = Command::Alarm {
        on: false,
        level: 0,
    };
    assert_eq!(link.command(9, off, &mut samples), Outcome::Done);
    let state = link.recv_until(|link, msg| {
        let state = sample(&msg).filter(|s| s.sensor == ALARM && s.seq > 1 && s.value != 2.0);
        state.or_else(|| samples.take(link, msg))
    });
    assert_eq!(state.value, 0.0);
}

#[test]
fn other_commands_are_answered() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    let mut samples = Samples::acking(boot);

    // The emulated board has one LED, taken by the alarm.
    let identify = Command::Identify { seconds: 5 };
    assert_eq!(
        link.command(1, identify, &mut samples),
        Outcome::Unsupported
    );

    let unknown_sensor = Command::SetInterval {
        sensor: 42,
        interval_ms: 1_000,
    };
    assert_eq!(
        link.command(2, unknown_sensor, &mut samples),
        Outcome::Invalid
    );
    let too_fast = Command::SetInterval {
        sensor: TEMPERATURE,
        interval_ms: 10,
    };
    assert_eq!(link.command(3, too_fast, &mut samples), Outcome::Invalid);

    let unix_ms = 1_764_756_000_000;
    assert_eq!(
        link.command(4, Command::TimeSync { unix_ms }, &mut samples),
        Outcome::Done
    );
    let synced = link.recv_until(|link, msg| {
        let synced = sample(&msg).filter(|s| s.sensor == TEMPERATURE && s.time.synced);
        synced.or_else(|| samples.take(link, msg))
    });
    assert!(synced.time.ms >= unix_ms, "{synced:?}");

    link.send(&AgentMsg::Command {
        id: 5,
        command: Command::SendHello,
    });
    let hello = link.recv_until(|link, msg| match msg {
        NodeMsg::Hello(hello) => Some(hello),
        msg => samples.take(link, msg),
    });
    assert_eq!(hello.boot, boot);
}

#[test]
fn drops_are_counted_and_reported_when_no_ack_comes_for_longer_than_the_buffer_lasts() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    let mut samples = Samples::default();

    // Every sensor at its fastest, so the buffer fills in seconds.
    for (id, sensor) in [TEMPERATURE, HUMIDITY, GAS, DOSE_RATE, COUNT_RATE]
        .into_iter()
        .enumerate()
    {
        let fast = Command::SetInterval {
            sensor,
            interval_ms: 100,
        };
        assert_eq!(link.command(id as u16, fast, &mut samples), Outcome::Done);
    }

    let full = link.recv_until(|link, msg| match msg {
        NodeMsg::Status(status) if status.dropped > 0 => Some(status),
        msg => samples.take(link, msg),
    });
    assert_eq!((full.buffered, full.capacity), (CAPACITY, CAPACITY));

    // The buffer holds 1 to 128; everything after that was dropped, not
    // numbered. (The status may overtake the last fresh sample.)
    let last = u32::from(CAPACITY);
    if !samples.seen.contains(&last) {
        link.recv_until(|link, msg| {
            let last = sample(&msg).filter(|s| s.seq == last).map(|_| ());
            last.or_else(|| samples.take(link, msg))
        });
    }
    assert!(
        samples.seen.iter().all(|&seq| seq <= last),
        "{:?}",
        samples.seen
    );

    // The agent is back: after the ack, a status with the gap's final
    // count precedes the first sample after the gap, numbered 129.
    link.ack(boot, u32::from(CAPACITY));
    let mut last_status: Option<Status> = None;
    let next = link.recv_until(|_, msg| {
        if let NodeMsg::Status(status) = msg {
            last_status = Some(status);
        }
        sample(&msg).filter(|s| s.seq > last)
    });
    assert_eq!(next.seq, u32::from(CAPACITY) + 1);
    let gap = last_status.expect("a status before the first sample after the gap");
    assert!(gap.dropped >= full.dropped, "{gap:?} after {full:?}");
    assert!(gap.buffered < CAPACITY, "{gap:?}");
}

#[test]
fn reset_starts_a_new_boot_numbered_from_one() {
    let mut link = Link::start();
    let first = link.hello().boot;
    let mut samples = Samples::acking(first);
    while samples.all.len() < 5 {
        let msg = link.recv();
        samples.take::<()>(&mut link, msg);
    }

    link.node.reset();

    // A frame cut by the reset is garbage on the line, as on a real one.
    link.tolerate_corrupt = true;
    let hello = link.recv_until(|_, msg| match msg {
        NodeMsg::Hello(hello) => Some(hello),
        _ => None,
    });
    assert_eq!(hello.boot, first.wrapping_add(1));
    let after = link.recv_until(|_, msg| sample(&msg));
    assert_eq!(after.seq, 1);
}

/// The stack the node may use, with every path exercised: a quarter of
/// the 16 KiB RAM budget, on top of its statics (docs/firmware.md).
const STACK_BUDGET: usize = 4 * 1024;

#[test]
fn stack_stays_within_its_budget_through_every_path() {
    let mut link = Link::start();
    let boot = link.hello().boot;
    let mut samples = Samples::default();

    // Every command, valid and not, with the buffer filling (no acks).
    let commands = [
        Command::Alarm { on: true, level: 1 },
        Command::Alarm { on: true, level: 7 },
        Command::Identify { seconds: 1 },
        Command::TimeSync {
            unix_ms: 1_764_756_000_000,
        },
        Command::SendHello,
        Command::SetInterval {
            sensor: 42,
            interval_ms: 100,
        },
    ];
    for (id, command) in commands.into_iter().enumerate() {
        link.command(id as u16, command, &mut samples);
    }
    for sensor in [TEMPERATURE, HUMIDITY, GAS, DOSE_RATE, COUNT_RATE] {
        let fast = Command::SetInterval {
            sensor,
            interval_ms: 100,
        };
        assert_eq!(link.command(100, fast, &mut samples), Outcome::Done);
    }

    // Garbage, an oversize frame and a frame with a bad CRC on the line.
    let mut garbage: Vec<u8> = (1..=255).cycle().take(600).collect();
    garbage.extend_from_slice(&[0, 0x05, 0x01, 0x02, 0x03, 0x04, 0]);
    link.port.write_all(&garbage).unwrap();

    // Drops, then retransmission of the full buffer, then recovery.
    link.recv_until(|link, msg| match msg {
        NodeMsg::Status(status) if status.dropped > 0 => Some(()),
        msg => samples.take(link, msg),
    });
    link.recv_until(|link, msg| samples.repeat(&msg).or_else(|| samples.take(link, msg)));
    link.ack(boot, samples.through);
    link.recv_until(|_, msg| sample(&msg).filter(|s| s.seq > u32::from(CAPACITY)));

    link.node.pause();
    let dump = link.dir.path().join("ram.bin");
    link.node.save_ram(&dump);
    let ram = std::fs::read(&dump).unwrap();
    let depth = qemu::stack_depth(&ram).expect("the image paints its stack (feature paint-stack)");
    assert!(
        depth > 0 && depth <= STACK_BUDGET,
        "stack high-water mark {depth} bytes"
    );
    println!("stack high-water mark: {depth} bytes");
}

#[test]
#[should_panic(expected = "apt-get install qemu-system-arm")]
fn missing_qemu_names_the_install_command() {
    let dir = tempfile::tempdir().unwrap();
    let _ = Node::start_with("qemu-system-arm-not-installed", dir.path());
}
