//! Detached request signatures: RFC 7515 Appendix F (detached content) and RFC 7797 (the
//! unencoded payload option), in the style of Open Banking's `x-jws-signature`.
//!
//! The client signs every request: the JWS payload is the exact request body, detached (the
//! compact form is `BASE64URL(header)..BASE64URL(signature)`), and the protected header
//! binds the signature to this request and this token: `htm` (method), `htu` (URI), `iat`
//! (time) and `ath` (the access token's hash). A captured request cannot be replayed (the
//! replay store refuses a signature seen before), altered (the body, method, URI and token
//! are all signed), or moved to another token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::htu;
use super::jose::UniqueObject;
use crate::crypto::{hmac_sha256_verify, SignatureVerifier};
use crate::jwk::{Alg, VerificationKey};
use crate::reject::Reason;

/// The largest signature header Tether reads.
pub const MAX_SIGNATURE_BYTES: usize = 8192;

/// The header parameters Tether understands and so accepts in `crit` (RFC 7515 §4.1.11).
pub const UNDERSTOOD_CRITICAL: [&str; 5] = ["b64", "iat", "htm", "htu", "ath"];

/// The shortest HMAC key accepted: RFC 7518 §3.2 requires a key at least as long as the
/// hash output.
pub const MIN_HMAC_KEY_BYTES: usize = 32;

/// A shared secret of a client that signs with `HS256`.
#[derive(Clone)]
pub struct HmacKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The keys a request signature may be verified with.
#[derive(Clone, Copy, Debug)]
pub enum SigningKeys<'a> {
    /// The token is bound to this key (`cnf.jwk`, RFC 7800 §3.2): the signature must verify
    /// with it, and only with it.
    Bound(&'a [VerificationKey]),
    /// The registered keys of the client the token was issued to.
    Client {
        keys: &'a [VerificationKey],
        hmac_keys: &'a [HmacKey],
    },
}

/// The request as the signature must describe it.
#[derive(Clone, Copy, Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The path and query, as sent.
    pub path: &'a str,
}

/// A parsed detached JWS. Nothing in it is trusted until a verification succeeds.
#[derive(Debug)]
pub struct DetachedJws {
    header_b64: String,
    alg: String,
    kid: Option<String>,
    members: Vec<(String, Value)>,
    b64: bool,
    signature: Vec<u8>,
}

/// A key a JWS may be verified with.
#[derive(Clone, Copy)]
pub enum JwsKey<'a> {
    /// A public key; its algorithm must be the header's.
    Public(&'a VerificationKey),
    /// An `HS256` secret.
    Hmac(&'a [u8]),
}

/// Names the key, never the secret.
impl std::fmt::Debug for JwsKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwsKey::Public(key) => f.debug_tuple("Public").field(key).finish(),
            JwsKey::Hmac(_) => f.write_str("Hmac(<secret>)"),
        }
    }
}

/// The members of the protected header that bind a signature to a request.
struct RequestBinding<'a> {
    iat: u64,
    htm: &'a str,
    htu: &'a str,
    ath: &'a str,
}

/// The time window of request signatures.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// How old `iat` may be.
    pub max_age_seconds: u64,
    /// How far in the future `iat` may be.
    pub clock_skew_seconds: u64,
}

