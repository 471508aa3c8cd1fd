//! Certificate revocation is the TLS layer's job (issue 11): with the CA's CRL in Envoy's
//! `validation_context.crl`, a revoked client certificate fails the handshake, so no request
//! on it ever reaches Tether (or the upstream), while the CA's other certificates connect as
//! before. The CRL is made by `openssl ca` (tests/support/pki.rs).

mod support;

use std::collections::BTreeMap;

use serde_json::json;

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jwt::Issuer;
use support::pki::{ClientCert, Pki};
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

/// Tether's counters, and the TLS layer's verification failures.
fn counters(envoy: &Envoy) -> BTreeMap<String, u64> {
    envoy
        .stats()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("wasmcustom.tether.") || name.ends_with("ssl.fail_verify_error")
        })
        .collect()
}

fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(name, n)| {
            let delta = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

#[test]
fn a_revoked_client_certificate_is_refused_by_tls_before_tether_sees_a_request() {
    let dir = ScratchDir::new("e2e-revocation");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.require_client_certificate = true;
    bootstrap.crl = Some(pki.crl.clone());
    let envoy = Envoy::start(&bootstrap);
    let call = |client: &ClientCert| {
        let token = issuer.token().bound_to(client).sign();
        HttpsRequest::new(envoy.https_port(), &pki.ca, "/orders/1")
            .cert(client)
            .bearer(&token)
    };
    // Certificates the CRL does not list connect, and their bound tokens are served.
    for client in [&pki.alice, &pki.mallory] {
        let response = call(client).send();
        assert_eq!(response.status, 200, "{}: {}", client.name, response.text());
    }
    let before = counters(&envoy);
    let request = call(&pki.revoked);
    let outcome = request.try_send();
    assert!(
        outcome.is_err(),
        "a revoked certificate got an HTTP answer: {:?}",
        outcome.map(|r| r.status)
    );
    let moved = moved(&before, &counters(&envoy));
    let tether: Vec<&String> = moved
        .keys()
        .filter(|n| n.starts_with("wasmcustom."))
        .collect();
    assert!(
        tether.is_empty(),
        "Tether saw the revoked client: {moved:?}"
    );
    assert!(
        moved.keys().any(|n| n.ends_with("ssl.fail_verify_error")),
        "the TLS layer did not count a verification failure: {moved:?}"
    );
    assert!(!echo.received(request.test_id()));
    // Without the CRL, the same certificate connects: the refusal above is the CRL's.
    bootstrap.crl = None;
    let without = Envoy::start(&bootstrap);
    let token = issuer.token().bound_to(&pki.revoked).sign();
    let response = HttpsRequest::new(without.https_port(), &pki.ca, "/orders/1")
        .cert(&pki.revoked)
        .bearer(&token)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    without.stop();
    envoy.stop();
}
