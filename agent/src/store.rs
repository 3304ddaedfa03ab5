//! The store: a durable queue of signed records.
//!
//! Every record the agent signs is kept here until the platform confirms
//! it, through power cuts, full disks and weeks without network. The engine
//! is SQLite in WAL mode: the most trusted embedded store, inspectable by a
//! technician with the `sqlite3` shell, and fast at group commit.
//!
//! # Layout
//!
//! One database file (plus SQLite's `-wal` and `-shm` beside it), marked
//! with `application_id` `0x4b4f5541` ("KOUA") and `user_version` 1:
//!
//! ```sql
//! CREATE TABLE chain (            -- exactly one row once a stream started
//!     id          INTEGER PRIMARY KEY CHECK (id = 1),
//!     stream      BLOB NOT NULL,  -- 16 random bytes
//!     head_seq    INTEGER NOT NULL,
//!     head_hash   BLOB NOT NULL,  -- SHA-256 of the head record's bytes
//!     bytes       INTEGER NOT NULL -- sum of length(bytes) over records
//! );
//! CREATE TABLE records (
//!     seq         INTEGER PRIMARY KEY,
//!     kind        TEXT NOT NULL,
//!     instrument  TEXT NOT NULL,
//!     captured_ms INTEGER NOT NULL,
//!     hash        BLOB NOT NULL,  -- SHA-256 of bytes
//!     bytes       BLOB NOT NULL   -- the tagged COSE_Sign1, as signed
//! );
//! ```
//!
//! # Invariants
//!
//! 1. `records` holds a contiguous range of seqs, or nothing: rows leave only
//!    from the oldest end (platform acks, `drop_oldest` eviction).
//! 2. The `chain` row names the last record ever appended, also after every
//!    record has been acknowledged and deleted; the next seq is `head_seq + 1`.
//! 3. `chain.bytes` is the sum of the sizes of the stored records.
//! 4. `records.hash` is the SHA-256 of `records.bytes` in every row; a reader
//!    checks it on every read, so a damaged record is never read back as valid.
//! 5. Every change to `records` and `chain` happens in one transaction, and a
//!    commit returns only after the WAL is fsynced (`synchronous = FULL`). A
//!    record is acknowledged to its producer only after its commit returned.
//!
//! # Recovery
//!
//! Opening an existing store lets SQLite roll the WAL forward to the last
//! committed transaction; an interrupted one is discarded, and nothing in it
//! was ever acknowledged. Then [`Store::open`] checks, and reports the first
//! failure as a [`Damage`]:
//!
//! - the file is a SQLite database with kouan's application id and version;
//! - `PRAGMA quick_check` passes;
//! - every stored record's hash matches its bytes, each record's `prev` is
//!   the hash of the one before, seqs are contiguous, and the last record is
//!   the chain head;
//! - the newest records (up to [`SIGNATURE_CHECK_DEPTH`]) parse and their
//!   signatures verify with the agent's public key.
//!
//! [`Store::open_or_recover`] moves a damaged store aside, next to the
//! original as `<name>.damaged-<UTC time>` with its `-wal` and `-shm`, and
//! creates an empty one; the writer then starts a new stream whose genesis
//! record carries the diagnosis and the path of the moved file. The moved
//! file is left for `kouan store export` and for people.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use crate::keys::PublicKey;
use crate::record::{self, Hash, Kind, STREAM_ID_LEN};

/// `PRAGMA application_id` of a kouan store: "KOUA".
const APPLICATION_ID: i32 = 0x4b4f_5541;

/// `PRAGMA user_version` of the layout above.
const LAYOUT_VERSION: i32 = 1;

