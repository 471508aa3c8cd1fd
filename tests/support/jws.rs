//! Request signatures made the way a client makes them: a detached compact JWS (RFC 7515
//! Appendix F) over the request body, in either payload form (RFC 7797), signed by OpenSSL
//! (public-key algorithms) or HMAC-SHA256 (`HS256`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::jwt::SigningKey;

/// What signs: a client's key, or an `HS256` shared secret.
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    Key(&'a SigningKey),
    Hmac(&'a [u8]),
}

/// The protected header of a request signature, as a client writes it: unencoded payload
/// (`b64: false`), and `htm`, `htu`, `iat`, `ath` binding it to the request and the token.
pub fn protected(alg: &str, kid: Option<&str>, method: &str, htu: &str, token: &str) -> Value {
    let mut header = json!({
        "alg": alg,
        "b64": false,
        "crit": ["b64"],
        "iat": super::now(),
        "htm": method,
        "htu": htu,
        "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    header
}

/// The detached compact JWS `BASE64URL(header)..BASE64URL(signature)` of `body`.
pub fn detached(header: &Value, body: &[u8], signer: Signer<'_>) -> String {
    let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
    let mut input = format!("{header_b64}.").into_bytes();
    if header.get("b64") == Some(&json!(false)) {
        input.extend_from_slice(body);
    } else {
        input.extend_from_slice(URL_SAFE_NO_PAD.encode(body).as_bytes());
    }
    let signature = match signer {
        Signer::Key(key) => key.sign(&input),
        Signer::Hmac(secret) => {
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
            mac.update(&input);
            mac.finalize().into_bytes().to_vec()
        }
    };
    format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The twin of an ES256 detached JWS: its signature `(r, s)` replaced by `(r, n - s)`, which
/// verifies over the same input (RFC 7518 §3.4 does not require a low `s`). What an attacker
/// who captured a signed request can make without any key.
pub fn malleate_es256(detached: &str) -> String {
    let (header, signature) = detached.split_once("..").expect("a detached JWS");
    let bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    let signature = p256::ecdsa::Signature::from_slice(&bytes).expect("an ES256 signature");
    let (r, s) = signature.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -s).expect("n - s is a valid scalar");
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()))
}
