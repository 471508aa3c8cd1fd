//! Key sets: configured inline, or fetched from an identity provider's `jwks_uri` through
//! an Envoy cluster and refreshed.
//!
//! One fetch serves all worker VMs: the fetched document lives in shared data, written by
//! whichever VM fetched it, and each VM decodes its own copy when the shared one changes.
//! [`Fetcher`] is that schedule (who fetches when, the early refetch for an unknown `kid`, the
//! back-off after a failure) over the [`SharedData`] trait; the glue only sends the request
//! and reads the answer.

use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::abi::Status;
use crate::jwk::{parse_fetched_jwks, VerificationKey};
use crate::percent::hex;
use crate::reject::Reason;
use crate::shared::SharedData;

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
/// How far in the future a shared record's times may lie before the record is implausible:
/// a fetch is claimed for at most `timeout_ms` (60 s at most) plus a second, and the clocks
/// of one Envoy's workers agree.
pub const MAX_FUTURE_SECONDS: u64 = 61;

/// The prefix of the shared-data keys of one Tether plugin configuration: a hash of the
/// plugin's root id and its configuration.
///
/// Envoy scopes shared data by `vm_id` only, so every plugin in the same VM id reads and
/// writes the same keys. Namespacing keeps two Tether configurations apart, and keeps Tether
/// clear of any other plugin's keys; it is not a secret (see the README on `vm_id`).
pub fn namespace(root_id: &[u8], configuration: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"tether.namespace.v1\0")
        .chain_update(root_id)
        .chain_update(b"\0")
        .chain_update(configuration)
        .finalize();
    format!("tether.{}", hex(&digest[..8]))
}

/// The prefix of the replay record's keys: the root id only, not the configuration, so that
/// pushing a new configuration does not forget the signatures already seen (which could then
/// be replayed once more).
pub fn replay_namespace(root_id: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"tether.replay.v1\0")
        .chain_update(root_id)
        .finalize();
    format!("tether.{}", hex(&digest[..8]))
}

/// Where a key set comes from.
#[derive(Debug)]
pub enum KeySource {
    Inline(Vec<VerificationKey>),
    /// A fetched key set: its index in the policy's `jwks_endpoints`.
    Fetched(usize),
}

/// Where a fetched key set comes from: its `jwks_uri`, reached through an Envoy cluster
/// (`remote_jwks` in the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksEndpoint {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_seconds: u64,
    pub timeout_ms: u64,
}

impl JwksEndpoint {
    /// The shared-data key of this key set under `namespace`: the same source is fetched
    /// once, whichever issuers or clients use it.
    pub fn shared_key(&self, namespace: &str) -> String {
        let digest = Sha256::digest(format!(
            "{}\n{}\n{}",
            self.cluster, self.authority, self.path
        ));
        format!("{namespace}.jwks.{}", hex(&digest[..8]))
    }
}

/// The shared record of a key set: when it was fetched, and the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySetRecord {
    /// When the document was last fetched successfully (0: never).
    pub fetched_at: u64,
    /// Not before this time may a VM start a fetch (a fetch in flight, or a failure's backoff).
    pub busy_until: u64,
    /// An early refetch was asked for at this time (an unknown `kid`).
    pub refetch_requested_at: u64,
    /// The last good JWKS document.
    pub document: Vec<u8>,
}

impl KeySetRecord {
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
        KeySetRecord {
            fetched_at: word(0),
            busy_until: word(1),
            refetch_requested_at: word(2),
            document: bytes.get(24..).unwrap_or_default().to_vec(),
        }
    }

    /// Whether the record's times could have been written by Tether: none lies further in
    /// the future than a fetch's claim. A record written by someone else (another plugin in
    /// the same `vm_id`) with a far-future `fetched_at` would otherwise never be refreshed
    /// (issue 7, finding 5).
    pub fn plausible(&self, now: u64) -> bool {
        let limit = now.saturating_add(MAX_FUTURE_SECONDS);
        self.fetched_at <= limit && self.busy_until <= limit && self.refetch_requested_at <= limit
    }

    /// Whether a VM should fetch now: never fetched, stale, an early refetch asked for after
    /// the last fetch, or an implausible record; and nobody is fetching or backing off.
    pub fn due(&self, source: &JwksEndpoint, now: u64) -> bool {
        if !self.plausible(now) {
            return true;
        }
        if now < self.busy_until {
            return false;
        }
        self.fetched_at == 0
            || now >= self.fetched_at.saturating_add(source.refresh_seconds)
            || self.refetch_requested_at > self.fetched_at
    }
}

