//! The `line` driver: instruments that send one result per line of text.
//!
//! Balances, data loggers and many simple meters print a line per result,
//! on a key press, on a schedule or when asked by a poll command. The
//! driver frames the byte stream ([`Framer`]: by a line terminator or by
//! STX/ETX, with a maximum frame length so that garbage cannot grow a
//! buffer), parses each frame with the configured profile ([`Parser`]) and
//! stores each result as a signed reading whose `raw` is the frame.
//!
//! Profiles:
//! - `mt-sics`: Mettler Toledo MT-SICS replies (`S S     100.00 g` stable,
//!   `S D` unstable, `S I` busy, `S +`/`S -` overload and underload, `ES`,
//!   `ET`, `EL` errors). Overload and underload are stored as readings with
//!   a text value and a flag: the balance said so at that time.
//! - `sartorius`: Sartorius SBI print lines, 16 characters, or 22 with a
//!   6-character identifier (`N` net, `G#` gross, `T` tare) in front; a
//!   value without a unit is unstable.
//! - `csv`: columns by number (from 1), mapped to names and units.
//! - `pattern`: a regular expression with named captures.
//!
//! An optional poll command (`poll = "SI\r\n"`) is written every `poll_ms`.
//!
//! ```
//! use kouan_agent::instrument::line::{LineOptions, Parsed, Profile};
//!
//! let options = LineOptions::profile(Profile::MtSics);
//! let parser = options.compile()?;
//! let Parsed::Reading(values) = parser.parse(b"S D     12.34 g") else { panic!() };
//! assert_eq!(values[0].unit.as_deref(), Some("g"));
//! assert_eq!(values[0].flags, ["unstable"]);
//! # Ok::<(), String>(())
//! ```

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::port::Ended;
use super::{ErrorLog, Instrument, StoreRefused};
use crate::clock::CaptureTime;
use crate::record::{MeasuredValue, Measurement, ReadingBody};

/// `[instrument.line]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineOptions {
    /// How lines are read.
    pub profile: Profile,
    /// How frames are delimited.
    #[serde(default)]
    pub framing: Framing,
    /// Longest frame in bytes; longer ones are discarded and counted.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The measurement name for balances (default `mass`) and for a
    /// pattern without a `name` capture (default `value`).
    #[serde(default)]
    pub name: Option<String>,
    /// `pattern` profile: a regular expression with named captures.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `csv` profile: the delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Lines matching this regular expression are skipped (headers,
    /// banners); they are neither readings nor errors.
    #[serde(default)]
    pub skip: Option<String>,
    /// `csv`: the column of the sample id (from 1); `pattern`: a capture
    /// named `sample` is used without saying so.
    #[serde(default)]
    pub sample_column: Option<usize>,
    /// Values: which column or capture, under which name and unit.
    #[serde(default, rename = "field")]
    pub fields: Vec<Field>,
    /// A command written to the instrument every `poll_ms`, e.g. `"SI\r\n"`.
    #[serde(default)]
    pub poll: Option<String>,
    /// Milliseconds between polls.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_max_len() -> usize {
    1024
}
fn default_poll_ms() -> u64 {
    1000
}

impl Default for LineOptions {
    fn default() -> Self {
        LineOptions::profile(Profile::Csv)
    }
}

/// `[[instrument.line.field]]`: one value of a line.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// `csv`: the column, from 1.
    #[serde(default)]
    pub column: Option<usize>,
    /// `pattern`: the named capture.
    #[serde(default)]
    pub capture: Option<String>,
    /// The measurement's name in the record.
    pub name: String,
    /// Its unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// Numbers are multiplied by this, then `offset` is added.
    #[serde(default = "one")]
    pub scale: f64,
    /// Added after scaling.
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

/// How lines are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Mettler Toledo MT-SICS.
    MtSics,
    /// Sartorius SBI.
    Sartorius,
    /// Delimited columns.
    Csv,
    /// A regular expression with named captures.
    Pattern,
}

