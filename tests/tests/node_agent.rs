//! The agent's `node` driver end to end: the lm3s6965evb image under
//! qemu-system-arm, its UART on a pty, and the real `kouan` binary reading
//! it as `driver = "node"`, storing signed records.
//!
//! Alarms reach the node two ways: an alert raised by rapid response (a
//! `[[limit]]` every temperature crosses), through the binary; and the
//! driver's command entry point ([`kouan_agent::node::handle`]), with the
//! driver run in this process, which also switches the output off.
//!
//! With a platform (mosquitto and `kouan receive`), the agent forwards
//! what it stores, and the test reads what the receiver accepted instead:
//! the drops of a pulled link reach it as a record and a `node-gap` line.
//!
//! Waits have generous deadlines that only keep a broken node or agent from
//! hanging the run; no assertion depends on how fast anything happens.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kouan_agent::keys::PublicKey;
use kouan_agent::node::{NodeFields, watermark};
use kouan_agent::record::{Kind, MeasuredValue, Payload};
use kouan_firmware::station::{ALARM, COUNT_RATE, DOSE_RATE, GAS, HUMIDITY, TEMPERATURE};
use kouan_protocol::{AgentMsg, Command, Decoder, NodeMsg, Outcome, frame};
use kouan_tests::agent::{Agent, reading};
use kouan_tests::broker::{Broker, BrokerOptions};
use kouan_tests::keygen;
use kouan_tests::pki::AGENT;
use kouan_tests::qemu::Node;

/// Longest wait for one expected state: far beyond the node's 60 s status
/// period and the agent's reconnect backoff.
const WAIT: Duration = Duration::from_secs(120);

/// The image's sample buffer (firmware/boards/lm3s6965evb/src/main.rs).
const CAPACITY: u32 = 128;

const INSTRUMENT: &str = "climate";

/// The node id the image says hello with.
const NODE_ID: &str = "qemu-node";

