//! What to ask when, and what to report: the bus's schedule without I/O.
//!
//! [`Poller`] holds every device of a bus with the next due time of each
//! point, the last reported value of each point (for deadbands) and each
//! device's health. The bus task asks it for the next due time, for the
//! read requests of a device's due points ([`Poller::due`], contiguous
//! points of one table merged into one request), and tells it what each
//! request gave; it answers whether a value is to be reported and whether
//! a device changed between answering and not answering, so each change is
//! logged once.

use std::time::{Duration, Instant, SystemTime};

use super::config::{DeviceSpec, PointSpec};
use super::frame::{MAX_READ_BITS, MAX_READ_REGISTERS, Request};
use super::point::Table;

/// One read request and the points it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The table read.
    pub table: Table,
    /// The first address.
    pub address: u16,
    /// How many registers or bits.
    pub count: u16,
    /// Indexes of the device's points it covers.
    pub points: Vec<usize>,
}

impl Block {
    /// The request that reads the block.
    pub fn request(&self) -> Request {
        Request::read(self.table.read_function(), self.address, self.count)
    }
}

/// A device's health, for the status view and the stop summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceHealth {
    /// When it last answered validly.
    pub last_success: Option<SystemTime>,
    /// Valid answers.
    pub answers: u64,
    /// Exception answers and mismatched echoes.
    pub errors: u64,
    /// Tries that ended without a valid answer (silence, or only garbage).
    pub timeouts: u64,
    /// Whether it answers: unknown until the first try.
    pub answering: Option<bool>,
}

/// A change of a device's state, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It answered for the first time, or again after not answering.
    Answering,
    /// It stopped answering (or never did).
    NotAnswering,
}

#[derive(Debug, Clone, Copy)]
struct Reported {
    value: f64,
    at: Instant,
}

#[derive(Debug)]
struct Device {
    spec: DeviceSpec,
    next_due: Vec<Instant>,
    reported: Vec<Option<Reported>>,
    /// Per point, the error it gives now, so that a point that keeps
    /// failing the same way is logged once.
    failing: Vec<Option<String>>,
    health: DeviceHealth,
    writes_pending: bool,
}

/// The schedule, reporting rules and health of a bus's devices.
#[derive(Debug)]
pub struct Poller {
    devices: Vec<Device>,
}

impl Poller {
    /// Every point is due at `now`.
    pub fn new(devices: Vec<DeviceSpec>, now: Instant) -> Poller {
        let devices = devices
            .into_iter()
            .map(|spec| {
                let n = spec.points.len();
                Device {
                    next_due: vec![now; n],
                    reported: vec![None; n],
                    failing: vec![None; n],
                    health: DeviceHealth::default(),
                    writes_pending: !spec.writes.is_empty(),
                    spec,
                }
            })
            .collect();
        Poller { devices }
    }

    /// How many devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Device `ix`'s configuration.
    pub fn spec(&self, ix: usize) -> &DeviceSpec {
        &self.devices[ix].spec
    }

    /// Device `ix`'s health.
    pub fn health(&self, ix: usize) -> &DeviceHealth {
        &self.devices[ix].health
    }

    /// The earliest time a point is due; `None` for a bus of broadcast
    /// writes only.
    pub fn next_due(&self) -> Option<Instant> {
        self.devices
            .iter()
            .flat_map(|d| d.next_due.iter().copied())
            .min()
    }

    /// Sends the configuration writes again (at each attach).
    pub fn writes_pending_all(&mut self) {
        for device in &mut self.devices {
            device.writes_pending = !device.spec.writes.is_empty();
        }
    }

    /// Whether device `ix` has configuration writes to send.
    pub fn writes_pending(&self, ix: usize) -> bool {
        self.devices[ix].writes_pending
    }

    /// Device `ix`'s writes are done (or refused: they are not repeated
    /// until the next attach or comeback).
    pub fn writes_done(&mut self, ix: usize) {
        self.devices[ix].writes_pending = false;
    }

    /// The read requests for device `ix`'s points due at `now`, and moves
    /// those points to their next due time. Points of one table that are
    /// contiguous or overlap share a request; points apart are read apart,
    /// since a gap may hold addresses the device does not have.
    pub fn due(&mut self, ix: usize, now: Instant) -> Vec<Block> {
        let device = &mut self.devices[ix];
        let mut due: Vec<usize> = (0..device.spec.points.len())
            .filter(|&p| device.next_due[p] <= now)
            .collect();
        for &p in &due {
            let every = device.spec.points[p].every;
            let next = device.next_due[p] + every;
            // After a stall (a slow bus, a full store) the point resumes its
            // rhythm from now instead of firing the missed polls in a burst.
            device.next_due[p] = if next <= now { now + every } else { next };
        }
        let points = &device.spec.points;
        due.sort_by_key(|&p| (points[p].point.table, points[p].point.address));

        let mut blocks: Vec<Block> = Vec::new();
        for p in due {
            let point = &points[p].point;
            let max = if point.table.is_bits() {
                MAX_READ_BITS
            } else {
                MAX_READ_REGISTERS
            };
            if let Some(block) = blocks.last_mut()
                && block.table == point.table
                && u32::from(point.address) <= u32::from(block.address) + u32::from(block.count)
            {
                let end = (u32::from(block.address) + u32::from(block.count)).max(point.end());
                let count = end - u32::from(block.address);
                if count <= u32::from(max) {
                    // count ≤ 2000 fits u16.
                    block.count = count as u16;
                    block.points.push(p);
                    continue;
                }
            }
            blocks.push(Block {
                table: point.table,
                address: point.address,
                count: point.data_type.width(),
                points: vec![p],
            });
        }
        blocks
    }

