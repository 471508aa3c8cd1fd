//! The proxy-wasm glue: the only code that talks to Envoy. It reads the configuration
//! once, gathers each request's facts, asks [`crate::verdict::decide`], and acts.
//!
//! A request may be held: while its body arrives (request signatures), or while a fetched
//! key set it needs is loaded or refreshed. Its life is [`crate::lifecycle::Held`], a pure
//! state machine; this module feeds it the events (headers, body, trailers, keys, ticks) and
//! carries out its steps. Every host call goes through [`hostcalls`], which never panics.

mod fetch;
mod hostcalls;
mod introspection;
mod metrics;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::bind::certificate::{FactsCache, FACTS_CACHE_ENTRIES};
use crate::bind::identity::CertificateFacts;
use crate::bind::mtls::PeerCertificate;
use crate::bind::peer::{self, Forwarded, Peer, PeerNames};
use crate::bind::xfcc;
use crate::cache::{IntrospectionCache, TokenCache};
use crate::config::Policy;
use crate::crypto::native::{ForeignFunction, Native};
use crate::crypto::{InVm, SignatureVerifier};
use crate::introspect::Calls;
use crate::keyset::{namespace, replay_namespace, FetchedKeys, Fetcher};
use crate::lifecycle::{
    Decision, Driven, Entry, Held, Limits, Outgoing, Pipeline, ResponseStep, Step, Table, Wait,
};
use crate::policy::SignatureFormat;
use crate::reject::{Challenge, Reason};
use crate::replay::SharedReplay;
use crate::respond::{self, Exchange};
use crate::verdict::{
    decide, Facts, Introspect, Pending, Published, Request, SignResponse, Tokens,
};
use hostcalls::{Buffer, EnvoySharedData, Level, Map};
use metrics::Metrics;

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

fn log(level: Level, message: &str) {
    hostcalls::log(level, message);
}

/// Envoy's foreign functions.
struct Envoy;

impl ForeignFunction for Envoy {
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function(name, arguments)
            .ok()
            .flatten()
    }
}

/// How often the root context looks at key sets and held requests (milliseconds).
const TICK_MS: u32 = 250;

/// What the root context and all of its requests share (one VM, one thread).
struct Shared {
    policy: Rc<Policy>,
    metrics: Metrics,
    crypto: Box<dyn SignatureVerifier>,
    cache: RefCell<TokenCache>,
    fetched: RefCell<FetchedKeys>,
    /// Requests held until they are decided (and those refused, until their streams end).
    held: RefCell<Table<RequestState>>,
    /// Fetches the key sets, on the schedule all VMs share.
    fetcher: RefCell<Fetcher<EnvoySharedData>>,
    /// The replay record, shared by this plugin's VMs across configurations.
    replay: SharedReplay<EnvoySharedData>,
    /// How long a held request's body may take and how large it may be (from the policy).
    limits: Limits,
    /// The hint about a body that never reached the filter was logged (once per VM).
    warned_body_withheld: Cell<bool>,
    /// The hint about a peer address that `x-forwarded-for` made unknown was logged.
    warned_address_withheld: Cell<bool>,
    /// Client certificates' facts, read once per VM (client identity).
    certificates: RefCell<FactsCache>,
    /// What the introspection endpoints said, per token.
    introspected: RefCell<IntrospectionCache>,
    /// The introspection calls in flight.
    calls: RefCell<Calls>,
    /// How many answers each issuer's introspection endpoint has given this VM (or calls it
    /// lost): a request waiting on one is decided again when its count moves.
    introspection_answers: RefCell<Vec<u64>>,
    /// When a failing introspection endpoint was last logged (milliseconds; 0: never).
    warned_introspection_at: Cell<u64>,
    /// What the responses of allowed requests get (a DPoP nonce, a signature), until they
    /// start.
    answers: RefCell<HashMap<u32, Answer>>,
}

/// What the response of an allowed request gets.
struct Answer {
    /// A fresh `DPoP-Nonce` (a `dpop_nonce` route, RFC 9449 §8).
    nonce: bool,
    /// A signature (a `sign_response` route).
    sign: Option<ToSign>,
}

/// A response to sign: how, and the request it answers.
struct ToSign {
    format: SignatureFormat,
    exchange: Exchange,
}