/// How frames are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Lines end with LF; a CR before it is dropped (CR LF and LF both work).
    #[default]
    Lf,
    /// Lines end with CR; an LF after it is dropped.
    Cr,
    /// Frames are between STX (0x02) and ETX (0x03); bytes outside are garbage.
    StxEtx,
}

impl LineOptions {
    /// The options of a profile with every default.
    pub fn profile(profile: Profile) -> Self {
        LineOptions {
            profile,
            framing: Framing::Lf,
            max_len: default_max_len(),
            name: None,
            pattern: None,
            delimiter: None,
            skip: None,
            sample_column: None,
            fields: Vec::new(),
            poll: None,
            poll_ms: default_poll_ms(),
        }
    }

    /// Checks the options and builds their parser. Errors say which option
    /// is wrong and how.
    pub fn compile(&self) -> Result<Parser, String> {
        if !(16..=1 << 20).contains(&self.max_len) {
            return Err(format!("max_len = {} must be 16 to 1048576", self.max_len));
        }
        if self.poll.is_some() && self.poll_ms < 50 {
            return Err(format!("poll_ms = {} must be at least 50", self.poll_ms));
        }
        let skip = self
            .skip
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| format!("skip is not a valid regular expression: {e}"))?;
        let kind = match self.profile {
            Profile::MtSics | Profile::Sartorius => {
                if self.pattern.is_some() || !self.fields.is_empty() || self.sample_column.is_some()
                {
                    return Err(format!(
                        "pattern, field and sample_column do not apply to profile {:?}",
                        self.profile
                    ));
                }
                let name = self.name.clone().unwrap_or_else(|| "mass".into());
                if self.profile == Profile::MtSics {
                    ParserKind::MtSics { name }
                } else {
                    ParserKind::Sartorius { name }
                }
            }
            Profile::Csv => {
                if self.pattern.is_some() {
                    return Err("pattern applies to profile \"pattern\", not \"csv\"".into());
                }
                if self.fields.is_empty() {
                    return Err(
                        "profile \"csv\" needs at least one [[instrument.line.field]] \
                                with a column and a name"
                            .into(),
                    );
                }
                let delimiter = self.delimiter.unwrap_or(',');
                if !delimiter.is_ascii() {
                    return Err(format!(
                        "delimiter {delimiter:?} must be one ASCII character"
                    ));
                }
                let mut columns = Vec::new();
                for field in &self.fields {
                    match (field.column, &field.capture) {
                        (Some(column), None) if column >= 1 => columns.push(column - 1),
                        _ => {
                            return Err(format!(
                                "field {:?}: give column (counted from 1), not capture, \
                                 for profile \"csv\"",
                                field.name
                            ));
                        }
                    }
                }
                if self.sample_column == Some(0) {
                    return Err("sample_column is counted from 1".into());
                }
                ParserKind::Csv {
                    delimiter: delimiter as u8,
                    columns,
                    sample: self.sample_column.map(|c| c - 1),
                }
            }
            Profile::Pattern => {
                let Some(pattern) = &self.pattern else {
                    return Err("profile \"pattern\" needs pattern = \"...\" with named \
                                captures, e.g. \"(?<value>[-0-9.]+) (?<unit>\\\\S+)\""
                        .into());
                };
                let regex = regex::Regex::new(pattern)
                    .map_err(|e| format!("pattern is not a valid regular expression: {e}"))?;
                let names: Vec<&str> = regex.capture_names().flatten().collect();
                if self.fields.is_empty() && !names.contains(&"value") {
                    return Err("pattern has no capture named value, and no \
                                [[instrument.line.field]] names its captures"
                        .into());
                }
                for field in &self.fields {
                    match (&field.capture, field.column) {
                        (Some(capture), None) if names.contains(&capture.as_str()) => {}
                        (Some(capture), None) => {
                            return Err(format!(
                                "field {:?}: pattern has no capture named {capture:?}",
                                field.name
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "field {:?}: give capture, not column, for profile \"pattern\"",
                                field.name
                            ));
                        }
                    }
                }
                ParserKind::Pattern {
                    regex,
                    name: self.name.clone().unwrap_or_else(|| "value".into()),
                }
            }
        };
        Ok(Parser {
            kind,
            fields: self.fields.clone(),
            skip,
        })
    }
}

