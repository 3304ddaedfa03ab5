//! USB keyboard-wedge scanners: evdev key events in, scans out.
//!
//! A keyboard-wedge scanner pretends to be a keyboard: it "types" each scan
//! as key presses in the keyboard layout it was set up for, then presses
//! Enter (or Tab). The agent reads such a scanner at the evdev layer, grabs it
//! so that the keystrokes reach no console, and turns the key events back
//! into the bytes of the scan, which [`scan::parse`](crate::scan::parse)
//! then reads. Nothing is guessed on the way: a scan with a key the layout
//! cannot explain, a scan cut off half-way or one longer than the limit is
//! discarded with a [`DecodeError`] and counted, never passed on in part.
//!
//! The [`Decoder`] does no I/O. It takes [`RawEvent`]s (type, code, value
//! and time, as the kernel reports them) and gives back completed scans
//! without their terminator. It keeps the keyboard state a host would keep:
//! left and right Shift, Caps Lock, AltGr, Ctrl, and Alt with digits typed
//! on the keypad. The character a key gives comes from a [`Layout`], data
//! that lists the characters of each keyboard [`Row`] at each level (`us`
//! and `de` are built in). A scanner set to `de` that types `Z` presses the
//! key a `us` decoder reads as `Y`, so the layout in the configuration must
//! match the scanner's. The group separator GS (0x1D) has no key of its
//! own; scanners send it as Alt+0,2,9 on the keypad or as Ctrl+], and the
//! decoder turns both into the byte 0x1D. A scanner set up to send neither
//! drops GS, and the decoder then passes the scan on without it, so that
//! the scan parser reports the lost separator.
//!
//! Time is a parameter: each event carries its kernel timestamp, and a gap
//! of more than [`DecoderConfig::key_timeout`] between two keys of one scan
//! means the scan was cut off (a cable pulled, a scanner reset); the
//! partial scan is then discarded. [`Decoder::deadline`] and
//! [`Decoder::expire`] let the I/O loop discard it on time even when no
//! further key comes.
//!
//! [`read_scans`] is the thin I/O side: it opens an input device by path,
//! grabs it, feeds its events to a decoder and sends each completed scan as a
//! [`WedgeScan`] down a channel, until the device is lost; its caller
//! reopens it with backoff.
//!
//! ```
//! use std::time::Duration;
//! use evdev::KeyCode;
//! use kouan_agent::wedge::{Decoder, DecoderConfig, DecodeError, RawEvent};
//!
//! let mut decoder = Decoder::new(DecoderConfig::default());
//! let keys = [
//!     (KeyCode::KEY_LEFTSHIFT, 1), (KeyCode::KEY_A, 1), (KeyCode::KEY_A, 0),
//!     (KeyCode::KEY_LEFTSHIFT, 0), (KeyCode::KEY_1, 1), (KeyCode::KEY_1, 0),
//!     (KeyCode::KEY_ENTER, 1), (KeyCode::KEY_ENTER, 0),
//!     // A partial scan, then nothing for a second: it was cut off.
//!     (KeyCode::KEY_2, 1), (KeyCode::KEY_2, 0),
//! ];
//! let mut scans = Vec::new();
//! for (i, (key, value)) in keys.into_iter().enumerate() {
//!     let time = Duration::from_millis(4 * i as u64);
//!     scans.extend(decoder.feed(RawEvent::key(time, key.code(), value)));
//! }
//! assert_eq!(scans, [Ok(b"A1".to_vec())]);
//!
//! let later = Duration::from_secs(1);
//! assert!(matches!(decoder.expire(later), Some(DecodeError::CutOff { len: 1, .. })));
//! assert_eq!(decoder.counters().cut_off, 1);
//! ```
//!
//! Known limits: dead keys (`^`, `´` and `` ` `` on `de`) are not composed;
//! they are unknown keys, so a scan that contains them is discarded (none of
//! them is in the GS1 character set). The keypad always gives digits, as if
//! Num Lock were on. Alt codes above 127 are refused rather than read in
//! one of the two code pages Windows hosts use for them. After the kernel
//! drops events (SYN_DROPPED) all modifiers count as released and Caps Lock
//! keeps the state it had; a Caps Lock press lost in the drop goes unseen.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use evdev::raw_stream::RawDevice;
use evdev::{EventType, InputEvent, KeyCode, KeyCode as K, LedCode};
use tokio::sync::mpsc;

use crate::clock::{self, CaptureTime};

/// `EV_SYN`: event type of the synchronisation markers.
pub const EV_SYN: u16 = 0x00;
/// `EV_KEY`: event type of key presses and releases.
pub const EV_KEY: u16 = 0x01;
/// `SYN_REPORT`: the end of one report of the device.
pub const SYN_REPORT: u16 = 0;
/// `SYN_DROPPED`: the kernel's buffer overflowed and events were lost.
pub const SYN_DROPPED: u16 = 3;

/// One event as the kernel reports it (`struct input_event`), with its
/// timestamp as time since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent {
    /// The kernel's timestamp.
    pub time: Duration,
    /// The event type (`EV_KEY`, `EV_SYN`, `EV_MSC`, ...).
    pub kind: u16,
    /// The code: a key code for `EV_KEY`.
    pub code: u16,
    /// For `EV_KEY`: 1 press, 0 release, 2 autorepeat.
    pub value: i32,
}

impl RawEvent {
    /// A key event: `value` 1 press, 0 release, 2 autorepeat.
    pub fn key(time: Duration, code: u16, value: i32) -> RawEvent {
        RawEvent {
            time,
            kind: EV_KEY,
            code,
            value,
        }
    }

    /// A `SYN_REPORT`.
    pub fn report(time: Duration) -> RawEvent {
        RawEvent {
            time,
            kind: EV_SYN,
            code: SYN_REPORT,
            value: 0,
        }
    }
}

impl From<InputEvent> for RawEvent {
    fn from(event: InputEvent) -> RawEvent {
        RawEvent {
            time: since_epoch(event.timestamp()),
            kind: event.event_type().0,
            code: event.code(),
            value: event.value(),
        }
    }
}

/// What one key gives in a layout, at each level; `None` where it gives no
/// character (a dead key, a level the key does not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keycap {
    /// Without modifiers.
    pub base: Option<char>,
    /// With Shift.
    pub shift: Option<char>,
    /// With AltGr.
    pub altgr: Option<char>,
}

