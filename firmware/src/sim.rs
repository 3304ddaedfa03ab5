//! Simulated sensors with deterministic values, for the emulated board.
//!
//! QEMU's boards have no SHT3x, ADS1115 or Geiger tube, but the emulated
//! node should run the same driver code as a real one, so the image's size
//! and behaviour mean something. These stand-ins answer on the bus exactly
//! as the datasheets describe (with the SHT3x's CRC-8 on every word and the
//! ADS1115's ready bit), and produce values that follow a fixed pattern, so
//! a test knows what to expect:
//!
//! - [`Sht3xSim`]: temperature `22.0 + 0.25 × (n mod 8)` °C and humidity
//!   `45.0 + 0.5 × (n mod 8)` %RH at its `n`-th measurement (from 0), to
//!   the sensor's 16-bit resolution;
//! - [`Ads1115Sim`]: `0.5 + 0.01 × (n mod 8)` V on every input at its
//!   `n`-th conversion;
//! - [`GeigerSim`]: pulses per tick following [`GEIGER_PATTERN`], 30 counts
//!   per minute at one tick per second.

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::drivers::sht3x::crc8;

/// Pulses per tick the simulated tube gives, repeated: 5 pulses in 10
/// ticks.
pub const GEIGER_PATTERN: [u32; 10] = [1, 0, 0, 1, 0, 1, 0, 0, 1, 1];

/// The simulated SHT3x's temperature at its `n`-th measurement, in °C.
pub fn sht3x_temperature(n: u32) -> f32 {
    22.0 + 0.25 * (n % 8) as f32
}

/// The simulated SHT3x's humidity at its `n`-th measurement, in %RH.
pub fn sht3x_humidity(n: u32) -> f32 {
    45.0 + 0.5 * (n % 8) as f32
}

/// The simulated ADS1115's input voltage at its `n`-th conversion.
pub fn ads1115_volts(n: u32) -> f32 {
    0.5 + 0.01 * (n % 8) as f32
}

const NACK: ErrorKind = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);

/// An SHT3x on its own simulated bus, at address 0x44.
#[derive(Debug, Default)]
pub struct Sht3xSim {
    measurements: u32,
    /// The six bytes the next read returns, once a command asked for them.
    pending: Option<[u8; 6]>,
}

impl Sht3xSim {
    /// A sensor that has taken no measurement yet.
    pub const fn new() -> Self {
        Sht3xSim {
            measurements: 0,
            pending: None,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        match bytes {
            [0x24, 0x00] => {
                let n = self.measurements;
                self.measurements = n.wrapping_add(1);
                // The datasheet's conversions, inverted and rounded.
                let t = ((sht3x_temperature(n) + 45.0) * 65_535.0 / 175.0 + 0.5) as u16;
                let rh = (sht3x_humidity(n) * 65_535.0 / 100.0 + 0.5) as u16;
                let [t1, t0] = t.to_be_bytes();
                let [h1, h0] = rh.to_be_bytes();
                let frame = [t1, t0, crc8(&[t1, t0]), h1, h0, crc8(&[h1, h0])];
                self.pending = Some(frame);
            }
            [0xF3, 0x2D] => self.pending = Some([0, 0, crc8(&[0, 0]), 0, 0, 0]),
            [0x30, 0xA2] | [0x30, 0x41] => self.pending = None,
            _ => return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data)),
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        // Like the real sensor, a read without a measurement is not
        // acknowledged.
        let frame = self.pending.take().ok_or(NACK)?;
        let n = buf.len().min(frame.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(())
    }
}

impl ErrorType for Sht3xSim {
    type Error = ErrorKind;
}

impl I2c for Sht3xSim {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != 0x44 {
            return Err(NACK);
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => self.write(bytes)?,
                Operation::Read(buf) => self.read(buf)?,
            }
        }
        Ok(())
    }
}

/// An ADS1115 on its own simulated bus, at address 0x48.
#[derive(Debug, Default)]
pub struct Ads1115Sim {
    conversions: u32,
    config: u16,
    pointer: u8,
    result: i16,
}