/// An emulated node with an agent reading it, and maybe a platform.
struct Setup {
    // Declared first, so the agent closes the pty before QEMU goes.
    agent: Agent,
    node: Node,
    platform: Option<Platform>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Starts the node halted, the agent on its pty, and lets the node run
    /// once the agent has the port open.
    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(dir.path());
        let agent = Agent::start(dir.path(), &instrument_toml(node.pty()));
        Setup::run(dir, node, agent, None)
    }

    /// [`Setup::start`] with the agent's uplink to a platform, which
    /// knows the agent's key and listens before the agent starts.
    fn start_with_platform() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p);
        for sub in ["agent", "broker", "platform/agents"] {
            std::fs::create_dir_all(path(sub)).unwrap();
        }
        let broker = Broker::start(&path("broker"), &BrokerOptions::default());
        let (platform_key, platform_pub) = keygen(&path("platform"), "ed25519");
        let node = Node::start(&path("agent"));
        let uplink = |key: &Path, store: &Path| {
            kouan_tests::agent_config(&broker, broker.port(), key, store, &platform_pub, "", "")
        };
        let mut agent = Agent::configure(&path("agent"), uplink, &instrument_toml(node.pty()));
        let registered = path("platform/agents").join(format!("{AGENT}.pub"));
        std::fs::copy(agent.public_key(), registered).unwrap();
        let platform = Platform::start(&path("platform"), broker, &platform_key);
        agent.restart();
        Setup::run(dir, node, agent, Some(platform))
    }

    fn run(
        dir: tempfile::TempDir,
        mut node: Node,
        agent: Agent,
        platform: Option<Platform>,
    ) -> Setup {
        agent.wait_for_log("instrument attached", 1, WAIT);
        node.resume();
        Setup {
            agent,
            node,
            platform,
            _dir: dir,
        }
    }

    /// The node's samples and drop records in chain order: those in the
    /// agent's store, or with a platform those the receiver accepted (the
    /// agent deletes what the platform acknowledged).
    fn node_records(&self) -> Vec<(Payload, NodeFields)> {
        match &self.platform {
            Some(platform) => node_records(platform.received(self.agent.public_key())),
            None => node_records(self.agent.records()),
        }
    }

    /// The node's watermark the agent saved: every sample of `boot`
    /// through it is in the agent's store, and no ack went beyond it.
    fn saved_watermark(&self, boot: u32) -> u32 {
        let path = watermark::path(&self.agent.store(), INSTRUMENT);
        let marks = watermark::load(&path)
            .unwrap()
            .expect("node watermarks saved");
        let mark = marks[NODE_ID];
        assert_eq!(mark.boot, boot, "{mark:?}");
        mark.through
    }

    /// Waits until `done` holds for the node records.
    fn wait_until(
        &self,
        what: &str,
        mut done: impl FnMut(&[(Payload, NodeFields)]) -> bool,
    ) -> Vec<(Payload, NodeFields)> {
        let start = Instant::now();
        loop {
            let records = self.node_records();
            if done(&records) {
                return records;
            }
            assert!(
                start.elapsed() < WAIT,
                "{what}: not within {WAIT:?}; {} node records; the log:\n{}{}",
                records.len(),
                self.agent.log(),
                self.platform
                    .as_ref()
                    .map_or_else(String::new, Platform::log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until samples 1 to `through` of `boot` are stored.
    fn wait_for_samples(&self, boot: u32, through: u32) -> Vec<(Payload, NodeFields)> {
        self.wait_until(&format!("samples 1 to {through}"), |records| {
            stored_through(records, boot) >= through
        })
    }
}

/// The reference platform: mosquitto and `kouan receive` on it.
struct Platform {
    // Declared first, so the receiver goes before its broker.
    receiver: Child,
    _broker: Broker,
    dir: PathBuf,
}

impl Platform {
    /// Starts `kouan receive` in `dir` (agents' keys in `dir/agents`) and
    /// returns once it is connected.
    fn start(dir: &Path, broker: Broker, platform_key: &Path) -> Platform {
        let file = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
        let receiver = broker
            .receiver(&dir.join("agents"), platform_key, &dir.join("received.db"))
            .stdout(file("events"))
            .stderr(file("receiver.log"))
            .spawn()
            .unwrap();
        let platform = Platform {
            receiver,
            _broker: broker,
            dir: dir.to_owned(),
        };
        let start = Instant::now();
        while !platform.log().contains("receiver connected") {
            assert!(start.elapsed() < WAIT, "the receiver never connected");
            std::thread::sleep(Duration::from_millis(20));
        }
        platform
    }

    /// The receiver's event lines so far.
    fn events(&self) -> Vec<String> {
        let events = std::fs::read_to_string(self.dir.join("events")).unwrap_or_default();
        events.lines().map(str::to_owned).collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("receiver.log")).unwrap_or_default()
    }

    /// The agent's records the receiver accepted, each verified with
    /// `key`, in chain order.
    fn received(&self, key: &Path) -> Vec<Payload> {
        let key = PublicKey::load(key).unwrap();
        let kept = kouan_agent::receive::kept(&self.dir.join("received.db"), AGENT).unwrap();
        kept.iter()
            .map(|bytes| {
                let verified = kouan_agent::record::verify(bytes, std::slice::from_ref(&key));
                verified.expect("every accepted record verifies").payload
            })
            .collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.receiver.kill();
        let _ = self.receiver.wait();
    }
}

fn instrument_toml(pty: &Path) -> String {
    format!(
        "[[instrument]]\nid = \"{INSTRUMENT}\"\ndriver = \"node\"\nport = \"{}\"\n\
         hazard = \"environmental\"\n\n[instrument.serial]\nbaud = 115200\n\n\
         [instrument.node]\nnode_id = \"{NODE_ID}\"\n",
        pty.display()
    )
}

/// The node fields of the node's reading records.
fn node_records(records: Vec<Payload>) -> Vec<(Payload, NodeFields)> {
    records
        .into_iter()
        .filter(|p| p.kind == Kind::Reading && p.instrument == INSTRUMENT)
        .map(|p| {
            let node = NodeFields::from_body(&p.body).expect("a node record has node fields");
            (p, node)
        })
        .collect()
}

/// How often each sample number of `boot` is stored.
fn sample_counts(records: &[(Payload, NodeFields)], boot: u32) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for (_, node) in records {
        if let (Some(seq), true) = (node.seq, node.boot == boot) {
            *counts.entry(seq).or_default() += 1;
        }
    }
    counts
}

/// The highest n such that samples 1 to n of `boot` are stored.
fn stored_through(records: &[(Payload, NodeFields)], boot: u32) -> u32 {
    let counts = sample_counts(records, boot);
    let mut through = 0;
    while counts.contains_key(&(through + 1)) {
        through += 1;
    }
    through
}

/// Asserts that samples 1 to the highest stored are each stored once.
fn assert_each_once(records: &[(Payload, NodeFields)], boot: u32) {
    let counts = sample_counts(records, boot);
    let highest = counts.keys().last().copied().unwrap_or(0);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<u32> = (1..=highest).filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "missing samples: {missing:?}");
}

