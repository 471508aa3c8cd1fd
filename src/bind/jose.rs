//! The JOSE pieces shared by detached request signatures ([`super::jws`]) and DPoP proofs
//! ([`super::dpop`]).

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional, truncated to
/// whole seconds. `None` for a negative, non-finite or non-numeric value.
pub fn numeric_date(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(seconds) = number.as_u64() {
        return Some(seconds);
    }
    match number.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 => Some(f.min(u64::MAX as f64) as u64),
        _ => None,
    }
}

/// A JSON object that refuses a member given twice (serde_json keeps the last silently).
pub struct UniqueObject(pub Vec<(String, Value)>);

impl UniqueObject {
    /// The member named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object without repeated members")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut members: Vec<(String, Value)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom("repeated member"));
                    }
                    members.push((name, value));
                }
                Ok(UniqueObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}
