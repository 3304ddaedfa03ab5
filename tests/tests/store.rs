//! The store under damage, at its size cap, and with a loose key: the real
//! binary against real files.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kouan_agent::keys::PublicKey;
use kouan_agent::record::{self, GapBody, GenesisBody, GenesisReason, Kind, ReadingBody};
use kouan_agent::verify;
use kouan_tests::{durable_seqs, export, keygen, path_str, run, text};

struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
    store: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keygen(dir.path(), "ed25519");
        let store = dir.path().join("kouan.db");
        Fixture {
            dir,
            key,
            public,
            store,
        }
    }

    fn keys(&self) -> Vec<PublicKey> {
        vec![PublicKey::load(&self.public).unwrap()]
    }

    /// Appends `count` readings with extra arguments; returns stdout and stderr.
    fn append(&self, count: u64, extra: &[&str]) -> (String, String) {
        let count = count.to_string();
        let mut args = vec![
            "debug",
            "append",
            "--store",
            path_str(&self.store),
            "--key",
            path_str(&self.key),
            "--count",
            &count,
        ];
        args.extend(extra);
        let out = run(&args);
        assert!(out.status.success(), "append failed: {}", text(&out.stderr));
        (text(&out.stdout), text(&out.stderr))
    }

    fn check(&self, store: &Path) -> (bool, String) {
        let out = run(&[
            "store",
            "check",
            "--store",
            path_str(store),
            "--key",
            path_str(&self.public),
        ]);
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    }

    /// All records of a store, verified.
    fn records(&self, store: &Path) -> Vec<record::Verified> {
        let data = export(store, None, &self.dir.path().join("records.cbor"));
        let report = verify::verify_sequence(&data, &self.keys());
        assert!(report.ok(), "{:?}", report.problems);
        verify::split(&data)
            .map(|item| record::verify(item.unwrap().1, &self.keys()).unwrap())
            .collect()
    }

    /// Damaged stores moved aside (`kouan.db.damaged-<time>`), without their -wal/-shm.
    fn damaged_copies(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("kouan.db.damaged-")
                    && !name.ends_with("-wal")
                    && !name.ends_with("-shm")
            })
            .collect()
    }
}

fn sample_of(record: &record::Verified) -> Option<String> {
    let body: ReadingBody = record.payload.body.deserialized().ok()?;
    body.sample
}

/// Where `needle` occurs in `path`.
fn find(path: &Path, needle: &[u8]) -> usize {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found in {}", needle, path.display()))
}

fn flip(path: &Path, at: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0x20;
    std::fs::write(path, data).unwrap();
}

#[test]
fn flipped_byte_in_a_record_is_named_and_the_agent_starts_a_new_stream() {
    let f = Fixture::new();
    f.append(1000, &[]);
    let before = f.records(&f.store);
    let old_head = before.last().unwrap().payload.seq;
    let target = before
        .iter()
        .find(|r| sample_of(r).as_deref() == Some("S-00000500"))
        .unwrap();
    assert!(
        !f.store.with_extension("db-wal").exists()
            || std::fs::metadata(f.store.with_extension("db-wal"))
                .unwrap()
                .len()
                == 0
    );
    flip(&f.store, find(&f.store, b"S-00000500") + 3);

    let (ok, report) = f.check(&f.store);
    assert!(!ok, "{report}");
    let expected = format!(
        "record seq {}: bytes do not match their stored SHA-256",
        target.payload.seq
    );
    assert!(report.contains(&expected), "{report}");

    // Export refuses rather than hand out the damaged record.
    let out = run(&[
        "store",
        "export",
        "--store",
        path_str(&f.store),
        "--out",
        path_str(&f.dir.path().join("damaged.cbor")),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    // The agent still starts: the damaged store is moved aside, a new stream begins.
    let (stdout, stderr) = f.append(5, &[]);
    assert_eq!(durable_seqs(&stdout).len(), 5);
    assert!(stderr.contains(&expected), "{stderr}");
    let moved = f.damaged_copies();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let (ok, _) = f.check(&moved[0]);
    assert!(!ok, "the moved-aside store is still the damaged one");

    let after = f.records(&f.store);
    let genesis: GenesisBody = after[0].payload.body.deserialized().unwrap();
    assert_eq!(after[0].payload.kind, Kind::Genesis);
    assert_eq!(genesis.reason, GenesisReason::StoreDamaged);
    assert!(genesis.detail.contains(&expected), "{}", genesis.detail);
    assert!(genesis.detail.contains(&*moved[0].to_string_lossy()));
    assert_eq!(genesis.previous_head, Some(old_head));
    assert_eq!(
        genesis.previous_stream.as_ref().map(|s| s.as_slice()),
        Some(before[0].payload.stream.as_slice())
    );
    assert_ne!(after[0].payload.stream, before[0].payload.stream);
}

#[test]
fn truncated_store_is_diagnosed_and_replaced() {
    for keep in [0.0, 0.5, 0.9] {
        let f = Fixture::new();
        f.append(1000, &[]);
        let len = std::fs::metadata(&f.store).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&f.store)
            .unwrap();
        file.set_len((len as f64 * keep) as u64).unwrap();
        drop(file);

        let (ok, report) = f.check(&f.store);
        assert!(!ok, "truncated to {keep}: {report}");
        assert!(report.contains("DAMAGED"), "{report}");

        let (stdout, stderr) = f.append(3, &[]);
        assert_eq!(durable_seqs(&stdout).len(), 3, "{stderr}");
        assert!(stderr.contains("damaged"), "{stderr}");
        let after = f.records(&f.store);
        let genesis: GenesisBody = after[0].payload.body.deserialized().unwrap();
        assert_eq!(genesis.reason, GenesisReason::StoreDamaged);
    }
}

#[test]
fn random_byte_flips_are_caught_or_harmless_never_read_back_as_valid() {
    let f = Fixture::new();
    f.append(500, &[]);
    let pristine = std::fs::read(&f.store).unwrap();
    let good_export = export(&f.store, None, &f.dir.path().join("good.cbor"));
    let copy = f.dir.path().join("copy.db");
    let out = f.dir.path().join("copy.cbor");

    let mut caught = 0;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..40 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % pristine.len() as u64) as usize;
        let mut damaged = pristine.clone();
        damaged[at] ^= 1 << (state % 8);
        std::fs::write(&copy, &damaged).unwrap();

        let (ok, report) = f.check(&copy);
        let _ = std::fs::remove_file(&out);
        let exported = run(&[
            "store",
            "export",
            "--store",
            path_str(&copy),
            "--out",
            path_str(&out),
        ]);
        if ok {
            // The flip hit unused space: the records read back unchanged.
            assert!(
                exported.status.success(),
                "byte {at}: {}",
                text(&exported.stderr)
            );
            assert_eq!(
                std::fs::read(&out).unwrap(),
                good_export,
                "byte {at}: {report}"
            );
        } else {
            caught += 1;
            assert!(report.contains("DAMAGED"), "byte {at}: {report}");
            if exported.status.success() {
                // Whatever export hands out must verify.
                let data = std::fs::read(&out).unwrap();
                let verified = verify::verify_sequence(&data, &f.keys());
                assert!(
                    verified.ok(),
                    "byte {at}: damaged data read back: {:?}",
                    verified.problems
                );
            }
        }
    }
    assert!(
        caught > 0,
        "no flip was caught: the check cannot be working"
    );
}

