//! The pipeline: the facts of one request and the time in, a verdict out.
//!
//! The glue gathers the facts, this module decides, the glue acts: nothing here touches
//! the host. Checks run cheapest first: path and rule, token extraction, the token
//! (signature, then claims), the certificate binding, then the request signature, whose
//! cheap checks run on the headers and whose signature runs once the body has arrived.

use std::rc::Rc;

use crate::bind::jws::{DetachedJws, SignedRequest, SigningKeys, Window};
use crate::bind::mtls::PeerCertificate;
use crate::cache::TokenCache;
use crate::config::{Client, FormBodyTokens, Policy};
use crate::crypto::SignatureVerifier;
use crate::extract;
use crate::keyset::{FetchedKeys, JwksEndpoint, KeySource};
use crate::lifecycle::Decision;
use crate::policy::{self, Require, Route};
use crate::reject::Reason;
use crate::replay::ReplayStore;
use crate::token::{self, fingerprint, Refusal, VerifiedToken};

/// What the filter knows of a request when it decides. Its `Debug` shows no credential.
#[derive(Clone, Copy, Default)]
pub struct Request<'a, 'r> {
    /// The `:path` pseudo-header, query included, as raw bytes.
    pub path: &'r [u8],
    /// Every `Authorization` header value, as raw bytes.
    pub authorization: &'a [&'r [u8]],
    /// `:method`, `:scheme` and `:authority`, for the request signature's `htm` and `htu`.
    pub method: &'r [u8],
    pub scheme: &'r [u8],
    pub authority: &'r [u8],
    /// Every value of the request-signature header.
    pub signature: &'a [&'r [u8]],
    /// The body is `application/x-www-form-urlencoded`, where RFC 6750 §2.2 lets a token
    /// travel as the `access_token` parameter.
    pub form_body: bool,
}

impl std::fmt::Debug for Request<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("path", &String::from_utf8_lossy(self.path))
            .field("method", &String::from_utf8_lossy(self.method))
            .field("authority", &String::from_utf8_lossy(self.authority))
            .field("authorization_headers", &self.authorization.len())
            .field("signature_headers", &self.signature.len())
            .field("form_body", &self.form_body)
            .finish()
    }
}

/// A request's facts, owned (to decide it again later), read from its header lines once.
#[derive(Default)]
pub struct Facts {
    pub path: Vec<u8>,
    /// Every `Authorization` line, in order: a repeated header must be seen as such (Envoy's
    /// single-header accessor returns only the first of some).
    pub authorization: Vec<Vec<u8>>,
    pub method: Vec<u8>,
    pub scheme: Vec<u8>,
    pub authority: Vec<u8>,
    /// Every line of the request-signature header.
    pub signature: Vec<Vec<u8>>,
    pub content_length: Option<usize>,
    /// A `content-type` of `application/x-www-form-urlencoded` (any of them).
    pub form_body: bool,
}

impl Facts {
    /// The facts of a request's header lines (raw names and values, as Envoy gives them),
    /// and the names of the lines to remove because an upstream could take them for a claim
    /// header: the claim headers are Tether's to set, on every request, whatever the route.
    pub fn from_headers(headers: Vec<(Vec<u8>, Vec<u8>)>, policy: &Policy) -> (Facts, Vec<String>) {
        let mut facts = Facts::default();
        let mut spoofed = Vec::new();
        for (name, value) in headers {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if policy.spoofs_claim_header(&name) {
                spoofed.push(name);
                continue;
            }
            match name.as_str() {
                ":path" => facts.path = value,
                ":method" => facts.method = value,
                ":scheme" => facts.scheme = value,
                ":authority" => facts.authority = value,
                "authorization" => facts.authorization.push(value),
                "content-type" => facts.form_body |= extract::is_form_urlencoded(&value),
                "content-length" => {
                    facts.content_length = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|n| n.trim().parse().ok())
                }
                other if other == policy.signed_requests.header => facts.signature.push(value),
                _ => {}
            }
        }
        (facts, spoofed)
    }
}

/// The decision for a request. Past this point a token is named by its fingerprint only.
#[derive(Debug)]
pub enum Verdict<'p> {
    /// Forward the request, setting these headers (from `claims_to_headers`).
    Allow { headers: Vec<(&'p str, String)> },
    /// Refuse the request. `token_fp` is the presented token's fingerprint, for the log.
    Deny {
        reason: Reason,
        token_fp: Option<String>,
    },
    /// Everything but the request signature is verified: it needs the body.
    NeedBody(Box<Pending>),
    /// A fetched key set is needed: not loaded yet, or it does not have the key the request
    /// names (`reason`), which a refetch may cure. The glue fetches and decides again, or
    /// refuses with `reason`.
    NeedKeys {
        set: usize,
        reason: Reason,
        token_fp: Option<String>,
    },
}

/// What a verdict leaves for later: the claim headers to set once allowed, the checks that
/// wait for the body, and the presented token's fingerprint.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub headers: Vec<(String, String)>,
    pub pending: Option<Box<Pending>>,
    pub token_fp: Option<String>,
}

