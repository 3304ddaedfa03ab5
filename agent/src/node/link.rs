//! The agent's end of the node link as a state machine without I/O.
//!
//! [`Link`] takes the messages a node sends and says what to do with each:
//! store a sample, drop a duplicate, record lost samples, ask for a hello.
//! The session around it does the storing, the file writes and the port
//! writes, and reports back with [`Link::stored`] and
//! [`Link::drops_recorded`]; only then does [`Link::ack`] move.
//!
//! De-duplication is by node id, boot id and sample number. The node
//! numbers samples from 1 at each boot and retransmits from its oldest
//! unacknowledged one (go-back-N), so the receiver needs one number per
//! node: the highest sample of the current boot stored with all before it
//! (its [`Mark`]). A sample at or below the mark is a duplicate; one above
//! the next number is out of order and is left for the retransmission,
//! like a go-back-N receiver does; the next number is stored.

use std::collections::BTreeMap;

use kouan_protocol::{Hello, PROTOCOL_VERSION, Quantity, Sample, SensorInfo, Status};
use serde::{Deserialize, Serialize};

/// What the agent has stored of one node: the watermark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The node's boot the numbers belong to.
    pub boot: u32,
    /// Every sample of `boot` up to this number is stored.
    pub through: u32,
    /// The node's drop counter (since `boot`) that drop records cover.
    pub dropped: u32,
    /// The chain seq of the last record stored for this node, where a
    /// scan of the store for records newer than this mark starts.
    pub record: u64,
}

/// The watermarks of the nodes met on one port, by node id.
pub type Marks = BTreeMap<String, Mark>;

/// Samples a node lost because its buffer was full, to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// The node's boot.
    pub boot: u32,
    /// Lost since the last drop record of this boot.
    pub dropped: u32,
    /// The node's counter since boot.
    pub dropped_total: u32,
    /// The first sample number received after the node reported them:
    /// the lost samples were taken before it (right before it when the
    /// report was the one that closes the gap, which the node sends just
    /// before that sample).
    pub before: Option<u32>,
    /// The report.
    pub status: Status,
}

/// What to do with a hello.
#[derive(Debug, Clone, PartialEq)]
pub enum HelloOutcome {
    /// A node, or a new boot of it: samples of `boot` follow `through`.
    Attached {
        /// Whether the boot differs from the stored watermark's.
        new_boot: bool,
        /// The previous boot, when it had one.
        previous: Option<Mark>,
    },
    /// The same boot said hello again (after `send-hello`).
    Again,
    /// A protocol version the agent does not speak; its samples are ignored.
    Refused {
        /// The version the node announced.
        protocol: u16,
    },
    /// Another node than the configured one.
    Unexpected {
        /// The configured id.
        expected: String,
    },
}

/// What to do with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOutcome {
    /// Store it, then call [`Link::stored`].
    Store,
    /// Already stored: acknowledge again.
    Duplicate,
    /// A number after a missing one: wait for the retransmission.
    OutOfOrder {
        /// The number expected.
        expected: u32,
    },
    /// No hello from this node yet: ask for one.
    NoHello,
}

/// What a status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Nothing the agent acts on.
    Quiet,
    /// The node started dropping samples (its buffer is full).
    Dropping,
    /// The node reported drops that no record covers yet and has room
    /// again; the next sample it sends tells where they lie
    /// ([`Link::drops_before`]).
    GapClosed,
}

/// The node on the port, after its hello.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its id.
    pub id: String,
    /// Its firmware version.
    pub firmware: String,
    /// Its sensors as announced.
    pub sensors: Vec<SensorInfo>,
    /// The watermark of its current boot.
    pub mark: Mark,
    /// Drops reported and not yet recorded, waiting for the next sample.
    pending: Option<Drops>,
    /// Whether the last status said the buffer was full and dropping.
    dropping: bool,
}

impl Peer {
    /// The sensor a sample names, if announced.
    pub fn sensor(&self, id: u8) -> Option<&SensorInfo> {
        self.sensors.iter().find(|s| s.id == id)
    }
}

