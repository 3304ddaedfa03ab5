//! Count rate and dose rate from a Geiger-Müller tube's pulses.
//!
//! The board counts the tube's pulses in hardware (a timer in counter mode
//! or an edge interrupt) and hands the count over once per tick, say every
//! second. [`Counter`] is the arithmetic behind that and owns no
//! interrupt: it keeps the last `N` tick counts in a ring of buckets, so
//! the count rate is always over the last `N` ticks and needs no
//! allocation, and it turns the window's counts into a [`Reading`].
//!
//! # From pulses to µSv/h
//!
//! 1. **Counts per minute** over the window: window counts × 60 s / window
//!    length. Until `N` ticks have passed the window is only as long as the
//!    ticks seen so far; [`Reading::window_full`] says when it is complete.
//!    At background (about 20 cpm on an SBM-20) a one-minute window holds
//!    only about 20 counts, ±22 % statistically: a report should say
//!    whether its window was full.
//! 2. **Dead-time correction.** After each pulse the tube is blind for its
//!    dead time τ. With `m` measured counts per second the tube was blind
//!    for a fraction `m·τ` of the time, so the true rate is
//!    `n = m / (1 − m·τ)` (the non-paralysable model). The correction is
//!    below 0.2 % under 20 counts per second at 90 µs; it matters in strong
//!    fields. It uses the window's mean rate, so it assumes the field was
//!    steady over the window. Once the tube was blind half of the window or
//!    more, the model no longer holds (real tubes then behave more and more
//!    as paralysable: pulses during a dead period extend it, and a rising
//!    field can even lower the count), so the reading is marked
//!    [`Reading::saturated`] and reports the uncorrected rate as a lower
//!    bound.
//! 3. **Dose rate**: µSv/h = corrected cpm / the tube's counts per minute
//!    at 1 µSv/h ([`Config::cpm_per_usv_h`]).
//!
//! # Conversion factors and dead times
//!
//! A GM tube counts particles, not dose: the factor holds only for the
//! gamma energy it was found with. The usual figures are for Cs-137
//! (662 keV); other sources and beta radiation make them wrong, so the dose
//! rate is an estimate of ambient gamma dose rate, not a dosimeter reading.
//!
//! - SBM-20: [`SBM20_CPM_PER_USV_H`], 175.43 cpm per µSv/h (0.0057 µSv/h
//!   per cpm), the factor most hobby counters ship with. IoT-devices'
//!   technical note "How to calculate the conversion factor for Geiger tube
//!   SBM20" traces it and, from the datasheet's Cs-137 sensitivity (240 to
//!   280 counts/s at 4 µR/s) with 1 mR/h taken as 10 µSv/h, arrives at
//!   108 cpm per µSv/h instead. The two differ by about 60 %: calibrate against
//!   a reference instrument where the number matters.
//! - J305: [`J305_CPM_PER_USV_H`], 123.15 cpm per µSv/h (0.00812 µSv/h per
//!   cpm), the factor of the example code shipped with the common J305
//!   counter kits. The J305's datasheet gives its sensitivity for Co-60
//!   (tabulated in the same IoT-devices note), so for Cs-137 this too is an
//!   estimate.
//! - Dead time: a datasheet maximum. 90 µs is the usual figure for tubes of
//!   the SBM-20 / J305 class; the SBM-20 datasheet is also quoted with up to
//!   190 µs (not verified here). Use your tube's datasheet.
//!
//! ```
//! use kouan_firmware::drivers::geiger::{Config, Counter, SBM20_CPM_PER_USV_H};
//!
//! // One tick per second, a one-minute window.
//! let config = Config { tick_ms: 1_000, dead_time_us: 90, cpm_per_usv_h: SBM20_CPM_PER_USV_H };
//! let mut counter = Counter::<60>::new(config).unwrap();
//! for second in 0..60 {
//!     counter.tick(if second % 3 == 0 { 1 } else { 0 });
//! }
//! let reading = counter.reading().unwrap();
//! assert_eq!(reading.counts, 20);
//! assert_eq!(reading.measured_cpm, 20.0);
//! assert!(reading.window_full);
//! assert!((reading.usv_h - 0.114).abs() < 0.001);
//! ```

use core::fmt;

/// Counts per minute at 1 µSv/h of Cs-137 gamma for an SBM-20 (the common
/// 0.0057 µSv/h per cpm; see the module documentation for its source).
pub const SBM20_CPM_PER_USV_H: f32 = 175.43;

/// Counts per minute at 1 µSv/h for a J305 (the common 0.00812 µSv/h per
/// cpm; see the module documentation for its source).
pub const J305_CPM_PER_USV_H: f32 = 123.15;

/// Microseconds per minute, the numerator of every rate here.
const US_PER_MINUTE: u64 = 60_000_000;

