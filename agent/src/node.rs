//! The `node` driver: kouan sensor nodes on a serial link.
//!
//! A sensor node (firmware in `firmware/`) speaks the node link
//! (`docs/node-link.md`, the `kouan-protocol` crate) over a UART: it says
//! hello with its boot id, sends numbered samples and keeps each in a RAM
//! buffer until the agent acknowledges it, and reports its status. This
//! driver is the agent's end:
//!
//! - each sample becomes a signed reading, and the node hears the
//!   cumulative ack only after the record is durable and the node's
//!   watermark (boot, last stored number) is on disk ([`watermark`]);
//! - retransmitted samples are recognised by node id, boot and number
//!   ([`link::Link`]) and acknowledged again, not stored twice, also
//!   across restarts of the agent;
//! - drops the node reports (its buffer was full while nobody
//!   acknowledged) become a reading of `dropped_samples`, so the platform
//!   sees the gap;
//! - commands reach the node through a [`NodeHandle`], found by
//!   instrument id with [`handle`], and every alarm rapid response raises
//!   ([`crate::rapid::Rapid::alarms`]) switches the node's alarm output on
//!   at the alert's risk level; each command is repeated every second, up
//!   to five times, until the node answers;
//! - each node's status (firmware, buffer fill, drops, alarm output) is
//!   kept in a [`NodeStatus`] that [`NodeHandle::status`] reads.
//!
//! What is stored is documented in `docs/node-driver.md` and, for the
//! platform, in `docs/records.md`.
//!
//! ```no_run
//! # async fn f() -> Result<(), kouan_agent::node::CommandError> {
//! use kouan_agent::node;
//!
//! // An alarm of level 2 on the node of instrument "wh3-climate".
//! let Some(node) = node::handle("wh3-climate") else { return Ok(()) };
//! let outcome = node.alarm(Some(2)).await?;
//! println!("{outcome:?}, alarm output now {:?}", node.status().alarm);
//! # Ok(()) }
//! ```

pub mod link;
pub mod watermark;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kouan_protocol::{
    AgentMsg, Command, CommandResult, Decoder, Hello, NodeMsg, Outcome, Quantity, Sample, Status,
    frame,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::{self, CaptureTime};
use crate::instrument::port::Ended;
use crate::instrument::{ErrorLog, Instrument, InstrumentConfig};
use crate::rapid::Alarm;
use crate::record::{self, Kind, MeasuredValue, Measurement, ReadingBody};
use crate::writer::{AppendError, Entry};
use link::{Drops, HelloOutcome, Link, Marks, SampleOutcome, StatusOutcome};

/// `[instrument.node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// The node id expected on this port; a hello from another node is
    /// refused (logged at error, its samples not stored). Any node when
    /// unset.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Set the node's clock from the agent's at every hello, when the
    /// agent's clock is synchronised.
    #[serde(default = "yes")]
    pub time_sync: bool,
}

fn yes() -> bool {
    true
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            node_id: None,
            time_sync: true,
        }
    }
}

impl NodeOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, instrument: &InstrumentConfig) -> Result<(), String> {
        if instrument.port.is_none() {
            return Err("missing port: the node driver reads a serial port \
                        (port = \"/dev/serial/by-id/...\")"
                .into());
        }
        if instrument.listen.is_some() || instrument.connect.is_some() || instrument.input.is_some()
        {
            return Err("listen, connect and input do not apply to the node driver".into());
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > kouan_protocol::NODE_ID_LEN)
        {
            return Err(format!(
                "node_id {id:?} must be 1 to {} bytes",
                kouan_protocol::NODE_ID_LEN
            ));
        }
        Ok(())
    }
}

/// The `node` map of a node record's body: which node, boot and sample
/// it is, or which drops it records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFields {
    /// The node id from its hello.
    pub id: String,
    /// The node's boot id; sample numbers restart with it.
    pub boot: u32,
    /// A sample: its number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// A sample: the node's sensor number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<u8>,
    /// A sample: when the node took it, in ms on the node's clock (since
    /// the Unix epoch when `synced`, else since the node's boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ms: Option<u64>,
    /// A sample: whether the node's clock was set by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
    /// Drops: samples lost since the previous drop record of this boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u32>,
    /// Drops: the node's drop counter since its boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u32>,
    /// Drops: the first sample number received after the node reported
    /// them; the lost samples were taken before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u32>,
}

