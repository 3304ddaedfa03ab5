//! Analyzer protocols against code no one on the team wrote (acceptance
//! point 4 of issue 6):
//!
//! - messages encoded and framed by the Python `astm-2025` package's
//!   codec, over TCP (the agent as server and as client) and over a serial
//!   line (a pty [`Bridge`]); the script runs the E1381 session around
//!   them, since the package's own client does not run under Python 3;
//! - results sent with python-hl7's MLLP client, which must get `AA`.
//!
//! The scripts are in `tests/python/`. A missing Python package fails the
//! test with the install command.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kouan_agent::record::{Kind, MeasuredValue, ReadingBody};
use kouan_tests::agent::{Agent, reading};
use kouan_tests::pty::Bridge;

const WAIT: Duration = Duration::from_secs(30);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Fails, naming the install command, if a Python module is missing.
fn require_python(module: &str, package: &str) {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "the Python package {package} is missing: python3 -m pip install {package}"
    );
}

/// Runs a script of `tests/python/` to success; returns its stdout.
fn python(name: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(script(name))
        .args(args)
        .output()
        .expect("python3 runs (apt-get install python3)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name} {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn readings(agent: &Agent, instrument: &str, count: usize) -> Vec<ReadingBody> {
    agent
        .wait_for_records(Kind::Reading, instrument, count, WAIT)
        .iter()
        .map(reading)
        .collect()
}

/// The two results of `tests/python/astm_send.py`, exactly.
fn assert_astm_results(readings: &[ReadingBody], comment: &str) {
    assert_eq!(readings.len(), 2, "exactly the two results");
    let (glu, chol) = (&readings[0], &readings[1]);
    assert_eq!(glu.values[0].name, "GLU");
    assert_eq!(glu.values[0].value, MeasuredValue::Number(5.6));
    assert_eq!(glu.values[0].unit.as_deref(), Some("mmol/L"));
    assert_eq!(glu.values[0].flags, ["N", "status:F"]);
    assert_eq!(glu.values[0].observed.as_deref(), Some("20261203101500"));
    assert_eq!(glu.sample.as_deref(), Some("SID-900"));
    assert_eq!(glu.order.as_deref(), Some("INS-900"));
    assert_eq!(glu.notes, [comment]);
    assert_eq!(chol.values[0].name, "CHOL");
    assert_eq!(chol.values[0].value, MeasuredValue::Number(7.9));
    assert_eq!(chol.values[0].flags, ["H", "status:F"]);
    let long_note = ["instrument note"; 12].join(" ");
    assert_eq!(chol.notes, [long_note]);
}

fn tcp_agent(dir: &Path, id: &str, port: u16, driver: &str, options: &str) -> Agent {
    let agent = Agent::start(
        dir,
        &format!(
            "[[instrument]]\nid = \"{id}\"\ndriver = \"{driver}\"\n\
             listen = \"127.0.0.1:{port}\"\n\n[instrument.{driver}]\n{options}\n"
        ),
    );
    agent.wait_for_log("listening for the instrument", 1, WAIT);
    agent
}

#[test]
fn astm_2025_frames_over_tcp_in_etb_frames() {
    require_python("astm", "astm-2025");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = tcp_agent(dir.path(), "chem-tcp", port, "astm", "");

    // One message for the whole session, split into 64-byte frames.
    let port_text = port.to_string();
    python(
        "astm_send.py",
        &["tcp", &port_text, "--bulk", "--chunk-size", "64"],
    );

    assert_astm_results(&readings(&agent, "chem-tcp", 2), "fasting sample");
}

#[test]
fn astm_2025_frames_over_tcp_gbk_record_per_frame() {
    require_python("astm", "astm-2025");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = tcp_agent(dir.path(), "chem-gbk", port, "astm", "encoding = \"gbk\"");

    // Each record its own frame, the comment in GBK: the checksums are
    // the package's, over GBK bytes.
    let port_text = port.to_string();
    python(
        "astm_send.py",
        &[
            "tcp",
            &port_text,
            "--encoding",
            "gbk",
            "--comment",
            "样本溶血 空腹",
        ],
    );

    assert_astm_results(&readings(&agent, "chem-gbk", 2), "样本溶血 空腹");
}

#[test]
fn astm_2025_frames_to_an_agent_that_connects() {
    require_python("astm", "astm-2025");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The analyzer is the server: it listens first, the agent connects.
    let mut analyzer = Command::new("python3")
        .arg(script("astm_send.py"))
        .args(["tcp-listen", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut listening = String::new();
    let stdout = analyzer.stdout.as_mut().expect("piped stdout");
    BufReader::new(stdout)
        .read_line(&mut listening)
        .expect("the script says it listens");
    assert_eq!(listening.trim(), "listening");

    let agent = Agent::start(
        dir.path(),
        &format!(
            "[[instrument]]\nid = \"chem-client\"\ndriver = \"astm\"\n\
             connect = \"127.0.0.1:{port}\"\n"
        ),
    );
    let output = analyzer.wait_with_output().expect("the script ends");
    assert!(
        output.status.success(),
        "astm_send.py tcp-listen failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_astm_results(&readings(&agent, "chem-client", 2), "fasting sample");
}

#[test]
fn astm_2025_frames_over_serial() {
    require_python("astm", "astm-2025");
    require_python("serial", "pyserial");
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::create(
        &dir.path().join("agent-end"),
        &dir.path().join("analyzer-end"),
    );
    let agent = Agent::start(
        dir.path(),
        &format!(
            "[[instrument]]\nid = \"chem-serial\"\ndriver = \"astm\"\nport = \"{}\"\n",
            bridge.agent_path().display()
        ),
    );
    agent.wait_for_log("instrument attached", 1, WAIT);
    // Deliver the analyzer's bytes in small pieces: a read is never a frame.
    bridge.faults(|faults| faults.split = 7);

    let peer = bridge.peer_path().to_str().expect("UTF-8 path").to_owned();
    python("astm_send.py", &["serial", &peer, "--chunk-size", "40"]);

    assert_astm_results(&readings(&agent, "chem-serial", 2), "fasting sample");
}

#[test]
fn python_hl7_mllp_client_gets_aa_and_results_are_stored() {
    require_python("hl7", "hl7");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = tcp_agent(dir.path(), "bs-480", port, "hl7", "");

    let replies = python("hl7_send.py", &[&port.to_string()]);
    let replies: Vec<&str> = replies.lines().collect();
    assert_eq!(
        replies,
        ["AA 1001", "AA 1001", "AA 1002", "AE 1003"],
        "results get AA (the resend too), a message that is not a result AE"
    );

    let readings = readings(&agent, "bs-480", 3);
    assert_eq!(readings.len(), 3, "the resent message was not stored twice");
    let names: Vec<&str> = readings.iter().map(|r| r.values[0].name.as_str()).collect();
    assert_eq!(
        names,
        ["GLU^Glucose", "ALT^Alanine aminotransferase", "GLU^Glucose"]
    );

    let glu = &readings[0];
    assert_eq!(glu.values[0].value, MeasuredValue::Number(5.6));
    assert_eq!(glu.values[0].unit.as_deref(), Some("mmol/L"));
    assert_eq!(glu.values[0].flags, ["N", "status:F"]);
    assert_eq!(glu.values[0].observed.as_deref(), Some("20261203101000"));
    assert_eq!(glu.sample.as_deref(), Some("BC-7781"));
    assert_eq!(glu.order.as_deref(), Some("88"));
    assert_eq!(glu.notes, ["fasting sample"]);
    assert!(glu.raw.starts_with(b"OBX|1|NM|GLU^Glucose||5.6|"));

    // Mindray's MSH-16 = 2: a quality-control result.
    let qc = &readings[2];
    assert_eq!(qc.values[0].flags, ["N", "status:F", "qc"]);
    assert_eq!(qc.sample.as_deref(), Some("QC-L1"));
    agent.wait_for_log("already stored", 1, WAIT);
}

/// A store that refuses: the analyzer hears `AE` with the reason, and the
/// same message sent again (once there is room it would be stored) is
/// refused again, never acknowledged `AA` while not durable.
#[test]
fn hl7_result_the_store_refuses_gets_ae() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent = Agent::start_with_store(
        dir.path(),
        "max_bytes = 1\nfull_policy = \"backpressure\"",
        &format!(
            "[[instrument]]\nid = \"bs-full\"\ndriver = \"hl7\"\n\
             listen = \"127.0.0.1:{port}\"\n"
        ),
    );
    agent.wait_for_log("listening for the instrument", 1, WAIT);

    let message = b"\x0bMSH|^~\\&|BS-480|Lab1|||20261203101500||ORU^R01|77|P|2.3.1\r\
        OBR|1|BC-1|1\rOBX|1|NM|GLU||5.6|mmol/L||N|||F\r\x1c\r";
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the agent listens");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    for _ in 0..2 {
        stream.write_all(message).unwrap();
        let reply = read_block(&mut stream);
        assert!(
            reply.contains("\rMSA|AE|77|not stored, send again later: store is full"),
            "{reply:?}"
        );
    }
    let readings = agent
        .records()
        .into_iter()
        .filter(|p| p.kind == Kind::Reading)
        .count();
    assert_eq!(readings, 0);
}

/// An analyzer that did not hear `AA` before the agent was killed sends the
/// message again to the restarted agent: it gets `AA` and the results are
/// stored once.
#[test]
fn hl7_message_resent_after_the_agent_is_killed_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut agent = tcp_agent(dir.path(), "bs-restart", port, "hl7", "");
    let message = b"\x0bMSH|^~\\&|BS-480|Lab1|||20261203101500||ORU^R01|78|P|2.3.1\r\
        OBR|1|BC-2|1\rOBX|1|NM|GLU||5.6|mmol/L||N|||F\rOBX|2|NM|ALT||31|U/L||N|||F\r\x1c\r";
    let send = |agent: &Agent| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the agent listens");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(message).unwrap();
        let reply = read_block(&mut stream);
        assert!(reply.contains("\rMSA|AA|78"), "{reply:?}\n{}", agent.log());
    };
    send(&agent);
    assert_eq!(readings(&agent, "bs-restart", 2).len(), 2);
    agent.kill();

    agent.restart();
    agent.wait_for_log(
        "remembering the messages stored before the restart",
        1,
        WAIT,
    );
    agent.wait_for_log("listening for the instrument", 2, WAIT);
    send(&agent);
    agent.wait_for_log("already stored", 1, WAIT);
    agent.stop();
    let stored = agent
        .records()
        .into_iter()
        .filter(|p| p.kind == Kind::Reading)
        .count();
    assert_eq!(stored, 2, "the resend stored nothing");
}

/// One MLLP block from `stream`, without its framing bytes.
fn read_block(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\x1c\r") {
        stream
            .read_exact(&mut byte)
            .expect("a reply before the timeout");
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(reply.trim_ascii_end())
        .trim_matches(['\x0b', '\x1c'])
        .to_owned()
}
