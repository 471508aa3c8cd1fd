//! The access token: a JWT (RFC 7519) verified against a configured issuer's keys.
//!
//! Order, cheapest first: size, shape, header (`alg` against the allowed set, `typ`, no
//! `crit`), issuer (from the unverified `iss`, used only to choose keys), key (`kid` and
//! `alg` must both fit a trusted key), signature, and only then the claims are trusted:
//! `iss`, `aud`, `exp` (required), `nbf`, `iat`, and the lifetime. Nothing in an unverified
//! token is trusted: `jwk`, `jku`, `x5u` and `x5c` in the header are never read, and `kid`
//! only selects among trusted keys.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::bind::Confirmation;
use crate::crypto::SignatureVerifier;
use crate::extract::MAX_TOKEN_BYTES;
use crate::introspect::Introspection;
use crate::jwe::DecryptionKey;
use crate::jwk::{Alg, VerificationKey};
use crate::keyset::{FetchedKeys, KeySource};
use crate::reject::Reason;

/// How old an RFC 9701 answer's `iat` may be (beyond the clock skew): it was just asked for.
pub const MAX_INTROSPECTION_AGE_SECONDS: u64 = 60;

/// The largest JOSE header Tether decodes (base64url characters).
const MAX_HEADER_CHARS: usize = 2048;

/// How many keys a token without `kid` may be tried against: bounds the signature checks
/// a single request can cause.
const MAX_KEYS_TRIED: usize = 4;

/// A trusted issuer: its identifier, accepted audiences, its keys, and how its opaque tokens
/// are introspected.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: HashSet<String>,
    /// The keys its JWTs (and its RFC 9701 introspection answers) are signed with; `None` for
    /// an issuer whose tokens are all introspected.
    pub keys: Option<KeySource>,
    /// Its introspection endpoint (RFC 7662), if its tokens may be opaque.
    pub introspection: Option<Introspection>,
    /// The private keys its encrypted tokens (JWE) are decrypted with.
    pub decryption_keys: Vec<DecryptionKey>,
}

/// The time limits applied to every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimits {
    /// Tolerated clock difference with the issuer, for `exp`, `nbf` and `iat`.
    pub clock_skew_seconds: u64,
    /// The longest `exp - iat` accepted: a short lifetime bounds the use of a leaked token.
    pub max_token_lifetime_seconds: u64,
}

/// The parts of a JOSE header Tether reads (RFC 7515 §4.1). Other members are ignored and
/// never trusted. serde refuses a member given twice.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims of a token. Parsed before the signature is checked (the issuer chooses the
/// keys) but trusted only after.
#[derive(Debug, Deserialize)]
struct TokenClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    jti: Option<String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional; truncated to
/// whole seconds. Negative, non-finite or non-numeric values are malformed.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    crate::bind::jose::numeric_date(&Value::Number(number))
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("a NumericDate must be a non-negative number"))
}

/// A token whose signature and claims have been verified.
#[derive(Debug)]
pub struct VerifiedToken {
    claims: TokenClaims,
    /// `exp`, required and therefore always known once verified.
    expires_at: u64,
    /// The `cnf` claim (RFC 7800), decoded once (its `jwk` is a key to decode).
    confirmation: Confirmation,
    /// The token's [`fingerprint`], computed once with the verification (and cached with it).
    fingerprint: String,
    /// The unpadded base64url SHA-256 of the token as presented: `ath` (RFC 9449 §4.2), which
    /// DPoP proofs, request signatures and signed responses name it by; computed once with the
    /// fingerprint, from the same digest (issue 13), not on every request.
    token_hash: String,
    /// An introspected token's `token_type` (RFC 7662 §2.2), to be checked against the
    /// scheme it came with.
    token_type: Option<String>,
}

impl VerifiedToken {
    /// The token's fingerprint, for logs: never the token.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The token's `ath`: the unpadded base64url SHA-256 of the token as presented.
    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }

    /// What the token is bound to.
    pub fn confirmation(&self) -> &Confirmation {
        &self.confirmation
    }

    /// A claim whose value is a string, by name (registered claims included).
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        match name {
            "iss" => self.claims.iss.as_deref(),
            "sub" => self.claims.sub.as_deref(),
            "jti" => self.claims.jti.as_deref(),
            other => self.claims.other.get(other).and_then(Value::as_str),
        }
    }

    /// The token's `exp`.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The same token, named (in logs) by the fingerprint of `presented`: an encrypted token
    /// is logged as presented, not as the JWT inside it.
    pub fn presented_as(mut self, presented: &str) -> VerifiedToken {
        (self.fingerprint, self.token_hash) = names(presented);
        self
    }

    /// An introspected token's `token_type`, if the answer had one.
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }
}

