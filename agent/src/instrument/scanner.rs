//! The `scanner` driver: barcode scans as signed records, and the
//! traceability of readings to them.
//!
//! A serial or USB CDC-ACM scanner sends each scan as a line; a USB
//! keyboard-wedge scanner types it (see [`crate::wedge`]). Each scan is
//! parsed by [`crate::scan`] (AIM identifier, GS1 element string with check
//! digits and dates) and stored as a `scan` record. A scan that could not
//! be read exactly (a lost separator, a wrong check digit) is stored too,
//! with the reason in `problem`: the technician sees it and scans again,
//! and nothing is guessed.
//!
//! Traceability: once a scan is durable, readings of the instruments listed
//! in `instruments` are linked to it (their record's `scan` names the scan
//! record's seq and code) until another scan replaces it or `window_secs`
//! pass. The sample id of a linked reading is the scan's batch (AI 10), or
//! else its SSCC, serial or whole code, unless the instrument sent its own.

use std::time::Duration;

use serde::Deserialize;
use serde_bytes::ByteBuf;
use tokio::io::AsyncReadExt as _;

use super::line::{Frame, Framer, Framing};
use super::port::Ended;
use super::{ErrorLog, Instrument, StoreRefused};
use crate::clock::CaptureTime;
use crate::record::{self, Kind, ScanBody};
use crate::scan::{self, AimId, Content, Date};
use crate::wedge::{Decoder, DecoderConfig, DeviceError, Layout, WedgeScan};

/// `[instrument.scanner]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerOptions {
    /// How scans end on a serial scanner: `lf` (CR LF or LF) or `cr`.
    pub framing: Framing,
    /// Longest scan in bytes.
    pub max_len: usize,
    /// Instruments whose readings are traced to this scanner's scans.
    pub instruments: Vec<String>,
    /// Seconds after a scan during which readings are traced to it.
    pub window_secs: u64,
    /// Keyboard layout the wedge scanner is set to (`us`, ...).
    pub layout: String,
}

impl Default for ScannerOptions {
    fn default() -> Self {
        ScannerOptions {
            framing: Framing::Cr,
            max_len: 512,
            instruments: Vec::new(),
            window_secs: 900,
            layout: "us".into(),
        }
    }
}

impl ScannerOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<(), String> {
        if self.framing == Framing::StxEtx {
            return Err("framing must be \"cr\" or \"lf\" for a scanner".into());
        }
        if !(16..=8192).contains(&self.max_len) {
            return Err(format!("max_len = {} must be 16 to 8192", self.max_len));
        }
        if Layout::by_name(&self.layout).is_none() {
            let known: Vec<&str> = Layout::ALL.iter().map(|l| l.name).collect();
            return Err(format!(
                "layout {:?} is not one of {}",
                self.layout,
                known.join(", ")
            ));
        }
        if self.window_secs == 0 && !self.instruments.is_empty() {
            return Err("window_secs must be at least 1 when instruments are traced".into());
        }
        Ok(())
    }
}

/// A scan read into its record body and the sample id readings get.
pub fn scan_body(raw: &[u8], today: Date) -> (ScanBody, String) {
    let (aim, data) = AimId::split(raw);
    let symbology = aim.map(|aim| aim.to_string());
    let text = String::from_utf8_lossy(data).replace(scan::GS as char, "<GS>");
    let (code, content, elements, sample, problem) = match scan::parse(raw, today) {
        Ok(scan) => match scan.content {
            Content::Gs1(gs1) => {
                let code: String = gs1
                    .elements
                    .iter()
                    .map(|e| format!("({}){}", e.ai, e.raw))
                    .collect();
                let sample = gs1
                    .batch()
                    .or(gs1.sscc())
                    .or(gs1.serial())
                    .map_or_else(|| code.clone(), str::to_owned);
                let is_ean = matches!(
                    scan.aim.map(AimId::symbology),
                    Some(scan::Symbology::Ean13 | scan::Symbology::Ean8)
                ) || (scan.aim.is_none()
                    && !data.is_empty()
                    && data.iter().all(u8::is_ascii_digit));
                let elements = gs1
                    .elements
                    .iter()
                    .map(|e| (e.ai.clone(), e.raw.clone()))
                    .collect();
                let content = if is_ean { "ean" } else { "gs1" };
                (code, content, elements, sample, None)
            }
            Content::Plain(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (text.clone(), "other", Vec::new(), text, None)
            }
        },
        Err(error) => (
            text.clone(),
            "unreadable",
            Vec::new(),
            text,
            Some(error.to_string()),
        ),
    };
    let body = ScanBody {
        raw: ByteBuf::from(raw.to_vec()),
        symbology,
        code,
        content: content.into(),
        elements,
        problem,
    };
    (body, sample)
}

