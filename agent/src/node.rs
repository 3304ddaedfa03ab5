//! The `node` driver: kouan sensor nodes on a serial link (being built).

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig};

/// `[instrument.node]` (being built).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {}

impl NodeOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, _instrument: &InstrumentConfig) -> Result<(), String> {
        Err("the node driver is not built yet".into())
    }
}

/// Runs the `node` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    tracing::error!(instrument = %instrument.id(), "the node driver is not built yet");
}
