//! The receiving side of the ASTM E1381 (CLSI LIS1-A) low-level link.
//!
//! A frame on the wire is `STX`, a frame number `'0'..='7'`, up to 240
//! bytes of text, `ETB` (the text continues in the next frame) or `ETX`
//! (the last frame of a record), two hex checksum digits and `CR LF`. The
//! checksum is the sum, mod 256, of the raw bytes from the frame number
//! through `ETB`/`ETX`; it is taken before any code-page decoding, so a
//! GBK analyzer's frames check over their GBK bytes.
//!
//! [`Receiver`] takes bytes and the time and returns [`Event`]s: bytes to
//! send (`ACK`, `NAK`), reassembled messages, and the ends of sessions.
//! It keeps no socket and no clock, so it can be driven by a serial port, a
//! TCP stream or a test alike, and it makes no assumption about how bytes
//! are chunked into reads.
//!
//! Session outline, with the deviations real analyzers show:
//!
//! - Idle: `ENQ` gets `ACK`, or `NAK` while the caller says it is busy.
//!   Any other byte is stray line noise, counted and ignored.
//! - In a session, each good frame with the expected number gets `ACK`.
//!   A bad checksum or an unexpected number gets `NAK`, and the analyzer
//!   resends. A resend of the frame just acknowledged (its `ACK` was lost)
//!   is acknowledged again without taking its text twice (a resend is the
//!   same bytes, not only the same number). Numbers run 1..7, 0, 1, ...;
//!   a wrap from 7 to 1 is accepted too, and so is a message whose frames
//!   are numbered from 1 again.
//! - `CR LF`, `LF` alone or `CR` alone end a frame. A record whose text
//!   lacks the `CR` before `ETX` gets one, so records stay separated.
//! - Frames longer than the standard 247 bytes are accepted up to
//!   [`LinkConfig::frame_cap`]; longer ones get `NAK` and are not stored.
//! - `EOT` ends the session, also right after `ENQ` (a keep-alive).
//! - Without a frame byte for [`LinkConfig::receive_timeout`] the session
//!   is abandoned and reported as [`Event::Timeout`].
//!
//! The frame that completes a message is not acknowledged at once: the
//! receiver emits [`Event::Message`] and waits for [`Receiver::confirm`],
//! which the caller makes once the message is durable (`ACK`) or could not
//! be stored (`NAK`, so the analyzer resends it). Bytes arriving meanwhile
//! are held, up to one frame's worth, and handled after the confirmation.
//!
//! Memory is bounded by the configuration: one frame of at most
//! `frame_cap` bytes, one message of at most `max_message_len` bytes and a
//! hold buffer of one frame. Nothing here can panic on any input.

use std::time::{Duration, Instant};

/// Start of a frame.
pub const STX: u8 = 0x02;
/// End of the last frame of a record.
pub const ETX: u8 = 0x03;
/// End of the session.
pub const EOT: u8 = 0x04;
/// Request to open a session.
pub const ENQ: u8 = 0x05;
/// Positive reply.
pub const ACK: u8 = 0x06;
/// Negative reply: the sender resends the frame or retries the `ENQ`.
pub const NAK: u8 = 0x15;
/// End of a frame whose text continues in the next frame.
pub const ETB: u8 = 0x17;
/// Ends a record, and with `LF` a frame.
pub const CR: u8 = 0x0D;
/// Ends a frame.
pub const LF: u8 = 0x0A;

/// The longest frame E1381 allows, `STX` through `LF`.
pub const STANDARD_FRAME_LEN: usize = 247;

/// Bytes of a frame outside what the checksum covers: `STX`, two checksum
/// digits, `CR`, `LF`.
const FRAME_OVERHEAD: usize = 5;

/// The E1381 checksum of the bytes from the frame number through
/// `ETB`/`ETX`: their sum mod 256.
///
/// ```
/// use kouan_agent::astm::link::checksum;
///
/// assert_eq!(checksum(b"1A|B|C|D\r\x03"), 0xBF);
/// ```
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Which frames complete a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MessageEnd {
    /// The frame that carries the terminator record (`L` at the start of a
    /// record, followed by the field delimiter): an `ETX` frame once the
    /// record has begun, or an `ETB` frame that holds the whole record.
    #[default]
    TerminatorRecord,
    /// Every `ETX` frame, for analyzers that send one message per frame
    /// without a terminator record.
    EveryFrame,
}

/// How a [`Receiver`] behaves; [`Default`] follows E1381.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// How long a session waits for the next frame byte before it is
    /// abandoned. E1381 says 30 s; some analyzers expect 15 s.
    pub receive_timeout: Duration,
    /// Longest frame accepted, `STX` through `LF`. E1381 allows
    /// [`STANDARD_FRAME_LEN`]; analyzers that send longer ones need more.
    pub frame_cap: usize,
    /// Longest message text accepted; a frame that would make it longer
    /// gets `NAK`.
    pub max_message_len: usize,
    /// Which frames complete a message.
    pub message_end: MessageEnd,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            receive_timeout: Duration::from_secs(30),
            // Histograms from hematology analyzers make frames of several
            // kilobytes. The timeout restarts with every frame byte, so a
            // long frame on a slow line does not expire.
            frame_cap: 64 * 1024,
            max_message_len: 1024 * 1024,
            message_end: MessageEnd::TerminatorRecord,
        }
    }
}

/// What the caller has to do or know after feeding the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write this byte to the analyzer (`ACK` or `NAK`).
    Send(u8),
    /// The text of one complete message, frame texts joined, records ended
    /// by `CR`. The receiver now waits for [`Receiver::confirm`].
    Message(Vec<u8>),
    /// The text of a message whose session ended (by `EOT`, a new `ENQ` or
    /// a timeout) before its last frame; its earlier frames were
    /// acknowledged, so the analyzer may not send them again.
    Incomplete(Vec<u8>),
    /// The analyzer ended the session; `frames` counts the frames accepted
    /// in it (0 for a keep-alive `ENQ`, `EOT`).
    SessionEnded {
        /// Frames accepted in the session.
        frames: u64,
    },
    /// The session was abandoned: no frame byte within the receive timeout.
    Timeout,
}