/// What a frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Values to store.
    Reading(Vec<Measurement>),
    /// Values with the sample id the instrument sent.
    Sample(Vec<Measurement>, String),
    /// Nothing to store and nothing wrong (a busy reply, a header, a blank line).
    Ignored(&'static str),
    /// The instrument reported an error or the frame is not what the
    /// profile expects.
    Error(String),
}

/// A compiled profile.
#[derive(Debug, Clone)]
pub struct Parser {
    kind: ParserKind,
    fields: Vec<Field>,
    skip: Option<regex::Regex>,
}

#[derive(Debug, Clone)]
enum ParserKind {
    MtSics {
        name: String,
    },
    Sartorius {
        name: String,
    },
    Csv {
        delimiter: u8,
        columns: Vec<usize>,
        sample: Option<usize>,
    },
    Pattern {
        regex: regex::Regex,
        name: String,
    },
}

impl Parser {
    /// Parses one frame (without its terminator).
    pub fn parse(&self, frame: &[u8]) -> Parsed {
        let Ok(text) = std::str::from_utf8(frame) else {
            return Parsed::Error("not text (invalid UTF-8): wrong baud rate or noise?".into());
        };
        if text.trim().is_empty() {
            return Parsed::Ignored("blank line");
        }
        if self.skip.as_ref().is_some_and(|skip| skip.is_match(text)) {
            return Parsed::Ignored("skipped line");
        }
        match &self.kind {
            ParserKind::MtSics { name } => mt_sics(text, name),
            ParserKind::Sartorius { name } => sartorius(text, name),
            ParserKind::Csv {
                delimiter,
                columns,
                sample,
            } => self.csv(text, *delimiter, columns, *sample),
            ParserKind::Pattern { regex, name } => self.pattern(text, regex, name),
        }
    }

    fn csv(&self, text: &str, delimiter: u8, columns: &[usize], sample: Option<usize>) -> Parsed {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut record = csv::StringRecord::new();
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Parsed::Ignored("blank line"),
            Err(e) => return Parsed::Error(format!("not a CSV line: {e}")),
        }
        let mut values = Vec::with_capacity(columns.len());
        for (field, &column) in self.fields.iter().zip(columns) {
            let Some(text) = record.get(column) else {
                return Parsed::Error(format!(
                    "line has {} columns, field {:?} is column {}",
                    record.len(),
                    field.name,
                    column + 1
                ));
            };
            values.push(field.measure(text, None));
        }
        match sample.and_then(|c| record.get(c)).map(str::trim) {
            Some(id) if !id.is_empty() => Parsed::Sample(values, id.to_owned()),
            _ => Parsed::Reading(values),
        }
    }

    fn pattern(&self, text: &str, regex: &regex::Regex, name: &str) -> Parsed {
        let Some(captures) = regex.captures(text) else {
            return Parsed::Error("line does not match the pattern".into());
        };
        let values = if self.fields.is_empty() {
            let get = |n: &str| captures.name(n).map(|m| m.as_str().trim());
            let field = Field {
                column: None,
                capture: None,
                name: get("name").unwrap_or(name).to_owned(),
                unit: None,
                scale: 1.0,
                offset: 0.0,
            };
            vec![field.measure(get("value").unwrap_or_default(), get("unit"))]
        } else {
            self.fields
                .iter()
                .filter_map(|field| {
                    let capture = field.capture.as_deref()?;
                    Some(field.measure(captures.name(capture)?.as_str(), None))
                })
                .collect()
        };
        match captures.name("sample").map(|m| m.as_str().trim()) {
            Some(id) if !id.is_empty() => Parsed::Sample(values, id.to_owned()),
            _ => Parsed::Reading(values),
        }
    }
}