/// What it takes to decide a request (again), beside its life in the [`Table`].
struct RequestState {
    facts: Facts,
    /// What Envoy reports of the connection, read once when first needed.
    connection: Connection,
    /// What waits for the body (the request signature, the form scan).
    pending: Option<Box<Pending>>,
    /// The claim headers to set once it is allowed.
    headers: Vec<(String, String)>,
    /// The challenges of a refusal (and whether the route gives out DPoP nonces).
    challenge: Challenge,
    /// On a `sign_response` route: how the response is signed, and what binds it.
    sign_response: Option<SignResponse>,
    /// What the access log shows of the decision.
    published: Published,
}

/// Reads the request's header lines once, and removes those an upstream could take for a
/// claim header, and an `x-forwarded-client-cert` from a peer that is not trusted to send
/// one (`peer_certificate.source: xfcc`); a malformed one from a trusted peer refuses the
/// request, whatever the route.
fn read_facts(shared: &Shared, connection: &mut Connection) -> Result<Facts, Reason> {
    let headers = hostcalls::header_pairs(Map::RequestHeaders).map_err(|_| Reason::HostError)?;
    let (facts, spoofed) = Facts::from_headers(headers, &shared.policy);
    for name in spoofed {
        let _ = hostcalls::remove_header(Map::RequestHeaders, &name);
    }
    if !facts.xfcc.is_empty() {
        let lines: Vec<&[u8]> = facts.xfcc.iter().map(Vec::as_slice).collect();
        match peer::forwarded(&shared.policy.peer_certificate, connection, &lines) {
            // Never trusted, and never forwarded: an upstream could trust it. (Tether itself
            // reads from it only a `Cert` that hashes to the connection's own certificate.)
            // Even the element Envoy appended for the connection itself goes: with
            // `FORWARD_ONLY` on this listener, the same element could be the client's own
            // writing. Only what the client sent is counted.
            Forwarded::Untrusted => {
                let _ = hostcalls::remove_header(Map::RequestHeaders, xfcc::HEADER);
                shared.metrics.xfcc_untrusted();
            }
            Forwarded::OwnElement => {
                let _ = hostcalls::remove_header(Map::RequestHeaders, xfcc::HEADER);
            }
            Forwarded::Malformed => return Err(Reason::XfccMalformed),
            Forwarded::Absent | Forwarded::Trusted => {}
        }
    }
    connection.forwarded_for = facts.forwarded_for;
    Ok(facts)
}

/// What Envoy reports of a request's connection, each read from the host once, when first
/// asked.
#[derive(Default)]
struct Connection {
    /// The request came with `x-forwarded-for`.
    forwarded_for: bool,
    /// The peer address was asked for and is unknown because of `x-forwarded-for`.
    address_withheld: bool,
    digest: Option<Option<PeerCertificate>>,
    names: Option<PeerNames>,
    address: Option<Option<std::net::IpAddr>>,
}

impl Peer for Connection {
    fn digest(&mut self) -> Option<PeerCertificate> {
        *self.digest.get_or_insert_with(|| {
            text_property("sha256_peer_certificate_digest")
                .and_then(|hex| PeerCertificate::from_hex_digest(hex.as_bytes()))
        })
    }

    fn names(&mut self) -> PeerNames {
        self.names
            .get_or_insert_with(|| PeerNames {
                subject: text_property("subject_peer_certificate"),
                uri: text_property("uri_san_peer_certificate"),
                dns: text_property("dns_san_peer_certificate"),
            })
            .clone()
    }

    fn address(&mut self) -> Option<std::net::IpAddr> {
        if let Some(known) = self.address {
            return known;
        }
        let direct = hostcalls::property(&["filter_state", peer::PEER_ADDRESS_STATE])
            .ok()
            .flatten();
        let address = peer::peer_address(direct.as_deref(), self.forwarded_for, || {
            hostcalls::property(&["source", "address"]).ok().flatten()
        });
        self.address_withheld = direct.is_none() && self.forwarded_for;
        self.address = Some(address);
        address
    }
}

/// A request's connection, with the VM's memory of certificates read before.
struct Remembering<'a> {
    connection: &'a mut Connection,
    certificates: &'a RefCell<FactsCache>,
}

