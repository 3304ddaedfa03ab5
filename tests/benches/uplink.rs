//! Benchmark: the MQTT uplink end to end, agent → mosquitto → receiver,
//! next to raw rumqttc QoS 1 publishing through the same broker in the
//! same run.
//!
//! ```sh
//! cargo bench -p kouan-tests --bench uplink
//! ```
//!
//! One mosquitto, started by the test harness the way production runs it
//! (TLS, client certificates, the ACL of DESIGN.md) and with a queue for
//! the platform's persistent session that holds a whole backlog, as
//! docs/platform.md advises, carries everything:
//!
//! 1. **Backlogs.** With no uplink, `kouan debug append` writes a backlog
//!    of 1,000,000 readings and one of 10,000, as an agent cut off from
//!    its broker would. How long that takes is reported.
//! 2. **Three rounds** of: raw rumqttc QoS 1 publishing, 100 in flight, of
//!    payloads as long as a signed reading, from a client holding the
//!    agent's certificate, first with no subscriber (PUBACKs per second),
//!    then to one persistent QoS 1 subscriber holding the platform's
//!    certificate (messages per second it receives: what this broker
//!    delivers on this machine); then **kouan sustained**, `kouan run
//!    --simulate-readings` into `kouan receive`, readings per second from
//!    the first accepted to the last.
//! 3. **Drains.** `kouan receive`, then `kouan run` on each backlog with
//!    the uplink on, until the receiver accepted every record and the
//!    agent's store is empty, with VmRSS of every process sampled.
//! 4. **The agent alone.** A copy of the largest backlog drained with
//!    `delivery = "broker"` to a raw subscriber instead of the receiver:
//!    the uplink without the platform's per-record work.
//!
//! To say what limits each rate, the CPU time of every process in every
//! phase is reported, and so are the per-record signing and verification
//! rates on one core and the MQTT connections each kouan process made. The release build of `kouan` runs, built first if
//! it is missing or older than its sources. The figures are printed and
//! written into the generated block `uplink` of `docs/performance.md`; the
//! prose there is written by hand. This is not a test: nothing fails on a
//! time, and the goal is reported, not enforced.

// Only `Mutex::lock`: a poisoned lock means a reader thread panicked.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

use kouan_agent::config::TlsSection;
use kouan_agent::keys::SigningKey;
use kouan_agent::record;
use kouan_agent::store::Store;
use kouan_tests::bench::{
    command_output, grouped, load_average, machine_facts, median, read_text, spread, tail,
    workspace_root, write_figures,
};
use kouan_tests::broker::{Broker, BrokerOptions, find_tool};
use kouan_tests::pki::{AGENT, PLATFORM};
use kouan_tests::{keygen, kouan, kouan_bin, path_str};

/// Rounds of the raw and sustained measurements; the table gives their median.
const ROUNDS: usize = 3;

/// Messages per raw run: several seconds at the rates seen here.
const RAW_MESSAGES: u64 = 200_000;

/// Readings per sustained kouan run.
const SUSTAINED_READINGS: u64 = 100_000;

/// Backlogs drained: the issue's million, and a small one to compare with.
const BACKLOGS: [u64; 2] = [10_000, 1_000_000];

/// Appends in flight while a backlog is written: `kouan debug append`'s
/// default, as in the store benchmark.
const FILL_CONCURRENCY: usize = 64;

/// The raw publisher's window: the agent's default `inflight`.
const INFLIGHT: u16 = 100;

/// Topic of the raw messages, in the agent's subtree, which the ACL lets
/// the agent's certificate write.
const RAW_TOPIC: &str = "kouan/v1/gy-air-01/rec/bench";

/// What the receiver subscribes to for records; the raw subscriber too.
const RECORD_FILTER: &str = "kouan/v1/+/rec/#";

/// QoS 1 messages mosquitto queues for the platform's session: more than
/// the largest backlog, so that the broker drops nothing while the
/// receiver falls behind (docs/platform.md).
const PLATFORM_QUEUE: u32 = 2_000_000;

/// How often VmRSS is sampled during a drain.
const RSS_EVERY: Duration = Duration::from_millis(500);

/// How long a phase may go without progress before the benchmark gives up:
/// it keeps a broken run from hanging, and measures nothing.
const STALL: Duration = Duration::from_secs(120);

/// The uplink issue's goal: kouan at least this share of raw delivery.
const GOAL: f64 = 0.7;