fn number(payload: &Payload) -> (String, f64, Option<String>) {
    let body = reading(payload);
    let value = &body.values[0];
    let MeasuredValue::Number(n) = value.value else {
        panic!("a node value is a number: {value:?}");
    };
    (value.name.clone(), n, value.unit.clone())
}

#[test]
fn samples_are_stored_as_signed_readings_numbered_from_one() {
    let setup = Setup::start();
    let boot = setup.node.first_boot();

    let records = setup.wait_for_samples(boot, 12);

    // records() verified every signature; the samples come in order, the
    // alarm output's state at boot first.
    let samples: Vec<_> = records.iter().filter(|(_, n)| n.seq.is_some()).collect();
    let seqs: Vec<u32> = samples.iter().filter_map(|(_, n)| n.seq).collect();
    assert_eq!(seqs[..12], (1..=12).collect::<Vec<_>>());
    let (first, fields) = samples[0];
    assert_eq!(fields.sensor, Some(ALARM));
    assert_eq!(number(first), ("alarm_output".into(), 0.0, None));
    for (payload, fields) in &samples {
        assert_eq!((fields.id.as_str(), fields.boot), (NODE_ID, boot));
        let body = reading(payload);
        assert_eq!(body.hazard.as_deref(), Some("environmental"));
        // The raw bytes are the sample's frame as the node sent it.
        let mut decoder = Decoder::<NodeMsg>::new();
        let Some(Ok(NodeMsg::Sample(sample))) = decoder.feed(&body.raw).next() else {
            panic!("raw is a sample frame: {:?}", body.raw);
        };
        assert_eq!(Some(sample.seq), fields.seq);
        assert_eq!(Some(sample.time.ms), fields.node_ms);
    }
    let temperatures: Vec<_> = samples
        .iter()
        .filter(|(_, n)| n.sensor == Some(TEMPERATURE))
        .map(|(p, _)| number(p))
        .collect();
    assert!(!temperatures.is_empty());
    for (name, value, unit) in temperatures {
        assert_eq!(
            (name.as_str(), unit.as_deref()),
            ("temperature", Some("°C"))
        );
        assert!((-40.0..=125.0).contains(&value), "{value}");
    }
    assert!(setup.agent.log_count("node said hello") >= 1);
}

#[test]
fn agent_killed_mid_stream_stores_every_sample_exactly_once() {
    let mut setup = Setup::start();
    let boot = setup.node.first_boot();

    // Three SIGKILLs while samples stream in, each once more have arrived.
    let mut target = 8;
    for _ in 0..3 {
        setup.wait_for_samples(boot, target);
        setup.agent.kill();
        setup.agent.restart();
        target += 12;
    }
    let records = setup.wait_for_samples(boot, target);

    assert_each_once(&records, boot);
    assert!(setup.agent.log_count("node said hello") >= 4);
}

/// The test as the node's peer while the agent is down: reads what the
/// node sends, acknowledges nothing beyond what the agent stored.
struct Listener {
    port: serialport::TTYPort,
    decoder: Decoder<NodeMsg>,
}