impl NodeFields {
    /// The node fields of a record body, if it is a node record's.
    pub fn from_body(body: &ciborium::Value) -> Option<NodeFields> {
        #[derive(Deserialize)]
        struct Body {
            node: NodeFields,
        }
        body.deserialized::<Body>().ok().map(|b| b.node)
    }

    fn new(id: &str, boot: u32) -> Self {
        NodeFields {
            id: id.to_owned(),
            boot,
            seq: None,
            sensor: None,
            node_ms: None,
            synced: None,
            dropped: None,
            dropped_total: None,
            before: None,
        }
    }
}

/// A reading record's body with the node's fields after the reading's.
#[derive(Serialize)]
struct NodeReading<'a> {
    #[serde(flatten)]
    reading: &'a ReadingBody,
    node: &'a NodeFields,
}

/// What the agent knows of the node on one port, for the status view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Whether the port is open.
    pub attached: bool,
    /// The node id from its last hello.
    pub node: Option<String>,
    /// Its firmware version.
    pub firmware: Option<String>,
    /// Its boot id.
    pub boot: Option<u32>,
    /// Samples of this boot stored with all before them.
    pub stored_through: u32,
    /// Samples in the node's buffer, and its size, from its last status.
    pub buffered: Option<(u16, u16)>,
    /// Samples the node dropped since its boot.
    pub dropped: u32,
    /// Samples the node sent again since its boot.
    pub retransmitted: u32,
    /// Frames from the agent the node found corrupt since its boot.
    pub corrupt_frames: u32,
    /// The node's alarm output as it last reported it: 0 off, else the level.
    pub alarm: Option<u8>,
}

/// Why a command did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The driver of the instrument has stopped.
    #[error("the node driver has stopped")]
    Stopped,
    /// The node did not answer any of the attempts.
    #[error("the node did not answer command {id} ({attempts} attempts)")]
    NoAnswer {
        /// The command's id.
        id: u16,
        /// How often it was sent.
        attempts: u32,
    },
    /// An alarm level outside 1 to 4.
    #[error("alarm level {0} is not 1 (most severe) to 4")]
    Level(u8),
}

struct Request {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, CommandError>>,
}

/// Commands to, and the status of, the node of one `node` instrument.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    instrument: String,
    commands: mpsc::Sender<Request>,
    status: Arc<Mutex<NodeStatus>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({:?})", self.command)
    }
}

impl NodeHandle {
    /// The instrument id.
    pub fn instrument(&self) -> &str {
        &self.instrument
    }

    /// Sends `command` and waits for the node's answer.
    ///
    /// The driver sends it when the port is open, repeats it every second
    /// until the node answers, and gives up after five attempts. If this
    /// future is dropped before the command went out, it is not sent.
    pub async fn command(&self, command: Command) -> Result<Outcome, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Request { command, reply })
            .await
            .map_err(|_| CommandError::Stopped)?;
        answer.await.map_err(|_| CommandError::Stopped)?
    }

    /// Switches the node's alarm output on at `level` (1 most severe to
    /// 4), or off with `None`.
    pub async fn alarm(&self, level: Option<u8>) -> Result<Outcome, CommandError> {
        let command = match level {
            Some(level) if !(1..=4).contains(&level) => return Err(CommandError::Level(level)),
            Some(level) => Command::Alarm { on: true, level },
            None => Command::Alarm {
                on: false,
                level: 0,
            },
        };
        self.command(command).await
    }

    /// The node's status as last reported.
    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The running node drivers by instrument id.
///
/// A plain mutex over a small map: it changes when a driver starts or
/// stops, and lookups copy a handle out.
static NODES: Mutex<BTreeMap<String, NodeHandle>> = Mutex::new(BTreeMap::new());

/// The node driver of `instrument`, while it runs.
pub fn handle(instrument: &str) -> Option<NodeHandle> {
    let nodes = NODES.lock().unwrap_or_else(|e| e.into_inner());
    nodes.get(instrument).cloned()
}

/// Every running node driver, by instrument id.
pub fn handles() -> Vec<NodeHandle> {
    let nodes = NODES.lock().unwrap_or_else(|e| e.into_inner());
    nodes.values().cloned().collect()
}

/// Removes the driver from [`NODES`] when `run` ends, however it ends.
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut nodes = NODES.lock().unwrap_or_else(|e| e.into_inner());
        nodes.remove(&self.0);
    }
}

