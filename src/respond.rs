//! Signed responses (issue 10): what Tether adds to the response of an allowed request on a
//! `sign_response` route, and the key set it publishes so that clients can check it.
//!
//! Pure: the glue holds the response until its body is complete ([`crate::lifecycle::Outgoing`])
//! and hands the facts here; the headers to set come back.
//!
//! - **`http_message_signature`** (RFC 9421, as the FAPI 2.0 HTTP Signatures draft profiles
//!   it): a `Content-Digest` of the body (RFC 9530, `sha-256`), and a signature labelled
//!   `sig1` over the request's components (`;req`), `@status` and the response's
//!   `content-digest` ([`httpsig::response_input`]), with `created`, `keyid` and
//!   `tag="fapi-2-response"`. A response cannot be replayed for another request: the request's
//!   method, URI, token and signature are in what is signed.
//! - **`jws`**: a detached JWS over the body (RFC 7515 Appendix F, RFC 7797 `b64: false`) in
//!   `signed_requests.header`. Its protected header carries `alg`, `kid`, `b64: false`,
//!   `crit: ["b64"]`, `iat`, `status`, and the request it answers: `htm`, `htu` (the request's
//!   URI, query included), and `rsh` (the base64url SHA-256 of the request signature: the
//!   JWS as sent, or the RFC 9421 signature's bytes) when the request was signed, else `ath`
//!   (of the access token).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::bind::digest;
use crate::bind::httpsig::{self, Message, Request, Response};
use crate::sign::SigningKey;

/// Default for `response_signing.jwks_path`.
pub const DEFAULT_JWKS_PATH: &str = "/.well-known/jwks.json";
/// Default for `response_signing.jwks_max_age_seconds`.
pub const DEFAULT_JWKS_MAX_AGE_SECONDS: u64 = 300;

/// The validated `response_signing` block: the keys (the first signs, all are published) and
/// the published key set, rendered once.
#[derive(Debug)]
pub struct ResponseSigning {
    keys: Vec<SigningKey>,
    pub jwks_path: String,
    /// The key set document (`{"keys": [...]}`, public keys with `use: sig`).
    pub jwks_document: String,
    /// `cache-control` of the key set's answer.
    pub jwks_cache_control: String,
    /// The largest response body held to be signed.
    pub max_body_bytes: usize,
}

impl ResponseSigning {
    /// `keys` is not empty (the configuration checks it).
    pub fn new(
        keys: Vec<SigningKey>,
        jwks_path: String,
        jwks_max_age_seconds: u64,
        max_body_bytes: usize,
    ) -> ResponseSigning {
        let published: Vec<Value> = keys.iter().map(SigningKey::public_jwk).collect();
        ResponseSigning {
            jwks_document: json!({ "keys": published }).to_string(),
            jwks_cache_control: format!("public, max-age={jwks_max_age_seconds}"),
            keys,
            jwks_path,
            max_body_bytes,
        }
    }

    /// Whether a request is for the published key set: `GET` (or `HEAD`) of `jwks_path`,
    /// any query aside. It is answered without a token.
    pub fn is_jwks_request(&self, method: &[u8], path: &[u8]) -> bool {
        let path = path
            .split(|b| matches!(b, b'?' | b'#'))
            .next()
            .unwrap_or(path);
        matches!(method, b"GET" | b"HEAD") && path == self.jwks_path.as_bytes()
    }

    /// The key that signs: the first listed.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.first()
    }
}

/// What a response signature binds it to: the request, as its headers arrived, and how it
/// was proved. Kept from the decision until the response is signed. Its `Debug` shows no
/// header value (they hold the token).
#[derive(Clone, Default)]
pub struct Exchange {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path_and_query: String,
    /// The request's header lines (names lowercase), for the `;req` components.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The label of the request's verified RFC 9421 signature.
    pub signature_label: Option<String>,
    /// The base64url SHA-256 of the request signature as sent (JWS `rsh`).
    pub signature_hash: Option<String>,
    /// The base64url SHA-256 of the access token (JWS `ath`).
    pub token_hash: String,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("header_lines", &self.headers.len())
            .field("signature_label", &self.signature_label)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    fn with_request<T>(&self, f: impl FnOnce(Request<'_>) -> T) -> T {
        let headers: Vec<httpsig::Header<'_>> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        f(Request {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path_and_query: &self.path_and_query,
            headers: &headers,
        })
    }
}

/// The headers that sign a response (`http_message_signature`): `content-digest` (when the
/// body is not empty), `signature-input` and `signature`. The response components signed are
/// `@status` and the `content-digest` set here: no other response line is read.
pub fn sign_http(
    key: &SigningKey,
    exchange: &Exchange,
    status: u16,
    body: &[u8],
    now: u64,
) -> Result<Vec<(&'static str, String)>, httpsig::Error> {
    let mut set = Vec::with_capacity(3);
    let content_digest = digest::field_value(body);
    let digest_line = [(digest::FIELD.as_bytes(), content_digest.as_bytes())];
    let lines: &[httpsig::Header<'_>] = if body.is_empty() { &[] } else { &digest_line };
    let fields = exchange.with_request(|request| {
        let input = httpsig::response_input(
            &request,
            exchange.signature_label.as_deref(),
            !body.is_empty(),
            now,
            key.kid(),
        );
        let response = Response {
            status,
            headers: lines,
            request: Some(request),
        };
        let base = httpsig::signature_base(&input, Message::Response(response))?;
        let signature = key.sign(&base);
        httpsig::signature_fields(httpsig::RESPONSE_LABEL, &input, &signature)
    })?;
    if !body.is_empty() {
        set.push((digest::FIELD, content_digest));
    }
    set.push(("signature-input", fields.0));
    set.push(("signature", fields.1));
    Ok(set)
}

/// The detached JWS that signs a response body (`jws`): `BASE64URL(header)..BASE64URL(sig)`.
pub fn sign_jws(
    key: &SigningKey,
    exchange: &Exchange,
    status: u16,
    body: &[u8],
    now: u64,
) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), json!(key.alg().jws_name()));
    header.insert("kid".into(), json!(key.kid()));
    header.insert("b64".into(), json!(false));
    header.insert("crit".into(), json!(["b64"]));
    header.insert("iat".into(), json!(now));
    header.insert("htm".into(), json!(exchange.method));
    // The whole target, query included (as a request's JWS `htu`): a response for
    // `?id=alice` must not pass for `?id=bob`. And the status, which the body does not say.
    let uri = format!(
        "{}://{}{}",
        exchange.scheme, exchange.authority, exchange.path_and_query
    );
    header.insert("htu".into(), json!(uri));
    header.insert("status".into(), json!(status));
    match &exchange.signature_hash {
        Some(rsh) => header.insert("rsh".into(), json!(rsh)),
        None => header.insert("ath".into(), json!(exchange.token_hash)),
    };
    let header_b64 = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
    // RFC 7797 §3: with `b64: false` the payload is the body itself.
    let mut input = Vec::with_capacity(header_b64.len() + 1 + body.len());
    input.extend_from_slice(header_b64.as_bytes());
    input.push(b'.');
    input.extend_from_slice(body);
    let signature = key.sign(&input);
    format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(signature))
}
