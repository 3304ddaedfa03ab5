//! Control orders: what the platform signs, and how one matches.

use serde::{Deserialize, Serialize};

use crate::platform::MESSAGE_VERSION;
use crate::record::{MeasuredValue, Measurement, ScanBody};

/// Longest time an order may be valid, from its issue: a year. Longer is
/// a mistake at the platform (or a forged far-future expiry).
pub const MAX_VALIDITY_MS: i64 = 366 * 24 * 3600 * 1000;

/// How far an order's issue time may be ahead of the agent's clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// `order`: a signed control order from the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// [`MESSAGE_VERSION`].
    pub v: u32,
    /// Always `"order"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The order's id, unique at the platform (`RW-2026-0042`).
    pub id: String,
    /// Risk level, 1 (most severe) to 4.
    pub risk: u8,
    /// What the point does on a match.
    pub action: Action,
    /// What to match; every given field must match.
    #[serde(rename = "match")]
    pub matches: Match,
    /// When the platform issued it (ms since the Unix epoch). A later
    /// issue of the same id replaces it; an earlier or equal one is a replay.
    pub issued: i64,
    /// When it stops applying (ms since the Unix epoch).
    pub expires: i64,
    /// The order is withdrawn (published with a later `issued`).
    #[serde(default)]
    pub revoked: bool,
    /// The agents it applies to; every agent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// For people: the reason, the warning it implements.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// What a point does when an order matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Hold the goods at the border.
    Hold,
    /// Inspect them.
    Inspect,
    /// Tell the officers.
    Notify,
}

impl Action {
    /// The name used in records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Hold => "hold",
            Action::Inspect => "inspect",
            Action::Notify => "notify",
        }
    }
}

/// The match of an order: goods by their GS1 keys, origin or HS code, or a
/// measured quantity beyond a limit.
///
/// Unknown fields are refused, not ignored: dropping a criterion the agent
/// does not know would make the order match more goods than it should.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// GTIN, 14 digits (AI 01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtin: Option<String>,
    /// Batch or lot (AI 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Serial number (AI 21).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// HS code prefix, digits: matched against plain scans of digits only
    /// (the HS code label of a declaration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs: Option<String>,
    /// Country of origin, ISO 3166 numeric (AI 422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u16>,
    /// A measured quantity beyond a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyte: Option<Limit>,
}

/// A limit on a measured quantity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The measurement's name (`lead`, `dose_rate`).
    pub name: String,
    /// Its unit; when given, a reading in another unit does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Matches values strictly above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Matches values strictly below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

impl Limit {
    /// Checks the limit is usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("limit name is empty".into());
        }
        match (self.above, self.below) {
            (None, None) => Err(format!("limit {:?} has neither above nor below", self.name)),
            (Some(a), _) if !a.is_finite() => Err("limit above is not a finite number".into()),
            (_, Some(b)) if !b.is_finite() => Err("limit below is not a finite number".into()),
            _ => Ok(()),
        }
    }

    /// How `m` crosses this limit, if it does: `above` or `below`.
    pub fn crossed_by(&self, m: &Measurement) -> Option<&'static str> {
        if m.name != self.name {
            return None;
        }
        if self.unit.is_some() && m.unit != self.unit {
            return None;
        }
        let MeasuredValue::Number(value) = m.value else {
            return None;
        };
        if self.above.is_some_and(|a| value > a) {
            return Some("above");
        }
        if self.below.is_some_and(|b| value < b) {
            return Some("below");
        }
        None
    }
}

/// The keys of a scan that orders match on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanKeys {
    /// AI 01.
    pub gtin: Option<String>,
    /// AI 10.
    pub batch: Option<String>,
    /// AI 21.
    pub serial: Option<String>,
    /// AI 422.
    pub origin: Option<u16>,
    /// A plain scan of digits only: possibly an HS code.
    pub digits: Option<String>,
}

impl ScanKeys {
    /// The keys of a stored scan. A scan with a problem has none: it was
    /// not read exactly, so it cannot be matched exactly.
    pub fn of(scan: &ScanBody) -> ScanKeys {
        if scan.problem.is_some() {
            return ScanKeys::default();
        }
        let get = |ai: &str| {
            scan.elements
                .iter()
                .find(|(a, _)| a == ai)
                .map(|(_, v)| v.clone())
        };
        let digits = (scan.content == "other"
            && (4..=12).contains(&scan.code.len())
            && scan.code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| scan.code.clone());
        ScanKeys {
            gtin: get("01"),
            batch: get("10"),
            serial: get("21"),
            origin: get("422").and_then(|v| v.parse().ok()),
            digits,
        }
    }
}