impl Field {
    /// The measurement of `text` in this field: a scaled number, or the
    /// text itself when it is not a number (`NEG`, `<0.01`).
    fn measure(&self, text: &str, unit: Option<&str>) -> Measurement {
        let text = text.trim();
        let value = match text.parse::<f64>() {
            Ok(number) if number.is_finite() => {
                MeasuredValue::Number(number * self.scale + self.offset)
            }
            _ => MeasuredValue::Text(text.to_owned()),
        };
        let unit = self.unit.as_deref().or(unit).filter(|u| !u.is_empty());
        Measurement::new(self.name.clone(), value, unit.map(str::to_owned))
    }
}

/// MT-SICS: `S S <value> <unit>` and its relatives (MT-SICS reference,
/// commands S, SI, SIR and their error replies).
fn mt_sics(text: &str, name: &str) -> Parsed {
    let words: Vec<&str> = text.split_whitespace().collect();
    let weight = |flags: &[&str]| -> Parsed {
        let (Some(value), unit) = (words.get(2), words.get(3)) else {
            return Parsed::Error(format!("weight reply without a value: {text:?}"));
        };
        let Ok(number) = value.parse::<f64>() else {
            return Parsed::Error(format!("weight {value:?} is not a number"));
        };
        let mut m = Measurement::new(
            name,
            MeasuredValue::Number(number),
            unit.map(|u| (*u).to_owned()),
        );
        m.flags = flags.iter().map(|f| (*f).to_owned()).collect();
        Parsed::Reading(vec![m])
    };
    let state = |what: &str| {
        let mut m = Measurement::new(name, MeasuredValue::Text(what.to_owned()), None);
        m.flags = vec![what.to_owned()];
        Parsed::Reading(vec![m])
    };
    match words.as_slice() {
        ["S" | "SI" | "SIR", "S", ..] => weight(&[]),
        ["S" | "SI" | "SIR", "D", ..] => weight(&["unstable"]),
        ["S" | "SI" | "SIR", "I"] => Parsed::Ignored("balance busy"),
        ["S" | "SI" | "SIR", "+"] => state("overload"),
        ["S" | "SI" | "SIR", "-"] => state("underload"),
        ["ES"] => Parsed::Error("balance replied ES: command not understood".into()),
        ["ET"] => {
            Parsed::Error("balance replied ET: transmission error (check parity/baud)".into())
        }
        ["EL"] => Parsed::Error("balance replied EL: command cannot be executed now".into()),
        [command, "L"] => Parsed::Error(format!("balance replied {command} L: logical error")),
        // Replies to other commands (I4 serial number, Z zero, T tare) are
        // not readings.
        [command, "A", ..] if command.starts_with(['I', 'Z', 'T', '@']) => {
            Parsed::Ignored("reply to another command")
        }
        _ => Parsed::Error(format!("not an MT-SICS weight reply: {text:?}")),
    }
}

/// Sartorius SBI print line: `+    123.45 g  `, optionally after a
/// 6-character identifier.
fn sartorius(text: &str, name: &str) -> Parsed {
    let (ident, data) = if text.chars().count() >= 22 {
        let split = text.char_indices().nth(6).map_or(text.len(), |(i, _)| i);
        (Some(text[..split].trim()), &text[split..])
    } else {
        (None, text)
    };
    let data = data.trim();
    let mut flags: Vec<String> = match ident {
        Some("N") => vec!["net".into()],
        Some("G" | "G#") => vec!["gross".into()],
        Some("T") => vec!["tare".into()],
        Some(other) if !other.is_empty() => vec![other.to_ascii_lowercase()],
        _ => vec![],
    };
    let state = |what: &str, mut flags: Vec<String>| {
        flags.push(what.to_owned());
        let mut m = Measurement::new(name, MeasuredValue::Text(what.to_owned()), None);
        m.flags = flags;
        Parsed::Reading(vec![m])
    };
    match data {
        "High" | "H" => return state("overload", flags),
        "Low" | "L" => return state("underload", flags),
        _ => {}
    }
    let mut words = data.split_whitespace().peekable();
    let mut number = String::new();
    if let Some(&sign @ ("+" | "-")) = words.peek() {
        number.push_str(sign);
        words.next();
    }
    let Some(value) = words.next() else {
        return Parsed::Error(format!("Sartorius line without a value: {text:?}"));
    };
    number.push_str(value);
    let Ok(number) = number.parse::<f64>() else {
        return Parsed::Error(format!("Sartorius value {value:?} is not a number"));
    };
    let unit: Option<String> = words.next().map(str::to_owned);
    if unit.is_none() {
        flags.push("unstable".into());
    }
    let mut m = Measurement::new(name, MeasuredValue::Number(number), unit);
    m.flags = flags;
    Parsed::Reading(vec![m])
}

