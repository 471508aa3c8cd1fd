//! End-to-end tests of what Tether's worker VMs share, with two Envoy workers
//! (`--concurrency 2`): the replay record must accept a signature once, whichever workers
//! its copies reach at the same instant.

mod support;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::json;
use sha2::{Digest, Sha256};

use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jws::{self, Signer};
use support::jwt::Issuer;
use support::keyserver::KeyServer;
use support::pki::Pki;
use support::run_interop_client;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const HMAC_SECRET: &[u8] = b"legacy-erp shared secret, 32 B!!";
const BODY: &[u8] = b"{\"amount\":\"10.00\",\"to\":\"bob\"}";
const SIGNATURE_HEADER: &str = "x-payment-signature";

/// Sends each request on `connections` keep-alive connections at once
/// (tests/interop/race_client.py); the statuses, one list per request.
fn race(envoy: &Envoy, pki: &Pki, connections: usize, requests: &[Vec<u8>]) -> Vec<Vec<u16>> {
    let spec = json!({
        "port": envoy.https_port(),
        "ca": pki.ca,
        "cert": pki.alice.cert,
        "key": pki.alice.key,
        "connections": connections,
        "requests": requests.iter().map(|r| STANDARD.encode(r)).collect::<Vec<_>>(),
    });
    let result = run_interop_client("race_client.py", &spec);
    result["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| {
            s.as_array()
                .expect("one list per request")
                .iter()
                .map(|n| n.as_u64().unwrap_or(0) as u16)
                .collect()
        })
        .collect()
}

/// Regression test for issue 7, finding 8: the first write to each replay bucket was
/// unconditional, so on a fresh Envoy two workers could both accept the same signature
/// (9 times in 400). Each of 300 fresh signatures goes to four connections at once.
#[test]
fn a_signature_raced_to_two_workers_is_accepted_once() {
    let dir = ScratchDir::new("e2e-concurrency");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "clients": [{"client_id": "legacy-erp",
                     "hmac_keys": [{"kid": "erp-1", "k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)}]}],
        "rules": [{"prefix": "/", "require": "mtls", "signed_request": true}],
        // A header name of the operator's choosing (the README's promise).
        "signed_requests": {"header": SIGNATURE_HEADER},
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.concurrency = Some(2);
    let envoy = Envoy::start(&bootstrap);
    let token = issuer
        .token()
        .bound_to(&pki.alice)
        .claim("client_id", "legacy-erp")
        .sign();
    let authority = format!("localhost:{}", envoy.https_port());
    let requests: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let path = format!("/payments/{i}");
            let header = jws::protected(
                "HS256",
                Some("erp-1"),
                "POST",
                &format!("https://{authority}{path}"),
                &token,
            );
            let signature = jws::detached(&header, BODY, Signer::Hmac(HMAC_SECRET));
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\n\
                 {SIGNATURE_HEADER}: {signature}\r\ncontent-length: {}\r\n\r\n",
                BODY.len()
            )
            .into_bytes();
            request.extend_from_slice(BODY);
            request
        })
        .collect();
    assert_each_accepted_once(&envoy, &race(&envoy, &pki, 4, &requests));
    // Under the default header name, the signature is not read: the request has none.
    let default_name =
        String::from_utf8_lossy(&requests[0]).replace(SIGNATURE_HEADER, "x-jws-signature");
    assert_eq!(race(&envoy, &pki, 1, &[default_name.into_bytes()]), [[401]]);
    assert!(envoy.stat("wasmcustom.tether.refused.request_signature_missing") >= 1);
    envoy.stop();
}

/// The same for RFC 9421 signatures (issue 10): their replay record is the one of detached
/// JWS, keyed by the signature base. Each of 100 fresh `hmac-sha256` signatures goes to four
/// connections at once, over two workers.
#[test]
fn an_http_message_signature_raced_to_two_workers_is_accepted_once() {
    let dir = ScratchDir::new("e2e-concurrency-httpsig");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "clients": [{"client_id": "legacy-erp",
                     "hmac_keys": [{"kid": "erp-1", "k": URL_SAFE_NO_PAD.encode(HMAC_SECRET)}]}],
        "rules": [{"prefix": "/", "require": "mtls", "signed_request": "http_message_signature"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.concurrency = Some(2);
    let envoy = Envoy::start(&bootstrap);
    let token = issuer
        .token()
        .bound_to(&pki.alice)
        .claim("client_id", "legacy-erp")
        .sign();
    let authority = format!("localhost:{}", envoy.https_port());
    let digest = format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(BODY)));
    let created = support::now();
    let requests: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            let path = format!("/payments/{i}");
            // RFC 9421 §2.5, written out.
            let params = format!(
                "(\"@method\" \"@target-uri\" \"authorization\" \"content-digest\");\
                 created={created};keyid=\"erp-1\";alg=\"hmac-sha256\";tag=\"fapi-2-request\""
            );
            let base = format!(
                "\"@method\": POST\n\"@target-uri\": https://{authority}{path}\n\
                 \"authorization\": Bearer {token}\n\"content-digest\": {digest}\n\
                 \"@signature-params\": {params}"
            );
            let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_SECRET).expect("any key length");
            mac.update(base.as_bytes());
            let signature = STANDARD.encode(mac.finalize().into_bytes());
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\n\
                 content-digest: {digest}\r\nsignature-input: sig1={params}\r\n\
                 signature: sig1=:{signature}:\r\ncontent-length: {}\r\n\r\n",
                BODY.len()
            )
            .into_bytes();
            request.extend_from_slice(BODY);
            request
        })
        .collect();
    assert_each_accepted_once(&envoy, &race(&envoy, &pki, 4, &requests));
    assert!(envoy.stat("wasmcustom.tether.refused.request_signature_replayed") >= 1);
    envoy.stop();
}

