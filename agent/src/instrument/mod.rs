//! Instruments: the configured devices the agent reads, and the runtime
//! that keeps one task per instrument attached to its port.
//!
//! An instrument is a section `[[instrument]]` of the configuration: an id,
//! a driver, where the device is (a serial port by its stable path, a TCP
//! address, an input device) and the driver's options. At start-up
//! [`spawn`] checks nothing more than the config already did and starts one
//! task per instrument; the task ([`port::supervise`]) opens the device,
//! hands it to the driver for a session, and when the session ends because
//! the device went away, reopens it with backoff. A session reads bytes,
//! frames and parses them, and stores each reading through the
//! [`Instrument`] handle, which returns only once the signed record is
//! durable: nothing is acknowledged to a device before that.
//!
//! Drivers: [`line`] (balances, CSV loggers, anything that sends lines) and
//! [`scanner`] (barcode scanners; a scan is a record of its own, and readings
//! that follow at linked instruments are traced to it through [`Trace`]).
//! Analyzers on the network are reached through [`tcp`].
//!
//! Every task counts what it sees in its [`Counters`] (bytes, readings,
//! errors), logs each state change of its port once (attached, detached),
//! and logs a summary of its counters when it stops.

pub mod line;
pub mod port;
pub mod scanner;
pub mod tcp;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

use crate::clock::CaptureTime;
use crate::record::{self, Kind, ReadingBody};
use crate::writer::{AppendError, Appended, Entry, Writer};

pub use port::{SerialSettings, supervise};
pub use trace::Trace;

/// One `[[instrument]]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentConfig {
    /// The instrument's id: `instrument` in its records and the last
    /// segment of their MQTT topic.
    pub id: String,
    /// Which driver speaks to it.
    pub driver: DriverKind,
    /// The serial port, by its stable path (`/dev/serial/by-id/...`).
    #[serde(default)]
    pub port: Option<PathBuf>,
    /// The input device of a keyboard-wedge scanner
    /// (`/dev/input/by-id/...-event-kbd`).
    #[serde(default)]
    pub input: Option<PathBuf>,
    /// Hazard category of what the instrument tests: `health`,
    /// `chemical`, `physical`, `biological` or `environmental`.
    #[serde(default)]
    pub hazard: Option<String>,
    /// Serial line settings.
    #[serde(default)]
    pub serial: SerialSettings,
    /// Options of the `line` driver.
    #[serde(default)]
    pub line: Option<line::LineOptions>,
    /// Options of the `scanner` driver.
    #[serde(default)]
    pub scanner: Option<scanner::ScannerOptions>,
    /// TCP: listen for the instrument on this address (`0.0.0.0:5100`).
    #[serde(default)]
    pub listen: Option<String>,
    /// TCP: connect to the instrument at this address (`10.1.2.3:5100`).
    #[serde(default)]
    pub connect: Option<String>,
    /// Options of the `astm` driver.
    #[serde(default)]
    pub astm: Option<crate::astm::AstmOptions>,
    /// Options of the `hl7` driver.
    #[serde(default)]
    pub hl7: Option<crate::hl7::Hl7Options>,
    /// Options of the `modbus` driver (the instrument is one RS-485 bus).
    #[serde(default)]
    pub modbus: Option<crate::modbus::BusOptions>,
    /// Options of the `node` driver.
    #[serde(default)]
    pub node: Option<crate::node::NodeOptions>,
}

/// The drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// Lines of text: balances (MT-SICS, Sartorius SBI), CSV, patterns.
    Line,
    /// Barcode scanners: serial, USB CDC-ACM or USB keyboard wedge.
    Scanner,
    /// Lab analyzers speaking ASTM E1381/E1394 (LIS1/LIS2), serial or TCP.
    Astm,
    /// Lab analyzers speaking HL7 v2 over MLLP (TCP).
    Hl7,
    /// Sensors on an RS-485 bus speaking Modbus RTU.
    Modbus,
    /// kouan sensor nodes speaking the node link (docs/node-link.md).
    Node,
}