/// How many of the newest records have their signatures checked on open.
///
/// Hashes and chain links of all stored records are checked on open, which
/// costs about five seconds per million records on a two-core gateway
/// (docs/performance.md); signatures would cost several times more, so
/// only the tail written just before a crash is verified in full.
pub const SIGNATURE_CHECK_DEPTH: u64 = 256;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (I/O, disk full, locked by another process).
    #[error("store {path}: {action}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A file operation outside SQLite failed.
    #[error("store {path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The store is damaged; see [`Damage`].
    #[error("store {path} is damaged: {damage}")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        damage: Damage,
    },
    /// An append did not continue the chain (a bug in the caller).
    #[error("store {path}: append of seq {got} does not follow head seq {head:?}")]
    NotContiguous {
        /// The database file.
        path: PathBuf,
        /// The first seq of the append.
        got: u64,
        /// The head before it.
        head: Option<u64>,
    },
    /// The store exists but a new one was asked for.
    #[error("store {0} already exists")]
    Exists(PathBuf),
}

/// What is wrong with a damaged store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// SQLite cannot read the file as a database.
    NotADatabase(String),
    /// The database is not a kouan store, or of an unknown layout version.
    NotAStore(String),
    /// `PRAGMA quick_check` found corruption.
    Corrupt(String),
    /// A record's bytes do not match its stored hash.
    RecordHash {
        /// The record.
        seq: u64,
    },
    /// A record is not a valid signed record.
    RecordInvalid {
        /// The record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A record's `prev` is not the hash of the record before it.
    BrokenLink {
        /// The record whose `prev` is wrong.
        seq: u64,
    },
    /// Stored seqs or the chain head are inconsistent.
    Inconsistent(String),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::NotADatabase(why) => write!(f, "not a readable SQLite database ({why})"),
            Damage::NotAStore(why) => write!(f, "not a kouan store ({why})"),
            Damage::Corrupt(why) => write!(f, "SQLite integrity check failed: {why}"),
            Damage::RecordHash { seq } => {
                write!(
                    f,
                    "record seq {seq}: bytes do not match their stored SHA-256"
                )
            }
            Damage::RecordInvalid { seq, reason } => write!(f, "record seq {seq}: {reason}"),
            Damage::BrokenLink { seq } => write!(
                f,
                "record seq {seq}: prev is not the hash of record seq {}",
                seq.saturating_sub(1)
            ),
            Damage::Inconsistent(why) => write!(f, "inconsistent chain: {why}"),
        }
    }
}

/// The last record ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The stream.
    pub stream: [u8; STREAM_ID_LEN],
    /// Its seq.
    pub seq: u64,
    /// SHA-256 of its bytes.
    pub hash: Hash,
}

/// A record ready to be appended.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// The instrument it is about.
    pub instrument: String,
    /// Capture time, ms since the Unix epoch.
    pub captured_ms: i64,
    /// SHA-256 of `bytes`.
    pub hash: Hash,
    /// The signed bytes.
    pub bytes: Vec<u8>,
}

/// A record read back from the store, its hash checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its seq.
    pub seq: u64,
    /// Its kind, as stored.
    pub kind: String,
    /// The instrument it is about.
    pub instrument: String,
    /// Capture time, ms since the Unix epoch.
    pub captured_ms: i64,
    /// The signed bytes.
    pub bytes: Vec<u8>,
}

/// What the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Records held (not yet acknowledged).
    pub records: u64,
    /// Bytes of signed records held.
    pub bytes: u64,
    /// Oldest seq held.
    pub first: Option<u64>,
    /// The chain head, held or not.
    pub head: Option<u64>,
    /// Capture time of the oldest record held, ms since the Unix epoch.
    pub oldest_captured_ms: Option<i64>,
}

/// How an existing store was found by [`Store::open_or_recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No store was there; an empty one was created.
    Created,
    /// The store was there and passed its checks.
    Existing,
    /// The store was damaged, moved aside, and an empty one created.
    Recovered {
        /// The diagnosis.
        damage: Damage,
        /// Where the damaged files went.
        moved_to: PathBuf,
        /// The damaged store's stream and head seq, if its chain row was readable.
        previous: Option<([u8; STREAM_ID_LEN], u64)>,
    },
}

/// A kouan record store: one SQLite database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    head: Option<Head>,
    bytes: u64,
}

