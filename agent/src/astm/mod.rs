//! Lab analyzers that speak ASTM: E1381 (CLSI LIS1-A) frames carrying
//! E1394 (LIS2-A2) records.
//!
//! An analyzer opens a session with ENQ, sends each message (a header
//! record, patients, orders, results, a terminator record) in numbered,
//! checksummed frames that the agent acknowledges one by one, and closes
//! with EOT. [`link::Receiver`] is that low level as a state machine without
//! I/O: the port loop feeds it bytes and the time, writes the bytes it asks
//! for and hands each reassembled message to the store. The frame that
//! completes a message is acknowledged only once the caller confirms the
//! message is durable, because an analyzer never sends a result again after
//! its ACK.
//!
//! Known limit: only the receiving link exists so far. It is not wired to a
//! serial or TCP port, and the E1394 record layer (delimiters, escapes,
//! results as readings) is not written, so no analyzer can be configured yet.

pub mod link;
pub mod records;

pub use link::{Event, LinkConfig, LinkStats, MessageEnd, Receiver};

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig};

/// `[instrument.astm]` (being built).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AstmOptions {}

impl AstmOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, _instrument: &InstrumentConfig) -> Result<(), String> {
        Err("the astm driver is not built yet".into())
    }
}

/// Runs the `astm` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    tracing::error!(instrument = %instrument.id(), "the astm driver is not built yet");
}