/// How often an unanswered command is sent again, and how often in all.
const COMMAND_RETRY: Duration = Duration::from_secs(1);
const COMMAND_ATTEMPTS: u32 = 5;

/// Commands queued for the driver: a few, since callers wait for each
/// answer and commands are rare; more wait in `send`.
const COMMAND_QUEUE: usize = 8;

/// Runs the `node` driver until the agent stops.
///
/// Its state (the link, the watermarks, commands waiting for an answer)
/// lives across sessions of the port; dropping the future drops commands
/// in flight, whose callers hear [`CommandError::Stopped`].
pub async fn run(instrument: &Instrument) {
    let id = instrument.id().to_owned();
    let Some(path) = instrument.config.port.clone() else {
        tracing::error!(instrument = %id, "the node driver needs a port");
        return;
    };
    let options = instrument.config.node.clone().unwrap_or_default();
    let watermarks = watermark::path(&instrument.store_path, &id);
    let marks = match load_marks(instrument, &watermarks).await {
        Ok(marks) => marks,
        Err(error) => {
            tracing::error!(instrument = %id, %error, "node driver not started");
            return;
        }
    };

    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let status = Arc::new(Mutex::new(NodeStatus::default()));
    let registered = {
        let mut nodes = NODES.lock().unwrap_or_else(|e| e.into_inner());
        let handle = NodeHandle {
            instrument: id.clone(),
            commands: commands_tx,
            status: status.clone(),
        };
        nodes.insert(id.clone(), handle);
        Registered(id.clone())
    };

    // One session at a time holds the driver: the lock is never contended,
    // it only lets each session borrow the state mutably.
    let driver = tokio::sync::Mutex::new(Driver {
        link: Link::new(marks.clone(), options.node_id.clone()),
        saved: marks,
        options,
        watermarks,
        commands,
        pending: BTreeMap::new(),
        next_id: 1,
        status,
        instrument: id.clone(),
        errors: ErrorLog::default(),
        store_full: false,
        alarms: instrument.rapid.as_ref().map(|rapid| rapid.alarms()),
    });
    let settings = instrument.config.serial.clone();
    crate::instrument::supervise(
        instrument,
        || settings.open(&path),
        |port| async {
            let mut driver = driver.lock().await;
            driver.session(instrument, port).await
        },
    )
    .await;
    drop(registered);
}

/// The watermarks from the file, moved past what the store holds beyond it.
async fn load_marks(
    instrument: &Instrument,
    path: &std::path::Path,
) -> Result<Marks, watermark::WatermarkError> {
    let id = instrument.id().to_owned();
    let store = instrument.store_path.clone();
    let path = path.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let loaded = match watermark::load(&path) {
            Ok(loaded) => loaded,
            Err(error) => {
                // The file is written atomically, so this is damage from
                // outside; the store still has the truth for what it holds.
                tracing::warn!(instrument = %id, %error, "node watermarks unreadable: rebuilding them from the store");
                None
            }
        };
        let from_file = loaded.is_some();
        let mut marks = loaded.unwrap_or_default();
        let found = watermark::recover(&store, &id, &mut marks, from_file)?;
        if found > 0 {
            tracing::info!(instrument = %id, records = found, "node watermarks moved past records the file did not cover");
        }
        Ok(marks)
    });
    task.await
        .map_err(|e| watermark::WatermarkError::Store(e.to_string()))?
}

/// A command sent and not yet answered.
#[derive(Debug)]
struct Pending {
    command: Command,
    attempts: u32,
    sent: Instant,
    reply: Option<oneshot::Sender<Result<Outcome, CommandError>>>,
}

/// The driver's state across sessions.
#[derive(Debug)]
struct Driver {
    options: NodeOptions,
    link: Link,
    /// The watermarks as last written to the file.
    saved: Marks,
    watermarks: PathBuf,
    commands: mpsc::Receiver<Request>,
    pending: BTreeMap<u16, Pending>,
    next_id: u16,
    /// The instrument id, for logs.
    instrument: String,
    status: Arc<Mutex<NodeStatus>>,
    errors: ErrorLog,
    /// Whether the store refused a sample as full (logged once).
    store_full: bool,
    /// Alarms raised by rapid response, for the node's alarm output.
    alarms: Option<broadcast::Receiver<Alarm>>,
}

