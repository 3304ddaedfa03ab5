//! ASTM E1394 (CLSI LIS2-A2) records: the text a [`super::link::Receiver`]
//! reassembles, turned into readings.
//!
//! A message is a sequence of records, each ended by `CR`: a header `H`,
//! then patients `P`, orders `O`, results `R`, comments `C`, requests `Q`,
//! manufacturer records `M`, and a terminator `L`. Fields are separated by
//! the field delimiter, repetitions within a field by the repeat
//! delimiter, components by the component delimiter. The header declares
//! all four in its first characters (E1394 7.1.2): `H|\^&` is the usual
//! set, some analyzers use `H|@^\`. Delimiters inside text are escaped
//! with the escape character: `&F&`, `&S&`, `&R&`, `&E&` (E1394 6.6).
//!
//! Text is decoded with the analyzer's code page ([`Message::parse`]) line
//! by line, before it is split. Splitting the bytes first would break
//! GBK text: its trail bytes include `|` (0x7C), `\` (0x5C), `^` (0x5E)
//! and `@` (0x40). `CR` never is one, so lines can be cut on bytes.
//!
//! [`Message::readings`] makes one [`ReadingBody`] per `R` record. Its
//! `raw` is the result record's bytes as received, followed by those of
//! the comment and manufacturer records attached to it; `sample` is the
//! order's specimen ID (`O` field 3), or its instrument specimen ID (field
//! 4), or the patient's ID (`P` field 3); `order` is the instrument
//! specimen ID, the analyzer's own id of the request. Comments after a
//! patient or order record go to every result under it.
//!
//! ```
//! use kouan_agent::astm::records::Message;
//! use kouan_agent::record::MeasuredValue;
//!
//! let text = b"H|\\^&\rO|1|SID-42|R7||\rR|1|^^^GLU|5.6|mmol/L||H||F||||20261203101500\rL|1|N\r";
//! let message = Message::parse(text, encoding_rs::UTF_8);
//! let readings = message.readings().readings;
//! let value = &readings[0].values[0];
//! assert_eq!(value.name, "GLU");
//! assert_eq!(value.value, MeasuredValue::Number(5.6));
//! assert_eq!(value.flags, ["H", "status:F"]);
//! assert_eq!(readings[0].sample.as_deref(), Some("SID-42"));
//! assert_eq!(readings[0].order.as_deref(), Some("R7"));
//! ```

use encoding_rs::Encoding;

use crate::record::{MeasuredValue, Measurement, ReadingBody};

/// The four delimiters a header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Between fields, `|` by default.
    pub field: char,
    /// Between repetitions of a field, `\` by default.
    pub repeat: char,
    /// Between components of a field, `^` by default.
    pub component: char,
    /// Starts and ends an escape sequence, `&` by default.
    pub escape: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: '|',
            repeat: '\\',
            component: '^',
            escape: '&',
        }
    }
}

impl Delimiters {
    /// The delimiters a header record declares: the four characters after
    /// its `H`. `None` if the line is no header, or its delimiters are not
    /// four distinct ASCII punctuation characters.
    pub fn from_header(line: &str) -> Option<Delimiters> {
        let mut chars = line.strip_prefix('H')?.chars();
        let set = [chars.next()?, chars.next()?, chars.next()?, chars.next()?];
        let punctuation = set.iter().all(char::is_ascii_punctuation);
        let distinct = (0..4).all(|i| !set[i + 1..].contains(&set[i]));
        if !(punctuation && distinct) {
            return None;
        }
        Some(Delimiters {
            field: set[0],
            repeat: set[1],
            component: set[2],
            escape: set[3],
        })
    }

    /// Replaces the escape sequences of the delimiters by the delimiters;
    /// other sequences (`&Xhh&`, highlighting) stay as they are.
    pub fn unescape(&self, text: &str) -> String {
        let letters = [
            ('F', self.field),
            ('S', self.component),
            ('R', self.repeat),
            ('E', self.escape),
        ];
        unescape_sequences(text, self.escape, &letters)
    }
}

