//! The MQTT uplink: at-least-once delivery that the platform confirms.
//!
//! The store is the session. The uplink reads records from it, oldest
//! first, publishes them with QoS 1 and keeps at most `inflight` of them
//! unacknowledged by the broker. A broker's PUBACK only paces that window:
//! mosquitto acknowledges publishes that it then drops (ACL denial, a full
//! subscriber queue). Records leave the store when the platform's signed,
//! retained ack watermark covers them (`delivery = "platform"`), or on
//! PUBACK where no platform can ack (`delivery = "broker"`, weaker).
//!
//! rumqttc silently drops unacknowledged publishes on reconnect, so after
//! any connection error the client and its event loop are thrown away, and
//! everything not yet confirmed is sent again from the store on the next
//! connection, oldest first, after a jittered exponential backoff.
//! Duplicates are expected and carry the same `(stream, seq)`.
//!
//! Within a connection, records written after it began (live records) go
//! ahead of the backlog, and alerts go ahead of both; the backlog is read
//! page by page, so memory stays flat whatever its size.
//!
//! rumqttc's `EventLoop::poll` is not safe to cancel (a cancelled poll can
//! abandon a half-made connection, whose last will the broker then
//! publishes), so a small task per connection does nothing but poll it and
//! forward the events over a channel. One uplink task makes every publishing
//! decision: it takes events from that channel and, between them, tops up
//! the in-flight window with `try_publish`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::watch;

use crate::clock::{CaptureTime, unix_ms};
use crate::config::{Delivery, UplinkSection};
use crate::keys::{PublicKey, SigningKey};
use crate::platform::{self, Ack, Command, Death, HostState, MESSAGE_VERSION, Topics};
use crate::record::{self, AGENT_INSTRUMENT, BirthBody, GapBody, GapReason, Kind};
use crate::store::{Store, StoredRecord};
use crate::writer::{Entry, Writer};

/// Records read from the store at a time.
const PAGE: usize = 256;

/// One in this many window slots goes to the backlog when live records wait too.
const BACKLOG_SHARE: u32 = 4;

