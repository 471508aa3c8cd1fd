//! End-to-end tests of request signatures (detached JWS, RFC 7515 Appendix F and RFC 7797)
//! through the real Envoy: a client signs each request's body, method, URI and token; a
//! captured request cannot be replayed or altered.
//!
//! Signatures are made here the way a client would: the JWS signing input is built by hand
//! and signed by OpenSSL (ES256, EdDSA, RS256) or HMAC-SHA256 (HS256), independently of the
//! filter's verification code.

mod support;

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jws::{self, Signer};
use support::jwt::{Alg, Issuer, SigningKey};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const HEADER: &str = "x-jws-signature";
/// The HS256 secret of the `legacy-erp` client: 32 bytes.
const HMAC_SECRET: &[u8] = b"legacy-erp shared secret, 32 B!!";
/// The environment variable that carries it to the VM.
const HMAC_ENV: &str = "TETHER_LEGACY_ERP_KEY";

struct Fixtures {
    pki: Pki,
    issuer: Issuer,
    /// alice-app's registered signing keys, by algorithm.
    client_keys: Vec<SigningKey>,
    /// A key of alice's own, to which a token can be bound with `cnf.jwk`.
    holder_key: SigningKey,
    /// The two ES256 keys of the `rotating-app` client (a rotation in progress).
    rotating_keys: [SigningKey; 2],
    echo: EchoBackend,
    envoy: Envoy,
    _dir: ScratchDir,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("e2e-signed");
        let pki = Pki::generate(&dir.join("pki"));
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        let keys_dir = dir.join("client");
        std::fs::create_dir_all(&keys_dir).expect("client key dir");
        let client_keys = vec![
            SigningKey::generate(&keys_dir, Alg::Es256, "alice-es256", true),
            SigningKey::generate(&keys_dir, Alg::EdDsa, "alice-eddsa", true),
            SigningKey::generate(&keys_dir, Alg::Rs256, "alice-rs256", true),
        ];
        let holder_key = SigningKey::generate(&keys_dir, Alg::Es256, "holder", false);
        let rotating_keys = [
            SigningKey::generate(&keys_dir, Alg::Es256, "rotating-old", true),
            SigningKey::generate(&keys_dir, Alg::Es256, "rotating-new", true),
        ];
        let echo = EchoBackend::start();
        let config = json!({
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
            "clients": [
                {"client_id": "alice-app",
                 "jwks": {"keys": client_keys.iter().map(SigningKey::jwk).collect::<Vec<Value>>()}},
                // The shared secret by name: Envoy's /config_dump must not show it.
                {"client_id": "legacy-erp",
                 "hmac_keys": [{"kid": "erp-1", "k": {"env": HMAC_ENV}}]},
                {"client_id": "rotating-app",
                 "jwks": {"keys": rotating_keys.iter().map(SigningKey::jwk).collect::<Vec<Value>>()}}
            ],
            "signed_requests": {"header": HEADER, "max_age_seconds": 60, "max_body_bytes": 4096},
            "rules": [
                {"prefix": "/payments", "require": "mtls", "signed_request": true},
                {"prefix": "/", "require": "bound"}
            ],
        });
        let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
        bootstrap
            .vm_env
            .push((HMAC_ENV.into(), URL_SAFE_NO_PAD.encode(HMAC_SECRET)));
        let envoy = Envoy::start(&bootstrap);
        Fixtures {
            pki,
            issuer,
            client_keys,
            holder_key,
            rotating_keys,
            echo,
            envoy,
            _dir: dir,
        }
    })
}

fn client_key(alg: Alg) -> &'static SigningKey {
    fixtures()
        .client_keys
        .iter()
        .find(|k| k.alg == alg)
        .expect("client key")
}

/// A token for `client_id`, bound to alice's certificate.
fn token_for(client_id: &str) -> String {
    let f = fixtures();
    f.issuer
        .token()
        .bound_to(&f.pki.alice)
        .claim("client_id", client_id)
        .sign()
}

/// The protected header of a request signature to this test's Envoy.
fn protected(alg: &str, kid: Option<&str>, method: &str, path: &str, token: &str) -> Value {
    let port = fixtures().envoy.https_port();
    jws::protected(
        alg,
        kid,
        method,
        &format!("https://localhost:{port}{path}"),
        token,
    )
}

