//! The running agent's state, served over a local Unix socket for
//! `kouan status` and `kouan tail`.
//!
//! The agent listens on a socket beside its store (`[status] socket`,
//! default the store's path with the extension `.sock`, mode 0660, so that
//! the agent's group can read it and nobody else). A client connects,
//! writes one request line and reads JSON lines back:
//!
//! - `{"request":"status"}` is answered with one [`Status`]: the uplink
//!   (connected or not), the backlog (records, bytes, age of the oldest,
//!   how fast it drains), each instrument (attached, last reading,
//!   counters) and the active alerts;
//! - `{"request":"tail"}` is answered with one [`TailRecord`] per record as
//!   the writer makes it durable, until the client hangs up.
//!
//! Three pieces feed it, each small so that the agent's main loop stays
//! readable: the uplink reports its connection into an [`UplinkState`];
//! the instrument tasks' [`Counters`] are read as they are; and a
//! follower task reads each new record from the store (its own read-only
//! connection) once the writer announces it, which gives every
//! instrument's last reading and the tail stream without a hook in the
//! writer. A record the platform acknowledged before the follower read it
//! (a burst after an outage) is counted as skipped in the tail, never
//! guessed.
//!
//! Nothing here can stop the agent: a socket that cannot be bound is
//! logged and the agent runs on without a status view.

pub mod client;

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use crate::clock::unix_ms;
use crate::config::Config;
use crate::instrument::{Counters, InstrumentConfig};
use crate::record::{self, Kind, MeasuredValue, ReadingBody, ScanBody};
use crate::store::{Store, StoredRecord};
use crate::writer::Writer;

/// Version of the messages on the status socket.
pub const STATUS_VERSION: u32 = 1;

/// Longest request line a client may send.
const MAX_REQUEST: usize = 1024;

/// Records the follower reads from the store at a time.
const PAGE: usize = 256;

/// `[status]`: where the agent serves its state.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// The Unix socket; by default the store's path with `.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The status socket of a configuration.
pub fn socket_path(config: &Config) -> PathBuf {
    match &config.status.socket {
        Some(path) => path.clone(),
        None => config.store.path.with_extension("sock"),
    }
}

/// Why the status socket could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Another process answers on the socket already.
    #[error("another agent serves status at {0}: stop it first or set [status] socket")]
    InUse(PathBuf),
    /// Binding, connecting, reading or writing the socket failed.
    #[error("status socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A message on the socket was not what the protocol says.
    #[error("status socket {path}: unexpected message: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The uplink's connection, as the uplink reports it.
///
/// A mutex, because the uplink writes a few times per connection and the
/// status server reads once per request; neither holds it across an await.
#[derive(Debug, Default)]
pub struct UplinkState {
    inner: Mutex<UplinkStatus>,
}

