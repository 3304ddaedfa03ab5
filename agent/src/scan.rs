//! Barcode scans: AIM symbology identifiers and GS1 element strings.
//!
//! A scan of a sample or batch code is what ties a lab result to the goods it
//! was taken from, so a scan is either read exactly or rejected with a reason:
//! this module never guesses. It does no I/O; the `scanner` driver hands it
//! one scan without its line terminator and gets back a [`Scan`] or a
//! [`ScanError`] that names the AI and the byte position (0-based, counted
//! from the first byte of the scan as received, identifier included).
//!
//! A scan may start with an AIM symbology identifier ([`AimId`], `]` plus a
//! code letter and a modifier). `]C1`, `]e0`, `]d2` and `]Q3` say the data is
//! a GS1 element string; `]E0` and `]E4` carry an EAN-13 (or UPC-A) and an
//! EAN-8, read as a GTIN; any other identifier passes the data through as
//! [`Content::Plain`]. A scan without an identifier is classified by content:
//! a leading GS, a GTIN of 8, 12, 13 or 14 digits with a valid check digit, or
//! data that opens with a well-formed check-digit or date AI is GS1;
//! everything else is plain.
//!
//! An element string is a run of AI and value pairs, parsed with a table of
//! the AIs that matter at a monitoring point (`AIS`, data that is easy to
//! extend). GS (0x1D, the transmitted form of FNC1) ends every value whose
//! AI's first two digits are outside the GS1 "predefined length" table (00,
//! 01, 02, 03, 04, 11 to 19, 20, 31 to 36, 41), even when the AI's value has a
//! fixed length (422, 7003). Keyboard-wedge scanners often drop GS, and then a
//! variable-length value runs on into the next element; such a scan is
//! reported as [`ScanError::TooLong`], [`ScanError::MissingSeparator`] or
//! [`ScanError::SwallowedAi`], never split where a separator might have been.
//!
//! Dates are YYMMDD; day 00 means the last day of the month, and the century
//! is the one that puts the year within 49 years before and 50 after the
//! current year (GS1 General Specifications 7.12). The current date is a
//! parameter, so the result does not depend on the clock.
//!
//! ```
//! use kouan_agent::scan::{self, Content, Date};
//!
//! let today = Date::new(2026, 12, 3).unwrap();
//! let scan = scan::parse(b"]C10109521234543213172502001012A\x1d3103000123", today)?;
//! let Content::Gs1(gs1) = scan.content else { panic!("not GS1") };
//! assert_eq!(gs1.gtin(), Some("09521234543213"));
//! assert_eq!(gs1.expiry(), Some(Date::new(2025, 2, 28).unwrap()));
//! assert_eq!(gs1.batch(), Some("12A"));
//! assert_eq!(gs1.net_weight().unwrap().to_string(), "0.123 kg");
//! assert_eq!(gs1.encode(), b"0109521234543213172502001012A\x1d3103000123");
//!
//! let err = scan::parse(b"]C10109521234543214", today).unwrap_err();
//! assert_eq!(err.to_string(), "AI 01: check digit at position 18 is 4, expected 3");
//! # Ok::<(), scan::ScanError>(())
//! ```
//!
//! Known limits: an AI outside the table is an error
//! ([`ScanError::UnknownAi`]), because without its length the rest of the
//! scan cannot be split; add the AI to `AIS` to read it. A lost GS is only
//! caught when the run-on value grows too long or ends in a self-checking
//! element (a check digit or a date): `10ABC` then `21X7` without GS reads
//! as batch `ABC21X7`, so keyboard-wedge scanners must be set up to send GS.

use std::fmt;

/// The group separator (ASCII 29): how scanners transmit FNC1 between
/// elements.
pub const GS: u8 = 0x1d;

/// An AIM symbology identifier: `]`, a code letter, a modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AimId {
    /// The symbology letter (`C` Code 128, `d` Data Matrix, `Q` QR, ...).
    pub code: u8,
    /// The modifier: options of the symbology, such as FNC1 in first place.
    pub modifier: u8,
}

impl AimId {
    /// Splits a scan into its identifier, if it has one, and its data.
    pub fn split(scan: &[u8]) -> (Option<AimId>, &[u8]) {
        match scan {
            [b']', code, modifier, data @ ..]
                if code.is_ascii_alphabetic() && modifier.is_ascii_alphanumeric() =>
            {
                let aim = AimId {
                    code: *code,
                    modifier: *modifier,
                };
                (Some(aim), data)
            }
            _ => (None, scan),
        }
    }

    /// What the identifier says about the data.
    pub fn symbology(self) -> Symbology {
        match (self.code, self.modifier) {
            (b'C', b'1') => Symbology::Gs1Code128,
            (b'e', b'0') => Symbology::Gs1DataBar,
            (b'd', b'2') => Symbology::Gs1DataMatrix,
            (b'Q', b'3') => Symbology::Gs1Qr,
            (b'E', b'0') => Symbology::Ean13,
            (b'E', b'4') => Symbology::Ean8,
            _ => Symbology::Other,
        }
    }
}

impl fmt::Display for AimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "]{}{}", char::from(self.code), char::from(self.modifier))
    }
}

/// The symbologies this module reads differently from plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symbology {
    /// `]C1`: GS1-128, an element string.
    Gs1Code128,
    /// `]e0`: GS1 DataBar, an element string.
    Gs1DataBar,
    /// `]d2`: GS1 DataMatrix, an element string.
    Gs1DataMatrix,
    /// `]Q3`: GS1 QR Code, an element string.
    Gs1Qr,
    /// `]E0`: EAN-13 or UPC-A, a GTIN.
    Ean13,
    /// `]E4`: EAN-8, a GTIN.
    Ean8,
    /// Any other identifier: plain data.
    Other,
}

impl Symbology {
    /// Whether the data is a GS1 element string.
    pub fn is_element_string(self) -> bool {
        matches!(
            self,
            Symbology::Gs1Code128
                | Symbology::Gs1DataBar
                | Symbology::Gs1DataMatrix
                | Symbology::Gs1Qr
        )
    }
}

/// A calendar date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: u16,
    month: u8,
    day: u8,
}

impl Date {
    // A stand-in for "today" where no date is read.
    const MIN: Date = Date {
        year: 2000,
        month: 1,
        day: 1,
    };

    /// The date, if it exists.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let valid = (1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day);
        valid.then_some(Date { year, month, day })
    }

    /// The year.
    pub fn year(self) -> u16 {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(self) -> u8 {
        self.day
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A decimal number as GS1 writes it: digits and an implied decimal point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// All digits as one integer.
    pub digits: u64,
    /// How many of them follow the decimal point.
    pub scale: u8,
}

impl Decimal {
    /// The nearest `f64`.
    pub fn to_f64(self) -> f64 {
        self.digits as f64 / 10f64.powi(i32::from(self.scale))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = usize::from(self.scale);
        let digits = format!("{:0width$}", self.digits, width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        if frac.is_empty() {
            write!(f, "{int}")
        } else {
            write!(f, "{int}.{frac}")
        }
    }
}

/// A trade measure (AIs 310n to 369n): what it is, how much, in which unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Measure {
    /// What is measured: `net weight`, `gross weight`, `length`, ...
    pub what: &'static str,
    /// The amount.
    pub value: Decimal,
    /// The unit: `kg`, `lb`, `m`, `l`, `m3`, ...
    pub unit: &'static str,
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.value, self.unit)
    }
}

