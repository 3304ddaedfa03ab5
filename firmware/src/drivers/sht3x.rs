//! Sensirion SHT3x (SHT30, SHT31, SHT35) temperature and humidity sensor.
//!
//! The driver uses single-shot measurements with high repeatability and
//! clock stretching disabled (command `0x2400`). Without clock stretching
//! the sensor does not hold the bus while it measures, so other devices on
//! the same I2C bus stay usable; the price is that the driver must wait the
//! datasheet's maximum measurement time before it reads, because a read
//! header sent too early is not acknowledged.
//!
//! A measurement is three I2C steps:
//!
//! 1. write `24 00` to the sensor (0x44, or 0x45 with ADDR pulled high);
//! 2. wait 15 ms, the maximum of t_MEAS for high repeatability;
//! 3. read six bytes: temperature MSB, LSB, CRC, humidity MSB, LSB, CRC.
//!
//! Each 16-bit word carries a CRC-8 (polynomial 0x31, initial value 0xFF,
//! no reflection, no final XOR); the datasheet's example word `0xBEEF` has
//! the CRC `0x92`. A word whose CRC does not match is reported as
//! [`Error::Crc`] and not converted: one flipped bit moves the temperature
//! by anything from 0.003 to 87.5 °C, and the small jumps look like real
//! readings to any plausibility check downstream.
//!
//! ```
//! # use embedded_hal_mock::eh1::{delay::NoopDelay, i2c::{Mock, Transaction}};
//! use kouan_firmware::drivers::sht3x::{Address, Sht3x};
//!
//! // The sensor answers 66 66 93 66 66 93: the word 0x6666 with its CRC,
//! // twice, which is 25.0 °C and 40.0 %RH.
//! # let i2c = Mock::new(&[
//! #     Transaction::write(0x44, vec![0x24, 0x00]),
//! #     Transaction::read(0x44, vec![0x66, 0x66, 0x93, 0x66, 0x66, 0x93]),
//! # ]);
//! let mut sensor = Sht3x::new(i2c, Address::Default);
//! let reading = sensor.measure(&mut NoopDelay::new()).unwrap();
//! assert_eq!(reading.temperature, 25.0);
//! assert_eq!(reading.humidity, 40.0);
//! # sensor.release().done();
//! ```

use core::fmt;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Single shot, high repeatability, clock stretching disabled.
const CMD_MEASURE_HIGH: [u8; 2] = [0x24, 0x00];
/// Soft reset: reloads calibration data, like a power cycle.
const CMD_SOFT_RESET: [u8; 2] = [0x30, 0xA2];
/// Read the 16-bit status register (followed by its CRC).
const CMD_READ_STATUS: [u8; 2] = [0xF3, 0x2D];
/// Clear the status register's alert and reset flags.
const CMD_CLEAR_STATUS: [u8; 2] = [0x30, 0x41];

/// Maximum measurement duration for high repeatability (datasheet table 4).
pub const MEASUREMENT_TIME_US: u32 = 15_000;
/// Maximum time the sensor needs after a soft reset (datasheet table 4).
pub const SOFT_RESET_TIME_US: u32 = 1_500;

/// The sensor's I2C address, chosen by its ADDR pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Address {
    /// 0x44, ADDR connected to VSS: the address of most breakout boards.
    #[default]
    Default,
    /// 0x45, ADDR connected to VDD: for a second sensor on the same bus.
    Alternate,
}

impl Address {
    /// The 7-bit address on the bus.
    pub const fn bits(self) -> u8 {
        match self {
            Address::Default => 0x44,
            Address::Alternate => 0x45,
        }
    }
}

/// What can go wrong talking to the sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C bus failed. A NACK on the read usually means that no sensor
    /// answers at the address or that it was still measuring.
    I2c(E),
    /// A data word's CRC did not match: the bytes were corrupted on the bus
    /// and were discarded. Measuring again is safe.
    Crc,
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "sht3x i2c error: {e:?}"),
            Error::Crc => f.write_str("sht3x crc mismatch"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// One measurement of air temperature and relative humidity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Air temperature in degrees Celsius, -45 to 130.
    pub temperature: f32,
    /// Relative humidity in percent, 0 to 100.
    pub humidity: f32,
}

