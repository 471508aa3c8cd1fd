//! End-to-end tests of key sets fetched from a `jwks_uri` through an Envoy cluster: the real
//! Envoy fetches from a key server the test runs, and the filter verifies tokens with what
//! it fetched, picks up a rotated key through an early refetch, and fails closed when the
//! key server is dead.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jws::{self, Signer};
use support::jwt::{Alg, Issuer, SigningKey};
use support::keyserver::{Behaviour, KeyServer};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

struct Setup {
    pki: Pki,
    issuer: Issuer,
    echo: EchoBackend,
    dir: ScratchDir,
}

fn setup() -> Setup {
    let dir = ScratchDir::new("e2e-remote-jwks");
    Setup {
        pki: Pki::generate(&dir.join("pki")),
        issuer: Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE),
        echo: EchoBackend::start(),
        dir,
    }
}

/// Envoy with Tether fetching the issuer's keys from `key_port` through cluster `idp`.
fn envoy(s: &Setup, key_port: u16, timeout_ms: u64) -> Envoy {
    let config = json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "remote_jwks": {"cluster": "idp", "authority": "idp.example.com",
                            "path": "/.well-known/jwks.json", "refresh_seconds": 300,
                            "timeout_ms": timeout_ms},
        }],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    envoy_with(s, key_port, config)
}

/// Envoy with Tether configured by `config`, and the cluster `idp` pointing at `key_port`.
fn envoy_with(s: &Setup, key_port: u16, config: Value) -> Envoy {
    let mut bootstrap = Bootstrap::new(&s.pki, s.echo.port(), Some(config));
    bootstrap.clusters.push(("idp".into(), key_port));
    Envoy::start(&bootstrap)
}

fn call(s: &Setup, envoy: &Envoy, token: &str) -> Response {
    HttpsRequest::new(envoy.https_port(), &s.pki.ca, "/orders")
        .cert(&s.pki.alice)
        .bearer(token)
        .send()
}

fn token(s: &Setup, key: &SigningKey) -> String {
    s.issuer
        .token_signed_with(key)
        .bound_to(&s.pki.alice)
        .sign()
}

#[track_caller]
fn assert_status(response: &Response, status: u16, error_description: Option<&str>) {
    assert_eq!(response.status, status, "{}", response.text());
    if let Some(description) = error_description {
        assert_eq!(
            response.json()["error_description"],
            description,
            "{}",
            response.text()
        );
    }
}

#[test]
fn token_verifies_with_the_fetched_key_set() {
    let s = setup();
    let server = KeyServer::start(&s.issuer.jwks());
    let envoy = envoy(&s, server.port, 2000);
    // The first request may have to wait for the first fetch: it is held, not refused.
    let response = call(&s, &envoy, &token(&s, s.issuer.key(Alg::Es256)));
    assert_status(&response, 200, None);
    assert!(server.hits() >= 1);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.success") >= 1);
    // A forged token is still refused with the fetched keys.
    let response = call(
        &s,
        &envoy,
        &format!("{}x", &token(&s, s.issuer.key(Alg::Es256))[..100]),
    );
    assert_eq!(response.status, 401);
    envoy.stop();
}