impl Store {
    /// Opens the store at `path`, creating it when there is none; a damaged
    /// store is moved aside and replaced by an empty one.
    ///
    /// `keys` verify the newest records' signatures (the agent's own key).
    pub fn open_or_recover(path: &Path, keys: &[PublicKey]) -> Result<(Store, Opened), StoreError> {
        if !path.exists() {
            return Ok((Store::create(path)?, Opened::Created));
        }
        let damage = match Store::open(path, keys) {
            Ok(store) => return Ok((store, Opened::Existing)),
            Err(StoreError::Damaged { damage, .. }) => damage,
            Err(other) => return Err(other),
        };
        let previous = Store::salvage_head(path);
        let moved_to = move_aside(path)?;
        let store = Store::create(path)?;
        Ok((
            store,
            Opened::Recovered {
                damage,
                moved_to,
                previous,
            },
        ))
    }

    /// Creates a new, empty store; fails if the file exists.
    ///
    /// The store is made complete under a temporary name and renamed into
    /// place, so that a process killed while creating it leaves no file at
    /// `path` that would look like a damaged store.
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Exists(path.to_owned()));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".creating");
        let partial = PathBuf::from(partial);
        let io = |action: &'static str| {
            move |source| StoreError::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        // What an earlier, interrupted creation left.
        for suffix in ["", "-wal", "-shm"] {
            let mut leftover = partial.as_os_str().to_owned();
            leftover.push(suffix);
            match std::fs::remove_file(PathBuf::from(leftover)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing an unfinished store")(e));
                }
                _ => {}
            }
        }
        let conn = Connection::open(&partial).map_err(sqlite(path, "creating the database"))?;
        configure(&conn, &partial)?;
        conn.execute_batch(&format!(
            "BEGIN;
             CREATE TABLE chain (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 stream BLOB NOT NULL,
                 head_seq INTEGER NOT NULL,
                 head_hash BLOB NOT NULL,
                 bytes INTEGER NOT NULL
             );
             CREATE TABLE records (
                 seq INTEGER PRIMARY KEY,
                 kind TEXT NOT NULL,
                 instrument TEXT NOT NULL,
                 captured_ms INTEGER NOT NULL,
                 hash BLOB NOT NULL,
                 bytes BLOB NOT NULL
             );
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {LAYOUT_VERSION};
             COMMIT;"
        ))
        .map_err(sqlite(path, "creating the tables"))?;
        // Closing the only connection checkpoints the WAL into the file and
        // removes it: the file alone is the whole store.
        conn.close()
            .map_err(|(_, e)| e)
            .map_err(sqlite(path, "closing the new database"))?;
        std::fs::rename(&partial, path).map_err(io("moving the new store into place"))?;
        crate::keys::sync_parent_dir(path).map_err(io("syncing the directory"))?;
        let conn = Connection::open(path).map_err(sqlite(path, "opening the new database"))?;
        configure(&conn, path)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            head: None,
            bytes: 0,
        })
    }

    /// Opens an existing store for writing and checks it (see the module doc).
    pub fn open(path: &Path, keys: &[PublicKey]) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| damaged(path, Damage::NotADatabase(e.to_string())))?;
        configure(&conn, path)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            head: None,
            bytes: 0,
        };
        store.check(keys)?;
        Ok(store)
    }

    /// Opens an existing store read-only, for stats and export while an
    /// agent may be writing. Checks the layout, not the records.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(sqlite(path, "opening the database read-only"))?;
        limit_cache(&conn, path)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            head: None,
            bytes: 0,
        };
        store.check_layout()?;
        store.load_chain()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record ever appended, or `None` before the first.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Appends records and drops the oldest through `evict_through`, in one
    /// durable transaction. Records must continue the chain.
    pub fn append(
        &mut self,
        records: &[NewRecord],
        stream: [u8; STREAM_ID_LEN],
        evict_through: Option<u64>,
    ) -> Result<(), StoreError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let expected = self.head.map(|h| h.seq + 1);
        let contiguous = records
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == records[0].seq + i as u64);
        let starts_stream = self.head.is_none_or(|h| h.stream != stream);
        if !contiguous || (!starts_stream && expected != Some(records[0].seq)) {
            return Err(StoreError::NotContiguous {
                path: self.path.clone(),
                got: records[0].seq,
                head: self.head.map(|h| h.seq),
            });
        }

        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(sqlite(path, "starting a transaction"))?;
        let mut evicted_bytes = 0u64;
        if let Some(through) = evict_through {
            evicted_bytes =
                tx.query_row(
                    "SELECT COALESCE(SUM(length(bytes)), 0) FROM records WHERE seq <= ?1",
                    params![to_sql_seq(through)],
                    |row| row.get::<_, i64>(0),
                )
                .map_err(sqlite(path, "sizing the records to evict"))? as u64;
            tx.execute(
                "DELETE FROM records WHERE seq <= ?1",
                params![to_sql_seq(through)],
            )
            .map_err(sqlite(path, "evicting the oldest records"))?;
        }
        let mut added = 0u64;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (seq, kind, instrument, captured_ms, hash, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sqlite(path, "preparing the append"))?;
            for r in records {
                insert
                    .execute(params![
                        to_sql_seq(r.seq),
                        r.kind.as_str(),
                        r.instrument,
                        r.captured_ms,
                        &r.hash[..],
                        r.bytes
                    ])
                    .map_err(sqlite(path, "appending a record"))?;
                added += r.bytes.len() as u64;
            }
        }
        let bytes = self.bytes + added - evicted_bytes;
        tx.execute(
            "INSERT INTO chain (id, stream, head_seq, head_hash, bytes) VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET stream = ?1, head_seq = ?2, head_hash = ?3, bytes = ?4",
            params![
                &stream[..],
                to_sql_seq(last.seq),
                &last.hash[..],
                bytes as i64
            ],
        )
        .map_err(sqlite(path, "moving the chain head"))?;
        tx.commit()
            .map_err(sqlite(path, "committing (fsync) the append"))?;

        self.head = Some(Head {
            stream,
            seq: last.seq,
            hash: last.hash,
        });
        self.bytes = bytes;
        Ok(())
    }

    /// Deletes every record with a seq up to `through`: the platform has them.
    /// Returns how many were deleted.
    pub fn acknowledge(&mut self, through: u64) -> Result<u64, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction()
            .map_err(sqlite(path, "starting a transaction"))?;
        let (count, size): (i64, i64) = tx
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(bytes)), 0) FROM records WHERE seq <= ?1",
                params![to_sql_seq(through)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(sqlite(path, "sizing acknowledged records"))?;
        if count == 0 {
            return Ok(0);
        }
        tx.execute(
            "DELETE FROM records WHERE seq <= ?1",
            params![to_sql_seq(through)],
        )
        .map_err(sqlite(path, "deleting acknowledged records"))?;
        let bytes = self.bytes - size as u64;
        tx.execute("UPDATE chain SET bytes = ?1", params![bytes as i64])
            .map_err(sqlite(path, "updating the store size"))?;
        tx.commit()
            .map_err(sqlite(path, "committing (fsync) the acknowledgement"))?;
        self.bytes = bytes;
        Ok(count as u64)
    }

    /// Up to `limit` records from `from` onward, oldest first, each hash-checked.
    ///
    /// Reading a backlog page by page keeps memory flat whatever its size.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let path = &self.path;
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT seq, kind, instrument, captured_ms, hash, bytes FROM records
                 WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sqlite(path, "preparing a read"))?;
        let rows = query
            .query_map(params![to_sql_seq(from), limit as i64], |row| {
                Ok((
                    StoredRecord {
                        seq: row.get::<_, i64>(0)? as u64,
                        kind: row.get(1)?,
                        instrument: row.get(2)?,
                        captured_ms: row.get(3)?,
                        bytes: row.get(5)?,
                    },
                    row.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(sqlite(path, "reading records"))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for row in rows {
            let (record, stored_hash) = row.map_err(sqlite(path, "reading a record"))?;
            if stored_hash != record::hash(&record.bytes) {
                return Err(damaged(path, Damage::RecordHash { seq: record.seq }));
            }
            out.push(record);
        }
        Ok(out)
    }

    /// Seqs of the alert records in `from..=to`, oldest first: the uplink
    /// sends them ahead of the backlog.
    pub fn alerts_between(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        let path = &self.path;
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT seq FROM records WHERE kind = 'alert' AND seq BETWEEN ?1 AND ?2
                 ORDER BY seq",
            )
            .map_err(sqlite(path, "preparing an alert query"))?;
        let rows = query
            .query_map(params![to_sql_seq(from), to_sql_seq(to)], |row| {
                row.get::<_, i64>(0).map(|s| s as u64)
            })
            .map_err(sqlite(path, "reading alerts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(path, "reading alerts"))
    }

    /// Seqs and sizes of up to `limit` records from `from` on: for eviction.
    pub fn oldest_sizes(&self, from: u64, limit: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        let path = &self.path;
        let mut query = self
            .conn
            .prepare_cached(
                "SELECT seq, length(bytes) FROM records WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sqlite(path, "preparing a size query"))?;
        let rows = query
            .query_map(params![to_sql_seq(from), limit as i64], |row| {
                Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
            })
            .map_err(sqlite(path, "reading record sizes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sqlite(path, "reading record sizes"))
    }

    /// Bytes of the stored records, as of the last commit.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the store holds.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let path = &self.path;
        // Each end is one b-tree descent on the rowid. (MIN and MAX in one
        // SELECT would make SQLite scan the whole table.)
        let (first, oldest): (Option<i64>, Option<i64>) = self
            .conn
            .query_row(
                "SELECT seq, captured_ms FROM records ORDER BY seq LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sqlite(path, "reading stats"))?
            .unzip();
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM records ORDER BY seq DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite(path, "reading stats"))?;
        let records = match (first, last) {
            (Some(first), Some(last)) => (last - first + 1) as u64,
            _ => 0,
        };
        Ok(Stats {
            records,
            bytes: self.bytes,
            first: first.map(|s| s as u64),
            head: self.head.map(|h| h.seq),
            oldest_captured_ms: oldest,
        })
    }

    fn check_layout(&self) -> Result<(), StoreError> {
        let path = &self.path;
        let read = |pragma: &str| -> Result<i32, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
                .map_err(|e| damaged(path, Damage::NotADatabase(e.to_string())))
        };
        let app = read("application_id")?;
        let version = read("user_version")?;
        if app != APPLICATION_ID {
            return Err(damaged(
                path,
                Damage::NotAStore(format!("application_id is {app:#x}")),
            ));
        }
        if version != LAYOUT_VERSION {
            return Err(damaged(
                path,
                Damage::NotAStore(format!(
                    "layout version {version}, this kouan knows {LAYOUT_VERSION}"
                )),
            ));
        }
        Ok(())
    }

    /// Re-reads the chain head and size, for a read-only connection that
    /// follows a writer.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        self.load_chain()
    }

    fn load_chain(&mut self) -> Result<(), StoreError> {
        let path = &self.path;
        let row: Option<(Vec<u8>, i64, Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT stream, head_seq, head_hash, bytes FROM chain WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(|e| damaged(path, Damage::Corrupt(e.to_string())))?;
        let Some((stream, seq, hash, bytes)) = row else {
            self.head = None;
            self.bytes = 0;
            return Ok(());
        };
        let stream: [u8; STREAM_ID_LEN] = stream.try_into().map_err(|_| {
            damaged(
                path,
                Damage::Inconsistent("stream id has the wrong length".into()),
            )
        })?;
        let hash: Hash = hash.try_into().map_err(|_| {
            damaged(
                path,
                Damage::Inconsistent("head hash has the wrong length".into()),
            )
        })?;
        self.head = Some(Head {
            stream,
            seq: seq as u64,
            hash,
        });
        self.bytes = bytes as u64;
        Ok(())
    }

    /// Opens a store read-only and checks all of it, every signature
    /// included when `keys` are given: the thorough check of
    /// `kouan store check`. Returns the first damage found as an error.
    pub fn check_all(path: &Path, keys: &[PublicKey]) -> Result<Store, StoreError> {
        let store = Store::open_read_only(path)?;
        store.quick_check()?;
        store.check_records(keys, u64::MAX)?;
        Ok(store)
    }

    fn check(&mut self, keys: &[PublicKey]) -> Result<(), StoreError> {
        self.check_layout()?;
        self.quick_check()?;
        self.load_chain()?;
        self.check_records(keys, SIGNATURE_CHECK_DEPTH)
    }

    fn quick_check(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let problems: Vec<String> = {
            let mut query = self
                .conn
                .prepare("PRAGMA quick_check")
                .map_err(|e| damaged(&path, Damage::Corrupt(e.to_string())))?;
            query
                .query_map([], |row| row.get::<_, String>(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| damaged(&path, Damage::Corrupt(e.to_string())))?
        };
        if problems != ["ok"] {
            return Err(damaged(&path, Damage::Corrupt(problems.join("; "))));
        }
        Ok(())
    }

    /// Walks every stored record: hashes, links, contiguity; signatures of the newest.
    fn check_records(&self, keys: &[PublicKey], signature_depth: u64) -> Result<(), StoreError> {
        let path = &self.path;
        let stats = self.stats().map_err(|e| match e {
            StoreError::Sqlite { source, .. } => damaged(path, Damage::Corrupt(source.to_string())),
            other => other,
        })?;
        let (Some(first), Some(head)) = (stats.first, self.head) else {
            if stats.records > 0 && self.head.is_none() {
                let why = "records are stored but the chain has no head";
                return Err(damaged(path, Damage::Inconsistent(why.into())));
            }
            return Ok(());
        };
        let last = first + stats.records - 1;
        if last != head.seq {
            let why = format!(
                "newest record is seq {last} but the chain head is seq {}",
                head.seq
            );
            return Err(damaged(path, Damage::Inconsistent(why)));
        }

        let mut expected = first;
        let mut prev_hash: Option<Hash> = None;
        let mut total = 0u64;
        let verify_from = head.seq.saturating_sub(signature_depth.saturating_sub(1));
        loop {
            let page = match self.read_from(expected, 256) {
                Ok(page) => page,
                Err(StoreError::Sqlite { source, .. }) => {
                    return Err(damaged(path, Damage::Corrupt(source.to_string())));
                }
                Err(other) => return Err(other),
            };
            if page.is_empty() {
                break;
            }
            for r in page {
                if r.seq != expected {
                    let why = format!("seq {} follows seq {}", r.seq, expected - 1);
                    return Err(damaged(path, Damage::Inconsistent(why)));
                }
                let invalid =
                    |reason: String| damaged(path, Damage::RecordInvalid { seq: r.seq, reason });
                let payload = if r.seq >= verify_from && !keys.is_empty() {
                    record::verify(&r.bytes, keys).map(|v| v.payload)
                } else {
                    record::parse_unverified(&r.bytes).map(|(_, p)| p)
                }
                .map_err(|e| invalid(e.to_string()))?;
                // The columns beside the bytes route records (topic, priority);
                // they must say what the signed payload says.
                let columns_agree = payload.seq == r.seq
                    && payload.stream.as_slice() == head.stream
                    && payload.kind.as_str() == r.kind
                    && payload.instrument == r.instrument
                    && payload.time.ms == r.captured_ms;
                if !columns_agree {
                    return Err(invalid(
                        "seq, stream, kind, instrument or capture time differs from the \
                         columns it is stored under"
                            .into(),
                    ));
                }
                if let Some(prev) = prev_hash
                    && payload.prev.as_slice() != prev
                {
                    return Err(damaged(path, Damage::BrokenLink { seq: r.seq }));
                }
                let hash = record::hash(&r.bytes);
                prev_hash = Some(hash);
                total += r.bytes.len() as u64;
                expected += 1;
            }
        }
        if expected != head.seq + 1 {
            let why = format!(
                "records end at seq {} but the head is seq {}",
                expected - 1,
                head.seq
            );
            return Err(damaged(path, Damage::Inconsistent(why)));
        }
        if prev_hash != Some(head.hash) {
            let why = format!(
                "head record seq {} does not match the chain head hash",
                head.seq
            );
            return Err(damaged(path, Damage::Inconsistent(why)));
        }
        if total != self.bytes {
            let why = format!(
                "records hold {total} bytes but the chain says {}",
                self.bytes
            );
            return Err(damaged(path, Damage::Inconsistent(why)));
        }
        Ok(())
    }

    /// Reads the chain row of a damaged store, if it can.
    fn salvage_head(path: &Path) -> Option<([u8; STREAM_ID_LEN], u64)> {
        let store = Store::open_read_only(path).ok()?;
        store.head.map(|h| (h.stream, h.seq))
    }
}

/// Sets the durability the module doc promises.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    // WAL lets readers (uplink, `kouan store stats`) run beside the writer;
    // FULL makes every commit fsync the WAL before returning.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| damaged(path, Damage::NotADatabase(e.to_string())))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(damaged(
            path,
            Damage::NotADatabase(format!("cannot use WAL (journal mode {mode})")),
        ));
    }
    // On an existing file these are the first statements that read it, so
    // a failure here is a damaged store, not an I/O error.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
        .map_err(|e| damaged(path, Damage::NotADatabase(e.to_string())))?;
    limit_cache(conn, path)?;
    // A second writer (another agent on the same file) waits, then fails clearly.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite(path, "setting the busy timeout"))?;
    Ok(())
}

/// Keeps SQLite's page cache small, so that resident memory does not grow
/// with the backlog (the default cache of 2 MB fills as a large store is
/// read). The kernel's page cache still serves repeated reads.
///
/// It is the first statement on a read-only connection, so a failure means
/// the file is not a readable database.
fn limit_cache(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA cache_size = -256")
        .map_err(|e| damaged(path, Damage::NotADatabase(e.to_string())))
}

/// Moves the database and its WAL and shared-memory files aside.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = utc_stamp(crate::clock::unix_ms());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{stamp}"));
    let target = PathBuf::from(name);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = target.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: PathBuf::from(from),
                    action: "moving the damaged store aside",
                    source,
                });
            }
        }
    }
    crate::keys::sync_parent_dir(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        action: "syncing the directory after moving the damaged store",
        source,
    })?;
    Ok(target)
}

