//! The writer: the one owner of the chain.
//!
//! Drivers, the uplink and the alarm logic all produce records, but only one
//! thread may decide a record's `seq` and `prev`, sign it, and make it
//! durable, or the chain would fork. [`Writer`] is the cloneable handle to
//! that thread. Producers send an [`Entry`] through a bounded channel and
//! await the record's seq, which arrives only after the record is fsynced:
//! that is the moment a driver may acknowledge the instrument.
//!
//! The work is a two-stage pipeline on two threads, so that both cores
//! work when signing limits throughput. The signer thread takes whatever has
//! queued up, up to [`MAX_BATCH`] (group commit), decides seqs and evictions,
//! and signs each record in turn; signing is sequential by nature, because
//! each record's `prev` covers the previous record's signature. The committer
//! thread owns the store's write connection and commits each batch in one
//! transaction (and fsync) while the signer already signs the next. At most
//! one batch waits between them. Producers hear back only after the commit.
//!
//! If a commit fails, the committer refuses every batch already signed on
//! top of it (the store's contiguity check does that) and tells the signer
//! the durable head, from which the signer continues; nothing of a refused
//! batch is stored, and its producers are told so.
//!
//! The signer also writes the agent's own records: the genesis record of a
//! new stream, a checkpoint after every N readings, after M minutes and at
//! every start, and a gap record whenever `drop_oldest` evicts records.

use std::time::{Duration, Instant};

use ciborium::Value;
use serde_bytes::ByteBuf;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::CaptureTime;
use crate::keys::SigningKey;
use crate::record::{
    self, AGENT_INSTRUMENT, CheckpointBody, GapBody, GapReason, GenesisBody, GenesisReason,
    HASH_LEN, Kind, Payload, SCHEMA_VERSION, STREAM_ID_LEN,
};
use crate::store::{Head, NewRecord, Opened, Stats, Store, StoreError};

/// Most requests handled in one transaction.
///
/// Large enough that one fsync serves many records under load (the fsync
/// costs as much as signing about a hundred records), small enough that the
/// first producer of a batch waits at most a few milliseconds for the last.
pub const MAX_BATCH: usize = 512;

/// Longest signed record accepted, in bytes. Raw instrument data beyond
/// this is a driver bug or an attack; it is refused, not truncated.
pub const MAX_RECORD_LEN: usize = 128 * 1024;

/// What to do when the store reaches its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse new readings, so instruments keep them and resend; alarm loudly.
    Backpressure,
    /// Evict the oldest unsent records and record the evicted range in a gap record.
    DropOldest,
}

/// How the writer behaves.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The agent's id.
    pub node: String,
    /// The monitoring point.
    pub site: String,
    /// Size cap of the stored records, in bytes.
    pub max_bytes: u64,
    /// What happens at the cap.
    pub policy: FullPolicy,
    /// A checkpoint after this many records.
    pub checkpoint_every: u64,
    /// A checkpoint after this much time with records in between.
    pub checkpoint_interval: Duration,
    /// Requests that may wait in the channel before producers wait too.
    pub queue: usize,
}

impl WriterConfig {
    /// Defaults for an agent: 1 GiB cap, backpressure, a checkpoint every
    /// 1000 records or 5 minutes.
    pub fn new(node: impl Into<String>, site: impl Into<String>) -> WriterConfig {
        WriterConfig {
            node: node.into(),
            site: site.into(),
            max_bytes: 1 << 30,
            policy: FullPolicy::Backpressure,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(300),
            queue: 4 * MAX_BATCH,
        }
    }
}

/// Something to record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The instrument it is about.
    pub instrument: String,
    /// Its kind.
    pub kind: Kind,
    /// When it was captured.
    pub time: CaptureTime,
    /// The kind's body (see [`record::body`]).
    pub body: Value,
}

/// Why an entry was not recorded. Nothing was stored; the producer still
/// holds the data and must not acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The store is at its cap under the `backpressure` policy (or nothing
    /// more can be evicted).
    #[error("store is full ({max_bytes} bytes); not acknowledging until records are delivered")]
    Full {
        /// The cap.
        max_bytes: u64,
    },
    /// The signed record would be too long.
    #[error("record of {len} bytes exceeds the limit of {MAX_RECORD_LEN} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Encoding or signing failed.
    #[error("{0}")]
    Record(String),
    /// The store failed (disk full, I/O error).
    #[error("{0}")]
    Store(String),
    /// The writer has stopped.
    #[error("the record writer has stopped")]
    Closed,
}