fn main() -> anyhow::Result<()> {
    let load_before = load_average();
    // Built (with --release, as this is the bench profile) if stale.
    let bin = kouan_bin();
    eprintln!("kouan binary: {}", bin.display());
    // The raw clients' runtime: two workers, one per core, as the agent's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let site = Site::new()?;
    eprintln!("scratch files in {}", site.dir.path().display());

    let mut fills = Vec::new();
    for readings in BACKLOGS {
        let store = site.backlog_store(readings);
        eprintln!("writing a backlog of {readings} readings with no uplink");
        let took = site.fill_backlog(&store, readings)?;
        let reader = Store::open_read_only(&store)?;
        let records = reader.stats()?.records;
        eprintln!("  {records} records in {:.1} s", took.as_secs_f64());
        fills.push(Fill {
            readings,
            records,
            took,
        });
    }
    let payload = typical_reading(&site.backlog_store(BACKLOGS[0]))?;
    eprintln!("payload: {} bytes, as a signed reading", payload.len());
    let crypto = crypto_rates(&site, &payload)?;
    eprintln!(
        "one core: {:.0} signatures/s, {:.0} record verifications/s",
        crypto.sign, crypto.verify
    );

    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        eprintln!("round {round} of {ROUNDS}: raw, no subscriber");
        let publish_only = runtime.block_on(raw_run(&site, &payload, false))?;
        eprintln!("  {:.0} PUBACKs/s", publish_only.publish_rate);
        eprintln!("round {round} of {ROUNDS}: raw, one subscriber");
        let delivered = runtime.block_on(raw_run(&site, &payload, true))?;
        eprintln!(
            "  {:.0} delivered/s, {:.0} PUBACKs/s",
            delivered.delivered_rate.unwrap_or(f64::NAN),
            delivered.publish_rate
        );
        eprintln!("round {round} of {ROUNDS}: kouan sustained");
        let kouan = sustained(&site, &runtime, round)?;
        eprintln!("  {:.0} readings/s", kouan.reading_rate);
        rounds.push(Round {
            publish_only,
            delivered,
            kouan,
        });
    }

    // The largest backlog is drained twice: to the receiver, and, from this
    // copy, to a raw subscriber with the agent deleting on PUBACK.
    let largest = BACKLOGS[BACKLOGS.len() - 1];
    let copy = site.dir.path().join("agent/backlog-copy.db");
    let original = site.backlog_store(largest);
    std::fs::copy(&original, &copy)
        .with_context(|| format!("copying {} to {}", original.display(), copy.display()))?;

    let mut drains = Vec::with_capacity(BACKLOGS.len());
    for readings in BACKLOGS {
        eprintln!("draining the backlog of {readings} readings");
        let drain = drain(&site, &runtime, &site.backlog_store(readings), readings)?;
        eprintln!(
            "  {} records in {:.1} s after the first; agent RSS peak {} KiB",
            drain.run.records,
            drain.run.drain_secs(),
            drain.agent_rss.peak
        );
        drains.push(drain);
    }
    eprintln!("draining the backlog of {largest} readings with delivery = \"broker\"");
    let uplink_only = runtime.block_on(broker_drain(&site, &copy))?;
    eprintln!("  {:.0} records/s at a raw subscriber", uplink_only.rate);

    let facts = Facts {
        load_before,
        load_after: load_average(),
        payload_len: payload.len(),
        fills,
        crypto,
    };
    let figures = render(&facts, &rounds, &drains, &uplink_only);
    println!("{figures}");
    match write_figures("uplink", &figures) {
        Ok(path) => eprintln!("figures written to {}", path.display()),
        Err(error) => eprintln!("{error:#}"),
    }
    Ok(())
}

/// The broker, the keys and the scratch directory of one benchmark run.
struct Site {
    dir: tempfile::TempDir,
    broker: Broker,
    agent_key: PathBuf,
    platform_key: PathBuf,
    platform_pub: PathBuf,
    keys_dir: PathBuf,
}

