//! Lab analyzers that speak ASTM: E1381 (CLSI LIS1-A) frames carrying
//! E1394 (LIS2-A2) records.
//!
//! An analyzer opens a session with ENQ, sends each message (a header
//! record, patients, orders, results, a terminator record) in numbered,
//! checksummed frames that the agent acknowledges one by one, and closes
//! with EOT. Three layers, each usable alone:
//!
//! - [`link::Receiver`]: the low level as a state machine without I/O,
//!   bytes and time in, `ACK`/`NAK` and reassembled messages out.
//! - [`records::Message`]: the record layer, message text in (decoded by
//!   the analyzer's code page after the checksums), one reading per result
//!   record out.
//! - [`driver`]: the thin loop around both on a serial port or a TCP
//!   connection. The frame that completes a message is acknowledged only
//!   once its readings are durable in the store; if the store refuses
//!   them, the frame gets `NAK` and the analyzer sends it again. An
//!   analyzer never sends a result again after its ACK.
//!
//! The options are `[instrument.astm]` ([`AstmOptions`]); docs/astm.md
//! describes them with the record mapping and known analyzer quirks.

pub mod driver;
pub mod link;
pub mod records;

pub use link::{Event, LinkConfig, LinkStats, MessageEnd, Receiver};

use std::time::Duration;

use serde::Deserialize;

use crate::instrument::{Instrument, InstrumentConfig, tcp};

/// `[instrument.astm]`: how the analyzer frames and encodes its messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AstmOptions {
    /// The analyzer's code page, a WHATWG label: `utf-8` (default, and
    /// right for ASCII), `gbk`, `gb18030`, `windows-1252`, ...
    pub encoding: String,
    /// Seconds a session waits for the next frame byte before it is
    /// abandoned. E1381 says 30; some analyzers expect 15.
    pub receive_timeout_secs: u64,
    /// Longest frame accepted, STX through LF. E1381 allows 247 bytes;
    /// analyzers that send histograms in one frame need more.
    pub frame_cap: usize,
    /// Longest message accepted, its frame texts joined.
    pub max_message_bytes: usize,
    /// Which frame completes a message: `terminator` (the one carrying
    /// the `L` record, E1394) or `frame` (every ETX frame, for analyzers
    /// that send no terminator record).
    pub message_end: MessageEndOption,
}

/// `message_end` in `[instrument.astm]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageEndOption {
    /// The frame carrying the terminator record.
    #[default]
    Terminator,
    /// Every ETX frame.
    Frame,
}

impl Default for AstmOptions {
    fn default() -> Self {
        let link = LinkConfig::default();
        AstmOptions {
            encoding: "utf-8".into(),
            receive_timeout_secs: link.receive_timeout.as_secs(),
            frame_cap: link.frame_cap,
            max_message_bytes: link.max_message_len,
            message_end: MessageEndOption::Terminator,
        }
    }
}

/// Largest `frame_cap` and `max_message_bytes` accepted: a reading's
/// record may hold at most 128 KiB, a message is held in memory whole.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl AstmOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, instrument: &InstrumentConfig) -> Result<(), String> {
        tcp::validate(instrument, true)?;
        if instrument.line.is_some() || instrument.scanner.is_some() || instrument.hl7.is_some() {
            return Err("only [instrument.astm] goes with driver = \"astm\"".into());
        }
        self.compile().map(|_| ())
    }

    /// The code page and the link settings these options say.
    pub fn compile(&self) -> Result<(&'static encoding_rs::Encoding, LinkConfig), String> {
        let encoding = code_page(&self.encoding)?;
        if !(1..=3600).contains(&self.receive_timeout_secs) {
            return Err(format!(
                "receive_timeout_secs = {} must be 1 to 3600",
                self.receive_timeout_secs
            ));
        }
        if !(link::STANDARD_FRAME_LEN..=MAX_MESSAGE_BYTES).contains(&self.frame_cap) {
            return Err(format!(
                "frame_cap = {} must be {} to {MAX_MESSAGE_BYTES}",
                self.frame_cap,
                link::STANDARD_FRAME_LEN
            ));
        }
        if !(1..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(format!(
                "max_message_bytes = {} must be 1 to {MAX_MESSAGE_BYTES}",
                self.max_message_bytes
            ));
        }
        let link = LinkConfig {
            receive_timeout: Duration::from_secs(self.receive_timeout_secs),
            frame_cap: self.frame_cap,
            max_message_len: self.max_message_bytes,
            message_end: match self.message_end {
                MessageEndOption::Terminator => MessageEnd::TerminatorRecord,
                MessageEndOption::Frame => MessageEnd::EveryFrame,
            },
        };
        Ok((encoding, link))
    }
}

/// The code page a WHATWG label names (`utf-8`, `gbk`, `gb18030`, ...),
/// for the `encoding` key of analyzers, ASTM and HL7 alike.
pub fn code_page(label: &str) -> Result<&'static encoding_rs::Encoding, String> {
    encoding_rs::Encoding::for_label(label.as_bytes()).ok_or_else(|| {
        format!(
            "encoding = {label:?} is not a known code page (try \"utf-8\", \"gbk\", \"gb18030\")"
        )
    })
}

/// Runs the `astm` driver until the agent stops.
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
    fn defaults_follow_e1381() {
        let (encoding, link) = AstmOptions::default().compile().unwrap();
        assert_eq!(encoding, encoding_rs::UTF_8);
        assert_eq!(link, LinkConfig::default());
    }

    #[test]
    fn options_errors_name_the_key() {
        let config = instrument("id = \"a\"\ndriver = \"astm\"\nport = \"/dev/ttyS0\"\n");
        let bad = |change: fn(&mut AstmOptions)| {
            let mut options = AstmOptions::default();
            change(&mut options);
            options.validate(&config).unwrap_err()
        };
        assert!(bad(|o| o.encoding = "klingon".into()).contains("encoding"));
        assert!(bad(|o| o.receive_timeout_secs = 0).contains("receive_timeout_secs"));
        assert!(bad(|o| o.frame_cap = 100).contains("frame_cap"));
        assert!(bad(|o| o.max_message_bytes = 0).contains("max_message_bytes"));
        assert!(AstmOptions::default().validate(&config).is_ok());
    }

    #[test]
    fn exactly_one_transport() {
        let options = AstmOptions::default();
        let none = instrument("id = \"a\"\ndriver = \"astm\"\n");
        assert!(options.validate(&none).unwrap_err().contains("exactly one"));
        let two = instrument(
            "id = \"a\"\ndriver = \"astm\"\nport = \"/dev/ttyS0\"\nlisten = \"0.0.0.0:5100\"\n",
        );
        assert!(options.validate(&two).unwrap_err().contains("exactly one"));
        let bad = instrument("id = \"a\"\ndriver = \"astm\"\nconnect = \"10.0.0.1\"\n");
        assert!(options.validate(&bad).unwrap_err().contains("host:port"));
        let tcp = instrument("id = \"a\"\ndriver = \"astm\"\nconnect = \"10.0.0.1:5100\"\n");
        assert!(options.validate(&tcp).is_ok());
    }
}