/// A short, non-reversible name for a token in logs: the first 8 bytes of its SHA-256,
/// in hex. The token itself is never logged.
pub fn fingerprint(token: &str) -> String {
    fingerprint_of(&Sha256::digest(token.as_bytes()))
}

/// The fingerprint of a token whose SHA-256 is `digest`: its first 8 bytes in hex.
fn fingerprint_of(digest: &[u8]) -> String {
    crate::percent::hex(&digest[..8])
}

/// The token's [`fingerprint`] and its `ath`, from one SHA-256.
fn names(token: &str) -> (String, String) {
    let digest = Sha256::digest(token.as_bytes());
    (fingerprint_of(&digest), URL_SAFE_NO_PAD.encode(digest))
}

/// Why a token is not accepted, and the fetched key set that a (re)fetch may cure that with:
/// the issuer's set when its keys are not loaded yet, or do not hold the key the token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// Index of the fetched key set, when fetching it again may help.
    pub key_set: Option<usize>,
    /// Index of the issuer whose introspection endpoint can tell about the token (a JWT of
    /// an issuer configured for introspection only).
    pub introspect: Option<usize>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            key_set: None,
            introspect: None,
        }
    }
}

impl Refusal {
    /// `reason`, curable by (re)fetching the key set `keys` comes from, if it is fetched.
    fn for_want_of(reason: Reason, keys: &KeySource) -> Self {
        Refusal {
            reason,
            key_set: match keys {
                KeySource::Fetched(set) => Some(*set),
                KeySource::Inline(_) => None,
            },
            introspect: None,
        }
    }
}

/// Verifies an access token at time `now` (seconds since the Unix epoch).
pub fn verify(
    token: &str,
    issuers: &[Issuer],
    fetched: &FetchedKeys,
    limits: TimeLimits,
    crypto: &dyn SignatureVerifier,
    now: u64,
) -> Result<VerifiedToken, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reason::TokenTooLarge.into());
    }
    let Some((header_b64, payload_b64, signature_b64)) = jws_segments(token) else {
        return Err(Reason::TokenMalformed.into());
    };
    if header_b64.len() > MAX_HEADER_CHARS || payload_b64.is_empty() {
        return Err(Reason::TokenMalformed.into());
    }
    let header: Header = decode_json(header_b64)?;
    // RFC 8725 §3.1: `none` and anything not supported are refused outright.
    let alg = Alg::from_name(&header.alg).ok_or(Reason::AlgorithmNotAllowed)?;
    // RFC 7515 §4.1.11: Tether understands no header extension, so any `crit` is refused.
    if header.crit.is_some() {
        return Err(Reason::TokenMalformed.into());
    }
    check_type(header.typ.as_deref())?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Reason::TokenMalformed)?;
    if signature.is_empty() {
        return Err(Reason::TokenMalformed.into());
    }
    let claims: TokenClaims = decode_json(payload_b64)?;
    let (index, issuer) = claims
        .iss
        .as_deref()
        .and_then(|iss| issuers.iter().enumerate().find(|(_, i)| i.issuer == iss))
        .ok_or(Reason::IssuerUnknown)?;
    // An issuer without keys has its tokens introspected: the unverified `iss` only says
    // where to ask, and the answer is the authorization server's.
    let Some(issuer_keys) = &issuer.keys else {
        return Err(Refusal {
            reason: Reason::IntrospectionUnavailable,
            key_set: None,
            introspect: issuer.introspection.as_ref().map(|_| index),
        });
    };

    let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let keys = fetched
        .resolve(issuer_keys)
        .map_err(|reason| Refusal::for_want_of(reason, issuer_keys))?;
    let candidates = candidate_keys(keys, header.kid.as_deref(), alg).map_err(|reason| {
        match reason {
            // A rotated-in key the VM has not fetched yet.
            Reason::KeyUnknown => Refusal::for_want_of(reason, issuer_keys),
            reason => reason.into(),
        }
    })?;
    let verified = candidates
        .into_iter()
        .take(MAX_KEYS_TRIED)
        .any(|key| crypto.verify(key, signing_input, &signature));
    if !verified {
        return Err(Reason::SignatureInvalid.into());
    }
    // From here on the claims are the issuer's.
    let expires_at = check_claims(&claims, issuer, limits, now)?;
    let confirmation = Confirmation::from_claim(claims.other.get("cnf"))?;
    let (fingerprint, token_hash) = names(token);
    Ok(VerifiedToken {
        claims,
        expires_at,
        confirmation,
        fingerprint,
        token_hash,
        token_type: None,
    })
}

