//! `kouan probe PORT`: listens to a serial port at the usual settings and
//! says what the device on it appears to speak, with a sample, so that a
//! technician can fill in the `[[instrument]]` section.
//!
//! For each setting (9600, 19200, 38400 and 115200 baud 8N1, then 9600
//! 7E1) the port is opened exclusively, listened to for a few seconds, and
//! what arrived is classified: ASTM E1381 (ENQ, or frames `STX n ... ETX
//! cc CR LF`), HL7 over MLLP, MT-SICS balance replies, Modbus RTU frames
//! (found by their CRC), barcode scans, plain text lines, or noise (bytes
//! that are neither text nor a known frame: usually the wrong baud rate).
//!
//! What is safe to send. When a setting stays silent, probe asks once with
//! the MT-SICS command `SI\r\n` (send the weight now): a balance answers,
//! and the other devices kouan reads ignore it. An ASTM receiver in its
//! neutral state ignores every byte but ENQ (E1381 6.2.5); a Modbus slave
//! drops a frame whose CRC fails, and `SI\r\n` is no valid frame; scanners
//! and sensor nodes take no commands from the line. Never sent: an ASTM ENQ
//! (the analyzer would answer ACK and wait for frames, then may flag a LIS
//! error or hold its own results while the line looks busy), and any Modbus
//! request (on a shared RS-485 bus a second master collides with the real
//! one, and a wrong function could write a register). `--listen-only`
//! sends nothing at all.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_serial::SerialPort;

use crate::instrument::port::{Parity, SerialSettings};
use crate::modbus::frame::crc16;

/// `kouan probe PORT`: what does the device on this port speak?
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The serial port (`kouan ports` lists them).
    #[arg(value_name = "PORT")]
    pub port: std::path::PathBuf,
    /// Seconds to listen at each setting.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Send nothing, not even the MT-SICS `SI` (see docs/install.md).
    #[arg(long)]
    pub listen_only: bool,
    /// Stop at the first setting where the device is heard.
    #[arg(long)]
    pub first: bool,
}

/// Runs `kouan probe`; `Ok(false)` when the device said nothing at all.
pub fn run(args: &ProbeArgs) -> anyhow::Result<bool> {
    let wait = Duration::from_secs(args.seconds.max(1));
    let mut heard = Vec::new();
    for settings in settings() {
        let at = listen(&args.port, &settings, wait, !args.listen_only)?;
        let asked = if at.asked { " (after asking SI)" } else { "" };
        println!(
            "{:<12} {}{asked}",
            setting_name(&settings),
            at.speaks.describe()
        );
        if !at.bytes.is_empty() {
            for line in sample(&at.bytes, 160).lines().take(4) {
                println!("             | {line}");
            }
        }
        let done = args.first && at.speaks != Speaks::Silent;
        heard.push(at);
        if done {
            break;
        }
    }
    let Some(best) = best(&heard) else {
        println!(
            "\nthe device sent nothing: check the cable (a null-modem adapter may be \
             needed), that the instrument's output is switched on, and that it sends on \
             its own or on its print key; then probe again"
        );
        return Ok(false);
    };
    let s = &best.settings;
    println!(
        "\nbest match: {}: {}",
        setting_name(s),
        best.speaks.describe()
    );
    println!(
        "\n[[instrument]]\nport = \"{}\"\n[instrument.serial]\nbaud = {}\ndata_bits = {}\n\
         parity = \"{}\"",
        args.port.display(),
        s.baud,
        s.data_bits,
        if s.parity == Parity::Even {
            "even"
        } else {
            "none"
        }
    );
    Ok(true)
}

/// The MT-SICS "send immediately" command: the one thing probe sends.
pub const ASK: &[u8] = b"SI\r\n";

/// The settings tried, in order: the common ones of lab instruments,
/// balances, scanners and Modbus sensors.
pub fn settings() -> Vec<SerialSettings> {
    let eight_n_one = |baud| SerialSettings {
        baud,
        ..SerialSettings::default()
    };
    let mut list: Vec<SerialSettings> = [9600, 19200, 38400, 115_200]
        .into_iter()
        .map(eight_n_one)
        .collect();
    list.push(SerialSettings {
        data_bits: 7,
        parity: Parity::Even,
        ..SerialSettings::default()
    });
    list
}

