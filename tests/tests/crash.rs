//! Crash safety: SIGKILL at random moments loses no record that was
//! reported durable, and leaves a store that opens with an unbroken chain.
//!
//! Each round starts `kouan debug append` (the real writer and store, with
//! 32 appends in flight), kills it with SIGKILL after a random delay (from
//! before the store is open to deep into appending), then exports the store
//! from the last record verified in the round before and checks that:
//! the export verifies and chains onto that record, every seq the child
//! printed as durable is in it, and no stream restarted. The next round
//! acknowledges (deletes) everything before that anchor record, so the
//! store stays small and each round checks only what is new.

#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::process::Stdio;
use std::time::Duration;

use kouan_agent::keys::PublicKey;
use kouan_agent::{record, verify};
use kouan_tests::{durable_seqs, export, keygen, kouan, path_str};

/// At least 200 kills per run (the acceptance criterion).
const ROUNDS: usize = 200;

/// A small xorshift generator: the seed is printed so a failing run can be
/// repeated with KOUAN_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_durable_record() {
    let seed = std::env::var("KOUAN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map(|d| d.as_nanos() as u64).unwrap_or(1) | 1
        });
    eprintln!("crash test seed {seed} (set KOUAN_CRASH_SEED={seed} to repeat)");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "ed25519");
    let keys = [PublicKey::load(&public).unwrap()];
    let store = dir.path().join("kouan.db");
    let export_path = dir.path().join("export.cbor");
    let stderr_path = dir.path().join("child.log");

    // The last verified record: its seq and hash, and the stream.
    let mut anchor: Option<(u64, record::Hash)> = None;
    let mut stream: Option<Vec<u8>> = None;
    let mut reported_total = 0usize;
    let mut rounds_with_nothing_durable = 0usize;
    let mut most_in_a_round = 0usize;

    for round in 0..ROUNDS {
        let mut command = kouan();
        command.args([
            "debug",
            "append",
            "--store",
            path_str(&store),
            "--key",
            path_str(&key),
            "--count",
            "0",
            "--concurrency",
            "32",
            "--checkpoint-every",
            "100",
        ]);
        let ack = anchor.and_then(|(seq, _)| seq.checked_sub(1));
        let ack_text = ack.map(|s| s.to_string());
        if let Some(ack) = &ack_text {
            command.args(["--acknowledge", ack]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();

        // Collect stdout until the pipe closes at the kill.
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let delay = Duration::from_micros(rng.next() % 60_000);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let reported = durable_seqs(&reader.join().unwrap());
        reported_total += reported.len();
        most_in_a_round = most_in_a_round.max(reported.len());
        if reported.is_empty() {
            rounds_with_nothing_durable += 1;
        }
        if !store.exists() {
            // Killed before the store was created: nothing can have been reported.
            assert!(
                reported.is_empty(),
                "round {round}: durable records but no store"
            );
            continue;
        }

        // Everything from the anchor on must verify and chain onto it.
        let data = export(&store, anchor.map(|(seq, _)| seq), &export_path);
        if data.is_empty() {
            assert!(
                reported.is_empty(),
                "round {round}: durable records but nothing stored"
            );
            continue;
        }
        let report = verify::verify_sequence(&data, &keys);
        assert!(
            report.ok(),
            "round {round} (killed after {delay:?}): export does not verify: {:?}",
            report.problems
        );
        let first = verify::split(&data).next().unwrap().unwrap().1;
        let first = record::verify(first, &keys).unwrap();
        match anchor {
            Some((seq, hash)) => {
                assert_eq!(
                    first.payload.seq, seq,
                    "round {round}: anchor record missing"
                );
                assert_eq!(first.hash, hash, "round {round}: anchor record changed");
            }
            None => assert_eq!(first.payload.kind, record::Kind::Genesis),
        }
        let this_stream = first.payload.stream.to_vec();
        if let Some(stream) = &stream {
            assert_eq!(&this_stream, stream, "round {round}: the stream restarted");
        }
        stream = Some(this_stream);

        let last = report.last.unwrap();
        for seq in &reported {
            assert!(
                *seq <= last && anchor.is_none_or(|(a, _)| *seq > a),
                "round {round} (killed after {delay:?}): seq {seq} was reported durable \
                 but the store ends at seq {last}"
            );
        }
        anchor = Some((last, report.head.unwrap()));
    }

    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        !log.contains("damaged"),
        "a kill must never damage the store; child log:\n{log}"
    );
    eprintln!(
        "crash test: {ROUNDS} SIGKILLs, {reported_total} records reported durable and found \
         verified ({most_in_a_round} at most in a round; {rounds_with_nothing_durable} rounds \
         killed before any record was durable); chain ends at seq {}",
        anchor.map_or(0, |(seq, _)| seq)
    );
    assert!(
        reported_total > 0,
        "the child never got to append: see {log}"
    );
}