/// Counters of what a [`Receiver`] has seen since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes fed in.
    pub bytes: u64,
    /// Sessions opened (`ENQ` answered with `ACK`).
    pub sessions: u64,
    /// Sessions that ended with no frame.
    pub keepalives: u64,
    /// `ENQ`s refused because the caller was busy.
    pub busy: u64,
    /// Frames accepted.
    pub frames: u64,
    /// Messages confirmed by the caller.
    pub messages: u64,
    /// Messages the caller could not store (confirmed with `ok = false`).
    pub refused: u64,
    /// Resends of an already accepted frame, acknowledged again.
    pub retransmissions: u64,
    /// Frames with a wrong or missing checksum.
    pub bad_checksum: u64,
    /// Frames with a good checksum but an unexpected number.
    pub bad_frame_number: u64,
    /// Frames cut off by `STX` or with garbage after the checksum.
    pub malformed: u64,
    /// Frames over the frame cap, or that would make a message too long.
    pub oversize: u64,
    /// Bytes outside any frame, ignored.
    pub stray: u64,
    /// Bytes dropped while a confirmation was pending and the hold buffer
    /// was full.
    pub dropped: u64,
    /// Sessions abandoned for the receive timeout.
    pub timeouts: u64,
    /// Messages reported as [`Event::Incomplete`].
    pub incomplete: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No session.
    Idle,
    /// In a session, between frames.
    Between,
    /// After `STX`, before `ETB`/`ETX`.
    Frame,
    /// After `ETB`/`ETX`, before the line end.
    Trailer,
    /// A message was emitted; waiting for [`Receiver::confirm`].
    Confirm,
}

/// Where to roll back to if the caller cannot store a message.
#[derive(Debug, Clone)]
struct Pending {
    number: u8,
    /// The completing frame, number through `ETB`/`ETX`.
    frame: Vec<u8>,
    prefix: usize,
    terminator: Option<usize>,
}

/// The E1381 receiver: bytes and time in, [`Event`]s out.
///
/// ```
/// use std::time::Instant;
/// use kouan_agent::astm::link::{checksum, Event, LinkConfig, Receiver, ACK, ENQ, EOT};
///
/// // One frame with a header and a terminator record.
/// let body = b"1H|\\^&\rL|1|N\r\x03";
/// let mut wire = vec![0x02];
/// wire.extend_from_slice(body);
/// wire.extend_from_slice(format!("{:02X}\r\n", checksum(body)).as_bytes());
///
/// let now = Instant::now();
/// let mut receiver = Receiver::new(LinkConfig::default());
/// assert_eq!(receiver.on_bytes(&[ENQ], now), [Event::Send(ACK)]);
///
/// // The completing frame is reported, but not acknowledged yet.
/// let events = receiver.on_bytes(&wire, now);
/// assert_eq!(events, [Event::Message(b"H|\\^&\rL|1|N\r".to_vec())]);
///
/// // Once the message is durable:
/// assert_eq!(receiver.confirm(true, now), [Event::Send(ACK)]);
/// assert_eq!(receiver.on_bytes(&[EOT], now), [Event::SessionEnded { frames: 1 }]);
/// ```
#[derive(Debug)]
pub struct Receiver {
    config: LinkConfig,
    state: State,
    busy: bool,
    /// When the session is abandoned without another frame byte.
    deadline: Option<Instant>,
    /// The frame being received, frame number through `ETB`/`ETX`; never
    /// longer than the frame cap allows.
    frame: Vec<u8>,
    frame_overflow: bool,
    trailer: [u8; 2],
    trailer_len: usize,
    /// The message being reassembled, never longer than `max_message_len`.
    message: Vec<u8>,
    /// Where the terminator record starts in `message`, once seen.
    terminator: Option<usize>,
    expected: u8,
    last: Option<u8>,
    /// The last accepted frame, number through `ETB`/`ETX`: a resend is
    /// this frame again, not just its number.
    last_frame: Vec<u8>,
    session_frames: u64,
    pending: Option<Pending>,
    /// Bytes that arrived while a confirmation was pending. One frame's
    /// worth: the analyzer waits for our reply, so more is noise.
    held: Vec<u8>,
    stats: LinkStats,
}

impl Receiver {
    /// A receiver with no session open.
    pub fn new(config: LinkConfig) -> Self {
        Receiver {
            config,
            state: State::Idle,
            busy: false,
            deadline: None,
            frame: Vec::new(),
            frame_overflow: false,
            trailer: [0; 2],
            trailer_len: 0,
            message: Vec::new(),
            terminator: None,
            expected: 1,
            last: None,
            last_frame: Vec::new(),
            session_frames: 0,
            pending: None,
            held: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    /// Whether a new session is refused (`ENQ` answered with `NAK`), for
    /// example while the store is full. An open session is not affected.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Takes bytes read at `now`, in whatever chunks they came.
    ///
    /// A [`Event::Message`] is always the last event returned; bytes after
    /// it are held until [`Receiver::confirm`].
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        self.stats.bytes += bytes.len() as u64;
        self.expire(now, &mut out);
        self.feed(bytes, now, &mut out);
        out
    }

    /// Lets time pass: abandons the session if its timeout has expired.
    /// Call it at [`Receiver::deadline`] or periodically.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        self.expire(now, &mut out);
        out
    }