/// What the bytes heard at one setting look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Speaks {
    /// Nothing arrived.
    Silent,
    /// ASTM E1381: ENQ or checksummed frames.
    Astm,
    /// HL7 v2 messages in MLLP blocks.
    Hl7,
    /// Mettler Toledo MT-SICS replies.
    MtSics,
    /// Modbus RTU frames whose CRC checks (how many).
    Modbus(usize),
    /// Barcode scans (an AIM symbology identifier or a GTIN-like line).
    Scanner,
    /// Lines of text; the terminator seen (`lf` or `cr`).
    Lines(&'static str),
    /// Bytes that are no text and no known frame.
    Noise,
}

impl Speaks {
    /// How sure the classification is: settings are ranked by it.
    fn rank(&self) -> u8 {
        match self {
            Speaks::Silent => 0,
            Speaks::Noise => 1,
            Speaks::Lines(_) => 2,
            _ => 3,
        }
    }

    /// What the technician reads, with the config that fits.
    pub fn describe(&self) -> &'static str {
        match self {
            Speaks::Silent => "nothing",
            Speaks::Astm => "ASTM E1381/E1394 (lab analyzer): driver = \"astm\", see docs/astm.md",
            Speaks::Hl7 => "HL7 v2 in MLLP blocks: driver = \"hl7\", see docs/hl7.md",
            Speaks::MtSics => {
                "MT-SICS (Mettler Toledo balance): driver = \"line\", profile = \"mt-sics\""
            }
            Speaks::Modbus(_) => "Modbus RTU frames: driver = \"modbus\", see docs/modbus.md",
            Speaks::Scanner => "barcode scans: driver = \"scanner\"",
            Speaks::Lines("cr") => {
                "lines of text ending in CR: driver = \"line\" with framing = \"cr\" \
                 (profile csv or pattern)"
            }
            Speaks::Lines(_) => {
                "lines of text: driver = \"line\" (profile sartorius, csv or pattern)"
            }
            Speaks::Noise => "noise: not text, no known frame (wrong baud rate or parity?)",
        }
    }
}

/// Classifies bytes heard from a device.
pub fn classify(bytes: &[u8]) -> Speaks {
    if bytes.is_empty() {
        return Speaks::Silent;
    }
    if is_astm(bytes) {
        return Speaks::Astm;
    }
    if let Some(start) = bytes.iter().position(|&b| b == 0x0b)
        && bytes[start..].windows(2).any(|w| w == [0x1c, 0x0d])
        && bytes[start..].starts_with(b"\x0bMSH")
    {
        return Speaks::Hl7;
    }
    let frames = modbus_frames(bytes);
    if frames > 0 && !mostly_text(bytes) {
        return Speaks::Modbus(frames);
    }
    if !mostly_text(bytes) {
        return Speaks::Noise;
    }
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.iter().any(|l| is_mt_sics(l)) {
        return Speaks::MtSics;
    }
    if lines.iter().any(|l| is_scan(l)) {
        return Speaks::Scanner;
    }
    let terminator = if bytes.contains(&b'\n') { "lf" } else { "cr" };
    Speaks::Lines(terminator)
}

fn is_astm(bytes: &[u8]) -> bool {
    if bytes.contains(&0x05) && bytes.iter().filter(|b| b.is_ascii_graphic()).count() < 4 {
        return true;
    }
    // STX, a frame number 0-7, text, ETX or ETB: the E1381 frame head.
    bytes
        .windows(2)
        .any(|w| w[0] == 0x02 && (b'0'..=b'7').contains(&w[1]))
        && bytes.iter().any(|&b| b == 0x03 || b == 0x17)
        || bytes.starts_with(&[0x05])
}