#[test]
fn rotated_key_is_picked_up_by_an_early_refetch_at_most_every_30_seconds() {
    let s = setup();
    let server = KeyServer::start(&s.issuer.jwks());
    let envoy = envoy(&s, server.port, 2000);
    assert_status(
        &call(&s, &envoy, &token(&s, s.issuer.key(Alg::Es256))),
        200,
        None,
    );
    let hits_before = server.hits();

    // The identity provider rotates: a new key with a new kid is published.
    let keys_dir = s.dir.join("rotated");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    let rotated = SigningKey::generate(&keys_dir, Alg::Es256, "rotated-1", true);
    let mut jwks = s.issuer.jwks();
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .push(rotated.jwk());
    server.serve(200, &jwks);
    let response = call(&s, &envoy, &token(&s, &rotated));
    assert_status(&response, 200, None);
    assert_eq!(server.hits(), hits_before + 1, "one early refetch");

    // Another unknown kid right after: no second refetch within 30 s, refused at once.
    let unknown = SigningKey::generate(&keys_dir, Alg::Es256, "rotated-2", true);
    let started = Instant::now();
    let response = call(&s, &envoy, &token(&s, &unknown));
    assert_status(&response, 401, Some("no trusted key matches the token"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(server.hits(), hits_before + 1);
    envoy.stop();
}

#[test]
fn failed_refetch_keeps_the_last_good_key_set() {
    let s = setup();
    let server = KeyServer::start(&s.issuer.jwks());
    let envoy = envoy(&s, server.port, 2000);
    let good = token(&s, s.issuer.key(Alg::EdDsa));
    assert_status(&call(&s, &envoy, &good), 200, None);
    server.serve(500, &json!({"error": "down"}));
    let keys_dir = s.dir.join("unknown");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    let unknown = SigningKey::generate(&keys_dir, Alg::Es256, "not-published", true);
    // The unknown kid triggers a refetch; it fails; the token is refused...
    let response = call(&s, &envoy, &token(&s, &unknown));
    assert_eq!(response.status, 401, "{}", response.text());
    // ...and the last good keys still verify.
    assert_status(&call(&s, &envoy, &good), 200, None);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.failure") >= 1);
    envoy.stop();
}

#[test]
fn dead_key_server_fails_closed() {
    let s = setup();
    // A port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let envoy = envoy(&s, dead, 1000);
    let started = Instant::now();
    let response = call(&s, &envoy, &token(&s, s.issuer.key(Alg::Es256)));
    assert_status(
        &response,
        503,
        Some("the key set needed to verify the request is not available"),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}",
        started.elapsed()
    );
    assert!(!s.echo.received(&response.test_id));
    assert!(envoy.stat("wasmcustom.tether.refused.key_set_unavailable") >= 1);
    envoy.stop();
}

/// A client's registered keys can be fetched too: its request signatures verify with them.
/// The client's key set arrives after the issuer's (its key server answers late), so the
/// request, held for the issuer's keys, must wait again for the client's: a regression test
/// for a request that was refused with 503 when its two key sets loaded one after the other.
#[test]
fn client_key_set_is_fetched_for_request_signatures() {
    let s = setup();
    let keys_dir = s.dir.join("client");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    let client_key = SigningKey::generate(&keys_dir, Alg::Es256, "batch-1", true);
    // One key server; the issuer's and the client's sets are two sources (two paths).
    let mut jwks = s.issuer.jwks();
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .push(client_key.jwk());
    let server = KeyServer::start(&jwks);
    let remote = |path: &str| json!({"cluster": "idp", "path": path, "timeout_ms": 2000});
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "remote_jwks": remote("/issuer.json")}],
        "clients": [{"client_id": "batch-job", "remote_jwks": remote("/batch-job-slow.json")}],
        "rules": [{"prefix": "/", "require": "mtls", "signed_request": true}],
    });
    let envoy = envoy_with(&s, server.port, config);
    let token = s
        .issuer
        .token()
        .bound_to(&s.pki.alice)
        .claim("client_id", "batch-job")
        .sign();
    let body = b"{\"batch\":42}";
    let htu = format!("https://localhost:{}/jobs", envoy.https_port());
    let header = jws::protected("ES256", Some("batch-1"), "POST", &htu, &token);
    let signature = jws::detached(&header, body, Signer::Key(&client_key));
    let post = |signature: &str| {
        HttpsRequest::new(envoy.https_port(), &s.pki.ca, "/jobs")
            .cert(&s.pki.alice)
            .bearer(&token)
            .method("POST")
            .header("x-jws-signature", signature)
            .body(body)
            .send()
    };
    assert_status(&post(&signature), 200, None);
    // The same signature again is a replay, whatever the key's origin.
    assert_status(
        &post(&signature),
        401,
        Some("request signature was already used"),
    );
    assert!(server.hits() >= 2, "both key sets fetched");
    envoy.stop();
}

/// Polls `call` until it answers 200 or `within` has passed; the last response.
fn until_served(within: Duration, call: impl Fn() -> Response) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let response = call();
        if response.status == 200 || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[track_caller]
fn assert_no_trap(envoy: &Envoy) {
    let log = envoy.log();
    for sign in ["panicked", "Uncaught RuntimeError", "unreachable"] {
        assert!(!log.contains(sign), "the VM trapped ({sign}):\n{log}");
    }
}

/// A key server that fails in the middle of its answer: Tether must take it as a failed
/// fetch, answer 503 with its own body meanwhile, and serve again once the key server
/// recovers. Regression test for issue 7, finding 3: the VM read `:status` from a response
/// that did not exist, trapped, and answered every later request with an empty 503.
fn key_server_failure_is_a_failed_fetch(behaviour: Behaviour, timeout_ms: u64) {
    let s = setup();
    let server = KeyServer::start_with(behaviour);
    let envoy = envoy(&s, server.port, timeout_ms);
    let token = token(&s, s.issuer.key(Alg::Es256));
    let response = call(&s, &envoy, &token);
    assert_status(
        &response,
        503,
        Some("the key set needed to verify the request is not available"),
    );
    assert_no_trap(&envoy);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.failure") >= 1);
    // A second request (maybe on the other worker) is answered by Tether too.
    assert_status(
        &call(&s, &envoy, &token),
        503,
        Some("the key set needed to verify the request is not available"),
    );
    assert_no_trap(&envoy);
    // The key server recovers: the next fetch, after the 5 s back-off, succeeds.
    server.serve(200, &s.issuer.jwks());
    let response = until_served(Duration::from_secs(15), || call(&s, &envoy, &token));
    assert_status(&response, 200, None);
    assert_no_trap(&envoy);
    envoy.stop();
}