/// The hazard categories of the monitoring points.
pub const HAZARDS: [&str; 5] = [
    "health",
    "chemical",
    "physical",
    "biological",
    "environmental",
];

impl InstrumentConfig {
    /// Checks what serde cannot: ids, which options go with which driver,
    /// and the driver's own options. Errors name the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |name: &str| format!("instrument {:?}: {name}", self.id);
        if !crate::config::is_topic_segment(&self.id) {
            return Err((
                field("id"),
                "must be 1 to 64 of a-z, 0-9, '-' and '_' (it is an MQTT topic segment)".into(),
            ));
        }
        if let Some(hazard) = &self.hazard
            && !HAZARDS.contains(&hazard.as_str())
        {
            return Err((
                field("hazard"),
                format!("{hazard:?} is not one of {}", HAZARDS.join(", ")),
            ));
        }
        self.serial.validate().map_err(|m| (field("serial"), m))?;
        match self.driver {
            DriverKind::Line => {
                if self.port.is_none() {
                    return Err((
                        field("port"),
                        "missing: the line driver reads a serial port".into(),
                    ));
                }
                if self.scanner.is_some() || self.input.is_some() {
                    return Err((
                        field("scanner"),
                        "[instrument.scanner] and input belong to driver = \"scanner\"".into(),
                    ));
                }
                let options = self.line.clone().unwrap_or_default();
                options.compile().map_err(|m| (field("line"), m))?;
            }
            DriverKind::Scanner => {
                if self.port.is_some() == self.input.is_some() {
                    return Err((
                        field("port"),
                        "give either port (serial or USB CDC-ACM scanner) or input \
                         (USB keyboard-wedge scanner), not both or neither"
                            .into(),
                    ));
                }
                if self.line.is_some() {
                    return Err((
                        field("line"),
                        "[instrument.line] belongs to driver = \"line\"".into(),
                    ));
                }
                let options = self.scanner.clone().unwrap_or_default();
                options.validate().map_err(|m| (field("scanner"), m))?;
            }
            DriverKind::Astm => {
                let options = self.astm.clone().unwrap_or_default();
                options.validate(self).map_err(|m| (field("astm"), m))?;
            }
            DriverKind::Hl7 => {
                let options = self.hl7.clone().unwrap_or_default();
                options.validate(self).map_err(|m| (field("hl7"), m))?;
            }
            DriverKind::Modbus => {
                let Some(options) = &self.modbus else {
                    return Err((
                        field("modbus"),
                        "missing: the modbus driver needs \
                        [instrument.modbus] with its devices and points"
                            .into(),
                    ));
                };
                options.validate(self).map_err(|m| (field("modbus"), m))?;
            }
            DriverKind::Node => {
                let options = self.node.clone().unwrap_or_default();
                options.validate(self).map_err(|m| (field("node"), m))?;
            }
        }
        Ok(())
    }

    /// Where the device is, for logs.
    pub fn location(&self) -> String {
        if let Some(port) = self.port.as_ref().or(self.input.as_ref()) {
            return port.display().to_string();
        }
        match (&self.listen, &self.connect) {
            (Some(listen), _) => format!("tcp listen {listen}"),
            (None, Some(connect)) => format!("tcp {connect}"),
            (None, None) => "(no port)".into(),
        }
    }
}

/// What one instrument's task has seen since the agent started.
///
/// Atomics, because the task writes them and the status view and the stop
/// summary read them from other threads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes received from the device.
    pub bytes: AtomicU64,
    /// Readings (or scans) stored as records.
    pub readings: AtomicU64,
    /// Frames that could not be used: garbage, oversize, unparseable,
    /// error replies of the device.
    pub errors: AtomicU64,
    /// Times the device was opened.
    pub attached: AtomicU64,
    /// Times the device went away.
    pub detached: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot: (bytes, readings, errors, attached, detached).
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.bytes.load(Ordering::Relaxed),
            self.readings.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.attached.load(Ordering::Relaxed),
            self.detached.load(Ordering::Relaxed),
        ]
    }
}

