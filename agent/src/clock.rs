//! The wall clock, and whether it can be trusted.
//!
//! Every record carries its capture time and whether the system clock was
//! synchronised (by NTP, chrony or PTP) at that moment. A gateway that
//! booted without network may run on a battery-less RTC set to 1970; the
//! platform must be able to tell such times from real ones.

use serde::{Deserialize, Serialize};

/// When something was captured, on the agent's wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureTime {
    /// Milliseconds since the Unix epoch, UTC.
    pub ms: i64,
    /// Whether the kernel considered the clock synchronised.
    pub synced: bool,
}

impl CaptureTime {
    /// Now.
    pub fn now() -> CaptureTime {
        CaptureTime {
            ms: unix_ms(),
            synced: clock_synchronised(),
        }
    }
}

/// Milliseconds since the Unix epoch; negative before it.
pub fn unix_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Whether the kernel's clock discipline reports a synchronised clock.
///
/// `adjtimex(2)` with no modes only reads the state: `TIME_ERROR` (or the
/// `STA_UNSYNC` status bit) means no time source has set the clock.
#[allow(unsafe_code)]
pub fn clock_synchronised() -> bool {
    // SAFETY: a zeroed timex with modes = 0 asks adjtimex to read, not set;
    // the kernel writes only into the struct we own for the call.
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}
