//! The MQTT test harness against the real tools: a mosquitto broker with
//! TLS, client certificates and the DESIGN.md ACL, the mosquitto clients,
//! and the fault-injecting proxy.
//!
//! Waits are bounded only so that a broken environment cannot hang the run;
//! no test depends on how fast anything is. Where a test shows that a
//! message was *not* delivered, it publishes an allowed marker once the
//! broker has acknowledged the first: mosquitto routes a publish before
//! acknowledging it and delivers to each subscriber in order, so once the
//! marker arrives the forbidden message would have arrived before it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use kouan_tests::broker::{Broker, BrokerOptions, PLAIN_PASSWORD, find_tool};
use kouan_tests::pki::{AGENT, CertFiles, OTHER_AGENT, PLATFORM, Pki};
use kouan_tests::proxy::Proxy;

/// Upper bound for anything a test waits for. Generous on purpose.
const WAIT: Duration = Duration::from_secs(60);

/// How a mosquitto client proves who it is.
enum Login<'a> {
    /// A client certificate on the TLS listener.
    Cert(&'a CertFiles),
    /// TLS with the CA only, no client certificate.
    NoCert,
    /// Username and password on the plain-TCP listener.
    Password(&'a str, &'a str),
}

/// Command-line options that connect a mosquitto client to `port`.
fn connect_args(ca: &Path, port: u16, login: &Login<'_>) -> Vec<String> {
    // The address, not `localhost`, which may resolve to ::1 first; the
    // broker's certificate names both.
    let mut args = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    let path = |p: &Path| p.display().to_string();
    match login {
        Login::Cert(files) => {
            args.extend(["--cafile".into(), path(ca)]);
            args.extend(["--cert".into(), path(&files.cert)]);
            args.extend(["--key".into(), path(&files.key)]);
        }
        Login::NoCert => args.extend(["--cafile".into(), path(ca)]),
        Login::Password(user, password) => {
            args.extend(["-u".into(), user.to_string()]);
            args.extend(["-P".into(), password.to_string()]);
        }
    }
    args
}

/// Publishes one QoS 1 message with `mosquitto_pub` and waits for it to
/// finish.
fn publish(ca: &Path, port: u16, login: &Login<'_>, topic: &str, payload: &str) -> Output {
    let mut child = Command::new(find_tool("mosquitto_pub"))
        .args(connect_args(ca, port, login))
        .args(["-q", "1", "-t", topic, "-m", payload])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");

    let deadline = Instant::now() + WAIT;
    while child
        .try_wait()
        .expect("mosquitto_pub can be waited for")
        .is_none()
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mosquitto_pub on {topic} did not finish within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("mosquitto_pub output")
}

