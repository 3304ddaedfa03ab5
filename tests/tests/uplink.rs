//! The MQTT uplink end to end: the real agent and the real receiver
//! (`kouan run`, `kouan receive`) through a real mosquitto with TLS,
//! client certificates and the ACL of DESIGN.md, with faults injected.
//!
//! Every test ends with the same check: the receiver accepted every seq of
//! the agent's chain exactly once (duplicates are counted, not accepted
//! again), and the agent's store is empty because the platform
//! acknowledged everything.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kouan_tests::broker::{Broker, BrokerOptions, find_tool};
use kouan_tests::pki::{AGENT, OTHER_AGENT};
use kouan_tests::proxy::Proxy;
use kouan_tests::{keygen, kouan, path_str, run, text};

/// A generous bound for one phase of a test: only to avoid hanging forever.
const PATIENCE: Duration = Duration::from_secs(120);

/// A broker sized for the platform, as docs/platform.md advises: its queue
/// for the receiver's persistent session holds a whole test's records.
fn platform_broker() -> BrokerOptions {
    BrokerOptions {
        max_queued_messages: Some(100_000),
        ..BrokerOptions::default()
    }
}

struct Site {
    dir: tempfile::TempDir,
    broker: Broker,
    agent_key: PathBuf,
    platform_key: PathBuf,
    platform_pub: PathBuf,
    keys_dir: PathBuf,
    receiver: Option<Child>,
    agent: Option<Child>,
    receiver_runs: usize,
    /// Extra arguments for `kouan receive` and `kouan run`.
    receiver_args: Vec<String>,
    agent_args: Vec<String>,
    replay_after_ms: u32,
}