/// `20261203T162600Z` for a Unix time in ms.
pub fn utc_stamp(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// SQLite integers are signed; seqs stay far below 2^63.
fn to_sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn sqlite(path: &Path, action: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Sqlite {
        path: path.clone(),
        action,
        source,
    }
}

fn damaged(path: &Path, damage: Damage) -> StoreError {
    StoreError::Damaged {
        path: path.to_owned(),
        damage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_is_calendar_correct() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_764_756_000_123), "20251203T100000Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000Z");
    }

    #[test]
    fn an_interrupted_creation_leaves_no_store_and_the_next_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kouan.db");
        // What a process killed between opening and committing leaves: an
        // empty database under the temporary name, with its WAL.
        let partial = dir.path().join("kouan.db.creating");
        let conn = Connection::open(&partial).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE half (x);")
            .unwrap();
        std::mem::forget(conn);
        assert!(!path.exists());

        let (store, opened) = Store::open_or_recover(&path, &[]).unwrap();
        assert!(matches!(opened, Opened::Created), "{opened:?}");
        drop(store);
        assert!(!partial.exists());
        let store = Store::open(&path, &[]).unwrap();
        assert_eq!(store.stats().unwrap().records, 0);
        drop(store);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kouan.db"], "nothing left of the creation");
    }
}
