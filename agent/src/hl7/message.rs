//! HL7 v2 messages: segments, ORU^R01 results as readings, and the
//! application acknowledgement.
//!
//! A message is segments ended by `CR` (some senders use `LF`), each a
//! name and fields separated by the field separator that `MSH` declares
//! in its fourth byte; `MSH-2` declares the component, repetition, escape
//! and subcomponent separators (usually `^~\&`). Escapes `\F\`, `\S\`,
//! `\T\`, `\R\`, `\E\` stand for the separators. Fields are numbered as
//! in the standard: `MSH-1` is the field separator itself.
//!
//! [`Message::readings`] makes one [`ReadingBody`] per `OBX`:
//!
//! | reading | from |
//! | --- | --- |
//! | `name` | `OBX-3`, trailing empty components left out |
//! | `value` | `OBX-5`, a number when it reads as one |
//! | `unit` | `OBX-6`, first component |
//! | `flags` | `OBX-8` abnormal flags, `status:` `OBX-11`, `qc` or `calibration` from Mindray's `MSH-16` |
//! | `observed` | `OBX-14`, else `OBR-7` |
//! | `sample` | `OBR-2` (placer order number; Mindray's sample barcode), else `OBR-3`, else `PID-3` |
//! | `order` | `OBR-3` (filler order number, the analyzer's own sample id) |
//! | `notes` | `NTE-3` after the `OBX`, or after its `OBR` or `PID` |
//! | `raw` | the `OBX` segment as received, then its `NTE` segments |
//!
//! Mindray analyzers put the result type in `MSH-16` (application
//! acknowledgment type in the standard, whose values are letters):
//! `0` patient sample, `1` calibration, `2` quality control.
//!
//! ```
//! use kouan_agent::hl7::message::{ack, AckCode, Message};
//!
//! let text = b"MSH|^~\\&|BS-480|Lab|||20261203101500||ORU^R01|42|P|2.3.1\r\
//!              OBR|1|S-1|7\rOBX|1|NM|GLU||5.6|mmol/L||N|||F\r";
//! let message = Message::parse(text, encoding_rs::UTF_8)?;
//! assert_eq!(message.control_id(), "42");
//! assert_eq!(message.readings().len(), 1);
//! let reply = ack(Some(&message), AckCode::Accept, None, "20261203101501", encoding_rs::UTF_8);
//! assert!(reply.ends_with(b"MSA|AA|42\r"));
//! # Ok::<(), kouan_agent::hl7::message::ParseError>(())
//! ```

use encoding_rs::Encoding;

use crate::astm::records::unescape_sequences;
use crate::record::{MeasuredValue, Measurement, ReadingBody};

/// Why bytes are not an HL7 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first segment is not `MSH`.
    #[error("the message does not start with an MSH segment")]
    NoHeader,
    /// `MSH` declares no usable separators.
    #[error("MSH declares no usable separators")]
    Separators,
}

/// The separators a message header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    /// Between fields, `|`.
    pub field: char,
    /// Between components, `^`.
    pub component: char,
    /// Between repetitions, `~`.
    pub repeat: char,
    /// Escape, `\`.
    pub escape: char,
    /// Between subcomponents, `&`.
    pub subcomponent: char,
}

impl Separators {
    /// Replaces the escape sequences of the separators; other sequences
    /// (`\X0D\`, `\.br\`) stay as they are.
    pub fn unescape(&self, text: &str) -> String {
        let letters = [
            ('F', self.field),
            ('S', self.component),
            ('T', self.subcomponent),
            ('R', self.repeat),
            ('E', self.escape),
        ];
        unescape_sequences(text, self.escape, &letters)
    }

    /// Escapes the separators in `text`, for fields kouan writes.
    pub fn escape(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let letter = match c {
                c if c == self.field => 'F',
                c if c == self.component => 'S',
                c if c == self.subcomponent => 'T',
                c if c == self.repeat => 'R',
                c if c == self.escape => 'E',
                c => {
                    out.push(c);
                    continue;
                }
            };
            out.extend([self.escape, letter, self.escape]);
        }
        out
    }
}

