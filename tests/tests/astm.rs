//! The `astm` driver over a virtual serial port: the test is the analyzer,
//! scripting E1381 sessions byte by byte on the pty master and reading the
//! agent's replies; the store must then hold exactly the expected readings.
//!
//! Acceptance point 3 of issue 6. Frames are built here with a checksum
//! written for the test, not the agent's.

use std::path::Path;
use std::time::Duration;

use kouan_agent::record::{Kind, MeasuredValue, ReadingBody};
use kouan_tests::agent::{Agent, reading};
use kouan_tests::pty::VirtualPort;

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const EOT: u8 = 0x04;
const ENQ: u8 = 0x05;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;
const ETB: u8 = 0x17;

/// Long enough for a slow machine; a reply that takes longer is a hang.
const REPLY_WAIT: Duration = Duration::from_secs(20);
const STORE_WAIT: Duration = Duration::from_secs(30);

const INSTRUMENT: &str = "chem-1";

/// The records of one message, each ended by CR.
const RECORDS: [&str; 7] = [
    "H|\\^&|||ChemAnalyzer^2.1|||||||P|1\r",
    "P|1|PAT-7\r",
    "O|1|SID-100|RACK3-5|^^^GLU\\^^^CHOL|R\r",
    "R|1|^^^GLU|5.6|mmol/L|3.9-6.1|N||F||||20261203101500\r",
    "C|1|I|fasting sample|G\r",
    "R|2|^^^CHOL|7.9|mmol/L|<5.2|H||F||||20261203101530\r",
    "L|1|N\r",
];

/// A frame: STX, number, text, ETB or ETX, checksum, CR LF.
fn frame(number: u8, text: &[u8], end: u8) -> Vec<u8> {
    let mut body = vec![b'0' + number % 8];
    body.extend_from_slice(text);
    body.push(end);
    let sum = body.iter().map(|&b| u32::from(b)).sum::<u32>() % 256;
    let mut wire = vec![STX];
    wire.extend_from_slice(&body);
    wire.extend_from_slice(format!("{sum:02X}\r\n").as_bytes());
    wire
}

/// The message as an analyzer frames it: one record a frame, the fourth
/// record split over two frames by ETB. Frame numbers start at 1.
fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut number = 1;
    for (i, record) in RECORDS.iter().enumerate() {
        if i == 3 {
            let (head, tail) = record.as_bytes().split_at(17);
            out.push(frame(number, head, ETB));
            out.push(frame(number + 1, tail, ETX));
            number += 2;
        } else {
            out.push(frame(number, record.as_bytes(), ETX));
            number += 1;
        }
    }
    out
}

/// The analyzer's end of the port.
struct Analyzer {
    port: VirtualPort,
}

impl Analyzer {
    /// Sends `bytes` and returns the agent's one-byte reply.
    fn send(&mut self, bytes: &[u8]) -> u8 {
        self.port.send(bytes);
        let reply = self.port.receive_until(REPLY_WAIT, |got| !got.is_empty());
        match reply.as_slice() {
            [byte] => *byte,
            other => panic!("expected one reply byte to {bytes:?}, got {other:?}"),
        }
    }

    /// Sends `bytes`, which need no reply, and waits until the agent read them.
    fn send_quiet(&mut self, bytes: &[u8]) {
        self.port.send(bytes);
        self.port.wait_drained(REPLY_WAIT);
    }

    /// A whole session: ENQ, every frame acknowledged, EOT.
    fn session(&mut self, frames: &[Vec<u8>]) {
        assert_eq!(self.send(&[ENQ]), ACK, "ENQ");
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(self.send(frame), ACK, "frame {}", i + 1);
        }
        self.send_quiet(&[EOT]);
    }
}