/// The typed value of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A GTIN, 14 digits with a valid check digit (AIs 01, 02).
    Gtin(String),
    /// A serial shipping container code, 18 digits (AI 00).
    Sscc(String),
    /// A global location number, 13 digits (AIs 410 to 417).
    Gln(String),
    /// Text from GS1 character set 82 (batch, serial, order number, ...).
    Text(String),
    /// A date (AIs 11 to 17).
    Date(Date),
    /// A date and time to the minute (AI 7003).
    DateTime {
        /// The date.
        date: Date,
        /// Hour, 0 to 23.
        hour: u8,
        /// Minute, 0 to 59.
        minute: u8,
    },
    /// A count (AIs 30, 37).
    Count(u64),
    /// A trade measure (AIs 310n to 369n).
    Measure(Measure),
    /// An amount payable or a price (AIs 390n to 393n), with an ISO 4217
    /// numeric currency where the AI carries one.
    Amount {
        /// The amount.
        amount: Decimal,
        /// ISO 4217 numeric currency code (391n, 393n).
        currency: Option<u16>,
    },
    /// An ISO 3166 numeric country code (AIs 422, 424, 426).
    Country(u16),
    /// One to five ISO 3166 numeric country codes (AIs 423, 425).
    Countries(Vec<u16>),
    /// A postal code within a country (AI 421).
    Postal {
        /// ISO 3166 numeric country code.
        country: u16,
        /// The postal code.
        code: String,
    },
}

/// One AI and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The AI as scanned, decimal digit included (`3103`).
    pub ai: String,
    /// The AI's data title in the GS1 table (`BATCH/LOT`).
    pub title: &'static str,
    /// The value as scanned.
    pub raw: String,
    /// The value, typed.
    pub value: Value,
}

/// A parsed GS1 element string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElementString {
    /// The elements in scan order.
    pub elements: Vec<Element>,
}

impl ElementString {
    /// The first element with this AI.
    pub fn get(&self, ai: &str) -> Option<&Element> {
        self.elements.iter().find(|e| e.ai == ai)
    }

    fn text(&self, ai: &str) -> Option<&str> {
        match &self.get(ai)?.value {
            Value::Text(text) | Value::Gtin(text) | Value::Sscc(text) => Some(text),
            _ => None,
        }
    }

    fn date(&self, ai: &str) -> Option<Date> {
        match self.get(ai)?.value {
            Value::Date(date) => Some(date),
            _ => None,
        }
    }

    /// The GTIN of the trade item (AI 01).
    pub fn gtin(&self) -> Option<&str> {
        self.text("01")
    }

    /// The SSCC of the logistic unit (AI 00).
    pub fn sscc(&self) -> Option<&str> {
        self.text("00")
    }

    /// The batch or lot number (AI 10).
    pub fn batch(&self) -> Option<&str> {
        self.text("10")
    }

    /// The serial number (AI 21).
    pub fn serial(&self) -> Option<&str> {
        self.text("21")
    }

    /// The expiry date (AI 17).
    pub fn expiry(&self) -> Option<Date> {
        self.date("17")
    }

    /// The best-before date (AI 15).
    pub fn best_before(&self) -> Option<Date> {
        self.date("15")
    }

    /// The production date (AI 11).
    pub fn production_date(&self) -> Option<Date> {
        self.date("11")
    }

    /// The country of origin (AI 422), ISO 3166 numeric.
    pub fn origin(&self) -> Option<u16> {
        match self.get("422")?.value {
            Value::Country(country) => Some(country),
            _ => None,
        }
    }

    /// The first net weight (AIs 310n, 320n, 356n).
    pub fn net_weight(&self) -> Option<Measure> {
        self.elements.iter().find_map(|e| match e.value {
            Value::Measure(m) if m.what == "net weight" => Some(m),
            _ => None,
        })
    }

    /// The element string as a scanner transmits it: GS after every value
    /// whose AI is outside the predefined-length table, except the last.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, element) in self.elements.iter().enumerate() {
            out.extend_from_slice(element.ai.as_bytes());
            out.extend_from_slice(element.raw.as_bytes());
            if i + 1 < self.elements.len() && predefined_length(&element.ai).is_none() {
                out.push(GS);
            }
        }
        out
    }
}

/// What a scan holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A GS1 element string; an EAN/UPC scan is one element, AI 01.
    Gs1(ElementString),
    /// Anything else, byte for byte.
    Plain(Vec<u8>),
}

/// One parsed scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The AIM symbology identifier, if the scanner sent one.
    pub aim: Option<AimId>,
    /// The data.
    pub content: Content,
}

/// Why a scan was rejected. Positions are 0-based byte offsets in the scan
/// as received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The scan has no bytes.
    #[error("empty scan")]
    Empty,
    /// A GS1 identifier with no element string after it.
    #[error("no element string at position {position}")]
    NoElements {
        /// Where the element string should start.
        position: usize,
    },
    /// The data at an AI's place starts no AI in the table.
    #[error("no known AI at position {position} (data starts {found:?})")]
    UnknownAi {
        /// Where the AI should start.
        position: usize,
        /// The first few bytes there.
        found: String,
    },
    /// The scan ends inside a fixed-length value.
    #[error(
        "AI {ai} value at position {position} needs {expected} characters, only {found} remain"
    )]
    Truncated {
        /// The AI.
        ai: String,
        /// Where its value starts.
        position: usize,
        /// Its fixed length.
        expected: usize,
        /// What the scan still holds.
        found: usize,
    },
    /// A fixed-length value outside the predefined-length table is followed
    /// by data instead of GS.
    #[error(
        "AI {ai} is not of predefined length, but position {position} after its value holds no GS separator: the separator was probably lost"
    )]
    MissingSeparator {
        /// The AI.
        ai: String,
        /// Where GS should be.
        position: usize,
    },
    /// A variable-length value runs past its maximum.
    #[error(
        "AI {ai} value at position {position} is {len} characters, longer than its maximum {max}: the GS separator after it was probably lost"
    )]
    TooLong {
        /// The AI.
        ai: String,
        /// Where its value starts.
        position: usize,
        /// Its length up to the next GS or the end.
        len: usize,
        /// Its maximum length.
        max: usize,
    },
    /// A variable-length value is shorter than its minimum (often empty,
    /// between two GS).
    #[error(
        "AI {ai} value at position {position} is {len} characters, shorter than its minimum {min}"
    )]
    TooShort {
        /// The AI.
        ai: String,
        /// Where its value starts.
        position: usize,
        /// Its length.
        len: usize,
        /// Its minimum length.
        min: usize,
    },
    /// A variable-length value at the end of a scan without any GS ends in
    /// what reads as a complete, valid element string.
    #[error(
        "AI {ai} value swallows what reads as AI {next} at position {position}: the GS separator before it was probably lost"
    )]
    SwallowedAi {
        /// The AI whose value runs on.
        ai: String,
        /// The AI it seems to swallow.
        next: String,
        /// Where that AI starts.
        position: usize,
    },
    /// A GTIN, SSCC, GLN or GRAI with a wrong check digit.
    #[error("AI {ai}: check digit at position {position} is {found}, expected {expected}")]
    CheckDigit {
        /// The AI (01 for an EAN/UPC scan).
        ai: String,
        /// Where the check digit is.
        position: usize,
        /// The scanned check digit.
        found: u8,
        /// The computed one.
        expected: u8,
    },
    /// A numeric value holds something else.
    #[error("AI {ai}: byte at position {position} is not a digit")]
    NotDigit {
        /// The AI (01 for an EAN/UPC scan).
        ai: String,
        /// Where the byte is.
        position: usize,
    },
    /// A text value holds a byte outside GS1 character set 82.
    #[error("AI {ai}: byte 0x{byte:02x} at position {position} is not in GS1 character set 82")]
    BadCharacter {
        /// The AI.
        ai: String,
        /// Where the byte is.
        position: usize,
        /// The byte.
        byte: u8,
    },
    /// A YYMMDD value that is no date.
    #[error("AI {ai}: {value:?} at position {position} is not a valid date (YYMMDD)")]
    BadDate {
        /// The AI.
        ai: String,
        /// Where the value starts.
        position: usize,
        /// The value.
        value: String,
    },
    /// A value whose structure is wrong in another way.
    #[error("AI {ai}: value at position {position} {reason}")]
    Malformed {
        /// The AI.
        ai: String,
        /// Where the value starts.
        position: usize,
        /// What is wrong, as a predicate (`has an hour above 23`).
        reason: &'static str,
    },
    /// An `]E0` or `]E4` scan whose data has the wrong length.
    #[error("EAN/UPC data at position {position} is {len} bytes, expected {expected} digits")]
    GtinLength {
        /// Where the data starts.
        position: usize,
        /// Its length.
        len: usize,
        /// The lengths the symbology allows.
        expected: &'static str,
    },
}