impl Ads1115Sim {
    /// A converter in its power-on state.
    pub const fn new() -> Self {
        Ads1115Sim {
            conversions: 0,
            config: 0x8583,
            pointer: 0,
            result: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        let Some((&pointer, value)) = bytes.split_first() else {
            return Ok(());
        };
        self.pointer = pointer;
        if let (1, [hi, lo]) = (pointer, value) {
            self.config = u16::from_be_bytes([*hi, *lo]);
            if self.config & 0x8000 != 0 {
                self.convert();
            }
        }
        Ok(())
    }

    /// Finishes a single-shot conversion at once: the simulated converter
    /// is never busy when the driver first polls.
    fn convert(&mut self) {
        let n = self.conversions;
        self.conversions = n.wrapping_add(1);
        let full_scale_mv = match (self.config >> 9) & 0b111 {
            0 => 6144.0,
            1 => 4096.0,
            2 => 2048.0,
            3 => 1024.0,
            4 => 512.0,
            _ => 256.0,
        };
        let code = ads1115_volts(n) * 1_000.0 / full_scale_mv * 32_768.0;
        self.result = code.clamp(-32_768.0, 32_767.0) as i16;
    }

    fn read(&mut self, buf: &mut [u8]) {
        let word = match self.pointer {
            0 => self.result as u16,
            // The OS bit reads 1: no conversion in progress.
            1 => self.config | 0x8000,
            _ => 0,
        };
        for (dst, src) in buf.iter_mut().zip(word.to_be_bytes()) {
            *dst = src;
        }
    }
}

impl ErrorType for Ads1115Sim {
    type Error = ErrorKind;
}

impl I2c for Ads1115Sim {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != 0x48 {
            return Err(NACK);
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => self.write(bytes)?,
                Operation::Read(buf) => self.read(buf),
            }
        }
        Ok(())
    }
}

/// A Geiger tube's pulse counter that counts [`GEIGER_PATTERN`].
#[derive(Debug, Default)]
pub struct GeigerSim {
    ticks: usize,
}

impl GeigerSim {
    /// A counter at the start of the pattern.
    pub const fn new() -> Self {
        GeigerSim { ticks: 0 }
    }

    /// The pulses counted during the next tick.
    pub fn pulses(&mut self) -> u32 {
        let pulses = GEIGER_PATTERN[self.ticks % GEIGER_PATTERN.len()];
        self.ticks = self.ticks.wrapping_add(1);
        pulses
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::delay::NoopDelay;

    use super::*;
    use crate::drivers::gas::{AdcAddress, Ads1115, DataRate, FullScale, Input};
    use crate::drivers::sht3x::{Address, Sht3x};

    #[test]
    fn sht3x_driver_reads_the_pattern() {
        let mut sensor = Sht3x::new(Sht3xSim::new(), Address::Default);

        for n in 0..10 {
            let reading = sensor.measure(&mut NoopDelay::new()).unwrap();
            assert!((reading.temperature - sht3x_temperature(n)).abs() < 0.01);
            assert!((reading.humidity - sht3x_humidity(n)).abs() < 0.01);
        }
    }

    #[test]
    fn sht3x_read_without_measurement_is_not_acknowledged() {
        let mut sim = Sht3xSim::new();
        let mut buf = [0u8; 6];

        assert_eq!(I2c::read(&mut sim, 0x44, &mut buf), Err(NACK));
    }

    #[test]
    fn ads1115_driver_reads_the_pattern() {
        let mut adc = Ads1115::new(
            Ads1115Sim::new(),
            AdcAddress::Gnd,
            FullScale::V2_048,
            DataRate::Sps128,
        );

        for n in 0..10 {
            let conversion = adc.convert(Input::Ain0, &mut NoopDelay::new()).unwrap();
            assert!((conversion.volts() - ads1115_volts(n)).abs() < 0.001);
        }
    }

    #[test]
    fn wrong_address_is_not_acknowledged() {
        let mut adc = Ads1115::new(
            Ads1115Sim::new(),
            AdcAddress::Vdd,
            FullScale::V2_048,
            DataRate::Sps128,
        );

        assert!(adc.convert(Input::Ain0, &mut NoopDelay::new()).is_err());
    }

    #[test]
    fn geiger_pattern_gives_thirty_counts_a_minute() {
        let mut tube = GeigerSim::new();
        let counts: u32 = (0..60).map(|_| tube.pulses()).sum();

        assert_eq!(counts, 30);
    }
}