impl UplinkState {
    /// The uplink is connected to `broker`.
    pub fn connected(&self, broker: String) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.connected = true;
        state.broker = broker;
        state.since_ms = Some(unix_ms());
        state.connections += 1;
    }

    /// The connection ended (or an attempt failed) with `error`.
    pub fn disconnected(&self, error: &str) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if state.connected || state.since_ms.is_none() {
            state.since_ms = Some(unix_ms());
        }
        state.connected = false;
        state.last_error = Some(error.to_owned());
    }

    fn snapshot(&self) -> UplinkStatus {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What `{"request":"status"}` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_VERSION`].
    pub v: u32,
    /// The agent's version.
    pub version: String,
    /// The agent's node id.
    pub node: String,
    /// Its monitoring point.
    pub site: String,
    /// The agent's process id.
    pub pid: u32,
    /// When the agent started, ms since the Unix epoch.
    pub started_ms: i64,
    /// When this status was taken.
    pub now_ms: i64,
    /// The uplink; absent when the agent has no `[uplink]`.
    pub uplink: Option<UplinkStatus>,
    /// Records stored and not yet confirmed by the platform.
    pub backlog: Backlog,
    /// Each configured instrument.
    pub instruments: Vec<InstrumentStatus>,
    /// Alerts raised at this point that no operator has acknowledged,
    /// most severe first.
    pub alerts: Vec<crate::rapid::AlertRow>,
    /// Why the alerts could not be read, when they could not: then
    /// `alerts` is empty and says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_error: Option<String>,
    /// Control orders in force.
    #[serde(default)]
    pub active_orders: usize,
}

/// The uplink's connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// Connected to the broker now.
    pub connected: bool,
    /// `host:port` of the broker.
    pub broker: String,
    /// Since when it is connected (or not), ms since the Unix epoch.
    pub since_ms: Option<i64>,
    /// Connections made since the agent started.
    pub connections: u64,
    /// Why the last connection ended or the last attempt failed.
    pub last_error: Option<String>,
}

/// The store's unconfirmed records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Backlog {
    /// Records held.
    pub records: u64,
    /// Bytes of signed records held.
    pub bytes: u64,
    /// Capture time of the oldest record held.
    pub oldest_captured_ms: Option<i64>,
    /// The chain head's seq.
    pub head_seq: Option<u64>,
    /// Records confirmed per second over the last few seconds, while
    /// records are held.
    pub drain_per_sec: Option<f64>,
}

/// One instrument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstrumentStatus {
    /// Its id.
    pub id: String,
    /// Its driver.
    pub driver: String,
    /// Where it is (port, input device, TCP address).
    pub location: String,
    /// Whether its device is open now.
    pub attached: bool,
    /// Capture time of its last record stored since the agent started.
    pub last_reading_ms: Option<i64>,
    /// That record's seq.
    pub last_seq: Option<u64>,
    /// Bytes received.
    pub bytes: u64,
    /// Readings (and scans) stored.
    pub readings: u64,
    /// Frames that could not be used.
    pub errors: u64,
    /// Times the device was opened.
    pub attach_count: u64,
    /// Times it went away.
    pub detach_count: u64,
    /// A `modbus` bus's devices, each asked at least once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceStatus>,
    /// A `node` instrument's sensor node, once it has said hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeView>,
}

/// One Modbus device on a bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its name in the config.
    pub name: String,
    /// Its address.
    pub address: u8,
    /// Whether it answers; absent until it was first asked.
    pub answering: Option<bool>,
    /// When it last answered validly, ms since the Unix epoch.
    pub last_success_ms: Option<i64>,
    /// Valid answers.
    pub answers: u64,
    /// Exception answers and mismatched echoes.
    pub errors: u64,
    /// Tries without a valid answer.
    pub timeouts: u64,
}

/// A sensor node as its driver last heard of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id, from its hello.
    pub node: String,
    /// Its firmware version.
    pub firmware: String,
    /// Samples in its buffer and the buffer's size, from its last status.
    pub buffered: Option<(u16, u16)>,
    /// Samples it dropped since its boot (its buffer overflowed).
    pub dropped: u32,
    /// Samples it sent again since its boot.
    pub retransmitted: u32,
    /// Its alarm output as it last reported it: 0 off, else the level.
    pub alarm: Option<u8>,
}

impl DeviceStatus {
    fn from_state(state: crate::modbus::DeviceState) -> DeviceStatus {
        let health = state.health;
        DeviceStatus {
            name: state.name,
            address: state.address,
            answering: health.answering,
            last_success_ms: health.last_success.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }),
            answers: health.answers,
            errors: health.errors,
            timeouts: health.timeouts,
        }
    }
}

impl NodeView {
    fn of(instrument: &str) -> Option<NodeView> {
        let status = crate::node::handle(instrument)?.status();
        Some(NodeView {
            node: status.node?,
            firmware: status.firmware.unwrap_or_default(),
            buffered: status.buffered,
            dropped: status.dropped,
            retransmitted: status.retransmitted,
            alarm: status.alarm,
        })
    }
}

/// One stored record, as `kouan tail` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailRecord {
    /// Its seq.
    pub seq: u64,
    /// Its kind (`reading`, `scan`, `checkpoint`, ...).
    pub kind: String,
    /// Its instrument, or `_agent`.
    pub instrument: String,
    /// Capture time, ms since the Unix epoch.
    pub captured_ms: i64,
    /// Sample or batch id, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// The values of a reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<TailValue>,
    /// The code of a scan, in human-readable form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Flags and problems worth showing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One value of a reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailValue {
    /// What was measured.
    pub name: String,
    /// The value, as text.
    pub value: String,
    /// Its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Its flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// The first line of the tail stream: the subscription is in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailHeader {
    /// [`STATUS_VERSION`].
    pub v: u32,
    /// Always true.
    pub tail: bool,
}

/// A line of the tail stream: a record, or records it could not show.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TailLine {
    /// A record made durable.
    Record(TailRecord),
    /// Records confirmed and deleted before they could be read, or lost
    /// by a slow client: `from..=to`.
    Skipped {
        /// First seq not shown.
        from: u64,
        /// Last seq not shown.
        to: u64,
    },
}

impl TailRecord {
    /// What a stored record shows; the body is decoded only for readings
    /// and scans, and a body that does not decode is shown without values.
    pub fn from_stored(stored: &StoredRecord) -> TailRecord {
        let mut line = TailRecord {
            seq: stored.seq,
            kind: stored.kind.clone(),
            instrument: stored.instrument.clone(),
            captured_ms: stored.captured_ms,
            sample: None,
            values: Vec::new(),
            code: None,
            notes: Vec::new(),
        };
        let Ok((_, payload)) = record::parse_unverified(&stored.bytes) else {
            line.notes.push("payload does not decode".into());
            return line;
        };
        match payload.kind {
            Kind::Reading => {
                if let Ok(body) = payload.body.deserialized::<ReadingBody>() {
                    line.sample = body.sample;
                    line.notes = body.notes;
                    line.values = body
                        .values
                        .into_iter()
                        .map(|m| TailValue {
                            name: m.name,
                            value: match m.value {
                                MeasuredValue::Number(n) => record::number_text(n),
                                MeasuredValue::Text(t) => t,
                            },
                            unit: m.unit,
                            flags: m.flags,
                        })
                        .collect();
                }
            }
            Kind::Scan => {
                if let Ok(body) = payload.body.deserialized::<ScanBody>() {
                    line.code = Some(body.code);
                    line.notes.extend(body.problem);
                }
            }
            _ => {}
        }
        line
    }
}

/// What the server knows beyond the counters: each instrument's last
/// record, and samples of the backlog to tell how fast it drains.
#[derive(Debug, Default)]
struct Seen {
    last: HashMap<String, (i64, u64)>,
    /// (when, records held, head seq), one a second, the last ten seconds.
    samples: VecDeque<(Instant, u64, u64)>,
}

/// Everything the server answers from; shared by its tasks.
#[derive(Debug)]
struct Hub {
    node: String,
    site: String,
    started_ms: i64,
    uplink: Option<Arc<UplinkState>>,
    rapid: Option<Arc<crate::rapid::Rapid>>,
    instruments: Vec<(InstrumentConfig, Arc<Counters>)>,
    writer: Writer,
    seen: Mutex<Seen>,
    /// Records for tail clients. 1024 lines of slack: a client slower
    /// than the store for longer than that is told what it missed.
    tail: broadcast::Sender<Arc<TailLine>>,
}

/// Serves the status socket until `shutdown` turns true, then removes it.
///
/// `counters` are the instruments' counters in the order of
/// `config.instruments`, as [`crate::instrument::spawn`] returned them.
/// Returns `None` (after logging why) when the socket cannot be bound; the
/// agent runs on.
pub fn serve(
    config: &Config,
    writer: &Writer,
    counters: Vec<Arc<Counters>>,
    uplink: Arc<UplinkState>,
    rapid: Option<Arc<crate::rapid::Rapid>>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let instruments = config.instruments.iter().cloned().zip(counters).collect();
    let uplink = config.uplink.is_some().then_some(uplink);
    let path = socket_path(config);
    let listener = match bind(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "status socket not served: `kouan status` will not answer");
            return None;
        }
    };
    tracing::info!(socket = %path.display(), "serving status");
    let (tail, _) = broadcast::channel(1024);
    let hub = Arc::new(Hub {
        node: config.agent.node.clone(),
        site: config.agent.site.clone(),
        started_ms: unix_ms(),
        uplink,
        rapid,
        instruments,
        writer: writer.clone(),
        seen: Mutex::default(),
        tail,
    });
    let store_path = config.store.path.clone();
    Some(tokio::spawn(async move {
        let follower = tokio::spawn(follow(hub.clone(), store_path, shutdown.clone()));
        let sampler = tokio::spawn(sample(hub.clone(), shutdown.clone()));
        accept(&hub, &listener, &path, shutdown).await;
        let _ = std::fs::remove_file(&path);
        follower.abort();
        sampler.abort();
    }))
}

/// Binds the socket, mode 0660; a socket left by an agent that died is
/// replaced, one that answers is not.
fn bind(path: &Path) -> Result<UnixListener, StatusError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| StatusError::Io {
        path: path.to_owned(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(StatusError::InUse(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    Ok(listener)
}

async fn accept(
    hub: &Arc<Hub>,
    listener: &UnixListener,
    path: &Path,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::instrument::stopping(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let hub = hub.clone();
                    let mut shutdown = shutdown.clone();
                    // A session ends when the agent stops, even one blocked
                    // writing to a client that stopped reading: the hub
                    // holds a writer handle, and the writer thread ends only
                    // when every handle is gone.
                    tokio::spawn(async move {
                        tokio::select! {
                            ended = client_session(&hub, stream, shutdown.clone()) => {
                                if let Err(error) = ended {
                                    tracing::debug!(%error, "status client ended");
                                }
                            }
                            _ = crate::instrument::stopping(&mut shutdown) => {}
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, socket = %path.display(), "status socket accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The request a client sends.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    request: String,
}

async fn client_session(
    hub: &Hub,
    stream: UnixStream,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "no request within 5 s"))??;
    let request = serde_json::from_str::<Request>(line.trim()).map(|r| r.request);
    match request.as_deref() {
        Ok("status") => {
            let status = hub.status().await;
            write_json(&mut write, &status).await
        }
        Ok("tail") => {
            // Subscribed before anything is written: the client sees every
            // record made durable after its request was read.
            let mut records = hub.tail.subscribe();
            let header = TailHeader {
                v: STATUS_VERSION,
                tail: true,
            };
            write_json(&mut write, &header).await?;
            loop {
                let line = tokio::select! {
                    _ = crate::instrument::stopping(&mut shutdown) => return Ok(()),
                    line = records.recv() => line,
                };
                match line {
                    Ok(line) => write_json(&mut write, &*line).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let lagged = serde_json::json!({"lagged": missed});
                        write_json(&mut write, &lagged).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        _ => {
            let error = serde_json::json!({
                "error": "unknown request: send {\"request\":\"status\"} or {\"request\":\"tail\"}"
            });
            write_json(&mut write, &error).await
        }
    }
}

async fn write_json<T: Serialize + ?Sized>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &T,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

impl Hub {
    async fn status(&self) -> Status {
        let (alerts, alerts_error) = match self.rapid.clone() {
            Some(rapid) => match tokio::task::spawn_blocking(move || rapid.active_alerts()).await {
                Ok(Ok(alerts)) => (alerts, None),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "status: the alert database could not be read");
                    (Vec::new(), Some(error.to_string()))
                }
                Err(error) => (Vec::new(), Some(error.to_string())),
            },
            None => (Vec::new(), None),
        };
        // The counters before the store's statistics: every reading counted
        // is then in the backlog or already confirmed, never missing.
        let instruments = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            self.instruments
                .iter()
                .map(|(config, counters)| {
                    let [bytes, readings, errors, attached, detached] = counters.snapshot();
                    let last = seen.last.get(&config.id);
                    InstrumentStatus {
                        id: config.id.clone(),
                        driver: driver_name(config),
                        location: config.location(),
                        attached: attached > detached,
                        last_reading_ms: last.map(|(ms, _)| *ms),
                        last_seq: last.map(|(_, seq)| *seq),
                        bytes,
                        readings,
                        errors,
                        attach_count: attached,
                        detach_count: detached,
                        devices: crate::modbus::health(&config.id)
                            .into_iter()
                            .map(DeviceStatus::from_state)
                            .collect(),
                        node: NodeView::of(&config.id),
                    }
                })
                .collect()
        };
        let stats = tokio::time::timeout(Duration::from_secs(2), self.writer.stats()).await;
        let stats = match stats {
            Ok(Ok(stats)) => Some(stats),
            Ok(Err(error)) => {
                tracing::warn!(%error, "status: the writer gave no store statistics");
                None
            }
            Err(_) => {
                tracing::warn!("status: the writer gave no store statistics within 2 s");
                None
            }
        };
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let backlog = stats.map_or_else(Backlog::default, |stats| Backlog {
            records: stats.records,
            bytes: stats.bytes,
            oldest_captured_ms: stats.oldest_captured_ms,
            head_seq: stats.head,
            drain_per_sec: (stats.records > 0)
                .then(|| drain_rate(&seen.samples))
                .flatten(),
        });
        Status {
            v: STATUS_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: self.node.clone(),
            site: self.site.clone(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            now_ms: unix_ms(),
            uplink: self.uplink.as_ref().map(|u| u.snapshot()),
            backlog,
            instruments,
            alerts,
            alerts_error,
            active_orders: self.rapid.as_ref().map_or(0, |r| r.active_orders()),
        }
    }
}

fn driver_name(config: &InstrumentConfig) -> String {
    // The config's own spelling (`snake_case`), from its Debug name.
    format!("{:?}", config.driver).to_lowercase()
}

/// Records confirmed per second between the oldest and newest sample:
/// what the head grew by, less what the backlog grew by.
fn drain_rate(samples: &VecDeque<(Instant, u64, u64)>) -> Option<f64> {
    let (t0, records0, head0) = *samples.front()?;
    let (t1, records1, head1) = *samples.back()?;
    let secs = t1.duration_since(t0).as_secs_f64();
    if secs < 0.5 {
        return None;
    }
    let confirmed = (head1 + records0).saturating_sub(head0 + records1);
    Some(confirmed as f64 / secs)
}

/// Samples the backlog once a second for the drain rate.
async fn sample(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = crate::instrument::stopping(&mut shutdown) => return,
            _ = tick.tick() => {}
        }
        let Ok(Ok(stats)) = tokio::time::timeout(tick.period(), hub.writer.stats()).await else {
            continue;
        };
        let mut seen = hub.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.samples.push_back((
            Instant::now(),
            stats.records,
            stats.head.unwrap_or_default(),
        ));
        while seen.samples.len() > 10 {
            seen.samples.pop_front();
        }
    }
}

/// Reads each record the writer makes durable: the instruments' last
/// readings, and the tail stream while anyone listens.
async fn follow(hub: Arc<Hub>, store_path: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let reader = match Store::open_read_only(&store_path) {
        Ok(reader) => reader,
        Err(error) => {
            tracing::error!(%error, "status cannot read the store: no last readings, no tail");
            return;
        }
    };
    let mut head = hub.writer.head();
    let mut next = *head.borrow() + 1;
    loop {
        tokio::select! {
            _ = crate::instrument::stopping(&mut shutdown) => return,
            changed = head.changed() => if changed.is_err() { return },
        }
        let through = *head.borrow_and_update();
        while next <= through {
            // A short synchronous read, as the uplink does.
            let page = tokio::task::block_in_place(|| reader.read_from(next, PAGE));
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "status could not read new records");
                    break;
                }
            };
            let first = page.first().map_or(through + 1, |r| r.seq);
            if first > next {
                let skipped = TailLine::Skipped {
                    from: next,
                    to: first - 1,
                };
                let _ = hub.tail.send(Arc::new(skipped));
                next = first;
            }
            for stored in &page {
                hub.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last
                    .insert(stored.instrument.clone(), (stored.captured_ms, stored.seq));
                if hub.tail.receiver_count() > 0 {
                    let line = TailLine::Record(TailRecord::from_stored(stored));
                    let _ = hub.tail.send(Arc::new(line));
                }
                next = stored.seq + 1;
            }
            if page.is_empty() {
                break;
            }
        }
    }
}

/// Connects to the status socket and sends `request`; the reader yields
/// the answer's lines.
pub async fn connect(
    path: &Path,
    request: &str,
) -> Result<tokio::io::Lines<BufReader<UnixStream>>, StatusError> {
    let io = |source| StatusError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io)?;
    let mut line = serde_json::to_vec(&Request {
        request: request.to_owned(),
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    Ok(BufReader::new(stream).lines())
}

/// Asks the agent at `path` for its status.
pub async fn fetch(path: &Path) -> Result<Status, StatusError> {
    let mut lines = connect(path, "status").await?;
    let line = lines
        .next_line()
        .await
        .map_err(|source| StatusError::Io {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| StatusError::Protocol {
            path: path.to_owned(),
            message: "the agent closed the socket without an answer".into(),
        })?;
    serde_json::from_str(&line).map_err(|e| StatusError::Protocol {
        path: path.to_owned(),
        message: format!("{e}: {line}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_rate_counts_confirmed_records_not_new_ones() {
        let t0 = Instant::now();
        let samples = VecDeque::from([
            (t0, 1000, 1000),
            // Two seconds later: 100 new records, 900 fewer held.
            (t0 + Duration::from_secs(2), 200, 1100),
        ]);
        assert_eq!(drain_rate(&samples), Some(450.0));
    }

    #[test]
    fn drain_rate_needs_time_between_samples() {
        let t0 = Instant::now();
        let samples = VecDeque::from([(t0, 10, 10)]);
        assert_eq!(drain_rate(&samples), None);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kouan.sock");
        std::fs::write(&path, b"").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let listener = bind(&path).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660);
            assert!(matches!(bind(&path), Err(StatusError::InUse(_))));
            drop(listener);
        });
    }
}
