//! A kouan sensor node on QEMU's `lm3s6965evb`, for end-to-end tests.
//!
//! The TI Stellaris LM3S6965 is a Cortex-M3 that QEMU emulates well: its
//! UART0 (an ARM PL011 at `0x4000C000`) goes to a host pty with `-serial
//! pty`, and SysTick gives the node its millisecond clock. The board has no
//! sensors, so the image runs the real drivers against the simulated SHT3x,
//! ADS1115 and Geiger tube of `kouan_firmware::sim`, whose values follow a
//! fixed pattern. The alarm output is the board's user LED on PF0; the node
//! reports its state as samples of the alarm sensor, so a test sees it on
//! the link. The board has no second LED, so `identify` is answered
//! `unsupported`.
//!
//! # Boot id
//!
//! The node link needs a boot id that differs at every reset. QEMU has no
//! entropy to offer a guest, so the host gives one: the test harness starts
//! QEMU with `-device loader,addr=0x2000fff0,data=SEED,data-len=4`, which
//! writes a seed into the last RAM words at every reset. A reset counter
//! beside it survives `system_reset` (QEMU keeps RAM), so the boot id is
//! the seed plus the number of boots since QEMU started. Without a loader
//! the seed is 0 and boots are numbered 1, 2, ...
//!
//! Memory map: flash 256 KiB at 0, RAM 64 KiB at `0x2000_0000`, of which
//! the last 16 bytes hold the boot words (memory.x).
#![no_std]
#![no_main]
// Register access to the PL011, SysTick's exception and the boot words.
#![allow(unsafe_code)]

mod clock;
mod uart;

use cortex_m_rt::entry;
use kouan_firmware::drivers::gas::{AdcAddress, Ads1115, Calibration, DataRate, FullScale, Input};
use kouan_firmware::drivers::geiger::{self, Counter, SBM20_CPM_PER_USV_H};
use kouan_firmware::drivers::sht3x::{Address, Sht3x};
use kouan_firmware::node::{Config, Node, OutputError, Outputs};
use kouan_firmware::sim::{Ads1115Sim, GeigerSim, Sht3xSim};
use kouan_firmware::station::{self, GEIGER_TICK_MS, Station};

/// Samples the node keeps until they are acknowledged: with the default
/// interval, 128 samples are 25 seconds of all five sensors; at the
/// shortest, 2.5 seconds, so a test fills the buffer quickly.
const CAPACITY: usize = 128;

/// Every sensor's interval at boot.
const INTERVAL_MS: u32 = 1_000;

/// The shortest interval `set-interval` accepts. The simulated sensors
/// answer at once, but a real SHT3x measures for 15 ms.
const MIN_INTERVAL_MS: u32 = 100;

/// Where QEMU's loader device writes the boot seed (memory.x keeps it out
/// of every section).
const BOOT_SEED: *mut u32 = 0x2000_FFF0 as *mut u32;

/// Boots since QEMU started: zero at power-on, kept across resets.
const BOOT_COUNT: *mut u32 = 0x2000_FFF4 as *mut u32;

/// GPIO port F's data register, with the address mask for pin 0 only
/// (Stellaris GPIO data registers mask writes by address bits 9:2).
const GPIO_F_DATA_PF0: *mut u32 = (0x4002_5000 + (1 << 2)) as *mut u32;
/// GPIO port F's direction and digital-enable registers.
const GPIO_F_DIR: *mut u32 = 0x4002_5400 as *mut u32;
const GPIO_F_DEN: *mut u32 = 0x4002_551C as *mut u32;

