//! Firmware for kouan sensor nodes.
//!
//! A sensor node measures warehouse climate, gas or radiation where no lab
//! instrument stands and reports to the kouan agent over a UART with the
//! node link of [`kouan_protocol`]. This crate is `no_std` without an
//! allocator and builds for the host, where its logic is tested, and for
//! Cortex-M (`thumbv7m-none-eabi`, `thumbv7em-none-eabihf`).
//!
//! - [`node`] is the node's logic as a state machine without I/O: the
//!   sampling schedule, the ring buffer of numbered samples kept until the
//!   agent acknowledges them, go-back-N retransmission, drop counting and
//!   the agent's commands. Time comes in as a parameter, so it is tested on
//!   the host; [`node::Node::step`] is the thin loop a board runs over an
//!   embedded-io UART.
//! - [`Link`] is the node's end of the node link: it frames outgoing
//!   messages and decodes the agent's.
//! - [`drivers`] for the node's sensors: an SHT3x for temperature and
//!   humidity, a Geiger-Müller pulse counter for dose rate, and an ADS1115
//!   ADC with a two-point calibration for gas sensors, over embedded-hal
//!   1.0, so board code only wires up the peripherals.
//! - [`station`] puts the three drivers behind the node's sensor ids, and
//!   [`sim`] stands in for the sensors on the emulated board.
//!
//! Boards live outside this crate, in `firmware/boards/` (see
//! `docs/firmware.md`). Logging goes through one shim: `defmt` with the
//! `defmt` feature, nothing without it.
//!
//! ```
//! use kouan_firmware::Link;
//! use kouan_protocol::{AgentMsg, NodeMsg, Status, frame};
//!
//! let mut link = Link::new();
//! let status = NodeMsg::Status(Status {
//!     buffered: 0, capacity: 64, dropped: 0,
//!     retransmitted: 0, corrupt_frames: 0, uptime_s: 5,
//! });
//! let bytes = link.frame(&status).unwrap();
//! assert_eq!(bytes.first(), Some(&0x00));
//!
//! let ack = frame::encode(&AgentMsg::Ack { boot: 1, through: 3 }).unwrap();
//! let mut received = link.receive(&ack);
//! assert_eq!(received.next(), Some(Ok(AgentMsg::Ack { boot: 1, through: 3 })));
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

// The logging macros come first, so that every module below can use them.
#[macro_use]
mod fmt;

pub mod drivers;
pub mod node;
pub mod sim;
pub mod station;

use kouan_protocol::{AgentMsg, Decoder, EncodeError, Feed, FrameError, NodeMsg, frame};

/// The node's end of the node link: no buffers beyond one frame each way.
#[derive(Debug, Default)]
pub struct Link {
    decoder: Decoder<AgentMsg>,
}

impl Link {
    /// A link with an empty receive buffer.
    pub const fn new() -> Self {
        Link {
            decoder: Decoder::new(),
        }
    }

    /// Encodes a message for the UART.
    pub fn frame(&self, msg: &NodeMsg) -> Result<frame::Frame, EncodeError> {
        frame::encode(msg)
    }

    /// Decodes bytes from the UART into the agent's messages.
    pub fn receive<'a>(&'a mut self, bytes: &'a [u8]) -> Feed<'a, AgentMsg> {
        self.decoder.feed(bytes)
    }

    /// Decodes one byte from the UART; returns the outcome when it ends a
    /// frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<AgentMsg, FrameError>> {
        self.decoder.push(byte)
    }

    /// Frames from the agent discarded as corrupt since boot.
    pub fn corrupt_frames(&self) -> u64 {
        self.decoder.stats().corrupt()
    }
}