fn is_mt_sics(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["S" | "SI" | "SIR", "S" | "D", value, ..] => value.parse::<f64>().is_ok(),
        ["S" | "SI", "I" | "+" | "-"] => true,
        ["ES" | "ET" | "EL"] => true,
        _ => false,
    }
}

fn is_scan(line: &str) -> bool {
    let aim = line.len() > 3
        && line.starts_with(']')
        && line.as_bytes()[1].is_ascii_alphabetic()
        && line.as_bytes()[2].is_ascii_digit();
    let gtin = (8..=14).contains(&line.len()) && line.bytes().all(|b| b.is_ascii_digit());
    aim || gtin
}

/// Whether at least 90% of the bytes are printable ASCII, CR, LF, tab.
fn mostly_text(bytes: &[u8]) -> bool {
    let text = bytes
        .iter()
        .filter(|&&b| b.is_ascii_graphic() || b" \r\n\t".contains(&b) || b == 0x1d)
        .count();
    text * 10 >= bytes.len() * 9
}

/// The Modbus RTU frames found in `bytes`: a run from an address 1-247
/// and a known function code up to a CRC that checks. Boundaries are
/// unknown to a listener, so every start and length is tried.
pub fn modbus_frames(bytes: &[u8]) -> usize {
    let mut found = 0;
    let mut start = 0;
    while start + 4 <= bytes.len() {
        let address = bytes[start];
        let function = bytes[start + 1] & 0x7f;
        let plausible = (1..=247).contains(&address) && matches!(function, 1..=6 | 15 | 16);
        let end = (start + 256).min(bytes.len());
        let frame_end = plausible
            .then(|| {
                (start + 4..=end).find(|&stop| {
                    let (body, crc) = bytes[start..stop].split_at(stop - start - 2);
                    crc16(body) == u16::from_le_bytes([crc[0], crc[1]])
                })
            })
            .flatten();
        match frame_end {
            Some(stop) => {
                found += 1;
                start = stop;
            }
            None => start += 1,
        }
    }
    found
}

/// What was heard at one setting.
#[derive(Debug, Clone)]
pub struct Heard {
    /// The setting.
    pub settings: SerialSettings,
    /// The bytes (at most a few KiB).
    pub bytes: Vec<u8>,
    /// Whether `SI` was sent before they arrived.
    pub asked: bool,
    /// What they look like.
    pub speaks: Speaks,
}

