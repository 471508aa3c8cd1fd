//! Opaque access tokens introspected (RFC 7662) through an Envoy cluster (issue 12), with an
//! endpoint the test controls: the cache (one call for many requests, never past `exp`), the
//! negative cache, the calls shared by concurrent requests, and every way the endpoint can
//! fail, each refused with 503 and never served. The real authorization server,
//! oidc-provider, is `tests/e2e_oidc_introspection.rs`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::introspection::{IntrospectionServer, Reply};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://as.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const TIMEOUT_MS: u64 = 500;

struct Fixture {
    _dir: ScratchDir,
    pki: Pki,
    server: IntrospectionServer,
    echo: EchoBackend,
    envoy: Envoy,
}

/// Tether with one introspecting issuer, in Envoy with `workers` worker threads (each has its
/// own VM, its own calls and its own cache).
fn fixture(cache_seconds: u64, workers: u32) -> Fixture {
    fixture_with(cache_seconds, workers, 64)
}

fn fixture_with(cache_seconds: u64, workers: u32, max_in_flight: usize) -> Fixture {
    let dir = ScratchDir::new("e2e-introspection");
    let pki = Pki::generate(&dir.join("pki"));
    let server = IntrospectionServer::start();
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "introspection": {
                "cluster": "as", "authority": "as.example.com", "path": "/introspect",
                "client_id": "orders-api", "client_secret": {"env": "TETHER_TEST_INTROSPECTION_SECRET"},
                "timeout_ms": TIMEOUT_MS, "cache_seconds": cache_seconds, "negative_cache_seconds": 5,
                "max_in_flight": max_in_flight
            }
        }],
        "rules": [{"prefix": "/legacy", "require": "bearer"}, {"prefix": "/", "require": "mtls"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.clusters = vec![("as".into(), server.port)];
    bootstrap.concurrency = Some(workers);
    bootstrap.vm_env = vec![(
        "TETHER_TEST_INTROSPECTION_SECRET".into(),
        "s3cret with spaces&more".into(),
    )];
    let envoy = Envoy::start(&bootstrap);
    Fixture {
        _dir: dir,
        pki,
        server,
        echo,
        envoy,
    }
}

fn active(extra: Value) -> Value {
    let now = support::now();
    let mut m = json!({"active": true, "iss": ISSUER, "aud": AUDIENCE, "client_id": "alice-app",
                       "sub": "alice", "token_type": "Bearer", "iat": now, "exp": now + 300});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}

fn get(f: &Fixture, path: &str, token: &str) -> HttpsRequest {
    HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, path).bearer(token)
}

/// Sends `requests` at once, each from its own thread, and asserts that each was served.
fn all_served_together(requests: Vec<HttpsRequest>) {
    let handles: Vec<_> = requests
        .into_iter()
        .map(|request| std::thread::spawn(move || request.send().status))
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("request thread"), 200);
    }
}

fn refused_with(f: &Fixture, request: HttpsRequest, status: u16, reason: &str) {
    let counter = format!("wasmcustom.tether.refused.{reason}");
    let before = f.envoy.stat(&counter);
    let response = request.send();
    assert_eq!(response.status, status, "{reason}: {}", response.text());
    assert_eq!(f.envoy.stat(&counter), before + 1, "{counter}");
    assert!(!f.echo.received(&response.test_id), "{reason}");
}

