//! `kouan run`: the agent as a service.
//!
//! Loads the configuration, opens (or recovers) the store, starts the
//! writer thread and the uplink, and runs until SIGTERM or SIGINT. On the
//! way down the uplink publishes its death message and disconnects, and the
//! writer finishes what was queued before the store closes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::clock::CaptureTime;
use crate::config::Config;
use crate::keys::{PublicKey, SigningKey};
use crate::rapid::Rapid;
use crate::record::{self, Kind, MeasuredValue, Measurement, ReadingBody};
use crate::store::{Opened, Store};
use crate::uplink::Uplink;
use crate::writer::{AppendError, Entry, Writer};

/// Options of `kouan run` beyond the configuration file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Feed this many synthetic readings through the writer (tests, demos,
    /// benchmarks), as fast as the store takes them.
    pub simulate_readings: u64,
    /// Bytes of raw instrument data in each synthetic reading.
    pub simulate_raw_bytes: usize,
}

/// Runs the agent until a termination signal.
pub async fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    let key = SigningKey::load(&config.keys.signing)?;
    let public = key.public_key().clone();
    let (store, opened) =
        Store::open_or_recover(&config.store.path, std::slice::from_ref(&public))?;
    match &opened {
        Opened::Recovered {
            damage, moved_to, ..
        } => tracing::error!(
            %damage,
            moved_to = %moved_to.display(),
            "the store was damaged: moved it aside and started a new stream"
        ),
        Opened::Created => {
            tracing::info!(path = %config.store.path.display(), "created a new store")
        }
        Opened::Existing => {}
    }
    let signing = Arc::new(SigningKey::load(&config.keys.signing)?);
    let (writer, writer_thread) = Writer::start(store, &opened, key, config.writer())?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let uplink_status = Arc::new(crate::status::UplinkState::default());
    let platform_key = config
        .uplink
        .as_ref()
        .and_then(|section| section.platform_key.as_deref())
        .map(PublicKey::load)
        .transpose()?;
    let rapid = Arc::new(Rapid::open(
        &config.store.path,
        &config.agent.node,
        platform_key.clone(),
        config.limits.clone(),
        config.rapid.clone(),
        writer.clone(),
    )?);
    let uplink = match &config.uplink {
        Some(section) => {
            let uplink = Uplink {
                config: section.clone(),
                node: config.agent.node.clone(),
                store_path: config.store.path.clone(),
                writer: writer.clone(),
                key: signing,
                platform_key,
                status: uplink_status.clone(),
                rapid: Some(rapid.clone()),
            };
            Some(tokio::spawn(uplink.run(shutdown.clone())))
        }
        None => {
            tracing::info!("no [uplink] configured: records are stored, not sent");
            None
        }
    };
    let acknowledgements = tokio::spawn(rapid.clone().serve_acknowledgements(shutdown.clone()));
    let continuing = matches!(opened, Opened::Existing);
    let instruments = crate::instrument::spawn(
        &config.instruments,
        &writer,
        (&config.store.path, continuing),
        Some(&rapid),
        &shutdown,
    );
    let simulator = (options.simulate_readings > 0).then(|| {
        let (count, raw) = (options.simulate_readings, options.simulate_raw_bytes);
        tokio::spawn(simulate(writer.clone(), count, raw, shutdown.clone()))
    });
    let counters = instruments.iter().map(|(counters, _)| counters.clone());
    let status = crate::status::serve(
        &config,
        &writer,
        counters.collect(),
        uplink_status,
        Some(rapid.clone()),
        shutdown.clone(),
    );
    tracing::info!(node = %config.agent.node, site = %config.agent.site, "kouan running");

    // systemd (Type=notify) counts the service as started from here.
    crate::systemd::notify("READY=1");
    wait_for_signal(|| !writer_thread.is_finished()).await?;
    crate::systemd::notify("STOPPING=1");
    tracing::info!("stopping");
    shutdown_tx.send_replace(true);
    if let Some(status) = status {
        let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
    }
    for (_, task) in instruments {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), acknowledgements).await;
    if let Some(uplink) = uplink {
        let _ = tokio::time::timeout(Duration::from_secs(10), uplink).await;
    }
    if let Some(simulator) = simulator {
        simulator.abort();
    }
    // The writer thread ends when the last handle to it is gone: the
    // rapid-response engine holds one for its alert records.
    drop(rapid);
    drop(writer);
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .context("waiting for the record writer")?
        .map_err(|_| anyhow::anyhow!("the record writer panicked"))?;
    tracing::info!("stopped");
    Ok(())
}

/// The main loop: waits for SIGTERM or SIGINT, feeding systemd's
/// watchdog meanwhile while `alive` says so (docs/install.md).
async fn wait_for_signal(alive: impl Fn() -> bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let interval = crate::systemd::watchdog_interval();
    let mut watchdog = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = watchdog.tick(), if interval.is_some() => {
                if alive() {
                    crate::systemd::notify("WATCHDOG=1");
                } else {
                    tracing::error!("the record writer stopped: no watchdog ping, systemd restarts the agent");
                }
            }
        }
    }
}

/// Feeds synthetic readings, 32 awaiting durability at a time; a refused
/// reading (store full) is retried, as an instrument would resend it.
async fn simulate(writer: Writer, count: u64, raw: usize, shutdown: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0u64;
    let mut done = 0u64;
    while done < count && !*shutdown.borrow() {
        while tasks.len() < 32 && next < count {
            let writer = writer.clone();
            let n = next;
            tasks.spawn(async move {
                loop {
                    let Ok(entry) = synthetic_reading(n, raw) else {
                        return;
                    };
                    match writer.append(entry).await {
                        Err(AppendError::Full { .. }) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        _ => return,
                    }
                }
            });
            next += 1;
        }
        if tasks.join_next().await.is_some() {
            done += 1;
        }
    }
    tracing::info!(readings = done, "simulated readings are stored");
}

/// A synthetic balance reading number `n` with `raw_size` bytes of raw data.
pub fn synthetic_reading(n: u64, raw_size: usize) -> Result<Entry, record::RecordError> {
    let raw: Vec<u8> = (0..raw_size)
        .map(|i| b'0' + ((n as usize + i) % 10) as u8)
        .collect();
    let mut body = ReadingBody::new(
        vec![Measurement::new(
            "mass",
            MeasuredValue::Number(n as f64 / 100.0),
            Some("g".into()),
        )],
        raw,
    );
    body.sample = Some(format!("S-{n:08}"));
    body.hazard = Some("physical".into());
    Ok(Entry {
        instrument: "balance-1".into(),
        kind: Kind::Reading,
        time: CaptureTime::now(),
        body: record::body(&body)?,
    })
}