/// Parses one scan (without its line terminator). `today` decides the century
/// of two-digit years.
pub fn parse(scan: &[u8], today: Date) -> Result<Scan, ScanError> {
    if scan.is_empty() {
        return Err(ScanError::Empty);
    }

    let (aim, data) = AimId::split(scan);
    let base = scan.len() - data.len();
    let content = match aim.map(AimId::symbology) {
        Some(s) if s.is_element_string() => Content::Gs1(elements(data, base, today, true)?),
        Some(Symbology::Ean13) => Content::Gs1(gtin(data, base, &[12, 13], "12 or 13")?),
        Some(Symbology::Ean8) => Content::Gs1(gtin(data, base, &[8], "8")?),
        Some(_) => Content::Plain(data.to_vec()),
        None => classify(data, today)?,
    };
    Ok(Scan { aim, content })
}

/// Parses a GS1 element string on its own (no identifier; a leading GS, the
/// FNC1 in first position, is allowed).
pub fn parse_element_string(data: &[u8], today: Date) -> Result<ElementString, ScanError> {
    elements(data, 0, today, true)
}

/// The GS1 mod-10 check digit of ASCII digits (the check digit itself not
/// included): weights 3, 1, 3, ... from the right. `None` if a byte is no
/// digit.
pub fn check_digit(digits: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        let weight = if i % 2 == 0 { 3 } else { 1 };
        sum += weight * u32::from(b - b'0');
    }
    Some(((10 - sum % 10) % 10) as u8)
}

// A scan without an identifier is plain unless its content shows it is GS1:
// a lab label such as "LAB-2026-01" must pass through, not fail as a broken
// element string.
fn classify(data: &[u8], today: Date) -> Result<Content, ScanError> {
    if data.first() == Some(&GS) {
        return Ok(Content::Gs1(elements(data, 0, today, true)?));
    }

    let all_digits = data.iter().all(u8::is_ascii_digit);
    if all_digits && matches!(data.len(), 8 | 12 | 13 | 14) && valid_check_digit(data) {
        return Ok(Content::Gs1(gtin(
            data,
            0,
            &[8, 12, 13, 14],
            "8, 12, 13 or 14",
        )?));
    }

    if opens_with_gs1(data, today) {
        return Ok(Content::Gs1(elements(data, 0, today, true)?));
    }
    Ok(Content::Plain(data.to_vec()))
}

// Data that opens with an AI whose value is self-checking (check digit or
// date) and well-formed, or any known AI in data that carries GS: that is no
// accident, so errors further on are reported rather than passed through.
fn opens_with_gs1(data: &[u8], today: Date) -> bool {
    let Some((spec, ai_len)) = lookup(data) else {
        return false;
    };
    if data.contains(&GS) {
        return true;
    }
    let Len::Fixed(n) = spec.len else {
        return false;
    };
    let Some(value) = data.get(ai_len..ai_len + n) else {
        return false;
    };
    let ai = ascii(&data[..ai_len]);
    spec.kind.self_checking() && interpret(spec, &ai, value, 0, today).is_ok()
}

fn valid_check_digit(digits: &[u8]) -> bool {
    match digits.split_last() {
        Some((&last, body)) => check_digit(body) == Some(last.wrapping_sub(b'0')),
        None => false,
    }
}

// An EAN/UPC scan as one AI 01 element, zero-padded to 14 digits.
fn gtin(
    data: &[u8],
    base: usize,
    allowed: &[usize],
    expected: &'static str,
) -> Result<ElementString, ScanError> {
    if !allowed.contains(&data.len()) {
        return Err(ScanError::GtinLength {
            position: base,
            len: data.len(),
            expected,
        });
    }

    let pad = 14 - data.len();
    let mut padded = vec![b'0'; pad];
    padded.extend_from_slice(data);
    let value =
        interpret(GTIN, "01", &padded, base, Date::MIN).map_err(|e| unpad_position(e, pad))?;
    Ok(ElementString {
        elements: vec![Element {
            ai: "01".into(),
            title: GTIN.title,
            raw: ascii(&padded),
            value,
        }],
    })
}

// Positions inside the zero-padded GTIN point past the padding, which the
// scan never held.
fn unpad_position(err: ScanError, pad: usize) -> ScanError {
    let fix = |p: usize| p.saturating_sub(pad);
    match err {
        ScanError::CheckDigit {
            ai,
            position,
            found,
            expected,
        } => ScanError::CheckDigit {
            ai,
            position: fix(position),
            found,
            expected,
        },
        ScanError::NotDigit { ai, position } => ScanError::NotDigit {
            ai,
            position: fix(position),
        },
        other => other,
    }
}

// The element string parser. `base` is the offset of `data` in the scan, for
// error positions; `detect_swallow` is off when checking whether a value's
// tail reads as elements, so that check does not recurse.
fn elements(
    data: &[u8],
    base: usize,
    today: Date,
    detect_swallow: bool,
) -> Result<ElementString, ScanError> {
    let has_gs = data.contains(&GS);
    let mut pos = usize::from(data.first() == Some(&GS));
    if pos >= data.len() {
        return Err(ScanError::NoElements {
            position: base + pos,
        });
    }

    let mut out = Vec::new();
    while pos < data.len() {
        let rest = &data[pos..];
        let Some((spec, ai_len)) = lookup(rest) else {
            let found = String::from_utf8_lossy(&rest[..rest.len().min(4)]).into_owned();
            return Err(ScanError::UnknownAi {
                position: base + pos,
                found,
            });
        };
        let ai = ascii(&rest[..ai_len]);
        let start = pos + ai_len;

        let (end, next) = match spec.len {
            Len::Fixed(n) => {
                let end = start + n;
                if end > data.len() {
                    let found = data.len() - start;
                    return Err(ScanError::Truncated {
                        ai,
                        position: base + start,
                        expected: n,
                        found,
                    });
                }
                // Inside the predefined-length table the next AI may follow
                // at once; outside it GS must, even after a fixed length.
                match data.get(end) {
                    None => (end, end),
                    Some(&GS) => (end, end + 1),
                    Some(_) if predefined_length(&ai).is_some() => (end, end),
                    Some(_) => {
                        return Err(ScanError::MissingSeparator {
                            ai,
                            position: base + end,
                        });
                    }
                }
            }
            Len::Var { min, max } => {
                let end = data[start..]
                    .iter()
                    .position(|&b| b == GS)
                    .map_or(data.len(), |i| start + i);
                let len = end - start;
                if len > max {
                    return Err(ScanError::TooLong {
                        ai,
                        position: base + start,
                        len,
                        max,
                    });
                }
                if len < min {
                    return Err(ScanError::TooShort {
                        ai,
                        position: base + start,
                        len,
                        min,
                    });
                }
                (end, if end < data.len() { end + 1 } else { end })
            }
        };
        let value = &data[start..end];

        // A scan with no GS at all whose last value ends in a complete,
        // self-checking element string most likely lost its separator. The
        // same bytes could be a legitimate value, but the two readings
        // differ in what the goods are, so neither is picked.
        let runs_to_end = matches!(spec.len, Len::Var { .. }) && end == data.len();
        if detect_swallow
            && !has_gs
            && runs_to_end
            && let Some((k, next_ai)) = swallowed(value, today)
        {
            let position = base + start + k;
            return Err(ScanError::SwallowedAi {
                ai,
                next: next_ai,
                position,
            });
        }

        let typed = interpret(spec, &ai, value, base + start, today)?;
        out.push(Element {
            ai,
            title: spec.title,
            raw: ascii(value),
            value: typed,
        });
        pos = next;
    }
    Ok(ElementString { elements: out })
}