/// Today's date in UTC, for GS1 date windows.
pub fn today() -> Date {
    let days = CaptureTime::now().ms.div_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Date::new(year, month, day).unwrap_or_else(|| Date::new(2000, 1, 1).expect("a valid date"))
}

/// Stores one scan and traces the linked instruments to it.
pub async fn store_scan(
    instrument: &Instrument,
    options: &ScannerOptions,
    raw: &[u8],
    time: CaptureTime,
) -> Result<(), StoreRefused> {
    let (body, sample) = scan_body(raw, today());
    if let Some(problem) = &body.problem {
        tracing::warn!(
            instrument = %instrument.id(),
            code = %body.code,
            %problem,
            "scan stored but not readable exactly: scan it again"
        );
    }
    let code = body.code.clone();
    let appended = instrument
        .store(Kind::Scan, record::body(&body), time)
        .await?;
    tracing::info!(instrument = %instrument.id(), seq = appended.seq, %code, "scan stored");
    if let Some(rapid) = &instrument.rapid {
        rapid.after_scan(instrument.id(), &body, appended.seq).await;
    }
    if body.problem.is_none() {
        instrument
            .trace
            .scanned(
                instrument.id(),
                &options.instruments,
                Duration::from_secs(options.window_secs),
                (appended.seq, &code, Some(&sample)),
            )
            .await;
    }
    Ok(())
}

/// Runs the `scanner` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    let options = instrument.config.scanner.clone().unwrap_or_default();
    if let Some(input) = instrument.config.input.clone() {
        wedge(instrument, &options, input).await;
        return;
    }
    let Some(path) = instrument.config.port.clone() else {
        tracing::error!(instrument = %instrument.id(), "the scanner needs a port or an input");
        return;
    };
    let settings = instrument.config.serial.clone();
    super::supervise(
        instrument,
        || settings.open(&path),
        |port| serial_session(instrument, &options, port),
    )
    .await;
}

async fn serial_session(
    instrument: &Instrument,
    options: &ScannerOptions,
    mut port: tokio_serial::SerialStream,
) -> Ended {
    let mut framer = Framer::new(options.framing, options.max_len);
    let mut errors = ErrorLog::default();
    let mut shutdown = instrument.shutdown.clone();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::select! {
            read = port.read(&mut buf) => match read {
                Ok(0) => return Ended::Lost(std::io::Error::other("end of file")),
                Ok(n) => n,
                Err(e) => return Ended::Lost(e),
            },
            _ = super::stopping(&mut shutdown) => return Ended::Shutdown,
        };
        instrument.count_bytes(n);
        let mut frames = Vec::new();
        framer.push(&buf[..n], &mut |frame| frames.push(frame));
        for frame in frames {
            let time = CaptureTime::now();
            match frame {
                Frame::Data(scan) if scan.is_empty() => {}
                Frame::Data(scan) => match store_scan(instrument, options, &scan, time).await {
                    Ok(()) => {}
                    Err(StoreRefused::Stopping) => return Ended::Shutdown,
                    Err(e) => {
                        super::Counters::add(&instrument.counters.errors, 1);
                        tracing::error!(instrument = %instrument.id(), error = %e, "scan not stored");
                    }
                },
                Frame::Oversize | Frame::Stray(_) => {
                    instrument.count_error(&mut errors, "scan too long: discarded", "");
                }
            }
        }
    }
}

