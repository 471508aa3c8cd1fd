//! Interoperability: tokens and request signatures made by an independent JOSE
//! implementation (Python's jwcrypto, `tests/interop/jwcrypto_client.py`) through the real
//! Envoy. Nothing here is signed by Tether's code or by this harness's: the keys, the JWKS
//! documents, the tokens (ES256, ES384, RS256, PS256, EdDSA) and the detached RFC 7797
//! request signature all come from jwcrypto.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;

/// The Python of the project's virtualenv (where `make setup` installs jwcrypto).
fn python() -> PathBuf {
    std::env::var_os("TETHER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

fn jwcrypto(args: &[&str]) -> String {
    let script = repo_root().join("tests/interop/jwcrypto_client.py");
    let output = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run `make setup`)", python().display()));
    assert!(
        output.status.success(),
        "jwcrypto_client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[test]
fn tokens_and_request_signatures_made_by_jwcrypto_are_accepted() {
    let dir = ScratchDir::new("interop");
    let pki = Pki::generate(&dir.join("pki"));
    let keys_dir = dir.join("jwcrypto");
    std::fs::create_dir_all(&keys_dir).expect("dir");
    let made: Value = serde_json::from_str(&jwcrypto(&[
        "keys",
        &pki.alice.x5t_s256(),
        keys_dir.to_str().expect("UTF-8 path"),
    ]))
    .expect("JSON from jwcrypto");
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": "https://idp.example.com",
                     "audiences": ["https://orders.mesh.internal"],
                     "jwks": made["jwks"]}],
        "clients": [{"client_id": "jc-app", "jwks": made["client_jwks"]}],
        "rules": [
            {"prefix": "/pay", "require": "mtls", "signed_request": true},
            {"prefix": "/", "require": "mtls"}
        ],
        "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}],
    });
    let envoy = Envoy::start(&Bootstrap::new(&pki, echo.port(), Some(config)));
    let request = |path: &str| HttpsRequest::new(envoy.https_port(), &pki.ca, path);

    // Access tokens of every algorithm, and the same tokens from another client.
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let token = made["tokens"][alg].as_str().expect("token");
        let served = request("/orders").cert(&pki.alice).bearer(token).send();
        assert_eq!(served.status, 200, "{alg}: {}", served.text());
        assert_eq!(served.upstream_header("x-tether-sub"), ["alice"], "{alg}");
        let stolen = request("/orders").cert(&pki.mallory).bearer(token).send();
        assert_eq!(stolen.status, 401, "{alg}: {}", stolen.text());
    }

    // A detached, unencoded-payload (b64: false) request signature.
    let token = made["tokens"]["ES256"].as_str().expect("token");
    let body = r#"{"amount":"10.00","to":"bob"}"#;
    let htu = format!("https://localhost:{}/pay", envoy.https_port());
    let signature = jwcrypto(&[
        "sign",
        keys_dir.to_str().expect("UTF-8 path"),
        token,
        &htu,
        body,
    ]);
    let signature = signature.trim();
    let post = |body: &str| {
        request("/pay")
            .cert(&pki.alice)
            .bearer(token)
            .method("POST")
            .header("x-jws-signature", signature)
            .body(body.as_bytes())
            .send()
    };
    let tampered = post(r#"{"amount":"99.00","to":"bob"}"#);
    assert_eq!(tampered.status, 401, "{}", tampered.text());
    let served = post(body);
    assert_eq!(served.status, 200, "{}", served.text());
    let replayed = post(body);
    assert_eq!(replayed.status, 401, "{}", replayed.text());
    assert_eq!(
        replayed.json()["error_description"],
        "request signature was already used"
    );
    envoy.stop();
}

/// A DPoP-bound access token issued by a real authorization server (oidc-provider, through its
/// token endpoint, after its own `use_dpop_nonce` dance) with proofs made by that ecosystem's
/// client library (`dpop`): `tests/interop/oidc/issue.mjs`. Served with its proof, and refused
/// replayed, downgraded to Bearer, or with a proof for another method.
#[test]
fn a_dpop_bound_token_issued_by_oidc_provider_is_served_with_its_proof() {
    const API: &str = "https://api.example";
    const AUDIENCE: &str = "https://orders.mesh.internal";
    let script = repo_root().join("tests/interop/oidc/issue.mjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(AUDIENCE)
        .arg(format!("{API}/orders"))
        .arg(format!("{API}/accounts"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e} (run `make setup`)"));
    assert!(
        output.status.success(),
        "issue.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let issued: Value = serde_json::from_slice(&output.stdout).expect("JSON from issue.mjs");
    assert_eq!(issued["token_type"], "DPoP");
    let token = issued["access_token"].as_str().expect("access token");
    let proof = |path: &str, method: &str| {
        issued["proofs"][format!("{API}{path}")][method]
            .as_str()
            .expect("a proof")
            .to_string()
    };

    let dir = ScratchDir::new("interop-oidc");
    let pki = Pki::generate(&dir.join("pki"));
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": issued["issuer"], "audiences": [AUDIENCE], "jwks": issued["jwks"]}],
        "dpop": {"algs": ["ES256"]},
        "rules": [{"prefix": "/", "require": "dpop"}],
        "claims_to_headers": [{"claim": "client_id", "header": "x-client-id"}],
    });
    let envoy = Envoy::start(&Bootstrap::new(&pki, echo.port(), Some(config)));
    // The proofs name https://api.example: the request says so in its Host.
    let request = |path: &str, scheme: &str, proof: Option<&str>| {
        let mut request = HttpsRequest::new(envoy.https_port(), &pki.ca, path)
            .header("host", "api.example")
            .header("authorization", &format!("{scheme} {token}"));
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send()
    };
    let orders = proof("/orders", "GET");
    let served = request("/orders", "DPoP", Some(&orders));
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.upstream_header("x-client-id"), ["dpop-app"]);
    let replayed = request("/orders", "DPoP", Some(&orders));
    assert_eq!(replayed.status, 401, "{}", replayed.text());
    assert_eq!(
        replayed.json()["error_description"],
        "DPoP proof was already used"
    );
    let downgraded = request("/accounts", "Bearer", None);
    assert_eq!(downgraded.status, 401, "{}", downgraded.text());
    assert_eq!(downgraded.json()["error"], "invalid_token");
    let other_method = request("/accounts", "DPoP", Some(&proof("/accounts", "POST")));
    assert_eq!(other_method.status, 401, "{}", other_method.text());
    assert_eq!(other_method.json()["error"], "invalid_dpop_proof");
    let accounts = request("/accounts", "DPoP", Some(&proof("/accounts", "GET")));
    assert_eq!(accounts.status, 200, "{}", accounts.text());
    envoy.stop();
}