// Where in `value` a self-checking predefined-length AI starts whose value
// and everything after it parse as elements.
fn swallowed(value: &[u8], today: Date) -> Option<(usize, String)> {
    (1..value.len()).find_map(|k| {
        let tail = &value[k..];
        let (spec, ai_len) = lookup(tail)?;
        if !spec.kind.self_checking() {
            return None;
        }
        elements(tail, 0, today, false).ok()?;
        Some((k, ascii(&tail[..ai_len])))
    })
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

// GS1 character set 82 (General Specifications figure 7.11-1).
fn is_cset82(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!\"%&'()*+,-./:;<=>?_".contains(&b)
}

fn interpret(
    spec: &AiSpec,
    ai: &str,
    value: &[u8],
    position: usize,
    today: Date,
) -> Result<Value, ScanError> {
    let numeric = matches!(spec.charset, Charset::Numeric);
    for (i, &b) in value.iter().enumerate() {
        if numeric && !b.is_ascii_digit() {
            return Err(ScanError::NotDigit {
                ai: ai.into(),
                position: position + i,
            });
        }
        if !is_cset82(b) {
            return Err(ScanError::BadCharacter {
                ai: ai.into(),
                position: position + i,
                byte: b,
            });
        }
    }
    let malformed = |reason| ScanError::Malformed {
        ai: ai.into(),
        position,
        reason,
    };
    // The digit after a three-digit prefix: decimals of a measure or amount.
    let scale = ai.as_bytes().get(3).map_or(0, |d| d.wrapping_sub(b'0'));

    Ok(match spec.kind {
        Kind::Gtin | Kind::Sscc | Kind::Gln => {
            verify_check_digit(ai, value, position)?;
            let text = ascii(value);
            match spec.kind {
                Kind::Gtin => Value::Gtin(text),
                Kind::Sscc => Value::Sscc(text),
                _ => Value::Gln(text),
            }
        }
        Kind::Grai => {
            // A 14-digit asset type (leading zero, GTIN-13 style check
            // digit) and an optional serial.
            if let Some(i) = value[..14].iter().position(|b| !b.is_ascii_digit()) {
                return Err(ScanError::NotDigit {
                    ai: ai.into(),
                    position: position + i,
                });
            }
            verify_check_digit(ai, &value[..14], position)?;
            Value::Text(ascii(value))
        }
        Kind::Date => Value::Date(date(ai, value, position, today, true)?),
        Kind::DateTime => {
            let date = date(ai, &value[..6], position, today, false)?;
            let (hour, minute) = (number(&value[6..8]) as u8, number(&value[8..10]) as u8);
            if hour > 23 {
                return Err(malformed("has an hour above 23"));
            }
            if minute > 59 {
                return Err(malformed("has a minute above 59"));
            }
            Value::DateTime { date, hour, minute }
        }
        Kind::Text => Value::Text(ascii(value)),
        Kind::Count => Value::Count(number(value)),
        Kind::Measure(what, unit) => Value::Measure(Measure {
            what,
            value: Decimal {
                digits: number(value),
                scale,
            },
            unit,
        }),
        Kind::Amount => Value::Amount {
            amount: Decimal {
                digits: number(value),
                scale,
            },
            currency: None,
        },
        Kind::AmountIso => Value::Amount {
            amount: Decimal {
                digits: number(&value[3..]),
                scale,
            },
            currency: Some(number(&value[..3]) as u16),
        },
        Kind::Country => Value::Country(number(value) as u16),
        Kind::Countries => {
            if !value.len().is_multiple_of(3) {
                return Err(malformed(
                    "is not a whole number of three-digit country codes",
                ));
            }
            Value::Countries(value.chunks(3).map(|c| number(c) as u16).collect())
        }
        Kind::Postal => {
            if let Some(i) = value[..3].iter().position(|b| !b.is_ascii_digit()) {
                return Err(ScanError::NotDigit {
                    ai: ai.into(),
                    position: position + i,
                });
            }
            Value::Postal {
                country: number(&value[..3]) as u16,
                code: ascii(&value[3..]),
            }
        }
    })
}

fn verify_check_digit(ai: &str, digits: &[u8], position: usize) -> Result<(), ScanError> {
    let Some((&last, body)) = digits.split_last() else {
        return Ok(());
    };
    let expected = check_digit(body).unwrap_or(0);
    let found = last - b'0';
    if found == expected {
        return Ok(());
    }
    let position = position + body.len();
    Err(ScanError::CheckDigit {
        ai: ai.into(),
        position,
        found,
        expected,
    })
}

// YYMMDD. Day 00 stands for the last day of the month where the AI allows it
// (11 to 17); the century keeps the year within -49..+50 of today's.
fn date(
    ai: &str,
    v: &[u8],
    position: usize,
    today: Date,
    day_zero: bool,
) -> Result<Date, ScanError> {
    let yy = number(&v[..2]) as i32;
    let month = number(&v[2..4]) as u8;
    let day = number(&v[4..6]) as u8;
    let bad = || ScanError::BadDate {
        ai: ai.into(),
        position,
        value: ascii(v),
    };

    let current = i32::from(today.year);
    let mut year = current - current.rem_euclid(100) + yy;
    if year > current + 50 {
        year -= 100;
    } else if year < current - 49 {
        year += 100;
    }
    let year = u16::try_from(year).map_err(|_| bad())?;
    if !(1..=12).contains(&month) {
        return Err(bad());
    }
    let day = if day == 0 && day_zero {
        days_in_month(year, month)
    } else {
        day
    };
    Date::new(year, month, day).ok_or_else(bad)
}

// ---- The AI table -------------------------------------------------------

/// How long an AI's value is.
#[derive(Debug, Clone, Copy)]
enum Len {
    Fixed(usize),
    Var { min: usize, max: usize },
}

#[derive(Debug, Clone, Copy)]
enum Charset {
    Numeric,
    Cset82,
}

/// How a value is typed and checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gtin,
    Sscc,
    Gln,
    Grai,
    Date,
    DateTime,
    Text,
    Count,
    Measure(&'static str, &'static str),
    Amount,
    AmountIso,
    Country,
    Countries,
    Postal,
}

