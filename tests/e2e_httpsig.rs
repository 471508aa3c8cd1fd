//! End-to-end tests of HTTP Message Signatures (RFC 9421, issue 10) through the real Envoy:
//! requests signed by an independent implementation (the PyPI package
//! http-message-signatures, `tests/interop/httpsig_exchange.py`), verified by Tether; and the
//! responses Tether signs, verified by that same implementation against the key set Tether
//! publishes at `response_signing.jwks_path`.
//!
//! The access tokens come from the harness's issuer (signed by OpenSSL) and are bound to the
//! client certificate. Nothing here is signed by Tether's code but the responses under test.

mod support;

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::frames::{Frames, Protocol, Stream};
use support::jwt::Issuer;
use support::pki::Pki;
use support::run_interop_client;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const ED25519_ENV: &str = "TETHER_RESPONSE_KEY";
const P256_ENV: &str = "TETHER_RESPONSE_KEY_P256";
/// The largest response body signed (the echo backend's answers are about 1 KiB).
const MAX_RESPONSE_BYTES: usize = 8192;
const ALGS: [&str; 6] = [
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "ed25519",
    "rsa-pss-sha512",
    "rsa-v1_5-sha256",
    "hmac-sha256",
];
/// FAPI 2.0's request components, with a body.
const COMPONENTS: [&str; 4] = ["@method", "@target-uri", "authorization", "content-digest"];
const BODY: &[u8] = b"{\"amount\":\"10.00\",\"to\":\"bob\"}";

fn config(made: &Value, first_key: &str) -> Value {
    let (first, second) = if first_key == "ed25519" {
        (("resp-ed25519", ED25519_ENV), ("resp-p256", P256_ENV))
    } else {
        (("resp-p256", P256_ENV), ("resp-ed25519", ED25519_ENV))
    };
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": null}],
        "clients": [{"client_id": "tpp", "jwks": made["jwks"],
                     "hmac_keys": [{"kid": made["hmac"]["kid"], "k": made["hmac"]["k"]}]}],
        "message_signatures": {"max_age_seconds": 60},
        "response_signing": {
            "keys": [{"kid": first.0, "private_jwk_env": first.1},
                     {"kid": second.0, "private_jwk_env": second.1}],
            "jwks_path": JWKS_PATH, "max_body_bytes": MAX_RESPONSE_BYTES},
        "rules": [
            {"prefix": "/payments", "require": "mtls",
             "signed_request": "http_message_signature", "sign_response": "http_message_signature"},
            {"prefix": "/reports", "require": "mtls", "sign_response": "http_message_signature"},
            {"prefix": "/statements", "require": "mtls", "sign_response": "jws"},
            {"prefix": "/keyed", "require": "bound", "signed_request": "http_message_signature"},
            {"prefix": "/", "require": "bound"}
        ],
    })
}

struct Fixtures {
    /// The client keys' public JWKs and RFC 7638 thumbprints, as jwcrypto made them.
    made: Value,
    pki: Pki,
    issuer: Issuer,
    /// The client keys' directory (for the signer).
    keys: String,
    /// Envoy signing responses with Ed25519 (HTTP/2 and HTTP/1.1 with trailers).
    envoy: Envoy,
    /// Envoy signing responses with P-256.
    envoy_p256: Envoy,
    echo: EchoBackend,
    _dir: ScratchDir,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("e2e-httpsig");
        let pki = Pki::generate(&dir.join("pki"));
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        let keys = dir.join("client-keys");
        std::fs::create_dir_all(&keys).expect("key dir");
        let keys = keys.to_str().expect("UTF-8 path").to_string();
        let made = run_interop_client("httpsig_exchange.py", &json!({"mode": "keys", "dir": keys}));
        let echo = EchoBackend::start();
        let start = |first_key: &str| {
            let mut config = config(&made, first_key);
            config["issuers"][0]["jwks"] = issuer.jwks();
            let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
            bootstrap.http2 = true;
            bootstrap.enable_trailers = true;
            for (env, key) in [(ED25519_ENV, "ed25519"), (P256_ENV, "p256")] {
                let jwk = made["tether"][key]
                    .as_str()
                    .expect("private JWK")
                    .to_string();
                bootstrap.vm_env.push((env.into(), jwk));
            }
            Envoy::start(&bootstrap)
        };
        let envoy = start("ed25519");
        let envoy_p256 = start("p256");
        Fixtures {
            made,
            pki,
            issuer,
            keys,
            envoy,
            envoy_p256,
            echo,
            _dir: dir,
        }
    })
}

