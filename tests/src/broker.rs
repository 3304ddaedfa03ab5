//! A real mosquitto 2.0 broker for one test.
//!
//! [`Broker::start`] makes a test PKI in the test's directory, writes a
//! config and an ACL there, and runs `mosquitto -c` on a free loopback port
//! with TLS and client certificates, as DESIGN.md describes a production
//! broker: the certificate's CN becomes the MQTT username and the client id,
//! and one ACL pattern confines each agent to `kouan/v1/{node}/...`.
//!
//! The broker is a child of the test process. The faults a test may inject
//! act on that child only: [`Broker::stop`] (SIGTERM), [`Broker::kill`]
//! (SIGKILL), [`Broker::freeze`] / [`Broker::thaw`] (SIGSTOP / SIGCONT) and
//! [`Broker::restart`] on the same port with the same config. Dropping the
//! broker kills its process; no other mosquitto is ever touched.
//!
//! ```no_run
//! use kouan_tests::broker::{Broker, BrokerOptions};
//! use kouan_tests::pki::AGENT;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let broker = Broker::start(dir.path(), &BrokerOptions::default());
//! let agent = broker.client(AGENT);
//! println!("mqtts://127.0.0.1:{} ca={}", broker.port(), broker.ca().display());
//! # let _ = agent;
//! ```

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::pki::{AGENT, CertFiles, OTHER_AGENT, PLATFORM, Pki};

/// How long the broker may take to start or to exit. Generous: it only
/// keeps a broken environment from hanging the test run, it measures nothing.
const PROCESS_WAIT: Duration = Duration::from_secs(60);

/// Password of every user on the plain-TCP listener.
pub const PLAIN_PASSWORD: &str = "kouan-test-password";

/// The message a test prints when mosquitto or its clients are missing.
pub const INSTALL_HINT: &str =
    "run `apt-get install mosquitto mosquitto-clients` or ./scripts/test";

/// The ACL of DESIGN.md ("MQTT topics"). `pattern` lines apply to every
/// authenticated user with `%u` replaced by the username, so the agents'
/// rules need no per-node entry; `user platform` adds the platform's.
/// Shared topics are patterns too, because `topic` lines above the first
/// `user` apply only to anonymous clients (mosquitto warns that they lack
/// `%u`; the warning is expected).
const ACL: &str = "\
# Every agent: its own subtree, and what the platform addresses to all.
pattern write kouan/v1/%u/state
pattern write kouan/v1/%u/rec/#
pattern write kouan/v1/%u/alert
pattern read kouan/v1/%u/ack
pattern read kouan/v1/%u/cmd/#
pattern read kouan/v1/orders/#
pattern read kouan/v1/host/+/state

# The central platform: reads everything, acks and commands every node.
user platform
topic read kouan/v1/#
topic write kouan/v1/+/ack
topic write kouan/v1/+/cmd/#
topic write kouan/v1/orders/#
topic write kouan/v1/host/#
";

/// What a test may change about its broker. `Default` is the production
/// shape: TLS only, mosquitto's own queue and size limits, no persistence.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// QoS 1/2 messages queued per client beyond its in-flight window;
    /// mosquitto drops further ones silently (its default is 1000).
    pub max_queued_messages: Option<u32>,
    /// Largest MQTT packet accepted; a client sending a larger one is
    /// disconnected. No limit by default.
    pub max_packet_size: Option<u32>,
    /// Largest publish payload forwarded; larger ones are acknowledged and
    /// dropped. No limit by default.
    pub message_size_limit: Option<u32>,
    /// Keep retained messages and sessions in `dir/persistence/` across a
    /// [`Broker::stop`] and [`Broker::restart`].
    pub persistence: bool,
    /// Also listen on plain TCP ([`Broker::plain_port`]), where the users
    /// gy-air-01, gy-rail-01 and platform log in with [`PLAIN_PASSWORD`]
    /// under the same ACL.
    pub plain_listener: bool,
    /// Let clients keep their own client id instead of the broker replacing
    /// it with their username. By default two connections with one
    /// certificate take each other's session over, as in production.
    pub any_client_id: bool,
    /// Further lines for the config's general section, for a setting that
    /// has no field here.
    pub extra_config: Vec<String>,
}

