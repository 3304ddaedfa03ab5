//! The `modbus` driver: sensors on an RS-485 bus, polled over Modbus RTU.
//!
//! Cold-chain probes, gas detectors and gamma dose-rate meters at port
//! warehouses share one pair of wires; the agent is the bus's only master.
//! One `[[instrument]]` with `driver = "modbus"` is one bus: its port, its
//! serial settings, and under `[instrument.modbus]` the devices on it with
//! their points (see `docs/modbus.md`).
//!
//! The pieces, from the wire up:
//! - [`frame`]: requests (FC 01, 02, 03, 04, 06, 16) and the decoder of
//!   their answers, without I/O: CRC-16/MODBUS, framing by the expected
//!   length with resynchronisation after garbage, exception answers as
//!   typed errors ([`frame::ModbusError`]), broadcast rules.
//! - [`point`]: how registers make a value: data types, the four byte
//!   orders of 32-bit values, scale and offset, "40001" references.
//! - [`config`]: `[instrument.modbus]`, device profiles, validation.
//! - [`poll`]: the schedule without I/O: which points are due, which reads
//!   cover them, which values to report (deadband, heartbeat), and each
//!   device's health (last success, errors, timeouts, answering or not).
//! - `bus`: the task that owns the port and runs one request at a time.
//!
//! Each poll of a device that gives values to report becomes one reading:
//! its measurements are named `device.point`, its `raw` is the answer ADUs
//! the values came from, one after the other.
//!
//! ```
//! use kouan_agent::modbus::BusOptions;
//!
//! let options: BusOptions = toml::from_str(r#"
//!     [[device]]
//!     name = "gamma-1"
//!     address = 7
//!     profile = "gamma-dose-rate"
//!     order = "cdab"
//! "#)?;
//! let devices = options.devices()?;
//! assert_eq!(devices[0].points[0].point.name, "gamma-1.dose_rate");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bus;
pub mod config;
pub mod frame;
pub mod point;
pub mod poll;

use std::collections::BTreeMap;

use tokio::sync::Mutex;

pub use config::{BusOptions, DeviceOptions, PointOptions, Profile, WriteOptions};

use crate::instrument::Instrument;

/// One device's health as the status view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// Its name in the config.
    pub name: String,
    /// Its address on the bus.
    pub address: u8,
    /// Its health after the last request to it.
    pub health: poll::DeviceHealth,
}

/// Each running bus's devices by instrument id, as of their last request.
/// A plain mutex over a small map: written once per request, read once
/// per `kouan status`.
static HEALTH: std::sync::Mutex<BTreeMap<String, Vec<DeviceState>>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The devices of the `modbus` instrument `instrument` that have
/// been asked something since the agent started, in the order first asked.
pub fn health(instrument: &str) -> Vec<DeviceState> {
    let map = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    map.get(instrument).cloned().unwrap_or_default()
}

fn publish_health(instrument: &str, address: u8, name: &str, health: &poll::DeviceHealth) {
    let mut map = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    let devices = map.entry(instrument.to_owned()).or_default();
    let state = DeviceState {
        name: name.to_owned(),
        address,
        health: health.clone(),
    };
    match devices.iter_mut().find(|d| d.address == address) {
        Some(device) => *device = state,
        None => devices.push(state),
    }
}

/// Runs the `modbus` driver until the agent stops: one task for the bus,
/// reopening the port with backoff when it goes away. When it stops it
/// logs each device's health.
pub async fn run(instrument: &Instrument) {
    let options = instrument.config.modbus.clone().unwrap_or_default();
    let devices = match options.devices() {
        Ok(devices) => devices,
        Err(message) => {
            // The config check refuses this before start-up.
            tracing::error!(instrument = %instrument.id(), %message, "bad [instrument.modbus]");
            return;
        }
    };
    let settings = instrument.config.serial.clone();
    let timing = bus::Timing::new(&settings, options.turnaround_ms);
    let poller = Mutex::new(poll::Poller::new(devices, std::time::Instant::now()));

    bus::run_bus(instrument, &poller, &settings, timing).await;

    let poller = poller.into_inner();
    for ix in 0..poller.len() {
        let (spec, health) = (poller.spec(ix), poller.health(ix));
        let last_success = health.last_success.map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        tracing::info!(
            instrument = %instrument.id(),
            device = %spec.name,
            address = spec.address,
            answers = health.answers,
            errors = health.errors,
            timeouts = health.timeouts,
            last_success_unix = last_success,
            "modbus device health"
        );
    }
}
