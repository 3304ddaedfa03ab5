//! A kouan sensor node on an STM32F411CEU6 "Black Pill" (WeAct v3.x).
//!
//! The board is cheap, easy to buy, flashes through any ST-Link or
//! CMSIS-DAP probe with probe-rs, and its 512 KiB flash and 128 KiB RAM
//! leave the node logic plenty of room. This file is the board module: it
//! brings up the clocks and peripherals, wires them to the node's generic
//! parts, and runs the node's loop. Everything that decides anything lives
//! in `kouan_firmware`, tested on the host.
//!
//! # Pin map
//!
//! | pin | function | to |
//! | --- | --- | --- |
//! | PA9 | USART1 TX | gateway adapter RX (3.3 V logic) |
//! | PA10 | USART1 RX | gateway adapter TX (3.3 V logic, 5 V tolerant) |
//! | PB6 | I2C1 SCL | SHT3x SCL, ADS1115 SCL (4.7 kΩ pull-up to 3.3 V) |
//! | PB7 | I2C1 SDA | SHT3x SDA, ADS1115 SDA (4.7 kΩ pull-up to 3.3 V) |
//! | PA8 | EXTI8, falling edge, pull-up | Geiger counter board's pulse output (active low) |
//! | PB12 | push-pull output, active high | alarm lamp or buzzer driver (transistor or relay module) |
//! | PC13 | on-board LED, active low | identify |
//!
//! The SHT3x sits at 0x44 (ADDR to GND), the ADS1115 at 0x48 (ADDR to
//! GND) with the gas sensor's output on AIN0. docs/firmware.md has the
//! wiring to the gateway.
//!
//! # Clocks and time
//!
//! The 25 MHz crystal drives the PLL to 84 MHz (the F411 runs up to 100 MHz;
//! 84 MHz keeps APB1 at 42 MHz, within its 50 MHz limit). SysTick counts
//! milliseconds for the node; TIM5 times the drivers' waits.
//!
//! # Receiving
//!
//! USART1 has a one-byte receive register: at 115200 baud a byte arrives
//! every 87 µs, far faster than the loop can promise to look while a
//! driver waits 15 ms for the SHT3x. So the RXNE interrupt moves each byte
//! into a 256-byte queue, and the loop reads the queue.
//!
//! # Boot id
//!
//! The F411 has no random number generator. The boot id hashes 64
//! conversions of the internal temperature sensor, taken with the shortest
//! sampling time so that their lowest bits are noise, together with the
//! chip's unique id. docs/firmware.md states how far this can be trusted.
#![no_std]
#![no_main]
// The interrupt handlers' shared state and unmasking interrupts in the NVIC.
#![allow(unsafe_code)]

mod clock;
mod uart;

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::interrupt::Mutex;
use cortex_m_rt::entry;
use embedded_hal::digital::{ErrorType, OutputPin};
use embedded_hal_bus::i2c::RefCellDevice;
use kouan_firmware::drivers::gas::{AdcAddress, Ads1115, Calibration, DataRate, FullScale, Input};
use kouan_firmware::drivers::geiger::{self, Counter, SBM20_CPM_PER_USV_H};
use kouan_firmware::drivers::sht3x::{Address, Sht3x};
use kouan_firmware::node::{Config, Node, PinOutputs};
use kouan_firmware::station::{self, GEIGER_TICK_MS, Station};
use stm32f4xx_hal::adc::config::{AdcConfig, SampleTime};
use stm32f4xx_hal::adc::{Adc, Temperature};
use stm32f4xx_hal::gpio::{Edge, Input as PinInput, PA8};
use stm32f4xx_hal::i2c::{I2c, Mode};
use stm32f4xx_hal::pac::{self, interrupt};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::{self, Rcc};
use stm32f4xx_hal::serial::{self, Serial};
use stm32f4xx_hal::signature::Uid;
use stm32f4xx_hal::watchdog::IndependentWatchdog;

#[cfg(feature = "defmt")]
use defmt_rtt as _;

/// Samples kept until acknowledged: at the default interval, 128 samples
/// hold 25 seconds of all five sensors; at one sample a minute each, seven
/// minutes of an agent restart or unplugged cable.
const CAPACITY: usize = 128;

/// Every sensor's interval at boot; the agent changes it with
/// `set-interval`.
const INTERVAL_MS: u32 = 10_000;

/// The shortest interval `set-interval` accepts: an SHT3x measured more
/// often than once a second warms itself.
const MIN_INTERVAL_MS: u32 = 1_000;

/// The watchdog resets a node whose loop stops: a hung I2C bus, a bug.
/// The longest step (two I2C conversions and a few frames) takes tens of
/// milliseconds.
const WATCHDOG_MS: u32 = 2_000;

/// The node id; unique at a monitoring point, so an integrator sets it per
/// node (docs/firmware.md).
const NODE_ID: &str = match option_env!("KOUAN_NODE_ID") {
    Some(id) => id,
    None => "blackpill-node",
};

/// Geiger pulses counted by the EXTI interrupt since the last tick.
static PULSES: AtomicU32 = AtomicU32::new(0);

/// The Geiger input pin, for the interrupt to clear its pending bit.
static TUBE: Mutex<RefCell<Option<PA8<PinInput>>>> = Mutex::new(RefCell::new(None));

