//! End-to-end tests of key sets fetched from a `jwks_uri` through an Envoy cluster: the real
//! Envoy fetches from a key server the test runs, and the filter verifies tokens with what
//! it fetched, picks up a rotated key through an early refetch, and fails closed when the
//! key server is dead.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A key server: answers every request with the current status and JWKS document.
struct KeyServer {
    port: u16,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl KeyServer {
    fn start(jwks: &Value) -> KeyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind key server");
        let port = listener.local_addr().expect("address").port();
        let answer = Arc::new(Mutex::new((200, jwks.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&answer), Arc::clone(&hits));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    let mut slow = false;
                    // Read the request head; a GET has no body. A path naming "slow" is
                    // answered after 800 ms.
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        slow |= line.starts_with("GET") && line.contains("slow");
                        line.clear();
                    }
                    if slow {
                        std::thread::sleep(Duration::from_millis(800));
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = served.lock().expect("answer").clone();
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        KeyServer { port, answer, hits }
    }

    fn serve(&self, status: u16, jwks: &Value) {
        *self.answer.lock().expect("answer") = (status, jwks.to_string());
    }
}

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
    let mut bootstrap = Bootstrap::new(&s.pki, s.echo.port(), Some(config)).to_json();
    bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .expect("clusters")
        .push(json!({
            "name": "idp",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "idp", "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": key_port}}}
            }]}]},
        }));
    let workdir = ScratchDir::new("envoy-remote");
    let path = workdir.join("envoy.json");
    std::fs::write(&path, bootstrap.to_string()).expect("write bootstrap");
    let envoy = Envoy::start_with_file(&path, workdir.path(), workdir.path())
        .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
    // The scratch directory must outlive Envoy: leak it for the test's duration.
    std::mem::forget(workdir);
    envoy
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
    assert!(server.hits.load(Ordering::SeqCst) >= 1);
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
    let hits_before = server.hits.load(Ordering::SeqCst);

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
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        hits_before + 1,
        "one early refetch"
    );

    // Another unknown kid right after: no second refetch within 30 s, refused at once.
    let unknown = SigningKey::generate(&keys_dir, Alg::Es256, "rotated-2", true);
    let started = Instant::now();
    let response = call(&s, &envoy, &token(&s, &unknown));
    assert_status(&response, 401, Some("no trusted key matches the token"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(server.hits.load(Ordering::SeqCst), hits_before + 1);
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
    assert!(
        server.hits.load(Ordering::SeqCst) >= 2,
        "both key sets fetched"
    );
    envoy.stop();
}