/// Why a reading was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreRefused {
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
    /// The writer refused it for good (too large, encoding, the store failed).
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// What a driver session holds of its instrument: identity, the writer,
/// counters and traceability.
#[derive(Debug, Clone)]
pub struct Instrument {
    /// The configured instrument.
    pub config: Arc<InstrumentConfig>,
    /// Where records go.
    pub writer: Writer,
    /// What the task has seen.
    pub counters: Arc<Counters>,
    /// Scans that readings are traced to.
    pub trace: Trace,
    /// Becomes true when the agent stops.
    pub shutdown: watch::Receiver<bool>,
    /// Orders and limits that readings and scans are matched against.
    pub rapid: Option<Arc<crate::rapid::Rapid>>,
    /// The record store's file: drivers keep small state files beside it
    /// (the node driver's watermarks, the HL7 messages stored).
    pub store_path: PathBuf,
    /// Whether the store continues the record stream of the last run
    /// (false for a new or a damaged store): state that names records of
    /// the old stream is then dropped.
    pub continuing: bool,
}

impl Instrument {
    /// The instrument id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Stores a reading captured at `time` and returns once it is durable.
    ///
    /// The reading gets the instrument's hazard category and is traced to
    /// the last scan at a linked scanner. While the store is full (the
    /// `backpressure` policy) it waits and tries again, holding the
    /// reading, since a line instrument cannot be asked to send it again;
    /// it gives up only when the agent stops. If its future is dropped the
    /// reading may or may not be stored.
    pub async fn store_reading(
        &self,
        body: ReadingBody,
        time: CaptureTime,
    ) -> Result<Appended, StoreRefused> {
        let (body, pending) = self.traced(body);
        let appended = self.store(Kind::Reading, record::body(&body), time).await?;
        self.raise(pending, appended.seq).await;
        Ok(appended)
    }

    /// Stores a reading like [`Instrument::store_reading`], but tries once:
    /// a full store is refused at once ([`AppendError::Full`]), for
    /// devices that send again what is not acknowledged (an ASTM `NAK`, an
    /// HL7 `AE`) and must hear of the refusal before they give up waiting.
    pub async fn try_store_reading(
        &self,
        body: ReadingBody,
        time: CaptureTime,
    ) -> Result<Appended, StoreRefused> {
        let (body, pending) = self.traced(body);
        let body = record::body(&body).map_err(|e| AppendError::Record(e.to_string()))?;
        let entry = Entry {
            instrument: self.config.id.clone(),
            kind: Kind::Reading,
            time,
            body,
        };
        let appended = self.writer.append(entry).await?;
        Counters::add(&self.counters.readings, 1);
        self.raise(pending, appended.seq).await;
        Ok(appended)
    }

    /// The reading with the instrument's hazard category and its scan,
    /// flagged where it crosses a limit; the alerts to raise once stored.
    fn traced(&self, mut body: ReadingBody) -> (ReadingBody, Option<crate::rapid::Pending>) {
        if body.hazard.is_none() {
            body.hazard = self.config.hazard.clone();
        }
        self.trace.link(self.id(), &mut body);
        let pending = self
            .rapid
            .as_ref()
            .map(|rapid| rapid.before_reading(self.id(), &mut body));
        (body, pending)
    }

    /// Raises the alerts of the reading stored as `seq`.
    async fn raise(&self, pending: Option<crate::rapid::Pending>, seq: u64) {
        if let (Some(rapid), Some(pending)) = (&self.rapid, pending)
            && !pending.is_empty()
        {
            rapid.raise(self.id(), pending, seq).await;
        }
    }

