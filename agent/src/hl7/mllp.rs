//! MLLP, the minimal lower layer protocol: an HL7 v2 message between a
//! start block `VT` (0x0B) and an end block `FS CR` (0x1C 0x0D).
//!
//! [`Decoder`] takes bytes in whatever chunks they arrive and returns
//! [`Frame`]s. It holds at most `max_len` bytes of one message; a longer
//! one is reported as [`Frame::Oversize`] and skipped to its end block.
//! Bytes outside blocks (the `LF` some senders add, line noise) are
//! counted and reported as [`Frame::Stray`]. A missing `CR` after `FS` is
//! tolerated, and a start block inside a message means the sender gave up
//! on it: [`Frame::Cut`].
//!
//! ```
//! use kouan_agent::hl7::mllp::{encode, Decoder, Frame};
//!
//! let wire = encode(b"MSH|^~\\&|A\r");
//! assert_eq!(wire, b"\x0bMSH|^~\\&|A\r\x1c\r");
//! let mut decoder = Decoder::new(1024);
//! let (a, b) = wire.split_at(5);
//! assert_eq!(decoder.push(a), []);
//! assert_eq!(decoder.push(b), [Frame::Message(b"MSH|^~\\&|A\r".to_vec())]);
//! ```

/// Start of a block.
pub const START: u8 = 0x0B;
/// End of a block, followed by [`CR`].
pub const END: u8 = 0x1C;
/// After [`END`].
pub const CR: u8 = 0x0D;

/// Wraps a message in a block.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(message.len() + 3);
    wire.push(START);
    wire.extend_from_slice(message);
    wire.extend_from_slice(&[END, CR]);
    wire
}

/// What a [`Decoder`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message, without its block bytes.
    Message(Vec<u8>),
    /// A message longer than the limit, discarded.
    Oversize,
    /// A message cut off by a new start block, discarded; its length.
    Cut(usize),
    /// Bytes outside any block, ignored; their count.
    Stray(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Block,
    AfterEnd,
}

/// The streaming MLLP decoder.
#[derive(Debug)]
pub struct Decoder {
    max_len: usize,
    state: State,
    buf: Vec<u8>,
    overflow: bool,
}

impl Decoder {
    /// A decoder that holds messages of at most `max_len` bytes.
    pub fn new(max_len: usize) -> Decoder {
        Decoder {
            max_len,
            state: State::Idle,
            buf: Vec::new(),
            overflow: false,
        }
    }

    /// Bytes of an unfinished message held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes; returns the frames they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut stray = 0;
        for &byte in bytes {
            match (self.state, byte) {
                (State::Block, START) => {
                    out.push(Frame::Cut(self.buf.len()));
                    self.open();
                }
                (State::Block, END) => {
                    if stray > 0 {
                        out.push(Frame::Stray(stray));
                        stray = 0;
                    }
                    let message = std::mem::take(&mut self.buf);
                    out.push(if self.overflow {
                        Frame::Oversize
                    } else {
                        Frame::Message(message)
                    });
                    self.state = State::AfterEnd;
                }
                (State::Block, _) => {
                    if self.buf.len() < self.max_len {
                        self.buf.push(byte);
                    } else {
                        self.overflow = true;
                    }
                }
                (_, START) => self.open(),
                (State::AfterEnd, CR) => self.state = State::Idle,
                // A line end between blocks is a common habit, not noise.
                (State::Idle, CR | b'\n') => {}
                (State::Idle | State::AfterEnd, _) => {
                    stray += 1;
                    self.state = State::Idle;
                }
            }
        }
        if stray > 0 {
            out.push(Frame::Stray(stray));
        }
        out
    }

    fn open(&mut self) {
        self.state = State::Block;
        self.buf.clear();
        self.overflow = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, chunks: &[&[u8]]) -> Vec<Frame> {
        chunks.iter().flat_map(|c| decoder.push(c)).collect()
    }

    #[test]
    fn every_split_gives_the_same_messages() {
        let wire = [encode(b"MSH|1\rOBX|1\r"), encode(b"MSH|2\r")].concat();
        let whole = Decoder::new(100).push(&wire);
        assert_eq!(
            whole,
            [
                Frame::Message(b"MSH|1\rOBX|1\r".to_vec()),
                Frame::Message(b"MSH|2\r".to_vec())
            ]
        );
        for cut in 0..=wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(
                decode_all(&mut Decoder::new(100), &[a, b]),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn missing_cr_after_the_end_block_is_tolerated() {
        let wire = b"\x0bMSH|1\x1c\x0bMSH|2\x1c\r";
        let frames = Decoder::new(100).push(wire);
        assert_eq!(
            frames,
            [
                Frame::Message(b"MSH|1".to_vec()),
                Frame::Message(b"MSH|2".to_vec())
            ]
        );
    }

    #[test]
    fn stray_bytes_and_line_ends_between_blocks() {
        let frames = Decoder::new(100).push(b"\r\nnoise\x0bMSH|1\x1c\rxy");
        assert_eq!(
            frames,
            [
                Frame::Stray(5),
                Frame::Message(b"MSH|1".to_vec()),
                Frame::Stray(2)
            ]
        );
    }

    #[test]
    fn oversize_message_is_skipped_and_the_next_one_read() {
        let mut decoder = Decoder::new(4);
        let frames = decoder.push(b"\x0b123456\x1c\r\x0b1234\x1c\r");
        assert_eq!(frames, [Frame::Oversize, Frame::Message(b"1234".to_vec())]);
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn start_block_inside_a_message_cuts_it() {
        let frames = Decoder::new(100).push(b"\x0bMSH|half\x0bMSH|2\x1c\r");
        assert_eq!(frames, [Frame::Cut(8), Frame::Message(b"MSH|2".to_vec())]);
    }
}
