//! Records: what the agent signs, stores and sends.
//!
//! A record is a CBOR map ([`Payload`]) signed once as a tagged COSE_Sign1
//! (RFC 9052) whose protected header holds `alg` and `kid`. The signed bytes
//! are what is stored, hashed, sent and verified; nothing is re-encoded to
//! verify it. Records form one chain per agent: `seq` counts up by one and
//! `prev` is the SHA-256 of the previous record's COSE bytes, so the
//! platform can tell a missing, altered or reordered record. The schema is
//! documented for platform teams in `docs/records.md`.

use ciborium::Value;
use coset::TaggedCborSerializable as _;
use coset::{CoseSign1, CoseSign1Builder, HeaderBuilder};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::clock::CaptureTime;
use crate::keys::{Algorithm, KEY_ID_LEN, PublicKey, SigningKey};

/// Version of the payload schema in every record's `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// Length of a stream id.
pub const STREAM_ID_LEN: usize = 16;

/// Length of a record hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// The instrument id of the agent's own records (genesis, checkpoint, gap,
/// birth). Configured instrument ids cannot start with `_`.
pub const AGENT_INSTRUMENT: &str = "_agent";

/// SHA-256 of a record's COSE bytes: the next record's `prev`.
pub type Hash = [u8; HASH_LEN];

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// First record of a stream; says why the stream started.
    Genesis,
    /// A reading from an instrument.
    Reading,
    /// The agent came online (sent on every MQTT connect).
    Birth,
    /// The chain head and what the store holds.
    Checkpoint,
    /// Records that were lost, and why.
    Gap,
    /// A limit or control order matched.
    Alert,
    /// A barcode scan of a sample, batch or consignment.
    Scan,
}

impl Kind {
    /// The name used in CBOR, the store and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Genesis => "genesis",
            Kind::Reading => "reading",
            Kind::Birth => "birth",
            Kind::Checkpoint => "checkpoint",
            Kind::Gap => "gap",
            Kind::Alert => "alert",
            Kind::Scan => "scan",
        }
    }
}

/// The signed content of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Schema version, [`SCHEMA_VERSION`].
    pub v: u32,
    /// The agent's id (its MQTT node id).
    pub node: String,
    /// The monitoring point the agent serves.
    pub site: String,
    /// The instrument the record is about, or [`AGENT_INSTRUMENT`].
    pub instrument: String,
    /// What the record is.
    pub kind: Kind,
    /// Random id of this agent's chain.
    pub stream: ByteBuf,
    /// Position in the chain, from 0 (the genesis record).
    pub seq: u64,
    /// SHA-256 of the previous record's COSE bytes; zeros for the genesis.
    pub prev: ByteBuf,
    /// When the data was captured.
    pub time: CaptureTime,
    /// Kind-specific content.
    pub body: Value,
}

/// A value measured by an instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MeasuredValue {
    /// A number.
    Number(f64),
    /// A qualitative result (for example `NEG`, `>1000`).
    Text(String),
}

/// One named value of a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// What was measured (analyte, quantity, test code).
    pub name: String,
    /// The value.
    pub value: MeasuredValue,
    /// Its unit, as the instrument or config names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Flags the instrument or the agent attached (`unstable`, `H`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// When the instrument says it measured the value, as it wrote it (an
    /// analyzer's result time in its own clock and format), where it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
}

impl Measurement {
    /// A measurement with only a name, a value and a unit.
    pub fn new(name: impl Into<String>, value: MeasuredValue, unit: Option<String>) -> Self {
        Measurement {
            name: name.into(),
            value,
            unit,
            flags: Vec::new(),
            observed: None,
        }
    }
}

/// The body of a [`Kind::Reading`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingBody {
    /// The parsed values.
    pub values: Vec<Measurement>,
    /// The bytes received from the instrument that the values came from.
    pub raw: ByteBuf,
    /// Sample or batch identifier the reading belongs to, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Hazard category of the test (health, chemical, physical, biological, environmental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hazard: Option<String>,
    /// The order or request the result answers (an analyzer's order id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Comments the instrument sent with the result, as text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The scan this reading is traced to: the last scan, within the
    /// configured window, at a scanner linked to this instrument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanLink>,
}