/// Splits a byte stream into frames of at most `max_len` bytes.
///
/// Holds at most `max_len` bytes. A frame that grows past that is cut off:
/// its bytes are dropped up to the next delimiter and it is reported once
/// as [`Frame::Oversize`].
#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    max_len: usize,
    buf: Vec<u8>,
    /// Discarding the rest of an oversize frame.
    discarding: bool,
    /// STX/ETX: inside a frame.
    open: bool,
    /// Bytes outside STX/ETX since the last frame.
    stray: usize,
}

/// One item out of the [`Framer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A frame, without its delimiters.
    Data(Vec<u8>),
    /// A frame longer than the maximum was dropped.
    Oversize,
    /// Bytes outside STX/ETX were dropped.
    Stray(usize),
}

impl Framer {
    /// A framer for `framing` with frames of at most `max_len` bytes.
    pub fn new(framing: Framing, max_len: usize) -> Self {
        Framer {
            framing,
            max_len,
            buf: Vec::with_capacity(max_len.min(4096)),
            discarding: false,
            open: false,
            stray: 0,
        }
    }

    /// Bytes of an unfinished frame (lost if the device goes away now).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; `out` receives each finished frame.
    pub fn push(&mut self, bytes: &[u8], out: &mut impl FnMut(Frame)) {
        for &b in bytes {
            match self.framing {
                Framing::Lf | Framing::Cr => self.push_line_byte(b, out),
                Framing::StxEtx => self.push_stx_byte(b, out),
            }
        }
    }

    fn push_line_byte(&mut self, b: u8, out: &mut impl FnMut(Frame)) {
        let (end, other) = match self.framing {
            Framing::Cr => (b'\r', b'\n'),
            _ => (b'\n', b'\r'),
        };
        if b == end {
            if self.discarding {
                self.discarding = false;
            } else {
                let mut frame = std::mem::take(&mut self.buf);
                // CR LF (or LF CR): the other half belongs to the terminator.
                if self.framing == Framing::Lf && frame.last() == Some(&other) {
                    frame.pop();
                }
                if self.framing == Framing::Cr && frame.first() == Some(&other) {
                    frame.remove(0);
                }
                out(Frame::Data(frame));
            }
            return;
        }
        self.grow(b, out);
    }

    fn push_stx_byte(&mut self, b: u8, out: &mut impl FnMut(Frame)) {
        const STX: u8 = 0x02;
        const ETX: u8 = 0x03;
        match b {
            STX => {
                if self.open && !self.discarding {
                    // A new STX inside a frame: the old one was cut off.
                    self.stray += self.buf.len();
                }
                self.flush_stray(out);
                self.buf.clear();
                self.open = true;
                self.discarding = false;
            }
            ETX if self.open => {
                self.open = false;
                if self.discarding {
                    self.discarding = false;
                } else {
                    out(Frame::Data(std::mem::take(&mut self.buf)));
                }
            }
            _ if self.open => self.grow(b, out),
            _ => self.stray += 1,
        }
    }