fn start(dir: &Path, store: &str, astm_options: &str) -> (Agent, Analyzer) {
    let link = dir.join("analyzer");
    let port = VirtualPort::create(&link);
    let instrument = format!(
        "[[instrument]]\nid = \"{INSTRUMENT}\"\ndriver = \"astm\"\nport = \"{}\"\n\
         hazard = \"chemical\"\n\n[instrument.astm]\n{astm_options}\n",
        link.display()
    );
    let agent = Agent::start_with_store(dir, store, &instrument);
    agent.wait_for_log("instrument attached", 1, STORE_WAIT);
    (agent, Analyzer { port })
}

fn readings(agent: &Agent) -> Vec<ReadingBody> {
    agent
        .records()
        .iter()
        .filter(|p| p.kind == Kind::Reading && p.instrument == INSTRUMENT)
        .map(reading)
        .collect()
}

/// The two readings of [`RECORDS`], and nothing else.
fn assert_exactly_the_message(agent: &Agent) {
    let readings = readings(agent);
    let names: Vec<&str> = readings.iter().map(|r| r.values[0].name.as_str()).collect();
    assert_eq!(
        names,
        ["GLU", "CHOL"],
        "the store holds exactly the message's results"
    );
    assert_eq!(readings[0].values[0].value, MeasuredValue::Number(5.6));
    assert_eq!(readings[1].values[0].value, MeasuredValue::Number(7.9));
}

#[test]
fn results_are_stored_before_the_last_frame_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..frames.len() - 1] {
        assert_eq!(analyzer.send(frame), ACK);
        assert!(
            readings(&agent).is_empty(),
            "nothing is stored before the message ends"
        );
    }
    assert_eq!(analyzer.send(frames.last().unwrap()), ACK);
    // The ACK came: the readings must be durable already, without waiting.
    let stored = readings(&agent);
    assert_eq!(
        stored.len(),
        2,
        "the ACK of the last frame came before the readings were durable"
    );
    analyzer.send_quiet(&[EOT]);

    let glu = &stored[0];
    let value = &glu.values[0];
    assert_eq!(value.unit.as_deref(), Some("mmol/L"));
    assert_eq!(value.flags, ["N", "status:F"]);
    assert_eq!(value.observed.as_deref(), Some("20261203101500"));
    assert_eq!(glu.sample.as_deref(), Some("SID-100"));
    assert_eq!(glu.order.as_deref(), Some("RACK3-5"));
    assert_eq!(glu.hazard.as_deref(), Some("chemical"));
    assert_eq!(glu.notes, ["fasting sample"]);
    let raw = format!("{}{}", RECORDS[3], RECORDS[4].trim_end());
    assert_eq!(glu.raw.as_slice(), raw.as_bytes());
    assert_eq!(stored[1].values[0].flags, ["H", "status:F"]);
    assert_exactly_the_message(&agent);
}

#[test]
fn nak_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..3] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    // Frame 5 where 4 is due: NAK, and the analyzer retries with frame 4.
    assert_eq!(analyzer.send(&frames[4]), NAK);
    assert_eq!(analyzer.send(&frames[3]), ACK);
    // Our ACK was lost: the analyzer sends frame 4 again, which is
    // acknowledged without taking its text twice.
    assert_eq!(analyzer.send(&frames[3]), ACK);
    for frame in &frames[4..] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    analyzer.send_quiet(&[EOT]);

    assert_exactly_the_message(&agent);
    let glu = &readings(&agent)[0];
    assert_eq!(
        glu.raw.as_slice(),
        format!("{}{}", RECORDS[3], RECORDS[4].trim_end()).as_bytes(),
        "the resent frame's text was taken once"
    );
}

#[test]
fn bad_checksum_gets_nak_and_the_resend_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for (i, frame) in frames.iter().enumerate() {
        if i == 3 || i == frames.len() - 1 {
            // A bit flipped on the line in the value, or in the checksum.
            let mut bad = frame.clone();
            let at = if i == 3 { 12 } else { bad.len() - 3 };
            bad[at] ^= 0x01;
            assert_eq!(analyzer.send(&bad), NAK, "corrupted frame {}", i + 1);
        }
        assert_eq!(analyzer.send(frame), ACK, "frame {}", i + 1);
    }
    analyzer.send_quiet(&[EOT]);

    assert_exactly_the_message(&agent);
    agent.wait_for_log("bad or missing checksum", 1, STORE_WAIT);
}

