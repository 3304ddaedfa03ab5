//! Simulated instruments on virtual serial ports.
//!
//! Each one is a pseudo-terminal pair: the agent opens the slave through a
//! symlink in the demo's directory, as it would open
//! `/dev/serial/by-id/...`, and a thread here plays the instrument on the
//! master, speaking the same bytes a real device sends. Each counts the
//! readings it made that the instrument would consider delivered: a
//! balance or scanner line once written, an analyzer's results once the
//! agent has acknowledged the frame that completes the message.
//!
//! The sensor node runs the firmware's own node logic
//! ([`kouan_firmware::node::Node`], the state machine every board runs) on
//! the host, with made-up sensor values; its samples count as made when
//! they are numbered, since the node keeps each until the agent has
//! acknowledged it as durable. Adding an instrument means one more
//! [`Kind`], its config section and its loop.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serialport::{SerialPort as _, TTYPort};

/// The simulated instruments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Mettler Toledo balance answering in MT-SICS, weighing once a second.
    Balance,
    /// A GS1 barcode scanner, a batch scanned every few seconds.
    Scanner,
    /// A lab analyzer sending heavy-metal results over ASTM E1381/E1394.
    Analyzer,
    /// A kouan sensor node (climate, gas, gamma dose rate) on the node link.
    Node,
}

impl Kind {
    /// Every simulated instrument, in the order they are shown.
    pub const ALL: [Kind; 4] = [Kind::Balance, Kind::Scanner, Kind::Analyzer, Kind::Node];

    /// The instrument id in the agent's config.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Balance => "balance-1",
            Kind::Scanner => "scanner-1",
            Kind::Analyzer => "analyzer-1",
            Kind::Node => "node-1",
        }
    }

    /// What it is, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Balance => "MT-SICS balance (line driver)",
            Kind::Scanner => "GS1 barcode scanner (scanner driver)",
            Kind::Analyzer => "ASTM E1394 lab analyzer (astm driver)",
            Kind::Node => "sensor node, the firmware's node logic (node driver)",
        }
    }

    /// Its `[[instrument]]` section, with `port` at `path`.
    pub fn config(self, path: &Path) -> String {
        let port = toml_string(&path.display().to_string());
        match self {
            Kind::Balance => format!(
                "[[instrument]]\nid = \"balance-1\"\ndriver = \"line\"\nport = {port}\n\
                 hazard = \"physical\"\n[instrument.line]\nprofile = \"mt-sics\"\n"
            ),
            Kind::Scanner => format!(
                "[[instrument]]\nid = \"scanner-1\"\ndriver = \"scanner\"\nport = {port}\n\
                 [instrument.scanner]\ninstruments = [\"balance-1\", \"analyzer-1\"]\n"
            ),
            Kind::Analyzer => format!(
                "[[instrument]]\nid = \"analyzer-1\"\ndriver = \"astm\"\nport = {port}\n\
                 hazard = \"chemical\"\n"
            ),
            Kind::Node => format!(
                "[[instrument]]\nid = \"node-1\"\ndriver = \"node\"\nport = {port}\n\
                 hazard = \"environmental\"\n[instrument.serial]\nbaud = 115200\n\
                 [instrument.node]\nnode_id = \"{NODE_ID}\"\n"
            ),
        }
    }

    /// Seconds between two of its messages.
    fn period(self) -> Duration {
        match self {
            Kind::Balance => Duration::from_millis(1000),
            Kind::Scanner => Duration::from_millis(4000),
            Kind::Analyzer => Duration::from_millis(3000),
            // The node paces itself (NODE_INTERVAL_MS); this is its loop.
            Kind::Node => Duration::from_millis(20),
        }
    }
}

/// TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One simulated instrument on its pty pair.
#[derive(Debug)]
pub struct Simulated {
    /// Which instrument.
    pub kind: Kind,
    /// The path the agent opens.
    pub link: PathBuf,
    master: Option<TTYPort>,
    // Held open so that the master never reads EIO while the agent is
    // between two opens of the slave.
    _slave: TTYPort,
    /// Readings made and, as far as the instrument knows, delivered.
    pub made: Arc<AtomicU64>,
}

