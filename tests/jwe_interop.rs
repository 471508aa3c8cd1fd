//! Encrypted access tokens (JWE, RFC 7516) made by two independent implementations, PyPI
//! `jwcrypto` and npm `jose`, decrypted by Tether with the keys of its configuration and their
//! nested JWTs verified (issue 12): every accepted `alg` × `enc`; and the refused
//! `RSA1_5` (Bleichenbacher) and `RSA-OAEP` (SHA-1), made by jwcrypto too.

mod support;

use std::process::Command;

use serde_json::{json, Value};

use support::repo_root;
use support::scratch::ScratchDir;
use tether::config::Policy;
use tether::crypto::InVm;
use tether::jwe;
use tether::keyset::FetchedKeys;
use tether::reject::Reason;
use tether::token;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

const ACCEPTED: [(&str, &str); 5] = [
    ("RSA-OAEP-256", "rsa"),
    ("ECDH-ES", "p256"),
    ("ECDH-ES+A128KW", "p384"),
    ("ECDH-ES+A256KW", "p256"),
    ("dir", "oct"),
];
const ENCS: [&str; 3] = ["A128GCM", "A256GCM", "A128CBC-HS256"];

fn python(args: &[&str]) -> Value {
    let output = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/interop/jwe_tokens.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python (run `make setup`): {e}"));
    assert!(
        output.status.success(),
        "jwe_tokens.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from jwe_tokens.py")
}

fn node(spec: &std::path::Path) -> Value {
    let output = Command::new("node")
        .arg(repo_root().join("tests/interop/oidc/jwe.mjs"))
        .arg(spec)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (run `make setup`): {e}"));
    assert!(
        output.status.success(),
        "jwe.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from jwe.mjs")
}

#[test]
fn tokens_encrypted_by_jwcrypto_and_jose_decrypt_and_verify() {
    let dir = ScratchDir::new("jwe-interop");
    let keys = python(&["keys"]);
    let now = support::now();
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "tpp",
                        "iat": now, "exp": now + 300});
    let recipients: Vec<Value> = ACCEPTED
        .iter()
        .flat_map(|(alg, key)| {
            ENCS.iter()
                // A 256-bit key for `dir` fits A256GCM and A128CBC-HS256 only.
                .filter(move |enc| !(*alg == "dir" && **enc == "A128GCM"))
                .map(|enc| json!({"alg": alg, "enc": enc, "jwk": keys["recipients"][key]}))
                .collect::<Vec<_>>()
        })
        .collect();
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        json!({"issuer_private": keys["issuer_private"], "claims": claims,
               "recipients": recipients})
        .to_string(),
    )
    .expect("write the spec");
    let decryption_keys: Vec<Value> = ["rsa", "p256", "p384", "oct"]
        .iter()
        .map(|name| {
            let jwk = &keys["recipients"][name];
            json!({"kid": jwk["kid"], "private_jwk": jwk.to_string()})
        })
        .collect();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys["issuer_jwks"],
                     "decryption_keys": decryption_keys}],
    });
    let policy = Policy::from_json(config.to_string().as_bytes()).expect("configuration");
    let issuer = &policy.issuers[0];
    let now_seconds = u64::try_from(now).expect("now");
    let mut seen = 0;
    for made in [
        python(&["encrypt", spec.to_str().expect("path")]),
        node(&spec),
    ] {
        for token in made["tokens"].as_array().expect("tokens") {
            let compact = token["token"].as_str().expect("token");
            let label = format!("{} {}", token["alg"], token["enc"]);
            assert_eq!(token::kind(compact), token::Kind::Jwe, "{label}");
            let inner = jwe::nested_jwt(compact, &issuer.decryption_keys)
                .unwrap_or_else(|reason| panic!("{label}: {reason:?}"));
            let verified = token::verify(
                &inner,
                &policy.issuers,
                &FetchedKeys::default(),
                policy.limits,
                &InVm,
                now_seconds,
            )
            .unwrap_or_else(|refusal| panic!("{label}: {refusal:?}"));
            assert_eq!(verified.string_claim("sub"), Some("alice"), "{label}");
            // A byte changed in the ciphertext: nothing decrypts.
            let mut parts: Vec<String> = compact.split('.').map(str::to_string).collect();
            let flipped = if parts[3].starts_with('A') { "B" } else { "A" };
            parts[3].replace_range(0..1, flipped);
            assert_eq!(
                jwe::nested_jwt(&parts.join("."), &issuer.decryption_keys),
                Err(Reason::TokenDecryptionFailed),
                "{label}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 2 * 14);

    // What is refused, made by jwcrypto for Tether's own RSA key: never decrypted.
    let refused: Vec<Value> = ["RSA1_5", "RSA-OAEP"]
        .iter()
        .map(|alg| json!({"alg": alg, "enc": "A128GCM", "jwk": keys["recipients"]["rsa"]}))
        .collect();
    std::fs::write(
        &spec,
        json!({"issuer_private": keys["issuer_private"], "claims": claims,
               "recipients": refused})
        .to_string(),
    )
    .expect("write the spec");
    let made = python(&["encrypt", spec.to_str().expect("path")]);
    for token in made["tokens"].as_array().expect("tokens") {
        assert_eq!(
            jwe::nested_jwt(
                token["token"].as_str().expect("token"),
                &issuer.decryption_keys
            ),
            Err(Reason::AlgorithmNotAllowed),
            "{}",
            token["alg"]
        );
    }
}
