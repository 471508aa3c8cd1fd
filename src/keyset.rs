//! Key sets: configured inline, or fetched from an identity provider's `jwks_uri` through
//! an Envoy cluster and refreshed.
//!
//! One fetch serves all worker VMs: the fetched document lives in proxy-wasm shared data
//! (written by whichever VM fetched it, see `host/keysets.rs`), and each VM decodes its own
//! copy when the shared one changes. This module is the pure part: the configuration, the
//! shared-data record, and each VM's decoded keys with the early-refetch rate limit.

use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::jwk::{parse_jwks, VerificationKey};
use crate::reject::Reason;

/// Default for `remote_jwks.refresh_seconds`.
pub const DEFAULT_REFRESH_SECONDS: u64 = 300;
/// Default for `remote_jwks.timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// An unknown `kid` triggers at most one early refetch per key set in this many seconds.
pub const EARLY_REFETCH_INTERVAL_SECONDS: u64 = 30;
/// After a failed fetch, the next attempt comes after this many seconds (or at the refresh
/// time, if sooner).
pub const RETRY_SECONDS: u64 = 5;
/// The largest key set document read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Where a key set comes from.
#[derive(Debug)]
pub enum KeySource {
    Inline(Vec<VerificationKey>),
    /// Index into the policy's remote key sets.
    Remote(usize),
}

/// A key set fetched over HTTP from an Envoy cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_seconds: u64,
    pub timeout_ms: u64,
}

impl RemoteJwks {
    /// The shared-data key of this key set: the same source is fetched once, whichever
    /// issuers or clients use it.
    pub fn shared_key(&self) -> String {
        let digest = Sha256::digest(format!(
            "{}\n{}\n{}",
            self.cluster, self.authority, self.path
        ));
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("tether.jwks.{hex}")
    }
}

/// The shared record of a key set: when it was fetched, and the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedRecord {
    /// When the document was last fetched successfully (0: never).
    pub fetched_at: u64,
    /// Not before this time may a VM start a fetch (a fetch in flight, or a failure's backoff).
    pub busy_until: u64,
    /// An early refetch was asked for at this time (an unknown `kid`).
    pub refetch_requested_at: u64,
    /// The last good JWKS document.
    pub document: Vec<u8>,
}

impl SharedRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.document.len());
        out.extend_from_slice(&self.fetched_at.to_be_bytes());
        out.extend_from_slice(&self.busy_until.to_be_bytes());
        out.extend_from_slice(&self.refetch_requested_at.to_be_bytes());
        out.extend_from_slice(&self.document);
        out
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        };
        SharedRecord {
            fetched_at: word(0),
            busy_until: word(1),
            refetch_requested_at: word(2),
            document: bytes.get(24..).unwrap_or_default().to_vec(),
        }
    }

    /// Whether a VM should fetch now: never fetched, stale, or an early refetch asked for
    /// after the last fetch; and nobody is fetching or backing off.
    pub fn due(&self, source: &RemoteJwks, now: u64) -> bool {
        if now < self.busy_until {
            return false;
        }
        self.fetched_at == 0
            || now >= self.fetched_at.saturating_add(source.refresh_seconds)
            || self.refetch_requested_at > self.fetched_at
    }
}

/// One VM's decoded remote key sets.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    sets: Vec<RemoteSet>,
}

#[derive(Debug, Default)]
struct RemoteSet {
    keys: Option<Rc<Vec<VerificationKey>>>,
    /// `fetched_at` of the document the keys were decoded from.
    fetched_at: u64,
}

impl RemoteKeys {
    pub fn new(count: usize) -> Self {
        RemoteKeys {
            sets: (0..count).map(|_| RemoteSet::default()).collect(),
        }
    }

