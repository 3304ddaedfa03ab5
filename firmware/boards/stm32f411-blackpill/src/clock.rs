//! The node's clock: milliseconds since boot, counted by SysTick from the
//! processor clock. The count is a `u64`: it does not wrap in the life of a
//! node.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

/// Milliseconds since boot, as two halves: Cortex-M4 has no 64-bit atomics.
/// Only the SysTick exception writes them; readers retry across a carry.
static MS_LOW: AtomicU32 = AtomicU32::new(0);
static MS_HIGH: AtomicU32 = AtomicU32::new(0);

/// Starts the millisecond tick from a processor clock of `cpu_hz`.
pub fn start(syst: &mut SYST, cpu_hz: u32) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(cpu_hz / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Milliseconds since [`start`].
pub fn now_ms() -> u64 {
    loop {
        let high = MS_HIGH.load(Ordering::Acquire);
        let low = MS_LOW.load(Ordering::Acquire);
        if MS_HIGH.load(Ordering::Acquire) == high {
            return (u64::from(high) << 32) | u64::from(low);
        }
    }
}

#[exception]
fn SysTick() {
    let low = MS_LOW.load(Ordering::Relaxed).wrapping_add(1);
    if low == 0 {
        MS_HIGH.fetch_add(1, Ordering::Release);
    }
    MS_LOW.store(low, Ordering::Release);
}
