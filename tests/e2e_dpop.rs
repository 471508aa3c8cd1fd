//! End-to-end tests of DPoP (RFC 9449, issue 9) through the real Envoy: tokens bound to a key
//! (`cnf.jkt`) and proofs made by an independent implementation (jwcrypto,
//! `tests/interop/dpop_client.py`), over real TLS, HTTP/1.1 and HTTP/2.
//!
//! The access tokens come from the harness's issuer (signed by OpenSSL); the proofs, the
//! client keys and their RFC 7638 thumbprints from jwcrypto. Nothing here is signed by Tether's
//! code. Each of the proof checks of RFC 9449 §4.3 is refused with its own reason, counter and
//! challenge; replay is refused across two worker VMs; nonces are checked across two Envoys
//! that share a secret.

mod support;

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use support::client::{credentials_sent, HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::frames::{Frames, Protocol, Stream};
use support::jwt::Issuer;
use support::pki::Pki;
use support::run_interop_client;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const ALGS: &str = "ES256 EdDSA RS256";

fn nonce_secret() -> String {
    URL_SAFE_NO_PAD.encode(b"tether e2e dpop nonce secret, 32+ bytes")
}

fn config(issuer: &Issuer, nonce_secret: &str) -> Value {
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "dpop": {"algs": ["ES256", "EdDSA", "RS256"], "max_age_seconds": 60,
                 "nonce_secret": nonce_secret, "nonce_lifetime_seconds": 300},
        "rules": [
            {"prefix": "/transfers", "require": "dpop", "dpop_nonce": true},
            {"prefix": "/accounts", "require": "dpop"},
            {"prefix": "/legacy", "require": "bearer"},
            {"prefix": "/orders", "require": "mtls"},
            {"prefix": "/", "require": "bound"}
        ],
        "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}],
    })
}

struct Fixtures {
    pki: Pki,
    issuer: Issuer,
    /// The client keys' directory (private JWKs, for the proof maker).
    keys: String,
    /// RFC 7638 thumbprints of the client keys, by name, as jwcrypto computes them.
    jkt: Value,
    echo: EchoBackend,
    envoy: Envoy,
    _dir: ScratchDir,
}

/// One Envoy (HTTP/2 and HTTP/1.1 with trailers) with DPoP routes, and jwcrypto's client keys.
fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("e2e-dpop");
        let pki = Pki::generate(&dir.join("pki"));
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        let keys = dir.join("client-keys");
        std::fs::create_dir_all(&keys).expect("key dir");
        let keys = keys.to_str().expect("UTF-8 path").to_string();
        let made = run_interop_client("dpop_client.py", &json!({"mode": "keys", "dir": keys}));
        let echo = EchoBackend::start();
        let mut bootstrap =
            Bootstrap::new(&pki, echo.port(), Some(config(&issuer, &nonce_secret())));
        bootstrap.http2 = true;
        bootstrap.enable_trailers = true;
        let envoy = Envoy::start(&bootstrap);
        Fixtures {
            pki,
            issuer,
            keys,
            jkt: made["jkt"].clone(),
            echo,
            envoy,
            _dir: dir,
        }
    })
}

/// A token bound to client key `key` (`cnf.jkt`).
fn token_for(key: &str) -> String {
    let f = fixtures();
    f.issuer
        .token()
        .claim("cnf", json!({"jkt": f.jkt[key]}))
        .sign()
}

fn htu(envoy: &Envoy, path: &str) -> String {
    format!("https://localhost:{}{path}", envoy.https_port())
}

/// One proof to make: by client key `key`, for `htm` `path` with `token`.
fn wanted(key: &str, htm: &str, path: &str, token: &str) -> Value {
    json!({"key": key, "htm": htm, "htu": htu(&fixtures().envoy, path), "token": token})
}