impl Peer for Remembering<'_> {
    fn digest(&mut self) -> Option<PeerCertificate> {
        self.connection.digest()
    }

    fn names(&mut self) -> PeerNames {
        self.connection.names()
    }

    fn address(&mut self) -> Option<std::net::IpAddr> {
        self.connection.address()
    }

    fn remembered(&mut self, digest: &PeerCertificate) -> Option<Rc<CertificateFacts>> {
        self.certificates
            .try_borrow()
            .ok()
            .and_then(|cache| cache.get(digest.sha256()))
    }

    fn remember(&mut self, digest: &PeerCertificate, facts: &Rc<CertificateFacts>) {
        if let Ok(mut cache) = self.certificates.try_borrow_mut() {
            cache.insert(*digest.sha256(), Rc::clone(facts));
        }
    }
}

/// A `connection.<name>` property as text; `None` if absent, empty or not UTF-8.
fn text_property(name: &str) -> Option<String> {
    let value = hostcalls::property(&["connection", name]).ok()??;
    String::from_utf8(value).ok().filter(|v| !v.is_empty())
}

/// One per VM and plugin.
#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(shared) = &self.shared {
            let now_ms = now_millis();
            if introspection::on_answer(shared, token, headers, body_size, now_ms) {
                resolve_held(shared, now_ms);
                return;
            }
            let answer = fetch::read_answer(headers, body_size);
            let events = {
                let mut keys = shared.fetched.borrow_mut();
                shared.fetcher.borrow_mut().on_answer(
                    token,
                    answer,
                    &shared.policy.jwks_endpoints,
                    &mut keys,
                    now_ms / 1000,
                )
            };
            fetch::report(shared, events);
            resolve_held(shared, now_ms);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::buffer(Buffer::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let policy = match Policy::from_json(&bytes) {
            Ok(policy) => policy,
            Err(error) => {
                // Returning false makes Envoy refuse the configuration: fail closed.
                log(
                    Level::Critical,
                    &format!("tether: configuration rejected: {error}"),
                );
                self.shared = None;
                return false;
            }
        };
        for note in &policy.notes {
            log(Level::Warn, &format!("tether: {note}"));
        }
        // Detected once per VM: the host's verifier must pass a known-answer test.
        let crypto: Box<dyn SignatureVerifier> = match Native::detect(Envoy) {
            Some(native) => {
                log(Level::Info, "tether: signatures: RS256/RS384/RS512/ES256/ES384 by Envoy's native verify_signature, EdDSA and PS* in the VM");
                Box::new(native)
            }
            None => {
                log(Level::Warn, "tether: signatures: Envoy's verify_signature is not available; every signature is verified in the VM");
                Box::new(InVm)
            }
        };
        let root_id = hostcalls::property(&["plugin_root_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        let vm_id = hostcalls::property(&["plugin_vm_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        if vm_id.is_empty() {
            log(Level::Warn, "tether: vm_config.vm_id is empty: any other Wasm plugin with an empty vm_id shares Tether's key sets and replay record; give Tether a vm_id of its own");
        }
        let namespace = namespace(&root_id, &bytes);
        // Every bucket exists before this VM serves a request, so that every write to one is
        // a compare-and-swap (issue 7, finding 8). Envoy configures a plugin on its main
        // thread before any worker serves with it.
        // One record for request signatures and DPoP proofs: it keeps the wider window.
        let replay = SharedReplay::configure(
            EnvoySharedData,
            replay_namespace(&root_id),
            policy
                .signed_requests
                .max_age_seconds
                .max(policy.dpop.max_age_seconds)
                .max(policy.message_signatures.max_age_seconds),
            now_seconds,
        );
        log(
            Level::Info,
            &format!("tether: shared data namespace {namespace}"),
        );
        let jwks_endpoints = policy.jwks_endpoints.len();
        let issuer_count = policy.issuers.len();
        // The requests waiting on an answer read it from this cache: it is never off.
        let introspection_entries = policy
            .token_cache_entries
            .max(introspection::MIN_CACHE_ENTRIES);
        let max_held_requests = policy.max_held_requests;
        let limits = Limits {
            body_timeout_ms: policy.signed_requests.body_timeout_ms,
            max_body_bytes: policy.signed_requests.max_body_bytes,
        };
        let shared = Rc::new(Shared {
            cache: RefCell::new(TokenCache::new(policy.token_cache_entries)),
            fetched: RefCell::new(FetchedKeys::new(jwks_endpoints)),
            policy: Rc::new(policy),
            metrics: Metrics::define(),
            crypto,
            held: RefCell::new(Table::new(max_held_requests)),
            fetcher: RefCell::new(Fetcher::new(EnvoySharedData, namespace)),
            replay,
            limits,
            warned_body_withheld: Cell::new(false),
            warned_address_withheld: Cell::new(false),
            certificates: RefCell::new(FactsCache::new(FACTS_CACHE_ENTRIES)),
            introspected: RefCell::new(IntrospectionCache::new(introspection_entries)),
            calls: RefCell::new(Calls::default()),
            introspection_answers: RefCell::new(vec![0; issuer_count]),
            warned_introspection_at: Cell::new(0),
            answers: RefCell::new(HashMap::new()),
        });
        // The first fetch starts on the first tick, not here: a VM configured on Envoy's main
        // thread may be gone before an answer could reach it. The tick also times out held
        // requests.
        if hostcalls::set_tick_period_ms(TICK_MS).is_err() {
            log(Level::Critical, "tether: cannot set the tick period");
            return false;
        }
        self.shared = Some(shared);
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            let now_ms = now_millis();
            let events = {
                let mut keys = shared.fetched.borrow_mut();
                shared.fetcher.borrow_mut().refresh(
                    &shared.policy.jwks_endpoints,
                    &mut keys,
                    now_ms / 1000,
                    &mut fetch::dispatch,
                )
            };
            fetch::report(shared, events);
            // Calls queued by requests go from here, the root context, where their answers
            // come back; then the tick goes back to its pace.
            if introspection::send_queued(shared, now_ms) {
                let _ = hostcalls::set_tick_period_ms(TICK_MS);
            }
            resolve_held(shared, now_ms);
            if let Ok(mut cache) = shared.cache.try_borrow_mut() {
                shared.metrics.cache_lookups(cache.take_counts());
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            context_id,
            shared: self.shared.clone(),
            outgoing: None,
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
    /// The response held to be signed, from its headers on.
    outgoing: Option<(Outgoing, ToSign)>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // The host's clock, read once for the whole callback.
        let now_ms = now_millis();
        let Some(shared) = self.shared.clone() else {
            publish(Some(Reason::NotConfigured), &Published::default(), None);
            return refuse(None, Reason::NotConfigured, None, Challenge::BEARER, now_ms);
        };
        let mut connection = Connection::default();
        let facts = match read_facts(&shared, &mut connection) {
            Ok(facts) => facts,
            Err(reason) => {
                shared.held.borrow_mut().refused(self.context_id);
                publish(Some(reason), &Published::default(), None);
                return refuse(Some(&shared), reason, None, Challenge::BEARER, now_ms);
            }
        };
        if let Some(signing) = &shared.policy.response_signing {
            if signing.is_jwks_request(&facts.method, &facts.path) {
                return answer_jwks(&shared, signing);
            }
        }
        let request = Entry {
            held: Held::new(now_ms, end_of_stream, facts.content_length, shared.limits),
            token_fp: None,
            request: RequestState {
                facts,
                connection,
                pending: None,
                headers: Vec::new(),
                challenge: Challenge::BEARER,
                sign_response: None,
                published: Published::default(),
            },
        };
        drive(
            &shared,
            self.context_id,
            request,
            Step::Decide { may_wait: true },
            true,
            now_ms,
        )
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.event(|held| held.on_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(shared) = self
            .shared
            .as_ref()
            .filter(|s| !s.policy.claims_to_headers.is_empty())
        {
            // A claim header's look-alike is no more welcome as a trailer.
            if let Ok(trailers) = hostcalls::header_pairs(Map::RequestTrailers) {
                for (name, _) in trailers {
                    match std::str::from_utf8(&name) {
                        Ok(name) if shared.policy.spoofs_claim_header(name) => {
                            let _ = hostcalls::remove_header(Map::RequestTrailers, name);
                        }
                        _ => {}
                    }
                }
            }
        }
        // Trailers end the body; they never release a held request (issue 7, finding 1).
        self.event(Held::on_trailers)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(answer) = shared.answers.borrow_mut().remove(&self.context_id) else {
            return Action::Continue;
        };
        // RFC 9449 §8: a fresh nonce on every success of a nonce route, so that a client never
        // needs a round trip to learn the next one when the window turns.
        if answer.nonce {
            if let Some(nonces) = &shared.policy.dpop.nonces {
                let nonce = nonces.mint(now_seconds());
                let _ = hostcalls::set_header(Map::ResponseHeaders, "dpop-nonce", &nonce);
            }
        }
        let Some(to_sign) = answer.sign else {
            return Action::Continue;
        };
        let Some(signing) = &shared.policy.response_signing else {
            return Action::Continue;
        };
        let announced = hostcalls::header(Map::ResponseHeaders, "content-length")
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok());
        let mut outgoing = Outgoing::new(signing.max_body_bytes);
        let step = outgoing.on_headers(end_of_stream, announced);
        self.outgoing = Some((outgoing, to_sign));
        self.response_step(&shared, step)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(shared), Some((outgoing, _))) = (self.shared.clone(), self.outgoing.as_mut())
        else {
            return Action::Continue;
        };
        let step = outgoing.on_body(body_size, end_of_stream);
        self.response_step(&shared, step)
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        let (Some(shared), Some((outgoing, _))) = (self.shared.clone(), self.outgoing.as_mut())
        else {
            return Action::Continue;
        };
        let step = outgoing.on_trailers();
        self.response_step(&shared, step)
    }

    fn on_log(&mut self) {
        // A held request that ended (client gone) must not linger.
        if let Some(shared) = &self.shared {
            shared.held.borrow_mut().forget(self.context_id);
            shared.answers.borrow_mut().remove(&self.context_id);
        }
    }
}

impl Filter {
    /// Carries out a step of the held response's life.
    fn response_step(&mut self, shared: &Shared, step: ResponseStep) -> Action {
        let step = match step {
            ResponseStep::Sign => {
                let result = match self.outgoing.as_ref() {
                    Some((_, to_sign)) => sign_response(shared, to_sign),
                    None => Err(Reason::ResponseSigningFailed),
                };
                match self.outgoing.as_mut() {
                    Some((outgoing, _)) => outgoing.signed(result),
                    None => ResponseStep::Refuse(Reason::ResponseSigningFailed),
                }
            }
            step => step,
        };
        match step {
            ResponseStep::Continue => Action::Continue,
            ResponseStep::Pause | ResponseStep::Sign => Action::Pause,
            ResponseStep::Refuse(reason) => {
                // The request was allowed; its response is not sent: the log says why.
                publish(Some(reason), &Published::default(), None);
                refuse(Some(shared), reason, None, Challenge::BEARER, now_millis())
            }
        }
    }

    /// Feeds an event of the request's own stream to its life, if it is held.
    fn event(&mut self, event: impl FnOnce(&mut Held) -> Step) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Pause;
        };
        if shared.held.borrow().is_refused(self.context_id) {
            return Action::Pause;
        }
        let Some(mut request) = shared.held.borrow_mut().take(self.context_id) else {
            return Action::Continue;
        };
        let step = event(&mut request.held);
        drive(&shared, self.context_id, request, step, true, now_millis())
    }
}

