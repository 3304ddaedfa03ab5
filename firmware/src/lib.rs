//! Firmware for kouan sensor nodes.
//!
//! A sensor node measures warehouse climate, gas or radiation where no lab
//! instrument stands and reports to the kouan agent over a UART with the
//! node link of [`kouan_protocol`]. This crate is `no_std` without an
//! allocator and builds for the host, where its logic is tested, and for
//! Cortex-M (`thumbv7m-none-eabi`, `thumbv7em-none-eabihf`).
//!
//! It holds the [`Link`], the node's end of the node link, which frames
//! outgoing messages and decodes the agent's, and the [`drivers`] for the
//! node's sensors: an SHT3x for temperature and humidity, a Geiger-Müller
//! pulse counter for dose rate, and an ADS1115 ADC with a two-point
//! calibration for gas sensors. The drivers take embedded-hal 1.0 traits,
//! so board code only wires up the peripherals.
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

pub mod drivers;

use kouan_protocol::{AgentMsg, Decoder, EncodeError, Feed, NodeMsg, frame};

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

    /// Frames from the agent discarded as corrupt since boot.
    pub fn corrupt_frames(&self) -> u64 {
        self.decoder.stats().corrupt()
    }
}