fn token() -> String {
    let f = fixtures();
    f.issuer
        .token()
        .bound_to(&f.pki.alice)
        .claim("client_id", "tpp")
        .sign()
}

/// A request as the client sends it, before and after signing.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Exchange {
    fn post(path: &str, token: &str) -> Exchange {
        Exchange {
            method: "POST".into(),
            path: path.into(),
            headers: vec![
                ("authorization".into(), format!("Bearer {token}")),
                ("content-type".into(), "application/json".into()),
            ],
            body: BODY.to_vec(),
        }
    }

    fn url(&self, envoy: &Envoy) -> String {
        format!("https://localhost:{}{}", envoy.https_port(), self.path)
    }

    fn spec(&self, envoy: &Envoy, alg: &str, edit: Value) -> Value {
        let mut spec = json!({
            "alg": alg, "method": self.method, "url": self.url(envoy),
            "headers": self.headers, "body": STANDARD.encode(&self.body),
            "created": support::now(), "components": COMPONENTS,
        });
        for (k, v) in edit.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        spec
    }

    /// Signed by http-message-signatures with the client's `alg` key; `edit` changes the
    /// signer's spec (`created`, `components`, `keyid`, ...).
    fn signed(mut self, envoy: &Envoy, alg: &str, edit: Value) -> Exchange {
        let spec = json!({"mode": "sign", "dir": fixtures().keys,
                          "requests": [self.spec(envoy, alg, edit)]});
        let made = run_interop_client("httpsig_exchange.py", &spec);
        for pair in made["headers"][0].as_array().expect("headers") {
            let name = pair[0].as_str().expect("name").to_string();
            let value = pair[1].as_str().expect("value").to_string();
            self.headers.push((name, value));
        }
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_header(mut self, name: &str, value: &str) -> Exchange {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.into(), value.into()));
        self
    }

    fn send(&self, envoy: &Envoy) -> Response {
        let f = fixtures();
        let mut request = HttpsRequest::new(envoy.https_port(), &f.pki.ca, &self.path)
            .cert(&f.pki.alice)
            .method(&self.method);
        if !self.body.is_empty() {
            request = request.body(&self.body);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        request.send()
    }
}

/// The key set Tether publishes.
fn published(envoy: &Envoy) -> Value {
    let f = fixtures();
    let response = HttpsRequest::new(envoy.https_port(), &f.pki.ca, JWKS_PATH).send();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// Verifies `response`'s signature with http-message-signatures, as the answer to `request`
/// (sent to `envoy`); `also` names more components it must cover. `Err` says why not.
fn verify_response(
    envoy: &Envoy,
    request: &Exchange,
    response: &Response,
    also: &[&str],
) -> Result<Vec<String>, String> {
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .flat_map(|(n, values)| values.iter().map(move |v| (n.clone(), v.clone())))
        .collect();
    let spec = json!({
        "mode": "verify_response", "jwks": published(envoy),
        "request": {"method": request.method, "url": request.url(envoy), "headers": request.headers},
        "response": {"status": response.status, "headers": headers,
                     "body": STANDARD.encode(&response.body)},
        "also_required": also,
    });
    let answer = run_interop_client("httpsig_exchange.py", &spec);
    if answer["ok"] == true {
        Ok(answer["covered"]
            .as_array()
            .expect("covered")
            .iter()
            .map(|c| c.as_str().unwrap_or_default().to_string())
            .collect())
    } else {
        Err(answer["error"].as_str().unwrap_or_default().to_string())
    }
}

#[track_caller]
fn assert_served(response: &Response) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(fixtures().echo.received(&response.test_id));
}

#[track_caller]
fn assert_refused(response: &Response, reason: &str) {
    assert_eq!(response.status, 401, "{reason}: {}", response.text());
    assert_eq!(response.json()["error"], "invalid_signature", "{reason}");
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"invalid_signature\"")),
        "{reason}"
    );
    assert!(!fixtures().echo.received(&response.test_id), "{reason}");
    // Tether's own refusals are not signed.
    assert_eq!(response.header("signature"), None, "{reason}");
    let counter = format!("wasmcustom.tether.refused.{reason}");
    assert!(fixtures().envoy.stat(&counter) >= 1, "{counter}");
}

