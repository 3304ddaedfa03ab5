//! The `modbus` driver of the real `kouan` binary against an independent
//! peer: pymodbus 3.16 serving RTU slaves on a virtual serial port
//! (`tests/python/modbus_peer.py`), with a relay in between that can
//! inject garbage and split frames.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kouan_agent::record::{Kind, MeasuredValue, Payload};
use kouan_tests::agent::{self, Agent};
use kouan_tests::path_str;
use kouan_tests::pty::Bridge;

const WAIT: Duration = Duration::from_secs(30);
const INSTALL: &str = "python3 -m pip install 'pymodbus[serial]==3.16.*'";

/// pymodbus serving the slaves of `spec` (JSON, see the script) on a port.
struct Peer {
    child: Child,
}

impl Peer {
    fn start(port: &Path, spec: &str) -> Peer {
        let check = Command::new("python3")
            .args([
                "-c",
                "import pymodbus, serial; v = pymodbus.__version__; \
                 assert v.startswith('3.16.'), v",
            ])
            .output();
        match check {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "pymodbus 3.16 with pyserial is needed as the Modbus peer: {INSTALL}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("python3 is needed for the Modbus peer ({e}); then {INSTALL}"),
        }

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/modbus_peer.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port)
            .arg(spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts the Modbus peer");

        // Its stdout on a thread, so that a peer that never gets ready
        // fails the test instead of hanging it.
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(line) if line == "ready" => Peer { child },
            other => {
                let _ = child.kill();
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                panic!("the Modbus peer did not get ready ({other:?}):\n{stderr}");
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bus on a bridge, the peer on one end and the agent on the other.
struct Bus {
    agent: Agent,
    bridge: Bridge,
    _peer: Peer,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start(peer_spec: &str, modbus: &str) -> Bus {
        let dir = tempfile::tempdir().expect("temp dir");
        let bridge = Bridge::create(&dir.path().join("rs485"), &dir.path().join("peer"));
        let peer = Peer::start(bridge.peer_path(), peer_spec);
        let config = format!(
            r#"[[instrument]]
id = "bus-1"
driver = "modbus"
port = "{port}"
hazard = "environmental"
[instrument.serial]
baud = 19200
{modbus}"#,
            port = path_str(bridge.agent_path())
        );
        let agent = Agent::start(dir.path(), &config);
        Bus {
            agent,
            bridge,
            _peer: peer,
            _dir: dir,
        }
    }

    /// Readings of the bus with a value of `device`.
    fn readings_of(&self, device: &str) -> Vec<Payload> {
        self.agent
            .records()
            .into_iter()
            .filter(|p| p.kind == Kind::Reading && p.instrument == "bus-1")
            .filter(|p| !values(p, device).is_empty())
            .collect()
    }

    /// Waits until `count` readings of `device` are stored.
    fn wait_for_readings_of(&self, device: &str, count: usize) -> Vec<Payload> {
        let start = std::time::Instant::now();
        loop {
            let found = self.readings_of(device);
            if found.len() >= count {
                return found;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} of {count} readings of {device} within {WAIT:?}; the log:\n{}",
                found.len(),
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The values of `device` in a reading, by point name.
fn values(payload: &Payload, device: &str) -> HashMap<String, MeasuredValue> {
    let prefix = format!("{device}.");
    agent::reading(payload)
        .values
        .into_iter()
        .filter_map(|m| {
            m.name
                .strip_prefix(&prefix)
                .map(|point| (point.to_owned(), m.value))
        })
        .collect()
}

fn number(value: &MeasuredValue) -> f64 {
    match value {
        MeasuredValue::Number(n) => *n,
        MeasuredValue::Text(t) => panic!("a number, not {t:?}"),
    }
}

/// The `field=N` of the last log line that contains every one of `needles`.
fn log_field(agent: &Agent, needles: &[&str], field: &str) -> u64 {
    let log = agent.log();
    let line = log
        .lines()
        .rfind(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?}:\n{log}"));
    let start = line
        .find(&format!(" {field}="))
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        + field.len()
        + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number for {field} in {line}"))
}

/// A counter of `device` from the health lines the bus logs when it stops.
fn health_field(agent: &Agent, device: &str, field: &str) -> u64 {
    let device = format!("device={device} ");
    log_field(agent, &["modbus device health", &device], field)
}

/// The errors counter of the bus's "instrument stopped" line.
fn stopped_errors(agent: &Agent) -> u64 {
    log_field(agent, &["instrument stopped", "instrument=bus-1"], "errors")
}

const ORDERS: [&str; 4] = ["abcd", "cdab", "badc", "dcba"];

#[test]
fn every_data_type_and_word_order_reads_as_pymodbus_encodes_it() {
    // Slave 1: 16-bit types, and u32, i32, f32 in each of the four orders
    // at 10, 20, 30, 40. Slave 2: a gamma dose-rate meter (profile, cdab),
    // a coil, two discrete inputs and a scaled register.
    let mut values_1 = vec![
        r#"{"table": "holding", "address": 0, "type": "u16", "value": 65000}"#.to_owned(),
        r#"{"table": "holding", "address": 1, "type": "i16", "value": -1234}"#.to_owned(),
        r#"{"table": "holding", "address": 2, "type": "i16", "order": "badc", "value": -1234}"#
            .to_owned(),
    ];
    let mut points_1 = String::from(
        r#"
[[instrument.modbus.device]]
name = "meter"
address = 1
[[instrument.modbus.device.point]]
name = "u16"
reference = "40001"
type = "u16"
[[instrument.modbus.device.point]]
name = "i16"
register = 1
type = "i16"
[[instrument.modbus.device.point]]
name = "i16_badc"
register = 2
type = "i16"
order = "badc"
"#,
    );
    for (k, order) in ORDERS.iter().enumerate() {
        let base = 10 * (k + 1);
        for (offset, ty, value) in [
            (0, "u32", "3000000000"),
            (2, "i32", "-123456"),
            (4, "f32", "-273.15"),
        ] {
            values_1.push(format!(
                r#"{{"table": "holding", "address": {}, "type": "{ty}", "order": "{order}", "value": {value}}}"#,
                base + offset
            ));
            points_1.push_str(&format!(
                "[[instrument.modbus.device.point]]\nname = \"{ty}_{order}\"\nregister = {}\n\
                 type = \"{ty}\"\norder = \"{order}\"\n",
                base + offset
            ));
        }
    }
    let spec = format!(
        r#"{{"devices": [
            {{"address": 1, "values": [{}]}},
            {{"address": 2, "values": [
                {{"table": "input", "address": 0, "type": "f32", "order": "cdab", "value": 0.137}},
                {{"table": "coil", "address": 3, "type": "bool", "value": true}},
                {{"table": "discrete", "address": 4, "type": "bool", "value": true}},
                {{"table": "discrete", "address": 5, "type": "bool", "value": false}},
                {{"table": "holding", "address": 7, "type": "u16", "value": 2345}}]}}]}}"#,
        values_1.join(", ")
    );
    let modbus = format!(
        r#"[instrument.modbus]
response_timeout_ms = 1000
poll_ms = 200
{points_1}
[[instrument.modbus.device]]
name = "gamma"
address = 2
profile = "gamma-dose-rate"
order = "cdab"
[[instrument.modbus.device.point]]
name = "door"
table = "coil"
register = 3
[[instrument.modbus.device.point]]
name = "alarm"
reference = "10005"
[[instrument.modbus.device.point]]
name = "fault"
table = "discrete-input"
register = 5
[[instrument.modbus.device.point]]
name = "flow"
register = 7
scale = 0.1
offset = -100
unit = "L/min"
"#
    );
    let bus = Bus::start(&spec, &modbus);

    let meter = values(&bus.wait_for_readings_of("meter", 1)[0], "meter");
    let gamma_reading = &bus.wait_for_readings_of("gamma", 1)[0];
    let gamma = values(gamma_reading, "gamma");

    assert_eq!(number(&meter["u16"]), 65000.0);
    assert_eq!(number(&meter["i16"]), -1234.0);
    assert_eq!(number(&meter["i16_badc"]), -1234.0);
    for order in ORDERS {
        assert_eq!(number(&meter[&format!("u32_{order}")]), 3e9, "u32 {order}");
        assert_eq!(
            number(&meter[&format!("i32_{order}")]),
            -123_456.0,
            "i32 {order}"
        );
        assert_eq!(
            number(&meter[&format!("f32_{order}")]),
            f64::from(-273.15_f32),
            "f32 {order}"
        );
    }
    assert_eq!(meter.len(), 3 + 3 * ORDERS.len());

    assert_eq!(number(&gamma["dose_rate"]), f64::from(0.137_f32));
    assert_eq!(number(&gamma["door"]), 1.0);
    assert_eq!(number(&gamma["alarm"]), 1.0);
    assert_eq!(number(&gamma["fault"]), 0.0);
    assert!((number(&gamma["flow"]) - 134.5).abs() < 1e-9);
    let body = agent::reading(gamma_reading);
    let dose = body
        .values
        .iter()
        .find(|m| m.name == "gamma.dose_rate")
        .expect("dose rate");
    assert_eq!(dose.unit.as_deref(), Some("µSv/h"));
    assert_eq!(body.hazard.as_deref(), Some("environmental"));
    // raw holds the answer ADUs of the poll, one read per table: the coil
    // (FC 01, 6 bytes), the discrete inputs (FC 02, 6), the dose rate
    // (FC 04, 9) and the flow register (FC 03, 7).
    assert_eq!(body.raw.len(), 6 + 6 + 9 + 7);
    assert_eq!(&body.raw[..3], &[0x02, 0x01, 0x01]);
    assert_eq!(&body.raw[6..9], &[0x02, 0x02, 0x01]);
    assert_eq!(&body.raw[12..15], &[0x02, 0x04, 0x04]);
    assert_eq!(&body.raw[21..24], &[0x02, 0x03, 0x02]);
}

#[test]
fn illegal_address_is_a_typed_exception_logged_once_and_counted() {
    let spec = r#"{"devices": [{"address": 5, "values": [
        {"table": "holding", "address": 0, "type": "u16", "value": 42}]}]}"#;
    let modbus = r#"[instrument.modbus]