/// One segment: its name, bytes and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `MSH`, `PID`, `OBR`, `OBX`, `NTE`, ...
    pub name: String,
    /// The segment's bytes as received, without its ending.
    pub line: Vec<u8>,
    /// `fields[n]` is field n, still escaped; for `MSH`, `fields[1]` is
    /// the field separator.
    fields: Vec<String>,
}

impl Segment {
    /// Field `n` as the standard numbers it, still escaped; empty when
    /// absent.
    pub fn field(&self, n: usize) -> &str {
        self.fields.get(n).map_or("", String::as_str)
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The segments, `MSH` first.
    pub segments: Vec<Segment>,
    /// The separators `MSH` declared.
    pub separators: Separators,
    /// The bytes after `MSH`: what a resend repeats exactly even when it
    /// carries a new `MSH-7` time.
    pub content: Vec<u8>,
}

/// The codes of an application acknowledgement (`MSA-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA`: accepted, the results are durable.
    Accept,
    /// `AE`: an error; the sender may send the message again.
    Error,
}

impl Message {
    /// Splits `bytes` into segments, decoding each with `encoding`.
    pub fn parse(bytes: &[u8], encoding: &'static Encoding) -> Result<Message, ParseError> {
        let mut lines = bytes
            .split(|&b| b == b'\r' || b == b'\n')
            .filter(|line| !line.is_empty());
        let header = lines.next().ok_or(ParseError::NoHeader)?;
        if !header.starts_with(b"MSH") {
            return Err(ParseError::NoHeader);
        }
        let (text, _, _) = encoding.decode(header);
        let separators = separators(&text).ok_or(ParseError::Separators)?;
        // MSH-1 is the separator itself, MSH-2 the encoding characters.
        let mut fields = vec!["MSH".to_owned(), separators.field.to_string()];
        fields.extend(text[4..].split(separators.field).map(str::to_owned));
        let leading = bytes
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let content_start = (leading + header.len()).min(bytes.len());
        let mut segments = vec![Segment {
            name: "MSH".into(),
            line: header.to_vec(),
            fields,
        }];

        for line in lines {
            let (text, _, _) = encoding.decode(line);
            let fields: Vec<String> = text.split(separators.field).map(str::to_owned).collect();
            segments.push(Segment {
                name: fields.first().cloned().unwrap_or_default(),
                line: line.to_vec(),
                fields,
            });
        }
        Ok(Message {
            segments,
            separators,
            content: bytes[content_start..].to_vec(),
        })
    }

    fn header(&self) -> &Segment {
        &self.segments[0]
    }

    /// `MSH-10`, the id the acknowledgement names.
    pub fn control_id(&self) -> String {
        self.separators.unescape(self.header().field(10))
    }

    /// `MSH-9`: message code and trigger event, e.g. `("ORU", "R01")`.
    pub fn message_type(&self) -> (String, String) {
        let field = self.header().field(9);
        let mut parts = field.split(self.separators.component);
        let code = parts.next().unwrap_or("");
        let event = parts.next().unwrap_or("");
        (
            self.separators.unescape(code),
            self.separators.unescape(event),
        )
    }

