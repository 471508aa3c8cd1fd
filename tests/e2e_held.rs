//! End-to-end tests of held requests: a request that Tether holds (for its body, or for a key
//! set) is decided before anything of it goes upstream, however its frames arrive: with
//! HTTP/2 trailers, an HTTP/1.1 chunked body with a trailer section, a body that comes late,
//! or a body that never comes.
//!
//! Regression tests for the attacker's review of v0.1 (issue 7, findings 1 and 2): trailers
//! released held requests unchecked, and a body sent after a signature's window replayed it.
//! Frames are sent by Python's `h2` (tests/interop/h2_client.py), an independent HTTP/2 client.

mod support;

use std::sync::OnceLock;

use serde_json::{json, Value};

use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::frames::{Answer, Frames, Protocol, Stream};
use support::jws::{self, Signer};
use support::jwt::{Alg, Issuer, SigningKey};
use support::keyserver::{Behaviour, KeyServer};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const BODY: &[u8] = b"{\"amount\":\"10.00\",\"to\":\"bob\"}";
/// Short, so that the slow-body test can outlast a signature's window...
const MAX_AGE_SECONDS: u64 = 2;
/// ...within the body deadline.
const BODY_TIMEOUT_MS: u64 = 6000;
const MAX_BODY_BYTES: usize = 4096;

struct Fixtures {
    pki: Pki,
    issuer: Issuer,
    /// alice-app's registered key.
    client_key: SigningKey,
    /// A key nobody registered: what a forger signs with.
    forger_key: SigningKey,
    echo: EchoBackend,
    envoy: Envoy,
    _dir: ScratchDir,
}

fn config(issuer: &Issuer, client_key: &SigningKey) -> Value {
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "clients": [{"client_id": "alice-app", "jwks": {"keys": [client_key.jwk()]}}],
        "signed_requests": {"max_age_seconds": MAX_AGE_SECONDS, "body_timeout_ms": BODY_TIMEOUT_MS,
                            "max_body_bytes": MAX_BODY_BYTES},
        "rules": [
            {"prefix": "/payments", "require": "mtls", "signed_request": true},
            {"prefix": "/", "require": "bound"}
        ],
        "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}],
    })
}

/// One Envoy speaking HTTP/2 and HTTP/1.1 with trailers, with a signed route.
fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("e2e-held");
        let pki = Pki::generate(&dir.join("pki"));
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).expect("key dir");
        let client_key = SigningKey::generate(&keys, Alg::Es256, "alice-es256", true);
        // Same kid as the real key (so a directory of its own: the key file is named by kid):
        // the forger names the key they want to be checked with.
        let forged = dir.join("forger");
        std::fs::create_dir_all(&forged).expect("forger key dir");
        let forger_key = SigningKey::generate(&forged, Alg::Es256, "alice-es256", true);
        let echo = EchoBackend::start();
        let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config(&issuer, &client_key)));
        bootstrap.http2 = true;
        bootstrap.enable_trailers = true;
        let envoy = Envoy::start(&bootstrap);
        Fixtures {
            pki,
            issuer,
            client_key,
            forger_key,
            echo,
            envoy,
            _dir: dir,
        }
    })
}

fn frames(protocol: Protocol) -> Frames<'static> {
    let f = fixtures();
    Frames::new(f.envoy.https_port(), &f.pki, protocol).cert(&f.pki.alice)
}

fn token() -> String {
    let f = fixtures();
    f.issuer.token().bound_to(&f.pki.alice).sign()
}

/// A request to `path` on the fixture's Envoy, with `token` and (if any) `signature`.
fn request(method: &str, path: &str, token: &str, signature: Option<&str>) -> Stream {
    let authority = format!("localhost:{}", fixtures().envoy.https_port());
    let stream = Stream::new(method, path)
        .authority(&authority)
        .header("authorization", &format!("Bearer {token}"));
    match signature {
        Some(signature) => stream.header("x-jws-signature", signature),
        None => stream,
    }
}

