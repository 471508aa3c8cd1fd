//! The pipeline: the facts of one request and the time in, a verdict out.
//!
//! The glue gathers the facts, this module decides, the glue acts: nothing here touches
//! the host. Checks run cheapest first: path and rule, token extraction, the token
//! (signature, then claims), the certificate binding, then the request signature, whose
//! cheap checks run on the headers and whose signature runs once the body has arrived.

use std::rc::Rc;

use subtle::ConstantTimeEq as _;

use crate::bind::httpsig::{self, Signature};
use crate::bind::identity::CertificateFacts;
use crate::bind::jws::{DetachedJws, SignedRequest, SigningKeys, Window};
use crate::bind::peer::{self, ClientCertificate, Peer};
use crate::bind::{digest, dpop, jose, xfcc};
use crate::cache::{Introspected, IntrospectionCache, TokenCache};
use crate::config::{Client, FormBodyTokens, Policy};
use crate::crypto::SignatureVerifier;
use crate::extract::{self, Scheme};
use crate::keyset::{FetchedKeys, JwksEndpoint, KeySource};
use crate::lifecycle::Decision;
use crate::policy::{self, Require, Route, SignatureFormat};
use crate::reject::{Challenge, Reason};
use crate::replay::ReplayStore;
use crate::token::{self, fingerprint, Kind, Refusal, VerifiedToken};
use crate::{introspect, jwe};

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
    /// Every value of the `DPoP` header (RFC 9449 §4.1).
    pub dpop: &'a [&'r [u8]],
    /// Every line of `x-forwarded-client-cert` (left after an untrusted one was removed).
    pub xfcc: &'a [&'r [u8]],
    /// Every header line but the pseudo-headers (names lowercase), when the policy reads RFC
    /// 9421 signatures ([`Policy::reads_header_lines`]); empty otherwise.
    pub headers: &'a [httpsig::Header<'r>],
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
            .field("dpop_headers", &self.dpop.len())
            .field("xfcc_headers", &self.xfcc.len())
            .field("header_lines", &self.headers.len())
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
    /// Every line of the `DPoP` header.
    pub dpop: Vec<Vec<u8>>,
    /// Every line of `x-forwarded-client-cert`.
    pub xfcc: Vec<Vec<u8>>,
    /// The request came with `x-forwarded-for` (from which Envoy may take its idea of the
    /// peer's address, [`peer::peer_address`]).
    pub forwarded_for: bool,
    /// Every line but the pseudo-headers and the claim-header look-alikes, in order, when the
    /// policy reads RFC 9421 signatures or signs responses with them.
    pub lines: Vec<(Vec<u8>, Vec<u8>)>,
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
            if policy.reads_header_lines && !name.starts_with(':') {
                facts.lines.push((name.clone().into_bytes(), value.clone()));
            }
            match name.as_str() {
                ":path" => facts.path = value,
                ":method" => facts.method = value,
                ":scheme" => facts.scheme = value,
                ":authority" => facts.authority = value,
                "authorization" => facts.authorization.push(value),
                "dpop" => facts.dpop.push(value),
                xfcc::HEADER => facts.xfcc.push(value),
                "x-forwarded-for" => facts.forwarded_for = true,
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
    Allow {
        headers: Vec<(&'p str, String)>,
        challenge: Challenge,
        /// On a route that signs responses: what the response's signature binds it to.
        sign_response: Option<SignResponse>,
        published: Published,
        /// The verified token's fingerprint (none on a route that examines no token).
        token_fp: Option<String>,
    },
    /// Refuse the request. `token_fp` is the presented token's fingerprint, for the log;
    /// `challenge` the schemes the refusal challenges.
    Deny {
        reason: Reason,
        token_fp: Option<String>,
        challenge: Challenge,
        /// The token's identity, when it was verified before the refusal.
        published: Published,
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
        challenge: Challenge,
    },
    /// The token is to be introspected by `issuer`'s endpoint (RFC 7662): the glue asks (once
    /// for all the requests that carry it) and decides again when the answer is in.
    NeedIntrospection {
        ask: Introspect,
        token_fp: Option<String>,
        challenge: Challenge,
    },
}

/// A token to introspect, and the issuer whose endpoint is asked. Its `Debug` shows the
/// token's fingerprint only.
#[derive(Clone)]
pub struct Introspect {
    pub issuer: usize,
    pub token: String,
}

impl std::fmt::Debug for Introspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspect")
            .field("issuer", &self.issuer)
            .field("token_fp", &fingerprint(&self.token))
            .finish()
    }
}

/// What a verdict leaves for later: the claim headers to set once allowed, the checks that
/// wait for the body, the presented token's fingerprint, and the challenges of a refusal.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub headers: Vec<(String, String)>,
    /// What the access log shows of the decision.
    pub published: Published,
    /// On a route that signs responses: what the response's signature binds it to.
    pub sign_response: Option<SignResponse>,
    pub pending: Option<Box<Pending>>,
    pub token_fp: Option<String>,
    pub challenge: Challenge,
    /// The introspection the request waits for.
    pub introspect: Option<Introspect>,
}

/// What Envoy's access log shows of a decision (issue 11), published by the glue as filter
/// state. Never the token: its fingerprint goes beside, from [`Leftovers::token_fp`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The bindings an allowed request proved, joined by `+` (`mtls`, `dpop`, `jws`,
    /// `http_message_signature`), or `none` for an unbound token; empty before the token is
    /// verified.
    pub binding: String,
    /// The verified token's `client_id` (else `azp`) and `sub`, when they are safe to log:
    /// visible ASCII, at most [`MAX_PUBLISHED_CLAIM_BYTES`].
    pub client_id: Option<String>,
    pub sub: Option<String>,
}

/// The longest claim value published for the access log.
pub const MAX_PUBLISHED_CLAIM_BYTES: usize = 256;

impl Published {
    /// The identity of a verified token, before anything is proved.
    fn of(token: &VerifiedToken) -> Published {
        let safe = |value: Option<&str>| {
            value
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= MAX_PUBLISHED_CLAIM_BYTES
                        && v.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_string)
        };
        Published {
            binding: String::new(),
            client_id: safe(
                token
                    .string_claim("client_id")
                    .or_else(|| token.string_claim("azp")),
            ),
            sub: safe(token.string_claim("sub")),
        }
    }

    /// With the bindings proved.
    fn proved(mut self, bindings: &[&str]) -> Published {
        self.binding = if bindings.is_empty() {
            "none".to_string()
        } else {
            bindings.join("+")
        };
        self
    }
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
        answers: impl FnOnce(usize) -> u64,
    ) -> (Decision, Leftovers) {
        match self {
            Verdict::Allow {
                headers,
                challenge,
                sign_response,
                published,
                token_fp,
            } => {
                let headers = headers
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value))
                    .collect();
                let leftovers = Leftovers {
                    headers,
                    challenge,
                    sign_response,
                    published,
                    token_fp,
                    ..Leftovers::default()
                };
                (Decision::Allow, leftovers)
            }
            Verdict::Deny {
                reason,
                token_fp,
                challenge,
                published,
            } => {
                let leftovers = Leftovers {
                    token_fp,
                    challenge,
                    published,
                    ..Leftovers::default()
                };
                (Decision::Deny(reason), leftovers)
            }
            Verdict::NeedBody(pending) => {
                let leftovers = Leftovers {
                    token_fp: Some(pending.token_fp.clone()),
                    challenge: pending.challenge,
                    published: pending.published.clone(),
                    sign_response: pending.sign_response.clone(),
                    pending: Some(pending),
                    ..Leftovers::default()
                };
                (Decision::NeedBody, leftovers)
            }
            Verdict::NeedKeys {
                set,
                reason,
                token_fp,
                challenge,
            } => {
                let leftovers = Leftovers {
                    token_fp,
                    challenge,
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
            Verdict::NeedIntrospection {
                ask,
                token_fp,
                challenge,
            } => {
                let timeout_ms = policy
                    .issuers
                    .get(ask.issuer)
                    .and_then(|issuer| issuer.introspection.as_ref())
                    .map(|introspection| introspection.timeout_ms);
                let decision = match timeout_ms {
                    Some(timeout_ms) if may_wait => Decision::NeedIntrospection {
                        issuer: ask.issuer,
                        seen_answers: answers(ask.issuer),
                        timeout_ms,
                    },
                    _ => Decision::Deny(Reason::IntrospectionUnavailable),
                };
                let leftovers = Leftovers {
                    token_fp,
                    challenge,
                    introspect: Some(ask),
                    ..Leftovers::default()
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
    /// The challenges of a refusal.
    challenge: Challenge,
    /// On a route that signs responses: what the response's signature binds it to.
    sign_response: Option<SignResponse>,
    /// What the access log shows once the body is verified.
    published: Published,
}

/// How the response of an allowed request on a `sign_response` route is signed, and what
/// binds it to the request: how the request proved itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignResponse {
    pub format: SignatureFormat,
    /// The label of its verified RFC 9421 signature.
    pub label: Option<String>,
    /// The base64url SHA-256 of its request signature as sent (a JWS response's `rsh`).
    pub signature_hash: Option<String>,
    /// The base64url SHA-256 of its access token (a JWS response's `ath`).
    pub token_hash: String,
}

/// A request signature whose every check but those over the body has passed.
#[derive(Debug)]
struct PendingSignature {
    proof: Proof,
    token: Rc<VerifiedToken>,
    /// Index of the client in the policy, when the signature is checked with a client's
    /// registered keys instead of the token's `cnf.jwk`.
    client: Option<usize>,
}

/// The request signature, read. Its `Debug` shows no base (which holds the token).
enum Proof {
    /// A detached JWS over the body.
    Jws(DetachedJws),
    /// An RFC 9421 signature, with the base rebuilt from the request's headers; the body is
    /// bound through `Content-Digest` (RFC 9530).
    Http {
        signature: Box<Signature>,
        base: Vec<u8>,
        content_digest: Vec<Vec<u8>>,
    },
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Jws(jws) => f.debug_tuple("Jws").field(jws).finish(),
            Proof::Http { signature, .. } => f
                .debug_struct("Http")
                .field("label", &signature.label)
                .field("keyid", &signature.keyid)
                .finish_non_exhaustive(),
        }
    }
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
        let keys = signing_keys(policy, fetched, &self.token, self.client)?;
        match self.proof {
            Proof::Jws(jws) => {
                // Again now: the body may have taken until after the signature's window.
                jws.check_window(window(policy), now)?;
                let iat = jws.iat().ok_or(Reason::RequestSignatureMalformed)?;
                // And within what the replay record is sure to remember (a widened window).
                if iat < replay.remembers_since() {
                    return Err(Reason::RequestSignatureExpired);
                }
                jws.verify_body(keys, body, crypto)?;
                // Recorded only once valid, so that a forged signature cannot block a genuine one.
                replay.first_use(&jws.replay_id(body), iat, now)
            }
            Proof::Http {
                signature,
                base,
                content_digest,
            } => {
                let created = check_http_window(policy, &signature, now)?;
                if created < replay.remembers_since() {
                    return Err(Reason::RequestSignatureExpired);
                }
                // A body is bound by a covered Content-Digest, whatever the configuration: an
                // uncovered digest would be the sender's to recompute over another body.
                if !body.is_empty() && !signature.covers(digest::FIELD) {
                    return Err(Reason::RequestSignatureIncomplete);
                }
                let thumbprint = self.token.confirmation().jwk_thumbprint.as_deref();
                let key = http_key(keys, &signature, thumbprint)?;
                httpsig::verify(
                    &base,
                    &signature.signature,
                    key,
                    signature.alg.as_deref(),
                    crypto,
                )
                .map_err(http_reason)?;
                // RFC 9530: a body, or a digest the signature vouches for, must match.
                if !body.is_empty() || !content_digest.is_empty() {
                    let lines: Vec<&[u8]> = content_digest.iter().map(Vec::as_slice).collect();
                    digest::verify(&lines, body).map_err(|e| match e {
                        digest::DigestError::Missing => Reason::ContentDigestMissing,
                        digest::DigestError::Mismatch => Reason::ContentDigestMismatch,
                        _ => Reason::ContentDigestMalformed,
                    })?;
                }
                // Keyed by what was signed, never by the signature's bytes (ECDSA is
                // malleable): RFC 9421 §7.2.2.
                replay.first_use(&httpsig::replay_id(&base), created, now)
            }
        }
    }
}

