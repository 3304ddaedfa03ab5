//! The node's logic: sampling, the sample buffer, acks, retransmission and
//! commands, as a state machine without I/O.
//!
//! [`Node`] is what a sensor node does between its UART and its sensors, as
//! `docs/node-link.md` specifies it. It owns no peripheral and reads no
//! clock: time comes in as a parameter, a monotonic count of milliseconds
//! since boot, and so every rule below is unit-tested on the host.
//!
//! - **Sampling.** Each sensor has an interval; [`Node::due`] names the
//!   sensors whose turn it is, and [`Node::record`] numbers the value and
//!   keeps it. A sensor with interval 0 is sampled on events only: the
//!   alarm output ([`Quantity::AlarmOutput`]) is recorded whenever a
//!   command changes it, so the agent stores proof that the lamp went on.
//! - **The buffer** is a ring of `N` samples (a [`heapless::Deque`]) that
//!   always holds a contiguous range of sample numbers: the oldest
//!   unacknowledged one to the newest. When it is full, new values are not
//!   numbered, only counted in `dropped`; so the agent sees numbers without
//!   holes, and the drop counter in [`Status`] tells it how many values the
//!   gap holds. A status goes out when dropping starts and again when it
//!   ends, before the first sample after the gap.
//! - **Acks** are cumulative and scoped by the boot id: an ack for another
//!   boot frees nothing, an ack never goes backwards.
//! - **Retransmission** is go-back-N on one timer: if the oldest sent sample
//!   is not acknowledged [`RETRANSMIT_TIMEOUT_MS`] after the timer started
//!   (at a first send, at ack progress, at the last resend), up to
//!   [`RETRANSMIT_BURST`] samples are sent again from the oldest.
//! - **Commands** are carried out through [`Outputs`] and answered with a
//!   [`CommandResult`]; every command is idempotent, so a repeated id is
//!   simply carried out again.
//!
//! [`Node::step`] is the thin I/O loop around the state machine for a
//! board: it reads the UART (embedded-io), takes due samples from
//! [`Sensors`], and writes what [`Node::transmit`] hands out.
//!
//! ```
//! use kouan_firmware::node::{Config, Node, NoOutputs, SensorSpec};
//! use kouan_protocol::{AgentMsg, NodeMsg, Quantity, Unit, frame};
//!
//! let sensors = [SensorSpec::periodic(0, Quantity::Temperature, Unit::DegreeCelsius, 10_000, 1_000)];
//! let config = Config { node_id: "wh3-climate", firmware: "0.1.0", boot: 7, sensors: &sensors };
//! let mut node = Node::<64>::new(&config).unwrap();
//!
//! // At boot: hello, then the first sample of every sensor.
//! assert!(matches!(node.transmit(0), Some(NodeMsg::Hello(_))));
//! assert_eq!(node.due(0), Some(0));
//! node.record(0, 21.5, 0);
//! let Some(NodeMsg::Sample(sample)) = node.transmit(0) else { panic!() };
//! assert_eq!((sample.seq, sample.value), (1, 21.5));
//!
//! // The agent acknowledges it; the buffer is empty again.
//! let ack = frame::encode(&AgentMsg::Ack { boot: 7, through: 1 }).unwrap();
//! node.receive(&ack, 10, &mut NoOutputs);
//! assert_eq!(node.status(10).buffered, 0);
//! ```

use embedded_hal::digital::OutputPin;
use embedded_io::{Read, ReadReady, Write};
use heapless::{Deque, String, Vec};
use kouan_protocol::{
    AgentMsg, Command, CommandResult, Hello, MAX_SENSORS, NodeMsg, NodeTime, Outcome,
    PROTOCOL_VERSION, Quantity, Sample, SensorInfo, Status, Unit,
};

use crate::Link;

/// How long the oldest sent sample may wait for its ack before the node
/// goes back and sends again (docs/node-link.md, "Retransmission").
pub const RETRANSMIT_TIMEOUT_MS: u64 = 2_000;

/// Most samples sent again per timeout: 16 short frames take about 35 ms
/// of a 115200 baud line, so a retransmission never starves new samples.
pub const RETRANSMIT_BURST: usize = 16;

/// How often a node sends [`Status`] on its own.
pub const STATUS_PERIOD_MS: u64 = 60_000;

/// Command results waiting to be sent. The node answers a command within
/// the same step that received it, so more than a few never wait; when the
/// queue is full the oldest answer is lost and the agent's retry asks again.
const PENDING_RESULTS: usize = 4;

/// Highest alarm level (levels run from 1, most severe, to 4).
const MAX_ALARM_LEVEL: u8 = 4;

/// A sensor as the board declares it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorSpec {
    /// What the node announces in its hello; `interval_ms` is the interval
    /// at boot, 0 for a sensor recorded only on events.
    pub info: SensorInfo,
    /// The shortest interval `set-interval` may choose; shorter ones are
    /// answered `invalid`.
    pub min_interval_ms: u32,
}

impl SensorSpec {
    /// A sensor sampled every `interval_ms`, never faster than
    /// `min_interval_ms`.
    pub const fn periodic(
        id: u8,
        quantity: Quantity,
        unit: Unit,
        interval_ms: u32,
        min_interval_ms: u32,
    ) -> Self {
        SensorSpec {
            info: SensorInfo {
                id,
                quantity,
                unit,
                interval_ms,
            },
            min_interval_ms,
        }
    }

    /// The alarm output as a sensor: recorded when a command changes it,
    /// with the level it shows (0 for off).
    pub const fn alarm_output(id: u8) -> Self {
        SensorSpec {
            info: SensorInfo {
                id,
                quantity: Quantity::AlarmOutput,
                unit: Unit::None,
                interval_ms: 0,
            },
            min_interval_ms: 0,
        }
    }
}

