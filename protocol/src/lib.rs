//! Wire formats shared by the kouan agent and its sensor nodes.
//!
//! A sensor node talks to the agent over a UART. This crate is that link's
//! single definition, used by both ends, so the two cannot drift apart:
//!
//! - [`message`] holds what is said: [`NodeMsg`] flows from a node to the
//!   agent (hello, numbered samples, status, command results) and
//!   [`AgentMsg`] flows back (cumulative acks and commands).
//! - [`frame`] holds how it is put on the wire: a postcard payload followed
//!   by its CRC-32, COBS-encoded and delimited by `0x00` on both sides.
//! - [`Decoder`] turns any chunking of received bytes back into messages
//!   with one fixed buffer. Corrupt frames are counted and skipped, and the
//!   decoder resynchronises on the next delimiter. It never panics and never
//!   allocates, so the firmware runs the same code as the agent.
//!
//! The byte layout is specified for implementers in other languages in
//! `docs/node-link.md`, and pinned by golden-byte tests that use the same
//! example bytes.
//!
//! ```
//! use kouan_protocol::{frame, AgentMsg, Decoder};
//!
//! let bytes = frame::encode(&AgentMsg::Ack { boot: 7, through: 41 }).unwrap();
//! assert_eq!(bytes.as_slice(), &[0x00, 0x01, 0x07, 0x07, 0x29, 0xb9, 0xd7, 0xb2, 0xf2, 0x00]);
//!
//! let mut decoder = Decoder::<AgentMsg>::new();
//! let mut received = decoder.feed(&bytes);
//! assert_eq!(received.next(), Some(Ok(AgentMsg::Ack { boot: 7, through: 41 })));
//! assert_eq!(received.next(), None);
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod decoder;
pub mod frame;
pub mod message;

pub use decoder::{DecodeStats, Decoder, Feed};
pub use frame::{EncodeError, FrameError};
pub use message::*;