/// Every request of a race was served once: by one of its copies, the others refused (401),
/// and the copies spread over both workers (so that they did meet on two VMs).
#[track_caller]
fn assert_each_accepted_once(envoy: &Envoy, statuses: &[Vec<u16>]) {
    let mut accepted_twice = 0;
    for (i, copies) in statuses.iter().enumerate() {
        let served = copies.iter().filter(|s| **s == 200).count();
        assert!(
            copies.iter().all(|s| *s == 200 || *s == 401),
            "request {i}: {copies:?}"
        );
        assert!(served >= 1, "request {i}: no copy served: {copies:?}");
        accepted_twice += usize::from(served > 1);
    }
    assert_eq!(
        accepted_twice,
        0,
        "signatures accepted more than once: {accepted_twice} of {}",
        statuses.len()
    );
    let per_worker = connections_per_worker(envoy);
    assert!(
        per_worker.iter().all(|n| *n >= 1),
        "connections per worker: {per_worker:?}"
    );
}

/// Connections per worker, from Envoy's listener stats.
fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats();
    (0..2)
        .map(|w| {
            stats
                .iter()
                .filter(|(name, _)| name.ends_with(&format!(".worker_{w}.downstream_cx_total")))
                .map(|(_, n)| *n)
                .sum()
        })
        .collect()
}

/// The README's promise: one fetch of a key set serves every worker VM. Requests on many
/// connections, spread over both workers, all verify with the keys of a single fetch.
#[test]
fn one_key_set_fetch_serves_every_worker() {
    let dir = ScratchDir::new("e2e-concurrency-jwks");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let server = KeyServer::start(&issuer.jwks());
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                     "remote_jwks": {"cluster": "idp", "path": "/jwks.json", "refresh_seconds": 300}}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.concurrency = Some(2);
    bootstrap.clusters.push(("idp".into(), server.port));
    let envoy = Envoy::start(&bootstrap);
    let token = issuer.token().bound_to(&pki.alice).sign();
    let authority = format!("localhost:{}", envoy.https_port());
    let request = format!(
        "GET /orders HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes();
    // Eight connections at once, five requests each.
    let statuses = race(&envoy, &pki, 8, &vec![request; 5]);
    assert!(statuses.iter().flatten().all(|s| *s == 200), "{statuses:?}");
    let per_worker = connections_per_worker(&envoy);
    assert!(
        per_worker.iter().all(|n| *n >= 1),
        "connections per worker: {per_worker:?}"
    );
    assert_eq!(server.hits(), 1, "fetches: {:?}", server.hit_times());
    envoy.stop();
}