impl Kind {
    // Values that a random run of characters rarely satisfies: evidence that
    // data really is an element string.
    fn self_checking(self) -> bool {
        matches!(self, Kind::Gtin | Kind::Sscc | Kind::Gln | Kind::Date)
    }
}

/// One row of the AI table. `decimals` marks a four-digit AI family (310n):
/// `ai` is its three-digit prefix and the fourth digit, at most `decimals`,
/// is the number of decimal places.
#[derive(Debug, Clone, Copy)]
struct AiSpec {
    ai: &'static str,
    decimals: Option<u8>,
    title: &'static str,
    len: Len,
    charset: Charset,
    kind: Kind,
}

const fn num(ai: &'static str, title: &'static str, n: usize, kind: Kind) -> AiSpec {
    AiSpec {
        ai,
        decimals: None,
        title,
        len: Len::Fixed(n),
        charset: Charset::Numeric,
        kind,
    }
}

const fn var(ai: &'static str, title: &'static str, min: usize, max: usize, kind: Kind) -> AiSpec {
    let charset = match kind {
        Kind::Count | Kind::Countries => Charset::Numeric,
        _ => Charset::Cset82,
    };
    AiSpec {
        ai,
        decimals: None,
        title,
        len: Len::Var { min, max },
        charset,
        kind,
    }
}

const fn text(ai: &'static str, title: &'static str, max: usize) -> AiSpec {
    var(ai, title, 1, max, Kind::Text)
}

const fn measure(
    ai: &'static str,
    title: &'static str,
    what: &'static str,
    unit: &'static str,
) -> AiSpec {
    AiSpec {
        ai,
        decimals: Some(5),
        title,
        len: Len::Fixed(6),
        charset: Charset::Numeric,
        kind: Kind::Measure(what, unit),
    }
}

const fn amount(ai: &'static str, title: &'static str, iso: bool) -> AiSpec {
    let (len, kind) = if iso {
        (Len::Var { min: 4, max: 18 }, Kind::AmountIso)
    } else {
        (Len::Var { min: 1, max: 15 }, Kind::Amount)
    };
    AiSpec {
        ai,
        decimals: Some(9),
        title,
        len,
        charset: Charset::Numeric,
        kind,
    }
}

/// The AIs this module reads (GS1 General Specifications, section 3). No
/// entry is a prefix of another, which is what lets a scan be split without
/// lookahead; a unit test holds the table to that and to the
/// predefined-length table.
const AIS: &[AiSpec] = &[
    num("00", "SSCC", 18, Kind::Sscc),
    num("01", "GTIN", 14, Kind::Gtin),
    num("02", "CONTENT", 14, Kind::Gtin),
    text("10", "BATCH/LOT", 20),
    num("11", "PROD DATE", 6, Kind::Date),
    num("12", "DUE DATE", 6, Kind::Date),
    num("13", "PACK DATE", 6, Kind::Date),
    num("15", "BEST BEFORE or BEST BY", 6, Kind::Date),
    num("16", "SELL BY", 6, Kind::Date),
    num("17", "USE BY OR EXPIRY", 6, Kind::Date),
    num("20", "VARIANT", 2, Kind::Text),
    text("21", "SERIAL", 20),
    text("22", "CPV", 20),
    text("240", "ADDITIONAL ID", 30),
    text("241", "CUST. PART No.", 30),
    text("250", "SECONDARY SERIAL", 30),
    var("30", "VAR. COUNT", 1, 8, Kind::Count),
    var("37", "COUNT", 1, 8, Kind::Count),
    measure("310", "NET WEIGHT (kg)", "net weight", "kg"),
    measure("311", "LENGTH (m)", "length", "m"),
    measure("312", "WIDTH (m)", "width", "m"),
    measure("313", "HEIGHT (m)", "height", "m"),
    measure("314", "AREA (m2)", "area", "m2"),
    measure("315", "NET VOLUME (l)", "net volume", "l"),
    measure("316", "NET VOLUME (m3)", "net volume", "m3"),
    measure("320", "NET WEIGHT (lb)", "net weight", "lb"),
    measure("321", "LENGTH (in)", "length", "in"),
    measure("322", "LENGTH (ft)", "length", "ft"),
    measure("323", "LENGTH (yd)", "length", "yd"),
    measure("324", "WIDTH (in)", "width", "in"),
    measure("325", "WIDTH (ft)", "width", "ft"),
    measure("326", "WIDTH (yd)", "width", "yd"),
    measure("327", "HEIGHT (in)", "height", "in"),
    measure("328", "HEIGHT (ft)", "height", "ft"),
    measure("329", "HEIGHT (yd)", "height", "yd"),
    measure("330", "GROSS WEIGHT (kg)", "gross weight", "kg"),
    measure("331", "LENGTH (m), log", "logistic length", "m"),
    measure("332", "WIDTH (m), log", "logistic width", "m"),
    measure("333", "HEIGHT (m), log", "logistic height", "m"),
    measure("334", "AREA (m2), log", "logistic area", "m2"),
    measure("335", "VOLUME (l), log", "logistic volume", "l"),
    measure("336", "VOLUME (m3), log", "logistic volume", "m3"),
    measure("337", "KG PER m2", "mass per area", "kg/m2"),
    measure("340", "GROSS WEIGHT (lb)", "gross weight", "lb"),
    measure("341", "LENGTH (in), log", "logistic length", "in"),
    measure("342", "LENGTH (ft), log", "logistic length", "ft"),
    measure("343", "LENGTH (yd), log", "logistic length", "yd"),
    measure("344", "WIDTH (in), log", "logistic width", "in"),
    measure("345", "WIDTH (ft), log", "logistic width", "ft"),
    measure("346", "WIDTH (yd), log", "logistic width", "yd"),
    measure("347", "HEIGHT (in), log", "logistic height", "in"),
    measure("348", "HEIGHT (ft), log", "logistic height", "ft"),
    measure("349", "HEIGHT (yd), log", "logistic height", "yd"),
    measure("350", "AREA (in2)", "area", "in2"),
    measure("351", "AREA (ft2)", "area", "ft2"),
    measure("352", "AREA (yd2)", "area", "yd2"),
    measure("353", "AREA (in2), log", "logistic area", "in2"),
    measure("354", "AREA (ft2), log", "logistic area", "ft2"),
    measure("355", "AREA (yd2), log", "logistic area", "yd2"),
    measure("356", "NET WEIGHT (t oz)", "net weight", "oz t"),
    measure("357", "NET VOLUME (oz)", "net volume", "oz"),
    measure("360", "NET VOLUME (qt)", "net volume", "qt"),
    measure("361", "NET VOLUME (gal.)", "net volume", "gal"),
    measure("362", "VOLUME (qt), log", "logistic volume", "qt"),
    measure("363", "VOLUME (gal.), log", "logistic volume", "gal"),
    measure("364", "VOLUME (in3)", "net volume", "in3"),
    measure("365", "VOLUME (ft3)", "net volume", "ft3"),
    measure("366", "VOLUME (yd3)", "net volume", "yd3"),
    measure("367", "VOLUME (in3), log", "logistic volume", "in3"),
    measure("368", "VOLUME (ft3), log", "logistic volume", "ft3"),
    measure("369", "VOLUME (yd3), log", "logistic volume", "yd3"),
    amount("390", "AMOUNT", false),
    amount("391", "AMOUNT", true),
    amount("392", "PRICE", false),
    amount("393", "PRICE", true),
    text("400", "ORDER NUMBER", 30),
    num("410", "SHIP TO LOC", 13, Kind::Gln),
    num("411", "BILL TO", 13, Kind::Gln),
    num("412", "PURCHASE FROM", 13, Kind::Gln),
    num("413", "SHIP FOR LOC", 13, Kind::Gln),
    num("414", "LOC No.", 13, Kind::Gln),
    num("415", "PAY TO", 13, Kind::Gln),
    num("416", "PROD/SERV LOC", 13, Kind::Gln),
    num("417", "PARTY", 13, Kind::Gln),
    text("420", "SHIP TO POST", 20),
    var("421", "SHIP TO POST", 4, 12, Kind::Postal),
    num("422", "ORIGIN", 3, Kind::Country),
    var("423", "COUNTRY - INITIAL PROCESS.", 3, 15, Kind::Countries),
    num("424", "COUNTRY - PROCESS.", 3, Kind::Country),
    var("425", "COUNTRY - DISASSEMBLY", 3, 15, Kind::Countries),
    num("426", "COUNTRY - FULL PROCESS", 3, Kind::Country),
    num("7003", "EXPIRY TIME", 10, Kind::DateTime),
    var("8003", "GRAI", 14, 30, Kind::Grai),
    text("8004", "GIAI", 30),
    text("8020", "REF No.", 25),
    text("90", "INTERNAL", 30),
    text("91", "INTERNAL", 90),
    text("92", "INTERNAL", 90),
    text("93", "INTERNAL", 90),
    text("94", "INTERNAL", 90),
    text("95", "INTERNAL", 90),
    text("96", "INTERNAL", 90),
    text("97", "INTERNAL", 90),
    text("98", "INTERNAL", 90),
    text("99", "INTERNAL", 90),
];