impl Site {
    fn new() -> anyhow::Result<Site> {
        // Under target/, on the repository's own disk, like the store benchmarks.
        let target = workspace_root().join("target");
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("kouan-bench-uplink-")
            .tempdir_in(&target)
            .with_context(|| format!("creating a scratch directory in {}", target.display()))?;
        let [broker_dir, agent_dir, platform_dir, keys_dir] =
            ["broker", "agent", "platform", "agents"].map(|d| dir.path().join(d));
        for d in [&broker_dir, &agent_dir, &platform_dir, &keys_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let options = BrokerOptions {
            max_queued_messages: Some(PLATFORM_QUEUE),
            ..BrokerOptions::default()
        };
        let broker = Broker::start(&broker_dir, &options);
        let (agent_key, agent_pub) = keygen(&agent_dir, "ed25519");
        let (platform_key, platform_pub) = keygen(&platform_dir, "ed25519");
        let registered = keys_dir.join(format!("{AGENT}.pub"));
        std::fs::copy(&agent_pub, &registered)
            .with_context(|| format!("registering the agent's key as {}", registered.display()))?;
        Ok(Site {
            dir,
            broker,
            agent_key,
            platform_key,
            platform_pub,
            keys_dir,
        })
    }

    fn backlog_store(&self, readings: u64) -> PathBuf {
        self.dir.path().join(format!("agent/backlog-{readings}.db"))
    }

    /// A fresh directory for one phase's stores, config and logs.
    fn phase_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes `readings` readings into a new store with the agent's key and
    /// node id through the real writer, the uplink off; returns the time.
    fn fill_backlog(&self, store: &Path, readings: u64) -> anyhow::Result<Duration> {
        let log = store.with_extension("log");
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let start = Instant::now();
        let status = kouan()
            .args(["debug", "append", "--store", path_str(store)])
            .args(["--key", path_str(&self.agent_key), "--node", AGENT])
            .args(["--count", &readings.to_string()])
            .args(["--concurrency", &FILL_CONCURRENCY.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .context("running kouan debug append")?;
        let took = start.elapsed();
        ensure!(
            status.success(),
            "kouan debug append failed ({status}): {}",
            tail(&log)
        );
        Ok(took)
    }

    /// The agent's configuration: production defaults, the uplink to the
    /// broker with TLS, and the store at `store`; `delivery` is the uplink's
    /// `delivery` setting.
    fn agent_config(&self, dir: &Path, store: &Path, delivery: &str) -> anyhow::Result<PathBuf> {
        let config = kouan_tests::agent_config(
            &self.broker,
            self.broker.port(),
            &self.agent_key,
            store,
            &self.platform_pub,
            "",
            &format!("delivery = \"{delivery}\""),
        );
        let path = dir.join("kouan.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// `kouan run` with the config, feeding `readings` synthetic readings.
    fn start_agent(&self, config: &Path, readings: u64, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join("agent.log");
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = kouan()
            .args(["run", "--config", path_str(config)])
            .args(["--simulate-readings", &readings.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting kouan run")?;
        Ok(Proc { child, log })
    }

    /// `kouan receive` with a new database in `dir`; returns once it has
    /// connected, with a thread following its stdout.
    fn start_receiver(&self, dir: &Path) -> anyhow::Result<Receiver> {
        let log = dir.join("receiver.log");
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = self
            .broker
            .receiver(&self.keys_dir, &self.platform_key, &dir.join("received.db"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting kouan receive")?;
        let stdout = child.stdout.take().context("kouan receive has no stdout")?;
        let progress = Arc::new(Mutex::new(Progress::default()));
        let follower = Arc::clone(&progress);
        std::thread::spawn(move || follow_events(stdout, &follower));
        let mut receiver = Receiver {
            proc: Proc { child, log },
            progress,
        };

        // Records published before its subscription exists would only come
        // back by replay; wait for it, so that a clean run stays clean.
        let start = Instant::now();
        while !read_text(&receiver.proc.log).contains("receiver connected") {
            if let Some(status) = receiver.proc.child.try_wait()? {
                bail!(
                    "kouan receive exited ({status}): {}",
                    tail(&receiver.proc.log)
                );
            }
            ensure!(start.elapsed() < STALL, "kouan receive never connected");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(receiver)
    }
}

/// A kouan process started by this benchmark; killed if still running when
/// dropped, so a failed run leaves nothing behind.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as systemd stops the agent, then waits for the exit.
    fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Receiver {
    proc: Proc,
    progress: Arc<Mutex<Progress>>,
}

impl Receiver {
    fn progress(&self) -> Progress {
        self.progress.lock().unwrap().clone()
    }
}

/// What the receiver reported on stdout for the agent, with the time each
/// line was read.
#[derive(Debug, Clone, Default)]
struct Progress {
    accepted: u64,
    readings: u64,
    first_accepted: Option<Instant>,
    last_accepted: Option<Instant>,
    first_reading: Option<Instant>,
    last_reading: Option<Instant>,
    /// The highest ack watermark the receiver published.
    acked: Option<u64>,
    duplicates: u64,
    replays: u64,
    /// Death messages of the agent (its last will, or its goodbye).
    deaths: u64,
    /// `rejected` and `conflict` lines, which a clean run never has.
    problems: Vec<String>,
}

/// Reads the receiver's event lines (`accepted NODE SEQ KIND`, ...) until
/// it exits.
fn follow_events(stdout: ChildStdout, progress: &Mutex<Progress>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let now = Instant::now();
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut p = progress.lock().unwrap();
        match words.as_slice() {
            ["accepted", node, _seq, kind] if *node == AGENT => {
                p.accepted += 1;
                p.first_accepted.get_or_insert(now);
                p.last_accepted = Some(now);
                if *kind == "reading" {
                    p.readings += 1;
                    p.first_reading.get_or_insert(now);
                    p.last_reading = Some(now);
                }
            }
            ["ack", node, seq] if *node == AGENT => {
                p.acked = p.acked.max(seq.parse().ok());
            }
            ["duplicate", ..] => p.duplicates += 1,
            ["death", node, ..] if *node == AGENT => p.deaths += 1,
            ["replay", ..] => p.replays += 1,
            ["rejected" | "conflict", ..] if p.problems.len() < 10 => p.problems.push(line),
            _ => {}
        }
    }
}

/// When a kouan run was complete: every record of the agent's chain
/// accepted, acknowledged, and gone from the agent's store.
struct Delivered {
    /// Seqs 0 to the chain head: every record the receiver accepted.
    records: u64,
    empty_at: Instant,
}

/// Waits until the receiver accepted at least `readings` readings and
/// every record of the agent's chain, and the agent's store is empty.
fn wait_delivered(
    store: &Path,
    receiver: &Receiver,
    agent: &mut Proc,
    readings: u64,
) -> anyhow::Result<Delivered> {
    let mut reader: Option<Store> = None;
    let mut seen = 0;
    let mut moved = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(status) = agent.child.try_wait()? {
            bail!("the agent exited ({status}): {}", tail(&agent.log));
        }
        let p = receiver.progress();
        if p.accepted != seen {
            (seen, moved) = (p.accepted, Instant::now());
        }
        ensure!(
            moved.elapsed() < STALL,
            "no record accepted for {STALL:?}: {} accepted, {} readings; agent: {}\nreceiver: {}",
            p.accepted,
            p.readings,
            tail(&agent.log),
            tail(&receiver.proc.log)
        );
        if p.readings < readings {
            continue;
        }
        // Opened once the readings are in: by then the agent has made the
        // store, which a sustained run starts without.
        let reader = match &mut reader {
            Some(reader) => reader,
            None => reader.insert(Store::open_read_only(store)?),
        };
        reader.refresh()?;
        let Some(head) = reader.head() else { continue };
        ensure!(
            p.accepted <= head.seq + 1,
            "the receiver accepted {} records, the agent's chain has {}",
            p.accepted,
            head.seq + 1
        );
        let acked = p.acked.is_some_and(|seq| seq >= head.seq);
        if p.accepted == head.seq + 1 && acked && reader.stats()?.records == 0 {
            return Ok(Delivered {
                records: head.seq + 1,
                empty_at: Instant::now(),
            });
        }
    }
}

/// CPU seconds each process spent in a phase, and the phase's wall time.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    wall: f64,
    /// The benchmark's own rumqttc clients (raw), or the agent (kouan).
    client: f64,
    receiver: f64,
    broker: f64,
    /// Messages or records carried in the phase.
    messages: u64,
}

/// One raw rumqttc run.
struct RawRun {
    /// PUBACKs per second at the publisher.
    publish_rate: f64,
    /// Messages per second received by the subscriber, first to last.
    delivered_rate: Option<f64>,
    cpu: Cpu,
}

/// Publishes [`RAW_MESSAGES`] copies of `payload` with QoS 1 from the
/// agent's certificate, optionally to a persistent QoS 1 subscriber with
/// the platform's.
async fn raw_run(site: &Site, payload: &[u8], subscribe: bool) -> anyhow::Result<RawRun> {
    reset_broker(site).await?;
    let subscriber = if subscribe {
        let (client, events) = subscribe_platform(site).await?;
        Some((client, tokio::spawn(receive_all(events, RAW_MESSAGES))))
    } else {
        None
    };
    let (client, mut events) = mqtt(site, AGENT, true)?;
    until(&mut events, "the publisher's CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;

    let broker = site.broker.pid().context("the broker is not running")?;
    let (bench_before, broker_before) = (cpu_seconds(std::process::id()), cpu_seconds(broker));
    let acks = tokio::spawn(count_pubacks(events, RAW_MESSAGES));
    let start = Instant::now();
    for _ in 0..RAW_MESSAGES {
        client
            .publish(RAW_TOPIC, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .context("handing a publish to rumqttc")?;
    }
    let (events, last_ack) = acks.await.context("the publisher's event loop")??;
    let publish_rate = RAW_MESSAGES as f64 / (last_ack - start).as_secs_f64();
    let mut delivered_rate = None;
    if let Some((sub_client, receiving)) = subscriber {
        let (sub_events, first, last) =
            receiving.await.context("the subscriber's event loop")??;
        delivered_rate = Some(RAW_MESSAGES as f64 / (last - first).as_secs_f64());
        disconnect(sub_client, sub_events).await?;
    }
    let cpu = Cpu {
        wall: start.elapsed().as_secs_f64(),
        client: cpu_seconds(std::process::id()) - bench_before,
        receiver: 0.0,
        broker: cpu_seconds(broker) - broker_before,
        messages: RAW_MESSAGES,
    };
    disconnect(client, events).await?;
    Ok(RawRun {
        publish_rate,
        delivered_rate,
        cpu,
    })
}

/// Drives the publisher's event loop until `count` PUBACKs; returns it and
/// the time of the last.
async fn count_pubacks(mut events: EventLoop, count: u64) -> anyhow::Result<(EventLoop, Instant)> {
    let mut acks = 0;
    loop {
        let event = poll(&mut events, "PUBACKs").await?;
        if let Event::Incoming(Packet::PubAck(_)) = event {
            acks += 1;
            if acks == count {
                return Ok((events, Instant::now()));
            }
        }
    }
}

/// Drives the subscriber's event loop until `count` raw messages came;
/// returns it and the times of the first and the last.
async fn receive_all(
    mut events: EventLoop,
    count: u64,
) -> anyhow::Result<(EventLoop, Instant, Instant)> {
    let mut received = 0;
    let mut first = None;
    loop {
        let event = poll(&mut events, "raw messages at the subscriber").await?;
        if let Event::Incoming(Packet::Publish(publish)) = event
            && publish.topic == RAW_TOPIC
        {
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            received += 1;
            if received == count {
                return Ok((events, first, now));
            }
        }
    }
}

/// Leaves the broker as a fresh one would be for the next phase: no
/// platform session (which would queue the next phase's messages), no
/// retained ack or birth of an earlier agent run.
async fn reset_broker(site: &Site) -> anyhow::Result<()> {
    let cleared = [
        (PLATFORM, format!("kouan/v1/{AGENT}/ack")),
        (AGENT, format!("kouan/v1/{AGENT}/state")),
    ];
    for (user, topic) in cleared {
        // A clean session replaces the persistent one of the same client
        // id and ends with the connection; an empty retained message
        // deletes the retained one.
        let (client, mut events) = mqtt(site, user, true)?;
        until(&mut events, "CONNACK", |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_)))
        })
        .await?;
        client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await?;
        until(&mut events, "PUBACK", |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_)))
        })
        .await?;
        disconnect(client, events).await?;
    }
    Ok(())
}

/// A rumqttc client with `user`'s certificate and the agent's TLS setup.
/// A persistent QoS 1 subscriber to the record topics with the platform's
/// certificate, connected and subscribed.
async fn subscribe_platform(site: &Site) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (client, mut events) = mqtt(site, PLATFORM, false)?;
    until(&mut events, "the subscriber's CONNACK", |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await?;
    client.subscribe(RECORD_FILTER, QoS::AtLeastOnce).await?;
    until(&mut events, "SUBACK", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await?;
    Ok((client, events))
}

fn mqtt(site: &Site, user: &str, clean: bool) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let files = site.broker.client(user);
    let tls = TlsSection {
        ca: site.broker.ca().to_path_buf(),
        cert: files.cert,
        key: files.key,
    };
    let config = kouan_agent::tls::client_config(&tls)?;
    // The broker replaces the client id with the certificate's CN anyway.
    let mut options = MqttOptions::new(user, "localhost", site.broker.port());
    options.set_keep_alive(Duration::from_secs(20));
    options.set_clean_session(clean);
    options.set_inflight(INFLIGHT);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    // As the agent sizes it: room for a window and a half of requests.
    let (client, mut events) = AsyncClient::new(options, usize::from(INFLIGHT) * 2 + 16);
    events.network_options.set_connection_timeout(10);
    Ok((client, events))
}

/// The next event, or an error when there is none within [`STALL`].
async fn poll(events: &mut EventLoop, what: &str) -> anyhow::Result<Event> {
    tokio::time::timeout(STALL, events.poll())
        .await
        .with_context(|| format!("nothing from the broker for {STALL:?} while waiting for {what}"))?
        .with_context(|| format!("MQTT connection failed while waiting for {what}"))
}

async fn until(
    events: &mut EventLoop,
    what: &str,
    done: impl Fn(&Event) -> bool,
) -> anyhow::Result<()> {
    while !done(&poll(events, what).await?) {}
    Ok(())
}

async fn disconnect(client: AsyncClient, mut events: EventLoop) -> anyhow::Result<()> {
    client.disconnect().await?;
    // The broker closes the connection after DISCONNECT; either ends it.
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
}

/// The agent alone: `kouan run` with `delivery = "broker"` on a backlog,
/// which deletes records on PUBACK, to a raw persistent QoS 1 subscriber in
/// place of the receiver; until the store is empty and the subscriber has
/// every record. The rate is taken at the subscriber, first to last, as in
/// the raw runs.
async fn broker_drain(site: &Site, store: &Path) -> anyhow::Result<UplinkOnly> {
    reset_broker(site).await?;
    let dir = site.phase_dir("drain-broker-delivery")?;
    let config = site.agent_config(&dir, store, "broker")?;
    let head = Store::open_read_only(store)?
        .head()
        .context("the backlog store is empty")?;
    // Everything up to the head; the birth goes to the state topic.
    let expected = head.seq + 1;

    let (client, events) = subscribe_platform(site).await?;
    let receiving = tokio::spawn(receive_records(events, expected));

    let broker = site.broker.pid().context("the broker is not running")?;
    let (bench_before, broker_before) = (cpu_seconds(std::process::id()), cpu_seconds(broker));
    let start = Instant::now();
    let mut agent = site.start_agent(&config, 0, &dir)?;
    let (events, first, last) = receiving.await.context("the subscriber's event loop")??;

    // The agent deletes on PUBACK, on its next tick; wait for that too.
    let reader = Store::open_read_only(store)?;
    while reader.stats()?.records > 0 {
        if let Some(status) = agent.child.try_wait()? {
            bail!("the agent exited ({status}): {}", tail(&agent.log));
        }
        ensure!(
            start.elapsed() < STALL * 10,
            "the agent's store never emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = Cpu {
        wall: start.elapsed().as_secs_f64(),
        client: cpu_seconds(agent.pid()),
        receiver: cpu_seconds(std::process::id()) - bench_before,
        broker: cpu_seconds(broker) - broker_before,
        messages: expected,
    };
    let status = agent.stop()?;
    ensure!(status.success(), "kouan run ended with {status}");
    disconnect(client, events).await?;
    Ok(UplinkOnly {
        rate: expected as f64 / (last - first).as_secs_f64(),
        cpu,
    })
}

/// The agent draining to a raw subscriber with `delivery = "broker"`.
struct UplinkOnly {
    /// Records per second received by the subscriber, first to last.
    rate: f64,
    cpu: Cpu,
}

/// Drives a subscriber's event loop until `count` records came from the
/// agent; returns it and the times of the first and the last.
async fn receive_records(
    mut events: EventLoop,
    count: u64,
) -> anyhow::Result<(EventLoop, Instant, Instant)> {
    let prefix = format!("kouan/v1/{AGENT}/rec/");
    let mut received = 0;
    let mut first = None;
    loop {
        let event = poll(&mut events, "the agent's records at the subscriber").await?;
        if let Event::Incoming(Packet::Publish(publish)) = event
            && publish.topic.starts_with(&prefix)
        {
            let now = Instant::now();
            let first = *first.get_or_insert(now);
            received += 1;
            if received == count {
                return Ok((events, first, now));
            }
        }
    }
}

/// One kouan run through the broker to the receiver.
struct KouanRun {
    /// MQTT connections the broker accepted from the agent and from the
    /// receiver during the run (one each when nothing goes wrong).
    connections: [usize; 2],
    /// Death messages of the agent the receiver saw while the agent ran.
    deaths: u64,
    records: u64,
    started: Instant,
    progress: Progress,
    empty_at: Instant,
    cpu: Cpu,
}

impl KouanRun {
    fn startup_secs(&self) -> f64 {
        self.first_accepted()
            .saturating_duration_since(self.started)
            .as_secs_f64()
    }

    fn first_accepted(&self) -> Instant {
        self.progress.first_accepted.unwrap_or(self.started)
    }

    /// First record accepted to the store found empty.
    fn drain_secs(&self) -> f64 {
        (self.empty_at - self.first_accepted()).as_secs_f64()
    }

    /// First record accepted to the last.
    fn transfer_secs(&self) -> f64 {
        let last = self.progress.last_accepted.unwrap_or(self.empty_at);
        (last - self.first_accepted()).as_secs_f64()
    }
}

struct Sustained {
    reading_rate: f64,
    run: KouanRun,
}

/// `kouan run --simulate-readings` into `kouan receive`.
fn sustained(
    site: &Site,
    runtime: &tokio::runtime::Runtime,
    round: usize,
) -> anyhow::Result<Sustained> {
    runtime.block_on(reset_broker(site))?;
    let dir = site.phase_dir(&format!("sustained-{round}"))?;
    let store = dir.join("kouan.db");
    let config = site.agent_config(&dir, &store, "platform")?;
    let readings = SUSTAINED_READINGS;
    let (run, _) = kouan_run(site, &dir, &config, &store, readings, readings, None)?;
    let (Some(first), Some(last)) = (run.progress.first_reading, run.progress.last_reading) else {
        bail!("the receiver reported no readings");
    };
    Ok(Sustained {
        reading_rate: run.progress.readings as f64 / (last - first).as_secs_f64(),
        run,
    })
}

/// Formats one figure of a [`Sample`] for a table cell.
type Cell = fn(&Sample) -> String;

/// Resident memory of one process over a drain, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    /// The first sample after the first record was accepted.
    start: u64,
    /// The largest sample, from the start of the agent.
    peak: u64,
    /// The sample taken when the store was found empty.
    end: u64,
    /// The kernel's own peak (VmHWM), read at the end.
    hwm: u64,
}

struct Drain {
    run: KouanRun,
    agent_rss: Rss,
    receiver_rss: Rss,
    broker_rss: Rss,
    samples: Vec<Sample>,
}

/// `kouan receive`, then `kouan run` on a backlog of `readings` readings
/// with the uplink on.
fn drain(
    site: &Site,
    runtime: &tokio::runtime::Runtime,
    store: &Path,
    readings: u64,
) -> anyhow::Result<Drain> {
    runtime.block_on(reset_broker(site))?;
    let name = store
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("backlog");
    let dir = site.phase_dir(&format!("drain-{name}"))?;
    let config = site.agent_config(&dir, store, "platform")?;
    let (run, samples) = kouan_run(site, &dir, &config, store, 0, readings, Some(RSS_EVERY))?;

    let first = run.first_accepted();
    let summary = |index: usize| -> Rss {
        let last = samples.last();
        Rss {
            start: samples
                .iter()
                .find(|s| s.at >= first)
                .or(last)
                .map_or(0, |s| s.kib[index]),
            peak: samples.iter().map(|s| s.kib[index]).max().unwrap_or(0),
            end: last.map_or(0, |s| s.kib[index]),
            hwm: last.map_or(0, |s| s.hwm[index]),
        }
    };
    Ok(Drain {
        agent_rss: summary(0),
        receiver_rss: summary(1),
        broker_rss: summary(2),
        run,
        samples,
    })
}

/// Memory of the agent, the receiver and the broker at one moment.
struct Sample {
    at: Instant,
    /// Records the receiver had accepted.
    accepted: u64,
    /// VmRSS of the agent, the receiver and the broker, in KiB.
    kib: [u64; 3],
    /// VmHWM of the same, in KiB.
    hwm: [u64; 3],
    /// The agent's RssAnon (heap, stacks) and RssFile (mapped files,
    /// such as SQLite's shared-memory index of the WAL), in KiB.
    agent_anon: u64,
    agent_file: u64,
    /// The agent's threads.
    agent_threads: u64,
    /// Bytes of the store's write-ahead log.
    wal: u64,
}

/// Starts the receiver, then the agent feeding `simulate` readings, waits
/// until at least `readings` readings and everything else is delivered and
/// the store is empty, sampling memory every `sample`, and stops both.
fn kouan_run(
    site: &Site,
    dir: &Path,
    config: &Path,
    store: &Path,
    simulate: u64,
    readings: u64,
    sample: Option<Duration>,
) -> anyhow::Result<(KouanRun, Vec<Sample>)> {
    let broker = site.broker.pid().context("the broker is not running")?;
    let log_before = site.broker.log().len();
    let mut receiver = site.start_receiver(dir)?;
    let (receiver_before, broker_before) = (cpu_seconds(receiver.proc.pid()), cpu_seconds(broker));
    let started = Instant::now();
    let mut agent = site.start_agent(config, simulate, dir)?;
    let pids = [agent.pid(), receiver.proc.pid(), broker];

    let stop = AtomicBool::new(false);
    let mut wal = store.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let (delivered, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            let Some(every) = sample else { return samples };
            loop {
                // The last sample is taken as soon as the store is empty,
                // before the agent is stopped.
                let last = stop.load(Ordering::Relaxed);
                samples.push(Sample {
                    at: Instant::now(),
                    accepted: receiver.progress().accepted,
                    kib: pids.map(|pid| proc_status_kib(pid, "VmRSS")),
                    hwm: pids.map(|pid| proc_status_kib(pid, "VmHWM")),
                    agent_anon: proc_status_kib(pids[0], "RssAnon"),
                    agent_file: proc_status_kib(pids[0], "RssFile"),
                    agent_threads: proc_status_kib(pids[0], "Threads"),
                    wal: std::fs::metadata(&wal).map_or(0, |m| m.len()),
                });
                if last {
                    return samples;
                }
                let taken = Instant::now();
                while taken.elapsed() < every && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let delivered = wait_delivered(store, &receiver, &mut agent, readings);
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        (delivered, samples)
    });
    let delivered = delivered?;
    // Before the agent stops and says goodbye with a death message.
    let deaths = receiver.progress().deaths;
    let cpu = Cpu {
        wall: (delivered.empty_at - started).as_secs_f64(),
        client: cpu_seconds(agent.pid()),
        receiver: cpu_seconds(receiver.proc.pid()) - receiver_before,
        broker: cpu_seconds(broker) - broker_before,
        messages: delivered.records,
    };

    let agent_status = agent.stop()?;
    let receiver_status = receiver.proc.stop()?;
    ensure!(
        agent_status.success() && receiver_status.success(),
        "kouan run ended with {agent_status}, kouan receive with {receiver_status}"
    );
    let progress = receiver.progress();
    let broker_log = site.broker.log();
    let during = broker_log.get(log_before..).unwrap_or_default();
    let connections = [format!("as {AGENT} ("), format!("as {PLATFORM} (p2, c0")]
        .map(|who| during.lines().filter(|l| l.contains(&who)).count());
    ensure!(
        progress.problems.is_empty(),
        "the receiver reported {:?}",
        progress.problems
    );
    for (name, log) in [("agent", &agent.log), ("receiver", &receiver.proc.log)] {
        for line in read_text(log).lines() {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("  {name}: {line}");
            }
        }
    }
    let run = KouanRun {
        connections,
        deaths,
        records: delivered.records,
        started,
        progress,
        empty_at: delivered.empty_at,
        cpu,
    };
    Ok((run, samples))
}