/// A mosquitto process owned by one test. See the module docs.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    port: u16,
    plain_port: Option<u16>,
    pki: Pki,
    child: Option<Child>,
}

impl Broker {
    /// Starts mosquitto with its PKI, config, ACL and log in `dir`, and
    /// returns once every listener accepts connections.
    ///
    /// # Panics
    ///
    /// When mosquitto is not installed, or does not listen within a
    /// generous bound; the message quotes its log.
    pub fn start(dir: &Path, options: &BrokerOptions) -> Broker {
        let bin = find_tool("mosquitto");
        let pki = Pki::new(dir);
        let server = pki.server();
        for user in [AGENT, OTHER_AGENT, PLATFORM] {
            pki.client(user);
        }
        let acl = dir.join("acl");
        std::fs::write(&acl, ACL).expect("the ACL file is written");
        let passwords = options
            .plain_listener
            .then(|| write_passwords(dir, &[AGENT, OTHER_AGENT, PLATFORM]));

        // A free port can be taken by another test between our probe and
        // mosquitto's bind; then mosquitto exits at once and we try again
        // with fresh ports.
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let as_root = runs_as_root(dir);
        let mut attempt = 1;
        loop {
            let port = free_port();
            let plain_port = options.plain_listener.then(free_port);
            let files = ConfigFiles {
                dir,
                log: &log,
                acl: &acl,
                ca: pki.ca(),
                server: &server,
                passwords: passwords.as_deref(),
            };
            let text = config(options, &files, port, plain_port, as_root);
            std::fs::write(&conf, text).expect("the mosquitto config is written");
            // A fresh log per attempt: an old bind failure must not be read
            // as the reason of a new one.
            let _ = std::fs::remove_file(&log);

            match launch(&bin, &conf, &log) {
                Ok(child) => {
                    return Broker {
                        bin,
                        dir: dir.to_path_buf(),
                        conf,
                        log,
                        port,
                        plain_port,
                        pki,
                        child: Some(child),
                    };
                }
                Err(text) if attempt < 5 && text.contains("Address already in use") => {
                    attempt += 1;
                }
                Err(text) => panic!(
                    "mosquitto did not start with {}; its log {}:\n{text}",
                    conf.display(),
                    log.display()
                ),
            }
        }
    }

    /// The TLS listener's port on 127.0.0.1; it stays the same across
    /// [`Broker::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The plain-TCP listener's port, when [`BrokerOptions::plain_listener`]
    /// asked for one.
    pub fn plain_port(&self) -> Option<u16> {
        self.plain_port
    }

    /// The CA certificate that signed the broker's and the clients'
    /// certificates.
    pub fn ca(&self) -> &Path {
        self.pki.ca()
    }

    /// The PKI, to issue certificates for further usernames.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The client certificate for `username` (its CN), made on first use.
    pub fn client(&self, username: &str) -> CertFiles {
        self.pki.client(username)
    }

    /// `kouan receive` as the platform on this broker (TLS with the
    /// platform's certificate), verifying with the agents' keys in
    /// `keys_dir`, signing with `platform_key`, keeping records in
    /// `store`; the caller adds its options and where the output goes.
    pub fn receiver(&self, keys_dir: &Path, platform_key: &Path, store: &Path) -> Command {
        let tls = self.client(PLATFORM);
        let mut command = crate::kouan();
        command
            .args(["receive", "--host", "localhost"])
            .args(["--port", &self.port().to_string()])
            .args(["--ca", crate::path_str(self.ca())])
            .args(["--cert", crate::path_str(&tls.cert)])
            .args(["--key", crate::path_str(&tls.key)])
            .args(["--keys-dir", crate::path_str(keys_dir)])
            .args(["--platform-key", crate::path_str(platform_key)])
            .args(["--store", crate::path_str(store)]);
        command
    }