/// Proofs made by jwcrypto, one per request described.
fn proofs(requests: &[Value]) -> Vec<String> {
    let spec = json!({"mode": "proofs", "dir": fixtures().keys, "proofs": requests});
    run_interop_client("dpop_client.py", &spec)["proofs"]
        .as_array()
        .expect("proofs")
        .iter()
        .map(|p| p.as_str().expect("a proof").to_string())
        .collect()
}

fn proof(request: Value) -> String {
    proofs(&[request]).remove(0)
}

fn get(path: &str) -> HttpsRequest {
    let f = fixtures();
    HttpsRequest::new(f.envoy.https_port(), &f.pki.ca, path)
}

/// GET `path` with `Authorization: DPoP <token>` and the `DPoP` header.
fn dpop_get(path: &str, token: &str, proof: &str) -> Response {
    get(path)
        .header("authorization", &format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
}

#[track_caller]
fn assert_served(response: &Response) {
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.upstream_header("x-tether-sub"), ["alice"]);
}

/// Refused with `status`, counted under `reason`, and answered with `error` in the challenge
/// of `scheme`.
#[track_caller]
fn assert_refused(response: &Response, status: u16, reason: &str, scheme: &str, error: &str) {
    assert_eq!(response.status, status, "{reason}: {}", response.text());
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(&format!("{scheme} ")),
        "{reason}: challenge {challenge:?}"
    );
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "{reason}: challenge {challenge:?}"
    );
    assert_eq!(response.json()["error"], error, "{reason}");
    let counter = format!("wasmcustom.tether.refused.{reason}");
    assert!(
        fixtures().envoy.stat(&counter) >= 1,
        "{counter} not counted"
    );
}

#[test]
fn es256_eddsa_and_rs256_proofs_are_served() {
    for key in ["es256", "eddsa", "rs256"] {
        let token = token_for(key);
        let proof = proof(wanted(key, "GET", "/accounts/1", &token));
        let response = dpop_get("/accounts/1", &token, &proof);
        assert_served(&response);
        // The bound and bearer routes take a DPoP-bound token with its proof, too.
        for path in ["/legacy/1", "/anything"] {
            let proof = self::proof(wanted(key, "GET", path, &token));
            assert_served(&dpop_get(path, &token, &proof));
        }
    }
}