/// Why a session ends early.
enum Stop {
    Shutdown,
    Lost(std::io::Error),
}

impl From<Stop> for Ended {
    fn from(stop: Stop) -> Ended {
        match stop {
            Stop::Shutdown => Ended::Shutdown,
            Stop::Lost(error) => Ended::Lost(error),
        }
    }
}

type Port = tokio::io::WriteHalf<tokio_serial::SerialStream>;

impl Driver {
    async fn session(
        &mut self,
        instrument: &Instrument,
        port: tokio_serial::SerialStream,
    ) -> Ended {
        let (mut reader, mut writer) = tokio::io::split(port);
        let mut decoder = Decoder::<NodeMsg>::new();
        let mut shutdown = instrument.shutdown.clone();
        let mut retry = tokio::time::interval(COMMAND_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 1024];
        let mut hello_asked: Option<Instant> = None;

        // The node may have said hello while nobody listened, or rebooted:
        // until it says hello again its samples are not taken.
        self.link.detach();
        self.set_status(|s| s.attached = true);
        if let Err(stop) = self.ask_hello(&mut writer, &mut hello_asked).await {
            return self.end(stop);
        }

        loop {
            let n = tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) => return self.end(Stop::Lost(std::io::Error::other("end of file"))),
                    Ok(n) => n,
                    Err(e) => return self.end(Stop::Lost(e)),
                },
                Some(request) = self.commands.recv() => {
                    if let Err(stop) = self.send_command(&mut writer, request.command, Some(request.reply)).await {
                        return self.end(stop);
                    }
                    continue;
                }
                Some(alarm) = next_alarm(&mut self.alarms) => {
                    tracing::info!(
                        instrument = instrument.id(),
                        alert = alarm.alert,
                        risk = alarm.risk,
                        "alert: switching the node's alarm output on"
                    );
                    let command = Command::Alarm { on: true, level: alarm.risk };
                    if let Err(stop) = self.send_command(&mut writer, command, None).await {
                        return self.end(stop);
                    }
                    continue;
                }
                _ = retry.tick() => {
                    if let Err(stop) = self.retry_commands(&mut writer).await {
                        return self.end(stop);
                    }
                    continue;
                }
                _ = crate::instrument::stopping(&mut shutdown) => return self.end(Stop::Shutdown),
            };
            instrument.count_bytes(n);

            let mut messages = Vec::new();
            for outcome in decoder.feed(&buf[..n]) {
                match outcome {
                    Ok(msg) => messages.push(msg),
                    Err(error) => {
                        instrument.count_error(
                            &mut self.errors,
                            "corrupt frame from the node discarded",
                            &error.to_string(),
                        );
                    }
                }
            }
            let mut ack = false;
            for msg in messages {
                match self
                    .handle(instrument, &mut writer, msg, &mut hello_asked)
                    .await
                {
                    Ok(acked) => ack |= acked,
                    Err(stop) => return self.end(stop),
                }
            }
            if ack && let Err(stop) = self.acknowledge(instrument, &mut writer).await {
                return self.end(stop);
            }
        }
    }

    fn end(&mut self, stop: Stop) -> Ended {
        self.link.detach();
        self.set_status(|s| s.attached = false);
        stop.into()
    }

    /// Acts on one message; returns whether an ack is due.
    async fn handle(
        &mut self,
        instrument: &Instrument,
        port: &mut Port,
        msg: NodeMsg,
        hello_asked: &mut Option<Instant>,
    ) -> Result<bool, Stop> {
        match msg {
            NodeMsg::Hello(hello) => {
                self.hello(instrument, port, &hello).await?;
                Ok(self.link.ack().is_some_and(|(_, through)| through > 0))
            }
            NodeMsg::Sample(sample) => self.sample(instrument, port, &sample, hello_asked).await,
            NodeMsg::Status(status) => {
                self.node_status(instrument, &status);
                Ok(false)
            }
            NodeMsg::CommandResult(result) => {
                self.command_result(instrument, result);
                Ok(false)
            }
        }
    }

    async fn hello(
        &mut self,
        instrument: &Instrument,
        port: &mut Port,
        hello: &Hello,
    ) -> Result<(), Stop> {
        let id = instrument.id();
        match self.link.hello(hello) {
            HelloOutcome::Attached { new_boot, previous } => {
                let through = self.link.ack().map_or(0, |(_, t)| t);
                tracing::info!(
                    instrument = id,
                    node = %hello.node_id,
                    firmware = %hello.firmware,
                    boot = hello.boot,
                    new_boot,
                    previous_boot = previous.map(|m| m.boot),
                    stored_through = through,
                    sensors = hello.sensors.len(),
                    "node said hello"
                );
                self.set_status(|s| {
                    s.node = Some(hello.node_id.as_str().to_owned());
                    s.firmware = Some(hello.firmware.as_str().to_owned());
                    s.boot = Some(hello.boot);
                    s.stored_through = through;
                    if new_boot {
                        s.buffered = None;
                        s.dropped = 0;
                        s.retransmitted = 0;
                        s.corrupt_frames = 0;
                    }
                });
                if self.options.time_sync && clock::clock_synchronised() {
                    let unix_ms = u64::try_from(clock::unix_ms()).unwrap_or(0);
                    self.send_command(port, Command::TimeSync { unix_ms }, None)
                        .await?;
                }
            }
            HelloOutcome::Again => {
                tracing::debug!(instrument = id, node = %hello.node_id, "node said hello again");
            }
            HelloOutcome::Refused { protocol } => {
                tracing::error!(
                    instrument = id,
                    node = %hello.node_id,
                    protocol,
                    speaks = kouan_protocol::PROTOCOL_VERSION,
                    "node speaks another link protocol: its samples are not stored"
                );
            }
            HelloOutcome::Unexpected { expected } => {
                tracing::error!(
                    instrument = id,
                    node = %hello.node_id,
                    expected = %expected,
                    "another node than the configured node_id: its samples are not stored"
                );
            }
        }
        Ok(())
    }

    async fn sample(
        &mut self,
        instrument: &Instrument,
        port: &mut Port,
        sample: &Sample,
        hello_asked: &mut Option<Instant>,
    ) -> Result<bool, Stop> {
        if let Some(drops) = self.link.drops_before(sample.seq) {
            let Some(peer) = self.link.peer() else {
                return Ok(false);
            };
            let node = peer.id.clone();
            match self.store_drops(instrument, &node, &drops).await? {
                Some(record) => self.link.drops_recorded(drops.dropped_total, record),
                // Not stored: the node reports the count again in its next
                // status, and the drops are recorded then.
                None => return Ok(false),
            }
        }
        match self.link.sample(sample) {
            SampleOutcome::Store => {}
            SampleOutcome::Duplicate => {
                tracing::trace!(
                    instrument = instrument.id(),
                    seq = sample.seq,
                    "duplicate sample"
                );
                return Ok(true);
            }
            SampleOutcome::OutOfOrder { expected } => {
                tracing::debug!(
                    instrument = instrument.id(),
                    seq = sample.seq,
                    expected,
                    "sample out of order: waiting for the retransmission"
                );
                return Ok(true);
            }
            SampleOutcome::NoHello => {
                self.ask_hello(port, hello_asked).await?;
                return Ok(false);
            }
        }
        let Some(peer) = self.link.peer() else {
            return Ok(false);
        };
        let (node, boot) = (peer.id.clone(), peer.mark.boot);
        let quantity = peer.sensor(sample.sensor).map(|s| s.quantity);
        let Some(seq) = self
            .store_sample(instrument, &node, boot, sample, quantity)
            .await?
        else {
            return Ok(false);
        };
        self.link.stored(sample.seq, seq);
        self.set_status(|s| s.stored_through = sample.seq);
        if quantity == Some(Quantity::AlarmOutput) {
            self.alarm_output(instrument, sample.value);
        }
        Ok(true)
    }

    async fn store_sample(
        &mut self,
        instrument: &Instrument,
        node: &str,
        boot: u32,
        sample: &Sample,
        quantity: Option<Quantity>,
    ) -> Result<Option<u64>, Stop> {
        let name = quantity.map_or("value", link::quantity_name);
        let unit = link::unit_symbol(sample.unit).map(str::to_owned);
        let value = Measurement::new(name, MeasuredValue::Number(f64::from(sample.value)), unit);
        let raw =
            frame::encode(&NodeMsg::Sample(*sample)).map_or_else(|_| Vec::new(), |f| f.to_vec());
        let fields = NodeFields {
            seq: Some(sample.seq),
            sensor: Some(sample.sensor),
            node_ms: Some(sample.time.ms),
            synced: Some(sample.time.synced),
            ..NodeFields::new(node, boot)
        };
        // A node whose clock the agent set knows when it took the sample,
        // also when it comes late from its buffer; otherwise the sample
        // is dated when it arrives.
        let time = match i64::try_from(sample.time.ms) {
            Ok(ms) if sample.time.synced => CaptureTime { ms, synced: true },
            _ => CaptureTime::now(),
        };
        self.append(
            instrument,
            ReadingBody::new(vec![value], raw),
            &fields,
            time,
        )
        .await
    }

    async fn store_drops(
        &mut self,
        instrument: &Instrument,
        node: &str,
        drops: &Drops,
    ) -> Result<Option<u64>, Stop> {
        let mut value = Measurement::new(
            "dropped_samples",
            MeasuredValue::Number(f64::from(drops.dropped)),
            Some("samples".into()),
        );
        value.flags.push("node-buffer-full".into());
        let raw = frame::encode(&NodeMsg::Status(drops.status))
            .map_or_else(|_| Vec::new(), |f| f.to_vec());
        let fields = NodeFields {
            dropped: Some(drops.dropped),
            dropped_total: Some(drops.dropped_total),
            before: drops.before,
            ..NodeFields::new(node, drops.boot)
        };
        let seq = self
            .append(
                instrument,
                ReadingBody::new(vec![value], raw),
                &fields,
                CaptureTime::now(),
            )
            .await?;
        if let Some(seq) = seq {
            tracing::error!(
                instrument = instrument.id(),
                node,
                boot = drops.boot,
                dropped = drops.dropped,
                dropped_total = drops.dropped_total,
                before = drops.before,
                record = seq,
                "node lost samples while its buffer was full; recorded as dropped_samples"
            );
        }
        Ok(seq)
    }

    /// Signs and stores a node reading; `None` when the store refused it
    /// (the node keeps the sample and sends it again).
    async fn append(
        &mut self,
        instrument: &Instrument,
        mut body: ReadingBody,
        fields: &NodeFields,
        time: CaptureTime,
    ) -> Result<Option<u64>, Stop> {
        if body.hazard.is_none() {
            body.hazard = instrument.config.hazard.clone();
        }
        instrument.trace.link(instrument.id(), &mut body);
        // Limits flag the reading before it is signed; its alerts are
        // raised once it is stored, as for every other driver's readings.
        let alerts = instrument
            .rapid
            .as_ref()
            .map(|rapid| rapid.before_reading(instrument.id(), &mut body));
        let body = record::body(&NodeReading {
            reading: &body,
            node: fields,
        });
        let entry = match body {
            Ok(body) => Entry {
                instrument: instrument.id().to_owned(),
                kind: Kind::Reading,
                time,
                body,
            },
            Err(error) => {
                instrument.count_error(
                    &mut self.errors,
                    "node sample not encodable",
                    &error.to_string(),
                );
                return Ok(None);
            }
        };
        // Tried once, without waiting while the store is full: the node
        // keeps what is not acknowledged, and the session stays free to
        // forward commands (an alarm matters most when things go wrong).
        match instrument.writer.append(entry).await {
            Ok(appended) => {
                instrument
                    .counters
                    .readings
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if std::mem::take(&mut self.store_full) {
                    tracing::info!(
                        instrument = instrument.id(),
                        "store takes node samples again"
                    );
                }
                if let (Some(rapid), Some(alerts)) = (&instrument.rapid, alerts)
                    && !alerts.is_empty()
                {
                    rapid.raise(instrument.id(), alerts, appended.seq).await;
                }
                Ok(Some(appended.seq))
            }
            Err(AppendError::Closed) => Err(Stop::Shutdown),
            Err(error @ AppendError::Full { .. }) => {
                if !std::mem::replace(&mut self.store_full, true) {
                    tracing::warn!(
                        instrument = instrument.id(),
                        %error,
                        "node samples not acknowledged while the store is full; the node keeps them"
                    );
                }
                Ok(None)
            }
            Err(error) => {
                instrument.count_error(
                    &mut self.errors,
                    "node sample not stored",
                    &error.to_string(),
                );
                Ok(None)
            }
        }
    }

    /// Writes the watermarks if they moved, then acks: the node frees
    /// only what the file and the store both hold.
    async fn acknowledge(&mut self, instrument: &Instrument, port: &mut Port) -> Result<(), Stop> {
        let Some((boot, through)) = self.link.ack() else {
            return Ok(());
        };
        if self.link.marks() != &self.saved {
            let marks = self.link.marks().clone();
            let path = self.watermarks.clone();
            let saved = tokio::task::spawn_blocking(move || watermark::save(&path, &marks))
                .await
                .map_err(|e| watermark::WatermarkError::Store(e.to_string()))
                .and_then(|r| r);
            match saved {
                Ok(()) => self.saved = self.link.marks().clone(),
                Err(error) => {
                    instrument.count_error(
                        &mut self.errors,
                        "node watermark not saved; not acknowledging",
                        &error.to_string(),
                    );
                    return Ok(());
                }
            }
        }
        send(port, &AgentMsg::Ack { boot, through }).await
    }

    fn node_status(&mut self, instrument: &Instrument, status: &Status) {
        let before = self.status();
        let outcome = self.link.status(status);
        self.set_status(|s| {
            s.buffered = Some((status.buffered, status.capacity));
            s.dropped = status.dropped;
            s.retransmitted = status.retransmitted;
            s.corrupt_frames = status.corrupt_frames;
        });
        let id = instrument.id();
        match outcome {
            StatusOutcome::Dropping => tracing::warn!(
                instrument = id,
                buffered = status.buffered,
                capacity = status.capacity,
                dropped = status.dropped,
                "node buffer full: it drops samples until the agent acknowledges"
            ),
            StatusOutcome::GapClosed => tracing::info!(
                instrument = id,
                dropped = status.dropped,
                buffered = status.buffered,
                "node has room again; its drops are recorded with the next sample"
            ),
            StatusOutcome::Quiet => {}
        }
        let fill = |buffered: u16, capacity: u16| match buffered {
            b if b >= capacity => "full",
            b if u32::from(b) * 2 >= u32::from(capacity) => "half full",
            _ => "below half",
        };
        let was = before.buffered.map(|(b, c)| fill(b, c));
        let now = fill(status.buffered, status.capacity);
        if was != Some(now) || before.dropped != status.dropped {
            tracing::info!(
                instrument = id,
                buffered = status.buffered,
                capacity = status.capacity,
                fill = now,
                dropped = status.dropped,
                retransmitted = status.retransmitted,
                corrupt_frames = status.corrupt_frames,
                uptime_s = status.uptime_s,
                "node status"
            );
        } else {
            tracing::debug!(instrument = id, buffered = status.buffered, "node status");
        }
    }

    fn alarm_output(&mut self, instrument: &Instrument, value: f32) {
        let level = if value.is_finite() && (0.0..=255.0).contains(&value) {
            value as u8
        } else {
            0
        };
        let before = self.status().alarm;
        self.set_status(|s| s.alarm = Some(level));
        if before != Some(level) {
            tracing::info!(instrument = instrument.id(), level, "node alarm output");
        }
    }

    fn command_result(&mut self, instrument: &Instrument, result: CommandResult) {
        let Some(pending) = self.pending.remove(&result.id) else {
            tracing::debug!(
                instrument = instrument.id(),
                id = result.id,
                "answer to no pending command"
            );
            return;
        };
        let id = instrument.id();
        match result.outcome {
            Outcome::Done => {
                tracing::info!(instrument = id, command = ?pending.command, "node carried out the command")
            }
            outcome => {
                tracing::warn!(instrument = id, command = ?pending.command, ?outcome, "node refused the command")
            }
        }
        if let Some(reply) = pending.reply {
            let _ = reply.send(Ok(result.outcome));
        }
    }

    async fn send_command(
        &mut self,
        port: &mut Port,
        command: Command,
        reply: Option<oneshot::Sender<Result<Outcome, CommandError>>>,
    ) -> Result<(), Stop> {
        // A caller that gave up waiting does not want it sent any more.
        if reply.as_ref().is_some_and(|r| r.is_closed()) {
            return Ok(());
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        send(port, &AgentMsg::Command { id, command }).await?;
        tracing::info!(instrument = %self.instrument, id, command = ?command, "command sent to the node");
        self.pending.insert(
            id,
            Pending {
                command,
                attempts: 1,
                sent: Instant::now(),
                reply,
            },
        );
        Ok(())
    }

    async fn retry_commands(&mut self, port: &mut Port) -> Result<(), Stop> {
        let due: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent.elapsed() >= COMMAND_RETRY)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(pending) = self.pending.get_mut(&id) else {
                continue;
            };
            if pending.attempts >= COMMAND_ATTEMPTS {
                let attempts = pending.attempts;
                let command = pending.command;
                if let Some(pending) = self.pending.remove(&id)
                    && let Some(reply) = pending.reply
                {
                    let _ = reply.send(Err(CommandError::NoAnswer { id, attempts }));
                }
                tracing::warn!(instrument = %self.instrument, id, ?command, attempts, "node did not answer the command");
                continue;
            }
            pending.attempts += 1;
            pending.sent = Instant::now();
            let command = pending.command;
            send(port, &AgentMsg::Command { id, command }).await?;
        }
        Ok(())
    }

    /// Asks the node for a hello, at most once a second.
    async fn ask_hello(
        &mut self,
        port: &mut Port,
        asked: &mut Option<Instant>,
    ) -> Result<(), Stop> {
        if asked.is_some_and(|at| at.elapsed() < COMMAND_RETRY) {
            return Ok(());
        }
        *asked = Some(Instant::now());
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        send(
            port,
            &AgentMsg::Command {
                id,
                command: Command::SendHello,
            },
        )
        .await
    }

    fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The next alarm raised by rapid response; never resolves without it.