/// Who the node is and what it measures.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// Unique at the monitoring point, at most 16 bytes.
    pub node_id: &'a str,
    /// Firmware version (semver), at most 16 bytes.
    pub firmware: &'a str,
    /// Differs from the previous boot's (docs/firmware.md says where each
    /// board gets it); scopes sample numbers and acks.
    pub boot: u32,
    /// At most 8, with distinct ids.
    pub sensors: &'a [SensorSpec],
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The node id or firmware version is longer than 16 bytes.
    NameTooLong,
    /// More than 8 sensors.
    TooManySensors,
    /// Two sensors share an id.
    DuplicateSensor,
    /// A periodic sensor whose interval or minimum interval is zero, or
    /// whose interval is below its minimum.
    BadInterval,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ConfigError::NameTooLong => "node id or firmware version longer than 16 bytes",
            ConfigError::TooManySensors => "more than 8 sensors",
            ConfigError::DuplicateSensor => "two sensors share an id",
            ConfigError::BadInterval => "sensor interval is zero or below its minimum",
        })
    }
}

impl core::error::Error for ConfigError {}

/// Why an output could not be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputError {
    /// The node has no such output; answered `unsupported`.
    Unsupported,
    /// The output exists but failed to switch (a GPIO expander that did
    /// not answer, say). The link has no outcome for this, so it is also
    /// answered `unsupported`: the agent must not believe the alarm is on.
    Fault,
}

/// The node's outputs that commands switch, like an `OutputPin` with a
/// level.
pub trait Outputs {
    /// Switches the alarm lamp or buzzer: `Some(level)` on at level 1 (most
    /// severe) to 4, `None` off.
    fn set_alarm(&mut self, level: Option<u8>) -> Result<(), OutputError>;
    /// Switches the indicator a technician looks for (`identify`).
    fn set_identify(&mut self, on: bool) -> Result<(), OutputError>;
}

/// A node without outputs: commands that need one are answered
/// `unsupported`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOutputs;

impl Outputs for NoOutputs {
    fn set_alarm(&mut self, _level: Option<u8>) -> Result<(), OutputError> {
        Err(OutputError::Unsupported)
    }

    fn set_identify(&mut self, _on: bool) -> Result<(), OutputError> {
        Err(OutputError::Unsupported)
    }
}

/// Outputs on two GPIO pins, active high: the alarm pin is on at every
/// level (one lamp cannot show a level), the identify pin is an LED.
#[derive(Debug)]
pub struct PinOutputs<A, I> {
    /// The alarm lamp or buzzer driver.
    pub alarm: A,
    /// The identify LED.
    pub identify: I,
}

impl<A: OutputPin, I: OutputPin> Outputs for PinOutputs<A, I> {
    fn set_alarm(&mut self, level: Option<u8>) -> Result<(), OutputError> {
        match level {
            Some(_) => self.alarm.set_high(),
            None => self.alarm.set_low(),
        }
        .map_err(|_| OutputError::Fault)
    }

    fn set_identify(&mut self, on: bool) -> Result<(), OutputError> {
        match on {
            true => self.identify.set_high(),
            false => self.identify.set_low(),
        }
        .map_err(|_| OutputError::Fault)
    }
}

/// Where samples come from: the board maps sensor ids to its drivers.
pub trait Sensors {
    /// Measures sensor `id` now; `None` when the measurement failed (the
    /// board logs why). A failed measurement is skipped, not numbered.
    fn measure(&mut self, id: u8, now_ms: u64) -> Option<f32>;
}

/// One sensor's place in the sampling schedule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    info: SensorInfo,
    min_interval_ms: u32,
    next_due_ms: u64,
}

/// A sensor node's logic; `N` is the sample buffer's capacity.
///
/// Memory: 24 bytes per buffered sample plus about 400 bytes of state and
/// the link's 133-byte receive buffer. `N = 128` holds a little over two
/// minutes of five sensors sampled each second.
#[derive(Debug)]
pub struct Node<const N: usize> {
    node_id: String<16>,
    firmware: String<16>,
    boot: u32,
    slots: Vec<Slot, MAX_SENSORS>,
    link: Link,

    /// Unacknowledged samples, oldest first, numbers contiguous.
    buffer: Deque<Sample, N>,
    /// Samples numbered this boot; the next one gets this plus 1.
    numbered: u32,
    /// Highest number sent at least once.
    sent_through: u32,
    /// When the go-back timer fires, if it runs.
    retransmit_at: Option<u64>,
    /// The next number of a go-back burst, and how many the burst has left.
    resend_next: u32,
    resend_left: usize,

    dropped: u32,
    /// The buffer was full at the last value: a gap is open.
    dropping: bool,
    retransmitted: u32,

    hello_pending: bool,
    status_pending: bool,
    /// When the last status went out (0 at boot: the first periodic one
    /// comes a period after boot).
    status_sent_ms: u64,
    results: Deque<CommandResult, PENDING_RESULTS>,

    alarm: Option<u8>,
    identify_until: Option<u64>,
    /// Unix time minus node time, once the agent has set the clock.
    clock_offset_ms: Option<i64>,
}

impl<const N: usize> Node<N> {
    /// A node at boot: its hello is the first message to go out, and every
    /// periodic sensor is due at once.
    ///
    /// The node is built on the stack and moved out; a board keeps it in a
    /// `static` with [`Node::empty`] and [`Node::init`] instead, so that the
    /// sample buffer is never copied through the stack.
    pub fn new(config: &Config<'_>) -> Result<Self, ConfigError> {
        let mut node = Node::empty();
        node.init(config)?;
        Ok(node)
    }

