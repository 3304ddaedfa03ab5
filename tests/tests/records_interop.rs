//! Guards the acceptance point "an independent implementation verifies
//! kouan's records": what the real binary signs, stores and exports
//! verifies with Python pycose (`tests/interop/verify_records.py`, the
//! platform teams' reference), with Ed25519 and with ES256 keys; and one
//! flipped byte in a signature, a payload or a protected header, or one
//! record taken out of the chain, makes both that verifier and
//! `kouan verify` fail.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ciborium::Value;

/// The command that installs what the Python verifier imports.
const PIP_INSTALL: &str = "python3 -m pip install 'pycose==1.1.*' 'cbor2<6' cryptography";

const READINGS: u64 = 300;
const CHECKPOINT_EVERY: u64 = 50;

/// The sample id of the reading whose record the failure cases alter
/// (`kouan debug append` numbers its samples `S-{n:08}`).
const TAMPERED_SAMPLE: &[u8] = b"S-00000150";

#[test]
fn pycose_verifies_ed25519_records_and_catches_one_flipped_byte() {
    interop("ed25519");
}

#[test]
fn pycose_verifies_es256_records_and_catches_one_flipped_byte() {
    interop("es256");
}

fn interop(alg: &str) {
    require_pycose();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("agent.key");
    let public = dir.path().join("agent.pub");
    let store = dir.path().join("s.db");
    let exported = dir.path().join("records.cbor");

    // The platform learns the public key as the PEM that keygen prints last.
    let shown = ok(kouan().args(["keygen", "--alg", alg, "--out"]).arg(&key));
    let begin = shown
        .find("-----BEGIN PUBLIC KEY-----")
        .unwrap_or_else(|| panic!("keygen printed no public key PEM:\n{shown}"));
    fs::write(&public, &shown[begin..]).unwrap();

    // Every reading's seq, as the writer reported it durable.
    let appended = ok(kouan()
        .args(["debug", "append", "--store"])
        .arg(&store)
        .arg("--key")
        .arg(&key)
        .args(["--count", &READINGS.to_string()])
        .args(["--checkpoint-every", &CHECKPOINT_EVERY.to_string()]));
    let readings: BTreeSet<u64> = appended
        .lines()
        .map(|line| match line.strip_prefix("durable ") {
            Some(seq) => seq.parse().unwrap(),
            None => panic!("debug append printed {line:?}"),
        })
        .collect();
    assert_eq!(readings.len() as u64, READINGS, "{appended}");
    assert!(
        !readings.contains(&0),
        "seq 0 belongs to the genesis record"
    );

    ok(kouan()
        .args(["store", "export", "--store"])
        .arg(&store)
        .arg("--out")
        .arg(&exported));
    let data = fs::read(&exported).unwrap();
    let records = split(&data);
    let n = records.len();

    // kouan's own verifier accepts the export, so the failures below are
    // the tampering's doing.
    let own = kouan_verify(&public, &exported);
    assert!(own.status.success(), "kouan verify: {}", text(&own));
    assert!(
        stdout(&own).starts_with(&format!("ok: {n} records from ")),
        "{}",
        text(&own)
    );

    // Genesis at seq 0, the readings, and checkpoints in the other seqs:
    // one after at least every CHECKPOINT_EVERY readings, none sooner.
    assert!(readings.iter().all(|&seq| seq < n as u64), "{readings:?}");
    let checkpoints = n as u64 - 1 - READINGS;
    assert!(
        (1..=READINGS / CHECKPOINT_EVERY).contains(&checkpoints),
        "{checkpoints} checkpoints for {READINGS} readings"
    );
    let report = pycose_verify(&public, &exported);
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let kinds = format!("checkpoint {checkpoints}, genesis 1, reading {READINGS}");
    assert_eq!(
        last_line(&report),
        format!("ok: {n} of {n} records verify ({kinds})")
    );

    // The record of one reading, and where its parts lie in the file.
    let at = find(&data, TAMPERED_SAMPLE).unwrap();
    assert_eq!(
        find(&data[at + 1..], TAMPERED_SAMPLE),
        None,
        "sample ids are unique"
    );
    let i = records
        .iter()
        .position(|&(start, bytes)| (start..start + bytes.len()).contains(&at))
        .unwrap();
    let (start, record) = records[i];
    let sign1 = Sign1::parse(record);
    let protected_at = start + find(record, &sign1.protected).unwrap();
    let payload_at = start + find(record, &sign1.payload).unwrap();
    assert!(record.ends_with(&sign1.signature));
    let signature_at = start + record.len() - sign1.signature.len();
    assert!((payload_at..payload_at + sign1.payload.len()).contains(&at));

    // Problems are reported by the 1-based position and offset of the record.
    let index = i + 1;
    let bad = format!("record #{index} at byte {start}: ");
    let seq = sign1.seq();
    let removed = [&data[..start], &data[start + record.len()..]].concat();
    let cases = [
        (
            "signature",
            flip(&data, signature_at + sign1.signature.len() / 2),
            format!("{bad}signature does not verify"),
            format!("{} of {n}", n - 1),
        ),
        (
            // The sample id's last digit: still well-formed, another sample.
            "payload",
            flip(&data, at + TAMPERED_SAMPLE.len() - 1),
            format!("{bad}signature does not verify"),
            format!("{} of {n}", n - 1),
        ),
        (
            // The last byte of the protected header is the kid's.
            "protected-header",
            flip(&data, protected_at + sign1.protected.len() - 1),
            format!("{bad}kid is "),
            format!("{} of {n}", n - 1),
        ),
        (
            "removed-record",
            removed,
            format!(
                "record #{index} at byte {start} (seq {}): seq {} follows seq {}",
                seq + 1,
                seq + 1,
                seq - 1
            ),
            // Every record left verifies; the chain does not.
            format!("{} of {}", n - 1, n - 1),
        ),
    ];
    for (name, damaged, problem, verified) in cases {
        let file = dir.path().join(format!("{name}.cbor"));
        fs::write(&file, damaged).unwrap();

        let report = pycose_verify(&public, &file);
        let out = text(&report);
        assert_eq!(report.status.code(), Some(1), "{alg} {name}: {out}");
        assert!(
            stdout(&report)
                .lines()
                .any(|line| line.starts_with(&problem)),
            "{alg} {name}: expected a line starting {problem:?}: {out}"
        );
        let summary = format!("FAIL: 1 problem; {verified} records verify (");
        assert!(
            last_line(&report).starts_with(&summary),
            "{alg} {name}: expected a summary starting {summary:?}: {out}"
        );

        let own = kouan_verify(&public, &file);
        assert!(
            !own.status.success(),
            "kouan verify accepted {name}: {}",
            text(&own)
        );
    }
}

