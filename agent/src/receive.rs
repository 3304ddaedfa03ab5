//! `kouan receive`: the platform's side, as a reference and a test peer.
//!
//! It subscribes to every agent's records, verifies each one with the key
//! registered for the agent named in the topic, refuses records whose signed
//! `node` differs from the topic, drops duplicates by `(stream, seq)`,
//! reports two different records with the same seq, keeps what it accepts
//! in its own SQLite database, and confirms with a signed, retained ack
//! watermark per agent once the records are durable there. When a stream
//! has a hole that does not fill, it asks the agent to replay.
//!
//! Every event is one line on stdout (`accepted NODE SEQ KIND`, `duplicate
//! NODE SEQ`, `rejected NODE TOPIC: REASON`, ...), so tests and operators can
//! follow it; `docs/platform.md` describes what a production platform must
//! do the same way. A sensor node's drop record (samples it lost while its
//! buffer was full, `docs/node-driver.md`) is a reading like any other to
//! the chain; it also gets a `node-gap` line, since it is the only word the
//! platform gets of those samples. [`kept`] reads back what a receiver
//! stored.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rusqlite::{Connection, OptionalExtension as _, params};
use serde_bytes::ByteBuf;
use tokio::sync::watch;

use crate::clock::unix_ms;
use crate::config::TlsSection;
use crate::keys::{PublicKey, SigningKey};
use crate::node::NodeFields;
use crate::platform::{self, Ack, Command, Death, HostState, MESSAGE_VERSION};
use crate::record::{self, GapBody, Kind};

/// How the receiver connects and where it keeps things.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS files; `None` for plain TCP on loopback.
    pub tls: Option<TlsSection>,
    /// MQTT client id (a persistent session: the broker queues while we are away).
    pub client_id: String,
    /// Directory of agents' public keys, one `NODE.pub` (SPKI PEM) each.
    pub keys_dir: PathBuf,
    /// The platform's private key: signs acks and commands.
    pub platform_key: PathBuf,
    /// Where accepted records are kept.
    pub store: PathBuf,
    /// Publish this host id's online state (agents gate on it).
    pub host_id: Option<String>,
    /// How often acks are committed and published.
    pub ack_interval: Duration,
    /// How long a hole may stay open before a replay is asked.
    pub replay_after: Duration,
    /// A directory watched for control orders to sign and publish.
    pub orders_dir: Option<PathBuf>,
}

/// What the receiver knows of one stream of one agent.
#[derive(Debug, Default)]
struct StreamState {
    /// Every seq up to this one is stored or explained by a gap record.
    watermark: Option<u64>,
    /// Seqs above the watermark that arrived.
    above: BTreeSet<u64>,
    /// Ranges that gap records say are lost.
    explained: Vec<(u64, u64)>,
    /// The watermark last published.
    acked: Option<u64>,
    /// When the watermark last moved (or the hole was last asked about).
    progress: Option<Instant>,
}

impl StreamState {
    fn next(&self) -> u64 {
        self.watermark.map_or(0, |w| w + 1)
    }

    /// Moves the watermark over everything contiguous.
    fn advance(&mut self) {
        loop {
            let next = self.next();
            if self.above.remove(&next) {
                self.watermark = Some(next);
                continue;
            }
            if let Some(&(_, to)) = self
                .explained
                .iter()
                .find(|(f, t)| *f <= next && next <= *t)
            {
                self.watermark = Some(to);
                self.above = self.above.split_off(&(to + 1));
                continue;
            }
            break;
        }
    }
}

/// A row of `received`: node, stream, seq, kind, bytes.
type StoredRow = (String, Vec<u8>, i64, String, Vec<u8>);

/// The receiver.
struct Receiver {
    config: ReceiveConfig,
    db: Connection,
    platform: SigningKey,
    keys: HashMap<String, Option<PublicKey>>,
    streams: HashMap<(String, Vec<u8>), StreamState>,
    /// The newest stream seen per node: acks and replays go to it.
    current: HashMap<String, Vec<u8>>,
    in_transaction: bool,
}

