//! The proxy-wasm glue: the only code that talks to Envoy. It reads the configuration
//! once, gathers each request's facts, asks [`crate::verdict::decide`], and acts.
//!
//! A request may be held: while its body arrives (request signatures), or while a fetched
//! key set it needs is loaded or refreshed. The root context fetches key sets (`keysets`)
//! and decides held requests again when their keys arrive or their wait runs out.

mod keysets;
mod metrics;
mod replay;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::bind::mtls::PeerCertificate;
use crate::cache::TokenCache;
use crate::config::Policy;
use crate::crypto::native::{ForeignFunction, Native};
use crate::crypto::{InVm, SignatureVerifier};
use crate::keyset::RemoteKeys;
use crate::reject::Reason;
use crate::token::fingerprint;
use crate::verdict::{decide, Pending, Request, Tokens, Verdict};
use keysets::KeySets;
use metrics::Metrics;
use replay::SharedReplayStore;

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

fn log(level: LogLevel, message: &str) {
    // Logging must never fail a request.
    let _ = hostcalls::log(level, message);
}

/// Envoy's foreign functions, called through the proxy-wasm ABI.
struct Envoy;

impl ForeignFunction for Envoy {
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function(name, Some(arguments))
            .ok()
            .flatten()
    }
}

/// How often the root context looks at key sets and held requests.
const TICK: Duration = Duration::from_millis(250);

/// What the root context and all of its requests share (one VM, one thread).
struct Shared {
    policy: Rc<Policy>,
    metrics: Metrics,
    crypto: Box<dyn SignatureVerifier>,
    cache: RefCell<TokenCache>,
    remote: RefCell<RemoteKeys>,
    /// Requests held until a key set they need is (re)loaded, by context id.
    waiting: RefCell<HashMap<u32, Waiting>>,
    /// Requests decided by the root context that still need their body, by context id.
    pending: RefCell<HashMap<u32, Box<Pending>>>,
}

/// A request held for a key set, with the facts to decide it again.
struct Waiting {
    set: usize,
    /// Give up (and refuse) after this time, in milliseconds since the epoch.
    deadline_ms: u128,
    /// The key set's `fetched_at` when the request started waiting: it is decided again once
    /// a newer one is loaded.
    seen_fetched_at: u64,
    facts: OwnedRequest,
    peer: Option<PeerCertificate>,
    end_of_stream: bool,
    /// The body's size, once it has all arrived.
    body_complete: Option<usize>,
}

/// A request's facts, owned, to decide it again later.
#[derive(Default)]
struct OwnedRequest {
    path: Vec<u8>,
    authorization: Vec<Vec<u8>>,
    method: Vec<u8>,
    scheme: Vec<u8>,
    authority: Vec<u8>,
    signature: Vec<Vec<u8>>,
    content_length: Option<usize>,
}

impl OwnedRequest {
    /// Reads every header line once: a repeated `Authorization` header must be seen as such
    /// (Envoy's single-header accessor returns only the first of some).
    fn read(signature_header: &str) -> Self {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let mut facts = OwnedRequest::default();
        for (name, value) in headers {
            match name.as_str() {
                ":path" => facts.path = value,
                ":method" => facts.method = value,
                ":scheme" => facts.scheme = value,
                ":authority" => facts.authority = value,
                "authorization" => facts.authorization.push(value),
                "content-length" => {
                    facts.content_length = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|n| n.trim().parse().ok())
                }
                other if other == signature_header => facts.signature.push(value),
                _ => {}
            }
        }
        facts
    }
}

