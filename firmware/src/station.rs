//! The standard sensor station: the three drivers behind one [`Sensors`].
//!
//! Most kouan nodes carry the same set: an SHT3x for the warehouse climate,
//! a gas sensor on an ADS1115 input, and a Geiger-Müller tube for the gamma
//! dose rate around cargo. [`Station`] maps the node's sensor ids to those
//! drivers, so a board only builds the drivers on its buses and calls
//! [`Station::geiger_tick`] once per [`GEIGER_TICK_MS`] with the pulses
//! its counter saw.
//!
//! | id | sensor | quantity, unit | from |
//! | --- | --- | --- | --- |
//! | 0 | [`TEMPERATURE`] | temperature, °C | SHT3x |
//! | 1 | [`HUMIDITY`] | relative humidity, %RH | SHT3x |
//! | 2 | [`GAS`] | gas concentration, ppm | ADS1115 and [`Calibration`] |
//! | 3 | [`DOSE_RATE`] | dose rate, µSv/h | Geiger counter |
//! | 4 | [`COUNT_RATE`] | count rate, cpm | Geiger counter |
//! | 5 | [`ALARM`] | alarm output, level | set by commands |

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use kouan_protocol::{Quantity, Unit};

use crate::drivers::gas::{Ads1115, Calibration, Input, RangeStatus};
use crate::drivers::geiger::Counter;
use crate::drivers::sht3x::{self, Sht3x};
use crate::node::{SensorSpec, Sensors};

/// Sensor id of the air temperature.
pub const TEMPERATURE: u8 = 0;
/// Sensor id of the relative humidity.
pub const HUMIDITY: u8 = 1;
/// Sensor id of the gas concentration.
pub const GAS: u8 = 2;
/// Sensor id of the estimated gamma dose rate.
pub const DOSE_RATE: u8 = 3;
/// Sensor id of the tube's count rate.
pub const COUNT_RATE: u8 = 4;
/// Sensor id of the alarm output's state.
pub const ALARM: u8 = 5;

/// The Geiger counter's tick: the board hands over its pulse count this
/// often.
pub const GEIGER_TICK_MS: u32 = 1_000;

/// Ticks in the Geiger window: one minute, the usual counts-per-minute.
pub const GEIGER_WINDOW: usize = 60;

/// The station's sensors as the node announces them, each sampled every
/// `interval_ms` and never faster than `min_interval_ms`.
pub const fn sensors(interval_ms: u32, min_interval_ms: u32) -> [SensorSpec; 6] {
    const PERIODIC: [(u8, Quantity, Unit); 5] = [
        (TEMPERATURE, Quantity::Temperature, Unit::DegreeCelsius),
        (HUMIDITY, Quantity::RelativeHumidity, Unit::PercentRh),
        (GAS, Quantity::GasConcentration, Unit::Ppm),
        (DOSE_RATE, Quantity::DoseRate, Unit::MicrosievertPerHour),
        (COUNT_RATE, Quantity::CountRate, Unit::CountsPerMinute),
    ];
    let mut specs = [SensorSpec::alarm_output(ALARM); 6];
    let mut i = 0;
    while i < PERIODIC.len() {
        let (id, quantity, unit) = PERIODIC[i];
        specs[i] = SensorSpec::periodic(id, quantity, unit, interval_ms, min_interval_ms);
        i += 1;
    }
    specs
}

/// An SHT3x, a gas sensor on an ADS1115 input and a Geiger counter.
#[derive(Debug)]
pub struct Station<T, G, D> {
    climate: Sht3x<T>,
    /// The last climate measurement and when it was taken: temperature and
    /// humidity due in the same step share one 15 ms measurement.
    last_climate: Option<(u64, sht3x::Reading)>,
    adc: Ads1115<G>,
    gas_input: Input,
    calibration: Calibration,
    geiger: Counter<GEIGER_WINDOW>,
    delay: D,
}

impl<T: I2c, G: I2c, D: DelayNs> Station<T, G, D> {
    /// A station from its drivers; `delay` serves the drivers' waits.
    pub fn new(
        climate: Sht3x<T>,
        adc: Ads1115<G>,
        gas_input: Input,
        calibration: Calibration,
        geiger: Counter<GEIGER_WINDOW>,
        delay: D,
    ) -> Self {
        Station {
            climate,
            last_climate: None,
            adc,
            gas_input,
            calibration,
            geiger,
            delay,
        }
    }

