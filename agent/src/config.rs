//! The agent's configuration file (TOML).
//!
//! One file says who the agent is, where its keys and store are, and how it
//! reaches the platform. Unknown keys are errors, so a typo never silently
//! falls back to a default; errors name the file, line and field. The
//! reference with every key is `docs/config.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::instrument::{DriverKind, InstrumentConfig};

pub mod spans;
use crate::writer::{FullPolicy, WriterConfig};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who the agent is.
    pub agent: AgentSection,
    /// The signing key.
    pub keys: KeysSection,
    /// The record store.
    pub store: StoreSection,
    /// The MQTT uplink; without it the agent only stores.
    #[serde(default)]
    pub uplink: Option<UplinkSection>,
    /// The instruments, one `[[instrument]]` section each.
    #[serde(default, rename = "instrument")]
    pub instruments: Vec<InstrumentConfig>,
    /// The local status socket (`kouan status`, `kouan tail`).
    #[serde(default)]
    pub status: crate::status::StatusSection,
    /// Limits on measured quantities, one `[[limit]]` section each.
    #[serde(default, rename = "limit")]
    pub limits: Vec<crate::rapid::LimitConfig>,
    /// What an alert does at the point.
    #[serde(default)]
    pub rapid: crate::rapid::RapidSection,
}

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent's id: MQTT client id and username, topic segment, `node` in records.
    pub node: String,
    /// The monitoring point, `site` in records.
    pub site: String,
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// The private key records are signed with (mode 0600).
    pub signing: PathBuf,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite database.
    pub path: PathBuf,
    /// Size cap of the stored records, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// What happens at the cap.
    #[serde(default = "default_policy")]
    pub full_policy: FullPolicy,
    /// A checkpoint record after this many readings.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// A checkpoint record after this many minutes with readings.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: u64,
}

/// How the platform confirms records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Delete records when the platform's signed ack watermark covers them.
    Platform,
    /// Delete records on the broker's PUBACK (weaker: the broker may drop them).
    Broker,
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// Broker host name (as in its certificate) or address.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// TLS settings; required unless `plain_tcp` is set.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Connect without TLS. Only for a broker on the same machine (demos).
    #[serde(default)]
    pub plain_tcp: bool,
    /// When records leave the store.
    #[serde(default = "default_delivery")]
    pub delivery: Delivery,
    /// The platform's public key (SPKI PEM): acks and commands must verify with it.
    #[serde(default)]
    pub platform_key: Option<PathBuf>,
    /// The platform host id: publish only while it says it is online.
    #[serde(default)]
    pub platform_host: Option<String>,
    /// Records sent and not yet acknowledged by the broker.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// MQTT keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Largest MQTT packet the broker accepts; larger records are set aside.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Seconds without a platform ack, while records are outstanding, after
    /// which they are sent again (the broker may have dropped them).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
}

/// `[uplink.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificate(s) that signed the broker's certificate (PEM).
    pub ca: PathBuf,
    /// This agent's client certificate (PEM); its CN is the node id.
    pub cert: PathBuf,
    /// The client certificate's private key (PEM, mode 0600).
    pub key: PathBuf,
}

fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_policy() -> FullPolicy {
    FullPolicy::Backpressure
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_minutes() -> u64 {
    5
}
fn default_port() -> u16 {
    8883
}
fn default_delivery() -> Delivery {
    Delivery::Platform
}
fn default_inflight() -> u16 {
    100
}
fn default_keep_alive() -> u64 {
    20
}
fn default_ack_timeout() -> u64 {
    30
}
fn default_max_packet() -> usize {
    256 * 1024
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A field is unknown, missing, of the wrong type or has a wrong value,
    /// or the file is not TOML.
    #[error("config {path}, line {line}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The line (from 1) of the field, or of its table when it is missing.
        line: usize,
        /// The field, as `section.key` or `instrument "id": key`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` is for messages and relative paths.
    /// Returns the first problem; [`Config::parse_all`] returns them all.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (config, mut problems) = Config::parse_all(text, path);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems.remove(0)),
        }
    }

    /// Parses configuration text and lists every problem found.
    ///
    /// toml stops at the first wrong field; an unknown key is taken out and
    /// the text parsed again, so that every typo is listed at once. Other
    /// errors stop there (what follows may only be their consequence). When
    /// the file parses, every check runs. The config is returned whenever
    /// it parsed, also with problems, so that more can be checked.
    pub fn parse_all(text: &str, path: &Path) -> (Option<Config>, Vec<ConfigError>) {
        let mut text = text.to_owned();
        let mut problems = Vec::new();
        let (config, spans) = loop {
            let spans = spans::Spans::new(&text);
            match toml::from_str::<Config>(&text) {
                Ok(config) => break (config, spans),
                Err(error) => {
                    problems.push(parse_error(&error, &text, &spans, path));
                    let fixed = error
                        .span()
                        .filter(|_| problems.len() < 50)
                        .and_then(|span| without_unknown_key(&text, &spans, &error, span));
                    match fixed {
                        Some(fixed) => text = fixed,
                        None => return (None, problems),
                    }
                }
            }
        };
        let mut config = config;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        problems.extend(config.problems(path, &spans));
        (Some(config), problems)
    }

    /// Relative paths in the file are relative to the file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.keys.signing);
        fix(&mut self.store.path);
        if let Some(socket) = &mut self.status.socket {
            fix(socket);
        }
        if let Some(uplink) = &mut self.uplink {
            if let Some(key) = &mut uplink.platform_key {
                fix(key);
            }
            if let Some(tls) = &mut uplink.tls {
                fix(&mut tls.ca);
                fix(&mut tls.cert);
                fix(&mut tls.key);
            }
        }
    }

    /// Every check serde cannot make, each problem with its line.
    fn problems(&self, path: &Path, spans: &spans::Spans) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut invalid = |field: &'static str, message: String| {
            let segs: Vec<spans::Seg> = field.split('.').map(spans::Seg::from).collect();
            problems.push(ConfigError::Field {
                path: path.to_owned(),
                line: spans.line(&segs),
                field: field.to_owned(),
                message,
            });
        };
        if !is_topic_segment(&self.agent.node) {
            invalid(
                "agent.node",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '-' and '_' (it is an MQTT topic segment)",
                    self.agent.node
                ),
            );
        }
        if self.store.checkpoint_every == 0 {
            invalid("store.checkpoint_every", "must be at least 1".into());
        }
        if let Some(uplink) = &self.uplink {
            if uplink.tls.is_none() && !uplink.plain_tcp {
                invalid(
                    "uplink.tls",
                    "missing: give [uplink.tls] ca, cert and key, or set plain_tcp = true \
                     for a broker on this machine"
                        .into(),
                );
            }
            if uplink.delivery == Delivery::Platform && uplink.platform_key.is_none() {
                invalid(
                    "uplink.platform_key",
                    "missing: delivery = \"platform\" needs the platform's public key to \
                     verify its acks (or set delivery = \"broker\", which is weaker)"
                        .into(),
                );
            }
            if uplink.inflight == 0 {
                invalid("uplink.inflight", "must be at least 1".into());
            }
            if let Some(host) = &uplink.platform_host
                && !is_topic_segment(host)
            {
                invalid(
                    "uplink.platform_host",
                    format!("{host:?} must be 1 to 64 of a-z, 0-9, '-' and '_'"),
                );
            }
        }
        problems.extend(self.instrument_problems(path, spans));
        problems.extend(self.limit_problems(path, spans));
        problems
    }

    /// `[[limit]]` sections: consistent, and naming instruments that exist.
    fn limit_problems(&self, path: &Path, spans: &spans::Spans) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for (index, limit) in self.limits.iter().enumerate() {
            let segs = [spans::Seg::from("limit"), spans::Seg::Index(index)];
            let mut invalid = |message: String| {
                problems.push(ConfigError::Field {
                    path: path.to_owned(),
                    line: spans.line(&segs),
                    field: spans.name(&segs),
                    message,
                })
            };
            if let Err(message) = limit.validate() {
                invalid(message);
            }
            for unknown in limit
                .instruments
                .iter()
                .filter(|i| !self.instruments.iter().any(|c| &c.id == *i))
            {
                invalid(format!("instruments: no [[instrument]] has id {unknown:?}"));
            }
        }
        problems
    }

    fn instrument_problems(&self, path: &Path, spans: &spans::Spans) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        // `field` is what follows `instrument "id": ` (a key, maybe dotted).
        let mut invalid = |index: usize, field: &str, message: String| {
            let mut segs = vec![spans::Seg::from("instrument"), spans::Seg::Index(index)];
            segs.extend(
                field
                    .split('.')
                    .filter(|k| !k.is_empty())
                    .map(spans::Seg::from),
            );
            problems.push(ConfigError::Field {
                path: path.to_owned(),
                line: spans.line(&segs),
                field: spans.name(&segs),
                message,
            });
        };
        let mut ids = std::collections::HashMap::new();
        let mut ports = std::collections::HashMap::new();
        for (index, instrument) in self.instruments.iter().enumerate() {
            if let Err((field, message)) = instrument.validate() {
                // The driver names its field as `instrument "id": key`.
                let key = field.rsplit_once(": ").map_or("", |(_, key)| key);
                invalid(index, key, message);
            }
            if let Some(first) = ids.insert(instrument.id.as_str(), index) {
                invalid(
                    index,
                    "id",
                    format!(
                        "{:?} is also the id of [[instrument]] number {} (line {}): \
                         give each instrument its own id",
                        instrument.id,
                        first + 1,
                        spans.line(&[spans::Seg::from("instrument"), spans::Seg::Index(first)])
                    ),
                );
            }
            let (key, device) = match (&instrument.port, &instrument.input) {
                (Some(port), _) => ("port", port),
                (None, Some(input)) => ("input", input),
                (None, None) => continue,
            };
            if let Some(other) = ports.insert(device.clone(), instrument.id.as_str()) {
                invalid(
                    index,
                    key,
                    format!(
                        "{} is also the port of instrument {other:?}: one device, one \
                         instrument (run `kouan ports` to see the attached devices)",
                        device.display()
                    ),
                );
            }
        }
        for (index, instrument) in self.instruments.iter().enumerate() {
            let Some(scanner) = &instrument.scanner else {
                continue;
            };
            for linked in &scanner.instruments {
                let target = self.instruments.iter().find(|i| &i.id == linked);
                let known = self
                    .instruments
                    .iter()
                    .filter(|i| i.driver != DriverKind::Scanner)
                    .map(|i| i.id.as_str())
                    .collect::<Vec<_>>();
                match target {
                    None => {
                        let hint = match spans::suggest(linked, &known) {
                            Some(near) => format!("did you mean {near:?}?"),
                            None if known.is_empty() => {
                                "add the [[instrument]] that the scans are for".into()
                            }
                            None => format!("the instruments are {}", known.join(", ")),
                        };
                        invalid(
                            index,
                            "scanner.instruments",
                            format!("no [[instrument]] has id {linked:?}: {hint}"),
                        );
                    }
                    Some(target) if target.driver == DriverKind::Scanner => {
                        invalid(
                            index,
                            "scanner.instruments",
                            format!(
                                "{linked:?} is a scanner: scans are traced to the readings \
                                 of instruments, so list only those"
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        problems
    }

    /// The writer settings this configuration asks for.
    pub fn writer(&self) -> WriterConfig {
        let mut writer = WriterConfig::new(&self.agent.node, &self.agent.site);
        writer.max_bytes = self.store.max_bytes;
        writer.policy = self.store.full_policy;
        writer.checkpoint_every = self.store.checkpoint_every;
        writer.checkpoint_interval = Duration::from_secs(self.store.checkpoint_minutes * 60);
        writer
    }
}

/// A toml error as a problem with its line, field and fix.
fn parse_error(
    error: &toml::de::Error,
    text: &str,
    spans: &spans::Spans,
    path: &Path,
) -> ConfigError {
    let span = error.span().unwrap_or(0..0);
    let line = spans.line_of(span.start);
    let mut segs = spans.path_at(&span);
    let message = error.message();
    let expected = message.split_once(", expected ").map(|(_, e)| e);
    let known = expected.map(spans::backticked).unwrap_or_default();
    let message = if let Some(rest) = message.strip_prefix("unknown field `") {
        let given = rest.split('`').next().unwrap_or_default();
        let table = match segs.split_last() {
            Some((_, [])) | None => "the top level".to_owned(),
            Some((_, parent)) => format!("[{}]", spans.name(parent)),
        };
        let known = known.join(", ");
        match spans::suggest(given, &spans::backticked(expected.unwrap_or_default())) {
            Some(near) => {
                format!("unknown field `{given}`, did you mean `{near}`? ({table} takes {known})")
            }
            None => format!(
                "unknown field `{given}`: remove it or use one of {known} ({table}); \
                 see docs/config.md"
            ),
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        let given = rest.split('`').next().unwrap_or_default();
        match spans::suggest(given, &known) {
            Some(near) => format!(
                "unknown value {given:?}, did you mean \"{near}\"? (one of {})",
                known.join(", ")
            ),
            None => format!("unknown value {given:?}: use one of {}", known.join(", ")),
        }
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default();
        // An empty span is the document itself: a missing section.
        if span.is_empty() {
            segs.clear();
        }
        segs.push(spans::Seg::from(key));
        if segs.len() == 1 {
            format!("missing: add a [{key}] section (see docs/config.md)")
        } else {
            format!("missing: add `{key} = ...` (see docs/config.md)")
        }
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let want = expected.unwrap_or_default();
        let how = if want.starts_with('u') || want.starts_with('i') {
            "write a whole number, without quotes"
        } else if want.starts_with("a bool") {
            "write true or false, without quotes"
        } else if want.contains("string") || want.contains("path") {
            "write it in double quotes"
        } else if want.contains("sequence") {
            "write a list in brackets, [\"a\", \"b\"]"
        } else {
            "see docs/config.md for its type"
        };
        format!("{message}: {how}")
    } else {
        // A TOML syntax error: the field is the key on that line, if any.
        segs = spans.path_at(&(span.start..span.start));
        let source = text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim();
        format!("not valid TOML ({message}) in `{source}`: check quotes, brackets and `=`")
    };
    ConfigError::Field {
        path: path.to_owned(),
        line,
        field: spans.name(&segs),
        message,
    }
}

/// `text` with an unknown key taken care of, to parse on and find the
/// next problem: renamed to the known name it most likely meant (so that
/// a misspelt required key does not come back as missing), or else
/// blanked out with its value. Lines stay where they were. `None` when the
/// error is no unknown key or the key cannot be cut out cleanly.
fn without_unknown_key(
    text: &str,
    spans: &spans::Spans,
    error: &toml::de::Error,
    span: std::ops::Range<usize>,
) -> Option<String> {
    let rest = error.message().strip_prefix("unknown field `")?;
    let given = rest.split('`').next().unwrap_or_default();
    let expected = error.message().split_once(", expected ").map(|(_, e)| e);
    let known = spans::backticked(expected.unwrap_or_default());
    let mut path = spans.path_at(&span);
    if let Some(near) = spans::suggest(given, &known) {
        path.pop();
        path.push(spans::Seg::from(near));
        if !spans.contains(&path) && text.get(span.clone()) == Some(given) {
            let mut fixed = text.to_owned();
            fixed.replace_range(span, near);
            return Some(fixed);
        }
    }
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |i| span.start + i);
    let line = &text[line_start..line_end];
    // Only a `key = value` line alone: the value of a multi-line string or
    // array would be left behind.
    let value = line.split_once('=')?.1.trim();
    let balanced = value.matches('[').count() == value.matches(']').count()
        && value.matches('{').count() == value.matches('}').count()
        && !value.starts_with("\"\"\"")
        && !value.starts_with("\'\'\'");
    if !balanced || !text[line_start..span.start].trim().is_empty() {
        return None;
    }
    let mut fixed = text.to_owned();
    fixed.replace_range(line_start..line_end, &" ".repeat(line.len()));
    Some(fixed)
}

/// Whether `s` can be one segment of a kouan topic (node ids, host ids).
pub fn is_topic_segment(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent]
node = "gy-air-01"
site = "guiyang-airport"

[keys]
signing = "agent.key"

[store]
path = "kouan.db"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let config = Config::parse(MINIMAL, Path::new("/etc/kouan/kouan.toml")).unwrap();
        assert_eq!(config.keys.signing, Path::new("/etc/kouan/agent.key"));
        assert_eq!(config.store.max_bytes, 1 << 30);
        assert_eq!(config.store.full_policy, FullPolicy::Backpressure);
        assert!(config.uplink.is_none());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace("path = ", "pth = ");
        let error = Config::parse(&text, Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("k.toml"), "{error}");
        assert!(error.contains("line 10"), "{error}");
        assert!(error.contains("pth"), "{error}");
    }

    #[test]
    fn uplink_without_tls_must_say_plain_tcp() {
        let text = format!("{MINIMAL}\n[uplink]\nhost = \"localhost\"\ndelivery = \"broker\"\n");
        let error = Config::parse(&text, Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("uplink.tls"), "{error}");
        let text = text.replace("delivery", "plain_tcp = true\ndelivery");
        assert!(Config::parse(&text, Path::new("k.toml")).is_ok());
    }

    #[test]
    fn platform_delivery_needs_the_platform_key() {
        let text = format!("{MINIMAL}\n[uplink]\nhost = \"localhost\"\nplain_tcp = true\n");
        let error = Config::parse(&text, Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("uplink.platform_key"), "{error}");
    }

    #[test]
    fn node_must_be_a_topic_segment() {
        let text = MINIMAL.replace("gy-air-01", "gy/air/#");
        let error = Config::parse(&text, Path::new("k.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("agent.node"), "{error}");
    }
}