#[test]
fn each_algorithm_signs_a_request_that_is_served_with_a_signed_response() {
    let f = fixtures();
    for alg in ALGS {
        let request = Exchange::post("/payments?to=bob", &token()).signed(&f.envoy, alg, json!({}));
        let response = request.send(&f.envoy);
        assert_served(&response);
        // The upstream saw the request as signed.
        assert_eq!(
            response.json()["body"],
            String::from_utf8_lossy(BODY).as_ref()
        );
        let label = r#""signature";req;key="sig1""#;
        let covered = verify_response(
            &f.envoy,
            &request,
            &response,
            &[label, r#""content-digest";req"#],
        )
        .unwrap_or_else(|e| panic!("{alg}: the signed response does not verify: {e}"));
        assert!(
            covered.iter().any(|c| c.contains("content-digest")),
            "{alg}: {covered:?}"
        );
        assert!(response
            .header("content-digest")
            .is_some_and(|d| d.starts_with("sha-256=:")));
    }
}

#[test]
fn a_changed_request_is_refused() {
    let f = fixtures();
    let token = token();
    let signed = || {
        Exchange::post("/payments?to=bob", &token).signed(&f.envoy, "ecdsa-p256-sha256", json!({}))
    };
    let mut method = signed();
    method.method = "PUT".into();
    assert_refused(&method.send(&f.envoy), "request_signature_invalid");
    let mut path = signed();
    path.path = "/payments/2?to=bob".into();
    assert_refused(&path.send(&f.envoy), "request_signature_invalid");
    let mut query = signed();
    query.path = "/payments?to=mallory".into();
    assert_refused(&query.send(&f.envoy), "request_signature_invalid");
    let other_token = self::token();
    let authorization = signed().set_header("authorization", &format!("Bearer {other_token}"));
    assert_refused(&authorization.send(&f.envoy), "request_signature_invalid");
    // The body changed, its digest kept: the digest no longer matches.
    let mut body = signed();
    body.body = b"{\"amount\":\"9999.00\",\"to\":\"mallory\"}".to_vec();
    assert_refused(&body.send(&f.envoy), "content_digest_mismatch");
    // The body and its digest changed together: the signature covers the old digest.
    let mut both = signed();
    both.body = b"{\"amount\":\"9999.00\",\"to\":\"mallory\"}".to_vec();
    let digest = format!("sha-256=:{}:", STANDARD.encode(sha256(&both.body)));
    let both = both.set_header("content-digest", &digest);
    assert_refused(&both.send(&f.envoy), "request_signature_invalid");
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[test]
fn stale_or_future_signatures_and_unknown_keys_are_refused() {
    let f = fixtures();
    let token = token();
    let post = || Exchange::post("/payments", &token);
    let stale = post().signed(
        &f.envoy,
        "ed25519",
        json!({"created": support::now() - 120}),
    );
    assert_refused(&stale.send(&f.envoy), "request_signature_expired");
    let future = post().signed(
        &f.envoy,
        "ed25519",
        json!({"created": support::now() + 600}),
    );
    assert_refused(&future.send(&f.envoy), "request_signature_expired");
    let expired = post().signed(
        &f.envoy,
        "ed25519",
        json!({"created": support::now() - 5, "expires": support::now() - 1}),
    );
    assert_refused(&expired.send(&f.envoy), "request_signature_expired");
    let unknown = post().signed(&f.envoy, "ed25519", json!({"keyid": "client-unknown"}));
    assert_refused(&unknown.send(&f.envoy), "request_signature_key_unknown");
}

#[test]
fn a_signature_missing_a_required_component_is_refused_with_accept_signature() {
    let f = fixtures();
    let token = token();
    let without_authorization = Exchange::post("/payments", &token).signed(
        &f.envoy,
        "ed25519",
        json!({"components": ["@method", "@target-uri", "content-digest"]}),
    );
    let response = without_authorization.send(&f.envoy);
    assert_refused(&response, "request_signature_incomplete");
    let accept = response
        .header("accept-signature")
        .expect("Accept-Signature");
    assert_eq!(
        accept,
        r#"sig1=("@method" "@target-uri" "authorization" "dpop" "content-digest");created;tag="fapi-2-request""#
    );
    // A body whose digest is not signed.
    let without_digest = Exchange::post("/payments", &token).signed(
        &f.envoy,
        "ed25519",
        json!({"components": ["@method", "@target-uri", "authorization"], "digest": false}),
    );
    assert_eq!(without_digest.header("content-digest"), None);
    assert_refused(
        &without_digest.send(&f.envoy),
        "request_signature_incomplete",
    );
    // No signature at all.
    let response = Exchange::post("/payments", &token).send(&f.envoy);
    assert_refused(&response, "request_signature_missing");
    assert_eq!(response.header("accept-signature"), Some(accept));
    // Another tag: not the signature the route checks.
    let other_tag =
        Exchange::post("/payments", &token).signed(&f.envoy, "ed25519", json!({"tag": "app-1"}));
    assert_refused(&other_tag.send(&f.envoy), "request_signature_missing");
}

#[test]
fn a_replayed_request_is_refused_also_with_a_malleated_ecdsa_signature() {
    let f = fixtures();
    let request =
        Exchange::post("/payments", &token()).signed(&f.envoy, "ecdsa-p256-sha256", json!({}));
    assert_served(&request.send(&f.envoy));
    assert_refused(&request.send(&f.envoy), "request_signature_replayed");
    // (r, n - s) is a second valid signature of the same base: the record is keyed by the
    // base, so it is the same request.
    let malleated = request.clone().set_header(
        "signature",
        &malleate(request.header("signature").expect("signature")),
    );
    assert_refused(&malleated.send(&f.envoy), "request_signature_replayed");
}

/// `sig1=:<r||s>:` with `(r, s)` replaced by `(r, n - s)`: a second valid signature of the
/// same base (RFC 9421 §3.3.4 does not require a low `s`), made without any key.
fn malleate(field: &str) -> String {
    let encoded = field
        .strip_prefix("sig1=:")
        .and_then(|s| s.strip_suffix(':'))
        .expect("one signature");
    let bytes = STANDARD.decode(encoded).expect("base64");
    let signature = p256::ecdsa::Signature::from_slice(&bytes).expect("an ECDSA P-256 signature");
    let (r, s) = signature.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -s).expect("n - s is a valid scalar");
    assert_ne!(twin.to_bytes().to_vec(), bytes);
    format!("sig1=:{}:", STANDARD.encode(twin.to_bytes()))
}

#[test]
fn a_signed_response_replayed_for_another_request_fails_the_client_check() {
    let f = fixtures();
    let token = token();
    let first = Exchange::post("/payments", &token).signed(&f.envoy, "ed25519", json!({}));
    let response = first.send(&f.envoy);
    assert_served(&response);
    verify_response(&f.envoy, &first, &response, &[]).expect("the response answers its request");
    // Another request of the same client, token and body (another query).
    let second = Exchange::post("/payments?n=2", &token).signed(&f.envoy, "ed25519", json!({}));
    let error = verify_response(&f.envoy, &second, &response, &[])
        .expect_err("a response replayed for another request must not verify");
    assert!(!error.is_empty());
}

#[test]
fn responses_of_unsigned_requests_are_signed_and_verify_with_each_published_key() {
    let f = fixtures();
    for envoy in [&f.envoy, &f.envoy_p256] {
        let request = Exchange {
            method: "GET".into(),
            path: "/reports/7".into(),
            headers: vec![("authorization".into(), format!("Bearer {}", token()))],
            body: Vec::new(),
        };
        let response = request.send(envoy);
        assert_served(&response);
        verify_response(envoy, &request, &response, &["content-digest"]).expect("verifies");
    }
    let keys = published(&f.envoy);
    let kids: Vec<&str> = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid"))
        .collect();
    assert_eq!(kids, ["resp-ed25519", "resp-p256"]);
    for key in keys["keys"].as_array().expect("keys") {
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "a private key published: {key}");
    }
}

