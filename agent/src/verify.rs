//! Verification of a sequence of records, as the platform does it.
//!
//! `kouan verify` and the store export use this: a file of records is a
//! CBOR sequence (RFC 8742), the signed COSE bytes of each record one after
//! the other. Each record must verify with one of the given keys, and the
//! records must form a chain: one stream (a new stream may begin only with
//! its genesis record), seqs that count up by one, and each `prev` equal to
//! the SHA-256 of the record before it.

use std::fmt;

use crate::keys::PublicKey;
use crate::record::{self, HASH_LEN, Hash, Kind};

/// One thing wrong in a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Position of the record in the sequence, from 1.
    pub index: usize,
    /// Byte offset of the record in the input.
    pub offset: usize,
    /// Its seq, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record #{} at byte {}", self.index, self.offset)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// The outcome of verifying a sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Records read.
    pub records: usize,
    /// Records that verified.
    pub verified: usize,
    /// First and last seq seen.
    pub first: Option<u64>,
    /// Last seq seen.
    pub last: Option<u64>,
    /// Hash of the last record that verified.
    pub head: Option<Hash>,
    /// Everything wrong, in order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Splits a CBOR sequence into its items, without re-encoding any.
///
/// Yields `(offset, bytes)`; an item that is not well-formed CBOR ends the
/// sequence with an error, since nothing after it can be located.
pub fn split(data: &[u8]) -> impl Iterator<Item = Result<(usize, &[u8]), (usize, String)>> {
    let mut offset = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || offset >= data.len() {
            return None;
        }
        let mut rest = &data[offset..];
        let before = rest.len();
        match ciborium::from_reader::<ciborium::Value, _>(&mut rest) {
            Ok(_) => {
                let len = before - rest.len();
                let item = (offset, &data[offset..offset + len]);
                offset += len;
                Some(Ok(item))
            }
            Err(error) => {
                failed = true;
                Some(Err((offset, format!("not well-formed CBOR: {error}"))))
            }
        }
    })
}

/// Verifies every record of a CBOR sequence and the chain they form.
pub fn verify_sequence(data: &[u8], keys: &[PublicKey]) -> Report {
    let mut report = Report::default();
    // Stream, seq and hash of the previous record, when it verified.
    let mut previous: Option<(Vec<u8>, u64, Hash)> = None;
    for (i, item) in split(data).enumerate() {
        let index = i + 1;
        report.records = index;
        let (offset, bytes) = match item {
            Ok(item) => item,
            Err((offset, what)) => {
                let problem = Problem {
                    index,
                    offset,
                    seq: None,
                    what: format!("{what}; the rest of the input cannot be read"),
                };
                report.problems.push(problem);
                break;
            }
        };
        let mut problem = |seq: Option<u64>, what: String| {
            report.problems.push(Problem {
                index,
                offset,
                seq,
                what,
            })
        };
        let verified = match record::verify(bytes, keys) {
            Ok(verified) => verified,
            Err(error) => {
                let seq = record::parse_unverified(bytes).ok().map(|(_, p)| p.seq);
                problem(seq, error.to_string());
                // The chain cannot be followed through a record that does not verify.
                previous = None;
                continue;
            }
        };
        let p = &verified.payload;
        let genesis = p.kind == Kind::Genesis;
        if genesis && (p.seq != 0 || p.prev.as_slice() != [0; HASH_LEN]) {
            problem(
                Some(p.seq),
                "genesis record must have seq 0 and a zero prev".into(),
            );
        }
        if let Some((stream, seq, hash)) = &previous {
            if p.stream.as_slice() != stream.as_slice() {
                if !genesis {
                    problem(
                        Some(p.seq),
                        format!(
                            "stream changes from {} to {} without a genesis record",
                            hex::encode(stream),
                            hex::encode(&p.stream)
                        ),
                    );
                }
            } else if p.seq != seq + 1 {
                let what = if p.seq <= *seq {
                    format!("seq goes back from {seq} to {}", p.seq)
                } else {
                    format!("seqs {} to {} are missing", seq + 1, p.seq - 1)
                };
                problem(Some(p.seq), what);
            } else if p.prev.as_slice() != hash {
                problem(
                    Some(p.seq),
                    format!("prev does not match the hash of record seq {seq}"),
                );
            }
        }
        report.verified += 1;
        report.first = report.first.or(Some(p.seq));
        report.last = Some(p.seq);
        report.head = Some(verified.hash);
        previous = Some((p.stream.to_vec(), p.seq, verified.hash));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_item_boundaries_without_reencoding() {
        // A non-canonical item (a 1-byte integer in a 2-byte form) must
        // keep its bytes: 0x18 0x05 is 5 encoded long.
        let data = [0x18, 0x05, 0x82, 0x01, 0x02, 0x43, 0xaa, 0xbb, 0xcc];
        let items: Vec<_> = split(&data).map(|i| i.unwrap()).collect();
        assert_eq!(
            items,
            vec![(0, &data[0..2]), (2, &data[2..5]), (5, &data[5..9]),]
        );
    }

    #[test]
    fn split_stops_at_malformed_cbor() {
        // 0x1c: additional information 28 is reserved, so not well-formed.
        let data = [0x01, 0x1c, 0x02];
        let items: Vec<_> = split(&data).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Ok((0, &data[0..1])));
        assert!(items[1].is_err());
    }
}