/// How a [`Counter`] turns pulses into rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Length of one tick in milliseconds: how often the board calls
    /// [`Counter::tick`]. The window is `N` ticks long.
    pub tick_ms: u32,
    /// The tube's dead time in microseconds; 0 turns the correction off.
    pub dead_time_us: u32,
    /// The tube's counts per minute at 1 µSv/h.
    pub cpm_per_usv_h: f32,
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// [`Config::tick_ms`] is zero, so no rate can be computed.
    ZeroTick,
    /// [`Config::cpm_per_usv_h`] is not a finite number above zero.
    BadFactor,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::ZeroTick => "geiger tick length is zero",
            ConfigError::BadFactor => "geiger conversion factor must be a positive number",
        })
    }
}

impl core::error::Error for ConfigError {}

/// The count and dose rate over the current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Pulses counted in the window.
    pub counts: u64,
    /// Counts per minute as counted, without dead-time correction.
    pub measured_cpm: f32,
    /// Counts per minute corrected for dead time; equal to `measured_cpm`
    /// when saturated.
    pub cpm: f32,
    /// Estimated ambient dose rate in µSv/h, from `cpm`.
    pub usv_h: f32,
    /// The window spans all `N` ticks; before that it spans fewer and the
    /// rate is noisier.
    pub window_full: bool,
    /// The tube was blind for half of the window or more: `cpm` and
    /// `usv_h` are lower bounds.
    pub saturated: bool,
}

/// A sliding window of `N` tick counts from one tube.
///
/// Memory is `4 × N` bytes for the buckets: one tick per second and
/// `N = 60` (a one-minute window, the usual cpm) takes 240 bytes.
#[derive(Debug, Clone)]
pub struct Counter<const N: usize> {
    config: Config,
    buckets: [u32; N],
    /// The bucket the next tick overwrites (the oldest once full).
    next: usize,
    /// Buckets holding a tick, up to `N`.
    filled: usize,
}

impl<const N: usize> Counter<N> {
    /// An empty counter, or an error if `config` cannot give a rate.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        const { assert!(N > 0, "a geiger window needs at least one bucket") };
        if config.tick_ms == 0 {
            return Err(ConfigError::ZeroTick);
        }
        if !(config.cpm_per_usv_h.is_finite() && config.cpm_per_usv_h > 0.0) {
            return Err(ConfigError::BadFactor);
        }