/// The receiving side of one port's node link.
#[derive(Debug, Default)]
pub struct Link {
    expected: Option<String>,
    marks: Marks,
    peer: Option<Peer>,
}

impl Link {
    /// A link that knows the watermarks `marks` and, if `expected` is set,
    /// accepts only that node id.
    pub fn new(marks: Marks, expected: Option<String>) -> Link {
        Link {
            expected,
            marks,
            peer: None,
        }
    }

    /// Forgets the node on the port (the port was closed): its next
    /// samples wait for a hello, which tells whether it rebooted.
    pub fn detach(&mut self) {
        self.peer = None;
    }

    /// The node, once it said hello.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// Every watermark, to persist.
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Takes a hello.
    pub fn hello(&mut self, hello: &Hello) -> HelloOutcome {
        if hello.protocol != PROTOCOL_VERSION {
            self.peer = None;
            return HelloOutcome::Refused {
                protocol: hello.protocol,
            };
        }
        if let Some(expected) = &self.expected
            && expected.as_str() != hello.node_id.as_str()
        {
            self.peer = None;
            return HelloOutcome::Unexpected {
                expected: expected.clone(),
            };
        }

        let id = hello.node_id.as_str().to_owned();
        let stored = self.marks.get(&id).copied();
        let same_boot = stored.is_some_and(|m| m.boot == hello.boot);
        let again = same_boot && self.peer.as_ref().is_some_and(|p| p.id == id);
        // A new boot numbers from 1 again; the chain position of the
        // last record carries over, so that a scan of the store after a
        // restart starts where this node's records are.
        let mark = match stored {
            Some(mark) if same_boot => mark,
            _ => Mark {
                boot: hello.boot,
                record: stored.map_or(0, |m| m.record),
                ..Mark::default()
            },
        };
        self.marks.insert(id.clone(), mark);
        let (pending, dropping) = match self.peer.take() {
            Some(peer) if again => (peer.pending, peer.dropping),
            _ => (None, false),
        };
        self.peer = Some(Peer {
            id,
            firmware: hello.firmware.as_str().to_owned(),
            sensors: hello.sensors.iter().copied().collect(),
            mark,
            pending,
            dropping,
        });
        if again {
            HelloOutcome::Again
        } else {
            HelloOutcome::Attached {
                new_boot: !same_boot,
                previous: stored.filter(|_| !same_boot),
            }
        }
    }

    /// Takes a sample.
    pub fn sample(&mut self, sample: &Sample) -> SampleOutcome {
        let Some(peer) = &mut self.peer else {
            return SampleOutcome::NoHello;
        };
        let expected = peer.mark.through.saturating_add(1);
        if sample.seq < expected {
            return SampleOutcome::Duplicate;
        }
        if sample.seq > expected {
            return SampleOutcome::OutOfOrder { expected };
        }
        SampleOutcome::Store
    }

    /// The drops to record before anything else is done with sample
    /// `seq`, if a status reported some that no record covers yet.
    ///
    /// The node sends the status that closes a gap just before the first
    /// sample it numbers after it, and go-back-N makes the agent wait for
    /// older ones; so the sample that follows the status tells where the
    /// gap lies, whether it is stored now or later.
    pub fn drops_before(&mut self, seq: u32) -> Option<Drops> {
        let peer = self.peer.as_mut()?;
        let drops = peer.pending.take()?;
        Some(Drops {
            before: Some(seq),
            ..drops
        })
    }

    /// Takes a status.
    pub fn status(&mut self, status: &Status) -> StatusOutcome {
        let Some(peer) = &mut self.peer else {
            return StatusOutcome::Quiet;
        };
        let full = status.buffered >= status.capacity;
        let was_dropping = std::mem::replace(&mut peer.dropping, full && status.dropped > 0);
        if status.dropped <= peer.mark.dropped {
            return StatusOutcome::Quiet;
        }
        if full {
            // More may be lost before the node has room again; the status
            // it sends then has the final count.
            return if was_dropping {
                StatusOutcome::Quiet
            } else {
                StatusOutcome::Dropping
            };
        }
        peer.pending = Some(Drops {
            boot: peer.mark.boot,
            dropped: status.dropped - peer.mark.dropped,
            dropped_total: status.dropped,
            before: None,
            status: *status,
        });
        StatusOutcome::GapClosed
    }