// The row EAN/UPC scans are read with.
const GTIN: &AiSpec = &AIS[1];

/// The GS1 "predefined length" table: AI prefixes (first two digits) whose
/// elements need no GS after them, with the length of AI plus value. It is
/// by prefix, not by AI: 422 has a fixed length but needs GS all the same.
const PREDEFINED: &[(&str, usize)] = &[
    ("00", 20),
    ("01", 16),
    ("02", 16),
    ("03", 16),
    ("04", 18),
    ("11", 8),
    ("12", 8),
    ("13", 8),
    ("14", 8),
    ("15", 8),
    ("16", 8),
    ("17", 8),
    ("18", 8),
    ("19", 8),
    ("20", 4),
    ("31", 10),
    ("32", 10),
    ("33", 10),
    ("34", 10),
    ("35", 10),
    ("36", 10),
    ("41", 16),
];

fn predefined_length(ai: &str) -> Option<usize> {
    let prefix = ai.get(..2)?;
    PREDEFINED
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|&(_, len)| len)
}

// The table entry the data starts with, and the AI's length.
fn lookup(data: &[u8]) -> Option<(&'static AiSpec, usize)> {
    AIS.iter().find_map(|spec| {
        let prefix = spec.ai.as_bytes();
        if !data.starts_with(prefix) {
            return None;
        }
        match spec.decimals {
            None => Some((spec, prefix.len())),
            Some(max) => match data.get(prefix.len()) {
                Some(&d) if d.is_ascii_digit() && d - b'0' <= max => Some((spec, prefix.len() + 1)),
                _ => None,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn today() -> Date {
        Date::new(2026, 12, 3).unwrap()
    }

    fn gs1(scan: &[u8]) -> ElementString {
        match parse(scan, today()).unwrap().content {
            Content::Gs1(es) => es,
            Content::Plain(p) => panic!("plain: {:?}", String::from_utf8_lossy(&p)),
        }
    }

    fn error(scan: &[u8]) -> String {
        parse(scan, today()).unwrap_err().to_string()
    }

    #[test]
    fn check_digits_of_published_keys() {
        // FIELD-NOTES, and GTIN, SSCC and GLN examples used throughout GS1
        // documentation.
        assert_eq!(check_digit(b"590123412345"), Some(7));
        // The worked example of the GS1 General Specifications (7.9.1).
        assert_eq!(check_digit(b"629104150021"), Some(3));
        assert_eq!(check_digit(b"400638133393"), Some(1));
        assert_eq!(check_digit(b"9501234567890"), Some(3));
        assert_eq!(check_digit(b"0952123454321"), Some(3));
        assert_eq!(check_digit(b"37610425002123456"), Some(9));
        assert_eq!(check_digit(b"541234500001"), Some(3));
        assert_eq!(check_digit(b"9638507"), Some(4));
        assert_eq!(check_digit(b"12a"), None);
    }

    #[test]
    fn aim_identifiers_split_and_classify() {
        let (aim, data) = AimId::split(b"]d2010952123454321317250100");
        assert_eq!(aim.map(|a| a.to_string()).as_deref(), Some("]d2"));
        assert_eq!(aim.map(AimId::symbology), Some(Symbology::Gs1DataMatrix));
        assert_eq!(data, b"010952123454321317250100");

        for (id, symbology) in [
            ("]C1", Symbology::Gs1Code128),
            ("]e0", Symbology::Gs1DataBar),
            ("]Q3", Symbology::Gs1Qr),
            ("]E0", Symbology::Ean13),
            ("]E4", Symbology::Ean8),
            ("]C0", Symbology::Other),
            ("]Q1", Symbology::Other),
        ] {
            let (aim, _) = AimId::split(id.as_bytes());
            assert_eq!(aim.unwrap().symbology(), symbology, "{id}");
        }
        assert_eq!(AimId::split(b"]]1x"), (None, &b"]]1x"[..]));
        assert_eq!(AimId::split(b"]C"), (None, &b"]C"[..]));
    }

    #[test]
    fn gs1_128_with_predefined_and_variable_elements() {
        // (01)09521234543213 (3103)000123 (10)ABC123 (21)77 (422)156
        let es = gs1(b"]C10109521234543213310300012310ABC123\x1d2177\x1d422156");
        let ais: Vec<_> = es.elements.iter().map(|e| e.ai.as_str()).collect();
        assert_eq!(ais, ["01", "3103", "10", "21", "422"]);
        assert_eq!(es.gtin(), Some("09521234543213"));
        assert_eq!(es.batch(), Some("ABC123"));
        assert_eq!(es.serial(), Some("77"));
        assert_eq!(es.origin(), Some(156));
        let weight = es.net_weight().unwrap();
        assert_eq!((weight.what, weight.unit), ("net weight", "kg"));
        assert_eq!(
            weight.value,
            Decimal {
                digits: 123,
                scale: 3
            }
        );
        assert_eq!(weight.to_string(), "0.123 kg");
        assert_eq!(es.get("10").unwrap().title, "BATCH/LOT");
    }

    #[test]
    fn sscc_gln_and_leading_fnc1() {
        let es = gs1(b"]C1\x1d003761042500212345694145412345000013");
        assert_eq!(es.sscc(), Some("376104250021234569"));
        assert_eq!(
            es.get("414").unwrap().value,
            Value::Gln("5412345000013".into())
        );
    }

    #[test]
    fn day_00_is_the_last_day_of_the_month() {
        let es = gs1(b"]C1172502001124020015261100");
        assert_eq!(es.expiry(), Date::new(2025, 2, 28));
        assert_eq!(es.production_date(), Date::new(2024, 2, 29));
        assert_eq!(es.best_before(), Date::new(2026, 11, 30));
    }

    #[test]
    fn century_keeps_the_year_within_minus_49_plus_50() {
        let es = gs1(b"]C117761231");
        assert_eq!(es.expiry(), Date::new(2076, 12, 31));
        let es = gs1(b"]C117771231");
        assert_eq!(es.expiry(), Date::new(1977, 12, 31));
        let late = Date::new(2099, 6, 1).unwrap();
        let es = parse_element_string(b"1149010117000101", late).unwrap();
        assert_eq!(es.production_date(), Date::new(2149, 1, 1));
        assert_eq!(es.expiry(), Date::new(2100, 1, 1));
    }

    #[test]
    fn invalid_dates_are_rejected() {
        assert_eq!(
            error(b"]C117251301"),
            r#"AI 17: "251301" at position 5 is not a valid date (YYMMDD)"#
        );
        assert_eq!(
            error(b"]C117250230"),
            r#"AI 17: "250230" at position 5 is not a valid date (YYMMDD)"#
        );
        // Day 00 is a GS1 rule for the six-digit date AIs only.
        assert_eq!(
            error(b"]C170032512001230"),
            r#"AI 7003: "251200" at position 7 is not a valid date (YYMMDD)"#
        );
        assert_eq!(
            error(b"]C170032512312460"),
            "AI 7003: value at position 7 has an hour above 23"
        );
    }

    #[test]
    fn expiry_time_amounts_and_countries() {
        let es = gs1(b"]C170032512311530\x1d39221999\x1d3911978123450\x1d423156276\x1d42112312345");
        let date = Date::new(2025, 12, 31).unwrap();
        assert_eq!(
            es.get("7003").unwrap().value,
            Value::DateTime {
                date,
                hour: 15,
                minute: 30
            }
        );
        let price = Value::Amount {
            amount: Decimal {
                digits: 1999,
                scale: 2,
            },
            currency: None,
        };
        assert_eq!(es.get("3922").unwrap().value, price);
        let Value::Amount { amount, currency } = es.get("3911").unwrap().value else {
            panic!()
        };
        assert_eq!(
            (amount.to_string(), currency),
            ("12345.0".into(), Some(978))
        );
        assert_eq!(
            es.get("423").unwrap().value,
            Value::Countries(vec![156, 276])
        );
        let postal = Value::Postal {
            country: 123,
            code: "12345".into(),
        };
        assert_eq!(es.get("421").unwrap().value, postal);
        assert_eq!(
            error(b"]C14231562"),
            "AI 423: value at position 6 is not a whole number of three-digit country codes"
        );
    }

    #[test]
    fn grai_checks_its_asset_type() {
        let es = gs1(b"]C1800309521234543213SERIAL1");
        assert_eq!(es.get("8003").unwrap().raw, "09521234543213SERIAL1");
        assert_eq!(
            error(b"]C1800309521234543214"),
            "AI 8003: check digit at position 20 is 4, expected 3"
        );
    }

    #[test]
    fn wrong_check_digit_names_ai_and_position() {
        assert_eq!(
            error(b"]C10109521234543214"),
            "AI 01: check digit at position 18 is 4, expected 3"
        );
        assert_eq!(
            error(b"]E04006381333932"),
            "AI 01: check digit at position 15 is 2, expected 1"
        );
        assert_eq!(
            error(b"]C100376104250021234568"),
            "AI 00: check digit at position 22 is 8, expected 9"
        );
    }

    #[test]
    fn ean_and_upc_scans_are_gtins() {
        assert_eq!(gs1(b"]E04006381333931").gtin(), Some("04006381333931"));
        assert_eq!(gs1(b"]E496385074").gtin(), Some("00000096385074"));
        assert_eq!(gs1(b"4006381333931").gtin(), Some("04006381333931"));
        assert_eq!(gs1(b"5901234123457").gtin(), Some("05901234123457"));
        assert_eq!(
            error(b"]E4123"),
            "EAN/UPC data at position 3 is 3 bytes, expected 8 digits"
        );
        assert_eq!(
            error(b"]E0400638133393x"),
            "AI 01: byte at position 15 is not a digit"
        );
    }

    #[test]
    fn non_gs1_codes_pass_through() {
        let scan = parse(b"]A0LAB-2026-000123", today()).unwrap();
        assert_eq!(scan.aim.unwrap().to_string(), "]A0");
        assert_eq!(scan.content, Content::Plain(b"LAB-2026-000123".to_vec()));
        let scan = parse(b"SAMPLE 42", today()).unwrap();
        assert_eq!(
            (scan.aim, scan.content),
            (None, Content::Plain(b"SAMPLE 42".to_vec()))
        );
        // Digits with a wrong check digit are a plain number, not a GTIN.
        let scan = parse(b"4006381333932", today()).unwrap();
        assert_eq!(scan.content, Content::Plain(b"4006381333932".to_vec()));
        // A date-like opening that is no date is no element string.
        let scan = parse(b"17999999xyz", today()).unwrap();
        assert!(matches!(scan.content, Content::Plain(_)));
        assert_eq!(error(b""), "empty scan");
    }

    #[test]
    fn gs1_without_identifier_is_classified_by_content() {
        let es = gs1(b"01095212345432131725010010ABC");
        assert_eq!(es.expiry(), Date::new(2025, 1, 31));
        assert_eq!(es.batch(), Some("ABC"));
        assert_eq!(gs1(b"\x1d10ABC\x1d21X").serial(), Some("X"));
    }

    #[test]
    fn too_long_value_reports_the_lost_separator() {
        let scan = [&b"]C10109521234543213"[..], b"10", &[b'A'; 24]].concat();
        assert_eq!(
            error(&scan),
            "AI 10 value at position 21 is 24 characters, longer than its maximum 20: \
             the GS separator after it was probably lost"
        );
    }

    #[test]
    fn swallowed_ai_is_flagged_not_guessed() {
        // (10)ABC123 then (17)250131 with the GS between them lost.
        assert_eq!(
            error(b"]C1010952123454321310ABC12317250131"),
            "AI 10 value swallows what reads as AI 17 at position 27: \
             the GS separator before it was probably lost"
        );
        // The same without an identifier, from a keyboard wedge.
        assert_eq!(
            error(b"010952123454321310ABC12317250131"),
            "AI 10 value swallows what reads as AI 17 at position 24: \
             the GS separator before it was probably lost"
        );
        // With the separator there is nothing to flag.
        let es = gs1(b"]C1010952123454321310ABC123\x1d17250131");
        assert_eq!(es.expiry(), Date::new(2025, 1, 31));
        // A scan that carries GS elsewhere is trusted to carry all of them.
        let es = gs1(b"]C121X\x1d10ABC12317250131");
        assert_eq!(es.batch(), Some("ABC12317250131"));
    }

    #[test]
    fn lost_gs_between_text_ais_goes_unnoticed() {
        // The known limit in the module docs: nothing self-checking follows,
        // so the run-on value is a plausible batch number.
        assert_eq!(gs1(b"]C110ABC21X7").batch(), Some("ABC21X7"));
    }

    #[test]
    fn fixed_length_outside_predefined_table_needs_gs() {
        assert_eq!(
            error(b"]C142215610ABC"),
            "AI 422 is not of predefined length, but position 9 after its value holds no GS \
             separator: the separator was probably lost"
        );
        // A GS after a predefined-length element is unnecessary but harmless.
        assert_eq!(gs1(b"]C10109521234543213\x1d10A").batch(), Some("A"));
    }

    #[test]
    fn structural_errors() {
        assert_eq!(error(b"]C1"), "no element string at position 3");
        assert_eq!(error(b"]C1\x1d"), "no element string at position 4");
        assert_eq!(
            error(b"]C17240ABC"),
            r#"no known AI at position 3 (data starts "7240")"#
        );
        assert_eq!(
            error(b"]C1010952"),
            "AI 01 value at position 5 needs 14 characters, only 4 remain"
        );
        assert_eq!(
            error(b"]C110A\x1d\x1d21B"),
            r#"no known AI at position 7 (data starts "\u{1d}21B")"#
        );
        assert_eq!(
            error(b"]C110\x1d21B"),
            "AI 10 value at position 5 is 0 characters, shorter than its minimum 1"
        );
        assert_eq!(
            error(b"]C110AB C"),
            "AI 10: byte 0x20 at position 7 is not in GS1 character set 82"
        );
        assert_eq!(
            error(b"]C13012a"),
            "AI 30: byte at position 7 is not a digit"
        );
        assert_eq!(
            error(b"]C13106000123"),
            r#"no known AI at position 3 (data starts "3106")"#
        );
    }

    #[test]
    fn ai_table_is_prefix_free_and_agrees_with_predefined_lengths() {
        assert_eq!(GTIN.ai, "01");
        for a in AIS {
            for b in AIS {
                if !std::ptr::eq(a, b) {
                    assert!(!b.ai.starts_with(a.ai), "{} is a prefix of {}", a.ai, b.ai);
                }
            }
            let ai_len = a.ai.len() + usize::from(a.decimals.is_some());
            if let Some(total) = predefined_length(a.ai) {
                assert!(
                    matches!(a.len, Len::Fixed(n) if n + ai_len == total),
                    "AI {}",
                    a.ai
                );
            }
        }
    }

    #[test]
    fn decimal_display() {
        assert_eq!(
            Decimal {
                digits: 5,
                scale: 3
            }
            .to_string(),
            "0.005"
        );
        assert_eq!(
            Decimal {
                digits: 1234,
                scale: 0
            }
            .to_string(),
            "1234"
        );
        assert_eq!(
            Decimal {
                digits: 0,
                scale: 2
            }
            .to_string(),
            "0.00"
        );
        assert!(
            (Decimal {
                digits: 123,
                scale: 3
            }
            .to_f64()
                - 0.123)
                .abs()
                < 1e-12
        );
    }

    // A small deterministic generator, so one proptest seed gives a whole
    // valid element.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn digits(&mut self, n: usize) -> String {
            (0..n)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }

        fn cset82(&mut self, n: usize) -> String {
            const CSET82: &[u8] =
                b"!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
            (0..n)
                .map(|_| char::from(CSET82[self.below(82) as usize]))
                .collect()
        }

        fn len(&mut self, min: usize, max: usize) -> usize {
            min + self.below((max - min + 1) as u64) as usize
        }

        fn with_check_digit(&mut self, n: usize) -> String {
            let mut body = self.digits(n - 1);
            let check = check_digit(body.as_bytes()).unwrap();
            body.push(char::from(b'0' + check));
            body
        }

        fn yymmdd(&mut self, day_zero: bool) -> String {
            let month = 1 + self.below(12) as u8;
            let day = if day_zero && self.below(4) == 0 {
                0
            } else {
                1 + self.below(28)
            };
            format!("{:02}{month:02}{day:02}", self.below(100))
        }
    }

    // A valid (AI, value) pair for table row `row`.
    fn valid_element(row: usize, seed: u64) -> (String, String) {
        let spec = &AIS[row];
        let mut rng = Rng(seed | 1);
        let mut ai = spec.ai.to_string();
        if let Some(max) = spec.decimals {
            ai.push(char::from(b'0' + rng.below(u64::from(max) + 1) as u8));
        }
        let value = match (spec.kind, spec.len) {
            (Kind::Gtin | Kind::Sscc | Kind::Gln, Len::Fixed(n)) => rng.with_check_digit(n),
            (Kind::Grai, _) => {
                let len = rng.len(0, 16);
                format!("0{}{}", rng.with_check_digit(13), rng.cset82(len))
            }
            (Kind::Date, _) => rng.yymmdd(true),
            (Kind::DateTime, _) => {
                let (hour, minute) = (rng.below(24), rng.below(60));
                format!("{}{hour:02}{minute:02}", rng.yymmdd(false))
            }
            (Kind::Countries, _) => {
                let n = rng.len(1, 5);
                rng.digits(3 * n)
            }
            (Kind::Postal, Len::Var { min, max }) => {
                let len = rng.len(min - 3, max - 3);
                format!("{}{}", rng.digits(3), rng.cset82(len))
            }
            (_, Len::Fixed(n)) => rng.digits(n),
            (Kind::Text, Len::Var { min, max }) => {
                let len = rng.len(min, max);
                rng.cset82(len)
            }
            (_, Len::Var { min, max }) => {
                let len = rng.len(min, max);
                rng.digits(len)
            }
        };
        (ai, value)
    }

    fn encode(pairs: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (ai, value)) in pairs.iter().enumerate() {
            out.extend_from_slice(ai.as_bytes());
            out.extend_from_slice(value.as_bytes());
            if i + 1 < pairs.len() && predefined_length(ai).is_none() {
                out.push(GS);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn valid_element_strings_parse_back_exactly(
            rows in prop::collection::vec((0..AIS.len(), any::<u64>()), 1..8),
        ) {
            let pairs: Vec<_> = rows.iter().map(|&(row, seed)| valid_element(row, seed)).collect();
            let encoded = encode(&pairs);

            match parse(&[&b"]C1"[..], &encoded].concat(), today()) {
                Ok(scan) => {
                    let Content::Gs1(es) = scan.content else { panic!("plain") };
                    let parsed: Vec<_> =
                        es.elements.iter().map(|e| (e.ai.clone(), e.raw.clone())).collect();
                    prop_assert_eq!(&parsed, &pairs);
                    prop_assert_eq!(es.encode(), encoded);
                }
                // Without any GS, a last variable value may by chance end in
                // a valid element string: that reading is rightly refused.
                Err(ScanError::SwallowedAi { .. }) => {
                    let last = &AIS[rows[rows.len() - 1].0];
                    prop_assert!(!encoded.contains(&GS));
                    let variable = matches!(last.len, Len::Var { .. });
                    prop_assert!(variable);
                }
                Err(e) => prop_assert!(false, "{e} in {:?}", String::from_utf8_lossy(&encoded)),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, today());
            let _ = parse(&[&b"]C1"[..], &bytes].concat(), today());
        }

        #[test]
        fn gs1_like_bytes_never_panic(
            bytes in prop::collection::vec(prop::sample::select(&b"0123456789\x1dA]"[..]), 0..80),
            prefix in prop::sample::select(vec!["", "]C1", "]E0", "]E4", "]Q3"]),
        ) {
            let scan = [prefix.as_bytes(), &bytes].concat();
            if let Ok(Scan { content: Content::Gs1(es), .. }) = parse(&scan, today()) {
                // The canonical encoding splits the same way; only dropping
                // a GS the scan carried may make a tail look swallowed.
                match parse_element_string(&es.encode(), today()) {
                    Ok(again) => prop_assert_eq!(again, es),
                    Err(e) => prop_assert!(matches!(e, ScanError::SwallowedAi { .. }), "{}", e),
                }
            }
        }
    }
}
