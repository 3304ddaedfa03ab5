//! Modbus RTU master (being built).

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig};

/// `[instrument.modbus]` (being built).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusOptions {}

impl BusOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, _instrument: &InstrumentConfig) -> Result<(), String> {
        Err("the modbus driver is not built yet".into())
    }
}

/// Runs the `modbus` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    tracing::error!(instrument = %instrument.id(), "the modbus driver is not built yet");
}