    /// Answers the frame that completed the last [`Event::Message`]:
    /// `ACK` if the message is durable (`ok`), else `NAK` so the analyzer
    /// resends the frame and the message is reported again. Then handles
    /// the bytes held meanwhile. Does nothing if no message is pending.
    pub fn confirm(&mut self, ok: bool, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        let Some(pending) = self.pending.take() else {
            return out;
        };

        if ok {
            self.message.clear();
            self.terminator = None;
            self.stats.messages += 1;
            self.accept(pending.number, &pending.frame, &mut out);
        } else {
            self.message.truncate(pending.prefix);
            self.terminator = pending.terminator;
            self.stats.refused += 1;
            out.push(Event::Send(NAK));
        }
        // The analyzer waited for us; its timer, not ours, ran meanwhile.
        self.state = State::Between;
        self.deadline = Some(now + self.config.receive_timeout);

        let held = std::mem::take(&mut self.held);
        self.feed(&held, now, &mut out);
        out
    }

    /// When the open session times out without another frame byte; `None`
    /// when idle or waiting for [`Receiver::confirm`].
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle | State::Confirm => None,
            State::Between | State::Frame | State::Trailer => self.deadline,
        }
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.state != State::Idle
    }

    /// Whether a message waits for [`Receiver::confirm`].
    pub fn awaiting_confirm(&self) -> bool {
        self.state == State::Confirm
    }

    /// Counters since the receiver was made.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn feed(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Event>) {
        for (i, &byte) in bytes.iter().enumerate() {
            if self.state == State::Confirm {
                self.hold(bytes.get(i..).unwrap_or_default());
                return;
            }
            self.push(byte, now, out);
        }
    }

    fn hold(&mut self, bytes: &[u8]) {
        let room = self.config.frame_cap.saturating_sub(self.held.len());
        let kept = bytes.len().min(room);
        self.held.extend_from_slice(&bytes[..kept]);
        self.stats.dropped += (bytes.len() - kept) as u64;
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Event>) {
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }

        self.close(out);
        self.stats.timeouts += 1;
        out.push(Event::Timeout);
    }

    fn push(&mut self, byte: u8, now: Instant, out: &mut Vec<Event>) {
        match self.state {
            State::Idle => match byte {
                ENQ => self.open(now, out),
                _ => self.stats.stray += 1,
            },
            State::Between => match byte {
                STX => self.start_frame(now),
                EOT => self.end(out),
                // A new ENQ means the analyzer gave up on this session
                // without our seeing its EOT.
                ENQ => {
                    self.end(out);
                    self.open(now, out);
                }
                // The LF after a frame that ended at CR.
                CR | LF => {}
                _ => self.stats.stray += 1,
            },
            State::Frame => {
                self.deadline = Some(now + self.config.receive_timeout);
                match byte {
                    // A sender that restarts a frame lost the rest of it.
                    STX => {
                        self.stats.malformed += 1;
                        self.start_frame(now);
                    }
                    EOT => self.end(out),
                    ETB | ETX => {
                        self.store_frame_byte(byte);
                        self.state = State::Trailer;
                    }
                    _ => self.store_frame_byte(byte),
                }
            }
            State::Trailer => {
                self.deadline = Some(now + self.config.receive_timeout);
                match byte {
                    CR | LF => self.finish_frame(now, out),
                    STX => {
                        self.stats.malformed += 1;
                        self.start_frame(now);
                    }
                    EOT => self.end(out),
                    _ if self.trailer_len < self.trailer.len() => {
                        self.trailer[self.trailer_len] = byte;
                        self.trailer_len += 1;
                    }
                    _ => {
                        self.stats.malformed += 1;
                        self.state = State::Between;
                        out.push(Event::Send(NAK));
                    }
                }
            }
            State::Confirm => self.hold(&[byte]),
        }
    }

    fn open(&mut self, now: Instant, out: &mut Vec<Event>) {
        if self.busy {
            self.stats.busy += 1;
            out.push(Event::Send(NAK));
            return;
        }

        self.state = State::Between;
        self.deadline = Some(now + self.config.receive_timeout);
        self.message.clear();
        self.terminator = None;
        self.expected = 1;
        self.last = None;
        self.session_frames = 0;
        self.stats.sessions += 1;
        out.push(Event::Send(ACK));
    }

    /// The analyzer ended the session.
    fn end(&mut self, out: &mut Vec<Event>) {
        let frames = self.session_frames;
        self.close(out);
        if frames == 0 {
            self.stats.keepalives += 1;
        }
        out.push(Event::SessionEnded { frames });
    }

    /// Back to idle, reporting a message cut short.
    fn close(&mut self, out: &mut Vec<Event>) {
        if !self.message.is_empty() {
            self.stats.incomplete += 1;
            out.push(Event::Incomplete(std::mem::take(&mut self.message)));
        }
        self.state = State::Idle;
        self.deadline = None;
        self.terminator = None;
        self.frame.clear();
    }

    fn start_frame(&mut self, now: Instant) {
        self.state = State::Frame;
        self.deadline = Some(now + self.config.receive_timeout);
        self.frame.clear();
        self.frame_overflow = false;
        self.trailer_len = 0;
    }

    fn store_frame_byte(&mut self, byte: u8) {
        let limit = self.config.frame_cap.saturating_sub(FRAME_OVERHEAD);
        if !self.frame_overflow && self.frame.len() < limit {
            self.frame.push(byte);
        } else {
            self.frame_overflow = true;
        }
    }

    /// A whole frame arrived: check it, then take its text or refuse it.
    fn finish_frame(&mut self, now: Instant, out: &mut Vec<Event>) {
        self.state = State::Between;
        self.deadline = Some(now + self.config.receive_timeout);

        if self.frame_overflow {
            self.stats.oversize += 1;
            out.push(Event::Send(NAK));
            return;
        }
        let sent = parse_hex(&self.trailer[..self.trailer_len]);
        if sent != Some(checksum(&self.frame)) {
            self.stats.bad_checksum += 1;
            out.push(Event::Send(NAK));
            return;
        }
        let frame = std::mem::take(&mut self.frame);
        self.take_frame(&frame, out);
        // Hand the buffer back to keep its capacity for the next frame.
        self.frame = frame;
        self.frame.clear();
    }

    fn take_frame(&mut self, frame: &[u8], out: &mut Vec<Event>) {
        let (number, text, end) = match frame {
            [number @ b'0'..=b'7', text @ .., end] => (number - b'0', text, *end),
            _ => {
                self.stats.bad_frame_number += 1;
                out.push(Event::Send(NAK));
                return;
            }
        };
        // The analyzer missed our ACK and sent the same frame again. Only
        // the same bytes are a resend: an analyzer that numbers each
        // message from 1 may send a new frame with the last one's number.
        if self.last == Some(number) && self.last_frame == frame {
            self.stats.retransmissions += 1;
            out.push(Event::Send(ACK));
            return;
        }
        // Some analyzers count 6, 7, 1 instead of 6, 7, 0, 1.
        let wrapped_to_one = self.expected == 0 && number == 1;
        // Some number each message's frames from 1 again.
        let restarted = number == 1 && self.message.is_empty();
        if number != self.expected && !wrapped_to_one && !restarted {
            self.stats.bad_frame_number += 1;
            out.push(Event::Send(NAK));
            return;
        }
        // A record's last frame without CR before ETX gets one, so the
        // next record does not run into it.
        let add_cr = end == ETX && text.last() != Some(&CR);
        if self.message.len() + text.len() + usize::from(add_cr) > self.config.max_message_len {
            self.stats.oversize += 1;
            out.push(Event::Send(NAK));
            return;
        }

        let pending = Pending {
            number,
            frame: frame.to_vec(),
            prefix: self.message.len(),
            terminator: self.terminator,
        };
        self.message.extend_from_slice(text);
        if add_cr {
            self.message.push(CR);
        }
        if self.terminator.is_none() {
            self.terminator = self.find_terminator(pending.prefix);
        }

        if self.completes_message(end) {
            self.pending = Some(pending);
            self.state = State::Confirm;
            out.push(Event::Message(self.message.clone()));
        } else {
            self.accept(number, frame, out);
        }
    }

    fn accept(&mut self, number: u8, frame: &[u8], out: &mut Vec<Event>) {
        self.last = Some(number);
        self.last_frame.clear();
        self.last_frame.extend_from_slice(frame);
        self.expected = (number + 1) % 8;
        self.session_frames += 1;
        self.stats.frames += 1;
        out.push(Event::Send(ACK));
    }

    fn completes_message(&self, end: u8) -> bool {
        match self.config.message_end {
            MessageEnd::EveryFrame => end == ETX,
            MessageEnd::TerminatorRecord => match self.terminator {
                None => false,
                Some(start) => end == ETX || self.message[start..].contains(&CR),
            },
        }
    }

    /// The start of a terminator record beginning at or after `from`
    /// (or one byte before it, when `L` and the delimiter were split across
    /// frames).
    fn find_terminator(&self, from: usize) -> Option<usize> {
        // The field delimiter is whatever the header declares (E1394 7.1),
        // the byte after its `H`.
        let delimiter = match self.message.as_slice() {
            [b'H', delimiter, ..] => *delimiter,
            _ => b'|',
        };
        let m = &self.message;
        (from.saturating_sub(1)..m.len().saturating_sub(1))
            .find(|&p| m[p] == b'L' && m[p + 1] == delimiter && (p == 0 || m[p - 1] == CR))
    }
}

