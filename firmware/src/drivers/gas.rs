//! Gas sensors with an analog output, read through a TI ADS1115 ADC.
//!
//! Electrochemical cells behind a potentiostat board, NDIR modules with a
//! voltage output and catalytic-bead bridges all end in a voltage that
//! rises or falls linearly with the gas concentration. Reading one is two
//! separate jobs, and this module keeps them apart so that each can be
//! tested and replaced alone:
//!
//! - [`Ads1115`] turns the voltage on one input into a [`Conversion`].
//!   embedded-hal 1.0 has no ADC trait, so rather than tie the drivers to
//!   one MCU's built-in ADC this is a driver for a common external one: a
//!   16-bit converter on I2C with a programmable gain amplifier.
//! - [`Calibration`] turns a voltage into a concentration from two points
//!   measured on site, zero gas and span gas, and says whether the result is
//!   inside the sensor's measuring range ([`Reading`]).
//!
//! # The ADS1115 conversion
//!
//! The driver uses single-shot mode: the converter powers down between
//! conversions, so an idle node draws no ADC current. One conversion is:
//!
//! 1. write the config register (pointer `0x01`) with the OS bit set to
//!    start, the input multiplexer, the full-scale range, single-shot mode,
//!    the data rate, and the comparator disabled;
//! 2. wait one conversion period (1 / data rate), then read the config
//!    register until its OS bit reads 1 (no conversion in progress). The
//!    datasheet allows the data rate to be 10 % slow, so the driver polls up
//!    to [`MAX_POLLS`] times, an eighth of a period apart, and gives up
//!    with [`AdcError::Timeout`] after nearly two periods: a converter that
//!    never finishes is a fault to report, not a reason to hang the node;
//! 3. read the conversion register (pointer `0x00`): a big-endian two's
//!    complement code, `full scale / 32768` volts per step.
//!
//! For input AIN0 against ground, ±4.096 V and 128 samples per second, the
//! config word is `0xC383`:
//!
//! ```
//! # use embedded_hal_mock::eh1::{delay::NoopDelay, i2c::{Mock, Transaction}};
//! use kouan_firmware::drivers::gas::{
//!     Ads1115, AdcAddress, Calibration, DataRate, FullScale, Input, RangeStatus,
//! };
//!
//! # let i2c = Mock::new(&[
//! #     Transaction::write(0x48, vec![0x01, 0xC3, 0x83]),
//! #     Transaction::write_read(0x48, vec![0x01], vec![0xC3, 0x83]),
//! #     Transaction::write_read(0x48, vec![0x00], vec![0x1F, 0x40]),
//! # ]);
//! let mut adc = Ads1115::new(i2c, AdcAddress::Gnd, FullScale::V4_096, DataRate::Sps128);
//! let conversion = adc.convert(Input::Ain0, &mut NoopDelay::new()).unwrap();
//! assert_eq!(conversion.raw, 8000);
//! assert_eq!(conversion.volts(), 1.0);
//!
//! // A CO cell board: 0.4 V in zero air, 1.6 V in 100 ppm span gas,
//! // measuring range 0 to 500 ppm.
//! let calibration = Calibration::new(0.4, 1.6, 100.0, 0.0..=500.0).unwrap();
//! let reading = calibration.reading(conversion.volts());
//! assert_eq!(reading.concentration, 50.0);
//! assert_eq!(reading.status, RangeStatus::Within);
//! # adc.release().done();
//! ```
//!
//! Known limit: the calibration is linear. Metal-oxide sensors (the MQ
//! series) respond roughly logarithmically, so a two-point line is only
//! right near its two points for them.

use core::fmt;
use core::ops::RangeInclusive;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Register pointer of the conversion result.
const REG_CONVERSION: u8 = 0x00;
/// Register pointer of the configuration.
const REG_CONFIG: u8 = 0x01;

/// Config bit 15: write 1 to start a single conversion; reads 1 when idle.
const OS: u16 = 1 << 15;
/// Config bit 8: single-shot mode (power down after each conversion).
const MODE_SINGLE_SHOT: u16 = 1 << 8;
/// Config bits 1:0 = 11: comparator off, ALERT/RDY pin high impedance.
const COMPARATOR_OFF: u16 = 0b11;