impl Simulated {
    /// A pty pair for `kind`, its slave reachable as `dir/<id>`.
    pub fn create(kind: Kind, dir: &Path) -> anyhow::Result<Simulated> {
        let (mut master, slave) = TTYPort::pair()
            .context("creating a pseudo-terminal pair (needs /dev/ptmx and /dev/pts)")?;
        master
            .set_timeout(Duration::from_millis(50))
            .context("setting the pty's read timeout")?;
        // serialport opens both ends without O_CLOEXEC: the agent, a child
        // process, would inherit them, and a master held open by the agent
        // never hangs up its own slave.
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("FD_CLOEXEC on a pty")?;
        }
        let target = slave.name().context("the pty slave has no path")?;
        let link = dir.join(kind.id());
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {target}", link.display()))?;
        Ok(Simulated {
            kind,
            link,
            master: Some(master),
            _slave: slave,
            made: Arc::default(),
        })
    }

    /// Starts the instrument's thread; it stops when `stop` turns true.
    pub fn start(&mut self, stop: Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let master = self
            .master
            .take()
            .context("the instrument was started twice")?;
        let kind = self.kind;
        let made = self.made.clone();
        std::thread::Builder::new()
            .name(format!("demo-{}", kind.id()))
            .spawn(move || {
                let mut port = Port { master, stop };
                if kind == Kind::Node {
                    port.node(&made);
                    return;
                }
                let mut n = 0u64;
                while !port.stopped() {
                    let made_now = match kind {
                        Kind::Balance => port.send(&balance_line(n)).then_some(1),
                        Kind::Scanner => port.send(&scan_line(n)).then_some(1),
                        Kind::Analyzer => port.astm_session(&astm_message(n)).then_some(3),
                        Kind::Node => None,
                    };
                    made.fetch_add(made_now.unwrap_or(0), Ordering::Relaxed);
                    n += 1;
                    port.pause(kind.period());
                }
            })
            .context("starting a simulated instrument")
    }
}

/// The master end, as the instrument uses it.
struct Port {
    master: TTYPort,
    stop: Arc<AtomicBool>,
}

impl Port {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `wait`, waking early when the demo stops.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stopped() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes all of `bytes`; false if the port failed.
    fn send(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.master.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        self.master.flush().is_ok()
    }