impl Verdict<'_> {
    /// The verdict as a held request's life sees it. A request waits for a key set only if
    /// `may_wait` (its first deadline has not passed): for a set not loaded yet, always; for a
    /// `kid` the loaded set lacks, only when `refetch` grants the early refetch (one per 30
    /// seconds per set, across VMs), so that made-up `kid`s cannot hold requests or hammer the
    /// identity provider. Otherwise the reason stands.
    pub fn into_decision(
        self,
        policy: &Policy,
        fetched: &FetchedKeys,
        may_wait: bool,
        refetch: impl FnOnce(&JwksEndpoint) -> bool,
    ) -> (Decision, Leftovers) {
        match self {
            Verdict::Allow { headers } => {
                let headers = headers
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect();
                let leftovers = Leftovers {
                    headers,
                    ..Leftovers::default()
                };
                (Decision::Allow, leftovers)
            }
            Verdict::Deny { reason, token_fp } => {
                let leftovers = Leftovers {
                    token_fp,
                    ..Leftovers::default()
                };
                (Decision::Deny(reason), leftovers)
            }
            Verdict::NeedBody(pending) => {
                let leftovers = Leftovers {
                    token_fp: Some(pending.token_fp.clone()),
                    pending: Some(pending),
                    ..Leftovers::default()
                };
                (Decision::NeedBody, leftovers)
            }
            Verdict::NeedKeys {
                set,
                reason,
                token_fp,
            } => {
                let leftovers = Leftovers {
                    token_fp,
                    ..Leftovers::default()
                };
                let Some(endpoint) = policy.jwks_endpoints.get(set) else {
                    return (Decision::Deny(reason), leftovers);
                };
                let wait = may_wait && (reason == Reason::KeySetUnavailable || refetch(endpoint));
                let decision = if wait {
                    Decision::NeedKeys {
                        set,
                        seen_fetched_at: fetched.fetched_at(set),
                        timeout_ms: endpoint.timeout_ms,
                    }
                } else {
                    Decision::Deny(reason)
                };
                (decision, leftovers)
            }
        }
    }
}

/// A request waiting for its body, with everything already checked but what needs the body:
/// the request signature (and its replay record), and the form body's parameters.
#[derive(Debug)]
pub struct Pending {
    signature: Option<PendingSignature>,
    /// Refuse the request if its form body carries an `access_token` (RFC 6750 §2.2).
    scan_form: bool,
    /// The token's `exp`: a body may take until after it.
    token_expires_at: u64,
    headers: Vec<(String, String)>,
    /// The presented token's fingerprint, for the log.
    pub token_fp: String,
}

/// A request signature whose every check but the one over the body has passed.
#[derive(Debug)]
struct PendingSignature {
    jws: DetachedJws,
    token: Rc<VerifiedToken>,
    /// Index of the client in the policy, when the signature is checked with a client's
    /// registered keys instead of the token's `cnf.jwk`.
    client: Option<usize>,
}

impl Pending {
    /// Checks the whole body: no token in a form body, then the signature over it, recorded
    /// against replay. Returns the headers to set on the allowed request.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        policy: &Policy,
        fetched: &FetchedKeys,
        body: &[u8],
        crypto: &dyn SignatureVerifier,
        replay: &mut dyn ReplayStore,
        now: u64,
    ) -> Result<Vec<(String, String)>, Reason> {
        if body.len() > policy.signed_requests.max_body_bytes {
            return Err(Reason::BodyTooLarge);
        }
        // The token was valid on the headers; it must still be when the request goes on.
        if now
            > self
                .token_expires_at
                .saturating_add(policy.limits.clock_skew_seconds)
        {
            return Err(Reason::TokenExpired);
        }
        if self.scan_form && extract::has_access_token_parameter(body) {
            return Err(Reason::TokenInBody);
        }
        if let Some(signature) = self.signature {
            signature.verify(policy, fetched, body, crypto, replay, now)?;
        }
        Ok(self.headers)
    }
}

impl PendingSignature {
    /// Verifies the signature over the whole body and records it against replay.
    fn verify(
        self,
        policy: &Policy,
        fetched: &FetchedKeys,
        body: &[u8],
        crypto: &dyn SignatureVerifier,
        replay: &mut dyn ReplayStore,
        now: u64,
    ) -> Result<(), Reason> {
        // Again now: the body may have taken until after the signature's window.
        self.jws.check_window(window(policy), now)?;
        // And within what the replay record is sure to remember (a widened window).
        if self.jws.iat().unwrap_or(0) < replay.remembers_since() {
            return Err(Reason::RequestSignatureExpired);
        }
        let keys = signing_keys(policy, fetched, &self.token, self.client)?;
        self.jws.verify_body(keys, body, crypto)?;
        // Recorded only once valid, so that a forged signature cannot block a genuine one.
        let expiry = self
            .jws
            .replay_expiry(window(policy))
            .ok_or(Reason::RequestSignatureMalformed)?;
        replay.first_use(&self.jws.replay_id(body), expiry, now)
    }
}

/// The keys a request signature is checked with: the token's `cnf.jwk`, or its client's.
fn signing_keys<'a>(
    policy: &'a Policy,
    fetched: &'a FetchedKeys,
    token: &'a VerifiedToken,
    client: Option<usize>,
) -> Result<SigningKeys<'a>, Reason> {
    match client.and_then(|i| policy.clients.get(i)) {
        Some(client) => Ok(SigningKeys::Client {
            keys: fetched.resolve(&client.keys)?,
            hmac_keys: &client.hmac_keys,
        }),
        None => Ok(SigningKeys::Bound(
            token.confirmation().jwk.as_deref().unwrap_or_default(),
        )),
    }
}