impl DetachedJws {
    /// Parses the compact detached form `BASE64URL(header)..BASE64URL(signature)` and checks
    /// the protected header's shape (required members, `b64`, `crit`, duplicates).
    pub fn parse(value: &[u8]) -> Result<Self, Reason> {
        if value.len() > MAX_SIGNATURE_BYTES {
            return Err(Reason::RequestSignatureMalformed);
        }
        let value = std::str::from_utf8(value).map_err(|_| Reason::RequestSignatureMalformed)?;
        let mut parts = value.trim().split('.');
        let (Some(header_b64), Some(payload), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::RequestSignatureMalformed);
        };
        // RFC 7515 Appendix F: the payload travels as the request body, never inside.
        if !payload.is_empty() {
            return Err(Reason::RequestSignatureMalformed);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| Reason::RequestSignatureMalformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| Reason::RequestSignatureMalformed)?;
        if signature.is_empty() {
            return Err(Reason::RequestSignatureMalformed);
        }
        let UniqueObject(members) =
            serde_json::from_slice(&header_json).map_err(|_| Reason::RequestSignatureMalformed)?;
        let get = |name: &str| members.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let b64 = match get("b64") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Reason::RequestSignatureMalformed),
        };
        check_crit(get("crit"), &members, get("b64").is_some())?;
        let alg = get("alg")
            .and_then(Value::as_str)
            .ok_or(Reason::RequestSignatureMalformed)?
            .to_string();
        let kid = match get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(Reason::RequestSignatureMalformed),
        };
        Ok(DetachedJws {
            header_b64: header_b64.to_string(),
            alg,
            kid,
            members,
            b64,
            signature,
        })
    }

    fn member(&self, name: &str) -> Option<&Value> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The request-binding members, all required (`iat` a NumericDate, the others strings).
    fn binding(&self) -> Result<RequestBinding<'_>, Reason> {
        let string = |name| {
            self.member(name)
                .and_then(Value::as_str)
                .ok_or(Reason::RequestSignatureMalformed)
        };
        Ok(RequestBinding {
            iat: self
                .member("iat")
                .and_then(Value::as_u64)
                .ok_or(Reason::RequestSignatureMalformed)?,
            htm: string("htm")?,
            htu: string("htu")?,
            ath: string("ath")?,
        })
    }

    /// Whether the signature verifies over `payload` (the detached content) with `key`.
    /// The algorithm comes from the key: a header `alg` naming another is a failure.
    pub fn verify_with(
        &self,
        key: JwsKey<'_>,
        payload: &[u8],
        crypto: &dyn SignatureVerifier,
    ) -> bool {
        let input = self.signing_input(payload);
        match key {
            JwsKey::Public(key) => {
                key.alg.name() == self.alg && crypto.verify(key, &input, &self.signature)
            }
            JwsKey::Hmac(secret) => {
                self.alg == "HS256" && hmac_sha256_verify(secret, &input, &self.signature)
            }
        }
    }

    /// The replay record's key: what was signed, never the signature bytes. An ECDSA
    /// signature `(r, s)` has a twin `(r, n - s)` that verifies too (and RSA-PSS and others
    /// can be re-signed by the key holder at will), so a key over signature bytes would let
    /// each captured request be used once more per variant (issue 7, finding 4).
    ///
    /// SHA-256 over a version tag, the protected header as sent (it names the key, `iat`,
    /// `htm`, `htu` and `ath`) and the SHA-256 of the body: the signing input, with the body
    /// hashed first so that its length never matters twice.
    pub fn replay_id(&self, body: &[u8]) -> [u8; 32] {
        let mut id = Sha256::new();
        id.update(b"tether.replay.jws.v1\0");
        id.update(self.header_b64.as_bytes());
        id.update(b".");
        id.update(Sha256::digest(body));
        id.finalize().into()
    }

    /// The signature's `iat`, if it has one (any other member of the header is untrusted
    /// until the signature verifies; this one only selects a refusal).
    pub fn iat(&self) -> Option<u64> {
        self.member("iat").and_then(Value::as_u64)
    }

    /// Checks, before the body has arrived, that the signature describes this request and
    /// this token at `now`: `iat` within the window, `htm`, `htu` and `ath`.
    pub fn check_request(
        &self,
        request: &SignedRequest<'_>,
        token_hash: &str,
        window: Window,
        now: u64,
    ) -> Result<(), Reason> {
        let binding = self.binding()?;
        check_iat(binding.iat, window, now)?;
        if binding.htm != request.method {
            return Err(Reason::RequestSignatureMismatch);
        }
        let expected = format!("{}://{}{}", request.scheme, request.authority, request.path);
        if htu::normalize(binding.htu) != htu::normalize(&expected) {
            return Err(Reason::RequestSignatureMismatch);
        }
        // The signature names the token it travels with (as RFC 9449 §4.2 `ath` does):
        // `token_hash` is the token's, computed once when it was verified.
        if !bool::from(token_hash.as_bytes().ct_eq(binding.ath.as_bytes())) {
            return Err(Reason::RequestSignatureMismatch);
        }
        Ok(())
    }

    /// Checks `iat` against the window at `now`. Run on the headers, and again when the
    /// signature is decided: a body sent after the window has passed must not revive a
    /// signature whose replay record has already expired (issue 7, finding 2).
    pub fn check_window(&self, window: Window, now: u64) -> Result<(), Reason> {
        check_iat(self.binding()?.iat, window, now)
    }

    /// Chooses the key the signature must verify with: the algorithm comes from the key,
    /// and `kid` names it unless only one key could.
    pub fn select_key<'k>(&self, keys: SigningKeys<'k>) -> Result<JwsKey<'k>, Reason> {
        match keys {
            SigningKeys::Bound(keys) => {
                let alg = Alg::from_name(&self.alg).ok_or(Reason::RequestSignatureInvalid)?;
                let key = keys
                    .iter()
                    .find(|k| k.alg == alg)
                    .ok_or(Reason::RequestSignatureInvalid)?;
                Ok(JwsKey::Public(key))
            }
            SigningKeys::Client { hmac_keys, .. } if self.alg == "HS256" => {
                let key = pick(hmac_keys, self.kid.as_deref(), |k| Some(k.kid.as_str()))?;
                Ok(JwsKey::Hmac(&key.secret))
            }
            SigningKeys::Client { keys, .. } => {
                let alg = Alg::from_name(&self.alg).ok_or(Reason::RequestSignatureInvalid)?;
                let fitting: Vec<&VerificationKey> = keys.iter().filter(|k| k.alg == alg).collect();
                Ok(JwsKey::Public(*pick(&fitting, self.kid.as_deref(), |k| {
                    k.kid.as_deref()
                })?))
            }
        }
    }

    /// Chooses the key and verifies the signature over the body.
    pub fn verify_body(
        &self,
        keys: SigningKeys<'_>,
        body: &[u8],
        crypto: &dyn SignatureVerifier,
    ) -> Result<(), Reason> {
        let key = self.select_key(keys)?;
        if self.verify_with(key, body, crypto) {
            Ok(())
        } else {
            Err(Reason::RequestSignatureInvalid)
        }
    }

    /// RFC 7515 §5.1 step 5 with RFC 7797 §3: `ASCII(BASE64URL(header)) || '.' || payload`,
    /// where the payload is the body itself when `b64` is false and its base64url otherwise.
    fn signing_input(&self, body: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(self.header_b64.len() + 1 + body.len() * 4 / 3 + 4);
        input.extend_from_slice(self.header_b64.as_bytes());
        input.push(b'.');
        if self.b64 {
            input.extend_from_slice(URL_SAFE_NO_PAD.encode(body).as_bytes());
        } else {
            input.extend_from_slice(body);
        }
        input
    }
}

