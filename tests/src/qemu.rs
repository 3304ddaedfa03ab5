//! The emulated sensor node: the lm3s6965evb image under qemu-system-arm,
//! its UART on a host pty.
//!
//! [`Node::start`] builds the image if needed (once per test process, with
//! the same command scripts/test uses), starts QEMU halted (`-S`) with its
//! serial port on a new pty and its monitor on a Unix socket in the test's
//! directory, and returns with the pty's path. The caller opens the pty and
//! then calls [`Node::resume`]: bytes the node writes before the host side
//! is open are lost, so the node must not run earlier.
//!
//! The node's boot id is [`Node::boot_seed`] plus the number of boots since
//! QEMU started: [`Node::first_boot`] after `resume`, one more after each
//! [`Node::reset`]. The seed is chosen per node from the clock and process
//! id, so two QEMU runs do not share boot ids.
//!
//! Dropping the node kills QEMU; no other process is touched.
//!
//! ```no_run
//! use kouan_tests::qemu::Node;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut node = Node::start(dir.path());
//! let port = std::fs::OpenOptions::new().read(true).write(true).open(node.pty()).unwrap();
//! node.resume();
//! # drop(port);
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The message a test prints when QEMU is missing.
pub const INSTALL_HINT: &str = "run `apt-get install qemu-system-arm` or ./scripts/test";

/// The board crate of the emulated node, from the repository root.
pub const BOARD: &str = "firmware/boards/lm3s6965evb";

/// The image's target and binary name.
const TARGET: &str = "thumbv7m-none-eabi";
const IMAGE: &str = "kouan-node-lm3s6965evb";

/// Where QEMU's loader writes the boot seed (the board's memory.x).
const BOOT_SEED_ADDR: u32 = 0x2000_FFF0;

/// Where the LM3S6965's RAM starts.
pub const RAM_BASE: u32 = 0x2000_0000;
/// The LM3S6965's RAM: 64 KiB.
pub const RAM_SIZE: usize = 64 * 1024;

/// The top of the image's stack, as an offset into RAM: just below the
/// boot words (memory.x).
const STACK_TOP: usize = (BOOT_SEED_ADDR - RAM_BASE) as usize;

/// The word cortex-m-rt's `paint-stack` feature fills the stack with.
const PAINT: [u8; 4] = [0xCC; 4];

/// How long QEMU may take to start or to answer its monitor. Generous: it
/// only keeps a broken environment from hanging the test run.
const PROCESS_WAIT: Duration = Duration::from_secs(60);

/// One emulated node, halted until [`Node::resume`].
#[derive(Debug)]
pub struct Node {
    child: Child,
    pty: PathBuf,
    monitor: UnixStream,
    boot_seed: u32,
}

impl Node {
    /// Starts the image under `qemu-system-arm`, halted, with its sockets
    /// in `dir`. Panics naming the install command when QEMU is missing.
    pub fn start(dir: &Path) -> Node {
        Node::start_with("qemu-system-arm", dir)
    }

