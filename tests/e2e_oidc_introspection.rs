//! Opaque access tokens issued by a real authorization server, oidc-provider
//! (`tests/interop/oidc/as.mjs`), and introspected by Tether at that server's own RFC 7662
//! endpoint through an Envoy cluster (issue 12): a certificate-bound token (RFC 8705 §3.2)
//! served over its certificate and refused over another, a DPoP-bound token (RFC 9449 §6.2)
//! with proofs made by the `dpop` library, an unbound and a revoked token, one introspection
//! call for many requests (read from the server's own log), and the server down.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::oidc::AuthorizationServer;
use support::pki::Pki;
use support::scratch::ScratchDir;

const AUDIENCE: &str = "https://orders.mesh.internal";
/// The host the DPoP proofs name (`htu`); requests say so in their `Host`.
const API: &str = "https://api.example";
const TIMEOUT_MS: u64 = 1000;

#[test]
fn opaque_tokens_of_oidc_provider_are_introspected_and_their_bindings_enforced() {
    let dir = ScratchDir::new("e2e-oidc-introspection");
    let pki = Pki::generate(&dir.join("pki"));
    let server = AuthorizationServer::start(
        &dir.join("as.log"),
        AUDIENCE,
        &pki.alice.cert,
        &[format!("{API}/orders/1")],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let issued = &server.issued;
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{
            "issuer": issued["issuer"],
            "audiences": [AUDIENCE],
            "introspection": {
                "cluster": "as", "authority": format!("127.0.0.1:{}", issued["port"]),
                "path": issued["introspection_path"],
                "client_id": issued["rs"]["client_id"],
                "client_secret": {"env": "TETHER_TEST_RS_SECRET"},
                "timeout_ms": TIMEOUT_MS
            }
        }],
        "dpop": {"algs": ["ES256"]},
        "rules": [{"prefix": "/legacy", "require": "bearer"}, {"prefix": "/", "require": "bound"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.clusters = vec![(
        "as".into(),
        u16::try_from(issued["port"].as_u64().expect("port")).expect("a port"),
    )];
    // One worker: one VM, so one call per token.
    bootstrap.concurrency = Some(1);
    bootstrap.vm_env = vec![(
        "TETHER_TEST_RS_SECRET".into(),
        issued["rs"]["client_secret"]
            .as_str()
            .expect("rs secret")
            .to_string(),
    )];
    let envoy = Envoy::start(&bootstrap);
    let request = |path: &str, authorization: &str| {
        HttpsRequest::new(envoy.https_port(), &pki.ca, path)
            .header("host", "api.example")
            .header("authorization", authorization)
    };
    let refused = |request: HttpsRequest, status: u16, reason: &str| {
        let counter = format!("wasmcustom.tether.refused.{reason}");
        let before = envoy.stat(&counter);
        let response = request.send();
        assert_eq!(response.status, status, "{reason}: {}", response.text());
        assert_eq!(envoy.stat(&counter), before + 1, "{counter}");
        assert!(!echo.received(&response.test_id), "{reason}");
    };

    // Certificate-bound: served over Alice's certificate, many times, for one call.
    let mtls = server.token("mtls");
    for _ in 0..4 {
        let response = request("/orders/1", &format!("Bearer {mtls}"))
            .cert(&pki.alice)
            .send();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(server.introspections(), 1, "one call for four requests");
    // The same token over Mallory's certificate.
    refused(
        request("/orders/1", &format!("Bearer {mtls}")).cert(&pki.mallory),
        401,
        "certificate_mismatch",
    );
    assert_eq!(server.introspections(), 1);

    // DPoP-bound: served with its proof (made by `dpop`), never twice, never as Bearer.
    let dpop = server.token("dpop");
    let proof = issued["tokens"]["dpop"]["proofs"][format!("{API}/orders/1")]["GET"]
        .as_str()
        .expect("a proof")
        .to_string();
    let with_proof = || request("/orders/1", &format!("DPoP {dpop}")).header("dpop", &proof);
    let response = with_proof().send();
    assert_eq!(response.status, 200, "{}", response.text());
    refused(with_proof(), 401, "dpop_proof_replayed");
    refused(
        request("/orders/1", &format!("Bearer {dpop}")),
        401,
        "dpop_token_as_bearer",
    );
    assert_eq!(server.introspections(), 2);

    // Unbound: a bearer route only.
    let bearer = server.token("bearer");
    assert_eq!(
        request("/legacy/1", &format!("Bearer {bearer}"))
            .send()
            .status,
        200
    );
    refused(
        request("/orders/1", &format!("Bearer {bearer}")),
        401,
        "not_sender_constrained",
    );
    // Revoked at the server (RFC 7009): inactive, and remembered as such.
    let revoked = server.token("revoked");
    refused(
        request("/legacy/1", &format!("Bearer {revoked}")),
        401,
        "token_inactive",
    );
    refused(
        request("/legacy/1", &format!("Bearer {revoked}")),
        401,
        "token_inactive",
    );
    assert_eq!(server.introspections(), 4);

    // The server down: a token not seen before gets 503 within timeout_ms, never served.
    server.stop();
    let started = Instant::now();
    refused(
        request("/legacy/1", "Bearer never-seen-before-token"),
        503,
        "introspection_unavailable",
    );
    assert!(started.elapsed() < Duration::from_millis(TIMEOUT_MS + 2000));
    // What was remembered is still served (cache_seconds, 60 by default).
    let response = request("/orders/1", &format!("Bearer {mtls}"))
        .cert(&pki.alice)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    envoy.stop();
}
