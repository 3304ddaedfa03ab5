//! Rapid response end to end: the reference platform publishes a signed
//! control order through mosquitto (TLS, ACL), the agent loses its broker
//! (a proxy between them refuses it, while the platform stays connected),
//! a matching scan on a virtual serial port raises the local alarm and a
//! signed alert offline, the point's sensor node (the emulated board under
//! QEMU) switches its alarm output on and reports it, and when the broker
//! returns the alert reaches the platform ahead of the older backlog.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kouan_tests::agent;
use kouan_tests::broker::{Broker, BrokerOptions, find_tool};
use kouan_tests::pki::{AGENT, PLATFORM};
use kouan_tests::proxy::Proxy;
use kouan_tests::pty::VirtualPort;
use kouan_tests::qemu::Node;
use kouan_tests::{keygen, kouan, path_str, run, text};

const PATIENCE: Duration = Duration::from_secs(60);

struct Site {
    dir: tempfile::TempDir,
    broker: Broker,
    platform_key: PathBuf,
    agent: Option<Child>,
    receiver: Option<Child>,
    scanner: VirtualPort,
    proxy: Proxy,
    /// The point's sensor node: the emulated board under QEMU, halted
    /// until the agent has its pty open.
    node: Node,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: &str| dir.path().join(p);
        for d in ["broker", "agent", "platform", "agents", "orders", "node"] {
            std::fs::create_dir_all(path(d)).unwrap();
        }
        let options = BrokerOptions {
            max_queued_messages: Some(10_000),
            // mosquitto_pub publishes as the platform while the receiver is
            // connected as the platform: with client ids bound to the
            // certificate's name each would take the other's session.
            any_client_id: true,
            ..BrokerOptions::default()
        };
        let broker = Broker::start(&path("broker"), &options);
        let (agent_key, agent_pub) = keygen(&path("agent"), "ed25519");
        let (platform_key, platform_pub) = keygen(&path("platform"), "ed25519");
        std::fs::copy(&agent_pub, path("agents").join(format!("{AGENT}.pub"))).unwrap();
        let scanner = VirtualPort::create(&path("scanner"));
        let node = Node::start(&path("node"));
        // The agent reaches the broker through a proxy, so that it can lose
        // the broker while the platform keeps its connection.
        let proxy = Proxy::start(broker.addr());
        let config = kouan_tests::agent_config(
            &broker,
            proxy.port(),
            &agent_key,
            &path("agent/kouan.db"),
            &platform_pub,
            "",
            "ack_timeout_secs = 5",
        );
        let config = format!(
            "{config}\n[rapid]\ncommand = [\"sh\", \"-c\", \"ls -l /proc/$$/fd > {fds}; echo $KOUAN_ALERT_ACTION $KOUAN_ALERT_SUBJECT >> {gate}\"]\n\n\
             [[instrument]]\nid = \"scanner-1\"\ndriver = \"scanner\"\nport = \"{port}\"\n\n\
             [[instrument]]\nid = \"node-1\"\ndriver = \"node\"\nport = \"{node}\"\n\
             [instrument.serial]\nbaud = 115200\n[instrument.node]\nnode_id = \"qemu-node\"\n",
            gate = path_str(&path("gate.log")),
            fds = path_str(&path("command-fds.log")),
            port = path_str(scanner.path()),
            node = path_str(node.pty()),
        );
        std::fs::write(path("agent/kouan.toml"), config).unwrap();
        Site {
            dir,
            broker,
            platform_key,
            agent: None,
            receiver: None,
            scanner,
            proxy,
            node,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_receiver(&mut self) {
        let child = self
            .broker
            .receiver(
                &self.path("agents"),
                &self.platform_key,
                &self.path("received.db"),
            )
            .args(["--orders", path_str(&self.path("orders"))])
            .stdout(Stdio::from(
                std::fs::File::create(self.path("receiver.out")).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(self.path("receiver.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        self.receiver = Some(child);
        self.wait(
            |s| s.receiver_log().contains("receiver connected"),
            "receiver connected",
        );
    }

    fn start_agent(&mut self) {
        let child = kouan()
            .args(["run", "--config", path_str(&self.path("agent/kouan.toml"))])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.path("agent.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    fn receiver_log(&self) -> String {
        std::fs::read_to_string(self.path("receiver.log")).unwrap_or_default()
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("receiver.out"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait(&self, done: impl Fn(&Site) -> bool, what: &str) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: not within {PATIENCE:?}\nagent log:\n{}\nreceiver events:\n{}",
                self.agent_log(),
                self.events().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn order(&self, name: &str, text: &str) {
        // Written aside and renamed, so the receiver never reads half a file.
        let tmp = self.path(&format!("orders/{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(&format!("orders/{name}.toml"))).unwrap();
    }

    fn alerts(&self, args: &[&str]) -> String {
        let config = self.path("agent/kouan.toml");
        let mut all = vec!["alerts", "--config", path_str(&config)];
        all.extend(args);
        let out = run(&all);
        assert!(out.status.success(), "kouan alerts: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Publishes a file's bytes as the platform (forged messages).
    fn publish_as_platform(&self, topic: &str, payload: &Path) {
        let tls = self.broker.client(PLATFORM);
        let status = Command::new(find_tool("mosquitto_pub"))
            .args(["-h", "localhost", "-p", &self.broker.port().to_string()])
            .args(["--cafile", path_str(self.broker.ca())])
            .args(["--cert", path_str(&tls.cert), "--key", path_str(&tls.key)])
            .args(["-q", "1", "-t", topic, "-f", path_str(payload)])
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_pub to {topic}");
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.receiver.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
    }
}

/// `accepted NODE SEQ KIND` lines, in arrival order.
fn accepted(events: &[String]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|line| {
            let mut words = line.strip_prefix("accepted ")?.split(' ');
            let _node = words.next()?;
            let seq = words.next()?.parse().ok()?;
            Some((seq, words.next()?.to_owned()))
        })
        .collect()
}

const ORDER: &str = r#"
id = "RW-2026-0042"
risk = 1
action = "hold"
valid_hours = 72
text = "lead above limit in batch 12A"
[match]
gtin = "09521234543213"
batch = "12A"
"#;

#[test]
fn order_matched_offline_raises_the_alarm_and_the_alert_overtakes_the_backlog() {
    let mut site = Site::new();
    site.start_receiver();
    site.start_agent();
    site.wait(
        |s| s.agent_log().matches("instrument attached").count() == 2,
        "scanner and node attached",
    );
    site.node.resume();
    site.wait(
        |s| s.agent_log().contains("node said hello"),
        "the node's hello",
    );
    site.order("rw-42", ORDER);
    site.wait(
        |s| s.agent_log().contains("control order active"),
        "the agent holds the order",
    );
    assert!(
        site.events()
            .iter()
            .any(|e| e.starts_with("order-published RW-2026-0042"))
    );

    // The agent loses its broker; scans go on at the point.
    site.proxy.unplug();
    site.wait(
        |s| s.agent_log().contains("uplink disconnected"),
        "the agent notices",
    );
    let delivered_before = accepted(&site.events())
        .iter()
        .map(|(seq, _)| *seq)
        .max()
        .unwrap();
    for n in 0..20 {
        site.scanner.send(format!("LAB-2026-{n:04}\r").as_bytes());
    }
    site.scanner.send(b"]C1010952123454321310\x31\x32A\r");
    site.wait(
        |s| s.agent_log().contains("ALERT: local alarm raised"),
        "local alarm offline",
    );
    site.wait(
        |s| std::fs::read_to_string(s.path("gate.log")).is_ok_and(|g| g.contains("hold")),
        "the site's alarm command",
    );
    let gate = std::fs::read_to_string(site.path("gate.log")).unwrap();
    assert_eq!(gate.trim(), "hold (01)09521234543213(10)12A");
    // The command inherits none of the agent's files: not the scanner's
    // port, not the store.
    let fds = std::fs::read_to_string(site.path("command-fds.log")).unwrap();
    assert!(
        !fds.contains("/dev/pts") && !fds.contains(".db"),
        "the alarm command inherited: {fds}"
    );
    let listed = site.alerts(&[]);
    assert!(
        listed.contains("RW-2026-0042") && listed.contains("hold"),
        "{listed}"
    );
    // The alarm reaches the point's node, still offline, and the node
    // reports its output on at the order's risk level.
    let status = agent::wait_for_status(&site.path("agent/kouan.sock"), PATIENCE, |s| {
        s["instruments"][1]["node"]["alarm"] == 1
    });
    assert_eq!(status["uplink"]["connected"], false, "{status:#}");
    assert_eq!(status["instruments"][1]["id"], "node-1", "{status:#}");
    assert!(
        site.agent_log()
            .contains("alert: switching the node's alarm output on")
    );
    let status = agent::status_json(&site.path("agent/kouan.sock"));
    assert_eq!(status["active_orders"], 1, "{status:#}");
    assert_eq!(status["alerts"][0]["source"], "RW-2026-0042", "{status:#}");
    assert_eq!(status["alerts"][0]["action"], "hold", "{status:#}");
    let shown = agent::status_text(&site.path("agent/kouan.sock"));
    assert!(shown.contains("ALERT 1     risk 1 HOLD"), "{shown}");

    // The broker is back for the agent: the alert arrives before the
    // older backlog.
    site.proxy.plug();
    site.wait(
        |s| {
            accepted(&s.events())
                .iter()
                .any(|(_, kind)| kind == "alert")
        },
        "the alert reaches the platform",
    );
    site.wait(
        |s| {
            accepted(&s.events())
                .iter()
                .filter(|(seq, kind)| kind == "scan" && *seq > delivered_before)
                .count()
                >= 21
        },
        "the backlog drains",
    );
    let arrivals = accepted(&site.events());
    let alert_at = arrivals
        .iter()
        .position(|(_, kind)| kind == "alert")
        .unwrap();
    let alert_seq = arrivals[alert_at].0;
    let backlog: Vec<usize> = arrivals
        .iter()
        .enumerate()
        .filter(|(_, (seq, kind))| kind == "scan" && *seq > delivered_before && *seq < alert_seq)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(backlog.len(), 21, "{arrivals:?}");
    assert!(
        backlog.iter().all(|&at| at > alert_at),
        "alert at {alert_at}, backlog at {backlog:?}"
    );

    // An officer acknowledges it: a signed record the platform receives.
    let out = site.alerts(&["ack", "1", "--by", "officer-17"]);
    assert!(out.contains("signed as a record"), "{out}");
    site.wait(
        |s| {
            accepted(&s.events())
                .iter()
                .filter(|(_, kind)| kind == "alert")
                .count()
                >= 2
        },
        "the acknowledgement reaches the platform",
    );
    assert!(site.alerts(&[]).contains("no active alerts"));
}

#[test]
fn forged_expired_and_replayed_orders_are_refused_and_logged() {
    let mut site = Site::new();
    site.start_receiver();
    site.start_agent();
    site.wait(
        |s| s.agent_log().contains("instrument attached"),
        "scanner attached",
    );

    // Forged: an order signed by a key that is not the platform's.
    let forger = site.path("forger");
    std::fs::create_dir_all(&forger).unwrap();
    let (forged_key, _) = keygen(&forger, "ed25519");
    let order: kouan_agent::rapid::order::OrderFile = toml_order(ORDER);
    let now = kouan_agent::clock::unix_ms();
    let forged = kouan_agent::platform::sign(
        &order.order(now),
        &kouan_agent::keys::SigningKey::load(&forged_key).unwrap(),
    )
    .unwrap();
    std::fs::write(site.path("forged.cose"), &forged).unwrap();
    site.publish_as_platform("kouan/v1/orders/RW-2026-0042", &site.path("forged.cose"));
    site.wait(
        |s| s.agent_log().contains("refused a control order"),
        "forged order refused",
    );
    assert!(
        site.agent_log().contains("not a valid signed order"),
        "{}",
        site.agent_log()
    );

    // Expired: signed by the platform, valid until an hour ago.
    let platform = kouan_agent::keys::SigningKey::load(&site.platform_key).unwrap();
    let mut expired = order.order(now - 7_200_000);
    expired.id = "RW-OLD".into();
    expired.expires = now - 3_600_000;
    std::fs::write(
        site.path("expired.cose"),
        kouan_agent::platform::sign(&expired, &platform).unwrap(),
    )
    .unwrap();
    site.publish_as_platform("kouan/v1/orders/RW-OLD", &site.path("expired.cose"));
    site.wait(
        |s| s.agent_log().contains("order RW-OLD expired"),
        "expired order refused",
    );

    // A genuine order, then a replay of an older issue of it.
    let current = order.order(now);
    std::fs::write(
        site.path("current.cose"),
        kouan_agent::platform::sign(&current, &platform).unwrap(),
    )
    .unwrap();
    site.publish_as_platform("kouan/v1/orders/RW-2026-0042", &site.path("current.cose"));
    site.wait(
        |s| s.agent_log().contains("control order active"),
        "genuine order",
    );
    let older = order.order(now - 60_000);
    std::fs::write(
        site.path("older.cose"),
        kouan_agent::platform::sign(&older, &platform).unwrap(),
    )
    .unwrap();
    site.publish_as_platform("kouan/v1/orders/RW-2026-0042", &site.path("older.cose"));
    site.wait(
        |s| s.agent_log().contains("is a replay"),
        "replayed order refused",
    );

    // Revoked with a later issue: the matching scan raises nothing.
    let mut revoked = order.order(now + 1000);
    revoked.revoked = true;
    std::fs::write(
        site.path("revoked.cose"),
        kouan_agent::platform::sign(&revoked, &platform).unwrap(),
    )
    .unwrap();
    site.publish_as_platform("kouan/v1/orders/RW-2026-0042", &site.path("revoked.cose"));
    site.wait(
        |s| s.agent_log().contains("control order revoked"),
        "revocation",
    );
    site.scanner.send(b"]C1010952123454321310\x31\x32A\r");
    site.wait(|s| s.agent_log().contains("scan stored"), "scan stored");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!site.agent_log().contains("ALERT"), "{}", site.agent_log());
    assert!(site.alerts(&["--all"]).contains("no alerts"));
}

fn toml_order(text: &str) -> kouan_agent::rapid::order::OrderFile {
    toml::from_str(text).unwrap()
}