/// One VM's decoded keys of the fetched key sets.
#[derive(Debug, Default)]
pub struct FetchedKeys {
    sets: Vec<Decoded>,
}

#[derive(Debug, Default)]
struct Decoded {
    keys: Option<Rc<Vec<VerificationKey>>>,
    /// `fetched_at` of the document the keys were decoded from.
    fetched_at: u64,
}

impl FetchedKeys {
    pub fn new(count: usize) -> Self {
        FetchedKeys {
            sets: (0..count).map(|_| Decoded::default()).collect(),
        }
    }

    /// The keys of a source: inline ones, or the decoded fetched ones once loaded.
    pub fn resolve<'a>(&'a self, source: &'a KeySource) -> Result<&'a [VerificationKey], Reason> {
        match source {
            KeySource::Inline(keys) => Ok(keys),
            KeySource::Fetched(i) => self
                .sets
                .get(*i)
                .and_then(|s| s.keys.as_deref())
                .map(Vec::as_slice)
                .ok_or(Reason::KeySetUnavailable),
        }
    }

    /// When the keys of set `i` were fetched (0: never loaded here); a request waiting for
    /// the set is decided again when this changes.
    pub fn fetched_at(&self, i: usize) -> u64 {
        self.sets.get(i).map_or(0, |s| s.fetched_at)
    }

    /// Decodes a shared record newer than what this VM has, at `now`. An implausible record
    /// or a document that is not a usable JWKS leaves the last good keys in place (and the
    /// caller asks for a refetch).
    pub fn install(&mut self, i: usize, record: &KeySetRecord, now: u64) -> Result<bool, String> {
        let Some(set) = self.sets.get_mut(i) else {
            return Ok(false);
        };
        // Any change, not only a later time: a record reset after tampering starts its times
        // over, and a VM must not keep what it decoded before (review of issue 7).
        if record.fetched_at == 0 || record.fetched_at == set.fetched_at {
            return Ok(false);
        }
        if !record.plausible(now) {
            return Err("the shared record's times lie in the future".into());
        }
        let document = decode_document(&record.document)?;
        set.keys = Some(Rc::new(document.keys));
        set.fetched_at = record.fetched_at;
        Ok(true)
    }
}

/// A fetched JWKS document, decoded.
pub struct Document {
    pub keys: Vec<VerificationKey>,
    /// Why each key that could not be used was skipped.
    pub skipped: Vec<String>,
}

/// Parses a fetched JWKS document: unusable keys are skipped, and at least one usable key
/// must remain.
pub fn decode_document(document: &[u8]) -> Result<Document, String> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "key set document larger than {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| format!("key set is not JSON: {e}"))?;
    let set = parse_fetched_jwks(&json)?;
    if set.keys.is_empty() {
        return Err(format!(
            "key set has no usable signature verification key ({} skipped)",
            set.skipped.len()
        ));
    }
    Ok(Document {
        keys: set.keys,
        skipped: set.skipped,
    })
}

/// Compare-and-swap attempts on a shared record.
const ATTEMPTS: usize = 8;

/// What happened while fetching, for the glue to log and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// A fetch ended: a usable key set (`ok`), or a failure (logged with `Warning`).
    Fetched { ok: bool },
    /// Keys of a fetched document that could not be used.
    KeysSkipped(usize),
    /// Something an operator should read.
    Warning(String),
}