/// A reading record from the middle of `store`, of the mean length of the
/// readings around it: the raw runs' payload.
fn typical_reading(store: &Path) -> anyhow::Result<Vec<u8>> {
    let reader = Store::open_read_only(store)?;
    let head = reader.head().context("the backlog store is empty")?;
    let page = reader.read_from(head.seq / 2, 256)?;
    let readings: Vec<Vec<u8>> = page
        .into_iter()
        .filter(|r| r.kind == "reading")
        .map(|r| r.bytes)
        .collect();
    ensure!(!readings.is_empty(), "no readings in {}", store.display());
    let mean = readings.iter().map(Vec::len).sum::<usize>() / readings.len();
    readings
        .into_iter()
        .min_by_key(|r| r.len().abs_diff(mean))
        .context("no reading to copy")
}

/// A number from `/proc/PID/status`: `VmRSS` and `VmHWM` in KiB, or
/// `Threads`; 0 once the process is gone.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    read_text(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = read_text(Path::new(&format!("/proc/{pid}/stat")));
    // Fields after the parenthesised command name: state is the first,
    // utime the 12th and stime the 13th (proc(5) numbers them 3, 14, 15).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / clock_ticks(),
        _ => 0.0,
    }
}

/// Clock ticks per second of `/proc/PID/stat` (almost always 100).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        command_output("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100.0)
    })
}

