//! The access token: a JWT (RFC 7519) verified against a configured issuer's keys.
//!
//! Order, cheapest first: size, shape, header (`alg` against the allowed set), issuer
//! (from the unverified `iss`, used only to choose keys), key (`kid` and `alg` must both
//! fit a trusted key), signature, and only then the claims: `iss`, `aud`, `exp` (required),
//! `nbf`, `iat`, and the lifetime. Nothing in an unverified token is trusted: `jwk`, `jku`,
//! `x5u` and `x5c` in the header are never read, and `kid` only selects among trusted keys.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{Duration, JWTClaims, UnixTimeStamp, VerificationOptions};
use jwt_simple::JWTError;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::extract::MAX_TOKEN_BYTES;
use crate::jwk::{Alg, VerificationKey};
use crate::reject::Reason;

/// The largest JOSE header Tether decodes (base64url characters).
const MAX_HEADER_CHARS: usize = 2048;

/// How many keys a token without `kid` may be tried against: bounds the signature checks
/// a single request can cause.
const MAX_KEYS_TRIED: usize = 4;

/// A trusted issuer: its identifier, accepted audiences and keys.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: HashSet<String>,
    pub keys: Vec<VerificationKey>,
}

/// The time limits applied to every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimits {
    /// Tolerated clock difference with the issuer, for `exp`, `nbf` and `iat`.
    pub clock_skew_seconds: u64,
    /// The longest `exp - iat` accepted: a short lifetime bounds the use of a leaked token.
    pub max_token_lifetime_seconds: u64,
}

/// Claims of a verified token. Built only after the signature has been verified.
#[derive(Debug)]
pub struct VerifiedToken {
    claims: JWTClaims<Map<String, Value>>,
}

impl VerifiedToken {
    /// The `cnf` claim (RFC 7800), if present.
    pub fn confirmation(&self) -> Option<&Value> {
        self.claims.custom.get("cnf")
    }

    /// A claim whose value is a string, by name (registered claims included).
    pub fn string_claim(&self, name: &str) -> Option<&str> {
        match name {
            "iss" => self.claims.issuer.as_deref(),
            "sub" => self.claims.subject.as_deref(),
            "jti" => self.claims.jwt_id.as_deref(),
            "nonce" => self.claims.nonce.as_deref(),
            other => self.claims.custom.get(other).and_then(Value::as_str),
        }
    }
}

/// The parts of a JOSE header Tether reads before the signature is verified.
#[derive(Deserialize)]
struct UntrustedHeader {
    alg: String,
    kid: Option<String>,
}

/// The one claim read before the signature is verified: it only chooses the key set.
#[derive(Deserialize)]
struct UntrustedIssuer {
    iss: Option<String>,
}

/// A short, non-reversible name for a token in logs: the first 8 bytes of its SHA-256,
/// in hex. The token itself is never logged.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Verifies an access token at time `now` (seconds since the Unix epoch).
pub fn verify(
    token: &str,
    issuers: &[Issuer],
    limits: TimeLimits,
    now: u64,
) -> Result<VerifiedToken, Reason> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reason::TokenTooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(Reason::TokenMalformed);
    };
    if header_b64.len() > MAX_HEADER_CHARS || payload_b64.is_empty() {
        return Err(Reason::TokenMalformed);
    }
    let header: UntrustedHeader = decode_json(header_b64)?;
    // RFC 8725 §3.1: `none` and anything not supported are refused outright.
    let alg = Alg::from_name(&header.alg).ok_or(Reason::AlgorithmNotAllowed)?;
    if signature_b64.is_empty() {
        return Err(Reason::TokenMalformed);
    }
    let untrusted: UntrustedIssuer = decode_json(payload_b64)?;
    let issuer = untrusted
        .iss
        .and_then(|iss| issuers.iter().find(|i| i.issuer == iss))
        .ok_or(Reason::IssuerUnknown)?;

    let keys = candidate_keys(issuer, header.kid.as_deref(), alg)?;
    let mut outcome = Err(Reason::SignatureInvalid);
    for key in keys.into_iter().take(MAX_KEYS_TRIED) {
        match key.verify_token::<Map<String, Value>>(token, options(issuer, limits, now)) {
            Ok(claims) => {
                outcome = Ok(claims);
                break;
            }
            Err(e) => match reason_for(&e) {
                // Another key of the set may still verify a token without `kid`.
                Reason::SignatureInvalid => continue,
                reason => return Err(reason),
            },
        }
    }
    let claims = outcome?;
    check_expiry_and_lifetime(&claims, limits, now)?;
    Ok(VerifiedToken { claims })
}