impl ReadingBody {
    /// A reading of `values` parsed from `raw`, with nothing else known.
    pub fn new(values: Vec<Measurement>, raw: Vec<u8>) -> Self {
        ReadingBody {
            values,
            raw: ByteBuf::from(raw),
            sample: None,
            hazard: None,
            order: None,
            notes: Vec::new(),
            scan: None,
        }
    }
}

/// A reading's link to the scan it is traced to.
///
/// The scan is a record of the same chain, so `seq` names it exactly and the
/// signature over the reading covers the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanLink {
    /// The scanner's instrument id.
    pub instrument: String,
    /// The seq of the scan record.
    pub seq: u64,
    /// The scanned code's text (the element string in human-readable form).
    pub code: String,
    /// Milliseconds from the scan to this reading.
    pub age_ms: u64,
}

/// The body of a [`Kind::Scan`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanBody {
    /// The bytes the scanner sent, without the terminator.
    pub raw: ByteBuf,
    /// The AIM symbology identifier (`]C1`, `]d2`, ...), when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbology: Option<String>,
    /// The code in human-readable form: `(01)09501101530003(10)AB-12`
    /// for GS1 element strings, the data as text otherwise.
    pub code: String,
    /// `gs1` for an element string, `ean` for an EAN/UPC, `other` otherwise.
    pub content: String,
    /// The GS1 elements, AI to value as text, in scan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<(String, String)>,
    /// What was wrong with the scan (a lost separator, a bad check
    /// digit); the scan is stored anyway, flagged, never guessed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Why a stream started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GenesisReason {
    /// There was no store: a new installation, or the store was deleted.
    NewStore,
    /// The store was damaged and moved aside.
    StoreDamaged,
}

/// The body of a [`Kind::Genesis`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenesisBody {
    /// Why the stream started.
    pub reason: GenesisReason,
    /// A sentence for people: what was found, where the old store went.
    pub detail: String,
    /// The stream this one replaces, when the old store could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stream: Option<ByteBuf>,
    /// The last seq of the previous stream, when the old store could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_head: Option<u64>,
}

/// The body of a [`Kind::Checkpoint`] record: the store just before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    /// Oldest seq still held (not yet acknowledged by the platform).
    pub first: u64,
    /// Records held.
    pub records: u64,
    /// Bytes of signed records held.
    pub bytes: u64,
}

/// The body of a [`Kind::Birth`] record: the agent came online.
///
/// Sent retained on the state topic at every MQTT connect. It includes a
/// checkpoint of the store, so the platform learns at once what to expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirthBody {
    /// The session: the connect time in ms, repeated in the matching death message.
    pub session: i64,
    /// The agent's software version.
    pub version: String,
    /// `platform` or `broker`: when records leave the store.
    pub delivery: String,
    /// Oldest seq still stored (not yet acknowledged).
    pub first: u64,
    /// Records stored.
    pub records: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// Why records were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GapReason {
    /// The store reached its size cap under the `drop_oldest` policy.
    StoreFull,
    /// Asked for by the platform but no longer stored (acknowledged earlier).
    NotStored,
    /// Larger than the broker accepts; set aside on the agent for export by hand.
    TooLarge,
}

/// The body of a [`Kind::Gap`] record: seqs `from..=to` of this stream are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBody {
    /// First lost seq.
    pub from: u64,
    /// Last lost seq.
    pub to: u64,
    /// Why.
    pub reason: GapReason,
}

/// Why a record could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Encoding the payload failed (a value CBOR cannot hold).
    #[error("encoding the record payload: {0}")]
    Encode(String),
    /// The signing key failed.
    #[error("signing the record: {0}")]
    Sign(#[from] crate::keys::KeyError),
}

/// Why a record does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes are not a tagged COSE_Sign1.
    #[error("not a tagged COSE_Sign1: {0}")]
    NotCose(String),
    /// The protected header has no algorithm kouan knows.
    #[error("protected header names no supported algorithm ({0})")]
    Algorithm(String),
    /// The protected header has no key id.
    #[error("protected header has no key id")]
    MissingKeyId,
    /// No given key has this id.
    #[error("signed by key {0}, which is not among the given public keys")]
    UnknownKey(String),
    /// The key with this id is for another algorithm.
    #[error("key {kid} is {key}, but the record says {record}")]
    AlgorithmMismatch {
        /// The key id.
        kid: String,
        /// The key's algorithm.
        key: Algorithm,
        /// The header's algorithm.
        record: Algorithm,
    },
    /// The signature is wrong: the record was altered or signed by another key.
    #[error("signature does not verify with key {0}")]
    Signature(String),
    /// There is no payload.
    #[error("COSE_Sign1 has no payload")]
    MissingPayload,
    /// The payload is not a kouan record.
    #[error("payload is not a kouan record: {0}")]
    Payload(String),
    /// The payload is from a schema version this agent does not know.
    #[error("payload schema version {0} is not supported (this kouan knows {SCHEMA_VERSION})")]
    Schema(u32),
}

