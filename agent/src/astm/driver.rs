//! The `astm` driver: a [`Receiver`] and the record layer on a serial port
//! or a TCP connection.
//!
//! The loop reads whatever bytes come, feeds them with the time to the
//! receiver, writes the replies it asks for and wakes up at its deadline
//! so a silent analyzer times its session out. A completed message is
//! parsed into readings, which are stored one by one without waiting for
//! room ([`Instrument::try_store_reading`]); only when all are durable
//! does the completing frame get `ACK`. If the store refuses one, the
//! frame gets `NAK` and the analyzer sends it again (up to six times,
//! E1381 8.5.1.2); the readings stored before the refusal are remembered
//! by the message's digest and not stored twice when it comes back.
//!
//! A message cut short (EOT, a new ENQ or the receive timeout before its
//! last frame) is not stored: its completing frame was never
//! acknowledged, so the analyzer keeps the message and sends it whole in
//! a later session.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::link::{Event, LinkConfig, LinkStats, Receiver};
use super::records::Message;
use crate::clock::CaptureTime;
use crate::instrument::port::Ended;
use crate::instrument::tcp::{self, Endpoint};
use crate::instrument::{ErrorLog, Instrument, StoreRefused, stopping, supervise};
use crate::writer::AppendError;

/// What one instrument's sessions share.
#[derive(Debug)]
struct Setup {
    encoding: &'static encoding_rs::Encoding,
    link: LinkConfig,
    /// The message the store refused part of. A mutex because sessions
    /// follow each other on one task; it is never held across an await.
    refused: Mutex<Refused>,
}

/// Readings of a message already durable when the store refused the rest.
#[derive(Debug, Default)]
struct Refused {
    /// SHA-256 of the message text, or `None` if no message is pending.
    digest: Option<[u8; 32]>,
    /// How many of its readings are stored.
    stored: usize,
}

/// Runs the `astm` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    let options = instrument.config.astm.clone().unwrap_or_default();
    let (encoding, link) = match options.compile() {
        Ok(compiled) => compiled,
        Err(message) => {
            // The config check refuses this before start-up.
            tracing::error!(instrument = %instrument.id(), %message, "bad [instrument.astm]");
            return;
        }
    };
    let setup = Setup {
        encoding,
        link,
        refused: Mutex::default(),
    };

    if let Some(endpoint) = Endpoint::of(&instrument.config) {
        tcp::supervise(instrument, &endpoint, |stream| {
            session(instrument, &setup, stream)
        })
        .await;
    } else if let Some(path) = instrument.config.port.clone() {
        let settings = instrument.config.serial.clone();
        supervise(
            instrument,
            || settings.open(&path),
            |port| session(instrument, &setup, port),
        )
        .await;
    } else {
        tracing::error!(instrument = %instrument.id(), "the astm driver needs a port, listen or connect");
    }
}

