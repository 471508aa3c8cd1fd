//! The JOSE pieces shared by detached request signatures ([`super::jws`]), DPoP proofs
//! ([`super::dpop`]) and signed responses ([`crate::respond`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The unpadded base64url SHA-256 of `bytes`: how `ath` (RFC 9449 §4.2) names a token, and how
/// a signed response's `ath` and `rsh` name the token and the request signature.
pub fn sha256_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

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