/// RFC 9449 §4.3, one check at a time: each proof below is wrong in exactly one way, and the
/// unedited proof beside them is served (so that a refusal is the check's, not the setup's).
#[test]
fn each_proof_check_is_refused_with_its_own_reason() {
    let token = token_for("es256");
    let path = "/accounts/7";
    let cases: Vec<(&str, Value)> = vec![
        ("", json!({})),
        (
            "dpop_proof_malformed",
            json!({"claims": {"pad": "x".repeat(9000)}}),
        ),
        ("dpop_proof_malformed", json!({"duplicate_header": "typ"})),
        ("dpop_proof_type_invalid", json!({"header": {"typ": "JWT"}})),
        ("dpop_proof_type_invalid", json!({"header": {"typ": null}})),
        (
            "dpop_algorithm_not_allowed",
            json!({"header": {"alg": "none"}, "unsigned": true}),
        ),
        (
            "dpop_algorithm_not_allowed",
            json!({"header": {"alg": "HS256"}, "unsigned": true}),
        ),
        ("dpop_key_invalid", json!({"private_jwk": true})),
        ("dpop_key_invalid", json!({"header": {"jwk": null}})),
        ("dpop_signature_invalid", json!({"signer": "es256-other"})),
        ("dpop_jti_invalid", json!({"claims": {"jti": null}})),
        (
            "dpop_jti_invalid",
            json!({"claims": {"jti": "j".repeat(257)}}),
        ),
        ("dpop_method_mismatch", json!({"claims": {"htm": "POST"}})),
        (
            "dpop_uri_mismatch",
            json!({"claims": {"htu": htu(&fixtures().envoy, "/accounts/8")}}),
        ),
        ("dpop_iat_invalid", json!({"iat_offset": -120})),
        ("dpop_iat_invalid", json!({"iat_offset": 120})),
        (
            "dpop_ath_mismatch",
            json!({"claims": {"ath": URL_SAFE_NO_PAD.encode([0u8; 32])}}),
        ),
        ("dpop_ath_mismatch", json!({"claims": {"ath": null}})),
    ];
    let requests: Vec<Value> = cases
        .iter()
        .map(|(_, edit)| {
            let mut request = wanted("es256", "GET", path, &token);
            request["edit"] = edit.clone();
            request
        })
        .collect();
    // A PS256 proof, well made, of an algorithm this configuration does not take.
    let mut ps256 = wanted("ps256", "GET", path, &token);
    ps256["edit"] = json!({});
    // A well-made proof by another key than the token's: a thief's own key.
    let thief = wanted("es256-other", "GET", path, &token);
    let mut all = requests.clone();
    all.push(ps256);
    all.push(thief);
    let made = proofs(&all);
    for ((reason, _), proof) in cases.iter().zip(&made) {
        let response = dpop_get(path, &token, proof);
        if reason.is_empty() {
            assert_served(&response);
        } else {
            assert_refused(&response, 401, reason, "DPoP", "invalid_dpop_proof");
        }
    }
    let response = dpop_get(path, &token, &made[cases.len()]);
    assert_refused(
        &response,
        401,
        "dpop_algorithm_not_allowed",
        "DPoP",
        "invalid_dpop_proof",
    );
    let response = dpop_get(path, &token, &made[cases.len() + 1]);
    assert_refused(
        &response,
        401,
        "dpop_key_mismatch",
        "DPoP",
        "invalid_dpop_proof",
    );
    // The challenge names the algorithms the route takes.
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(&format!("algs=\"{ALGS}\"")),
        "{challenge}"
    );

    // No proof, two proofs, two proofs joined in one line.
    let two = proofs(&[
        wanted("es256", "GET", path, &token),
        wanted("es256", "GET", path, &token),
    ]);
    let auth = format!("DPoP {token}");
    let none = get(path).header("authorization", &auth).send();
    assert_refused(
        &none,
        401,
        "dpop_proof_missing",
        "DPoP",
        "invalid_dpop_proof",
    );
    let repeated = get(path)
        .header("authorization", &auth)
        .header("dpop", &two[0])
        .header("dpop", &two[1])
        .send();
    assert_refused(
        &repeated,
        401,
        "multiple_dpop_proofs",
        "DPoP",
        "invalid_dpop_proof",
    );
    let joined = get(path)
        .header("authorization", &auth)
        .header("dpop", &format!("{},{}", two[0], two[1]))
        .send();
    assert_refused(
        &joined,
        401,
        "multiple_dpop_proofs",
        "DPoP",
        "invalid_dpop_proof",
    );
    // None of the refused proofs used up its jti: the first of the two is still good.
    assert_served(&dpop_get(path, &token, &two[0]));
}

/// The demo's eavesdropper: a captured request (token and proof) sent again.
#[test]
fn a_replayed_proof_is_refused() {
    let token = token_for("es256");
    let proof = proof(wanted("es256", "GET", "/accounts/replay", &token));
    assert_served(&dpop_get("/accounts/replay", &token, &proof));
    let replayed = dpop_get("/accounts/replay", &token, &proof);
    assert_refused(
        &replayed,
        401,
        "dpop_proof_replayed",
        "DPoP",
        "invalid_dpop_proof",
    );
}

/// RFC 9449 §7.2: a DPoP-bound token stolen without its key, sent as a Bearer token, is refused
/// on every route, `bearer` included.
#[test]
fn a_dpop_bound_token_sent_as_bearer_is_refused_everywhere() {
    let token = token_for("es256");
    for path in ["/legacy/1", "/accounts/1", "/anything", "/transfers"] {
        let response = get(path).bearer(&token).send();
        assert_eq!(response.status, 401, "{path}: {}", response.text());
        assert_eq!(response.json()["error"], "invalid_token", "{path}");
        assert!(
            fixtures()
                .envoy
                .stat("wasmcustom.tether.refused.dpop_token_as_bearer")
                >= 1
        );
    }
    // Bearer-only proof of possession is no proof: the same with a proof attached.
    let proof = proof(wanted("es256", "GET", "/legacy/2", &token));
    let response = get("/legacy/2")
        .bearer(&token)
        .header("dpop", &proof)
        .send();
    assert_refused(
        &response,
        401,
        "dpop_token_as_bearer",
        "Bearer",
        "invalid_token",
    );
}