/// Two hex digits, either case.
fn parse_hex(digits: &[u8]) -> Option<u8> {
    let [high, low] = digits else {
        return None;
    };
    let high = char::from(*high).to_digit(16)?;
    let low = char::from(*low).to_digit(16)?;
    u8::try_from(high * 16 + low).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// A frame as an analyzer sends it.
    fn frame(number: u8, text: &[u8], end: u8) -> Vec<u8> {
        let mut body = vec![b'0' + number];
        body.extend_from_slice(text);
        body.push(end);
        let mut wire = vec![STX];
        wire.extend_from_slice(&body);
        wire.extend_from_slice(format!("{:02X}\r\n", checksum(&body)).as_bytes());
        wire
    }

    /// Feeds chunks, confirming every message as durable; returns all
    /// events in order.
    fn drive<'a>(
        rx: &mut Receiver,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        now: Instant,
    ) -> Vec<Event> {
        let mut all = Vec::new();
        for chunk in chunks {
            let mut queue = VecDeque::from(rx.on_bytes(chunk, now));
            while let Some(event) = queue.pop_front() {
                let message = matches!(event, Event::Message(_));
                all.push(event);
                if message {
                    queue.extend(rx.confirm(true, now));
                }
            }
        }
        all
    }

    fn messages(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn acks(events: &[Event]) -> usize {
        events.iter().filter(|e| **e == Event::Send(ACK)).count()
    }

    fn naks(events: &[Event]) -> usize {
        events.iter().filter(|e| **e == Event::Send(NAK)).count()
    }

    /// A receiver that has answered ENQ.
    fn opened(config: LinkConfig, now: Instant) -> Receiver {
        let mut rx = Receiver::new(config);
        assert_eq!(rx.on_bytes(&[ENQ], now), [Event::Send(ACK)]);
        rx
    }

    const RECORDS: [&[u8]; 6] = [
        b"H|\\^&|||LIAISONXL|||||LABEDV||P|1\r",
        b"P|1||PID-7||Wang^Li\r",
        b"O|1|SID-42||^^^GLU\\^^^CHOL|R\r",
        b"R|1|^^^GLU|5.6|mmol/L|3.9-6.1|N||F||||20261203101500\r",
        b"R|2|^^^CHOL|4.1|mmol/L||N||F\r",
        b"L|1|N\r",
    ];

    /// ENQ, the records in six frames (the fourth split by ETB), EOT.
    fn session() -> (Vec<u8>, Vec<u8>) {
        let mut wire = vec![ENQ];
        let (r_head, r_tail) = RECORDS[3].split_at(20);
        wire.extend(frame(1, RECORDS[0], ETX));
        wire.extend(frame(2, RECORDS[1], ETX));
        wire.extend(frame(3, RECORDS[2], ETX));
        wire.extend(frame(4, r_head, ETB));
        wire.extend(frame(5, r_tail, ETX));
        wire.extend(frame(6, RECORDS[4], ETX));
        wire.extend(frame(7, RECORDS[5], ETX));
        wire.push(EOT);
        (wire, RECORDS.concat())
    }

    #[test]
    fn public_checksum_vectors() {
        assert_eq!(checksum(b"1A|B|C|D\r\x03"), 0xBF);
        assert_eq!(
            checksum(b"1H|\\^&|||LIAISONXL|||||LABEDV||P|1|\r\x03"),
            0x97
        );
        assert_eq!(checksum(b"2O|1|||||\x03"), 0x9D);
        assert_eq!(parse_hex(b"BF"), Some(0xBF));
        assert_eq!(parse_hex(b"bf"), Some(0xBF));
        assert_eq!(parse_hex(b"G0"), None);
        assert_eq!(parse_hex(b"B"), None);
    }

    /// Acceptance point 2 of issue 6: a GBK analyzer's checksum is the
    /// sum of its GBK bytes (8D here, summed by Python over
    /// `"...样本溶血...".encode("gbk")`); the sum over the same text in
    /// UTF-8 (FF) is wrong on its wire.
    #[test]
    fn gbk_frame_checksums_over_its_gbk_bytes() {
        let (text, _, _) = encoding_rs::GBK.encode("1C|1|I|样本溶血|G\r\x03");
        assert_eq!(
            &text[..],
            b"1C|1|I|\xd1\xf9\xb1\xbe\xc8\xdc\xd1\xaa|G\r\x03"
        );
        assert_eq!(checksum(&text), 0x8D);
        assert_eq!(checksum("1C|1|I|样本溶血|G\r\x03".as_bytes()), 0xFF);

        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let mut wire = vec![STX];
        wire.extend_from_slice(&text);
        let good = [&wire[..], b"8D\r\n"].concat();
        let utf8_sum = [&wire[..], b"FF\r\n"].concat();
        assert_eq!(rx.on_bytes(&utf8_sum, now), [Event::Send(NAK)]);
        assert_eq!(rx.on_bytes(&good, now), [Event::Send(ACK)]);
    }

    #[test]
    fn full_session_with_etb_continuation() {
        let now = Instant::now();
        let (wire, text) = session();
        let mut rx = Receiver::new(LinkConfig::default());
        let events = rx.on_bytes(&wire, now);

        // ENQ and six frames acknowledged, then the completing frame waits.
        let mut expected = vec![Event::Send(ACK); 7];
        expected.push(Event::Message(text));
        assert_eq!(events, expected);
        assert_eq!(
            rx.confirm(true, now),
            [Event::Send(ACK), Event::SessionEnded { frames: 7 }]
        );
        let stats = rx.stats();
        assert_eq!((stats.frames, stats.messages, stats.sessions), (7, 1, 1));
        assert!(!rx.in_session());
    }

    #[test]
    fn every_split_of_a_session_gives_the_same_events() {
        let now = Instant::now();
        let (wire, _) = session();
        let whole = drive(&mut Receiver::new(LinkConfig::default()), [&wire[..]], now);

        let bytewise = drive(
            &mut Receiver::new(LinkConfig::default()),
            wire.chunks(1),
            now,
        );
        assert_eq!(bytewise, whole);
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            let mut rx = Receiver::new(LinkConfig::default());
            assert_eq!(drive(&mut rx, [a, b], now), whole, "split at {cut}");
        }
    }

    #[test]
    fn bad_checksum_gets_nak_and_the_resend_is_taken_once() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let good = frame(1, b"H|\\^&\r", ETX);
        let mut bad = good.clone();
        bad[3] ^= 0x01;

        assert_eq!(rx.on_bytes(&bad, now), [Event::Send(NAK)]);
        assert_eq!(rx.on_bytes(&good, now), [Event::Send(ACK)]);
        let events = drive(&mut rx, [&frame(2, b"L|1|N\r", ETX)[..]], now);
        assert_eq!(messages(&events), [b"H|\\^&\rL|1|N\r".to_vec()]);
        assert_eq!(rx.stats().bad_checksum, 1);
    }

    #[test]
    fn missing_checksum_gets_nak() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(b"\x021H|\\^&\r\x03\r\n", now),
            [Event::Send(NAK)]
        );
        assert_eq!(rx.stats().bad_checksum, 1);
    }

    #[test]
    fn resent_frame_after_lost_ack_is_acked_without_duplicating_text() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let first = frame(1, b"H|\\^&\r", ETX);
        assert_eq!(rx.on_bytes(&first, now), [Event::Send(ACK)]);
        assert_eq!(rx.on_bytes(&first, now), [Event::Send(ACK)]);
        let events = drive(&mut rx, [&frame(2, b"L|1|N\r", ETX)[..]], now);
        assert_eq!(messages(&events), [b"H|\\^&\rL|1|N\r".to_vec()]);
        assert_eq!(rx.stats().retransmissions, 1);
    }

    #[test]
    fn wrong_frame_number_gets_nak() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&frame(3, b"H|\\^&\r", ETX), now),
            [Event::Send(NAK)]
        );
        assert_eq!(rx.on_bytes(b"\x029H\x03", now), []);
        assert_eq!(
            rx.on_bytes(format!("{:02X}\n", checksum(b"9H\x03")).as_bytes(), now),
            [Event::Send(NAK)]
        );
        assert_eq!(rx.stats().bad_frame_number, 2);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now),
            [Event::Send(ACK)]
        );
    }

    #[test]
    fn frame_numbers_restarting_at_1_per_message_are_accepted() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let first = frame(1, b"H|\\^&\rR|1|^^^A|1\rL|1|N\r", ETX);
        let second = frame(1, b"H|\\^&\rR|1|^^^B|2\rL|1|N\r", ETX);
        let third = [frame(1, b"H|\\^&\r", ETX), frame(2, b"L|1|N\r", ETX)].concat();
        let events = drive(&mut rx, [&first[..], &second[..], &third[..]], now);
        assert_eq!(
            messages(&events),
            [
                b"H|\\^&\rR|1|^^^A|1\rL|1|N\r".to_vec(),
                b"H|\\^&\rR|1|^^^B|2\rL|1|N\r".to_vec(),
                b"H|\\^&\rL|1|N\r".to_vec()
            ]
        );
        assert_eq!(naks(&events), 0);
        assert_eq!(rx.stats().retransmissions, 0);
    }

    #[test]
    fn a_new_frame_with_the_last_number_mid_message_is_not_a_resend() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now),
            [Event::Send(ACK)]
        );
        // Number 1 again with other text, mid-message: neither a resend
        // nor a restart.
        assert_eq!(
            rx.on_bytes(&frame(1, b"R|1|^^^A|1\r", ETX), now),
            [Event::Send(NAK)]
        );
        assert_eq!(rx.stats().bad_frame_number, 1);
    }

    /// Ten frames numbered 1..7 then `after_seven`, `after_seven + 1`, ...
    fn wrapping_session(after_seven: u8) -> (Vec<u8>, Vec<u8>) {
        let mut texts: Vec<Vec<u8>> = vec![b"H|\\^&\r".to_vec()];
        texts.extend((1..=8).map(|i| format!("R|{i}|^^^T{i}|{i}.0\r").into_bytes()));
        texts.push(b"L|1|N\r".to_vec());
        let mut numbers: Vec<u8> = (1..=7).collect();
        numbers.extend([after_seven, after_seven + 1, after_seven + 2]);

        let mut wire = vec![ENQ];
        for (number, text) in numbers.iter().zip(&texts) {
            wire.extend(frame(*number, text, ETX));
        }
        wire.push(EOT);
        (wire, texts.concat())
    }

    #[test]
    fn frame_numbers_wrap_from_7_to_0() {
        let now = Instant::now();
        let (wire, text) = wrapping_session(0);
        let events = drive(&mut Receiver::new(LinkConfig::default()), [&wire[..]], now);
        assert_eq!(messages(&events), [text]);
        assert_eq!(naks(&events), 0);
        assert_eq!(events.last(), Some(&Event::SessionEnded { frames: 10 }));
    }

    #[test]
    fn frame_numbers_wrap_from_7_to_1() {
        let now = Instant::now();
        let (wire, text) = wrapping_session(1);
        let events = drive(&mut Receiver::new(LinkConfig::default()), [&wire[..]], now);
        assert_eq!(messages(&events), [text]);
        assert_eq!(naks(&events), 0);
    }

    #[test]
    fn lf_only_and_lowercase_checksum_are_accepted() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let body = b"1H|\\^&\rL|1|N\r\x03";
        let mut wire = vec![STX];
        wire.extend_from_slice(body);
        wire.extend_from_slice(format!("{:02x}\n", checksum(body)).as_bytes());
        let events = drive(&mut rx, [&wire[..]], now);
        assert_eq!(messages(&events), [b"H|\\^&\rL|1|N\r".to_vec()]);
        assert_eq!(acks(&events), 1);
    }

    #[test]
    fn missing_cr_before_etx_still_separates_records() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        let wire = [
            frame(1, b"H|\\^&", ETX),
            frame(2, b"R|1|^^^GLU|5.6", ETX),
            frame(3, b"L|1|N", ETX),
        ]
        .concat();
        let events = drive(&mut rx, [&wire[..]], now);
        assert_eq!(
            messages(&events),
            [b"H|\\^&\rR|1|^^^GLU|5.6\rL|1|N\r".to_vec()]
        );
    }

    #[test]
    fn long_frames_are_accepted_up_to_the_cap() {
        let now = Instant::now();
        let config = LinkConfig {
            frame_cap: 1000,
            ..LinkConfig::default()
        };
        let mut rx = opened(config, now);
        // STX, number, ETB, two digits, CR, LF: 7 bytes around the text.
        let mut text = b"R|1|".to_vec();
        text.resize(1000 - 7, b'9');
        let long = frame(1, &text, ETB);
        assert_eq!(long.len(), 1000);
        assert_eq!(rx.on_bytes(&long, now), [Event::Send(ACK)]);

        let mut text = b"R|2|".to_vec();
        text.resize(1001 - 7, b'9');
        let over = frame(2, &text, ETB);
        assert_eq!(rx.on_bytes(&over, now), [Event::Send(NAK)]);
        assert_eq!(rx.stats().oversize, 1);

        // Nothing of the oversize frame was kept; frame 2 is still due.
        let events = drive(&mut rx, [&frame(2, b"\rL|1\r", ETX)[..]], now);
        let mut expected = long[2..long.len() - 5].to_vec();
        expected.extend_from_slice(b"\rL|1\r");
        assert_eq!(messages(&events), [expected]);
    }

    #[test]
    fn message_over_the_limit_gets_nak() {
        let now = Instant::now();
        let config = LinkConfig {
            max_message_len: 10,
            ..LinkConfig::default()
        };
        let mut rx = opened(config, now);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETB), now),
            [Event::Send(ACK)]
        );
        assert_eq!(
            rx.on_bytes(&frame(2, b"L|1|N\r", ETX), now),
            [Event::Send(NAK)]
        );
        assert_eq!(rx.stats().oversize, 1);
    }

    #[test]
    fn timeout_abandons_the_session_and_reports_the_partial_message() {
        let start = Instant::now();
        let config = LinkConfig {
            receive_timeout: Duration::from_secs(15),
            ..LinkConfig::default()
        };
        let mut rx = opened(config, start);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), start),
            [Event::Send(ACK)]
        );
        assert_eq!(rx.deadline(), Some(start + Duration::from_secs(15)));

        assert_eq!(rx.on_tick(start + Duration::from_secs(14)), []);
        assert_eq!(
            rx.on_tick(start + Duration::from_secs(15)),
            [Event::Incomplete(b"H|\\^&\r".to_vec()), Event::Timeout]
        );
        assert!(!rx.in_session());

        // The rest of the message arrives too late: it is line noise now.
        let late = frame(2, b"L|1|N\r", ETX);
        assert_eq!(rx.on_bytes(&late, start + Duration::from_secs(16)), []);
        let stats = rx.stats();
        assert_eq!((stats.timeouts, stats.incomplete), (1, 1));
        assert_eq!(stats.stray, late.len() as u64);
    }

    #[test]
    fn bytes_after_the_deadline_find_the_session_expired() {
        let start = Instant::now();
        let mut rx = opened(LinkConfig::default(), start);
        let events = rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), start + Duration::from_secs(31));
        assert_eq!(events, [Event::Timeout]);
    }

    #[test]
    fn eot_right_after_enq_is_a_keepalive() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&[EOT], now),
            [Event::SessionEnded { frames: 0 }]
        );
        assert_eq!(rx.stats().keepalives, 1);
        assert_eq!(
            rx.on_bytes(&[ENQ, EOT], now),
            [Event::Send(ACK), Event::SessionEnded { frames: 0 }]
        );
    }

    #[test]
    fn eot_mid_message_reports_it_incomplete() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now);
        assert_eq!(
            rx.on_bytes(&[EOT], now),
            [
                Event::Incomplete(b"H|\\^&\r".to_vec()),
                Event::SessionEnded { frames: 1 }
            ]
        );
    }

    #[test]
    fn stray_bytes_while_idle_are_counted_and_ignored() {
        let now = Instant::now();
        let (wire, text) = session();
        let mut noisy = b"\x00\xff garbage \r\n\x03\x04".to_vec();
        noisy.extend_from_slice(&wire);
        let events = drive(&mut Receiver::new(LinkConfig::default()), [&noisy[..]], now);
        assert_eq!(messages(&events), [text]);
        assert_eq!(naks(&events), 0);
    }

    #[test]
    fn busy_receiver_refuses_enq() {
        let now = Instant::now();
        let mut rx = Receiver::new(LinkConfig::default());
        rx.set_busy(true);
        assert_eq!(rx.on_bytes(&[ENQ], now), [Event::Send(NAK)]);
        assert!(!rx.in_session());
        rx.set_busy(false);
        assert_eq!(rx.on_bytes(&[ENQ], now), [Event::Send(ACK)]);
        assert_eq!(rx.stats().busy, 1);
    }

    #[test]
    fn completing_frame_is_acked_only_after_confirm() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now),
            [Event::Send(ACK)]
        );

        // EOT arrives in the same read, before the caller confirms: held.
        let mut wire = frame(2, b"L|1|N\r", ETX);
        wire.push(EOT);
        let events = rx.on_bytes(&wire, now);
        assert_eq!(events, [Event::Message(b"H|\\^&\rL|1|N\r".to_vec())]);
        assert!(rx.awaiting_confirm());
        assert_eq!(rx.deadline(), None);
        // A slow store does not time the session out.
        assert_eq!(rx.on_tick(now + Duration::from_secs(60)), []);

        assert_eq!(
            rx.confirm(true, now),
            [Event::Send(ACK), Event::SessionEnded { frames: 2 }]
        );
        assert_eq!(rx.confirm(true, now), []);
        assert_eq!(rx.stats().messages, 1);
    }

    #[test]
    fn refused_message_gets_nak_and_is_reported_whole_on_resend() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        rx.on_bytes(&frame(1, b"H|\\^&\rR|1|^^^GLU|5", ETB), now);
        let last = frame(2, b".6\rL|1|N\r", ETX);
        let text = b"H|\\^&\rR|1|^^^GLU|5.6\rL|1|N\r".to_vec();

        assert_eq!(rx.on_bytes(&last, now), [Event::Message(text.clone())]);
        assert_eq!(rx.confirm(false, now), [Event::Send(NAK)]);

        // The analyzer resends the frame; the message comes back whole.
        assert_eq!(rx.on_bytes(&last, now), [Event::Message(text)]);
        assert_eq!(rx.confirm(true, now), [Event::Send(ACK)]);
        let stats = rx.stats();
        assert_eq!((stats.refused, stats.messages, stats.frames), (1, 1, 2));
    }

    #[test]
    fn terminator_split_across_frames_is_found() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\rL", ETB), now),
            [Event::Send(ACK)]
        );
        let events = rx.on_bytes(&frame(2, b"|1|N\r", ETX), now);
        assert_eq!(events, [Event::Message(b"H|\\^&\rL|1|N\r".to_vec())]);
    }

    #[test]
    fn l_inside_a_field_is_not_a_terminator() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        // "mmol/L|" split before the L: not at a record start.
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\rR|1|^^^GLU|5.6|mmol/", ETB), now),
            [Event::Send(ACK)]
        );
        assert_eq!(
            rx.on_bytes(&frame(2, b"L||N\r", ETX), now),
            [Event::Send(ACK)]
        );
    }

    #[test]
    fn header_declared_delimiter_is_used_for_the_terminator() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        assert_eq!(
            rx.on_bytes(&frame(1, b"H!\\^&\r", ETX), now),
            [Event::Send(ACK)]
        );
        let events = rx.on_bytes(&frame(2, b"L!1!N\r", ETX), now);
        assert_eq!(events, [Event::Message(b"H!\\^&\rL!1!N\r".to_vec())]);
    }

    #[test]
    fn every_etx_frame_is_a_message_when_configured() {
        let now = Instant::now();
        let config = LinkConfig {
            message_end: MessageEnd::EveryFrame,
            ..LinkConfig::default()
        };
        let mut rx = opened(config, now);
        let wire = [
            frame(1, b"R|1|^^^GL", ETB),
            frame(2, b"U|5.6\r", ETX),
            frame(3, b"R|1|^^^CHOL|4.1\r", ETX),
        ]
        .concat();
        let events = drive(&mut rx, [&wire[..]], now);
        assert_eq!(
            messages(&events),
            [b"R|1|^^^GLU|5.6\r".to_vec(), b"R|1|^^^CHOL|4.1\r".to_vec()]
        );
    }

    #[test]
    fn enq_mid_session_restarts_it() {
        let now = Instant::now();
        let mut rx = opened(LinkConfig::default(), now);
        rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now);
        assert_eq!(
            rx.on_bytes(&[ENQ], now),
            [
                Event::Incomplete(b"H|\\^&\r".to_vec()),
                Event::SessionEnded { frames: 1 },
                Event::Send(ACK)
            ]
        );
        assert_eq!(
            rx.on_bytes(&frame(1, b"H|\\^&\r", ETX), now),
            [Event::Send(ACK)]
        );
    }

    fn record() -> impl Strategy<Value = Vec<u8>> {
        // Printable text never holds a control byte or a CR, so the only
        // record start with `L|` is the terminator's. Bytes from 0x81 up
        // are what GBK and GB18030 text puts on the wire (lead and trail
        // bytes), checksummed as they are.
        (
            prop::sample::select(&b"POCRMQ"[..]),
            prop::collection::vec(prop_oneof![3 => 0x20u8..0x7f, 1 => 0x81u8..=0xfe], 0..400),
        )
            .prop_map(|(kind, body)| {
                let mut record = vec![kind, b'|'];
                record.extend(body);
                record.push(CR);
                record
            })
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(record(), 0..6).prop_map(|records| {
            let mut text = b"H|\\^&|||analyzer\r".to_vec();
            text.extend(records.concat());
            text.extend_from_slice(b"L|1|N\r");
            text
        })
    }

    /// Splits `text` into frame texts of the given sizes, repeated as
    /// needed (none empty).
    fn split(text: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut parts = Vec::new();
        let mut rest = text;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (part, tail) = rest.split_at(size.clamp(1, rest.len()));
            parts.push(part.to_vec());
            rest = tail;
        }
        parts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Acceptance point 1 of issue 6.
        #[test]
        fn framed_messages_are_reassembled_exactly(
            messages_sent in prop::collection::vec(message(), 1..4),
            frame_sizes in prop::collection::vec(1usize..600, 1..40),
            wrap_to_one in any::<bool>(),
            read_sizes in prop::collection::vec(1usize..300, 1..60),
        ) {
            let mut wire = vec![ENQ];
            let mut number = 1u8;
            let mut frames = 0;
            for text in &messages_sent {
                let parts = split(text, &frame_sizes);
                for (i, part) in parts.iter().enumerate() {
                    let end = if i + 1 == parts.len() { ETX } else { ETB };
                    wire.extend(frame(number, part, end));
                    frames += 1;
                    number = match (number + 1) % 8 {
                        0 if wrap_to_one => 1,
                        n => n,
                    };
                }
            }
            wire.push(EOT);

            let mut reads = Vec::new();
            let mut rest = &wire[..];
            let mut sizes = read_sizes.iter().cycle();
            while !rest.is_empty() {
                let size = sizes.next().copied().unwrap_or(1).min(rest.len());
                let (read, tail) = rest.split_at(size);
                reads.push(read);
                rest = tail;
            }

            let now = Instant::now();
            let config = LinkConfig { frame_cap: 1024, ..LinkConfig::default() };
            let mut rx = Receiver::new(config);
            let events = drive(&mut rx, reads, now);
            prop_assert_eq!(messages(&events), messages_sent);
            prop_assert_eq!(acks(&events), frames + 1);
            prop_assert_eq!(naks(&events), 0);
            prop_assert_eq!(events.last(), Some(&Event::SessionEnded { frames: frames as u64 }));
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_grow_past_the_caps(
            reads in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just(STX), Just(ETX), Just(ETB), Just(ENQ), Just(EOT),
                        Just(CR), Just(LF), Just(b'L'), Just(b'|'), Just(b'1'),
                        any::<u8>(),
                    ],
                    0..200,
                ),
                0..20,
            ),
            confirm_ok in any::<bool>(),
        ) {
            let now = Instant::now();
            let config = LinkConfig {
                frame_cap: 64,
                max_message_len: 128,
                ..LinkConfig::default()
            };
            let mut rx = Receiver::new(config);
            for (i, read) in reads.iter().enumerate() {
                let at = now + Duration::from_secs(i as u64);
                let events = rx.on_bytes(read, at);
                if rx.awaiting_confirm() {
                    prop_assert!(matches!(events.last(), Some(Event::Message(_))));
                }
                while rx.awaiting_confirm() {
                    rx.confirm(confirm_ok, at);
                }
                prop_assert!(rx.frame.len() <= 64);
                prop_assert!(rx.message.len() <= 128);
                prop_assert!(rx.held.len() <= 64);
            }
        }
    }
}