/// One per VM and plugin.
#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    keysets: Option<KeySets>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let (Some(shared), Some(keysets)) = (&self.shared, &mut self.keysets) {
            keysets.on_response(shared, token, body_size, now_seconds());
            resolve_waiting(shared, false);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            _ => Vec::new(),
        };
        let policy = match Policy::from_json(&bytes) {
            Ok(policy) => policy,
            Err(error) => {
                // Returning false makes Envoy refuse the configuration: fail closed.
                log(
                    LogLevel::Critical,
                    &format!("tether: configuration rejected: {error}"),
                );
                self.shared = None;
                return false;
            }
        };
        for note in &policy.notes {
            log(LogLevel::Warn, &format!("tether: {note}"));
        }
        // Detected once per VM: the host's verifier must pass a known-answer test.
        let crypto: Box<dyn SignatureVerifier> = match Native::detect(Envoy) {
            Some(native) => {
                log(LogLevel::Info, "tether: signatures: RS256/RS384/RS512/ES256/ES384 by Envoy's native verify_signature, EdDSA and PS* in the VM");
                Box::new(native)
            }
            None => {
                log(LogLevel::Warn, "tether: signatures: Envoy's verify_signature is not available; every signature is verified in the VM");
                Box::new(InVm)
            }
        };
        let remote_sets = policy.remote_sets.len();
        let shared = Rc::new(Shared {
            cache: RefCell::new(TokenCache::new(policy.token_cache_entries)),
            remote: RefCell::new(RemoteKeys::new(remote_sets)),
            policy: Rc::new(policy),
            metrics: Metrics::define(),
            crypto,
            waiting: RefCell::default(),
            pending: RefCell::default(),
        });
        if remote_sets > 0 {
            // The first fetch starts on the first tick, not here: a VM configured on Envoy's
            // main thread may be gone before an answer could reach it.
            self.keysets = Some(KeySets::default());
            self.set_tick_period(TICK);
        }
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        if let (Some(shared), Some(keysets)) = (&self.shared, &mut self.keysets) {
            keysets.refresh(shared, now_seconds());
            resolve_waiting(shared, true);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            context_id,
            shared: self.shared.clone(),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request.
struct Filter {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// A request whose signature waits for the body.
    pending: Option<Box<Pending>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return refuse(None, Reason::NotConfigured, None);
        };
        // The claim headers are Tether's to set: a client's copy is removed on every
        // request, whatever the route, so that it can never be spoofed upstream.
        for mapping in &shared.policy.claims_to_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &mapping.header, None);
        }
        let facts = OwnedRequest::read(&shared.policy.signed_requests.header);
        match decide_now(
            &shared,
            &facts,
            &mut || peer_certificate(),
            end_of_stream,
            true,
        ) {
            Outcome::Done(action) => action,
            Outcome::Body(pending) => {
                self.pending = Some(pending);
                // Held only until the body has arrived (Envoy buffers it meanwhile).
                Action::Pause
            }
            Outcome::Wait(set) => {
                let policy = &shared.policy;
                let timeout = policy.remote_sets.get(set).map_or(0, |s| s.timeout_ms);
                let waiting = Waiting {
                    set,
                    deadline_ms: now_millis() + u128::from(timeout),
                    seen_fetched_at: shared.remote.borrow().fetched_at(set),
                    facts,
                    peer: peer_certificate(),
                    end_of_stream,
                    body_complete: end_of_stream.then_some(0),
                };
                shared.waiting.borrow_mut().insert(self.context_id, waiting);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let max = shared.policy.signed_requests.max_body_bytes;
        // Still waiting for keys: keep the body, note when it is complete.
        if let Some(waiting) = shared.waiting.borrow_mut().get_mut(&self.context_id) {
            if end_of_stream {
                waiting.body_complete = Some(body_size);
            }
            return Action::Pause;
        }
        if self.pending.is_none() {
            self.pending = shared.pending.borrow_mut().remove(&self.context_id);
        }
        let Some(presented) = self.pending.as_ref().map(|p| p.presented.clone()) else {
            return Action::Continue;
        };
        if body_size > max {
            self.pending = None;
            return refuse(Some(&shared), Reason::BodyTooLarge, Some(&presented));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match self.pending.take() {
            // Continue here resumes the headers held back in on_http_request_headers.
            Some(pending) => finish(&shared, *pending, body_size),
            None => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        // A held request that ended (client gone) must not linger in the shared tables.
        if let Some(shared) = &self.shared {
            shared.waiting.borrow_mut().remove(&self.context_id);
            shared.pending.borrow_mut().remove(&self.context_id);
        }
    }
}

/// What to do with a request after deciding on its headers.
enum Outcome {
    Done(Action),
    Body(Box<Pending>),
    Wait(usize),
}

/// Decides a request (in whatever context is current) and acts on everything but a wait
/// for keys or for the body. `may_wait` is false once a held request's deadline has passed.
fn decide_now(
    shared: &Shared,
    facts: &OwnedRequest,
    peer: &mut dyn FnMut() -> Option<PeerCertificate>,
    end_of_stream: bool,
    may_wait: bool,
) -> Outcome {
    let policy = &shared.policy;
    let authorization: Vec<&[u8]> = facts.authorization.iter().map(Vec::as_slice).collect();
    let signature: Vec<&[u8]> = facts.signature.iter().map(Vec::as_slice).collect();
    let request = Request {
        path: &facts.path,
        authorization: &authorization,
        method: &facts.method,
        scheme: &facts.scheme,
        authority: &facts.authority,
        signature: &signature,
    };
    let now = now_seconds();
    // The VM runs one callback at a time, so these are never borrowed twice; were they,
    // the request is served uncached rather than trapping the VM.
    let mut spare = TokenCache::new(0);
    let mut cache = shared.cache.try_borrow_mut();
    let remote = shared.remote.try_borrow();
    let empty = RemoteKeys::default();
    let mut tokens = Tokens {
        crypto: shared.crypto.as_ref(),
        cache: cache.as_deref_mut().unwrap_or(&mut spare),
        remote: remote.as_deref().unwrap_or(&empty),
    };
    let verdict = decide(policy, request, peer, &mut tokens, now);
    match verdict {
        Verdict::Allow { headers } => {
            allow(shared, headers.iter().map(|(n, v)| (*n, v.as_str())));
            Outcome::Done(Action::Continue)
        }
        Verdict::Deny { reason, token } => Outcome::Done(refuse(Some(shared), reason, token)),
        Verdict::NeedBody(pending) => {
            if facts
                .content_length
                .is_some_and(|n| n > policy.signed_requests.max_body_bytes)
            {
                return Outcome::Done(refuse(
                    Some(shared),
                    Reason::BodyTooLarge,
                    Some(&pending.presented),
                ));
            }
            if end_of_stream {
                return Outcome::Done(finish(shared, *pending, 0));
            }
            Outcome::Body(pending)
        }
        Verdict::NeedKeys { set, reason, token } => {
            let wait = may_wait
                && match reason {
                    // Not loaded yet: wait for the first fetch.
                    Reason::KeySetUnavailable => true,
                    // An unknown `kid`: one early refetch, rate-limited per key set.
                    _ => keysets::request_refetch(policy, set, now),
                };
            if wait {
                Outcome::Wait(set)
            } else {
                Outcome::Done(refuse(Some(shared), reason, token))
            }
        }
    }
}

/// Decides held requests again: those whose key set has been (re)loaded, and, on a tick,
/// those whose wait has run out.
fn resolve_waiting(shared: &Shared, check_deadlines: bool) {
    let now_ms = now_millis();
    let ready: Vec<u32> = {
        let remote = shared.remote.borrow();
        shared
            .waiting
            .borrow()
            .iter()
            .filter(|(_, w)| {
                remote.fetched_at(w.set) > w.seen_fetched_at
                    || (check_deadlines && now_ms >= w.deadline_ms)
            })
            .map(|(id, _)| *id)
            .collect()
    };
    for context_id in ready {
        let Some(waiting) = shared.waiting.borrow_mut().remove(&context_id) else {
            continue;
        };
        if hostcalls::set_effective_context(context_id).is_err() {
            continue;
        }
        let peer = waiting.peer;
        // A request may need a second key set after the first (the issuer's, then the
        // client's): it may wait again, but never past its first deadline.
        let outcome = decide_now(
            shared,
            &waiting.facts,
            &mut || peer,
            waiting.end_of_stream,
            now_ms < waiting.deadline_ms,
        );
        let action = match outcome {
            Outcome::Done(action) => action,
            Outcome::Body(pending) => match waiting.body_complete {
                Some(size) => finish(shared, *pending, size),
                None => {
                    // The body is still coming: its callback finishes the request.
                    shared.pending.borrow_mut().insert(context_id, pending);
                    continue;
                }
            },
            Outcome::Wait(set) => {
                let seen_fetched_at = shared.remote.borrow().fetched_at(set);
                shared.waiting.borrow_mut().insert(
                    context_id,
                    Waiting {
                        set,
                        seen_fetched_at,
                        ..waiting
                    },
                );
                continue;
            }
        };
        if matches!(action, Action::Continue) {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// Verifies a pending request signature over the body (of `body_size` bytes, already
/// buffered by Envoy) and lets the request go on, or refuses it.
fn finish(shared: &Shared, pending: Pending, body_size: usize) -> Action {
    let presented = pending.presented.clone();
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let remote = shared.remote.borrow();
    let result = pending.finish(
        &shared.policy,
        &remote,
        &body,
        shared.crypto.as_ref(),
        &mut SharedReplayStore,
        now_seconds(),
    );
    match result {
        Ok(headers) => {
            allow(
                shared,
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            );
            Action::Continue
        }
        Err(reason) => refuse(Some(shared), reason, Some(&presented)),
    }
}

/// Sets the claim headers, strips the token if configured, and counts the request.
fn allow<'h>(shared: &Shared, headers: impl Iterator<Item = (&'h str, &'h str)>) {
    for (name, value) in headers {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    if shared.policy.strip_authorization {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None);
    }
    shared.metrics.allowed();
}

/// Sends the refusal for `reason`, counts it and logs it with the token's fingerprint.
fn refuse(shared: Option<&Shared>, reason: Reason, token: Option<&str>) -> Action {
    if let Some(shared) = shared {
        shared.metrics.refused(reason);
    }
    let fp = token.map_or_else(|| "-".to_string(), fingerprint);
    log(
        LogLevel::Info,
        &format!(
            "tether: refused reason={} status={} token_fp={fp}",
            reason.name(),
            reason.status()
        ),
    );
    let challenge = reason.www_authenticate();
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
    ];
    if let Some(challenge) = challenge.as_deref() {
        headers.push(("www-authenticate", challenge));
    }
    let body = reason.body();
    let _ =
        hostcalls::send_http_response(u32::from(reason.status()), headers, Some(body.as_bytes()));
    Action::Pause
}

/// The connection's client certificate, from Envoy's `sha256_peer_certificate_digest`.
fn peer_certificate() -> Option<PeerCertificate> {
    let digest =
        hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]).ok()??;
    PeerCertificate::from_hex_digest(&digest)
}

/// The host's clock, in seconds since the Unix epoch.
fn now_seconds() -> u64 {
    u64::try_from(now_millis() / 1000).unwrap_or(u64::MAX)
}

fn now_millis() -> u128 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis())
}