/// Runs the receiver until `shutdown` turns true.
pub async fn run(config: ReceiveConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let platform = SigningKey::load(&config.platform_key)?;
    let db = open_db(&config.store)?;
    let mut receiver = Receiver {
        config: config.clone(),
        db,
        platform,
        keys: HashMap::new(),
        streams: HashMap::new(),
        current: HashMap::new(),
        in_transaction: false,
    };
    receiver.load()?;

    let mut backoff = Duration::from_millis(200);
    loop {
        let (client, eventloop) = receiver.client()?;
        // Polled in its own task: a cancelled poll can break the connection.
        let mut events = crate::uplink::Poller::spawn(eventloop);
        let mut tick = tokio::time::interval(config.ack_interval);
        let lost = loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    receiver.commit_and_ack(&client)?;
                    receiver.goodbye(&client);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while events.next().await.is_ok() {}
                    }).await;
                    return Ok(());
                }
                event = events.next() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(200);
                        receiver.on_connect(&client)?;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        receiver.on_publish(&p.topic, &p.payload)?;
                    }
                    Ok(_) => {}
                    Err(error) => break error,
                },
                _ = tick.tick() => {
                    receiver.commit_and_ack(&client)?;
                    receiver.ask_replays(&client)?;
                    receiver.publish_orders(&client)?;
                }
            }
        };
        receiver.commit()?;
        tracing::warn!(error = %lost, "receiver lost the broker; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn open_db(path: &Path) -> anyhow::Result<Connection> {
    let db = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS received (
             node TEXT NOT NULL,
             stream BLOB NOT NULL,
             seq INTEGER NOT NULL,
             kind TEXT NOT NULL,
             hash BLOB NOT NULL,
             bytes BLOB NOT NULL,
             PRIMARY KEY (node, stream, seq)
         );",
    )
    .with_context(|| format!("preparing {}", path.display()))?;
    Ok(db)
}

/// The signed bytes of the records the receiver's store at `path` holds
/// for `node`, in stream and seq order: what it accepted, read back
/// without disturbing a receiver that is running.
pub fn kept(path: &Path, node: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let db = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening {} read-only", path.display()))?;
    let mut query = db
        .prepare("SELECT bytes FROM received WHERE node = ?1 ORDER BY stream, seq")
        .with_context(|| format!("reading {}", path.display()))?;
    let rows = query
        .query_map([node], |r| r.get(0))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(rows)
}

