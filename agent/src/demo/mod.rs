//! `kouan demo`: the whole pipeline on one machine, with no hardware and
//! no broker to install.
//!
//! The demo builds a monitoring point in a scratch directory and runs it:
//!
//! ```text
//! simulated instruments ──pty──▶ kouan run ──link──▶ embedded broker ──▶ kouan receive
//!  (balance, scanner,            (the real agent,    (rumqttd)           (the reference
//!   ASTM analyzer, node)           as a child)                            platform)
//! ```
//!
//! It generates the agent's and the platform's keys, writes the agent's
//! config, starts the broker, the platform receiver and the agent as
//! child processes of the same binary, waits until the agent reports
//! every instrument attached (over its status socket), then lets the
//! instruments report. Each reading is shown once the platform has
//! verified it. A third of the way in, the agent's link to the broker is
//! cut ([`network::Link`]): the instruments keep reporting, the agent
//! keeps signing and storing, and the backlog drains when the link comes
//! back. At the end (or on Ctrl-C) the instruments stop, the demo waits
//! for the platform to confirm everything, stops every process, checks
//! the platform's copy of the chain again from its database (signatures,
//! seq continuity, hash links) and prints a summary: readings made,
//! stored, delivered, verified, lost and duplicates. It exits 0 only
//! when nothing was lost and the chain verifies.
//!
//! The sensor node runs the firmware crate's node logic on the host, over
//! a pty like the others ([`simulated`]).

pub mod network;
pub mod simulated;

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::keys::{self, Algorithm, PublicKey, SigningKey};
use crate::record::{self, Kind as RecordKind};
use crate::status::client::{progress_line, record_text};
use crate::status::{Status, TailLine, TailRecord};
use simulated::{Kind, Simulated};

/// The demo agent's node id.
const NODE: &str = "demo-agent";

/// `kouan demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds the instruments report; Ctrl-C ends the demo sooner.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub duration: u64,
    /// Second at which the agent's link to the broker is cut [default: a
    /// third of the duration].
    #[arg(long, value_name = "SECS")]
    pub outage_at: Option<u64>,
    /// Seconds the link stays cut [default: a third of the duration].
    #[arg(long, value_name = "SECS")]
    pub outage_secs: Option<u64>,
    /// Seconds to wait at the end for the platform to confirm everything
    /// before what is missing counts as lost.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub drain_timeout: u64,
    /// Keep the demo's keys, config, stores and logs in DIR (created if
    /// missing) instead of a temporary directory removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Run only the embedded broker on 127.0.0.1:PORT (the demo starts
    /// itself this way).
    #[arg(long, hide = true, value_name = "PORT")]
    pub serve_broker: Option<u16>,
}

/// Runs `kouan demo`; `Ok(false)` when records were lost or did not verify.
pub fn run(args: &DemoArgs) -> anyhow::Result<bool> {
    if let Some(port) = args.serve_broker {
        network::serve_broker(port)?;
        return Ok(true);
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(args))
}

/// A child process, stopped when dropped (the demo failed half-way).
#[derive(Debug)]
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> anyhow::Result<Process> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        // Its own process group: a Ctrl-C at the terminal reaches only the
        // demo, which then stops the children in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.stdin(Stdio::null()).stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Process { name, child, log })
    }

    /// Fails if the process has exited, naming its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "the {} exited ({status}); its log is {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` before killing it.
    async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the {} stopped with {status}; its log is {}",
                        self.name,
                        self.log.display()
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "the {} did not stop within {grace:?}: killed it; its log is {}",
            self.name,
            self.log.display()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What happened on the way, as the platform and the agent reported it.
#[derive(Debug, Default)]
struct Books {
    /// Records the agent stored, as its tail showed them.
    stored: HashMap<u64, TailRecord>,
    /// Readings and scans the platform accepted (verified and stored).
    accepted: BTreeSet<u64>,
    /// Accepted before the tail showed them: printed when it does.
    unshown: BTreeSet<u64>,
    /// Records the platform received again and dropped.
    duplicates: u64,
    /// Records the platform rejected, or conflicts it saw.
    refused: Vec<String>,
}

/// Something the demo reacts to.
#[derive(Debug)]
enum Event {
    /// A line of `kouan receive`.
    Platform(String),
    /// A record of `kouan tail`.
    Stored(TailLine),
}