#[entry]
fn main() -> ! {
    static mut NODE: Node<CAPACITY> = Node::empty();

    let (Some(mut dp), Some(mut cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take())
    else {
        panic!("peripherals taken twice");
    };
    let mut rcc = dp.RCC.freeze(rcc::Config::hse(25.MHz()).sysclk(84.MHz()));
    clock::start(&mut cp.SYST, rcc.clocks.sysclk().raw());
    let boot = boot_id(dp.ADC1, &mut rcc);

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let gpioc = dp.GPIOC.split(&mut rcc);

    let serial = Serial::new(
        dp.USART1,
        (gpioa.pa9, gpioa.pa10),
        serial::Config::default().baudrate(115_200.bps()),
        &mut rcc,
    );
    let Ok(serial) = serial else {
        panic!("usart1 refused 115200 baud");
    };
    let mut uart = uart::Uart::new(serial);

    // One I2C bus for both sensors; the drivers each get a device on it.
    let i2c = I2c::new(
        dp.I2C1,
        (gpiob.pb6, gpiob.pb7),
        Mode::standard(100.kHz()),
        &mut rcc,
    );
    let bus = RefCell::new(i2c);
    let delay = dp.TIM5.delay_us(&mut rcc);

    let mut syscfg = dp.SYSCFG.constrain(&mut rcc);
    let mut tube = gpioa.pa8.into_pull_up_input();
    tube.make_interrupt_source(&mut syscfg);
    tube.trigger_on_edge(&mut dp.EXTI, Edge::Falling);
    tube.enable_interrupt(&mut dp.EXTI);
    cortex_m::interrupt::free(|cs| TUBE.borrow(cs).replace(Some(tube)));
    // SAFETY: the handler below only touches TUBE and PULSES, which are
    // ready before the interrupt is unmasked.
    unsafe { pac::NVIC::unmask(pac::Interrupt::EXTI9_5) };

    let mut alarm = gpiob.pb12.into_push_pull_output();
    alarm.set_low();
    let mut led = gpioc.pc13.into_push_pull_output();
    led.set_high();
    let mut outputs = PinOutputs {
        alarm,
        identify: ActiveLow(led),
    };

    let sensors = station::sensors(INTERVAL_MS, MIN_INTERVAL_MS);
    let config = Config {
        node_id: NODE_ID,
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

    // A CO cell board: 0.4 V in zero air, 1.6 V in 100 ppm span gas,
    // range 0 to 500 ppm. Replace with the values of the site calibration.
    let geiger = geiger::Config {
        tick_ms: GEIGER_TICK_MS,
        dead_time_us: 90,
        cpm_per_usv_h: SBM20_CPM_PER_USV_H,
    };
    let (Ok(calibration), Ok(counter)) = (
        Calibration::new(0.4, 1.6, 100.0, 0.0..=500.0),
        Counter::new(geiger),
    ) else {
        panic!("sensor constants refused");
    };
    let mut station = Station::new(
        Sht3x::new(RefCellDevice::new(&bus), Address::Default),
        Ads1115::new(
            RefCellDevice::new(&bus),
            AdcAddress::Gnd,
            FullScale::V2_048,
            DataRate::Sps128,
        ),
        Input::Ain0,
        calibration,
        counter,
        delay,
    );

    let mut watchdog = IndependentWatchdog::new(dp.IWDG);
    watchdog.start(WATCHDOG_MS.millis());
    let mut next_tick = u64::from(GEIGER_TICK_MS);

    loop {
        let now = clock::now_ms();
        while now >= next_tick {
            station.geiger_tick(PULSES.swap(0, Ordering::Relaxed));
            next_tick += u64::from(GEIGER_TICK_MS);
        }

        // A UART error (overrun, noise) costs at most a frame, which the
        // link's retransmission recovers; the loop goes on.
        if node
            .step(now, &mut uart, &mut station, &mut outputs)
            .is_err()
        {
            #[cfg(feature = "defmt")]
            defmt::warn!("uart error");
        }
        watchdog.feed();
        // Sleep until SysTick, a received byte or a Geiger pulse.
        cortex_m::asm::wfi();
    }
}

/// This boot's id: a hash of ADC noise and the chip's unique id.
fn boot_id(adc1: pac::ADC1, rcc: &mut Rcc) -> u32 {
    let mut adc = Adc::new(adc1, true, AdcConfig::default(), rcc);
    adc.enable_temperature_and_vref();

    // FNV-1a over the conversions' 16-bit codes and the unique id.
    let mut hash: u32 = 0x811C_9DC5;
    let mut mix = |word: u32| hash = (hash ^ word).wrapping_mul(0x0100_0193);
    for _ in 0..64 {
        mix(u32::from(adc.convert(&Temperature, SampleTime::Cycles_3)));
    }
    let uid = Uid::get();
    mix(u32::from(uid.x()) << 16 | u32::from(uid.y()));
    mix(u32::from(uid.waf_num()));
    hash
}

/// An output pin that is on when low, like the Black Pill's LED.
struct ActiveLow<P>(P);

impl<P: ErrorType> ErrorType for ActiveLow<P> {
    type Error = P::Error;
}

impl<P: OutputPin> OutputPin for ActiveLow<P> {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.set_high()
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.set_low()
    }
}

#[interrupt]
fn EXTI9_5() {
    cortex_m::interrupt::free(|cs| {
        if let Some(tube) = TUBE.borrow(cs).borrow_mut().as_mut() {
            tube.clear_interrupt_pending_bit();
        }
    });
    PULSES.fetch_add(1, Ordering::Relaxed);
}

#[interrupt]
fn USART1() {
    uart::on_interrupt();
}

/// A panic stops the loop; the watchdog then resets the node, which comes
/// back with a new boot id and says hello again.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    #[cfg(feature = "defmt")]
    defmt::error!("panic");
    loop {
        cortex_m::asm::wfi();
    }
}