fn window(policy: &Policy) -> Window {
    Window {
        max_age_seconds: policy.signed_requests.max_age_seconds,
        clock_skew_seconds: policy.limits.clock_skew_seconds,
    }
}

/// Decides a request at time `now` (seconds since the Unix epoch), as far as its headers
/// allow. `peer` gives the connection's client certificate; it is asked only when a
/// binding needs it.
pub fn decide<'p>(
    policy: &'p Policy,
    request: Request<'_, '_>,
    peer: impl FnOnce() -> Option<PeerCertificate>,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Verdict<'p> {
    let deny = |reason, token: Option<&str>| Verdict::Deny {
        reason,
        token_fp: token.map(fingerprint),
    };
    let path = match std::str::from_utf8(request.path) {
        Ok(path) if policy::is_normalized(path) => path,
        _ => return deny(Reason::PathNotNormalized, None),
    };
    let route = policy.rules.requirement(path);
    if route.require == Require::None {
        return Verdict::Allow {
            headers: Vec::new(),
        };
    }
    if let Err(reason) = extract::reject_token_in_query(path) {
        return deny(reason, None);
    }
    let token = match extract::bearer_token(request.authorization) {
        Ok(Some(token)) => token,
        Ok(None) => return deny(Reason::TokenMissing, None),
        Err(reason) => return deny(reason, None),
    };
    let verified = match verify_and_prove(policy, route, token, peer, tokens, now) {
        Ok(verified) => verified,
        Err(Refusal {
            reason,
            key_set: Some(set),
        }) => {
            return Verdict::NeedKeys {
                set,
                reason,
                token_fp: Some(fingerprint(token)),
            }
        }
        Err(Refusal { reason, .. }) => return deny(reason, Some(token)),
    };
    let headers = claim_headers(policy, &verified);
    // A token bound to a key is accepted only with a signature made with that key, on any
    // route; a signed route asks every request for one.
    let needs_signature = route.signed_request || verified.confirmation().jwk.is_some();
    let token_expires_at = verified.expires_at();
    // A second token in a form body would reach the upstream unchecked (RFC 6750 §2.2).
    let scan_form = request.form_body && policy.form_body_tokens == FormBodyTokens::Refuse;
    if !needs_signature && !scan_form {
        return Verdict::Allow { headers };
    }
    let signature = if needs_signature {
        match signature_pending(policy, tokens.fetched, &request, path, token, verified, now) {
            Ok(signature) => Some(signature),
            Err((reason, Some(set))) => {
                return Verdict::NeedKeys {
                    set,
                    reason,
                    token_fp: Some(fingerprint(token)),
                }
            }
            Err((reason, None)) => return deny(reason, Some(token)),
        }
    } else {
        None
    };
    Verdict::NeedBody(Box::new(Pending {
        token_expires_at,
        signature,
        scan_form,
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect(),
        token_fp: fingerprint(token),
    }))
}

/// Reads the request signature and runs every check that needs no body. A refusal that a
/// (re)fetch of a fetched key set may cure names that set.
fn signature_pending(
    policy: &Policy,
    fetched: &FetchedKeys,
    request: &Request<'_, '_>,
    path: &str,
    token: &str,
    verified: Rc<VerifiedToken>,
    now: u64,
) -> Result<PendingSignature, (Reason, Option<usize>)> {
    let pending =
        signature_checks(policy, request, path, token, verified, now).map_err(|r| (r, None))?;
    // The key must exist now; if the client's keys are fetched, a refetch may bring it.
    let selected = signing_keys(policy, fetched, &pending.token, pending.client)
        .and_then(|keys| pending.jws.select_key(keys).map(|_| ()));
    match selected {
        Ok(()) => Ok(pending),
        Err(reason) => {
            let curable = matches!(
                reason,
                Reason::KeySetUnavailable | Reason::RequestSignatureKeyUnknown
            );
            let set = match pending.client.and_then(|i| policy.clients.get(i)) {
                Some(Client {
                    keys: KeySource::Fetched(set),
                    ..
                }) if curable => Some(*set),
                _ => None,
            };
            Err((reason, set))
        }
    }
}

fn signature_checks(
    policy: &Policy,
    request: &Request<'_, '_>,
    path: &str,
    token: &str,
    verified: Rc<VerifiedToken>,
    now: u64,
) -> Result<PendingSignature, Reason> {
    let value = match request.signature {
        [] => return Err(Reason::RequestSignatureMissing),
        [value] => *value,
        _ => return Err(Reason::RequestSignatureMalformed),
    };
    let jws = DetachedJws::parse(value)?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| Reason::RequestSignatureMismatch)
    };
    let target = SignedRequest {
        method: &text(request.method)?,
        scheme: &text(request.scheme)?,
        authority: &text(request.authority)?,
        path,
    };
    jws.check_request(&target, token, window(policy), now)?;
    // The key: the token's own `cnf.jwk`, or the registered keys of its client.
    let client = match verified.confirmation().jwk {
        Some(_) => None,
        None => {
            let client_id = verified
                .string_claim("client_id")
                .or_else(|| verified.string_claim("azp"))
                .ok_or(Reason::RequestSignatureKeyUnknown)?;
            // The client of the token's own issuer: a client_id is an issuer's name for a
            // client, and another trusted issuer must not select this client's keys.
            let issuer = verified.string_claim("iss");
            let index = policy
                .clients
                .iter()
                .position(|c| c.client_id == client_id && Some(c.issuer.as_str()) == issuer)
                .ok_or(Reason::RequestSignatureKeyUnknown)?;
            Some(index)
        }
    };
    Ok(PendingSignature {
        jws,
        token: verified,
        client,
    })
}