#[test]
fn the_key_set_is_answered_without_a_token_and_cacheable() {
    let f = fixtures();
    let response = HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, JWKS_PATH).send();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("cache-control"),
        Some("public, max-age=300")
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/jwk-set+json")
    );
    assert!(!f.echo.received(&response.test_id));
}

#[test]
fn a_response_too_large_to_sign_is_replaced_with_502() {
    let f = fixtures();
    let request = Exchange {
        method: "POST".into(),
        path: "/reports".into(),
        headers: vec![("authorization".into(), format!("Bearer {}", token()))],
        body: vec![b'a'; MAX_RESPONSE_BYTES],
    };
    let response = request.send(&f.envoy);
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(response.json()["error"], "server_error");
    assert_eq!(response.header("signature"), None);
    assert!(
        f.envoy
            .stat("wasmcustom.tether.refused.response_too_large_to_sign")
            >= 1
    );
}

#[test]
fn a_jws_signed_response_is_bound_to_its_request() {
    let f = fixtures();
    let token = token();
    let request = Exchange {
        method: "GET".into(),
        path: "/statements/3?month=11".into(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        body: Vec::new(),
    };
    let response = request.send(&f.envoy);
    assert_served(&response);
    let jws = response.header("x-jws-signature").expect("a detached JWS");
    let spec = json!({"mode": "verify_jws", "jws": jws, "body": STANDARD.encode(&response.body),
                      "jwks": published(&f.envoy)});
    let checked = run_interop_client("httpsig_exchange.py", &spec);
    assert_eq!(checked["ok"], true, "{checked}");
    let header = &checked["header"];
    assert_eq!(header["htm"], "GET");
    assert_eq!(
        header["htu"],
        format!(
            "https://localhost:{}/statements/3?month=11",
            f.envoy.https_port()
        )
    );
    assert_eq!(header["status"], 200);
    assert_eq!(header["b64"], false);
    assert_eq!(
        header["ath"],
        URL_SAFE_NO_PAD.encode(sha256(token.as_bytes()))
    );
}

#[test]
fn a_signed_request_over_http2_with_a_slow_body_and_trailers_gets_a_signed_response() {
    let f = fixtures();
    let authority = format!("localhost:{}", f.envoy.https_port());
    let request = Exchange::post("/payments", &token()).signed(&f.envoy, "ed25519", json!({}));
    let mut stream = Stream::new("POST", "/payments").authority(&authority);
    for (name, value) in &request.headers {
        stream = stream.header(name, value);
    }
    let stream = stream
        .data(0, &BODY[..10], false)
        .data(300, &BODY[10..], false)
        .trailers(600, &[("x-checksum", "1")]);
    let answer = Frames::new(f.envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send_one(stream);
    assert_eq!(answer.status, Some(200), "{}", answer.body);
    assert!(answer
        .header("signature-input")
        .is_some_and(|v| v.contains("fapi-2-response")));
    // The same signature again over HTTP/2: replayed.
    let mut again = Stream::new("POST", "/payments").authority(&authority);
    for (name, value) in &request.headers {
        again = again.header(name, value);
    }
    let again = again
        .data(0, BODY, false)
        .trailers(100, &[("x-checksum", "1")]);
    let answer = Frames::new(f.envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send_one(again);
    assert_eq!(answer.status, Some(401), "{}", answer.body);
    assert_eq!(answer.header("signature"), None);
}

#[test]
fn a_token_bound_to_a_key_takes_a_signature_whose_keyid_is_the_keys_thumbprint() {
    let f = fixtures();
    let jwk = f.made["jwks"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == "client-ed25519")
        .expect("the Ed25519 key")
        .clone();
    // No client_id: only the token's own key (cnf.jwk, RFC 7800 §3.2) can verify.
    let token = f.issuer.token().claim("cnf", json!({"jwk": jwk})).sign();
    let thumbprint = f.made["thumbprints"]["ed25519"]
        .as_str()
        .expect("thumbprint");
    let keyed = Exchange::post("/keyed/1", &token).signed(
        &f.envoy,
        "ed25519",
        json!({"keyid": thumbprint}),
    );
    assert_served(&keyed.send(&f.envoy));
    // The key's kid is not its thumbprint: refused.
    let by_kid = Exchange::post("/keyed/2", &token).signed(&f.envoy, "ed25519", json!({}));
    assert_refused(&by_kid.send(&f.envoy), "request_signature_key_unknown");
    // Another key, naming the bound key's thumbprint: the signature does not verify.
    let other = Exchange::post("/keyed/3", &token).signed(
        &f.envoy,
        "ecdsa-p256-sha256",
        json!({"keyid": thumbprint, "include_alg": false}),
    );
    assert_refused(&other.send(&f.envoy), "request_signature_invalid");
}