/// Why probing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The port could not be opened.
    #[error(
        "opening {port}: {source}; if the agent reads this port, stop it first \
         (`systemctl stop kouan`), or check the path with `kouan ports`"
    )]
    Open {
        /// The port.
        port: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing the port failed.
    #[error("{action} {port}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The port.
        port: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Listens at `settings` for `listen`, asking `SI` when it stays silent
/// and `ask` is set.
pub fn listen(
    port: &Path,
    settings: &SerialSettings,
    listen: Duration,
    ask: bool,
) -> Result<Heard, ProbeError> {
    let name = port.display().to_string();
    let io = |action| {
        let name = name.clone();
        move |source| ProbeError::Io {
            action,
            port: name,
            source,
        }
    };
    let mut serial = open(port, settings).map_err(|source| ProbeError::Open {
        port: name.clone(),
        source,
    })?;
    let mut bytes = read_for(&mut serial, listen).map_err(io("reading"))?;
    let mut asked = false;
    if bytes.is_empty() && ask {
        serial.write_all(ASK).map_err(io("writing to"))?;
        serial.flush().map_err(io("writing to"))?;
        asked = true;
        bytes = read_for(&mut serial, listen.min(Duration::from_secs(2))).map_err(io("reading"))?;
    }
    let speaks = classify(&bytes);
    Ok(Heard {
        settings: settings.clone(),
        bytes,
        asked,
        speaks,
    })
}

fn open(port: &Path, settings: &SerialSettings) -> std::io::Result<Box<dyn SerialPort>> {
    let data_bits = if settings.data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let serial = tokio_serial::new(port.to_string_lossy(), settings.baud)
        .data_bits(data_bits)
        .parity(parity)
        .timeout(Duration::from_millis(100))
        .open()?;
    // Bytes left from before (or at the previous setting) would be
    // misread at this one.
    serial.clear(tokio_serial::ClearBuffer::Input)?;
    Ok(serial)
}

/// Reads for `wait`, at most 4 KiB (enough to classify; a chatty device
/// cannot grow it).
fn read_for(serial: &mut Box<dyn SerialPort>, wait: Duration) -> std::io::Result<Vec<u8>> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < wait && out.len() < 4096 {
        match serial.read(&mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n.min(4096 - out.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The setting to use: the most certain classification, the first
/// setting among equals (the commonest).
pub fn best(heard: &[Heard]) -> Option<&Heard> {
    heard
        .iter()
        .filter(|h| h.speaks != Speaks::Silent)
        .fold(None, |best: Option<&Heard>, h| match best {
            Some(b) if b.speaks.rank() >= h.speaks.rank() => Some(b),
            _ => Some(h),
        })
}

/// Bytes as a readable sample: text as is, control bytes by name.
pub fn sample(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        let named = match b {
            0x02 => "<STX>",
            0x03 => "<ETX>",
            0x04 => "<EOT>",
            0x05 => "<ENQ>",
            0x06 => "<ACK>",
            0x0b => "<VT>",
            0x15 => "<NAK>",
            0x17 => "<ETB>",
            0x1c => "<FS>",
            0x1d => "<GS>",
            b'\r' => "<CR>",
            b'\n' => "<LF>\n",
            _ => "",
        };
        if !named.is_empty() {
            out.push_str(named);
        } else if b.is_ascii_graphic() || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("<{b:02x}>"));
        }
    }
    if bytes.len() > max {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

/// The serial setting as config and as people say it (`9600 8N1`).
pub fn setting_name(settings: &SerialSettings) -> String {
    let parity = match settings.parity {
        Parity::None => 'N',
        Parity::Even => 'E',
        Parity::Odd => 'O',
    };
    format!(
        "{} {}{}{}",
        settings.baud, settings.data_bits, parity, settings.stop_bits
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn astm_frames_and_enq_are_recognised() {
        assert_eq!(classify(b"\x05"), Speaks::Astm);
        let frame = b"\x021H|\\^&|||LIAISONXL|||||LABEDV||P|1|\r\x0397\r\n";
        assert_eq!(classify(frame), Speaks::Astm);
    }

    #[test]
    fn balances_scanners_and_lines() {
        assert_eq!(classify(b"S S     100.00 g\r\n"), Speaks::MtSics);
        assert_eq!(classify(b"S I\r\n"), Speaks::MtSics);
        assert_eq!(classify(b"]C1010952123454321317250200\r"), Speaks::Scanner);
        assert_eq!(classify(b"GY-0001,0.12,0.003\n"), Speaks::Lines("lf"));
        assert_eq!(classify(b"pH=7.05\r"), Speaks::Lines("cr"));
    }

    #[test]
    fn modbus_frames_are_found_by_their_crc() {
        // A read request and its reply, back to back, as a listener on
        // the bus hears them.
        let request = [0x01, 0x03, 0x00, 0x00, 0x00, 0x0a, 0xc5, 0xcd];
        let mut reply = vec![0x01, 0x03, 0x02, 0x01, 0x2c];
        let crc = crc16(&reply).to_le_bytes();
        reply.extend_from_slice(&crc);
        let bus = [&request[..], &reply].concat();
        assert_eq!(modbus_frames(&bus), 2);
        assert_eq!(classify(&bus), Speaks::Modbus(2));
        let mut broken = bus.clone();
        broken[3] ^= 0x40;
        assert_eq!(modbus_frames(&broken), 1);
    }

    #[test]
    fn wrong_baud_rate_is_noise() {
        let noise: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(151) | 0x80).collect();
        assert_eq!(classify(&noise), Speaks::Noise);
    }

    #[test]
    fn samples_name_control_bytes() {
        assert_eq!(sample(b"\x05\x021H\r\x03", 10), "<ENQ><STX>1H<CR><ETX>");
        assert_eq!(sample(&[0xff], 10), "<ff>");
    }
}