/// How access tokens are verified: the signature verifier and the cache of verified tokens.
pub struct Tokens<'a> {
    pub crypto: &'a dyn SignatureVerifier,
    pub cache: &'a mut TokenCache,
    /// This VM's decoded fetched key sets.
    pub fetched: &'a FetchedKeys,
}

impl Tokens<'_> {
    /// The verified token, from the cache or verified now (and then cached).
    fn verify(
        &mut self,
        policy: &Policy,
        token: &str,
        now: u64,
    ) -> Result<Rc<VerifiedToken>, Refusal> {
        let key = self.cache.key(token);
        if let Some(cached) = key.as_ref().and_then(|k| self.cache.get(k, now)) {
            return Ok(cached);
        }
        let verified = Rc::new(token::verify(
            token,
            &policy.issuers,
            self.fetched,
            policy.limits,
            self.crypto,
            now,
        )?);
        if let Some(key) = key {
            self.cache.insert(key, Rc::clone(&verified), now);
        }
        Ok(verified)
    }
}

fn verify_and_prove(
    policy: &Policy,
    route: Route,
    token: &str,
    peer: impl FnOnce() -> Option<PeerCertificate>,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Result<Rc<VerifiedToken>, Refusal> {
    let verified = tokens.verify(policy, token, now)?;
    let confirmation = verified.confirmation();
    let constrained = match route.require {
        Require::Mtls => confirmation.x5t_s256.is_some(),
        // A key binding counts: its proof, the request signature, is required below.
        Require::Bound => confirmation.is_bound(),
        Require::Bearer | Require::None => true,
    };
    if !constrained {
        return Err(Reason::NotSenderConstrained.into());
    }
    // On every route, a certificate-bound token is accepted only over its certificate.
    confirmation.prove_certificate(peer)?;
    Ok(verified)
}

/// The `claims_to_headers` values of a verified token: string claims only, and only values
/// of visible ASCII and spaces, so that a claim can neither inject a header line nor smuggle
/// characters an upstream might decode differently.
fn claim_headers<'p>(policy: &'p Policy, token: &VerifiedToken) -> Vec<(&'p str, String)> {
    policy
        .claims_to_headers
        .iter()
        .filter_map(|mapping| {
            let value = token.string_claim(&mapping.claim)?;
            let safe =
                value.len() <= 4096 && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            safe.then(|| (mapping.header.as_str(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jwt_simple::prelude::*;
    use serde_json::{json, Map, Value};
    use sha2::{Digest, Sha256};
    use std::cell::Cell;

    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "https://orders.mesh.internal";
    const NOW: u64 = 1_800_000_000;
    const ALICE_DER: &[u8] = b"alice's certificate";
    const MALLORY_DER: &[u8] = b"mallory's certificate";

    struct Fixture {
        key: ES256KeyPair,
        policy: Policy,
    }

    fn fixture() -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let point = key.public_key().public_key().to_bytes_uncompressed();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
                         "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        let config = json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": {"keys": [jwk]}}],
            "rules": [
                {"prefix": "/healthz", "require": "none"},
                {"prefix": "/legacy", "require": "bearer"},
                {"prefix": "/orders", "require": "mtls"},
                {"prefix": "/", "require": "bound"}
            ],
            "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}, {"claim": "tenant", "header": "x-tenant"}]
        });
        let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
        Fixture { key, policy }
    }

    fn cert(der: &[u8]) -> PeerCertificate {
        let hex: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PeerCertificate::from_hex_digest(hex.as_bytes()).unwrap()
    }

    fn token(f: &Fixture, cnf: Option<Value>, extra: &[(&str, Value)]) -> String {
        let mut custom = Map::new();
        if let Some(cnf) = cnf {
            custom.insert("cnf".into(), cnf);
        }
        for (name, value) in extra {
            custom.insert((*name).into(), value.clone());
        }
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(300))
            .with_issuer(ISS)
            .with_audience(AUD)
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = None;
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
        f.key.sign(claims).unwrap()
    }

    fn bound_to(der: &[u8]) -> Option<Value> {
        Some(json!({"x5t#S256": URL_SAFE_NO_PAD.encode(Sha256::digest(der))}))
    }

    fn run<'p, 'r>(
        f: &'p Fixture,
        path: &'r str,
        auth: Option<&'r str>,
        peer: Option<&[u8]>,
    ) -> Verdict<'p> {
        let peer = peer.map(cert);
        let values: Vec<&'r [u8]> = auth.map(str::as_bytes).into_iter().collect();
        let request = Request {
            path: path.as_bytes(),
            authorization: &values,
            ..Request::default()
        };
        let mut cache = TokenCache::new(0);
        let mut tokens = Tokens {
            crypto: &InVm,
            cache: &mut cache,
            fetched: &FetchedKeys::default(),
        };
        decide(&f.policy, request, || peer, &mut tokens, NOW)
    }

    fn allowed<'p>(v: Verdict<'p>) -> Option<Vec<(&'p str, String)>> {
        match v {
            Verdict::Allow { headers } => Some(headers),
            _ => None,
        }
    }

    fn denied(v: Verdict<'_>) -> Option<(Reason, Option<String>)> {
        match v {
            Verdict::Deny { reason, token_fp } => Some((reason, token_fp)),
            _ => None,
        }
    }

    fn reason(v: Verdict) -> Reason {
        match v {
            Verdict::Deny { reason, .. } => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn uncached() -> Tokens<'static> {
        Tokens {
            crypto: &InVm,
            cache: Box::leak(Box::new(TokenCache::new(0))),
            fetched: Box::leak(Box::new(FetchedKeys::default())),
        }
    }

    /// Counts the signatures it verifies (in the VM).
    struct Counting(Cell<usize>);

    impl SignatureVerifier for Counting {
        fn verify(
            &self,
            key: &crate::jwk::VerificationKey,
            message: &[u8],
            signature: &[u8],
        ) -> bool {
            self.0.set(self.0.get() + 1);
            InVm.verify(key, message, signature)
        }
    }

    #[test]
    fn cached_token_skips_the_signature_but_not_the_binding() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let counting = Counting(Cell::new(0));
        let mut cache = TokenCache::new(16);
        let mut tokens = Tokens {
            crypto: &counting,
            cache: &mut cache,
            fetched: &FetchedKeys::default(),
        };
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
            ..Request::default()
        };
        for _ in 0..3 {
            let alice = decide(
                &f.policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut tokens,
                NOW,
            );
            assert!(matches!(alice, Verdict::Allow { .. }));
            let mallory = decide(
                &f.policy,
                request,
                || Some(cert(MALLORY_DER)),
                &mut tokens,
                NOW,
            );
            assert_eq!(reason(mallory), Reason::CertificateMismatch);
        }
        assert_eq!(counting.0.get(), 1);
        // After `exp` the cache does not answer: the token is verified again, and refused.
        let late = decide(
            &f.policy,
            request,
            || Some(cert(ALICE_DER)),
            &mut tokens,
            NOW + 400,
        );
        assert_eq!(reason(late), Reason::TokenExpired);
        assert_eq!(counting.0.get(), 2);
    }

    #[test]
    fn refused_tokens_are_not_cached() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let counting = Counting(Cell::new(0));
        let mut cache = TokenCache::new(16);
        let mut tokens = Tokens {
            crypto: &counting,
            cache: &mut cache,
            fetched: &FetchedKeys::default(),
        };
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
            ..Request::default()
        };
        for _ in 0..2 {
            let early = decide(
                &f.policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut tokens,
                NOW - 100,
            );
            assert_eq!(reason(early), Reason::TokenNotYetValid);
        }
        assert_eq!(counting.0.get(), 2);
    }

    #[test]
    fn bound_token_with_its_certificate_is_allowed_with_claim_headers() {
        let f = fixture();
        let auth = format!(
            "Bearer {}",
            token(&f, bound_to(ALICE_DER), &[("tenant", json!("acme"))])
        );
        let verdict = run(&f, "/orders/1", Some(&auth), Some(ALICE_DER));
        assert_eq!(
            allowed(verdict),
            Some(vec![
                ("x-tether-sub", "alice".into()),
                ("x-tenant", "acme".into())
            ])
        );
        assert!(matches!(
            run(&f, "/anything", Some(&auth), Some(ALICE_DER)),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn stolen_bound_token_over_another_certificate_is_refused_on_every_route() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        for path in ["/orders", "/", "/legacy"] {
            assert_eq!(
                reason(run(&f, path, Some(&auth), Some(MALLORY_DER))),
                Reason::CertificateMismatch,
                "{path}"
            );
            assert_eq!(
                reason(run(&f, path, Some(&auth), None)),
                Reason::ClientCertificateMissing,
                "{path}"
            );
        }
    }

    #[test]
    fn unbound_token_is_refused_on_mtls_and_bound_but_served_on_bearer() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, None, &[]));
        assert_eq!(
            reason(run(&f, "/orders", Some(&auth), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
        assert_eq!(
            reason(run(&f, "/", Some(&auth), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
        assert!(matches!(
            run(&f, "/legacy", Some(&auth), None),
            Verdict::Allow { .. }
        ));
        let empty_cnf = format!("Bearer {}", token(&f, Some(json!({})), &[]));
        assert_eq!(
            reason(run(&f, "/", Some(&empty_cnf), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
    }

    #[test]
    fn none_route_examines_nothing() {
        let f = fixture();
        assert_eq!(
            allowed(run(&f, "/healthz", Some("Bearer !!!"), None)),
            Some(vec![])
        );
        assert_eq!(allowed(run(&f, "/healthz", None, None)), Some(vec![]));
    }

    #[test]
    fn missing_token_and_token_in_query() {
        let f = fixture();
        assert_eq!(
            reason(run(&f, "/", None, Some(ALICE_DER))),
            Reason::TokenMissing
        );
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        assert_eq!(
            reason(run(&f, "/?access_token=x", Some(&auth), Some(ALICE_DER))),
            Reason::TokenInQuery
        );
    }

    #[test]
    fn unnormalized_paths_are_refused_before_rule_matching() {
        let f = fixture();
        assert_eq!(
            reason(run(&f, "/healthz/../orders", None, None)),
            Reason::PathNotNormalized
        );
        let request = Request {
            path: b"/\xff",
            ..Request::default()
        };
        assert_eq!(
            reason(decide(&f.policy, request, || None, &mut uncached(), NOW)),
            Reason::PathNotNormalized
        );
    }

    #[test]
    fn refusal_after_extraction_carries_the_token_fingerprint_not_the_token() {
        let f = fixture();
        let t = token(&f, None, &[]);
        let auth = format!("Bearer {t}");
        assert_eq!(
            denied(run(&f, "/", Some(&auth), None)),
            Some((Reason::NotSenderConstrained, Some(fingerprint(&t))))
        );
    }

    #[test]
    fn claim_with_control_characters_is_not_forwarded() {
        let f = fixture();
        let auth = format!(
            "Bearer {}",
            token(
                &f,
                bound_to(ALICE_DER),
                &[("tenant", json!("a\r\nx-admin: 1"))]
            )
        );
        assert_eq!(
            allowed(run(&f, "/", Some(&auth), Some(ALICE_DER))),
            Some(vec![("x-tether-sub", "alice".into())])
        );
        let non_ascii = format!(
            "Bearer {}",
            token(&f, bound_to(ALICE_DER), &[("tenant", json!("caf\u{e9}"))])
        );
        assert_eq!(
            allowed(run(&f, "/", Some(&non_ascii), Some(ALICE_DER))),
            Some(vec![("x-tether-sub", "alice".into())])
        );
    }

    #[test]
    fn peer_certificate_is_not_read_for_unbound_bearer_tokens() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, None, &[]));
        let request = Request {
            path: b"/legacy",
            authorization: &[auth.as_bytes()],
            ..Request::default()
        };
        let verdict = decide(
            &f.policy,
            request,
            || panic!("peer certificate read"),
            &mut uncached(),
            NOW,
        );
        assert!(matches!(verdict, Verdict::Allow { .. }));
    }

    /// Issue 7 ("client lookup ignores the issuer"): a token of another trusted issuer
    /// naming a registered client's `client_id` must not select that client's keys.
    #[test]
    fn a_client_id_selects_keys_only_for_its_own_issuer() {
        const OTHER: &str = "https://other-idp.example.com";
        let f = fixture();
        let policy = hs256_client_policy(
            json!([
                {"issuer": ISS, "audiences": [AUD], "jwks": {"keys": [jwk_of(&f.key)]}},
                {"issuer": OTHER, "audiences": [AUD], "jwks": {"keys": [jwk_of(&f.key)]}}
            ]),
            Some(ISS),
        );
        let pending_for = |issuer: &str| {
            let post = SignedPost::new(&signed_token(
                &f,
                issuer,
                &[("client_id", json!("alice-app"))],
            ));
            match post.with(|request| decide(&policy, request, || None, &mut uncached(), NOW)) {
                Verdict::NeedBody(pending) => Ok(pending.signature.and_then(|s| s.client)),
                Verdict::Deny { reason, .. } => Err(reason),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(pending_for(ISS), Ok(Some(0)));
        assert_eq!(pending_for(OTHER), Err(Reason::RequestSignatureKeyUnknown));
    }

    /// A policy with the issuers `issuers` (JSON) and one client, `alice-app` (of `issuer`, if
    /// given), signing with the HS256 key `h1`, on a signed `/` rule.
    fn hs256_client_policy(issuers: Value, issuer: Option<&str>) -> Policy {
        let mut client = json!({"client_id": "alice-app",
            "hmac_keys": [{"kid": "h1", "k": URL_SAFE_NO_PAD.encode([7u8; 32])}]});
        if let Some(issuer) = issuer {
            client["issuer"] = json!(issuer);
        }
        let config = json!({
            "issuers": issuers,
            "clients": [client],
            "rules": [{"prefix": "/", "require": "bearer", "signed_request": true}]
        });
        Policy::from_json(config.to_string().as_bytes()).unwrap()
    }

    /// `POST https://api.example/pay` with a token and an HS256 request signature by key `h1`
    /// whose header fits the request, but whose signature bytes are not genuine.
    struct SignedPost {
        authorization: String,
        signature: String,
    }

    impl SignedPost {
        fn new(token: &str) -> Self {
            let header = json!({"alg": "HS256", "kid": "h1", "iat": NOW, "htm": "POST",
                "htu": "https://api.example/pay", "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token))});
            SignedPost {
                authorization: format!("Bearer {token}"),
                signature: format!("{}..AAAA", URL_SAFE_NO_PAD.encode(header.to_string())),
            }
        }

        /// Runs `f` on the request's facts.
        fn with<T>(&self, f: impl FnOnce(Request<'_, '_>) -> T) -> T {
            let authorization = [self.authorization.as_bytes()];
            let signature = [self.signature.as_bytes()];
            f(Request {
                path: b"/pay",
                authorization: &authorization,
                method: b"POST",
                scheme: b"https",
                authority: b"api.example",
                signature: &signature,
                form_body: false,
            })
        }
    }

    fn jwk_of(key: &ES256KeyPair) -> Value {
        let point = key.public_key().public_key().to_bytes_uncompressed();
        json!({"kty": "EC", "crv": "P-256", "kid": "k1",
               "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    fn signed_token(f: &Fixture, issuer: &str, extra: &[(&str, Value)]) -> String {
        let mut custom = Map::new();
        for (name, value) in extra {
            custom.insert((*name).into(), value.clone());
        }
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(300))
            .with_issuer(issuer)
            .with_audience(AUD)
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = None;
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
        f.key.sign(claims).unwrap()
    }

    /// Issue 7 ("body token smuggling"): a form body on a token route is held and refused if
    /// it carries an `access_token` (RFC 6750 §2.2), never forwarded with a token unchecked.
    #[test]
    fn form_body_with_an_access_token_is_refused() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let values = [auth.as_bytes()];
        let form = |path: &'static str, policy: &Policy| {
            let request = Request {
                path: path.as_bytes(),
                authorization: &values,
                form_body: true,
                ..Request::default()
            };
            match decide(
                policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut uncached(),
                NOW,
            ) {
                Verdict::NeedBody(pending) => Some(pending),
                Verdict::Allow { .. } => None,
                other => panic!("{other:?}"),
            }
        };
        let finish = |pending: Box<Pending>, body: &[u8]| {
            let record = crate::replay::in_memory(1);
            let mut store = &record;
            pending.finish(
                &f.policy,
                &FetchedKeys::default(),
                body,
                &InVm,
                &mut store,
                NOW,
            )
        };
        let pending = form("/orders", &f.policy).expect("held for the body");
        assert_eq!(
            finish(pending, b"amount=10&access_token=eyJ"),
            Err(Reason::TokenInBody)
        );
        let pending = form("/orders", &f.policy).expect("held for the body");
        let headers = finish(pending, b"amount=10&note=access_token").unwrap();
        assert_eq!(
            headers,
            vec![("x-tether-sub".to_string(), "alice".to_string())]
        );
        // A route that examines no token reads no body.
        assert!(form("/healthz", &f.policy).is_none());
        // "ignore" forwards form bodies unread.
        let ignoring = Policy::from_json(
            json!({
                "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": {"keys": [jwk_of(&f.key)]}}],
                "form_body_tokens": "ignore"
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert!(form("/orders", &ignoring).is_none());
    }

    /// From the review of issue 7: the token must still be valid when a held request goes
    /// on, not only when its headers arrived (a body may take `body_timeout_ms`).
    #[test]
    fn a_token_that_expires_while_the_body_arrives_is_refused() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
            form_body: true,
            ..Request::default()
        };
        let held = || match decide(
            &f.policy,
            request,
            || Some(cert(ALICE_DER)),
            &mut uncached(),
            NOW,
        ) {
            Verdict::NeedBody(pending) => pending,
            other => panic!("{other:?}"),
        };
        let finish = |at: u64| {
            let record = crate::replay::in_memory(1);
            let mut store = &record;
            held().finish(
                &f.policy,
                &FetchedKeys::default(),
                b"a=1",
                &InVm,
                &mut store,
                at,
            )
        };
        // exp is NOW + 300; the skew is 30 seconds.
        assert!(finish(NOW + 330).is_ok());
        assert_eq!(finish(NOW + 331), Err(Reason::TokenExpired));
    }

    /// A replay store that has forgotten everything signed before `since`.
    struct Forgetful {
        since: u64,
        inner: crate::replay::SharedReplay<crate::shared::Memory>,
    }

    impl ReplayStore for Forgetful {
        fn first_use(&mut self, id: &[u8; 32], expires_at: u64, now: u64) -> Result<(), Reason> {
            (&self.inner).first_use(id, expires_at, now)
        }
        fn remembers_since(&self) -> u64 {
            self.since
        }
    }

    /// From the review of issue 7: after a configuration widens the window, a signature
    /// older than what the replay record is sure to remember is refused as expired, before
    /// its signature is even checked.
    #[test]
    fn a_signature_older_than_the_replay_record_remembers_is_refused() {
        let f = fixture();
        let policy = hs256_client_policy(
            json!([{"issuer": ISS, "audiences": [AUD], "jwks": {"keys": [jwk_of(&f.key)]}}]),
            None,
        );
        let post = SignedPost::new(&signed_token(&f, ISS, &[("client_id", json!("alice-app"))]));
        let finish = |since: u64| {
            let Verdict::NeedBody(pending) =
                post.with(|request| decide(&policy, request, || None, &mut uncached(), NOW))
            else {
                panic!("not held for the body");
            };
            let mut store = Forgetful {
                since,
                inner: crate::replay::in_memory(1),
            };
            pending.finish(
                &policy,
                &FetchedKeys::default(),
                b"",
                &InVm,
                &mut store,
                NOW,
            )
        };
        // Remembered: the (forged) signature itself is what fails.
        assert_eq!(finish(NOW), Err(Reason::RequestSignatureInvalid));
        assert_eq!(finish(NOW + 1), Err(Reason::RequestSignatureExpired));
    }

    /// Issue 8 ("secrets in Debug"): neither a request nor a request held for its body
    /// prints the token; both name it by its fingerprint at most.
    #[test]
    fn debug_output_never_shows_the_token() {
        let f = fixture();
        let t = token(&f, bound_to(ALICE_DER), &[]);
        let auth = format!("Bearer {t}");
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
            form_body: true,
            ..Request::default()
        };
        let shown = format!("{request:?}");
        // Neither as text nor as the list of byte values a derived `Debug` prints.
        let as_bytes = format!("{:?}", &t.as_bytes()[..12]);
        let as_bytes = as_bytes.trim_end_matches(']');
        assert!(!shown.contains(&t) && !shown.contains(as_bytes), "{shown}");
        assert!(shown.contains("/orders"), "{shown}");
        let verdict = decide(
            &f.policy,
            request,
            || Some(cert(ALICE_DER)),
            &mut uncached(),
            NOW,
        );
        let shown = format!("{verdict:?}");
        assert!(matches!(verdict, Verdict::NeedBody(_)));
        // No part of the token: not its signature, not the whole.
        let signature = t.rsplit('.').next().unwrap();
        assert!(!shown.contains(signature), "{shown}");
        assert!(shown.contains(&fingerprint(&t)), "{shown}");
    }

    /// The README's promise: a claim value over 4096 bytes sets no header.
    #[test]
    fn claim_values_longer_than_4096_bytes_are_not_forwarded() {
        let f = fixture();
        for (len, forwarded) in [(4096, true), (4097, false)] {
            let tenant = "t".repeat(len);
            let auth = format!(
                "Bearer {}",
                token(&f, bound_to(ALICE_DER), &[("tenant", json!(tenant))])
            );
            let headers = allowed(run(&f, "/", Some(&auth), Some(ALICE_DER))).unwrap();
            assert_eq!(
                headers.iter().any(|(name, _)| *name == "x-tenant"),
                forwarded,
                "{len}"
            );
        }
    }

    /// The README's promise: a replay record with no room refuses a new signature with 503
    /// `replay_store_full`, through the pipeline, rather than forget an old one.
    #[test]
    fn a_full_replay_record_refuses_new_signatures_with_503() {
        let f = fixture();
        let key = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let holder = json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
        let t = token(&f, Some(json!({"jwk": holder})), &[]);
        let auth = format!("Bearer {t}");
        // One bucket: every signature lands in it.
        let record = crate::replay::in_memory(1);
        let mut store = &record;
        let mut outcomes = Vec::new();
        for i in 0..=crate::replay::BUCKET_ENTRIES {
            let body = format!("{{\"n\":{i}}}");
            let header = json!({"alg": "ES256", "iat": NOW, "htm": "POST",
                "htu": "https://api.example/pay", "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(&t))});
            let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
            let input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(&body));
            use p256::ecdsa::signature::Signer as _;
            let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
            let signature = format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
            let values = [auth.as_bytes()];
            let signatures = [signature.as_bytes()];
            let request = Request {
                path: b"/pay",
                authorization: &values,
                method: b"POST",
                scheme: b"https",
                authority: b"api.example",
                signature: &signatures,
                form_body: false,
            };
            let Verdict::NeedBody(pending) = decide(
                &f.policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut uncached(),
                NOW,
            ) else {
                panic!("not held for the body");
            };
            outcomes.push(
                pending
                    .finish(
                        &f.policy,
                        &FetchedKeys::default(),
                        body.as_bytes(),
                        &InVm,
                        &mut store,
                        NOW,
                    )
                    .map(|_| ()),
            );
        }
        let last = outcomes.pop().unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(last, Err(Reason::ReplayStoreFull));
        assert_eq!(Reason::ReplayStoreFull.status(), 503);
    }

    #[test]
    fn facts_read_every_line_and_name_the_look_alikes_to_remove() {
        let f = fixture();
        let line = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        let (facts, spoofed) = Facts::from_headers(
            vec![
                line(":path", "/orders?x=1"),
                line(":method", "POST"),
                line("authorization", "Bearer a"),
                line("authorization", "Bearer b"),
                line("x_tether_sub", "admin"),
                line("x-tether-sub", "root"),
                line("content-type", "application/x-www-form-urlencoded"),
                line("content-length", " 12 "),
                line("x-jws-signature", "sig"),
                (vec![0xff], b"not UTF-8".to_vec()),
            ],
            &f.policy,
        );
        assert_eq!(facts.path, b"/orders?x=1");
        assert_eq!(facts.authorization.len(), 2, "both lines, in order");
        assert_eq!(spoofed, ["x_tether_sub", "x-tether-sub"]);
        assert!(facts.form_body);
        assert_eq!(facts.content_length, Some(12));
        assert_eq!(facts.signature, [b"sig".to_vec()]);
    }

    /// The wait rule: a set not loaded yet is always waited for (while the request may wait);
    /// an unknown `kid` only when an early refetch is granted; never past the deadline.
    #[test]
    fn a_request_waits_for_keys_only_when_a_fetch_may_bring_them() {
        let config = json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD],
                         "remote_jwks": {"cluster": "idp", "path": "/jwks", "timeout_ms": 1500}}]
        });
        let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
        let fetched = FetchedKeys::new(1);
        let need = |reason| Verdict::NeedKeys {
            set: 0,
            reason,
            token_fp: Some("fp".into()),
        };
        let waits = Decision::NeedKeys {
            set: 0,
            seen_fetched_at: 0,
            timeout_ms: 1500,
        };
        let decide = |reason, may_wait, granted: bool| {
            let asked = Cell::new(false);
            let (decision, leftovers) =
                need(reason).into_decision(&policy, &fetched, may_wait, |_| {
                    asked.set(true);
                    granted
                });
            assert_eq!(leftovers.token_fp.as_deref(), Some("fp"));
            (decision, asked.get())
        };
        assert_eq!(
            decide(Reason::KeySetUnavailable, true, false),
            (waits, false)
        );
        assert_eq!(decide(Reason::KeyUnknown, true, true), (waits, true));
        assert_eq!(
            decide(Reason::KeyUnknown, true, false),
            (Decision::Deny(Reason::KeyUnknown), true)
        );
        // Past the deadline: no wait, and no refetch asked for.
        assert_eq!(
            decide(Reason::KeySetUnavailable, false, true),
            (Decision::Deny(Reason::KeySetUnavailable), false)
        );
        assert_eq!(
            decide(Reason::KeyUnknown, false, true),
            (Decision::Deny(Reason::KeyUnknown), false)
        );
    }
}