/// A keyboard-wedge scanner: a reader task turns key events into scans,
/// this task stores them.
async fn wedge(instrument: &Instrument, options: &ScannerOptions, path: std::path::PathBuf) {
    let config = DecoderConfig {
        layout: Layout::by_name(&options.layout).unwrap_or(Layout::US),
        max_len: options.max_len,
        ..DecoderConfig::default()
    };
    // A few scans of slack: storing one takes a disk sync, a person scans
    // at most a few a second.
    let (scans, mut received) = tokio::sync::mpsc::channel::<WedgeScan>(16);
    let reader = {
        let instrument = instrument.clone();
        tokio::spawn(async move { wedge_reader(&instrument, config, &path, &scans).await })
    };
    let mut shutdown = instrument.shutdown.clone();
    loop {
        let scan = tokio::select! {
            scan = received.recv() => scan,
            _ = super::stopping(&mut shutdown) => None,
        };
        let Some(scan) = scan else { break };
        match store_scan(instrument, options, &scan.data, scan.time).await {
            Ok(()) => {}
            Err(StoreRefused::Stopping) => break,
            Err(e) => {
                super::Counters::add(&instrument.counters.errors, 1);
                tracing::error!(instrument = %instrument.id(), error = %e, "scan not stored");
            }
        }
    }
    reader.abort();
}

/// Reads the input device with backoff while it is away, logging each
/// change of state once.
async fn wedge_reader(
    instrument: &Instrument,
    config: DecoderConfig,
    path: &std::path::Path,
    scans: &tokio::sync::mpsc::Sender<WedgeScan>,
) {
    let id = instrument.id();
    let mut decoder = Decoder::new(config);
    let mut backoff = super::port::Backoff::default();
    let mut attached = false;
    let mut absence_logged = false;
    loop {
        // read_scans opens and reads in one call; a probe first tells the
        // moment the device is there, for the attach log.
        if evdev::Device::open(path).is_ok() && !attached {
            attached = true;
            absence_logged = false;
            backoff = super::port::Backoff::default();
            super::Counters::add(&instrument.counters.attached, 1);
            tracing::info!(instrument = %id, port = %path.display(), "instrument attached");
        }
        match crate::wedge::read_scans(path, &mut decoder, scans).await {
            Ok(()) => return,
            Err(error @ DeviceError::Lost { .. }) => {
                attached = false;
                absence_logged = true;
                super::Counters::add(&instrument.counters.detached, 1);
                tracing::warn!(instrument = %id, %error, "instrument detached");
            }
            Err(error) if absence_logged => {
                attached &= matches!(error, DeviceError::Grab { .. });
                tracing::debug!(instrument = %id, %error, "still not available");
            }
            Err(error) => {
                attached &= matches!(error, DeviceError::Grab { .. });
                absence_logged = true;
                tracing::warn!(
                    instrument = %id,
                    %error,
                    "instrument not available: check the cable, the path and that no other \
                     program holds the device; retrying"
                );
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> Date {
        Date::new(2026, 12, 3).unwrap()
    }

    #[test]
    fn gs1_scan_with_identifier_and_separator() {
        let (body, sample) = scan_body(b"]C10109521234543213172502001012A\x1d3103000123", day());
        assert_eq!(body.symbology.as_deref(), Some("]C1"));
        assert_eq!(body.code, "(01)09521234543213(17)250200(10)12A(3103)000123");
        assert_eq!(body.content, "gs1");
        assert_eq!(sample, "12A");
        assert_eq!(body.problem, None);
        assert_eq!(body.elements[2], ("10".into(), "12A".into()));
    }

    #[test]
    fn ean_plain_and_unreadable_scans() {
        let (ean, sample) = scan_body(b"5901234123457", day());
        assert_eq!(
            (ean.content.as_str(), ean.code.as_str()),
            ("ean", "(01)05901234123457")
        );
        assert_eq!(sample, "(01)05901234123457");
        let (plain, sample) = scan_body(b"LAB-2026-0042", day());
        assert_eq!(
            (plain.content.as_str(), sample.as_str()),
            ("other", "LAB-2026-0042")
        );
        let (bad, _) = scan_body(b"]C10109521234543214", day());
        assert_eq!(bad.content, "unreadable");
        assert!(bad.problem.unwrap().contains("check digit"));
    }

    #[test]
    fn today_is_a_plausible_date() {
        let today = today();
        assert!(today.year() >= 2024, "{today}");
    }
}
