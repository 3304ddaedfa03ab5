//! The `line` and `scanner` drivers of the real `kouan` binary, on virtual
//! serial ports with a simulated instrument at the other end.

use std::path::Path;
use std::time::Duration;

use kouan_agent::record::{Kind, MeasuredValue, Payload};
use kouan_tests::agent::{self, Agent};
use kouan_tests::path_str;
use kouan_tests::pty::VirtualPort;

const WAIT: Duration = Duration::from_secs(30);

fn values(payload: &Payload) -> Vec<(String, MeasuredValue, Option<String>, Vec<String>)> {
    agent::reading(payload)
        .values
        .into_iter()
        .map(|m| (m.name, m.value, m.unit, m.flags))
        .collect()
}

fn num(
    name: &str,
    value: f64,
    unit: &str,
    flags: &[&str],
) -> (String, MeasuredValue, Option<String>, Vec<String>) {
    (
        name.into(),
        MeasuredValue::Number(value),
        Some(unit.into()),
        flags.iter().map(|f| (*f).to_owned()).collect(),
    )
}

/// The counter `name` from the agent's "instrument stopped" line of `id`.
fn stopped_counter(agent: &Agent, id: &str, name: &str) -> u64 {
    let log = agent.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("instrument stopped") && l.contains(&format!("instrument={id}")))
        .unwrap_or_else(|| panic!("no 'instrument stopped' line for {id}:\n{log}"));
    let start = line
        .find(&format!(" {name}="))
        .expect("counter in the line")
        + name.len()
        + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("counter value")
}

fn csv_instrument(id: &str, port: &Path) -> String {
    format!(
        r#"[[instrument]]
id = "{id}"
driver = "line"
port = "{port}"
hazard = "chemical"
[instrument.line]
profile = "csv"
skip = "^sample"
sample_column = 1
[[instrument.line.field]]
column = 2
name = "lead"
unit = "mg/kg"
[[instrument.line.field]]
column = 3
name = "cadmium"
unit = "mg/kg"
"#,
        port = path_str(port)
    )
}

#[test]
fn mt_sics_balance_every_reply_kind_is_stored_or_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut balance = VirtualPort::create(&dir.path().join("balance"));
    let mut agent = Agent::start(
        dir.path(),
        &format!(
            r#"[[instrument]]
id = "balance-1"
driver = "line"
port = "{}"
hazard = "physical"
[instrument.serial]
baud = 9600
[instrument.line]
profile = "mt-sics"
framing = "lf"
poll = "SI\r\n"
poll_ms = 100
"#,
            path_str(balance.path())
        ),
    );
    agent.wait_for_log("instrument attached", 1, WAIT);

    // The balance answers each SI poll with the next reply of the script.
    let replies = [
        "S S     100.00 g",
        "S D     100.07 g",
        "S I",
        "S +",
        "S -",
        "ES",
        "ET",
        "EL",
        "S S      -2.50 kg",
    ];
    for reply in replies {
        let poll = balance.receive_until(WAIT, |got| got.ends_with(b"\r\n"));
        assert_eq!(
            poll, b"SI\r\n",
            "the agent polls with the configured command"
        );
        balance.send(format!("{reply}\r\n").as_bytes());
    }
    let readings = agent.wait_for_records(Kind::Reading, "balance-1", 5, WAIT);
    agent.stop();

    let state = |s: &str| {
        let flags = vec![s.to_owned()];
        vec![(
            "mass".to_owned(),
            MeasuredValue::Text(s.into()),
            None,
            flags,
        )]
    };
    let got: Vec<_> = readings.iter().map(values).collect();
    assert_eq!(
        got,
        [
            vec![num("mass", 100.0, "g", &[])],
            vec![num("mass", 100.07, "g", &["unstable"])],
            state("overload"),
            state("underload"),
            vec![num("mass", -2.5, "kg", &[])],
        ]
    );
    let first = agent::reading(&readings[0]);
    assert_eq!(first.raw.as_ref(), b"S S     100.00 g");
    assert_eq!(first.hazard.as_deref(), Some("physical"));
    // ES, ET and EL are counted as errors; the busy reply is not.
    assert_eq!(stopped_counter(&agent, "balance-1", "errors"), 3);
    assert_eq!(stopped_counter(&agent, "balance-1", "readings"), 5);
}