struct Round {
    publish_only: RawRun,
    delivered: RawRun,
    kouan: Sustained,
}

struct Fill {
    readings: u64,
    records: u64,
    took: Duration,
}

struct Facts {
    load_before: String,
    load_after: String,
    payload_len: usize,
    fills: Vec<Fill>,
    crypto: Crypto,
}

/// The per-record cryptography of the two ends, on one core.
#[derive(Debug, Clone, Copy)]
struct Crypto {
    /// Ed25519 signatures per second over what a reading's COSE_Sign1 signs.
    sign: f64,
    /// `record::verify` per second, as the receiver checks each record.
    verify: f64,
}

/// How long each of the cryptography rates is measured.
const CRYPTO_TIMED: Duration = Duration::from_secs(2);

/// Signs and verifies as the agent and the receiver do for each record,
/// one after another on one core, with no broker or store involved.
fn crypto_rates(site: &Site, record: &[u8]) -> anyhow::Result<Crypto> {
    let key = SigningKey::load(&site.agent_key)?;
    let keys = [key.public_key().clone()];
    let (sign1, _) = record::parse_unverified(record)?;
    let signed_part = sign1.tbs_data(b"");

    let start = Instant::now();
    let mut signed = 0u64;
    while start.elapsed() < CRYPTO_TIMED {
        key.sign(&signed_part)?;
        signed += 1;
    }
    let sign = signed as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut verified = 0u64;
    while start.elapsed() < CRYPTO_TIMED {
        record::verify(record, &keys)?;
        verified += 1;
    }
    let verify = verified as f64 / start.elapsed().as_secs_f64();
    Ok(Crypto { sign, verify })
}