    /// One reading per `OBX`.
    pub fn readings(&self) -> Vec<ReadingBody> {
        let s = &self.separators;
        let kind_flag = match self.header().field(16) {
            "1" => Some("calibration"),
            "2" => Some("qc"),
            _ => None,
        };
        let mut readings: Vec<ReadingBody> = Vec::new();
        let mut patient: Option<String> = None;
        let mut order = Order::default();
        let mut patient_notes: Vec<String> = Vec::new();
        let mut order_notes: Vec<String> = Vec::new();
        let mut last = Last::Other;

        for segment in &self.segments[1..] {
            match segment.name.as_str() {
                "PID" => {
                    patient = self.first_component(segment.field(3));
                    order = Order::default();
                    patient_notes.clear();
                    order_notes.clear();
                    last = Last::Patient;
                }
                "OBR" => {
                    order = Order {
                        placer: self.first_component(segment.field(2)),
                        filler: self.first_component(segment.field(3)),
                        observed: self.first_component(segment.field(7)),
                    };
                    order_notes.clear();
                    last = Last::Order;
                }
                "OBX" => {
                    let mut body = self.reading(segment, &order, kind_flag);
                    body.sample = order
                        .placer
                        .clone()
                        .or_else(|| order.filler.clone())
                        .or_else(|| patient.clone());
                    body.notes = patient_notes.clone();
                    body.notes.extend(order_notes.iter().cloned());
                    readings.push(body);
                    last = Last::Result;
                }
                "NTE" => {
                    let note = s.unescape(segment.field(3));
                    match (last, readings.last_mut()) {
                        (Last::Result, Some(reading)) => {
                            reading.notes.push(note);
                            reading.raw.push(b'\r');
                            reading.raw.extend_from_slice(&segment.line);
                        }
                        (Last::Patient, _) => patient_notes.push(note),
                        (Last::Order, _) => order_notes.push(note),
                        _ => {}
                    }
                }
                _ => last = Last::Other,
            }
        }
        readings
    }

    fn reading(&self, segment: &Segment, order: &Order, kind_flag: Option<&str>) -> ReadingBody {
        let s = &self.separators;
        let name = segment.field(3).trim_end_matches(s.component);
        let value = s.unescape(segment.field(5));
        let number = value.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let mut flags: Vec<String> = segment
            .field(8)
            .split([s.repeat, s.component])
            .map(|flag| s.unescape(flag.trim()))
            .filter(|flag| !flag.is_empty())
            .collect();
        let status = s.unescape(segment.field(11));
        if !status.is_empty() {
            flags.push(format!("status:{status}"));
        }
        flags.extend(kind_flag.map(str::to_owned));

        let measurement = Measurement {
            name: s.unescape(name),
            value: number.map_or(MeasuredValue::Text(value), MeasuredValue::Number),
            unit: self.first_component(segment.field(6)),
            flags,
            observed: self
                .first_component(segment.field(14))
                .or_else(|| order.observed.clone()),
        };
        let mut body = ReadingBody::new(vec![measurement], segment.line.clone());
        body.order = order.filler.clone();
        body
    }

    fn first_component(&self, field: &str) -> Option<String> {
        let s = &self.separators;
        let first = field.split([s.repeat, s.component]).next().unwrap_or("");
        let text = s.unescape(first.trim());
        (!text.is_empty()).then_some(text)
    }
}

/// Which segment a note follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Other,
    Patient,
    Order,
    Result,
}

/// The `OBR` that results belong to.
#[derive(Debug, Default)]
struct Order {
    placer: Option<String>,
    filler: Option<String>,
    observed: Option<String>,
}

/// The separators of an `MSH` line: its fourth character, then `MSH-2`.
fn separators(header: &str) -> Option<Separators> {
    let mut chars = header.get(3..)?.chars();
    let field = chars.next()?;
    let set = [field, chars.next()?, chars.next()?, chars.next()?];
    // The subcomponent separator is missing in some old messages.
    let subcomponent = chars.next().filter(|c| *c != field).unwrap_or('&');
    let all = [set[0], set[1], set[2], set[3], subcomponent];
    let distinct = (0..5).all(|i| !all[i + 1..].contains(&all[i]));
    if !(distinct && all.iter().all(char::is_ascii_punctuation)) {
        return None;
    }
    Some(Separators {
        field: set[0],
        component: set[1],
        repeat: set[2],
        escape: set[3],
        subcomponent,
    })
}

