//! Serial ports and the supervisor that keeps a device attached.
//!
//! A device is opened by the path in the config, which should be a stable
//! one (`/dev/serial/by-id/...`, or a udev symlink): USB adapters get a new
//! `/dev/ttyUSBn` whenever they re-enumerate, while the by-id link follows
//! them. Ports are opened exclusively (TIOCEXCL) and in raw mode, so no
//! line discipline edits the bytes and no second program reads half of
//! them.
//!
//! [`supervise`] runs a driver's sessions one after the other: open, run
//! the session until the device goes away, reopen with backoff (250 ms
//! doubling to 10 s, so a replugged cable is back within seconds without a
//! missing one spinning). Each change of state is logged once: `attached`
//! at info, `detached` and `not available` at warn; the retries in between
//! at debug.

use std::io;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};

use super::Instrument;

/// `[instrument.serial]`: line settings of a serial port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialSettings {
    /// Bits per second.
    pub baud: u32,
    /// 5, 6, 7 or 8.
    pub data_bits: u8,
    /// `none`, `even` or `odd`.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// `none`, `hardware` (RTS/CTS) or `software` (XON/XOFF).
    pub flow_control: FlowControl,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        }
    }
}

/// Parity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    /// None.
    None,
    /// RTS/CTS.
    Hardware,
    /// XON/XOFF.
    Software,
}

impl SerialSettings {
    /// Checks the values a UART can do.
    pub fn validate(&self) -> Result<(), String> {
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!(
                "data_bits = {} must be 5, 6, 7 or 8",
                self.data_bits
            ));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!("stop_bits = {} must be 1 or 2", self.stop_bits));
        }
        if self.baud == 0 {
            return Err("baud must be more than 0".into());
        }
        Ok(())
    }

    /// Opens `path` exclusively in raw mode with these settings.
    pub fn open(&self, path: &Path) -> io::Result<SerialStream> {
        let data_bits = match self.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = match self.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let flow_control = match self.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            FlowControl::Software => tokio_serial::FlowControl::Software,
        };
        let mut port = tokio_serial::new(path.to_string_lossy(), self.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(flow_control)
            .open_native_async()
            .map_err(io::Error::from)?;
        port.set_exclusive(true).map_err(io::Error::from)?;
        Ok(port)
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The agent is stopping.
    Shutdown,
    /// The device went away or failed; reopen it.
    Lost(io::Error),
}

/// Runs sessions on the device that `open` opens until the agent stops.
///
/// `open` is tried with backoff while it fails; each opened device is given
/// to `session`, which returns how it ended. Dropping the future closes the
/// device (the session's future owns it).
pub async fn supervise<D, S>(
    instrument: &Instrument,
    mut open: impl FnMut() -> io::Result<D>,
    mut session: impl FnMut(D) -> S,
) where
    S: Future<Output = Ended>,
{
    let id = instrument.id().to_owned();
    let location = instrument.config.location();
    let mut shutdown = instrument.shutdown.clone();
    let mut backoff = Backoff::default();
    let mut missing_logged = false;

    loop {
        if *shutdown.borrow() {
            return;
        }
        let device = match open() {
            Ok(device) => device,
            Err(error) => {
                if missing_logged {
                    tracing::debug!(instrument = %id, port = %location, %error, "still not available");
                } else {
                    tracing::warn!(
                        instrument = %id,
                        port = %location,
                        %error,
                        "instrument not available: check the cable and the port path; retrying"
                    );
                    missing_logged = true;
                }
                let delay = backoff.next();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = super::stopping(&mut shutdown) => return,
                }
            }
        };

        backoff = Backoff::default();
        super::Counters::add(&instrument.counters.attached, 1);
        tracing::info!(instrument = %id, port = %location, "instrument attached");
        match session(device).await {
            Ended::Shutdown => return,
            Ended::Lost(error) => {
                super::Counters::add(&instrument.counters.detached, 1);
                tracing::warn!(instrument = %id, port = %location, %error, "instrument detached");
                // Set the missing-log flag: the detach was the one message
                // for this absence, the failed reopens stay at debug.
                missing_logged = true;
            }
        }
    }
}

/// Exponential backoff with jitter, 250 ms to 10 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        // Up to a fifth more, so that instruments on one hub that vanished
        // together do not all retry in the same instant.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        delay + delay.mul_f64(f64::from(nanos % 1000) / 5000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(300));
        assert!(delays[1] >= Duration::from_millis(500));
        assert!(delays[7] >= Duration::from_secs(10) && delays[7] <= Duration::from_secs(12));
    }

    #[test]
    fn settings_are_checked() {
        let mut settings = SerialSettings::default();
        assert!(settings.validate().is_ok());
        settings.data_bits = 9;
        assert!(settings.validate().unwrap_err().contains("data_bits"));
        settings.data_bits = 7;
        settings.stop_bits = 3;
        assert!(settings.validate().unwrap_err().contains("stop_bits"));
    }
}