/// Fetches the configuration's key sets on the schedule all of an Envoy's VMs share.
pub struct Fetcher<S> {
    data: S,
    namespace: String,
    /// This VM's fetches in flight: the glue's call token -> key set index.
    in_flight: HashMap<u32, usize>,
}

impl<S: SharedData> Fetcher<S> {
    pub fn new(data: S, namespace: String) -> Self {
        Fetcher {
            data,
            namespace,
            in_flight: HashMap::new(),
        }
    }

    fn read(&self, source: &JwksEndpoint) -> Option<(KeySetRecord, Option<u32>)> {
        let (bytes, cas) = match self.data.get(&source.shared_key(&self.namespace)).ok()? {
            Some((bytes, cas)) => (bytes, Some(cas)),
            None => (Vec::new(), None),
        };
        Some((KeySetRecord::decode(&bytes), cas))
    }

    /// Applies `change` to a shared record with compare-and-swap; `false` if it could not
    /// (or `change` declined).
    fn update(&self, source: &JwksEndpoint, change: impl Fn(&mut KeySetRecord) -> bool) -> bool {
        let key = source.shared_key(&self.namespace);
        for _ in 0..ATTEMPTS {
            let Some((mut record, cas)) = self.read(source) else {
                return false;
            };
            if !change(&mut record) {
                return false;
            }
            match self.data.set(&key, &record.encode(), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// On each tick: decodes newer shared documents into `keys`, and starts the fetches that
    /// are due with `dispatch` (which sends one and returns its call token, or `None`).
    pub fn refresh(
        &mut self,
        sources: &[JwksEndpoint],
        keys: &mut FetchedKeys,
        now: u64,
        dispatch: &mut dyn FnMut(&JwksEndpoint) -> Option<u32>,
    ) -> Vec<FetchEvent> {
        let mut events = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let Some((record, _)) = self.read(source) else {
                continue;
            };
            let installed = keys.install(i, &record, now);
            if let Err(error) = &installed {
                // Tether writes only checked documents with plausible times: this record was
                // written by something else. Fetch it again rather than trust or keep it.
                events.push(FetchEvent::Warning(format!(
                    "shared record of the key set from cluster {:?} refused: {error}; fetching it again",
                    source.cluster
                )));
                self.update(source, |r| {
                    r.refetch_requested_at = r.fetched_at.saturating_add(1);
                    r.busy_until = 0;
                    true
                });
            }
            // Most ticks have nothing due: decided on the record already read, without reading
            // it (and its document) a second time to claim a fetch.
            let due = installed.is_err() || record.due(source, now);
            if !due || self.in_flight.values().any(|s| *s == i) {
                continue;
            }
            let busy_for = source.timeout_ms.div_ceil(1000) + 1;
            let claimed = self.update(source, |r| {
                if !r.due(source, now) {
                    return false;
                }
                if !r.plausible(now) {
                    // Times no fetch of Tether's wrote: start over from a clean record.
                    *r = KeySetRecord {
                        document: std::mem::take(&mut r.document),
                        ..KeySetRecord::default()
                    };
                }
                r.busy_until = now.saturating_add(busy_for);
                true
            });
            if !claimed {
                continue;
            }
            match dispatch(source) {
                Some(token) => {
                    self.in_flight.insert(token, i);
                }
                None => events.extend(self.failed(
                    source,
                    format!("cannot fetch the key set from cluster {:?}", source.cluster),
                    now,
                )),
            }
        }
        events
    }

    /// A fetch's answer (`token` from `dispatch`): the document, or why there is none. A
    /// usable key set replaces the shared document; anything else keeps the last good one
    /// and backs off for [`RETRY_SECONDS`].
    pub fn on_answer(
        &mut self,
        token: u32,
        answer: Result<Vec<u8>, String>,
        sources: &[JwksEndpoint],
        keys: &mut FetchedKeys,
        now: u64,
    ) -> Vec<FetchEvent> {
        let mut events = Vec::new();
        let Some(i) = self.in_flight.remove(&token) else {
            return events;
        };
        let Some(source) = sources.get(i) else {
            return events;
        };
        let checked =
            answer.and_then(|body| decode_document(&body).map(|document| (body, document.skipped)));
        match checked {
            Ok((document, skipped)) => {
                events.push(FetchEvent::Fetched { ok: true });
                if !skipped.is_empty() {
                    events.push(FetchEvent::KeysSkipped(skipped.len()));
                    events.extend(skipped.iter().map(|note| {
                        FetchEvent::Warning(format!(
                            "key set from cluster {:?}: {note}",
                            source.cluster
                        ))
                    }));
                }
                self.update(source, |r| {
                    // Strictly newer, so that every VM (and waiting request) sees a change.
                    r.fetched_at = now.max(r.fetched_at.saturating_add(1));
                    r.busy_until = 0;
                    r.document = document.clone();
                    true
                });
            }
            Err(error) => events.extend(self.failed(
                source,
                format!(
                    "key set fetch from cluster {:?} failed: {error}; keeping the last good key set",
                    source.cluster
                ),
                now,
            )),
        }
        if let Some((record, _)) = self.read(source) {
            let _ = keys.install(i, &record, now);
        }
        events
    }

    /// A fetch that failed (`why`): counted and logged; the last good key set stays, and the
    /// next attempt comes after [`RETRY_SECONDS`].
    fn failed(&self, source: &JwksEndpoint, why: String, now: u64) -> [FetchEvent; 2] {
        self.update(source, |r| {
            r.busy_until = now.saturating_add(RETRY_SECONDS);
            true
        });
        [FetchEvent::Fetched { ok: false }, FetchEvent::Warning(why)]
    }

    /// Asks for an early refetch of `source` (an unknown `kid`): at most one per
    /// [`EARLY_REFETCH_INTERVAL_SECONDS`] per key set, across all VMs. Whether it was granted
    /// (then the request waits for it).
    pub fn request_refetch(&self, source: &JwksEndpoint, now: u64) -> bool {
        self.update(source, |r| {
            let allowed = r.refetch_requested_at == 0
                || now
                    >= r.refetch_requested_at
                        .saturating_add(EARLY_REFETCH_INTERVAL_SECONDS);
            if allowed {
                // Strictly after the document in hand, even within the same second, so that
                // the refetch is due.
                r.refetch_requested_at = now.max(r.fetched_at.saturating_add(1));
            }
            allowed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> JwksEndpoint {
        JwksEndpoint {
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
        let record = KeySetRecord {
            fetched_at: 10,
            busy_until: 20,
            refetch_requested_at: 30,
            document: DOCUMENT.as_bytes().to_vec(),
        };
        assert_eq!(KeySetRecord::decode(&record.encode()), record);
        assert_eq!(KeySetRecord::decode(&[]), KeySetRecord::default());
    }

    #[test]
    fn fetch_is_due_when_never_fetched_stale_or_asked_for() {
        let s = source();
        assert!(KeySetRecord::default().due(&s, 100));
        let fresh = KeySetRecord {
            fetched_at: 100,
            ..Default::default()
        };
        assert!(!fresh.due(&s, 399));
        assert!(fresh.due(&s, 400));
        let asked = KeySetRecord {
            fetched_at: 100,
            refetch_requested_at: 150,
            ..Default::default()
        };
        assert!(asked.due(&s, 150));
        let busy = KeySetRecord {
            busy_until: 160,
            ..asked
        };
        assert!(!busy.due(&s, 159));
    }

    #[test]
    fn installed_keys_resolve_and_bad_documents_keep_the_last_good() {
        let mut keys = FetchedKeys::new(1);
        let source = KeySource::Fetched(0);
        assert_eq!(
            keys.resolve(&source).unwrap_err(),
            Reason::KeySetUnavailable
        );
        let good = KeySetRecord {
            fetched_at: 10,
            document: DOCUMENT.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(keys.install(0, &good, 10), Ok(true));
        assert_eq!(keys.resolve(&source).unwrap().len(), 1);
        assert_eq!(keys.install(0, &good, 10), Ok(false));
        let bad = KeySetRecord {
            fetched_at: 20,
            document: b"{}".to_vec(),
            ..Default::default()
        };
        assert!(keys.install(0, &bad, 20).is_err());
        assert_eq!(keys.resolve(&source).unwrap().len(), 1);
        assert_eq!(keys.fetched_at(0), 10);
    }

    #[test]
    fn shared_key_names_the_source_under_the_namespace() {
        let mut other = source();
        other.path = "/other".into();
        let ns = namespace(b"", b"{}");
        assert_ne!(source().shared_key(&ns), other.shared_key(&ns));
        assert!(source().shared_key(&ns).starts_with(&format!("{ns}.jwks.")));
    }

    #[test]
    fn namespaces_differ_by_configuration_and_root_id() {
        let a = namespace(b"", b"{\"issuers\":[]}");
        assert_eq!(a, namespace(b"", b"{\"issuers\":[]}"));
        assert_ne!(a, namespace(b"", b"{\"issuers\": []}"));
        assert_ne!(a, namespace(b"other", b"{\"issuers\":[]}"));
        // The root id and the configuration cannot trade bytes.
        assert_ne!(namespace(b"a", b"b"), namespace(b"", b"a\0b"));
        assert!(a.starts_with("tether.") && a.len() == "tether.".len() + 16);
        // The replay record's namespace survives a configuration change.
        assert_eq!(replay_namespace(b""), replay_namespace(b""));
        assert_ne!(replay_namespace(b""), replay_namespace(b"other"));
        assert_ne!(replay_namespace(b""), namespace(b"", b""));
    }

    /// Regression test for issue 7, finding 5: a record injected with a far-future
    /// `fetched_at` (or `busy_until`) was never refreshed, and its keys were served.
    #[test]
    fn implausible_records_are_not_installed_and_are_refetched() {
        let s = source();
        let now = 1_000;
        let injected = KeySetRecord {
            fetched_at: u64::MAX / 2,
            document: DOCUMENT.as_bytes().to_vec(),
            ..Default::default()
        };
        assert!(!injected.plausible(now));
        assert!(injected.due(&s, now));
        let mut keys = FetchedKeys::new(1);
        assert!(keys.install(0, &injected, now).is_err());
        assert!(keys.resolve(&KeySource::Fetched(0)).is_err());
        let blocking = KeySetRecord {
            fetched_at: now,
            busy_until: now + 3_600,
            ..Default::default()
        };
        assert!(blocking.due(&s, now));
        // A fetch's own claim is plausible, and holds.
        let claimed = KeySetRecord {
            fetched_at: now,
            busy_until: now + MAX_FUTURE_SECONDS,
            ..Default::default()
        };
        assert!(claimed.plausible(now) && !claimed.due(&s, now));
    }

    /// From the review of issue 7: a record reset after tampering starts over at a lower
    /// `fetched_at`; a VM that had decoded a later one must still take the new keys.
    #[test]
    fn a_record_with_an_earlier_fetch_time_is_still_installed() {
        let mut keys = FetchedKeys::new(1);
        let later = KeySetRecord {
            fetched_at: 1_060,
            document: DOCUMENT.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(keys.install(0, &later, 1_000), Ok(true));
        let reset = KeySetRecord {
            fetched_at: 1_001,
            ..later.clone()
        };
        assert_eq!(keys.install(0, &reset, 1_001), Ok(true));
        assert_eq!(keys.fetched_at(0), 1_001);
        assert_eq!(keys.install(0, &reset, 1_002), Ok(false));
    }

    #[test]
    fn a_document_that_is_not_a_usable_jwks_is_not_installed() {
        let mut keys = FetchedKeys::new(1);
        for document in [&b"not json"[..], b"{}", b"{\"keys\": []}", b"[1]"] {
            let record = KeySetRecord {
                fetched_at: 10,
                document: document.to_vec(),
                ..Default::default()
            };
            assert!(keys.install(0, &record, 10).is_err());
        }
        assert_eq!(keys.fetched_at(0), 0);
    }

    use crate::shared::Memory;

    /// A dispatcher that records what it sent and hands out call tokens.
    #[derive(Default)]
    struct Calls {
        sent: Vec<String>,
        fail: bool,
    }

    impl Calls {
        fn dispatch(&mut self) -> impl FnMut(&JwksEndpoint) -> Option<u32> + '_ {
            move |source| {
                self.sent.push(source.path.clone());
                (!self.fail).then_some(self.sent.len() as u32)
            }
        }
    }

    fn fetched(events: &[FetchEvent]) -> Vec<bool> {
        events
            .iter()
            .filter_map(|e| match e {
                FetchEvent::Fetched { ok } => Some(*ok),
                _ => None,
            })
            .collect()
    }

    /// The README's promise, on the host: one fetch serves every VM. Two VMs tick at once;
    /// one claims the fetch, the other waits and decodes what the first wrote.
    #[test]
    fn one_fetch_serves_every_vm() {
        let data = Memory::default();
        let sources = [source()];
        let (mut a, mut b) = (
            Fetcher::new(&data, "ns".into()),
            Fetcher::new(&data, "ns".into()),
        );
        let (mut keys_a, mut keys_b) = (FetchedKeys::new(1), FetchedKeys::new(1));
        let (mut calls_a, mut calls_b) = (Calls::default(), Calls::default());
        a.refresh(&sources, &mut keys_a, 100, &mut calls_a.dispatch());
        b.refresh(&sources, &mut keys_b, 100, &mut calls_b.dispatch());
        assert_eq!((calls_a.sent.len(), calls_b.sent.len()), (1, 0));
        let events = a.on_answer(
            1,
            Ok(DOCUMENT.as_bytes().to_vec()),
            &sources,
            &mut keys_a,
            100,
        );
        assert_eq!(fetched(&events), [true]);
        assert!(keys_a.resolve(&KeySource::Fetched(0)).is_ok());
        // The other VM's next tick decodes the shared document, and fetches nothing.
        assert!(keys_b.resolve(&KeySource::Fetched(0)).is_err());
        b.refresh(&sources, &mut keys_b, 101, &mut calls_b.dispatch());
        assert!(keys_b.resolve(&KeySource::Fetched(0)).is_ok());
        assert_eq!(calls_b.sent.len(), 0);
        // Stale after refresh_seconds: fetched again, once.
        a.refresh(&sources, &mut keys_a, 400, &mut calls_a.dispatch());
        b.refresh(&sources, &mut keys_b, 400, &mut calls_b.dispatch());
        assert_eq!(calls_a.sent.len() + calls_b.sent.len(), 2);
    }

    /// The README's promise: a failed fetch keeps the last good key set and is retried after
    /// 5 seconds, by whichever VM comes first.
    #[test]
    fn a_failed_fetch_keeps_the_keys_and_is_retried_after_five_seconds() {
        let data = Memory::default();
        let sources = [source()];
        let mut vm = Fetcher::new(&data, "ns".into());
        let mut keys = FetchedKeys::new(1);
        let mut calls = Calls::default();
        vm.refresh(&sources, &mut keys, 100, &mut calls.dispatch());
        vm.on_answer(
            1,
            Ok(DOCUMENT.as_bytes().to_vec()),
            &sources,
            &mut keys,
            100,
        );
        vm.refresh(&sources, &mut keys, 400, &mut calls.dispatch());
        let events = vm.on_answer(2, Err("HTTP status 500".into()), &sources, &mut keys, 400);
        assert_eq!(fetched(&events), [false]);
        assert!(matches!(&events[1], FetchEvent::Warning(w) if w.contains("HTTP status 500")));
        assert!(
            keys.resolve(&KeySource::Fetched(0)).is_ok(),
            "the last good keys stay"
        );
        vm.refresh(&sources, &mut keys, 404, &mut calls.dispatch());
        assert_eq!(calls.sent.len(), 2, "not before 5 seconds");
        vm.refresh(&sources, &mut keys, 405, &mut calls.dispatch());
        assert_eq!(calls.sent.len(), 3);
    }

    #[test]
    fn a_fetch_that_cannot_be_sent_backs_off_too() {
        let data = Memory::default();
        let sources = [source()];
        let mut vm = Fetcher::new(&data, "ns".into());
        let mut keys = FetchedKeys::new(1);
        let mut calls = Calls {
            fail: true,
            ..Calls::default()
        };
        let events = vm.refresh(&sources, &mut keys, 100, &mut calls.dispatch());
        assert_eq!(fetched(&events), [false]);
        vm.refresh(&sources, &mut keys, 101, &mut calls.dispatch());
        assert_eq!(calls.sent.len(), 1);
        vm.refresh(&sources, &mut keys, 105, &mut calls.dispatch());
        assert_eq!(calls.sent.len(), 2);
    }

    /// The README's promise: an unknown `kid` gets one early refetch per 30 seconds per key
    /// set, whichever VM asks.
    #[test]
    fn early_refetch_is_granted_once_per_thirty_seconds_across_vms() {
        let data = Memory::default();
        let sources = [source()];
        let (a, b) = (
            Fetcher::new(&data, "ns".into()),
            Fetcher::new(&data, "ns".into()),
        );
        let mut keys = FetchedKeys::new(1);
        let mut vm = Fetcher::new(&data, "ns".into());
        let mut calls = Calls::default();
        vm.refresh(&sources, &mut keys, 100, &mut calls.dispatch());
        vm.on_answer(
            1,
            Ok(DOCUMENT.as_bytes().to_vec()),
            &sources,
            &mut keys,
            100,
        );
        assert!(a.request_refetch(&sources[0], 110));
        assert!(!b.request_refetch(&sources[0], 139));
        // The granted refetch is due at once (not at refresh_seconds).
        vm.refresh(&sources, &mut keys, 110, &mut calls.dispatch());
        assert_eq!(calls.sent.len(), 2);
        assert!(b.request_refetch(&sources[0], 140));
    }

    /// A record refused at install (implausible, or not a key set) is fetched again at once.
    #[test]
    fn a_refused_shared_record_is_fetched_again() {
        let data = Memory::default();
        let sources = [source()];
        let injected = KeySetRecord {
            fetched_at: 100,
            document: b"{\"not\": \"a key set\"}".to_vec(),
            ..Default::default()
        };
        data.put(&sources[0].shared_key("ns"), &injected.encode());
        let mut vm = Fetcher::new(&data, "ns".into());
        let mut keys = FetchedKeys::new(1);
        let mut calls = Calls::default();
        let events = vm.refresh(&sources, &mut keys, 100, &mut calls.dispatch());
        assert!(matches!(&events[0], FetchEvent::Warning(w) if w.contains("refused")));
        assert_eq!(calls.sent.len(), 1, "fetched again at once");
    }

    #[test]
    fn skipped_keys_are_counted_and_an_unknown_answer_ignored() {
        let data = Memory::default();
        let sources = [source()];
        let mut vm = Fetcher::new(&data, "ns".into());
        let mut keys = FetchedKeys::new(1);
        let mut calls = Calls::default();
        vm.refresh(&sources, &mut keys, 100, &mut calls.dispatch());
        assert!(vm
            .on_answer(
                99,
                Ok(DOCUMENT.as_bytes().to_vec()),
                &sources,
                &mut keys,
                100
            )
            .is_empty());
        let with_odd_key = DOCUMENT.replace(
            "\"keys\":[",
            "\"keys\":[{\"kty\":\"RSA\",\"x5c\":[\"MIIB\"]},",
        );
        let events = vm.on_answer(1, Ok(with_odd_key.into_bytes()), &sources, &mut keys, 100);
        assert_eq!(fetched(&events), [true]);
        assert!(events.contains(&FetchEvent::KeysSkipped(1)));
    }
}