/// How many times [`Ads1115::convert`] reads the config register before it
/// gives up on a conversion.
pub const MAX_POLLS: u32 = 8;

/// The ADS1115's I2C address, chosen by what its ADDR pin is tied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdcAddress {
    /// 0x48, ADDR to GND.
    #[default]
    Gnd,
    /// 0x49, ADDR to VDD.
    Vdd,
    /// 0x4A, ADDR to SDA.
    Sda,
    /// 0x4B, ADDR to SCL.
    Scl,
}

impl AdcAddress {
    /// The 7-bit address on the bus.
    pub const fn bits(self) -> u8 {
        match self {
            AdcAddress::Gnd => 0x48,
            AdcAddress::Vdd => 0x49,
            AdcAddress::Sda => 0x4A,
            AdcAddress::Scl => 0x4B,
        }
    }
}

/// What the converter measures: a difference between two inputs, or one
/// input against ground. The discriminants are the multiplexer field's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// AIN0 minus AIN1.
    Ain0MinusAin1 = 0b000,
    /// AIN0 minus AIN3.
    Ain0MinusAin3 = 0b001,
    /// AIN1 minus AIN3.
    Ain1MinusAin3 = 0b010,
    /// AIN2 minus AIN3.
    Ain2MinusAin3 = 0b011,
    /// AIN0 against ground.
    Ain0 = 0b100,
    /// AIN1 against ground.
    Ain1 = 0b101,
    /// AIN2 against ground.
    Ain2 = 0b110,
    /// AIN3 against ground.
    Ain3 = 0b111,
}

impl Input {
    /// The multiplexer field, config bits 14:12.
    const fn mux(self) -> u16 {
        (self as u16) << 12
    }
}

/// The full-scale range of the programmable gain amplifier. The
/// discriminants are the PGA field's bits.
///
/// The range only scales the converter: no input may go beyond the supply
/// rails by more than 0.3 V whatever the range, so ±6.144 V on a 3.3 V
/// board still measures at most about 3.6 V. Pick the smallest range that
/// holds the sensor's highest output, for the finest step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullScale {
    /// ±6.144 V, 187.5 µV per step.
    V6_144 = 0b000,
    /// ±4.096 V, 125 µV per step.
    V4_096 = 0b001,
    /// ±2.048 V, 62.5 µV per step (the power-on default).
    V2_048 = 0b010,
    /// ±1.024 V, 31.25 µV per step.
    V1_024 = 0b011,
    /// ±0.512 V, 15.625 µV per step.
    V0_512 = 0b100,
    /// ±0.256 V, 7.8125 µV per step.
    V0_256 = 0b101,
}

impl FullScale {
    /// The PGA field, config bits 11:9.
    const fn pga(self) -> u16 {
        (self as u16) << 9
    }

    /// The range's positive end in millivolts.
    pub const fn millivolts(self) -> u16 {
        match self {
            FullScale::V6_144 => 6144,
            FullScale::V4_096 => 4096,
            FullScale::V2_048 => 2048,
            FullScale::V1_024 => 1024,
            FullScale::V0_512 => 512,
            FullScale::V0_256 => 256,
        }
    }
}

/// Conversions per second; slower rates average away more noise. The
/// discriminants are the data-rate field's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRate {
    /// 8 samples per second.
    Sps8 = 0b000,
    /// 16 samples per second.
    Sps16 = 0b001,
    /// 32 samples per second.
    Sps32 = 0b010,
    /// 64 samples per second.
    Sps64 = 0b011,
    /// 128 samples per second (the power-on default).
    Sps128 = 0b100,
    /// 250 samples per second.
    Sps250 = 0b101,
    /// 475 samples per second.
    Sps475 = 0b110,
    /// 860 samples per second.
    Sps860 = 0b111,
}

impl DataRate {
    /// The data-rate field, config bits 7:5.
    const fn dr(self) -> u16 {
        (self as u16) << 5
    }

    /// Nominal duration of one conversion in microseconds, rounded up.
    pub const fn period_us(self) -> u32 {
        let sps = match self {
            DataRate::Sps8 => 8,
            DataRate::Sps16 => 16,
            DataRate::Sps32 => 32,
            DataRate::Sps64 => 64,
            DataRate::Sps128 => 128,
            DataRate::Sps250 => 250,
            DataRate::Sps475 => 475,
            DataRate::Sps860 => 860,
        };
        1_000_000u32.div_ceil(sps)
    }
}