/// Replaces each sequence `escape`, letter, `escape` by the character
/// `letters` pairs with the letter; other sequences stay as they are.
/// E1394 took its escapes from HL7 v2, whose parser uses this too.
pub fn unescape_sequences(text: &str, escape: char, letters: &[(char, char)]) -> String {
    if !text.contains(escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + escape.len_utf8()..];
        let mut seq = after.chars();
        let replaced = match (seq.next(), seq.next()) {
            (Some(letter), Some(end)) if end == escape => letters
                .iter()
                .find(|(l, _)| *l == letter)
                .map(|&(l, c)| (c, l.len_utf8())),
            _ => None,
        };
        match replaced {
            Some((c, letter_len)) => {
                out.push(c);
                rest = &after[letter_len + escape.len_utf8()..];
            }
            None => {
                out.push(escape);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One record: its type letter, its bytes and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record type: `H`, `P`, `O`, `R`, `C`, `Q`, `M`, `L`, or
    /// another character for records this module does not know.
    pub kind: char,
    /// The record's bytes as received, without the ending `CR`.
    pub line: Vec<u8>,
    /// The decoded fields, still escaped; `fields[0]` is the type.
    fields: Vec<String>,
}

impl Record {
    /// Field `n`, numbered as in E1394 (the record type is field 1),
    /// still escaped; empty when absent.
    pub fn field(&self, n: usize) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .map_or("", String::as_str)
    }
}

/// A decoded message: its records and the delimiters of its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The records in order, empty lines left out.
    pub records: Vec<Record>,
    /// The delimiters the last header declared, or the defaults.
    pub delimiters: Delimiters,
}

/// What [`Message::readings`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Results {
    /// One reading per result record, in order.
    pub readings: Vec<ReadingBody>,
    /// Request records (`Q`): the analyzer asked the host for orders,
    /// which kouan does not send.
    pub queries: usize,
    /// Records of a type E1394 does not define, left out.
    pub unknown: usize,
    /// The terminator's code (`L` field 3) when it is not `N` (normal).
    pub termination: Option<String>,
}

/// The patient and order a result belongs to, and their comments.
#[derive(Debug, Default)]
struct Context {
    patient: Option<String>,
    specimen: Option<String>,
    instrument_specimen: Option<String>,
    patient_notes: Vec<String>,
    order_notes: Vec<String>,
}

/// Which record a comment follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Other,
    Patient,
    Order,
    Result,
}

impl Message {
    /// Splits `text` into records and decodes each with `encoding`.
    /// Never fails: bytes the code page cannot decode become U+FFFD in the
    /// values, and `raw` keeps them as they came.
    pub fn parse(text: &[u8], encoding: &'static Encoding) -> Message {
        let mut delimiters = Delimiters::default();
        let mut records = Vec::new();
        for line in text.split(|&b| b == b'\r') {
            // LF-only analyzers and CR LF inside frames leave LFs at the
            // edges of records.
            let line = line.trim_ascii_start();
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let Some(&first) = line.first() else {
                continue;
            };
            let (decoded, _, _) = encoding.decode(line);
            let kind = char::from(first).to_ascii_uppercase();
            let fields = if kind == 'H' {
                delimiters = Delimiters::from_header(&decoded).unwrap_or_default();
                header_fields(&decoded, delimiters.field)
            } else {
                decoded.split(delimiters.field).map(str::to_owned).collect()
            };
            records.push(Record {
                kind,
                line: line.to_vec(),
                fields,
            });
        }
        Message {
            records,
            delimiters,
        }
    }

