//! Checks of the test harness itself, independent of the filter: the tokens it mints verify
//! with an independent JWT library, its certificate thumbprints agree with OpenSSL, and its
//! Envoy, TLS and echo plumbing work without the filter in the chain.
//!
//! When an end-to-end test fails, these say whether to look at the filter or at the harness.

mod support;

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jwt::{segments, tampered, Alg, Issuer};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

struct Fixtures {
    pki: Pki,
    issuer: Issuer,
    _dir: ScratchDir,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("harness");
        Fixtures {
            pki: Pki::generate(&dir.join("pki")),
            issuer: Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE),
            _dir: dir,
        }
    })
}

fn b64(jwk: &Value, member: &str) -> Vec<u8> {
    let text = jwk[member]
        .as_str()
        .unwrap_or_else(|| panic!("JWK has no {member}: {jwk}"));
    URL_SAFE_NO_PAD
        .decode(text)
        .expect("JWK member is base64url")
}

/// Verifies `token` with jwt-simple using only the public JWK, as the filter would.
fn verify_with_jwt_simple(alg: Alg, jwk: &Value, token: &str) -> JWTClaims<Map<String, Value>> {
    let options = Some(VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[ISSUER])),
        allowed_audiences: Some(HashSet::from_strings(&[AUDIENCE])),
        ..Default::default()
    });
    let sec1_point = || [vec![0x04], b64(jwk, "x"), b64(jwk, "y")].concat();
    let verified = match alg {
        Alg::Es256 => ES256PublicKey::from_bytes(&sec1_point())
            .and_then(|key| key.verify_token(token, options)),
        Alg::Es384 => ES384PublicKey::from_bytes(&sec1_point())
            .and_then(|key| key.verify_token(token, options)),
        Alg::EdDsa => Ed25519PublicKey::from_bytes(&b64(jwk, "x"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Rs256 => RS256PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Rs384 => RS384PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Rs512 => RS512PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Ps256 => PS256PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Ps384 => PS384PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
        Alg::Ps512 => PS512PublicKey::from_components(&b64(jwk, "n"), &b64(jwk, "e"))
            .and_then(|key| key.verify_token(token, options)),
    };
    verified.unwrap_or_else(|e| panic!("{} token does not verify: {e}", alg.name()))
}

#[test]
fn minted_tokens_verify_with_jwt_simple_for_every_algorithm() {
    let f = fixtures();
    let rsa_key = f.issuer.key(Alg::Ps256);
    let keys = Alg::ISSUER_KEYS
        .iter()
        .map(|&alg| f.issuer.key(alg).clone())
        .chain(Alg::RSA.iter().map(|&alg| rsa_key.signing_as(alg)));
    for key in keys {
        let alg = key.alg;
        let token = f
            .issuer
            .token_signed_with(&key)
            .bound_to(&f.pki.alice)
            .sign();
        let claims = verify_with_jwt_simple(alg, &key.jwk(), &token);
        assert_eq!(claims.subject.as_deref(), Some("alice"));
        assert_eq!(
            claims.custom["cnf"]["x5t#S256"],
            json!(f.pki.alice.x5t_s256())
        );
    }
}

#[test]
fn jwks_members_follow_rfc_7518_and_8037() {
    let jwks = fixtures().issuer.jwks();
    let keys = jwks["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), Alg::ISSUER_KEYS.len());
    for jwk in keys {
        let kid = jwk["kid"].as_str().expect("kid");
        match jwk["kty"].as_str() {
            Some("EC") => {
                let width = if jwk["crv"] == "P-256" { 32 } else { 48 };
                assert_eq!(b64(jwk, "x").len(), width, "{kid} x");
                assert_eq!(b64(jwk, "y").len(), width, "{kid} y");
            }
            Some("OKP") => assert_eq!(b64(jwk, "x").len(), 32, "{kid} x"),
            Some("RSA") => {
                assert_eq!(
                    b64(jwk, "n").len(),
                    256,
                    "{kid} n: 2048 bits, no sign octet"
                );
                assert_eq!(b64(jwk, "e"), vec![1, 0, 1], "{kid} e = 65537");
            }
            other => panic!("unexpected kty {other:?}"),
        }
    }
}

#[test]
fn bad_tokens_are_bad_in_the_intended_way() {
    let f = fixtures();
    let builder = f.issuer.token();
    let good = builder.sign();

    let unsecured = builder.unsecured();
    assert!(unsecured.ends_with('.'), "alg none has an empty signature");
    let header = URL_SAFE_NO_PAD
        .decode(segments(&format!("{unsecured}x"))[0])
        .expect("header");
    assert_eq!(
        serde_json::from_slice::<Value>(&header).expect("json")["alg"],
        "none"
    );

    let forged = tampered(&good, |claims| {
        claims.insert("sub".into(), json!("admin"));
    });
    assert_eq!(segments(&forged)[0], segments(&good)[0]);
    assert_eq!(segments(&forged)[2], segments(&good)[2]);
    assert_ne!(segments(&forged)[1], segments(&good)[1]);
    let key = f.issuer.key(Alg::Es256);
    let public = ES256PublicKey::from_bytes(
        &[vec![0x04], b64(&key.jwk(), "x"), b64(&key.jwk(), "y")].concat(),
    )
    .expect("key");
    assert!(public
        .verify_token::<NoCustomClaims>(&forged, None)
        .is_err());
}

#[test]
fn client_certificate_thumbprint_matches_openssl() {
    let alice = &fixtures().pki.alice;
    let fingerprint = support::openssl(&[
        "x509",
        "-in",
        alice.cert.to_str().expect("utf-8 path"),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    // "sha256 Fingerprint=AB:CD:..." -> bytes -> base64url, as RFC 8705 §3.1 has it.
    let fingerprint = String::from_utf8(fingerprint).expect("ascii");
    let hex = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(alice.x5t_s256(), URL_SAFE_NO_PAD.encode(bytes));
    assert_ne!(alice.x5t_s256(), fixtures().pki.mallory.x5t_s256());
}

/// Envoy with only the router: TLS with and without a client certificate, routing to the echo
/// backend, and the echo backend's report of method, path, headers and body.
#[test]
fn envoy_without_the_filter_proxies_to_the_echo_backend() {
    let f = fixtures();
    let echo = EchoBackend::start();
    let envoy = Envoy::start(&Bootstrap::new(&f.pki, echo.port(), None));

    let response = HttpsRequest::new(envoy.https_port(), &f.pki.ca, "/orders/42?x=1")
        .cert(&f.pki.alice)
        .method("POST")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .body(b"{\"item\": 7}")
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    let echoed = response.json();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/orders/42?x=1");
    assert_eq!(echoed["body"], "{\"item\": 7}");
    assert_eq!(response.upstream_header("x-custom"), ["one", "two"]);
    assert!(echo.received(&response.test_id));

    let anonymous = HttpsRequest::new(envoy.https_port(), &f.pki.ca, "/").send();
    assert_eq!(
        anonymous.status, 200,
        "no client certificate is allowed by TLS"
    );

    assert!(envoy.is_running());
    assert!(envoy.stats().contains_key("server.live"));
    envoy.stop();
}
