//! Helpers for kouan's end-to-end tests.
//!
//! The tests in `tests/tests/` run the real `kouan` binary, built by the
//! same `cargo test --workspace` run (the agent's own integration tests make
//! cargo build it), against real peers. A test that cannot find what it
//! needs fails and names the command that provides it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The `kouan` binary of this build profile, built from the current sources.
///
/// `cargo test --workspace` builds it before any test runs (the agent's own
/// integration tests make cargo do so). When only this package is tested,
/// the binary may be missing or older than the agent's sources; then it is
/// built here, once per test process, so no test ever runs stale code.
pub fn kouan_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Test executables live in target/<profile>/deps; the binary one level up.
        let exe = std::env::current_exe().expect("the test executable has a path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join(format!("kouan{}", std::env::consts::EXE_SUFFIX));
        if !is_fresh(&bin) {
            build_agent(profile_dir);
        }
        assert!(
            is_fresh(&bin),
            "{} is missing or older than the agent's sources even after a build; \
             run `cargo build -p kouan-agent` and look at its errors",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Whether `bin` exists and is newer than every source it is built from.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = ["agent", "protocol/src", "protocol/Cargo.toml", "Cargo.lock"];
    sources
        .iter()
        .all(|s| newest_mtime(&root.join(s)).is_none_or(|newest| newest <= built))
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|entry| entry.file_name() != "target")
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

fn build_agent(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "-p", "kouan-agent", "--bin", "kouan"]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("cargo runs");
    assert!(
        status.success(),
        "`cargo build -p kouan-agent` failed; the end-to-end tests need the binary"
    );
}

/// A `kouan` command with logs kept plain for assertions.
pub fn kouan() -> Command {
    let mut command = Command::new(kouan_bin());
    command.env("KOUAN_LOG", "info");
    command
}

/// Runs `kouan` with `args` to completion.
pub fn run(args: &[&str]) -> Output {
    kouan().args(args).output().expect("the kouan binary runs")
}

/// Text of a stream of an [`Output`].
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Makes a signing key `agent.key` in `dir` with `kouan keygen`, and saves
/// its public key as `agent.pub`; returns both paths.
pub fn keygen(dir: &Path, alg: &str) -> (PathBuf, PathBuf) {
    let key = dir.join("agent.key");
    let public = dir.join("agent.pub");
    let out = run(&["keygen", "--alg", alg, "--out", path_str(&key)]);
    assert!(out.status.success(), "keygen failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let pem_start = stdout
        .find("-----BEGIN PUBLIC KEY-----")
        .expect("keygen prints the public key PEM");
    std::fs::write(&public, &stdout[pem_start..]).expect("public key written");
    (key, public)
}

/// A path as `&str`, for command arguments (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The seqs a `kouan debug append` run reported durable on stdout.
pub fn durable_seqs(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("durable "))
        .map(|seq| seq.trim().parse().expect("durable lines carry a seq"))
        .collect()
}

/// Exports the store from `from` (or its oldest record) and returns the bytes.
pub fn export(store: &Path, from: Option<u64>, out: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(out);
    let mut args = vec![
        "store",
        "export",
        "--store",
        path_str(store),
        "--out",
        path_str(out),
    ];
    let from_text = from.map(|f| f.to_string());
    if let Some(from) = &from_text {
        args.extend(["--from", from]);
    }
    let output = run(&args);
    assert!(
        output.status.success(),
        "export failed: {}",
        text(&output.stderr)
    );
    std::fs::read(out).expect("export file readable")
}

/// The TOML of an agent that reaches `broker`'s TLS listener on `port` (the
/// broker's own, or a proxy's) as node [`pki::AGENT`], with extra lines for
/// its `[store]` and `[uplink]` sections.
pub fn agent_config(
    broker: &broker::Broker,
    port: u16,
    key: &Path,
    store: &Path,
    platform_pub: &Path,
    store_extra: &str,
    uplink_extra: &str,
) -> String {
    let tls = broker.client(pki::AGENT);
    format!(
        r#"[agent]
node = "{node}"
site = "guiyang-airport"

[keys]
signing = "{key}"

[store]
path = "{store}"
{store_extra}

[uplink]
host = "localhost"
port = {port}
platform_key = "{platform_pub}"
{uplink_extra}

[uplink.tls]
ca = "{ca}"
cert = "{cert}"
key = "{tls_key}"
"#,
        node = pki::AGENT,
        key = path_str(key),
        store = path_str(store),
        platform_pub = path_str(platform_pub),
        ca = path_str(broker.ca()),
        cert = path_str(&tls.cert),
        tls_key = path_str(&tls.key),
    )
}

pub mod agent;
pub mod bench;
pub mod broker;
pub mod pki;
pub mod proxy;
pub mod pty;
pub mod qemu;