/// The parts of a COSE_Sign1 record (RFC 9052, section 4.2).
struct Sign1 {
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Sign1 {
    fn parse(record: &[u8]) -> Sign1 {
        let Value::Tag(18, sign1) = ciborium::from_reader(record).unwrap() else {
            panic!("not a tagged COSE_Sign1");
        };
        let Value::Array(parts) = *sign1 else {
            panic!("COSE_Sign1 is not an array");
        };
        let [
            Value::Bytes(protected),
            Value::Map(_),
            Value::Bytes(payload),
            Value::Bytes(signature),
        ] = <[Value; 4]>::try_from(parts).unwrap()
        else {
            panic!("COSE_Sign1 parts have the wrong types");
        };
        Sign1 {
            protected,
            payload,
            signature,
        }
    }

    /// The `seq` field of the payload map.
    fn seq(&self) -> u64 {
        let Value::Map(fields) = ciborium::from_reader(self.payload.as_slice()).unwrap() else {
            panic!("payload is not a map");
        };
        let seq = fields
            .iter()
            .find(|(key, _)| key.as_text() == Some("seq"))
            .and_then(|(_, value)| value.as_integer())
            .unwrap();
        u64::try_from(seq).unwrap()
    }
}

/// Fails, naming the install command, unless python3 has pycose 1.1 and cbor2 < 6.
fn require_pycose() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m, cbor2, cryptography, pycose; \
             print(m.version('pycose'), m.version('cbor2'))",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): install Python 3, then `{PIP_INSTALL}` \
                 (or run ./scripts/test)"
            )
        });
    assert!(
        probe.status.success(),
        "the pycose verifier's packages are missing: run `{PIP_INSTALL}` \
         (or ./scripts/test)\n{}",
        text(&probe)
    );
    let versions = stdout(&probe);
    let mut versions = versions.split_whitespace();
    let pycose = versions.next().unwrap_or_default().to_owned();
    let cbor2 = versions.next().unwrap_or_default().to_owned();
    let cbor2_major: u32 = cbor2.split('.').next().unwrap().parse().unwrap();
    assert!(
        pycose.starts_with("1.1.") && cbor2_major < 6,
        "pycose {pycose} with cbor2 {cbor2} is installed, but the verifier is written \
         for pycose 1.1 and cbor2 < 6: run `{PIP_INSTALL}` (or ./scripts/test)"
    );
}

fn pycose_verify(public: &Path, records: &Path) -> Output {
    Command::new("python3")
        .arg(verifier())
        .arg(public)
        .arg(records)
        .output()
        .unwrap()
}

fn verifier() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/verify_records.py")
}

fn kouan() -> Command {
    Command::new(kouan_tests::kouan_bin())
}

fn kouan_verify(public: &Path, records: &Path) -> Output {
    kouan()
        .arg("verify")
        .arg("--key")
        .arg(public)
        .arg(records)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; its stdout.
fn ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    stdout(&out)
}

/// The items of a CBOR sequence, each with its offset, as the exact bytes.
fn split(data: &[u8]) -> Vec<(usize, &[u8])> {
    let mut items = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let start = data.len() - rest.len();
        let _: Value = ciborium::from_reader(&mut rest).unwrap();
        items.push((start, &data[start..data.len() - rest.len()]));
    }
    items
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn flip(data: &[u8], at: usize) -> Vec<u8> {
    let mut copy = data.to_vec();
    copy[at] ^= 0x01;
    copy
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_line(out: &Output) -> String {
    stdout(out).lines().last().unwrap_or_default().to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}
