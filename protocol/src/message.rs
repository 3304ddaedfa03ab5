//! The messages of the node link.
//!
//! Every type here is serialised with postcard: integers wider than a byte
//! as unsigned LEB128 varints, `f32` as four little-endian bytes, `bool` as
//! one byte, strings and vectors as a varint length and their contents, and
//! enums as a varint variant index followed by the variant's fields. The
//! variant indices are part of the wire format: new variants go at the end,
//! and a change to an existing one bumps [`PROTOCOL_VERSION`].
//!
//! Samples are numbered by one counter per node boot, so the agent can
//! acknowledge them cumulatively ([`AgentMsg::Ack`]) and drop retransmitted
//! duplicates by `(node, boot, seq)`.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Version of the node link spoken by this crate, sent in [`Hello`].
///
/// An agent refuses samples from a node whose version it does not speak.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest node id, in bytes of UTF-8.
pub const NODE_ID_LEN: usize = 16;

/// Longest firmware version string, in bytes of UTF-8.
pub const FIRMWARE_VERSION_LEN: usize = 16;

/// Most sensors one node can announce.
pub const MAX_SENSORS: usize = 8;

/// A message from a sensor node to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeMsg {
    /// Sent at boot and when the agent asks ([`Command::SendHello`]).
    Hello(Hello),
    /// One numbered measurement, kept by the node until acknowledged.
    Sample(Sample),
    /// Health of the node's buffer and link, sent periodically.
    Status(Status),
    /// The outcome of an [`AgentMsg::Command`].
    CommandResult(CommandResult),
}

/// Who a node is and what it measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The node link version the node speaks ([`PROTOCOL_VERSION`]).
    pub protocol: u16,
    /// The node's id, unique at its monitoring point (for example `"wh3-climate"`).
    pub node_id: String<NODE_ID_LEN>,
    /// The firmware version, semver (for example `"0.1.0"`).
    pub firmware: String<FIRMWARE_VERSION_LEN>,
    /// Changes at every reset of the node; sample numbers restart with it.
    pub boot: u32,
    /// The sensors whose samples this node sends.
    pub sensors: Vec<SensorInfo, MAX_SENSORS>,
}

/// One sensor as announced in [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SensorInfo {
    /// The node-local sensor number used in [`Sample::sensor`].
    pub id: u8,
    /// What the sensor measures.
    pub quantity: Quantity,
    /// The unit of its samples.
    pub unit: Unit,
    /// The current sampling interval in milliseconds.
    pub interval_ms: u32,
}

/// A measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantity {
    /// Air temperature.
    Temperature,
    /// Relative humidity.
    RelativeHumidity,
    /// Concentration of a gas.
    GasConcentration,
    /// Ambient gamma dose rate.
    DoseRate,
    /// Pulses of a radiation counter.
    CountRate,
    /// Anything else; the agent's config names it.
    Other,
    /// The state of the node's alarm output (lamp, buzzer): 0 off, else the
    /// alarm level it shows. Sampled on change, not on a schedule.
    AlarmOutput,
}

/// The unit of a sample's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Degrees Celsius (°C).
    DegreeCelsius,
    /// Percent relative humidity (%RH).
    PercentRh,
    /// Parts per million by volume (ppm).
    Ppm,
    /// Percent of the lower explosive limit (%LEL).
    PercentLel,
    /// Microsievert per hour (µSv/h).
    MicrosievertPerHour,
    /// Counts per minute (cpm).
    CountsPerMinute,
    /// A dimensionless value.
    None,
}

/// One numbered measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Sample number, one counter per boot for all sensors, starting at 1.
    pub seq: u32,
    /// The sensor it comes from ([`SensorInfo::id`]).
    pub sensor: u8,
    /// The measured value.
    pub value: f32,
    /// The unit of `value`.
    pub unit: Unit,
    /// When the node took it.
    pub time: NodeTime,
}

/// A time on the node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTime {
    /// Milliseconds: since the Unix epoch when `synced`, else since boot.
    pub ms: u64,
    /// Whether the node's clock was set by [`Command::TimeSync`].
    pub synced: bool,
}

/// Health of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Samples held in the ring buffer, waiting for an ack.
    pub buffered: u16,
    /// Size of the ring buffer, in samples.
    pub capacity: u16,
    /// Samples lost since boot because the buffer was full.
    pub dropped: u32,
    /// Samples sent again because their ack did not come in time.
    pub retransmitted: u32,
    /// Frames from the agent the node discarded as corrupt.
    pub corrupt_frames: u32,
    /// Seconds since boot.
    pub uptime_s: u32,
}

/// The outcome of a command, echoing its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The [`AgentMsg::Command`] id this answers.
    pub id: u16,
    /// What the node did.
    pub outcome: Outcome,
}

/// What a node did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Carried out.
    Done,
    /// The node has no such capability (for example no alarm output).
    Unsupported,
    /// An argument was out of range.
    Invalid,
}

/// A message from the agent to a sensor node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// Every sample of boot `boot` numbered `through` or lower is durable
    /// at the agent; the node may free them. Acks for another boot are
    /// ignored, so an ack delayed across a node reset frees nothing.
    Ack {
        /// The boot whose samples are acknowledged.
        boot: u32,
        /// The highest acknowledged sample number.
        through: u32,
    },
    /// Something for the node to do, answered by [`NodeMsg::CommandResult`].
    Command {
        /// Chosen by the agent; repeated when the agent retries.
        id: u16,
        /// The command.
        command: Command,
    },
}

/// A command from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Switch the alarm output (lamp, buzzer) on or off.
    Alarm {
        /// On or off.
        on: bool,
        /// Risk level, 1 (most severe) to 4; the node may signal each differently.
        level: u8,
    },
    /// Change how often a sensor is sampled.
    SetInterval {
        /// The sensor ([`SensorInfo::id`]).
        sensor: u8,
        /// The new interval in milliseconds.
        interval_ms: u32,
    },
    /// Blink or beep so a technician can find the node.
    Identify {
        /// For how long.
        seconds: u16,
    },
    /// Set the node's clock.
    TimeSync {
        /// Milliseconds since the Unix epoch, UTC.
        unix_ms: u64,
    },
    /// Send a [`Hello`] now (the agent restarted and wants to know who is there).
    SendHello,
}
