//! Traceability: the last scan at each instrument linked to a scanner, so
//! readings that follow are traced to the sample or batch they were taken
//! from.
//!
//! A scan (once its record is durable) becomes the trace of every
//! instrument its scanner lists, for the scanner's window; a reading at one
//! of them within the window carries a [`ScanLink`] to it in its signed
//! record. The traces live in memory and in `<store>.trace.toml`, replaced
//! atomically after each scan ([`crate::statefile::replace`]), so a scan
//! still traces the readings after an agent restart or a power cut:
//!
//! - the file is read at start-up only when the store continues its record
//!   stream (a scan's seq means nothing in a new stream); otherwise it is
//!   removed;
//! - a trace's age after a restart is taken from the wall clock (monotonic
//!   time restarts with the machine); a trace whose scan time is later than
//!   now (the clock went back) is dropped rather than guessed: a reading
//!   traced to the wrong sample is worse than one traced to none;
//! - a file that cannot be read or written costs the traces across a
//!   restart, never a reading: it is logged and the agent goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::unix_ms;
use crate::record::{ReadingBody, ScanLink};
use crate::statefile::LoadError;

/// The traces of all instruments; cheap to clone, one per agent.
/// [`Trace::open`] keeps them on disk too; `Trace::default()` only in
/// memory.
///
/// A plain mutex over a small map: a scan writes one entry per linked
/// instrument, a reading reads its own; neither holds the lock across an
/// await or a file write.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    scans: Arc<Mutex<BTreeMap<String, TracedScan>>>,
    file: Option<Arc<TraceFile>>,
}

#[derive(Debug)]
struct TraceFile {
    path: PathBuf,
    /// Held while the file is rendered and written: writers take turns,
    /// and each writes the traces as they are when its turn comes, so the
    /// last write holds the newest.
    writing: Mutex<()>,
}

#[derive(Debug, Clone)]
struct TracedScan {
    scanner: String,
    seq: u64,
    code: String,
    sample: Option<String>,
    /// When the scan was stored, in Unix ms (for the file).
    scanned_ms: i64,
    /// Age the scan already had when `at` was taken (non-zero for a trace
    /// read back after a restart).
    age_at: Duration,
    at: Instant,
    window: Duration,
}

impl TracedScan {
    fn age(&self) -> Duration {
        self.age_at + self.at.elapsed()
    }
}

/// `<store>.trace.toml`.
#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    #[serde(default, rename = "trace")]
    traces: Vec<FileTrace>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrace {
    instrument: String,
    scanner: String,
    seq: u64,
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample: Option<String>,
    scanned_ms: i64,
    window_secs: u64,
}

const VERSION: u32 = 1;