        Ok(Counter {
            config,
            buckets: [0; N],
            next: 0,
            filled: 0,
        })
    }

    /// Records the pulses counted during one tick, dropping the oldest
    /// tick once the window is full.
    pub fn tick(&mut self, pulses: u32) {
        self.buckets[self.next] = pulses;
        self.next = (self.next + 1) % N;
        self.filled = (self.filled + 1).min(N);
    }

    /// Forgets every tick, for example after the tube's high voltage was
    /// off and the window holds counts that do not belong to the field.
    pub fn reset(&mut self) {
        self.buckets = [0; N];
        self.next = 0;
        self.filled = 0;
    }

    /// All `N` buckets hold a tick.
    pub fn window_full(&self) -> bool {
        self.filled == N
    }

    /// The full window's length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        N as u64 * u64::from(self.config.tick_ms)
    }

    /// The rates over the ticks seen so far, or `None` before the first
    /// tick.
    pub fn reading(&self) -> Option<Reading> {
        if self.filled == 0 {
            return None;
        }

        // The filled buckets are the first `filled` until the ring wraps,
        // and all of them after; either way summing those is the window.
        let counts: u64 = self.buckets[..self.filled]
            .iter()
            .map(|&c| u64::from(c))
            .sum();
        let window_us = self.filled as u64 * u64::from(self.config.tick_ms) * 1_000;
        let dead_us = counts.saturating_mul(u64::from(self.config.dead_time_us));

        // The division is in f64, where these integers are exact below
        // 2^53, so a rate rounds only once, to f32. f64 is soft float on a
        // Cortex-M4F, but this runs once per reading, not per pulse.
        let per_minute = counts.saturating_mul(US_PER_MINUTE) as f64;
        let measured_cpm = (per_minute / window_us as f64) as f32;
        let saturated = dead_us.saturating_mul(2) >= window_us;
        let cpm = if saturated {
            measured_cpm
        } else {
            (per_minute / (window_us - dead_us) as f64) as f32
        };

        Some(Reading {
            counts,
            measured_cpm,
            cpm,
            usv_h: cpm / self.config.cpm_per_usv_h,
            window_full: self.window_full(),
            saturated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tick_ms: u32, dead_time_us: u32) -> Config {
        Config {
            tick_ms,
            dead_time_us,
            cpm_per_usv_h: 120.0,
        }
    }

    #[test]
    fn no_reading_before_the_first_tick() {
        let counter = Counter::<4>::new(config(1_000, 90)).unwrap();

        assert_eq!(counter.reading(), None);
        assert!(!counter.window_full());
    }

    #[test]
    fn partial_window_rates_over_the_ticks_seen() {
        let mut counter = Counter::<4>::new(config(1_000, 0)).unwrap();
        counter.tick(3);
        counter.tick(5);

        let reading = counter.reading().unwrap();

        // 8 counts in 2 s.
        assert_eq!(reading.counts, 8);
        assert_eq!(reading.measured_cpm, 240.0);
        assert_eq!(reading.cpm, 240.0);
        assert_eq!(reading.usv_h, 2.0);
        assert!(!reading.window_full);
        assert!(!reading.saturated);
    }

    #[test]
    fn window_slides_past_the_oldest_tick() {
        let mut counter = Counter::<3>::new(config(500, 0)).unwrap();
        counter.tick(1);
        counter.tick(2);
        counter.tick(3);
        assert!(counter.window_full());
        // 6 counts in 1.5 s.
        assert_eq!(counter.reading().unwrap().measured_cpm, 240.0);

        counter.tick(9);
        counter.tick(0);

        // The 1 and the 2 fell out: 3 + 9 + 0 in 1.5 s.
        let reading = counter.reading().unwrap();
        assert_eq!(reading.counts, 12);
        assert_eq!(reading.measured_cpm, 480.0);
        assert!(reading.window_full);
    }

    #[test]
    fn dead_time_correction_follows_the_non_paralysable_model() {
        let mut counter = Counter::<4>::new(config(1_000, 200)).unwrap();
        for _ in 0..4 {
            counter.tick(1_000);
        }

        let reading = counter.reading().unwrap();

        // 1000/s at 200 µs: blind 20 % of the time, so the true rate is
        // 1000 / 0.8 = 1250/s.
        assert_eq!(reading.measured_cpm, 60_000.0);
        assert_eq!(reading.cpm, 75_000.0);
        assert_eq!(reading.usv_h, 625.0);
        assert!(!reading.saturated);
    }

    #[test]
    fn correction_at_background_is_tiny() {
        let mut counter = Counter::<60>::new(config(1_000, 90)).unwrap();
        for _ in 0..60 {
            counter.tick(1);
        }

        let reading = counter.reading().unwrap();

        // 60 counts × 90 µs = 5.4 ms dead in 60 s.
        assert_eq!(reading.measured_cpm, 60.0);
        assert_eq!(reading.cpm, (3_600_000_000.0 / 59_994_600.0) as f32);
        assert!((reading.cpm - 60.005_4).abs() < 1e-4);
    }

    #[test]
    fn half_dead_window_is_saturated() {
        let mut counter = Counter::<2>::new(config(1_000, 500)).unwrap();
        counter.tick(1_000);
        counter.tick(1_000);

        let reading = counter.reading().unwrap();

        // 1000/s at 500 µs: blind exactly half the time.
        assert!(reading.saturated);
        assert_eq!(reading.cpm, reading.measured_cpm);
        assert_eq!(reading.cpm, 60_000.0);
        assert_eq!(reading.usv_h, 500.0);
    }

    #[test]
    fn just_below_half_dead_is_corrected() {
        let mut counter = Counter::<1>::new(config(1_000, 500)).unwrap();
        counter.tick(999);

        let reading = counter.reading().unwrap();

        // Blind 499.5 ms of 1000 ms: 999 counts in 500.5 ms of live time.
        assert!(!reading.saturated);
        assert_eq!(reading.cpm, (59_940_000_000.0 / 500_500.0) as f32);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let mut counter = Counter::<2>::new(config(1, 90)).unwrap();
        counter.tick(u32::MAX);
        counter.tick(u32::MAX);

        let reading = counter.reading().unwrap();

        assert_eq!(reading.counts, 2 * u64::from(u32::MAX));
        assert!(reading.saturated);
    }

    #[test]
    fn reset_empties_the_window() {
        let mut counter = Counter::<2>::new(config(1_000, 0)).unwrap();
        counter.tick(5);
        counter.tick(5);
        counter.reset();

        assert_eq!(counter.reading(), None);
        counter.tick(1);
        assert_eq!(counter.reading().unwrap().counts, 1);
    }

    #[test]
    fn window_length_is_ticks_times_buckets() {
        let counter = Counter::<60>::new(config(1_000, 0)).unwrap();

        assert_eq!(counter.window_ms(), 60_000);
    }

    #[test]
    fn tube_factors_convert_cpm_to_dose_rate() {
        let tube = |cpm_per_usv_h| Config {
            cpm_per_usv_h,
            ..config(6_000_000, 0)
        };
        // One tick of 100 minutes, so that the factors' hundredths are
        // whole counts.
        let mut sbm20 = Counter::<1>::new(tube(SBM20_CPM_PER_USV_H)).unwrap();
        sbm20.tick(17_543);
        let mut j305 = Counter::<1>::new(tube(J305_CPM_PER_USV_H)).unwrap();
        j305.tick(2_463);

        let sbm20 = sbm20.reading().unwrap();
        let j305 = j305.reading().unwrap();

        assert_eq!(sbm20.cpm, 175.43);
        assert_eq!(sbm20.usv_h, 1.0);
        assert_eq!(j305.cpm, 24.63);
        assert!((j305.usv_h - 0.2).abs() < 1e-6);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(
            Counter::<4>::new(config(0, 90)).unwrap_err(),
            ConfigError::ZeroTick
        );
        for factor in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let bad = Config {
                cpm_per_usv_h: factor,
                ..config(1_000, 90)
            };
            assert_eq!(Counter::<4>::new(bad).unwrap_err(), ConfigError::BadFactor);
        }
    }
}