/// The detached JWS of `body` for `method` `path` with `token`, signed by `key`.
fn signature(key: &SigningKey, method: &str, path: &str, token: &str, body: &[u8]) -> String {
    let htu = format!("https://localhost:{}{path}", fixtures().envoy.https_port());
    let header = jws::protected("ES256", Some(&key.kid), method, &htu, token);
    jws::detached(&header, body, Signer::Key(key))
}

#[track_caller]
fn assert_refused(answer: &Answer, status: u16, reason: &str) {
    assert_eq!(answer.status, Some(status), "{answer:?}");
    let counter = format!("wasmcustom.tether.refused.{reason}");
    assert!(
        fixtures().envoy.stat(&counter) >= 1,
        "{counter} not counted: {answer:?}"
    );
}

#[track_caller]
fn assert_served(answer: &Answer) {
    assert_eq!(answer.status, Some(200), "{answer:?}");
    assert_eq!(
        answer.json()["body"],
        String::from_utf8_lossy(BODY).as_ref()
    );
}

#[test]
fn h2_trailers_cannot_release_a_forged_signature() {
    let f = fixtures();
    let token = token();
    let forged = signature(&f.forger_key, "POST", "/payments", &token, BODY);
    let answer = frames(Protocol::H2).send_one(
        request("POST", "/payments", &token, Some(&forged))
            .data(0, BODY, false)
            .trailers(100, &[("x-checksum", "1")]),
    );
    assert_refused(&answer, 401, "request_signature_invalid");
}

#[test]
fn h2_trailers_cannot_release_a_replayed_signature() {
    let f = fixtures();
    let token = token();
    let genuine = signature(&f.client_key, "POST", "/payments", &token, BODY);
    let send = || {
        frames(Protocol::H2).send_one(
            request("POST", "/payments", &token, Some(&genuine))
                .data(0, BODY, false)
                .trailers(100, &[("x-checksum", "1")]),
        )
    };
    // The genuine request, trailers and all, is served once...
    let first = send();
    assert_served(&first);
    assert_eq!(first.json()["trailers"]["x-checksum"], json!(["1"]));
    // ...and its replay is refused.
    assert_refused(&send(), 401, "request_signature_replayed");
}

#[test]
fn h2_trailers_cannot_release_a_key_bound_token_without_its_signature() {
    let f = fixtures();
    // A stolen token bound to the holder's key (RFC 7800 `cnf.jwk`), on a route that does not
    // itself ask for a signature: the binding does.
    let token = f
        .issuer
        .token()
        .claim("cnf", json!({"jwk": f.client_key.jwk()}))
        .sign();
    let forged = signature(&f.forger_key, "POST", "/orders", &token, BODY);
    let answer = frames(Protocol::H2).send_one(
        request("POST", "/orders", &token, Some(&forged))
            .data(0, BODY, false)
            .trailers(100, &[("x-checksum", "1")]),
    );
    assert_refused(&answer, 401, "request_signature_invalid");
}

#[test]
fn h2_get_with_trailers_and_no_data_is_still_checked() {
    let f = fixtures();
    let token = token();
    let forged = signature(&f.forger_key, "GET", "/payments", &token, b"");
    let answer = frames(Protocol::H2).send_one(
        request("GET", "/payments", &token, Some(&forged)).trailers(100, &[("x-checksum", "1")]),
    );
    assert_refused(&answer, 401, "request_signature_invalid");
    // The genuine GET with trailers only is served.
    let genuine = signature(&f.client_key, "GET", "/payments", &token, b"");
    let answer = frames(Protocol::H2).send_one(
        request("GET", "/payments", &token, Some(&genuine)).trailers(100, &[("x-checksum", "1")]),
    );
    assert_eq!(answer.status, Some(200), "{answer:?}");
}

