//! The kouan agent as a library: what the `kouan` binary is made of.
//!
//! A reading's path through the agent: a driver parses bytes from an
//! instrument into an [`writer::Entry`]; the [`writer::Writer`] signs it as
//! a [`record`] (COSE_Sign1 over a CBOR payload, chained by hash) and makes
//! it durable in the [`store`]; only then is the instrument acknowledged.
//! The uplink later sends stored records to the platform and deletes them
//! once the platform confirms. [`verify`] checks a sequence of records as
//! the platform does; [`keys`] holds the signing keys.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use kouan_agent::{clock::CaptureTime, keys::SigningKey, record, store::Store};
//! use kouan_agent::writer::{Entry, Writer, WriterConfig};
//!
//! let key = SigningKey::load("agent.key".as_ref())?;
//! let (store, opened) = Store::open_or_recover("kouan.db".as_ref(), &[key.public_key().clone()])?;
//! let (writer, _thread) = Writer::start(store, &opened, key, WriterConfig::new("gy-air-01", "guiyang-airport"))?;
//! let body = record::ReadingBody::new(vec![], b"S S     100.00 g\r\n".to_vec());
//! let entry = Entry {
//!     instrument: "balance-1".into(),
//!     kind: record::Kind::Reading,
//!     time: CaptureTime::now(),
//!     body: record::body(&body)?,
//! };
//! let durable = writer.append(entry).await?; // now the balance may be told
//! println!("stored as seq {}", durable.seq);
//! # Ok(()) }
//! ```

pub mod astm;
pub mod check;
pub mod clock;
pub mod config;
pub mod demo;
pub mod hl7;
pub mod instrument;
pub mod keys;
pub mod modbus;
pub mod node;
pub mod platform;
pub mod ports;
pub mod probe;
pub mod rapid;
pub mod receive;
pub mod record;
pub mod run;
pub mod scan;
pub mod statefile;
pub mod status;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod uplink;
pub mod verify;
pub mod wedge;
pub mod writer;

/// An error and its causes on one line, for a person to read.
///
/// Most of kouan's error types already end their message with their
/// cause's text (so a log line is complete on its own) and also return it
/// as their `source`; printing the whole chain would then say the cause
/// twice ("creating key file K: Permission denied (os error 13): Permission
/// denied (os error 13)"). A cause already said by the message before it is
/// left out.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut said = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !said.is_empty() && said.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        said = message;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("creating key file k: {source}")]
    struct Creating {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_gives_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let cause = io.to_string();
        let error = anyhow::Error::new(Creating { source: io }).context("making the key");
        assert_eq!(
            error_text(&error),
            format!("making the key: creating key file k: {cause}")
        );
    }

    #[test]
    fn contexts_that_do_not_repeat_their_cause_are_all_said() {
        let error = anyhow::anyhow!("disk full")
            .context("writing the store")
            .context("run");
        assert_eq!(error_text(&error), "run: writing the store: disk full");
    }
}