impl Keycap {
    const fn same(c: char) -> Keycap {
        Keycap {
            base: Some(c),
            shift: Some(c),
            altgr: None,
        }
    }

    const fn same_none() -> Keycap {
        Keycap {
            base: None,
            shift: None,
            altgr: None,
        }
    }

    // Caps Lock acts as Shift on the keys whose shifted character is the
    // capital of the base one (letters, umlauts), not on digits or `ß`.
    fn caps_applies(&self) -> bool {
        let (Some(base), Some(shift)) = (self.base, self.shift) else {
            return false;
        };
        let mut upper = base.to_uppercase();
        base != shift && upper.next() == Some(shift) && upper.next().is_none()
    }
}

/// One row of the main block of a layout: the characters of its keys from
/// left to right (the keys are in [`ROW_KEYS`]), one string a level. `\0`
/// marks a key without a character at that level; an empty `altgr` string,
/// a row without a third level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Without modifiers.
    pub base: &'static str,
    /// With Shift.
    pub shift: &'static str,
    /// With AltGr.
    pub altgr: &'static str,
}

/// The keys of the four character rows of a PC keyboard, left to right:
/// the digit row, the Q row, the A row and the Z row (with the key left of
/// Z that ISO keyboards have).
pub const ROW_KEYS: [&[KeyCode]; 4] = [
    &[
        K::KEY_GRAVE,
        K::KEY_1,
        K::KEY_2,
        K::KEY_3,
        K::KEY_4,
        K::KEY_5,
        K::KEY_6,
        K::KEY_7,
        K::KEY_8,
        K::KEY_9,
        K::KEY_0,
        K::KEY_MINUS,
        K::KEY_EQUAL,
    ],
    &[
        K::KEY_Q,
        K::KEY_W,
        K::KEY_E,
        K::KEY_R,
        K::KEY_T,
        K::KEY_Y,
        K::KEY_U,
        K::KEY_I,
        K::KEY_O,
        K::KEY_P,
        K::KEY_LEFTBRACE,
        K::KEY_RIGHTBRACE,
        K::KEY_BACKSLASH,
    ],
    &[
        K::KEY_A,
        K::KEY_S,
        K::KEY_D,
        K::KEY_F,
        K::KEY_G,
        K::KEY_H,
        K::KEY_J,
        K::KEY_K,
        K::KEY_L,
        K::KEY_SEMICOLON,
        K::KEY_APOSTROPHE,
    ],
    &[
        K::KEY_102ND,
        K::KEY_Z,
        K::KEY_X,
        K::KEY_C,
        K::KEY_V,
        K::KEY_B,
        K::KEY_N,
        K::KEY_M,
        K::KEY_COMMA,
        K::KEY_DOT,
        K::KEY_SLASH,
    ],
];

// Keys that give the same character in every layout. Keypad digits give
// digits with or without Shift: scanners that type on the keypad assume
// Num Lock is on.
const COMMON_KEYS: [(KeyCode, char); 15] = [
    (K::KEY_SPACE, ' '),
    (K::KEY_KP0, '0'),
    (K::KEY_KP1, '1'),
    (K::KEY_KP2, '2'),
    (K::KEY_KP3, '3'),
    (K::KEY_KP4, '4'),
    (K::KEY_KP5, '5'),
    (K::KEY_KP6, '6'),
    (K::KEY_KP7, '7'),
    (K::KEY_KP8, '8'),
    (K::KEY_KP9, '9'),
    (K::KEY_KPSLASH, '/'),
    (K::KEY_KPASTERISK, '*'),
    (K::KEY_KPMINUS, '-'),
    (K::KEY_KPPLUS, '+'),
];

/// A keyboard layout as data: what each key gives. Keys it gives no
/// character for are unknown keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Its name in the configuration (`us`, `de`).
    pub name: &'static str,
    /// The rows of the main block, in the order of [`ROW_KEYS`].
    pub rows: [Row; 4],
    /// What the keypad's decimal key gives.
    pub keypad_decimal: char,
    /// Whether the right Alt key is AltGr (the third level) rather than Alt.
    pub altgr: bool,
}

impl Layout {
    /// US English (QWERTY), the default of most scanners. ANSI keyboards
    /// have no key left of Z.
    pub const US: Layout = Layout {
        name: "us",
        rows: [
            Row {
                base: "`1234567890-=",
                shift: "~!@#$%^&*()_+",
                altgr: "",
            },
            Row {
                base: "qwertyuiop[]\\",
                shift: "QWERTYUIOP{}|",
                altgr: "",
            },
            Row {
                base: "asdfghjkl;'",
                shift: "ASDFGHJKL:\"",
                altgr: "",
            },
            Row {
                base: "\0zxcvbnm,./",
                shift: "\0ZXCVBNM<>?",
                altgr: "",
            },
        ],
        keypad_decimal: '.',
        altgr: false,
    };

    /// German (QWERTZ) as Windows has it, the layout scanners emulate: Y
    /// and Z swapped, umlauts, `-` where `us` has `/`, `@` and the brackets
    /// on AltGr, `,` on the keypad's decimal key. `^`, `´` and `` ` `` are
    /// dead keys and left out.
    pub const DE: Layout = Layout {
        name: "de",
        rows: [
            Row {
                base: "\x001234567890ß\0",
                shift: "°!\"§$%&/()=?\0",
                altgr: "\0\0²³\0\0\0{[]}\\\0",
            },
            Row {
                base: "qwertzuiopü+#",
                shift: "QWERTZUIOPÜ*'",
                altgr: "@\0€\0\0\0\0\0\0\0\0~\0",
            },
            Row {
                base: "asdfghjklöä",
                shift: "ASDFGHJKLÖÄ",
                altgr: "",
            },
            Row {
                base: "<yxcvbnm,.-",
                shift: ">YXCVBNM;:_",
                altgr: "|\0\0\0\0\0\0µ\0\0\0",
            },
        ],
        keypad_decimal: ',',
        altgr: true,
    };

    /// The built-in layouts.
    pub const ALL: [Layout; 2] = [Layout::US, Layout::DE];

