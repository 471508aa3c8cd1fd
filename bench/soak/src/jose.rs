//! The soak's access tokens (ES256 JWTs, RFC 9068) and request signatures (detached JWS,
//! RFC 7515 Appendix F with RFC 7797's unencoded payload), made in-process: a million
//! requests need fresh tokens and a fresh signature on every signed request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "https://idp.soak.internal";
pub const AUDIENCE: &str = "https://orders.soak.internal";
/// The `sub` of every token: the upstream checks that Tether's `x-tether-sub` says exactly it.
pub const SUBJECT: &str = "soak-alice";
/// The registered client whose keys verify request signatures (found by `client_id`).
pub const CLIENT_ID: &str = "soak-app";
/// A valid token's lifetime: under Tether's default `max_token_lifetime_seconds` (900).
const TOKEN_LIFETIME_SECONDS: u64 = 300;

/// An ES256 key (RFC 7518 §3.4) with its `kid`.
pub struct EsKey {
    pub kid: &'static str,
    key: p256::ecdsa::SigningKey,
}

impl EsKey {
    pub fn generate(kid: &'static str) -> EsKey {
        EsKey {
            kid,
            key: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        }
    }

    /// The public JWK (RFC 7517, members per RFC 7518 §6.2.1), with its `kid` and `alg`.
    pub fn jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let coordinate = |c: Option<&p256::FieldBytes>| c.map(|c| b64(c)).unwrap_or_default();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": coordinate(point.x()), "y": coordinate(point.y()),
        })
    }

    /// `R || S` over SHA-256 of `input` (RFC 7518 §3.4; RFC 6979 deterministic nonces).
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = self.key.sign(input);
        signature.to_bytes().to_vec()
    }
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Which certificate a token is bound to, and when it lives.
pub struct TokenSpec<'a> {
    /// `cnf["x5t#S256"]` (RFC 8705 §3.1).
    pub thumbprint: &'a str,
    /// Seconds from now of `iat`; `exp` is `TOKEN_LIFETIME_SECONDS` later.
    pub issued_offset: i64,
    /// Unique per token, so that no two tokens are the same bytes.
    pub jti: &'a str,
}

/// An access token from the soak's issuer, signed by `key`.
pub fn token(key: &EsKey, spec: &TokenSpec<'_>) -> String {
    let iat = now().saturating_add_signed(spec.issued_offset);
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid});
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "client_id": CLIENT_ID,
        "iat": iat, "exp": iat + TOKEN_LIFETIME_SECONDS, "jti": spec.jti,
        "cnf": {"x5t#S256": spec.thumbprint},
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// What signs a request: the client's registered ES256 key or its HS256 secret.
pub enum RequestSigner<'a> {
    Es256(&'a EsKey),
    Hs256 { kid: &'a str, secret: &'a [u8] },
}

/// The detached JWS `BASE64URL(header)..BASE64URL(signature)` of a request (README "Signed
/// requests"): `b64: false` with `crit: ["b64"]`, `iat` now, `htm`, `htu` and `ath` (the
/// SHA-256 of the access token), over the exact `body`.
pub fn request_signature(
    signer: &RequestSigner<'_>,
    method: &str,
    htu: &str,
    token: &str,
    body: &[u8],
) -> String {
    let (alg, kid) = match signer {
        RequestSigner::Es256(key) => ("ES256", key.kid),
        RequestSigner::Hs256 { kid, .. } => ("HS256", *kid),
    };
    let header = json!({
        "alg": alg, "kid": kid, "b64": false, "crit": ["b64"], "iat": now(),
        "htm": method, "htu": htu, "ath": b64(&Sha256::digest(token.as_bytes())),
    });
    let header_b64 = b64(header.to_string().as_bytes());
    // RFC 7797 §3: with b64 false the signing input is the header, a dot, and the raw body.
    let mut input = Vec::with_capacity(header_b64.len() + 1 + body.len());
    input.extend_from_slice(header_b64.as_bytes());
    input.push(b'.');
    input.extend_from_slice(body);
    let signature = match signer {
        RequestSigner::Es256(key) => key.sign(&input),
        RequestSigner::Hs256 { secret, .. } => hs256(secret, &input),
    };
    format!("{header_b64}..{}", b64(&signature))
}

fn hs256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    // HMAC accepts a key of any length: new_from_slice cannot fail for it.
    match hmac::Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}
