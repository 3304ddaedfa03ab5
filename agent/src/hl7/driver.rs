//! The `hl7` driver: MLLP messages on a TCP connection, results stored
//! before they are acknowledged.
//!
//! Each message is answered in turn: `AA` once every reading of it is
//! durable, `AE` with a reason otherwise. Readings are stored without
//! waiting for room ([`Instrument::try_store_reading`]), so that a full
//! store answers `AE` while the analyzer still waits for its reply,
//! instead of letting it time out.
//!
//! Analyzers send a message again when its acknowledgement did not reach
//! them in time. [`Seen`] remembers the messages stored (by control id
//! and a digest of everything after `MSH`, since a resend may carry a new
//! `MSH-7` time), and how many readings of a message the store took
//! before it refused the rest; a resend then stores only what is missing.
//! Keying on the content too keeps an analyzer that restarts its control
//! ids from having new results taken for resends.
//!
//! The memory survives a restart: it is kept in `<store>.hl7-<id>.toml`,
//! replaced atomically ([`crate::statefile::replace`]) after each message's
//! readings are durable and before the analyzer hears `AA`, so a message
//! acknowledged before a crash or a restart is not stored again when the
//! analyzer resends it. The file is dropped when the store starts a new
//! record stream: readings of the old one may not reach the platform, so
//! a resend is stored again (a duplicate rather than a loss).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::message::{AckCode, Message, ack};
use super::mllp::{self, Decoder, Frame};
use crate::clock::CaptureTime;
use crate::instrument::port::Ended;
use crate::instrument::tcp::{self, Endpoint};
use crate::instrument::{ErrorLog, Instrument, StoreRefused, stopping};
use crate::writer::AppendError;

/// A message as resends repeat it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    control_id: String,
    digest: [u8; 32],
}

/// The messages stored lately, and how many readings of each.
#[derive(Debug)]
struct Seen {
    capacity: usize,
    order: VecDeque<Key>,
    stored: HashMap<Key, usize>,
}

impl Seen {
    fn new(capacity: usize) -> Seen {
        Seen {
            capacity,
            order: VecDeque::new(),
            stored: HashMap::new(),
        }
    }

    /// Readings of `key` already stored.
    fn stored(&self, key: &Key) -> Option<usize> {
        self.stored.get(key).copied()
    }

    /// Remembers that `count` readings of `key` are stored, forgetting the
    /// oldest message beyond the capacity.
    fn record(&mut self, key: Key, count: usize) {
        if self.stored.insert(key.clone(), count).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.stored.remove(&old);
            }
        }
    }

    /// The file's text: the messages in the order they were first stored.
    fn render(&self) -> String {
        let file = SeenFile {
            version: SEEN_VERSION,
            messages: self
                .order
                .iter()
                .map(|key| SeenMessage {
                    control_id: key.control_id.clone(),
                    digest: hex::encode(key.digest),
                    readings: self.stored.get(key).copied().unwrap_or(0),
                })
                .collect(),
        };
        toml::to_string(&file).unwrap_or_else(|e| unreachable!("the file always renders: {e}"))
    }

    /// The memory kept in `text`, as much of it as `capacity` holds.
    #[cfg(test)]
    fn parse(text: &str, capacity: usize) -> Result<Seen, String> {
        let file = crate::statefile::parse(text, SEEN_VERSION, |f: &SeenFile| f.version)?;
        Seen::from_file(file, capacity)
    }

    /// The memory kept in `file`, as much of it as `capacity` holds.
    fn from_file(file: SeenFile, capacity: usize) -> Result<Seen, String> {
        let mut seen = Seen::new(capacity);
        for message in file.messages {
            let digest = hex::decode(&message.digest)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| format!("digest {:?} is not 64 hex digits", message.digest))?;
            let key = Key {
                control_id: message.control_id,
                digest,
            };
            seen.record(key, message.readings);
        }
        Ok(seen)
    }
}

/// `<store>.hl7-<instrument>.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenFile {
    version: u32,
    #[serde(default, rename = "message")]
    messages: Vec<SeenMessage>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeenMessage {
    control_id: String,
    /// SHA-256 of the message after `MSH`, hex.
    digest: String,
    /// Its readings already stored.
    readings: usize,
}

const SEEN_VERSION: u32 = 1;