    /// The built-in layout with this name.
    pub fn by_name(name: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|layout| layout.name == name)
    }

    /// What `key` gives, if it gives a character at any level.
    pub fn keycap(&self, key: KeyCode) -> Option<Keycap> {
        if key == K::KEY_KPDOT {
            return Some(Keycap::same(self.keypad_decimal));
        }
        if let Some(&(_, c)) = COMMON_KEYS.iter().find(|(k, _)| *k == key) {
            return Some(Keycap::same(c));
        }

        let (keys, row) = ROW_KEYS
            .iter()
            .zip(&self.rows)
            .find(|(keys, _)| keys.contains(&key))?;
        let column = keys.iter().position(|&k| k == key)?;
        let level = |chars: &str| chars.chars().nth(column).filter(|&c| c != '\0');
        let keycap = Keycap {
            base: level(row.base),
            shift: level(row.shift),
            altgr: level(row.altgr),
        };
        (keycap != Keycap::same_none()).then_some(keycap)
    }
}

/// The key that ends a scan. Scanners end each scan with a key press, the
/// way a person confirms a form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Terminator {
    /// Enter or keypad Enter; Tab then types a tab (0x09).
    #[default]
    Enter,
    /// Tab; Enter and keypad Enter then type a carriage return (0x0D).
    Tab,
}

/// How a [`Decoder`] reads keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    /// The layout the scanner is set up for.
    pub layout: Layout,
    /// The key that ends a scan.
    pub terminator: Terminator,
    /// The longest scan in bytes; a longer one is discarded, so a stuck
    /// scanner cannot make the decoder hold more than this.
    pub max_len: usize,
    /// The longest gap between two keys of one scan. Scanners type a key
    /// every few milliseconds; a longer pause means the scan was cut off.
    pub key_timeout: Duration,
}

impl Default for DecoderConfig {
    /// `us`, Enter, 1024 bytes (a GS1 DataMatrix label carries a few
    /// hundred at most), 500 ms (twice the kernel's autorepeat delay, so a
    /// held modifier does not count as a pause).
    fn default() -> DecoderConfig {
        DecoderConfig {
            layout: Layout::US,
            terminator: Terminator::Enter,
            max_len: 1024,
            key_timeout: Duration::from_millis(500),
        }
    }
}

/// A modifier in a key combination the layout gives no character for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    /// Ctrl, left or right.
    Ctrl,
    /// Alt (left, or right where the layout has no AltGr).
    Alt,
    /// AltGr, the right Alt of layouts with a third level.
    AltGr,
}

impl std::fmt::Display for Modifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Modifier::Ctrl => "ctrl",
            Modifier::Alt => "alt",
            Modifier::AltGr => "altgr",
        })
    }
}

/// Why a scan was discarded. Positions are 0-based byte offsets in the scan
/// as decoded so far.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A key that gives no character in the layout (a function key, a
    /// dead key, a key of another layout).
    #[error("key {key:?} (code {}) at position {position} gives no character in layout {layout}", .key.0)]
    UnknownKey {
        /// The key.
        key: KeyCode,
        /// Where its character would have gone.
        position: usize,
        /// The decoder's layout.
        layout: &'static str,
    },
    /// A modifier and a key that give no character together (Ctrl with a
    /// digit, Alt with a key off the keypad, AltGr with a key that has no
    /// third level).
    #[error("{modifier}+{key:?} at position {position} gives no character in layout {layout}")]
    UnknownCombination {
        /// The modifier.
        modifier: Modifier,
        /// The key.
        key: KeyCode,
        /// Where its character would have gone.
        position: usize,
        /// The decoder's layout.
        layout: &'static str,
    },
    /// Alt with keypad digits that give no ASCII character.
    #[error("alt code {code} at position {position} is not an ascii character")]
    AltCode {
        /// The number typed (saturated at `u32::MAX`).
        code: u32,
        /// Where its character would have gone.
        position: usize,
    },
    /// The terminator came while Alt was held with keypad digits typed.
    #[error("scan ended at position {position} inside an alt code")]
    UnfinishedAltCode {
        /// Where the scan ended.
        position: usize,
    },
    /// The scan grew past [`DecoderConfig::max_len`].
    #[error("scan is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// No key came for longer than [`DecoderConfig::key_timeout`] in the
    /// middle of a scan.
    #[error("scan cut off after {len} bytes: no key for {gap:?}")]
    CutOff {
        /// The bytes decoded before the pause.
        len: usize,
        /// The pause.
        gap: Duration,
    },
    /// The kernel dropped events (SYN_DROPPED) during the scan or just
    /// before it: keys may be missing from it.
    #[error("input events were dropped by the kernel after {len} bytes of the scan")]
    EventsDropped {
        /// The bytes decoded before the drop.
        len: usize,
    },
}

/// What a [`Decoder`] has seen, for the status view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Scans completed.
    pub scans: u64,
    /// Scans discarded, for whatever reason.
    pub discarded: u64,
    /// Of those, scans cut off by a pause.
    pub cut_off: u64,
    /// Key presses and combinations that gave no character.
    pub unknown_keys: u64,
    /// Autorepeat events, which type nothing.
    pub repeats: u64,
    /// SYN_DROPPED markers.
    pub drops: u64,
}

/// The keyboard state machine: key events in, scans out. See the module
/// doc.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: DecoderConfig,
    shift: [bool; 2],
    ctrl: [bool; 2],
    alt: [bool; 2],
    altgr: bool,
    caps: bool,
    // The number typed on the keypad while Alt is held.
    alt_code: Option<u32>,
    scan: Vec<u8>,
    // The first reason the scan in progress will be discarded; keys keep
    // being read until the terminator, so the next scan starts clean.
    trouble: Option<DecodeError>,
    last_key: Option<Duration>,
    // Between SYN_DROPPED and the next SYN_REPORT events are incomplete
    // and must be ignored (kernel Documentation/input/event-codes.rst).
    dropping: bool,
    counters: Counters,
}