#[test]
fn the_dpop_scheme_needs_a_dpop_bound_token() {
    let f = fixtures();
    let unbound = f.issuer.token().sign();
    let proof = proof(wanted("es256", "GET", "/legacy/3", &unbound));
    let response = dpop_get("/legacy/3", &unbound, &proof);
    assert_refused(
        &response,
        401,
        "token_not_dpop_bound",
        "DPoP",
        "invalid_token",
    );
    // A DPoP route refuses an unbound Bearer token; its challenge is DPoP's alone.
    let response = get("/accounts/3").bearer(&unbound).send();
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some(format!("DPoP algs=\"{ALGS}\", error=\"invalid_token\", error_description=\"token is not sender-constrained\"").as_str())
    );
}

#[test]
fn challenges_name_the_schemes_the_route_takes() {
    let dpop_only = get("/accounts/4").send();
    assert_eq!(dpop_only.status, 401);
    assert_eq!(
        dpop_only.header("www-authenticate"),
        Some(format!("DPoP algs=\"{ALGS}\"").as_str())
    );
    let both = get("/anything").send();
    assert_eq!(
        both.header("www-authenticate"),
        Some(format!("Bearer realm=\"tether\", DPoP algs=\"{ALGS}\"").as_str())
    );
    let mtls = get("/orders/4").send();
    assert_eq!(
        mtls.header("www-authenticate"),
        Some("Bearer realm=\"tether\"")
    );
}

/// A token bound to a certificate and to a key (`cnf` with `x5t#S256` and `jkt`) is served only
/// when both are proved.
#[test]
fn a_token_bound_to_a_certificate_and_a_key_needs_both_proofs() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim(
            "cnf",
            json!({"x5t#S256": f.pki.alice.x5t_s256(), "jkt": f.jkt["es256"]}),
        )
        .sign();
    let path = "/orders/9";
    let made = proofs(&[
        wanted("es256", "GET", path, &token),
        wanted("es256", "GET", path, &token),
        wanted("es256", "GET", path, &token),
    ]);
    let auth = format!("DPoP {token}");
    let over = |cert: Option<&support::pki::ClientCert>, proof: Option<&str>| {
        let mut request = get(path).header("authorization", &auth);
        if let Some(cert) = cert {
            request = request.cert(cert);
        }
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send()
    };
    assert_refused(
        &over(None, Some(&made[0])),
        401,
        "client_certificate_missing",
        "DPoP",
        "invalid_token",
    );
    assert_refused(
        &over(Some(&f.pki.mallory), Some(&made[1])),
        401,
        "certificate_mismatch",
        "DPoP",
        "invalid_token",
    );
    assert_refused(
        &over(Some(&f.pki.alice), None),
        401,
        "dpop_proof_missing",
        "DPoP",
        "invalid_dpop_proof",
    );
    assert_served(&over(Some(&f.pki.alice), Some(&made[2])));
    let bearer = get(path).cert(&f.pki.alice).bearer(&token).send();
    assert_refused(
        &bearer,
        401,
        "dpop_token_as_bearer",
        "Bearer",
        "invalid_token",
    );
}

/// The scheme and the header name are case-insensitive (RFC 9110 §11.1, §5.1).
#[test]
fn scheme_and_header_name_are_case_insensitive() {
    let token = token_for("eddsa");
    for (scheme, name) in [("dpop", "DPOP"), ("DPOP", "dPoP"), ("dPoP", "dpop")] {
        let proof = proof(wanted("eddsa", "GET", "/accounts/5", &token));
        let response = get("/accounts/5")
            .header("authorization", &format!("{scheme} {token}"))
            .header(name, &proof)
            .send();
        assert_served(&response);
    }
}