/// What can go wrong talking to the ADC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdcError<E> {
    /// The I2C bus failed.
    I2c(E),
    /// The conversion did not finish within [`MAX_POLLS`] reads of the
    /// config register. The converter is stuck or is not an ADS1115.
    Timeout,
}

impl<E: fmt::Debug> fmt::Display for AdcError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdcError::I2c(e) => write!(f, "ads1115 i2c error: {e:?}"),
            AdcError::Timeout => f.write_str("ads1115 conversion did not finish"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for AdcError<E> {}

/// One result of the converter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// The output code, -32768 to 32767.
    pub raw: i16,
    /// The range it was taken with.
    pub full_scale: FullScale,
}

impl Conversion {
    /// The input voltage in volts.
    pub fn volts(&self) -> f32 {
        // One step is full scale / 2^15: a power of two below the
        // millivolts, so the product in millivolts is exact and only the
        // division by 1000 rounds.
        let step_mv = f32::from(self.full_scale.millivolts()) / 32768.0;
        f32::from(self.raw) * step_mv / 1000.0
    }

    /// The input was at or beyond the end of the range: the true voltage
    /// may be higher (or lower) than [`Conversion::volts`] says.
    pub fn clipped(&self) -> bool {
        self.raw == i16::MAX || self.raw == i16::MIN
    }
}

/// An ADS1115 on an I2C bus, converting one input at a time.
#[derive(Debug)]
pub struct Ads1115<I> {
    i2c: I,
    address: u8,
    full_scale: FullScale,
    data_rate: DataRate,
}

impl<I: I2c> Ads1115<I> {
    /// A driver for the converter at `address`. Nothing is sent yet: the
    /// configuration goes out with each conversion, so a converter that was
    /// reset in between still converts as asked.
    pub fn new(i2c: I, address: AdcAddress, full_scale: FullScale, data_rate: DataRate) -> Self {
        Ads1115 {
            i2c,
            address: address.bits(),
            full_scale,
            data_rate,
        }
    }

    /// Converts `input` once, blocking in `delay` for about one conversion
    /// period (7.8 ms at 128 samples per second).
    pub fn convert<D: DelayNs>(
        &mut self,
        input: Input,
        delay: &mut D,
    ) -> Result<Conversion, AdcError<I::Error>> {
        let config = self.config(input);
        let [hi, lo] = config.to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(AdcError::I2c)?;

        let period = self.data_rate.period_us();
        delay.delay_us(period);
        let mut polls = 1;
        while !self.idle()? {
            if polls == MAX_POLLS {
                return Err(AdcError::Timeout);
            }
            polls += 1;
            delay.delay_us(period.div_ceil(8));
        }

        let raw = i16::from_be_bytes(self.read_register(REG_CONVERSION)?);
        Ok(Conversion {
            raw,
            full_scale: self.full_scale,
        })
    }

    /// The config word that starts a single-shot conversion of `input`.
    pub fn config(&self, input: Input) -> u16 {
        OS | input.mux()
            | self.full_scale.pga()
            | MODE_SINGLE_SHOT
            | self.data_rate.dr()
            | COMPARATOR_OFF
    }

    /// Gives the bus handle back.
    pub fn release(self) -> I {
        self.i2c
    }

    fn idle(&mut self) -> Result<bool, AdcError<I::Error>> {
        let config = u16::from_be_bytes(self.read_register(REG_CONFIG)?);
        Ok(config & OS != 0)
    }

    fn read_register(&mut self, pointer: u8) -> Result<[u8; 2], AdcError<I::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[pointer], &mut buf)
            .map_err(AdcError::I2c)?;
        Ok(buf)
    }
}

/// Why a set of calibration points was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationError {
    /// A voltage, concentration or range end is NaN or infinite.
    NotFinite,
    /// The span gas concentration is not above zero.
    SpanNotPositive,
    /// The sensor gave the same voltage for zero and span gas: it did not
    /// respond, and no line goes through the two points.
    NoResponse,
    /// The measuring range is empty or reversed.
    EmptyRange,
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CalibrationError::NotFinite => "calibration value is not a finite number",
            CalibrationError::SpanNotPositive => "span gas concentration must be above zero",
            CalibrationError::NoResponse => "same voltage for zero and span gas",
            CalibrationError::EmptyRange => "measuring range is empty",
        })
    }
}