/// Publishes and requires success.
fn publish_ok(ca: &Path, port: u16, files: &CertFiles, topic: &str, payload: &str) {
    let out = publish(ca, port, &Login::Cert(files), topic, payload);
    assert!(
        out.status.success(),
        "mosquitto_pub on {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `mosquitto_sub -d -v`: debug lines (CONNACK, SUBACK) and the
/// received `topic payload` lines, from stdout and stderr in one stream.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Subscriber {
    /// Subscribes to `topics` at QoS 1 and waits for the broker's SUBACK,
    /// so that what is published afterwards is routed to it.
    fn start(ca: &Path, port: u16, login: &Login<'_>, topics: &[&str]) -> Subscriber {
        // mosquitto_sub flushes stdout after each message but not after its
        // debug lines, so on a pipe the SUBACK line would wait for the
        // first message; coreutils' stdbuf makes stdout line-buffered.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(find_tool("mosquitto_sub"))
            .args(connect_args(ca, port, login))
            .args(["-d", "-v", "-q", "1"])
            .args(topics.iter().flat_map(|topic| ["-t", topic]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stdbuf (coreutils) runs mosquitto_sub");

        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let tx_err = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx_err.send(format!("stderr: {line}"));
            }
        });

        let mut subscriber = Subscriber {
            child,
            lines,
            seen: Vec::new(),
        };
        subscriber.wait_for(|line| line.contains("received SUBACK"));
        subscriber
    }

    /// Waits for a line matching `wanted` and returns it; panics with every
    /// line seen so far if none comes.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("mosquitto_sub: awaited line not seen; got {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("mosquitto_sub ended; it printed {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the message line `topic payload`.
    fn expect_message(&mut self, topic: &str, payload: &str) {
        let wanted = format!("{topic} {payload}");
        self.wait_for(|line| line == wanted);
    }

    /// Whether any line seen so far contains `text`.
    fn saw(&self, text: &str) -> bool {
        self.seen.iter().any(|line| line.contains(text))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the broker's log contains `text`.
fn wait_for_log(broker: &Broker, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !broker.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the broker log never said {text:?}:\n{}",
            broker.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// What agent gy-air-01 may publish: records of its instrument `x`.
const OWN_REC: &str = "kouan/v1/gy-air-01/rec/x";
/// What it must not: records in the name of agent gy-rail-01.
const FORGED_REC: &str = "kouan/v1/gy-rail-01/rec/x";

fn start_broker(dir: &Path) -> Broker {
    Broker::start(dir, &BrokerOptions::default())
}

/// Publishes as `user`, with its certificate, on the TLS listener.
fn publish_as(broker: &Broker, user: &str, topic: &str, payload: &str) {
    let files = broker.client(user);
    publish_ok(broker.ca(), broker.port(), &files, topic, payload);
}

/// The platform's feed of everything under `kouan/v1/`, through `port`.
fn platform_feed(broker: &Broker, port: u16) -> Subscriber {
    let login = Login::Cert(&broker.client(PLATFORM));
    Subscriber::start(broker.ca(), port, &login, &["kouan/v1/#"])
}

#[test]
fn platform_receives_what_an_agent_publishes_on_its_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let mut feed = platform_feed(&broker, broker.port());

    publish_as(&broker, AGENT, OWN_REC, "reading-1");

    feed.expect_message(OWN_REC, "reading-1");
    // The certificate's CN became the username.
    assert!(broker.log().contains("u'gy-air-01'"), "{}", broker.log());
}

#[test]
fn acl_keeps_an_agent_out_of_another_agents_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let mut feed = platform_feed(&broker, broker.port());

    // Over MQTT 3.1.1 the broker acknowledges a publish that its ACL
    // denies, so mosquitto_pub succeeds: a PUBACK is not delivery.
    publish_as(&broker, AGENT, FORGED_REC, "forged");
    publish_as(&broker, AGENT, OWN_REC, "marker");

    feed.expect_message(OWN_REC, "marker");
    assert!(
        !feed.saw("forged"),
        "a forged record went through: {:#?}",
        feed.seen
    );
}

#[test]
fn acl_keeps_an_agent_from_reading_another_agents_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let neighbour = Login::Cert(&broker.client(OTHER_AGENT));

    // mosquitto 2.0 grants the subscription and filters on delivery; the
    // orders topic, which every agent may read, carries the marker.
    let topics = ["kouan/v1/gy-air-01/rec/#", "kouan/v1/orders"];
    let mut spy = Subscriber::start(broker.ca(), broker.port(), &neighbour, &topics);
    publish_as(&broker, AGENT, OWN_REC, "secret");
    publish_as(&broker, PLATFORM, "kouan/v1/orders", "marker");

    spy.expect_message("kouan/v1/orders", "marker");
    assert!(
        !spy.saw("secret"),
        "a neighbour read the records: {:#?}",
        spy.seen
    );
}

#[test]
fn client_without_a_trusted_certificate_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let (ca, port) = (broker.ca(), broker.port());
    let mut feed = platform_feed(&broker, port);

    let anonymous = publish(ca, port, &Login::NoCert, OWN_REC, "no-cert");
    assert!(
        !anonymous.status.success(),
        "a client without a certificate published"
    );

    // A certificate with the right CN from another CA is no better.
    let foreign_dir = tempfile::tempdir().unwrap();
    let impostor = Pki::new(foreign_dir.path()).client(AGENT);
    let foreign = publish(ca, port, &Login::Cert(&impostor), OWN_REC, "foreign");
    assert!(!foreign.status.success(), "a foreign certificate published");

    publish_as(&broker, AGENT, OWN_REC, "marker");
    feed.expect_message(OWN_REC, "marker");
    assert!(
        !feed.saw("no-cert") && !feed.saw("foreign"),
        "{:#?}",
        feed.seen
    );
}

