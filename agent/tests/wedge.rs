//! Keyboard-wedge decoding on recorded evdev event sequences.
//!
//! The recordings in `tests/data/wedge/` are in the text format `evtest`
//! prints: a device header, then one `Event:` line an event, with the
//! `MSC_SCAN` (HID usage) events, `SYN_REPORT` markers, LED changes and
//! autorepeats a USB keyboard produces. They were synthesised in that
//! format for these tests (each file says so in its first lines), not
//! captured from a scanner. Each test runs a recording through the decoder
//! and the decoded scan through `scan::parse`, as the scanner driver does.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use kouan_agent::scan::{self, Content, Date, GS, ScanError};
use kouan_agent::wedge::{
    Counters, DecodeError, Decoder, DecoderConfig, EV_SYN, Layout, RawEvent, SYN_DROPPED,
    SYN_REPORT,
};

const EV_MSC: u16 = 0x04;

/// One recording: its events, and how many were `MSC_SCAN`.
struct Recording {
    events: Vec<RawEvent>,
    msc_scans: usize,
}

/// Parses `evtest` output; lines other than `Event:` lines (the header,
/// comments) are skipped.
fn parse_evtest(text: &str) -> Result<Recording, String> {
    let mut events = Vec::new();
    let mut msc_scans = 0;
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("Event: time ") else {
            continue;
        };
        let event = parse_event(rest).ok_or_else(|| format!("line {}: {line:?}", n + 1))?;
        msc_scans += usize::from(event.kind == EV_MSC);
        events.push(event);
    }
    Ok(Recording { events, msc_scans })
}

// `1700000000.123456, type 1 (EV_KEY), code 42 (KEY_LEFTSHIFT), value 1`,
// `1700000000.123456, -------------- SYN_REPORT ------------` or
// `1700000000.123456, >>>>>>>>>>>>>> SYN_DROPPED <<<<<<<<<<<<`.
fn parse_event(rest: &str) -> Option<RawEvent> {
    let (time, rest) = rest.split_once(", ")?;
    let (secs, micros) = time.split_once('.')?;
    let time =
        Duration::from_secs(secs.parse().ok()?) + Duration::from_micros(micros.parse().ok()?);

    if rest.contains("SYN_REPORT") || rest.contains("SYN_DROPPED") {
        let code = if rest.contains("SYN_REPORT") {
            SYN_REPORT
        } else {
            SYN_DROPPED
        };
        let value = 0;
        return Some(RawEvent {
            time,
            kind: EV_SYN,
            code,
            value,
        });
    }

    let number = |field: &str, prefix: &str| -> Option<String> {
        let field = field.trim().strip_prefix(prefix)?;
        Some(field.split(' ').next()?.to_string())
    };
    let mut fields = rest.split(", ");
    let kind: u16 = number(fields.next()?, "type ")?.parse().ok()?;
    let code: u16 = number(fields.next()?, "code ")?.parse().ok()?;
    let value = number(fields.next()?, "value ")?;
    // evtest prints MSC_SCAN and MSC_RAW values in hex.
    let value = if kind == EV_MSC {
        i32::from_str_radix(&value, 16).ok()?
    } else {
        value.parse().ok()?
    };
    Some(RawEvent {
        time,
        kind,
        code,
        value,
    })
}