async fn session<D>(instrument: &Instrument, setup: &Setup, device: D) -> Ended
where
    D: AsyncRead + AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(device);
    let mut receiver = Receiver::new(setup.link.clone());
    let mut errors = ErrorLog::default();
    let mut shutdown = instrument.shutdown.clone();
    // One read takes what the kernel has; frames span reads anyway.
    let mut buf = vec![0u8; 4096];

    loop {
        let before = receiver.stats();
        let events = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => return lost(instrument, &receiver, "end of file"),
                Ok(n) => {
                    instrument.count_bytes(n);
                    tracing::trace!(instrument = %instrument.id(), bytes = ?&buf[..n], "received");
                    receiver.on_bytes(&buf[..n], Instant::now())
                }
                Err(e) => return lost(instrument, &receiver, &e.to_string()),
            },
            _ = until(receiver.deadline()) => receiver.on_tick(Instant::now()),
            _ = stopping(&mut shutdown) => return Ended::Shutdown,
        };

        let mut queue = VecDeque::from(events);
        while let Some(event) = queue.pop_front() {
            match event {
                Event::Send(byte) => {
                    if let Err(e) = writer.write_all(&[byte]).await {
                        return lost(instrument, &receiver, &format!("writing a reply: {e}"));
                    }
                }
                Event::Message(text) => {
                    let stored = store(instrument, setup, &text).await;
                    queue.extend(receiver.confirm(stored, Instant::now()));
                }
                Event::Incomplete(text) => {
                    tracing::warn!(
                        instrument = %instrument.id(),
                        bytes = text.len(),
                        "a message was cut off before its last frame; \
                         the analyzer sends it again in a later session"
                    );
                }
                Event::Timeout => {
                    tracing::warn!(
                        instrument = %instrument.id(),
                        timeout_secs = setup.link.receive_timeout.as_secs(),
                        "session timed out: no frame within the receive timeout"
                    );
                }
                Event::SessionEnded { frames } => {
                    tracing::debug!(instrument = %instrument.id(), frames, "session ended");
                }
            }
        }
        count_errors(instrument, &mut errors, before, receiver.stats());
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Stores the readings of a message; `true` once all are durable.
async fn store(instrument: &Instrument, setup: &Setup, text: &[u8]) -> bool {
    let time = CaptureTime::now();
    let results = Message::parse(text, setup.encoding).readings();
    // Analyzers in bidirectional mode ask before every sample: debug,
    // or the journal fills with it.
    if results.queries > 0 {
        tracing::debug!(
            instrument = %instrument.id(),
            queries = results.queries,
            "the analyzer asked for orders; kouan sends none"
        );
    }
    if let Some(code) = &results.termination {
        tracing::info!(instrument = %instrument.id(), code, "message terminated with a code other than N");
    }

    let digest = sha256(text);
    let resume = {
        let refused = setup.refused.lock().unwrap_or_else(|e| e.into_inner());
        if refused.digest == Some(digest) {
            refused.stored
        } else {
            0
        }
    };
    let total = results.readings.len();
    for (i, body) in results.readings.into_iter().enumerate().skip(resume) {
        if let Err(error) = instrument.try_store_reading(body, time).await {
            refuse(instrument, setup, digest, i, &error);
            return false;
        }
    }

    let mut refused = setup.refused.lock().unwrap_or_else(|e| e.into_inner());
    if refused.digest.take().is_some() {
        tracing::info!(instrument = %instrument.id(), "the store accepts the analyzer's results again");
    }
    tracing::debug!(instrument = %instrument.id(), readings = total, skipped = resume, "message stored");
    true
}

/// Remembers how much of a refused message is stored, and says so once.
fn refuse(
    instrument: &Instrument,
    setup: &Setup,
    digest: [u8; 32],
    stored: usize,
    error: &StoreRefused,
) {
    let mut refused = setup.refused.lock().unwrap_or_else(|e| e.into_inner());
    let first = refused.digest.is_none();
    *refused = Refused {
        digest: Some(digest),
        stored,
    };
    if !first {
        return;
    }
    let full = matches!(error, StoreRefused::Append(AppendError::Full { .. }));
    if full {
        tracing::warn!(
            instrument = %instrument.id(),
            %error,
            "store refused a message: NAK, the analyzer keeps it and sends it again"
        );
    } else {
        tracing::error!(
            instrument = %instrument.id(),
            %error,
            "store refused a message: NAK, the analyzer keeps it and sends it again"
        );
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Counts what the receiver refused since `before`, one error per kind.
fn count_errors(
    instrument: &Instrument,
    errors: &mut ErrorLog,
    before: LinkStats,
    after: LinkStats,
) {
    let kinds = [
        (
            after.bad_checksum - before.bad_checksum,
            "frame with a bad or missing checksum: NAK",
        ),
        (
            after.bad_frame_number - before.bad_frame_number,
            "frame out of sequence: NAK",
        ),
        (
            after.malformed - before.malformed,
            "frame cut off or with garbage after its checksum",
        ),
        (
            after.oversize - before.oversize,
            "frame over frame_cap or message over max_message_bytes: NAK",
        ),
        (
            after.stray - before.stray,
            "bytes outside any frame ignored",
        ),
        (
            after.dropped - before.dropped,
            "bytes dropped while a message was being stored",
        ),
    ];
    for (count, what) in kinds {
        if count > 0 {
            instrument.count_error(errors, what, &format!("{count}"));
        }
    }
}

fn lost(instrument: &Instrument, receiver: &Receiver, why: &str) -> Ended {
    if receiver.in_session() {
        tracing::warn!(
            instrument = %instrument.id(),
            "the connection ended mid-session; the analyzer sends the message again"
        );
    }
    Ended::Lost(std::io::Error::other(why.to_owned()))
}