impl Decoder {
    /// A decoder with every key released and Caps Lock off.
    pub fn new(config: DecoderConfig) -> Decoder {
        Decoder {
            config,
            shift: [false; 2],
            ctrl: [false; 2],
            alt: [false; 2],
            altgr: false,
            caps: false,
            alt_code: None,
            scan: Vec::new(),
            trouble: None,
            last_key: None,
            dropping: false,
            counters: Counters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// What the decoder has seen since it was made.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether Caps Lock is on.
    pub fn caps_lock(&self) -> bool {
        self.caps
    }

    /// Sets Caps Lock, for a device whose Caps Lock LED is already on when
    /// it is opened.
    pub fn set_caps_lock(&mut self, on: bool) {
        self.caps = on;
    }

    /// Whether a scan is in progress: keys have come since the last
    /// terminator.
    pub fn in_scan(&self) -> bool {
        !self.scan.is_empty() || self.trouble.is_some() || self.alt_code.is_some()
    }

    /// When the scan in progress counts as cut off, if one is.
    pub fn deadline(&self) -> Option<Duration> {
        let last = self.last_key.filter(|_| self.in_scan())?;
        Some(last + self.config.key_timeout)
    }

    /// Forgets all keyboard state, for a device that was opened anew; a
    /// scan in progress is discarded and counted. Returns its length.
    pub fn reset(&mut self) -> usize {
        let partial = self.scan.len();
        if self.in_scan() {
            self.counters.discarded += 1;
        }

        let counters = self.counters;
        *self = Decoder::new(self.config.clone());
        self.counters = counters;
        partial
    }

    /// Discards the scan in progress if no key came for longer than the
    /// key timeout before `now`.
    pub fn expire(&mut self, now: Duration) -> Option<DecodeError> {
        let last = self.last_key.filter(|_| self.in_scan())?;
        let gap = now.saturating_sub(last);
        if gap <= self.config.key_timeout {
            return None;
        }

        self.counters.cut_off += 1;
        let len = self.scan.len();
        self.discard(DecodeError::CutOff { len, gap })
    }

    /// Reads one event. Returns a scan (without its terminator) when the
    /// event completes one, or why a scan was discarded when the event ends
    /// it; `None` otherwise.
    pub fn feed(&mut self, event: RawEvent) -> Option<Result<Vec<u8>, DecodeError>> {
        match (event.kind, event.code) {
            (EV_SYN, SYN_REPORT) => {
                self.dropping = false;
                return None;
            }
            (EV_SYN, SYN_DROPPED) => {
                self.dropped(event.time);
                return None;
            }
            (EV_KEY, _) if !self.dropping => {}
            // MSC_SCAN (the HID usage before the keymap), LED and repeat
            // settings carry no keystroke.
            _ => return None,
        }

        let cut_off = self.expire(event.time);
        self.last_key = Some(event.time);
        let key = KeyCode(event.code);
        let outcome = match event.value {
            1 => self.press(key),
            0 => {
                self.release(key);
                None
            }
            _ => {
                self.counters.repeats += 1;
                None
            }
        };

        // A key after a pause starts a new scan, so it cannot also end the
        // one the pause discarded: at most one of the two is set.
        match cut_off {
            Some(error) => Some(Err(error)),
            None => outcome,
        }
    }

    // The lost events are the newest unread ones: the rest of this scan,
    // and perhaps its terminator and the start of the next. So everything
    // up to the next terminator is discarded as one scan.
    fn dropped(&mut self, time: Duration) {
        self.counters.drops += 1;
        self.dropping = true;
        self.shift = [false; 2];
        self.ctrl = [false; 2];
        self.alt = [false; 2];
        self.altgr = false;
        self.alt_code = None;

        let len = self.scan.len();
        self.set_trouble(DecodeError::EventsDropped { len });
        self.last_key = Some(time);
    }

    fn release(&mut self, key: KeyCode) {
        match key {
            K::KEY_LEFTSHIFT => self.shift[0] = false,
            K::KEY_RIGHTSHIFT => self.shift[1] = false,
            K::KEY_LEFTCTRL => self.ctrl[0] = false,
            K::KEY_RIGHTCTRL => self.ctrl[1] = false,
            K::KEY_RIGHTALT if self.config.layout.altgr => self.altgr = false,
            K::KEY_LEFTALT | K::KEY_RIGHTALT => {
                let side = usize::from(key == K::KEY_RIGHTALT);
                self.alt[side] = false;
                if !self.alt.contains(&true) {
                    self.end_alt_code();
                }
            }
            _ => {}
        }
    }

    fn press(&mut self, key: KeyCode) -> Option<Result<Vec<u8>, DecodeError>> {
        match key {
            K::KEY_LEFTSHIFT => self.shift[0] = true,
            K::KEY_RIGHTSHIFT => self.shift[1] = true,
            K::KEY_LEFTCTRL => self.ctrl[0] = true,
            K::KEY_RIGHTCTRL => self.ctrl[1] = true,
            K::KEY_RIGHTALT if self.config.layout.altgr => self.altgr = true,
            K::KEY_LEFTALT => self.alt[0] = true,
            K::KEY_RIGHTALT => self.alt[1] = true,
            K::KEY_CAPSLOCK => self.caps = !self.caps,
            K::KEY_NUMLOCK => {}
            K::KEY_ENTER | K::KEY_KPENTER if self.config.terminator == Terminator::Enter => {
                return self.finish();
            }
            K::KEY_TAB if self.config.terminator == Terminator::Tab => return self.finish(),
            K::KEY_ENTER | K::KEY_KPENTER => self.push_char('\r'),
            K::KEY_TAB => self.push_char('\t'),
            _ if self.alt.contains(&true) => self.alt_key(key),
            _ => self.character_key(key),
        }
        None
    }

    // Windows' Alt codes: the decimal number typed on the keypad while Alt
    // is held is the character's code, given when Alt is let go.
    fn alt_key(&mut self, key: KeyCode) {
        match keypad_digit(key) {
            Some(digit) => {
                let code = self.alt_code.get_or_insert(0);
                *code = code.saturating_mul(10).saturating_add(digit);
            }
            None => self.unknown_combination(Modifier::Alt, key),
        }
    }

    fn end_alt_code(&mut self) {
        let Some(value) = self.alt_code.take() else {
            return;
        };

        match u8::try_from(value) {
            Ok(byte) if byte.is_ascii() => self.push(&[byte]),
            _ => {
                let position = self.scan.len();
                self.set_trouble(DecodeError::AltCode {
                    code: value,
                    position,
                });
            }
        }
    }

    fn character_key(&mut self, key: KeyCode) {
        let Some(keycap) = self.config.layout.keycap(key) else {
            return self.unknown_key(key);
        };

        let shifted = self.shift.contains(&true) != (self.caps && keycap.caps_applies());
        let c = match (self.altgr, shifted) {
            (true, _) => keycap.altgr,
            (false, true) => keycap.shift,
            (false, false) => keycap.base,
        };
        let Some(c) = c else {
            if self.altgr {
                return self.unknown_combination(Modifier::AltGr, key);
            }
            return self.unknown_key(key);
        };

        // Ctrl turns the characters `@` to `_` and `a` to `z` into the C0
        // control codes, as terminals do: Ctrl+] is GS.
        if self.ctrl.contains(&true) {
            match c {
                '@'..='_' | 'a'..='z' => self.push(&[c as u8 & 0x1f]),
                _ => self.unknown_combination(Modifier::Ctrl, key),
            }
            return;
        }
        self.push_char(c);
    }

    fn unknown_key(&mut self, key: KeyCode) {
        self.counters.unknown_keys += 1;
        let position = self.scan.len();
        self.set_trouble(DecodeError::UnknownKey {
            key,
            position,
            layout: self.config.layout.name,
        });
    }

    fn unknown_combination(&mut self, modifier: Modifier, key: KeyCode) {
        self.counters.unknown_keys += 1;
        let position = self.scan.len();
        self.set_trouble(DecodeError::UnknownCombination {
            modifier,
            key,
            position,
            layout: self.config.layout.name,
        });
    }

    fn push_char(&mut self, c: char) {
        let mut utf8 = [0; 4];
        self.push(c.encode_utf8(&mut utf8).as_bytes());
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.trouble.is_some() {
            return;
        }

        if self.scan.len() + bytes.len() > self.config.max_len {
            let max = self.config.max_len;
            self.set_trouble(DecodeError::TooLong { max });
            return;
        }
        self.scan.extend_from_slice(bytes);
    }

    fn set_trouble(&mut self, error: DecodeError) {
        if self.trouble.is_none() {
            self.trouble = Some(error);
        }
    }

    fn finish(&mut self) -> Option<Result<Vec<u8>, DecodeError>> {
        if self.alt_code.take().is_some() {
            let position = self.scan.len();
            self.set_trouble(DecodeError::UnfinishedAltCode { position });
        }

        if let Some(error) = self.trouble.take() {
            self.scan.clear();
            self.counters.discarded += 1;
            return Some(Err(error));
        }
        if self.scan.is_empty() {
            return None;
        }
        self.counters.scans += 1;
        Some(Ok(std::mem::take(&mut self.scan)))
    }

    // A scan that ends without its terminator is reported for the first
    // trouble it had (an unknown key explains more than the pause after it).
    fn discard(&mut self, reason: DecodeError) -> Option<DecodeError> {
        let error = self.trouble.take().unwrap_or(reason);
        self.scan.clear();
        self.alt_code = None;
        self.counters.discarded += 1;
        Some(error)
    }
}

fn keypad_digit(key: KeyCode) -> Option<u32> {
    const KEYPAD: [KeyCode; 10] = [
        K::KEY_KP0,
        K::KEY_KP1,
        K::KEY_KP2,
        K::KEY_KP3,
        K::KEY_KP4,
        K::KEY_KP5,
        K::KEY_KP6,
        K::KEY_KP7,
        K::KEY_KP8,
        K::KEY_KP9,
    ];
    (0u32..)
        .zip(KEYPAD)
        .find(|&(_, k)| k == key)
        .map(|(d, _)| d)
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// A completed scan from a keyboard-wedge scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WedgeScan {
    /// The bytes, without the terminator; hand them to
    /// [`scan::parse`](crate::scan::parse).
    pub data: Vec<u8>,
    /// When the terminator key was pressed, by the kernel's timestamp.
    pub time: CaptureTime,
}

/// Why [`read_scans`] stopped reading a device. Each names the device path,
/// so the supervisor's log says which scanner it was.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path is missing, not readable, or no input device.
    #[error("cannot open input device {}: {source}", .path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another program holds the device for itself (EBUSY).
    #[error("cannot grab input device {}: {source}", .path.display())]
    Grab {
        /// The device path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading failed: the device was unplugged (ENODEV) or broke.
    #[error(
        "input device {} lost ({partial} bytes of a scan in progress discarded): {source}",
        .path.display()
    )]
    Lost {
        /// The device path.
        path: PathBuf,
        /// The length of the scan in progress that was discarded.
        partial: usize,
        /// The cause.
        source: io::Error,
    },
}