/// An `ACK` to `message`: `MSA-1` is `code`, `MSA-2` the message's control
/// id, `MSA-3` the `reason` for an error. The header swaps the sender and
/// receiver of `message` and keeps its separators, processing id and
/// version; without a message (it could not be parsed) the defaults are
/// used. `now` is `MSH-7`, e.g. `20261203101501`.
pub fn ack(
    message: Option<&Message>,
    code: AckCode,
    reason: Option<&str>,
    now: &str,
    encoding: &'static Encoding,
) -> Vec<u8> {
    let default = Separators {
        field: '|',
        component: '^',
        repeat: '~',
        escape: '\\',
        subcomponent: '&',
    };
    let s = message.map_or(default, |m| m.separators);
    let field = |n: usize| message.map_or("", |m| m.header().field(n));
    let event = message.map_or(String::new(), |m| m.message_type().1);
    let control = field(10);
    let f = s.field;

    let mut header = format!(
        "MSH{f}{c}{r}{e}{t}{f}{app}{f}{facility}{f}{to_app}{f}{to_facility}{f}{now}{f}{f}ACK",
        c = s.component,
        r = s.repeat,
        e = s.escape,
        t = s.subcomponent,
        app = field(5),
        facility = field(6),
        to_app = field(3),
        to_facility = field(4),
    );
    if !event.is_empty() {
        header.push(s.component);
        header.push_str(&s.escape(&event));
    }
    let processing = if field(11).is_empty() { "P" } else { field(11) };
    let version = if field(12).is_empty() {
        "2.3.1"
    } else {
        field(12)
    };
    header.push_str(&format!("{f}{control}{f}{processing}{f}{version}\r"));

    let code = match code {
        AckCode::Accept => "AA",
        AckCode::Error => "AE",
    };
    let mut msa = format!("MSA{f}{code}{f}{control}");
    if let Some(reason) = reason {
        msa.push(f);
        msa.push_str(&s.escape(reason));
    }
    msa.push('\r');

    header.push_str(&msa);
    let (bytes, _, _) = encoding.encode(&header);
    bytes.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINDRAY_QC: &[u8] =
        b"MSH|^~\\&|Mindray|BS-480|||20261203101500||ORU^R01|7|P|2.3.1||||2||ASCII|||\r\
        PID|1||PAT-9\r\
        OBR|1|BC-123|17|^|N||20261203100000||||||||serum\r\
        NTE|1||order comment\r\
        OBX|1|NM|1^GLU^99MRC||5.6|mmol/L^^UCUM|3.9-6.1|H~A|||F|||20261203101000\r\
        NTE|1||lipemic\r\
        OBX|2|ST|2^HBsAg||Negative||||||F\r";

    #[test]
    fn oru_results_become_readings() {
        let message = Message::parse(MINDRAY_QC, encoding_rs::UTF_8).unwrap();
        assert_eq!(message.control_id(), "7");
        assert_eq!(message.message_type(), ("ORU".into(), "R01".into()));
        let readings = message.readings();
        assert_eq!(readings.len(), 2);

        let glu = &readings[0];
        let value = &glu.values[0];
        assert_eq!(value.name, "1^GLU^99MRC");
        assert_eq!(value.value, MeasuredValue::Number(5.6));
        assert_eq!(value.unit.as_deref(), Some("mmol/L"));
        assert_eq!(value.flags, ["H", "A", "status:F", "qc"]);
        assert_eq!(value.observed.as_deref(), Some("20261203101000"));
        assert_eq!(glu.sample.as_deref(), Some("BC-123"));
        assert_eq!(glu.order.as_deref(), Some("17"));
        assert_eq!(glu.notes, ["order comment", "lipemic"]);
        assert_eq!(
            glu.raw.as_slice(),
            b"OBX|1|NM|1^GLU^99MRC||5.6|mmol/L^^UCUM|3.9-6.1|H~A|||F|||20261203101000\rNTE|1||lipemic"
        );

        let hbsag = &readings[1];
        assert_eq!(hbsag.values[0].name, "2^HBsAg");
        assert_eq!(
            hbsag.values[0].value,
            MeasuredValue::Text("Negative".into())
        );
        assert_eq!(hbsag.values[0].observed.as_deref(), Some("20261203100000"));
        assert_eq!(hbsag.notes, ["order comment"]);
    }

    #[test]
    fn mindray_result_type_zero_is_a_patient_sample() {
        let text = b"MSH|^~\\&|M|||||ORU^R01|1|P|2.3.1||||0\rOBX|1|NM|K||4.1\r";
        let readings = Message::parse(text, encoding_rs::UTF_8).unwrap().readings();
        assert!(readings[0].values[0].flags.is_empty());
    }

    #[test]
    fn lf_segments_and_escapes() {
        let text = b"MSH|^~\\&|A||||||ORU^R01|X\\F\\1|P|2.5\nOBX|1|ST|T\\S\\1||a\\T\\b\\E\\\n";
        let message = Message::parse(text, encoding_rs::UTF_8).unwrap();
        assert_eq!(message.control_id(), "X|1");
        let reading = &message.readings()[0];
        assert_eq!(reading.values[0].name, "T^1");
        assert_eq!(reading.values[0].value, MeasuredValue::Text("a&b\\".into()));
    }

    #[test]
    fn not_a_message() {
        assert_eq!(
            Message::parse(b"PID|1\r", encoding_rs::UTF_8),
            Err(ParseError::NoHeader)
        );
        assert_eq!(
            Message::parse(b"", encoding_rs::UTF_8),
            Err(ParseError::NoHeader)
        );
        assert_eq!(
            Message::parse(b"MSH|^^\\&\r", encoding_rs::UTF_8),
            Err(ParseError::Separators)
        );
        assert_eq!(
            Message::parse(b"MSH", encoding_rs::UTF_8),
            Err(ParseError::Separators)
        );
    }

    #[test]
    fn content_leaves_out_the_header() {
        let a = Message::parse(b"MSH|^~\\&|A||||1||ORU^R01|5\rOBX|1\r", encoding_rs::UTF_8);
        let b = Message::parse(b"MSH|^~\\&|A||||2||ORU^R01|5\rOBX|1\r", encoding_rs::UTF_8);
        assert_eq!(a.unwrap().content, b.unwrap().content);
    }

    #[test]
    fn ack_swaps_sender_and_receiver_and_names_the_control_id() {
        let message = Message::parse(MINDRAY_QC, encoding_rs::UTF_8).unwrap();
        let reply = ack(
            Some(&message),
            AckCode::Error,
            Some("store full|retry"),
            "20261203101501",
            encoding_rs::UTF_8,
        );
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            "MSH|^~\\&|||Mindray|BS-480|20261203101501||ACK^R01|7|P|2.3.1\r\
             MSA|AE|7|store full\\F\\retry\r"
        );
        let unparsed = ack(
            None,
            AckCode::Error,
            Some("no MSH"),
            "1",
            encoding_rs::UTF_8,
        );
        assert_eq!(
            String::from_utf8(unparsed).unwrap(),
            "MSH|^~\\&|||||1||ACK||P|2.3.1\rMSA|AE||no MSH\r"
        );
    }

    #[test]
    fn gbk_text_is_decoded_after_splitting_segments() {
        let (note, _, _) = encoding_rs::GBK.encode("亅乗 溶血");
        let mut text = b"MSH|^~\\&|M|||||ORU^R01|1|P|2.3.1\rOBX|1|NM|GLU||5.6\rNTE|1||".to_vec();
        text.extend_from_slice(&note);
        text.push(b'\r');
        let readings = Message::parse(&text, encoding_rs::GBK).unwrap().readings();
        assert_eq!(readings[0].notes, ["亅乗 溶血"]);
    }
}