/// `created` at most `message_signatures.max_age_seconds` old and at most
/// `clock_skew_seconds` ahead; `expires`, when present, not passed (RFC 9421 §3.2 step 5,
/// §7.2.2). Returns `created`.
fn check_http_window(policy: &Policy, signature: &Signature, now: u64) -> Result<u64, Reason> {
    let created =
        u64::try_from(signature.created).map_err(|_| Reason::RequestSignatureMalformed)?;
    let too_old = created.saturating_add(policy.message_signatures.max_age_seconds) < now;
    let too_new = created > now.saturating_add(policy.limits.clock_skew_seconds);
    let expired = signature
        .expires
        .is_some_and(|expires| u64::try_from(expires).map_or(true, |e| e < now));
    if too_old || too_new || expired {
        return Err(Reason::RequestSignatureExpired);
    }
    Ok(created)
}

/// The key an RFC 9421 signature names: with a `cnf.jwk` token, that key, whose RFC 7638
/// thumbprint `keyid` must be; otherwise the client's key or HMAC secret with `kid` `keyid`.
/// The algorithm is `alg` when given, else the key's own (§3.3.7); a key that could be used
/// with several (an RSA JWK without `alg`) needs `alg`.
fn http_key<'k>(
    keys: SigningKeys<'k>,
    signature: &Signature,
    thumbprint: Option<&str>,
) -> Result<httpsig::Key<'k>, Reason> {
    let keyid = signature.keyid.as_str();
    let candidates: Vec<httpsig::Key<'k>> = match keys {
        SigningKeys::Bound(keys) => {
            let named =
                thumbprint.is_some_and(|t| bool::from(t.as_bytes().ct_eq(keyid.as_bytes())));
            if !named {
                return Err(Reason::RequestSignatureKeyUnknown);
            }
            keys.iter().map(httpsig::Key::Public).collect()
        }
        SigningKeys::Client { keys, hmac_keys } => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(keyid))
            .map(httpsig::Key::Public)
            .chain(
                hmac_keys
                    .iter()
                    .filter(|k| k.kid == keyid)
                    .map(|k| httpsig::Key::Shared(&k.secret)),
            )
            .collect(),
    };
    if candidates.is_empty() {
        return Err(Reason::RequestSignatureKeyUnknown);
    }
    let wanted = match signature.alg.as_deref() {
        Some(name) => Some(
            httpsig::Algorithm::from_name(name).ok_or(Reason::RequestSignatureAlgorithmMismatch)?,
        ),
        None => None,
    };
    let mut fitting = candidates
        .into_iter()
        .filter(|k| k.algorithm().is_some_and(|a| wanted.is_none_or(|w| w == a)));
    match (fitting.next(), fitting.next()) {
        (Some(key), None) => Ok(key),
        _ => Err(Reason::RequestSignatureAlgorithmMismatch),
    }
}

