//! `[instrument.modbus]`: the devices on a bus and their points.
//!
//! Options resolve in layers: a point's own key, else its device's, else
//! the bus's, else the default. A device may name a [`Profile`], a
//! shorthand for the points of a typical port sensor; a point listed with
//! the same name as a profile's point replaces it.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::frame::{BROADCAST, Request};
use super::point::{DataType, Point, Table, WordOrder};
use crate::instrument::InstrumentConfig;

/// `[instrument.modbus]`: one RS-485 bus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusOptions {
    /// Milliseconds to wait for an answer after a request has gone out
    /// (its transmission time and that of the answer are added).
    #[serde(default = "default_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Tries after the first when a device does not answer validly.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Milliseconds between polls of a point.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Milliseconds to wait after a broadcast write, for the devices to act
    /// (serial line v1.02, 2.4.1: "turnaround delay").
    #[serde(default = "default_turnaround_ms")]
    pub turnaround_ms: u64,
    /// The devices, in polling order.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceOptions>,
}

fn default_timeout_ms() -> u64 {
    500
}
fn default_retries() -> u32 {
    2
}
fn default_poll_ms() -> u64 {
    5000
}
fn default_turnaround_ms() -> u64 {
    200
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            response_timeout_ms: default_timeout_ms(),
            retries: default_retries(),
            poll_ms: default_poll_ms(),
            turnaround_ms: default_turnaround_ms(),
            devices: Vec::new(),
        }
    }
}

/// `[[instrument.modbus.device]]`: one device on the bus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOptions {
    /// Its name: the first part of its measurement names (`name.point`).
    pub name: String,
    /// Its address, 1 to 247; 0 is the broadcast address, for a device
    /// entry with writes and no points.
    pub address: u8,
    /// A profile's points (see [`Profile`]).
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Overrides the bus's response timeout.
    #[serde(default)]
    pub response_timeout_ms: Option<u64>,
    /// Overrides the bus's retries.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Default poll interval of its points.
    #[serde(default)]
    pub poll_ms: Option<u64>,
    /// Default deadband of its points.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Default heartbeat of its points.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// Default byte order of its points.
    #[serde(default)]
    pub order: Option<WordOrder>,
    /// Added to the register addresses of its profile's points, for a
    /// device that has the profile's layout at another place.
    #[serde(default)]
    pub profile_base: u16,
    /// Its points.
    #[serde(default, rename = "point")]
    pub points: Vec<PointOptions>,
    /// Configuration writes, sent (in order) when the bus is attached and
    /// whenever the device answers again after not answering.
    #[serde(default, rename = "write")]
    pub writes: Vec<WriteOptions>,
}

/// `[[instrument.modbus.device.point]]`: one value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointOptions {
    /// The measurement name (after `device.`).
    pub name: String,
    /// The table; with `register`. Default `holding-register`.
    #[serde(default)]
    pub table: Option<Table>,
    /// The 0-based protocol address ("40001" in a manual is register 0).
    #[serde(default)]
    pub register: Option<u16>,
    /// The manual's reference number instead of `table` and `register`:
    /// `"40001"` is holding register 0, `"30010"` input register 9.
    #[serde(default)]
    pub reference: Option<String>,
    /// `bool` (coils, discrete inputs), `u16`, `i16`, `u32`, `i32`, `f32`.
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    /// `abcd`, `cdab`, `badc` or `dcba`.
    #[serde(default)]
    pub order: Option<WordOrder>,
    /// Multiplies the raw number.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Added after scaling.
    #[serde(default)]
    pub offset: Option<f64>,
    /// The unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// Milliseconds between polls.
    #[serde(default)]
    pub poll_ms: Option<u64>,
    /// Report only when the value moved by more than this since it was last
    /// reported (0: on every change); without it, every poll is reported.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// With a deadband: report at least this often even when unchanged, so
    /// the platform sees the sensor is alive.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

/// `[[instrument.modbus.device.write]]`: registers to set (FC 06 for one
/// value, FC 16 for more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteOptions {
    /// The first holding register, 0-based.
    pub register: u16,
    /// The values, 1 to 123.
    pub values: Vec<u16>,
}

impl WriteOptions {
    /// The request that makes the write.
    pub fn request(&self) -> Request {
        match self.values.as_slice() {
            [value] => Request::WriteSingle {
                address: self.register,
                value: *value,
            },
            values => Request::WriteMultiple {
                address: self.register,
                values: values.to_vec(),
            },
        }
    }
}