    fn flush_stray(&mut self, out: &mut impl FnMut(Frame)) {
        if self.stray > 0 {
            out(Frame::Stray(self.stray));
            self.stray = 0;
        }
    }

    fn grow(&mut self, b: u8, out: &mut impl FnMut(Frame)) {
        if self.discarding {
            return;
        }
        if self.buf.len() == self.max_len {
            self.buf.clear();
            self.discarding = true;
            out(Frame::Oversize);
            return;
        }
        self.buf.push(b);
    }
}

/// Runs the `line` driver until the agent stops.
pub async fn run(instrument: &Instrument) {
    let options = instrument.config.line.clone().unwrap_or_default();
    let parser = match options.compile() {
        Ok(parser) => parser,
        Err(message) => {
            // The config check refuses this before start-up.
            tracing::error!(instrument = %instrument.id(), %message, "bad [instrument.line]");
            return;
        }
    };
    let Some(path) = instrument.config.port.clone() else {
        tracing::error!(instrument = %instrument.id(), "the line driver needs a port");
        return;
    };
    let settings = instrument.config.serial.clone();
    super::supervise(
        instrument,
        || settings.open(&path),
        |port| session(instrument, &options, &parser, port),
    )
    .await;
}

async fn session(
    instrument: &Instrument,
    options: &LineOptions,
    parser: &Parser,
    port: tokio_serial::SerialStream,
) -> Ended {
    let (mut reader, mut writer) = tokio::io::split(port);
    let mut framer = Framer::new(options.framing, options.max_len);
    let mut errors = ErrorLog::default();
    let mut shutdown = instrument.shutdown.clone();
    let mut poll = tokio::time::interval(Duration::from_millis(options.poll_ms));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 4096];

    loop {
        let n = tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => return lost(instrument, &framer, "end of file"),
                Ok(n) => n,
                Err(e) => return lost(instrument, &framer, &e.to_string()),
            },
            _ = poll.tick(), if options.poll.is_some() => {
                let command = options.poll.as_deref().unwrap_or_default();
                if let Err(e) = writer.write_all(command.as_bytes()).await {
                    return lost(instrument, &framer, &format!("writing the poll command: {e}"));
                }
                continue;
            }
            _ = super::stopping(&mut shutdown) => return Ended::Shutdown,
        };
        instrument.count_bytes(n);

        let mut frames = Vec::new();
        framer.push(&buf[..n], &mut |frame| frames.push(frame));
        for frame in frames {
            if let Err(StoreRefused::Stopping) =
                handle(instrument, parser, frame, &mut errors).await
            {
                return Ended::Shutdown;
            }
        }
    }
}

fn lost(instrument: &Instrument, framer: &Framer, why: &str) -> Ended {
    let pending = framer.pending();
    if pending > 0 {
        super::Counters::add(&instrument.counters.errors, 1);
        tracing::warn!(
            instrument = %instrument.id(),
            bytes = pending,
            "an unfinished line was cut off by the disconnect"
        );
    }
    Ended::Lost(std::io::Error::other(why.to_owned()))
}