#[test]
fn http1_chunked_trailers_cannot_release_a_forged_signature() {
    let f = fixtures();
    let token = token();
    let forged = signature(&f.forger_key, "POST", "/payments", &token, BODY);
    let answer = frames(Protocol::Http11).send_one(
        request("POST", "/payments", &token, Some(&forged))
            .data(0, BODY, false)
            .trailers(100, &[("x-checksum", "1")]),
    );
    assert_refused(&answer, 401, "request_signature_invalid");
    let genuine = signature(&f.client_key, "POST", "/payments", &token, BODY);
    let answer = frames(Protocol::Http11).send_one(
        request("POST", "/payments", &token, Some(&genuine))
            .data(0, BODY, false)
            .trailers(100, &[("x-checksum", "1")]),
    );
    assert_served(&answer);
}

/// The body of a captured request sent after its signature's window (and its replay record)
/// has passed, on several streams at once: every copy is refused as expired.
#[test]
fn slow_body_cannot_replay_a_signature_after_its_window() {
    let f = fixtures();
    let token = token();
    let genuine = signature(&f.client_key, "POST", "/payments", &token, BODY);
    let first = frames(Protocol::H2)
        .send_one(request("POST", "/payments", &token, Some(&genuine)).data(0, BODY, true));
    assert_served(&first);
    // The window is MAX_AGE_SECONDS; the record keeps the signature one second longer.
    let late_ms = (MAX_AGE_SECONDS + 2) * 1000;
    let copies: Vec<Stream> = (0..3)
        .map(|_| request("POST", "/payments", &token, Some(&genuine)).data(late_ms, BODY, true))
        .collect();
    let answers = frames(Protocol::H2).send(&copies);
    for answer in &answers {
        assert_ne!(answer.status, Some(200), "a replay was served: {answer:?}");
        assert_eq!(answer.status, Some(401), "{answer:?}");
    }
    assert!(
        fixtures()
            .envoy
            .stat("wasmcustom.tether.refused.request_signature_expired")
            >= 3
    );
}

#[test]
fn body_that_never_arrives_is_refused_with_408_after_the_deadline() {
    let f = fixtures();
    let token = token();
    let genuine = signature(&f.client_key, "POST", "/payments", &token, BODY);
    let answer =
        frames(Protocol::H2).send_one(request("POST", "/payments", &token, Some(&genuine)).stall());
    assert_refused(&answer, 408, "body_timeout");
    assert_eq!(answer.json()["error"], "request_timeout");
    let at = answer.answered_at_ms.expect("answered");
    assert!(
        (BODY_TIMEOUT_MS..BODY_TIMEOUT_MS + 2000).contains(&at),
        "answered after {at} ms"
    );
}

/// Envoy with Tether fetching the issuer's keys from `server`, over HTTP/2.
fn remote_envoy(f: &Fixtures, server: &KeyServer) -> Envoy {
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                     "remote_jwks": {"cluster": "idp", "path": "/jwks.json", "timeout_ms": 5000}}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    let mut bootstrap = Bootstrap::new(&f.pki, f.echo.port(), Some(config));
    bootstrap.http2 = true;
    bootstrap.clusters.push(("idp".into(), server.port));
    Envoy::start(&bootstrap)
}

/// A POST with `token`, DATA and trailers.
fn post_with_trailers(token: &str) -> Stream {
    Stream::new("POST", "/orders")
        .header("authorization", &format!("Bearer {token}"))
        .data(0, BODY, false)
        .trailers(100, &[("x-checksum", "1")])
}