    /// The directory holding the config, ACL, certificates and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while the broker runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's log so far, across restarts.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Stops the broker cleanly (SIGTERM) and waits for it to exit. A
    /// frozen broker is thawed first, or it could not act on the signal.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&child, "TERM");
        signal(&child, "CONT");
        if wait_exit(&mut child).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mosquitto ignored SIGTERM; its log {}:\n{}",
                self.log.display(),
                self.log()
            );
        }
    }

    /// Kills the broker (SIGKILL) and waits for it to exit: a crash or a
    /// power cut, with no clean disconnect and no persistence save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Suspends the broker (SIGSTOP): its sockets stay open but nothing
    /// answers, like a hung host.
    pub fn freeze(&self) {
        signal(self.running("freeze"), "STOP");
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) {
        signal(self.running("thaw"), "CONT");
    }

    /// Starts the broker again on the same port with the same config,
    /// stopping it first if it still runs, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();

        match launch(&self.bin, &self.conf, &self.log) {
            Ok(child) => self.child = Some(child),
            Err(text) => panic!(
                "mosquitto did not restart on port {}; its log {}:\n{text}",
                self.port,
                self.log.display()
            ),
        }
    }

    fn running(&self, action: &str) -> &Child {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("cannot {action} the broker: it is not running"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Only our own child: other tests run brokers of their own.
        self.kill();
    }
}

/// Runs mosquitto with `conf` and waits until it has opened its
/// listeners; on failure returns its log.
///
/// Readiness is read from the log, not probed by connecting: mosquitto says
/// `running` only after every listener is bound, while a probe could reach
/// another process that took the port first, and each probe of the TLS
/// listener would leave a handshake error in the log.
fn launch(bin: &Path, conf: &Path, log: &Path) -> Result<Child, String> {
    let runs_before = running_lines(log);
    // Errors from before mosquitto opens its log (a bad config line) go to
    // stderr; appending stderr to the same log keeps them in one place.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));

    let deadline = Instant::now() + PROCESS_WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("(exited with {status})\n{}", read_log(log)));
        }
        if running_lines(log) > runs_before {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "(not running after {PROCESS_WAIT:?})\n{}",
                read_log(log)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How many times the log says `mosquitto version X running`.
fn running_lines(log: &Path) -> usize {
    read_log(log)
        .lines()
        .filter(|line| line.contains("mosquitto version") && line.ends_with(" running"))
        .count()
}

/// Paths the config refers to.
struct ConfigFiles<'a> {
    dir: &'a Path,
    log: &'a Path,
    acl: &'a Path,
    ca: &'a Path,
    server: &'a CertFiles,
    passwords: Option<&'a Path>,
}

/// The mosquitto.conf text.
fn config(
    options: &BrokerOptions,
    files: &ConfigFiles<'_>,
    port: u16,
    plain_port: Option<u16>,
    as_root: bool,
) -> String {
    let mut c = String::new();
    let mut line = |text: String| {
        c.push_str(&text);
        c.push('\n');
    };

    line("# Written by kouan-tests (tests/src/broker.rs) for one test.".into());
    // Listeners differ in how clients prove who they are (certificate or
    // password), so authentication settings are per listener.
    line("per_listener_settings true".into());
    // Run as root, mosquitto drops to user `mosquitto` before it reads the
    // TLS key, which that user cannot read in a root-owned temp dir.
    if as_root {
        line("user root".into());
    }
    if options.persistence {
        let location = files.dir.join("persistence");
        std::fs::create_dir_all(&location).expect("the persistence dir is made");
        line("persistence true".into());
        line(format!("persistence_location {}/", location.display()));
    } else {
        line("persistence false".into());
    }
    line(format!("log_dest file {}", files.log.display()));
    for kind in [
        "error",
        "warning",
        "notice",
        "information",
        "subscribe",
        "unsubscribe",
    ] {
        line(format!("log_type {kind}"));
    }
    line("connection_messages true".into());
    line("log_timestamp_format %Y-%m-%dT%H:%M:%S".into());
    if let Some(n) = options.max_queued_messages {
        line(format!("max_queued_messages {n}"));
    }
    if let Some(n) = options.max_packet_size {
        line(format!("max_packet_size {n}"));
    }
    if let Some(n) = options.message_size_limit {
        line(format!("message_size_limit {n}"));
    }
    for extra in &options.extra_config {
        line(extra.clone());
    }
    let bind_client_id = !options.any_client_id;

    // A bare `listener PORT` binds every interface; tests stay on loopback.
    line(String::new());
    line(format!("listener {port} 127.0.0.1"));
    line(format!("cafile {}", files.ca.display()));
    line(format!("certfile {}", files.server.cert.display()));
    line(format!("keyfile {}", files.server.key.display()));
    line("require_certificate true".into());
    line("use_identity_as_username true".into());
    line(format!("use_username_as_clientid {bind_client_id}"));
    line("allow_anonymous false".into());
    line(format!("acl_file {}", files.acl.display()));

    if let (Some(plain), Some(passwords)) = (plain_port, files.passwords) {
        line(String::new());
        line(format!("listener {plain} 127.0.0.1"));
        line(format!("password_file {}", passwords.display()));
        line(format!("use_username_as_clientid {bind_client_id}"));
        line("allow_anonymous false".into());
        line(format!("acl_file {}", files.acl.display()));
    }
    c
}