impl Listener {
    fn open(pty: &Path) -> Listener {
        let port = serialport::new(pty.to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap_or_else(|e| panic!("open {}: {e}", pty.display()));
        Listener {
            port,
            decoder: Decoder::new(),
        }
    }

    fn send(&mut self, msg: &AgentMsg) {
        self.port.write_all(&frame::encode(msg).unwrap()).unwrap();
        self.port.flush().unwrap();
    }

    /// Reads until `f` returns something for a message; corrupt frames
    /// (one cut when the agent let go of the port) are skipped.
    fn until<T>(&mut self, mut f: impl FnMut(NodeMsg) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 256];
        loop {
            assert!(Instant::now() < deadline, "the node fell silent");
            match self.port.read(&mut buf) {
                Ok(n) => {
                    let messages: Vec<NodeMsg> = self
                        .decoder
                        .feed(&buf[..n])
                        .filter_map(Result::ok)
                        .collect();
                    for msg in messages {
                        if let Some(found) = f(msg) {
                            return found;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => {}
                Err(e) => panic!("reading the node's pty: {e}"),
            }
        }
    }
}

/// What pulling the link longer than the node's buffer lasts left.
struct Outage {
    boot: u32,
    /// The last sample the node's buffer kept.
    last_kept: u32,
    /// The drops the node reported while the link was pulled.
    reported: u32,
    /// The node records once the agent is back and 20 samples past the
    /// buffer are in.
    records: Vec<(Payload, NodeFields)>,
}

/// Lets the node stream, kills the agent, stands in for it until the
/// node drops samples ([`outlast_the_buffer`]), restarts it and waits
/// until samples past the gap are in.
fn pull_the_link(setup: &mut Setup) -> Outage {
    let boot = setup.node.first_boot();
    setup.wait_for_samples(boot, 5);

    // The agent goes away. Its last ack may lag what it stored, and a
    // platform's copy lag that; its saved watermark is in the store and
    // no ack went beyond it.
    setup.agent.kill();
    let stored = setup.saved_watermark(boot);
    let (last_kept, reported) = outlast_the_buffer(&setup.node, boot, stored);

    // The agent is back: it stores what the node kept, the drops, and
    // what follows the gap.
    setup.agent.restart();
    let records = setup.wait_for_samples(boot, last_kept + 20);
    Outage {
        boot,
        last_kept,
        reported,
        records,
    }
}

/// With the agent down, takes its place on the node's pty until the
/// node's buffer is full and it drops samples. Acking `stored`, which
/// the agent stored, and no more pins where the buffer starts. Returns
/// the last sample the buffer kept and the drops the node reported.
fn outlast_the_buffer(node: &Node, boot: u32, stored: u32) -> (u32, u32) {
    let mut link = Listener::open(node.pty());
    link.send(&AgentMsg::Ack {
        boot,
        through: stored,
    });
    // Every sensor at its fastest, so the buffer fills in seconds.
    for (id, sensor) in [TEMPERATURE, HUMIDITY, GAS, DOSE_RATE, COUNT_RATE]
        .into_iter()
        .enumerate()
    {
        link.send(&AgentMsg::Command {
            id: 100 + id as u16,
            command: Command::SetInterval {
                sensor,
                interval_ms: 100,
            },
        });
    }

    // The buffer holds stored+1 to stored+128; then the node drops.
    let last_kept = stored + CAPACITY;
    let (mut dropped, mut seen_last) = (0, false);
    link.until(|msg| {
        match msg {
            NodeMsg::Status(status) => dropped = dropped.max(status.dropped),
            NodeMsg::Sample(sample) => {
                assert!(sample.seq <= last_kept, "{sample:?} beyond the buffer");
                seen_last |= sample.seq == last_kept;
            }
            _ => {}
        }
        (dropped > 0 && seen_last).then_some(())
    });
    (last_kept, dropped)
}

/// The drop records among `records`, after checking them: the first gap
/// lies after `last_kept`, and each counts from the one before.
fn checked_drops(records: &[(Payload, NodeFields)], boot: u32, last_kept: u32) -> Vec<&NodeFields> {
    // At the fastest rates the node fills its buffer again faster than
    // go-back-N empties it, so the first gap may be followed by more: each
    // is one record, counted from the previous one.
    let drops: Vec<&NodeFields> = records
        .iter()
        .filter(|(_, n)| n.dropped.is_some())
        .map(|(_, n)| n)
        .collect();
    assert!(!drops.is_empty(), "a drop record");
    assert_eq!(drops[0].before, Some(last_kept + 1), "{drops:?}");
    let mut total = 0;
    let mut before = 0;
    for gap in &drops {
        assert_eq!(gap.boot, boot);
        let (dropped, gap_total) = (gap.dropped.unwrap(), gap.dropped_total.unwrap());
        assert!(dropped >= 1, "{gap:?}");
        assert_eq!(gap_total, total + dropped, "{drops:?}");
        assert!(gap.before > Some(before), "{drops:?}");
        (total, before) = (gap_total, gap.before.unwrap());
    }
    drops
}

#[test]
fn link_pulled_longer_than_the_buffer_lasts_records_the_drops() {
    let mut setup = Setup::start();
    let Outage {
        boot,
        last_kept,
        records,
        ..
    } = pull_the_link(&mut setup);

    checked_drops(&records, boot, last_kept);
    let (payload, first) = records.iter().find(|(_, n)| n.dropped.is_some()).unwrap();
    let (name, value, unit) = number(payload);
    assert_eq!(
        (name.as_str(), value, unit.as_deref()),
        (
            "dropped_samples",
            f64::from(first.dropped.unwrap()),
            Some("samples")
        )
    );
    // Dropped samples were never numbered: the numbers have no hole.
    assert_each_once(&records, boot);
}

#[test]
fn link_pulled_longer_than_the_buffer_lasts_reaches_the_platform_as_a_node_gap() {
    let mut setup = Setup::start_with_platform();
    // The records are those the receiver accepted.
    let Outage {
        boot,
        last_kept,
        reported,
        records,
    } = pull_the_link(&mut setup);

    let drops = checked_drops(&records, boot, last_kept);
    let first = drops[0].dropped.unwrap();
    assert!(first >= reported, "{drops:?}, the node reported {reported}");
    // The event lines are printed as records are accepted, before they are
    // durable, so every drop record read back has its line by now.
    let platform = setup.platform.as_ref().unwrap();
    let events = platform.events();
    for gap in &drops {
        let line = format!(
            "node-gap {AGENT} {INSTRUMENT} node={NODE_ID} boot={boot} dropped={} total={} \
             before={}",
            gap.dropped.unwrap(),
            gap.dropped_total.unwrap(),
            gap.before.unwrap()
        );
        let printed = events.iter().filter(|e| **e == line).count();
        assert_eq!(printed, 1, "{line:?} in:\n{}", events.join("\n"));
    }
    assert!(
        platform
            .log()
            .contains("a sensor node lost samples while its buffer was full"),
        "{}",
        platform.log()
    );

    // Each record accepted once, and every sample of the boot among them
    // once: the drops left no hole in the numbers.
    let prefix = format!("accepted {AGENT} ");
    let accepted: Vec<u64> = events
        .iter()
        .filter_map(|e| e.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
        .collect();
    for (payload, _) in &records {
        let times = accepted.iter().filter(|seq| **seq == payload.seq).count();
        assert_eq!(times, 1, "record {} accepted {times} times", payload.seq);
    }
    assert_each_once(&records, boot);
}

#[test]
fn an_alert_switches_the_node_alarm_output_on_and_the_node_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Every temperature crosses this limit: the first one raises an alert.
    let limit = format!(
        "{}\n[[limit]]\nname = \"temperature\"\nabove = -100.0\nrisk = 2\n\
         instruments = [\"{INSTRUMENT}\"]\n",
        instrument_toml(node.pty())
    );
    let agent = Agent::start(dir.path(), &limit);
    let setup = Setup::run(dir, node, agent, None);

    let is_alarm_on =
        |(p, n): &(Payload, NodeFields)| n.sensor == Some(ALARM) && number(p).1 == 2.0;
    let records = setup.wait_until("the alarm output at level 2", |records| {
        records.iter().any(is_alarm_on)
    });

    // The node reported its output on only after the alert was stored.
    let (on, _) = records.iter().find(|r| is_alarm_on(r)).unwrap();
    let alert = setup
        .agent
        .records()
        .into_iter()
        .find(|p| p.kind == Kind::Alert)
        .expect("an alert record");
    assert!(
        alert.seq < on.seq,
        "alert {} before the output {}",
        alert.seq,
        on.seq
    );
    assert!(
        setup
            .agent
            .log_count("switching the node's alarm output on")
            >= 1
    );

    // The status view shows the node, its output and the alert.
    let status = setup.agent.wait_for_status(WAIT, |s| {
        s["instruments"][0]["node"]["alarm"] == 2
            && s["alerts"].as_array().is_some_and(|a| !a.is_empty())
    });
    let node = &status["instruments"][0]["node"];
    assert!(
        !node["firmware"].as_str().unwrap_or("").is_empty(),
        "{status:#}"
    );
    assert_eq!(node["node"], "qemu-node", "{status:#}");
    assert_eq!(
        status["alerts"][0]["source"], "limit temperature",
        "{status:#}"
    );
    let shown = kouan_tests::agent::status_text(&setup.agent.status_socket());
    assert!(shown.contains("ALARM ON (level 2)"), "{shown}");
    assert!(shown.contains("ALERT 1"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn alarm_command_reaches_the_node_which_reports_the_output_state() {
    use kouan_agent::instrument::{Counters, Instrument, Trace};
    use kouan_agent::keys::{self, Algorithm, SigningKey};
    use kouan_agent::store::Store;
    use kouan_agent::writer::{Writer, WriterConfig};

    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let id = "alarm-node";

    // The agent's parts the driver uses: a store, its writer, the config.
    let store_path = dir.path().join("kouan.db");
    let key = SigningKey::from_pkcs8(&keys::generate(Algorithm::Ed25519).unwrap()).unwrap();
    let public = key.public_key().clone();
    let (store, opened) = Store::open_or_recover(&store_path, &[]).unwrap();
    let config = WriterConfig::new("gy-air-01", "guiyang-airport");
    let (writer, writer_thread) = Writer::start(store, &opened, key, config).unwrap();
    let text = format!(
        "[agent]\nnode = \"gy-air-01\"\nsite = \"guiyang-airport\"\n\
         [keys]\nsigning = \"k\"\n[store]\npath = \"kouan.db\"\n\n{}",
        instrument_toml(node.pty()).replace(INSTRUMENT, id)
    );
    let config = kouan_agent::config::Config::parse(&text, &dir.path().join("kouan.toml")).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let instrument = Instrument {
        config: Arc::new(config.instruments[0].clone()),
        writer: writer.clone(),
        counters: Arc::new(Counters::default()),
        trace: Trace::default(),
        shutdown,
        rapid: None,
        store_path: store_path.clone(),
        continuing: true,
    };
    let driver = tokio::spawn(async move { kouan_agent::node::run(&instrument).await });

    // The driver registers at start and says so once the port is open.
    let handle = wait(|| kouan_agent::node::handle(id)).await;
    wait(|| handle.status().attached.then_some(())).await;
    node.resume();
    wait(|| handle.status().firmware).await;

    assert_eq!(handle.alarm(Some(2)).await.unwrap(), Outcome::Done);
    wait(|| (handle.status().alarm == Some(2)).then_some(())).await;
    assert!(matches!(
        handle.alarm(Some(9)).await,
        Err(kouan_agent::node::CommandError::Level(9))
    ));
    assert_eq!(handle.alarm(None).await.unwrap(), Outcome::Done);
    wait(|| (handle.status().alarm == Some(0)).then_some(())).await;
    let status = handle.status();
    assert_eq!(status.node.as_deref(), Some("qemu-node"));
    assert_eq!(status.boot, Some(node.first_boot()));

    stop.send_replace(true);
    driver.await.unwrap();
    assert!(kouan_agent::node::handle(id).is_none());
    drop(writer);
    writer_thread.join().unwrap();

    // The node's reports of its output are signed readings: off at boot,
    // on at level 2, off again.
    let store = Store::open_read_only(&store_path).unwrap();
    let mut alarm = Vec::new();
    for stored in store.read_from(0, 10_000).unwrap() {
        let verified =
            kouan_agent::record::verify(&stored.bytes, std::slice::from_ref(&public)).unwrap();
        let payload = verified.payload;
        if payload.kind != Kind::Reading {
            continue;
        }
        let (name, value, _) = number(&payload);
        if name == "alarm_output" {
            alarm.push(value);
        }
    }
    assert_eq!(alarm, [0.0, 2.0, 0.0]);
}

/// Polls `f` until it gives something.
async fn wait<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(start.elapsed() < WAIT, "not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