#[test]
fn h2_trailers_cannot_release_a_token_held_for_its_key_set() {
    let f = fixtures();
    // The first fetch is answered late: requests meanwhile are held for the key set.
    let server = KeyServer::start_with(Behaviour::Late {
        delay_ms: 1500,
        status: 200,
        body: f.issuer.jwks().to_string(),
    });
    let envoy = remote_envoy(f, &server);
    // Forged: the issuer's kid, another key's signature.
    let forged = f
        .issuer
        .token_signed_with(&f.forger_key.signing_as(Alg::Es256))
        .header("kid", &f.issuer.key(Alg::Es256).kid)
        .bound_to(&f.pki.alice)
        .sign();
    let genuine = f.issuer.token().bound_to(&f.pki.alice).sign();
    let answers = Frames::new(envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send(&[post_with_trailers(&forged), post_with_trailers(&genuine)]);
    assert_eq!(answers[0].status, Some(401), "forged: {:?}", answers[0]);
    assert!(envoy.stat("wasmcustom.tether.refused.signature_invalid") >= 1);
    assert_eq!(answers[1].status, Some(200), "genuine: {:?}", answers[1]);
    // An unknown kid holds the request for an early refetch (answered late again).
    let unknown = f
        .issuer
        .token_signed_with(&f.forger_key.signing_as(Alg::Es256))
        .header("kid", "never-published")
        .bound_to(&f.pki.alice)
        .sign();
    let answer = Frames::new(envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send_one(post_with_trailers(&unknown));
    assert_eq!(answer.status, Some(401), "unknown kid: {answer:?}");
    assert!(envoy.stat("wasmcustom.tether.refused.key_unknown") >= 1);
    envoy.stop();
}

/// Without `allow_on_headers_stop_iteration`, Envoy never hands the body of a held request to
/// the filter: the request is refused at the body deadline, and the log says why.
#[test]
fn body_withheld_by_envoy_is_refused_at_the_deadline_with_a_clear_log() {
    let f = fixtures();
    let mut bootstrap = Bootstrap::new(
        &f.pki,
        f.echo.port(),
        Some(json!({
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": f.issuer.jwks()}],
            "clients": [{"client_id": "alice-app", "jwks": {"keys": [f.client_key.jwk()]}}],
            "signed_requests": {"body_timeout_ms": 1000},
            "rules": [{"prefix": "/", "require": "mtls", "signed_request": true}],
        })),
    );
    bootstrap.http2 = true;
    bootstrap.allow_on_headers_stop_iteration = false;
    let envoy = Envoy::start(&bootstrap);
    let token = token();
    let htu = format!("https://localhost:{}/payments", envoy.https_port());
    let header = jws::protected("ES256", Some(&f.client_key.kid), "POST", &htu, &token);
    let genuine = jws::detached(&header, BODY, Signer::Key(&f.client_key));
    let answer = Frames::new(envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send_one(
            Stream::new("POST", "/payments")
                .authority(&format!("localhost:{}", envoy.https_port()))
                .header("authorization", &format!("Bearer {token}"))
                .header("x-jws-signature", &genuine)
                .data(0, BODY, true),
        );
    assert_eq!(answer.status, Some(408), "{answer:?}");
    assert!(
        envoy.log().contains("allow_on_headers_stop_iteration"),
        "the log does not say why:\n{}",
        envoy.log()
    );
    envoy.stop();
}

/// Issue 7 ("unbounded held requests"): each worker holds at most `max_held_requests`; the
/// rest are refused at once with 503, counted, instead of growing the table without end.
#[test]
fn requests_beyond_max_held_requests_are_refused_at_once() {
    let f = fixtures();
    let server = KeyServer::start_with(Behaviour::Late {
        delay_ms: 2000,
        status: 200,
        body: f.issuer.jwks().to_string(),
    });
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                     "remote_jwks": {"cluster": "idp", "path": "/jwks.json", "timeout_ms": 5000}}],
        "rules": [{"prefix": "/", "require": "mtls"}],
        "max_held_requests": 2,
    });
    let mut bootstrap = Bootstrap::new(&f.pki, f.echo.port(), Some(config));
    bootstrap.http2 = true;
    // One worker: one VM holds every stream of the connection.
    bootstrap.concurrency = Some(1);
    bootstrap.clusters.push(("idp".into(), server.port));
    let envoy = Envoy::start(&bootstrap);
    let token = f.issuer.token().bound_to(&f.pki.alice).sign();
    let get = || Stream::new("GET", "/orders").header("authorization", &format!("Bearer {token}"));
    let answers = Frames::new(envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send(&[get(), get(), get(), get()]);
    let mut statuses: Vec<Option<u16>> = answers.iter().map(|a| a.status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(503), Some(503)],
        "{answers:?}"
    );
    for refused in answers.iter().filter(|a| a.status == Some(503)) {
        assert!(
            refused.answered_at_ms.is_some_and(|ms| ms < 1000),
            "{refused:?}"
        );
        assert_eq!(refused.json()["error"], "temporarily_unavailable");
    }
    assert_eq!(
        envoy.stat("wasmcustom.tether.refused.held_requests_full"),
        2
    );
    envoy.stop();
}