/// The refusal for an RFC 9421 reading, base or verification error.
fn http_reason(error: httpsig::Error) -> Reason {
    use httpsig::Error as E;
    match error {
        E::NotFound => Reason::RequestSignatureMissing,
        E::ComponentMissing => Reason::RequestSignatureMismatch,
        E::UnsupportedAlgorithm | E::AlgorithmMismatch => Reason::RequestSignatureAlgorithmMismatch,
        E::BadSignature => Reason::RequestSignatureInvalid,
        _ => Reason::RequestSignatureMalformed,
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

/// The challenges a refusal on `route` sends: Bearer unless the route takes DPoP only, DPoP
/// where the route takes only it or the configuration announces it (RFC 9449 §7.2).
fn route_challenge(policy: &Policy, route: Route) -> Challenge {
    Challenge {
        bearer: route.require != Require::Dpop,
        dpop: route.require == Require::Dpop
            || (policy.dpop.announced && matches!(route.require, Require::Bearer | Require::Bound)),
        used: None,
        nonce: route.dpop_nonce,
        http_signature: route.signed_request == Some(SignatureFormat::HttpMessageSignature),
    }
}

/// Decides a request at time `now` (seconds since the Unix epoch), as far as its headers
/// allow. `peer` tells what Envoy knows of the connection; it is asked only when a check
/// needs it.
pub fn decide<'p>(
    policy: &'p Policy,
    request: Request<'_, '_>,
    peer: &mut dyn Peer,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Verdict<'p> {
    let deny_as = |reason, token: Option<&str>, challenge, published| Verdict::Deny {
        reason,
        token_fp: token.map(fingerprint),
        challenge,
        published,
    };
    let deny = |reason, token, challenge| deny_as(reason, token, challenge, Published::default());
    let path = match std::str::from_utf8(request.path) {
        Ok(path) if policy::is_normalized(path) => path,
        _ => return deny(Reason::PathNotNormalized, None, Challenge::BEARER),
    };
    let route = policy.rules.requirement(path);
    let mut challenge = route_challenge(policy, route);
    if route.require == Require::None {
        return Verdict::Allow {
            headers: Vec::new(),
            challenge,
            sign_response: None,
            published: Published::default(),
            token_fp: None,
        };
    }
    if let Err(reason) = extract::reject_token_in_query(path) {
        return deny(reason, None, challenge);
    }
    let (scheme, token) = match extract::credential(request.authorization) {
        Ok(Some(credential)) => credential,
        Ok(None) => return deny(Reason::TokenMissing, None, challenge),
        Err(reason) => return deny(reason, None, challenge),
    };
    challenge.used = Some(scheme);
    let need_keys = |set, reason| Verdict::NeedKeys {
        set,
        reason,
        token_fp: Some(fingerprint(token)),
        challenge,
    };
    let verified = match tokens.verify(policy, token, now) {
        Ok(verified) => verified,
        Err(Refusal {
            reason,
            key_set: Some(set),
            ..
        }) => return need_keys(set, reason),
        Err(Refusal {
            introspect: Some(issuer),
            ..
        }) => {
            return Verdict::NeedIntrospection {
                ask: Introspect {
                    issuer,
                    token: token.to_string(),
                },
                token_fp: Some(fingerprint(token)),
                challenge,
            }
        }
        Err(Refusal { reason, .. }) => return deny(reason, Some(token), challenge),
    };
    // From here on a refusal names whose token it was (a stolen token's client, for the log).
    let identity = Published::of(&verified);
    let refuse = |reason| deny_as(reason, Some(token), challenge, identity.clone());
    let mut client = ClientSide {
        policy,
        peer,
        xfcc: request.xfcc,
        certificate: None,
    };
    if let Err(reason) = check_binding(route, scheme, &verified, &mut client)
        .and_then(|()| check_token_type(scheme, &verified))
        .and_then(|()| check_client(policy, route, &verified, &mut client))
    {
        return refuse(reason);
    }
    let headers = claim_headers(policy, &verified);
    // A token bound to a key is accepted only with a signature made with that key, on any
    // route (a detached JWS unless the route names the format); a signed route asks every
    // request for one.
    let format = route.signed_request.or_else(|| {
        verified
            .confirmation()
            .jwk
            .is_some()
            .then_some(SignatureFormat::Jws)
    });
    let token_expires_at = verified.expires_at();
    let jkt = verified.confirmation().jkt.clone();
    let certificate_bound = verified.confirmation().x5t_s256.is_some();
    // Computed once per verification and cached with the token: no hash per request.
    let token_fp = verified.fingerprint().to_string();
    // A second token in a form body would reach the upstream unchecked (RFC 6750 §2.2).
    let scan_form = request.form_body && policy.form_body_tokens == FormBodyTokens::Refuse;
    // Everything that may wait for a key set comes before the DPoP proof, whose `jti` is
    // recorded: a request decided again after the wait must not meet its own proof.
    let signature = match format {
        Some(format) => match signature_pending(
            policy,
            tokens.fetched,
            format,
            &request,
            path,
            Rc::clone(&verified),
            now,
        ) {
            Ok(signature) => Some(signature),
            Err((reason, Some(set))) => return need_keys(set, reason),
            Err((reason, None)) => return refuse(reason),
        },
        None => None,
    };
    let mut dpop_proved = false;
    if let (Scheme::Dpop, Some(jkt)) = (scheme, jkt.as_deref()) {
        let token_hash = verified.token_hash();
        if let Err(reason) = prove_dpop(policy, route, &request, path, token_hash, jkt, tokens, now)
        {
            return refuse(reason);
        }
        dpop_proved = true;
    }
    // What the access log shows once the request is allowed: the bindings it proved.
    let mut bindings = Vec::new();
    if certificate_bound {
        bindings.push("mtls");
    }
    if dpop_proved {
        bindings.push("dpop");
    }
    match format {
        Some(SignatureFormat::Jws) => bindings.push("jws"),
        Some(SignatureFormat::HttpMessageSignature) => bindings.push("http_message_signature"),
        None => {}
    }
    let published = identity.proved(&bindings);
    // What the response's signature binds it to (only on routes that sign responses).
    let sign_response = route.sign_response.map(|format| {
        sign_response_for(format, &request, signature.as_ref(), verified.token_hash())
    });
    if signature.is_none() && !scan_form {
        return Verdict::Allow {
            headers,
            challenge,
            sign_response,
            published,
            token_fp: Some(token_fp),
        };
    }
    Verdict::NeedBody(Box::new(Pending {
        token_expires_at,
        signature,
        scan_form,
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect(),
        token_fp,
        challenge,
        sign_response,
        published,
    }))
}

/// How the request proves itself, for the signature of its response: the verified RFC 9421
/// signature's label, the hash of the request signature as sent, the hash of the token.
fn sign_response_for(
    format: SignatureFormat,
    request: &Request<'_, '_>,
    signature: Option<&PendingSignature>,
    token_hash: &str,
) -> SignResponse {
    let (label, signature_hash) = match signature.map(|s| &s.proof) {
        Some(Proof::Http { signature, .. }) => (
            Some(signature.label.clone()),
            Some(jose::sha256_b64url(&signature.signature)),
        ),
        Some(Proof::Jws(_)) => (
            None,
            request.signature.first().map(|v| jose::sha256_b64url(v)),
        ),
        None => (None, None),
    };
    SignResponse {
        format,
        label,
        signature_hash,
        token_hash: token_hash.to_string(),
    }
}

/// Checks the request's DPoP proof of the key the token is bound to (`jkt`), and records it
/// against replay (RFC 9449 §4.3, §7.1).
#[allow(clippy::too_many_arguments)]
fn prove_dpop(
    policy: &Policy,
    route: Route,
    request: &Request<'_, '_>,
    path: &str,
    token_hash: &str,
    jkt: &str,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Result<(), Reason> {
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| Reason::DpopUriMismatch);
    let method = std::str::from_utf8(request.method).map_err(|_| Reason::DpopMethodMismatch)?;
    let uri = format!(
        "{}://{}{path}",
        text(request.scheme)?,
        text(request.authority)?
    );
    let expected = dpop::Expected {
        settings: &policy.dpop,
        jkt,
        access_token_hash: token_hash,
        nonce_required: route.dpop_nonce,
        clock_skew_seconds: policy.limits.clock_skew_seconds,
    };
    dpop::verify(
        request.dpop,
        dpop::Target { method, uri: &uri },
        &expected,
        tokens.crypto,
        &mut *tokens.replay,
        now,
    )
}

/// Reads the request signature and runs every check that needs no body. A refusal that a
/// (re)fetch of a fetched key set may cure names that set.
#[allow(clippy::too_many_arguments)]
fn signature_pending(
    policy: &Policy,
    fetched: &FetchedKeys,
    format: SignatureFormat,
    request: &Request<'_, '_>,
    path: &str,
    verified: Rc<VerifiedToken>,
    now: u64,
) -> Result<PendingSignature, (Reason, Option<usize>)> {
    let pending =
        signature_checks(policy, format, request, path, verified, now).map_err(|r| (r, None))?;
    // The key must exist now; if the client's keys are fetched, a refetch may bring it.
    let selected =
        signing_keys(policy, fetched, &pending.token, pending.client).and_then(
            |keys| match &pending.proof {
                Proof::Jws(jws) => jws.select_key(keys).map(|_| ()),
                Proof::Http { signature, .. } => {
                    let thumbprint = pending.token.confirmation().jwk_thumbprint.as_deref();
                    http_key(keys, signature, thumbprint).map(|_| ())
                }
            },
        );
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
    format: SignatureFormat,
    request: &Request<'_, '_>,
    path: &str,
    verified: Rc<VerifiedToken>,
    now: u64,
) -> Result<PendingSignature, Reason> {
    let proof = match format {
        SignatureFormat::Jws => Proof::Jws(jws_checks(
            policy,
            request,
            path,
            verified.token_hash(),
            now,
        )?),
        SignatureFormat::HttpMessageSignature => http_checks(policy, request, path, now)?,
    };
    // The key: the token's own `cnf.jwk`, or the registered keys of its client.
    let client = match verified.confirmation().jwk {
        Some(_) => None,
        None => {
            Some(registered_client(policy, &verified).ok_or(Reason::RequestSignatureKeyUnknown)?)
        }
    };
    Ok(PendingSignature {
        proof,
        token: verified,
        client,
    })
}

/// The detached JWS's checks on the headers: shape, `htm`, `htu`, `ath` (against the token's
/// `token_hash`), `iat`.
fn jws_checks(
    policy: &Policy,
    request: &Request<'_, '_>,
    path: &str,
    token_hash: &str,
    now: u64,
) -> Result<DetachedJws, Reason> {
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
    jws.check_request(&target, token_hash, window(policy), now)?;
    Ok(jws)
}

/// The RFC 9421 signature's checks on the headers (§3.2): the one signature selected by
/// label or tag, the required components covered, `created`/`expires`, and its base rebuilt
/// from this request. The signature itself is verified with the body, when `Content-Digest`
/// can be checked too.
fn http_checks(
    policy: &Policy,
    request: &Request<'_, '_>,
    path: &str,
    now: u64,
) -> Result<Proof, Reason> {
    let lines = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| *v)
            .collect()
    };
    let (inputs, signatures) = (lines("signature-input"), lines("signature"));
    if inputs.is_empty() && signatures.is_empty() {
        return Err(Reason::RequestSignatureMissing);
    }
    let settings = &policy.message_signatures;
    let signature =
        Signature::read(&inputs, &signatures, settings.select()).map_err(http_reason)?;
    check_http_window(policy, &signature, now)?;
    let has = |name: &str| request.headers.iter().any(|(n, _)| *n == name.as_bytes());
    for component in &settings.required_components {
        // `dpop` only with a DPoP header; `content-digest` once the body is known.
        let conditional = match component.as_str() {
            "dpop" => !has("dpop"),
            "content-digest" => true,
            _ => false,
        };
        if !conditional && !signature.covers(component) {
            return Err(Reason::RequestSignatureIncomplete);
        }
    }
    fn text(bytes: &[u8]) -> Result<&str, Reason> {
        std::str::from_utf8(bytes).map_err(|_| Reason::RequestSignatureMismatch)
    }
    let message = httpsig::Request {
        method: text(request.method)?,
        scheme: text(request.scheme)?,
        authority: text(request.authority)?,
        path_and_query: path,
        headers: request.headers,
    };
    let base = signature
        .base(httpsig::Message::Request(message))
        .map_err(http_reason)?;
    let content_digest = lines(digest::FIELD)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Proof::Http {
        signature: Box::new(signature),
        base,
        content_digest,
    })
}

/// What verifying a request's token and its proofs takes: the signature verifier, the cache
/// of verified tokens, the introspection answers, the fetched key sets and the replay record
/// (for DPoP proofs).
pub struct Tokens<'a> {
    pub crypto: &'a dyn SignatureVerifier,
    pub cache: &'a mut TokenCache,
    /// What the introspection endpoints said, per token.
    pub introspected: &'a mut IntrospectionCache,
    /// This VM's decoded fetched key sets.
    pub fetched: &'a FetchedKeys,
    /// Where DPoP proofs are recorded once.
    pub replay: &'a mut dyn ReplayStore,
}