    /// Stores a record of `kind` with `body`, waiting while the store is full.
    pub async fn store(
        &self,
        kind: Kind,
        body: Result<ciborium::Value, record::RecordError>,
        time: CaptureTime,
    ) -> Result<Appended, StoreRefused> {
        let body = body.map_err(|e| AppendError::Record(e.to_string()))?;
        let mut shutdown = self.shutdown.clone();
        let mut warned = false;
        loop {
            let entry = Entry {
                instrument: self.config.id.clone(),
                kind,
                time,
                body: body.clone(),
            };
            match self.writer.append(entry).await {
                Ok(appended) => {
                    Counters::add(&self.counters.readings, 1);
                    return Ok(appended);
                }
                Err(AppendError::Full { max_bytes }) => {
                    if !warned {
                        tracing::warn!(
                            instrument = %self.config.id,
                            max_bytes,
                            "store full: holding the reading until records are delivered"
                        );
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stopping(&mut shutdown) => return Err(StoreRefused::Stopping),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Counts `n` received bytes.
    pub fn count_bytes(&self, n: usize) {
        Counters::add(&self.counters.bytes, n as u64);
    }

    /// Counts a frame that could not be used and logs it, at most once a
    /// minute per instrument at warn (the rest at debug), so that a port
    /// full of garbage cannot flood the journal.
    pub fn count_error(&self, limiter: &mut ErrorLog, what: &str, detail: &str) {
        Counters::add(&self.counters.errors, 1);
        limiter.log(&self.config.id, what, detail);
    }
}

/// Rate limit of a task's error logs: the first error, then one line a
/// minute with the number suppressed meanwhile.
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn log(&mut self, instrument: &str, what: &str, detail: &str) {
        let due = self.last.is_none_or(|last| last.elapsed() >= Self::EVERY);
        if due {
            tracing::warn!(
                instrument,
                suppressed = self.suppressed,
                detail,
                "{what} (further errors of this instrument are logged once a minute)"
            );
            self.last = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
            tracing::debug!(instrument, detail, "{what}");
        }
    }
}

/// Starts one task per instrument. Each runs until `shutdown` turns true,
/// then logs its counters. `continuing` says whether the store continues
/// its record stream, so scans made before a restart may still trace
/// readings ([`Trace::open`]).
pub fn spawn(
    instruments: &[InstrumentConfig],
    writer: &Writer,
    (store_path, continuing): (&std::path::Path, bool),
    rapid: Option<&Arc<crate::rapid::Rapid>>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<(Arc<Counters>, tokio::task::JoinHandle<()>)> {
    let trace = Trace::open(store_path, continuing);
    instruments
        .iter()
        .map(|config| {
            let instrument = Instrument {
                config: Arc::new(config.clone()),
                writer: writer.clone(),
                counters: Arc::default(),
                trace: trace.clone(),
                shutdown: shutdown.clone(),
                rapid: rapid.cloned(),
                store_path: store_path.to_owned(),
                continuing,
            };
            let counters = instrument.counters.clone();
            let task = tokio::spawn(async move {
                run(&instrument).await;
                let [bytes, readings, errors, attached, detached] = instrument.counters.snapshot();
                tracing::info!(
                    instrument = %instrument.config.id,
                    bytes,
                    readings,
                    errors,
                    attached,
                    detached,
                    "instrument stopped"
                );
            });
            (counters, task)
        })
        .collect()
}

async fn run(instrument: &Instrument) {
    match instrument.config.driver {
        DriverKind::Line => line::run(instrument).await,
        DriverKind::Scanner => scanner::run(instrument).await,
        DriverKind::Astm => crate::astm::run(instrument).await,
        DriverKind::Hl7 => crate::hl7::run(instrument).await,
        DriverKind::Modbus => crate::modbus::run(instrument).await,
        DriverKind::Node => crate::node::run(instrument).await,
    }
}

/// Resolves when the agent stops. (A function, so that the borrow of the
/// watch value ends inside it and select! futures stay `Send`.)
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
