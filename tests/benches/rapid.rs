//! Rapid response: time from scan bytes on the port to the local alarm.
//!
//! `cargo bench -p kouan-tests --bench rapid` runs the release `kouan`
//! binary with a serial scanner on a pty twice:
//!
//! - baseline: an empty store, no orders; each scan's time from its bytes
//!   on the port to the agent's `scan stored` log line (the scan read,
//!   parsed, signed and made durable);
//! - loaded: a backlog of 100,000 unsent records (the broker unreachable)
//!   and 100,000 active signed orders, each on its own GTIN; each scan
//!   matches one order, and the time is from its bytes on the port to the
//!   `ALERT: local alarm raised` line (the scan stored, matched, the alert
//!   record signed and stored, the alarm raised).
//!
//! Figures go into the generated block `rapid` of `docs/performance.md`,
//! as the median of 30 scans and as a ratio to the baseline of the same run.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use kouan_agent::clock::unix_ms;
use kouan_agent::keys::{PublicKey, SigningKey};
use kouan_agent::platform;
use kouan_agent::rapid::{Action, Match, Order};
use kouan_tests::bench::{machine_facts, median, write_figures};
use kouan_tests::pty::VirtualPort;
use kouan_tests::{keygen, kouan, path_str};

const ORDERS: u64 = 100_000;
const BACKLOG: u64 = 100_000;
const SCANS: usize = 30;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = dir.path();
    for d in ["empty", "loaded", "platform"] {
        std::fs::create_dir_all(base.join(d))?;
    }
    let (platform_key, platform_pub) = keygen(&base.join("platform"), "ed25519");

    // Baseline: nothing stored, nothing to match.
    let mut empty = Agent::start(&base.join("empty"), &platform_pub)?;
    let baseline = empty.measure("scan stored", plain_scan)?;
    empty.stop();

    // Loaded: a backlog and a hundred thousand orders.
    let loaded_dir = base.join("loaded");
    let (agent_key, _) = keygen(&loaded_dir, "ed25519");
    let started = Instant::now();
    let out = kouan()
        .args([
            "debug",
            "append",
            "--store",
            path_str(&loaded_dir.join("kouan.db")),
        ])
        .args([
            "--key",
            path_str(&agent_key),
            "--count",
            &BACKLOG.to_string(),
        ])
        .stdout(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "debug append: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backlog_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    seed_orders(&loaded_dir.join("kouan.db"), &platform_key, &platform_pub)?;
    let seed_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    // Started means its instrument attached, after the orders were loaded.
    let mut loaded = Agent::start(&loaded_dir, &platform_pub)?;
    let startup_secs = started.elapsed().as_secs_f64();
    let loaded_line = loaded
        .seen("active control orders loaded")
        .context("the loaded agent did not log its orders")?;
    ensure!(
        loaded_line.contains(&format!("orders={ORDERS}")),
        "not all orders were loaded: {loaded_line}"
    );
    let stored = loaded.measure("scan stored", plain_scan)?;
    let alarm = loaded.measure("ALERT: local alarm raised", |n| gtin_scan(n as u64 * 3001))?;
    loaded.stop();

    let (b, s, a) = (median(&baseline), median(&stored), median(&alarm));
    let figures = format!(
        "{}\
         - backlog: {BACKLOG} records made with `kouan debug append` in {backlog_secs:.1} s; \
         {ORDERS} signed orders imported in {seed_secs:.1} s; the loaded agent started \
         (store check, orders re-verified) in {startup_secs:.1} s\n\n\
         | {SCANS} scans, median (min–max) | ms | ratio to baseline |\n\
         | --- | ---: | ---: |\n\
         | baseline: empty agent, scan bytes → scan stored | {b:.2} ({}) | 1.00 |\n\
         | loaded: 100k orders + 100k backlog, scan bytes → scan stored (scan matching no order) | {s:.2} ({}) | {:.2} |\n\
         | loaded: scan bytes → local alarm (scan stored, matched, alert signed and stored) | {a:.2} ({}) | {:.2} |\n",
        machine_facts(),
        range(&baseline),
        range(&stored),
        s / b,
        range(&alarm),
        a / b,
    );
    println!("{figures}");
    let path = write_figures("rapid", &figures)?;
    println!("figures written to {}", path.display());
    Ok(())
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

fn plain_scan(n: usize) -> Vec<u8> {
    format!("LAB-2026-{n:06}\r").into_bytes()
}

/// The GTIN of order `n`: 13 digits of `n` and the check digit.
fn gtin(n: u64) -> String {
    let body = format!("{n:013}");
    let check = kouan_agent::scan::check_digit(body.as_bytes()).unwrap_or(0);
    format!("{body}{check}")
}

fn gtin_scan(n: u64) -> Vec<u8> {
    format!("]C101{}\r", gtin(n % ORDERS)).into_bytes()
}

fn seed_orders(store: &Path, platform_key: &Path, platform_pub: &Path) -> anyhow::Result<()> {
    let key = SigningKey::load(platform_key)?;
    let now = unix_ms();
    let mut signed = Vec::with_capacity(ORDERS as usize);
    for n in 0..ORDERS {
        let order = Order {
            v: platform::MESSAGE_VERSION,
            kind: "order".into(),
            id: format!("RW-{n:06}"),
            risk: 1 + (n % 4) as u8,
            action: Action::Hold,
            matches: Match {
                gtin: Some(gtin(n)),
                ..Match::default()
            },
            issued: now - 1000,
            expires: now + 86_400_000,
            revoked: false,
            nodes: vec![],
            text: String::new(),
        };
        signed.push(platform::sign(&order, &key)?);
    }
    let public = PublicKey::load(platform_pub)?;
    let refused = kouan_agent::rapid::import_orders(store, &[public], &signed)?;
    ensure!(
        refused.is_empty(),
        "orders refused: {:?}",
        &refused[..refused.len().min(3)]
    );
    Ok(())
}

struct Agent {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    /// Lines read so far that no wait was for.
    history: Vec<String>,
    scanner: VirtualPort,
    _dir: PathBuf,
}

impl Agent {
    fn start(dir: &Path, platform_pub: &Path) -> anyhow::Result<Agent> {
        let key = dir.join("agent.key");
        if !key.exists() {
            keygen(dir, "ed25519");
        }
        let scanner = VirtualPort::create(&dir.join("scanner"));
        // The broker is unreachable (a closed port): the backlog stays.
        let config = format!(
            "[agent]\nnode = \"gy-air-01\"\nsite = \"guiyang-airport\"\n\n\
             [keys]\nsigning = \"{key}\"\n\n[store]\npath = \"{store}\"\n\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = 9\nplain_tcp = true\n\
             platform_key = \"{platform}\"\n\n\
             [[instrument]]\nid = \"scanner-1\"\ndriver = \"scanner\"\nport = \"{port}\"\n",
            key = path_str(&key),
            store = path_str(&dir.join("kouan.db")),
            platform = path_str(platform_pub),
            port = path_str(scanner.path()),
        );
        let config_path = dir.join("kouan.toml");
        std::fs::write(&config_path, config)?;
        let mut child = kouan()
            .args(["run", "--config", path_str(&config_path)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kouan run")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            child,
            lines,
            history: Vec::new(),
            scanner,
            _dir: dir.to_owned(),
        };
        agent.wait_for("instrument attached", Duration::from_secs(300))?;
        Ok(agent)
    }

    /// A line read while waiting for another one.
    fn seen(&self, needle: &str) -> Option<String> {
        self.history.iter().find(|l| l.contains(needle)).cloned()
    }

    fn wait_for(&mut self, needle: &str, wait: Duration) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.contains(needle) => return Ok((at, line)),
                Ok((_, line)) => self.history.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "no log line with {needle:?} within {wait:?}; the log so far:\n{}",
                    self.history.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the agent exited before a log line with {needle:?}; its log:\n{}",
                    self.history.join("\n")
                ),
            }
        }
    }

    /// Sends scan `n` for each of [`SCANS`] and returns the milliseconds
    /// from its bytes on the port to the log line with `needle`.
    fn measure(
        &mut self,
        needle: &str,
        scan: impl Fn(usize) -> Vec<u8>,
    ) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(SCANS);
        for n in 0..SCANS {
            // Let the previous scan's work finish, so each is measured alone.
            std::thread::sleep(Duration::from_millis(100));
            while self.lines.try_recv().is_ok() {}
            let sent = Instant::now();
            self.scanner.send(&scan(n));
            let (at, _) = self.wait_for(needle, Duration::from_secs(30))?;
            times.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
        Ok(times)
    }

    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