/// The detached JWS of `body`, signed with `key` or (`None`) the HMAC secret.
fn detached(header: &Value, body: &[u8], key: Option<&SigningKey>) -> String {
    let signer = key.map_or(Signer::Hmac(HMAC_SECRET), Signer::Key);
    jws::detached(header, body, signer)
}

fn post(path: &str, token: &str, body: &[u8], signature: Option<&str>) -> Response {
    let f = fixtures();
    let mut request = HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, path)
        .cert(&f.pki.alice)
        .bearer(token)
        .method("POST")
        .body(body);
    if let Some(signature) = signature {
        request = request.header(HEADER, signature);
    }
    request.send()
}

/// POSTs `BODY` to `path` with `token`, signed under `header` by `key`.
fn signed_post(path: &str, token: &str, header: &Value, key: &SigningKey) -> Response {
    post(path, token, BODY, Some(&detached(header, BODY, Some(key))))
}

const BODY: &[u8] = b"{\"amount\":\"10.00\",\"to\":\"bob\"}";

#[track_caller]
fn assert_served(response: &Response) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(fixtures().echo.received(&response.test_id));
    assert_eq!(
        response.json()["body"],
        String::from_utf8_lossy(BODY).as_ref()
    );
}

#[track_caller]
fn assert_signature_refused(response: &Response, reason: &str, description: &str) {
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"tether\", error=\"invalid_signature\", error_description=\"{description}\""
            )
            .as_str()
        ),
        "{reason}"
    );
    assert_eq!(response.json()["error"], "invalid_signature");
    assert!(!fixtures().echo.received(&response.test_id));
    let counter = format!("wasmcustom.tether.refused.{reason}");
    assert!(fixtures().envoy.stat(&counter) >= 1, "{counter}");
}

#[test]
fn signed_post_with_each_client_algorithm_is_served() {
    let token = token_for("alice-app");
    for alg in [Alg::Es256, Alg::EdDsa, Alg::Rs256] {
        let key = client_key(alg);
        let header = protected(alg.name(), Some(&key.kid), "POST", "/payments", &token);
        let response = signed_post("/payments", &token, &header, key);
        assert_served(&response);
    }
}

#[test]
fn signed_post_with_the_encoded_payload_form_is_served() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let mut header = protected("ES256", Some(&key.kid), "POST", "/payments?x=1", &token);
    let object = header.as_object_mut().expect("object");
    object.remove("b64");
    object.remove("crit");
    let response = signed_post("/payments?x=1", &token, &header, key);
    assert_served(&response);
}

#[test]
fn hmac_signed_post_of_a_shared_secret_client_is_served() {
    let token = token_for("legacy-erp");
    let header = protected("HS256", Some("erp-1"), "POST", "/payments", &token);
    let response = post(
        "/payments",
        &token,
        BODY,
        Some(&detached(&header, BODY, None)),
    );
    assert_served(&response);
}

/// Issue 7 ("secrets in Envoy's config dump"): a secret given as `{"env": ...}` is used (the
/// HMAC test above) and never shown by Envoy's admin `/config_dump`.
#[test]
fn hmac_secret_from_the_environment_stays_out_of_the_config_dump() {
    let dump = fixtures()
        .envoy
        .admin_get("/config_dump")
        .expect("config dump");
    assert!(dump.contains(HMAC_ENV), "the dump shows the configuration");
    assert!(!dump.contains(&URL_SAFE_NO_PAD.encode(HMAC_SECRET)));
}

#[test]
fn body_changed_by_one_byte_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let signature = detached(&header, BODY, Some(key));
    let mut changed = BODY.to_vec();
    changed[12] = b'9';
    let response = post("/payments", &token, &changed, Some(&signature));
    assert_signature_refused(
        &response,
        "request_signature_invalid",
        "request signature is invalid",
    );
}

#[test]
fn signature_for_another_method_or_path_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let put = protected("ES256", Some(&key.kid), "PUT", "/payments", &token);
    let response = signed_post("/payments", &token, &put, key);
    assert_signature_refused(
        &response,
        "request_signature_mismatch",
        "request signature does not match the request",
    );
    let other = protected("ES256", Some(&key.kid), "POST", "/payments/other", &token);
    let response = signed_post("/payments", &token, &other, key);
    assert_signature_refused(
        &response,
        "request_signature_mismatch",
        "request signature does not match the request",
    );
}