impl Site {
    fn new(options: &BrokerOptions) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("broker");
        std::fs::create_dir_all(&broker_dir).unwrap();
        let broker = Broker::start(&broker_dir, options);
        let agent_dir = dir.path().join("agent");
        let platform_dir = dir.path().join("platform");
        let keys_dir = dir.path().join("agents");
        for d in [&agent_dir, &platform_dir, &keys_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (agent_key, agent_pub) = keygen(&agent_dir, "ed25519");
        let (platform_key, platform_pub) = keygen(&platform_dir, "ed25519");
        std::fs::copy(&agent_pub, keys_dir.join(format!("{AGENT}.pub"))).unwrap();
        Site {
            dir,
            broker,
            agent_key,
            platform_key,
            platform_pub,
            keys_dir,
            receiver: None,
            agent: None,
            receiver_runs: 0,
            receiver_args: Vec::new(),
            agent_args: Vec::new(),
            replay_after_ms: 1500,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("agent/kouan.db")
    }

    /// The agent's config, reaching the broker at `port` (the broker's own,
    /// or a proxy's).
    fn write_config(&self, port: u16, extra: &str) -> PathBuf {
        let config = kouan_tests::agent_config(
            &self.broker,
            port,
            &self.agent_key,
            &self.store(),
            &self.platform_pub,
            "checkpoint_every = 500",
            extra,
        );
        let path = self.path("agent/kouan.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn start_receiver(&mut self) {
        self.receiver_runs += 1;
        let out = std::fs::File::create(self.path(&format!("receiver-{}.out", self.receiver_runs)))
            .unwrap();
        let log = std::fs::File::create(self.path(&format!("receiver-{}.log", self.receiver_runs)))
            .unwrap();
        let child = self
            .broker
            .receiver(
                &self.keys_dir,
                &self.platform_key,
                &self.path("received.db"),
            )
            .args(["--replay-after-ms", &self.replay_after_ms.to_string()])
            .args(&self.receiver_args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.receiver = Some(child);
        // Records published before its subscription exists would only come
        // back by replay; wait for it, so that a clean run is clean.
        let log = self.path(&format!("receiver-{}.log", self.receiver_runs));
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("receiver connected")
        {
            assert!(start.elapsed() < PATIENCE, "the receiver never connected");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    fn stop_receiver(&mut self) {
        if let Some(mut child) = self.receiver.take() {
            terminate(&mut child);
        }
    }

    fn start_agent(&mut self, config: &Path, readings: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        let child = kouan()
            .args(["run", "--config", path_str(config)])
            .args(["--simulate-readings", &readings.to_string()])
            .args(&self.agent_args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// Everything the receiver printed, over all its runs.
    fn events(&self) -> Events {
        let mut events = Events::default();
        for run in 1..=self.receiver_runs {
            let out = std::fs::read_to_string(self.path(&format!("receiver-{run}.out")))
                .unwrap_or_default();
            for line in out.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["accepted", node, seq, kind] if *node == AGENT => {
                        let seq: u64 = seq.parse().unwrap();
                        assert!(events.accepted.insert(seq), "seq {seq} accepted twice");
                        if *kind == "reading" {
                            events.readings += 1;
                        }
                    }
                    ["duplicate", ..] => events.duplicates += 1,
                    ["rejected", ..] => events.rejected.push(line.to_owned()),
                    ["conflict", ..] => events.conflicts.push(line.to_owned()),
                    ["replay", ..] => events.replays += 1,
                    ["death", ..] => events.deaths += 1,
                    ["gap", _, range, reason] => events.gaps.push(format!("{range} {reason}")),
                    _ => {}
                }
            }
        }
        events
    }

    /// The agent's chain head and how many records it still holds.
    fn agent_store(&self) -> (u64, u64) {
        let out = run(&["store", "stats", "--store", path_str(&self.store())]);
        let stdout = text(&out.stdout);
        let field = |name: &str| -> u64 {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().nth(usize::from(name == "head")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX)
        };
        (field("head"), field("records"))
    }

    /// Waits until the receiver has `readings` readings and every seq of the
    /// agent's chain, and the agent's store is empty.
    fn wait_delivered(&self, readings: u64) -> Events {
        let start = Instant::now();
        loop {
            let events = self.events();
            let (head, held) = self.agent_store();
            let complete = events.readings >= readings
                && held == 0
                && events.accepted.len() as u64 == head + 1
                && events.accepted.iter().next_back() == Some(&head);
            if complete {
                return events;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "not delivered after {PATIENCE:?}: {} readings, {} of seqs 0..={head} accepted, \
                 {held} held by the agent; agent log:\n{}",
                events.readings,
                events.accepted.len(),
                std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_for_readings(&self, at_least: u64) {
        let start = Instant::now();
        while self.events().readings < at_least {
            assert!(
                start.elapsed() < PATIENCE,
                "receiver never got {at_least} readings"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            terminate(&mut agent);
        }
        self.stop_receiver();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for child in [self.agent.as_mut(), self.receiver.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Default)]
struct Events {
    accepted: BTreeSet<u64>,
    readings: u64,
    duplicates: u64,
    replays: u64,
    deaths: u64,
    gaps: Vec<String>,
    rejected: Vec<String>,
    conflicts: Vec<String>,
}

fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the common ending and reports the figures.
fn assert_all_delivered(name: &str, events: &Events, readings: u64) {
    assert!(events.readings >= readings, "{name}: {events:?}");
    assert!(
        events.conflicts.is_empty(),
        "{name}: {:?}",
        events.conflicts
    );
    assert!(events.rejected.is_empty(), "{name}: {:?}", events.rejected);
    eprintln!(
        "{name}: {} records ({} readings) accepted exactly once, {} duplicates dropped, {} replays",
        events.accepted.len(),
        events.readings,
        events.duplicates,
        events.replays
    );
}

#[test]
fn ten_thousand_readings_arrive_exactly_once_through_tls_and_acl() {
    let mut site = Site::new(&platform_broker());
    site.start_receiver();
    let config = site.write_config(site.broker.port(), "");
    site.start_agent(&config, 10_000);
    let events = site.wait_delivered(10_000);
    // Stop the agent first and let its clean-shutdown death message reach
    // the receiver before that stops too.
    let mut agent = site.agent.take().unwrap();
    terminate(&mut agent);
    let start = Instant::now();
    while site.events().deaths == 0 && start.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(50));
    }
    site.finish();
    assert_eq!(events.readings, 10_000);
    assert_all_delivered("clean run", &events, 10_000);
    let log = std::fs::read_to_string(site.path("agent.log")).unwrap();
    assert!(log.contains("uplink connected"), "{log}");
    assert!(log.contains("uplink disconnected cleanly"), "{log}");
    // One connection, one death message (the clean shutdown's): a
    // cancelled rumqttc poll used to abandon half-made connections, whose
    // last will the broker published while the agent was running.
    let deaths = site.events().deaths;
    assert_eq!(deaths, 1, "death messages seen by the receiver");
    let connects = site.broker.log().matches(&format!("as {AGENT} ")).count();
    assert_eq!(connects, 1, "{}", site.broker.log());
}

#[test]
fn broker_killed_and_restarted_mid_stream_loses_nothing() {
    let mut site = Site::new(&platform_broker());
    site.start_receiver();
    let config = site.write_config(site.broker.port(), "");
    site.start_agent(&config, 5_000);
    site.wait_for_readings(1_000);
    site.broker.kill();
    std::thread::sleep(Duration::from_millis(500));
    site.broker.restart();
    let events = site.wait_delivered(5_000);
    site.finish();
    assert_all_delivered("broker killed", &events, 5_000);
}

#[test]
fn broker_frozen_then_resumed_loses_nothing() {
    let mut site = Site::new(&platform_broker());
    site.start_receiver();
    let config = site.write_config(site.broker.port(), "keep_alive_secs = 5");
    site.start_agent(&config, 5_000);
    site.wait_for_readings(1_000);
    site.broker.freeze();
    // Longer than the agent's keep-alive (5 s), so it gives the connection up.
    std::thread::sleep(Duration::from_secs(9));
    site.broker.thaw();
    let events = site.wait_delivered(5_000);
    site.finish();
    assert_all_delivered("broker frozen", &events, 5_000);
}

#[test]
fn agent_killed_mid_stream_and_restarted_loses_nothing() {
    let mut site = Site::new(&platform_broker());
    site.start_receiver();
    let config = site.write_config(site.broker.port(), "");
    site.start_agent(&config, 5_000);
    site.wait_for_readings(1_000);
    let mut agent = site.agent.take().unwrap();
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    // The restarted agent sends what the first one left, and 1000 more.
    site.start_agent(&config, 1_000);
    let events = site.wait_delivered(2_000);
    site.finish();
    assert_all_delivered("agent killed", &events, 2_000);
}

#[test]
fn receiver_offline_while_the_broker_queue_overflows_loses_nothing() {
    let options = BrokerOptions {
        max_queued_messages: Some(100),
        ..BrokerOptions::default()
    };
    let mut site = Site::new(&options);
    // Each replay brings back about a queue's worth before the broker drops
    // again; asking sooner keeps the rounds short.
    site.replay_after_ms = 500;
    // The receiver's persistent session exists; then it goes away.
    site.start_receiver();
    std::thread::sleep(Duration::from_secs(1));
    site.stop_receiver();
    // The newest records the broker dropped are invisible to the platform:
    // the agent sends them again when no ack comes.
    let config = site.write_config(site.broker.port(), "ack_timeout_secs = 3");
    site.start_agent(&config, 1_500);
    // Let the agent publish everything while nobody reads: the broker keeps
    // 100 for the receiver and drops the rest after PUBACK.
    let log = site.path("agent.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("simulated readings are stored")
    {
        assert!(start.elapsed() < PATIENCE);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (_, held) = site.agent_store();
    assert!(
        held >= 1_500,
        "nothing may leave the agent without the platform's ack: {held}"
    );
    site.start_receiver();
    let events = site.wait_delivered(1_500);
    site.finish();
    assert!(
        events.replays > 0,
        "the dropped records must come back through a replay"
    );
    assert_all_delivered("queue overflow", &events, 1_500);
}

#[test]
fn connections_cut_by_a_proxy_lose_nothing() {
    let mut site = Site::new(&platform_broker());
    let proxy = Proxy::start(site.broker.addr());
    site.start_receiver();
    let config = site.write_config(proxy.port(), "");
    site.start_agent(&config, 5_000);
    for at in [500, 1_500, 3_000] {
        site.wait_for_readings(at);
        // Cut a live connection, not the gap while the agent backs off.
        let start = Instant::now();
        while proxy.open_connections() == 0 {
            assert!(start.elapsed() < PATIENCE, "the agent never reconnected");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy.cut();
    }
    let events = site.wait_delivered(5_000);
    site.finish();
    assert!(
        proxy.connections() >= 4,
        "the agent reconnected after every cut"
    );
    assert_all_delivered("proxy cuts", &events, 5_000);
}

/// Waits until the agent's log contains `text`.
fn wait_for_log(site: &Site, text: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(site.path("agent.log"))
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            start.elapsed() < PATIENCE,
            "the agent never logged {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_holds_records_until_the_platform_host_is_online() {
    let mut site = Site::new(&platform_broker());
    let config = site.write_config(site.broker.port(), "platform_host = \"central-1\"");
    site.start_agent(&config, 500);
    wait_for_log(&site, "uplink connected");
    wait_for_log(&site, "simulated readings are stored");
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::read_to_string(site.path("agent.log")).unwrap();
    assert!(
        !log.contains("published birth"),
        "nothing is published while the host is away: {log}"
    );
    let (_, held) = site.agent_store();
    assert!(held >= 500, "{held}");

    site.receiver_args = vec!["--host-id".into(), "central-1".into()];
    site.start_receiver();
    let events = site.wait_delivered(500);
    site.finish();
    let log = std::fs::read_to_string(site.path("agent.log")).unwrap();
    assert!(
        log.contains("platform host state changed host=\"central-1\" online=true"),
        "{log}"
    );
    assert_all_delivered("host gating", &events, 500);
}

#[test]
fn broker_delivery_deletes_on_puback_even_with_nobody_listening() {
    let mut site = Site::new(&platform_broker());
    let config = site.write_config(site.broker.port(), "delivery = \"broker\"");
    site.start_agent(&config, 1_000);
    wait_for_log(&site, "simulated readings are stored");
    // The weaker mode: the broker's PUBACK is taken as delivery, so the
    // store empties although no platform received anything.
    let start = Instant::now();
    while site.agent_store().1 != 0 {
        assert!(
            start.elapsed() < PATIENCE,
            "store never emptied: {:?}",
            site.agent_store()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    site.finish();
}

#[test]
fn record_too_large_for_the_broker_is_set_aside_and_explained() {
    let mut site = Site::new(&platform_broker());
    site.start_receiver();
    let config = site.write_config(site.broker.port(), "max_packet_bytes = 2000");
    site.agent_args = vec!["--simulate-raw-bytes".into(), "4000".into()];
    site.start_agent(&config, 3);
    // The readings never arrive; gap records explain them, and the
    // platform's ack covers them, so the agent's store empties.
    let start = Instant::now();
    let events = loop {
        let events = site.events();
        let explained = events
            .gaps
            .iter()
            .filter(|g| g.ends_with("TooLarge"))
            .count();
        if explained == 3 && site.agent_store().1 == 0 {
            break events;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{events:?} {:?}",
            site.agent_store()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    site.finish();
    assert_eq!(events.readings, 0, "no oversize reading was sent");
    let too_large: Vec<&String> = events
        .gaps
        .iter()
        .filter(|g| g.ends_with("TooLarge"))
        .collect();
    assert_eq!(too_large.len(), 3, "{:?}", events.gaps);
    let set_aside: Vec<_> = std::fs::read_dir(site.path("agent/kouan.db.set-aside"))
        .unwrap()
        .collect();
    assert_eq!(set_aside.len(), 3);
    let log = std::fs::read_to_string(site.path("agent.log")).unwrap();
    assert_eq!(
        log.matches("record too large for the broker").count(),
        3,
        "{log}"
    );
}

/// Publishes a file's bytes as a client of the broker.
fn publish_as(site: &Site, user: &str, topic: &str, payload: &Path) {
    let tls = site.broker.client(user);
    let status = Command::new(find_tool("mosquitto_pub"))
        .args(["-h", "localhost", "-p", &site.broker.port().to_string()])
        .args(["--cafile", path_str(site.broker.ca())])
        .args(["--cert", path_str(&tls.cert), "--key", path_str(&tls.key)])
        .args(["-q", "1", "-t", topic, "-f", path_str(payload)])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub as {user} to {topic}");
}

#[test]
fn records_under_another_identity_are_rejected_and_logged() {
    let mut site = Site::new(&platform_broker());
    let other_dir = site.path("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other_key, other_pub) = keygen(&other_dir, "ed25519");
    std::fs::copy(&other_pub, site.keys_dir.join(format!("{OTHER_AGENT}.pub"))).unwrap();
    site.start_receiver();
    std::thread::sleep(Duration::from_secs(1));

    // One genuine record of each agent, made by the real writer.
    let make = |key: &Path, node: &str, name: &str| -> PathBuf {
        let store = site.path(&format!("{name}.db"));
        let out = run(&[
            "debug",
            "append",
            "--store",
            path_str(&store),
            "--key",
            path_str(key),
            "--count",
            "1",
            "--node",
            node,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let export = site.path(&format!("{name}.cbor"));
        kouan_tests::export(&store, Some(1), &export);
        export
    };
    let genuine = make(&site.agent_key, AGENT, "genuine");
    let foreign_signed = make(&other_key, AGENT, "foreign");

    // Forged topic: gy-air-01's record published under gy-rail-01's topic.
    publish_as(
        &site,
        OTHER_AGENT,
        &format!("kouan/v1/{OTHER_AGENT}/rec/balance-1"),
        &genuine,
    );
    // Foreign key: gy-rail-01's key signs a record that claims to be gy-air-01's.
    publish_as(
        &site,
        AGENT,
        &format!("kouan/v1/{AGENT}/rec/balance-1"),
        &foreign_signed,
    );
    // Altered bytes: one byte of a genuine record changed on the way.
    let mut bytes = std::fs::read(&genuine).unwrap();
    // Inside the signature, the last 64 bytes: the envelope still parses.
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01;
    let altered = site.path("altered.cbor");
    std::fs::write(&altered, bytes).unwrap();
    publish_as(
        &site,
        AGENT,
        &format!("kouan/v1/{AGENT}/rec/balance-1"),
        &altered,
    );

    // Foreign node: gy-rail-01's own topic and key, but the record claims gy-air-01.
    publish_as(
        &site,
        OTHER_AGENT,
        &format!("kouan/v1/{OTHER_AGENT}/rec/balance-1"),
        &foreign_signed,
    );

    let start = Instant::now();
    while site.events().rejected.len() < 4 {
        assert!(start.elapsed() < PATIENCE, "{:?}", site.events());
        std::thread::sleep(Duration::from_millis(100));
    }
    site.finish();
    let events = site.events();
    assert!(events.accepted.is_empty(), "{events:?}");
    let rejected = events.rejected.join("\n");
    assert!(
        rejected.contains(&format!(
            "rejected {OTHER_AGENT} kouan/v1/{OTHER_AGENT}/rec"
        )),
        "{rejected}"
    );
    assert!(
        rejected.contains("not among the given public keys"),
        "{rejected}"
    );
    assert!(rejected.contains("signature does not verify"), "{rejected}");
    assert!(
        rejected.contains(&format!("record is signed for node {AGENT}")),
        "{rejected}"
    );
    let log = std::fs::read_to_string(site.path("receiver-1.log")).unwrap();
    assert_eq!(log.matches("rejected a record").count(), 4, "{log}");
}