/// The issuer's keys that may verify this token: those of the token's `alg` and, when the
/// token names a `kid`, of that `kid`. A known `kid` with another algorithm is an
/// algorithm-confusion attempt and is refused as such.
fn candidate_keys<'a>(
    issuer: &'a Issuer,
    kid: Option<&str>,
    alg: Alg,
) -> Result<Vec<&'a VerificationKey>, Reason> {
    let named: Vec<&VerificationKey> = match kid {
        Some(kid) => issuer
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None => issuer.keys.iter().collect(),
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

/// jwt-simple's checks, set to Tether's policy: the host's clock, the configured skew, the
/// issuer and its audiences. jwt-simple verifies the signature before it decodes claims.
fn options(issuer: &Issuer, limits: TimeLimits, now: u64) -> VerificationOptions {
    VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(now)),
        time_tolerance: Some(Duration::from_secs(limits.clock_skew_seconds)),
        allowed_issuers: Some(HashSet::from([issuer.issuer.clone()])),
        allowed_audiences: Some(issuer.audiences.clone()),
        max_token_length: Some(MAX_TOKEN_BYTES),
        max_header_length: Some(MAX_HEADER_CHARS),
        ..VerificationOptions::default()
    }
}

/// Maps a jwt-simple error to the refusal it means.
fn reason_for(error: &jwt_simple::Error) -> Reason {
    match error.downcast_ref::<JWTError>() {
        Some(JWTError::InvalidSignature) => Reason::SignatureInvalid,
        Some(JWTError::AlgorithmMismatch) => Reason::AlgorithmNotAllowed,
        Some(JWTError::TokenHasExpired) => Reason::TokenExpired,
        Some(JWTError::TokenNotValidYet) | Some(JWTError::ClockDrift) => Reason::TokenNotYetValid,
        Some(JWTError::RequiredIssuerMismatch) | Some(JWTError::RequiredIssuerMissing) => {
            Reason::IssuerUnknown
        }
        Some(JWTError::RequiredAudienceMismatch) | Some(JWTError::RequiredAudienceMissing) => {
            Reason::AudienceMismatch
        }
        Some(JWTError::TokenTooLong) => Reason::TokenTooLarge,
        // Bad encodings, unknown `crit` extensions (RFC 7515 §4.1.11), a `typ` that is not
        // a JWT, malformed claims: all mean the token is not one Tether can accept.
        _ => Reason::TokenMalformed,
    }
}