/// The figures block of `docs/performance.md`.
fn render(facts: &Facts, rounds: &[Round], drains: &[Drain], uplink_only: &UplinkOnly) -> String {
    let column = |f: &dyn Fn(&Round) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    let raw_delivered = column(&|r| r.delivered.delivered_rate.unwrap_or(f64::NAN));
    let raw = median(&raw_delivered);

    let mut out = format!(
        "Generated by `cargo bench -p kouan-tests --bench uplink`; median of {} rounds.\n\n",
        rounds.len()
    );
    out += &machine_facts();
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min): {} before the run, {} after",
        facts.load_before, facts.load_after
    );
    let _ = writeln!(
        out,
        "- broker: {} on 127.0.0.1, TLS with client certificates and the ACL of DESIGN.md, \
         `max_queued_messages {}`",
        mosquitto_version(),
        grouped(f64::from(PLATFORM_QUEUE))
    );
    let _ = writeln!(
        out,
        "- payload: a signed reading of {} bytes (32 bytes of raw instrument data); \
         the raw runs publish {} copies of it each",
        facts.payload_len,
        grouped(RAW_MESSAGES as f64)
    );
    for fill in &facts.fills {
        let _ = writeln!(
            out,
            "- backlog of {} readings ({} records with the genesis and checkpoints), \
             written with no uplink by `kouan debug append --concurrency {FILL_CONCURRENCY}`: \
             {:.0} s ({} readings/s)",
            grouped(fill.readings as f64),
            grouped(fill.records as f64),
            fill.took.as_secs_f64(),
            grouped(fill.readings as f64 / fill.took.as_secs_f64())
        );
    }

    let _ = writeln!(
        out,
        "- one core, no broker or store: {} Ed25519 signatures/s over what a reading's \
         COSE_Sign1 signs (the agent's share), {} `record::verify`/s (the receiver's)",
        grouped(facts.crypto.sign),
        grouped(facts.crypto.verify)
    );

    out += "\n| measurement | messages/s | range over the rounds |\n| --- | ---: | ---: |\n";
    let mut row = |what: &str, values: Vec<f64>| {
        let _ = writeln!(
            out,
            "| {what} | {} | {} |",
            grouped(median(&values)),
            spread(&values)
        );
    };
    row(
        "raw rumqttc QoS 1, no subscriber: PUBACKs at the publisher",
        column(&|r| r.publish_only.publish_rate),
    );
    row(
        "raw rumqttc QoS 1, one QoS 1 subscriber: received by it",
        raw_delivered.clone(),
    );
    row(
        "the same runs: PUBACKs at the publisher",
        column(&|r| r.delivered.publish_rate),
    );
    row(
        &format!(
            "**kouan sustained**: `kouan run --simulate-readings {}` → `kouan receive`, \
             readings accepted",
            grouped(SUSTAINED_READINGS as f64)
        ),
        column(&|r| r.kouan.reading_rate),
    );

    out += "\n| kouan | records | agent start → first accepted | first → last accepted \
            | first accepted → store empty | records/s | ÷ raw delivered | duplicates \
            | connections: agent, receiver | deaths while running |\n\
            | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let sustained_ratio = median(&column(&|r| {
        r.kouan.reading_rate / r.delivered.delivered_rate.unwrap_or(f64::NAN)
    }));
    let mid = rounds.len() / 2;
    let mut sorted: Vec<&Round> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.kouan.reading_rate.total_cmp(&b.kouan.reading_rate));
    if let Some(median_round) = sorted.get(mid) {
        let run = &median_round.kouan.run;
        let _ = writeln!(
            out,
            "| sustained, median round | {} | {:.1} s | {:.1} s | {:.1} s | {} readings/s \
             | {:.2} | {} | {}, {} | {} |",
            grouped(run.records as f64),
            run.startup_secs(),
            run.transfer_secs(),
            run.drain_secs(),
            grouped(median_round.kouan.reading_rate),
            sustained_ratio,
            run.progress.duplicates,
            run.connections[0],
            run.connections[1],
            run.deaths
        );
    }
    let mut verdicts = vec![verdict("sustained", sustained_ratio)];
    for (drain, fill) in drains.iter().zip(&facts.fills) {
        let run = &drain.run;
        let rate = run.records as f64 / run.drain_secs();
        let what = format!("drain of {} readings", grouped(fill.readings as f64));
        let _ = writeln!(
            out,
            "| {what} | {} | {:.1} s | {:.1} s | {:.1} s | {} | {:.2} | {} | {}, {} | {} |",
            grouped(run.records as f64),
            run.startup_secs(),
            run.transfer_secs(),
            run.drain_secs(),
            grouped(rate),
            rate / raw,
            run.progress.duplicates,
            run.connections[0],
            run.connections[1],
            run.deaths
        );
        verdicts.push(verdict(&what, rate / raw));
    }
    let largest = facts.fills.last().map_or(0, |f| f.readings);
    let uplink_rate = uplink_only.rate;
    let _ = writeln!(
        out,
        "| the agent alone: drain of {} readings with `delivery = \"broker\"` to a raw \
         subscriber | {} | – | – | – | {} | {:.2} | – | – | – |",
        grouped(largest as f64),
        grouped(uplink_only.cpu.messages as f64),
        grouped(uplink_rate),
        uplink_rate / raw
    );
    let _ = writeln!(
        out,
        "\nGoal, at least {GOAL:.2} of raw delivery ({} messages/s, the median): {}.",
        grouped(raw),
        verdicts.join("; ")
    );

    out += "\nResident memory during the drains (VmRSS every 500 ms; start: the first \
            sample after the first record was accepted; peak: the largest sample from \
            the agent's start; end: when the store was found empty; VmHWM: the \
            kernel's own peak):\n\n\
            | drain of | agent start | agent peak | agent end | agent VmHWM \
            | receiver peak | mosquitto peak |\n\
            | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (drain, fill) in drains.iter().zip(&facts.fills) {
        let kib = |v: u64| format!("{} KiB", grouped(v as f64));
        let _ = writeln!(
            out,
            "| {} readings | {} | {} | {} | {} | {} | {} |",
            grouped(fill.readings as f64),
            kib(drain.agent_rss.start),
            kib(drain.agent_rss.peak),
            kib(drain.agent_rss.end),
            kib(drain.agent_rss.hwm),
            kib(drain.receiver_rss.peak),
            kib(drain.broker_rss.peak)
        );
    }

    out += "\nThe agent's memory, its store's write-ahead log and the broker's memory as \
            the drains went on \
            (the sample nearest each share of the records accepted):\n\n\
            | drain of | what | 0 % | 25 % | 50 % | 75 % | 100 % |\n\
            | --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
    for (drain, fill) in drains.iter().zip(&facts.fills) {
        let at: Vec<&Sample> = [0, 25, 50, 75, 100]
            .iter()
            .filter_map(|share| {
                let wanted = drain.run.records * share / 100;
                drain
                    .samples
                    .iter()
                    .find(|s| s.accepted >= wanted.max(1))
                    .or(drain.samples.last())
            })
            .collect();
        let rows: [(&str, Cell); 6] = [
            ("agent VmRSS", |s| {
                format!("{} KiB", grouped(s.kib[0] as f64))
            }),
            ("of it RssAnon", |s| {
                format!("{} KiB", grouped(s.agent_anon as f64))
            }),
            ("of it RssFile", |s| {
                format!("{} KiB", grouped(s.agent_file as f64))
            }),
            ("agent threads", |s| s.agent_threads.to_string()),
            ("mosquitto VmRSS", |s| {
                format!("{} KiB", grouped(s.kib[2] as f64))
            }),
            ("store WAL", |s| {
                format!("{:.1} MiB", s.wal as f64 / f64::from(1 << 20))
            }),
        ];
        for (what, cell) in rows {
            let cells: Vec<String> = at.iter().map(|s| cell(s)).collect();
            let _ = writeln!(
                out,
                "| {} readings | {what} | {} |",
                grouped(fill.readings as f64),
                cells.join(" | ")
            );
        }
    }

    out += "\nCPU time per 10,000 messages, and the share of one core over the phase \
            (user + system, from `/proc/PID/stat`; two cores in all):\n\n\
            | phase | wall | raw clients or agent | receiver | mosquitto | all three \
            | two cores ÷ all three |\n\
            | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let mut phases: Vec<(String, Cpu)> = Vec::new();
    if let Some(r) = rounds.get(mid) {
        phases.push(("raw, no subscriber".into(), r.publish_only.cpu));
        phases.push(("raw, one subscriber".into(), r.delivered.cpu));
    }
    if let Some(r) = sorted.get(mid) {
        phases.push(("kouan sustained".into(), r.kouan.run.cpu));
    }
    for (drain, fill) in drains.iter().zip(&facts.fills) {
        let what = format!("drain of {} readings", grouped(fill.readings as f64));
        phases.push((what, drain.run.cpu));
    }
    let what = format!(
        "agent alone, `delivery = \"broker\"`, {} readings (raw subscriber in the \
         receiver column)",
        grouped(largest as f64)
    );
    phases.push((what, uplink_only.cpu));
    for (what, cpu) in phases {
        let cell = |seconds: f64| {
            if seconds <= 0.0 {
                "–".to_owned()
            } else {
                format!(
                    "{:.2} s ({:.0} %)",
                    seconds * 10_000.0 / cpu.messages as f64,
                    100.0 * seconds / cpu.wall
                )
            }
        };
        // If every message cost the same CPU wherever it ran, two cores
        // could carry this many per second: the CPU bound of the phase.
        let all = cpu.client + cpu.receiver + cpu.broker;
        let _ = writeln!(
            out,
            "| {what} | {:.1} s | {} | {} | {} | {} | {} messages/s |",
            cpu.wall,
            cell(cpu.client),
            cell(cpu.receiver),
            cell(cpu.broker),
            cell(all),
            grouped(2.0 * cpu.messages as f64 / all)
        );
    }

    let duplicates: u64 = rounds
        .iter()
        .map(|r| r.kouan.run.progress.duplicates)
        .sum::<u64>()
        + drains
            .iter()
            .map(|d| d.run.progress.duplicates)
            .sum::<u64>();
    let replays: u64 = rounds
        .iter()
        .map(|r| r.kouan.run.progress.replays)
        .sum::<u64>()
        + drains.iter().map(|d| d.run.progress.replays).sum::<u64>();
    let _ = writeln!(
        out,
        "\nEvery kouan run ended with each record of the chain accepted once and the \
         agent's store empty; the receiver dropped {duplicates} duplicates and asked for \
         {replays} replays over all of them."
    );
    out
}

fn verdict(what: &str, ratio: f64) -> String {
    let met = if ratio >= GOAL { "met" } else { "**not met**" };
    format!("{met} for the {what} ({ratio:.2})")
}

fn mosquitto_version() -> String {
    let out = Command::new(find_tool("mosquitto")).arg("-h").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .next()
        .map_or_else(|| "mosquitto".into(), |l| l.trim().to_owned())
}