/// Runs a request's steps ([`Table::drive`]) and acts on the outcome. `in_callback`: the
/// request's own callback is running, so letting it go on is answering `Continue`; from the
/// root context it is resuming the request.
fn drive(
    shared: &Shared,
    context_id: u32,
    request: Entry<RequestState>,
    step: Step,
    in_callback: bool,
    now_ms: u64,
) -> Action {
    let driven = shared.held.borrow_mut().drive(
        context_id,
        request,
        step,
        &mut Deciding { shared, now_ms },
        now_ms,
    );
    match driven {
        Driven::Held => Action::Pause,
        Driven::Continue(entry) => {
            allow(shared, &entry.request.headers);
            publish(None, &entry.request.published, entry.token_fp.as_deref());
            let nonce = entry.request.challenge.nonce;
            let sign = entry.request.sign_response.map(|sign| ToSign {
                format: sign.format,
                exchange: exchange(&entry.request.facts, sign),
            });
            if nonce || sign.is_some() {
                shared
                    .answers
                    .borrow_mut()
                    .insert(context_id, Answer { nonce, sign });
            }
            if !in_callback {
                let _ = hostcalls::resume_request();
            }
            Action::Continue
        }
        Driven::Refuse(reason, entry) => {
            // A client that never sends its body looks the same as an Envoy that holds it back
            // (`allow_on_headers_stop_iteration` unset): say so once per VM, not per request.
            if reason == Reason::BodyTimeout
                && entry.held.body_never_seen()
                && !shared.warned_body_withheld.replace(true)
            {
                log(Level::Warn, "tether: a held request's body never reached the filter before body_timeout_ms; if clients do send bodies, Envoy is holding them back: set allow_on_headers_stop_iteration: true in the Wasm filter's config (Envoy 1.35 or later). Logged once.");
            }
            publish(
                Some(reason),
                &entry.request.published,
                entry.token_fp.as_deref(),
            );
            refuse(
                Some(shared),
                reason,
                entry.token_fp.as_deref(),
                entry.request.challenge,
                now_ms,
            )
        }
    }
}