#[test]
fn receiver_timeout_mid_message_drops_it_until_it_is_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "receive_timeout_secs = 1");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..4] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    // The analyzer stalls; the agent gives the session up.
    agent.wait_for_log("session timed out", 1, STORE_WAIT);
    assert!(
        readings(&agent).is_empty(),
        "a message cut short is not stored"
    );

    // Its last frame was never acknowledged: the analyzer sends it all again.
    analyzer.session(&frames);
    assert_exactly_the_message(&agent);
}

#[test]
fn enq_contention_the_analyzer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    // After a contention the analyzer, which has priority, sends ENQ
    // again; the agent never bids for the line and answers each.
    assert_eq!(analyzer.send(&[ENQ]), ACK);
    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..3] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    // A new ENQ mid-message restarts the session; the message starts over.
    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames {
        assert_eq!(analyzer.send(frame), ACK);
    }
    analyzer.send_quiet(&[EOT]);

    assert_exactly_the_message(&agent);
}

#[test]
fn eot_interrupt_drops_the_message_until_it_is_resent() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..5] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    analyzer.send_quiet(&[EOT]);
    agent.wait_for_log("cut off before its last frame", 1, STORE_WAIT);
    assert!(
        readings(&agent).is_empty(),
        "an interrupted message is not stored"
    );

    analyzer.session(&frames);
    assert_exactly_the_message(&agent);
}

#[test]
fn garbage_between_sessions_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut analyzer) = start(dir.path(), "", "");
    let frames = frames();

    // Line noise, half a frame and a lone ETX before anything else.
    analyzer.send_quiet(b"\x00\xff\x7fnoise\r\n\x031R|9|^^^X|1\x03");
    analyzer.session(&frames);
    // A keep-alive (ENQ, EOT), more noise, then a second message.
    assert_eq!(analyzer.send(&[ENQ]), ACK);
    analyzer.send_quiet(&[EOT]);
    analyzer.send_quiet(b"\x06\x15garbage\x17\x02");
    let second: Vec<Vec<u8>> = [
        "H|\\^&\r",
        "O|1|SID-200\r",
        "R|1|^^^UREA|6.2|mmol/L\r",
        "L|1|N\r",
    ]
    .iter()
    .enumerate()
    .map(|(i, record)| frame(i as u8 + 1, record.as_bytes(), ETX))
    .collect();
    analyzer.session(&second);

    let readings = readings(&agent);
    let names: Vec<&str> = readings.iter().map(|r| r.values[0].name.as_str()).collect();
    assert_eq!(names, ["GLU", "CHOL", "UREA"]);
    assert_eq!(readings[2].sample.as_deref(), Some("SID-200"));
    agent.wait_for_log("bytes outside any frame ignored", 1, STORE_WAIT);
}

#[test]
fn a_store_that_refuses_gets_nak_on_the_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    // Every reading is over the cap: the store refuses them all.
    let store = "max_bytes = 1\nfull_policy = \"backpressure\"";
    let (agent, mut analyzer) = start(dir.path(), store, "");
    let frames = frames();

    assert_eq!(analyzer.send(&[ENQ]), ACK);
    for frame in &frames[..frames.len() - 1] {
        assert_eq!(analyzer.send(frame), ACK);
    }
    // The frame that completes the message: NAK, and NAK again on each
    // retry, since the results are not durable.
    for _ in 0..3 {
        assert_eq!(analyzer.send(frames.last().unwrap()), NAK);
    }
    analyzer.send_quiet(&[EOT]);

    assert!(readings(&agent).is_empty());
    agent.wait_for_log("store refused a message", 1, STORE_WAIT);
}
