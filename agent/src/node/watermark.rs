//! The node watermarks on disk, and their recovery from the store.
//!
//! Each `node` instrument keeps one small TOML file beside the store,
//! `<store>.node-<instrument>.toml`, with the [`Mark`] of every node met on
//! its port. It is replaced atomically ([`crate::statefile::replace`])
//! after the records it covers are durable and before the node hears the
//! ack, so an ack never runs ahead of the file.
//!
//! The file may run behind the store: if the agent dies after a record is
//! durable and before the file is replaced, the store holds a sample the
//! file does not. [`recover`] closes that window at start-up by reading
//! the records after the file's last one from the store and moving each
//! mark past the samples they hold, so the retransmission that follows is
//! recognised as a duplicate.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NodeFields;
use super::link::{Mark, Marks};
use crate::record::{self, Kind};
use crate::statefile::LoadError;
use crate::store::Store;

/// Records read from the store per query during [`recover`].
const PAGE: usize = 1000;

/// Why the watermarks could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    /// Reading or writing the file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a watermark file.
    #[error("{path} is not a node watermark file: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Reading the store failed.
    #[error("reading the store for node records: {0}")]
    Store(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    nodes: Marks,
}

const VERSION: u32 = 1;

/// The watermark file of `instrument` beside the store at `store`.
pub fn path(store: &Path, instrument: &str) -> PathBuf {
    crate::statefile::beside(store, &format!("node-{instrument}.toml"))
}

/// Reads the watermarks; `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Marks>, WatermarkError> {
    let file = crate::statefile::load(path, "a node watermark file", VERSION, |f: &File| f.version)
        .map_err(|e| match e {
            LoadError::Io { path, source } => WatermarkError::Io {
                action: "reading",
                path,
                source,
            },
            LoadError::Parse { path, message, .. } => WatermarkError::Parse { path, message },
        })?;
    Ok(file.map(|file| file.nodes))
}

/// Replaces the file with `marks`, durably and atomically.
pub fn save(path: &Path, marks: &Marks) -> Result<(), WatermarkError> {
    let file = File {
        version: VERSION,
        nodes: marks.clone(),
    };
    let text = toml::to_string(&file).map_err(|e| WatermarkError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;

    crate::statefile::replace(path, text.as_bytes()).map_err(|e| WatermarkError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })?;
    Ok(())
}

/// Moves `marks` past the node records of `instrument` in the store that
/// are newer than the marks (all of them when `marks` came from no file).
/// Returns how many such records it found.
pub fn recover(
    store: &Path,
    instrument: &str,
    marks: &mut Marks,
    from_file: bool,
) -> Result<u64, WatermarkError> {
    if !store.exists() {
        return Ok(0);
    }
    let store = Store::open_read_only(store).map_err(|e| WatermarkError::Store(e.to_string()))?;
    // Every node's mark names its last record; the oldest of them is
    // where records the file may not cover can start.
    let mut from = if from_file {
        marks.values().map(|m| m.record + 1).min().unwrap_or(0)
    } else {
        0
    };
    let mut found = 0;
    loop {
        let page = store
            .read_from(from, PAGE)
            .map_err(|e| WatermarkError::Store(e.to_string()))?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for stored in page {
            if stored.instrument != instrument || stored.kind != Kind::Reading.as_str() {
                continue;
            }
            let Some(fields) = node_fields(&stored.bytes) else {
                continue;
            };
            let mark = marks.entry(fields.id.clone()).or_default();
            if stored.seq <= mark.record {
                continue;
            }
            if mark.boot != fields.boot {
                *mark = Mark {
                    boot: fields.boot,
                    ..Mark::default()
                };
            }
            mark.through = mark.through.max(fields.seq.unwrap_or(0));
            mark.dropped = mark.dropped.max(fields.dropped_total.unwrap_or(0));
            mark.record = stored.seq;
            found += 1;
        }
    }
    Ok(found)
}