#[test]
fn signature_naming_another_token_is_refused() {
    let f = fixtures();
    let token = token_for("alice-app");
    let other = f
        .issuer
        .token()
        .bound_to(&f.pki.alice)
        .claim("client_id", "alice-app")
        .claim("jti", "another-token")
        .sign();
    assert_ne!(other, token);
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &other);
    let response = signed_post("/payments", &token, &header, key);
    assert_signature_refused(
        &response,
        "request_signature_mismatch",
        "request signature does not match the request",
    );
}

#[test]
fn old_signature_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let mut header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    header["iat"] = json!(support::now() - 120);
    let response = signed_post("/payments", &token, &header, key);
    assert_signature_refused(
        &response,
        "request_signature_expired",
        "request signature is expired or not yet valid",
    );
}

#[test]
fn replayed_signature_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::EdDsa);
    let header = protected("EdDSA", Some(&key.kid), "POST", "/payments", &token);
    let signature = detached(&header, BODY, Some(key));
    assert_served(&post("/payments", &token, BODY, Some(&signature)));
    let replay = post("/payments", &token, BODY, Some(&signature));
    assert_signature_refused(
        &replay,
        "request_signature_replayed",
        "request signature was already used",
    );
}

/// Regression test for issue 7, finding 4: the replay record was keyed by the signature's
/// bytes, so the malleated twin `(r, n - s)` of a captured ES256 signature, which Envoy's
/// BoringSSL verifies too, was accepted once more.
#[test]
fn malleated_twin_of_a_used_ecdsa_signature_is_a_replay() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let signature = detached(&header, BODY, Some(key));
    let twin = jws::malleate_es256(&signature);
    assert_ne!(twin, signature);
    assert_served(&post("/payments", &token, BODY, Some(&signature)));
    assert_signature_refused(
        &post("/payments", &token, BODY, Some(&twin)),
        "request_signature_replayed",
        "request signature was already used",
    );
}

/// The twin alone, never used before, verifies: the test above fails for the reason it names.
#[test]
fn malleated_twin_of_a_fresh_ecdsa_signature_verifies() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let twin = jws::malleate_es256(&detached(&header, BODY, Some(key)));
    assert_served(&post("/payments", &token, BODY, Some(&twin)));
}

#[test]
fn unknown_kid_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some("not-registered"), "POST", "/payments", &token);
    let response = signed_post("/payments", &token, &header, key);
    assert_signature_refused(
        &response,
        "request_signature_key_unknown",
        "no registered key for the request signature",
    );
}

#[test]
fn client_without_registered_keys_is_refused() {
    let token = token_for("unregistered-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let response = signed_post("/payments", &token, &header, key);
    assert_signature_refused(
        &response,
        "request_signature_key_unknown",
        "no registered key for the request signature",
    );
}

#[test]
fn missing_signature_on_a_signed_route_is_refused() {
    let response = post("/payments", &token_for("alice-app"), BODY, None);
    assert_signature_refused(
        &response,
        "request_signature_missing",
        "request signature is missing",
    );
}

#[test]
fn attached_payload_is_refused() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let attached = detached(&header, BODY, Some(key)).replacen(
        "..",
        &format!(".{}.", URL_SAFE_NO_PAD.encode(BODY)),
        1,
    );
    let response = post("/payments", &token, BODY, Some(&attached));
    assert_signature_refused(
        &response,
        "request_signature_malformed",
        "request signature is malformed",
    );
}

/// A token bound to a key (RFC 7800 `cnf.jwk`) is accepted only with a signature by that key.
#[test]
fn key_bound_token_needs_a_signature_by_its_key() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim("cnf", json!({"jwk": f.holder_key.jwk()}))
        .sign();
    let without = post("/anything", &token, BODY, None);
    assert_signature_refused(
        &without,
        "request_signature_missing",
        "request signature is missing",
    );
    let header = protected("ES256", None, "POST", "/anything", &token);
    let by_another_key = detached(&header, BODY, Some(client_key(Alg::Es256)));
    let response = post("/anything", &token, BODY, Some(&by_another_key));
    assert_signature_refused(
        &response,
        "request_signature_invalid",
        "request signature is invalid",
    );
    let header = protected("ES256", None, "POST", "/anything", &token);
    let response = post(
        "/anything",
        &token,
        BODY,
        Some(&detached(&header, BODY, Some(&f.holder_key))),
    );
    assert_served(&response);
}

