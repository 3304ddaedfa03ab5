//! Drivers for the sensors of a node.
//!
//! Each driver is generic over the embedded-hal 1.0 traits, so the same
//! code runs on every board and on the host, where it is tested against
//! the scripted buses of `embedded-hal-mock`:
//!
//! - [`sht3x`]: air temperature and relative humidity from a Sensirion
//!   SHT3x on I2C, with each data word's CRC checked.
//! - [`geiger`]: count rate and estimated gamma dose rate from the pulse
//!   counts of a Geiger-Müller tube, over a sliding window with dead-time
//!   correction. Pure arithmetic: the board counts the pulses.
//! - [`gas`]: a TI ADS1115 16-bit ADC on I2C, and a two-point calibration
//!   that turns a gas sensor's voltage into a concentration, checked
//!   against the sensor's measuring range.
//!
//! Conventions shared by the drivers: a driver owns its bus handle and
//! gives it back with `release` (to share a bus, hand each driver a device
//! from `embedded-hal-bus`); a delay is borrowed for each call that must
//! wait, so one timer serves every driver; waits follow the datasheet's
//! worst case and every poll loop has a bound; and errors are small enums
//! that keep the bus's own error.

pub mod gas;
pub mod geiger;
pub mod sht3x;
