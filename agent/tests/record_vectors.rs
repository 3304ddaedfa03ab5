//! Test vectors of the record format, as published in docs/records.md.
//!
//! Ed25519 signatures are deterministic, so a fixed key and payload give
//! fixed bytes. The key is test key 1 of RFC 8032 (section 7.1), public and
//! for tests only. A change to the record encoding fails here, and the
//! documentation check fails until docs/records.md shows the new bytes.

#![allow(clippy::unwrap_used)]

use kouan_agent::clock::CaptureTime;
use kouan_agent::keys::SigningKey;
use kouan_agent::record::{
    self, Kind, MeasuredValue, Measurement, Payload, ReadingBody, SCHEMA_VERSION,
};
use serde_bytes::ByteBuf;

/// RFC 8032 section 7.1, TEST 1: the secret key (seed).
const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

/// PKCS#8 v1 (RFC 8410) wrapping of an Ed25519 seed.
fn test_key() -> SigningKey {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend(hex::decode(RFC8032_SEED).unwrap());
    SigningKey::from_pkcs8(&der).unwrap()
}

fn vector_payload() -> Payload {
    let body = ReadingBody {
        values: vec![Measurement {
            name: "lead".into(),
            value: MeasuredValue::Number(0.12),
            unit: Some("mg/kg".into()),
            flags: vec![],
            observed: None,
        }],
        raw: ByteBuf::from(b"R|1|^^^PB|0.12|mg/kg".to_vec()),
        sample: Some("GY-2026-000123".into()),
        hazard: Some("chemical".into()),
        order: None,
        notes: vec![],
        scan: None,
    };
    Payload {
        v: SCHEMA_VERSION,
        node: "gy-air-01".into(),
        site: "guiyang-airport".into(),
        instrument: "icp-ms-1".into(),
        kind: Kind::Reading,
        stream: ByteBuf::from(hex::decode("00112233445566778899aabbccddeeff").unwrap()),
        seq: 7,
        prev: ByteBuf::from(vec![0xab; 32]),
        time: CaptureTime {
            ms: 1_764_756_000_123,
            synced: true,
        },
        body: record::body(&body).unwrap(),
    }
}

/// The hex of a fenced block that follows `marker` in docs/records.md.
fn doc_hex(marker: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/records.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("docs/records.md has no {marker:?}"));
    let block = text[start..].split("```").nth(1).unwrap();
    block
        .lines()
        .skip(1)
        .flat_map(|l| l.split_whitespace())
        .collect()
}

#[test]
fn test_key_is_the_rfc8032_key() {
    let public = test_key().public_key().clone();
    assert_eq!(
        hex::encode(public.raw()),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    assert_eq!(
        hex::encode(public.key_id()),
        doc_hex("<!-- vector: kid -->")
    );
}

#[test]
fn reading_record_vector_is_byte_exact() {
    let bytes = record::sign(&vector_payload(), &test_key()).unwrap();
    let expected = doc_hex("<!-- vector: reading record -->");
    assert_eq!(
        hex::encode(&bytes),
        expected,
        "docs/records.md shows other bytes"
    );
    let verified = record::verify(&bytes, &[test_key().public_key().clone()]).unwrap();
    assert_eq!(verified.payload, vector_payload());
    assert_eq!(
        hex::encode(verified.hash),
        doc_hex("<!-- vector: reading hash -->")
    );
}