/// A record that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its content.
    pub payload: Payload,
    /// SHA-256 of its bytes.
    pub hash: Hash,
    /// The key that signed it.
    pub kid: [u8; KEY_ID_LEN],
}

/// SHA-256 of record bytes.
pub fn hash(bytes: &[u8]) -> Hash {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; HASH_LEN];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Encodes a body for [`Payload::body`].
pub fn body<B: Serialize>(body: &B) -> Result<Value, RecordError> {
    Value::serialized(body).map_err(|e| RecordError::Encode(e.to_string()))
}

/// Signs a payload: the bytes of a tagged COSE_Sign1.
pub fn sign(payload: &Payload, key: &SigningKey) -> Result<Vec<u8>, RecordError> {
    sign_cbor(payload, key)
}

/// Signs any CBOR-serialisable value as a tagged COSE_Sign1 with `alg` and
/// `kid` in the protected header: records, and the platform's messages.
pub fn sign_cbor<T: Serialize>(value: &T, key: &SigningKey) -> Result<Vec<u8>, RecordError> {
    let mut encoded = Vec::with_capacity(256);
    ciborium::into_writer(value, &mut encoded).map_err(|e| RecordError::Encode(e.to_string()))?;
    let public = key.public_key();
    let protected = HeaderBuilder::new()
        .algorithm(public.alg().cose())
        .key_id(public.key_id().to_vec())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(encoded)
        .try_create_signature(b"", |tbs| key.sign(tbs))?
        .build();
    sign1
        .to_tagged_vec()
        .map_err(|e| RecordError::Encode(e.to_string()))
}

/// Parses record bytes without checking the signature (for diagnosis of
/// records whose key is not at hand). Never treat the result as evidence.
pub fn parse_unverified(bytes: &[u8]) -> Result<(CoseSign1, Payload), VerifyError> {
    let sign1 =
        CoseSign1::from_tagged_slice(bytes).map_err(|e| VerifyError::NotCose(e.to_string()))?;
    let payload = sign1
        .payload
        .as_deref()
        .ok_or(VerifyError::MissingPayload)?;
    let payload: Payload =
        ciborium::from_reader(payload).map_err(|e| VerifyError::Payload(e.to_string()))?;
    if payload.v != SCHEMA_VERSION {
        return Err(VerifyError::Schema(payload.v));
    }
    if payload.stream.len() != STREAM_ID_LEN || payload.prev.len() != HASH_LEN {
        return Err(VerifyError::Payload(format!(
            "stream is {} bytes and prev {} bytes, expected {STREAM_ID_LEN} and {HASH_LEN}",
            payload.stream.len(),
            payload.prev.len()
        )));
    }
    Ok((sign1, payload))
}

/// Verifies record bytes against a set of public keys, chosen by `kid`.
pub fn verify(bytes: &[u8], keys: &[PublicKey]) -> Result<Verified, VerifyError> {
    let (sign1, payload) = parse_unverified(bytes)?;
    let kid = verify_signature(&sign1, keys)?;
    Ok(Verified {
        payload,
        hash: hash(bytes),
        kid,
    })
}

/// Verifies a tagged COSE_Sign1 and returns its payload bytes and key id:
/// for messages that are not records (acks, commands, host state).
pub fn verify_message(
    bytes: &[u8],
    keys: &[PublicKey],
) -> Result<(Vec<u8>, [u8; KEY_ID_LEN]), VerifyError> {
    let sign1 =
        CoseSign1::from_tagged_slice(bytes).map_err(|e| VerifyError::NotCose(e.to_string()))?;
    let kid = verify_signature(&sign1, keys)?;
    let payload = sign1.payload.ok_or(VerifyError::MissingPayload)?;
    Ok((payload, kid))
}

