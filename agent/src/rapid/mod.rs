//! Rapid response at the edge: signed control orders, limits, alerts and
//! local alarms.
//!
//! The platform publishes control orders ([`Order`]), each a COSE_Sign1 by
//! the platform's key, retained on `kouan/v1/orders/{id}` and per agent on
//! `kouan/v1/{node}/cmd/order`. The uplink hands every one to
//! [`Rapid::accept`], which verifies it before it changes anything: the
//! signature, the order's consistency, that it is not expired, and that it
//! is not a replay (an id already held with the same or a later issue
//! time). Accepted orders are kept in a small SQLite database next to the
//! store (`<store>.rapid.db`), with their signed bytes, and re-verified at
//! every start, so matching works across restarts and while offline.
//!
//! Limits come from the config (`[[limit]]`) and from orders that name an
//! analyte. Every reading is checked before it is signed: a measurement
//! beyond a limit gets a flag (`over-limit`, `under-limit`) in its signed
//! record. Every scan is checked once it is stored, against the orders'
//! GS1 keys (GTIN, batch, serial, origin) and HS code prefixes, through
//! indexes, so a point with a hundred thousand active orders matches in
//! microseconds.
//!
//! A match raises an alert at once: a signed `alert` record (which the
//! uplink sends ahead of any backlog), a row in the alerts table (what
//! `kouan alerts` lists), a warn log, an alarm event to the point's sensor
//! nodes ([`Rapid::alarms`]), and the site's configured command (a gate
//! interlock, a beacon). An operator's acknowledgement (`kouan alerts ack`)
//! becomes a signed record too.

pub mod cli;
pub mod order;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::clock::{CaptureTime, unix_ms};
use crate::keys::PublicKey;
use crate::platform::{self, MessageError};
use crate::record::{self, AGENT_INSTRUMENT, Kind, MeasuredValue, ReadingBody, ScanBody};
use crate::writer::{Entry, Writer};

pub use order::{Action, Limit, Match, Order, ScanKeys};

/// `[[limit]]`: a limit on a measured quantity, from the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The measurement's name.
    pub name: String,
    /// Its unit; readings in another unit are not compared.
    #[serde(default)]
    pub unit: Option<String>,
    /// Alert above this value.
    #[serde(default)]
    pub above: Option<f64>,
    /// Alert below this value.
    #[serde(default)]
    pub below: Option<f64>,
    /// Risk level, 1 (most severe) to 4.
    #[serde(default = "default_risk")]
    pub risk: u8,
    /// What the point does.
    #[serde(default = "default_action")]
    pub action: Action,
    /// Only readings of these instruments; all when empty.
    #[serde(default)]
    pub instruments: Vec<String>,
}

fn default_risk() -> u8 {
    3
}
fn default_action() -> Action {
    Action::Notify
}

impl LimitConfig {
    /// The limit part.
    pub fn limit(&self) -> Limit {
        Limit {
            name: self.name.clone(),
            unit: self.unit.clone(),
            above: self.above,
            below: self.below,
        }
    }

    /// Checks the limit.
    pub fn validate(&self) -> Result<(), String> {
        self.limit().validate()?;
        if !(1..=4).contains(&self.risk) {
            return Err(format!("risk {} is not 1 (most severe) to 4", self.risk));
        }
        Ok(())
    }
}

/// `[rapid]`: what a match does at the point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RapidSection {
    /// A command run on every alert (program and arguments), with the
    /// alert in its environment: `KOUAN_ALERT_ID`, `KOUAN_ALERT_RISK`,
    /// `KOUAN_ALERT_ACTION`, `KOUAN_ALERT_SOURCE`, `KOUAN_ALERT_SUBJECT`.
    #[serde(default)]
    pub command: Vec<String>,
}

/// The body of a [`Kind::Alert`] record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBody {
    /// `raised`, or `acknowledged` by an operator.
    pub event: String,
    /// The alert's number at this agent.
    pub alert: u64,
    /// Risk level, 1 (most severe) to 4.
    pub risk: u8,
    /// `hold`, `inspect` or `notify`.
    pub action: String,
    /// The order that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// The configured limit that was crossed (its measurement name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The instrument of the scan or reading.
    pub instrument: String,
    /// The seq of the scan or reading record that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    /// What matched, for people: the scanned code, or `lead = 0.42 mg/kg`.
    pub subject: String,
    /// `acknowledged`: the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An alarm for the point's outputs (sensor nodes' alarm outputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// The alert's number.
    pub alert: u64,
    /// Risk level, 1 (most severe) to 4.
    pub risk: u8,
    /// What to do.
    pub action: Action,
}