    /// Device `ix` answered validly at `now`; returns the change to log.
    pub fn answered(&mut self, ix: usize) -> Option<Change> {
        let device = &mut self.devices[ix];
        device.health.answers += 1;
        device.health.last_success = Some(SystemTime::now());
        let change = (device.health.answering != Some(true)).then_some(Change::Answering);
        if device.health.answering == Some(false) {
            // It may have been power-cycled and lost its configuration.
            device.writes_pending = !device.spec.writes.is_empty();
        }
        device.health.answering = Some(true);
        change
    }

    /// Device `ix` answered with an exception or a mismatched echo.
    pub fn refused(&mut self, ix: usize) -> Option<Change> {
        let device = &mut self.devices[ix];
        device.health.errors += 1;
        let change = (device.health.answering != Some(true)).then_some(Change::Answering);
        device.health.answering = Some(true);
        change
    }

    /// A try at device `ix` ended without a valid answer.
    pub fn timed_out(&mut self, ix: usize) {
        self.devices[ix].health.timeouts += 1;
    }

    /// Every try of a request to device `ix` failed; returns the change to
    /// log.
    pub fn silent(&mut self, ix: usize) -> Option<Change> {
        let device = &mut self.devices[ix];
        let change = (device.health.answering != Some(false)).then_some(Change::NotAnswering);
        device.health.answering = Some(false);
        change
    }

    /// Whether point `p` of device `ix` is to be reported with `value`;
    /// if so, it becomes the point's last reported value.
    pub fn report(&mut self, ix: usize, p: usize, value: f64, now: Instant) -> bool {
        let device = &mut self.devices[ix];
        let due = should_report(&device.spec.points[p], device.reported[p], value, now);
        if due {
            device.reported[p] = Some(Reported { value, at: now });
        }
        due
    }

    /// Point `p` of device `ix` now gives `error` (`None`: it reads
    /// again); returns whether that is a change, to be logged.
    pub fn point_state(&mut self, ix: usize, p: usize, error: Option<String>) -> bool {
        let slot = &mut self.devices[ix].failing[p];
        let changed = *slot != error;
        *slot = error;
        changed
    }
}

fn should_report(spec: &PointSpec, last: Option<Reported>, value: f64, now: Instant) -> bool {
    let (Some(deadband), Some(last)) = (spec.deadband, last) else {
        return true;
    };
    if spec
        .heartbeat
        .is_some_and(|beat| now.saturating_duration_since(last.at) >= beat)
    {
        return true;
    }
    match (value.is_nan(), last.value.is_nan()) {
        (true, true) => false,
        (true, false) | (false, true) => true,
        (false, false) if value == last.value => false,
        // Infinities of opposite sign differ by infinity; equal ones were
        // caught above.
        (false, false) => (value - last.value).abs() > deadband,
    }
}

/// How long `bytes` take on the wire at `baud` with `bits` per character:
/// a write returns when the bytes are in the kernel's buffer, not sent.
pub fn wire_time(bytes: usize, bits: u32, baud: u32) -> Duration {
    let bits = bytes as u64 * u64::from(bits);
    Duration::from_nanos(bits * 1_000_000_000 / u64::from(baud.max(1)))
}