    /// A node without identity or sensors, to place in a `static` and
    /// [`Node::init`] there. It sends nothing until then. Every byte of it
    /// is zero, so such a static costs no flash (it lands in `.bss`).
    pub const fn empty() -> Self {
        const {
            assert!(
                N >= 2 && N <= u16::MAX as usize,
                "the sample buffer holds 2 to 65535 samples"
            )
        };
        Node {
            node_id: String::new(),
            firmware: String::new(),
            boot: 0,
            slots: Vec::new(),
            link: Link::new(),
            buffer: Deque::new(),
            numbered: 0,
            sent_through: 0,
            retransmit_at: None,
            resend_next: 0,
            resend_left: 0,
            dropped: 0,
            dropping: false,
            retransmitted: 0,
            hello_pending: false,
            status_pending: false,
            status_sent_ms: 0,
            results: Deque::new(),
            alarm: None,
            identify_until: None,
            clock_offset_ms: None,
        }
    }

    /// Starts the node in place as [`Node::new`] would, forgetting any
    /// earlier state. On error the node is left as it was.
    pub fn init(&mut self, config: &Config<'_>) -> Result<(), ConfigError> {
        let node_id = String::try_from(config.node_id).map_err(|_| ConfigError::NameTooLong)?;
        let firmware = String::try_from(config.firmware).map_err(|_| ConfigError::NameTooLong)?;

        let mut slots = Vec::new();
        for (i, spec) in config.sensors.iter().enumerate() {
            if config.sensors[..i]
                .iter()
                .any(|s| s.info.id == spec.info.id)
            {
                return Err(ConfigError::DuplicateSensor);
            }
            let periodic = spec.info.interval_ms > 0;
            if periodic
                && (spec.min_interval_ms == 0 || spec.info.interval_ms < spec.min_interval_ms)
            {
                return Err(ConfigError::BadInterval);
            }
            let slot = Slot {
                info: spec.info,
                min_interval_ms: spec.min_interval_ms,
                next_due_ms: 0,
            };
            slots.push(slot).map_err(|_| ConfigError::TooManySensors)?;
        }

        // Field by field: assigning a whole node would copy the buffer.
        self.node_id = node_id;
        self.firmware = firmware;
        self.boot = config.boot;
        self.slots = slots;
        self.link = Link::new();
        self.buffer.clear();
        self.numbered = 0;
        self.sent_through = 0;
        self.retransmit_at = None;
        self.resend_next = 0;
        self.resend_left = 0;
        self.dropped = 0;
        self.dropping = false;
        self.retransmitted = 0;
        self.hello_pending = true;
        self.status_pending = false;
        self.status_sent_ms = 0;
        self.results.clear();
        self.alarm = None;
        self.identify_until = None;
        self.clock_offset_ms = None;

        // The alarm output's state at boot is the first thing a node with
        // one reports, so the agent never has to guess it.
        self.record_alarm(0);
        Ok(())
    }

    /// This boot's id.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// The alarm output's state: the level it shows, or `None` when off.
    pub fn alarm(&self) -> Option<u8> {
        self.alarm
    }

    /// The counters a [`Status`] message carries, as of `now`.
    pub fn status(&self, now: u64) -> Status {
        Status {
            buffered: self.buffer.len() as u16,
            capacity: N as u16,
            dropped: self.dropped,
            retransmitted: self.retransmitted,
            corrupt_frames: u32::try_from(self.link.corrupt_frames()).unwrap_or(u32::MAX),
            uptime_s: u32::try_from(now / 1_000).unwrap_or(u32::MAX),
        }
    }