/// RFC 9449 §8: a nonce route answers a proof without a nonce with `use_dpop_nonce` and a
/// fresh `DPoP-Nonce`; the retry with it is served, and the response carries the current nonce.
#[test]
fn the_nonce_dance() {
    let token = token_for("es256");
    let first = proof(wanted("es256", "GET", "/transfers/1", &token));
    let asked = dpop_get("/transfers/1", &token, &first);
    assert_refused(&asked, 401, "dpop_nonce_missing", "DPoP", "use_dpop_nonce");
    let nonce = asked
        .header("dpop-nonce")
        .expect("a DPoP-Nonce")
        .to_string();
    let mut retry = wanted("es256", "GET", "/transfers/1", &token);
    retry["nonce"] = json!(nonce);
    let served = dpop_get("/transfers/1", &token, &proof(retry));
    assert_served(&served);
    assert_eq!(served.header("dpop-nonce"), Some(nonce.as_str()));
    // A nonce Tether never issued.
    let mut made_up = wanted("es256", "GET", "/transfers/1", &token);
    made_up["nonce"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
    let refused = dpop_get("/transfers/1", &token, &proof(made_up));
    assert_refused(
        &refused,
        401,
        "dpop_nonce_invalid",
        "DPoP",
        "use_dpop_nonce",
    );
    assert!(refused.header("dpop-nonce").is_some());
}

/// Nonces are stateless: a replica with the same `nonce_secret` accepts them, one with another
/// secret does not.
#[test]
fn a_nonce_minted_by_another_envoy_with_the_same_secret_is_accepted() {
    let f = fixtures();
    let start = |secret: &str| {
        Envoy::start(&Bootstrap::new(
            &f.pki,
            f.echo.port(),
            Some(config(&f.issuer, secret)),
        ))
    };
    let token = token_for("es256");
    let nonce_of = |envoy: &Envoy| {
        let proof = proof(json!({"key": "es256", "htm": "GET",
            "htu": htu(envoy, "/transfers/2"), "token": token}));
        let response = HttpsRequest::new(envoy.https_port(), &f.pki.ca, "/transfers/2")
            .header("authorization", &format!("DPoP {token}"))
            .header("dpop", &proof)
            .send();
        assert_eq!(response.status, 401, "{}", response.text());
        response.header("dpop-nonce").expect("a nonce").to_string()
    };
    let replica = start(&nonce_secret());
    let stranger = start(&URL_SAFE_NO_PAD.encode([0x5a; 32]));
    for (other, served) in [(&replica, true), (&stranger, false)] {
        let nonce = nonce_of(other);
        let mut request = wanted("es256", "GET", "/transfers/2", &token);
        request["nonce"] = json!(nonce);
        let response = dpop_get("/transfers/2", &token, &proof(request));
        if served {
            assert_served(&response);
        } else {
            assert_refused(
                &response,
                401,
                "dpop_nonce_invalid",
                "DPoP",
                "use_dpop_nonce",
            );
        }
    }
    replica.stop();
    stranger.stop();
}

/// Held requests (a form body, scanned for a second token) with DPoP over HTTP/2, with
/// trailers: the proof is checked on the headers, and trailers release nothing.
#[test]
fn h2_dpop_requests_with_bodies_and_trailers() {
    let f = fixtures();
    let token = token_for("es256");
    let authority = format!("localhost:{}", f.envoy.https_port());
    let made = proofs(&[
        wanted("es256", "POST", "/accounts/h2", &token),
        wanted("es256", "POST", "/accounts/h2", &token),
    ]);
    let request = |proof: &str, body: &[u8]| {
        Stream::new("POST", "/accounts/h2")
            .authority(&authority)
            .header("authorization", &format!("DPoP {token}"))
            .header("dpop", proof)
            .header("content-type", "application/x-www-form-urlencoded")
            .data(0, body, false)
            .trailers(100, &[("x-checksum", "1")])
    };
    let frames = Frames::new(f.envoy.https_port(), &f.pki, Protocol::H2);
    let served = frames.send_one(request(&made[0], b"amount=10"));
    assert_eq!(served.status, Some(200), "{served:?}");
    // The same proof again, its body and trailers arriving after the headers.
    let replayed = frames.send_one(request(&made[0], b"amount=10"));
    assert_eq!(replayed.status, Some(401), "{replayed:?}");
    assert_eq!(replayed.json()["error"], "invalid_dpop_proof");
    // A genuine proof, and a second token in the form body: held, then refused.
    let smuggled = frames.send_one(request(&made[1], b"access_token=another"));
    assert_eq!(smuggled.status, Some(400), "{smuggled:?}");
    assert_eq!(
        smuggled.json()["error_description"],
        "access token must not be sent in the request body"
    );
}

/// Issue 9's replay record is the one signed requests use, shared by the worker VMs: each proof,
/// sent on four connections at once to two workers, is served once.
#[test]
fn a_proof_raced_to_two_workers_is_accepted_once() {
    let f = fixtures();
    let mut bootstrap = Bootstrap::new(
        &f.pki,
        f.echo.port(),
        Some(config(&f.issuer, &nonce_secret())),
    );
    bootstrap.concurrency = Some(2);
    let envoy = Envoy::start(&bootstrap);
    let token = token_for("es256");
    let authority = format!("localhost:{}", envoy.https_port());
    let wanted: Vec<Value> = (0..100)
        .map(|i| {
            json!({"key": "es256", "htm": "GET",
            "htu": htu(&envoy, &format!("/accounts/{i}")), "token": token})
        })
        .collect();
    let made = proofs(&wanted);
    let requests: Vec<String> = made
        .iter()
        .enumerate()
        .map(|(i, proof)| {
            let raw = format!(
                "GET /accounts/{i} HTTP/1.1\r\nhost: {authority}\r\nauthorization: DPoP {token}\r\ndpop: {proof}\r\ncontent-length: 0\r\n\r\n"
            );
            STANDARD.encode(raw)
        })
        .collect();
    let spec = json!({
        "port": envoy.https_port(),
        "ca": f.pki.ca,
        "cert": f.pki.alice.cert,
        "key": f.pki.alice.key,
        "connections": 4,
        "requests": requests,
    });
    let result = run_interop_client("race_client.py", &spec);
    let statuses = result["statuses"].as_array().expect("statuses");
    assert_eq!(statuses.len(), 100);
    for (i, copies) in statuses.iter().enumerate() {
        let copies: Vec<u64> = copies
            .as_array()
            .expect("one list per request")
            .iter()
            .map(|s| s.as_u64().unwrap_or(0))
            .collect();
        assert_eq!(
            copies.iter().filter(|s| **s == 200).count(),
            1,
            "proof {i}: {copies:?}"
        );
        assert_eq!(
            copies.iter().filter(|s| **s == 401).count(),
            3,
            "proof {i}: {copies:?}"
        );
    }
    assert_eq!(
        envoy.stat("wasmcustom.tether.refused.dpop_proof_replayed"),
        300
    );
    envoy.stop();
}

/// Neither a token nor a proof ever reaches Envoy's log.
#[test]
fn no_token_or_proof_is_logged() {
    let token = token_for("es256");
    let proof = proof(wanted("es256", "GET", "/accounts/log", &token));
    assert_served(&dpop_get("/accounts/log", &token, &proof));
    let _ = dpop_get("/accounts/log", &token, &proof);
    let log = fixtures().envoy.log();
    for secret in credentials_sent() {
        let value = secret
            .trim_start_matches("DPoP ")
            .trim_start_matches("Bearer ");
        if value.len() > 40 {
            assert!(!log.contains(value), "logged: {value}");
        }
    }
    assert!(!log.contains(&proof));
}