impl Trace {
    /// The traces of the agent whose store is `store`, kept in
    /// `<store>.trace.toml`. With `resume` (the store continues its
    /// stream) the traces in the file that are still within their windows
    /// are taken up again; without it the file is removed.
    pub fn open(store: &Path, resume: bool) -> Trace {
        let path = crate::statefile::beside(store, "trace.toml");
        let mut scans = BTreeMap::new();
        if resume {
            match load(&path, unix_ms()) {
                Ok(loaded) if !loaded.is_empty() => {
                    tracing::info!(
                        path = %path.display(),
                        traces = loaded.len(),
                        "scans made before the restart still trace readings within their windows"
                    );
                    scans = loaded;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    %error,
                    "readings are not traced to scans made before the restart; \
                     the file is replaced at the next scan"
                ),
            }
        } else {
            match crate::statefile::remove(&path) {
                Ok(true) => tracing::info!(
                    path = %path.display(),
                    "the record stream is new: scans of the old one trace no reading"
                ),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove the old trace file")
                }
            }
        }
        Trace {
            scans: Arc::new(Mutex::new(scans)),
            file: Some(Arc::new(TraceFile {
                path,
                writing: Mutex::new(()),
            })),
        }
    }

    /// Records that `scanner` stored the scan `seq` of `code`; readings at
    /// `instruments` in the next `window` are traced to it. Returns once
    /// the trace file holds it (or failed to, which is logged).
    pub async fn scanned(
        &self,
        scanner: &str,
        instruments: &[String],
        window: Duration,
        (seq, code, sample): (u64, &str, Option<&str>),
    ) {
        if instruments.is_empty() {
            return;
        }
        {
            let mut scans = lock(&self.scans);
            let scanned_ms = unix_ms();
            for instrument in instruments {
                scans.insert(
                    instrument.clone(),
                    TracedScan {
                        scanner: scanner.to_owned(),
                        seq,
                        code: code.to_owned(),
                        sample: sample.map(str::to_owned),
                        scanned_ms,
                        age_at: Duration::ZERO,
                        at: Instant::now(),
                        window,
                    },
                );
            }
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        let scans = self.scans.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let _turn = lock(&file.writing);
            let text = render(&lock(&scans));
            crate::statefile::replace(&file.path, text.as_bytes())
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                %error,
                instrument = %scanner,
                "cannot keep the scan's trace on disk: readings are traced to it until the \
                 agent restarts; check the store's directory (space, permissions)"
            ),
            Err(error) => tracing::warn!(%error, "writing the trace file did not finish"),
        }
    }

    /// Links `body` to the last scan for `instrument`, if it is within its
    /// window; the scan's sample id fills `sample` when the instrument sent
    /// none.
    pub fn link(&self, instrument: &str, body: &mut ReadingBody) {
        let scans = lock(&self.scans);
        let Some(scan) = scans.get(instrument) else {
            return;
        };
        let age = scan.age();
        if age > scan.window {
            return;
        }
        body.scan = Some(ScanLink {
            instrument: scan.scanner.clone(),
            seq: scan.seq,
            code: scan.code.clone(),
            age_ms: age.as_millis().try_into().unwrap_or(u64::MAX),
        });
        if body.sample.is_none() {
            body.sample = scan.sample.clone();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file's text for `scans` (those still within their windows).
fn render(scans: &BTreeMap<String, TracedScan>) -> String {
    let file = File {
        version: VERSION,
        traces: scans
            .iter()
            .filter(|(_, scan)| scan.age() <= scan.window)
            .map(|(instrument, scan)| FileTrace {
                instrument: instrument.clone(),
                scanner: scan.scanner.clone(),
                seq: scan.seq,
                code: scan.code.clone(),
                sample: scan.sample.clone(),
                scanned_ms: scan.scanned_ms,
                window_secs: scan.window.as_secs(),
            })
            .collect(),
    };
    toml::to_string(&file).unwrap_or_else(|e| unreachable!("a trace file always renders: {e}"))
}

/// The traces in the file at `path` that are within their windows at the
/// wall-clock time `now_ms`; none when there is no file.
fn load(path: &Path, now_ms: i64) -> Result<BTreeMap<String, TracedScan>, LoadError> {
    let what = "a trace file kouan can read";
    let Some(file) = crate::statefile::load(path, what, VERSION, |f: &File| f.version)? else {
        return Ok(BTreeMap::new());
    };
    let now = Instant::now();
    Ok(file
        .traces
        .into_iter()
        .filter_map(|trace| {
            // A scan "later" than now: the clock went back; its age is unknown.
            let age = u64::try_from(now_ms.checked_sub(trace.scanned_ms)?).ok()?;
            let age = Duration::from_millis(age);
            let window = Duration::from_secs(trace.window_secs);
            (age <= window).then(|| {
                let scan = TracedScan {
                    scanner: trace.scanner,
                    seq: trace.seq,
                    code: trace.code,
                    sample: trace.sample,
                    scanned_ms: trace.scanned_ms,
                    age_at: age,
                    at: now,
                    window,
                };
                (trace.instrument, scan)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> ReadingBody {
        ReadingBody::new(vec![], b"S S 1.00 g".to_vec())
    }

    fn balance() -> Vec<String> {
        vec!["balance-1".to_owned()]
    }

    #[tokio::test]
    async fn a_scan_traces_readings_again_after_a_restart_of_a_continuing_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        let trace = Trace::open(&store, true);
        let window = Duration::from_secs(600);
        trace
            .scanned("scanner-1", &balance(), window, (7, "(10)12A", Some("12A")))
            .await;
        drop(trace);

        let again = Trace::open(&store, true);
        let mut body = reading();
        again.link("balance-1", &mut body);
        let link = body.scan.expect("traced after the restart");
        assert_eq!((link.instrument.as_str(), link.seq), ("scanner-1", 7));
        assert_eq!(link.code, "(10)12A");
        assert_eq!(body.sample.as_deref(), Some("12A"));

        let mut other = reading();
        again.link("icp-1", &mut other);
        assert_eq!(
            other.scan, None,
            "only the scanner's instruments are traced"
        );
    }

    #[tokio::test]
    async fn a_new_stream_forgets_the_old_streams_scans_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        let trace = Trace::open(&store, true);
        trace
            .scanned(
                "scanner-1",
                &balance(),
                Duration::from_secs(600),
                (7, "A", None),
            )
            .await;
        let file = crate::statefile::beside(&store, "trace.toml");
        assert!(file.exists());

        let fresh = Trace::open(&store, false);
        assert!(!file.exists());
        let mut body = reading();
        fresh.link("balance-1", &mut body);
        assert_eq!(body.scan, None);
        // Nor does a later restart bring them back.
        let mut body = reading();
        Trace::open(&store, true).link("balance-1", &mut body);
        assert_eq!(body.scan, None);
    }

    #[test]
    fn traces_past_their_window_or_from_the_future_are_not_taken_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kouan.db.trace.toml");
        let line = |instrument: &str, scanned_ms: i64| {
            format!(
                "[[trace]]\ninstrument = \"{instrument}\"\nscanner = \"s\"\nseq = 1\n\
                 code = \"c\"\nscanned_ms = {scanned_ms}\nwindow_secs = 60\n"
            )
        };
        let now = 1_800_000_000_000;
        let text = format!(
            "version = 1\n{}{}{}",
            line("fresh", now - 59_000),
            line("stale", now - 61_000),
            line("future", now + 1_000)
        );
        std::fs::write(&path, text).unwrap();
        let scans = load(&path, now).unwrap();
        assert_eq!(scans.keys().collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(scans["fresh"].age_at, Duration::from_secs(59));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_and_traces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        let path = crate::statefile::beside(&store, "trace.toml");
        std::fs::write(&path, "version = 1\n[[trace]]\ninstrument = ").unwrap();
        let error = load(&path, 0).unwrap_err();
        assert!(error.to_string().contains("kouan.db.trace.toml"), "{error}");
        let mut body = reading();
        Trace::open(&store, true).link("balance-1", &mut body);
        assert_eq!(body.scan, None);
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(
            load(&path, 0)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
    }

    #[tokio::test]
    async fn the_file_holds_the_newest_scan_per_instrument() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        let trace = Trace::open(&store, true);
        let window = Duration::from_secs(600);
        let both = vec!["balance-1".to_owned(), "icp-1".to_owned()];
        trace
            .scanned("scanner-1", &both, window, (1, "A", None))
            .await;
        trace
            .scanned("scanner-2", &balance(), window, (2, "B", None))
            .await;
        let scans = load(&crate::statefile::beside(&store, "trace.toml"), unix_ms()).unwrap();
        let codes: Vec<_> = scans
            .iter()
            .map(|(i, s)| (i.as_str(), s.code.as_str()))
            .collect();
        assert_eq!(codes, [("balance-1", "B"), ("icp-1", "A")]);
    }
}