#[test]
fn csv_instrument_columns_become_named_values_with_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut icp = VirtualPort::create(&dir.path().join("icp"));
    let mut agent = Agent::start(dir.path(), &csv_instrument("icp-1", icp.path()));
    agent.wait_for_log("instrument attached", 1, WAIT);

    icp.send(
        b"sample,lead,cadmium\r\nGY-0001,0.12,0.003\r\n\"GY-0002\",<0.01,0.004\r\nGY-0003,0.5\r\n",
    );
    let readings = agent.wait_for_records(Kind::Reading, "icp-1", 2, WAIT);
    agent.stop();

    assert_eq!(
        readings.len(),
        2,
        "the short line is an error, not a reading"
    );
    let first = agent::reading(&readings[0]);
    assert_eq!(first.sample.as_deref(), Some("GY-0001"));
    assert_eq!(first.hazard.as_deref(), Some("chemical"));
    assert_eq!(
        values(&readings[0]),
        [
            num("lead", 0.12, "mg/kg", &[]),
            num("cadmium", 0.003, "mg/kg", &[])
        ]
    );
    let second = values(&readings[1]);
    assert_eq!(second[0].1, MeasuredValue::Text("<0.01".into()));
    assert_eq!(
        agent::reading(&readings[1]).sample.as_deref(),
        Some("GY-0002")
    );
    assert_eq!(stopped_counter(&agent, "icp-1", "errors"), 1);
}

/// An agent with a serial scanner whose scans trace the readings of an
/// MT-SICS balance for ten minutes, both attached.
fn scanner_and_balance() -> (tempfile::TempDir, VirtualPort, VirtualPort, Agent) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let scanner = VirtualPort::create(&dir.path().join("scanner"));
    let balance = VirtualPort::create(&dir.path().join("balance"));
    let config = format!(
        r#"[[instrument]]
id = "scanner-1"
driver = "scanner"
port = "{scanner}"
[instrument.scanner]
framing = "cr"
instruments = ["balance-1"]
window_secs = 600

[[instrument]]
id = "balance-1"
driver = "line"
port = "{balance}"
[instrument.line]
profile = "mt-sics"
"#,
        scanner = path_str(scanner.path()),
        balance = path_str(balance.path()),
    );
    let agent = Agent::start(dir.path(), &config);
    agent.wait_for_log("instrument attached", 2, WAIT);
    (dir, scanner, balance, agent)
}