#[test]
fn oversized_body_is_refused_with_413() {
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let big = vec![b'x'; 8192];
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let response = post(
        "/payments",
        &token,
        &big,
        Some(&detached(&header, &big, Some(key))),
    );
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"], "request_too_large");
    assert!(!fixtures().echo.received(&response.test_id));
}

/// Hostile signature headers are refused, and the next good request is served: nothing in a
/// signature can take the VM down.
#[test]
fn garbage_signatures_are_refused_and_the_next_request_is_served() {
    let f = fixtures();
    let token = token_for("alice-app");
    let huge = "A".repeat(20_000);
    for garbage in [
        &b"..\xff\xfe"[..],
        b"....",
        b"e30..",
        huge.as_bytes(),
        b"\x01\x02\x03",
    ] {
        let response = HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, "/payments")
            .cert(&f.pki.alice)
            .bearer(&token)
            .method("POST")
            .raw_header(HEADER, garbage)
            .body(BODY)
            .send();
        assert!(
            response.status == 401 || response.status == 400,
            "{}: {}",
            response.status,
            response.text()
        );
        assert!(!f.echo.received(&response.test_id));
    }
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    assert_served(&signed_post("/payments", &token, &header, key));
}

/// The README's promise: a forged signature cannot burn a genuine one. The replay record is
/// keyed by what was signed, so a forgery of the same header and body would share the
/// genuine request's entry; it is recorded only once a signature verifies.
#[test]
fn forged_signature_does_not_burn_the_genuine_one() {
    let f = fixtures();
    let token = token_for("alice-app");
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    let genuine = detached(&header, BODY, Some(key));
    // The same protected header and body, signed by someone else.
    let forged = jws::detached(&header, BODY, Signer::Key(&f.holder_key));
    assert_eq!(
        forged.split("..").next(),
        genuine.split("..").next(),
        "same header"
    );
    assert_signature_refused(
        &post("/payments", &token, BODY, Some(&forged)),
        "request_signature_invalid",
        "request signature is invalid",
    );
    assert_served(&post("/payments", &token, BODY, Some(&genuine)));
}

/// The README's promise: the client is found by `azp` when the token has no `client_id`.
#[test]
fn client_is_found_by_azp_without_client_id() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .bound_to(&f.pki.alice)
        .without_claim("client_id")
        .claim("azp", "alice-app")
        .sign();
    let key = client_key(Alg::Es256);
    let header = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    assert_served(&signed_post("/payments", &token, &header, key));
}

/// The README's promise: a token whose `cnf` names both a certificate and a key must prove
/// both: the connection's certificate and a signature by the key.
#[test]
fn token_bound_to_a_certificate_and_a_key_needs_both() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim(
            "cnf",
            json!({"x5t#S256": f.pki.alice.x5t_s256(), "jwk": f.holder_key.jwk()}),
        )
        .sign();
    let header = protected("ES256", None, "POST", "/anything", &token);
    let signature = detached(&header, BODY, Some(&f.holder_key));
    let send = |cert: &support::pki::ClientCert, signature: Option<&str>| {
        let mut request = HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, "/anything")
            .cert(cert)
            .bearer(&token)
            .method("POST")
            .body(BODY);
        if let Some(signature) = signature {
            request = request.header(HEADER, signature);
        }
        request.send()
    };
    // Mallory's connection: the certificate binding fails first.
    let response = send(&f.pki.mallory, Some(&signature));
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        response.json()["error_description"],
        "token is bound to another certificate"
    );
    // Alice's connection without the signature: the key binding fails.
    assert_signature_refused(
        &send(&f.pki.alice, None),
        "request_signature_missing",
        "request signature is missing",
    );
    assert_served(&send(&f.pki.alice, Some(&signature)));
}

/// The README's promise: a signature may omit `kid` only when the client has one key of its
/// algorithm. With two (a rotation), a signature without `kid` names no key.
#[test]
fn missing_kid_with_several_keys_of_the_algorithm_is_refused() {
    let f = fixtures();
    let token = token_for("rotating-app");
    let key = &f.rotating_keys[1];
    let without_kid = protected("ES256", None, "POST", "/payments", &token);
    assert_signature_refused(
        &signed_post("/payments", &token, &without_kid, key),
        "request_signature_key_unknown",
        "no registered key for the request signature",
    );
    let with_kid = protected("ES256", Some(&key.kid), "POST", "/payments", &token);
    assert_served(&signed_post("/payments", &token, &with_kid, key));
}