impl Tokens<'_> {
    /// The verified token, from the cache or verified now (and then cached).
    fn verify(
        &mut self,
        policy: &Policy,
        token: &str,
        now: u64,
    ) -> Result<Rc<VerifiedToken>, Refusal> {
        let kind = token::kind(token);
        if kind == Kind::Opaque {
            let issuer = policy.opaque_issuer(token).ok_or(Reason::TokenMalformed)?;
            if token.len() > introspect::MAX_OPAQUE_TOKEN_BYTES {
                return Err(Reason::TokenTooLarge.into());
            }
            return self.introspected(issuer, token, now);
        }
        if let Some(cached) = self.cache.get(token, now) {
            return Ok(cached);
        }
        let verified = match kind {
            // Decrypted once: the verified token is cached like any other.
            Kind::Jwe => self.decrypted(policy, token, now),
            _ => token::verify(
                token,
                &policy.issuers,
                self.fetched,
                policy.limits,
                self.crypto,
                now,
            ),
        };
        let verified = match verified {
            Ok(verified) => Rc::new(verified),
            // A JWT of an issuer whose tokens are introspected.
            Err(Refusal {
                introspect: Some(issuer),
                ..
            }) => return self.introspected(issuer, token, now),
            Err(refusal) => return Err(refusal),
        };
        self.cache.insert(token, Rc::clone(&verified), now);
        Ok(verified)
    }

    /// An encrypted token (JWE): decrypted with an issuer's `decryption_keys`, its nested JWT
    /// verified as that issuer's (signed with its keys, its `iss`), and named by the
    /// fingerprint of the token as presented.
    fn decrypted(&self, policy: &Policy, token: &str, now: u64) -> Result<VerifiedToken, Refusal> {
        for (index, issuer) in policy.issuers.iter().enumerate() {
            if issuer.decryption_keys.is_empty() {
                continue;
            }
            // The first issuer with a key that fits decides: one private-key operation per
            // request at most, whatever the number of issuers.
            let inner = match jwe::open_nested(token, &issuer.decryption_keys, policy.decrypts_dir)
            {
                Ok(inner) => inner,
                Err(jwe::Unopened::NoKeyFits) => continue,
                Err(jwe::Unopened::Refused(reason)) => return Err(reason.into()),
            };
            // Only the issuer whose key decrypted it may have signed it.
            let issuers = &policy.issuers[index..=index];
            return token::verify(
                &inner,
                issuers,
                self.fetched,
                policy.limits,
                self.crypto,
                now,
            )
            .map(|verified| verified.presented_as(token))
            .map_err(|refusal| Refusal {
                // A key set index is global; an introspection index would be the slice's.
                introspect: None,
                ..refusal
            });
        }
        Err(Reason::TokenDecryptionFailed.into())
    }

    /// What `issuer`'s introspection endpoint said of `token`, if it was asked; else a
    /// refusal that asks it.
    fn introspected(
        &mut self,
        issuer: usize,
        token: &str,
        now: u64,
    ) -> Result<Rc<VerifiedToken>, Refusal> {
        match self.introspected.get(token, now) {
            Some(Introspected::Active(verified)) => Ok(verified),
            Some(Introspected::Inactive) => Err(Reason::TokenInactive.into()),
            Some(Introspected::Failed(reason)) => Err(reason.into()),
            None => Err(Refusal {
                reason: Reason::IntrospectionUnavailable,
                key_set: None,
                introspect: Some(issuer),
            }),
        }
    }
}

/// RFC 7662 §2.2: an introspected token's `token_type` names the scheme it is used with
/// (after the binding's own scheme checks, which say more: a DPoP-bound token as Bearer).
fn check_token_type(scheme: Scheme, verified: &VerifiedToken) -> Result<(), Reason> {
    let Some(token_type) = verified.token_type() else {
        return Ok(());
    };
    let expected = match scheme {
        Scheme::Bearer => "Bearer",
        Scheme::Dpop => "DPoP",
    };
    if token_type.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Reason::TokenTypeMismatch)
    }
}

/// The client's side of the connection: its certificate, worked out when a check first needs
/// it (the connection's, or a trusted edge's XFCC element, [`peer::client_certificate`]).
struct ClientSide<'a, 'r> {
    policy: &'a Policy,
    peer: &'a mut dyn Peer,
    xfcc: &'a [&'r [u8]],
    certificate: Option<ClientCertificate>,
}

impl ClientSide<'_, '_> {
    fn certificate(&mut self) -> Result<&ClientCertificate, Reason> {
        let certificate = match self.certificate.take() {
            Some(known) => known,
            None => peer::client_certificate(&self.policy.peer_certificate, self.peer, self.xfcc)?,
        };
        Ok(self.certificate.insert(certificate))
    }

    fn facts(&mut self) -> Result<Rc<CertificateFacts>, Reason> {
        let certificate = self.certificate()?.clone();
        certificate.facts(self.peer, self.xfcc)
    }
}

/// The index in `clients` of the token's registered client: its `client_id` (else `azp`,
/// OpenID Connect Core §2), registered for the token's own issuer (a `client_id` is an
/// issuer's name for a client: another trusted issuer must not select this client).
fn registered_client(policy: &Policy, verified: &VerifiedToken) -> Option<usize> {
    let client_id = verified
        .string_claim("client_id")
        .or_else(|| verified.string_claim("azp"))?;
    let issuer = verified.string_claim("iss")?;
    policy
        .clients
        .iter()
        .position(|c| c.client_id == client_id && c.issuer == issuer)
}

/// RFC 8705 §2.1.2 and `source_cidrs`: a token of a client registered with a certificate
/// identity is accepted only over a client certificate with that identity, and one of a
/// client registered with networks only from those networks: a token stolen from the
/// client's gateway is useless from anywhere else, with any other certificate, whatever the
/// route asks of the token itself. A `require_registered_client` route takes tokens of
/// registered clients only.
fn check_client(
    policy: &Policy,
    route: Route,
    verified: &VerifiedToken,
    client_side: &mut ClientSide<'_, '_>,
) -> Result<(), Reason> {
    let Some(client) = registered_client(policy, verified).and_then(|i| policy.clients.get(i))
    else {
        return match route.require_registered_client {
            true => Err(Reason::ClientNotRegistered),
            false => Ok(()),
        };
    };
    if let Some(identity) = &client.identity {
        if !identity.matches(&*client_side.facts()?) {
            return Err(Reason::ClientIdentityMismatch);
        }
    }
    if !client.networks.is_empty() {
        // The connection's own peer address: never a forwarded header, which anyone can set.
        let address = client_side.peer.address();
        if !address.is_some_and(|a| client.networks.iter().any(|n| n.contains(a))) {
            return Err(Reason::ClientNetworkMismatch);
        }
    }
    Ok(())
}

