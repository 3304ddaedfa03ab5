//! The node's clock: milliseconds since boot, counted by SysTick.
//!
//! SysTick runs from the processor clock, which QEMU's LM3S6965 model keeps
//! at 12 MHz (the crystal, PLL off) unless the RCC is programmed, so a
//! reload of 12 000 gives one exception per millisecond. The count is a
//! `u64`: it does not wrap in the life of a node.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

/// Processor clock of the LM3S6965 after reset under QEMU.
const CPU_HZ: u32 = 12_000_000;

/// Milliseconds since boot, as two halves: Cortex-M3 has no 64-bit atomics.
/// Only the SysTick exception writes them; readers retry across a carry.
static MS_LOW: AtomicU32 = AtomicU32::new(0);
static MS_HIGH: AtomicU32 = AtomicU32::new(0);

/// Starts the millisecond tick.
pub fn start(syst: &mut SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CPU_HZ / 1_000 - 1);
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

/// The drivers' waits, on the millisecond clock: at least as long as asked,
/// up to a millisecond longer, sleeping between ticks.
#[derive(Debug, Clone, Copy)]
pub struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        // One extra tick: the current millisecond may be nearly over.
        let until = now_ms() + u64::from(ns.div_ceil(1_000_000)) + 1;
        while now_ms() < until {
            cortex_m::asm::wfi();
        }
    }
}
