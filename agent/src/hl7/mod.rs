//! Lab analyzers that speak HL7 v2 over MLLP on TCP, as many domestic
//! analyzers (Mindray and others) do instead of ASTM.
//!
//! Three layers, each usable alone:
//!
//! - [`mllp::Decoder`]: messages out of a byte stream, bounded in memory.
//! - [`message::Message`]: segments, `ORU^R01` results as readings (one
//!   per `OBX`), and [`message::ack`], the application acknowledgement.
//! - [`driver`]: the loop on a TCP connection. A message is acknowledged
//!   `AA` only once its readings are durable; `AE` with a reason when it
//!   cannot be read, is not a result message, or the store refuses it.
//!   Analyzers resend a message whose `ACK` they missed; a resend (same
//!   control id, same content) is acknowledged again without storing its
//!   results twice.
//!
//! The options are `[instrument.hl7]` ([`Hl7Options`]); docs/hl7.md
//! describes them with the record mapping and known analyzer quirks.

pub mod driver;
pub mod message;
pub mod mllp;

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig, tcp};

/// `[instrument.hl7]`: how the analyzer encodes its messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Options {
    /// The analyzer's code page, a WHATWG label: `utf-8` (default),
    /// `gbk`, `gb18030`, ... Acknowledgements are written in it too.
    pub encoding: String,
    /// Longest message accepted, in bytes; longer ones are discarded.
    pub max_message_bytes: usize,
    /// How many stored messages are remembered to recognise resends.
    pub remember: usize,
}

impl Default for Hl7Options {
    fn default() -> Self {
        Hl7Options {
            encoding: "utf-8".into(),
            max_message_bytes: 1024 * 1024,
            remember: 1024,
        }
    }
}

/// Largest `max_message_bytes`: a message is held in memory whole.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl Hl7Options {
    /// Checks the options against the instrument section.
    pub fn validate(&self, instrument: &InstrumentConfig) -> Result<(), String> {
        tcp::validate(instrument, false)?;
        if instrument.line.is_some() || instrument.scanner.is_some() || instrument.astm.is_some() {
            return Err("only [instrument.hl7] goes with driver = \"hl7\"".into());
        }
        self.encoding()?;
        if !(1..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(format!(
                "max_message_bytes = {} must be 1 to {MAX_MESSAGE_BYTES}",
                self.max_message_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.remember) {
            return Err(format!("remember = {} must be 1 to 1000000", self.remember));
        }
        Ok(())
    }

    /// The code page `encoding` names.
    pub fn encoding(&self) -> Result<&'static encoding_rs::Encoding, String> {
        crate::astm::code_page(&self.encoding)
    }
}

/// Runs the `hl7` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    driver::run(instrument).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instrument(toml_text: &str) -> InstrumentConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn tcp_only_and_options_checked() {
        let options = Hl7Options::default();
        let serial = instrument("id = \"a\"\ndriver = \"hl7\"\nport = \"/dev/ttyS0\"\n");
        assert!(options.validate(&serial).unwrap_err().contains("listen"));
        let server = instrument("id = \"a\"\ndriver = \"hl7\"\nlisten = \"0.0.0.0:5200\"\n");
        assert!(options.validate(&server).is_ok());

        let mut bad = Hl7Options {
            encoding: "nope".into(),
            ..Hl7Options::default()
        };
        assert!(bad.validate(&server).unwrap_err().contains("encoding"));
        bad = Hl7Options {
            max_message_bytes: 0,
            ..Hl7Options::default()
        };
        assert!(
            bad.validate(&server)
                .unwrap_err()
                .contains("max_message_bytes")
        );
        bad = Hl7Options {
            remember: 0,
            ..Hl7Options::default()
        };
        assert!(bad.validate(&server).unwrap_err().contains("remember"));
    }
}