/// How a presented token is verified, by its shape: a JOSE object's first segment is the
/// base64url of a JSON object, so it starts with `eyJ` (`{"`); three segments are a JWS
/// (RFC 7515 §7.1), five a JWE (RFC 7516 §7.1). Anything else is an opaque token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Jwt,
    Jwe,
    Opaque,
}

pub fn kind(token: &str) -> Kind {
    if !token.starts_with("eyJ") {
        return Kind::Opaque;
    }
    match token.bytes().filter(|&b| b == b'.').count() {
        2 => Kind::Jwt,
        4 => Kind::Jwe,
        _ => Kind::Opaque,
    }
}

/// An active token of an introspection answer (RFC 7662 §2.2), as a verified token: its
/// members are the claims, checked as a JWT's are, except that `iss` may be absent (the
/// answer came from the issuer's own endpoint) and the lifetime is the server's to decide
/// (its answers are cached at most `cache_seconds`).
pub fn from_introspection(
    members: Map<String, Value>,
    token: &str,
    issuer: &Issuer,
    limits: TimeLimits,
    now: u64,
) -> Result<VerifiedToken, Reason> {
    let mut claims: TokenClaims =
        serde_json::from_value(Value::Object(members)).map_err(|_| Reason::IntrospectionInvalid)?;
    if claims.iss.is_none() {
        claims.iss = Some(issuer.issuer.clone());
    }
    let unbounded = TimeLimits {
        max_token_lifetime_seconds: u64::MAX / 2,
        ..limits
    };
    let expires_at = check_claims(&claims, issuer, unbounded, now)?;
    let confirmation = Confirmation::from_claim(claims.other.get("cnf"))?;
    let (fingerprint, token_hash) = names(token);
    let token_type = match claims.other.get("token_type") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(Reason::IntrospectionInvalid),
    };
    Ok(VerifiedToken {
        claims,
        expires_at,
        confirmation,
        fingerprint,
        token_hash,
        token_type,
    })
}

/// The claims of an RFC 9701 introspection answer, once verified: a JWS of `typ`
/// `token-introspection+jwt` (§5), signed by one of the issuer's keys, whose `iss` is the
/// issuer, whose `aud` names the resource server (`client_id`), and whose `iat` is now (within
/// `skew`, and [`MAX_INTROSPECTION_AGE_SECONDS`] old at most): an answer was just asked for,
/// so an older signed answer is a replayed one. Its `exp`, if any, must not have passed.
/// (Nothing in RFC 9701 ties an answer to the token asked about: a replay of a fresh answer
/// about another token within that age is not told apart.)
#[allow(clippy::too_many_arguments)]
pub fn verify_introspection_jwt(
    jwt: &str,
    issuer: &Issuer,
    client_id: &str,
    fetched: &FetchedKeys,
    crypto: &dyn SignatureVerifier,
    skew: u64,
    now: u64,
) -> Result<Map<String, Value>, Reason> {
    let invalid = |_| Reason::IntrospectionInvalid;
    let Some((header_b64, payload_b64, signature_b64)) = jws_segments(jwt) else {
        return Err(Reason::IntrospectionInvalid);
    };
    if header_b64.len() > MAX_HEADER_CHARS {
        return Err(Reason::IntrospectionInvalid);
    }
    let header: Header = decode_json(header_b64).map_err(invalid)?;
    let alg = Alg::from_name(&header.alg).ok_or(Reason::IntrospectionInvalid)?;
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    let typ = typ
        .as_deref()
        .map(|t| t.strip_prefix("application/").unwrap_or(t));
    if header.crit.is_some() || typ != Some("token-introspection+jwt") {
        return Err(Reason::IntrospectionInvalid);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| Reason::IntrospectionInvalid)?;
    let source = issuer.keys.as_ref().ok_or(Reason::IntrospectionInvalid)?;
    let keys = fetched
        .resolve(source)
        .map_err(|_| Reason::IntrospectionUnavailable)?;
    let candidates = candidate_keys(keys, header.kid.as_deref(), alg).map_err(invalid)?;
    let signing_input = &jwt.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    if !candidates
        .into_iter()
        .take(MAX_KEYS_TRIED)
        .any(|key| crypto.verify(key, signing_input, &signature))
    {
        return Err(Reason::IntrospectionInvalid);
    }
    let claims: Map<String, Value> = decode_json(payload_b64).map_err(invalid)?;
    let audience_names_us = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str())
        || !audience_names_us
    {
        return Err(Reason::IntrospectionInvalid);
    }
    let date = |name: &str| claims.get(name).map(crate::bind::jose::numeric_date);
    let fresh = matches!(date("iat"), Some(Some(iat))
        if iat <= now.saturating_add(skew)
            && now.saturating_sub(iat) <= MAX_INTROSPECTION_AGE_SECONDS.saturating_add(skew));
    let expired = match date("exp") {
        None => false,
        Some(Some(exp)) => exp.saturating_add(skew) < now,
        // An `exp` that is not a NumericDate.
        Some(None) => true,
    };
    if !fresh || expired {
        return Err(Reason::IntrospectionInvalid);
    }
    Ok(claims)
}