/// Reads scans from the keyboard-wedge scanner at `path` (best a stable
/// `/dev/input/by-id/usb-...-event-kbd` link) until the device is lost or
/// the receiver of `scans` is dropped.
///
/// Opens the device, grabs it (EVIOCGRAB: its keys then reach no console
/// and no other reader), resets `decoder` and sets its Caps Lock from the
/// device's LED, then feeds it every event. Each completed scan goes to
/// `scans`, waiting while the channel is full (the kernel keeps a few
/// hundred events meanwhile; beyond that it drops events, and the decoder
/// discards the scan they belonged to). A discarded scan is logged at
/// `warn` and counted in `decoder`'s [`Counters`], which outlive the call so
/// the status view sees totals across reopenings. Caps Lock toggles are
/// mirrored to the device's LED, as a host does, for scanners that read it.
///
/// Returns `Ok(())` when the receiver is gone, and an error naming the path
/// when the device cannot be opened or grabbed or when reading fails, which
/// is what unplugging does (ENODEV): the caller reopens with backoff.
///
/// Dropping the future closes the device, which releases the grab (the
/// kernel ends a grab with the file that holds it); a scan in progress
/// stays in `decoder` and is discarded, and counted, by the next call.
///
/// ```no_run
/// use std::path::Path;
/// use std::time::Duration;
/// use kouan_agent::wedge::{self, Decoder, DecoderConfig, WedgeScan};
///
/// # async fn demo(today: kouan_agent::scan::Date) {
/// let path = Path::new("/dev/input/by-id/usb-Scanner-event-kbd");
/// // A few scans of slack: the driver takes each one in microseconds.
/// let (scans, mut received) = tokio::sync::mpsc::channel::<WedgeScan>(16);
/// tokio::spawn(async move {
///     let mut decoder = Decoder::new(DecoderConfig::default());
///     let mut backoff = Duration::from_millis(500);
///     loop {
///         match wedge::read_scans(path, &mut decoder, &scans).await {
///             Ok(()) => break,
///             Err(error) => tracing::warn!(%error, "scanner gone, reopening"),
///         }
///         tokio::time::sleep(backoff).await;
///         backoff = (backoff * 2).min(Duration::from_secs(10));
///     }
/// });
/// while let Some(scan) = received.recv().await {
///     let parsed = kouan_agent::scan::parse(&scan.data, today);
/// }
/// # }
/// ```
pub async fn read_scans(
    path: &Path,
    decoder: &mut Decoder,
    scans: &mpsc::Sender<WedgeScan>,
) -> Result<(), DeviceError> {
    let open_error = |source| DeviceError::Open {
        path: path.to_owned(),
        source,
    };
    let mut device = RawDevice::open(path).map_err(open_error)?;
    device.grab().map_err(|source| DeviceError::Grab {
        path: path.to_owned(),
        source,
    })?;
    let caps = device
        .get_led_state()
        .map(|leds| leds.contains(LedCode::LED_CAPSL))
        .unwrap_or(false);
    let mut events = device.into_event_stream().map_err(open_error)?;

    let partial = decoder.reset();
    if partial > 0 {
        tracing::warn!(device = %path.display(), partial, "scan in progress discarded on reopen");
    }
    decoder.set_caps_lock(caps);
    tracing::info!(device = %path.display(), caps, "keyboard-wedge scanner grabbed");

    loop {
        // Wait for the next event, or for the scan in progress to time out;
        // next_event keeps what it has read in the stream, so dropping it
        // in the select loses nothing.
        let event = match decoder.deadline() {
            Some(deadline) => {
                let wait = deadline.saturating_sub(since_epoch(SystemTime::now()));
                tokio::select! {
                    event = events.next_event() => Some(event),
                    () = tokio::time::sleep(wait + Duration::from_millis(1)) => None,
                }
            }
            None => Some(events.next_event().await),
        };

        let caps = decoder.caps_lock();
        let (outcome, time) = match event {
            Some(Ok(event)) => (decoder.feed(event.into()), event.timestamp()),
            Some(Err(source)) => {
                let partial = decoder.reset();
                return Err(DeviceError::Lost {
                    path: path.to_owned(),
                    partial,
                    source,
                });
            }
            None => {
                let now = SystemTime::now();
                (decoder.expire(since_epoch(now)).map(Err), now)
            }
        };

        if decoder.caps_lock() != caps {
            let led = InputEvent::new(
                EventType::LED.0,
                LedCode::LED_CAPSL.0,
                i32::from(decoder.caps_lock()),
            );
            if let Err(error) = events.device_mut().send_events(&[led]) {
                tracing::debug!(device = %path.display(), %error, "cannot set the caps lock led");
            }
        }

        match outcome {
            Some(Ok(data)) => {
                let time = capture_time(time);
                if scans.send(WedgeScan { data, time }).await.is_err() {
                    return Ok(());
                }
            }
            Some(Err(error)) => {
                tracing::warn!(device = %path.display(), %error, "scan discarded");
            }
            None => {}
        }
    }
}