async fn next_alarm(alarms: &mut Option<broadcast::Receiver<Alarm>>) -> Option<Alarm> {
    let Some(alarms) = alarms else {
        return std::future::pending().await;
    };
    loop {
        match alarms.recv().await {
            Ok(alarm) => return Some(alarm),
            // Missed alarms were older; the next one is the current state.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

async fn send(port: &mut Port, msg: &AgentMsg) -> Result<(), Stop> {
    // Every agent message fits a frame (the largest is a time-sync).
    let Ok(bytes) = frame::encode(msg) else {
        return Ok(());
    };
    port.write_all(&bytes).await.map_err(Stop::Lost)?;
    port.flush().await.map_err(Stop::Lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instrument(toml: &str) -> InstrumentConfig {
        toml::from_str(&format!("id = \"wh3\"\ndriver = \"node\"\n{toml}")).unwrap()
    }

    #[test]
    fn options_need_a_port_and_a_short_node_id() {
        let options = NodeOptions::default();
        let error = options.validate(&instrument("")).unwrap_err();
        assert!(error.contains("port"), "{error}");
        assert!(
            options
                .validate(&instrument("port = \"/dev/ttyS0\""))
                .is_ok()
        );

        let long = NodeOptions {
            node_id: Some("a-node-id-of-17-b".into()),
            ..NodeOptions::default()
        };
        let error = long
            .validate(&instrument("port = \"/dev/ttyS0\""))
            .unwrap_err();
        assert!(error.contains("node_id"), "{error}");
        let tcp = instrument("port = \"/dev/ttyS0\"\nlisten = \"0.0.0.0:1\"");
        assert!(options.validate(&tcp).is_err());
    }

    #[test]
    fn a_node_reading_is_a_reading_with_the_node_fields_beside() {
        let reading = ReadingBody::new(Vec::new(), vec![1, 2]);
        let fields = NodeFields {
            seq: Some(42),
            ..NodeFields::new("n1", 7)
        };
        let body = record::body(&NodeReading {
            reading: &reading,
            node: &fields,
        })
        .unwrap();

        assert_eq!(NodeFields::from_body(&body), Some(fields));
        let as_reading: ReadingBody = body.deserialized().unwrap();
        assert_eq!(as_reading, reading);
        let plain = record::body(&reading).unwrap();
        assert_eq!(NodeFields::from_body(&plain), None);
    }

    #[tokio::test]
    async fn an_alarm_level_outside_one_to_four_is_refused_before_sending() {
        let (commands, mut queued) = mpsc::channel(1);
        let handle = NodeHandle {
            instrument: "wh3".into(),
            commands,
            status: Arc::default(),
        };
        assert!(matches!(
            handle.alarm(Some(0)).await,
            Err(CommandError::Level(0))
        ));
        assert!(queued.try_recv().is_err());

        drop(queued);
        assert!(matches!(
            handle.alarm(Some(1)).await,
            Err(CommandError::Stopped)
        ));
    }
}