#[test]
fn serial_scanner_gs1_scans_are_stored_flagged_and_traced_to_readings() {
    let (_dir, mut scanner, mut balance, mut agent) = scanner_and_balance();

    // A reading before any scan is traced to nothing.
    balance.send(b"S S      10.00 g\r\n");
    agent.wait_for_records(Kind::Reading, "balance-1", 1, WAIT);
    let scans: [&[u8]; 5] = [
        // GS1-128 with its AIM identifier and a GS after the batch.
        b"]C10109521234543213172502001012A\x1d3103000123\r",
        // The same element string without identifier.
        b"0109521234543213172502001012A\x1d3103000123\r",
        // An EAN-13 with its identifier.
        b"]E05901234123457\r",
        // The GS after the batch lost: flagged, not guessed.
        b"]C1010952123454321310BATCH7\x0017250200\r",
        // A lab's own sample label.
        b"LAB-2026-0042\r",
    ];
    for scan in &scans[..4] {
        scanner.send(scan);
    }
    let stored = agent.wait_for_records(Kind::Scan, "scanner-1", 4, WAIT);
    let bodies: Vec<_> = stored.iter().map(agent::scan).collect();
    assert_eq!(bodies[0].symbology.as_deref(), Some("]C1"));
    assert_eq!(
        bodies[0].code,
        "(01)09521234543213(17)250200(10)12A(3103)000123"
    );
    assert_eq!(bodies[0].content, "gs1");
    assert_eq!(bodies[1].symbology, None);
    assert_eq!(bodies[1].code, bodies[0].code);
    assert_eq!(
        (bodies[2].content.as_str(), bodies[2].code.as_str()),
        ("ean", "(01)05901234123457")
    );
    assert!(
        bodies[3].problem.is_some(),
        "a lost separator is flagged: {:?}",
        bodies[3]
    );

    // A flagged scan does not become the trace: the balance reading after
    // it is traced to the EAN scan before it.
    balance.send(b"S S      20.00 g\r\n");
    let readings = agent.wait_for_records(Kind::Reading, "balance-1", 2, WAIT);
    let traced = agent::reading(&readings[1])
        .scan
        .expect("reading traced to a scan");
    assert_eq!(
        (traced.seq, traced.code.as_str()),
        (stored[2].seq, "(01)05901234123457")
    );
    assert_eq!(traced.instrument, "scanner-1");
    assert_eq!(agent::reading(&readings[0]).scan, None);

    // A plain lab label: its text is the sample of the next reading.
    scanner.send(scans[4]);
    let label = agent.wait_for_records(Kind::Scan, "scanner-1", 5, WAIT);
    balance.send(b"S S      30.00 g\r\n");
    let readings = agent.wait_for_records(Kind::Reading, "balance-1", 3, WAIT);
    agent.stop();
    let third = agent::reading(&readings[2]);
    assert_eq!(third.sample.as_deref(), Some("LAB-2026-0042"));
    assert_eq!(third.scan.expect("traced").seq, label[4].seq);
}

#[test]
fn a_scan_still_traces_readings_after_the_agent_is_killed_and_restarted() {
    let (dir, mut scanner, mut balance, mut agent) = scanner_and_balance();

    scanner.send(b"]C10109521234543213172502001012A\x1d3103000123\r");
    let scan = agent.wait_for_records(Kind::Scan, "scanner-1", 1, WAIT);
    // The trace is on disk once the scan's file names its seq; then the
    // power goes.
    let file = dir.path().join("kouan.db.trace.toml");
    let seq_line = format!("seq = {}", scan[0].seq);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains(&seq_line)) {
        assert!(
            start.elapsed() < WAIT,
            "no {seq_line} in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill();
    std::thread::sleep(Duration::from_millis(300));

    agent.restart();
    agent.wait_for_log("still trace readings within their windows", 1, WAIT);
    agent.wait_for_log("instrument attached", 4, WAIT);
    balance.send(b"S S      42.00 g\r\n");
    let readings = agent.wait_for_records(Kind::Reading, "balance-1", 1, WAIT);
    agent.stop();
    let reading = agent::reading(&readings[0]);
    let traced = reading
        .scan
        .expect("the reading after the restart is traced to the scan");
    assert_eq!(
        (traced.instrument.as_str(), traced.seq, traced.code.as_str()),
        (
            "scanner-1",
            scan[0].seq,
            "(01)09521234543213(17)250200(10)12A(3103)000123"
        )
    );
    assert!(
        traced.age_ms >= 300,
        "the age counts the time the agent was down: {traced:?}"
    );
    assert_eq!(reading.sample.as_deref(), Some("12A"));
}

#[test]
fn unplugged_port_reconnects_logs_once_each_way_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("icp");
    let mut icp = VirtualPort::create(&link);
    let mut agent = Agent::start(dir.path(), &csv_instrument("icp-1", &link));
    agent.wait_for_log("instrument attached", 1, WAIT);

    // Lines the agent has read, then the cable is pulled at once: whatever
    // the agent had read must be stored.
    let mut sent = 0;
    for n in 1..=20 {
        let line = format!("GY-{n:04},0.{n:02},0.001\r\n");
        icp.send(line.as_bytes());
        sent += line.len();
    }
    icp.send(b"GY-0021,0.2");
    sent += b"GY-0021,0.2".len();
    // The agent's own count of bytes read: an empty input queue on the
    // pty is not proof, since the kernel moves written bytes into it
    // asynchronously, and a hang-up discards what is still on the way.
    agent.wait_for_status(WAIT, |s| s["instruments"][0]["bytes"] == sent);
    icp.unplug();
    agent.wait_for_log("instrument detached", 1, WAIT);

    // Away for a while (several reopen attempts), then back.
    std::thread::sleep(Duration::from_secs(2));
    let mut icp = VirtualPort::create(&link);
    agent.wait_for_log("instrument attached", 2, WAIT);
    icp.send(b"GY-0022,0.22,0.001\r\n");
    let readings = agent.wait_for_records(Kind::Reading, "icp-1", 21, WAIT);
    agent.stop();

    let samples: Vec<String> = readings
        .iter()
        .map(|p| agent::reading(p).sample.expect("sample"))
        .collect();
    let mut expected: Vec<String> = (1..=20).map(|n| format!("GY-{n:04}")).collect();
    expected.push("GY-0022".into());
    assert_eq!(samples, expected);
    assert_eq!(agent.log_count("instrument detached"), 1);
    assert_eq!(agent.log_count("instrument attached"), 2);
    assert_eq!(
        agent.log_count("instrument not available"),
        0,
        "{}",
        agent.log()
    );
    assert_eq!(agent.log_count("unfinished line was cut off"), 1);
}

