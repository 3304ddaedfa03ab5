//! Messages between the platform and the agent, other than records.
//!
//! The platform confirms records with a signed **ack** watermark, steers
//! agents with signed **commands** (replay, rebirth), and says whether it is
//! online with a signed **host state**. The agent's last will is a signed
//! **death** message. Each is a tagged COSE_Sign1 over a CBOR map with a
//! `type` field, so a message signed for one purpose cannot be replayed as
//! another; the agent verifies each with the platform's public key before
//! it changes anything. `docs/platform.md` specifies them for platform teams.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

use crate::keys::{PublicKey, SigningKey};
use crate::record::{self, RecordError, VerifyError};

/// Version of these messages, in every `v`.
pub const MESSAGE_VERSION: u32 = 1;

/// Topics of the MQTT layout (DESIGN.md), for one node.
#[derive(Debug, Clone)]
pub struct Topics {
    node: String,
}

impl Topics {
    /// The topics of `node`.
    pub fn new(node: &str) -> Topics {
        Topics {
            node: node.to_owned(),
        }
    }

    /// Birth and death, retained.
    pub fn state(&self) -> String {
        format!("kouan/v1/{}/state", self.node)
    }

    /// Records of one instrument.
    pub fn records(&self, instrument: &str) -> String {
        format!("kouan/v1/{}/rec/{instrument}", self.node)
    }

    /// Alerts.
    pub fn alert(&self) -> String {
        format!("kouan/v1/{}/alert", self.node)
    }

    /// The platform's ack watermark, retained.
    pub fn ack(&self) -> String {
        format!("kouan/v1/{}/ack", self.node)
    }

    /// A command verb.
    pub fn command(&self, verb: &str) -> String {
        format!("kouan/v1/{}/cmd/{verb}", self.node)
    }

    /// Every command verb (subscription filter).
    pub fn commands(&self) -> String {
        format!("kouan/v1/{}/cmd/+", self.node)
    }
}

/// Every control order, each retained on its own topic (one retained
/// message per topic, so one topic per order).
pub const ORDERS: &str = "kouan/v1/orders/#";

/// The retained topic of order `id`.
pub fn order_topic(id: &str) -> String {
    format!("kouan/v1/orders/{id}")
}

/// The platform host's state topic.
pub fn host_state_topic(host: &str) -> String {
    format!("kouan/v1/host/{host}/state")
}

/// The node segment of a `kouan/v1/{node}/...` topic.
pub fn topic_node(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("kouan/v1/")?;
    let (node, _) = rest.split_once('/')?;
    (node != "host" && node != "orders").then_some(node)
}

/// `ack`: every record of `stream` up to `seq` is stored by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    /// Always `"ack"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent the ack is for.
    pub node: String,
    /// The stream it covers.
    pub stream: ByteBuf,
    /// The watermark: all seqs of the stream up to this one are stored.
    pub seq: u64,
    /// When the platform signed it, ms since the Unix epoch.
    pub time: i64,
}

/// `command`: something for an agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    /// Always `"command"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent the command is for.
    pub node: String,
    /// `replay` or `rebirth`; must match the topic's verb.
    pub verb: String,
    /// Unique per command; a repeated id is ignored.
    pub id: String,
    /// When the platform issued it, ms since the Unix epoch.
    pub issued: i64,
    /// `replay`: send records again from this seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// `replay`: up to this seq (the end of the hole); everything when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// `host`: whether the platform's receiving host is online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    /// Always `"host"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The host id (the topic's segment).
    pub host: String,
    /// Online or not.
    pub online: bool,
    /// When it was signed, ms since the Unix epoch.
    pub time: i64,
}

/// `death`: the agent's last will, signed by the agent when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    /// Always `"death"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent.
    pub node: String,
    /// The session this ends (the birth's `session`).
    pub session: i64,
    /// When it was signed (connect time), ms since the Unix epoch.
    pub time: i64,
}

/// Why a platform message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The signature or envelope is wrong.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The payload is not the expected message.
    #[error("payload is not a valid {expected} message: {reason}")]
    Payload {
        /// The expected `type`.
        expected: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Signs a message with the platform's (or for `death`, the agent's) key.
pub fn sign<T: Serialize>(message: &T, key: &SigningKey) -> Result<Vec<u8>, RecordError> {
    record::sign_cbor(message, key)
}

/// Verifies a message and decodes it as `T`, whose `type` must be `expected`.
pub fn open<T: DeserializeOwned>(
    bytes: &[u8],
    keys: &[PublicKey],
    expected: &'static str,
) -> Result<T, MessageError> {
    let (payload, _kid) = record::verify_message(bytes, keys)?;
    let bad = |reason: String| MessageError::Payload { expected, reason };
    let value: ciborium::Value =
        ciborium::from_reader(payload.as_slice()).map_err(|e| bad(e.to_string()))?;
    let kind = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("type")))
        .and_then(|(_, v)| v.as_text())
        .ok_or_else(|| bad("no type field".into()))?;
    if kind != expected {
        return Err(bad(format!("type is {kind:?}")));
    }
    let version = value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("v")))
        .and_then(|(_, v)| v.as_integer())
        .and_then(|v| u32::try_from(v).ok());
    if version != Some(MESSAGE_VERSION) {
        return Err(bad(format!("version {version:?} is not {MESSAGE_VERSION}")));
    }
    value.deserialized().map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{self, Algorithm};

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&keys::generate(Algorithm::Ed25519).unwrap()).unwrap()
    }

    #[test]
    fn ack_round_trips_and_cannot_pass_as_a_command() {
        let platform = key();
        let ack = Ack {
            v: MESSAGE_VERSION,
            kind: "ack".into(),
            node: "gy-air-01".into(),
            stream: ByteBuf::from(vec![1; 16]),
            seq: 42,
            time: 1,
        };
        let bytes = sign(&ack, &platform).unwrap();
        let keys = [platform.public_key().clone()];
        assert_eq!(open::<Ack>(&bytes, &keys, "ack").unwrap(), ack);
        let as_command = open::<Command>(&bytes, &keys, "command").unwrap_err();
        assert!(
            as_command.to_string().contains("type is \"ack\""),
            "{as_command}"
        );
    }

    #[test]
    fn message_from_another_key_is_refused() {
        let ack = Ack {
            v: MESSAGE_VERSION,
            kind: "ack".into(),
            node: "n".into(),
            stream: ByteBuf::from(vec![1; 16]),
            seq: 1,
            time: 1,
        };
        let bytes = sign(&ack, &key()).unwrap();
        let error = open::<Ack>(&bytes, &[key().public_key().clone()], "ack").unwrap_err();
        assert!(matches!(
            error,
            MessageError::Verify(VerifyError::UnknownKey(_))
        ));
    }

    #[test]
    fn topic_node_is_the_second_segment() {
        assert_eq!(
            topic_node("kouan/v1/gy-air-01/rec/balance"),
            Some("gy-air-01")
        );
        assert_eq!(topic_node("kouan/v1/host/central/state"), None);
        assert_eq!(topic_node("other/v1/x/rec"), None);
    }
}