/// A record made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
}

enum Request {
    Append(Entry, oneshot::Sender<Result<Appended, AppendError>>),
    Acknowledge(u64, oneshot::Sender<Result<u64, AppendError>>),
    Stats(oneshot::Sender<Result<Stats, AppendError>>),
}

/// A handle to the writer thread; clone it for every producer.
///
/// The thread ends when the last handle is dropped, after finishing what
/// was queued.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    head: watch::Receiver<u64>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append(entry, _) => write!(f, "Append({:?})", entry.kind),
            Request::Acknowledge(seq, _) => write!(f, "Acknowledge({seq})"),
            Request::Stats(_) => f.write_str("Stats"),
        }
    }
}

impl Writer {
    /// Starts the writer thread on an open store; writes a genesis record
    /// first when the store has no stream yet.
    pub fn start(
        store: Store,
        opened: &Opened,
        key: SigningKey,
        config: WriterConfig,
    ) -> Result<(Writer, std::thread::JoinHandle<()>), StartError> {
        let mut store = store;
        let mut chain = Chain::new(&store, key, config)?;
        if chain.head.is_none() {
            chain.genesis(&mut store, opened)?;
        } else {
            // A restart: state the head at once, and count N records from here.
            chain.resume(&mut store)?;
        }
        chain.reader = Some(Store::open_read_only(store.path())?);
        let (head_tx, head) = watch::channel(chain.head.map_or(0, |h| h.seq));
        let (tx, rx) = mpsc::channel(chain.config.queue.max(1));
        // One batch committing and one waiting: the signer runs ahead by one.
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel(1);
        let (feedback_tx, feedback_rx) = std::sync::mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("kouan-commit".into())
            .spawn(move || commit_loop(store, jobs_rx, feedback_tx, head_tx))
            .map_err(|e| StartError::Thread(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name("kouan-writer".into())
            .spawn(move || {
                chain.run(rx, &jobs_tx, feedback_rx);
                // The read connection closes first, so that the committer's
                // is the last one and SQLite folds the WAL into the database.
                drop(chain);
                drop(jobs_tx);
                if committer.join().is_err() {
                    tracing::error!("the record committer panicked");
                }
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        Ok((Writer { tx, head }, thread))
    }

    /// Records an entry; resolves once it is durable, with its seq.
    ///
    /// If this future is dropped after the entry was queued, the record is
    /// still written; only its seq is not reported.
    pub async fn append(&self, entry: Entry) -> Result<Appended, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Append(entry, reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// Deletes records through `seq` (the platform has them); returns how many.
    pub async fn acknowledge(&self, seq: u64) -> Result<u64, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Acknowledge(seq, reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// The seq of the newest durable record, updated after every commit:
    /// the uplink waits on it for new records.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// What the store holds, as of the last commit.
    pub async fn stats(&self) -> Result<Stats, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Stats(reply))
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed while writing the genesis record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing the genesis record failed.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// The thread could not be spawned.
    #[error("starting the writer thread: {0}")]
    Thread(String),
}

/// The signer's state: the chain head and a model of the store that
/// includes the batches handed to the committer.
struct Chain {
    key: SigningKey,
    config: WriterConfig,
    /// The head as signed (durable, or on its way to the committer).
    head: Option<Head>,
    /// Bytes the store will hold once the batches handed off are committed.
    bytes: u64,
    /// Oldest seq the store will hold then.
    first: Option<u64>,
    /// The newest seq planned for eviction in a batch handed off.
    evicted_through: Option<u64>,
    /// A read connection, to size the oldest records for eviction.
    reader: Option<Store>,
    /// Counts resets after failed commits: a failure reported for a batch
    /// of an earlier generation was already handled.
    generation: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    full: bool,
}

/// Work for the committer thread, in the order the signer decided it.
enum Job {
    Commit {
        generation: u64,
        records: Vec<NewRecord>,
        stream: [u8; STREAM_ID_LEN],
        evict_through: Option<u64>,
        waiting: Vec<(u64, oneshot::Sender<Result<Appended, AppendError>>)>,
    },
    Acknowledge(u64, oneshot::Sender<Result<u64, AppendError>>),
    Stats(oneshot::Sender<Result<Stats, AppendError>>),
}

/// What the committer tells the signer about the store.
enum Feedback {
    /// A commit failed: the durable state to continue from.
    Failed {
        generation: u64,
        head: Option<Head>,
        bytes: u64,
        first: Option<u64>,
    },
    /// Records through `through` were deleted, freeing `freed` bytes.
    Acknowledged { through: u64, freed: u64 },
}

/// Records signed for one transaction, not yet durable.
struct Batch {
    stream: [u8; STREAM_ID_LEN],
    next_seq: u64,
    prev: [u8; HASH_LEN],
    records: Vec<NewRecord>,
    bytes: u64,
    evict_through: Option<u64>,
    /// Bytes of the stored records planned for eviction.
    evicted_bytes: u64,
    /// Oldest stored seq not yet planned for eviction.
    evict_next: Option<u64>,
}

/// Room kept for the gap record that names an eviction (it takes about 250 bytes).
const GAP_RESERVE: u64 = 512;

impl Chain {
    fn new(store: &Store, key: SigningKey, config: WriterConfig) -> Result<Chain, StoreError> {
        let mut chain = Chain {
            key,
            config,
            head: None,
            bytes: 0,
            first: None,
            evicted_through: None,
            reader: None,
            generation: 0,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            full: false,
        };
        chain.load(store)?;
        Ok(chain)
    }

    /// Takes the head and usage from the store's durable state.
    fn load(&mut self, store: &Store) -> Result<(), StoreError> {
        self.head = store.head();
        self.bytes = store.bytes();
        self.first = store.stats()?.first;
        self.evicted_through = None;
        Ok(())
    }

    fn genesis(&mut self, store: &mut Store, opened: &Opened) -> Result<(), StartError> {
        let mut stream = [0u8; STREAM_ID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut stream)
            .map_err(|_| StartError::Random)?;
        let body = match opened {
            Opened::Recovered {
                damage,
                moved_to,
                previous,
            } => GenesisBody {
                reason: GenesisReason::StoreDamaged,
                detail: format!(
                    "the previous store was damaged ({damage}) and moved to {}",
                    moved_to.display()
                ),
                previous_stream: previous.map(|(s, _)| ByteBuf::from(s.to_vec())),
                previous_head: previous.map(|(_, seq)| seq),
            },
            Opened::Created | Opened::Existing => GenesisBody {
                reason: GenesisReason::NewStore,
                detail: format!("new store at {}", store.path().display()),
                previous_stream: None,
                previous_head: None,
            },
        };
        let mut batch = Batch {
            stream,
            next_seq: 0,
            prev: [0; HASH_LEN],
            records: Vec::with_capacity(1),
            bytes: 0,
            evict_through: None,
            evicted_bytes: 0,
            evict_next: None,
        };
        let entry = agent_entry(Kind::Genesis, record::body(&body)?);
        self.sign_into(&mut batch, &entry)
            .map_err(|e| StartError::Thread(e.to_string()))?;
        store.append(&batch.records, stream, None)?;
        self.load(store)?;
        tracing::info!(
            stream = %hex::encode(stream),
            reason = ?body.reason,
            detail = %body.detail,
            "started a new record stream"
        );
        Ok(())
    }

    /// Writes a checkpoint when the agent resumes an existing chain.
    fn resume(&mut self, store: &mut Store) -> Result<(), StartError> {
        let head = self
            .head
            .ok_or_else(|| StartError::Thread("no chain head".into()))?;
        let mut batch = Batch {
            stream: head.stream,
            next_seq: head.seq + 1,
            prev: head.hash,
            records: Vec::with_capacity(1),
            bytes: 0,
            evict_through: None,
            evicted_bytes: 0,
            evict_next: None,
        };
        self.checkpoint(&mut batch)
            .map_err(|e| StartError::Thread(e.to_string()))?;
        store.append(&batch.records, head.stream, None)?;
        self.load(store)?;
        tracing::info!(
            stream = %hex::encode(head.stream),
            head = head.seq + 1,
            "resumed the record stream"
        );
        Ok(())
    }

    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Request>,
        jobs: &std::sync::mpsc::SyncSender<Job>,
        feedback: std::sync::mpsc::Receiver<Feedback>,
    ) {
        // A private clock-only runtime lets this thread wait on the channel
        // with a timeout for the next time-based checkpoint.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "record writer could not start its timer; stopped");
                return;
            }
        };
        let mut requests = Vec::with_capacity(MAX_BATCH);
        loop {
            let wait = self
                .config
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint.elapsed());
            match runtime.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(_elapsed) => {}
            }
            while requests.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => requests.push(request),
                    Err(_) => break,
                }
            }
            self.take_feedback(&feedback);
            if self.handle(&mut requests, jobs).is_err() {
                tracing::error!("the record committer stopped; the writer stops too");
                return;
            }
        }
        tracing::debug!("record writer stopped: every producer is gone");
    }

    /// Applies what the committer reported since the last batch.
    fn take_feedback(&mut self, feedback: &std::sync::mpsc::Receiver<Feedback>) {
        while let Ok(news) = feedback.try_recv() {
            match news {
                Feedback::Failed {
                    generation,
                    head,
                    bytes,
                    first,
                } => {
                    // Later batches of that generation fail too; reset once.
                    if generation != self.generation {
                        continue;
                    }
                    self.generation += 1;
                    self.head = head;
                    self.bytes = bytes;
                    self.first = first;
                    self.evicted_through = None;
                    self.since_checkpoint = 0;
                }
                Feedback::Acknowledged { through, freed } => {
                    self.bytes = self.bytes.saturating_sub(freed);
                    let head = self.head.map(|h| h.seq);
                    self.first = match (self.first, head) {
                        (Some(first), Some(head)) if first <= through => {
                            (through < head).then_some(through + 1)
                        }
                        (first, _) => first,
                    };
                }
            }
        }
    }

    /// Signs the queued appends into one batch and hands it, with the acks
    /// and stats requests, to the committer in order. Fails only when the
    /// committer is gone.
    fn handle(
        &mut self,
        requests: &mut Vec<Request>,
        jobs: &std::sync::mpsc::SyncSender<Job>,
    ) -> Result<(), ()> {
        let mut appends = Vec::with_capacity(requests.len());
        let mut later = Vec::new();
        for request in requests.drain(..) {
            match request {
                Request::Append(entry, reply) => appends.push((entry, reply)),
                Request::Acknowledge(seq, reply) => {
                    jobs.send(Job::Acknowledge(seq, reply)).map_err(|_| ())?;
                }
                Request::Stats(reply) => later.push(Job::Stats(reply)),
            }
        }

        let Some(head) = self.head else {
            // Unreachable after start: the genesis record set the head.
            for (_, reply) in appends {
                let _ = reply.send(Err(AppendError::Store("the chain has no head".into())));
            }
            return Ok(());
        };
        let mut batch = Batch {
            stream: head.stream,
            next_seq: head.seq + 1,
            prev: head.hash,
            records: Vec::with_capacity(appends.len() + 2),
            bytes: 0,
            evict_through: None,
            evicted_bytes: 0,
            evict_next: self.evicted_through.map(|t| t + 1).or(self.first),
        };

        let mut waiting = Vec::with_capacity(appends.len());
        for (entry, reply) in appends {
            match self.admit(&mut batch, &entry) {
                Ok(seq) => waiting.push((seq, reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                    continue;
                }
            }
            if self.since_checkpoint >= self.config.checkpoint_every
                && let Err(error) = self.checkpoint(&mut batch)
            {
                tracing::warn!(%error, "could not sign a checkpoint; will retry");
            }
        }
        let due = self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
        if due {
            if let Err(error) = self.checkpoint(&mut batch) {
                tracing::warn!(%error, "could not sign a checkpoint; will retry");
            }
        } else if self.since_checkpoint == 0 {
            self.last_checkpoint = Instant::now();
        }

        if let Some(last) = batch.records.last() {
            // The model moves now; a failed commit resets it (take_feedback).
            self.head = Some(Head {
                stream: batch.stream,
                seq: last.seq,
                hash: last.hash,
            });
            self.bytes = self.bytes - batch.evicted_bytes + batch.bytes;
            if let Some(through) = batch.evict_through {
                self.evicted_through = Some(through);
                self.first = Some(through + 1);
            }
            self.first = self.first.or(batch.records.first().map(|r| r.seq));
            let job = Job::Commit {
                generation: self.generation,
                records: batch.records,
                stream: batch.stream,
                evict_through: batch.evict_through,
                waiting,
            };
            jobs.send(job).map_err(|_| ())?;
        }
        for job in later {
            jobs.send(job).map_err(|_| ())?;
        }
        Ok(())
    }

    /// Signs an entry into the batch if the store has room, evicting under
    /// `drop_oldest`. Returns its seq.
    fn admit(&mut self, batch: &mut Batch, entry: &Entry) -> Result<u64, AppendError> {
        let outcome = self.try_admit(batch, entry);
        match &outcome {
            Ok(_) => {
                self.since_checkpoint += 1;
                if self.full {
                    self.full = false;
                    tracing::info!("store has room again: accepting readings");
                }
            }
            Err(AppendError::Full { .. }) if !self.full => {
                self.full = true;
                tracing::error!(
                    max_bytes = self.config.max_bytes,
                    policy = ?self.config.policy,
                    "store is full: refusing readings until the platform acknowledges records"
                );
            }
            Err(_) => {}
        }
        outcome
    }

    fn try_admit(&mut self, batch: &mut Batch, entry: &Entry) -> Result<u64, AppendError> {
        // Signing is the only way to learn the record's exact size.
        let mark = batch.records.len();
        let seq = self.sign_into(batch, entry)?;
        let len = batch.records[mark].bytes.len() as u64;
        if len > MAX_RECORD_LEN as u64 {
            self.unsign(batch, mark);
            return Err(AppendError::TooLarge { len: len as usize });
        }
        let excess = self.excess(batch);
        if excess == 0 {
            return Ok(seq);
        }

        let full = AppendError::Full {
            max_bytes: self.config.max_bytes,
        };
        self.unsign(batch, mark);
        if self.config.policy == FullPolicy::Backpressure {
            return Err(full);
        }
        // The gap record naming the evicted range goes before the entry
        // that needed the room; GAP_RESERVE covers its own size.
        self.evict(batch, excess + GAP_RESERVE)?;
        let seq = self.sign_into(batch, entry)?;
        if self.excess(batch) > 0 {
            self.unsign(batch, mark + 1);
            return Err(full);
        }
        Ok(seq)
    }

    /// Bytes over the cap if the batch were committed now.
    fn excess(&self, batch: &Batch) -> u64 {
        let total = self.bytes - batch.evicted_bytes + batch.bytes;
        total.saturating_sub(self.config.max_bytes)
    }

    /// Plans the eviction of the oldest stored records, at least `need`
    /// bytes of them, and signs the gap record that names them.
    fn evict(&mut self, batch: &mut Batch, need: u64) -> Result<(), AppendError> {
        let full = AppendError::Full {
            max_bytes: self.config.max_bytes,
        };
        let Some(from) = batch.evict_next else {
            return Err(full);
        };
        let Some(reader) = &self.reader else {
            return Err(full);
        };
        let candidates = reader
            .oldest_sizes(from, 4096)
            .map_err(|e| AppendError::Store(e.to_string()))?;
        let mut freed = 0u64;
        let mut to = None;
        for (seq, size) in candidates {
            freed += size;
            to = Some(seq);
            if freed >= need {
                break;
            }
        }
        let Some(to) = to else {
            return Err(full);
        };
        batch.evict_through = Some(to);
        batch.evict_next = Some(to + 1);
        batch.evicted_bytes += freed;
        let gap = GapBody {
            from,
            to,
            reason: GapReason::StoreFull,
        };
        let body = record::body(&gap).map_err(|e| AppendError::Record(e.to_string()))?;
        self.sign_into(batch, &agent_entry(Kind::Gap, body))?;
        tracing::warn!(
            from,
            to,
            "store full: evicted the oldest unsent records (drop_oldest)"
        );
        Ok(())
    }

    fn head_hash(&self) -> [u8; HASH_LEN] {
        self.head.map_or([0; HASH_LEN], |h| h.hash)
    }

    /// Removes the records from `mark` on, which were signed but not admitted.
    fn unsign(&self, batch: &mut Batch, mark: usize) {
        for record in batch.records.drain(mark..) {
            batch.bytes -= record.bytes.len() as u64;
            batch.next_seq -= 1;
        }
        batch.prev = batch.records.last().map_or(self.head_hash(), |r| r.hash);
    }

    fn checkpoint(&mut self, batch: &mut Batch) -> Result<(), AppendError> {
        let first = batch
            .evict_through
            .map(|t| t + 1)
            .or(self.first)
            .or(batch.records.first().map(|r| r.seq))
            .unwrap_or(batch.next_seq);
        let body = CheckpointBody {
            first,
            records: batch.next_seq - first,
            bytes: self.bytes - batch.evicted_bytes + batch.bytes,
        };
        let body = record::body(&body).map_err(|e| AppendError::Record(e.to_string()))?;
        self.sign_into(batch, &agent_entry(Kind::Checkpoint, body))?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Signs an entry as the batch's next record; returns its seq.
    fn sign_into(&self, batch: &mut Batch, entry: &Entry) -> Result<u64, AppendError> {
        let payload = Payload {
            v: SCHEMA_VERSION,
            node: self.config.node.clone(),
            site: self.config.site.clone(),
            instrument: entry.instrument.clone(),
            kind: entry.kind,
            stream: ByteBuf::from(batch.stream.to_vec()),
            seq: batch.next_seq,
            prev: ByteBuf::from(batch.prev.to_vec()),
            time: entry.time,
            body: entry.body.clone(),
        };
        let bytes =
            record::sign(&payload, &self.key).map_err(|e| AppendError::Record(e.to_string()))?;
        let hash = record::hash(&bytes);
        batch.bytes += bytes.len() as u64;
        batch.records.push(NewRecord {
            seq: batch.next_seq,
            kind: entry.kind,
            instrument: entry.instrument.clone(),
            captured_ms: entry.time.ms,
            hash,
            bytes,
        });
        batch.prev = hash;
        batch.next_seq += 1;
        Ok(payload.seq)
    }
}

/// An entry about the agent itself, captured now.
fn agent_entry(kind: Kind, body: Value) -> Entry {
    Entry {
        instrument: AGENT_INSTRUMENT.to_owned(),
        kind,
        time: CaptureTime::now(),
        body,
    }
}

/// The committer thread: commits batches in order, answers acks and stats,
/// and announces the durable head.
fn commit_loop(
    mut store: Store,
    jobs: std::sync::mpsc::Receiver<Job>,
    feedback: std::sync::mpsc::Sender<Feedback>,
    head_tx: watch::Sender<u64>,
) {
    for job in jobs {
        match job {
            Job::Commit {
                generation,
                records,
                stream,
                evict_through,
                waiting,
            } => match store.append(&records, stream, evict_through) {
                Ok(()) => {
                    if let Some(head) = store.head() {
                        head_tx.send_replace(head.seq);
                    }
                    for (seq, reply) in waiting {
                        let _ = reply.send(Ok(Appended { seq }));
                    }
                }
                Err(error) => {
                    // Nothing of the batch is stored; producers keep their data.
                    tracing::warn!(%error, records = records.len(), "store refused a batch");
                    let message = error.to_string();
                    for (_, reply) in waiting {
                        let _ = reply.send(Err(AppendError::Store(message.clone())));
                    }
                    let first = store.stats().ok().and_then(|s| s.first);
                    let _ = feedback.send(Feedback::Failed {
                        generation,
                        head: store.head(),
                        bytes: store.bytes(),
                        first,
                    });
                }
            },
            Job::Acknowledge(through, reply) => {
                let before = store.bytes();
                let outcome = store
                    .acknowledge(through)
                    .map_err(|e| AppendError::Store(e.to_string()));
                if matches!(outcome, Ok(deleted) if deleted > 0) {
                    let freed = before - store.bytes();
                    let _ = feedback.send(Feedback::Acknowledged { through, freed });
                }
                let _ = reply.send(outcome);
            }
            Job::Stats(reply) => {
                let _ = reply.send(store.stats().map_err(|e| AppendError::Store(e.to_string())));
            }
        }
    }
}