    /// The next periodic sensor whose turn has come at `now`, if any; its
    /// next turn is scheduled as it is returned, so call until `None`.
    ///
    /// A node that fell behind (a slow sensor, a long UART write) takes one
    /// sample and resumes the rhythm from now, rather than a burst of
    /// catch-up samples that would measure the same moment.
    pub fn due(&mut self, now: u64) -> Option<u8> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.info.interval_ms > 0 && s.next_due_ms <= now)?;

        let interval = u64::from(slot.info.interval_ms);
        let next = slot.next_due_ms + interval;
        slot.next_due_ms = if next > now { next } else { now + interval };
        Some(slot.info.id)
    }

    /// Numbers and keeps a value of sensor `sensor` taken at `now`, or
    /// counts it as dropped when the buffer is full. Values of unknown
    /// sensors are ignored.
    pub fn record(&mut self, sensor: u8, value: f32, now: u64) {
        let Some(slot) = self.slots.iter().find(|s| s.info.id == sensor) else {
            warn!("value of unknown sensor {} ignored", sensor);
            return;
        };
        let unit = slot.info.unit;

        if self.buffer.is_full() {
            self.dropped = self.dropped.saturating_add(1);
            if !self.dropping {
                warn!("sample buffer full, dropping after seq {}", self.numbered);
                self.dropping = true;
                self.status_pending = true;
            }
            return;
        }

        // The first sample after a gap: the status with the final drop
        // count goes out before it, so the agent knows where the gap lies.
        if core::mem::take(&mut self.dropping) {
            info!("sample buffer has room again, {} dropped", self.dropped);
            self.status_pending = true;
        }
        let half = N.div_ceil(2);
        if self.buffer.len() + 1 == half {
            self.status_pending = true;
        }

        let sample = Sample {
            seq: self.numbered + 1,
            sensor,
            value,
            unit,
            time: self.time(now),
        };
        // The buffer is not full, so this cannot fail.
        if self.buffer.push_back(sample).is_ok() {
            self.numbered += 1;
        }
    }

    /// Decodes bytes from the agent and acts on each complete message;
    /// commands switch `outputs` at once.
    pub fn receive<O: Outputs>(&mut self, bytes: &[u8], now: u64, outputs: &mut O) {
        for &byte in bytes {
            match self.link.push(byte) {
                Some(Ok(msg)) => self.handle(msg, now, outputs),
                Some(Err(_)) => debug!("corrupt frame from the agent discarded"),
                None => {}
            }
        }
    }

    /// The next message to send at `now`, or `None` when there is nothing
    /// to send. Call until `None` to drain.
    ///
    /// Order: hello, command results, status, samples sent again, new
    /// samples. A status thus always precedes the samples taken after the
    /// event it reports.
    pub fn transmit(&mut self, now: u64) -> Option<NodeMsg> {
        if core::mem::take(&mut self.hello_pending) {
            return Some(NodeMsg::Hello(self.hello()));
        }
        if let Some(result) = self.results.pop_front() {
            return Some(NodeMsg::CommandResult(result));
        }
        if self.status_pending || now >= self.status_sent_ms + STATUS_PERIOD_MS {
            self.status_pending = false;
            self.status_sent_ms = now;
            return Some(NodeMsg::Status(self.status(now)));
        }

        self.start_go_back(now);
        if self.resend_left > 0
            && let Some(sample) = self.buffered(self.resend_next)
        {
            self.resend_next += 1;
            self.resend_left -= 1;
            self.retransmitted = self.retransmitted.saturating_add(1);
            return Some(NodeMsg::Sample(sample));
        }
        self.resend_left = 0;

        let sample = self.buffered(self.sent_through + 1)?;
        self.sent_through = sample.seq;
        self.retransmit_at
            .get_or_insert(now + RETRANSMIT_TIMEOUT_MS);
        Some(NodeMsg::Sample(sample))
    }

    /// Switches off what has run its time (the identify indicator).
    pub fn expire<O: Outputs>(&mut self, now: u64, outputs: &mut O) {
        if self.identify_until.is_some_and(|until| now >= until) {
            self.identify_until = None;
            let _ = outputs.set_identify(false);
        }
    }

    /// One turn of a board's main loop: takes what the UART has received,
    /// samples the sensors that are due, and writes every message that is
    /// ready. Blocks only in the UART's writes.
    ///
    /// Call it often: every millisecond or so, and at least as often as
    /// the UART's receive FIFO fills, or received bytes are lost.
    pub fn step<U, S, O>(
        &mut self,
        now: u64,
        uart: &mut U,
        sensors: &mut S,
        outputs: &mut O,
    ) -> Result<(), U::Error>
    where
        U: Read + ReadReady + Write,
        S: Sensors,
        O: Outputs,
    {
        let mut chunk = [0u8; 32];
        while uart.read_ready()? {
            let n = uart.read(&mut chunk)?;
            self.receive(&chunk[..n], now, outputs);
        }

        while let Some(sensor) = self.due(now) {
            match sensors.measure(sensor, now) {
                Some(value) => self.record(sensor, value, now),
                None => warn!("sensor {} failed, sample skipped", sensor),
            }
        }
        self.expire(now, outputs);

        while let Some(msg) = self.transmit(now) {
            match kouan_protocol::frame::encode(&msg) {
                Ok(frame) => uart.write_all(&frame)?,
                // Every message of the node fits a frame; a failure here
                // is a bug, and the message is lost rather than the node.
                Err(_) => warn!("message too large for a frame, not sent"),
            }
        }
        uart.flush()
    }

    fn handle<O: Outputs>(&mut self, msg: AgentMsg, now: u64, outputs: &mut O) {
        match msg {
            AgentMsg::Ack { boot, through } => self.ack(boot, through, now),
            AgentMsg::Command { id, command } => {
                let outcome = self.command(command, now, outputs);
                debug!("command {} answered {}", id, outcome as u8);
                if self.results.is_full() {
                    self.results.pop_front();
                }
                let _ = self.results.push_back(CommandResult { id, outcome });
            }
        }
    }

    fn ack(&mut self, boot: u32, through: u32, now: u64) {
        // An ack for another boot is late news from before a reset: the
        // numbers it names are not this boot's samples.
        if boot != self.boot {
            debug!("ack for boot {} ignored", boot);
            return;
        }

        // An agent can only have stored what was sent: an ack beyond that
        // is a bug on its side, and freeing unsent samples would lose them.
        let through = through.min(self.sent_through);
        let mut freed = false;
        while self.buffer.front().is_some_and(|s| s.seq <= through) {
            self.buffer.pop_front();
            freed = true;
        }
        if !freed {
            return;
        }

        // A burst in progress skips what is now acknowledged; the timer
        // restarts for the new oldest sample, if it was sent.
        let oldest = self.buffer.front().map(|s| s.seq);
        if let Some(oldest) = oldest
            && self.resend_next < oldest
        {
            let skipped = (oldest - self.resend_next) as usize;
            self.resend_left = self.resend_left.saturating_sub(skipped);
            self.resend_next = oldest;
        }
        self.retransmit_at = match oldest {
            Some(seq) if seq <= self.sent_through => Some(now + RETRANSMIT_TIMEOUT_MS),
            _ => None,
        };
    }

    fn command<O: Outputs>(&mut self, command: Command, now: u64, outputs: &mut O) -> Outcome {
        match command {
            Command::Alarm { on, level } => {
                if on && !(1..=MAX_ALARM_LEVEL).contains(&level) {
                    return Outcome::Invalid;
                }
                let wanted = on.then_some(level);
                if let Err(error) = outputs.set_alarm(wanted) {
                    return unsupported(error);
                }
                if wanted != self.alarm {
                    self.alarm = wanted;
                    info!("alarm output now {}", wanted.unwrap_or(0));
                    self.record_alarm(now);
                }
                Outcome::Done
            }
            Command::SetInterval {
                sensor,
                interval_ms,
            } => {
                let Some(slot) = self.slots.iter_mut().find(|s| s.info.id == sensor) else {
                    return Outcome::Invalid;
                };
                // Event-driven sensors have no schedule to change.
                if slot.info.interval_ms == 0 || interval_ms < slot.min_interval_ms {
                    return Outcome::Invalid;
                }
                slot.info.interval_ms = interval_ms;
                slot.next_due_ms = slot.next_due_ms.min(now + u64::from(interval_ms));
                Outcome::Done
            }
            Command::Identify { seconds } => {
                let on = seconds > 0;
                if let Err(error) = outputs.set_identify(on) {
                    return unsupported(error);
                }
                self.identify_until = on.then(|| now + u64::from(seconds) * 1_000);
                Outcome::Done
            }
            Command::TimeSync { unix_ms } => {
                let (Ok(unix), Ok(node)) = (i64::try_from(unix_ms), i64::try_from(now)) else {
                    return Outcome::Invalid;
                };
                self.clock_offset_ms = Some(unix - node);
                Outcome::Done
            }
            Command::SendHello => {
                self.hello_pending = true;
                Outcome::Done
            }
        }
    }

    /// Records the alarm output's new state as a sample of its sensor, if
    /// the board announced one.
    fn record_alarm(&mut self, now: u64) {
        let sensor = self
            .slots
            .iter()
            .find(|s| s.info.quantity == Quantity::AlarmOutput)
            .map(|s| s.info.id);
        if let Some(sensor) = sensor {
            self.record(sensor, f32::from(self.alarm.unwrap_or(0)), now);
        }
    }

    /// Starts a go-back burst when the timer has fired.
    fn start_go_back(&mut self, now: u64) {
        let fired = self.retransmit_at.is_some_and(|at| now >= at);
        let Some(oldest) = self.buffer.front().map(|s| s.seq) else {
            return;
        };
        if !fired || self.resend_left > 0 || oldest > self.sent_through {
            return;
        }

        let sent = (self.sent_through - oldest + 1) as usize;
        self.resend_next = oldest;
        self.resend_left = sent.min(RETRANSMIT_BURST);
        self.retransmit_at = Some(now + RETRANSMIT_TIMEOUT_MS);
        debug!("no ack in time, sending again from seq {}", oldest);
    }

    /// The buffered sample numbered `seq`, if it is buffered.
    fn buffered(&self, seq: u32) -> Option<Sample> {
        let oldest = self.buffer.front()?.seq;
        let index = seq.checked_sub(oldest)?;
        self.buffer.get(index as usize).copied()
    }

    fn time(&self, now: u64) -> NodeTime {
        match self.clock_offset_ms {
            Some(offset) => NodeTime {
                ms: (now as i64).saturating_add(offset).max(0) as u64,
                synced: true,
            },
            None => NodeTime {
                ms: now,
                synced: false,
            },
        }
    }

    fn hello(&self) -> Hello {
        let mut sensors = Vec::new();
        for slot in &self.slots {
            // `slots` has the same capacity as the hello's list.
            let _ = sensors.push(slot.info);
        }
        Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            firmware: self.firmware.clone(),
            boot: self.boot,
            sensors,
        }
    }
}