async fn handle(
    instrument: &Instrument,
    parser: &Parser,
    frame: Frame,
    errors: &mut ErrorLog,
) -> Result<(), StoreRefused> {
    let data = match frame {
        Frame::Data(data) => data,
        Frame::Oversize => {
            instrument.count_error(
                errors,
                "line too long: discarded up to the next terminator",
                "",
            );
            return Ok(());
        }
        Frame::Stray(n) => {
            instrument.count_error(
                errors,
                "bytes outside STX/ETX discarded",
                &format!("{n} bytes"),
            );
            return Ok(());
        }
    };
    let time = CaptureTime::now();
    let (values, sample) = match parser.parse(&data) {
        Parsed::Reading(values) => (values, None),
        Parsed::Sample(values, sample) => (values, Some(sample)),
        Parsed::Ignored(why) => {
            tracing::debug!(instrument = %instrument.id(), why, "line ignored");
            return Ok(());
        }
        Parsed::Error(message) => {
            instrument.count_error(errors, "unusable line", &message);
            return Ok(());
        }
    };
    let mut body = ReadingBody::new(values, data);
    body.sample = sample;
    match instrument.store_reading(body, time).await {
        Ok(appended) => {
            tracing::debug!(instrument = %instrument.id(), seq = appended.seq, "reading stored");
            Ok(())
        }
        Err(StoreRefused::Stopping) => Err(StoreRefused::Stopping),
        Err(e) => {
            // Lost: logged at error, as the style says for lost data.
            super::Counters::add(&instrument.counters.errors, 1);
            tracing::error!(instrument = %instrument.id(), error = %e, "reading not stored");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        framer.push(bytes, &mut |f| out.push(f));
        out
    }

    fn data(s: &str) -> Frame {
        Frame::Data(s.as_bytes().to_vec())
    }

    #[test]
    fn lf_framing_takes_crlf_and_lf() {
        let mut framer = Framer::new(Framing::Lf, 64);
        assert_eq!(frames(&mut framer, b"a\r\nb\nc"), [data("a"), data("b")]);
        assert_eq!(framer.pending(), 1);
        assert_eq!(frames(&mut framer, b"\r\n"), [data("c")]);
    }

    #[test]
    fn cr_framing_drops_the_following_lf() {
        let mut framer = Framer::new(Framing::Cr, 64);
        assert_eq!(frames(&mut framer, b"a\r\nb\r"), [data("a"), data("b")]);
    }

    #[test]
    fn oversize_line_is_reported_once_and_the_next_line_is_read() {
        let mut framer = Framer::new(Framing::Lf, 16);
        let mut bytes = vec![b'x'; 100];
        bytes.extend_from_slice(b"\nok\n");
        assert_eq!(frames(&mut framer, &bytes), [Frame::Oversize, data("ok")]);
        assert!(framer.buf.capacity() <= 4096);
    }

    #[test]
    fn stx_etx_framing_reports_stray_bytes() {
        let mut framer = Framer::new(Framing::StxEtx, 64);
        assert_eq!(
            frames(&mut framer, b"junk\x02one\x03\r\n\x02two\x03"),
            [Frame::Stray(4), data("one"), Frame::Stray(2), data("two")]
        );
        // A frame cut off by a new STX counts as stray bytes.
        assert_eq!(
            frames(&mut framer, b"\x02half\x02whole\x03"),
            [Frame::Stray(4), data("whole")]
        );
    }

    fn mt() -> Parser {
        LineOptions::profile(Profile::MtSics).compile().unwrap()
    }

    fn value(parsed: &Parsed) -> (&MeasuredValue, Option<&str>, Vec<&str>) {
        let (Parsed::Reading(values) | Parsed::Sample(values, _)) = parsed else {
            panic!("not a reading: {parsed:?}")
        };
        let m = &values[0];
        (
            &m.value,
            m.unit.as_deref(),
            m.flags.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn mt_sics_reply_kinds() {
        let p = mt();
        let stable = p.parse(b"S S     100.00 g");
        assert_eq!(
            value(&stable),
            (&MeasuredValue::Number(100.0), Some("g"), vec![])
        );
        let unstable = p.parse(b"S D    -12.5 kg");
        assert_eq!(
            value(&unstable),
            (&MeasuredValue::Number(-12.5), Some("kg"), vec!["unstable"])
        );
        let over = p.parse(b"S +");
        assert_eq!(
            value(&over),
            (
                &MeasuredValue::Text("overload".into()),
                None,
                vec!["overload"]
            )
        );
        let under = p.parse(b"SI -");
        assert_eq!(value(&under).2, vec!["underload"]);
        assert_eq!(p.parse(b"S I"), Parsed::Ignored("balance busy"));
        for error in ["ES", "ET", "EL", "S L"] {
            assert!(
                matches!(p.parse(error.as_bytes()), Parsed::Error(_)),
                "{error}"
            );
        }
        assert!(matches!(p.parse(b"S S abc g"), Parsed::Error(_)));
        assert!(matches!(p.parse(b"hello"), Parsed::Error(_)));
        assert!(matches!(p.parse(&[0xff, 0xfe]), Parsed::Error(_)));
    }

    #[test]
    fn sartorius_lines() {
        let p = LineOptions::profile(Profile::Sartorius).compile().unwrap();
        let short = p.parse(b"+    123.45 g  ");
        assert_eq!(
            value(&short),
            (&MeasuredValue::Number(123.45), Some("g"), vec![])
        );
        let long = p.parse(b"N     -      12.30 kg ");
        assert_eq!(
            value(&long),
            (&MeasuredValue::Number(-12.3), Some("kg"), vec!["net"])
        );
        let unstable = p.parse(b"+    123.40    ");
        assert_eq!(value(&unstable).2, vec!["unstable"]);
        assert_eq!(value(&p.parse(b"      High      ")).2, vec!["overload"]);
        assert!(matches!(p.parse(b"+    abc g  "), Parsed::Error(_)));
    }

    #[test]
    fn csv_columns_names_units_and_sample() {
        let toml = r#"
            profile = "csv"
            sample_column = 1
            skip = "^sample,"
            [[field]]
            column = 2
            name = "lead"
            unit = "mg/kg"
            [[field]]
            column = 3
            name = "temperature"
            unit = "degC"
            scale = 0.1
        "#;
        let options: LineOptions = toml::from_str(toml).unwrap();
        let p = options.compile().unwrap();
        assert_eq!(p.parse(b"sample,lead,t"), Parsed::Ignored("skipped line"));
        let Parsed::Sample(values, sample) = p.parse(b"GY-1,0.12,215") else {
            panic!()
        };
        assert_eq!(sample, "GY-1");
        assert_eq!(values[0].value, MeasuredValue::Number(0.12));
        assert_eq!(values[0].unit.as_deref(), Some("mg/kg"));
        assert_eq!(values[1].value, MeasuredValue::Number(21.5));
        let Parsed::Sample(values, _) = p.parse(b"\"GY-2\",NEG,200") else {
            panic!()
        };
        assert_eq!(values[0].value, MeasuredValue::Text("NEG".into()));
        assert!(matches!(p.parse(b"GY-3,1"), Parsed::Error(e) if e.contains("column 3")));
    }

    #[test]
    fn pattern_with_conventional_captures() {
        let mut options = LineOptions::profile(Profile::Pattern);
        options.pattern = Some(r"^(?<name>\w+)=(?<value>[-0-9.]+)(?<unit>\S*)$".into());
        let p = options.compile().unwrap();
        let Parsed::Reading(values) = p.parse(b"pH=7.05") else {
            panic!()
        };
        assert_eq!(values[0].name, "pH");
        assert_eq!(values[0].unit, None);
        let Parsed::Reading(values) = p.parse(b"cond=1.2mS") else {
            panic!()
        };
        assert_eq!(values[0].unit.as_deref(), Some("mS"));
        assert!(matches!(p.parse(b"nonsense"), Parsed::Error(_)));
    }

    #[test]
    fn options_errors_say_what_to_do() {
        let csv = LineOptions::profile(Profile::Csv);
        assert!(
            csv.compile()
                .unwrap_err()
                .contains("[[instrument.line.field]]")
        );
        let mut pattern = LineOptions::profile(Profile::Pattern);
        assert!(pattern.compile().unwrap_err().contains("needs pattern"));
        pattern.pattern = Some("(".into());
        assert!(
            pattern
                .compile()
                .unwrap_err()
                .contains("not a valid regular expression")
        );
        pattern.pattern = Some("(?<v>.*)".into());
        assert!(
            pattern
                .compile()
                .unwrap_err()
                .contains("no capture named value")
        );
        let mut mt = LineOptions::profile(Profile::MtSics);
        mt.max_len = 1;
        assert!(mt.compile().unwrap_err().contains("max_len"));
    }
}