/// Why an order was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// Not signed by the platform, or not an order.
    #[error("not a valid signed order: {0}")]
    Signature(#[from] MessageError),
    /// Signed, but inconsistent.
    #[error("order {id}: {reason}")]
    Invalid {
        /// Its id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// Already expired.
    #[error("order {id} expired at {expires} (now {now})")]
    Expired {
        /// Its id.
        id: String,
        /// Its expiry, ms.
        expires: i64,
        /// The agent's clock, ms.
        now: i64,
    },
    /// Issued in the future beyond clock skew.
    #[error("order {id} is issued {ahead_ms} ms in the future: check the clocks")]
    FromTheFuture {
        /// Its id.
        id: String,
        /// How far ahead.
        ahead_ms: i64,
    },
    /// An older (or the same) issue of an order already held.
    #[error("order {id} issued at {issued} is a replay: issue {held} is held")]
    Replay {
        /// Its id.
        id: String,
        /// The refused message's issue time.
        issued: i64,
        /// The held issue time.
        held: i64,
    },
    /// For other agents.
    #[error("order {id} is for other agents")]
    NotForUs {
        /// Its id.
        id: String,
    },
    /// The order database failed.
    #[error("order database: {0}")]
    Database(#[from] rusqlite::Error),
}

/// What [`Rapid::accept`] did with a valid order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new order, or a newer issue of one.
    Active(String),
    /// A revocation: the order no longer applies.
    Revoked(String),
    /// The same signed bytes again (a retained message redelivered).
    Unchanged(String),
}

/// One active order with its index key.
#[derive(Debug, Clone)]
struct Held {
    order: Order,
}

/// Orders by the keys they match on.
#[derive(Debug, Default)]
struct Book {
    orders: HashMap<String, Held>,
    by_gtin: HashMap<String, Vec<String>>,
    by_batch: HashMap<String, Vec<String>>,
    by_serial: HashMap<String, Vec<String>>,
    by_origin: HashMap<u16, Vec<String>>,
    /// Orders on an HS prefix or an analyte: few, checked one by one.
    other: Vec<String>,
}

impl Book {
    fn insert(&mut self, order: Order) {
        self.remove(&order.id);
        let id = order.id.clone();
        let m = &order.matches;
        let slot = if let Some(g) = &m.gtin {
            self.by_gtin.entry(g.clone()).or_default()
        } else if let Some(b) = &m.batch {
            self.by_batch.entry(b.clone()).or_default()
        } else if let Some(s) = &m.serial {
            self.by_serial.entry(s.clone()).or_default()
        } else if let Some(o) = m.origin {
            self.by_origin.entry(o).or_default()
        } else {
            &mut self.other
        };
        slot.push(id.clone());
        self.orders.insert(id, Held { order });
    }

    fn remove(&mut self, id: &str) {
        let Some(held) = self.orders.remove(id) else {
            return;
        };
        let m = &held.order.matches;
        let drop_id = |ids: &mut Vec<String>| ids.retain(|i| i != id);
        if let Some(g) = &m.gtin {
            self.by_gtin.get_mut(g).map(drop_id);
        } else if let Some(b) = &m.batch {
            self.by_batch.get_mut(b).map(drop_id);
        } else if let Some(s) = &m.serial {
            self.by_serial.get_mut(s).map(drop_id);
        } else if let Some(o) = m.origin {
            self.by_origin.get_mut(&o).map(drop_id);
        } else {
            drop_id(&mut self.other);
        }
    }

    /// Orders matching a scan, active at `now`.
    fn scan_matches(&self, keys: &ScanKeys, now: i64) -> Vec<&Order> {
        let indexed = [
            keys.gtin.as_ref().and_then(|g| self.by_gtin.get(g)),
            keys.batch.as_ref().and_then(|b| self.by_batch.get(b)),
            keys.serial.as_ref().and_then(|s| self.by_serial.get(s)),
            keys.origin.and_then(|o| self.by_origin.get(&o)),
            Some(&self.other),
        ];
        let candidates = indexed.into_iter().flatten().flatten();
        candidates
            .into_iter()
            .filter_map(|id| self.orders.get(id))
            .map(|held| &held.order)
            .filter(|o| o.expires > now && o.matches_scan(keys))
            .collect()
    }

    /// Analyte orders active at `now`.
    fn analyte_orders(&self, now: i64) -> impl Iterator<Item = &Order> {
        self.other
            .iter()
            .filter_map(|id| self.orders.get(id))
            .map(|held| &held.order)
            .filter(move |o| o.expires > now && o.matches.analyte.is_some())
    }
}

/// A match found before or after storing.
#[derive(Debug, Clone)]
struct Hit {
    risk: u8,
    action: Action,
    order: Option<String>,
    limit: Option<String>,
    subject: String,
}

/// The rapid-response engine of one agent.
#[derive(Debug)]
pub struct Rapid {
    node: String,
    platform_keys: Vec<PublicKey>,
    limits: Vec<LimitConfig>,
    section: RapidSection,
    writer: Writer,
    db: Mutex<Connection>,
    book: Mutex<Book>,
    alarms: broadcast::Sender<Alarm>,
}

/// The order and alert database next to the store.
pub fn database_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".rapid.db");
    store.with_file_name(name)
}