#[test]
fn backpressure_refuses_at_the_cap_and_accepts_after_acknowledgement() {
    let f = Fixture::new();
    let (stdout, stderr) = f.append(100, &["--max-bytes", "20000", "--concurrency", "1"]);
    let durable = durable_seqs(&stdout);
    let refused = stdout.lines().filter(|l| l.starts_with("refused")).count();
    assert!(durable.len() < 100 && !durable.is_empty(), "{stdout}");
    assert_eq!(durable.len() + refused, 100);
    assert!(stdout.contains("store is full (20000 bytes)"), "{stdout}");
    assert!(stderr.contains("store is full"), "{stderr}");
    let stats = run(&["store", "stats", "--store", path_str(&f.store)]);
    let bytes: u64 = text(&stats.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(bytes <= 20_000, "{bytes}");

    // Once the platform has acknowledged records, readings are accepted again.
    let head = *durable.iter().max().unwrap();
    let head = head.to_string();
    let (stdout, stderr) = f.append(5, &["--max-bytes", "20000", "--acknowledge", &head]);
    assert_eq!(durable_seqs(&stdout).len(), 5, "{stdout}");
    assert!(
        stderr.contains("room again") || !stderr.contains("full"),
        "{stderr}"
    );
    f.records(&f.store);
}

#[test]
fn drop_oldest_writes_gap_records_naming_exactly_what_was_evicted() {
    let f = Fixture::new();
    let (stdout, stderr) = f.append(
        120,
        &[
            "--max-bytes",
            "20000",
            "--policy",
            "drop-oldest",
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(
        durable_seqs(&stdout).len(),
        120,
        "every reading is accepted: {stderr}"
    );
    let records = f.records(&f.store);
    let first_stored = records[0].payload.seq;
    assert!(first_stored > 0, "something must have been evicted");

    // The gap records still stored cover exactly the seqs no longer stored.
    let mut gaps: Vec<GapBody> = records
        .iter()
        .filter(|r| r.payload.kind == Kind::Gap)
        .map(|r| r.payload.body.deserialized().unwrap())
        .collect();
    gaps.sort_by_key(|g| g.from);
    assert!(!gaps.is_empty());
    let mut next = gaps[0].from;
    for gap in &gaps {
        assert_eq!(gap.from, next, "gap ranges are contiguous: {gaps:?}");
        assert!(gap.to >= gap.from);
        next = gap.to + 1;
    }
    assert_eq!(
        next, first_stored,
        "the last gap ends just before the oldest stored record"
    );
    // Earlier gap records may themselves have been evicted; the ones left
    // must start at an evicted seq, never at a stored one.
    assert!(gaps[0].from < first_stored);
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains("evicted")).collect();
    assert!(warned.len() >= gaps.len(), "{stderr}");
}

#[test]
fn loose_key_file_is_refused_with_the_path_and_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new();
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&[
        "debug",
        "append",
        "--store",
        path_str(&f.store),
        "--key",
        path_str(&f.key),
        "--count",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(path_str(&f.key)), "{stderr}");
    assert!(stderr.contains("mode 0644"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", path_str(&f.key))),
        "{stderr}"
    );
    assert!(!f.store.exists(), "nothing is written with a refused key");

    let out = run(&["key", "show", path_str(&f.key)]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("chmod 600"));
}