/// The silence between frames: 3.5 character times, fixed at 1.75 ms
/// above 19200 baud (serial line v1.02, 2.5.1.1).
pub fn frame_gap(bits: u32, baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        wire_time(1, bits, baud).mul_f64(3.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::BusOptions;

    fn poller(toml_text: &str, now: Instant) -> Poller {
        let options: BusOptions = toml::from_str(toml_text).unwrap();
        Poller::new(options.devices().unwrap(), now)
    }

    const MIXED: &str = r#"
        poll_ms = 1000
        [[device]]
        name = "d"
        address = 1
        [[device.point]]
        name = "a"
        register = 0
        [[device.point]]
        name = "b"
        register = 1
        type = "f32"
        [[device.point]]
        name = "c"
        register = 10
        [[device.point]]
        name = "e"
        table = "input-register"
        register = 3
        [[device.point]]
        name = "f"
        table = "coil"
        register = 5
        [[device.point]]
        name = "g"
        table = "coil"
        register = 6
        poll_ms = 3000
    "#;

    #[test]
    fn contiguous_points_share_a_request_gaps_do_not() {
        let now = Instant::now();
        let mut poller = poller(MIXED, now);
        let blocks = poller.due(0, now);
        let summary: Vec<(Table, u16, u16, Vec<usize>)> = blocks
            .into_iter()
            .map(|b| (b.table, b.address, b.count, b.points))
            .collect();
        assert_eq!(
            summary,
            [
                (Table::Coil, 5, 2, vec![4, 5]),
                (Table::InputRegister, 3, 1, vec![3]),
                (Table::HoldingRegister, 0, 3, vec![0, 1]),
                (Table::HoldingRegister, 10, 1, vec![2]),
            ]
        );
    }

    #[test]
    fn each_point_keeps_its_own_interval() {
        let start = Instant::now();
        let mut poller = poller(MIXED, start);
        assert_eq!(poller.due(0, start).len(), 4);
        assert_eq!(poller.next_due(), Some(start + Duration::from_secs(1)));
        assert!(poller.due(0, start + Duration::from_millis(999)).is_empty());
        // At 1 s the coil "g" (3 s) is not due: "f" is read alone.
        let blocks = poller.due(0, start + Duration::from_secs(1));
        assert!(
            blocks
                .iter()
                .any(|b| b.table == Table::Coil && b.points == [4])
        );
        // A stall of 10 s fires each point once, not ten times.
        let late = start + Duration::from_secs(12);
        assert_eq!(poller.due(0, late).len(), 4);
        assert!(poller.due(0, late).is_empty());
        assert_eq!(poller.next_due(), Some(late + Duration::from_secs(1)));
    }

    #[test]
    fn deadband_heartbeat_and_report_on_change() {
        let start = Instant::now();
        let mut poller = poller(
            r#"
            [[device]]
            name = "d"
            address = 1
            [[device.point]]
            name = "every"
            register = 0
            [[device.point]]
            name = "band"
            register = 1
            deadband = 0.5
            heartbeat_ms = 60000
            [[device.point]]
            name = "change"
            register = 2
            deadband = 0
            "#,
            start,
        );
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(poller.report(0, 0, 1.0, at(0)));
        assert!(poller.report(0, 0, 1.0, at(1)));

        assert!(poller.report(0, 1, 20.0, at(0)));
        assert!(!poller.report(0, 1, 20.4, at(1)));
        assert!(!poller.report(0, 1, 19.6, at(2)));
        assert!(poller.report(0, 1, 20.6, at(3)));
        // Measured from the last reported value, so a slow drift is seen.
        assert!(!poller.report(0, 1, 21.0, at(4)));
        assert!(poller.report(0, 1, 21.2, at(5)));
        assert!(poller.report(0, 1, 21.2, at(65)), "heartbeat");

        assert!(poller.report(0, 2, 5.0, at(0)));
        assert!(!poller.report(0, 2, 5.0, at(1)));
        assert!(poller.report(0, 2, 5.1, at(2)));
        assert!(poller.report(0, 2, f64::NAN, at(3)));
        assert!(!poller.report(0, 2, f64::NAN, at(4)));
        assert!(poller.report(0, 2, f64::INFINITY, at(5)));
        assert!(!poller.report(0, 2, f64::INFINITY, at(6)));
    }

    #[test]
    fn a_silent_device_is_reported_once_and_its_return_once() {
        let now = Instant::now();
        let mut poller = poller(MIXED, now);
        assert_eq!(poller.silent(0), Some(Change::NotAnswering));
        for _ in 0..5 {
            poller.timed_out(0);
            assert_eq!(poller.silent(0), None);
        }
        assert_eq!(poller.answered(0), Some(Change::Answering));
        assert_eq!(poller.answered(0), None);
        assert_eq!(poller.refused(0), None);
        let health = poller.health(0);
        assert_eq!((health.answers, health.errors, health.timeouts), (2, 1, 5));
        assert!(health.last_success.is_some());
    }

    #[test]
    fn writes_are_sent_again_when_a_device_comes_back() {
        let now = Instant::now();
        let mut poller = poller(
            r#"
            [[device]]
            name = "d"
            address = 1
            profile = "gas-concentration"
            [[device.write]]
            register = 100
            values = [1]
            "#,
            now,
        );
        assert!(poller.writes_pending(0));
        poller.writes_done(0);
        assert_eq!(poller.answered(0), Some(Change::Answering));
        assert!(!poller.writes_pending(0));
        poller.silent(0);
        poller.answered(0);
        assert!(poller.writes_pending(0));
    }

    #[test]
    fn wire_time_and_frame_gap() {
        // 8N1 is 10 bits a character: 8 bytes at 9600 baud take 8.33 ms.
        assert_eq!(wire_time(8, 10, 9600).as_micros(), 8333);
        // 8E1 is 11 bits: 3.5 characters at 9600 baud are 4.01 ms.
        assert_eq!(frame_gap(11, 9600).as_micros(), 4010);
        assert_eq!(frame_gap(10, 115_200), Duration::from_micros(1750));
    }
}