#[test]
fn ten_megabytes_of_garbage_are_counted_in_bounded_memory_then_lines_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::create(&dir.path().join("balance"));
    let mut agent = Agent::start(
        dir.path(),
        &format!(
            "[[instrument]]\nid = \"balance-1\"\ndriver = \"line\"\nport = \"{}\"\n\
             [instrument.line]\nprofile = \"mt-sics\"\n",
            path_str(port.path())
        ),
    );
    agent.wait_for_log("instrument attached", 1, WAIT);
    port.send(b"S S       1.00 g\r\n");
    agent.wait_for_records(Kind::Reading, "balance-1", 1, WAIT);
    let before = agent.peak_rss_kib();

    // xorshift64: reproducible noise, like a port at the wrong baud rate.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut garbage = vec![0u8; 10 << 20];
    for chunk in garbage.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    port.send(&garbage);
    port.send(b"\r\nS S       2.00 g\r\n");
    let readings = agent.wait_for_records(Kind::Reading, "balance-1", 2, Duration::from_secs(120));
    let after = agent.peak_rss_kib();
    agent.stop();

    assert_eq!(values(&readings[1]), [num("mass", 2.0, "g", &[])]);
    // Lines of random bytes: each is an error (not UTF-8, not MT-SICS, or
    // too long); about one in 128 bytes is an LF.
    let errors = stopped_counter(&agent, "balance-1", "errors");
    assert!(errors > 10_000, "errors counted: {errors}");
    assert!(stopped_counter(&agent, "balance-1", "bytes") >= garbage.len() as u64);
    // Bounded: buffers are a frame (1 KiB) and a read (4 KiB); allow the
    // allocator and the logging some slack, far below the 10 MiB sent.
    assert!(
        after - before < 4096,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // Logged once a minute, not once per error.
    assert!(
        agent.log_count("unusable line") <= 3,
        "{}",
        agent.log_count("unusable line")
    );
}

#[test]
fn keyboard_wedge_scanner_that_is_not_plugged_in_is_reported_once() {
    // No uinput here to type a scan (the read path itself is tested on
    // recorded events in agent/tests/wedge.rs): this checks the driver's
    // handling of a device that is not there.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("usb-Scanner-event-kbd");
    let mut agent = Agent::start(
        dir.path(),
        &format!(
            "[[instrument]]\nid = \"wedge-1\"\ndriver = \"scanner\"\ninput = \"{}\"\n\
             [instrument.scanner]\nlayout = \"de\"\n",
            path_str(&input)
        ),
    );
    agent.wait_for_log("instrument not available", 1, WAIT);
    // Several reopen attempts (250 ms, 500 ms, 1 s) pass without a log each.
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    assert_eq!(
        agent.log_count("instrument not available"),
        1,
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains(path_str(&input)),
        "the log names the device"
    );
    assert_eq!(stopped_counter(&agent, "wedge-1", "attached"), 0);
}