#[entry]
fn main() -> ! {
    static mut NODE: Node<CAPACITY> = Node::empty();

    let Some(mut core) = cortex_m::Peripherals::take() else {
        panic!("peripherals taken twice");
    };
    clock::start(&mut core.SYST);
    let mut uart = uart::Pl011::uart0();
    let mut outputs = Lamp::new();

    let boot = boot_id();
    let sensors = station::sensors(INTERVAL_MS, MIN_INTERVAL_MS);
    let config = Config {
        node_id: "qemu-node",
        firmware: env!("CARGO_PKG_VERSION"),
        boot,
        sensors: &sensors,
    };
    // cortex-m-rt makes this a `&'static mut` that only `main` holds. An
    // all-zero static, so the sample buffer is neither in flash nor ever
    // copied through the stack, and the RAM figure (bss) includes it.
    let node: &'static mut Node<CAPACITY> = NODE;
    if node.init(&config).is_err() {
        panic!("node config refused");
    }

    let mut station = simulated_station();
    let mut tube = GeigerSim::new();
    let mut next_tick = u64::from(GEIGER_TICK_MS);

    loop {
        let now = clock::now_ms();
        while now >= next_tick {
            station.geiger_tick(tube.pulses());
            next_tick += u64::from(GEIGER_TICK_MS);
        }

        let Ok(()) = node.step(now, &mut uart, &mut station, &mut outputs);
        // Sleep until the next SysTick: the PL011's 16-byte FIFO holds
        // what arrives meanwhile, and QEMU does not hand it more bytes
        // than fit, so nothing is lost and the host's CPU stays idle.
        cortex_m::asm::wfi();
    }
}

/// The three drivers on simulated buses, calibrated like a CO cell board:
/// 0.5 V in zero air, 1.5 V in 100 ppm span gas, range 0 to 500 ppm.
fn simulated_station() -> Station<Sht3xSim, Ads1115Sim, clock::Delay> {
    let geiger = geiger::Config {
        tick_ms: GEIGER_TICK_MS,
        dead_time_us: 90,
        cpm_per_usv_h: SBM20_CPM_PER_USV_H,
    };
    let (Ok(calibration), Ok(counter)) = (
        Calibration::new(0.5, 1.5, 100.0, 0.0..=500.0),
        Counter::new(geiger),
    ) else {
        panic!("sensor constants refused");
    };
    Station::new(
        Sht3x::new(Sht3xSim::new(), Address::Default),
        Ads1115::new(
            Ads1115Sim::new(),
            AdcAddress::Gnd,
            FullScale::V2_048,
            DataRate::Sps128,
        ),
        Input::Ain0,
        calibration,
        counter,
        clock::Delay,
    )
}

/// This boot's id: the host's seed plus the boots since QEMU started.
fn boot_id() -> u32 {
    // SAFETY: both words lie in RAM reserved by memory.x, outside every
    // section, so nothing else refers to them; this runs once, before
    // anything could be interrupted by code that touches them.
    unsafe {
        let count = BOOT_COUNT.read_volatile().wrapping_add(1);
        BOOT_COUNT.write_volatile(count);
        BOOT_SEED.read_volatile().wrapping_add(count)
    }
}

/// The user LED on PF0 as the alarm output.
struct Lamp;

impl Lamp {
    fn new() -> Self {
        // SAFETY: GPIO port F's registers are memory-mapped at these
        // addresses on the LM3S6965 and only this type touches them.
        // (QEMU clocks every GPIO port; real silicon would first need
        // port F's bit in RCGC2.)
        unsafe {
            GPIO_F_DIR.write_volatile(GPIO_F_DIR.read_volatile() | 1);
            GPIO_F_DEN.write_volatile(GPIO_F_DEN.read_volatile() | 1);
        }
        Lamp
    }
}

impl Outputs for Lamp {
    fn set_alarm(&mut self, level: Option<u8>) -> Result<(), OutputError> {
        let bit = u32::from(level.is_some());
        // SAFETY: the masked data register of PF0, see `Lamp::new`.
        unsafe { GPIO_F_DATA_PF0.write_volatile(bit) };
        Ok(())
    }

    fn set_identify(&mut self, _on: bool) -> Result<(), OutputError> {
        Err(OutputError::Unsupported)
    }
}

#[cfg(feature = "semihosting")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cortex_m_semihosting::hprintln!("panic: {}", info);
    cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Without semihosting a panic halts the node: the host sees it fall
/// silent, and its watchdog (on a real board) resets it.
#[cfg(not(feature = "semihosting"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