    /// As [`Node::start`], with another QEMU binary.
    pub fn start_with(qemu: &str, dir: &Path) -> Node {
        let image = image();
        let boot_seed = boot_seed();
        let socket = dir.join("qemu-monitor.sock");
        let _ = std::fs::remove_file(&socket);

        let mut child = Command::new(qemu)
            .args(["-M", "lm3s6965evb", "-nographic", "-S"])
            .args(["-serial", "pty"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .arg("-kernel")
            .arg(&image)
            .arg("-device")
            .arg(format!(
                "loader,addr={BOOT_SEED_ADDR:#x},data={boot_seed:#x},data-len=4"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {qemu} ({e}): {INSTALL_HINT}"));

        let pty = match wait_for_pty(&mut child) {
            Ok(pty) => pty,
            Err(output) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{qemu} did not report its serial pty: {output}");
            }
        };
        let monitor = connect(&socket, &mut child);
        let mut node = Node {
            child,
            pty,
            monitor,
            boot_seed,
        };
        node.read_prompt();
        node
    }

    /// The host end of the node's UART, to open as a serial port.
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// The seed of the node's boot ids.
    pub fn boot_seed(&self) -> u32 {
        self.boot_seed
    }

    /// The boot id of the node's first boot in this QEMU.
    pub fn first_boot(&self) -> u32 {
        self.boot_seed.wrapping_add(1)
    }

    /// Lets the node run (the monitor's `cont`). Open the pty first.
    pub fn resume(&mut self) {
        self.monitor_command("cont");
    }

    /// Resets the node as its reset button would (`system_reset`): it
    /// boots again with the next boot id.
    pub fn reset(&mut self) {
        self.monitor_command("system_reset");
    }

    /// Halts the node (`stop`), as a hung firmware would look.
    pub fn pause(&mut self) {
        self.monitor_command("stop");
    }

    /// Writes the node's whole RAM ([`RAM_SIZE`] bytes from [`RAM_BASE`])
    /// to `path`, through the monitor's `pmemsave`. Pause the node first
    /// for a consistent picture.
    pub fn save_ram(&mut self, path: &Path) {
        let path = path.to_str().expect("test paths are UTF-8");
        assert!(
            !path.contains('"'),
            "pmemsave cannot take a path with quotes"
        );
        self.monitor_command(&format!("pmemsave {RAM_BASE:#x} {RAM_SIZE} \"{path}\""));
    }

    fn monitor_command(&mut self, command: &str) {
        writeln!(self.monitor, "{command}").expect("QEMU monitor accepts a command");
        self.read_prompt();
    }

    /// Reads the monitor's output up to its next `(qemu) ` prompt.
    fn read_prompt(&mut self) {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"(qemu) ") {
            match self.monitor.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                Ok(_) => panic!("QEMU monitor closed: {}", String::from_utf8_lossy(&seen)),
                Err(e) => panic!("QEMU monitor did not answer ({e})"),
            }
        }
    }
}

/// How deep the node's stack has been since boot, in bytes, from a RAM
/// dump of [`Node::save_ram`]: the image paints its stack at boot, so the
/// depth ends where, going down from the top, 64 painted words in a row
/// begin (256 bytes that a used stack never holds by chance). `None` when
/// no painted run is found: the image was built without `paint-stack`, or
/// the stack overran everything.
pub fn stack_depth(ram: &[u8]) -> Option<usize> {
    const RUN: usize = 64;
    let mut painted = 0;
    let mut top = STACK_TOP.min(ram.len()) / 4 * 4;
    while top >= 4 {
        top -= 4;
        if ram[top..top + 4] == PAINT {
            painted += 1;
            if painted == RUN {
                return Some(STACK_TOP - (top + 4 * RUN));
            }
        } else {
            painted = 0;
        }
    }
    None
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulated node's image, built from the current sources once per test
/// process. Cargo rebuilds only what changed, as for the agent's binary.
pub fn image() -> PathBuf {
    static IMAGE_PATH: OnceLock<PathBuf> = OnceLock::new();
    IMAGE_PATH
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let board = root.join(BOARD);
            let target_dir = board.join("target");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&board)
                .args(["build", "--release", "--locked", "--target", TARGET])
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .expect("cargo runs");
            assert!(
                status.success(),
                "building the emulated node failed; run `cargo build --release --locked \
                 --manifest-path {BOARD}/Cargo.toml --target {TARGET}` and look at its errors \
                 (the target comes with `rustup target add {TARGET}`)"
            );
            target_dir.join(TARGET).join("release").join(IMAGE)
        })
        .clone()
}

/// A boot seed that differs between QEMU runs: two runs never see each
/// other's boot ids unless they start in the same nanosecond.
fn boot_seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    // Leaves room below u32::MAX for many resets before wrapping.
    (nanos ^ std::process::id().rotate_left(16)) & 0x7FFF_0000
}

/// Reads QEMU's stdout until it names the pty, in a thread so that a QEMU
/// that prints nothing cannot hang the test. On failure returns what QEMU
/// printed.
fn wait_for_pty(child: &mut Child) -> Result<PathBuf, String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    // "char device redirected to /dev/pts/3 (label serial0)"
    let deadline = Instant::now() + PROCESS_WAIT;
    let mut printed = String::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(rest) = line.split("redirected to ").nth(1) {
            let path = rest.split_whitespace().next().unwrap_or_default();
            // The readers keep draining QEMU's output, so it never blocks
            // on a full pipe.
            thread::spawn(move || for _ in rx {});
            return Ok(PathBuf::from(path));
        }
        printed.push_str(&line);
        printed.push('\n');
    }
    Err(printed)
}

/// Connects to QEMU's monitor socket once QEMU has made it.
fn connect(socket: &Path, child: &mut Child) -> UnixStream {
    let deadline = Instant::now() + PROCESS_WAIT;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => {
                stream
                    .set_read_timeout(Some(PROCESS_WAIT))
                    .expect("socket timeout set");
                return stream;
            }
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("QEMU exited ({status}) before its monitor was up");
                }
                assert!(
                    Instant::now() < deadline,
                    "QEMU monitor socket {} did not appear: {e}",
                    socket.display()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