    /// The keys of a source: inline ones, or the decoded remote ones once loaded.
    pub fn resolve<'a>(&'a self, source: &'a KeySource) -> Result<&'a [VerificationKey], Reason> {
        match source {
            KeySource::Inline(keys) => Ok(keys),
            KeySource::Remote(i) => self
                .sets
                .get(*i)
                .and_then(|s| s.keys.as_deref())
                .map(Vec::as_slice)
                .ok_or(Reason::KeySetUnavailable),
        }
    }

    /// When the keys of set `i` were fetched (0: never loaded here).
    pub fn fetched_at(&self, i: usize) -> u64 {
        self.sets.get(i).map_or(0, |s| s.fetched_at)
    }

    /// Decodes a shared record newer than what this VM has. A document that does not parse
    /// leaves the last good keys in place.
    pub fn install(&mut self, i: usize, record: &SharedRecord) -> Result<bool, String> {
        let Some(set) = self.sets.get_mut(i) else {
            return Ok(false);
        };
        if record.fetched_at == 0 || record.fetched_at <= set.fetched_at {
            return Ok(false);
        }
        let keys = decode_document(&record.document)?;
        set.keys = Some(Rc::new(keys));
        set.fetched_at = record.fetched_at;
        Ok(true)
    }
}

/// Parses a fetched JWKS document: it must hold at least one usable key.
pub fn decode_document(document: &[u8]) -> Result<Vec<VerificationKey>, String> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "key set document larger than {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| format!("key set is not JSON: {e}"))?;
    let set = parse_jwks(&json)?;
    if set.keys.is_empty() {
        return Err("key set has no usable signature verification key".into());
    }
    Ok(set.keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp.example.com".into(),
            path: "/.well-known/jwks.json".into(),
            refresh_seconds: 300,
            timeout_ms: 2000,
        }
    }

    /// RFC 7515 Appendix A.3's public key as a JWKS document.
    const DOCUMENT: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn record_round_trips() {
        let record = SharedRecord {
            fetched_at: 10,
            busy_until: 20,
            refetch_requested_at: 30,
            document: DOCUMENT.as_bytes().to_vec(),
        };
        assert_eq!(SharedRecord::decode(&record.encode()), record);
        assert_eq!(SharedRecord::decode(&[]), SharedRecord::default());
    }

    #[test]
    fn fetch_is_due_when_never_fetched_stale_or_asked_for() {
        let s = source();
        assert!(SharedRecord::default().due(&s, 100));
        let fresh = SharedRecord {
            fetched_at: 100,
            ..Default::default()
        };
        assert!(!fresh.due(&s, 399));
        assert!(fresh.due(&s, 400));
        let asked = SharedRecord {
            fetched_at: 100,
            refetch_requested_at: 150,
            ..Default::default()
        };
        assert!(asked.due(&s, 150));
        let busy = SharedRecord {
            busy_until: 160,
            ..asked
        };
        assert!(!busy.due(&s, 159));
    }

    #[test]
    fn installed_keys_resolve_and_bad_documents_keep_the_last_good() {
        let mut keys = RemoteKeys::new(1);
        let source = KeySource::Remote(0);
        assert_eq!(
            keys.resolve(&source).unwrap_err(),
            Reason::KeySetUnavailable
        );
        let good = SharedRecord {
            fetched_at: 10,
            document: DOCUMENT.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(keys.install(0, &good), Ok(true));
        assert_eq!(keys.resolve(&source).unwrap().len(), 1);
        assert_eq!(keys.install(0, &good), Ok(false));
        let bad = SharedRecord {
            fetched_at: 20,
            document: b"{}".to_vec(),
            ..Default::default()
        };
        assert!(keys.install(0, &bad).is_err());
        assert_eq!(keys.resolve(&source).unwrap().len(), 1);
        assert_eq!(keys.fetched_at(0), 10);
    }

    #[test]
    fn shared_key_names_the_source() {
        let mut other = source();
        other.path = "/other".into();
        assert_ne!(source().shared_key(), other.shared_key());
        assert!(source().shared_key().starts_with("tether.jwks."));
    }
}