    /// Reports that sample `seq` is durable as the record `record`.
    pub fn stored(&mut self, seq: u32, record: u64) {
        self.update(|mark| {
            mark.through = mark.through.max(seq);
            mark.record = mark.record.max(record);
        });
    }

    /// Reports that drops through the counter value `total` are durable
    /// as the record `record`.
    pub fn drops_recorded(&mut self, total: u32, record: u64) {
        self.update(|mark| {
            mark.dropped = mark.dropped.max(total);
            mark.record = mark.record.max(record);
        });
    }

    fn update(&mut self, f: impl FnOnce(&mut Mark)) {
        let Some(peer) = &mut self.peer else { return };
        f(&mut peer.mark);
        self.marks.insert(peer.id.clone(), peer.mark);
    }

    /// The ack to send: `(boot, through)` of the node on the port.
    pub fn ack(&self) -> Option<(u32, u32)> {
        self.peer.as_ref().map(|p| (p.mark.boot, p.mark.through))
    }
}

/// A quantity's name in records.
pub fn quantity_name(quantity: Quantity) -> &'static str {
    match quantity {
        Quantity::Temperature => "temperature",
        Quantity::RelativeHumidity => "relative_humidity",
        Quantity::GasConcentration => "gas_concentration",
        Quantity::DoseRate => "dose_rate",
        Quantity::CountRate => "count_rate",
        Quantity::Other => "other",
        Quantity::AlarmOutput => "alarm_output",
    }
}