fn open_db(path: &Path) -> Result<Connection, rusqlite::Error> {
    let db = Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (
             id TEXT PRIMARY KEY, issued INTEGER NOT NULL, expires INTEGER NOT NULL,
             revoked INTEGER NOT NULL, bytes BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS alerts (
             id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, time INTEGER NOT NULL,
             risk INTEGER NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL,
             instrument TEXT NOT NULL, subject TEXT NOT NULL,
             acked_by TEXT, acked_at INTEGER, ack_seq INTEGER);
         CREATE TABLE IF NOT EXISTS ack_requests (
             alert INTEGER PRIMARY KEY, by TEXT NOT NULL, requested INTEGER NOT NULL);",
    )?;
    Ok(db)
}

impl Rapid {
    /// Opens the order database next to `store`, re-verifies the orders it
    /// holds and drops the expired ones.
    pub fn open(
        store: &Path,
        node: &str,
        platform_key: Option<PublicKey>,
        limits: Vec<LimitConfig>,
        section: RapidSection,
        writer: Writer,
    ) -> Result<Rapid, OrderError> {
        let db = open_db(&database_path(store))?;
        let now = unix_ms();
        db.execute("DELETE FROM orders WHERE expires <= ?1", params![now])?;
        let platform_keys: Vec<PublicKey> = platform_key.into_iter().collect();
        let mut book = Book::default();
        {
            let mut rows = db.prepare("SELECT id, bytes FROM orders WHERE revoked = 0")?;
            let rows = rows.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (id, bytes) = row?;
                match platform::open::<Order>(&bytes, &platform_keys, "order") {
                    Ok(order) => book.insert(order),
                    Err(error) => {
                        tracing::error!(id, %error, "a stored order no longer verifies: ignored");
                    }
                }
            }
        }
        if !book.orders.is_empty() {
            tracing::info!(orders = book.orders.len(), "active control orders loaded");
        }
        // A few alarms of slack per subscriber: alarms are rare, and a
        // node driver that lags only misses older ones (the latest matters).
        let (alarms, _) = broadcast::channel(16);
        Ok(Rapid {
            node: node.to_owned(),
            platform_keys,
            limits,
            section,
            writer,
            db: Mutex::new(db),
            book: Mutex::new(book),
            alarms,
        })
    }

    /// Alarm events, for the point's outputs (sensor nodes).
    pub fn alarms(&self) -> broadcast::Receiver<Alarm> {
        self.alarms.subscribe()
    }

    /// The alerts no operator has acknowledged yet, most severe first.
    pub fn active_alerts(&self) -> Result<Vec<AlertRow>, rusqlite::Error> {
        query_alerts(&self.db.lock().unwrap_or_else(|e| e.into_inner()), false)
    }

    /// Active orders.
    pub fn active_orders(&self) -> usize {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .orders
            .len()
    }

    /// Verifies and applies an order message. Nothing changes unless it
    /// verifies with the platform's key, is consistent, is for this agent,
    /// is not expired and is newer than what is held for its id.
    pub fn accept(&self, bytes: &[u8]) -> Result<Accepted, OrderError> {
        let order: Order = platform::open(bytes, &self.platform_keys, "order")?;
        let id = order.id.clone();
        order.validate().map_err(|reason| OrderError::Invalid {
            id: id.clone(),
            reason,
        })?;
        let now = unix_ms();
        if order.issued - now > order::MAX_CLOCK_SKEW_MS {
            return Err(OrderError::FromTheFuture {
                id,
                ahead_ms: order.issued - now,
            });
        }
        if !order.applies_to(&self.node) {
            return Err(OrderError::NotForUs { id });
        }

        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let held: Option<(i64, Vec<u8>)> = db
            .query_row(
                "SELECT issued, bytes FROM orders WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((held_issued, held_bytes)) = held {
            if held_bytes == bytes {
                return Ok(Accepted::Unchanged(id));
            }
            if order.issued <= held_issued {
                return Err(OrderError::Replay {
                    id,
                    issued: order.issued,
                    held: held_issued,
                });
            }
        }
        if order.expires <= now {
            return Err(OrderError::Expired {
                id,
                expires: order.expires,
                now,
            });
        }
        db.execute(
            "INSERT OR REPLACE INTO orders (id, issued, expires, revoked, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, order.issued, order.expires, order.revoked, bytes],
        )?;
        drop(db);

        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if order.revoked {
            book.remove(&id);
            tracing::info!(id, "control order revoked");
            Ok(Accepted::Revoked(id))
        } else {
            tracing::info!(
                id,
                risk = order.risk,
                action = order.action.as_str(),
                text = %order.text,
                "control order active"
            );
            book.insert(order);
            Ok(Accepted::Active(id))
        }
    }

    /// Flags the measurements of a reading from `instrument` that cross a
    /// limit (config or order); returns the matches to raise once stored.
    fn check_reading(&self, instrument: &str, body: &mut ReadingBody) -> Vec<Hit> {
        let now = unix_ms();
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let mut hits = Vec::new();
        for m in &mut body.values {
            let subject = match (&m.value, &m.unit) {
                (MeasuredValue::Number(v), Some(u)) => {
                    format!("{} = {} {u}", m.name, record::number_text(*v))
                }
                (MeasuredValue::Number(v), None) => {
                    format!("{} = {}", m.name, record::number_text(*v))
                }
                (MeasuredValue::Text(_), _) => continue,
            };
            let mut crossed = Vec::new();
            for limit in &self.limits {
                if !limit.instruments.is_empty()
                    && !limit.instruments.iter().any(|i| i == instrument)
                {
                    continue;
                }
                if let Some(way) = limit.limit().crossed_by(m) {
                    crossed.push(way);
                    hits.push(Hit {
                        risk: limit.risk,
                        action: limit.action,
                        order: None,
                        limit: Some(limit.name.clone()),
                        subject: subject.clone(),
                    });
                }
            }
            for order in book.analyte_orders(now) {
                let Some(limit) = &order.matches.analyte else {
                    continue;
                };
                if let Some(way) = limit.crossed_by(m) {
                    crossed.push(way);
                    hits.push(Hit {
                        risk: order.risk,
                        action: order.action,
                        order: Some(order.id.clone()),
                        limit: None,
                        subject: subject.clone(),
                    });
                }
            }
            for way in crossed {
                let flag = if way == "above" {
                    "over-limit"
                } else {
                    "under-limit"
                };
                if !m.flags.iter().any(|f| f == flag) {
                    m.flags.push(flag.to_owned());
                }
            }
        }
        hits
    }

    fn check_scan(&self, scan: &ScanBody) -> Vec<Hit> {
        let keys = ScanKeys::of(scan);
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.scan_matches(&keys, unix_ms())
            .into_iter()
            .map(|order| Hit {
                risk: order.risk,
                action: order.action,
                order: Some(order.id.clone()),
                limit: None,
                subject: scan.code.clone(),
            })
            .collect()
    }

    /// Checks a reading before it is signed (flags it) and returns what to
    /// raise after it is stored with [`Rapid::raise`].
    pub fn before_reading(&self, instrument: &str, body: &mut ReadingBody) -> Pending {
        Pending(self.check_reading(instrument, body))
    }

    /// Checks a stored scan and raises its alerts.
    pub async fn after_scan(&self, instrument: &str, scan: &ScanBody, seq: u64) {
        let hits = self.check_scan(scan);
        self.raise(instrument, Pending(hits), seq).await;
    }

    /// Raises the alerts of a stored record `seq` of `instrument`.
    pub async fn raise(&self, instrument: &str, pending: Pending, seq: u64) {
        for hit in pending.0 {
            if let Err(error) = self.raise_one(instrument, &hit, seq).await {
                tracing::error!(instrument, %error, subject = %hit.subject, "alert not raised");
            }
        }
    }

    async fn raise_one(&self, instrument: &str, hit: &Hit, seq: u64) -> Result<(), String> {
        let now = unix_ms();
        let source = hit
            .order
            .clone()
            .or_else(|| hit.limit.as_ref().map(|l| format!("limit {l}")))
            .unwrap_or_default();
        let alert = {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            db.execute(
                "INSERT INTO alerts (seq, time, risk, action, source, instrument, subject)
                 VALUES (-1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    now,
                    hit.risk,
                    hit.action.as_str(),
                    source,
                    instrument,
                    hit.subject
                ],
            )
            .map_err(|e| e.to_string())?;
            db.last_insert_rowid() as u64
        };
        let body = AlertBody {
            event: "raised".into(),
            alert,
            risk: hit.risk,
            action: hit.action.as_str().into(),
            order: hit.order.clone(),
            limit: hit.limit.clone(),
            instrument: instrument.to_owned(),
            record: Some(seq),
            subject: hit.subject.clone(),
            by: None,
        };
        let appended = self.append_alert(&body).await?;
        {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            db.execute(
                "UPDATE alerts SET seq = ?1 WHERE id = ?2",
                params![appended, alert],
            )
            .map_err(|e| e.to_string())?;
        }
        tracing::warn!(
            alert,
            seq = appended,
            risk = hit.risk,
            action = hit.action.as_str(),
            %source,
            instrument,
            subject = %hit.subject,
            "ALERT: local alarm raised"
        );
        let _ = self.alarms.send(Alarm {
            alert,
            risk: hit.risk,
            action: hit.action,
        });
        self.run_command(alert, hit, &source);
        Ok(())
    }

    async fn append_alert(&self, body: &AlertBody) -> Result<u64, String> {
        let entry = Entry {
            instrument: AGENT_INSTRUMENT.into(),
            kind: Kind::Alert,
            time: CaptureTime::now(),
            body: record::body(body).map_err(|e| e.to_string())?,
        };
        // Alerts bypass the full-store wait: the writer evicts or refuses,
        // and a refused alert is logged at error by the caller.
        let appended = self.writer.append(entry).await.map_err(|e| e.to_string())?;
        Ok(appended.seq)
    }

    /// Starts the site's alarm command, without waiting for it.
    fn run_command(&self, alert: u64, hit: &Hit, source: &str) {
        let Some((program, args)) = self.section.command.split_first() else {
            return;
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env("KOUAN_ALERT_ID", alert.to_string())
            .env("KOUAN_ALERT_RISK", hit.risk.to_string())
            .env("KOUAN_ALERT_ACTION", hit.action.as_str())
            .env("KOUAN_ALERT_SOURCE", source)
            .env("KOUAN_ALERT_SUBJECT", &hit.subject)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        match command.spawn() {
            Ok(mut child) => {
                let program = program.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => {
                            tracing::error!(%program, %status, alert, "alarm command failed")
                        }
                        Ok(Err(error)) => tracing::error!(%program, %error, alert, "alarm command"),
                        Err(_) => {
                            let _ = child.start_kill();
                            tracing::error!(%program, alert, "alarm command ran 30 s: killed");
                        }
                    }
                });
            }
            Err(error) => tracing::error!(%program, %error, alert, "alarm command did not start"),
        }
    }

    /// Signs the operators' acknowledgements queued by `kouan alerts ack`,
    /// until `shutdown`.
    pub async fn serve_acknowledgements(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.acknowledge_queued().await {
                tracing::error!(%error, "alert acknowledgements");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = crate::instrument::stopping(&mut shutdown) => return,
            }
        }
    }

    async fn acknowledge_queued(&self) -> Result<(), String> {
        let queued: Vec<(u64, String, Option<AlertRow>)> = {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            let mut stmt = db
                .prepare("SELECT alert, by FROM ack_requests ORDER BY requested")
                .map_err(|e| e.to_string())?;
            let rows: Vec<(u64, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| e.to_string())?;
            rows.into_iter()
                .map(|(alert, by)| {
                    let row = alert_row(&db, alert).ok().flatten();
                    (alert, by, row)
                })
                .collect()
        };
        for (alert, by, row) in queued {
            let done = match row {
                Some(row) if row.acked_by.is_none() => {
                    let body = AlertBody {
                        event: "acknowledged".into(),
                        alert,
                        risk: row.risk,
                        action: row.action.clone(),
                        order: (!row.source.starts_with("limit ")).then(|| row.source.clone()),
                        limit: row.source.strip_prefix("limit ").map(str::to_owned),
                        instrument: row.instrument.clone(),
                        record: Some(row.seq),
                        subject: row.subject.clone(),
                        by: Some(by.clone()),
                    };
                    let seq = self.append_alert(&body).await?;
                    tracing::info!(alert, by, seq, "alert acknowledged by an operator");
                    Some(seq)
                }
                _ => None,
            };
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(seq) = done {
                db.execute(
                    "UPDATE alerts SET acked_by = ?1, acked_at = ?2, ack_seq = ?3 WHERE id = ?4",
                    params![by, unix_ms(), seq, alert],
                )
                .map_err(|e| e.to_string())?;
            }
            db.execute("DELETE FROM ack_requests WHERE alert = ?1", params![alert])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Matches found before a record was stored, raised after.
#[derive(Debug, Default)]
#[must_use = "raise the alerts once the record is stored"]
pub struct Pending(Vec<Hit>);

impl Pending {
    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One row of the alerts table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRow {
    /// The alert's number.
    pub id: u64,
    /// The alert record's seq.
    pub seq: u64,
    /// When it was raised, ms.
    pub time: i64,
    /// Risk level.
    pub risk: u8,
    /// Action.
    pub action: String,
    /// The order id, or `limit NAME`.
    pub source: String,
    /// The instrument.
    pub instrument: String,
    /// What matched.
    pub subject: String,
    /// The operator who acknowledged it.
    pub acked_by: Option<String>,
}

fn alert_row(db: &Connection, id: u64) -> Result<Option<AlertRow>, rusqlite::Error> {
    db.query_row(
        "SELECT id, seq, time, risk, action, source, instrument, subject, acked_by
         FROM alerts WHERE id = ?1",
        params![id],
        read_alert_row,
    )
    .optional()
}

fn read_alert_row(r: &rusqlite::Row<'_>) -> Result<AlertRow, rusqlite::Error> {
    Ok(AlertRow {
        id: r.get(0)?,
        seq: r.get::<_, i64>(1)?.max(0) as u64,
        time: r.get(2)?,
        risk: r.get(3)?,
        action: r.get(4)?,
        source: r.get(5)?,
        instrument: r.get(6)?,
        subject: r.get(7)?,
        acked_by: r.get(8)?,
    })
}

/// Imports signed orders into the database of the agent whose store is
/// `store`, in one transaction: each is verified with `platform_keys` and
/// checked as [`Rapid::accept`] does (without the replay check); refused
/// ones are returned with the reason. For seeding an agent that will start
/// offline, and for benchmarks. Must not run while the agent runs.
pub fn import_orders(
    store: &Path,
    platform_keys: &[PublicKey],
    orders: &[Vec<u8>],
) -> Result<Vec<(usize, String)>, rusqlite::Error> {
    let mut db = open_db(&database_path(store))?;
    let now = unix_ms();
    let tx = db.transaction()?;
    let mut refused = Vec::new();
    for (index, bytes) in orders.iter().enumerate() {
        let order = match platform::open::<Order>(bytes, platform_keys, "order") {
            Ok(order) => order,
            Err(error) => {
                refused.push((index, error.to_string()));
                continue;
            }
        };
        if let Err(reason) = order.validate() {
            refused.push((index, reason));
            continue;
        }
        if order.expires <= now {
            refused.push((index, "expired".into()));
            continue;
        }
        tx.execute(
            "INSERT OR REPLACE INTO orders (id, issued, expires, revoked, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![order.id, order.issued, order.expires, order.revoked, bytes],
        )?;
    }
    tx.commit()?;
    Ok(refused)
}

/// The alerts at the agent whose store is `store`: unacknowledged ones, or
/// all with `all`. For `kouan alerts`; works while the agent runs.
pub fn list_alerts(store: &Path, all: bool) -> Result<Vec<AlertRow>, rusqlite::Error> {
    query_alerts(&open_db(&database_path(store))?, all)
}

fn query_alerts(db: &Connection, all: bool) -> Result<Vec<AlertRow>, rusqlite::Error> {
    let sql = if all {
        "SELECT id, seq, time, risk, action, source, instrument, subject, acked_by
         FROM alerts ORDER BY id"
    } else {
        "SELECT id, seq, time, risk, action, source, instrument, subject, acked_by
         FROM alerts WHERE acked_by IS NULL ORDER BY risk, id"
    };
    let mut stmt = db.prepare(sql)?;
    let rows = stmt.query_map([], read_alert_row)?;
    rows.collect()
}

/// Queues an operator's acknowledgement of `alert`; the running agent signs
/// it. Returns the alert, or `None` if there is no such alert.
pub fn queue_acknowledgement(
    store: &Path,
    alert: u64,
    by: &str,
) -> Result<Option<AlertRow>, rusqlite::Error> {
    let db = open_db(&database_path(store))?;
    let Some(row) = alert_row(&db, alert)? else {
        return Ok(None);
    };
    if row.acked_by.is_none() {
        db.execute(
            "INSERT OR REPLACE INTO ack_requests (alert, by, requested) VALUES (?1, ?2, ?3)",
            params![alert, by, unix_ms()],
        )?;
    }
    Ok(Some(row))
}

/// The alert `alert` as it is now.
pub fn alert(store: &Path, alert: u64) -> Result<Option<AlertRow>, rusqlite::Error> {
    alert_row(&open_db(&database_path(store))?, alert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{self, Algorithm, SigningKey};
    use crate::record::Measurement;
    use crate::store::Store;
    use crate::writer::WriterConfig;

    struct Site {
        dir: tempfile::TempDir,
        platform: SigningKey,
        agent_public: PublicKey,
        writer: Writer,
    }

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&keys::generate(Algorithm::Ed25519).unwrap()).unwrap()
    }

    fn site() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let agent = key();
        let agent_public = agent.public_key().clone();
        let store_path = dir.path().join("kouan.db");
        let (store, opened) =
            Store::open_or_recover(&store_path, std::slice::from_ref(&agent_public)).unwrap();
        let config = WriterConfig::new("gy-air-01", "guiyang-airport");
        let (writer, _thread) = Writer::start(store, &opened, agent, config).unwrap();
        Site {
            dir,
            platform: key(),
            agent_public,
            writer,
        }
    }

    impl Site {
        fn store(&self) -> PathBuf {
            self.dir.path().join("kouan.db")
        }

        fn rapid(&self, limits: Vec<LimitConfig>) -> Rapid {
            let public = self.platform.public_key().clone();
            let section = RapidSection::default();
            Rapid::open(
                &self.store(),
                "gy-air-01",
                Some(public),
                limits,
                section,
                self.writer.clone(),
            )
            .unwrap()
        }

        fn sign(&self, order: &Order) -> Vec<u8> {
            platform::sign(order, &self.platform).unwrap()
        }

        fn rows(&self) -> Vec<(String, i64)> {
            let db = open_db(&database_path(&self.store())).unwrap();
            let mut stmt = db
                .prepare("SELECT id, issued FROM orders ORDER BY id")
                .unwrap();
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            rows.map(Result::unwrap).collect()
        }

        fn alert_records(&self) -> Vec<AlertBody> {
            let store = Store::open_read_only(&self.store()).unwrap();
            store
                .read_from(0, 1000)
                .unwrap()
                .iter()
                .map(|r| {
                    record::verify(&r.bytes, std::slice::from_ref(&self.agent_public)).unwrap()
                })
                .filter(|v| v.payload.kind == Kind::Alert)
                .map(|v| v.payload.body.deserialized().unwrap())
                .collect()
        }
    }

    fn order(id: &str) -> Order {
        let now = unix_ms();
        Order {
            v: platform::MESSAGE_VERSION,
            kind: "order".into(),
            id: id.into(),
            risk: 1,
            action: Action::Hold,
            matches: Match {
                gtin: Some("09521234543213".into()),
                batch: Some("12A".into()),
                ..Match::default()
            },
            issued: now - 1000,
            expires: now + 3_600_000,
            revoked: false,
            nodes: vec![],
            text: "test".into(),
        }
    }

    fn scan(code: &[u8]) -> ScanBody {
        let today = crate::scan::Date::new(2026, 12, 3).unwrap();
        crate::instrument::scanner::scan_body(code, today).0
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forged_expired_revoked_and_replayed_orders_change_nothing() {
        let site = site();
        let rapid = site.rapid(vec![]);
        let original = order("RW-1");
        let bytes = site.sign(&original);
        assert_eq!(
            rapid.accept(&bytes).unwrap(),
            Accepted::Active("RW-1".into())
        );
        assert_eq!(
            rapid.accept(&bytes).unwrap(),
            Accepted::Unchanged("RW-1".into())
        );
        let held = site.rows();

        // Forged: signed by another key.
        let forged = platform::sign(&order("RW-2"), &key()).unwrap();
        assert!(matches!(
            rapid.accept(&forged),
            Err(OrderError::Signature(_))
        ));
        // Expired.
        let mut expired = order("RW-3");
        expired.expires = unix_ms() - 1;
        let error = rapid.accept(&site.sign(&expired)).unwrap_err();
        assert!(matches!(error, OrderError::Expired { .. }), "{error}");
        // Replayed: another message with the same id and an older issue.
        let mut older = original.clone();
        older.issued -= 60_000;
        older.risk = 4;
        let error = rapid.accept(&site.sign(&older)).unwrap_err();
        assert!(matches!(error, OrderError::Replay { .. }), "{error}");
        // For another agent, and issued an hour ahead.
        let mut elsewhere = order("RW-4");
        elsewhere.nodes = vec!["zy-bond-01".into()];
        assert!(matches!(
            rapid.accept(&site.sign(&elsewhere)),
            Err(OrderError::NotForUs { .. })
        ));
        let mut future = order("RW-5");
        future.issued = unix_ms() + 3_600_000;
        future.expires = future.issued + 1000;
        assert!(matches!(
            rapid.accept(&site.sign(&future)),
            Err(OrderError::FromTheFuture { .. })
        ));
        assert_eq!(site.rows(), held, "refused orders changed the database");
        assert_eq!(rapid.active_orders(), 1);

        // Revoked with a later issue; the original cannot come back.
        let mut revoke = original.clone();
        revoke.issued += 1;
        revoke.revoked = true;
        assert_eq!(
            rapid.accept(&site.sign(&revoke)).unwrap(),
            Accepted::Revoked("RW-1".into())
        );
        assert_eq!(rapid.active_orders(), 0);
        assert!(matches!(
            rapid.accept(&bytes),
            Err(OrderError::Replay { .. })
        ));
        assert_eq!(rapid.active_orders(), 0);
        rapid
            .after_scan("scanner-1", &scan(b"]C1010952123454321310126A\x1d"), 1)
            .await;
        assert!(site.alert_records().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn matching_scan_raises_a_signed_alert_and_an_alarm() {
        let site = site();
        let rapid = site.rapid(vec![]);
        rapid.accept(&site.sign(&order("RW-7"))).unwrap();
        let mut alarms = rapid.alarms();

        rapid
            .after_scan("scanner-1", &scan(b"]C1010952123454321310BATCH"), 3)
            .await;
        assert!(
            site.alert_records().is_empty(),
            "another batch matches nothing"
        );
        rapid
            .after_scan("scanner-1", &scan(b"]C1010952123454321310\x31\x32A"), 4)
            .await;
        let alerts = site.alert_records();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.order.as_deref(), Some("RW-7"));
        assert_eq!(
            (alert.risk, alert.action.as_str(), alert.record),
            (1, "hold", Some(4))
        );
        assert_eq!(alert.subject, "(01)09521234543213(10)12A");
        assert_eq!(alarms.try_recv().unwrap().action, Action::Hold);
        let listed = list_alerts(&site.store(), false).unwrap();
        assert_eq!(listed.len(), 1);

        // Orders survive a restart (re-verified from disk).
        drop(rapid);
        let again = site.rapid(vec![]);
        assert_eq!(again.active_orders(), 1);

        // An operator's acknowledgement is signed and clears the alert.
        queue_acknowledgement(&site.store(), listed[0].id, "officer 17").unwrap();
        again.acknowledge_queued().await.unwrap();
        assert!(list_alerts(&site.store(), false).unwrap().is_empty());
        let acked = site.alert_records();
        assert_eq!(acked[1].event, "acknowledged");
        assert_eq!(acked[1].by.as_deref(), Some("officer 17"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readings_beyond_limits_are_flagged_before_signing() {
        let site = site();
        let limit = LimitConfig {
            name: "dose_rate".into(),
            unit: Some("uSv/h".into()),
            above: Some(0.5),
            below: None,
            risk: 1,
            action: Action::Hold,
            instruments: vec![],
        };
        let rapid = site.rapid(vec![limit]);
        let mut analyte = order("RW-9");
        analyte.matches = Match {
            analyte: Some(Limit {
                name: "lead".into(),
                unit: None,
                above: Some(0.3),
                below: None,
            }),
            ..Match::default()
        };
        rapid.accept(&site.sign(&analyte)).unwrap();

        let value = |name: &str, v: f64, unit: &str| {
            Measurement::new(name, MeasuredValue::Number(v), Some(unit.to_owned()))
        };
        let mut body = ReadingBody::new(
            vec![
                value("dose_rate", 0.8, "uSv/h"),
                value("lead", 0.1, "mg/kg"),
            ],
            vec![],
        );
        let pending = rapid.before_reading("gamma-1", &mut body);
        assert_eq!(body.values[0].flags, ["over-limit"]);
        assert!(body.values[1].flags.is_empty());
        rapid.raise("gamma-1", pending, 9).await;
        let mut lead = ReadingBody::new(vec![value("lead", 0.42, "mg/kg")], vec![]);
        let pending = rapid.before_reading("icp-1", &mut lead);
        assert_eq!(lead.values[0].flags, ["over-limit"]);
        rapid.raise("icp-1", pending, 10).await;

        let alerts = site.alert_records();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].limit.as_deref(), Some("dose_rate"));
        assert_eq!(alerts[0].subject, "dose_rate = 0.8 uSv/h");
        assert_eq!(alerts[1].order.as_deref(), Some("RW-9"));
    }

    #[test]
    fn a_hundred_thousand_orders_are_matched_through_the_index() {
        let mut book = Book::default();
        let now = unix_ms();
        for n in 0..100_000u64 {
            let mut o = order(&format!("RW-{n}"));
            let body = format!("{:013}", n);
            let check = crate::scan::check_digit(body.as_bytes()).unwrap();
            o.matches.gtin = Some(format!("{body}{check}"));
            o.matches.batch = None;
            book.insert(o);
        }
        let keys = ScanKeys {
            gtin: Some(format!(
                "{:013}{}",
                4242,
                crate::scan::check_digit(format!("{:013}", 4242).as_bytes()).unwrap()
            )),
            ..ScanKeys::default()
        };
        let hits = book.scan_matches(&keys, now);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, "RW-4242");
        book.remove("RW-4242");
        assert!(book.scan_matches(&keys, now).is_empty());
    }
}