    /// Waits up to 15 s (E1381's sender timer) for one byte of reply.
    fn reply(&mut self) -> Option<u8> {
        let until = Instant::now() + Duration::from_secs(15);
        let mut byte = [0u8; 1];
        while Instant::now() < until {
            match self.master.read(&mut byte) {
                Ok(1) => return Some(byte[0]),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// One E1381 session: ENQ, each frame until ACKed (six tries), EOT.
    /// True when the frame that completes the message was acknowledged,
    /// which the agent does only once the results are durable.
    fn astm_session(&mut self, text: &[u8]) -> bool {
        const ENQ: u8 = 0x05;
        const EOT: u8 = 0x04;
        const ACK: u8 = 0x06;
        if !self.send(&[ENQ]) || self.reply() != Some(ACK) {
            self.send(&[EOT]);
            return false;
        }
        for frame in astm_frames(text) {
            let mut acked = false;
            for _ in 0..6 {
                if !self.send(&frame) {
                    return false;
                }
                if self.reply() == Some(ACK) {
                    acked = true;
                    break;
                }
            }
            if !acked {
                self.send(&[EOT]);
                return false;
            }
        }
        self.send(&[EOT])
    }
}

/// The demo node's id, in its hello and the agent's config.
const NODE_ID: &str = "demo-node";

/// Each of the node's five periodic sensors is sampled this often.
const NODE_INTERVAL_MS: u32 = 5_000;

/// How long a stopped node keeps its link up for its last acks.
const NODE_LINGER: Duration = Duration::from_secs(15);

impl Port {
    /// The node's main loop, as a board runs it: bytes from the UART in,
    /// due samples recorded, messages out. When the demo stops, sampling
    /// stops, and the link stays up until every sample is acknowledged.
    fn node(&mut self, made: &AtomicU64) {
        use kouan_firmware::node::{Config, NoOutputs, Node};
        let sensors = kouan_firmware::station::sensors(NODE_INTERVAL_MS, 1_000);
        let boot = u32::try_from(crate::clock::unix_ms() / 1000).unwrap_or(1);
        let config = Config {
            node_id: NODE_ID,
            firmware: env!("CARGO_PKG_VERSION"),
            boot,
            sensors: &sensors,
        };
        let Ok(mut node) = Node::<64>::new(&config) else {
            return;
        };
        let started = Instant::now();
        let mut stopped_at = None;
        let mut buf = [0u8; 256];
        loop {
            let now = started.elapsed().as_millis() as u64;
            // The read waits up to the port's 50 ms timeout: the loop's pace.
            match self.master.read(&mut buf) {
                Ok(n) => node.receive(&buf[..n], now, &mut NoOutputs),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            if stopped_at.is_none() && self.stopped() {
                stopped_at = Some(Instant::now());
            }
            if stopped_at.is_none() {
                while let Some(sensor) = node.due(now) {
                    node.record(sensor, node_value(sensor, now), now);
                    made.fetch_add(1, Ordering::Relaxed);
                }
            }
            node.expire(now, &mut NoOutputs);
            while let Some(msg) = node.transmit(now) {
                let Ok(frame) = kouan_protocol::frame::encode(&msg) else {
                    continue;
                };
                if !self.send(&frame) {
                    return;
                }
            }
            if let Some(at) = stopped_at
                && (node.status(now).buffered == 0 || at.elapsed() > NODE_LINGER)
            {
                return;
            }
        }
    }
}

/// A made-up value of the station's sensor `sensor` at `now`.
fn node_value(sensor: u8, now: u64) -> f32 {
    use kouan_firmware::station::{COUNT_RATE, DOSE_RATE, GAS, HUMIDITY, TEMPERATURE};
    let step = (now / u64::from(NODE_INTERVAL_MS) % 8) as f32;
    match sensor {
        TEMPERATURE => 22.0 + 0.25 * step,
        HUMIDITY => 45.0 + 0.5 * step,
        GAS => 3.0 + 0.2 * step,
        DOSE_RATE => 0.08 + 0.01 * step,
        COUNT_RATE => 24.0 + step,
        _ => 0.0,
    }
}

/// A weighing: `S S     123.45 g`, drifting a little.
fn balance_line(n: u64) -> Vec<u8> {
    let grams = 100.0 + ((n * 37) % 200) as f64 / 100.0;
    format!("S S {grams:>10.2} g\r\n").into_bytes()
}

/// A GS1-128 scan of a consignment: GTIN, expiry, batch (AIM `]C1`).
fn scan_line(n: u64) -> Vec<u8> {
    // (01) GTIN and (17) expiry have predefined lengths; (10) batch is
    // last, so no group separator is needed.
    format!("]C101095212345432131726123110GY{:05}\r", n + 1).into_bytes()
}

/// An E1394 message: header, patient, order and three results.
fn astm_message(n: u64) -> Vec<u8> {
    let sample = format!("GY{:05}", n + 1);
    let lead = 0.010 + (n % 7) as f64 * 0.003;
    let cadmium = 0.002 + (n % 5) as f64 * 0.001;
    let arsenic = 0.05 + (n % 3) as f64 * 0.02;
    format!(
        "H|\\^&|||KOUAN-DEMO^ICP-MS^1.0|||||||P|1\r\
         P|1\r\
         O|1|{sample}||^^^METALS|R\r\
         R|1|^^^Pb|{lead:.3}|mg/kg|0-0.2|N||F\r\
         R|2|^^^Cd|{cadmium:.3}|mg/kg|0-0.1|N||F\r\
         R|3|^^^As|{arsenic:.3}|mg/kg|0-0.5|N||F\r\
         L|1|N\r"
    )
    .into_bytes()
}

/// E1381 frames of `text`: at most 240 bytes of text each, numbered from
/// 1 modulo 8, ETB before the last, ETX on it, checksum over the frame
/// number through ETB/ETX.
fn astm_frames(text: &[u8]) -> Vec<Vec<u8>> {
    const STX: u8 = 0x02;
    const ETX: u8 = 0x03;
    const ETB: u8 = 0x17;
    let chunks: Vec<&[u8]> = text.chunks(240).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let number = b'0' + ((i + 1) % 8) as u8;
            let end = if i + 1 == chunks.len() { ETX } else { ETB };
            let mut frame = vec![STX, number];
            frame.extend_from_slice(chunk);
            frame.push(end);
            let sum = frame[1..]
                .iter()
                .fold(0u8, |sum, byte| sum.wrapping_add(*byte));
            frame.extend_from_slice(format!("{sum:02X}\r\n").as_bytes());
            frame
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn astm_checksum_matches_the_public_vector() {
        // `1A|B|C|D<CR><ETX>` gives BF (FIELD-NOTES, E1381 checksum vectors).
        let frames = astm_frames(b"A|B|C|D\r");
        assert_eq!(frames, vec![b"\x021A|B|C|D\r\x03BF\r\n".to_vec()]);
    }

    #[test]
    fn long_messages_are_split_into_numbered_frames() {
        let frames = astm_frames(&[b'x'; 500]);
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..2], b"\x021");
        assert_eq!(frames[0][242], 0x17);
        assert_eq!(&frames[2][..2], b"\x023");
        assert_eq!(frames[2][2 + 20], 0x03);
    }

    #[test]
    fn scans_are_gs1_element_strings() {
        assert_eq!(scan_line(0), b"]C101095212345432131726123110GY00001\r");
    }
}