response_timeout_ms = 1000
poll_ms = 200
[[instrument.modbus.device]]
name = "pump"
address = 5
[[instrument.modbus.device.point]]
name = "speed"
register = 0
[[instrument.modbus.device.point]]
name = "missing"
register = 100
"#;
    let mut bus = Bus::start(spec, modbus);

    let readings = bus.wait_for_readings_of("pump", 5);
    for reading in &readings {
        let values = values(reading, "pump");
        assert_eq!(number(&values["speed"]), 42.0);
        assert!(!values.contains_key("missing"), "{values:?}");
    }
    bus.agent.wait_for_log("illegal data address (02)", 1, WAIT);
    bus.agent.stop();

    let log = bus.agent.log();
    let unreadable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("modbus point unreadable"))
        .collect();
    assert_eq!(unreadable.len(), 1, "logged once, not per poll:\n{log}");
    assert!(
        unreadable[0].contains("point=pump.missing"),
        "{}",
        unreadable[0]
    );
    assert!(
        unreadable[0]
            .contains("device 5 answered function 03 with exception illegal data address (02)"),
        "{}",
        unreadable[0]
    );
    // Counted on every poll: at least once per reading stored.
    let errors = health_field(&bus.agent, "pump", "errors");
    assert!(errors >= readings.len() as u64, "errors={errors}:\n{log}");
    assert!(stopped_errors(&bus.agent) >= errors);
    assert_eq!(health_field(&bus.agent, "pump", "timeouts"), 0);
}