/// The sensor's status register (datasheet table 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// At least one alert is pending (bit 15).
    pub fn alert_pending(self) -> bool {
        self.0 & (1 << 15) != 0
    }

    /// The internal heater is on (bit 13); readings are then too warm and too dry.
    pub fn heater_on(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// The sensor was reset (power-up, soft or hard reset) since the flag
    /// was last cleared (bit 4).
    pub fn reset_detected(self) -> bool {
        self.0 & (1 << 4) != 0
    }

    /// The last command was not processed: invalid or with a bad CRC (bit 1).
    pub fn command_failed(self) -> bool {
        self.0 & (1 << 1) != 0
    }
}

/// An SHT3x on an I2C bus.
///
/// The driver owns the bus handle; to share one bus among several drivers,
/// pass each a device from `embedded-hal-bus`. Delays are borrowed per call
/// so that all drivers of a node can share one timer.
#[derive(Debug)]
pub struct Sht3x<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Sht3x<I> {
    /// A driver for the sensor at `address`. Nothing is sent yet.
    pub fn new(i2c: I, address: Address) -> Self {
        Sht3x {
            i2c,
            address: address.bits(),
        }
    }

    /// Takes one measurement, blocking for 15 ms in `delay`.
    pub fn measure<D: DelayNs>(&mut self, delay: &mut D) -> Result<Reading, Error<I::Error>> {
        self.command(CMD_MEASURE_HIGH)?;

        delay.delay_us(MEASUREMENT_TIME_US);
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;

        let (t, rh) = buf.split_at(3);
        Ok(Reading {
            temperature: temperature_from_raw(checked_word(t)?),
            humidity: humidity_from_raw(checked_word(rh)?),
        })
    }

    /// Resets the sensor without a power cycle and waits until it is ready.
    ///
    /// Use it after repeated I2C errors, to start again from a known state;
    /// the sensor only accepts it while idle, not during a measurement.
    pub fn soft_reset<D: DelayNs>(&mut self, delay: &mut D) -> Result<(), Error<I::Error>> {
        self.command(CMD_SOFT_RESET)?;
        delay.delay_us(SOFT_RESET_TIME_US);
        Ok(())
    }

    /// Reads the status register.
    pub fn status(&mut self) -> Result<Status, Error<I::Error>> {
        self.command(CMD_READ_STATUS)?;

        let mut buf = [0u8; 3];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        Ok(Status(checked_word(&buf)?))
    }

    /// Clears the alert and reset flags of the status register, so that a
    /// later [`Status::reset_detected`] means a new reset.
    pub fn clear_status(&mut self) -> Result<(), Error<I::Error>> {
        self.command(CMD_CLEAR_STATUS)
    }

    /// Gives the bus handle back.
    pub fn release(self) -> I {
        self.i2c
    }

    fn command(&mut self, command: [u8; 2]) -> Result<(), Error<I::Error>> {
        self.i2c.write(self.address, &command).map_err(Error::I2c)
    }
}

/// The word in `bytes[0..2]` (big-endian) if `bytes[2]` is its CRC.
fn checked_word<E>(bytes: &[u8]) -> Result<u16, Error<E>> {
    match bytes {
        [msb, lsb, crc] if crc8(&[*msb, *lsb]) == *crc => Ok(u16::from_be_bytes([*msb, *lsb])),
        _ => Err(Error::Crc),
    }
}

/// CRC-8 of the SHT3x: polynomial 0x31, initial value 0xFF, MSB first.
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Temperature in °C from the sensor's raw word: -45 + 175 * raw / 65535.
pub fn temperature_from_raw(raw: u16) -> f32 {
    // The product fits an f32 mantissa exactly (175 * 65535 < 2^24), so
    // only the division rounds.
    -45.0 + 175.0 * f32::from(raw) / 65535.0
}

/// Relative humidity in % from the sensor's raw word: 100 * raw / 65535.
pub fn humidity_from_raw(raw: u16) -> f32 {
    100.0 * f32::from(raw) / 65535.0
}