/// The verdict, the keys and the body, for the table's steps, at the callback's time.
struct Deciding<'a> {
    shared: &'a Shared,
    now_ms: u64,
}

impl Pipeline<RequestState> for Deciding<'_> {
    fn decide(&mut self, entry: &mut Entry<RequestState>, may_wait: bool) -> Decision {
        let (decision, introspect) = decide_again(self.shared, entry, may_wait, self.now_ms / 1000);
        match (decision, introspect) {
            // The token's introspection, asked for now unless it already is.
            (Decision::NeedIntrospection { .. }, Some(ask)) => {
                match introspection::ask(self.shared, &ask) {
                    Ok(()) => decision,
                    Err(reason) => Decision::Deny(reason),
                }
            }
            (decision, _) => decision,
        }
    }

    fn verify(&mut self, entry: &mut Entry<RequestState>) -> Result<(), Reason> {
        verify_body(self.shared, entry, self.now_ms / 1000)
    }
}

/// Decides a request on its headers (again, after a wait for keys).
/// Decides a request on its headers (again, after a wait for keys or an introspection);
/// with the introspection it waits for, if it does.
fn decide_again(
    shared: &Shared,
    entry: &mut Entry<RequestState>,
    may_wait: bool,
    now: u64,
) -> (Decision, Option<Introspect>) {
    let policy = &shared.policy;
    let request = &mut entry.request;
    let facts = &request.facts;
    let authorization: Vec<&[u8]> = facts.authorization.iter().map(Vec::as_slice).collect();
    let signature: Vec<&[u8]> = facts.signature.iter().map(Vec::as_slice).collect();
    let dpop: Vec<&[u8]> = facts.dpop.iter().map(Vec::as_slice).collect();
    let xfcc: Vec<&[u8]> = facts.xfcc.iter().map(Vec::as_slice).collect();
    let lines: Vec<(&[u8], &[u8])> = facts
        .lines
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect();
    let facts_view = Request {
        headers: &lines,
        path: &facts.path,
        authorization: &authorization,
        method: &facts.method,
        scheme: &facts.scheme,
        authority: &facts.authority,
        signature: &signature,
        dpop: &dpop,
        xfcc: &xfcc,
        form_body: facts.form_body,
    };
    // The VM runs one callback at a time, so these are never borrowed twice; were they,
    // the request is served uncached rather than trapping the VM.
    let mut spare = TokenCache::new(0);
    let mut spare_answers = IntrospectionCache::new(0);
    let mut cache = shared.cache.try_borrow_mut();
    let mut introspected = shared.introspected.try_borrow_mut();
    let fetched = shared.fetched.try_borrow();
    let empty = FetchedKeys::default();
    let fetched = fetched.as_deref().unwrap_or(&empty);
    let mut replay = &shared.replay;
    let mut tokens = Tokens {
        crypto: shared.crypto.as_ref(),
        cache: cache.as_deref_mut().unwrap_or(&mut spare),
        introspected: introspected.as_deref_mut().unwrap_or(&mut spare_answers),
        fetched,
        replay: &mut replay,
    };
    let verdict = decide(
        policy,
        facts_view,
        &mut Remembering {
            connection: &mut request.connection,
            certificates: &shared.certificates,
        },
        &mut tokens,
        now,
    );
    if request.connection.address_withheld && !shared.warned_address_withheld.replace(true) {
        log(Level::Warn, "tether: source_cidrs: a request came with x-forwarded-for, from which Envoy may take source.address, so its peer address is unknown and no network matches; give Tether the connection's own address with Envoy's set_filter_state filter (README, \"Client networks\"). Logged once.");
    }
    let (decision, leftovers) = verdict.into_decision(
        policy,
        fetched,
        may_wait,
        |endpoint| {
            shared
                .fetcher
                .try_borrow()
                .is_ok_and(|fetcher| fetcher.request_refetch(endpoint, now))
        },
        |issuer| introspection::answers(shared, issuer),
    );
    request.headers = leftovers.headers;
    request.pending = leftovers.pending;
    request.challenge = leftovers.challenge;
    request.sign_response = leftovers.sign_response;
    request.published = leftovers.published;
    entry.token_fp = leftovers.token_fp;
    (decision, leftovers.introspect)
}