/// A unit's symbol in records; `None` for dimensionless values.
pub fn unit_symbol(unit: kouan_protocol::Unit) -> Option<&'static str> {
    use kouan_protocol::Unit;
    match unit {
        Unit::DegreeCelsius => Some("°C"),
        Unit::PercentRh => Some("%RH"),
        Unit::Ppm => Some("ppm"),
        Unit::PercentLel => Some("%LEL"),
        Unit::MicrosievertPerHour => Some("µSv/h"),
        Unit::CountsPerMinute => Some("cpm"),
        Unit::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kouan_protocol::{NodeTime, Unit};

    fn hello(node: &str, boot: u32) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            node_id: node.try_into().unwrap(),
            firmware: "0.1.0".try_into().unwrap(),
            boot,
            sensors: Default::default(),
        }
    }

    fn sample(seq: u32) -> Sample {
        Sample {
            seq,
            sensor: 0,
            value: 21.5,
            unit: Unit::DegreeCelsius,
            time: NodeTime {
                ms: u64::from(seq) * 1000,
                synced: false,
            },
        }
    }

    fn status(buffered: u16, dropped: u32) -> Status {
        Status {
            buffered,
            capacity: 8,
            dropped,
            retransmitted: 0,
            corrupt_frames: 0,
            uptime_s: 1,
        }
    }

    fn store(link: &mut Link, seq: u32) {
        assert_eq!(link.sample(&sample(seq)), SampleOutcome::Store);
        link.stored(seq, u64::from(seq) + 100);
    }

    #[test]
    fn samples_before_a_hello_ask_for_one() {
        let mut link = Link::default();
        assert_eq!(link.sample(&sample(1)), SampleOutcome::NoHello);
        assert_eq!(link.ack(), None);
    }

    #[test]
    fn only_the_next_number_is_stored_and_retransmissions_are_duplicates() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        store(&mut link, 1);
        store(&mut link, 2);

        assert_eq!(link.sample(&sample(2)), SampleOutcome::Duplicate);
        assert_eq!(
            link.sample(&sample(4)),
            SampleOutcome::OutOfOrder { expected: 3 }
        );
        assert_eq!(link.ack(), Some((7, 2)));
        store(&mut link, 3);
        assert_eq!(link.ack(), Some((7, 3)));
    }

    #[test]
    fn a_restarted_agent_continues_from_the_watermark_of_the_same_boot() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        store(&mut link, 1);
        store(&mut link, 2);
        let marks = link.marks().clone();

        let mut restarted = Link::new(marks, None);
        assert!(matches!(
            restarted.hello(&hello("n1", 7)),
            HelloOutcome::Attached {
                new_boot: false,
                ..
            }
        ));
        assert_eq!(restarted.ack(), Some((7, 2)));
        assert_eq!(restarted.sample(&sample(1)), SampleOutcome::Duplicate);
        store(&mut restarted, 3);
    }

    #[test]
    fn a_new_boot_numbers_from_one_again() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        store(&mut link, 1);

        let outcome = link.hello(&hello("n1", 8));
        let HelloOutcome::Attached { new_boot, previous } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(new_boot);
        assert_eq!(previous.map(|m| (m.boot, m.through)), Some((7, 1)));
        assert_eq!(link.ack(), Some((8, 0)));
        store(&mut link, 1);
        // The scan after a restart still starts at this node's records.
        assert_eq!(link.marks()["n1"].record, 101);
    }

    #[test]
    fn a_second_hello_of_the_same_boot_keeps_the_place() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        store(&mut link, 1);
        assert_eq!(link.hello(&hello("n1", 7)), HelloOutcome::Again);
        assert_eq!(link.ack(), Some((7, 1)));
    }

    #[test]
    fn another_protocol_or_node_is_refused() {
        let mut link = Link::new(Marks::new(), Some("n1".into()));
        let mut old = hello("n1", 7);
        old.protocol = PROTOCOL_VERSION + 1;
        assert!(matches!(link.hello(&old), HelloOutcome::Refused { .. }));
        assert!(matches!(
            link.hello(&hello("n2", 7)),
            HelloOutcome::Unexpected { .. }
        ));
        assert_eq!(link.sample(&sample(1)), SampleOutcome::NoHello);
    }

    #[test]
    fn drops_are_recorded_once_with_the_first_sample_after_the_gap() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        store(&mut link, 1);

        // Full and dropping, then more, then room again with the final count.
        assert_eq!(link.status(&status(8, 1)), StatusOutcome::Dropping);
        assert_eq!(link.status(&status(8, 30)), StatusOutcome::Quiet);
        assert_eq!(link.status(&status(5, 42)), StatusOutcome::GapClosed);
        // The first sample after the gap is 9, ahead of the 2 expected:
        // the gap lies before 9, though 9 is stored later.
        let drops = link.drops_before(9).unwrap();
        assert_eq!(
            (drops.boot, drops.dropped, drops.dropped_total, drops.before),
            (7, 42, 42, Some(9))
        );
        assert_eq!(
            link.sample(&sample(9)),
            SampleOutcome::OutOfOrder { expected: 2 }
        );
        link.drops_recorded(42, 200);
        assert_eq!(link.drops_before(2), None);
        store(&mut link, 2);

        // The same count again is nothing new; a later gap counts from 42.
        assert_eq!(link.status(&status(1, 42)), StatusOutcome::Quiet);
        assert_eq!(link.status(&status(3, 50)), StatusOutcome::GapClosed);
        let drops = link.drops_before(20).unwrap();
        assert_eq!((drops.dropped, drops.dropped_total), (8, 50));
    }

    #[test]
    fn drops_recorded_before_a_restart_are_not_recorded_again() {
        let mut link = Link::default();
        link.hello(&hello("n1", 7));
        link.status(&status(5, 42));
        assert!(link.drops_before(1).is_some());
        link.drops_recorded(42, 100);
        store(&mut link, 1);
        link.stored(1, 101);

        let mut restarted = Link::new(link.marks().clone(), None);
        restarted.hello(&hello("n1", 7));
        assert_eq!(restarted.status(&status(5, 42)), StatusOutcome::Quiet);
    }
}
