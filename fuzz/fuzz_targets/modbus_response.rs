//! The Modbus RTU response decoder against arbitrary bytes in arbitrary
//! chunks, for every function the master sends.
//!
//! Run: `cargo +nightly fuzz run modbus_response` (from fuzz/).
#![no_main]

use kouan_agent::modbus::frame::{
    Decoded, Decoder, MAX_ADU, MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_REGISTERS, Request,
    Response, crc16,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Seven bytes pick the request and the chunk size, so the fuzzer
    // explores every function, count and split.
    let Some((head, bytes)) = data.split_first_chunk::<7>() else {
        return;
    };
    let [unit, selector, a0, a1, c0, c1, chunk] = *head;
    let unit = 1 + unit % 247;
    let address = u16::from_be_bytes([a0, a1]);
    let raw_count = u16::from_be_bytes([c0, c1]);
    let count = |max: u16| 1 + raw_count % max;
    let request = match selector % 6 {
        0 => Request::read_coils(address, count(MAX_READ_BITS)),
        1 => Request::read_discrete_inputs(address, count(MAX_READ_BITS)),
        2 => Request::read_holding(address, count(MAX_READ_REGISTERS)),
        3 => Request::read_input(address, count(MAX_READ_REGISTERS)),
        4 => Request::WriteSingle {
            address,
            value: raw_count,
        },
        _ => Request::WriteMultiple {
            address,
            values: vec![raw_count; usize::from(count(MAX_WRITE_REGISTERS))],
        },
    };
    if request.check(unit).is_err() {
        return;
    }
    let chunk = usize::from(chunk % 64) + 1;
    // A CRC is out of a fuzzer's reach: with the high bit of the selector
    // the target builds a frame with a good one around the fuzzed bytes,
    // so the paths behind the CRC check are explored too.
    let stream = if selector & 0x80 != 0 {
        framed(unit, &request, bytes)
    } else {
        bytes.to_vec()
    };
    let bytes = stream.as_slice();

    let mut decoder = Decoder::new(unit, &request);
    let (mut pushed, mut framed, mut discarded_before) = (0usize, 0usize, 0usize);
    for piece in bytes.chunks(chunk) {
        decoder.push(piece);
        pushed += piece.len();
        let adu = match decoder.decode() {
            Decoded::Pending => {
                // Garbage never grows the buffer past one frame.
                assert!(decoder.pending() < MAX_ADU);
                continue;
            }
            Decoded::Response { response, adu } => {
                assert_eq!(adu.len(), request.response_len());
                match (&request, &response) {
                    (Request::Read { count, .. }, Response::Registers(r)) => {
                        assert_eq!(r.len(), usize::from(*count));
                    }
                    (Request::Read { count, .. }, Response::Bits(b)) => {
                        assert_eq!(b.len(), usize::from(*count));
                    }
                    (Request::WriteSingle { .. } | Request::WriteMultiple { .. }, Response::Written) => {}
                    other => panic!("answer of the wrong kind: {other:?}"),
                }
                // The same frame alone decodes to the same answer.
                let mut again = Decoder::new(unit, &request);
                again.push(&adu);
                assert_eq!(
                    again.decode(),
                    Decoded::Response {
                        response,
                        adu: adu.clone()
                    }
                );
                adu
            }
            Decoded::Error { adu, .. } => adu,
        };
        // Every frame it takes is addressed to the unit and has a good CRC.
        assert_eq!(adu[0], unit);
        let (body, crc) = adu.split_at(adu.len() - 2);
        assert_eq!(crc16(body).to_le_bytes(), crc);
        framed += adu.len();

        // Every byte is accounted for: skipped, framed or still held.
        assert_eq!(
            discarded_before + decoder.discarded() + framed + decoder.pending(),
            pushed
        );
        // The bus starts a new decoder for the next request; the bytes
        // behind a frame are garbage it counts.
        discarded_before += decoder.discarded() + decoder.pending();
        decoder = Decoder::new(unit, &request);
    }
});

/// Garbage, then an answer to `request` (normal, exception or a write echo
/// that may differ) with a good CRC, then the rest of the fuzzed bytes.
fn framed(unit: u8, request: &Request, bytes: &[u8]) -> Vec<u8> {
    let Some((&shape, rest)) = bytes.split_first() else {
        return Vec::new();
    };
    let (garbage, rest) = rest.split_at(usize::from(shape % 16).min(rest.len()));
    let function = request.function().code();
    // The answer's data: as many fuzzed bytes as it needs, zeros beyond.
    let data = |n: usize| -> Vec<u8> {
        rest.iter().copied().chain(std::iter::repeat(0)).take(n).collect()
    };

    let mut frame = vec![unit];
    let used = if shape & 0x10 != 0 {
        frame.push(function | 0x80);
        frame.extend(data(1));
        1
    } else if let Request::Read { .. } = request {
        let n = request.response_len() - 5;
        frame.extend([function, n as u8]);
        frame.extend(data(n));
        n
    } else if shape & 0x20 != 0 {
        frame.push(function);
        frame.extend(data(4));
        4
    } else {
        let echo = request.encode(unit).unwrap_or_default();
        frame.extend(echo.iter().take(6).skip(1));
        0
    };
    let crc = crc16(&frame);
    frame.extend(crc.to_le_bytes());

    let mut out = garbage.to_vec();
    out.extend(frame);
    out.extend(&rest[used.min(rest.len())..]);
    out
}