/// Verifies a held request's signature over its whole body (buffered by Envoy) and records
/// it against replay.
fn verify_body(shared: &Shared, entry: &mut Entry<RequestState>, now: u64) -> Result<(), Reason> {
    let pending = entry.request.pending.take().ok_or(Reason::HostError)?;
    let size = entry.held.complete_body().ok_or(Reason::HostError)?;
    let body = if size == 0 {
        Vec::new()
    } else {
        // One byte more than the limit: a body that grew past it is refused, not cut.
        let max = shared.policy.signed_requests.max_body_bytes;
        hostcalls::buffer(Buffer::RequestBody, 0, size.min(max.saturating_add(1)))
            .map_err(|_| Reason::HostError)?
            .ok_or(Reason::HostError)?
    };
    let fetched = shared.fetched.try_borrow().map_err(|_| Reason::HostError)?;
    let headers = pending.finish(
        &shared.policy,
        &fetched,
        &body,
        shared.crypto.as_ref(),
        &mut &shared.replay,
        now,
    )?;
    entry.request.headers = headers;
    Ok(())
}

/// Decides again the held requests that are due: those whose key set has been (re)loaded,
/// and those whose wait or body deadline has run out.
fn resolve_held(shared: &Shared, now_ms: u64) {
    let due = {
        let fetched = shared.fetched.borrow();
        shared.held.borrow_mut().due(now_ms, |wait| match wait {
            Wait::Keys(set) => fetched.fetched_at(set),
            Wait::Introspection(issuer) => introspection::answers(shared, issuer),
        })
    };
    for (context_id, request, step) in due {
        // The request's stream may be gone; then there is nothing to decide.
        if hostcalls::set_effective_context(context_id).is_err() {
            continue;
        }
        drive(shared, context_id, request, step, false, now_ms);
    }
}