#[cfg(test)]
mod tests {
    use std::vec;

    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as Wait};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    #[test]
    fn crc_matches_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn measure_writes_command_waits_and_converts() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, vec![0x66, 0x66, 0x93, 0x33, 0x33, 0x88]),
        ]);
        let mut delay = CheckedDelay::new(&[Wait::delay_ms(15)]);

        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);
        let reading = sensor.measure(&mut delay).unwrap();

        assert_eq!(
            reading,
            Reading {
                temperature: 25.0,
                humidity: 20.0
            }
        );
        i2c.done();
        delay.done();
    }

    #[test]
    fn alternate_address_is_0x45() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x45, vec![0x24, 0x00]),
            Transaction::read(0x45, vec![0x00, 0x00, 0x81, 0xFF, 0xFF, 0xAC]),
        ]);
        let mut delay = CheckedDelay::new(&[Wait::delay_us(15_000)]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Alternate);

        let reading = sensor.measure(&mut delay);

        assert_eq!(
            reading,
            Ok(Reading {
                temperature: -45.0,
                humidity: 100.0
            })
        );
        i2c.done();
        delay.done();
    }

    #[test]
    fn corrupt_temperature_word_is_rejected() {
        // 0x6667 with the CRC of 0x6666: one bit flipped on the bus.
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, vec![0x66, 0x67, 0x93, 0x33, 0x33, 0x88]),
        ]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.measure(&mut NoopDelay::new()), Err(Error::Crc));
        i2c.done();
    }

    #[test]
    fn corrupt_humidity_word_is_rejected() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, vec![0x66, 0x66, 0x93, 0x33, 0x33, 0x89]),
        ]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.measure(&mut NoopDelay::new()), Err(Error::Crc));
        i2c.done();
    }

    #[test]
    fn nack_on_read_is_an_i2c_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0x24, 0x00]),
            Transaction::read(0x44, vec![0; 6]).with_error(nack),
        ]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.measure(&mut NoopDelay::new()), Err(Error::I2c(nack)));
        i2c.done();
    }

    #[test]
    fn failed_command_write_skips_the_wait() {
        let mut i2c =
            Mock::new(&[Transaction::write(0x44, vec![0x24, 0x00]).with_error(ErrorKind::Bus)]);
        let mut delay = CheckedDelay::new(&[]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.measure(&mut delay), Err(Error::I2c(ErrorKind::Bus)));
        i2c.done();
        delay.done();
    }

    #[test]
    fn conversion_covers_the_full_scale() {
        assert_eq!(temperature_from_raw(0), -45.0);
        assert_eq!(temperature_from_raw(0xFFFF), 130.0);
        assert_eq!(temperature_from_raw(0x3333), -10.0);
        assert_eq!(humidity_from_raw(0), 0.0);
        assert_eq!(humidity_from_raw(0xFFFF), 100.0);
        assert_eq!(humidity_from_raw(0x6666), 40.0);
        // Mid-scale is not exactly 50 % because the divisor is 2^16 - 1.
        assert_eq!(humidity_from_raw(0x8000), 50.000_763);
    }

    #[test]
    fn soft_reset_waits_for_the_sensor() {
        let mut i2c = Mock::new(&[Transaction::write(0x44, vec![0x30, 0xA2])]);
        let mut delay = CheckedDelay::new(&[Wait::delay_us(1_500)]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.soft_reset(&mut delay), Ok(()));
        i2c.done();
        delay.done();
    }

    #[test]
    fn status_flags_are_decoded() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0xF3, 0x2D]),
            Transaction::read(0x44, vec![0x80, 0x10, 0xE1]),
            Transaction::write(0x44, vec![0x30, 0x41]),
        ]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        let status = sensor.status().unwrap();
        assert_eq!(status, Status(0x8010));
        assert!(status.alert_pending());
        assert!(status.reset_detected());
        assert!(!status.heater_on());
        assert!(!status.command_failed());
        assert_eq!(sensor.clear_status(), Ok(()));
        i2c.done();
    }

    #[test]
    fn corrupt_status_is_rejected() {
        let mut i2c = Mock::new(&[
            Transaction::write(0x44, vec![0xF3, 0x2D]),
            Transaction::read(0x44, vec![0x80, 0x10, 0xE0]),
        ]);
        let mut sensor = Sht3x::new(i2c.clone(), Address::Default);

        assert_eq!(sensor.status(), Err(Error::Crc));
        i2c.done();
    }
}