#[test]
fn an_opaque_token_is_introspected_once_and_served_from_the_cache() {
    let f = fixture(60, 1);
    let token = "opaque-2YotnFZFEjr1zCsicMWpAA";
    let thumbprint = f.pki.alice.x5t_s256();
    f.server.reply(
        token,
        Reply::json(&active(json!({"cnf": {"x5t#S256": thumbprint}}))),
    );
    for _ in 0..5 {
        let response = get(&f, "/orders/1", token).cert(&f.pki.alice).send();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(f.server.calls(token), 1, "one call for five requests");
    // RFC 6749 §2.3.1: the secret form-urlencoded before base64 (`+` for a space, %26 for &).
    let basic = f.server.last_authorization().expect("authorization");
    let decoded = base64_decode(basic.strip_prefix("Basic ").expect("Basic"));
    assert_eq!(decoded, "orders-api:s3cret+with+spaces%26more");
    // The same token over another certificate: the binding, every time.
    refused_with(
        &f,
        get(&f, "/orders/1", token).cert(&f.pki.mallory),
        401,
        "certificate_mismatch",
    );
    assert_eq!(f.server.calls(token), 1);
    assert_eq!(f.envoy.stat("wasmcustom.tether.introspection.sent"), 1);
}

#[test]
fn inactive_and_junk_tokens_are_refused_and_asked_about_once() {
    let f = fixture(60, 1);
    for _ in 0..3 {
        refused_with(
            &f,
            get(&f, "/legacy/1", "junk-token-1"),
            401,
            "token_inactive",
        );
    }
    assert_eq!(f.server.calls("junk-token-1"), 1, "the negative cache");
    let response = get(&f, "/legacy/1", "junk-token-1").send();
    assert!(response
        .header("www-authenticate")
        .is_some_and(|c| c.contains("error=\"invalid_token\"")));
}

#[test]
fn an_endpoint_that_fails_is_never_a_reason_to_serve() {
    let f = fixture(60, 1);
    let late = "late-token";
    f.server
        .reply(late, Reply::json(&active(json!({}))).late(TIMEOUT_MS * 3));
    let started = Instant::now();
    refused_with(
        &f,
        get(&f, "/legacy/1", late),
        503,
        "introspection_unavailable",
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(TIMEOUT_MS * 3),
        "waited {waited:?}: the answer came late, the refusal must not wait for it"
    );
    for (token, reply, reason) in [
        (
            "error-token",
            Reply {
                status: 500,
                content_type: "application/json".into(),
                body: "{}".into(),
                delay_ms: 0,
            },
            "introspection_unavailable",
        ),
        (
            "html-token",
            Reply {
                status: 200,
                content_type: "text/html".into(),
                body: "<html>".into(),
                delay_ms: 0,
            },
            "introspection_invalid",
        ),
        (
            "stringly-token",
            Reply::json(&json!({"active": "true"})),
            "introspection_invalid",
        ),
    ] {
        f.server.reply(token, reply);
        refused_with(&f, get(&f, "/legacy/1", token), 503, reason);
    }
    assert!(f.envoy.stat("wasmcustom.tether.introspection.failed") >= 4);
    assert!(f
        .envoy
        .log()
        .contains("tether: introspection through cluster as failed"));
    // The token never reaches the log.
    assert!(!f.envoy.log().contains("error-token"));
}

/// Asks twice within the answer's time, then again after it (the cache counts whole seconds:
/// an answer kept 2 s is kept at least 1 s), and the server has revoked the token meanwhile.
fn kept_then_asked_again(f: &Fixture, token: &str) {
    assert_eq!(get(f, "/legacy/1", token).send().status, 200);
    assert_eq!(get(f, "/legacy/1", token).send().status, 200);
    assert_eq!(f.server.calls(token), 1);
    std::thread::sleep(Duration::from_millis(3100));
    f.server
        .reply(token, Reply::json(&json!({"active": false})));
    refused_with(f, get(f, "/legacy/1", token), 401, "token_inactive");
    assert_eq!(f.server.calls(token), 2);
}

#[test]
fn an_answer_is_not_kept_past_cache_seconds() {
    let f = fixture(2, 1);
    let token = "short-lived";
    f.server.reply(token, Reply::json(&active(json!({}))));
    kept_then_asked_again(&f, token);
}

#[test]
fn an_answer_is_not_kept_past_the_tokens_exp() {
    let f = fixture(60, 1);
    let token = "expiring";
    // Active, with an `exp` 2 s away: kept that long, not 60 s.
    f.server.reply(
        token,
        Reply::json(&active(json!({"exp": support::now() + 2}))),
    );
    kept_then_asked_again(&f, token);
}

/// Each worker's VM asks once, whatever number of its requests carry the token at once.
#[test]
fn concurrent_requests_with_one_token_share_one_call_per_worker() {
    let f = fixture(60, 2);
    let token = "shared-token";
    f.server
        .reply(token, Reply::json(&active(json!({}))).late(200));
    all_served_together((0..6).map(|_| get(&f, "/legacy/1", token)).collect());
    let calls = f.server.calls(token);
    assert!((1..=2).contains(&calls), "{calls} calls from 2 workers");
}

/// With `max_in_flight` calls out, a request with another new token waits for one to come
/// back (within `timeout_ms`), then asks: found by an attacker's review of issue 12, where it
/// was turned away at once, so that made-up tokens could lock out new genuine ones.
#[test]
fn a_new_token_waits_for_a_free_call_rather_than_being_turned_away() {
    let f = fixture_with(60, 1, 1);
    for token in ["first-token", "second-token"] {
        f.server
            .reply(token, Reply::json(&active(json!({}))).late(150));
    }
    all_served_together(
        ["first-token", "second-token"]
            .into_iter()
            .map(|token| get(&f, "/legacy/1", token))
            .collect(),
    );
    assert_eq!(f.server.calls("first-token"), 1);
    assert_eq!(f.server.calls("second-token"), 1);
    // An opaque token longer than 2 KiB is not asked about.
    let long = "x".repeat(2049);
    refused_with(&f, get(&f, "/legacy/1", &long), 401, "token_too_large");
    assert_eq!(f.server.calls(&long), 0);
}

fn base64_decode(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64"),
    )
    .expect("UTF-8")
}
