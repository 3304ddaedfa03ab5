//! How a message is put on the wire.
//!
//! ```text
//! 0x00 | COBS( postcard(message) | CRC-32(postcard(message)) as u32 LE ) | 0x00
//! ```
//!
//! The CRC is CRC-32/ISO-HDLC, the one of zlib and Ethernet (check value
//! `0xCBF43926`), over the postcard bytes. COBS removes every zero byte, so a
//! zero marks a frame boundary and nothing else. The sender writes a zero
//! before each frame as well as after it: a receiver that joined mid-frame, or
//! saw line noise, drops whatever it collected at that zero and starts clean
//! on the frame that follows. Two zeros in a row enclose an empty frame,
//! which receivers ignore.

use crc::{CRC_32_ISO_HDLC, Crc};
use serde::{Serialize, de::DeserializeOwned};

/// Longest postcard payload of one message, in bytes.
///
/// Every message of this crate fits (a full [`Hello`](crate::Hello) takes
/// 108 bytes); the limit bounds the buffers on both ends.
pub const MAX_PAYLOAD_LEN: usize = 128;

/// Length of the CRC-32 that follows the payload.
pub const CRC_LEN: usize = 4;

/// Longest COBS-encoded frame between two delimiters.
pub const MAX_ENCODED_LEN: usize = cobs::max_encoding_length(MAX_PAYLOAD_LEN + CRC_LEN);

/// Longest frame on the wire, both delimiters included.
pub const MAX_WIRE_LEN: usize = MAX_ENCODED_LEN + 2;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// One encoded frame, delimiters included, ready to write to the UART.
pub type Frame = heapless::Vec<u8, MAX_WIRE_LEN>;

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serialised message is longer than [`MAX_PAYLOAD_LEN`].
    TooLarge,
}

/// Why a received frame was discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// More than [`MAX_ENCODED_LEN`] bytes came without a delimiter.
    Oversize,
    /// The bytes are not valid COBS.
    Cobs,
    /// The frame is shorter than a CRC.
    Short,
    /// The CRC does not match the payload.
    Crc,
    /// The CRC matches but the payload is not a message of the expected type
    /// (unknown variant, bad length, trailing bytes).
    Payload,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::TooLarge => {
                write!(f, "message is longer than {MAX_PAYLOAD_LEN} bytes")
            }
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self {
            FrameError::Oversize => {
                "frame longer than the maximum, discarded up to the next delimiter"
            }
            FrameError::Cobs => "frame is not valid COBS",
            FrameError::Short => "frame is shorter than its CRC",
            FrameError::Crc => "frame CRC does not match",
            FrameError::Payload => "frame payload is not a valid message",
        };
        f.write_str(what)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

/// Encodes `msg` as one frame, both delimiters included.
pub fn encode<M: Serialize>(msg: &M) -> Result<Frame, EncodeError> {
    let mut raw = [0u8; MAX_PAYLOAD_LEN + CRC_LEN];
    let payload_len = postcard::to_slice(msg, &mut raw[..MAX_PAYLOAD_LEN])
        .map_err(|_| EncodeError::TooLarge)?
        .len();
    let crc = CRC32.checksum(&raw[..payload_len]);
    raw[payload_len..payload_len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());

    let mut frame = Frame::new();
    // MAX_WIRE_LEN is exactly large enough for the largest payload.
    frame
        .resize_default(MAX_WIRE_LEN)
        .map_err(|_| EncodeError::TooLarge)?;
    let len = cobs::try_encode_including_sentinels(&raw[..payload_len + CRC_LEN], &mut frame)
        .map_err(|_| EncodeError::TooLarge)?;
    frame.truncate(len);
    Ok(frame)
}

/// Decodes the COBS bytes between two delimiters into a message, in place.
///
/// `encoded` must not contain the delimiters; its contents are overwritten.
pub fn decode_in_place<M: DeserializeOwned>(encoded: &mut [u8]) -> Result<M, FrameError> {
    let len = cobs::decode_in_place(encoded).map_err(|_| FrameError::Cobs)?;
    let raw = &encoded[..len];
    if raw.len() < CRC_LEN {
        return Err(FrameError::Short);
    }

    let (payload, crc) = raw.split_at(raw.len() - CRC_LEN);
    let sent = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC32.checksum(payload) != sent {
        return Err(FrameError::Crc);
    }

    match postcard::take_from_bytes::<M>(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok(_) | Err(_) => Err(FrameError::Payload),
    }
}

/// The CRC-32 the frame format uses, for tests and tools.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_iso_hdlc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn oversize_message_is_refused() {
        let big = [7u8; MAX_PAYLOAD_LEN + 1];
        assert_eq!(encode(&big.as_slice()), Err(EncodeError::TooLarge));
    }

    #[test]
    fn largest_payload_fits_a_frame() {
        // A byte slice of n bytes serialises as a 2-byte varint length and n bytes.
        let payload = [0xAAu8; MAX_PAYLOAD_LEN - 2];
        let frame = encode(&payload.as_slice()).unwrap();
        assert!(frame.len() <= MAX_WIRE_LEN);
        assert_eq!(frame[0], DELIMITER);
        assert_eq!(frame[frame.len() - 1], DELIMITER);
        assert!(!frame[1..frame.len() - 1].contains(&DELIMITER));
    }

    #[test]
    fn trailing_bytes_are_a_payload_error() {
        // A valid Ack followed by one extra byte inside a correct CRC.
        let mut raw = std::vec![0x00u8, 0x07, 0x29, 0x55];
        let crc = crc32(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let mut encoded = [0u8; 16];
        let n = cobs::encode(&raw, &mut encoded);
        assert_eq!(
            decode_in_place::<crate::AgentMsg>(&mut encoded[..n]),
            Err(FrameError::Payload)
        );
    }
}