/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Bytes an MQTT PUBLISH adds to a payload besides the topic (fixed header,
/// remaining length, topic length, packet id).
const PUBLISH_OVERHEAD: usize = 16;

/// Everything the uplink needs.
#[derive(Debug)]
pub struct Uplink {
    /// The `[uplink]` section.
    pub config: UplinkSection,
    /// The agent's id.
    pub node: String,
    /// The store database (the uplink opens its own read connection).
    pub store_path: PathBuf,
    /// The writer, for acknowledgements, births and gap records.
    pub writer: Writer,
    /// The agent's key, to sign the last will.
    pub key: Arc<SigningKey>,
    /// The platform's key, which acks, commands and host states must verify with.
    pub platform_key: Option<PublicKey>,
    /// Where the connection state is reported for `kouan status`.
    pub status: Arc<crate::status::UplinkState>,
    /// Where control orders go, once verified there.
    pub rapid: Option<Arc<crate::rapid::Rapid>>,
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// The state of one connection; dropped with it.
struct Session {
    client: AsyncClient,
    /// Publishes handed to the client, waiting for their packet id, in order.
    unassigned: VecDeque<Sent>,
    /// Packet ids waiting for their PUBACK.
    in_flight: HashMap<u16, Sent>,
    /// Records submitted and not yet PUBACKed: the window.
    window: usize,
    /// Next backlog seq to send; the backlog ends before `live_start`.
    backlog_next: u64,
    /// The end of the backlog: first seq written after the connection
    /// began, or the end of the hole a replay asked for.
    live_start: u64,
    /// Next live seq to send.
    live_next: u64,
    /// Alerts in the backlog, sent first.
    alerts: VecDeque<u64>,
    /// Backlog seqs already sent out of order (alerts, the birth).
    sent_early: HashSet<u64>,
    backlog_page: VecDeque<StoredRecord>,
    live_page: VecDeque<StoredRecord>,
    /// The highest seq sent in this connection.
    highest_sent: Option<u64>,
    /// When the platform's ack last moved (or records were last resent).
    ack_progress: std::time::Instant,
    /// Records set aside since the last tick.
    set_aside: Vec<u64>,
    /// Counts picks, to give the backlog its share.
    turn: u32,
    /// Whether the platform host (if one is configured) is online.
    host_online: bool,
    /// Whether this connection's birth went out.
    born: bool,
    session: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A record in the window.
    Record(u64),
    /// The birth record on the state topic, outside the window.
    Birth(u64),
}

impl Uplink {
    /// Runs until `shutdown` turns true: connects, sends, reconnects.
    ///
    /// Dropping the future loses nothing: unconfirmed records stay in the
    /// store and are sent on the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut reader = match Store::open_read_only(&self.store_path) {
            Ok(reader) => reader,
            Err(error) => {
                tracing::error!(%error, "uplink cannot read the store; stopped");
                return;
            }
        };
        let mut backoff = Duration::from_millis(500);
        let mut broker_acked = BrokerAcks::default();
        let mut commands_seen = VecDeque::new();
        let mut was_connected = true;
        loop {
            let session_id = unix_ms();
            let (client, eventloop) = match self.client(session_id) {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::error!(%error, "uplink cannot be configured; stopped");
                    return;
                }
            };
            let outcome = self
                .connection(
                    client,
                    eventloop,
                    session_id,
                    &mut reader,
                    &mut broker_acked,
                    &mut commands_seen,
                    &mut shutdown,
                    &mut backoff,
                    &mut was_connected,
                )
                .await;
            match outcome {
                End::Shutdown => break,
                End::Lost(error) => {
                    self.status.disconnected(&error);
                    if was_connected {
                        tracing::warn!(%error, broker = %self.config.host, "uplink disconnected; records stay in the store");
                        was_connected = false;
                    } else {
                        tracing::debug!(%error, "uplink connection attempt failed");
                    }
                }
            }
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    fn client(&self, session: i64) -> Result<(AsyncClient, EventLoop), String> {
        let topics = Topics::new(&self.node);
        let mut options = MqttOptions::new(&self.node, &self.config.host, self.config.port);
        options.set_keep_alive(Duration::from_secs(self.config.keep_alive_secs.max(5)));
        options.set_clean_session(true);
        options.set_inflight(self.config.inflight);
        options.set_max_packet_size(self.config.max_packet_bytes, self.config.max_packet_bytes);
        options.set_request_channel_capacity(usize::from(self.config.inflight) * 2 + 16);
        let death = Death {
            v: MESSAGE_VERSION,
            kind: "death".into(),
            node: self.node.clone(),
            session,
            time: unix_ms(),
        };
        let will = platform::sign(&death, &self.key).map_err(|e| e.to_string())?;
        options.set_last_will(LastWill::new(topics.state(), will, QoS::AtLeastOnce, true));
        if let Some(tls) = &self.config.tls {
            let config = crate::tls::client_config(tls).map_err(|e| e.to_string())?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        let (client, mut eventloop) =
            AsyncClient::new(options, usize::from(self.config.inflight) * 2 + 16);
        eventloop.network_options.set_connection_timeout(10);
        Ok((client, eventloop))
    }

    #[allow(clippy::too_many_arguments)]
    async fn connection(
        &self,
        client: AsyncClient,
        eventloop: EventLoop,
        session_id: i64,
        reader: &mut Store,
        broker_acked: &mut BrokerAcks,
        commands_seen: &mut VecDeque<String>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
        was_connected: &mut bool,
    ) -> End {
        let topics = Topics::new(&self.node);
        let mut events = Poller::spawn(eventloop);
        let mut head = self.writer.head();
        let mut writer_alive = true;
        let mut session: Option<Session> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut client = Some(client);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        if let Some(session) = &session {
                            self.goodbye(session, &mut events).await;
                        }
                        return End::Shutdown;
                    }
                }
                event = events.next() => {
                    let event = match event {
                        Ok(event) => event,
                        Err(error) => return End::Lost(error),
                    };
                    match event {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            let Some(client) = client.take() else {
                                return End::Lost("second CONNACK on one connection".into());
                            };
                            match self.start_session(client, session_id, reader, &topics) {
                                Ok(started) => session = Some(started),
                                Err(error) => return End::Lost(error),
                            }
                            *backoff = Duration::from_millis(500);
                            *was_connected = true;
                            let broker = format!("{}:{}", self.config.host, self.config.port);
                            self.status.connected(broker);
                            tracing::info!(broker = %self.config.host, port = self.config.port, "uplink connected");
                        }
                        Event::Incoming(Packet::PubAck(ack)) => {
                            if let Some(s) = &mut session
                                && let Some(sent) = s.in_flight.remove(&ack.pkid)
                            {
                                let seq = match sent {
                                    Sent::Record(seq) => {
                                        s.window -= 1;
                                        seq
                                    }
                                    Sent::Birth(seq) => seq,
                                };
                                if self.config.delivery == Delivery::Broker {
                                    broker_acked.insert(seq);
                                }
                            }
                        }
                        Event::Incoming(Packet::Publish(publish)) => {
                            if let Some(s) = &mut session {
                                self.on_message(s, reader, &publish.topic, &publish.payload, commands_seen).await;
                            }
                        }
                        Event::Outgoing(Outgoing::Publish(pkid)) => {
                            if let Some(s) = &mut session
                                && !s.in_flight.contains_key(&pkid)
                                && let Some(sent) = s.unassigned.pop_front()
                            {
                                s.in_flight.insert(pkid, sent);
                            }
                        }
                        _ => {}
                    }
                }
                changed = head.changed(), if writer_alive => {
                    // A stopped writer drops the sender; without this the
                    // branch would fire at once on every turn.
                    writer_alive = changed.is_ok();
                }
                _ = tick.tick() => {
                    if let Some(s) = &mut session {
                        for seq in s.set_aside.drain(..) {
                            broker_acked.insert(seq);
                        }
                        self.resend_if_unacknowledged(s, reader);
                    }
                    if self.config.delivery == Delivery::Broker
                        && let Some(through) = broker_acked.take_watermark(reader)
                        && let Err(error) = self.writer.acknowledge(through).await
                    {
                        tracing::warn!(%error, through, "could not delete records the broker acknowledged");
                    }
                }
            }
            if let Some(s) = &mut session {
                if !s.born
                    && s.host_online
                    && let Err(error) = self.birth(s, reader, &topics).await
                {
                    return End::Lost(error);
                }
                if s.born
                    && s.host_online
                    && let Err(error) = self.fill_window(s, reader, &topics).await
                {
                    return End::Lost(error);
                }
            }
        }
    }

    /// Subscribes and sets the cursors of a new connection.
    fn start_session(
        &self,
        client: AsyncClient,
        session: i64,
        reader: &mut Store,
        topics: &Topics,
    ) -> Result<Session, String> {
        reader.refresh().map_err(|e| e.to_string())?;
        let stats = reader.stats().map_err(|e| e.to_string())?;
        let head = reader.head().map_or(0, |h| h.seq);
        let first = stats.first.unwrap_or(head + 1);
        let alerts = reader
            .alerts_between(first, head)
            .map_err(|e| e.to_string())?;
        let mut filters = vec![topics.ack(), topics.commands()];
        if let Some(host) = &self.config.platform_host {
            filters.push(platform::host_state_topic(host));
        }
        if self.rapid.is_some() {
            filters.push(platform::ORDERS.to_owned());
        }
        for filter in filters {
            client
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| e.to_string())?;
        }
        Ok(Session {
            client,
            unassigned: VecDeque::new(),
            in_flight: HashMap::new(),
            window: 0,
            backlog_next: first,
            live_start: head + 1,
            live_next: head + 1,
            alerts: alerts.into(),
            sent_early: HashSet::new(),
            backlog_page: VecDeque::new(),
            live_page: VecDeque::new(),
            turn: 0,
            highest_sent: None,
            ack_progress: std::time::Instant::now(),
            set_aside: Vec::new(),
            host_online: self.config.platform_host.is_none(),
            born: false,
            session,
        })
    }

    /// Writes a birth record and publishes it, retained, on the state topic.
    async fn birth(
        &self,
        s: &mut Session,
        reader: &mut Store,
        topics: &Topics,
    ) -> Result<(), String> {
        reader.refresh().map_err(|e| e.to_string())?;
        let stats = reader.stats().map_err(|e| e.to_string())?;
        let head = reader.head().map_or(0, |h| h.seq);
        let body = BirthBody {
            session: s.session,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            delivery: match self.config.delivery {
                Delivery::Platform => "platform".into(),
                Delivery::Broker => "broker".into(),
            },
            first: stats.first.unwrap_or(head + 1),
            records: stats.records,
            bytes: stats.bytes,
        };
        let entry = Entry {
            instrument: AGENT_INSTRUMENT.into(),
            kind: Kind::Birth,
            time: CaptureTime::now(),
            body: record::body(&body).map_err(|e| e.to_string())?,
        };
        let seq = self
            .writer
            .append(entry)
            .await
            .map_err(|e| e.to_string())?
            .seq;
        let stored = reader.read_from(seq, 1).map_err(|e| e.to_string())?;
        let Some(birth) = stored.into_iter().next().filter(|r| r.seq == seq) else {
            return Err(format!("birth record seq {seq} is not in the store"));
        };
        s.client
            .try_publish(topics.state(), QoS::AtLeastOnce, true, birth.bytes)
            .map_err(|e| e.to_string())?;
        s.unassigned.push_back(Sent::Birth(seq));
        // The birth is part of the chain: it counts as sent in this session.
        s.sent_early.insert(seq);
        s.born = true;
        tracing::info!(session = s.session, seq, "published birth");
        Ok(())
    }

    /// Publishes the next records while the window has room.
    async fn fill_window(
        &self,
        s: &mut Session,
        reader: &mut Store,
        topics: &Topics,
    ) -> Result<(), String> {
        while s.window < usize::from(self.config.inflight) {
            let Some(record) = self.next_record(s, reader)? else {
                return Ok(());
            };
            let topic = match record.kind.as_str() {
                "alert" => topics.alert(),
                _ => topics.records(&record.instrument),
            };
            if record.bytes.len() + topic.len() + PUBLISH_OVERHEAD > self.config.max_packet_bytes {
                self.set_aside(&record).await?;
                // Its gap record stands in for it; in broker delivery that
                // is as good as a PUBACK.
                s.set_aside.push(record.seq);
                continue;
            }
            s.client
                .try_publish(topic, QoS::AtLeastOnce, false, record.bytes)
                .map_err(|e| e.to_string())?;
            s.unassigned.push_back(Sent::Record(record.seq));
            s.window += 1;
            s.highest_sent = s.highest_sent.max(Some(record.seq));
        }
        Ok(())
    }

    /// The next record to send: alerts first, then live records ahead of the
    /// backlog, except that every [`BACKLOG_SHARE`]th slot goes to the
    /// backlog, so that a steady live stream cannot starve it (the
    /// platform's watermark must keep moving, or it asks for replays).
    fn next_record(
        &self,
        s: &mut Session,
        reader: &mut Store,
    ) -> Result<Option<StoredRecord>, String> {
        while let Some(seq) = s.alerts.pop_front() {
            if let Some(record) = read(reader, seq, 1)?.into_iter().find(|r| r.seq == seq) {
                s.sent_early.insert(seq);
                return Ok(Some(record));
            }
        }
        s.turn = s.turn.wrapping_add(1);
        if s.turn.is_multiple_of(BACKLOG_SHARE)
            && let Some(record) = self.next_backlog(s, reader)?
        {
            return Ok(Some(record));
        }
        if let Some(record) = self.next_live(s, reader)? {
            return Ok(Some(record));
        }
        self.next_backlog(s, reader)
    }

    fn next_live(
        &self,
        s: &mut Session,
        reader: &mut Store,
    ) -> Result<Option<StoredRecord>, String> {
        loop {
            if s.live_page.is_empty() {
                let head = *self.writer.head().borrow();
                if s.live_next <= head {
                    s.live_page = read(reader, s.live_next, PAGE)?.into();
                }
            }
            let Some(record) = s.live_page.pop_front() else {
                return Ok(None);
            };
            s.live_next = record.seq + 1;
            if !s.sent_early.remove(&record.seq) {
                return Ok(Some(record));
            }
        }
    }

    fn next_backlog(
        &self,
        s: &mut Session,
        reader: &mut Store,
    ) -> Result<Option<StoredRecord>, String> {
        while s.backlog_next < s.live_start {
            if s.backlog_page.is_empty() {
                let limit = PAGE.min((s.live_start - s.backlog_next) as usize);
                s.backlog_page = read(reader, s.backlog_next, limit)?.into();
                if s.backlog_page.is_empty() {
                    s.backlog_next = s.live_start;
                    break;
                }
            }
            let Some(record) = s.backlog_page.pop_front() else {
                break;
            };
            s.backlog_next = record.seq + 1;
            if record.seq >= s.live_start {
                s.backlog_next = s.live_start;
                s.backlog_page.clear();
                break;
            }
            if !s.sent_early.remove(&record.seq) {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// A record too large for the broker: kept in a file beside the store,
    /// and explained to the platform with a gap record.
    async fn set_aside(&self, record: &StoredRecord) -> Result<(), String> {
        let mut dir = self.store_path.as_os_str().to_owned();
        dir.push(".set-aside");
        let dir = PathBuf::from(dir);
        let path = dir.join(format!("{}.cose", record.seq));
        if !path.exists() {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, &record.bytes))
                .map_err(|e| {
                    format!(
                        "setting record seq {} aside in {}: {e}",
                        record.seq,
                        dir.display()
                    )
                })?;
            let gap = GapBody {
                from: record.seq,
                to: record.seq,
                reason: GapReason::TooLarge,
            };
            let entry = Entry {
                instrument: AGENT_INSTRUMENT.into(),
                kind: Kind::Gap,
                time: CaptureTime::now(),
                body: record::body(&gap).map_err(|e| e.to_string())?,
            };
            self.writer.append(entry).await.map_err(|e| e.to_string())?;
        }
        tracing::error!(
            seq = record.seq,
            bytes = record.bytes.len(),
            max_packet_bytes = self.config.max_packet_bytes,
            path = %path.display(),
            "record too large for the broker: set aside (export it by hand); sent a gap record"
        );
        Ok(())
    }

    /// Handles a message from the platform: verified before it changes anything.
    async fn on_message(
        &self,
        s: &mut Session,
        reader: &mut Store,
        topic: &str,
        payload: &[u8],
        commands_seen: &mut VecDeque<String>,
    ) {
        let topics = Topics::new(&self.node);
        let Some(platform_key) = &self.platform_key else {
            tracing::warn!(
                topic,
                "message from the platform ignored: no platform_key configured"
            );
            return;
        };
        let keys = std::slice::from_ref(platform_key);
        if topic.starts_with("kouan/v1/orders/") || topic == topics.command("order") {
            self.on_order(topic, payload);
        } else if topic == topics.ack() {
            match platform::open::<Ack>(payload, keys, "ack") {
                Ok(ack) => self.on_ack(s, reader, ack).await,
                Err(error) => tracing::warn!(topic, %error, "refused an ack"),
            }
        } else if let Some(verb) = topic.strip_prefix(&format!("kouan/v1/{}/cmd/", self.node)) {
            match platform::open::<Command>(payload, keys, "command") {
                Ok(command) if command.node != self.node || command.verb != verb => {
                    tracing::warn!(topic, node = %command.node, verb = %command.verb, "refused a command for another node or verb");
                }
                Ok(command) if commands_seen.contains(&command.id) => {
                    tracing::debug!(id = %command.id, "ignored a repeated command");
                }
                Ok(command) => {
                    commands_seen.push_back(command.id.clone());
                    if commands_seen.len() > 256 {
                        commands_seen.pop_front();
                    }
                    self.on_command(s, reader, command).await;
                }
                Err(error) => tracing::warn!(topic, %error, "refused a command"),
            }
        } else if let Some(host) = &self.config.platform_host
            && topic == platform::host_state_topic(host)
        {
            match platform::open::<HostState>(payload, keys, "host") {
                Ok(state) if &state.host == host => {
                    if state.online != s.host_online {
                        tracing::info!(host, online = state.online, "platform host state changed");
                    }
                    s.host_online = state.online;
                }
                Ok(state) => {
                    tracing::warn!(topic, host = %state.host, "refused a host state for another host")
                }
                Err(error) => tracing::warn!(topic, %error, "refused a host state"),
            }
        }
    }

    /// A control order: verified and applied by the rapid-response engine.
    fn on_order(&self, topic: &str, payload: &[u8]) {
        let Some(rapid) = &self.rapid else { return };
        // An empty retained message clears an order's topic at the broker.
        if payload.is_empty() {
            return;
        }
        match rapid.accept(payload) {
            Ok(crate::rapid::Accepted::Unchanged(id)) => {
                tracing::debug!(topic, id, "order already held")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(topic, %error, "refused a control order"),
        }
    }

    async fn on_ack(&self, s: &mut Session, reader: &mut Store, ack: Ack) {
        if self.config.delivery != Delivery::Platform {
            return;
        }
        if let Err(error) = reader.refresh() {
            tracing::warn!(%error, "cannot read the chain head to check an ack");
            return;
        }
        let Some(head) = reader.head() else { return };
        if ack.node != self.node || ack.stream.as_slice() != head.stream {
            tracing::debug!(node = %ack.node, "ignored an ack for another node or stream");
            return;
        }
        if ack.seq > head.seq {
            tracing::warn!(
                seq = ack.seq,
                head = head.seq,
                "refused an ack beyond the chain head"
            );
            return;
        }
        s.ack_progress = std::time::Instant::now();
        match self.writer.acknowledge(ack.seq).await {
            Ok(deleted) if deleted > 0 => {
                tracing::debug!(through = ack.seq, deleted, "platform acknowledged records");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not delete acknowledged records"),
        }
        if s.backlog_next <= ack.seq {
            s.backlog_next = (ack.seq + 1).min(s.live_start);
            s.backlog_page.retain(|r| r.seq > ack.seq);
        }
    }

    /// Sends everything unacknowledged again when the platform's ack has
    /// not moved for `ack_timeout_secs` while records are outstanding: the
    /// broker may have dropped them after its PUBACK, and the platform
    /// cannot ask for records it never heard of (the newest ones).
    fn resend_if_unacknowledged(&self, s: &mut Session, reader: &mut Store) {
        if self.config.delivery != Delivery::Platform {
            return;
        }
        let timeout = Duration::from_secs(self.config.ack_timeout_secs.max(1));
        if s.ack_progress.elapsed() < timeout {
            return;
        }
        let Some(first) = reader.stats().ok().and_then(|stats| stats.first) else {
            return;
        };
        let Some(highest) = s.highest_sent.filter(|h| *h >= first) else {
            return;
        };
        tracing::warn!(
            from = first,
            through = highest,
            timeout_secs = timeout.as_secs(),
            "platform has not acknowledged records sent; sending them again"
        );
        s.backlog_next = first;
        s.live_start = s.live_next;
        s.backlog_page.clear();
        s.sent_early.clear();
        s.highest_sent = None;
        s.ack_progress = std::time::Instant::now();
    }

    async fn on_command(&self, s: &mut Session, reader: &mut Store, command: Command) {
        match command.verb.as_str() {
            "rebirth" => {
                tracing::info!(id = %command.id, "platform asked for a rebirth");
                s.born = false;
            }
            "replay" => {
                let Some(from) = command.from else {
                    tracing::warn!(id = %command.id, "refused a replay without a from seq");
                    return;
                };
                let first =
                    tokio::task::block_in_place(|| reader.refresh().and_then(|()| reader.stats()))
                        .ok()
                        .and_then(|stats| stats.first);
                let first = first.unwrap_or(s.live_next);
                tracing::info!(id = %command.id, from, to = ?command.to, first, "platform asked for a replay");
                if from < first {
                    let gap = GapBody {
                        from,
                        to: first - 1,
                        reason: GapReason::NotStored,
                    };
                    let entry = record::body(&gap).map(|body| Entry {
                        instrument: AGENT_INSTRUMENT.into(),
                        kind: Kind::Gap,
                        time: CaptureTime::now(),
                        body,
                    });
                    match entry {
                        Ok(entry) => {
                            if let Err(error) = self.writer.append(entry).await {
                                tracing::warn!(%error, "could not record the replay gap");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "could not encode the replay gap"),
                    }
                }
                // The hole (or everything from `from` on) is backlog again.
                s.backlog_next = from.max(first);
                s.live_start = match command.to {
                    Some(to) => (to + 1).min(s.live_next),
                    None => s.live_next,
                };
                s.backlog_page.clear();
                s.sent_early.clear();
            }
            verb => tracing::warn!(verb, "ignored an unknown command verb"),
        }
    }

    /// On shutdown: the death message, retained, then a clean disconnect.
    async fn goodbye(&self, s: &Session, events: &mut Poller) {
        let topics = Topics::new(&self.node);
        let death = Death {
            v: MESSAGE_VERSION,
            kind: "death".into(),
            node: self.node.clone(),
            session: s.session,
            time: unix_ms(),
        };
        if let Ok(bytes) = platform::sign(&death, &self.key) {
            let _ = s
                .client
                .try_publish(topics.state(), QoS::AtLeastOnce, true, bytes);
        }
        let _ = s.client.try_disconnect();
        // Drive the loop until the disconnect is out, briefly.
        let drain = async {
            loop {
                match events.next().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        tracing::info!("uplink disconnected cleanly");
    }
}

/// Polls a connection's event loop in a task of its own, which is never
/// cancelled mid-poll, and hands the events over a channel. Dropping the
/// poller ends the task and with it the connection.
pub(crate) struct Poller {
    events: tokio::sync::mpsc::Receiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    pub(crate) fn spawn(mut eventloop: EventLoop) -> Poller {
        // A few hundred events of slack; when it is full the poll waits,
        // which is the backpressure rumqttc expects.
        let (tx, events) = tokio::sync::mpsc::channel(256);
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await.map_err(|e| e.to_string());
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    break;
                }
            }
        });
        Poller { events, task }
    }

    /// The next event; cancel-safe. An error ends the connection.
    pub(crate) async fn next(&mut self) -> Result<Event, String> {
        match self.events.recv().await {
            Some(event) => event,
            None => Err("the MQTT event loop stopped".into()),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A short synchronous read of one page of records. The runtime has other
/// workers, so blocking this one for a page costs little.
fn read(reader: &Store, from: u64, limit: usize) -> Result<Vec<StoredRecord>, String> {
    tokio::task::block_in_place(|| reader.read_from(from, limit)).map_err(|e| e.to_string())
}

/// Seqs the broker acknowledged (delivery = "broker"), turned into a
/// contiguous watermark the store can delete through.
#[derive(Debug, Default)]
struct BrokerAcks {
    acked: BTreeSet<u64>,
}

impl BrokerAcks {
    fn insert(&mut self, seq: u64) {
        self.acked.insert(seq);
    }

    /// The highest seq such that every stored seq up to it was acknowledged.
    fn take_watermark(&mut self, reader: &mut Store) -> Option<u64> {
        let first = reader.stats().ok()?.first?;
        let mut through = None;
        let mut next = first;
        while self.acked.remove(&next) {
            through = Some(next);
            next += 1;
        }
        // Acks below the stored range are stale (already deleted).
        self.acked = self.acked.split_off(&next);
        through
    }
}

/// A random duration between half of `base` and `base` (equal jitter), so
/// that agents cut off together do not reconnect together.
fn jitter(base: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map(|()| u32::from_le_bytes(bytes))
        .unwrap_or(u32::MAX / 2);
    let half = base / 2;
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}