async fn demo(args: &DemoArgs) -> anyhow::Result<bool> {
    let third = (args.duration / 3).max(1);
    let outage_at = Duration::from_secs(args.outage_at.unwrap_or(third));
    let outage_len = Duration::from_secs(args.outage_secs.unwrap_or(third));
    let duration = Duration::from_secs(args.duration);

    let (dir, _scratch) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("kouan-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            (scratch.path().to_owned(), Some(scratch))
        }
    };
    let exe = std::env::current_exe().context("finding the kouan binary")?;

    println!("kouan demo: a monitoring point on this machine, no hardware, no broker to install");
    println!("  files        {}", dir.display());
    let agent_key = make_keys(&dir)?;

    let broker_port = network::free_port()?;
    let mut broker_cmd = Command::new(&exe);
    broker_cmd.args(["demo", "--serve-broker", &broker_port.to_string()]);
    broker_cmd.stdout(Stdio::null());
    let mut broker = Process::spawn("embedded broker", broker_cmd, dir.join("broker.log"))?;
    wait_for_port(&mut broker, broker_port).await?;
    let link = network::Link::start(broker_port).await?;
    println!("  broker       embedded MQTT broker (rumqttd) on 127.0.0.1:{broker_port}");

    let ports = dir.join("dev");
    std::fs::create_dir_all(&ports).with_context(|| format!("creating {}", ports.display()))?;
    let mut instruments = Kind::ALL
        .iter()
        .map(|kind| Simulated::create(*kind, &ports))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = write_config(&dir, link.port, &instruments)?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut platform = start_platform(&exe, &dir, broker_port, events_tx.clone())?;
    println!("  platform     `kouan receive`: verifies each record, stores it, acknowledges it");
    let mut agent_cmd = Command::new(&exe);
    agent_cmd.arg("run").arg("--config").arg(&config);
    agent_cmd.stdout(Stdio::null());
    let mut agent = Process::spawn("agent", agent_cmd, dir.join("agent.log"))?;
    println!(
        "  agent        `kouan run --config {}`: signs, stores, forwards",
        config.display()
    );
    let socket = dir.join("agent.sock");
    wait_until_attached(&mut agent, &socket, instruments.len()).await?;
    for sim in &instruments {
        println!(
            "  instrument   {:<11} {} on {}",
            sim.kind.id(),
            sim.kind.describe(),
            sim.link.display()
        );
    }
    println!(
        "  timeline     {} s of readings; the agent's link to the broker is cut from {} s to {} s",
        duration.as_secs(),
        outage_at.as_secs(),
        (outage_at + outage_len).as_secs()
    );
    println!("  status       kouan status --socket {}", socket.display());
    println!();

    follow_tail(&socket, events_tx).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads = instruments
        .iter_mut()
        .map(|sim| sim.start(stop.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut books = Books::default();
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut outage = Outage::default();
    let mut interrupted = false;

    // The instruments report; the link goes down and comes back.
    while started.elapsed() < duration {
        tokio::select! {
            _ = interrupt.recv() => { interrupted = true; break }
            _ = terminate.recv() => { interrupted = true; break }
            Some(event) = events.recv() => books.on(event, link.is_cut()),
            _ = tick.tick() => {
                agent.check_running()?;
                outage.step(started.elapsed(), outage_at, outage_len, &link, &socket, &books).await;
            }
        }
    }
    if interrupted {
        println!("\nstopping (Ctrl-C): the instruments stop, the backlog is delivered");
    } else {
        println!(
            "\n{} s are up: the instruments stop, the backlog is delivered",
            duration.as_secs()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    if link.is_cut() {
        link.set_cut(false);
        println!("--- link restored");
    }
    let made: Vec<(Kind, u64)> = instruments
        .iter()
        .map(|sim| (sim.kind, sim.made.load(Ordering::Relaxed)))
        .collect();
    let made_total: u64 = made.iter().map(|(_, n)| n).sum();

    // Wait until the platform has every reading, or the drain times out.
    let drain_until = Instant::now() + Duration::from_secs(args.drain_timeout);
    while (books.accepted.len() as u64) < made_total && Instant::now() < drain_until {
        tokio::select! {
            _ = interrupt.recv() => {
                println!("second Ctrl-C: stopping now; what is not confirmed counts as lost");
                break;
            }
            Some(event) = events.recv() => books.on(event, false),
            _ = tick.tick() => {
                agent.check_running()?;
                outage.step(started.elapsed(), Duration::MAX, outage_len, &link, &socket, &books).await;
            }
        }
    }
    let status = crate::status::fetch(&socket).await.ok();

    // Stop in order: the agent (its last records go out), then the platform.
    let mut stops = Vec::new();
    stops.push(agent.stop(Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stops.push(platform.stop(Duration::from_secs(20)).await);
    while let Ok(event) = events.try_recv() {
        books.on(event, false);
    }
    stops.push(broker.stop(Duration::from_secs(5)).await.or(Ok(())));
    for stopped in stops {
        if let Err(error) = stopped {
            eprintln!("kouan demo: {}", crate::error_text(&error));
        }
    }

    let check = check_platform(&dir.join("platform.db"), &agent_key)?;
    let ok = summary(&made, status.as_ref(), &books, &check, &outage);
    if let Some(scratch) = _scratch {
        drop(scratch);
    } else {
        println!("the demo's files stay in {}", dir.display());
    }
    Ok(ok)
}

/// Generates the agent's and the platform's keys; returns the agent's
/// public key.
fn make_keys(dir: &Path) -> anyhow::Result<PublicKey> {
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;
    let mut public = Vec::new();
    for (private, public_file) in [
        (dir.join("agent.key"), keys_dir.join(format!("{NODE}.pub"))),
        (dir.join("platform.key"), dir.join("platform.pub")),
    ] {
        let pkcs8 = keys::generate(Algorithm::Ed25519)?;
        keys::write_private_key(&private, &pkcs8)?;
        let key = SigningKey::from_pkcs8(&pkcs8)
            .map_err(|reason| anyhow::anyhow!("reading back a new key: {reason}"))?;
        std::fs::write(&public_file, key.public_key().spki_pem())
            .with_context(|| format!("writing {}", public_file.display()))?;
        public.push(key.public_key().clone());
    }
    Ok(public.remove(0))
}

fn write_config(dir: &Path, link_port: u16, instruments: &[Simulated]) -> anyhow::Result<PathBuf> {
    // Short timers so that an outage of seconds shows: the agent notices
    // a dead link within a keep-alive and resends unconfirmed records
    // after ack_timeout_secs.
    let mut text = format!(
        "# Written by `kouan demo`; paths are relative to this file.\n\
         [agent]\nnode = \"{NODE}\"\nsite = \"demo-point\"\n\n\
         [keys]\nsigning = \"agent.key\"\n\n\
         [store]\npath = \"agent.db\"\ncheckpoint_every = 100\n\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = {link_port}\nplain_tcp = true\n\
         platform_key = \"platform.pub\"\nkeep_alive_secs = 5\nack_timeout_secs = 10\n\n\
         [status]\nsocket = \"agent.sock\"\n\n"
    );
    for sim in instruments {
        text += &sim.kind.config(&sim.link);
        text += "\n";
    }
    let path = dir.join("kouan.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn wait_for_port(broker: &mut Process, port: u16) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        broker.check_running()?;
        if Instant::now() > until {
            bail!("the embedded broker did not listen on 127.0.0.1:{port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `kouan receive`; each line it prints becomes an [`Event`].
fn start_platform(
    exe: &Path,
    dir: &Path,
    broker_port: u16,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<Process> {
    let mut command = Command::new(exe);
    command
        .args(["receive", "--plain-tcp", "--host", "127.0.0.1"])
        .args([
            "--port",
            &broker_port.to_string(),
            "--client-id",
            "demo-platform",
        ])
        .arg("--keys-dir")
        .arg(dir.join("keys"))
        .arg("--platform-key")
        .arg(dir.join("platform.key"))
        .arg("--store")
        .arg(dir.join("platform.db"))
        .stdout(Stdio::piped());
    let mut process = Process::spawn("platform receiver", command, dir.join("platform.log"))?;
    let stdout = process
        .child
        .stdout
        .take()
        .context("the receiver's output")?;
    std::thread::Builder::new()
        .name("demo-platform".into())
        .spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if events.send(Event::Platform(line)).is_err() {
                    break;
                }
            }
        })
        .context("starting the receiver's reader")?;
    Ok(process)
}

/// Waits until the agent answers on its status socket with every
/// instrument attached: readings sent before would find no reader.
async fn wait_until_attached(
    agent: &mut Process,
    socket: &Path,
    instruments: usize,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        agent.check_running()?;
        if let Ok(status) = crate::status::fetch(socket).await {
            let attached = status.instruments.iter().filter(|i| i.attached).count();
            if attached == instruments {
                return Ok(());
            }
        }
        if Instant::now() > until {
            bail!(
                "the agent did not report its {instruments} instruments attached within 30 s; \
                 its log is {}:\n{}",
                agent.log.display(),
                log_tail(&agent.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes to the agent's tail; each record becomes an [`Event`].
async fn follow_tail(socket: &Path, events: mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
    let mut lines = crate::status::connect(socket, "tail").await?;
    // The first line says the subscription is in place.
    lines
        .next_line()
        .await
        .context("subscribing to the agent's tail")?
        .context("the agent closed its tail")?;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(record) = serde_json::from_str::<TailLine>(&line)
                && events.send(Event::Stored(record)).is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

impl Books {
    fn on(&mut self, event: Event, link_cut: bool) {
        match event {
            Event::Stored(TailLine::Record(record)) => {
                let seq = record.seq;
                let shown = matches!(record.kind.as_str(), "reading" | "scan");
                if shown && self.unshown.remove(&seq) {
                    println!("verified  {}", record_text(&record));
                } else if shown && link_cut {
                    println!("stored    {}   (held: link down)", record_text(&record));
                }
                self.stored.insert(seq, record);
            }
            Event::Stored(TailLine::Skipped { .. }) => {}
            Event::Platform(line) => self.on_platform(&line),
        }
    }

    fn on_platform(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["accepted", _, seq, kind] if matches!(*kind, "reading" | "scan") => {
                let Ok(seq) = seq.parse::<u64>() else { return };
                if !self.accepted.insert(seq) {
                    return;
                }
                match self.stored.get(&seq) {
                    Some(record) => println!("verified  {}", record_text(record)),
                    None => {
                        self.unshown.insert(seq);
                    }
                }
            }
            ["duplicate", ..] => self.duplicates += 1,
            ["rejected", ..] | ["conflict", ..] => {
                println!("PLATFORM  {line}");
                self.refused.push(line.to_owned());
            }
            _ => {}
        }
    }
}

/// The outage: when it began and ended, and what it held back.
#[derive(Debug, Default)]
struct Outage {
    began: Option<Instant>,
    ended: Option<Instant>,
    drained: Option<Duration>,
    /// The most records the agent held during the outage.
    held: u64,
    last_report: Option<Instant>,
}

impl Outage {
    /// Cuts or restores the link on time, and reports the backlog.
    async fn step(
        &mut self,
        elapsed: Duration,
        at: Duration,
        len: Duration,
        link: &network::Link,
        socket: &Path,
        books: &Books,
    ) {
        if self.began.is_none() && elapsed >= at {
            link.set_cut(true);
            self.began = Some(Instant::now());
            println!(
                "--- outage: the agent's link to the broker is cut for {} s; \
                 the instruments keep reporting, the agent keeps signing and storing",
                len.as_secs()
            );
        }
        if let Some(began) = self.began
            && self.ended.is_none()
            && began.elapsed() >= len
        {
            link.set_cut(false);
            self.ended = Some(Instant::now());
            println!("--- link restored: the backlog drains, oldest first");
        }
        let reporting = self.began.is_some() && self.drained.is_none();
        let due = self
            .last_report
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(2));
        if !reporting || !due {
            return;
        }
        self.last_report = Some(Instant::now());
        let Ok(status) = crate::status::fetch(socket).await else {
            return;
        };
        self.held = self.held.max(status.backlog.records);
        let unconfirmed = books.stored.keys().any(|seq| {
            !books.accepted.contains(seq)
                && matches!(books.stored[seq].kind.as_str(), "reading" | "scan")
        });
        if let Some(ended) = self.ended
            && !unconfirmed
        {
            let took = ended.elapsed();
            self.drained = Some(took);
            println!(
                "--- backlog drained: every reading held during the outage is verified \
                 ({:.1} s after the link came back)",
                took.as_secs_f64()
            );
            return;
        }
        println!("          {}", progress_line(&status));
    }
}

/// The platform's copy, checked again from its database.
#[derive(Debug, Default)]
struct PlatformCheck {
    report: crate::verify::Report,
    /// Readings and scans per instrument.
    per_instrument: HashMap<String, u64>,
}

fn check_platform(db: &Path, key: &PublicKey) -> anyhow::Result<PlatformCheck> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags)
        .with_context(|| format!("opening the platform's database {}", db.display()))?;
    let mut query = conn
        .prepare("SELECT bytes FROM received WHERE node = ?1 ORDER BY stream, seq")
        .with_context(|| format!("reading {}", db.display()))?;
    let rows = query
        .query_map([NODE], |row| row.get::<_, Vec<u8>>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading {}", db.display()))?;
    let data = rows.concat();
    let mut check = PlatformCheck {
        report: crate::verify::verify_sequence(&data, std::slice::from_ref(key)),
        per_instrument: HashMap::new(),
    };
    for bytes in &rows {
        if let Ok(verified) = record::verify(bytes, std::slice::from_ref(key))
            && matches!(
                verified.payload.kind,
                RecordKind::Reading | RecordKind::Scan
            )
        {
            *check
                .per_instrument
                .entry(verified.payload.instrument)
                .or_default() += 1;
        }
    }
    Ok(check)
}

/// Prints the summary; true when nothing was lost and everything verifies.
fn summary(
    made: &[(Kind, u64)],
    status: Option<&Status>,
    books: &Books,
    check: &PlatformCheck,
    outage: &Outage,
) -> bool {
    let per = |count: &dyn Fn(Kind) -> u64| {
        made.iter()
            .map(|(kind, _)| format!("{} {}", kind.id(), count(*kind)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let made_of = |kind: Kind| made.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n);
    let stored_of = |kind: Kind| {
        status
            .and_then(|s| s.instruments.iter().find(|i| i.id == kind.id()))
            .map_or(0, |i| i.readings)
    };
    let verified_of = |kind: Kind| check.per_instrument.get(kind.id()).copied().unwrap_or(0);
    let made_total: u64 = made.iter().map(|(_, n)| n).sum();
    let stored_total: u64 = Kind::ALL.iter().map(|k| stored_of(*k)).sum();
    let verified_total: u64 = check.per_instrument.values().sum();
    let lost: u64 = Kind::ALL
        .iter()
        .map(|k| made_of(*k).saturating_sub(verified_of(*k)))
        .sum();
    let report = &check.report;
    let chain = match (report.first, report.last) {
        (Some(first), Some(last)) => format!("seq {first} to {last}"),
        _ => "no records".into(),
    };

    println!();
    println!("summary");
    println!("  readings made    {made_total:>6}   ({})", per(&made_of));
    match status {
        Some(_) => println!(
            "  stored           {stored_total:>6}   signed and durable at the agent before \
             any acknowledgement ({})",
            per(&stored_of)
        ),
        None => println!("  stored                ?   the agent's status was not available"),
    }
    println!(
        "  delivered        {:>6}   accepted by the platform",
        books.accepted.len()
    );
    println!(
        "  verified         {verified_total:>6}   signature, seq and hash chain checked again \
         from the platform's database ({} records, {chain})",
        report.records
    );
    println!("  lost             {lost:>6}");
    println!(
        "  duplicates       {:>6}   sent again after the outage and dropped by the platform \
         by (stream, seq)",
        books.duplicates
    );
    if let (Some(began), Some(ended)) = (outage.began, outage.ended) {
        let drained = outage
            .drained
            .map_or("not drained while watched".into(), |d| {
                format!("drained {:.1} s after the link came back", d.as_secs_f64())
            });
        println!(
            "  outage           {:>6.0} s {} records held at most, {drained}",
            ended.duration_since(began).as_secs_f64(),
            outage.held
        );
    }
    for problem in &report.problems {
        println!("  PROBLEM          {problem}");
    }
    for refused in &books.refused {
        println!("  PROBLEM          platform: {refused}");
    }
    let ok = lost == 0 && report.ok() && books.refused.is_empty() && made_total > 0;
    if ok {
        println!("ok: every reading was signed, stored, delivered and verified; none lost");
    } else {
        println!("FAILED: see the lines above and the logs in the demo's directory");
    }
    ok
}