/// The three segments of a compact JWS (RFC 7515 §7.1), if it has exactly three.
fn jws_segments(jws: &str) -> Option<(&str, &str, &str)> {
    let mut segments = jws.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(payload), Some(signature), None) => Some((header, payload, signature)),
        _ => None,
    }
}

/// RFC 8725 §3.11 (explicit typing): a JWT of another declared type (a DPoP proof
/// `dpop+jwt`, a logout token, ...) is never an access token. An untyped token, `JWT`, and
/// RFC 9068's `at+jwt` are accepted, case-insensitively, with or without `application/`.
fn check_type(typ: Option<&str>) -> Result<(), Reason> {
    let Some(typ) = typ else {
        return Ok(());
    };
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    if bare == "jwt" || bare == "at+jwt" {
        Ok(())
    } else {
        Err(Reason::TokenTypeNotAllowed)
    }
}

/// The issuer's keys that may verify this token: those of the token's `alg` and, when the
/// token names a `kid`, of that `kid`. A known `kid` with another algorithm is an
/// algorithm-confusion attempt and is refused as such.
fn candidate_keys<'a>(
    keys: &'a [VerificationKey],
    kid: Option<&str>,
    alg: Alg,
) -> Result<Vec<&'a VerificationKey>, Reason> {
    let named: Vec<&VerificationKey> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None => keys.iter().collect(),
    };
    if named.is_empty() {
        return Err(Reason::KeyUnknown);
    }
    let fitting: Vec<&VerificationKey> = named.iter().copied().filter(|k| k.alg == alg).collect();
    match (fitting.is_empty(), kid.is_some()) {
        (false, _) => Ok(fitting),
        (true, true) => Err(Reason::AlgorithmNotAllowed),
        (true, false) => Err(Reason::KeyUnknown),
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str) -> Result<T, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Reason::TokenMalformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Reason::TokenMalformed)
}