/// `iat` at most `max_age_seconds` old and at most `clock_skew_seconds` ahead of `now`.
fn check_iat(iat: u64, window: Window, now: u64) -> Result<(), Reason> {
    if iat.saturating_add(window.max_age_seconds) < now
        || iat > now.saturating_add(window.clock_skew_seconds)
    {
        return Err(Reason::RequestSignatureExpired);
    }
    Ok(())
}

/// Picks the key named by `kid`, or the only key when the signature names none.
fn pick<'k, K>(
    keys: &'k [K],
    kid: Option<&str>,
    kid_of: impl Fn(&K) -> Option<&str>,
) -> Result<&'k K, Reason> {
    match kid {
        Some(kid) => keys.iter().find(|k| kid_of(k) == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or(Reason::RequestSignatureKeyUnknown)
}

/// RFC 7515 §4.1.11 and RFC 7797 §6: `crit`, if present, is a non-empty array of distinct
/// names, each understood by Tether and present in the header; `b64` requires `crit` to
/// list it.
fn check_crit(
    crit: Option<&Value>,
    members: &[(String, Value)],
    has_b64: bool,
) -> Result<(), Reason> {
    let names: Vec<&str> = match crit {
        None => Vec::new(),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().ok_or(Reason::RequestSignatureMalformed))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Reason::RequestSignatureMalformed),
    };
    for (i, name) in names.iter().enumerate() {
        let understood = UNDERSTOOD_CRITICAL.contains(name);
        let present = members.iter().any(|(n, _)| n == name);
        let repeated = names[..i].contains(name);
        if !understood || !present || repeated {
            return Err(Reason::RequestSignatureMalformed);
        }
    }
    if has_b64 && !names.contains(&"b64") {
        return Err(Reason::RequestSignatureMalformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use crate::jwk::parse_jwks;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;

    /// RFC 7515 Appendix A.1: the HMAC key used by RFC 7797's examples.
    const A1_KEY: &str =
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
    /// RFC 7797 §4.2: `{"alg":"HS256","b64":false,"crit":["b64"]}` over `$.02`, detached.
    const RFC7797_4_2: &str = "eyJhbGciOiJIUzI1NiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..A5dxf2s96_n5FLueVuW1Z_vh161FwXZC4YLPff6dmDY";
    /// RFC 7797 §4.1: the same payload with `{"alg":"HS256"}` (b64 true), detached.
    const RFC7797_4_1: &str = "eyJhbGciOiJIUzI1NiJ9..5mvfOroL-g7HyqJoozehmsaqmvTYGEq5jTI1gVvoEoQ";
    /// RFC 7520 §3.5 symmetric key, §3 payload, §4.5 detached HS256 signature.
    const RFC7520_KEY: &str = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg";
    const RFC7520_PAYLOAD: &str = "It\u{2019}s a dangerous business, Frodo, going out your door. You step onto the road, and if you don't keep your feet, there\u{2019}s no knowing where you might be swept off to.";
    const RFC7520_4_5: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9..s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";

    fn key(b64: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(b64).unwrap()
    }

    fn verifies(jws: &str, secret: &[u8], payload: &[u8]) -> bool {
        DetachedJws::parse(jws.as_bytes()).unwrap().verify_with(
            JwsKey::Hmac(secret),
            payload,
            &InVm,
        )
    }

    #[test]
    fn rfc7797_unencoded_payload_example_verifies() {
        assert!(verifies(RFC7797_4_2, &key(A1_KEY), b"$.02"));
        assert!(!verifies(RFC7797_4_2, &key(A1_KEY), b"$.03"));
    }

    #[test]
    fn rfc7797_encoded_payload_example_verifies() {
        assert!(verifies(RFC7797_4_1, &key(A1_KEY), b"$.02"));
        // The b64:false signature is not valid as a b64:true one, and vice versa.
        let swapped = format!(
            "eyJhbGciOiJIUzI1NiJ9..{}",
            RFC7797_4_2.rsplit('.').next().unwrap()
        );
        assert!(!verifies(&swapped, &key(A1_KEY), b"$.02"));
    }

    #[test]
    fn rfc7520_detached_example_verifies() {
        assert!(verifies(
            RFC7520_4_5,
            &key(RFC7520_KEY),
            RFC7520_PAYLOAD.as_bytes()
        ));
    }

    #[test]
    fn changed_header_breaks_the_signature() {
        // The RFC 7520 §4.5 signature under a header naming another kid.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"another"}"#);
        let forged = format!("{header}..{}", RFC7520_4_5.rsplit('.').next().unwrap());
        assert!(!verifies(
            &forged,
            &key(RFC7520_KEY),
            RFC7520_PAYLOAD.as_bytes()
        ));
    }

    #[test]
    fn algorithm_comes_from_the_key() {
        let jws = DetachedJws::parse(RFC7797_4_2.as_bytes()).unwrap();
        let es256 = crate::crypto::tests::a3_key();
        assert!(!jws.verify_with(JwsKey::Public(&es256), b"$.02", &InVm));
    }

    #[test]
    fn attached_payload_is_refused() {
        let attached = RFC7797_4_2.replace("..", ".JC4wMg.");
        assert_eq!(
            DetachedJws::parse(attached.as_bytes()).unwrap_err(),
            Reason::RequestSignatureMalformed
        );
    }

    fn header(json: &str) -> String {
        format!("{}..AAAA", URL_SAFE_NO_PAD.encode(json))
    }

    fn parse_header(json: &str) -> Result<DetachedJws, Reason> {
        DetachedJws::parse(header(json).as_bytes())
    }

    #[test]
    fn crit_may_list_only_understood_present_names() {
        assert!(parse_header(r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#).is_ok());
        assert!(
            parse_header(r#"{"alg":"HS256","iat":1,"htm":"GET","crit":["iat","htm"]}"#).is_ok()
        );
        for bad in [
            r#"{"alg":"HS256","exp":1,"crit":["exp"]}"#,
            r#"{"alg":"HS256","crit":["iat"]}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":"b64","b64":false}"#,
            r#"{"alg":"HS256","crit":[1]}"#,
            r#"{"alg":"HS256","b64":false,"crit":["b64","b64"]}"#,
            r#"{"alg":"HS256","alg2":1,"crit":["alg"]}"#,
        ] {
            assert_eq!(
                parse_header(bad).unwrap_err(),
                Reason::RequestSignatureMalformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn b64_without_crit_or_not_boolean_is_refused() {
        assert!(parse_header(r#"{"alg":"HS256","b64":false}"#).is_err());
        assert!(parse_header(r#"{"alg":"HS256","b64":true}"#).is_err());
        assert!(parse_header(r#"{"alg":"HS256","b64":"false","crit":["b64"]}"#).is_err());
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        assert!(parse_header(r#"{"alg":"HS256","alg":"none"}"#).is_err());
        assert!(parse_header(r#"{"alg":"HS256","x":1,"x":2}"#).is_err());
    }

    #[test]
    fn malformed_compact_forms_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a.b",
            "a..b..c",
            "!!!..AAAA",
            "eyJhbGciOiJIUzI1NiJ9..",
            "e30..AAAA",
        ] {
            assert!(DetachedJws::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(DetachedJws::parse(&[0xff; 10]).is_err());
        assert!(DetachedJws::parse("a".repeat(MAX_SIGNATURE_BYTES + 1).as_bytes()).is_err());
    }

    /// What production does with a signature, in one call: the checks on the headers
    /// (`check_request`, `check_window`), then the signature over the body (`verify_body`),
    /// as `verdict::Pending` runs them.
    fn check_then_verify(
        jws: &DetachedJws,
        request: &SignedRequest<'_>,
        body: &[u8],
        token: &str,
        keys: SigningKeys<'_>,
        now: u64,
    ) -> Result<(), Reason> {
        let token_hash = super::super::jose::sha256_b64url(token.as_bytes());
        jws.check_request(request, &token_hash, WINDOW, now)?;
        jws.check_window(WINDOW, now)?;
        jws.verify_body(keys, body, &InVm)
    }

    // A request signed the way a client would, with an ES256 key of its own (cnf.jwk).
    const NOW: u64 = 1_800_000_000;
    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.e30.sig";
    const WINDOW: Window = Window {
        max_age_seconds: 60,
        clock_skew_seconds: 30,
    };
    const REQUEST: SignedRequest<'static> = SignedRequest {
        method: "POST",
        scheme: "https",
        authority: "api.mesh.internal",
        path: "/payments?id=7",
    };
    const BODY: &[u8] = b"{\"amount\":\"10.00\"}";

    struct Client {
        signing: p256::ecdsa::SigningKey,
        keys: Vec<VerificationKey>,
    }

    fn client() -> Client {
        let signing = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let point = signing.verifying_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "c1",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
        Client {
            signing,
            keys: parse_jwks(&json!({"keys": [jwk]})).unwrap().keys,
        }
    }

    fn sign(client: &Client, header: Value, body: &[u8]) -> String {
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let b64 = header.get("b64") != Some(&json!(false));
        let mut input = format!("{header_b64}.").into_bytes();
        if b64 {
            input.extend_from_slice(URL_SAFE_NO_PAD.encode(body).as_bytes());
        } else {
            input.extend_from_slice(body);
        }
        let sig: p256::ecdsa::Signature = client.signing.sign(&input);
        format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn request_header() -> Value {
        json!({"alg": "ES256", "kid": "c1", "b64": false, "crit": ["b64"], "iat": NOW,
               "htm": "POST", "htu": "https://api.mesh.internal/payments?id=7",
               "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(TOKEN))})
    }

    fn check(
        client: &Client,
        jws: &str,
        request: &SignedRequest<'_>,
        body: &[u8],
        now: u64,
    ) -> Result<(), Reason> {
        check_then_verify(
            &DetachedJws::parse(jws.as_bytes())?,
            request,
            body,
            TOKEN,
            SigningKeys::Bound(&client.keys),
            now,
        )
    }

    #[test]
    fn signed_request_verifies_in_both_payload_forms() {
        let c = client();
        assert_eq!(
            check(&c, &sign(&c, request_header(), BODY), &REQUEST, BODY, NOW),
            Ok(())
        );
        let mut encoded = request_header();
        encoded.as_object_mut().unwrap().remove("b64");
        encoded.as_object_mut().unwrap().remove("crit");
        assert_eq!(
            check(&c, &sign(&c, encoded, BODY), &REQUEST, BODY, NOW),
            Ok(())
        );
    }

    #[test]
    fn body_changed_by_one_byte_fails() {
        let c = client();
        let jws = sign(&c, request_header(), BODY);
        assert_eq!(
            check(&c, &jws, &REQUEST, b"{\"amount\":\"10.01\"}", NOW),
            Err(Reason::RequestSignatureInvalid)
        );
    }

    #[test]
    fn method_uri_or_token_of_another_request_fail() {
        let c = client();
        let jws = sign(&c, request_header(), BODY);
        let put = SignedRequest {
            method: "PUT",
            ..REQUEST
        };
        assert_eq!(
            check(&c, &jws, &put, BODY, NOW),
            Err(Reason::RequestSignatureMismatch)
        );
        let other_path = SignedRequest {
            path: "/payments?id=8",
            ..REQUEST
        };
        assert_eq!(
            check(&c, &jws, &other_path, BODY, NOW),
            Err(Reason::RequestSignatureMismatch)
        );
        let parsed = DetachedJws::parse(jws.as_bytes()).unwrap();
        let other_token = check_then_verify(
            &parsed,
            &REQUEST,
            BODY,
            "another.token.x",
            SigningKeys::Bound(&c.keys),
            NOW,
        );
        assert_eq!(other_token, Err(Reason::RequestSignatureMismatch));
    }

    #[test]
    fn default_port_and_case_in_htu_are_accepted() {
        let c = client();
        let mut header = request_header();
        header["htu"] = json!("HTTPS://API.mesh.internal:443/payments?id=7");
        assert_eq!(
            check(&c, &sign(&c, header, BODY), &REQUEST, BODY, NOW),
            Ok(())
        );
    }

    #[test]
    fn old_or_future_iat_fails() {
        let c = client();
        let jws = sign(&c, request_header(), BODY);
        assert_eq!(
            check(&c, &jws, &REQUEST, BODY, NOW + 61),
            Err(Reason::RequestSignatureExpired)
        );
        assert_eq!(check(&c, &jws, &REQUEST, BODY, NOW + 60), Ok(()));
        assert_eq!(
            check(&c, &jws, &REQUEST, BODY, NOW - 31),
            Err(Reason::RequestSignatureExpired)
        );
    }

    #[test]
    fn missing_request_members_are_malformed() {
        let c = client();
        for member in ["iat", "htm", "htu", "ath"] {
            let mut header = request_header();
            header.as_object_mut().unwrap().remove(member);
            assert_eq!(
                check(&c, &sign(&c, header, BODY), &REQUEST, BODY, NOW),
                Err(Reason::RequestSignatureMalformed),
                "{member}"
            );
        }
    }

    #[test]
    fn client_keys_are_chosen_by_kid_or_as_the_only_key() {
        let c = client();
        let keys = SigningKeys::Client {
            keys: &c.keys,
            hmac_keys: &[],
        };
        let run = |header: Value| {
            let jws = DetachedJws::parse(sign(&c, header, BODY).as_bytes()).unwrap();
            check_then_verify(&jws, &REQUEST, BODY, TOKEN, keys, NOW)
        };
        assert_eq!(run(request_header()), Ok(()));
        let mut no_kid = request_header();
        no_kid.as_object_mut().unwrap().remove("kid");
        assert_eq!(run(no_kid), Ok(()));
        let mut unknown = request_header();
        unknown["kid"] = json!("c2");
        assert_eq!(run(unknown), Err(Reason::RequestSignatureKeyUnknown));
    }

    #[test]
    fn hmac_client_signature_verifies_with_its_secret() {
        let secret = vec![42u8; 32];
        let hmac = [HmacKey {
            kid: "k1".into(),
            secret: secret.clone(),
        }];
        let mut header = request_header();
        header["alg"] = json!("HS256");
        header["kid"] = json!("k1");
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let mut input = format!("{header_b64}.").into_bytes();
        input.extend_from_slice(BODY);
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&input);
        let jws = format!(
            "{header_b64}..{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let keys = SigningKeys::Client {
            keys: &[],
            hmac_keys: &hmac,
        };
        let parsed = DetachedJws::parse(jws.as_bytes()).unwrap();
        assert_eq!(
            check_then_verify(&parsed, &REQUEST, BODY, TOKEN, keys, NOW),
            Ok(())
        );
        let wrong = [HmacKey {
            kid: "k1".into(),
            secret: vec![43u8; 32],
        }];
        let keys = SigningKeys::Client {
            keys: &[],
            hmac_keys: &wrong,
        };
        assert_eq!(
            check_then_verify(&parsed, &REQUEST, BODY, TOKEN, keys, NOW),
            Err(Reason::RequestSignatureInvalid)
        );
    }

    #[test]
    fn hmac_keys_never_show_their_secret() {
        let secret = b"a shared secret of thirty-two by";
        let shown = format!("{:?}", JwsKey::Hmac(secret));
        assert_eq!(shown, "Hmac(<secret>)");
        let key = HmacKey {
            kid: "k1".into(),
            secret: secret.to_vec(),
        };
        assert!(!format!("{key:?}").contains("shared"));
    }

    /// `(r, n - s)`: the other valid ECDSA signature of the same message.
    fn malleate(jws: &str) -> String {
        let (header, signature) = jws.split_once("..").unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&bytes).unwrap();
        let (r, s) = sig.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        assert_ne!(twin.to_bytes(), sig.to_bytes());
        format!("{header}..{}", URL_SAFE_NO_PAD.encode(twin.to_bytes()))
    }

    /// Regression test for issue 7, finding 4: the replay id of a malleated ECDSA signature
    /// was a new one, so each captured request could be used once more.
    #[test]
    fn malleated_ecdsa_signature_has_the_same_replay_id() {
        let c = client();
        let genuine = sign(&c, request_header(), BODY);
        let twin = malleate(&genuine);
        // Both verify (RFC 7518 §3.4 does not require low-s), so only the id can stop it.
        assert_eq!(check(&c, &genuine, &REQUEST, BODY, NOW), Ok(()));
        assert_eq!(check(&c, &twin, &REQUEST, BODY, NOW), Ok(()));
        let id = |jws: &str| DetachedJws::parse(jws.as_bytes()).unwrap().replay_id(BODY);
        assert_eq!(id(&genuine), id(&twin));
    }

    #[test]
    fn replay_id_changes_with_the_header_or_the_body() {
        let c = client();
        let first = sign(&c, request_header(), BODY);
        let mut later = request_header();
        later["iat"] = json!(NOW + 1);
        let second = sign(&c, later, BODY);
        let parse = |jws: &str| DetachedJws::parse(jws.as_bytes()).unwrap();
        assert_ne!(
            parse(&first).replay_id(BODY),
            parse(&second).replay_id(BODY)
        );
        assert_ne!(
            parse(&first).replay_id(BODY),
            parse(&first).replay_id(b"{}")
        );
    }

    /// Regression test for issue 7, finding 2: `iat` is checked again when the signature is
    /// decided, after the body.
    #[test]
    fn window_is_checked_again_at_decision_time() {
        let c = client();
        let jws = DetachedJws::parse(sign(&c, request_header(), BODY).as_bytes()).unwrap();
        assert_eq!(jws.check_window(WINDOW, NOW + 60), Ok(()));
        assert_eq!(
            jws.check_window(WINDOW, NOW + 61),
            Err(Reason::RequestSignatureExpired)
        );
    }
}