#[test]
fn a_slave_that_never_answers_times_out_once_and_the_others_keep_being_polled() {
    let spec = r#"{"devices": [
        {"address": 1, "values": [{"table": "holding", "address": 0, "type": "i16", "value": -45}]},
        {"address": 2, "values": [{"table": "holding", "address": 0, "type": "u16", "value": 600},
                                  {"table": "holding", "address": 1, "type": "u16", "value": 0}]}]}"#;
    let modbus = r#"[instrument.modbus]
response_timeout_ms = 1000
retries = 1
poll_ms = 200
[[instrument.modbus.device]]
name = "freezer"
address = 1
[[instrument.modbus.device.point]]
name = "temperature"
register = 0
type = "i16"
scale = 0.1
unit = "°C"
[[instrument.modbus.device]]
name = "absent"
address = 3
response_timeout_ms = 100
profile = "temperature-humidity"
[[instrument.modbus.device]]
name = "co2"
address = 2
profile = "gas-concentration"
"#;
    let mut bus = Bus::start(spec, modbus);

    bus.agent
        .wait_for_log("modbus device not answering", 1, WAIT);
    let before = bus.readings_of("co2").len();
    // The devices on both sides of the silent one keep being read.
    let co2 = bus.wait_for_readings_of("co2", before + 5);
    let freezer = bus.wait_for_readings_of("freezer", before + 5);

    // The status view shows each device's health.
    let device = |s: &serde_json::Value, name: &str| {
        s["instruments"][0]["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == name).cloned())
            .unwrap_or_default()
    };
    let status = bus.agent.wait_for_status(WAIT, |s| {
        device(s, "absent")["answering"] == false && device(s, "co2")["answering"] == true
    });
    let absent = device(&status, "absent");
    assert_eq!(absent["address"], 3, "{status:#}");
    assert!(absent["last_success_ms"].is_null(), "{status:#}");
    assert!(absent["timeouts"].as_u64() >= Some(1), "{status:#}");
    assert!(device(&status, "co2")["last_success_ms"].as_i64().is_some());
    assert!(device(&status, "freezer")["answers"].as_u64() >= Some(5));
    let shown = agent::status_text(&bus.agent.status_socket());
    assert!(
        shown.contains("device absent (address 3): NOT ANSWERING, never answered"),
        "{shown}"
    );
    assert!(
        shown.contains("device co2 (address 2): answering, last answer"),
        "{shown}"
    );
    bus.agent.stop();

    let last = values(co2.last().expect("a reading"), "co2");
    assert_eq!(number(&last["concentration"]), 600.0);
    assert_eq!(number(&last["alarm"]), 0.0);
    let last = values(freezer.last().expect("a reading"), "freezer");
    assert!((number(&last["temperature"]) - -4.5).abs() < 1e-9);

    let log = bus.agent.log();
    let silent: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("modbus device not answering"))
        .collect();
    assert_eq!(silent.len(), 1, "reported once, not per poll:\n{log}");
    assert!(silent[0].contains("device=absent"), "{}", silent[0]);
    assert!(
        silent[0].contains("device 3 gave no valid answer within 100 ms"),
        "{}",
        silent[0]
    );
    assert!(bus.readings_of("absent").is_empty());
    // At least one try per poll of it; the others never timed out.
    assert!(health_field(&bus.agent, "absent", "timeouts") >= 5);
    assert_eq!(health_field(&bus.agent, "absent", "answers"), 0);
    assert_eq!(health_field(&bus.agent, "co2", "timeouts"), 0);
    assert!(health_field(&bus.agent, "co2", "answers") >= 5);
}