/// The claim checks, on claims whose signature has been verified. Returns `exp`.
///
/// RFC 7519 §4.1.4 makes `exp` optional; Tether requires it. The lifetime `exp - iat` is
/// bounded, and so is `exp - now`, so that a token without `iat`, or with an `iat` set in
/// the past, cannot outlive the limit either.
fn check_claims(
    claims: &TokenClaims,
    issuer: &Issuer,
    limits: TimeLimits,
    now: u64,
) -> Result<u64, Reason> {
    let skew = limits.clock_skew_seconds;
    // §4.1.1: exact match (the issuer was chosen by this value; checked again on principle).
    if claims.iss.as_deref() != Some(issuer.issuer.as_str()) {
        return Err(Reason::IssuerUnknown);
    }
    // §4.1.3: the token must be meant for us.
    let accepted = match &claims.aud {
        Some(Audience::One(aud)) => issuer.audiences.contains(aud),
        Some(Audience::Many(auds)) => auds.iter().any(|a| issuer.audiences.contains(a)),
        None => false,
    };
    if !accepted {
        return Err(Reason::AudienceMismatch);
    }
    let exp = claims.exp.ok_or(Reason::ExpiryMissing)?;
    if now > exp.saturating_add(skew) {
        return Err(Reason::TokenExpired);
    }
    // §4.1.5, and an `iat` in the future is as suspect as an `nbf` in the future.
    let not_before = claims.nbf.into_iter().chain(claims.iat).max();
    if not_before.is_some_and(|t| t > now.saturating_add(skew)) {
        return Err(Reason::TokenNotYetValid);
    }
    let max = limits.max_token_lifetime_seconds;
    if claims.iat.is_some_and(|iat| exp.saturating_sub(iat) > max) {
        return Err(Reason::LifetimeTooLong);
    }
    if exp.saturating_sub(now) > max.saturating_add(skew) {
        return Err(Reason::LifetimeTooLong);
    }
    Ok(exp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::InVm;
    use crate::jwk::parse_jwks;
    use jwt_simple::prelude::*;
    use serde_json::json;

    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "https://orders.mesh.internal";
    const NOW: u64 = 1_800_000_000;
    const LIMITS: TimeLimits = TimeLimits {
        clock_skew_seconds: 30,
        max_token_lifetime_seconds: 900,
    };

    struct Fixture {
        key: ES256KeyPair,
        issuers: Vec<Issuer>,
    }

    fn es256_jwk(key: &ES256KeyPair, kid: &str) -> Value {
        let point = key.public_key().public_key().to_bytes_uncompressed();
        json!({"kty": "EC", "crv": "P-256", "kid": kid,
               "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    fn fixture() -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let set = parse_jwks(&json!({"keys": [es256_jwk(&key, "k1")]})).unwrap();
        let issuers = vec![Issuer {
            issuer: ISS.into(),
            audiences: HashSet::from([AUD.to_string()]),
            keys: Some(KeySource::Inline(set.keys)),
            introspection: None,
            decryption_keys: Vec::new(),
        }];
        Fixture { key, issuers }
    }

    /// Claims issued at `NOW` for 300 s, with a `cnf` binding.
    fn claims() -> JWTClaims<Map<String, Value>> {
        let mut custom = Map::new();
        custom.insert(
            "cnf".into(),
            json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
        );
        let mut c = Claims::with_custom_claims(custom, Duration::from_secs(300))
            .with_issuer(ISS)
            .with_audience(AUD)
            .with_subject("alice");
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
        c
    }

    fn sign(f: &Fixture, claims: JWTClaims<Map<String, Value>>) -> String {
        f.key.sign(claims).unwrap()
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn valid_token_verifies_and_exposes_claims() {
        let f = fixture();
        let token = check(&f, &sign(&f, claims()), NOW).unwrap();
        assert_eq!(token.string_claim("sub"), Some("alice"));
        assert!(token.confirmation().x5t_s256.is_some());
    }

    #[test]
    fn exp_in_past_beyond_skew_is_expired() {
        let f = fixture();
        let token = sign(&f, claims());
        assert_eq!(
            check(&f, &token, NOW + 300 + 31).unwrap_err(),
            Reason::TokenExpired
        );
    }

    #[test]
    fn exp_in_past_but_within_skew_is_ok() {
        let f = fixture();
        let token = sign(&f, claims());
        assert!(check(&f, &token, NOW + 300 + 29).is_ok());
    }

    #[test]
    fn nbf_in_future_beyond_skew_is_not_yet_valid() {
        let f = fixture();
        let mut c = claims();
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 60));
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::TokenNotYetValid
        );
    }

    #[test]
    fn nbf_in_future_within_skew_is_ok() {
        let f = fixture();
        let mut c = claims();
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 20));
        assert!(check(&f, &sign(&f, c), NOW).is_ok());
    }

    #[test]
    fn iat_in_future_beyond_skew_is_not_yet_valid() {
        let f = fixture();
        let mut c = claims();
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW + 120));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 400));
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::TokenNotYetValid
        );
    }

    #[test]
    fn missing_exp_is_refused() {
        let f = fixture();
        let mut c = claims();
        c.expires_at = None;
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::ExpiryMissing
        );
    }

    #[test]
    fn lifetime_longer_than_maximum_is_refused() {
        let f = fixture();
        let mut c = claims();
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 901));
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::LifetimeTooLong
        );
        let mut c = claims();
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 900));
        assert!(check(&f, &sign(&f, c), NOW).is_ok());
    }

    #[test]
    fn backdated_iat_cannot_stretch_the_lifetime() {
        let f = fixture();
        let mut c = claims();
        c.issued_at = None;
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 3600));
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::LifetimeTooLong
        );
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let f = fixture();
        let c = claims().with_issuer("https://evil.example.com");
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::IssuerUnknown
        );
        let mut c = claims();
        c.issuer = None;
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::IssuerUnknown
        );
    }

    #[test]
    fn wrong_audience_is_refused_and_any_matching_audience_is_accepted() {
        let f = fixture();
        let c = claims().with_audience("https://other.mesh.internal");
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::AudienceMismatch
        );
        let c = claims().with_audiences(HashSet::from(["https://other.mesh.internal", AUD]));
        assert!(check(&f, &sign(&f, c), NOW).is_ok());
        let mut c = claims();
        c.audiences = None;
        assert_eq!(
            check(&f, &sign(&f, c), NOW).unwrap_err(),
            Reason::AudienceMismatch
        );
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let f = fixture();
        let token = sign(&f, claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = json!("mallory");
        let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
        assert_eq!(
            check(&f, &forged, NOW).unwrap_err(),
            Reason::SignatureInvalid
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("k2");
        let token = other.sign(claims()).unwrap();
        assert_eq!(check(&f, &token, NOW).unwrap_err(), Reason::KeyUnknown);
    }

    #[test]
    fn known_kid_signed_by_another_key_fails_the_signature() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("k1");
        let token = other.sign(claims()).unwrap();
        assert_eq!(
            check(&f, &token, NOW).unwrap_err(),
            Reason::SignatureInvalid
        );
    }

    #[test]
    fn token_without_kid_is_tried_against_fitting_keys() {
        let f = fixture();
        let token = ES256KeyPair::from_bytes(&f.key.to_bytes())
            .unwrap()
            .sign(claims())
            .unwrap();
        assert!(check(&f, &token, NOW).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let f = fixture();
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&serde_json::to_value(claims()).unwrap())
        );
        assert_eq!(
            check(&f, &token, NOW).unwrap_err(),
            Reason::AlgorithmNotAllowed
        );
    }

    #[test]
    fn hmac_with_the_public_key_is_refused() {
        // The classic confusion: HS256 keyed with the issuer's public key, with a known kid.
        let f = fixture();
        let public = f.key.public_key().to_pem().unwrap();
        let token = HS256Key::from_bytes(public.as_bytes())
            .with_key_id("k1")
            .authenticate(claims())
            .unwrap();
        assert_eq!(
            check(&f, &token, NOW).unwrap_err(),
            Reason::AlgorithmNotAllowed
        );
    }

    #[test]
    fn known_kid_with_another_alg_is_refused() {
        let f = fixture();
        let token = ES384KeyPair::generate()
            .with_key_id("k1")
            .sign(claims())
            .unwrap();
        assert_eq!(
            check(&f, &token, NOW).unwrap_err(),
            Reason::AlgorithmNotAllowed
        );
    }

    #[test]
    fn embedded_header_jwk_is_never_trusted() {
        // An attacker signs with its own key and embeds that key in the header (CVE-2018-0114).
        // The signature is valid under the embedded key (checked below), so only refusing to
        // trust the header can refuse the token (issue 8: the earlier version of this test
        // signed another input, and would have been refused even by a verifier that trusted
        // the header).
        let f = fixture();
        let attacker = Fixture {
            key: ES256KeyPair::generate().with_key_id("k1"),
            issuers: Vec::new(),
        };
        let c = serde_json::to_value(claims()).unwrap();
        for kid in [Some("k1"), Some("attacker"), None] {
            let mut header = json!({"alg": "ES256", "jwk": es256_jwk(&attacker.key, "k1")});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let forged = with_header(&attacker, header, &c);
            let embedded = parse_jwks(&json!({"keys": [es256_jwk(&attacker.key, "k1")]})).unwrap();
            let (input, signature) = forged.rsplit_once('.').unwrap();
            assert!(InVm.verify(
                &embedded.keys[0],
                input.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap()
            ));
            let expected = match kid {
                Some("attacker") => Reason::KeyUnknown,
                _ => Reason::SignatureInvalid,
            };
            assert_eq!(
                check(&f, &forged, NOW).unwrap_err(),
                expected,
                "kid {kid:?}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_crash() {
        let f = fixture();
        for garbage in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.b.c",
            "e30.e30.c",
            "eyJhbGciOiJFUzI1NiJ9..c",
            "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.c",
        ] {
            let reason = check(&f, garbage, NOW).unwrap_err();
            assert!(
                matches!(
                    reason,
                    Reason::TokenMalformed | Reason::AlgorithmNotAllowed | Reason::IssuerUnknown
                ),
                "{garbage}: {reason:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(check(&f, &huge, NOW).unwrap_err(), Reason::TokenTooLarge);
    }

    #[test]
    fn unknown_critical_header_is_refused() {
        let f = fixture();
        let mut c = claims();
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        let header = json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1});
        let token = format!(
            "{}.{}.AAAA",
            b64(&header),
            b64(&serde_json::to_value(c).unwrap())
        );
        assert_eq!(check(&f, &token, NOW).unwrap_err(), Reason::TokenMalformed);
    }

    /// Verifies `token` with the fixture's issuer, in the VM, at `now`.
    fn check(f: &Fixture, token: &str, now: u64) -> Result<VerifiedToken, Reason> {
        verify(
            token,
            &f.issuers,
            &FetchedKeys::default(),
            LIMITS,
            &InVm,
            now,
        )
        .map_err(|refusal| refusal.reason)
    }

    /// A verified token with no claims but `exp`, for cache tests.
    pub(crate) fn verified_token_expiring_at(exp: u64) -> VerifiedToken {
        let claims: TokenClaims = serde_json::from_value(json!({ "exp": exp })).unwrap();
        VerifiedToken {
            claims,
            expires_at: exp,
            confirmation: Confirmation::default(),
            fingerprint: String::new(),
            token_hash: String::new(),
            token_type: None,
        }
    }

    /// An encrypted token is named, and its `ath` computed, by the token as presented (RFC 9449
    /// §4.2: the hash of the access token value), not by the JWT inside it.
    #[test]
    fn a_token_presented_otherwise_is_named_and_hashed_as_presented() {
        let token = verified_token_expiring_at(2_000_000_000).presented_as("eyJ.presented.jwe");
        assert_eq!(token.fingerprint(), fingerprint("eyJ.presented.jwe"));
        assert_eq!(
            token.token_hash(),
            crate::bind::jose::sha256_b64url(b"eyJ.presented.jwe")
        );
    }

    /// Signs a signing input with the fixture's key (ES256, `R || S`).
    fn sign_input(f: &Fixture, input: &str) -> String {
        use p256::ecdsa::signature::Signer as _;
        let key = p256::ecdsa::SigningKey::from_slice(&f.key.to_bytes()).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn with_header(f: &Fixture, header: Value, claims: &Value) -> String {
        sign_input(f, &format!("{}.{}", b64(&header), b64(claims)))
    }

    /// RFC 9701 §5's example answer (its `token_introspection` member as in the RFC), signed
    /// here with the fixture's key: accepted with its `typ`, `iss` and `aud`, and refused
    /// with any of them wrong, or with another key.
    #[test]
    fn rfc9701_jwt_answers_are_verified_before_they_are_read() {
        let f = fixture();
        let header = json!({"typ": "token-introspection+jwt", "alg": "ES256", "kid": "k1"});
        let claims = json!({
            "iss": ISS,
            "aud": "https://rs.example.com/resource",
            "iat": 1514797892,
            "token_introspection": {
                "active": true,
                "iss": ISS,
                "aud": "https://rs.example.com/resource",
                "iat": 1514797822,
                "exp": 1514797942,
                "client_id": "paiB2goo0a",
                "sub": "Z5O3upPC88QrAjx00dis",
                "birthdate": "1982-02-01",
                "given_name": "John",
                "family_name": "Doe",
                "jti": "t1FoCCaZd4Xv4ORJUWVUeTZfsKhW30CQCrWDDjwXy6w"
            }
        });
        let client_id = "https://rs.example.com/resource";
        // RFC 9701's example answer was made at 1514797892 (its `iat`); checked 8 s later.
        let check = |jwt: &str| {
            verify_introspection_jwt(
                jwt,
                &f.issuers[0],
                client_id,
                &FetchedKeys::default(),
                &InVm,
                30,
                1514797900,
            )
        };
        let verified = check(&with_header(&f, header.clone(), &claims)).unwrap();
        assert_eq!(verified["token_introspection"]["client_id"], "paiB2goo0a");
        // `application/` prefixed, and `aud` as an array.
        let mut array = claims.clone();
        array["aud"] = json!(["other", client_id]);
        let prefixed = json!({"typ": "application/token-introspection+jwt", "alg": "ES256"});
        assert!(check(&with_header(&f, prefixed, &array)).is_ok());
        let mut refused = Vec::new();
        for typ in [json!("JWT"), json!("at+jwt"), Value::Null] {
            let mut h = header.clone();
            h["typ"] = typ;
            refused.push(with_header(&f, h, &claims));
        }
        for (name, value) in [
            ("iss", json!("https://other.example")),
            ("aud", json!("https://other-rs.example")),
            ("aud", Value::Null),
        ] {
            let mut c = claims.clone();
            c[name] = value;
            refused.push(with_header(&f, header.clone(), &c));
        }
        for (name, value) in [
            ("iat", Value::Null),
            // Older than a minute (and the skew): replayed.
            ("iat", json!(1514797892 - 100)),
            // Ahead of the clock beyond the skew.
            ("iat", json!(1514797900 + 31)),
            ("exp", json!(1514797900 - 31)),
            ("exp", json!("tomorrow")),
        ] {
            let mut c = claims.clone();
            if value.is_null() {
                c.as_object_mut().unwrap().remove(name);
            } else {
                c[name] = value;
            }
            refused.push(with_header(&f, header.clone(), &c));
        }
        let other = fixture();
        refused.push(with_header(&other, header.clone(), &claims));
        let mut crit = header.clone();
        crit["crit"] = json!(["exp"]);
        refused.push(with_header(&f, crit, &claims));
        refused.push("not.a.jwt.at.all".into());
        for jwt in refused {
            assert_eq!(check(&jwt), Err(Reason::IntrospectionInvalid), "{jwt}");
        }
    }

    #[test]
    fn access_token_types_are_accepted_and_other_types_refused() {
        let f = fixture();
        let c = serde_json::to_value(claims()).unwrap();
        for typ in ["JWT", "at+jwt", "application/at+jwt", "AT+JWT"] {
            let token = with_header(&f, json!({"alg": "ES256", "kid": "k1", "typ": typ}), &c);
            assert!(check(&f, &token, NOW).is_ok(), "{typ}");
        }
        for typ in ["dpop+jwt", "logout+jwt", "JOSE", ""] {
            let token = with_header(&f, json!({"alg": "ES256", "kid": "k1", "typ": typ}), &c);
            assert_eq!(
                check(&f, &token, NOW).unwrap_err(),
                Reason::TokenTypeNotAllowed,
                "{typ}"
            );
        }
    }

    #[test]
    fn fractional_numeric_dates_are_truncated_and_negative_ones_malformed() {
        let f = fixture();
        let mut c = serde_json::to_value(claims()).unwrap();
        c["exp"] = json!((NOW + 300) as f64 + 0.5);
        let token = with_header(&f, json!({"alg": "ES256", "kid": "k1"}), &c);
        let verified = check(&f, &token, NOW).unwrap();
        assert_eq!(verified.expires_at(), NOW + 300);
        c["exp"] = json!(-1);
        let token = with_header(&f, json!({"alg": "ES256", "kid": "k1"}), &c);
        assert_eq!(check(&f, &token, NOW).unwrap_err(), Reason::TokenMalformed);
        c["exp"] = json!("1800000300");
        let token = with_header(&f, json!({"alg": "ES256", "kid": "k1"}), &c);
        assert_eq!(check(&f, &token, NOW).unwrap_err(), Reason::TokenMalformed);
    }

    #[test]
    fn duplicate_claims_and_header_members_are_malformed() {
        let f = fixture();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","kid":"k2"}"#);
        let payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"{ISS}","iss":"https://evil.example.com","aud":"{AUD}","exp":{}}}"#,
            NOW + 60
        ));
        for (h, p) in [
            (
                header.clone(),
                b64(&serde_json::to_value(claims()).unwrap()),
            ),
            (b64(&json!({"alg": "ES256", "kid": "k1"})), payload),
        ] {
            let token = sign_input(&f, &format!("{h}.{p}"));
            assert_eq!(check(&f, &token, NOW).unwrap_err(), Reason::TokenMalformed);
        }
    }

    #[test]
    fn fingerprint_is_a_short_hex_prefix_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
    }

    /// Issue 8: `verify` says which fetched key set it lacks, so that nobody has to parse
    /// the token a second time to find out.
    #[test]
    fn a_refusal_for_want_of_keys_names_the_fetched_key_set() {
        let f = fixture();
        let fetched_issuer = vec![Issuer {
            issuer: ISS.into(),
            audiences: HashSet::from([AUD.to_string()]),
            keys: Some(KeySource::Fetched(3)),
            introspection: None,
            decryption_keys: Vec::new(),
        }];
        let token = sign(&f, claims());
        let verify_with = |issuers: &[Issuer], fetched: &FetchedKeys| {
            verify(&token, issuers, fetched, LIMITS, &InVm, NOW).unwrap_err()
        };
        // Not loaded yet.
        let mut fetched = FetchedKeys::new(4);
        assert_eq!(
            verify_with(&fetched_issuer, &fetched),
            Refusal {
                reason: Reason::KeySetUnavailable,
                key_set: Some(3),
                introspect: None,
            }
        );
        // Loaded, without the token's kid: a refetch may bring it.
        let other_key = ES256KeyPair::generate();
        let document = json!({"keys": [es256_jwk(&other_key, "k2")]}).to_string();
        let record = crate::keyset::KeySetRecord {
            fetched_at: NOW,
            document: document.into_bytes(),
            ..Default::default()
        };
        fetched.install(3, &record, NOW).unwrap();
        assert_eq!(
            verify_with(&fetched_issuer, &fetched),
            Refusal {
                reason: Reason::KeyUnknown,
                key_set: Some(3),
                introspect: None,
            }
        );
        // Inline keys: nothing to fetch.
        let inline = fixture();
        assert_eq!(
            verify_with(&inline.issuers, &FetchedKeys::default()),
            Refusal {
                reason: Reason::SignatureInvalid,
                key_set: None,
                introspect: None,
            }
        );
    }
}