    /// The readings of the message: one per `R` record.
    pub fn readings(&self) -> Results {
        let mut results = Results::default();
        let mut context = Context::default();
        let mut last = Last::Other;
        for record in &self.records {
            match record.kind {
                'H' => {
                    context = Context::default();
                    last = Last::Other;
                }
                'P' => {
                    context = Context {
                        patient: self.first_component(record.field(3)),
                        ..Context::default()
                    };
                    last = Last::Patient;
                }
                'O' => {
                    context.specimen = self.first_component(record.field(3));
                    context.instrument_specimen = self.first_component(record.field(4));
                    context.order_notes.clear();
                    last = Last::Order;
                }
                'R' => {
                    results.readings.push(self.reading(record, &context));
                    last = Last::Result;
                }
                'C' | 'M' => {
                    let note = self.note(record);
                    match (last, results.readings.last_mut()) {
                        (Last::Result, Some(reading)) => {
                            reading.notes.push(note);
                            reading.raw.push(b'\r');
                            reading.raw.extend_from_slice(&record.line);
                        }
                        (Last::Patient, _) => context.patient_notes.push(note),
                        (Last::Order, _) => context.order_notes.push(note),
                        _ => {}
                    }
                }
                'Q' => results.queries += 1,
                'L' => {
                    let code = self.delimiters.unescape(record.field(3));
                    if !code.is_empty() && code != "N" {
                        results.termination = Some(code);
                    }
                    last = Last::Other;
                }
                _ => results.unknown += 1,
            }
        }
        results
    }

    fn reading(&self, record: &Record, context: &Context) -> ReadingBody {
        let d = &self.delimiters;
        // The universal test ID (E1394 10.1.3): universal code, name and
        // type, then the manufacturer's local code (`^^^GLU`). Empty
        // leading and trailing components say nothing.
        let test = record.field(3).trim_matches(d.component);
        let value = d.unescape(record.field(4));
        let number = value.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let mut flags = self.repeats(record.field(7));
        let status = d.unescape(record.field(9));
        if !status.is_empty() {
            flags.push(format!("status:{status}"));
        }
        // Completed (field 13), else started (field 12).
        let observed = [13, 12]
            .iter()
            .map(|&n| d.unescape(record.field(n)))
            .find(|t| !t.is_empty());
        let unit = d.unescape(record.field(5));

        let measurement = Measurement {
            name: d.unescape(test),
            value: number.map_or(MeasuredValue::Text(value), MeasuredValue::Number),
            unit: (!unit.is_empty()).then_some(unit),
            flags,
            observed,
        };
        let mut body = ReadingBody::new(vec![measurement], record.line.clone());
        body.sample = context
            .specimen
            .clone()
            .or_else(|| context.instrument_specimen.clone())
            .or_else(|| context.patient.clone());
        body.order = context.instrument_specimen.clone();
        body.notes = context.patient_notes.clone();
        body.notes.extend(context.order_notes.iter().cloned());
        body
    }

    /// A comment's text (`C` field 4, components joined by spaces), or a
    /// manufacturer record whole.
    fn note(&self, record: &Record) -> String {
        let d = &self.delimiters;
        if record.kind != 'C' {
            return d.unescape(&record.fields.join(&d.field.to_string()));
        }
        let parts: Vec<String> = record
            .field(4)
            .split([d.component, d.repeat])
            .map(|part| d.unescape(part.trim()))
            .filter(|part| !part.is_empty())
            .collect();
        parts.join(" ")
    }

    /// The first component of a field's first repetition, unescaped;
    /// `None` when empty.
    fn first_component(&self, field: &str) -> Option<String> {
        let d = &self.delimiters;
        let first = field.split([d.repeat, d.component]).next().unwrap_or("");
        let text = d.unescape(first.trim());
        (!text.is_empty()).then_some(text)
    }

    /// The non-empty repetitions (and components) of a field, unescaped.
    fn repeats(&self, field: &str) -> Vec<String> {
        let d = &self.delimiters;
        field
            .split([d.repeat, d.component])
            .map(|part| d.unescape(part.trim()))
            .filter(|part| !part.is_empty())
            .collect()
    }
}