/// The `node` fields of a stored record's body, if it has them.
fn node_fields(bytes: &[u8]) -> Option<NodeFields> {
    let (_, payload) = record::parse_unverified(bytes).ok()?;
    NodeFields::from_body(&payload.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sits_beside_the_store() {
        let path = path(Path::new("state/kouan.db"), "wh3");
        assert_eq!(path, Path::new("state/kouan.db.node-wh3.toml"));
    }

    #[test]
    fn marks_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(&dir.path().join("kouan.db"), "wh3");
        assert_eq!(load(&path).unwrap(), None);

        let mut marks = Marks::new();
        marks.insert(
            "n1".into(),
            Mark {
                boot: 7,
                through: 42,
                dropped: 3,
                record: 99,
            },
        );
        save(&path, &marks).unwrap();
        save(&path, &marks).unwrap();
        assert_eq!(load(&path).unwrap(), Some(marks));
    }

    /// Stores node samples `seqs` of boot `boot` as the driver would, plus
    /// a record of another instrument; returns the samples' chain seqs.
    async fn stored(store: &Path, boot: u32, seqs: &[u32]) -> Vec<u64> {
        use crate::clock::CaptureTime;
        use crate::keys::{self, Algorithm, SigningKey};
        use crate::record::ReadingBody;
        use crate::writer::{Entry, Writer, WriterConfig};

        let key = SigningKey::from_pkcs8(&keys::generate(Algorithm::Ed25519).unwrap()).unwrap();
        let (opened_store, opened) = Store::open_or_recover(store, &[]).unwrap();
        let config = WriterConfig::new("gy-air-01", "guiyang-airport");
        let (writer, thread) = Writer::start(opened_store, &opened, key, config).unwrap();
        let mut out = Vec::new();
        for &seq in seqs {
            for instrument in ["other", "wh3"] {
                let fields = NodeFields {
                    seq: Some(seq),
                    ..NodeFields::new("n1", boot)
                };
                let reading = ReadingBody::new(Vec::new(), Vec::new());
                let body = record::body(&super::super::NodeReading {
                    reading: &reading,
                    node: &fields,
                })
                .unwrap();
                let entry = Entry {
                    instrument: instrument.to_owned(),
                    kind: Kind::Reading,
                    time: CaptureTime::now(),
                    body,
                };
                let appended = writer.append(entry).await.unwrap();
                if instrument == "wh3" {
                    out.push(appended.seq);
                }
            }
        }
        drop(writer);
        thread.join().unwrap();
        out
    }

    #[tokio::test]
    async fn records_the_file_missed_move_the_mark_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        let records = stored(&store, 7, &[1, 2, 3]).await;

        // The agent died after sample 3 was durable, before the file said
        // so: the file still ends at sample 1.
        let mut marks = Marks::new();
        let mark = Mark {
            boot: 7,
            through: 1,
            dropped: 0,
            record: records[0],
        };
        marks.insert("n1".into(), mark);
        assert_eq!(recover(&store, "wh3", &mut marks, true).unwrap(), 2);
        assert_eq!(marks["n1"].through, 3);
        assert_eq!(marks["n1"].record, records[2]);

        // Without a file, the store alone gives the same.
        let mut rebuilt = Marks::new();
        assert_eq!(recover(&store, "wh3", &mut rebuilt, false).unwrap(), 3);
        assert_eq!(rebuilt, marks);
    }

    #[tokio::test]
    async fn a_new_boot_in_the_store_replaces_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("kouan.db");
        stored(&store, 8, &[1, 2]).await;

        let mut marks = Marks::new();
        let mark = Mark {
            boot: 7,
            through: 40,
            dropped: 5,
            record: 0,
        };
        marks.insert("n1".into(), mark);
        recover(&store, "wh3", &mut marks, true).unwrap();
        assert_eq!(
            (marks["n1"].boot, marks["n1"].through, marks["n1"].dropped),
            (8, 2, 0)
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "{").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("w.toml"), "{error}");
    }
}