/// Shorthands for typical port sensors. Each is the register map of a
/// common device family; where a device differs, name the points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Cold-chain temperature/humidity probes (the common RS-485 layout):
    /// holding register 0 humidity (u16, 0.1 %RH), 1 temperature (i16,
    /// 0.1 °C).
    TemperatureHumidity,
    /// Fixed gas detectors: holding register 0 the concentration (u16,
    /// ppm), 1 the alarm state (u16: 0 none, 1 low, 2 high).
    GasConcentration,
    /// Gamma dose-rate meters: input registers 0 and 1 the dose rate (f32,
    /// µSv/h, high word first unless `order` says otherwise).
    GammaDoseRate,
}

impl Profile {
    /// The profile's points, before the device's options apply.
    pub fn points(self) -> Vec<PointOptions> {
        let point = |name: &str, table, register, data_type, scale, unit: &str| PointOptions {
            name: name.into(),
            table: Some(table),
            register: Some(register),
            reference: None,
            data_type: Some(data_type),
            order: None,
            scale: Some(scale),
            offset: None,
            unit: (!unit.is_empty()).then(|| unit.into()),
            poll_ms: None,
            deadband: None,
            heartbeat_ms: None,
        };
        let holding = Table::HoldingRegister;
        match self {
            Profile::TemperatureHumidity => vec![
                point("humidity", holding, 0, DataType::U16, 0.1, "%RH"),
                point("temperature", holding, 1, DataType::I16, 0.1, "°C"),
            ],
            Profile::GasConcentration => vec![
                point("concentration", holding, 0, DataType::U16, 1.0, "ppm"),
                point("alarm", holding, 1, DataType::U16, 1.0, ""),
            ],
            Profile::GammaDoseRate => vec![point(
                "dose_rate",
                Table::InputRegister,
                0,
                DataType::F32,
                1.0,
                "µSv/h",
            )],
        }
    }
}

/// A device resolved from the options: what the poller runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: u8,
    /// Response timeout.
    pub timeout: Duration,
    /// Tries after the first.
    pub retries: u32,
    /// Its points with their reporting rules.
    pub points: Vec<PointSpec>,
    /// Its configuration writes.
    pub writes: Vec<Request>,
}

/// A point with its polling and reporting rules.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    /// What the point is.
    pub point: Point,
    /// Time between polls.
    pub every: Duration,
    /// Report only changes beyond this; `None`: every poll.
    pub deadband: Option<f64>,
    /// With a deadband, report at least this often.
    pub heartbeat: Option<Duration>,
}

const NAME_HELP: &str = "must be 1 to 64 of a-z, 0-9, '-' and '_'";

fn is_name(name: &str) -> bool {
    crate::config::is_topic_segment(name)
}

impl BusOptions {
    /// Checks the options against the instrument section.
    pub fn validate(&self, instrument: &InstrumentConfig) -> Result<(), String> {
        if instrument.port.is_none() {
            return Err("the modbus driver needs port = the RS-485 adapter's path".into());
        }
        self.devices().map(|_| ())
    }

    /// The devices with every option resolved; errors name the device and
    /// point and say what is wrong.
    pub fn devices(&self) -> Result<Vec<DeviceSpec>, String> {
        check_range("response_timeout_ms", self.response_timeout_ms, 10, 60_000)?;
        check_range("retries", u64::from(self.retries), 0, 10)?;
        check_range("poll_ms", self.poll_ms, 50, 86_400_000)?;
        check_range("turnaround_ms", self.turnaround_ms, 0, 10_000)?;
        if self.devices.is_empty() {
            return Err("no [[instrument.modbus.device]]: a bus needs at least one device".into());
        }

        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut out = Vec::with_capacity(self.devices.len());
        for device in &self.devices {
            let spec = self
                .device(device)
                .map_err(|e| format!("device {:?}: {e}", device.name))?;
            if !names.insert(device.name.clone()) {
                return Err(format!("device {:?}: the name is used twice", device.name));
            }
            if device.address != BROADCAST && !addresses.insert(device.address) {
                return Err(format!(
                    "device {:?}: address {} is used twice on the bus",
                    device.name, device.address
                ));
            }
            out.push(spec);
        }
        Ok(out)
    }