    /// Hands over the pulses of one Geiger tick.
    pub fn geiger_tick(&mut self, pulses: u32) {
        self.geiger.tick(pulses);
    }

    fn climate(&mut self, now_ms: u64) -> Option<sht3x::Reading> {
        if let Some((at, reading)) = self.last_climate
            && at == now_ms
        {
            return Some(reading);
        }
        match self.climate.measure(&mut self.delay) {
            Ok(reading) => {
                self.last_climate = Some((now_ms, reading));
                Some(reading)
            }
            Err(sht3x::Error::Crc) => {
                warn!("sht3x crc mismatch");
                None
            }
            Err(sht3x::Error::I2c(_)) => {
                warn!("sht3x i2c error");
                None
            }
        }
    }

    fn gas(&mut self) -> Option<f32> {
        let Ok(conversion) = self.adc.convert(self.gas_input, &mut self.delay) else {
            warn!("ads1115 conversion failed");
            return None;
        };
        let reading = self.calibration.reading(conversion.volts());
        // A clamped value is still sent: at the range's end it is a bound,
        // and a missing sample would hide a high concentration.
        match reading.status {
            RangeStatus::Invalid => None,
            _ => Some(reading.concentration),
        }
    }
}

impl<T: I2c, G: I2c, D: DelayNs> Sensors for Station<T, G, D> {
    fn measure(&mut self, id: u8, now_ms: u64) -> Option<f32> {
        match id {
            TEMPERATURE => self.climate(now_ms).map(|r| r.temperature),
            HUMIDITY => self.climate(now_ms).map(|r| r.humidity),
            GAS => self.gas(),
            DOSE_RATE => self.geiger.reading().map(|r| r.usv_h),
            COUNT_RATE => self.geiger.reading().map(|r| r.cpm),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::delay::NoopDelay;

    use super::*;
    use crate::drivers::gas::{AdcAddress, DataRate, FullScale};
    use crate::drivers::geiger::Config;
    use crate::drivers::sht3x::Address;
    use crate::sim::{self, Ads1115Sim, Sht3xSim};

    fn station() -> Station<Sht3xSim, Ads1115Sim, NoopDelay> {
        let geiger = Config {
            tick_ms: GEIGER_TICK_MS,
            dead_time_us: 0,
            cpm_per_usv_h: 100.0,
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
            Calibration::new(0.5, 1.5, 100.0, 0.0..=500.0).unwrap(),
            Counter::new(geiger).unwrap(),
            NoopDelay::new(),
        )
    }

    #[test]
    fn temperature_and_humidity_in_one_step_share_a_measurement() {
        let mut station = station();

        let t0 = station.measure(TEMPERATURE, 0).unwrap();
        let rh0 = station.measure(HUMIDITY, 0).unwrap();
        let t1 = station.measure(TEMPERATURE, 1).unwrap();

        assert!((t0 - sim::sht3x_temperature(0)).abs() < 0.01);
        assert!((rh0 - sim::sht3x_humidity(0)).abs() < 0.01);
        assert!((t1 - sim::sht3x_temperature(1)).abs() < 0.01);
    }

    #[test]
    fn gas_goes_through_the_calibration() {
        let mut station = station();

        // 0.5 V is the zero point, 0.51 V one hundredth of the span.
        assert!(station.measure(GAS, 0).unwrap().abs() < 0.1);
        assert!((station.measure(GAS, 1).unwrap() - 1.0).abs() < 0.1);
    }

    #[test]
    fn geiger_rates_wait_for_the_first_tick() {
        let mut station = station();
        assert_eq!(station.measure(COUNT_RATE, 0), None);

        for _ in 0..60 {
            station.geiger_tick(1);
        }

        assert_eq!(station.measure(COUNT_RATE, 0), Some(60.0));
        assert_eq!(station.measure(DOSE_RATE, 0), Some(0.6));
    }

    #[test]
    fn unknown_sensor_has_no_value() {
        assert_eq!(station().measure(ALARM, 0), None);
    }
}