/// The memory of `instrument` from its file when the store continues its
/// stream; otherwise empty, and the file removed.
fn remembered(instrument: &Instrument, path: &Path, capacity: usize) -> Seen {
    if !instrument.continuing {
        match crate::statefile::remove(path) {
            Ok(true) => tracing::info!(
                instrument = %instrument.id(),
                path = %path.display(),
                "the record stream is new: resends of messages stored in the old one are stored again"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove the old file of stored messages")
            }
        }
        return Seen::new(capacity);
    }
    let what = "a file of stored HL7 messages";
    let loaded = crate::statefile::load(path, what, SEEN_VERSION, |f: &SeenFile| f.version)
        .map_err(|e| e.to_string())
        .and_then(|file| file.map_or(Ok(Seen::new(capacity)), |f| Seen::from_file(f, capacity)));
    match loaded {
        Ok(seen) => {
            if !seen.order.is_empty() {
                tracing::info!(
                    instrument = %instrument.id(),
                    messages = seen.order.len(),
                    "remembering the messages stored before the restart"
                );
            }
            seen
        }
        Err(error) => {
            tracing::warn!(
                instrument = %instrument.id(),
                path = %path.display(),
                %error,
                "cannot read the messages stored before the restart: a resend of one is stored \
                 again; the file is replaced after the next message"
            );
            Seen::new(capacity)
        }
    }
}

/// What the sessions of one instrument share.
#[derive(Debug)]
struct Setup {
    encoding: &'static encoding_rs::Encoding,
    max_len: usize,
    /// Sessions follow each other on one task; never held across an await.
    seen: Mutex<Seen>,
    /// Where `seen` is kept.
    seen_path: PathBuf,
}

/// Runs the `hl7` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    let options = instrument.config.hl7.clone().unwrap_or_default();
    let encoding = match options.encoding() {
        Ok(encoding) => encoding,
        Err(message) => {
            // The config check refuses this before start-up.
            tracing::error!(instrument = %instrument.id(), %message, "bad [instrument.hl7]");
            return;
        }
    };
    let Some(endpoint) = Endpoint::of(&instrument.config) else {
        tracing::error!(instrument = %instrument.id(), "the hl7 driver needs listen or connect");
        return;
    };
    let seen_path = crate::statefile::beside(
        &instrument.store_path,
        &format!("hl7-{}.toml", instrument.id()),
    );
    let setup = Setup {
        encoding,
        max_len: options.max_message_bytes,
        seen: Mutex::new(remembered(instrument, &seen_path, options.remember)),
        seen_path,
    };
    tcp::supervise(instrument, &endpoint, |stream| {
        session(instrument, &setup, stream)
    })
    .await;
}

async fn session(instrument: &Instrument, setup: &Setup, stream: TcpStream) -> Ended {
    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = Decoder::new(setup.max_len);
    let mut errors = ErrorLog::default();
    let mut shutdown = instrument.shutdown.clone();
    let mut buf = vec![0u8; 8192];

    loop {
        let n = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => return lost(instrument, &decoder, "end of file"),
                Ok(n) => n,
                Err(e) => return lost(instrument, &decoder, &e.to_string()),
            },
            _ = stopping(&mut shutdown) => return Ended::Shutdown,
        };
        instrument.count_bytes(n);

        for frame in decoder.push(&buf[..n]) {
            let reply = match frame {
                Frame::Message(bytes) => handle(instrument, setup, &bytes, &mut errors).await,
                Frame::Oversize => {
                    let what = "message over max_message_bytes discarded";
                    instrument.count_error(&mut errors, what, "");
                    continue;
                }
                Frame::Cut(len) => {
                    let what = "message cut off by a new start block";
                    instrument.count_error(&mut errors, what, &format!("{len} bytes"));
                    continue;
                }
                Frame::Stray(count) => {
                    let what = "bytes outside MLLP blocks ignored";
                    instrument.count_error(&mut errors, what, &format!("{count} bytes"));
                    continue;
                }
            };
            if let Err(e) = writer.write_all(&mllp::encode(&reply)).await {
                return lost(
                    instrument,
                    &decoder,
                    &format!("writing an acknowledgement: {e}"),
                );
            }
        }
    }
}

/// Stores the results of one message; returns the acknowledgement.
async fn handle(
    instrument: &Instrument,
    setup: &Setup,
    bytes: &[u8],
    errors: &mut ErrorLog,
) -> Vec<u8> {
    let time = CaptureTime::now();
    let now = hl7_time(time.ms);
    let reply = |message: Option<&Message>, code, reason: Option<&str>| {
        ack(message, code, reason, &now, setup.encoding)
    };
    let message = match Message::parse(bytes, setup.encoding) {
        Ok(message) => message,
        Err(e) => {
            instrument.count_error(errors, "unreadable HL7 message: AE", &e.to_string());
            return reply(None, AckCode::Error, Some(&e.to_string()));
        }
    };
    let (code, event) = message.message_type();
    if code != "ORU" {
        let reason = format!("{code}^{event} is not accepted: kouan takes ORU^R01 results");
        instrument.count_error(errors, "message that is not a result: AE", &reason);
        return reply(Some(&message), AckCode::Error, Some(&reason));
    }

    let key = Key {
        control_id: message.control_id(),
        digest: sha256(&message.content),
    };
    let readings = message.readings();
    let total = readings.len();
    let resume = lock(&setup.seen).stored(&key);
    if resume == Some(total) {
        tracing::info!(
            instrument = %instrument.id(),
            control_id = %key.control_id,
            "a resent message is already stored: acknowledged again, not stored twice"
        );
        return reply(Some(&message), AckCode::Accept, None);
    }

    let resume = resume.unwrap_or(0);
    for (i, body) in readings.into_iter().enumerate().skip(resume) {
        if let Err(error) = instrument.try_store_reading(body, time).await {
            remember(instrument, setup, key.clone(), i).await;
            log_refusal(instrument, &key.control_id, &error);
            let reason = format!("not stored, send again later: {error}");
            return reply(Some(&message), AckCode::Error, Some(&reason));
        }
    }
    remember(instrument, setup, key.clone(), total).await;
    tracing::debug!(
        instrument = %instrument.id(),
        control_id = %key.control_id,
        readings = total,
        "message stored"
    );
    reply(Some(&message), AckCode::Accept, None)
}

