//! `kouan status` and `kouan tail` against a running `kouan run`, with a
//! balance on a virtual serial port.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kouan_tests::agent::Agent;
use kouan_tests::pty::VirtualPort;
use kouan_tests::{kouan, path_str, text};

const WAIT: Duration = Duration::from_secs(30);

fn balance(port: &Path) -> String {
    format!(
        "[[instrument]]\nid = \"balance-1\"\ndriver = \"line\"\nport = \"{}\"\n\
         [instrument.line]\nprofile = \"mt-sics\"\n",
        path_str(port)
    )
}

fn wait_for_status(socket: &Path, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    kouan_tests::agent::wait_for_status(socket, WAIT, done)
}

fn instrument(status: &serde_json::Value) -> &serde_json::Value {
    &status["instruments"][0]
}

#[test]
fn status_reports_instruments_backlog_and_alerts_and_follows_a_detach() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::create(&dir.path().join("balance"));
    // The socket named in the config, not the default beside the store.
    let socket = dir.path().join("run").join("agent.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let extra = format!("\n[status]\nsocket = \"{}\"\n", path_str(&socket));
    let mut agent = Agent::start(dir.path(), &(balance(port.path()) + &extra));

    wait_for_status(&socket, |s| instrument(s)["attached"] == true);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o660,
        "the socket is for the agent's group only"
    );
    for grams in ["100.00", "100.50", "101.00"] {
        port.send(format!("S S     {grams} g\r\n").as_bytes());
    }
    let status = wait_for_status(&socket, |s| instrument(s)["readings"] == 3);

    let balance = instrument(&status);
    assert_eq!(balance["id"], "balance-1");
    assert_eq!(balance["driver"], "line");
    assert_eq!(balance["errors"], 0);
    assert_eq!(balance["attach_count"], 1);
    assert!(balance["last_seq"].as_u64().is_some(), "{status:#}");
    assert!(balance["last_reading_ms"].as_i64().is_some(), "{status:#}");
    assert_eq!(status["node"], "gy-air-01");
    assert!(
        status["uplink"].is_null(),
        "no [uplink] configured: {status:#}"
    );
    // Nothing confirms records without an uplink: the genesis record and
    // the three readings are all held.
    let backlog = &status["backlog"];
    assert!(backlog["records"].as_u64().unwrap() >= 4, "{status:#}");
    assert!(backlog["bytes"].as_u64().unwrap() > 0, "{status:#}");
    assert!(
        backlog["oldest_captured_ms"].as_i64().is_some(),
        "{status:#}"
    );
    assert_eq!(status["alerts"], serde_json::json!([]));

    // The same, for people.
    let out = kouan()
        .args(["status", "--socket", path_str(&socket)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("gy-air-01 at guiyang-airport"), "{shown}");
    assert!(shown.contains("uplink      none configured"), "{shown}");
    assert!(shown.contains("balance-1"), "{shown}");
    assert!(shown.contains("attached"), "{shown}");
    assert!(shown.contains("alerts      none"), "{shown}");

    // Pulling the cable shows in the status.
    port.unplug();
    let status = wait_for_status(&socket, |s| instrument(s)["attached"] == false);
    assert_eq!(instrument(&status)["detach_count"], 1);

    // A stopped agent removes its socket, and status says it is not running.
    agent.stop();
    assert!(!socket.exists(), "the socket outlived the agent");
    let out = kouan()
        .args(["status", "--socket", path_str(&socket)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is the agent running?"),
        "{}",
        text(&out.stderr)
    );
}

/// A `kouan tail` process whose stdout lines arrive on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut child = kouan()
            .arg("tail")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kouan tail starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tail { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("kouan tail printed a line")
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tail_streams_readings_as_they_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::create(&dir.path().join("balance"));
    let mut agent = Agent::start(dir.path(), &balance(port.path()));
    // The default socket: beside the store (kouan.db).
    let socket = dir.path().join("kouan.sock");
    wait_for_status(&socket, |s| instrument(s)["attached"] == true);

    let json = Tail::start(&["--json", "--socket", path_str(&socket)]);
    let header: serde_json::Value = serde_json::from_str(&json.next()).unwrap();
    assert_eq!(header["tail"], true, "{header}");
    // Found through the config, as a technician would call it.
    let config = dir.path().join("kouan.toml");
    let people = Tail::start(&["--config", path_str(&config)]);
    assert!(people.next().starts_with("records as "), "the human header");

    port.send(b"S S     100.25 g\r\nS D     100.30 g\r\n");
    let mut readings = Vec::new();
    while readings.len() < 2 {
        let line: serde_json::Value = serde_json::from_str(&json.next()).unwrap();
        let record = &line["record"];
        if record["kind"] == "reading" {
            readings.push(record.clone());
        }
    }
    assert_eq!(readings[0]["instrument"], "balance-1");
    assert_eq!(readings[0]["values"][0]["name"], "mass");
    assert_eq!(readings[0]["values"][0]["value"], "100.25");
    assert_eq!(readings[0]["values"][0]["unit"], "g");
    assert_eq!(readings[1]["values"][0]["flags"][0], "unstable");
    let first = readings[0]["seq"].as_u64().unwrap();
    assert_eq!(readings[1]["seq"].as_u64().unwrap(), first + 1);

    let mut shown = Vec::new();
    while shown.len() < 2 {
        let line = people.next();
        if line.contains(" reading ") {
            shown.push(line);
        }
    }
    assert!(shown[0].contains(&format!("seq {first}")), "{shown:?}");
    assert!(shown[0].contains("balance-1"), "{shown:?}");
    assert!(shown[0].contains("mass 100.25 g"), "{shown:?}");
    assert!(shown[1].contains("[unstable]"), "{shown:?}");

    // The agent stopping ends the stream; tail exits on its own.
    agent.stop();
    let mut people = people;
    let start = Instant::now();
    loop {
        if let Some(status) = people.child.try_wait().unwrap() {
            assert!(status.success(), "kouan tail exited with {status}");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "kouan tail did not end with the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