/// RFC 7519 §4.1.4 makes `exp` optional; Tether requires it. The lifetime `exp - iat` is
/// bounded, and so is `exp - now`, so that a token without `iat`, or with an `iat` set in
/// the past, cannot outlive the limit either.
fn check_expiry_and_lifetime(
    claims: &JWTClaims<Map<String, Value>>,
    limits: TimeLimits,
    now: u64,
) -> Result<(), Reason> {
    let exp = claims.expires_at.ok_or(Reason::ExpiryMissing)?.as_secs();
    let max = limits.max_token_lifetime_seconds;
    if let Some(iat) = claims.issued_at {
        if exp.saturating_sub(iat.as_secs()) > max {
            return Err(Reason::LifetimeTooLong);
        }
    }
    if exp.saturating_sub(now) > max.saturating_add(limits.clock_skew_seconds) {
        return Err(Reason::LifetimeTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
            keys: set.keys,
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
        let token = verify(&sign(&f, claims()), &f.issuers, LIMITS, NOW).unwrap();
        assert_eq!(token.string_claim("sub"), Some("alice"));
        assert!(token.confirmation().is_some());
    }

    #[test]
    fn exp_in_past_beyond_skew_is_expired() {
        let f = fixture();
        let token = sign(&f, claims());
        assert_eq!(
            verify(&token, &f.issuers, LIMITS, NOW + 300 + 31).unwrap_err(),
            Reason::TokenExpired
        );
    }

    #[test]
    fn exp_in_past_but_within_skew_is_ok() {
        let f = fixture();
        let token = sign(&f, claims());
        assert!(verify(&token, &f.issuers, LIMITS, NOW + 300 + 29).is_ok());
    }

    #[test]
    fn nbf_in_future_beyond_skew_is_not_yet_valid() {
        let f = fixture();
        let mut c = claims();
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 60));
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::TokenNotYetValid
        );
    }

    #[test]
    fn nbf_in_future_within_skew_is_ok() {
        let f = fixture();
        let mut c = claims();
        c.invalid_before = Some(UnixTimeStamp::from_secs(NOW + 20));
        assert!(verify(&sign(&f, c), &f.issuers, LIMITS, NOW).is_ok());
    }

    #[test]
    fn iat_in_future_beyond_skew_is_not_yet_valid() {
        let f = fixture();
        let mut c = claims();
        c.issued_at = Some(UnixTimeStamp::from_secs(NOW + 120));
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 400));
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::TokenNotYetValid
        );
    }

    #[test]
    fn missing_exp_is_refused() {
        let f = fixture();
        let mut c = claims();
        c.expires_at = None;
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::ExpiryMissing
        );
    }

    #[test]
    fn lifetime_longer_than_maximum_is_refused() {
        let f = fixture();
        let mut c = claims();
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 901));
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::LifetimeTooLong
        );
        let mut c = claims();
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 900));
        assert!(verify(&sign(&f, c), &f.issuers, LIMITS, NOW).is_ok());
    }

    #[test]
    fn backdated_iat_cannot_stretch_the_lifetime() {
        let f = fixture();
        let mut c = claims();
        c.issued_at = None;
        c.expires_at = Some(UnixTimeStamp::from_secs(NOW + 3600));
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::LifetimeTooLong
        );
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let f = fixture();
        let c = claims().with_issuer("https://evil.example.com");
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::IssuerUnknown
        );
        let mut c = claims();
        c.issuer = None;
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::IssuerUnknown
        );
    }

    #[test]
    fn wrong_audience_is_refused_and_any_matching_audience_is_accepted() {
        let f = fixture();
        let c = claims().with_audience("https://other.mesh.internal");
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::AudienceMismatch
        );
        let c = claims().with_audiences(HashSet::from(["https://other.mesh.internal", AUD]));
        assert!(verify(&sign(&f, c), &f.issuers, LIMITS, NOW).is_ok());
        let mut c = claims();
        c.audiences = None;
        assert_eq!(
            verify(&sign(&f, c), &f.issuers, LIMITS, NOW).unwrap_err(),
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
            verify(&forged, &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::SignatureInvalid
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("k2");
        let token = other.sign(claims()).unwrap();
        assert_eq!(
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::KeyUnknown
        );
    }

    #[test]
    fn known_kid_signed_by_another_key_fails_the_signature() {
        let f = fixture();
        let other = ES256KeyPair::generate().with_key_id("k1");
        let token = other.sign(claims()).unwrap();
        assert_eq!(
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
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
        assert!(verify(&token, &f.issuers, LIMITS, NOW).is_ok());
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
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
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
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
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
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::AlgorithmNotAllowed
        );
    }

    #[test]
    fn embedded_header_jwk_is_never_trusted() {
        // An attacker signs with its own key and embeds that key in the header (CVE-2018-0114).
        let f = fixture();
        let attacker = ES256KeyPair::generate();
        let header = json!({"alg": "ES256", "kid": "k1", "jwk": es256_jwk(&attacker, "k1")});
        let signing_input = format!(
            "{}.{}",
            b64(&header),
            b64(&serde_json::to_value(claims()).unwrap())
        );
        let forged_sig = attacker.sign(claims()).unwrap();
        let forged = format!("{signing_input}.{}", forged_sig.rsplit('.').next().unwrap());
        // jwt-simple does not even decode a header `jwk` object; either way it is refused.
        let reason = verify(&forged, &f.issuers, LIMITS, NOW).unwrap_err();
        assert!(
            matches!(reason, Reason::SignatureInvalid | Reason::TokenMalformed),
            "{reason:?}"
        );
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
            let reason = verify(garbage, &f.issuers, LIMITS, NOW).unwrap_err();
            assert!(
                matches!(
                    reason,
                    Reason::TokenMalformed | Reason::AlgorithmNotAllowed | Reason::IssuerUnknown
                ),
                "{garbage}: {reason:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify(&huge, &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::TokenTooLarge
        );
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
        assert_eq!(
            verify(&token, &f.issuers, LIMITS, NOW).unwrap_err(),
            Reason::TokenMalformed
        );
    }

    #[test]
    fn fingerprint_is_a_short_hex_prefix_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
    }
}