#[test]
fn key_server_reset_after_its_headers_does_not_trap_the_vm() {
    key_server_failure_is_a_failed_fetch(Behaviour::ResetAfterHeaders, 1000);
}

#[test]
fn key_server_stalling_past_the_timeout_does_not_trap_the_vm() {
    key_server_failure_is_a_failed_fetch(Behaviour::Stall { ms: 4000 }, 500);
}

/// Regression test for issue 7, finding 7: one key Tether cannot use in a fetched key set
/// (a 1024-bit RSA key, an EC key claiming `alg: RS256`, an RSA key with only `x5c`, or a
/// 65th key) rejected the whole document, so a rotated-in key was never picked up.
#[test]
fn rotated_key_is_picked_up_beside_keys_tether_cannot_use() {
    let s = setup();
    let server = KeyServer::start(&s.issuer.jwks());
    let envoy = envoy(&s, server.port, 2000);
    assert_status(
        &call(&s, &envoy, &token(&s, s.issuer.key(Alg::Es256))),
        200,
        None,
    );
    let keys_dir = s.dir.join("rotated-beside-odd");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    let rotated = SigningKey::generate(&keys_dir, Alg::Es256, "rotated-1", true);
    // A well-formed 1024-bit modulus: valid RSA, too weak for Tether.
    let mut weak = vec![0xc5u8; 128];
    weak[127] = 0x01;
    let mut misfit = s.issuer.key(Alg::Es256).jwk();
    misfit["kid"] = json!("misfit");
    misfit["alg"] = json!("RS256");
    let mut keys = vec![
        json!({"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode(&weak), "e": "AQAB"}),
        misfit,
        json!({"kty": "RSA", "kid": "x5c-only", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
        rotated.jwk(),
    ];
    // Enough usable keys besides that the document holds 65.
    for i in 0..61 {
        let mut filler = s.issuer.key(Alg::Es256).jwk();
        filler["kid"] = json!(format!("filler-{i}"));
        keys.push(filler);
    }
    server.serve(200, &json!({"keys": keys}));
    let response = call(&s, &envoy, &token(&s, &rotated));
    assert_status(&response, 200, None);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.key_skipped") >= 3);
    assert!(
        envoy.log().contains("keys[0] skipped"),
        "the skipped keys are logged"
    );
    envoy.stop();
}

/// Issue 7, finding 7: an oversized key set document was logged as a bad HTTP status.
#[test]
fn oversized_key_set_document_is_a_failed_fetch_that_says_so() {
    let s = setup();
    let mut jwks = s.issuer.jwks();
    jwks["padding"] = json!("x".repeat(300 * 1024));
    let server = KeyServer::start(&jwks);
    let envoy = envoy(&s, server.port, 2000);
    let response = call(&s, &envoy, &token(&s, s.issuer.key(Alg::Es256)));
    assert_status(
        &response,
        503,
        Some("the key set needed to verify the request is not available"),
    );
    let log = envoy.log();
    assert!(
        log.contains("is larger than 262144") && !log.contains("HTTP status 200"),
        "{log}"
    );
    envoy.stop();
}

/// Waits for `server`'s second request and asserts it came `seconds` after the first. Tether
/// keeps times in whole seconds, so "after n s" is after n - 1 to n s, plus a tick.
#[track_caller]
fn assert_second_fetch_after(server: &KeyServer, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds + 4);
    while server.hits() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let hits = server.hit_times();
    assert!(hits.len() >= 2, "one fetch only: {hits:?}");
    let interval = hits[1] - hits[0];
    let expected = Duration::from_secs(seconds - 1)..Duration::from_secs(seconds + 1);
    assert!(
        expected.contains(&interval),
        "fetched again after {interval:?}"
    );
}

/// The README's promise: the key set is fetched again every `refresh_seconds`.
#[test]
fn key_set_is_fetched_again_every_refresh_seconds() {
    let s = setup();
    let server = KeyServer::start(&s.issuer.jwks());
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                     "remote_jwks": {"cluster": "idp", "path": "/jwks.json", "refresh_seconds": 10}}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    let envoy = envoy_with(&s, server.port, config);
    assert_second_fetch_after(&server, 10);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.success") >= 2);
    envoy.stop();
}

/// The README's promise: a failed fetch is retried after 5 seconds (not at once, not at the
/// next refresh).
#[test]
fn failed_fetch_is_retried_after_5_seconds() {
    let s = setup();
    let server = KeyServer::start(&json!({"error": "down"}));
    server.serve(500, &json!({"error": "down"}));
    let envoy = envoy(&s, server.port, 1000);
    assert_second_fetch_after(&server, 5);
    assert!(envoy.stat("wasmcustom.tether.jwks_fetch.failure") >= 2);
    envoy.stop();
}