/// Checks that the verified token's binding fits the scheme it came with and the route, and
/// proves its certificate binding. (Its key bindings are proved later: the DPoP proof on the
/// headers, the request signature over the body.)
fn check_binding(
    route: Route,
    scheme: Scheme,
    verified: &VerifiedToken,
    client_side: &mut ClientSide<'_, '_>,
) -> Result<(), Reason> {
    let confirmation = verified.confirmation();
    match (scheme, confirmation.jkt.is_some()) {
        // RFC 9449 §7.2: a DPoP-bound token as a Bearer token would skip its proof.
        (Scheme::Bearer, true) => return Err(Reason::DpopTokenAsBearer),
        // §7.1: the DPoP scheme names a token bound to the proof's key.
        (Scheme::Dpop, false) => return Err(Reason::TokenNotDpopBound),
        _ => {}
    }
    let constrained = match route.require {
        Require::Mtls => confirmation.x5t_s256.is_some(),
        // A key binding counts: its proof (DPoP, or the request signature) is required.
        Require::Bound => confirmation.is_bound(),
        Require::Dpop => confirmation.jkt.is_some(),
        Require::Bearer | Require::None => true,
    };
    if !constrained {
        return Err(Reason::NotSenderConstrained);
    }
    // On every route, a certificate-bound token is accepted only over its certificate.
    if confirmation.x5t_s256.is_some() {
        let digest = client_side.certificate()?.digest;
        confirmation.prove_certificate(|| digest)?;
    }
    Ok(())
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
    use crate::bind::mtls::PeerCertificate;
    use crate::bind::peer::{PeerNames, Reported};
    use crate::crypto::InVm;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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

    /// The issuer's JWKS: its one key, `k1`.
    fn issuer_jwks(key: &ES256KeyPair) -> Value {
        let point = key.public_key().public_key().to_bytes_uncompressed();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}]})
    }

    fn fixture() -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let config = json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)}],
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

    /// A connection that must not be looked at.
    struct Untouched;

    impl Peer for Untouched {
        fn digest(&mut self) -> Option<PeerCertificate> {
            panic!("peer certificate read")
        }
        fn names(&mut self) -> PeerNames {
            panic!("peer certificate names read")
        }
        fn address(&mut self) -> Option<std::net::IpAddr> {
            panic!("peer address read")
        }
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
            introspected: &mut IntrospectionCache::new(0),
            fetched: &FetchedKeys::default(),
            replay: &mut NoReplay,
        };
        decide(
            &f.policy,
            request,
            &mut Reported::with(peer),
            &mut tokens,
            NOW,
        )
    }

    fn allowed<'p>(v: Verdict<'p>) -> Option<Vec<(&'p str, String)>> {
        match v {
            Verdict::Allow { headers, .. } => Some(headers),
            _ => None,
        }
    }

    fn denied(v: Verdict<'_>) -> Option<(Reason, Option<String>)> {
        match v {
            Verdict::Deny {
                reason, token_fp, ..
            } => Some((reason, token_fp)),
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
            introspected: Box::leak(Box::new(IntrospectionCache::new(0))),
            fetched: Box::leak(Box::new(FetchedKeys::default())),
            replay: Box::leak(Box::new(NoReplay)),
        }
    }

    /// A replay record for tests that present no DPoP proof: any use is a test bug.
    struct NoReplay;

    impl ReplayStore for NoReplay {
        fn first_use(&mut self, _: &[u8; 32], _: u64, _: u64) -> Result<(), Reason> {
            panic!("no DPoP proof in this test")
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
            introspected: &mut IntrospectionCache::new(0),
            fetched: &FetchedKeys::default(),
            replay: &mut NoReplay,
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
                &mut Reported::with(Some(cert(ALICE_DER))),
                &mut tokens,
                NOW,
            );
            assert!(matches!(alice, Verdict::Allow { .. }));
            let mallory = decide(
                &f.policy,
                request,
                &mut Reported::with(Some(cert(MALLORY_DER))),
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
            &mut Reported::with(Some(cert(ALICE_DER))),
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
            introspected: &mut IntrospectionCache::new(0),
            fetched: &FetchedKeys::default(),
            replay: &mut NoReplay,
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
                &mut Reported::with(Some(cert(ALICE_DER))),
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

    /// Issue 11: what the access log shows. An allowed request names the bindings it proved;
    /// a refusal after the token verified names whose token it was; nothing is published of a
    /// claim that could forge a log line.
    #[test]
    fn decisions_publish_the_bindings_and_whose_token_it_was() {
        let f = fixture();
        let published = |v: Verdict<'_>| match v {
            Verdict::Allow {
                published,
                token_fp,
                ..
            } => (published, token_fp),
            Verdict::Deny {
                published,
                token_fp,
                ..
            } => (published, token_fp),
            other => panic!("{other:?}"),
        };
        let bound = token(
            &f,
            bound_to(ALICE_DER),
            &[("client_id", json!("orders-app"))],
        );
        let auth = format!("Bearer {bound}");
        let (allowed, fp) = published(run(&f, "/orders", Some(&auth), Some(ALICE_DER)));
        assert_eq!(allowed.binding, "mtls");
        assert_eq!(allowed.client_id.as_deref(), Some("orders-app"));
        assert_eq!(allowed.sub.as_deref(), Some("alice"));
        assert_eq!(fp.as_deref(), Some(fingerprint(&bound).as_str()));
        let (stolen, fp) = published(run(&f, "/orders", Some(&auth), Some(MALLORY_DER)));
        assert_eq!(stolen.binding, "");
        assert_eq!(stolen.client_id.as_deref(), Some("orders-app"));
        assert_eq!(fp.as_deref(), Some(fingerprint(&bound).as_str()));
        let unbound = format!("Bearer {}", token(&f, None, &[("azp", json!("web"))]));
        let (bearer, _) = published(run(&f, "/legacy", Some(&unbound), None));
        assert_eq!(bearer.binding, "none");
        assert_eq!(bearer.client_id.as_deref(), Some("web"));
        let hostile = format!(
            "Bearer {}",
            token(&f, None, &[("client_id", json!("a b\nforged=1"))])
        );
        let (hostile, _) = published(run(&f, "/legacy", Some(&hostile), None));
        assert_eq!(hostile.client_id, None);
        let (none, fp) = published(run(&f, "/healthz", None, None));
        assert_eq!((none, fp), (Published::default(), None));
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
            reason(decide(
                &f.policy,
                request,
                &mut Reported::default(),
                &mut uncached(),
                NOW
            )),
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
        let verdict = decide(&f.policy, request, &mut Untouched, &mut uncached(), NOW);
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
            match post.with(|request| {
                decide(
                    &policy,
                    request,
                    &mut Reported::default(),
                    &mut uncached(),
                    NOW,
                )
            }) {
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
                dpop: &[],
                xfcc: &[],
                headers: &[],
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
                &mut Reported::with(Some(cert(ALICE_DER))),
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
            &mut Reported::with(Some(cert(ALICE_DER))),
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
        fn first_use(&mut self, id: &[u8; 32], iat: u64, now: u64) -> Result<(), Reason> {
            (&self.inner).first_use(id, iat, now)
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
            let Verdict::NeedBody(pending) = post.with(|request| {
                decide(
                    &policy,
                    request,
                    &mut Reported::default(),
                    &mut uncached(),
                    NOW,
                )
            }) else {
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
            &mut Reported::with(Some(cert(ALICE_DER))),
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
                dpop: &[],
                xfcc: &[],
                headers: &[],
                form_body: false,
            };
            let Verdict::NeedBody(pending) = decide(
                &f.policy,
                request,
                &mut Reported::with(Some(cert(ALICE_DER))),
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
            challenge: Challenge::BEARER,
        };
        let waits = Decision::NeedKeys {
            set: 0,
            seen_fetched_at: 0,
            timeout_ms: 1500,
        };
        let decide = |reason, may_wait, granted: bool| {
            let asked = Cell::new(false);
            let (decision, leftovers) = need(reason).into_decision(
                &policy,
                &fetched,
                may_wait,
                |_| {
                    asked.set(true);
                    granted
                },
                |_| 0,
            );
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

    /// DPoP (issue 9): the scheme, the binding, the route, and the proof through `decide`.
    mod dpop_requests {
        use super::*;
        use crate::replay;
        use p256::ecdsa::signature::Signer as _;

        const URI: &str = "https://api.example";

        /// The fixture's issuer, with DPoP routes: `/transfers` takes DPoP only and nonces.
        fn dpop_fixture() -> Fixture {
            let key = ES256KeyPair::generate().with_key_id("k1");
            let config = json!({
                "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)}],
                "dpop": {"algs": ["ES256", "EdDSA"], "nonce_secret": URL_SAFE_NO_PAD.encode([3u8; 32])},
                "rules": [
                    {"prefix": "/transfers", "require": "dpop", "dpop_nonce": true},
                    {"prefix": "/accounts", "require": "dpop"},
                    {"prefix": "/legacy", "require": "bearer"},
                    {"prefix": "/orders", "require": "mtls"},
                    {"prefix": "/", "require": "bound"}
                ]
            });
            Fixture {
                key,
                policy: Policy::from_json(config.to_string().as_bytes()).unwrap(),
            }
        }

        fn client() -> (p256::ecdsa::SigningKey, Value) {
            let key = p256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap();
            let point = key.verifying_key().to_encoded_point(false);
            let jwk = json!({"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
            (key, jwk)
        }

        fn jkt() -> Value {
            let (_, jwk) = client();
            json!(crate::jwk::thumbprint(jwk.as_object().unwrap()).unwrap())
        }

        fn proof(path: &str, token: &str, jti: &str, nonce: Option<&str>) -> String {
            let (key, jwk) = client();
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let mut claims = json!({"jti": jti, "htm": "GET", "htu": format!("{URI}{path}"),
                "iat": NOW, "ath": dpop::access_token_hash(token)});
            if let Some(nonce) = nonce {
                claims["nonce"] = json!(nonce);
            }
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
        }

        /// Decides GET `path` with `authorization`, `dpop` header lines and a peer
        /// certificate, against one replay record.
        fn run<'p>(
            f: &'p Fixture,
            record: &replay::SharedReplay<crate::shared::Memory>,
            path: &str,
            authorization: &str,
            dpop: &[&str],
            peer: Option<&[u8]>,
        ) -> Verdict<'p> {
            let peer = peer.map(cert);
            let authorization = [authorization.as_bytes()];
            let dpop: Vec<&[u8]> = dpop.iter().map(|p| p.as_bytes()).collect();
            let request = Request {
                path: path.as_bytes(),
                authorization: &authorization,
                method: b"GET",
                scheme: b"https",
                authority: b"api.example",
                dpop: &dpop,
                ..Request::default()
            };
            let mut cache = TokenCache::new(16);
            let mut store = record;
            let mut tokens = Tokens {
                crypto: &InVm,
                cache: &mut cache,
                introspected: &mut IntrospectionCache::new(0),
                fetched: &FetchedKeys::default(),
                replay: &mut store,
            };
            decide(
                &f.policy,
                request,
                &mut Reported::with(peer),
                &mut tokens,
                NOW,
            )
        }

        fn refusal(v: Verdict<'_>) -> (Reason, Challenge) {
            match v {
                Verdict::Deny {
                    reason, challenge, ..
                } => (reason, challenge),
                other => panic!("not refused: {other:?}"),
            }
        }

        #[test]
        fn a_dpop_bound_token_with_its_proof_is_served_once() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let token = token(&f, Some(json!({"jkt": jkt()})), &[]);
            let auth = format!("DPoP {token}");
            let p = proof("/accounts/1", &token, "a", None);
            assert!(matches!(
                run(&f, &record, "/accounts/1", &auth, &[&p], None),
                Verdict::Allow { .. }
            ));
            // The same proof again: an eavesdropper's replay.
            let (reason, challenge) = refusal(run(&f, &record, "/accounts/1", &auth, &[&p], None));
            assert_eq!(reason, Reason::DpopProofReplayed);
            assert_eq!(challenge.used, Some(Scheme::Dpop));
            // A bound route and a bearer route take it too, each with its own proof.
            for (path, jti) in [("/anything", "b"), ("/legacy", "c")] {
                let p = proof(path, &token, jti, None);
                assert!(
                    matches!(
                        run(&f, &record, path, &auth, &[&p], None),
                        Verdict::Allow { .. }
                    ),
                    "{path}"
                );
            }
        }

        /// RFC 9449 §7.2: a DPoP-bound token sent as a Bearer token, on every route, `bearer`
        /// included; the stolen token is worthless without the key.
        #[test]
        fn a_dpop_bound_token_as_bearer_is_a_downgrade_everywhere() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let token = token(&f, Some(json!({"jkt": jkt()})), &[]);
            let auth = format!("Bearer {token}");
            for path in ["/accounts/1", "/legacy", "/anything", "/transfers"] {
                let p = proof(path, &token, path, None);
                let (reason, _) = refusal(run(&f, &record, path, &auth, &[&p], None));
                assert_eq!(reason, Reason::DpopTokenAsBearer, "{path}");
            }
        }

        #[test]
        fn a_dpop_bound_token_is_never_served_without_its_proof() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let token = token(&f, Some(json!({"jkt": jkt()})), &[]);
            let auth = format!("dpop {token}");
            for path in ["/accounts/1", "/legacy", "/anything"] {
                let (reason, _) = refusal(run(&f, &record, path, &auth, &[], None));
                assert_eq!(reason, Reason::DpopProofMissing, "{path}");
            }
        }

        #[test]
        fn the_dpop_scheme_needs_a_dpop_bound_token() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let unbound = token(&f, None, &[]);
            let p = proof("/legacy", &unbound, "u", None);
            let (reason, challenge) = refusal(run(
                &f,
                &record,
                "/legacy",
                &format!("DPoP {unbound}"),
                &[&p],
                None,
            ));
            assert_eq!(reason, Reason::TokenNotDpopBound);
            assert_eq!(challenge.used, Some(Scheme::Dpop));
            // A DPoP route refuses a Bearer token that has no key binding.
            let (reason, challenge) = refusal(run(
                &f,
                &record,
                "/accounts",
                &format!("Bearer {unbound}"),
                &[],
                None,
            ));
            assert_eq!(reason, Reason::NotSenderConstrained);
            assert!(!challenge.bearer && challenge.dpop);
            // And a certificate-bound token, even over its certificate.
            let mtls = token(&f, bound_to(ALICE_DER), &[]);
            let (reason, _) = refusal(run(
                &f,
                &record,
                "/accounts",
                &format!("Bearer {mtls}"),
                &[],
                Some(ALICE_DER),
            ));
            assert_eq!(reason, Reason::NotSenderConstrained);
        }

        /// A `cnf` naming a certificate and a key needs both proofs.
        #[test]
        fn a_token_bound_to_a_certificate_and_a_key_needs_both() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let x5t = bound_to(ALICE_DER).unwrap()["x5t#S256"].clone();
            let token = token(&f, Some(json!({"x5t#S256": x5t, "jkt": jkt()})), &[]);
            let auth = format!("DPoP {token}");
            let p1 = proof("/orders/7", &token, "1", None);
            let (reason, _) = refusal(run(
                &f,
                &record,
                "/orders/7",
                &auth,
                &[&p1],
                Some(MALLORY_DER),
            ));
            assert_eq!(reason, Reason::CertificateMismatch);
            let (reason, _) = refusal(run(&f, &record, "/orders/7", &auth, &[], Some(ALICE_DER)));
            assert_eq!(reason, Reason::DpopProofMissing);
            let p2 = proof("/orders/7", &token, "2", None);
            assert!(matches!(
                run(&f, &record, "/orders/7", &auth, &[&p2], Some(ALICE_DER)),
                Verdict::Allow { .. }
            ));
        }

        #[test]
        fn a_nonce_route_asks_for_a_nonce_and_takes_the_current_one() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let token = token(&f, Some(json!({"jkt": jkt()})), &[]);
            let auth = format!("DPoP {token}");
            let p = proof("/transfers", &token, "n1", None);
            let (reason, challenge) = refusal(run(&f, &record, "/transfers", &auth, &[&p], None));
            assert_eq!(reason, Reason::DpopNonceMissing);
            assert!(challenge.nonce);
            let nonce = f.policy.dpop.nonces.as_ref().unwrap().mint(NOW);
            // The first proof was refused before it was recorded: its jti is still good.
            let p = proof("/transfers", &token, "n1", Some(&nonce));
            match run(&f, &record, "/transfers", &auth, &[&p], None) {
                Verdict::Allow { challenge, .. } => assert!(challenge.nonce),
                other => panic!("not allowed: {other:?}"),
            }
        }

        #[test]
        fn challenges_follow_the_route_and_the_configuration() {
            let f = dpop_fixture();
            let record = replay::in_memory(8);
            let (reason, challenge) = refusal(run(&f, &record, "/accounts", "", &[], None));
            assert_eq!(reason, Reason::TokenMissing);
            assert_eq!(
                challenge,
                Challenge {
                    bearer: false,
                    dpop: true,
                    used: None,
                    nonce: false,
                    http_signature: false,
                }
            );
            let (_, challenge) = refusal(run(&f, &record, "/anything", "", &[], None));
            assert!(challenge.bearer && challenge.dpop);
            // Without a `dpop` block, a bound route announces Bearer alone.
            let plain = fixture();
            let (_, challenge) = refusal(run(&plain, &record, "/anything", "", &[], None));
            assert_eq!(challenge, Challenge::BEARER);
        }
    }

    /// RFC 9421 request signatures through the pipeline (the signature base and the signing
    /// are the core's own here; requests signed by an independent implementation are in
    /// tests/e2e_httpsig.rs).
    mod http_signatures {
        use super::*;
        use crate::replay;
        use crate::sign::SigningKey;

        /// RFC 8037 Appendix A.1's Ed25519 key (also Tether's response key here).
        fn private_jwk() -> Value {
            json!({"kty": "OKP", "crv": "Ed25519",
                "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        }

        /// The client's registered key `app-key`.
        fn client_key() -> SigningKey {
            SigningKey::from_private_jwk("app-key", &private_jwk()).unwrap()
        }

        fn fixture(required: Option<Value>) -> Fixture {
            let key = ES256KeyPair::generate().with_key_id("k1");
            let mut config = json!({
                "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)}],
                "clients": [{"client_id": "app", "jwks": {"keys": [client_key().public_jwk()]}}],
                "rules": [{"prefix": "/pay", "require": "bearer",
                           "signed_request": "http_message_signature",
                           "sign_response": "http_message_signature"}],
                "response_signing": {"keys": [{"kid": "resp", "private_jwk_env": "RESP"}]}
            });
            if let Some(required) = required {
                config["message_signatures"] = json!({"required_components": required});
            }
            let environment = |name: &str| (name == "RESP").then(|| private_jwk().to_string());
            let policy =
                Policy::from_json_with(config.to_string().as_bytes(), &environment).unwrap();
            Fixture { key, policy }
        }

        /// The header lines of a POST of `body` to https://api.example/pay, signed over
        /// `covered` (a Signature-Input member's inner list, parameters included).
        fn signed_lines(token: &str, body: &[u8], covered: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut lines: Vec<(Vec<u8>, Vec<u8>)> = vec![
                (
                    b"authorization".to_vec(),
                    format!("Bearer {token}").into_bytes(),
                ),
                (
                    b"content-digest".to_vec(),
                    digest::field_value(body).into_bytes(),
                ),
            ];
            let input = format!("sig1={covered}");
            let view: Vec<(&[u8], &[u8])> = lines
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            let request = httpsig::Request {
                method: "POST",
                scheme: "https",
                authority: "api.example",
                path_and_query: "/pay",
                headers: &view,
            };
            let dictionary = crate::sfv::parse_dictionary(input.as_bytes()).unwrap();
            let Some(crate::sfv::ListEntry::InnerList(list)) = dictionary.get("sig1") else {
                panic!("an inner list");
            };
            let base = httpsig::signature_base(list, httpsig::Message::Request(request)).unwrap();
            let signature = STANDARD.encode(client_key().sign(&base));
            lines.push((b"signature-input".to_vec(), input.into_bytes()));
            lines.push((
                b"signature".to_vec(),
                format!("sig1=:{signature}:").into_bytes(),
            ));
            lines
        }

        const FULL: &str = r#"("@method" "@target-uri" "authorization" "content-digest");created=1800000000;keyid="app-key";tag="fapi-2-request""#;

        fn decide_lines<'p>(
            f: &'p Fixture,
            lines: &[(Vec<u8>, Vec<u8>)],
            record: &replay::SharedReplay<crate::shared::Memory>,
        ) -> Verdict<'p> {
            let headers: Vec<(&[u8], &[u8])> = lines
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            let authorization: Vec<&[u8]> = lines
                .iter()
                .filter(|(n, _)| n == b"authorization")
                .map(|(_, v)| v.as_slice())
                .collect();
            let request = Request {
                path: b"/pay",
                authorization: &authorization,
                method: b"POST",
                scheme: b"https",
                authority: b"api.example",
                headers: &headers,
                ..Request::default()
            };
            let mut cache = TokenCache::new(0);
            let mut record = record;
            let mut tokens = Tokens {
                crypto: &InVm,
                cache: &mut cache,
                introspected: &mut IntrospectionCache::new(0),
                fetched: &FetchedKeys::default(),
                replay: &mut record,
            };
            decide(
                &f.policy,
                request,
                &mut Reported::default(),
                &mut tokens,
                NOW,
            )
        }

        fn finish(
            f: &Fixture,
            verdict: Verdict<'_>,
            body: &[u8],
            record: &replay::SharedReplay<crate::shared::Memory>,
        ) -> Result<(), Reason> {
            let Verdict::NeedBody(pending) = verdict else {
                panic!("not waiting for the body: {verdict:?}");
            };
            let mut record = record;
            pending
                .finish(
                    &f.policy,
                    &FetchedKeys::default(),
                    body,
                    &InVm,
                    &mut record,
                    NOW,
                )
                .map(|_| ())
        }

        const BODY: &[u8] = br#"{"amount":"10.00"}"#;

        #[test]
        fn a_signed_request_is_served_once_and_its_response_is_bound_to_it() {
            let f = fixture(None);
            let token = token(&f, None, &[("client_id", json!("app"))]);
            let lines = signed_lines(&token, BODY, FULL);
            let record = replay::in_memory(8);
            let verdict = decide_lines(&f, &lines, &record);
            let Verdict::NeedBody(pending) = &verdict else {
                panic!("{verdict:?}");
            };
            let bound = pending
                .sign_response
                .clone()
                .expect("the route signs responses");
            assert_eq!(bound.format, SignatureFormat::HttpMessageSignature);
            assert_eq!(bound.label.as_deref(), Some("sig1"));
            assert!(bound.signature_hash.is_some());
            assert_eq!(finish(&f, verdict, BODY, &record), Ok(()));
            let again = decide_lines(&f, &lines, &record);
            assert_eq!(
                finish(&f, again, BODY, &record),
                Err(Reason::RequestSignatureReplayed)
            );
            // Another body under the same signature and digest.
            let changed = decide_lines(&f, &lines, &record);
            assert_eq!(
                finish(&f, changed, b"{}", &record),
                Err(Reason::ContentDigestMismatch)
            );
        }

        #[test]
        fn a_body_needs_a_covered_digest_whatever_the_required_components() {
            let f = fixture(Some(json!(["@method", "@target-uri", "authorization"])));
            let token = token(&f, None, &[("client_id", json!("app"))]);
            let covered = r#"("@method" "@target-uri" "authorization");created=1800000000;keyid="app-key";tag="fapi-2-request""#;
            let lines = signed_lines(&token, BODY, covered);
            let record = replay::in_memory(8);
            let verdict = decide_lines(&f, &lines, &record);
            assert_eq!(
                finish(&f, verdict, BODY, &record),
                Err(Reason::RequestSignatureIncomplete)
            );
            // Without a body (a Content-Digest present must still match it), the same
            // signature is enough.
            let lines = signed_lines(&token, b"", covered);
            let verdict = decide_lines(&f, &lines, &record);
            assert_eq!(finish(&f, verdict, b"", &record), Ok(()));
        }

        #[test]
        fn a_required_component_left_out_is_refused_on_the_headers() {
            let f = fixture(None);
            let token = token(&f, None, &[("client_id", json!("app"))]);
            let covered = r#"("@method" "@target-uri" "content-digest");created=1800000000;keyid="app-key";tag="fapi-2-request""#;
            let lines = signed_lines(&token, BODY, covered);
            let record = replay::in_memory(8);
            assert_eq!(
                reason(decide_lines(&f, &lines, &record)),
                Reason::RequestSignatureIncomplete
            );
            let stale = FULL.replace("1800000000", "1799999000");
            let lines = signed_lines(&token, BODY, &stale);
            assert_eq!(
                reason(decide_lines(&f, &lines, &record)),
                Reason::RequestSignatureExpired
            );
            let unknown = FULL.replace("app-key", "other-key");
            let lines = signed_lines(&token, BODY, &unknown);
            assert_eq!(
                reason(decide_lines(&f, &lines, &record)),
                Reason::RequestSignatureKeyUnknown
            );
        }

        #[test]
        fn an_empty_list_of_required_components_is_a_configuration_error() {
            let key = ES256KeyPair::generate().with_key_id("k1");
            let config = json!({
                "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)}],
                "message_signatures": {"required_components": []}
            });
            let error = Policy::from_json(config.to_string().as_bytes()).unwrap_err();
            assert!(error.0.contains("required_components"), "{error}");
        }
    }

    /// Issue 11: RFC 8705 §2.1.2 client identity, `source_cidrs`, `require_registered_client`
    /// and the client certificate forwarded by a trusted edge.
    mod client_identity {
        use super::*;

        const TPP: &str = "spiffe://mesh.local/ns/tpp/sa/client";
        const EDGE: &str = "spiffe://mesh.local/ns/edge/sa/ingress";

        fn fixture_with(extra: Value) -> Fixture {
            let key = ES256KeyPair::generate().with_key_id("k1");
            let mut config = json!({
                "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)}],
                "rules": [
                    {"prefix": "/open", "require": "bearer"},
                    {"prefix": "/partners", "require": "bearer", "require_registered_client": true},
                    {"prefix": "/", "require": "mtls"}
                ],
                "clients": [
                    {"client_id": "tpp", "tls_client_auth_san_uri": TPP},
                    {"client_id": "branch", "source_cidrs": ["10.20.0.0/16", "2001:db8:20::/48"]},
                    {"client_id": "bank", "tls_client_auth_subject_dn": "CN=bank,O=Example Bank,C=GB"}
                ]
            });
            if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
                for (name, value) in extra {
                    config.insert(name.clone(), value.clone());
                }
            }
            let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
            Fixture { key, policy }
        }

        fn connection(der: &[u8], uri: Option<&str>, address: &str) -> Reported {
            Reported {
                digest: Some(cert(der)),
                names: PeerNames {
                    uri: uri.map(str::to_string),
                    ..PeerNames::default()
                },
                address: address.parse().ok(),
            }
        }

        fn decide_on(
            f: &Fixture,
            path: &str,
            token: &str,
            xfcc: &[&[u8]],
            peer: &mut Reported,
        ) -> Result<(), Reason> {
            let auth = format!("Bearer {token}");
            let request = Request {
                path: path.as_bytes(),
                authorization: &[auth.as_bytes()],
                xfcc,
                ..Request::default()
            };
            match decide(&f.policy, request, peer, &mut uncached(), NOW) {
                Verdict::Allow { .. } => Ok(()),
                other => Err(reason(other)),
            }
        }

        #[test]
        fn a_registered_san_uri_is_required_on_every_route_that_examines_a_token() {
            let f = fixture_with(json!({}));
            let bound = token(&f, bound_to(ALICE_DER), &[("client_id", json!("tpp"))]);
            let unbound = token(&f, None, &[("client_id", json!("tpp"))]);
            let mut right = connection(ALICE_DER, Some(TPP), "10.0.0.1:443");
            assert_eq!(decide_on(&f, "/orders", &bound, &[], &mut right), Ok(()));
            assert_eq!(decide_on(&f, "/open", &unbound, &[], &mut right), Ok(()));
            // The same certificate digest, another name: the token's own binding holds, the
            // client's identity does not.
            let mut other_name = connection(
                ALICE_DER,
                Some("spiffe://mesh.local/ns/x/sa/y"),
                "10.0.0.1:1",
            );
            for (path, token) in [("/orders", &bound), ("/open", &unbound)] {
                assert_eq!(
                    decide_on(&f, path, token, &[], &mut other_name),
                    Err(Reason::ClientIdentityMismatch),
                    "{path}"
                );
            }
            // No client certificate at all.
            assert_eq!(
                decide_on(&f, "/open", &unbound, &[], &mut Reported::default()),
                Err(Reason::ClientIdentityMismatch)
            );
            // A certificate-bound token over another certificate fails on its binding first.
            let mut mallory = connection(MALLORY_DER, Some(TPP), "10.0.0.1:1");
            assert_eq!(
                decide_on(&f, "/orders", &bound, &[], &mut mallory),
                Err(Reason::CertificateMismatch)
            );
        }

        #[test]
        fn azp_names_the_client_when_client_id_is_absent() {
            let f = fixture_with(json!({}));
            let unbound = token(&f, None, &[("azp", json!("tpp"))]);
            assert_eq!(
                decide_on(&f, "/open", &unbound, &[], &mut Reported::default()),
                Err(Reason::ClientIdentityMismatch)
            );
            let both = token(
                &f,
                None,
                &[("client_id", json!("nobody")), ("azp", json!("tpp"))],
            );
            assert_eq!(
                decide_on(&f, "/open", &both, &[], &mut Reported::default()),
                Ok(())
            );
        }

        #[test]
        fn a_registered_subject_dn_compares_as_a_distinguished_name() {
            let f = fixture_with(json!({}));
            let unbound = token(&f, None, &[("client_id", json!("bank"))]);
            let with_subject = |subject: &str| Reported {
                digest: Some(cert(ALICE_DER)),
                names: PeerNames {
                    subject: Some(subject.into()),
                    ..PeerNames::default()
                },
                address: None,
            };
            assert_eq!(
                decide_on(
                    &f,
                    "/open",
                    &unbound,
                    &[],
                    &mut with_subject("cn=BANK, o=example  bank,c=gb")
                ),
                Ok(())
            );
            assert_eq!(
                decide_on(
                    &f,
                    "/open",
                    &unbound,
                    &[],
                    &mut with_subject("CN=bank,O=Example Bank")
                ),
                Err(Reason::ClientIdentityMismatch)
            );
        }

        #[test]
        fn source_cidrs_are_checked_against_the_connections_address() {
            let f = fixture_with(json!({}));
            let unbound = token(&f, None, &[("client_id", json!("branch"))]);
            for (address, expected) in [
                ("10.20.3.4:5555", Ok(())),
                ("[::ffff:10.20.3.4]:5555", Ok(())),
                ("[2001:db8:20:1::9]:443", Ok(())),
                ("10.21.0.1:5555", Err(Reason::ClientNetworkMismatch)),
                ("[2001:db8:21::9]:443", Err(Reason::ClientNetworkMismatch)),
                // An address Envoy did not give: not in any network.
                ("", Err(Reason::ClientNetworkMismatch)),
            ] {
                let mut peer = Reported {
                    address: address.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()),
                    ..Reported::default()
                };
                assert_eq!(
                    decide_on(&f, "/open", &unbound, &[], &mut peer),
                    expected,
                    "{address}"
                );
            }
        }

        #[test]
        fn registered_client_routes_refuse_tokens_of_other_clients() {
            let f = fixture_with(json!({}));
            let stranger = token(&f, None, &[("client_id", json!("stranger"))]);
            let nameless = token(&f, None, &[]);
            for t in [&stranger, &nameless] {
                assert_eq!(
                    decide_on(&f, "/partners/1", t, &[], &mut Reported::default()),
                    Err(Reason::ClientNotRegistered)
                );
                assert_eq!(
                    decide_on(&f, "/open", t, &[], &mut Reported::default()),
                    Ok(())
                );
            }
            let branch = token(&f, None, &[("client_id", json!("branch"))]);
            let mut inside = Reported {
                address: "10.20.0.9".parse().ok(),
                ..Reported::default()
            };
            assert_eq!(
                decide_on(&f, "/partners/1", &branch, &[], &mut inside),
                Ok(())
            );
        }

        #[test]
        fn a_client_of_another_issuer_is_not_this_client() {
            let key = ES256KeyPair::generate().with_key_id("k1");
            let config = json!({
                "issuers": [
                    {"issuer": ISS, "audiences": [AUD], "jwks": issuer_jwks(&key)},
                    {"issuer": "https://other.example", "audiences": [AUD], "jwks": issuer_jwks(&key)}
                ],
                "rules": [{"prefix": "/", "require": "bearer", "require_registered_client": true}],
                "clients": [{"client_id": "tpp", "issuer": "https://other.example", "tls_client_auth_san_uri": TPP}]
            });
            let f = Fixture {
                policy: Policy::from_json(config.to_string().as_bytes()).unwrap(),
                key,
            };
            let ours = token(&f, None, &[("client_id", json!("tpp"))]);
            assert_eq!(
                decide_on(&f, "/x", &ours, &[], &mut Reported::default()),
                Err(Reason::ClientNotRegistered)
            );
        }

        #[test]
        fn a_trusted_edge_forwards_the_client_certificate() {
            let f = fixture_with(json!({
                "peer_certificate": {"source": "xfcc", "trusted_peers": [{"san_uri": EDGE}]}
            }));
            let bound = token(&f, bound_to(ALICE_DER), &[("client_id", json!("tpp"))]);
            let hash: String = Sha256::digest(ALICE_DER)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let alice = format!("Hash={hash};URI={TPP}");
            let mut edge = connection(b"edge", Some(EDGE), "10.0.0.2:1");
            assert_eq!(
                decide_on(&f, "/orders", &bound, &[alice.as_bytes()], &mut edge),
                Ok(())
            );
            // The edge's own certificate never stands in for the client's.
            assert_eq!(
                decide_on(&f, "/orders", &bound, &[], &mut edge),
                Err(Reason::ClientCertificateMissing)
            );
            assert_eq!(
                decide_on(&f, "/orders", &bound, &[b"Hash=00"], &mut edge),
                Err(Reason::XfccMalformed)
            );
            // The same header over any other connection names nobody: the connection's own
            // certificate is the client's (the glue has removed the header by then).
            let mut direct = connection(ALICE_DER, Some(TPP), "10.0.0.3:1");
            assert_eq!(decide_on(&f, "/orders", &bound, &[], &mut direct), Ok(()));
            let mut mallory = connection(
                MALLORY_DER,
                Some("spiffe://mesh.local/ns/m/sa/m"),
                "10.0.0.3:1",
            );
            assert_eq!(
                decide_on(&f, "/orders", &bound, &[alice.as_bytes()], &mut mallory),
                Err(Reason::CertificateMismatch)
            );
        }
    }

    /// Issue 12: opaque tokens, introspected (RFC 7662), with the same bindings.
    mod introspection {
        use super::*;
        use crate::introspect::{self, Answer, Context, Outcome};

        const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

        fn introspecting(with_keys: bool) -> (Fixture, Policy) {
            let f = fixture();
            let mut issuer = json!({"issuer": ISS, "audiences": [AUD],
                "introspection": {"cluster": "as", "path": "/introspect", "client_id": "rs",
                                  "client_secret": "s3cret"}});
            if with_keys {
                issuer["jwks"] = issuer_jwks(&f.key);
            }
            let config = json!({
                "issuers": [issuer],
                "rules": [{"prefix": "/legacy", "require": "bearer"}, {"prefix": "/", "require": "mtls"}]
            });
            let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
            (f, policy)
        }

        /// The verified token of an active answer with `members`.
        fn active(policy: &Policy, members: Value) -> Rc<VerifiedToken> {
            let issuer = &policy.issuers[0];
            let context = Context {
                introspection: issuer.introspection.as_ref().unwrap(),
                issuer,
                fetched: &FetchedKeys::default(),
                crypto: &InVm,
                limits: policy.limits,
            };
            let body = members.to_string();
            let answer = Answer {
                status: Some(200),
                content_type: Some("application/json"),
                body: body.as_bytes(),
            };
            match introspect::read_answer(&answer, OPAQUE, &context, NOW) {
                Ok(Outcome::Active(token)) => token,
                other => panic!("not active: {other:?}"),
            }
        }

        fn members(cnf: Option<Value>) -> Value {
            let mut m = json!({"active": true, "iss": ISS, "aud": AUD, "sub": "alice",
                               "client_id": "tpp", "exp": NOW + 3600, "token_type": "Bearer"});
            if let Some(cnf) = cnf {
                m["cnf"] = cnf;
            }
            m
        }

        fn decide_with<'p>(
            policy: &'p Policy,
            path: &str,
            authorization: &str,
            peer: Option<&[u8]>,
            introspected: &mut IntrospectionCache,
        ) -> Verdict<'p> {
            let request = Request {
                path: path.as_bytes(),
                authorization: &[authorization.as_bytes()],
                ..Request::default()
            };
            let mut cache = TokenCache::new(0);
            let mut tokens = Tokens {
                crypto: &InVm,
                cache: &mut cache,
                introspected,
                fetched: &FetchedKeys::default(),
                replay: &mut NoReplay,
            };
            decide(
                policy,
                request,
                &mut Reported::with(peer.map(cert)),
                &mut tokens,
                NOW,
            )
        }

        #[test]
        fn an_opaque_token_waits_for_its_introspection_then_is_bound_like_a_jwt() {
            let (_, policy) = introspecting(true);
            let mut answers = IntrospectionCache::new(16);
            let bearer = format!("Bearer {OPAQUE}");
            // Not asked yet: the verdict asks, naming the issuer and the token.
            match decide_with(&policy, "/orders", &bearer, Some(ALICE_DER), &mut answers) {
                Verdict::NeedIntrospection { ask, token_fp, .. } => {
                    assert_eq!(ask.issuer, 0);
                    assert_eq!(ask.token, OPAQUE);
                    assert_eq!(token_fp, Some(fingerprint(OPAQUE)));
                    // Never the token in a Debug print.
                    assert!(!format!("{ask:?}").contains(OPAQUE));
                }
                other => panic!("{other:?}"),
            }
            // Answered: active and bound to Alice's certificate (RFC 8705 §3.2).
            let token = active(&policy, members(bound_to(ALICE_DER)));
            answers.insert(OPAQUE, Introspected::Active(token), 60, NOW);
            assert!(allowed(decide_with(
                &policy,
                "/orders",
                &bearer,
                Some(ALICE_DER),
                &mut answers
            ))
            .is_some());
            assert_eq!(
                reason(decide_with(
                    &policy,
                    "/orders",
                    &bearer,
                    Some(MALLORY_DER),
                    &mut answers
                )),
                Reason::CertificateMismatch
            );
            // An unbound introspected token is not sender-constrained.
            let other = "unbound-opaque-token";
            let token = active(&policy, members(None));
            answers.insert(other, Introspected::Active(token), 60, NOW);
            assert_eq!(
                reason(decide_with(
                    &policy,
                    "/orders",
                    &format!("Bearer {other}"),
                    Some(ALICE_DER),
                    &mut answers
                )),
                Reason::NotSenderConstrained
            );
            assert!(allowed(decide_with(
                &policy,
                "/legacy",
                &format!("Bearer {other}"),
                None,
                &mut answers
            ))
            .is_some());
        }

        #[test]
        fn inactive_and_failed_answers_refuse_with_their_reasons() {
            let (_, policy) = introspecting(true);
            let mut answers = IntrospectionCache::new(16);
            answers.insert("revoked", Introspected::Inactive, 5, NOW);
            answers.insert(
                "broken",
                Introspected::Failed(Reason::IntrospectionInvalid),
                1,
                NOW,
            );
            for (token, expected) in [
                ("revoked", Reason::TokenInactive),
                ("broken", Reason::IntrospectionInvalid),
            ] {
                assert_eq!(
                    reason(decide_with(
                        &policy,
                        "/legacy",
                        &format!("Bearer {token}"),
                        None,
                        &mut answers
                    )),
                    expected
                );
            }
        }

        #[test]
        fn the_token_type_must_fit_the_scheme() {
            let (_, policy) = introspecting(true);
            let mut answers = IntrospectionCache::new(16);
            let mut m = members(None);
            m["token_type"] = json!("DPoP");
            answers.insert(OPAQUE, Introspected::Active(active(&policy, m)), 60, NOW);
            assert_eq!(
                reason(decide_with(
                    &policy,
                    "/legacy",
                    &format!("Bearer {OPAQUE}"),
                    None,
                    &mut answers
                )),
                Reason::TokenTypeMismatch
            );
            let mut m = members(None);
            m["token_type"] = json!("bearer");
            answers.insert(OPAQUE, Introspected::Active(active(&policy, m)), 60, NOW);
            assert!(allowed(decide_with(
                &policy,
                "/legacy",
                &format!("Bearer {OPAQUE}"),
                None,
                &mut answers
            ))
            .is_some());
        }

        #[test]
        fn a_jwt_of_an_issuer_without_keys_is_introspected() {
            let (f, policy) = introspecting(false);
            let jwt = token(&f, None, &[]);
            let mut answers = IntrospectionCache::new(16);
            assert!(matches!(
                decide_with(
                    &policy,
                    "/legacy",
                    &format!("Bearer {jwt}"),
                    None,
                    &mut answers
                ),
                Verdict::NeedIntrospection {
                    ask: Introspect { issuer: 0, .. },
                    ..
                }
            ));
            // With the issuer's keys, the same JWT is verified, not introspected.
            let (f, policy) = introspecting(true);
            let jwt = token(&f, None, &[]);
            assert!(allowed(decide_with(
                &policy,
                "/legacy",
                &format!("Bearer {jwt}"),
                None,
                &mut answers
            ))
            .is_some());
        }

        #[test]
        fn a_request_waits_for_an_answer_only_until_its_deadline() {
            let (_, policy) = introspecting(true);
            let need = || Verdict::NeedIntrospection {
                ask: Introspect {
                    issuer: 0,
                    token: OPAQUE.into(),
                },
                token_fp: Some("fp".into()),
                challenge: Challenge::BEARER,
            };
            let fetched = FetchedKeys::default();
            let (decision, leftovers) =
                need().into_decision(&policy, &fetched, true, |_| false, |_| 7);
            assert_eq!(
                decision,
                Decision::NeedIntrospection {
                    issuer: 0,
                    seen_answers: 7,
                    timeout_ms: introspect::DEFAULT_TIMEOUT_MS
                }
            );
            assert_eq!(
                leftovers.introspect.map(|a| a.token),
                Some(OPAQUE.to_string())
            );
            let (decision, _) = need().into_decision(&policy, &fetched, false, |_| false, |_| 7);
            assert_eq!(decision, Decision::Deny(Reason::IntrospectionUnavailable));
        }

        #[test]
        fn opaque_tokens_without_an_introspecting_issuer_stay_malformed() {
            let f = fixture();
            let mut answers = IntrospectionCache::new(16);
            assert_eq!(
                reason(decide_with(
                    &f.policy,
                    "/legacy",
                    &format!("Bearer {OPAQUE}"),
                    None,
                    &mut answers
                )),
                Reason::TokenMalformed
            );
        }
    }
}