#[test]
fn garbage_and_split_frames_on_the_bus_are_survived_and_counted() {
    let spec = r#"{"devices": [{"address": 9, "values": [
        {"table": "input", "address": 0, "type": "f32", "order": "abcd", "value": 0.25}]}]}"#;
    let modbus = r#"[instrument.modbus]
response_timeout_ms = 1000
poll_ms = 200
[[instrument.modbus.device]]
name = "gamma"
address = 9
profile = "gamma-dose-rate"
"#;
    let mut bus = Bus::start(spec, modbus);
    let clean = bus.wait_for_readings_of("gamma", 2).len();

    // Noise before an answer, ending in what looks like the start of it
    // (address 9, FC 04) with a wrong byte count: the decoder must skip it
    // and resynchronise on the real answer behind it.
    bus.bridge
        .faults(|f| f.inject = vec![0x00, 0xFF, 0x55, 0xAA, 0x09, 0x04, 0x09]);
    bus.agent.wait_for_log("modbus: bytes discarded", 1, WAIT);
    let after_garbage = bus.wait_for_readings_of("gamma", clean + 2).len();

    // Answers delivered one byte at a time, with pauses between.
    bus.bridge.faults(|f| f.split = 1);
    let readings = bus.wait_for_readings_of("gamma", after_garbage + 3);
    bus.bridge.faults(|f| {
        f.split = 0;
        f.inject = b"\x09garbage".to_vec();
    });
    let readings_after = bus.wait_for_readings_of("gamma", readings.len() + 2);
    bus.agent.stop();

    for reading in &readings_after {
        let values = values(reading, "gamma");
        assert_eq!(number(&values["dose_rate"]), 0.25);
    }
    let log = bus.agent.log();
    assert_eq!(
        log.matches("instrument detached").count(),
        0,
        "the port stayed attached:\n{log}"
    );
    assert!(
        stopped_errors(&bus.agent) >= 2,
        "both injections counted:\n{log}"
    );
    // Neither the garbage nor the split answers made the device look silent.
    assert_eq!(
        log.matches("modbus device not answering").count(),
        0,
        "{log}"
    );
}

