//! Encrypted access tokens (JWE) through the real Envoy (issue 12): made by jwcrypto and by
//! `jose`, decrypted with keys from the VM's environment, their nested JWTs verified and
//! their certificate binding enforced like any token's; what is refused is refused with its
//! own reason, and the token is decrypted once (then cached).

mod support;

use std::process::Command;

use serde_json::{json, Value};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const OTHER_ISSUER: &str = "https://other-idp.example.com";

fn run(program: &std::path::Path, script: &str, args: &[&str]) -> Value {
    let output = Command::new(program)
        .arg(repo_root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script} (run `make setup`): {e}"));
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[test]
fn encrypted_bound_tokens_are_served_over_their_certificate_only() {
    let dir = ScratchDir::new("e2e-jwe");
    let pki = Pki::generate(&dir.join("pki"));
    let python = repo_root().join(".venv/bin/python");
    let keys = run(&python, "tests/interop/jwe_tokens.py", &["keys"]);
    let now = support::now();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now,
                        "exp": now + 300, "cnf": {"x5t#S256": pki.alice.x5t_s256()}});
    let spec = dir.join("spec.json");
    let write_spec = |recipients: Value, signer: &Value| {
        std::fs::write(
            &spec,
            json!({"issuer_private": signer, "claims": claims, "recipients": recipients})
                .to_string(),
        )
        .expect("write the spec");
    };
    let recipient = |alg: &str, enc: &str, key: &str| json!({"alg": alg, "enc": enc, "jwk": keys["recipients"][key]});
    write_spec(
        json!([
            recipient("RSA-OAEP-256", "A256GCM", "rsa"),
            recipient("ECDH-ES+A128KW", "A128CBC-HS256", "p256"),
            recipient("RSA1_5", "A128GCM", "rsa"),
        ]),
        &keys["issuer_private"],
    );
    let by_jwcrypto = run(
        &python,
        "tests/interop/jwe_tokens.py",
        &["encrypt", spec.to_str().expect("path")],
    );
    // `jose` makes no RSA1_5 at all.
    write_spec(
        json!([
            recipient("RSA-OAEP-256", "A256GCM", "rsa"),
            recipient("ECDH-ES+A128KW", "A128CBC-HS256", "p256"),
        ]),
        &keys["issuer_private"],
    );
    let by_jose = run(
        std::path::Path::new("node"),
        "tests/interop/oidc/jwe.mjs",
        &[spec.to_str().expect("path")],
    );
    // The same claims signed by a key the issuer never published.
    let stranger = run(&python, "tests/interop/jwe_tokens.py", &["keys"]);
    write_spec(
        json!([recipient("ECDH-ES", "A256GCM", "p256")]),
        &stranger["issuer_private"],
    );
    let forged = run(
        &python,
        "tests/interop/jwe_tokens.py",
        &["encrypt", spec.to_str().expect("path")],
    );
    // Another trusted issuer's token, encrypted to this issuer's key: only the issuer whose
    // key decrypts a token may have signed it.
    let other_claims = json!({"iss": OTHER_ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now,
                              "exp": now + 300, "cnf": {"x5t#S256": pki.alice.x5t_s256()}});
    std::fs::write(
        &spec,
        json!({"issuer_private": stranger["issuer_private"], "claims": other_claims,
               "recipients": [recipient("ECDH-ES", "A256GCM", "p256")]})
        .to_string(),
    )
    .expect("write the spec");
    let crossed = run(
        &python,
        "tests/interop/jwe_tokens.py",
        &["encrypt", spec.to_str().expect("path")],
    );

    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys["issuer_jwks"],
                     "decryption_keys": [
                         {"kid": keys["recipients"]["rsa"]["kid"], "private_jwk": {"env": "TETHER_TEST_JWE_RSA"}},
                         {"kid": keys["recipients"]["p256"]["kid"], "private_jwk": {"env": "TETHER_TEST_JWE_P256"}}
                     ]},
                    {"issuer": OTHER_ISSUER, "audiences": [AUDIENCE], "jwks": stranger["issuer_jwks"]}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.vm_env = vec![
        (
            "TETHER_TEST_JWE_RSA".into(),
            keys["recipients"]["rsa"].to_string(),
        ),
        (
            "TETHER_TEST_JWE_P256".into(),
            keys["recipients"]["p256"].to_string(),
        ),
    ];
    let envoy = Envoy::start(&bootstrap);
    let get = |token: &str| {
        HttpsRequest::new(envoy.https_port(), &pki.ca, "/orders/1")
            .bearer(token)
            .cert(&pki.alice)
    };
    let refused = |request: HttpsRequest, reason: &str| {
        let counter = format!("wasmcustom.tether.refused.{reason}");
        let before = envoy.stat(&counter);
        let response = request.send();
        assert_eq!(response.status, 401, "{reason}: {}", response.text());
        assert_eq!(envoy.stat(&counter), before + 1, "{counter}");
        assert!(!echo.received(&response.test_id), "{reason}");
    };
    for made in [&by_jwcrypto, &by_jose] {
        let tokens = made["tokens"].as_array().expect("tokens");
        for token in &tokens[..2] {
            let compact = token["token"].as_str().expect("token");
            let response = get(compact).send();
            assert_eq!(
                response.status,
                200,
                "{}: {}",
                token["alg"],
                response.text()
            );
            refused(get(compact).cert(&pki.mallory), "certificate_mismatch");
        }
    }
    refused(
        get(by_jwcrypto["tokens"][2]["token"].as_str().expect("token")),
        "algorithm_not_allowed",
    );
    let forged = forged["tokens"][0]["token"].as_str().expect("token");
    // Its kid is the issuer's (jwe_tokens.py names every signing key so), its signature is not.
    refused(get(forged), "signature_invalid");
    refused(
        get(crossed["tokens"][0]["token"].as_str().expect("token")),
        "issuer_unknown",
    );
    let mut changed: Vec<String> = by_jose["tokens"][0]["token"]
        .as_str()
        .expect("token")
        .split('.')
        .map(str::to_string)
        .collect();
    let flipped = if changed[3].starts_with('A') {
        "B"
    } else {
        "A"
    };
    changed[3].replace_range(0..1, flipped);
    refused(get(&changed.join(".")), "token_decryption_failed");
    // No key, and no token, in the log.
    let log = envoy.log();
    assert!(!log.contains(keys["recipients"]["rsa"]["d"].as_str().expect("d")));
    assert!(!log.contains(forged));
    envoy.stop();
}
