//! A streaming frame decoder with one fixed buffer.
//!
//! UART drivers hand over bytes in whatever chunks the hardware or the
//! operating system produced: half a frame, three frames, a frame and some
//! line noise. [`Decoder`] collects bytes up to each delimiter in a buffer of
//! [`MAX_ENCODED_LEN`] bytes, then checks and decodes the frame in place.
//!
//! Recovery is by delimiter. A corrupt frame is counted, reported as a
//! [`FrameError`] and forgotten; the bytes after the next `0x00` start a new
//! frame. When more bytes arrive than a frame can hold, the decoder stops
//! storing them and waits for the next delimiter, so garbage costs no memory
//! beyond the buffer. Nothing in this module can panic on any input.

use core::marker::PhantomData;

use serde::de::DeserializeOwned;

use crate::frame::{self, DELIMITER, FrameError, MAX_ENCODED_LEN};

/// Counters of what a [`Decoder`] has seen since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Bytes fed in.
    pub bytes: u64,
    /// Frames decoded into a message.
    pub frames: u64,
    /// Frames discarded for being longer than the maximum.
    pub oversize: u64,
    /// Frames discarded for invalid COBS or being shorter than a CRC.
    pub malformed: u64,
    /// Frames discarded for a CRC mismatch.
    pub crc: u64,
    /// Frames with a good CRC that are not a message of the expected type.
    pub payload: u64,
}

impl DecodeStats {
    /// All discarded frames.
    pub fn corrupt(&self) -> u64 {
        self.oversize + self.malformed + self.crc + self.payload
    }

    fn count(&mut self, error: FrameError) {
        match error {
            FrameError::Oversize => self.oversize += 1,
            FrameError::Cobs | FrameError::Short => self.malformed += 1,
            FrameError::Crc => self.crc += 1,
            FrameError::Payload => self.payload += 1,
        }
    }
}

/// Turns a byte stream into messages of type `M`.
///
/// ```
/// use kouan_protocol::{frame, Decoder, NodeMsg, NodeTime, Sample, Unit};
///
/// let sample = NodeMsg::Sample(Sample {
///     seq: 1,
///     sensor: 0,
///     value: 21.5,
///     unit: Unit::DegreeCelsius,
///     time: NodeTime { ms: 1_000, synced: false },
/// });
/// let bytes = frame::encode(&sample).unwrap();
///
/// // Noise on the line, then the frame split across two reads.
/// let mut decoder = Decoder::<NodeMsg>::new();
/// let (first, second) = bytes.split_at(5);
/// assert_eq!(decoder.feed(b"\x13\x37").count(), 0);
/// assert_eq!(decoder.feed(first).count(), 1); // the noise, reported as corrupt
/// assert_eq!(decoder.feed(second).next(), Some(Ok(sample)));
/// assert_eq!(decoder.stats().corrupt(), 1);
/// ```
#[derive(Debug)]
pub struct Decoder<M> {
    buf: [u8; MAX_ENCODED_LEN],
    len: usize,
    overflowed: bool,
    stats: DecodeStats,
    _msg: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned> Default for Decoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: DeserializeOwned> Decoder<M> {
    /// A decoder waiting for the first delimiter-separated frame.
    pub const fn new() -> Self {
        Decoder {
            buf: [0; MAX_ENCODED_LEN],
            len: 0,
            overflowed: false,
            stats: DecodeStats {
                bytes: 0,
                frames: 0,
                oversize: 0,
                malformed: 0,
                crc: 0,
                payload: 0,
            },
            _msg: PhantomData,
        }
    }

    /// Takes one byte; returns the outcome when it ends a non-empty frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<M, FrameError>> {
        self.stats.bytes += 1;
        if byte != DELIMITER {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflowed = true;
            }
            return None;
        }

        let len = core::mem::take(&mut self.len);
        let result = if core::mem::take(&mut self.overflowed) {
            Err(FrameError::Oversize)
        } else if len == 0 {
            return None;
        } else {
            frame::decode_in_place(&mut self.buf[..len])
        };
        match &result {
            Ok(_) => self.stats.frames += 1,
            Err(error) => self.stats.count(*error),
        }
        Some(result)
    }

    /// Takes a chunk of bytes; the iterator yields the outcome of each frame
    /// that the chunk completes, in order.
    ///
    /// Bytes the iterator has not reached when it is dropped are not
    /// consumed: drain it (for example with `for` or `count()`) to take the
    /// whole chunk.
    pub fn feed<'a>(&'a mut self, bytes: &'a [u8]) -> Feed<'a, M> {
        Feed {
            decoder: self,
            bytes,
        }
    }

    /// Counters since the decoder was made.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Whether a frame is partly received.
    pub fn in_frame(&self) -> bool {
        self.len > 0 || self.overflowed
    }
}

/// The frames completed by one chunk of bytes; see [`Decoder::feed`].
#[derive(Debug)]
pub struct Feed<'a, M> {
    decoder: &'a mut Decoder<M>,
    bytes: &'a [u8],
}

impl<M: DeserializeOwned> Iterator for Feed<'_, M> {
    type Item = Result<M, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&byte, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if let Some(outcome) = self.decoder.push(byte) {
                return Some(outcome);
            }
        }
        None
    }
}