fn unsupported(error: OutputError) -> Outcome {
    if error == OutputError::Fault {
        warn!("output failed to switch");
    }
    Outcome::Unsupported
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::vec::Vec as StdVec;

    use kouan_protocol::{Decoder, frame};

    use super::*;

    const BOOT: u32 = 7;

    /// Temperature and humidity every second, and an alarm output.
    const SENSORS: [SensorSpec; 3] = [
        SensorSpec::periodic(0, Quantity::Temperature, Unit::DegreeCelsius, 1_000, 100),
        SensorSpec::periodic(1, Quantity::RelativeHumidity, Unit::PercentRh, 1_000, 100),
        SensorSpec::alarm_output(2),
    ];

    fn config(sensors: &[SensorSpec]) -> Config<'_> {
        Config {
            node_id: "wh3-climate",
            firmware: "0.1.0",
            boot: BOOT,
            sensors,
        }
    }

    /// A node whose hello and boot-time alarm sample are already sent.
    fn node<const N: usize>() -> Node<N> {
        let mut node = Node::<N>::new(&config(&SENSORS[..2])).unwrap();
        assert!(matches!(node.transmit(0), Some(NodeMsg::Hello(_))));
        node
    }

    #[derive(Debug, Default)]
    struct Lamp {
        alarm: Option<u8>,
        identify: bool,
        switched: usize,
    }

    impl Outputs for Lamp {
        fn set_alarm(&mut self, level: Option<u8>) -> Result<(), OutputError> {
            self.alarm = level;
            self.switched += 1;
            Ok(())
        }

        fn set_identify(&mut self, on: bool) -> Result<(), OutputError> {
            self.identify = on;
            Ok(())
        }
    }

    fn send<const N: usize>(
        node: &mut Node<N>,
        msg: AgentMsg,
        now: u64,
        outputs: &mut impl Outputs,
    ) {
        node.receive(&frame::encode(&msg).unwrap(), now, outputs);
    }

    fn ack<const N: usize>(node: &mut Node<N>, boot: u32, through: u32, now: u64) {
        send(node, AgentMsg::Ack { boot, through }, now, &mut NoOutputs);
    }

    fn command<const N: usize>(
        node: &mut Node<N>,
        id: u16,
        command: Command,
        now: u64,
        outputs: &mut impl Outputs,
    ) -> Outcome {
        send(node, AgentMsg::Command { id, command }, now, outputs);
        match node.transmit(now) {
            Some(NodeMsg::CommandResult(result)) if result.id == id => result.outcome,
            other => panic!("expected the result of command {id}, got {other:?}"),
        }
    }

    /// Records `count` temperature values at `now`.
    fn fill<const N: usize>(node: &mut Node<N>, count: usize, now: u64) {
        for i in 0..count {
            node.record(0, i as f32, now);
        }
    }

    /// Everything the node sends at `now`.
    fn drain<const N: usize>(node: &mut Node<N>, now: u64) -> StdVec<NodeMsg> {
        core::iter::from_fn(|| node.transmit(now)).collect()
    }

    fn seqs(msgs: &[NodeMsg]) -> StdVec<u32> {
        msgs.iter()
            .filter_map(|m| match m {
                NodeMsg::Sample(s) => Some(s.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hello_goes_first_and_names_the_boot_and_sensors() {
        let mut node = Node::<8>::new(&config(&SENSORS)).unwrap();

        let Some(NodeMsg::Hello(hello)) = node.transmit(0) else {
            panic!("hello first")
        };
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!(hello.node_id, "wh3-climate");
        assert_eq!(hello.boot, BOOT);
        assert_eq!(hello.sensors.len(), 3);
        assert_eq!(hello.sensors[2].quantity, Quantity::AlarmOutput);
    }

    #[test]
    fn alarm_output_state_at_boot_is_the_first_sample() {
        let mut node = Node::<8>::new(&config(&SENSORS)).unwrap();

        let msgs = drain(&mut node, 0);

        let NodeMsg::Sample(sample) = msgs[1] else {
            panic!("a sample after the hello: {msgs:?}")
        };
        assert_eq!((sample.seq, sample.sensor, sample.value), (1, 2, 0.0));
        assert_eq!(sample.unit, Unit::None);
    }

    #[test]
    fn every_periodic_sensor_is_due_at_boot_then_by_its_interval() {
        let mut node = node::<8>();

        assert_eq!(node.due(0), Some(0));
        assert_eq!(node.due(0), Some(1));
        assert_eq!(node.due(0), None);
        assert_eq!(node.due(999), None);
        assert_eq!(node.due(1_000), Some(0));
        assert_eq!(node.due(1_000), Some(1));
    }

    #[test]
    fn a_node_that_fell_behind_takes_one_sample_and_keeps_the_new_rhythm() {
        let mut node = node::<8>();
        while node.due(0).is_some() {}

        assert_eq!(node.due(5_500), Some(0));
        assert_eq!(node.due(5_500), Some(1));
        assert_eq!(node.due(5_500), None);
        assert_eq!(node.due(6_499), None);
        assert_eq!(node.due(6_500), Some(0));
    }

    #[test]
    fn samples_are_numbered_from_one_across_sensors() {
        let mut node = node::<8>();
        node.record(0, 21.5, 10);
        node.record(1, 40.0, 10);
        node.record(0, 21.6, 1_010);

        let msgs = drain(&mut node, 1_010);

        assert_eq!(seqs(&msgs), [1, 2, 3]);
        let NodeMsg::Sample(second) = msgs[1] else {
            panic!()
        };
        assert_eq!(second.sensor, 1);
        assert_eq!(second.unit, Unit::PercentRh);
        assert_eq!(
            second.time,
            NodeTime {
                ms: 10,
                synced: false
            }
        );
    }

    #[test]
    fn unknown_sensor_values_are_not_numbered() {
        let mut node = node::<8>();
        node.record(9, 1.0, 0);

        assert_eq!(node.status(0).buffered, 0);
    }

    #[test]
    fn cumulative_ack_frees_through_its_number() {
        let mut node = node::<8>();
        fill(&mut node, 5, 0);
        drain(&mut node, 0);

        ack(&mut node, BOOT, 3, 100);

        assert_eq!(node.status(100).buffered, 2);
    }

    #[test]
    fn ack_for_another_boot_frees_nothing() {
        let mut node = node::<8>();
        fill(&mut node, 5, 0);
        drain(&mut node, 0);

        ack(&mut node, BOOT + 1, 5, 100);

        assert_eq!(node.status(100).buffered, 5);
    }

    #[test]
    fn an_older_ack_after_a_newer_one_changes_nothing() {
        let mut node = node::<8>();
        fill(&mut node, 5, 0);
        drain(&mut node, 0);

        ack(&mut node, BOOT, 4, 100);
        ack(&mut node, BOOT, 2, 200);

        assert_eq!(node.status(200).buffered, 1);
        node.record(0, 1.0, 300);
        assert_eq!(seqs(&drain(&mut node, 300)), [6]);
    }

    #[test]
    fn ack_beyond_what_was_sent_frees_only_what_was_sent() {
        let mut node = node::<8>();
        fill(&mut node, 2, 0);
        drain(&mut node, 0);
        fill(&mut node, 2, 10);

        ack(&mut node, BOOT, 100, 20);

        assert_eq!(node.status(20).buffered, 2);
        assert_eq!(seqs(&drain(&mut node, 20)), [3, 4]);
    }

    #[test]
    fn unacked_samples_go_again_from_the_oldest_after_the_timeout() {
        let mut node = node::<8>();
        fill(&mut node, 4, 0);
        assert_eq!(seqs(&drain(&mut node, 0)), [1, 2, 3, 4]);
        ack(&mut node, BOOT, 1, 500);

        assert!(drain(&mut node, 500 + RETRANSMIT_TIMEOUT_MS - 1).is_empty());
        let again = drain(&mut node, 500 + RETRANSMIT_TIMEOUT_MS);

        assert_eq!(seqs(&again), [2, 3, 4]);
        assert_eq!(node.status(0).retransmitted, 3);
    }

    #[test]
    fn retransmission_repeats_while_no_ack_comes() {
        let mut node = node::<8>();
        fill(&mut node, 2, 0);
        drain(&mut node, 0);

        let first = drain(&mut node, RETRANSMIT_TIMEOUT_MS);
        let early = drain(&mut node, 2 * RETRANSMIT_TIMEOUT_MS - 1);
        let second = drain(&mut node, 2 * RETRANSMIT_TIMEOUT_MS);

        assert_eq!(seqs(&first), [1, 2]);
        assert!(early.is_empty());
        assert_eq!(seqs(&second), [1, 2]);
    }

    #[test]
    fn retransmission_sends_at_most_a_burst() {
        let mut node = node::<64>();
        fill(&mut node, 40, 0);
        drain(&mut node, 0);

        let again = seqs(&drain(&mut node, RETRANSMIT_TIMEOUT_MS));

        assert_eq!(again, (1..=RETRANSMIT_BURST as u32).collect::<StdVec<_>>());
    }

    #[test]
    fn ack_during_a_burst_skips_what_it_acknowledges() {
        let mut node = node::<64>();
        fill(&mut node, 10, 0);
        drain(&mut node, 0);
        let now = RETRANSMIT_TIMEOUT_MS;

        let first = node.transmit(now);
        ack(&mut node, BOOT, 6, now);
        let rest = seqs(&drain(&mut node, now));

        assert!(matches!(
            first,
            Some(NodeMsg::Sample(Sample { seq: 1, .. }))
        ));
        assert_eq!(rest, [7, 8, 9, 10]);
    }

    #[test]
    fn new_samples_after_a_full_ack_need_a_new_timeout() {
        let mut node = node::<8>();
        fill(&mut node, 2, 0);
        drain(&mut node, 0);
        ack(&mut node, BOOT, 2, 1_900);

        node.record(0, 1.0, 3_000);
        assert_eq!(seqs(&drain(&mut node, 3_000)), [3]);

        assert!(drain(&mut node, 3_000 + RETRANSMIT_TIMEOUT_MS - 1).is_empty());
        assert_eq!(seqs(&drain(&mut node, 3_000 + RETRANSMIT_TIMEOUT_MS)), [3]);
    }

    #[test]
    fn full_buffer_drops_new_values_and_reports_the_gap() {
        let mut node = node::<4>();
        fill(&mut node, 4, 0);
        drain(&mut node, 0);

        fill(&mut node, 3, 10);
        let at_full = drain(&mut node, 10);

        let NodeMsg::Status(status) = at_full[0] else {
            panic!("a status when dropping starts: {at_full:?}")
        };
        assert_eq!(
            (status.buffered, status.capacity, status.dropped),
            (4, 4, 3)
        );

        // The agent comes back: the first sample after the gap follows a
        // status with the final count, and numbering continues.
        ack(&mut node, BOOT, 4, 20);
        node.record(0, 1.0, 30);
        let after = drain(&mut node, 30);
        assert!(matches!(
            after[0],
            NodeMsg::Status(Status {
                dropped: 3,
                buffered: 1,
                ..
            })
        ));
        assert_eq!(seqs(&after), [5]);
    }

    #[test]
    fn status_goes_out_when_the_buffer_reaches_half_full() {
        let mut node = node::<8>();
        fill(&mut node, 3, 0);
        assert!(
            !drain(&mut node, 0)
                .iter()
                .any(|m| matches!(m, NodeMsg::Status(_)))
        );

        fill(&mut node, 1, 0);
        let msgs = drain(&mut node, 0);

        assert!(matches!(
            msgs[0],
            NodeMsg::Status(Status { buffered: 4, .. })
        ));
    }

    #[test]
    fn status_goes_out_every_period() {
        let mut node = node::<8>();

        assert!(drain(&mut node, STATUS_PERIOD_MS - 1).is_empty());
        let msgs = drain(&mut node, STATUS_PERIOD_MS);

        assert!(matches!(
            msgs[..],
            [NodeMsg::Status(Status { uptime_s: 60, .. })]
        ));
        assert!(drain(&mut node, 2 * STATUS_PERIOD_MS - 1).is_empty());
    }

    #[test]
    fn corrupt_frames_are_counted() {
        let mut node = node::<8>();
        let mut bytes = frame::encode(&AgentMsg::Ack {
            boot: BOOT,
            through: 1,
        })
        .unwrap();
        bytes[3] ^= 0x40;

        node.receive(&bytes, 0, &mut NoOutputs);

        assert_eq!(node.status(0).corrupt_frames, 1);
    }

    #[test]
    fn alarm_switches_the_output_and_records_its_state() {
        let mut node = Node::<8>::new(&config(&SENSORS)).unwrap();
        drain(&mut node, 0);
        let mut lamp = Lamp::default();

        let on = Command::Alarm { on: true, level: 2 };
        assert_eq!(command(&mut node, 5, on, 100, &mut lamp), Outcome::Done);

        assert_eq!((lamp.alarm, node.alarm()), (Some(2), Some(2)));
        let NodeMsg::Sample(sample) = node.transmit(100).unwrap() else {
            panic!("the new state as a sample")
        };
        assert_eq!((sample.sensor, sample.value), (2, 2.0));

        // A repeat (the agent missed the result) switches again but
        // records nothing new.
        assert_eq!(command(&mut node, 5, on, 200, &mut lamp), Outcome::Done);
        assert_eq!(lamp.switched, 2);
        assert!(drain(&mut node, 200).is_empty());

        let off = Command::Alarm {
            on: false,
            level: 0,
        };
        assert_eq!(command(&mut node, 6, off, 300, &mut lamp), Outcome::Done);
        assert_eq!(lamp.alarm, None);
        let NodeMsg::Sample(sample) = node.transmit(300).unwrap() else {
            panic!("the new state as a sample")
        };
        assert_eq!(sample.value, 0.0);
    }

    #[test]
    fn alarm_level_out_of_range_is_invalid() {
        let mut node = node::<8>();
        let mut lamp = Lamp::default();

        for level in [0, 5] {
            let alarm = Command::Alarm { on: true, level };
            assert_eq!(command(&mut node, 1, alarm, 0, &mut lamp), Outcome::Invalid);
        }
        assert_eq!(lamp.switched, 0);
    }

    #[test]
    fn node_without_outputs_answers_unsupported() {
        let mut node = node::<8>();
        let alarm = Command::Alarm { on: true, level: 1 };
        let identify = Command::Identify { seconds: 5 };

        assert_eq!(
            command(&mut node, 1, alarm, 0, &mut NoOutputs),
            Outcome::Unsupported
        );
        assert_eq!(
            command(&mut node, 2, identify, 0, &mut NoOutputs),
            Outcome::Unsupported
        );
        assert_eq!(node.alarm(), None);
    }

    #[test]
    fn set_interval_changes_the_schedule_within_limits() {
        let mut node = Node::<8>::new(&config(&SENSORS)).unwrap();
        drain(&mut node, 0);
        while node.due(0).is_some() {}
        let mut lamp = Lamp::default();
        let set = |sensor, interval_ms| Command::SetInterval {
            sensor,
            interval_ms,
        };

        assert_eq!(
            command(&mut node, 1, set(9, 500), 0, &mut lamp),
            Outcome::Invalid
        );
        assert_eq!(
            command(&mut node, 2, set(0, 99), 0, &mut lamp),
            Outcome::Invalid
        );
        assert_eq!(
            command(&mut node, 3, set(2, 500), 0, &mut lamp),
            Outcome::Invalid
        );
        assert_eq!(
            command(&mut node, 4, set(0, 100), 0, &mut lamp),
            Outcome::Done
        );

        assert_eq!(node.due(100), Some(0));
        assert_eq!(node.due(200), Some(0));
        let send_hello = AgentMsg::Command {
            id: 5,
            command: Command::SendHello,
        };
        send(&mut node, send_hello, 200, &mut lamp);
        let msgs = drain(&mut node, 200);
        let [NodeMsg::Hello(hello), NodeMsg::CommandResult(result)] = &msgs[..] else {
            panic!("hello, then the result: {msgs:?}")
        };
        assert_eq!(hello.sensors[0].interval_ms, 100);
        assert_eq!(result.outcome, Outcome::Done);
    }

    #[test]
    fn identify_switches_the_indicator_for_its_time() {
        let mut node = node::<8>();
        let mut lamp = Lamp::default();

        let identify = Command::Identify { seconds: 3 };
        assert_eq!(
            command(&mut node, 1, identify, 1_000, &mut lamp),
            Outcome::Done
        );
        assert!(lamp.identify);

        node.expire(3_999, &mut lamp);
        assert!(lamp.identify);
        node.expire(4_000, &mut lamp);
        assert!(!lamp.identify);
    }

    #[test]
    fn time_sync_stamps_later_samples_with_unix_time() {
        let mut node = node::<8>();
        let sync = Command::TimeSync {
            unix_ms: 1_764_756_000_000,
        };

        assert_eq!(
            command(&mut node, 1, sync, 5_000, &mut NoOutputs),
            Outcome::Done
        );
        node.record(0, 1.0, 6_000);

        let Some(NodeMsg::Sample(sample)) = node.transmit(6_000) else {
            panic!()
        };
        assert_eq!(
            sample.time,
            NodeTime {
                ms: 1_764_756_001_000,
                synced: true
            }
        );
    }

    #[test]
    fn init_in_place_starts_a_new_boot() {
        let mut node = node::<8>();
        fill(&mut node, 3, 0);
        drain(&mut node, 0);

        let next = Config {
            boot: BOOT + 1,
            ..config(&SENSORS)
        };
        node.init(&next).unwrap();

        let msgs = drain(&mut node, 0);
        assert!(matches!(&msgs[0], NodeMsg::Hello(hello) if hello.boot == BOOT + 1));
        assert_eq!(seqs(&msgs), [1]);
        assert_eq!(node.status(0).buffered, 1);
    }

    #[test]
    fn empty_node_sends_nothing() {
        let mut node = Node::<8>::empty();

        assert_eq!(node.transmit(0), None);
        assert_eq!(node.due(0), None);
    }

    #[test]
    fn bad_configs_are_refused() {
        let long = Config {
            node_id: "a-node-id-longer-than-16",
            ..config(&SENSORS)
        };
        let twice = [SENSORS[0], SENSORS[0]];
        let slow_min = [SensorSpec::periodic(
            0,
            Quantity::Other,
            Unit::None,
            100,
            200,
        )];

        assert_eq!(Node::<8>::new(&long).err(), Some(ConfigError::NameTooLong));
        assert_eq!(
            Node::<8>::new(&config(&twice)).err(),
            Some(ConfigError::DuplicateSensor)
        );
        assert_eq!(
            Node::<8>::new(&config(&slow_min)).err(),
            Some(ConfigError::BadInterval)
        );
    }

    /// A UART whose received bytes a test queues and whose sent bytes it
    /// reads back.
    #[derive(Debug, Default)]
    struct Uart {
        rx: VecDeque<u8>,
        tx: StdVec<u8>,
    }

    impl embedded_io::ErrorType for Uart {
        type Error = core::convert::Infallible;
    }

    impl Read for Uart {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.rx.len());
            for (dst, src) in buf.iter_mut().zip(self.rx.drain(..n)) {
                *dst = src;
            }
            Ok(n)
        }
    }

    impl ReadReady for Uart {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(!self.rx.is_empty())
        }
    }

    impl Write for Uart {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.tx.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    struct Counting(f32);

    impl Sensors for Counting {
        fn measure(&mut self, _id: u8, _now_ms: u64) -> Option<f32> {
            self.0 += 1.0;
            Some(self.0)
        }
    }

    #[test]
    fn step_samples_answers_and_frames_over_the_uart() {
        let mut node = Node::<8>::new(&config(&SENSORS)).unwrap();
        let mut uart = Uart::default();
        let mut lamp = Lamp::default();
        let command = AgentMsg::Command {
            id: 3,
            command: Command::Alarm { on: true, level: 1 },
        };
        uart.rx.extend(frame::encode(&command).unwrap());

        node.step(0, &mut uart, &mut Counting(0.0), &mut lamp)
            .unwrap();

        let mut decoder = Decoder::<NodeMsg>::new();
        let sent: StdVec<NodeMsg> = decoder.feed(&uart.tx).map(Result::unwrap).collect();
        assert!(matches!(sent[0], NodeMsg::Hello(_)));
        assert_eq!(
            sent[1],
            NodeMsg::CommandResult(CommandResult {
                id: 3,
                outcome: Outcome::Done
            })
        );
        // The alarm's state at boot, its new state, then both sensors.
        assert_eq!(seqs(&sent), [1, 2, 3, 4]);
        assert_eq!(lamp.alarm, Some(1));
    }
}