/// From the review of issue 7: one token trickling bodies on many streams could take every
/// place of `max_held_requests`. A token holds at most a quarter of them waiting for bodies.
#[test]
fn one_token_cannot_hold_every_place_waiting_for_bodies() {
    let f = fixtures();
    let mut config = config(&f.issuer, &f.client_key);
    config["max_held_requests"] = json!(8);
    config["signed_requests"]["body_timeout_ms"] = json!(1500);
    let mut bootstrap = Bootstrap::new(&f.pki, f.echo.port(), Some(config));
    bootstrap.http2 = true;
    bootstrap.concurrency = Some(1);
    let envoy = Envoy::start(&bootstrap);
    let authority = format!("localhost:{}", envoy.https_port());
    let stalled = |token: &str| {
        let htu = format!("https://{authority}/payments");
        let header = jws::protected("ES256", Some(&f.client_key.kid), "POST", &htu, token);
        Stream::new("POST", "/payments")
            .authority(&authority)
            .header("authorization", &format!("Bearer {token}"))
            .header(
                "x-jws-signature",
                &jws::detached(&header, BODY, Signer::Key(&f.client_key)),
            )
            .stall()
    };
    let mallory = token();
    let alice = token();
    let mut streams: Vec<Stream> = (0..4).map(|_| stalled(&mallory)).collect();
    streams.push(stalled(&alice));
    let answers = Frames::new(envoy.https_port(), &f.pki, Protocol::H2)
        .cert(&f.pki.alice)
        .send(&streams);
    let statuses: Vec<Option<u16>> = answers.iter().map(|a| a.status).collect();
    // Two of the token's four streams are held (a quarter of 8) and time out; the other
    // two are refused at once; the other token's stream is still held.
    let count = |status| statuses[..4].iter().filter(|s| **s == Some(status)).count();
    assert_eq!((count(408), count(503)), (2, 2), "{statuses:?}");
    assert_eq!(statuses[4], Some(408), "{statuses:?}");
    envoy.stop();
}

/// From the review of issue 7: a claim header's look-alike sent as a trailer is removed too.
#[test]
fn look_alike_claim_header_in_the_trailers_never_reaches_the_upstream() {
    let f = fixtures();
    let token = token();
    let genuine = signature(&f.client_key, "POST", "/payments", &token, BODY);
    let answer = frames(Protocol::H2).send_one(
        request("POST", "/payments", &token, Some(&genuine))
            .data(0, BODY, false)
            .trailers(100, &[("x_tether_sub", "admin"), ("x-checksum", "1")]),
    );
    assert_served(&answer);
    let trailers = &answer.json()["trailers"];
    assert_eq!(trailers["x-checksum"], json!(["1"]), "{trailers}");
    assert!(trailers.get("x_tether_sub").is_none(), "{trailers}");
}

/// The README's promise: a body streamed without `content-length` is refused with 413 as soon
/// as it grows past `max_body_bytes`, without waiting for the rest.
#[test]
fn streamed_body_without_content_length_over_the_limit_is_refused_with_413() {
    let f = fixtures();
    let token = token();
    let body = vec![b'x'; MAX_BODY_BYTES + 1];
    let genuine = signature(&f.client_key, "POST", "/payments", &token, &body);
    let (first, second) = body.split_at(3000);
    for protocol in [Protocol::H2, Protocol::Http11] {
        let answer = frames(protocol).send_one(
            request("POST", "/payments", &token, Some(&genuine))
                .data(0, first, false)
                .data(100, second, false)
                // Never ended: the refusal cannot wait for the end.
                .stall(),
        );
        assert_refused(&answer, 413, "body_too_large");
        assert_eq!(answer.json()["error"], "request_too_large");
    }
}