#[test]
fn configuration_writes_reach_the_devices_single_multiple_and_broadcast() {
    // Slave 1 gets FC 06, slave 2 FC 16, both a broadcast FC 06; each
    // point reads back what was written (the peer starts with zeros).
    let spec = r#"{"devices": [
        {"address": 1, "values": [
            {"table": "holding", "address": 20, "type": "u16", "value": 0},
            {"table": "holding", "address": 30, "type": "u16", "value": 0}]},
        {"address": 2, "values": [
            {"table": "holding", "address": 20, "type": "u16", "value": 0},
            {"table": "holding", "address": 21, "type": "u16", "value": 0},
            {"table": "holding", "address": 30, "type": "u16", "value": 0}]}]}"#;
    let modbus = r#"[instrument.modbus]
response_timeout_ms = 1000
poll_ms = 200
turnaround_ms = 50
[[instrument.modbus.device]]
name = "all"
address = 0
[[instrument.modbus.device.write]]
register = 30
values = [77]
[[instrument.modbus.device]]
name = "one"
address = 1
[[instrument.modbus.device.write]]
register = 20
values = [1234]
[[instrument.modbus.device.point]]
name = "set"
register = 20
[[instrument.modbus.device.point]]
name = "broadcast"
register = 30
[[instrument.modbus.device]]
name = "two"
address = 2
[[instrument.modbus.device.write]]
register = 20
values = [5, 6]
[[instrument.modbus.device.point]]
name = "set"
register = 20
type = "u32"
[[instrument.modbus.device.point]]
name = "broadcast"
register = 30
"#;
    let mut bus = Bus::start(spec, modbus);

    let one = values(&bus.wait_for_readings_of("one", 1)[0], "one");
    let two = values(&bus.wait_for_readings_of("two", 1)[0], "two");
    bus.agent.stop();

    assert_eq!(number(&one["set"]), 1234.0);
    assert_eq!(number(&one["broadcast"]), 77.0);
    assert_eq!(number(&two["set"]), f64::from(5u32 << 16 | 6));
    assert_eq!(number(&two["broadcast"]), 77.0);
    assert_eq!(
        bus.agent.log_count("modbus configuration written"),
        3,
        "{}",
        bus.agent.log()
    );
}