/// The request a response answers, as its signature binds it.
fn exchange(facts: &Facts, sign: SignResponse) -> Exchange {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Exchange {
        method: text(&facts.method),
        scheme: text(&facts.scheme),
        authority: text(&facts.authority),
        path_and_query: text(&facts.path),
        headers: facts.lines.clone(),
        signature_label: sign.label,
        signature_hash: sign.signature_hash,
        token_hash: sign.token_hash,
    }
}

/// Signs the held response, its body complete (buffered by Envoy), by setting its headers.
fn sign_response(shared: &Shared, to_sign: &ToSign) -> Result<(), Reason> {
    let signing = shared
        .policy
        .response_signing
        .as_ref()
        .ok_or(Reason::ResponseSigningFailed)?;
    let key = signing.signing_key().ok_or(Reason::ResponseSigningFailed)?;
    // One byte more than the limit: a body that grew past it is refused, not cut. No body
    // at all reads as none.
    let body = hostcalls::buffer(
        Buffer::ResponseBody,
        0,
        signing.max_body_bytes.saturating_add(1),
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    if body.len() > signing.max_body_bytes {
        return Err(Reason::ResponseTooLargeToSign);
    }
    let now = now_seconds();
    let status = hostcalls::header(Map::ResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .ok_or(Reason::ResponseSigningFailed)?;
    let headers: Vec<(&str, String)> = match to_sign.format {
        SignatureFormat::HttpMessageSignature => {
            respond::sign_http(key, &to_sign.exchange, status, &body, now)
                .map_err(|_| Reason::ResponseSigningFailed)?
        }
        SignatureFormat::Jws => vec![(
            shared.policy.signed_requests.header.as_str(),
            respond::sign_jws(key, &to_sign.exchange, status, &body, now),
        )],
    };
    for (name, value) in headers {
        hostcalls::set_header(Map::ResponseHeaders, name, &value)
            .map_err(|_| Reason::ResponseSigningFailed)?;
    }
    shared.metrics.response_signed();
    Ok(())
}

/// Answers `GET response_signing.jwks_path` with the published key set.
fn answer_jwks(shared: &Shared, signing: &respond::ResponseSigning) -> Action {
    let headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/jwk-set+json"),
        ("cache-control", signing.jwks_cache_control.as_bytes()),
    ];
    if hostcalls::send_response(200, &headers, signing.jwks_document.as_bytes()).is_err() {
        log(Level::Warn, "tether: the key set could not be sent");
    }
    shared.metrics.jwks_served();
    Action::Pause
}

/// Publishes the decision for Envoy's access log, as filter state `wasm.tether.<name>`:
/// `decision` (`allowed` or `refused`), `reason` (a refusal's), `binding` (what an allowed
/// request proved), `client_id`, `sub` and `token_fp`. Never the token. A value that cannot be
/// set is left out: the log shows `-`.
fn publish(refused: Option<Reason>, published: &Published, token_fp: Option<&str>) {
    let set = |name: &str, value: &str| {
        let _ = hostcalls::set_property(&[name], value.as_bytes());
    };
    match refused {
        Some(reason) => {
            set("tether.decision", "refused");
            set("tether.reason", reason.name());
        }
        None => {
            set("tether.decision", "allowed");
            if !published.binding.is_empty() {
                set("tether.binding", &published.binding);
            }
        }
    }
    if let Some(client_id) = &published.client_id {
        set("tether.client_id", client_id);
    }
    if let Some(sub) = &published.sub {
        set("tether.sub", sub);
    }
    if let Some(token_fp) = token_fp {
        set("tether.token_fp", token_fp);
    }
}

/// Sets the claim headers, strips the token if configured, and counts the request.
fn allow(shared: &Shared, headers: &[(String, String)]) {
    for (name, value) in headers {
        let _ = hostcalls::set_header(Map::RequestHeaders, name, value);
    }
    if shared.policy.strip_authorization {
        // The proof goes with the token: it is the token's, and single-use.
        let _ = hostcalls::remove_header(Map::RequestHeaders, "authorization");
        let _ = hostcalls::remove_header(Map::RequestHeaders, "dpop");
    }
    shared.metrics.allowed();
}

/// Sends the refusal for `reason` with the route's challenges, counts it and logs it with the
/// token's fingerprint. `now_ms` is the callback's time (for a DPoP nonce).
fn refuse(
    shared: Option<&Shared>,
    reason: Reason,
    token_fp: Option<&str>,
    challenge: Challenge,
    now_ms: u64,
) -> Action {
    match shared {
        Some(shared) => shared.metrics.refused(reason),
        None => Metrics::count_unconfigured(reason),
    }
    log(
        Level::Info,
        &format!(
            "tether: refused reason={} status={} token_fp={}",
            reason.name(),
            reason.status(),
            token_fp.unwrap_or("-")
        ),
    );
    let policy = shared.map(|s| &s.policy);
    let algs = policy.map_or("", |p| p.dpop.algs_challenge.as_str());
    let www_authenticate = reason.www_authenticate(challenge, algs);
    // RFC 9449 §8: a nonce route's refusals carry the nonce to use (`use_dpop_nonce` must).
    let nonce = policy
        .and_then(|p| p.dpop.nonces.as_ref())
        .filter(|_| challenge.nonce)
        .map(|nonces| nonces.mint(now_ms / 1000));
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("cache-control", b"no-store"),
    ];
    if let Some(value) = www_authenticate.as_deref() {
        headers.push(("www-authenticate", value.as_bytes()));
    }
    if let Some(nonce) = nonce.as_deref() {
        headers.push(("dpop-nonce", nonce.as_bytes()));
    }
    // RFC 9421 §5.1: tell the client which signature the route expects.
    if let Some(policy) = policy.filter(|_| challenge.http_signature && reason.asks_for_signature())
    {
        headers.push((
            "accept-signature",
            policy.message_signatures.accept_signature.as_bytes(),
        ));
    }
    let body = reason.body();
    if hostcalls::send_response(reason.status(), &headers, body.as_bytes()).is_err() {
        log(
            Level::Warn,
            "tether: the refusal could not be sent; the request stays held until it ends",
        );
    }
    Action::Pause
}

/// The host's clock, in seconds since the Unix epoch.
fn now_seconds() -> u64 {
    now_millis() / 1000
}

/// The host's clock, in milliseconds since the Unix epoch (0 if the host cannot tell: every
/// time check then fails closed, `exp` first).
fn now_millis() -> u64 {
    hostcalls::now_nanos().map_or(0, |n| n / 1_000_000)
}