    fn device(&self, device: &DeviceOptions) -> Result<DeviceSpec, String> {
        if !is_name(&device.name) {
            return Err(format!("name {NAME_HELP}"));
        }
        if device.address > 247 {
            return Err(format!(
                "address = {} is reserved: use 1 to 247",
                device.address
            ));
        }
        let timeout = device
            .response_timeout_ms
            .unwrap_or(self.response_timeout_ms);
        check_range("response_timeout_ms", timeout, 10, 60_000)?;
        let retries = device.retries.unwrap_or(self.retries);
        check_range("retries", u64::from(retries), 0, 10)?;

        let mut points = match device.profile {
            Some(profile) => profile
                .points()
                .into_iter()
                .map(|mut p| {
                    // Profile points always carry a register.
                    p.register = p.register.map(|r| r.saturating_add(device.profile_base));
                    p
                })
                .collect(),
            None => Vec::new(),
        };
        for point in &device.points {
            match points.iter_mut().find(|p| p.name == point.name) {
                Some(replaced) => *replaced = point.clone(),
                None => points.push(point.clone()),
            }
        }

        let mut writes = Vec::with_capacity(device.writes.len());
        for write in &device.writes {
            let request = write.request();
            request
                .check(device.address)
                .map_err(|e| format!("[[write]] at register {}: {e}", write.register))?;
            writes.push(request);
        }
        if device.address == BROADCAST {
            if !points.is_empty() || writes.is_empty() {
                return Err(
                    "address 0 is the broadcast address: nothing answers it, so it can \
                     only carry [[write]] entries and no points"
                        .into(),
                );
            }
        } else if points.is_empty() && writes.is_empty() {
            return Err("no points: give profile or [[point]] entries".into());
        }

        let mut seen = HashSet::new();
        let points = points
            .iter()
            .map(|point| {
                if !seen.insert(point.name.clone()) {
                    return Err(format!("point {:?}: the name is used twice", point.name));
                }
                self.point(device, point)
                    .map_err(|e| format!("point {:?}: {e}", point.name))
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(DeviceSpec {
            name: device.name.clone(),
            address: device.address,
            timeout: Duration::from_millis(timeout),
            retries,
            points,
            writes,
        })
    }

    fn point(&self, device: &DeviceOptions, point: &PointOptions) -> Result<PointSpec, String> {
        if !is_name(&point.name) {
            return Err(format!("name {NAME_HELP}"));
        }
        let (table, address) = match (&point.reference, point.register) {
            (Some(reference), None) if point.table.is_none() => Table::from_reference(reference)?,
            (Some(_), _) => return Err("give reference, or table and register, not both".into()),
            (None, Some(register)) => (point.table.unwrap_or(Table::HoldingRegister), register),
            (None, None) => return Err("missing: register (or reference)".into()),
        };
        let data_type = point.data_type.unwrap_or(if table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        });
        if table.is_bits() != (data_type == DataType::Bool) {
            return Err(format!(
                "type {} does not fit table {}: coils and discrete inputs are bool, \
                 registers are u16, i16, u32, i32 or f32",
                data_type.name(),
                table.name()
            ));
        }
        if u32::from(address) + u32::from(data_type.width()) > 0x1_0000 {
            return Err(format!(
                "register {address} + {} run past 65535",
                data_type.width()
            ));
        }
        let scale = point.scale.unwrap_or(1.0);
        let offset = point.offset.unwrap_or(0.0);
        if !scale.is_finite() || scale == 0.0 || !offset.is_finite() {
            return Err("scale must be a finite number other than 0, offset finite".into());
        }
        let poll_ms = point.poll_ms.or(device.poll_ms).unwrap_or(self.poll_ms);
        check_range("poll_ms", poll_ms, 50, 86_400_000)?;
        let deadband = point.deadband.or(device.deadband);
        if deadband.is_some_and(|d| !d.is_finite() || d < 0.0) {
            return Err("deadband must be 0 or more".into());
        }
        let heartbeat_ms = point.heartbeat_ms.or(device.heartbeat_ms);
        if let Some(heartbeat) = heartbeat_ms {
            if deadband.is_none() {
                return Err(
                    "heartbeat_ms goes with deadband (without one, every poll is reported)".into(),
                );
            }
            check_range("heartbeat_ms", heartbeat, poll_ms, 86_400_000 * 7)?;
        }

        Ok(PointSpec {
            point: Point {
                name: format!("{}.{}", device.name, point.name),
                table,
                address,
                data_type,
                order: point.order.or(device.order).unwrap_or_default(),
                scale,
                offset,
                unit: point.unit.clone(),
            },
            every: Duration::from_millis(poll_ms),
            deadband,
            heartbeat: heartbeat_ms.map(Duration::from_millis),
        })
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} = {value} must be {min} to {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(toml_text: &str) -> BusOptions {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn profiles_expand_and_points_replace_theirs() {
        let options = bus(r#"
            [[device]]
            name = "cold-room-1"
            address = 3
            profile = "temperature-humidity"
            poll_ms = 2000
            [[device.point]]
            name = "temperature"
            register = 1
            type = "i16"
            scale = 0.01
            unit = "°C"
            deadband = 0.2
        "#);
        let devices = options.devices().unwrap();
        let points = &devices[0].points;
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].point.name, "cold-room-1.humidity");
        assert_eq!(points[0].point.scale, 0.1);
        assert_eq!(points[0].every, Duration::from_millis(2000));
        assert_eq!(points[1].point.name, "cold-room-1.temperature");
        assert_eq!(points[1].point.scale, 0.01);
        assert_eq!(points[1].deadband, Some(0.2));
    }

    #[test]
    fn gamma_profile_is_f32_dose_rate_with_the_devices_order() {
        let options = bus(r#"
            [[device]]
            name = "gamma"
            address = 9
            profile = "gamma-dose-rate"
            order = "cdab"
            profile_base = 16
        "#);
        let devices = options.devices().unwrap();
        let point = &devices[0].points[0].point;
        assert_eq!(point.data_type, DataType::F32);
        assert_eq!(point.table, Table::InputRegister);
        assert_eq!(point.address, 16);
        assert_eq!(point.order, WordOrder::Cdab);
        assert_eq!(point.unit.as_deref(), Some("µSv/h"));
    }

    #[test]
    fn reference_numbers_resolve() {
        let options = bus(r#"
            [[device]]
            name = "meter"
            address = 1
            [[device.point]]
            name = "a"
            reference = "40001"
            [[device.point]]
            name = "b"
            reference = "10003"
        "#);
        let devices = options.devices().unwrap();
        let a = &devices[0].points[0].point;
        assert_eq!((a.table, a.address), (Table::HoldingRegister, 0));
        let b = &devices[0].points[1].point;
        assert_eq!(
            (b.table, b.address, b.data_type),
            (Table::DiscreteInput, 2, DataType::Bool)
        );
    }

    #[test]
    fn errors_name_device_point_and_field() {
        let cases = [
            (
                "[[device]]\nname = \"a\"\naddress = 1\n[[device.point]]\nname = \"x\"\n",
                "device \"a\": point \"x\": missing: register",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 248\nprofile = \"gas-concentration\"\n",
                "address = 248 is reserved",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 1\nprofile = \"gas-concentration\"\n\
                 [[device]]\nname = \"b\"\naddress = 1\nprofile = \"gas-concentration\"\n",
                "address 1 is used twice",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 1\n[[device.point]]\nname = \"x\"\n\
                 table = \"coil\"\nregister = 0\ntype = \"f32\"\n",
                "does not fit table",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 0\nprofile = \"gas-concentration\"\n",
                "broadcast address",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 1\n[[device.write]]\nregister = 0\n\
                 values = []\n",
                "[[write]] at register 0",
            ),
            (
                "poll_ms = 1\n[[device]]\nname = \"a\"\naddress = 1\n\
                 profile = \"gas-concentration\"\n",
                "poll_ms = 1 must be 50",
            ),
            (
                "[[device]]\nname = \"a\"\naddress = 1\nprofile = \"gas-concentration\"\n\
                 heartbeat_ms = 60000\n",
                "heartbeat_ms goes with deadband",
            ),
            ("", "at least one"),
        ];
        for (text, expected) in cases {
            let error = bus(text).devices().unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn broadcast_entry_with_writes_is_allowed() {
        let options = bus(r#"
            [[device]]
            name = "all"
            address = 0
            [[device.write]]
            register = 10
            values = [1, 2]
        "#);
        let devices = options.devices().unwrap();
        assert_eq!(
            devices[0].writes,
            [Request::WriteMultiple {
                address: 10,
                values: vec![1, 2]
            }]
        );
    }
}
