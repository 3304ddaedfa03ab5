//! Where things are in a configuration file, and what a technician most
//! likely meant.
//!
//! serde sees values, not lines; toml's errors carry a byte span but no
//! field path, and the checks that run after deserializing carry a field
//! path but no span. [`Spans`] parses the text once more into toml's
//! spanned tree and answers both ways: the field at a span, and the line of
//! a field. [`suggest`] picks the known name closest to a misspelt one.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a field's path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A key of a table.
    Key(String),
    /// An element of an array (`[[instrument]]` number n, from 0).
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Seg {
        Seg::Key(key.to_owned())
    }
}

#[derive(Debug)]
struct Entry {
    path: Vec<Seg>,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// The spans of every key and value of one configuration text.
#[derive(Debug, Default)]
pub struct Spans {
    line_starts: Vec<usize>,
    entries: Vec<Entry>,
    /// The `id` of each `[[instrument]]`, to name instruments in messages.
    instrument_ids: Vec<Option<String>>,
}

impl Spans {
    /// Indexes `text`; what does not parse is left out (lines still count).
    pub fn new(text: &str) -> Spans {
        let mut spans = Spans {
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            ..Spans::default()
        };
        let (root, _errors) = DeTable::parse_recoverable(text);
        spans.walk_table(root.get_ref(), &mut Vec::new());
        if let Some((_, instruments)) = root
            .get_ref()
            .iter()
            .find(|(k, _)| k.get_ref() == "instrument")
            && let Some(array) = instruments.get_ref().as_array()
        {
            spans.instrument_ids = array
                .iter()
                .map(|element| {
                    let table = element.get_ref().as_table()?;
                    let (_, id) = table.iter().find(|(k, _)| k.get_ref() == "id")?;
                    id.get_ref().as_str().map(str::to_owned)
                })
                .collect();
        }
        spans
    }

    fn walk_table(&mut self, table: &DeTable<'_>, path: &mut Vec<Seg>) {
        for (key, value) in table.iter() {
            path.push(Seg::Key(key.get_ref().to_string()));
            self.entries.push(Entry {
                path: path.clone(),
                key: Some(key.span()),
                value: value.span(),
            });
            self.walk_value(value.get_ref(), path);
            path.pop();
        }
    }

    fn walk_value(&mut self, value: &DeValue<'_>, path: &mut Vec<Seg>) {
        if let Some(table) = value.as_table() {
            self.walk_table(table, path);
        } else if let Some(array) = value.as_array() {
            for (i, element) in array.iter().enumerate() {
                path.push(Seg::Index(i));
                self.entries.push(Entry {
                    path: path.clone(),
                    key: None,
                    value: element.span(),
                });
                self.walk_value(element.get_ref(), path);
                path.pop();
            }
        }
    }

    /// The line (from 1) of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts
            .partition_point(|&start| start <= offset)
            .max(1)
    }

    /// The path of the key or value at `span`: the deepest entry whose key
    /// or value is exactly there, or else the deepest one containing it.
    pub fn path_at(&self, span: &Range<usize>) -> Vec<Seg> {
        let exact = self
            .entries
            .iter()
            .filter(|e| e.key.as_ref() == Some(span) || &e.value == span)
            .max_by_key(|e| e.path.len());
        let within = || {
            self.entries
                .iter()
                .filter(|e| e.value.start <= span.start && span.end <= e.value.end)
                .max_by_key(|e| e.path.len())
        };
        exact
            .or_else(within)
            .map(|e| e.path.clone())
            .unwrap_or_default()
    }

    /// The line of `path`, or of the nearest table above it that is in
    /// the file (a missing key is reported where its table is); line 1
    /// when nothing of it is there.
    pub fn line(&self, path: &[Seg]) -> usize {
        for len in (1..=path.len()).rev() {
            if let Some(entry) = self.entries.iter().find(|e| e.path == path[..len]) {
                let at = entry.key.as_ref().map_or(entry.value.start, |k| k.start);
                return self.line_of(at);
            }
        }
        1
    }

    /// A field path as messages write it: `store.path`, or
    /// `instrument "balance-1": serial.baud` inside an instrument.
    pub fn name(&self, path: &[Seg]) -> String {
        let dotted = |segs: &[Seg]| {
            segs.iter()
                .map(|s| match s {
                    Seg::Key(k) => k.clone(),
                    Seg::Index(i) => format!("[{i}]"),
                })
                .collect::<Vec<_>>()
                .join(".")
                .replace(".[", "[")
        };
        if let [Seg::Key(first), Seg::Index(i), rest @ ..] = path
            && first == "instrument"
        {
            let who = match self.instrument_ids.get(*i).cloned().flatten() {
                Some(id) => format!("instrument {id:?}"),
                None => format!("instrument #{}", i + 1),
            };
            return if rest.is_empty() {
                who
            } else {
                format!("{who}: {}", dotted(rest))
            };
        }
        if path.is_empty() {
            return "(top level)".into();
        }
        dotted(path)
    }

    /// Whether the file has `path`.
    pub fn contains(&self, path: &[Seg]) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }

    /// The index of the `[[instrument]]` with this id.
    pub fn instrument_index(&self, id: &str) -> Option<usize> {
        self.instrument_ids
            .iter()
            .position(|known| known.as_deref() == Some(id))
    }
}

/// The name in `known` closest to `given`, if one is close enough to be
/// what was meant (a typo, a missing or swapped letter, `baud_rate` for
/// `baud`).
pub fn suggest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|&k| (k, strsim::jaro_winkler(&given_lower, k)))
        .filter(|&(k, score)| {
            score >= 0.8
                || strsim::damerau_levenshtein(&given_lower, k) <= 1
                || (k.len() >= 3 && given_lower.starts_with(k))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| k)
}

/// The names between backticks in a serde message (`expected `a`, `b``).
pub fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[store]\npth = 'x'\n\n[[instrument]]\nid = \"a\"\n\n\
                        [[instrument]]\nid = \"b\"\n[instrument.serial]\nbaud = 'fast'\n";

    #[test]
    fn a_span_names_its_field_and_line() {
        let spans = Spans::new(TEXT);
        let at = TEXT.find("'fast'").unwrap();
        let path = spans.path_at(&(at..at + 6));
        assert_eq!(spans.name(&path), "instrument \"b\": serial.baud");
        assert_eq!(spans.line(&path), 10);
        let at = TEXT.find("pth").unwrap();
        assert_eq!(spans.name(&spans.path_at(&(at..at + 3))), "store.pth");
    }

    #[test]
    fn a_missing_key_is_reported_at_its_table() {
        let spans = Spans::new(TEXT);
        let path = [Seg::from("instrument"), Seg::Index(1), Seg::from("port")];
        assert_eq!(spans.line(&path), 7);
        assert_eq!(spans.line(&[Seg::from("uplink")]), 1);
        assert_eq!(spans.instrument_index("b"), Some(1));
    }

    #[test]
    fn typos_get_the_closest_known_name() {
        let known = ["path", "max_bytes", "full_policy", "checkpoint_every"];
        assert_eq!(suggest("pth", &known), Some("path"));
        assert_eq!(suggest("max-bytes", &known), Some("max_bytes"));
        assert_eq!(suggest("full_polcy", &known), Some("full_policy"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(suggest("baud_rate", &["baud", "data_bits"]), Some("baud"));
        assert_eq!(suggest("evn", &["none", "even", "odd"]), Some("even"));
    }
}
