//! Model-based property test of the writer and store.
//!
//! Random sequences of appends, platform acknowledgements and restarts run
//! against the real writer on a real SQLite file, and after every step the
//! store must agree with a trivial model: the stored seqs are exactly the
//! contiguous range from just after the last acknowledgement to the head,
//! every stored record verifies and chains onto the one before, and each
//! append resolved with a seq after the previous head. Checkpoints come at
//! most every N readings and at each restart.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use kouan_agent::clock::CaptureTime;
use kouan_agent::keys::{self, Algorithm, SigningKey};
use kouan_agent::record::{self, Kind, ReadingBody};
use kouan_agent::store::{Opened, Store};
use kouan_agent::verify;
use kouan_agent::writer::{Entry, Writer, WriterConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append this many readings concurrently.
    Append(usize),
    /// Acknowledge through the head minus this many records.
    Acknowledge(u64),
    /// Stop the writer and open the store again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..40usize).prop_map(Op::Append),
        1 => (0..30u64).prop_map(Op::Acknowledge),
        1 => Just(Op::Restart),
    ]
}

fn entry(n: usize) -> Entry {
    let body = ReadingBody::new(vec![], format!("reading {n}").into_bytes());
    Entry {
        instrument: "probe".into(),
        kind: Kind::Reading,
        time: CaptureTime::now(),
        body: record::body(&body).unwrap(),
    }
}

fn start(path: &Path, pkcs8: &[u8], every: u64) -> (Writer, std::thread::JoinHandle<()>) {
    let key = SigningKey::from_pkcs8(pkcs8).unwrap();
    let (store, opened) = Store::open_or_recover(path, &[key.public_key().clone()]).unwrap();
    assert!(!matches!(opened, Opened::Recovered { .. }), "{opened:?}");
    let mut config = WriterConfig::new("model", "test");
    config.checkpoint_every = every;
    Writer::start(store, &opened, key, config).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn store_matches_the_model(ops in prop::collection::vec(op(), 1..25), every in 5..50u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.db");
        let pkcs8 = keys::generate(Algorithm::Ed25519).unwrap();
        let public = SigningKey::from_pkcs8(&pkcs8).unwrap().public_key().clone();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (mut writer, mut thread) = start(&path, &pkcs8, every);

        // The model: stored seqs are first..=head; seq 0 is the genesis.
        let mut first = 0u64;
        let mut head = 0u64;
        let mut readings = 0usize;
        for op in ops {
            match op {
                Op::Append(n) => {
                    // Spawned together, so that their appends share batches.
                    let outcomes = runtime.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for i in 0..n {
                            let writer = writer.clone();
                            let entry = entry(readings + i);
                            tasks.spawn(async move { writer.append(entry).await });
                        }
                        tasks.join_all().await
                    });
                    readings += n;
                    let mut seqs: Vec<u64> = outcomes.into_iter().map(|o| o.unwrap().seq).collect();
                    seqs.sort_unstable();
                    // Readings take the next seqs, with checkpoints interleaved.
                    prop_assert!(seqs[0] > head);
                    head = runtime.block_on(writer.stats()).unwrap().head.unwrap();
                    prop_assert!(*seqs.last().unwrap() <= head);
                }
                Op::Acknowledge(back) => {
                    let through = head.saturating_sub(back);
                    runtime.block_on(writer.acknowledge(through)).unwrap();
                    first = first.max(through + 1);
                }
                Op::Restart => {
                    drop(writer);
                    thread.join().unwrap();
                    (writer, thread) = start(&path, &pkcs8, every);
                    // A restart states the head in a checkpoint right away.
                    head += 1;
                }
            }

            let stats = runtime.block_on(writer.stats()).unwrap();
            prop_assert_eq!(stats.head, Some(head));
            let expected_records = (head + 1).saturating_sub(first);
            prop_assert_eq!(stats.records, expected_records);
            prop_assert_eq!(stats.first, (expected_records > 0).then_some(first));

            // Everything stored verifies, chains, and checkpoints come on time.
            let reader = Store::open_read_only(&path).unwrap();
            let stored = reader.read_from(0, usize::MAX).unwrap();
            let bytes: Vec<u8> = stored.iter().flat_map(|r| r.bytes.clone()).collect();
            let report = verify::verify_sequence(&bytes, std::slice::from_ref(&public));
            prop_assert!(report.ok(), "{:?}", report.problems);
            prop_assert_eq!(report.records as u64, expected_records);
            prop_assert_eq!(stats.bytes, bytes.len() as u64);
            let mut since_checkpoint = 0u64;
            for r in &stored {
                let (_, payload) = record::parse_unverified(&r.bytes).unwrap();
                match payload.kind {
                    Kind::Checkpoint => since_checkpoint = 0,
                    Kind::Reading => {
                        since_checkpoint += 1;
                        prop_assert!(since_checkpoint <= every);
                    }
                    _ => {}
                }
            }
        }
        drop(writer);
        thread.join().unwrap();
    }
}