/// A header's fields: the type, the delimiter definition (neither split
/// nor unescaped), then the rest split by the field delimiter.
fn header_fields(line: &str, field: char) -> Vec<String> {
    let rest = line.get(1 + field.len_utf8()..).unwrap_or("");
    let mut fields = vec!["H".to_owned()];
    match rest.split_once(field) {
        Some((definition, tail)) => {
            fields.push(definition.to_owned());
            fields.extend(tail.split(field).map(str::to_owned));
        }
        None => fields.push(rest.to_owned()),
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(text: &[u8]) -> Results {
        Message::parse(text, encoding_rs::UTF_8).readings()
    }

    #[test]
    fn header_declares_the_delimiters() {
        assert_eq!(
            Delimiters::from_header("H|\\^&|||"),
            Some(Delimiters::default())
        );
        let other = Delimiters::from_header("H|@^\\").unwrap();
        assert_eq!(
            (other.repeat, other.component, other.escape),
            ('@', '^', '\\')
        );
        assert_eq!(Delimiters::from_header("H||^&"), None);
        assert_eq!(Delimiters::from_header("H|\\^"), None);
        assert_eq!(Delimiters::from_header("P|1"), None);
    }

    #[test]
    fn header_fields_keep_the_delimiter_definition_whole() {
        let message = Message::parse(b"H|\\^&|||LIAISONXL|||||LABEDV||P|1\r", encoding_rs::UTF_8);
        let header = &message.records[0];
        assert_eq!(header.field(2), "\\^&");
        assert_eq!(header.field(5), "LIAISONXL");
        assert_eq!(header.field(12), "P");
    }

    #[test]
    fn escapes_are_replaced_by_the_declared_delimiters() {
        let d = Delimiters::default();
        assert_eq!(d.unescape("a&F&b&S&c&R&d&E&e"), "a|b^c\\d&e");
        assert_eq!(d.unescape("&X0D&&"), "&X0D&&");
        assert_eq!(d.unescape("&F"), "&F");
        let other = Delimiters::from_header("H!@~$").unwrap();
        assert_eq!(other.unescape("1$F$2$E$"), "1!2$");
    }

    #[test]
    fn a_full_message_gives_one_reading_per_result() {
        let text = b"H|\\^&|||LIAISONXL|||||LABEDV||P|1\r\
            P|1|PID-7||Wang^Li\r\
            C|1|L|fasting|G\r\
            O|1|SID-42^7^3|R-88|^^^GLU\\^^^CHOL|R\r\
            R|1|^^^GLU|5.6|mmol/L|3.9-6.1|N||F||||20261203101500\r\
            C|1|I|hemolysed^slightly|G\r\
            R|2|^^^CHOL|<0.5|mmol/L||L\\A||C|||20261203101000|\r\
            L|1|N\r";
        let results = readings(text);
        assert_eq!(results.readings.len(), 2);

        let glu = &results.readings[0];
        assert_eq!(glu.values[0].name, "GLU");
        assert_eq!(glu.values[0].value, MeasuredValue::Number(5.6));
        assert_eq!(glu.values[0].unit.as_deref(), Some("mmol/L"));
        assert_eq!(glu.values[0].flags, ["N", "status:F"]);
        assert_eq!(glu.values[0].observed.as_deref(), Some("20261203101500"));
        assert_eq!(glu.sample.as_deref(), Some("SID-42"));
        assert_eq!(glu.order.as_deref(), Some("R-88"));
        assert_eq!(glu.notes, ["fasting", "hemolysed slightly"]);
        assert_eq!(
            glu.raw.as_slice(),
            b"R|1|^^^GLU|5.6|mmol/L|3.9-6.1|N||F||||20261203101500\rC|1|I|hemolysed^slightly|G"
        );

        let chol = &results.readings[1];
        assert_eq!(chol.values[0].value, MeasuredValue::Text("<0.5".into()));
        assert_eq!(chol.values[0].flags, ["L", "A", "status:C"]);
        assert_eq!(chol.values[0].observed.as_deref(), Some("20261203101000"));
        assert_eq!(chol.notes, ["fasting"]);
        assert_eq!(results.termination, None);
    }

    #[test]
    fn other_delimiters_and_escapes_in_values() {
        let text = b"H|@^\\\rO|1|S\\F\\1||^^^X\rR|1|^^^T\\S\\1|a\\F\\b@c|\rL|1|Q\r";
        let results = readings(text);
        let reading = &results.readings[0];
        assert_eq!(reading.sample.as_deref(), Some("S|1"));
        assert_eq!(reading.values[0].name, "T^1");
        assert_eq!(reading.values[0].value, MeasuredValue::Text("a|b@c".into()));
        assert_eq!(results.termination.as_deref(), Some("Q"));
    }

    #[test]
    fn sample_falls_back_to_the_instrument_specimen_then_the_patient() {
        let results = readings(b"H|\\^&\rP|1|PAT-1\rR|1|^^^A|1\rO|1||INS-2\rR|2|^^^B|2\rL|1\r");
        assert_eq!(results.readings[0].sample.as_deref(), Some("PAT-1"));
        assert_eq!(results.readings[0].order, None);
        assert_eq!(results.readings[1].sample.as_deref(), Some("INS-2"));
        assert_eq!(results.readings[1].order.as_deref(), Some("INS-2"));
    }

    #[test]
    fn queries_and_unknown_records_are_counted_not_read() {
        let results = readings(b"H|\\^&\rQ|1|^SID-1||ALL\rX|1\rL|1|N\r");
        assert!(results.readings.is_empty());
        assert_eq!((results.queries, results.unknown), (1, 1));
    }

    #[test]
    fn lf_only_records_and_lowercase_types_are_read() {
        let results = readings(b"H|\\^&\n\rr|1|^^^K|4.1|mmol/L\r\nL|1|N\r");
        assert_eq!(results.readings.len(), 1);
        assert_eq!(results.readings[0].values[0].name, "K");
    }

    #[test]
    fn not_a_number_stays_text() {
        for text in ["NaN", "inf", "-", "POS", ""] {
            let line = format!("H|\\^&\rR|1|^^^T|{text}\rL|1\r");
            let reading = &readings(line.as_bytes()).readings[0];
            assert_eq!(reading.values[0].value, MeasuredValue::Text(text.into()));
        }
    }

    /// GBK trail bytes include `|` and `\`; decoding before splitting
    /// keeps such characters whole (亅 is 81 7C in GBK, 乗 is 81 5C).
    #[test]
    fn gbk_text_with_delimiter_trail_bytes_is_split_after_decoding() {
        let (comment, _, unmappable) = encoding_rs::GBK.encode("亅乗 溶血");
        assert!(!unmappable);
        assert!(comment.contains(&b'|') && comment.contains(&b'\\'));
        let (sample, _, _) = encoding_rs::GBK.encode("样本1");
        let mut text = b"H|\\^&\rO|1|".to_vec();
        text.extend_from_slice(&sample);
        text.extend_from_slice(b"\rR|1|^^^GLU|5.6|mmol/L\r");
        let mut comment_record = b"C|1|I|".to_vec();
        comment_record.extend_from_slice(&comment);
        comment_record.extend_from_slice(b"|G");
        text.extend_from_slice(&comment_record);
        text.extend_from_slice(b"\rL|1|N\r");

        let results = Message::parse(&text, encoding_rs::GBK).readings();
        let reading = &results.readings[0];
        assert_eq!(reading.sample.as_deref(), Some("样本1"));
        assert_eq!(reading.notes, ["亅乗 溶血"]);
        let mut raw = b"R|1|^^^GLU|5.6|mmol/L\r".to_vec();
        raw.extend_from_slice(&comment_record);
        assert_eq!(reading.raw.as_slice(), &raw[..]);
    }
}