/// Remembers that `count` readings of `key` are durable, in memory and in
/// the file, before the analyzer hears about it.
async fn remember(instrument: &Instrument, setup: &Setup, key: Key, count: usize) {
    let text = {
        let mut seen = lock(&setup.seen);
        seen.record(key, count);
        seen.render()
    };
    let path = setup.seen_path.clone();
    let saved =
        tokio::task::spawn_blocking(move || crate::statefile::replace(&path, text.as_bytes()))
            .await;
    let error = match saved {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    tracing::warn!(
        instrument = %instrument.id(),
        %error,
        "cannot keep the stored messages on disk: after a restart a resend of this one is \
         stored again; check the store's directory (space, permissions)"
    );
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_refusal(instrument: &Instrument, control_id: &str, error: &StoreRefused) {
    if matches!(error, StoreRefused::Append(AppendError::Full { .. })) {
        tracing::warn!(
            instrument = %instrument.id(),
            control_id,
            %error,
            "store refused a message: AE, the analyzer keeps it"
        );
    } else {
        tracing::error!(
            instrument = %instrument.id(),
            control_id,
            %error,
            "store refused a message: AE, the analyzer keeps it"
        );
    }
}

/// `YYYYMMDDHHMMSS+0000`, the HL7 timestamp of a Unix time in ms.
fn hl7_time(ms: i64) -> String {
    let stamp = crate::store::utc_stamp(ms).replace(['T', 'Z'], "");
    format!("{stamp}+0000")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn lost(instrument: &Instrument, decoder: &Decoder, why: &str) -> Ended {
    if decoder.pending() > 0 {
        tracing::warn!(
            instrument = %instrument.id(),
            bytes = decoder.pending(),
            "a message was cut off by the disconnect; the analyzer sends it again"
        );
    }
    Ended::Lost(std::io::Error::other(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key {
            control_id: id.into(),
            digest: sha256(id.as_bytes()),
        }
    }

    #[test]
    fn seen_forgets_the_oldest_beyond_its_capacity() {
        let mut seen = Seen::new(2);
        seen.record(key("1"), 3);
        seen.record(key("2"), 1);
        seen.record(key("2"), 2);
        assert_eq!(seen.stored(&key("1")), Some(3));
        assert_eq!(seen.stored(&key("2")), Some(2));
        seen.record(key("3"), 0);
        assert_eq!(seen.stored(&key("1")), None);
        assert_eq!(seen.stored(&key("3")), Some(0));
        assert_eq!(seen.order.len(), 2);
    }

    #[test]
    fn the_file_brings_back_what_was_stored_in_order_within_the_capacity() {
        let mut seen = Seen::new(3);
        seen.record(key("1"), 3);
        seen.record(key("2"), 1);
        seen.record(key("3"), 2);
        let text = seen.render();
        let back = Seen::parse(&text, 3).unwrap();
        assert_eq!(back.order, seen.order);
        assert_eq!(back.stored, seen.stored);
        let smaller = Seen::parse(&text, 2).unwrap();
        assert_eq!(smaller.stored(&key("1")), None, "the oldest goes first");
        assert_eq!(smaller.stored(&key("3")), Some(2));
    }

    #[test]
    fn a_damaged_file_says_what_is_wrong() {
        let bad_digest =
            "version = 1\n[[message]]\ncontrol_id = \"7\"\ndigest = \"zz\"\nreadings = 1\n";
        assert!(
            Seen::parse(bad_digest, 4)
                .unwrap_err()
                .contains("64 hex digits")
        );
        assert!(
            Seen::parse("version = 9\n", 4)
                .unwrap_err()
                .contains("version 9")
        );
        assert!(Seen::parse("version = 1\n[[message]]\n", 4).is_err());
    }

    #[test]
    fn hl7_time_is_utc_seconds() {
        assert_eq!(hl7_time(1_796_315_160_000), "20261203162600+0000");
    }
}