fn capture_time(time: SystemTime) -> CaptureTime {
    let ms = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    };
    CaptureTime {
        ms,
        synced: clock::clock_synchronised(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // Types `text` on a `us` or `de` keyboard the way a scanner does: one
    // press and release a character, Shift around capitals, 2 ms apart.
    struct Typist {
        time: Duration,
        events: Vec<RawEvent>,
    }

    impl Typist {
        fn new() -> Typist {
            Typist {
                time: Duration::from_secs(1_700_000_000),
                events: Vec::new(),
            }
        }

        fn event(&mut self, key: KeyCode, value: i32) -> &mut Typist {
            self.time += Duration::from_millis(2);
            self.events.push(RawEvent::key(self.time, key.0, value));
            self.events.push(RawEvent::report(self.time));
            self
        }

        fn tap(&mut self, key: KeyCode) -> &mut Typist {
            self.event(key, 1).event(key, 0)
        }

        fn chord(&mut self, modifier: KeyCode, keys: &[KeyCode]) -> &mut Typist {
            self.event(modifier, 1);
            for &key in keys {
                self.tap(key);
            }
            self.event(modifier, 0)
        }

        fn text(&mut self, layout: Layout, text: &str) -> &mut Typist {
            for c in text.chars() {
                let (key, keycap) = ROW_KEYS
                    .iter()
                    .flat_map(|keys| keys.iter())
                    .filter_map(|&key| Some((key, layout.keycap(key)?)))
                    .find(|(_, keycap)| keycap.base == Some(c) || keycap.shift == Some(c))
                    .unwrap();
                if keycap.base == Some(c) {
                    self.tap(key);
                } else {
                    self.chord(K::KEY_LEFTSHIFT, &[key]);
                }
            }
            self
        }

        fn pause(&mut self, pause: Duration) -> &mut Typist {
            self.time += pause;
            self
        }

        fn decode(&self, config: DecoderConfig) -> (Vec<Result<Vec<u8>, DecodeError>>, Counters) {
            let mut decoder = Decoder::new(config);
            let out = self
                .events
                .iter()
                .filter_map(|&e| decoder.feed(e))
                .collect();
            (out, decoder.counters())
        }
    }

    fn us() -> DecoderConfig {
        DecoderConfig::default()
    }

    fn de() -> DecoderConfig {
        DecoderConfig {
            layout: Layout::DE,
            ..DecoderConfig::default()
        }
    }

    #[test]
    fn shifted_text_round_trips_in_both_layouts() {
        for config in [us(), de()] {
            let text = "Ab-9/x:Yz_12";
            let (out, counters) = Typist::new()
                .text(config.layout, text)
                .tap(K::KEY_ENTER)
                .decode(config.clone());
            assert_eq!(
                out,
                [Ok(text.as_bytes().to_vec())],
                "{}",
                config.layout.name
            );
            assert_eq!(counters.scans, 1);
        }
    }

    #[test]
    fn de_scanner_read_as_us_gives_other_characters() {
        let (out, _) = Typist::new()
            .text(Layout::DE, "Zy-7")
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(out, [Ok(b"Yz/7".to_vec())]);
    }

    #[test]
    fn right_shift_counts_like_left_shift() {
        let (out, _) = Typist::new()
            .chord(K::KEY_RIGHTSHIFT, &[K::KEY_A, K::KEY_B])
            .tap(K::KEY_C)
            .tap(K::KEY_KPENTER)
            .decode(us());
        assert_eq!(out, [Ok(b"ABc".to_vec())]);
    }

    #[test]
    fn caps_lock_shifts_letters_only_and_shift_undoes_it() {
        let (out, _) = Typist::new()
            .tap(K::KEY_CAPSLOCK)
            .tap(K::KEY_A)
            .tap(K::KEY_1)
            .chord(K::KEY_LEFTSHIFT, &[K::KEY_B, K::KEY_2])
            .tap(K::KEY_CAPSLOCK)
            .tap(K::KEY_C)
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(out, [Ok(b"A1b@c".to_vec())]);
    }

    #[test]
    fn caps_lock_on_de_shifts_umlauts_but_not_sharp_s() {
        let (out, _) = Typist::new()
            .tap(K::KEY_CAPSLOCK)
            .tap(K::KEY_APOSTROPHE)
            .tap(K::KEY_MINUS)
            .tap(K::KEY_ENTER)
            .decode(de());
        assert_eq!(out, [Ok("Äß".as_bytes().to_vec())]);
    }

    #[test]
    fn alt_029_and_ctrl_bracket_both_give_gs() {
        let (out, _) = Typist::new()
            .text(Layout::US, "10A")
            .chord(K::KEY_LEFTALT, &[K::KEY_KP0, K::KEY_KP2, K::KEY_KP9])
            .text(Layout::US, "21B")
            .chord(K::KEY_LEFTCTRL, &[K::KEY_RIGHTBRACE])
            .text(Layout::US, "30")
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(out, [Ok(b"10A\x1d21B\x1d30".to_vec())]);
    }

    #[test]
    fn altgr_reaches_the_third_level_on_de() {
        let (out, _) = Typist::new()
            .chord(K::KEY_RIGHTALT, &[K::KEY_9])
            .text(Layout::DE, "C1")
            .chord(K::KEY_RIGHTALT, &[K::KEY_Q])
            .tap(K::KEY_ENTER)
            .decode(de());
        assert_eq!(out, [Ok(b"]C1@".to_vec())]);
    }

    #[test]
    fn right_alt_on_us_is_alt_and_alt_with_a_top_row_digit_is_refused() {
        let (out, counters) = Typist::new()
            .chord(K::KEY_RIGHTALT, &[K::KEY_9])
            .text(Layout::US, "C1")
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "alt+KEY_9 at position 0 gives no character in layout us"
        );
        assert_eq!((counters.unknown_keys, counters.discarded), (1, 1));
    }

    #[test]
    fn alt_code_above_ascii_is_refused() {
        let (out, _) = Typist::new()
            .text(Layout::US, "12")
            .chord(K::KEY_LEFTALT, &[K::KEY_KP1, K::KEY_KP3, K::KEY_KP0])
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(
            out,
            [Err(DecodeError::AltCode {
                code: 130,
                position: 2
            })]
        );
    }

    #[test]
    fn terminator_inside_an_alt_code_discards_the_scan() {
        let (out, _) = Typist::new()
            .text(Layout::US, "1")
            .event(K::KEY_LEFTALT, 1)
            .tap(K::KEY_KP2)
            .tap(K::KEY_ENTER)
            .event(K::KEY_LEFTALT, 0)
            .decode(us());
        assert_eq!(out, [Err(DecodeError::UnfinishedAltCode { position: 1 })]);
    }

    #[test]
    fn unknown_key_is_reported_at_the_terminator_and_the_next_scan_is_clean() {
        let (out, counters) = Typist::new()
            .text(Layout::US, "12")
            .tap(K::KEY_F5)
            .text(Layout::US, "3")
            .tap(K::KEY_ENTER)
            .text(Layout::US, "45")
            .tap(K::KEY_ENTER)
            .decode(us());
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "key KEY_F5 (code 63) at position 2 gives no character in layout us"
        );
        assert_eq!(out[1], Ok(b"45".to_vec()));
        assert_eq!(
            counters,
            Counters {
                scans: 1,
                discarded: 1,
                unknown_keys: 1,
                ..Counters::default()
            }
        );
    }

    #[test]
    fn dead_key_on_de_is_unknown() {
        let (out, _) = Typist::new()
            .tap(K::KEY_GRAVE)
            .tap(K::KEY_ENTER)
            .decode(de());
        assert!(matches!(
            out[..],
            [Err(DecodeError::UnknownKey {
                key: K::KEY_GRAVE,
                ..
            })]
        ));
    }

    #[test]
    fn ctrl_with_a_digit_is_an_unknown_combination() {
        let (out, _) = Typist::new()
            .chord(K::KEY_RIGHTCTRL, &[K::KEY_1])
            .tap(K::KEY_ENTER)
            .decode(us());
        assert!(matches!(
            out[..],
            [Err(DecodeError::UnknownCombination {
                modifier: Modifier::Ctrl,
                ..
            })]
        ));
    }

    #[test]
    fn too_long_scan_is_discarded_whole() {
        let config = DecoderConfig { max_len: 4, ..us() };
        let (out, _) = Typist::new()
            .text(Layout::US, "1234")
            .tap(K::KEY_ENTER)
            .text(Layout::US, "12345678")
            .tap(K::KEY_ENTER)
            .decode(config);
        assert_eq!(
            out,
            [Ok(b"1234".to_vec()), Err(DecodeError::TooLong { max: 4 })]
        );
    }

    #[test]
    fn pause_mid_scan_discards_the_partial_and_the_next_key_starts_anew() {
        let (out, counters) = Typist::new()
            .text(Layout::US, "590")
            .pause(Duration::from_secs(2))
            .text(Layout::US, "42")
            .tap(K::KEY_ENTER)
            .decode(us());
        assert!(
            matches!(out[0], Err(DecodeError::CutOff { len: 3, gap }) if gap > Duration::from_secs(2))
        );
        assert_eq!(out[1], Ok(b"42".to_vec()));
        assert_eq!((counters.cut_off, counters.discarded), (1, 1));
    }

    #[test]
    fn expire_discards_only_after_the_deadline() {
        let mut typist = Typist::new();
        typist.text(Layout::US, "59");
        let mut decoder = Decoder::new(us());
        for &event in &typist.events {
            assert_eq!(decoder.feed(event), None);
        }

        let deadline = decoder.deadline().unwrap();
        assert_eq!(deadline, typist.time + Duration::from_millis(500));
        assert_eq!(decoder.expire(deadline), None);
        assert_eq!(
            decoder.expire(deadline + Duration::from_millis(1)),
            Some(DecodeError::CutOff {
                len: 2,
                gap: Duration::from_millis(501)
            })
        );
        assert_eq!(decoder.deadline(), None);
        assert_eq!(decoder.expire(deadline + Duration::from_secs(9)), None);
    }

    #[test]
    fn autorepeat_types_nothing_and_keeps_the_scan_alive() {
        let mut typist = Typist::new();
        typist.text(Layout::US, "1").event(K::KEY_LEFTSHIFT, 1);
        // The kernel repeats a held key after 250 ms, then every 33 ms.
        for _ in 0..12 {
            typist
                .pause(Duration::from_millis(248))
                .event(K::KEY_LEFTSHIFT, 2);
        }
        typist
            .tap(K::KEY_A)
            .event(K::KEY_LEFTSHIFT, 0)
            .tap(K::KEY_ENTER);
        let (out, counters) = typist.decode(us());
        assert_eq!(out, [Ok(b"1A".to_vec())]);
        assert_eq!(counters.repeats, 12);
    }

    fn drop_events(typist: &mut Typist) {
        let time = typist.time;
        typist.events.push(RawEvent {
            time,
            kind: EV_SYN,
            code: SYN_DROPPED,
            value: 0,
        });
        // Half a report after the drop: ignored up to its SYN_REPORT.
        typist.events.push(RawEvent::key(time, K::KEY_3.0, 1));
        typist.events.push(RawEvent::report(time));
    }

    #[test]
    fn syn_dropped_discards_everything_up_to_the_next_terminator() {
        let mut typist = Typist::new();
        typist.text(Layout::US, "12").event(K::KEY_LEFTSHIFT, 1);
        drop_events(&mut typist);
        typist.tap(K::KEY_A).tap(K::KEY_ENTER);
        typist.text(Layout::US, "Ok").tap(K::KEY_ENTER);
        let (out, counters) = typist.decode(us());
        assert_eq!(
            out,
            [
                Err(DecodeError::EventsDropped { len: 2 }),
                Ok(b"Ok".to_vec())
            ]
        );
        assert_eq!(counters.drops, 1);
    }

    #[test]
    fn syn_dropped_between_scans_discards_the_next_one() {
        let mut typist = Typist::new();
        drop_events(&mut typist);
        typist.text(Layout::US, "7").tap(K::KEY_ENTER);
        let (out, _) = typist.decode(us());
        assert_eq!(out, [Err(DecodeError::EventsDropped { len: 0 })]);
    }

    #[test]
    fn syn_dropped_with_no_key_after_it_is_reported_at_the_timeout() {
        let mut typist = Typist::new();
        typist.text(Layout::US, "7");
        drop_events(&mut typist);
        let mut decoder = Decoder::new(us());
        for &event in &typist.events {
            assert_eq!(decoder.feed(event), None);
        }
        let later = typist.time + Duration::from_secs(1);
        assert_eq!(
            decoder.expire(later),
            Some(DecodeError::EventsDropped { len: 1 })
        );
        assert_eq!(decoder.counters().cut_off, 1);
    }

    #[test]
    fn tab_terminator_ends_scans_and_enter_types_cr() {
        let config = DecoderConfig {
            terminator: Terminator::Tab,
            ..us()
        };
        let (out, _) = Typist::new()
            .text(Layout::US, "1")
            .tap(K::KEY_ENTER)
            .text(Layout::US, "2")
            .tap(K::KEY_TAB)
            .decode(config);
        assert_eq!(out, [Ok(b"1\r2".to_vec())]);
    }

    #[test]
    fn lone_terminator_gives_no_scan() {
        let (out, counters) = Typist::new().tap(K::KEY_ENTER).decode(us());
        assert!(out.is_empty());
        assert_eq!(counters, Counters::default());
    }

    #[test]
    fn reset_discards_a_partial_scan_and_keeps_the_counters() {
        let mut typist = Typist::new();
        typist.text(Layout::US, "Q7");
        let mut decoder = Decoder::new(us());
        for &event in &typist.events {
            decoder.feed(event);
        }
        decoder.set_caps_lock(true);

        assert_eq!(decoder.reset(), 2);
        assert!(!decoder.caps_lock() && !decoder.in_scan());
        assert_eq!(decoder.counters().discarded, 1);
    }

    #[test]
    fn layout_rows_have_a_character_for_each_key_and_layouts_are_found_by_name() {
        for layout in Layout::ALL {
            for (keys, row) in ROW_KEYS.iter().zip(layout.rows) {
                assert_eq!(row.base.chars().count(), keys.len(), "{}", layout.name);
                assert_eq!(row.shift.chars().count(), keys.len(), "{}", layout.name);
                let altgr = row.altgr.chars().count();
                assert!(altgr == 0 || altgr == keys.len(), "{}", layout.name);
            }
            assert_eq!(Layout::by_name(layout.name), Some(layout));
        }
        assert_eq!(Layout::by_name("fr"), None);
        assert_eq!(Layout::US.keycap(K::KEY_102ND), None);
        assert_eq!(Layout::DE.keycap(K::KEY_KPDOT).unwrap().base, Some(','));
    }

    #[tokio::test]
    async fn opening_a_missing_device_names_its_path() {
        let (tx, _rx) = mpsc::channel(1);
        let mut decoder = Decoder::new(us());
        let path = Path::new("/dev/input/by-id/usb-none-event-kbd");
        let error = read_scans(path, &mut decoder, &tx).await.unwrap_err();
        assert!(matches!(error, DeviceError::Open { .. }));
        assert!(
            error
                .to_string()
                .starts_with("cannot open input device /dev/input/by-id/usb-none-event-kbd: ")
        );
    }

    #[tokio::test]
    async fn opening_a_file_that_is_no_input_device_fails() {
        let (tx, _rx) = mpsc::channel(1);
        let mut decoder = Decoder::new(us());
        let error = read_scans(Path::new("/dev/null"), &mut decoder, &tx)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot open input device /dev/null: "),
            "{error}"
        );
    }
}