/// Writes a mosquitto password file giving each user [`PLAIN_PASSWORD`].
fn write_passwords(dir: &Path, users: &[&str]) -> PathBuf {
    let path = dir.join("passwords");
    let mut text = String::new();
    for user in users {
        let _ = writeln!(text, "{user}:{PLAIN_PASSWORD}");
    }
    std::fs::write(&path, text).expect("the password file is written");

    // mosquitto 2.0 wants hashed passwords; -U hashes the file in place.
    let tool = find_tool("mosquitto_passwd");
    let status = Command::new(&tool)
        .arg("-U")
        .arg(&path)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    assert!(
        status.success(),
        "mosquitto_passwd -U {} failed",
        path.display()
    );
    path
}

/// Whether this process runs as root: the owner of a file it just made in
/// `dir` is its effective user.
fn runs_as_root(dir: &Path) -> bool {
    let probe = dir.join(".owner-probe");
    std::fs::write(&probe, b"").expect("a probe file is written");
    let uid = std::fs::metadata(&probe)
        .expect("the probe file has metadata")
        .uid();
    let _ = std::fs::remove_file(&probe);
    uid == 0
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends `SIG{name}` to our own child with the shell's `kill` builtin
/// (sending signals from Rust itself would need unsafe code).
fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid])
        .status()
        .expect("sh runs");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// Waits, within [`PROCESS_WAIT`], for `child` to exit.
fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + PROCESS_WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// The path of a mosquitto program, searched in `PATH` and in the sbin
/// folders, where Debian puts the broker but which a non-root `PATH` may
/// lack.
///
/// # Panics
///
/// When it is not installed, with the command that installs it.
pub fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "not found: run `apt-get install mosquitto mosquitto-clients`")]
    fn a_missing_tool_names_the_install_command() {
        find_tool("kouan-no-such-mosquitto-tool");
    }

    #[test]
    fn config_binds_loopback_and_ties_identity_to_the_certificate() {
        let dir = Path::new("/d");
        let server = CertFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        let files = ConfigFiles {
            dir,
            log: &dir.join("log"),
            acl: &dir.join("acl"),
            ca: &dir.join("ca.pem"),
            server: &server,
            passwords: None,
        };
        let options = BrokerOptions {
            max_queued_messages: Some(10),
            max_packet_size: Some(4096),
            ..BrokerOptions::default()
        };
        let text = config(&options, &files, 4000, None, false);

        for line in [
            "listener 4000 127.0.0.1",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "allow_anonymous false",
            "persistence false",
            "max_queued_messages 10",
            "max_packet_size 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("user root"), "{text}");
        assert!(!text.contains("message_size_limit"), "{text}");
    }
}