impl core::error::Error for CalibrationError {}

/// Where a concentration lies against the sensor's measuring range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStatus {
    /// Inside the range, ends included.
    Within,
    /// Below the range; the reading was raised to its lower end. A little
    /// below zero is normal noise around zero gas; far below is a drifted
    /// zero or a broken sensor.
    Below,
    /// Above the range; the reading was lowered to its upper end. The true
    /// concentration is at least that.
    Above,
    /// The voltage was not a number; the reading is NaN.
    Invalid,
}

/// A gas concentration, clamped to the sensor's measuring range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The concentration, in the unit the span gas was given in.
    pub concentration: f32,
    /// Whether clamping changed it.
    pub status: RangeStatus,
}

/// A two-point calibration of a gas sensor's voltage output.
///
/// Zero gas (clean air or nitrogen) fixes the voltage at concentration 0;
/// span gas of a known concentration fixes the slope. Both points come from
/// a calibration on site, because cells drift and the analog front end adds
/// its own offset. The sensor's output may rise or fall with concentration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    zero_volts: f32,
    span_volts: f32,
    span_concentration: f32,
    range_min: f32,
    range_max: f32,
}

impl Calibration {
    /// A calibration from the voltages read in zero gas and in span gas of
    /// `span_concentration`, for a sensor that measures `range`.
    pub fn new(
        zero_volts: f32,
        span_volts: f32,
        span_concentration: f32,
        range: RangeInclusive<f32>,
    ) -> Result<Self, CalibrationError> {
        let (range_min, range_max) = range.into_inner();
        let values = [
            zero_volts,
            span_volts,
            span_concentration,
            range_min,
            range_max,
        ];
        if !values.iter().all(|v| v.is_finite()) {
            return Err(CalibrationError::NotFinite);
        }
        if span_concentration <= 0.0 {
            return Err(CalibrationError::SpanNotPositive);
        }
        if span_volts == zero_volts {
            return Err(CalibrationError::NoResponse);
        }
        if range_min >= range_max {
            return Err(CalibrationError::EmptyRange);
        }

        Ok(Calibration {
            zero_volts,
            span_volts,
            span_concentration,
            range_min,
            range_max,
        })
    }

    /// The concentration for a voltage, unclamped: the straight line
    /// through the zero and span points.
    pub fn concentration(&self, volts: f32) -> f32 {
        self.span_concentration * (volts - self.zero_volts) / (self.span_volts - self.zero_volts)
    }