/// Checks the signature of a parsed COSE_Sign1 with the key its `kid` names.
fn verify_signature(
    sign1: &CoseSign1,
    keys: &[PublicKey],
) -> Result<[u8; KEY_ID_LEN], VerifyError> {
    let header = &sign1.protected.header;
    let alg = match &header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(alg)) => {
            Algorithm::from_cose(*alg).ok_or_else(|| VerifyError::Algorithm(format!("{alg:?}")))?
        }
        other => return Err(VerifyError::Algorithm(format!("{other:?}"))),
    };
    if header.key_id.is_empty() {
        return Err(VerifyError::MissingKeyId);
    }
    let kid_hex = hex::encode(&header.key_id);
    let key = keys
        .iter()
        .find(|k| k.key_id().as_slice() == header.key_id.as_slice())
        .ok_or_else(|| VerifyError::UnknownKey(kid_hex.clone()))?;
    if key.alg() != alg {
        return Err(VerifyError::AlgorithmMismatch {
            kid: kid_hex,
            key: key.alg(),
            record: alg,
        });
    }
    sign1
        .verify_signature(b"", |sig, tbs| {
            if key.verify(tbs, sig) {
                Ok(())
            } else {
                Err(())
            }
        })
        .map_err(|()| VerifyError::Signature(kid_hex))?;
    Ok(key.key_id())
}

/// A number as short as it can be said: a value a node measured as f32
/// (22.5, 3.4) is shown as the node said it, not as its f64 widening.
pub fn number_text(n: f64) -> String {
    let narrow = n as f32;
    if f64::from(narrow) == n {
        format!("{narrow}")
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_measured_as_f32_are_shown_as_measured() {
        use super::number_text;
        assert_eq!(number_text(f64::from(3.4f32)), "3.4");
        assert_eq!(number_text(100.25), "100.25");
        assert_eq!(number_text(0.1), "0.1");
    }

    use super::*;
    use crate::keys;

    fn key(alg: Algorithm) -> SigningKey {
        SigningKey::from_pkcs8(&keys::generate(alg).unwrap()).unwrap()
    }

    fn payload() -> Payload {
        let reading = ReadingBody {
            values: vec![Measurement {
                name: "mass".into(),
                value: MeasuredValue::Number(100.25),
                unit: Some("g".into()),
                flags: vec![],
                observed: None,
            }],
            raw: ByteBuf::from(b"S S     100.25 g\r\n".to_vec()),
            sample: Some("(01)09506000134352(10)A1".into()),
            hazard: Some("physical".into()),
            order: None,
            notes: vec![],
            scan: None,
        };
        Payload {
            v: SCHEMA_VERSION,
            node: "gy-airport-01".into(),
            site: "guiyang-airport".into(),
            instrument: "balance-1".into(),
            kind: Kind::Reading,
            stream: ByteBuf::from(vec![7; STREAM_ID_LEN]),
            seq: 12,
            prev: ByteBuf::from(vec![1; HASH_LEN]),
            time: CaptureTime {
                ms: 1_764_756_000_123,
                synced: true,
            },
            body: body(&reading).unwrap(),
        }
    }

    #[test]
    fn signed_record_verifies_and_round_trips() {
        for alg in [Algorithm::Ed25519, Algorithm::Es256] {
            let key = key(alg);
            let bytes = sign(&payload(), &key).unwrap();
            // Tag 18 (COSE_Sign1) is the first byte: 0xd2.
            assert_eq!(bytes[0], 0xd2);
            let verified = verify(&bytes, &[key.public_key().clone()]).unwrap();
            assert_eq!(verified.payload, payload());
            assert_eq!(verified.hash, hash(&bytes));
            let body: ReadingBody = verified.payload.body.deserialized().unwrap();
            assert_eq!(body.values[0].value, MeasuredValue::Number(100.25));
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let key = key(Algorithm::Ed25519);
        let bytes = sign(&payload(), &key).unwrap();
        let keys = [key.public_key().clone()];
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            assert!(
                verify(&damaged, &keys).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let bytes = sign(&payload(), &key(Algorithm::Ed25519)).unwrap();
        let other = key(Algorithm::Ed25519);
        let error = verify(&bytes, &[other.public_key().clone()]).unwrap_err();
        assert!(matches!(error, VerifyError::UnknownKey(_)), "{error}");
    }
}