#[test]
fn broker_survives_kill_and_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let port = broker.port();

    broker.kill();
    assert!(broker.pid().is_none());
    assert!(
        TcpStream::connect(broker.addr()).is_err(),
        "the port still accepts connections after kill"
    );

    broker.restart();
    assert_eq!(broker.port(), port);
    let mut feed = platform_feed(&broker, port);
    publish_as(&broker, AGENT, OWN_REC, "after-restart");
    feed.expect_message(OWN_REC, "after-restart");
}

/// The scheduler state of process `pid` (`S` sleeping, `T` stopped, ...).
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The state follows the command name, which is in parentheses.
    let after_name = stat.rsplit_once(')').expect("a stat line has a name").1;
    after_name
        .trim_start()
        .chars()
        .next()
        .expect("a stat line has a state")
}

/// Waits until process `pid` is, or is not, stopped by a signal.
fn wait_stopped(pid: u32, stopped: bool) {
    let deadline = Instant::now() + WAIT;
    while (process_state(pid) == 'T') != stopped {
        assert!(
            Instant::now() < deadline,
            "process {pid} never became stopped={stopped}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn freeze_thaw_and_stop_act_on_the_broker_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let pid = broker.pid().expect("a running broker has a pid");

    broker.freeze();
    wait_stopped(pid, true);
    broker.thaw();
    wait_stopped(pid, false);
    let mut feed = platform_feed(&broker, broker.port());
    publish_as(&broker, AGENT, OWN_REC, "thawed");
    feed.expect_message(OWN_REC, "thawed");

    // A frozen broker still stops cleanly: it is thawed to see SIGTERM.
    broker.freeze();
    wait_stopped(pid, true);
    broker.stop();
    assert!(broker.pid().is_none());
    assert!(broker.log().contains("terminating"), "{}", broker.log());
}

#[test]
fn proxy_cut_drops_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let proxy = Proxy::start(broker.addr());

    // TLS passes through the proxy: its address is also 127.0.0.1.
    let mut feed = platform_feed(&broker, proxy.port());
    publish_as(&broker, AGENT, OWN_REC, "before");
    feed.expect_message(OWN_REC, "before");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.open_connections(), 1);

    proxy.cut();
    assert_eq!(proxy.open_connections(), 0);

    // Both ends see the connection go: mosquitto_sub exits, and the broker
    // logs the disconnect.
    feed.wait_for(|line| line.contains("The connection was lost"));
    wait_for_log(&broker, "Client platform closed its connection");

    // New connections are forwarded as before.
    let mut feed = platform_feed(&broker, proxy.port());
    publish_as(&broker, AGENT, OWN_REC, "after");
    feed.expect_message(OWN_REC, "after");
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn plain_listener_authenticates_by_password_under_the_same_acl() {
    let dir = tempfile::tempdir().unwrap();
    let options = BrokerOptions {
        plain_listener: true,
        ..BrokerOptions::default()
    };
    let broker = Broker::start(dir.path(), &options);
    let plain = broker.plain_port().expect("a plain listener was asked for");
    let ca = broker.ca();
    let mut feed = platform_feed(&broker, broker.port());

    let wrong = Login::Password(AGENT, "wrong");
    let out = publish(ca, plain, &wrong, OWN_REC, "bad-password");
    assert!(!out.status.success(), "a wrong password published");

    let agent = Login::Password(AGENT, PLAIN_PASSWORD);
    for (topic, payload) in [(FORGED_REC, "forged"), (OWN_REC, "plain")] {
        let out = publish(ca, plain, &agent, topic, payload);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    feed.expect_message(OWN_REC, "plain");
    assert!(
        !feed.saw("bad-password") && !feed.saw("forged"),
        "{:#?}",
        feed.seen
    );
}