impl Order {
    /// Checks an order's own consistency (not its signature or replay).
    pub fn validate(&self) -> Result<(), String> {
        if self.v != MESSAGE_VERSION || self.kind != "order" {
            return Err("not an order message of this version".into());
        }
        if self.id.is_empty() || self.id.len() > 128 {
            return Err("id must be 1 to 128 characters".into());
        }
        if !(1..=4).contains(&self.risk) {
            return Err(format!("risk {} is not 1 to 4", self.risk));
        }
        if self.expires <= self.issued {
            return Err("expires is not after issued".into());
        }
        if self.expires - self.issued > MAX_VALIDITY_MS {
            return Err("valid for more than a year".into());
        }
        let m = &self.matches;
        let goods = m.gtin.is_some()
            || m.batch.is_some()
            || m.serial.is_some()
            || m.hs.is_some()
            || m.origin.is_some();
        if !goods && m.analyte.is_none() {
            return Err("matches nothing: give gtin, batch, serial, hs, origin or analyte".into());
        }
        if goods && m.analyte.is_some() {
            return Err("an order matches goods or an analyte, not both".into());
        }
        if let Some(limit) = &m.analyte {
            limit.validate()?;
        }
        if let Some(gtin) = &m.gtin
            && (gtin.len() != 14 || !gtin.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("gtin {gtin:?} is not 14 digits"));
        }
        Ok(())
    }

    /// Whether the order applies to agent `node`.
    pub fn applies_to(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }

    /// Whether a scan with these keys matches: every goods field given must
    /// equal the scan's (HS codes by prefix).
    pub fn matches_scan(&self, keys: &ScanKeys) -> bool {
        let m = &self.matches;
        if m.analyte.is_some() {
            return false;
        }
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        eq(&m.gtin, &keys.gtin)
            && eq(&m.batch, &keys.batch)
            && eq(&m.serial, &keys.serial)
            && m.origin.is_none_or(|o| keys.origin == Some(o))
            && m.hs.as_ref().is_none_or(|hs| {
                keys.digits
                    .as_ref()
                    .is_some_and(|d| d.starts_with(hs.as_str()))
            })
    }
}

/// An order as the platform team writes it (TOML), before signing:
/// `kouan receive --orders DIR` signs and publishes each file dropped there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderFile {
    /// The order's id.
    pub id: String,
    /// Risk level, 1 (most severe) to 4.
    pub risk: u8,
    /// `hold`, `inspect` or `notify`.
    pub action: Action,
    /// Hours from publication to expiry.
    pub valid_hours: f64,
    /// Withdraw the order with this id.
    #[serde(default)]
    pub revoked: bool,
    /// The agents it applies to; all when empty.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// For people.
    #[serde(default)]
    pub text: String,
    /// What to match.
    #[serde(rename = "match")]
    pub matches: Match,
}

impl OrderFile {
    /// The order, issued at `now` (ms since the Unix epoch).
    pub fn order(&self, now: i64) -> Order {
        Order {
            v: MESSAGE_VERSION,
            kind: "order".into(),
            id: self.id.clone(),
            risk: self.risk,
            action: self.action,
            matches: self.matches.clone(),
            issued: now,
            expires: now + (self.valid_hours * 3_600_000.0) as i64,
            revoked: self.revoked,
            nodes: self.nodes.clone(),
            text: self.text.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn order(id: &str) -> Order {
        Order {
            v: MESSAGE_VERSION,
            kind: "order".into(),
            id: id.into(),
            risk: 1,
            action: Action::Hold,
            matches: Match {
                gtin: Some("09521234543213".into()),
                batch: Some("12A".into()),
                ..Match::default()
            },
            issued: 1_000,
            expires: 1_000 + 3_600_000,
            revoked: false,
            nodes: vec![],
            text: String::new(),
        }
    }

    fn keys(gtin: &str, batch: &str) -> ScanKeys {
        ScanKeys {
            gtin: Some(gtin.into()),
            batch: Some(batch.into()),
            ..ScanKeys::default()
        }
    }

    #[test]
    fn every_given_field_must_match() {
        let o = order("a");
        assert!(o.matches_scan(&keys("09521234543213", "12A")));
        assert!(!o.matches_scan(&keys("09521234543213", "12B")));
        assert!(!o.matches_scan(&ScanKeys {
            gtin: Some("09521234543213".into()),
            ..ScanKeys::default()
        }));
        let mut hs = order("hs");
        hs.matches = Match {
            hs: Some("0306".into()),
            ..Match::default()
        };
        assert!(hs.matches_scan(&ScanKeys {
            digits: Some("030617".into()),
            ..ScanKeys::default()
        }));
    }

    #[test]
    fn limits_cross_by_name_unit_and_value() {
        let limit = Limit {
            name: "lead".into(),
            unit: Some("mg/kg".into()),
            above: Some(0.3),
            below: None,
        };
        let m = |v, unit: &str| {
            Measurement::new("lead", MeasuredValue::Number(v), Some(unit.to_owned()))
        };
        assert_eq!(limit.crossed_by(&m(0.31, "mg/kg")), Some("above"));
        assert_eq!(limit.crossed_by(&m(0.3, "mg/kg")), None);
        assert_eq!(limit.crossed_by(&m(5.0, "g/kg")), None);
    }

    #[test]
    fn inconsistent_orders_are_refused() {
        let mut o = order("x");
        o.risk = 5;
        assert!(o.validate().unwrap_err().contains("risk"));
        let mut o = order("x");
        o.expires = o.issued;
        assert!(o.validate().unwrap_err().contains("expires"));
        let mut o = order("x");
        o.matches = Match::default();
        assert!(o.validate().unwrap_err().contains("matches nothing"));
        let mut o = order("x");
        o.matches.gtin = Some("123".into());
        assert!(o.validate().unwrap_err().contains("14 digits"));
    }
}
