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
    /// The TOML is malformed or a field is wrong (the message has the line).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and the offending field.
        message: String,
    },
    /// An instrument section is wrong.
    #[error("config {path}: {field}: {message}")]
    Instrument {
        /// The file.
        path: PathBuf,
        /// The instrument and its field.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The fields are each fine but do not fit together.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as `section.key`.
        field: &'static str,
        /// What is wrong and what to do.
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
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate(path)?;
        Ok(config)
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

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if !is_topic_segment(&self.agent.node) {
            return Err(invalid(
                "agent.node",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '-' and '_' (it is an MQTT topic segment)",
                    self.agent.node
                ),
            ));
        }
        if self.store.checkpoint_every == 0 {
            return Err(invalid(
                "store.checkpoint_every",
                "must be at least 1".into(),
            ));
        }
        if let Some(uplink) = &self.uplink {
            if uplink.tls.is_none() && !uplink.plain_tcp {
                return Err(invalid(
                    "uplink.tls",
                    "missing: give [uplink.tls] ca, cert and key, or set plain_tcp = true \
                     for a broker on this machine"
                        .into(),
                ));
            }
            if uplink.delivery == Delivery::Platform && uplink.platform_key.is_none() {
                return Err(invalid(
                    "uplink.platform_key",
                    "missing: delivery = \"platform\" needs the platform's public key to \
                     verify its acks (or set delivery = \"broker\", which is weaker)"
                        .into(),
                ));
            }
            if uplink.inflight == 0 {
                return Err(invalid("uplink.inflight", "must be at least 1".into()));
            }
            if let Some(host) = &uplink.platform_host
                && !is_topic_segment(host)
            {
                return Err(invalid(
                    "uplink.platform_host",
                    format!("{host:?} must be 1 to 64 of a-z, 0-9, '-' and '_'"),
                ));
            }
        }
        self.validate_instruments(path)
    }

    fn validate_instruments(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Instrument {
            path: path.to_owned(),
            field,
            message,
        };
        let mut ids = std::collections::HashSet::new();
        let mut ports = std::collections::HashMap::new();
        for instrument in &self.instruments {
            instrument
                .validate()
                .map_err(|(field, message)| invalid(field, message))?;
            if !ids.insert(instrument.id.as_str()) {
                return Err(invalid(
                    format!("instrument {:?}", instrument.id),
                    "two [[instrument]] sections have this id".into(),
                ));
            }
            let device = instrument.port.as_ref().or(instrument.input.as_ref());
            if let Some(device) = device
                && let Some(other) = ports.insert(device.clone(), instrument.id.as_str())
            {
                return Err(invalid(
                    format!("instrument {:?}: port", instrument.id),
                    format!(
                        "{} is also the port of instrument {other:?}: one device, one instrument",
                        device.display()
                    ),
                ));
            }
        }
        for instrument in &self.instruments {
            let Some(scanner) = &instrument.scanner else {
                continue;
            };
            for linked in &scanner.instruments {
                let target = self.instruments.iter().find(|i| &i.id == linked);
                match target {
                    None => {
                        return Err(invalid(
                            format!("instrument {:?}: scanner.instruments", instrument.id),
                            format!("no [[instrument]] has id {linked:?}"),
                        ));
                    }
                    Some(target) if target.driver == DriverKind::Scanner => {
                        return Err(invalid(
                            format!("instrument {:?}: scanner.instruments", instrument.id),
                            format!("{linked:?} is a scanner: scans are traced to readings"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
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