    /// The concentration for a voltage, clamped to the measuring range and
    /// flagged when clamping changed it.
    pub fn reading(&self, volts: f32) -> Reading {
        let concentration = self.concentration(volts);

        let (concentration, status) = if concentration.is_nan() {
            (f32::NAN, RangeStatus::Invalid)
        } else if concentration < self.range_min {
            (self.range_min, RangeStatus::Below)
        } else if concentration > self.range_max {
            (self.range_max, RangeStatus::Above)
        } else {
            (concentration, RangeStatus::Within)
        };
        Reading {
            concentration,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::vec;

    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as Wait};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    #[test]
    fn config_words_match_the_register_map() {
        let adc = |full_scale, data_rate| {
            Ads1115::new(Mock::new(&[]), AdcAddress::Gnd, full_scale, data_rate)
        };
        let cases = [
            (Input::Ain0, FullScale::V4_096, DataRate::Sps128, 0xC383),
            (
                Input::Ain0MinusAin1,
                FullScale::V2_048,
                DataRate::Sps860,
                0x85E3,
            ),
            (Input::Ain3, FullScale::V0_256, DataRate::Sps8, 0xFB03),
            (
                Input::Ain2MinusAin3,
                FullScale::V6_144,
                DataRate::Sps475,
                0xB1C3,
            ),
        ];

        for (input, full_scale, data_rate, expected) in cases {
            let adc = adc(full_scale, data_rate);
            assert_eq!(
                adc.config(input),
                expected,
                "{input:?} {full_scale:?} {data_rate:?}"
            );
            adc.release().done();
        }
    }

    #[test]
    fn convert_starts_waits_polls_and_reads() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x49, vec![0x01, 0xC3, 0x83]),
            // Still converting: OS reads 0.
            Transaction::write_read(0x49, vec![0x01], vec![0x43, 0x83]),
            Transaction::write_read(0x49, vec![0x01], vec![0xC3, 0x83]),
            Transaction::write_read(0x49, vec![0x00], vec![0x1F, 0x40]),
        ]);
        // One period at 128 SPS (7812.5 µs, rounded up), then an eighth.
        let mut delay = CheckedDelay::new(&[Wait::delay_us(7_813), Wait::delay_us(977)]);
        let mut adc = Ads1115::new(
            i2c.clone(),
            AdcAddress::Vdd,
            FullScale::V4_096,
            DataRate::Sps128,
        );

        let conversion = adc.convert(Input::Ain0, &mut delay).unwrap();

        assert_eq!(
            conversion,
            Conversion {
                raw: 8000,
                full_scale: FullScale::V4_096
            }
        );
        assert_eq!(conversion.volts(), 1.0);
        i2c.done();
        delay.done();
    }

    #[test]
    fn conversion_that_never_finishes_times_out() {
        let busy = || Transaction::write_read(0x48, vec![0x01], vec![0x05, 0xE3]);
        let mut expected = vec![Transaction::write(0x48, vec![0x01, 0x85, 0xE3])];
        expected.extend((0..MAX_POLLS).map(|_| busy()));
        let mut i2c = Mock::new(&expected);
        // One period at 860 SPS, then seven polls an eighth of it apart.
        let mut waits = vec![Wait::delay_us(1_163)];
        waits.extend((1..MAX_POLLS).map(|_| Wait::delay_us(146)));
        let mut delay = CheckedDelay::new(&waits);
        let mut adc = Ads1115::new(
            i2c.clone(),
            AdcAddress::Gnd,
            FullScale::V2_048,
            DataRate::Sps860,
        );

        let result = adc.convert(Input::Ain0MinusAin1, &mut delay);

        assert_eq!(result, Err(AdcError::Timeout));
        i2c.done();
        delay.done();
    }

    #[test]
    fn failed_start_is_an_i2c_error() {
        let mut i2c =
            Mock::new(&[Transaction::write(0x4B, vec![0x01, 0xC3, 0x83])
                .with_error(ErrorKind::ArbitrationLoss)]);
        let mut delay = CheckedDelay::new(&[]);
        let mut adc = Ads1115::new(
            i2c.clone(),
            AdcAddress::Scl,
            FullScale::V4_096,
            DataRate::Sps128,
        );

        let result = adc.convert(Input::Ain0, &mut delay);

        assert_eq!(result, Err(AdcError::I2c(ErrorKind::ArbitrationLoss)));
        i2c.done();
        delay.done();
    }

    #[test]
    fn codes_convert_to_volts_on_every_range() {
        let volts = |raw, full_scale| Conversion { raw, full_scale }.volts();

        assert_eq!(volts(16_384, FullScale::V6_144), 3.072);
        assert_eq!(volts(16_384, FullScale::V4_096), 2.048);
        assert_eq!(volts(16_384, FullScale::V2_048), 1.024);
        assert_eq!(volts(16_384, FullScale::V1_024), 0.512);
        assert_eq!(volts(16_384, FullScale::V0_512), 0.256);
        assert_eq!(volts(16_384, FullScale::V0_256), 0.128);
        assert_eq!(volts(0, FullScale::V2_048), 0.0);
        // One step below zero, and both ends of the code range.
        assert_eq!(volts(-1, FullScale::V4_096), -0.000_125);
        assert_eq!(volts(i16::MAX, FullScale::V2_048), 2.047_937_5);
        assert_eq!(volts(i16::MIN, FullScale::V2_048), -2.048);
    }

    #[test]
    fn codes_at_the_ends_are_clipped() {
        let clipped = |raw| {
            Conversion {
                raw,
                full_scale: FullScale::V2_048,
            }
            .clipped()
        };

        assert!(clipped(i16::MAX));
        assert!(clipped(i16::MIN));
        assert!(!clipped(i16::MAX - 1));
        assert!(!clipped(0));
    }

    #[test]
    fn periods_round_up() {
        assert_eq!(DataRate::Sps8.period_us(), 125_000);
        assert_eq!(DataRate::Sps128.period_us(), 7_813);
        assert_eq!(DataRate::Sps250.period_us(), 4_000);
        assert_eq!(DataRate::Sps475.period_us(), 2_106);
        assert_eq!(DataRate::Sps860.period_us(), 1_163);
    }

    fn rising() -> Calibration {
        Calibration::new(0.5, 1.5, 100.0, 0.0..=500.0).unwrap()
    }

    #[test]
    fn calibration_is_the_line_through_zero_and_span() {
        let calibration = rising();

        assert_eq!(calibration.concentration(0.5), 0.0);
        assert_eq!(calibration.concentration(1.5), 100.0);
        assert_eq!(calibration.concentration(1.0), 50.0);
        assert_eq!(calibration.concentration(4.0), 350.0);
        assert_eq!(calibration.concentration(0.25), -25.0);
    }

    #[test]
    fn falling_output_is_calibrated_too() {
        let calibration = Calibration::new(2.0, 1.0, 1_000.0, 0.0..=2_000.0).unwrap();

        assert_eq!(
            calibration.reading(1.5),
            Reading {
                concentration: 500.0,
                status: RangeStatus::Within
            }
        );
        assert_eq!(calibration.reading(2.5).status, RangeStatus::Below);
    }

    #[test]
    fn readings_are_clamped_and_flagged() {
        let calibration = rising();
        let reading = |volts| calibration.reading(volts);

        assert_eq!(
            reading(0.25),
            Reading {
                concentration: 0.0,
                status: RangeStatus::Below
            }
        );
        assert_eq!(
            reading(7.0),
            Reading {
                concentration: 500.0,
                status: RangeStatus::Above
            }
        );
        assert_eq!(reading(f32::INFINITY).status, RangeStatus::Above);
        assert_eq!(reading(f32::NEG_INFINITY).status, RangeStatus::Below);
    }

    #[test]
    fn range_ends_are_inside() {
        let calibration = rising();

        assert_eq!(
            calibration.reading(0.5),
            Reading {
                concentration: 0.0,
                status: RangeStatus::Within
            }
        );
        assert_eq!(
            calibration.reading(5.5),
            Reading {
                concentration: 500.0,
                status: RangeStatus::Within
            }
        );
    }

    #[test]
    fn nan_voltage_is_invalid() {
        let reading = rising().reading(f32::NAN);

        assert_eq!(reading.status, RangeStatus::Invalid);
        assert!(reading.concentration.is_nan());
    }

    #[test]
    fn bad_calibrations_are_refused() {
        let new = Calibration::new;

        assert_eq!(
            new(f32::NAN, 1.5, 100.0, 0.0..=500.0),
            Err(CalibrationError::NotFinite)
        );
        assert_eq!(
            new(0.5, 1.5, 100.0, 0.0..=f32::INFINITY),
            Err(CalibrationError::NotFinite)
        );
        assert_eq!(
            new(0.5, 1.5, 0.0, 0.0..=500.0),
            Err(CalibrationError::SpanNotPositive)
        );
        assert_eq!(
            new(0.5, 1.5, -5.0, 0.0..=500.0),
            Err(CalibrationError::SpanNotPositive)
        );
        assert_eq!(
            new(0.5, 0.5, 100.0, 0.0..=500.0),
            Err(CalibrationError::NoResponse)
        );
        assert_eq!(
            new(0.5, 1.5, 100.0, 500.0..=500.0),
            Err(CalibrationError::EmptyRange)
        );
        assert_eq!(
            new(0.5, 1.5, 100.0, 500.0..=0.0),
            Err(CalibrationError::EmptyRange)
        );
    }

    #[test]
    fn error_messages_are_lowercase() {
        use std::string::ToString;

        assert_eq!(
            AdcError::<ErrorKind>::Timeout.to_string(),
            "ads1115 conversion did not finish"
        );
        assert_eq!(
            CalibrationError::NoResponse.to_string(),
            "same voltage for zero and span gas"
        );
    }
}
