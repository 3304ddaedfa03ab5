//! HL7 v2 over MLLP (being built).

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig};

/// `[instrument.hl7]` (being built).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Options {}

impl Hl7Options {
    /// Checks the options against the instrument section.
    pub fn validate(&self, _instrument: &InstrumentConfig) -> Result<(), String> {
        Err("the hl7 driver is not built yet".into())
    }
}

/// Runs the `hl7` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    tracing::error!(instrument = %instrument.id(), "the hl7 driver is not built yet");
}