fn recording(name: &str) -> Recording {
    let path = format!("{}/tests/data/wedge/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let recording = parse_evtest(&text).unwrap();
    assert!(recording.msc_scans > 0, "{name} has no MSC_SCAN events");
    recording
}

fn decode(name: &str, layout: Layout) -> (Vec<Result<Vec<u8>, DecodeError>>, Counters) {
    let config = DecoderConfig {
        layout,
        ..DecoderConfig::default()
    };
    let mut decoder = Decoder::new(config);
    let out = recording(name)
        .events
        .into_iter()
        .filter_map(|event| decoder.feed(event))
        .collect();
    (out, decoder.counters())
}

fn today() -> Date {
    Date::new(2026, 12, 3).unwrap()
}

fn gs1(data: &[u8]) -> scan::ElementString {
    match scan::parse(data, today()).unwrap().content {
        Content::Gs1(elements) => elements,
        Content::Plain(plain) => panic!("plain: {plain:?}"),
    }
}

#[test]
fn ean13_with_keypad_enter() {
    let (out, counters) = decode("ean13-us.evtest", Layout::US);

    assert_eq!(out, [Ok(b"5901234123457".to_vec())]);
    assert_eq!(gs1(b"5901234123457").gtin(), Some("05901234123457"));
    assert_eq!(
        counters,
        Counters {
            scans: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn gs1_128_with_aim_id_and_gs_as_alt_029() {
    let (out, counters) = decode("gs1-128-alt-gs-us.evtest", Layout::US);

    let data = b"]C10109521234543213104512\x1d17270228";
    assert_eq!(out, [Ok(data.to_vec())]);
    let elements = gs1(data);
    assert_eq!(elements.gtin(), Some("09521234543213"));
    assert_eq!(elements.batch(), Some("4512"));
    assert_eq!(elements.expiry(), Date::new(2027, 2, 28));
    assert_eq!(
        counters.repeats, 2,
        "the held Alt repeats twice and types nothing"
    );
}

#[test]
fn gs1_128_that_lost_its_gs_is_flagged_by_the_parser() {
    let (out, _) = decode("gs1-128-gs-lost-us.evtest", Layout::US);

    let data = out[0].as_ref().unwrap();
    assert_eq!(data, b"]C1010952123454321310451217270228");
    assert!(!data.contains(&GS));
    let error = scan::parse(data, today()).unwrap_err();
    assert_eq!(
        error,
        ScanError::SwallowedAi {
            ai: "10".into(),
            next: "17".into(),
            position: 25,
        }
    );
    assert!(
        error
            .to_string()
            .contains("the GS separator before it was probably lost")
    );
}

#[test]
fn shift_for_letters_in_a_batch_number() {
    let (out, _) = decode("batch-letters-us.evtest", Layout::US);

    let data = out[0].as_ref().unwrap();
    assert_eq!(data, b"]C1010952123454321310AB-12Xc");
    assert_eq!(gs1(data).batch(), Some("AB-12Xc"));
}

#[test]
fn caps_lock_capitalises_letters_and_shift_undoes_it() {
    let (out, _) = decode("caps-lock-us.evtest", Layout::US);

    let data = out[0].as_ref().unwrap();
    assert_eq!(data, b"LAB-2026-x7");
    let scan = scan::parse(data, today()).unwrap();
    assert_eq!(scan.content, Content::Plain(b"LAB-2026-x7".to_vec()));
}

#[test]
fn de_scanner_swaps_y_and_z_and_moves_punctuation() {
    let (de, _) = decode("lab-code-de.evtest", Layout::DE);
    let (us, _) = decode("lab-code-de.evtest", Layout::US);

    assert_eq!(de, [Ok(b"Probe-ZY/7".to_vec())]);
    assert_eq!(
        us,
        [Ok(b"Probe/YZ&7".to_vec())],
        "a us decoder misreads a de scanner"
    );
}

#[test]
fn scan_cut_off_midway_is_discarded_and_the_next_one_read() {
    let (out, counters) = decode("cut-off-us.evtest", Layout::US);

    assert!(
        matches!(&out[0], Err(DecodeError::CutOff { len: 6, gap }) if *gap > Duration::from_secs(1)),
        "{out:?}"
    );
    assert_eq!(out[1], Ok(b"4006381333931".to_vec()));
    assert_eq!(gs1(b"4006381333931").gtin(), Some("04006381333931"));
    assert_eq!((counters.scans, counters.cut_off), (1, 1));
}

#[test]
fn key_events_alone_give_the_same_scans() {
    for name in [
        "ean13-us.evtest",
        "gs1-128-alt-gs-us.evtest",
        "caps-lock-us.evtest",
    ] {
        let mut decoder = Decoder::new(DecoderConfig::default());
        let keys_only: Vec<_> = recording(name)
            .events
            .into_iter()
            .filter(|e| e.kind == kouan_agent::wedge::EV_KEY)
            .filter_map(|e| decoder.feed(e))
            .collect();
        assert_eq!(keys_only, decode(name, Layout::US).0, "{name}");
    }
}

#[test]
fn evtest_parser_reads_each_line_kind() {
    let text = "Testing ... (interrupt to exit)\n\
        Event: time 1700000000.000123, type 4 (EV_MSC), code 4 (MSC_SCAN), value 700e1\n\
        Event: time 1700000000.000123, type 1 (EV_KEY), code 42 (KEY_LEFTSHIFT), value 1\n\
        Event: time 1700000000.000123, -------------- SYN_REPORT ------------\n\
        Event: time 1700000000.500000, >>>>>>>>>>>>>> SYN_DROPPED <<<<<<<<<<<<\n";
    let recording = parse_evtest(text).unwrap();

    let t = Duration::from_secs(1_700_000_000);
    let us = Duration::from_micros;
    assert_eq!(
        recording.events,
        [
            RawEvent {
                time: t + us(123),
                kind: EV_MSC,
                code: 4,
                value: 0x700e1
            },
            RawEvent::key(t + us(123), 42, 1),
            RawEvent::report(t + us(123)),
            RawEvent {
                time: t + us(500_000),
                kind: EV_SYN,
                code: SYN_DROPPED,
                value: 0
            },
        ]
    );
    assert!(parse_evtest("Event: time 1700000000.1, type x").is_err());
}
