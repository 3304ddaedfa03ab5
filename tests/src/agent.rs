//! A `kouan run` process for end-to-end tests of instrument drivers: its
//! own directory, key, store and log, started with the test's
//! `[[instrument]]` sections and, unless [`Agent::configure`] gives it one,
//! no uplink (records stay in the store, where the test reads and verifies
//! them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kouan_agent::keys::PublicKey;
use kouan_agent::record::{self, Kind, Payload};
use kouan_agent::store::Store;

use crate::{keygen, kouan, path_str};

/// `kouan status --json` at `socket`, parsed; fails with its stderr.
pub fn status_json(socket: &Path) -> serde_json::Value {
    serde_json::from_slice(&status_output(socket, &["--json"]))
        .expect("kouan status --json prints JSON")
}

/// `kouan status` at `socket` as a person reads it; fails with its stderr.
pub fn status_text(socket: &Path) -> String {
    crate::text(&status_output(socket, &[]))
}

fn status_output(socket: &Path, extra: &[&str]) -> Vec<u8> {
    let out = kouan()
        .args(["status", "--socket", path_str(socket)])
        .args(extra)
        .output()
        .expect("kouan status runs");
    assert!(
        out.status.success(),
        "kouan status failed: {}",
        crate::text(&out.stderr)
    );
    out.stdout
}

/// Polls the status at `socket` until `done` holds; fails after `wait`
/// with the last status, or saying there is no socket.
pub fn wait_for_status(
    socket: &Path,
    wait: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if socket.exists() {
            let status = status_json(socket);
            if done(&status) {
                return status;
            }
            assert!(start.elapsed() < wait, "status never got there: {status:#}");
        }
        assert!(
            start.elapsed() < wait,
            "no status socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    public: PathBuf,
    runs: u32,
}

impl Agent {
    /// Writes a config with `instruments` (TOML `[[instrument]]` sections)
    /// in `dir` and starts the agent.
    pub fn start(dir: &Path, instruments: &str) -> Agent {
        Agent::start_with_store(dir, "", instruments)
    }

    /// [`Agent::start`] with extra lines for the `[store]` section, e.g. a
    /// tiny `max_bytes` for a store that refuses readings.
    pub fn start_with_store(dir: &Path, store_extra: &str, instruments: &str) -> Agent {
        let head = |key: &Path, store: &Path| {
            format!(
                "[agent]\nnode = \"gy-air-01\"\nsite = \"guiyang-airport\"\n\n\
                 [keys]\nsigning = \"{}\"\n\n[store]\npath = \"{}\"\n{store_extra}\n",
                path_str(key),
                path_str(store),
            )
        };
        let mut agent = Agent::configure(dir, head, instruments);
        agent.restart();
        agent
    }

    /// Makes the agent's key and writes its config in `dir` without
    /// starting it ([`Agent::restart`] does), so that a platform can learn
    /// its [`Agent::public_key`] first. `head` writes everything but the
    /// instruments from the paths of the signing key and the store, e.g.
    /// with [`crate::agent_config`] for an agent with an uplink.
    pub fn configure(
        dir: &Path,
        head: impl FnOnce(&Path, &Path) -> String,
        instruments: &str,
    ) -> Agent {
        let (key, public) = keygen(dir, "ed25519");
        let config = dir.join("kouan.toml");
        let agent = Agent {
            dir: dir.to_owned(),
            config,
            child: None,
            public,
            runs: 0,
        };
        let text = format!("{}\n{instruments}\n", head(&key, &agent.store()));
        std::fs::write(&agent.config, text).expect("config written");
        agent
    }

    /// The agent's public key file (SPKI PEM).
    pub fn public_key(&self) -> &Path {
        &self.public
    }

    /// The agent's status socket (the default: beside its store).
    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("kouan.sock")
    }

    /// Polls `kouan status --json` until `done` holds; fails after `wait`
    /// with the last status.
    pub fn wait_for_status(
        &self,
        wait: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for_status(&self.status_socket(), wait, done)
    }

    /// Starts the agent again (after [`Agent::stop`] or [`Agent::kill`]),
    /// or for the first time after [`Agent::configure`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).expect("log file");
        let child = kouan()
            .args(["run", "--config", path_str(&self.config)])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the kouan binary starts");
        self.child = Some(child);
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.join(format!("agent-{run}.log"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent runs").id()
    }

    /// Everything the agent logged, over all its runs.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| std::fs::read_to_string(self.log_path(run)).unwrap_or_default())
            .collect()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `count` log lines contain `needle`; fails with the log.
    pub fn wait_for_log(&self, needle: &str, count: usize, wait: Duration) {
        let start = Instant::now();
        while self.log_count(needle) < count {
            if start.elapsed() > wait {
                panic!(
                    "no {count} log lines with {needle:?} within {wait:?}; the log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the store holds `count` records of `kind` from
    /// `instrument`; returns their payloads in seq order.
    pub fn wait_for_records(
        &self,
        kind: Kind,
        instrument: &str,
        count: usize,
        wait: Duration,
    ) -> Vec<Payload> {
        let start = Instant::now();
        loop {
            let found: Vec<Payload> = self
                .records()
                .into_iter()
                .filter(|p| p.kind == kind && p.instrument == instrument)
                .collect();
            if found.len() >= count {
                return found;
            }
            if start.elapsed() > wait {
                panic!(
                    "{} of {count} {} records of {instrument} within {wait:?}; the log:\n{}",
                    found.len(),
                    kind.as_str(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("kouan.db")
    }

    /// Every record in the store, each verified with the agent's key.
    pub fn records(&self) -> Vec<Payload> {
        let path = self.store();
        let Ok(store) = Store::open_read_only(&path) else {
            return Vec::new();
        };
        let key = PublicKey::load(&self.public).expect("agent public key");
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let batch = store.read_from(from, 1000).expect("store readable");
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            for stored in &batch {
                let verified = record::verify(&stored.bytes, std::slice::from_ref(&key))
                    .expect("every stored record verifies");
                out.push(verified.payload);
            }
        }
        out
    }

    /// Peak resident memory of the agent so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status of the agent");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let start = Instant::now();
            while child.try_wait().expect("wait on the agent").is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    panic!(
                        "the agent did not stop within 20 s of SIGTERM:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the agent with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The values of a reading record's body.
pub fn reading(payload: &Payload) -> record::ReadingBody {
    payload
        .body
        .deserialized()
        .expect("a reading record's body is a ReadingBody")
}

/// The body of a scan record.
pub fn scan(payload: &Payload) -> record::ScanBody {
    payload
        .body
        .deserialized()
        .expect("a scan record's body is a ScanBody")
}