/// One line on stdout per event.
fn event(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a sensor node's drop record: samples the node never numbered,
/// so no seq of theirs will ever be missing; this is their only trace.
fn node_gap(node: &str, instrument: &str, fields: &NodeFields, dropped: u32, total: u32) {
    // The driver always knows the sample that followed the gap; a record
    // without it still says how many were lost.
    let before = fields
        .before
        .map_or_else(|| "-".to_owned(), |b| b.to_string());
    event(format_args!(
        "node-gap {node} {instrument} node={} boot={} dropped={dropped} total={total} before={before}",
        fields.id, fields.boot
    ));
    tracing::warn!(
        node,
        instrument,
        sensor_node = %fields.id,
        boot = fields.boot,
        dropped,
        dropped_total = total,
        before = fields.before,
        "a sensor node lost samples while its buffer was full"
    );
}

impl Receiver {
    fn client(&self) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
        let mut options =
            MqttOptions::new(&self.config.client_id, &self.config.host, self.config.port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(false);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some(host) = &self.config.host_id {
            let offline = self.host_state(host, false)?;
            let topic = platform::host_state_topic(host);
            options.set_last_will(LastWill::new(topic, offline, QoS::AtLeastOnce, true));
        }
        if let Some(tls) = &self.config.tls {
            let config = crate::tls::client_config(tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        eventloop.network_options.set_connection_timeout(10);
        Ok((client, eventloop))
    }

    fn host_state(&self, host: &str, online: bool) -> anyhow::Result<Vec<u8>> {
        let state = HostState {
            v: MESSAGE_VERSION,
            kind: "host".into(),
            host: host.to_owned(),
            online,
            time: unix_ms(),
        };
        Ok(platform::sign(&state, &self.platform)?)
    }

    fn on_connect(&mut self, client: &AsyncClient) -> anyhow::Result<()> {
        for filter in ["kouan/v1/+/rec/#", "kouan/v1/+/alert", "kouan/v1/+/state"] {
            client.try_subscribe(filter, QoS::AtLeastOnce)?;
        }
        if let Some(host) = &self.config.host_id {
            let online = self.host_state(host, true)?;
            client.try_publish(
                platform::host_state_topic(host),
                QoS::AtLeastOnce,
                true,
                online,
            )?;
        }
        tracing::info!(broker = %self.config.host, "receiver connected");
        Ok(())
    }

    fn goodbye(&self, client: &AsyncClient) {
        if let Some(host) = &self.config.host_id
            && let Ok(offline) = self.host_state(host, false)
        {
            let _ = client.try_publish(
                platform::host_state_topic(host),
                QoS::AtLeastOnce,
                true,
                offline,
            );
        }
        let _ = client.try_disconnect();
    }

    /// Rebuilds the stream states from the database.
    fn load(&mut self) -> anyhow::Result<()> {
        let mut query = self.db.prepare(
            "SELECT node, stream, seq, kind, bytes FROM received ORDER BY node, stream, seq",
        )?;
        let rows: Vec<StoredRow> = query
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(query);
        for (node, stream, seq, kind, bytes) in rows {
            let state = self
                .streams
                .entry((node.clone(), stream.clone()))
                .or_default();
            state.above.insert(seq as u64);
            if kind == "gap"
                && let Ok((_, payload)) = record::parse_unverified(&bytes)
                && let Ok(gap) = payload.body.deserialized::<GapBody>()
            {
                state.explained.push((gap.from, gap.to));
            }
            state.advance();
            state.acked = state.watermark;
            self.current.insert(node, stream);
        }
        Ok(())
    }

    fn key(&mut self, node: &str) -> Option<PublicKey> {
        let dir = &self.config.keys_dir;
        self.keys
            .entry(node.to_owned())
            .or_insert_with(|| {
                if !crate::config::is_topic_segment(node) {
                    return None;
                }
                PublicKey::load(&dir.join(format!("{node}.pub"))).ok()
            })
            .clone()
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let Some(node) = platform::topic_node(topic).map(str::to_owned) else {
            return Ok(());
        };
        let Some(key) = self.key(&node) else {
            event(format_args!(
                "rejected {node} {topic}: no registered key for this node"
            ));
            tracing::warn!(node, topic, "record from a node without a registered key");
            return Ok(());
        };
        let keys = std::slice::from_ref(&key);
        if topic.ends_with("/state")
            && let Ok(death) = platform::open::<Death>(payload, keys, "death")
        {
            if death.node == node {
                event(format_args!("death {node} {}", death.session));
            } else {
                event(format_args!(
                    "rejected {node} {topic}: death message names {}",
                    death.node
                ));
            }
            return Ok(());
        }
        let verified = match record::verify(payload, keys) {
            Ok(verified) => verified,
            Err(error) => {
                event(format_args!("rejected {node} {topic}: {error}"));
                tracing::warn!(node, topic, %error, "rejected a record");
                return Ok(());
            }
        };
        let p = &verified.payload;
        if p.node != node {
            event(format_args!(
                "rejected {node} {topic}: record is signed for node {}",
                p.node
            ));
            tracing::warn!(node, signed_for = %p.node, "rejected a record published under another node's topic");
            return Ok(());
        }

        let stream = p.stream.to_vec();
        let existing: Option<Vec<u8>> = self
            .db
            .query_row(
                "SELECT hash FROM received WHERE node = ?1 AND stream = ?2 AND seq = ?3",
                params![node, stream, p.seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(hash) if hash == verified.hash => {
                event(format_args!("duplicate {node} {}", p.seq));
                return Ok(());
            }
            Some(_) => {
                event(format_args!(
                    "conflict {node} {}: two different records with this seq",
                    p.seq
                ));
                tracing::error!(node, seq = p.seq, "two different records with the same seq");
                return Ok(());
            }
            None => {}
        }
        if !self.in_transaction {
            self.db.execute_batch("BEGIN")?;
            self.in_transaction = true;
        }
        self.db.execute(
            "INSERT INTO received (node, stream, seq, kind, hash, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![node, stream, p.seq as i64, p.kind.as_str(), &verified.hash[..], payload],
        )?;

        let state = self
            .streams
            .entry((node.clone(), stream.clone()))
            .or_default();
        state.above.insert(p.seq);
        state.progress.get_or_insert_with(Instant::now);
        if p.kind == Kind::Gap
            && let Ok(gap) = p.body.deserialized::<GapBody>()
        {
            event(format_args!(
                "gap {node} {}-{} {:?}",
                gap.from, gap.to, gap.reason
            ));
            state.explained.push((gap.from, gap.to));
        }
        if p.kind == Kind::Reading
            && let Some(fields) = NodeFields::from_body(&p.body)
            && let (Some(dropped), Some(total)) = (fields.dropped, fields.dropped_total)
        {
            node_gap(&node, &p.instrument, &fields, dropped, total);
        }
        let before = state.watermark;
        state.advance();
        if state.watermark != before {
            state.progress = Some(Instant::now());
        }
        let newer = match self.current.get(&node) {
            Some(current) => current != &stream && p.kind == Kind::Genesis,
            None => true,
        };
        if newer {
            self.current.insert(node.clone(), stream);
        }
        event(format_args!(
            "accepted {node} {} {}",
            p.seq,
            p.kind.as_str()
        ));
        Ok(())
    }

    /// Signs and publishes, retained, each order file (`*.toml`) in the
    /// orders directory, then renames it `*.toml.published`. A file that
    /// does not parse is renamed `*.toml.rejected` and reported.
    fn publish_orders(&mut self, client: &AsyncClient) -> anyhow::Result<()> {
        let Some(dir) = &self.config.orders_dir else {
            return Ok(());
        };
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the orders directory {}", dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for file in files {
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    toml::from_str::<crate::rapid::order::OrderFile>(&text)
                        .map_err(|e| e.to_string())
                });
            let mut done = file.clone().into_os_string();
            match parsed {
                Ok(order) => {
                    let order = order.order(unix_ms());
                    if let Err(reason) = order.validate() {
                        event(format_args!("order-rejected {}: {reason}", file.display()));
                        done.push(".rejected");
                    } else {
                        let bytes = platform::sign(&order, &self.platform)?;
                        let topic = platform::order_topic(&order.id);
                        client.try_publish(topic, QoS::AtLeastOnce, true, bytes)?;
                        event(format_args!(
                            "order-published {} issued {}{}",
                            order.id,
                            order.issued,
                            if order.revoked { " revoked" } else { "" }
                        ));
                        done.push(".published");
                    }
                }
                Err(reason) => {
                    event(format_args!("order-rejected {}: {reason}", file.display()));
                    done.push(".rejected");
                }
            }
            std::fs::rename(&file, &done)
                .with_context(|| format!("renaming {}", file.display()))?;
        }
        Ok(())
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        if self.in_transaction {
            self.db.execute_batch("COMMIT")?;
            self.in_transaction = false;
        }
        Ok(())
    }

    /// Makes accepted records durable, then confirms them to their agents.
    fn commit_and_ack(&mut self, client: &AsyncClient) -> anyhow::Result<()> {
        self.commit()?;
        let mut acks = Vec::new();
        for (node, stream) in &self.current {
            if let Some(state) = self.streams.get_mut(&(node.clone(), stream.clone()))
                && let Some(watermark) = state.watermark
                && state.acked != Some(watermark)
            {
                state.acked = Some(watermark);
                acks.push((node.clone(), stream.clone(), watermark));
            }
        }
        for (node, stream, seq) in acks {
            let ack = Ack {
                v: MESSAGE_VERSION,
                kind: "ack".into(),
                node: node.clone(),
                stream: ByteBuf::from(stream),
                seq,
                time: unix_ms(),
            };
            let bytes = platform::sign(&ack, &self.platform)?;
            let topic = platform::Topics::new(&node).ack();
            if client
                .try_publish(topic, QoS::AtLeastOnce, true, bytes)
                .is_ok()
            {
                event(format_args!("ack {node} {seq}"));
            }
        }
        Ok(())
    }

    /// Asks agents to replay holes that stayed open too long.
    fn ask_replays(&mut self, client: &AsyncClient) -> anyhow::Result<()> {
        let mut asks = Vec::new();
        for (node, stream) in &self.current {
            let Some(state) = self.streams.get_mut(&(node.clone(), stream.clone())) else {
                continue;
            };
            if state.above.is_empty() {
                continue;
            }
            let stalled = state
                .progress
                .is_none_or(|since| since.elapsed() >= self.config.replay_after);
            if stalled {
                state.progress = Some(Instant::now());
                // The hole ends just before the first seq that did arrive.
                let to = state.above.first().map(|first| first - 1);
                asks.push((node.clone(), state.next(), to));
            }
        }
        for (node, from, to) in asks {
            let mut id = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            let command = Command {
                v: MESSAGE_VERSION,
                kind: "command".into(),
                node: node.clone(),
                verb: "replay".into(),
                id: hex::encode(id),
                issued: unix_ms(),
                from: Some(from),
                to,
            };
            let bytes = platform::sign(&command, &self.platform)?;
            let topic = platform::Topics::new(&node).command("replay");
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, bytes)
                .is_ok()
            {
                event(format_args!("replay {node} {from}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_reads_back_one_node_in_stream_and_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.db");
        let db = open_db(&path).unwrap();
        let rows: [(&str, u8, i64, &[u8]); 4] = [
            ("gy-air-01", 2, 0, b"second stream"),
            ("gy-air-01", 1, 1, b"seq 1"),
            ("gy-rail-01", 1, 0, b"another node"),
            ("gy-air-01", 1, 0, b"seq 0"),
        ];
        for (node, stream, seq, bytes) in rows {
            db.execute(
                "INSERT INTO received (node, stream, seq, kind, hash, bytes) \
                 VALUES (?1, ?2, ?3, 'reading', x'00', ?4)",
                params![node, [stream; 16], seq, bytes],
            )
            .unwrap();
        }

        let expected: [&[u8]; 3] = [b"seq 0", b"seq 1", b"second stream"];
        assert_eq!(kept(&path, "gy-air-01").unwrap(), expected);
        assert!(kept(&path, "nobody").unwrap().is_empty());
    }
}
