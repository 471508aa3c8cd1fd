//! End-to-end tests: the real Envoy 1.40 running the built `dist/tether.wasm`, real mutual
//! TLS, real HTTPS requests, and an echo upstream that shows what got through.
//!
//! One Envoy, configured as in the contract below, is shared by the tests of this file and
//! started by the first test that needs it. Tests that need another configuration start their
//! own Envoy. Every refusal is checked on the wire (status, `WWW-Authenticate`, JSON body) and
//! upstream (the request never reached the echo backend); every success is checked upstream.
//!
//! Expected responses come from the filter's contract, transcribed here independently of the
//! filter's source, so a change to the wire format is a visible, deliberate test change.

mod support;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::client::{credentials_sent, HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{self, Bootstrap, Envoy};
use support::jwt::{tampered, Alg, Issuer, SigningKey};
use support::keyserver::{Behaviour, KeyServer};
use support::pki::Pki;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
/// The contract's clock skew; tests place times well inside or well outside it.
const SKEW: i64 = 30;
/// The contract's maximum token lifetime.
const MAX_LIFETIME: i64 = 900;
const SUB_HEADER: &str = "x-tether-sub";

/// The filter configuration of the shared Envoy: the contract's example, with the test
/// issuer's five keys.
fn contract_config(issuer: &Issuer) -> Value {
    json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": issuer.jwks(),
        }],
        "rules": [
            {"prefix": "/healthz", "require": "none"},
            {"prefix": "/legacy", "require": "bearer"},
            {"prefix": "/orders", "require": "mtls"},
            {"prefix": "/", "require": "bound"},
        ],
        "clock_skew_seconds": SKEW,
        "max_token_lifetime_seconds": MAX_LIFETIME,
        "claims_to_headers": [{"claim": "sub", "header": SUB_HEADER}],
        "strip_authorization": false,
    })
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Made once per test binary: the PKI, the trusted issuer, an attacker's key, the upstream.
struct Fixtures {
    pki: Pki,
    issuer: Issuer,
    /// A key the issuer never published, carrying the `kid` of the issuer's ES256 key.
    impostor: SigningKey,
    echo: EchoBackend,
    /// Holds the files above (for the life of the process: statics are never dropped).
    _dir: ScratchDir,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = ScratchDir::new("e2e");
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        let impostor_dir = dir.join("impostor");
        std::fs::create_dir_all(&impostor_dir).expect("impostor dir");
        let impostor = SigningKey::generate(&impostor_dir, Alg::Es256, "es256-1", true);
        Fixtures {
            pki: Pki::generate(&dir.join("pki")),
            issuer,
            impostor,
            echo: EchoBackend::start(),
            _dir: dir,
        }
    })
}

/// The shared Envoy with [`contract_config`]. If it cannot start, every test using it fails
/// with the same message instead of each trying again.
fn envoy() -> &'static Envoy {
    static ENVOY: OnceLock<Result<Envoy, String>> = OnceLock::new();
    let started = ENVOY.get_or_init(|| {
        let f = fixtures();
        Envoy::try_start(&Bootstrap::new(
            &f.pki,
            f.echo.port(),
            Some(contract_config(&f.issuer)),
        ))
    });
    match started {
        Ok(envoy) => envoy,
        Err(log) => panic!("the shared Envoy did not start:\n{log}"),
    }
}

/// A request to the shared Envoy.
fn request(path: &str) -> HttpsRequest {
    HttpsRequest::new(envoy().https_port(), &fixtures().pki.ca, path)
}

/// A valid ES256 token for alice, bound to alice's certificate.
fn alice_bound_token() -> String {
    let f = fixtures();
    f.issuer.token().bound_to(&f.pki.alice).sign()
}

/// A valid ES256 token for alice with no `cnf`: a plain bearer token.
fn unbound_token() -> String {
    fixtures().issuer.token().sign()
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// A refusal as the contract puts it on the wire.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    /// The counter suffix: `tether.refused.<reason>`.
    reason: &'static str,
    status: u16,
    /// The OAuth error code; `None` only for a request with no credential at all.
    error: Option<&'static str>,
    description: &'static str,
}

const fn refusal(
    reason: &'static str,
    status: u16,
    error: Option<&'static str>,
    description: &'static str,
) -> Refusal {
    Refusal {
        reason,
        status,
        error,
        description,
    }
}

const INVALID_REQUEST: Option<&str> = Some("invalid_request");
const INVALID_TOKEN: Option<&str> = Some("invalid_token");

const TOKEN_MISSING: Refusal =
    refusal("token_missing", 401, None, "no access token in the request");
const TOKEN_IN_QUERY: Refusal = refusal(
    "token_in_query",
    400,
    INVALID_REQUEST,
    "access token must not be sent in the URL",
);
const TOKEN_IN_BODY: Refusal = refusal(
    "token_in_body",
    400,
    INVALID_REQUEST,
    "access token must not be sent in the request body",
);
const MULTIPLE_AUTHORIZATION: Refusal = refusal(
    "multiple_authorization",
    400,
    INVALID_REQUEST,
    "more than one Authorization header",
);
const MALFORMED_AUTHORIZATION: Refusal = refusal(
    "malformed_authorization",
    400,
    INVALID_REQUEST,
    "malformed Authorization header",
);
const PATH_NOT_NORMALIZED: Refusal = refusal(
    "path_not_normalized",
    400,
    INVALID_REQUEST,
    "request path is not normalized",
);
const TOKEN_TOO_LARGE: Refusal = refusal(
    "token_too_large",
    401,
    INVALID_TOKEN,
    "token exceeds the size limit",
);
const TOKEN_MALFORMED: Refusal = refusal(
    "token_malformed",
    401,
    INVALID_TOKEN,
    "token is not a well-formed JWT",
);
const ALGORITHM_NOT_ALLOWED: Refusal = refusal(
    "algorithm_not_allowed",
    401,
    INVALID_TOKEN,
    "token algorithm is not allowed",
);
const ISSUER_UNKNOWN: Refusal = refusal(
    "issuer_unknown",
    401,
    INVALID_TOKEN,
    "token issuer is not trusted",
);
const KEY_UNKNOWN: Refusal = refusal(
    "key_unknown",
    401,
    INVALID_TOKEN,
    "no trusted key matches the token",
);
const SIGNATURE_INVALID: Refusal = refusal(
    "signature_invalid",
    401,
    INVALID_TOKEN,
    "token signature is invalid",
);
const TOKEN_EXPIRED: Refusal = refusal("token_expired", 401, INVALID_TOKEN, "token has expired");
const EXPIRY_MISSING: Refusal =
    refusal("expiry_missing", 401, INVALID_TOKEN, "token has no expiry");
const TOKEN_NOT_YET_VALID: Refusal = refusal(
    "token_not_yet_valid",
    401,
    INVALID_TOKEN,
    "token is not yet valid",
);
const LIFETIME_TOO_LONG: Refusal = refusal(
    "lifetime_too_long",
    401,
    INVALID_TOKEN,
    "token lifetime exceeds the maximum",
);
const AUDIENCE_MISMATCH: Refusal = refusal(
    "audience_mismatch",
    401,
    INVALID_TOKEN,
    "token audience is not accepted",
);
const NOT_SENDER_CONSTRAINED: Refusal = refusal(
    "not_sender_constrained",
    401,
    INVALID_TOKEN,
    "token is not sender-constrained",
);
const BINDING_UNSUPPORTED: Refusal = refusal(
    "binding_unsupported",
    401,
    INVALID_TOKEN,
    "token binding cannot be proved",
);
const CNF_MALFORMED: Refusal = refusal(
    "cnf_malformed",
    401,
    INVALID_TOKEN,
    "token confirmation claim is malformed",
);
const CLIENT_CERTIFICATE_MISSING: Refusal = refusal(
    "client_certificate_missing",
    401,
    INVALID_TOKEN,
    "no client certificate",
);
const CERTIFICATE_MISMATCH: Refusal = refusal(
    "certificate_mismatch",
    401,
    INVALID_TOKEN,
    "token is bound to another certificate",
);

/// The request reached the upstream and the upstream's 200 came back.
#[track_caller]
fn assert_served(response: &Response) {
    assert_eq!(
        response.status,
        200,
        "expected the request to be served; got {} {:?}: {}",
        response.status,
        response.headers.get("www-authenticate"),
        response.text()
    );
    assert!(
        fixtures().echo.received(&response.test_id),
        "200 did not come from the upstream: {}",
        response.text()
    );
}

/// The filter refused the request as `expected` says, and the upstream never saw it.
#[track_caller]
fn assert_refused(response: &Response, expected: Refusal) {
    let context = format!(
        "expected refusal {}; got {} {:?}: {}",
        expected.reason,
        response.status,
        response.headers.get("www-authenticate"),
        response.text()
    );
    assert_eq!(response.status, expected.status, "{context}");
    // RFC 6750 §3: the challenge names the error and describes it; with no credential at
    // all it carries no error code (§3.1).
    let challenge = match expected.error {
        None => "Bearer realm=\"tether\"".to_string(),
        Some(error) => format!(
            "Bearer realm=\"tether\", error=\"{error}\", error_description=\"{}\"",
            expected.description
        ),
    };
    assert_eq!(
        response.header("www-authenticate"),
        Some(challenge.as_str()),
        "{context}"
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{context}: content-type {:?}",
        response.header("content-type")
    );
    let body = response.json();
    assert_eq!(
        body["error"],
        expected.error.unwrap_or("missing_token"),
        "{context}"
    );
    assert_eq!(body["error_description"], expected.description, "{context}");
    assert!(
        !fixtures().echo.received(&response.test_id),
        "{context}: the refused request reached the upstream"
    );
}

/// Refused by the filter as an invalid token (401, `error="invalid_token"`, JSON body), for
/// cases where the contract does not pin the description; the upstream never saw it.
#[track_caller]
fn assert_invalid_token(response: &Response) {
    let context = format!(
        "expected an invalid_token refusal; got {} {:?}: {}",
        response.status,
        response.headers.get("www-authenticate"),
        response.text()
    );
    assert_eq!(response.status, 401, "{context}");
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer realm=\"tether\", error=\"invalid_token\"")),
        "{context}"
    );
    assert_eq!(response.json()["error"], "invalid_token", "{context}");
    assert!(
        !fixtures().echo.received(&response.test_id),
        "{context}: the refused request reached the upstream"
    );
}

/// Refused somehow (by Envoy's codec or by the filter) and not forwarded: for inputs where
/// the contract does not pin the exact reason.
#[track_caller]
fn assert_not_served(response: &Response) {
    assert!(
        [400, 401].contains(&response.status),
        "expected 400 or 401; got {}: {}",
        response.status,
        response.text()
    );
    assert!(
        !fixtures().echo.received(&response.test_id),
        "the refused request reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Served: bound tokens with their certificate, and what the upstream sees

#[test]
fn bound_token_with_its_certificate_is_served() {
    let f = fixtures();
    let token = alice_bound_token();
    let response = request("/payments/7")
        .cert(&f.pki.alice)
        .bearer(&token)
        .send();
    assert_served(&response);
    assert_eq!(response.json()["path"], "/payments/7");
    assert_eq!(response.upstream_header(SUB_HEADER), ["alice"]);
    // strip_authorization is false: the upstream may still want the token.
    assert_eq!(
        response.upstream_header("authorization"),
        [format!("Bearer {token}")]
    );
}

#[test]
fn bound_token_with_its_certificate_is_served_on_mtls_route() {
    let f = fixtures();
    let response = request("/orders/42")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .send();
    assert_served(&response);
    assert_eq!(response.upstream_header(SUB_HEADER), ["alice"]);
}

#[test]
fn client_supplied_sub_header_is_replaced_by_the_verified_claim() {
    let f = fixtures();
    let response = request("/")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .header(SUB_HEADER, "admin")
        .header(SUB_HEADER, "root")
        .send();
    assert_served(&response);
    assert_eq!(response.upstream_header(SUB_HEADER), ["alice"]);
}

/// Regression test for issue 7, finding 6: only the exact configured name was removed, so
/// `x_tether_sub` and `x.tether.sub` reached the upstream, where many frameworks read them as
/// `x-tether-sub`.
#[test]
fn look_alike_claim_headers_never_reach_the_upstream() {
    let f = fixtures();
    let look_alikes = ["x_tether_sub", "x.tether.sub", "X_Tether.Sub"];
    let send = |path: &str, authorized: bool| {
        let mut request = request(path);
        if authorized {
            request = request.cert(&f.pki.alice).bearer(&alice_bound_token());
        }
        for name in look_alikes {
            request = request.header(name, "admin");
        }
        request.send()
    };
    for (path, authorized, sub) in [("/", true, vec!["alice"]), ("/healthz", false, vec![])] {
        let response = send(path, authorized);
        assert_served(&response);
        assert_eq!(response.upstream_header(SUB_HEADER), sub, "{path}");
        let echoed = response.json();
        for name in look_alikes {
            let lower = name.to_ascii_lowercase();
            assert!(
                echoed["headers"].get(&lower).is_none(),
                "{path}: {name} reached the upstream: {echoed}"
            );
        }
    }
    // A header that only resembles one is left alone.
    let response = request("/healthz")
        .header("x-tether-subject", "kept")
        .send();
    assert_eq!(response.upstream_header("x-tether-subject"), ["kept"]);
}

#[test]
fn client_supplied_sub_header_is_removed_on_unprotected_routes() {
    let response = request("/healthz").header(SUB_HEADER, "admin").send();
    assert_served(&response);
    assert_eq!(response.upstream_header(SUB_HEADER), Vec::<String>::new());
}

#[test]
fn health_check_is_served_without_token_or_certificate() {
    let response = request("/healthz").send();
    assert_served(&response);
    assert_eq!(response.json()["path"], "/healthz");
}

#[test]
fn request_method_and_body_reach_the_upstream_unchanged() {
    let f = fixtures();
    let body = br#"{"item": "book", "quantity": 2}"#;
    let response = request("/orders")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .method("POST")
        .header("content-type", "application/json")
        .body(body)
        .send();
    assert_served(&response);
    let echoed = response.json();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], String::from_utf8_lossy(body).as_ref());
}

/// Each supported algorithm, with the key the issuer published for it.
fn assert_algorithm_accepted(alg: Alg) {
    let f = fixtures();
    let token = f
        .issuer
        .token_signed_with(f.issuer.key(alg))
        .claim("sub", format!("alice-{}", alg.name()))
        .bound_to(&f.pki.alice)
        .sign();
    let response = request("/").cert(&f.pki.alice).bearer(&token).send();
    assert_served(&response);
    assert_eq!(
        response.upstream_header(SUB_HEADER),
        [format!("alice-{}", alg.name())]
    );
}

#[test]
fn es256_token_is_accepted() {
    assert_algorithm_accepted(Alg::Es256);
}

#[test]
fn es384_token_is_accepted() {
    assert_algorithm_accepted(Alg::Es384);
}

#[test]
fn eddsa_token_is_accepted() {
    assert_algorithm_accepted(Alg::EdDsa);
}

#[test]
fn rs256_token_is_accepted() {
    assert_algorithm_accepted(Alg::Rs256);
}

#[test]
fn ps256_token_is_accepted() {
    assert_algorithm_accepted(Alg::Ps256);
}

/// A JWK without `alg`: the key type decides, and an RSA key may sign with any RS* or PS*
/// algorithm (RFC 7518 §3.3, §3.5).
#[test]
fn every_rsa_algorithm_is_accepted_from_an_rsa_key_that_publishes_no_alg() {
    let f = fixtures();
    let rsa_key = f.issuer.key(Alg::Ps256);
    assert!(rsa_key.jwk().get("alg").is_none());
    for alg in Alg::RSA {
        let key = rsa_key.signing_as(alg);
        let token = f
            .issuer
            .token_signed_with(&key)
            .bound_to(&f.pki.alice)
            .sign();
        let response = request("/").cert(&f.pki.alice).bearer(&token).send();
        assert_served(&response);
    }
}

#[test]
fn token_without_kid_is_verified_with_the_issuers_keys_of_its_type() {
    let f = fixtures();
    for alg in [Alg::Es256, Alg::Rs256] {
        let token = f
            .issuer
            .token_signed_with(f.issuer.key(alg))
            .without_header("kid")
            .bound_to(&f.pki.alice)
            .sign();
        let response = request("/").cert(&f.pki.alice).bearer(&token).send();
        assert_served(&response);
    }
}

#[test]
fn unbound_token_is_served_on_bearer_route() {
    let response = request("/legacy/report").bearer(&unbound_token()).send();
    assert_served(&response);
    assert_eq!(response.upstream_header(SUB_HEADER), ["alice"]);
}

/// RFC 7235 §2.1: the auth-scheme is case-insensitive.
#[test]
fn bearer_scheme_is_case_insensitive() {
    let f = fixtures();
    for scheme in ["bearer", "BEARER"] {
        let response = request("/")
            .cert(&f.pki.alice)
            .header(
                "authorization",
                &format!("{scheme} {}", alice_bound_token()),
            )
            .send();
        assert_served(&response);
    }
}

#[test]
fn token_expired_within_clock_skew_is_accepted() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("iat", -300)
        .at("exp", -SKEW / 3)
        .bound_to(&f.pki.alice)
        .sign();
    assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
}

#[test]
fn token_not_yet_valid_within_clock_skew_is_accepted() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("nbf", SKEW / 3)
        .bound_to(&f.pki.alice)
        .sign();
    assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
}

/// RFC 7519 §4.1.3: `aud` may be an array; one accepted value is enough.
#[test]
fn token_with_several_audiences_including_ours_is_accepted() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim("aud", ["https://billing.mesh.internal", AUDIENCE])
        .bound_to(&f.pki.alice)
        .sign();
    assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
}

/// Header members the filter does not use are ignored, not errors (RFC 7515 §4: only `crit`
/// extensions must be understood).
#[test]
fn token_with_extra_header_members_is_accepted() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .header("cty", "at+jwt-example")
        .header("x-vendor", json!({"trace": 1}))
        .bound_to(&f.pki.alice)
        .sign();
    assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
}

// ---------------------------------------------------------------------------------------------
// Refused: the certificate binding (RFC 8705 §3)

/// The scenario Tether exists for: a bound token stolen and replayed by another client of the
/// same mesh, with a perfectly valid certificate of its own.
#[test]
fn bound_token_with_another_clients_certificate_is_refused() {
    let f = fixtures();
    let response = request("/")
        .cert(&f.pki.mallory)
        .bearer(&alice_bound_token())
        .send();
    assert_refused(&response, CERTIFICATE_MISMATCH);
}

#[test]
fn bound_token_without_client_certificate_is_refused() {
    let response = request("/").bearer(&alice_bound_token()).send();
    assert_refused(&response, CLIENT_CERTIFICATE_MISSING);
}

#[test]
fn bound_token_with_another_clients_certificate_is_refused_on_mtls_route() {
    let f = fixtures();
    let response = request("/orders")
        .cert(&f.pki.mallory)
        .bearer(&alice_bound_token())
        .send();
    assert_refused(&response, CERTIFICATE_MISMATCH);
}

#[test]
fn unbound_token_is_refused_on_bound_route() {
    let f = fixtures();
    let response = request("/")
        .cert(&f.pki.alice)
        .bearer(&unbound_token())
        .send();
    assert_refused(&response, NOT_SENDER_CONSTRAINED);
}

#[test]
fn unbound_token_is_refused_on_mtls_route() {
    let f = fixtures();
    let response = request("/orders/42")
        .cert(&f.pki.alice)
        .bearer(&unbound_token())
        .send();
    assert_refused(&response, NOT_SENDER_CONSTRAINED);
}

/// On a `bearer` route an unbound token is fine, but a bound one is still held to its binding:
/// otherwise a stolen bound token could be replayed there.
#[test]
fn bound_token_on_bearer_route_with_another_certificate_is_refused() {
    let f = fixtures();
    let response = request("/legacy")
        .cert(&f.pki.mallory)
        .bearer(&alice_bound_token())
        .send();
    assert_refused(&response, CERTIFICATE_MISMATCH);
}

#[test]
fn bound_token_on_bearer_route_without_certificate_is_refused() {
    let response = request("/legacy").bearer(&alice_bound_token()).send();
    assert_refused(&response, CLIENT_CERTIFICATE_MISSING);
}

#[test]
fn bound_token_on_bearer_route_with_its_certificate_is_served() {
    let f = fixtures();
    let response = request("/legacy")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .send();
    assert_served(&response);
}

/// A `cnf` member Tether cannot prove (`jku`, RFC 7800 §3.5) makes the token unusable, never
/// a plain bearer token, even over a certificate.
#[test]
fn token_bound_by_an_unprovable_method_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim("cnf", json!({"jku": "https://client.example.com/jwks"}))
        .sign();
    let response = request("/legacy").cert(&f.pki.alice).bearer(&token).send();
    assert_refused(&response, BINDING_UNSUPPORTED);
}

/// A DPoP-bound token (RFC 9449 §6.1, `cnf.jkt`) is not proved by a certificate: sent as a
/// Bearer token over mTLS, it is a downgrade (§7.2), refused, and the challenge names the
/// scheme it needs (tests/e2e_dpop.rs has the rest of DPoP).
#[test]
fn token_bound_to_a_dpop_key_cannot_be_proved_over_mtls() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim(
            "cnf",
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        )
        .sign();
    let response = request("/").cert(&f.pki.alice).bearer(&token).send();
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"tether\", error=\"invalid_token\", error_description=\"a DPoP-bound token must be presented with the DPoP scheme\", DPoP algs=\"ES256 ES384 EdDSA PS256 RS256\"")
    );
    assert!(!f.echo.received(&response.test_id));
}

#[test]
fn malformed_confirmation_claim_is_refused() {
    let f = fixtures();
    for cnf in [
        json!("not an object"),
        json!({"x5t#S256": 42}),
        json!({"x5t#S256": "not base64url!"}),
        // base64url, but 16 bytes: not a SHA-256 digest.
        json!({"x5t#S256": "AAAAAAAAAAAAAAAAAAAAAA"}),
    ] {
        let token = f.issuer.token().claim("cnf", &cnf).sign();
        let response = request("/").cert(&f.pki.alice).bearer(&token).send();
        assert_refused(&response, CNF_MALFORMED);
    }
}

// ---------------------------------------------------------------------------------------------
// Refused: the token itself (RFC 7519, RFC 9068, RFC 8725)

/// Sends `token` as alice, with alice's certificate, to the bound route.
fn send_as_alice(token: &str) -> Response {
    request("/")
        .cert(&fixtures().pki.alice)
        .bearer(token)
        .send()
}

#[test]
fn expired_token_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("iat", -600)
        .at("exp", -4 * SKEW)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), TOKEN_EXPIRED);
}

#[test]
fn token_not_yet_valid_beyond_clock_skew_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("nbf", 4 * SKEW)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), TOKEN_NOT_YET_VALID);
}

#[test]
fn token_issued_in_the_future_beyond_clock_skew_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("iat", 4 * SKEW)
        .at("exp", 4 * SKEW + 300)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), TOKEN_NOT_YET_VALID);
}

#[test]
fn token_without_expiry_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .without_claim("exp")
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), EXPIRY_MISSING);
}

#[test]
fn token_lifetime_beyond_the_maximum_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .at("iat", 0)
        .at("exp", 4 * MAX_LIFETIME)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), LIFETIME_TOO_LONG);
}

/// Without `iat` the lifetime is measured from now: a token valid for hours is refused even
/// if it does not say when it was issued.
#[test]
fn token_without_iat_expiring_beyond_the_maximum_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .without_claim("iat")
        .at("exp", 4 * MAX_LIFETIME)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), LIFETIME_TOO_LONG);
}

#[test]
fn token_from_an_unknown_issuer_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim("iss", "https://idp.attacker.example")
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), ISSUER_UNKNOWN);
}

#[test]
fn token_for_another_audience_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .claim("aud", "https://billing.mesh.internal")
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), AUDIENCE_MISMATCH);
}

/// RFC 9068 §4: the resource server must check that `aud` names it; no `aud` cannot.
#[test]
fn token_without_audience_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .without_claim("aud")
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), AUDIENCE_MISMATCH);
}

#[test]
fn tampered_payload_is_refused() {
    let forged = tampered(&alice_bound_token(), |claims| {
        claims.insert("sub".into(), json!("admin"));
    });
    assert_refused(&send_as_alice(&forged), SIGNATURE_INVALID);
}

#[test]
fn token_with_an_unknown_kid_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token()
        .header("kid", "es256-rotated-away")
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), KEY_UNKNOWN);
}

/// An attacker's key cannot borrow a trusted key's `kid`: the kid only selects the key.
#[test]
fn token_signed_by_an_unknown_key_with_a_known_kid_is_refused() {
    let f = fixtures();
    let token = f
        .issuer
        .token_signed_with(&f.impostor)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), SIGNATURE_INVALID);
}

/// RFC 7515 §4.1.3: a `jwk` in the header is the sender's choice; a verifier that trusted it
/// would verify the attacker's signature with the attacker's key. The contract pins only
/// `invalid_token` here (see `header_urls_and_certificates_are_not_trusted` for the reason).
#[test]
fn header_jwk_naming_the_attackers_key_is_not_trusted() {
    let f = fixtures();
    let token = f
        .issuer
        .token_signed_with(&f.impostor)
        .header("jwk", f.impostor.jwk())
        .bound_to(&f.pki.alice)
        .sign();
    assert_invalid_token(&send_as_alice(&token));
}

/// RFC 7515 §4.1.2, §4.1.5, §4.1.6: `jku`, `x5u` and `x5c` point at keys the attacker
/// controls; the filter fetches nothing and trusts only its configured keys.
///
/// Each token is signed with the very key its header names, served for real: trusting the
/// header would accept it (issue 8: the earlier version of this test signed with a key the
/// header did not name, so it would have passed even if the header were trusted). And the
/// key server sees no request: nothing is fetched.
#[test]
fn header_urls_and_certificates_are_not_trusted() {
    let f = fixtures();
    // Mallory's certificate and its private key: a key an `x5c`/`x5u` header can vouch for.
    let mallory = SigningKey::from_pem_file(&f.pki.mallory.key, Alg::Es256, "es256-1", true);
    let mallory_pem = std::fs::read_to_string(&f.pki.mallory.cert).expect("mallory's cert");
    let jwks = KeyServer::start(&json!({"keys": [f.impostor.jwk()]}));
    let certs = KeyServer::start_with(Behaviour::Serve {
        status: 200,
        body: mallory_pem,
    });
    let cases = [
        (
            &f.impostor,
            "jku",
            json!(format!("http://127.0.0.1:{}/jwks.json", jwks.port)),
        ),
        (
            &mallory,
            "x5u",
            json!(format!("http://127.0.0.1:{}/cert.pem", certs.port)),
        ),
        (
            &mallory,
            "x5c",
            json!([STANDARD.encode(&f.pki.mallory.der)]),
        ),
    ];
    for (key, name, value) in cases {
        let token = f
            .issuer
            .token_signed_with(key)
            .header(name, value)
            .bound_to(&f.pki.alice)
            .sign();
        assert_refused(&send_as_alice(&token), SIGNATURE_INVALID);
    }
    assert_eq!(jwks.hits() + certs.hits(), 0, "a key URL was fetched");
}

/// RFC 8725 §3.1: `alg: none` is never acceptable.
#[test]
fn unsecured_token_with_alg_none_is_refused() {
    let f = fixtures();
    let token = f.issuer.token().bound_to(&f.pki.alice).unsecured();
    assert_refused(&send_as_alice(&token), ALGORITHM_NOT_ALLOWED);
}

/// RFC 8725 §2.1: an HMAC "signed" with the issuer's public key verifies under a verifier
/// that lets the token pick the algorithm.
#[test]
fn hs256_token_keyed_with_a_public_key_is_refused() {
    let f = fixtures();
    for alg in [Alg::Es256, Alg::Rs256] {
        let token = f
            .issuer
            .token()
            .bound_to(&f.pki.alice)
            .hs256_keyed_with_public_key(f.issuer.key(alg));
        assert_refused(&send_as_alice(&token), ALGORITHM_NOT_ALLOWED);
    }
}

/// The JWKS says the `rs256-1` key is for RS256 (its `alg` member); a valid PS256 signature
/// by the same RSA key is still refused, because the key, not the token, decides.
#[test]
fn algorithm_other_than_the_keys_published_alg_is_refused() {
    let f = fixtures();
    let as_ps256 = f.issuer.key(Alg::Rs256).signing_as(Alg::Ps256);
    let token = f
        .issuer
        .token_signed_with(&as_ps256)
        .bound_to(&f.pki.alice)
        .sign();
    assert_refused(&send_as_alice(&token), ALGORITHM_NOT_ALLOWED);
}

/// A bound ES256 token for alice padded with a `padding` claim to a length in `range`.
fn token_of_length(range: std::ops::RangeInclusive<usize>) -> String {
    let f = fixtures();
    let base = f.issuer.token().bound_to(&f.pki.alice);
    let bare = base.clone().claim("padding", "").sign().len();
    // Each 3 claim characters add 4 token characters (base64url, RFC 4648 §5).
    let mut padding = (range.start().saturating_sub(bare)) * 3 / 4;
    loop {
        let token = base.clone().claim("padding", "A".repeat(padding)).sign();
        if range.contains(&token.len()) {
            return token;
        }
        assert!(token.len() < *range.start(), "overshot {range:?}");
        padding += 1;
    }
}

/// The limit is 8192 bytes: a token just under it is a token like any other.
#[test]
fn token_just_under_the_size_limit_is_accepted() {
    let token = token_of_length(8100..=8192);
    assert_served(&send_as_alice(&token));
}

#[test]
fn token_just_over_the_size_limit_is_refused() {
    let token = token_of_length(8193..=8260);
    assert_refused(&send_as_alice(&token), TOKEN_TOO_LARGE);
}

#[test]
fn oversized_token_is_refused() {
    let f = fixtures();
    let padding = "A".repeat(20 * 1024);
    let token = f
        .issuer
        .token()
        .claim("padding", padding)
        .bound_to(&f.pki.alice)
        .sign();
    assert!(token.len() > 20 * 1024);
    assert_refused(&send_as_alice(&token), TOKEN_TOO_LARGE);
}

// ---------------------------------------------------------------------------------------------
// Refused: how the token is presented (RFC 6750 §2)

#[test]
fn missing_token_gets_a_bare_bearer_challenge() {
    let f = fixtures();
    for path in ["/", "/orders", "/legacy"] {
        let response = request(path).cert(&f.pki.alice).send();
        assert_refused(&response, TOKEN_MISSING);
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer realm=\"tether\"")
        );
    }
}

/// RFC 6750 §2.3 and §5.3: a token in the URL leaks into logs and `Referer`; it is refused
/// on every protected route, even next to a valid header.
#[test]
fn token_in_query_is_refused() {
    let f = fixtures();
    let token = alice_bound_token();
    for path in ["/", "/orders", "/legacy"] {
        let response = request(&format!("{path}?access_token={token}"))
            .cert(&f.pki.alice)
            .send();
        assert_refused(&response, TOKEN_IN_QUERY);
    }
}

#[test]
fn token_in_query_is_refused_even_with_a_valid_authorization_header() {
    let f = fixtures();
    let token = alice_bound_token();
    let response = request(&format!("/?page=2&access_token={token}"))
        .cert(&f.pki.alice)
        .bearer(&token)
        .send();
    assert_refused(&response, TOKEN_IN_QUERY);
}

/// Regression test for issue 7 ("query token smuggling"): `?access_token[]=` and
/// `?access_token+=` passed Tether, and PHP, Rack and form decoders read them as
/// `access_token`. Percent-encoded forms go through Envoy's path normalization first.
#[test]
fn token_under_a_look_alike_query_name_is_refused() {
    let f = fixtures();
    let token = alice_bound_token();
    for name in [
        "access_token%5B%5D",
        "access_token+",
        "access.token",
        "access%255Ftoken",
        // From the review of the fix: PHP's unmatched bracket, qs's leading brackets, and
        // Doorkeeper's parameter name. (Brackets percent-encoded: curl would glob them.)
        "access%5Btoken",
        "%5Baccess_token%5D",
        "bearer_token",
    ] {
        let response = request(&format!("/?page=2&{name}={token}"))
            .cert(&f.pki.alice)
            .bearer(&token)
            .send();
        assert_refused(&response, TOKEN_IN_QUERY);
    }
}

/// Issue 7 ("body token smuggling"): a second token in a form body (RFC 6750 §2.2) could
/// reach an upstream that reads body tokens, unchecked. Form bodies on token routes are read,
/// and such a request refused.
#[test]
fn token_in_a_form_body_is_refused() {
    let f = fixtures();
    let token = alice_bound_token();
    let post = |path: &str, body: &[u8]| {
        request(path)
            .cert(&f.pki.alice)
            .bearer(&token)
            .method("POST")
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body)
            .send()
    };
    let smuggled = format!("amount=10&access_token%5B%5D={token}");
    assert_refused(&post("/orders", smuggled.as_bytes()), TOKEN_IN_BODY);
    // An ordinary form is served, body intact.
    let response = post("/orders", b"amount=10&note=access_token");
    assert_served(&response);
    assert_eq!(response.json()["body"], "amount=10&note=access_token");
    // A route that examines no token reads no body.
    assert_served(&post("/healthz", smuggled.as_bytes()));
}

#[test]
fn unprotected_routes_do_not_inspect_the_query() {
    let response = request("/healthz?access_token=whatever").send();
    assert_served(&response);
}

#[test]
fn two_authorization_headers_are_refused() {
    let f = fixtures();
    let response = request("/")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .bearer(&alice_bound_token())
        .send();
    assert_refused(&response, MULTIPLE_AUTHORIZATION);
}

#[test]
fn bearer_scheme_without_a_token_is_refused() {
    let f = fixtures();
    let response = request("/")
        .cert(&f.pki.alice)
        .header("authorization", "Bearer")
        .send();
    assert_refused(&response, MALFORMED_AUTHORIZATION);
}

/// Inputs a fuzzer would try. None may be served, and none may hurt the filter: a panic in a
/// wasm filter kills the VM for every request on that worker, so a good request must still
/// be served after each.
#[test]
fn garbage_credentials_are_refused_and_the_filter_keeps_serving() {
    let f = fixtures();
    let header_json = |json: &str| URL_SAFE_NO_PAD.encode(json);
    let exact: Vec<(Vec<u8>, Refusal)> = vec![
        (b"Bearer !!!".to_vec(), MALFORMED_AUTHORIZATION),
        (b"Bearer a.b".to_vec(), TOKEN_MALFORMED),
        (b"Bearer a.b.c".to_vec(), TOKEN_MALFORMED),
        (b"Bearer a.b.c.d.e".to_vec(), TOKEN_MALFORMED),
        (b"Bearer ..".to_vec(), TOKEN_MALFORMED),
        // Base64url of "not json" in every segment.
        (
            b"Bearer bm90IGpzb24.bm90IGpzb24.bm90IGpzb24".to_vec(),
            TOKEN_MALFORMED,
        ),
        // A header that is JSON but not an object.
        (
            format!("Bearer {}.e30.c2ln", header_json("[1,2,3]")).into_bytes(),
            TOKEN_MALFORMED,
        ),
    ];
    let refused_somehow: Vec<Vec<u8>> = vec![
        b"Basic YWxpY2U6c2VjcmV0".to_vec(),
        b"Bearer abc def".to_vec(),
        b"Bearer \xff\xfe\xfd.\x80\x81.\xc3\x28".to_vec(),
        [b"Bearer ".as_slice(), &[0xde, 0xad, 0xbe, 0xef, 0x7f, 0x01]].concat(),
        format!(
            "Bearer {}.{}.",
            header_json(r#"{"alg":"ES256","kid":"es256-1"}"#),
            "A".repeat(7000)
        )
        .into_bytes(),
    ];

    let good = || {
        let response = request("/")
            .cert(&f.pki.alice)
            .bearer(&alice_bound_token())
            .send();
        assert_served(&response);
    };
    for (value, expected) in exact {
        let response = request("/")
            .cert(&f.pki.alice)
            .raw_header("authorization", &value)
            .send();
        assert_refused(&response, expected);
        good();
    }
    for value in refused_somehow {
        let response = request("/")
            .cert(&f.pki.alice)
            .raw_header("authorization", &value)
            .send();
        assert_not_served(&response);
        good();
    }
}

// ---------------------------------------------------------------------------------------------
// Paths: prefix rules cannot be escaped

/// Envoy's `normalize_path` resolves dot segments before the filter picks a rule, so the
/// unprotected `/healthz` prefix cannot be used to reach `/orders`.
#[test]
fn dot_segments_cannot_escape_an_unprotected_prefix() {
    let response = request("/healthz/../orders").send();
    assert_refused(&response, TOKEN_MISSING);
}

/// Encoded slashes and backslashes survive Envoy's normalization; an upstream that decodes
/// them would see another path than the rule matched, so the filter refuses them outright.
#[test]
fn encoded_separators_in_the_path_are_refused() {
    let f = fixtures();
    for path in [
        "/healthz%2F..%2Forders",
        "/orders%2fadmin",
        "/orders%5Cadmin",
    ] {
        let response = request(path)
            .cert(&f.pki.alice)
            .bearer(&alice_bound_token())
            .send();
        assert_refused(&response, PATH_NOT_NORMALIZED);
    }
}

/// Regression test for issue 7: `%C0%AE`, an overlong (invalid) UTF-8 encoding of `.` that
/// some decoders still read as a dot, passed the check.
#[test]
fn percent_encoded_bytes_that_are_not_utf8_are_refused() {
    let f = fixtures();
    for path in ["/healthz/%C0%AE%C0%AE/orders", "/orders/%FF"] {
        let response = request(path)
            .cert(&f.pki.alice)
            .bearer(&alice_bound_token())
            .send();
        assert_refused(&response, PATH_NOT_NORMALIZED);
    }
}

// ---------------------------------------------------------------------------------------------
// Observability: counters and logs

fn counter(name: &str) -> u64 {
    envoy().stat(&format!("wasmcustom.tether.{name}"))
}

#[test]
fn allowed_and_refused_requests_are_counted_in_stats() {
    let f = fixtures();
    let allowed = counter("allowed");
    let mismatch = counter("refused.certificate_mismatch");
    let missing = counter("refused.token_missing");

    assert_served(
        &request("/")
            .cert(&f.pki.alice)
            .bearer(&alice_bound_token())
            .send(),
    );
    assert_refused(
        &request("/")
            .cert(&f.pki.mallory)
            .bearer(&alice_bound_token())
            .send(),
        CERTIFICATE_MISMATCH,
    );
    assert_refused(&request("/").send(), TOKEN_MISSING);

    // Other tests run concurrently against the same Envoy: counters only ever grow.
    assert!(counter("allowed") > allowed, "allowed not counted");
    assert!(
        counter("refused.certificate_mismatch") > mismatch,
        "certificate_mismatch not counted"
    );
    assert!(
        counter("refused.token_missing") > missing,
        "token_missing not counted"
    );
}

/// Issue 13: the token cache's lookups are in `/stats`, counted in the VM and added on the
/// root context's tick (250 ms), not by a host call on every request.
#[test]
fn token_cache_hits_and_misses_are_counted_in_stats() {
    let f = fixtures();
    let hits = counter("token_cache.hit");
    let misses = counter("token_cache.miss");
    // A new token: its first lookup in a worker's VM misses, the next ones there hit (four
    // requests, so that one worker sees it at least twice whatever the connections' spread).
    let token = alice_bound_token();
    for _ in 0..4 {
        assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while (counter("token_cache.hit") == hits || counter("token_cache.miss") == misses)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(counter("token_cache.hit") > hits, "cache hits not counted");
    assert!(
        counter("token_cache.miss") > misses,
        "cache misses not counted"
    );
}

/// Polls Envoy's log until `found` holds (log writes are asynchronous to the response).
fn wait_for_log(found: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = envoy().log();
        if found(&log) {
            return Some(log);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `line` holds `needle` as a whole word of hex digits.
fn has_hex_word(line: &str, needle: &str) -> bool {
    line.split(|c: char| !c.is_ascii_hexdigit())
        .any(|word| word == needle)
}

#[test]
fn refusal_is_logged_with_its_reason_and_a_token_fingerprint() {
    let f = fixtures();
    let token = alice_bound_token();
    let response = request("/").cert(&f.pki.mallory).bearer(&token).send();
    assert_refused(&response, CERTIFICATE_MISMATCH);

    // The fingerprint lets an operator correlate refusals of one token without logging it.
    let digest = Sha256::digest(token.as_bytes());
    let fingerprint: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let log = wait_for_log(|log| {
        log.lines()
            .any(|line| line.contains("certificate_mismatch") && has_hex_word(line, &fingerprint))
    });
    assert!(
        log.is_some(),
        "no log line with certificate_mismatch and fingerprint {fingerprint}:\n{}",
        envoy().log()
    );
}

/// The last line of defence for a token: not in the log, whole or in part. Checks every
/// credential this process has sent so far (tests run concurrently, so that is most of them),
/// after sending a few more of its own.
#[test]
fn envoy_log_never_contains_a_token() {
    let f = fixtures();
    let token = alice_bound_token();
    assert_served(&request("/").cert(&f.pki.alice).bearer(&token).send());
    assert_refused(
        &request("/").cert(&f.pki.mallory).bearer(&token).send(),
        CERTIFICATE_MISMATCH,
    );
    let expired = f.issuer.token().at("iat", -600).at("exp", -300).sign();
    assert_refused(&send_as_alice(&expired), TOKEN_EXPIRED);
    assert_refused(
        &request(&format!("/?access_token={token}"))
            .cert(&f.pki.alice)
            .send(),
        TOKEN_IN_QUERY,
    );
    // Make sure the log has caught up with these requests before searching it.
    let expired_fingerprint: String = Sha256::digest(expired.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let log =
        wait_for_log(|log| log.contains(&expired_fingerprint)).unwrap_or_else(|| envoy().log());
    assert!(!log.is_empty(), "Envoy's log is empty");

    // Any 24-character run of a token segment (or query value), anywhere in it, would be a
    // leak. Indexing the log's windows once keeps this linear in the sizes involved.
    const WINDOW: usize = 24;
    let log_windows: HashSet<&[u8]> = log.as_bytes().windows(WINDOW).collect();
    for credential in credentials_sent() {
        let pieces = credential
            .split(|c: char| " ,?&=.".contains(c))
            .filter(|piece| piece.len() >= WINDOW);
        for piece in pieces {
            if let Some(leak) = piece
                .as_bytes()
                .windows(WINDOW)
                .find(|window| log_windows.contains(window))
            {
                panic!(
                    "Envoy's log contains part of a credential ({}): see {}",
                    String::from_utf8_lossy(leak),
                    envoy().log_path().display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Other configurations: their own Envoy

/// With `strip_authorization: true` the token stops at the proxy: the upstream cannot leak or
/// replay what it never receives.
#[test]
fn upstream_sees_no_authorization_header_when_stripping() {
    let f = fixtures();
    let mut config = contract_config(&f.issuer);
    config["strip_authorization"] = json!(true);
    let stripping = Envoy::start(&Bootstrap::new(&f.pki, f.echo.port(), Some(config)));

    let response = HttpsRequest::new(stripping.https_port(), &f.pki.ca, "/orders")
        .cert(&f.pki.alice)
        .bearer(&alice_bound_token())
        .send();
    assert_served(&response);
    assert_eq!(
        response.upstream_header("authorization"),
        Vec::<String>::new()
    );
    assert_eq!(response.upstream_header(SUB_HEADER), ["alice"]);

    let refused = HttpsRequest::new(stripping.https_port(), &f.pki.ca, "/orders")
        .cert(&f.pki.mallory)
        .bearer(&alice_bound_token())
        .send();
    assert_refused(&refused, CERTIFICATE_MISMATCH);
    stripping.stop();
}

/// Without `clock_skew_seconds`, `max_token_lifetime_seconds` and `strip_authorization` the
/// documented defaults apply: 30 s of skew, 900 s of lifetime, the token forwarded.
#[test]
fn defaults_apply_when_options_are_omitted() {
    let f = fixtures();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": f.issuer.jwks()}],
        "rules": [{"prefix": "/", "require": "bound"}],
    });
    let defaults = Envoy::start(&Bootstrap::new(&f.pki, f.echo.port(), Some(config)));
    let send = |token: &str| {
        HttpsRequest::new(defaults.https_port(), &f.pki.ca, "/")
            .cert(&f.pki.alice)
            .bearer(token)
            .send()
    };
    let token = |edit: fn(support::jwt::TokenBuilder) -> support::jwt::TokenBuilder| {
        edit(f.issuer.token().bound_to(&f.pki.alice)).sign()
    };

    let within_skew = token(|t| t.at("iat", -300).at("exp", -10));
    let response = send(&within_skew);
    assert_served(&response);
    assert_eq!(
        response.upstream_header("authorization"),
        [format!("Bearer {within_skew}")],
        "strip_authorization defaults to false"
    );
    // No claims_to_headers configured: nothing is added.
    assert_eq!(response.upstream_header(SUB_HEADER), Vec::<String>::new());

    let beyond_skew = token(|t| t.at("iat", -300).at("exp", -120));
    assert_refused(&send(&beyond_skew), TOKEN_EXPIRED);
    let within_lifetime = token(|t| t.at("iat", 0).at("exp", 850));
    assert_served(&send(&within_lifetime));
    let beyond_lifetime = token(|t| t.at("iat", 0).at("exp", 1200));
    assert_refused(&send(&beyond_lifetime), LIFETIME_TOO_LONG);
    defaults.stop();
}

/// Writes a bootstrap with filter configuration `config` and runs `envoy --mode validate`.
fn validate(config: Value) -> envoy::Outcome {
    let f = fixtures();
    let dir = ScratchDir::new("validate");
    let bootstrap = Bootstrap::new(&f.pki, f.echo.port(), Some(config)).write(dir.path());
    envoy::validate(&bootstrap, dir.path())
}

/// Validation fails because of the filter, and the filter's own log message names every one
/// of `names`, so an operator can find the mistake.
#[track_caller]
fn assert_config_rejected_naming(config: Value, names: &[&str]) {
    let outcome = validate(config);
    assert!(
        !outcome.success,
        "a bad configuration passed validation:\n{}",
        outcome.output
    );
    assert!(
        outcome
            .output
            .contains("Unable to create Wasm plugin tether"),
        "validation failed for another reason than the filter:\n{}",
        outcome.output
    );
    // Envoy prefixes what the module logs with "wasm log".
    let filter_says: Vec<&str> = outcome
        .output
        .lines()
        .filter(|line| line.contains("wasm log"))
        .collect();
    for name in names {
        assert!(
            filter_says.iter().any(|line| line.contains(name)),
            "the filter's error does not name {name:?}:\n{}",
            filter_says.join("\n")
        );
    }
}

#[test]
fn contract_configuration_passes_validation() {
    let outcome = validate(contract_config(&fixtures().issuer));
    assert!(outcome.success, "{}", outcome.output);
}

#[test]
fn minimal_configuration_passes_validation_with_defaults() {
    let config = json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": fixtures().issuer.jwks(),
        }],
        "rules": [{"prefix": "/", "require": "bound"}],
    });
    let outcome = validate(config);
    assert!(outcome.success, "{}", outcome.output);
}

/// JWKs are someone else's format (RFC 7517 §4: unknown members must be ignored).
#[test]
fn unknown_members_inside_a_jwk_are_accepted() {
    let mut config = contract_config(&fixtures().issuer);
    config["issuers"][0]["jwks"]["keys"][0]["x-vendor-rotation"] = json!("2025-01");
    config["issuers"][0]["jwks"]["keys"][0]["key_ops"] = json!(["verify"]);
    let outcome = validate(config);
    assert!(outcome.success, "{}", outcome.output);
}

/// A misspelt option must not silently leave a weaker default in force.
#[test]
fn unknown_top_level_field_fails_validation_and_is_named() {
    let mut config = contract_config(&fixtures().issuer);
    config["strip_authorisation"] = json!(true);
    assert_config_rejected_naming(config, &["strip_authorisation"]);
}

#[test]
fn unknown_field_in_a_rule_fails_validation_and_is_named() {
    let mut config = contract_config(&fixtures().issuer);
    config["rules"][2]["methods"] = json!(["GET"]);
    assert_config_rejected_naming(config, &["methods"]);
}

#[test]
fn unknown_field_in_an_issuer_fails_validation_and_is_named() {
    let mut config = contract_config(&fixtures().issuer);
    config["issuers"][0]["audience"] = json!(AUDIENCE);
    assert_config_rejected_naming(config, &["audience"]);
}

#[test]
fn unknown_field_in_a_claim_mapping_fails_validation_and_is_named() {
    let mut config = contract_config(&fixtures().issuer);
    config["claims_to_headers"][0]["prefix_with"] = json!("x-");
    assert_config_rejected_naming(config, &["prefix_with"]);
}

#[test]
fn unknown_requirement_fails_validation_and_is_named() {
    let mut config = contract_config(&fixtures().issuer);
    config["rules"][3]["require"] = json!("optional");
    assert_config_rejected_naming(config, &["require", "optional"]);
}

/// Validation is not only a CI nicety: Envoy refuses to start with the bad configuration.
#[test]
fn envoy_does_not_start_with_a_bad_configuration() {
    let f = fixtures();
    let mut config = contract_config(&f.issuer);
    config["rules"][3]["require"] = json!("optional");
    let dir = ScratchDir::new("bad-start");
    let bootstrap = Bootstrap::new(&f.pki, f.echo.port(), Some(config)).write(dir.path());
    let outcome = envoy::start_expecting_failure(&bootstrap, dir.path());
    assert!(!outcome.success, "Envoy started with a bad configuration");
    assert!(
        outcome
            .output
            .contains("Unable to create Wasm plugin tether"),
        "{}",
        outcome.output
    );
}

// ---------------------------------------------------------------------------------------------
// Signature verifiers and the token cache (performance issue)

/// Flips one bit in the middle of the token's signature segment.
fn with_tampered_signature(token: &str) -> String {
    let [header, payload, signature] = support::jwt::segments(token);
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("signature is base64url");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Envoy 1.40 offers `verify_signature`: the filter must find it at start and say so.
#[test]
fn native_verifier_is_detected_and_logged() {
    let _ = envoy();
    let log = envoy().log();
    assert!(
        log.contains("by Envoy's native verify_signature"),
        "no detection line in the log:\n{log}"
    );
}

/// RS256/ES256/ES384 go to Envoy's BoringSSL, EdDSA and PS256 stay in the VM: a tampered
/// signature must fail on both paths, and the genuine one pass.
#[test]
fn tampered_signature_is_refused_by_the_native_and_the_vm_verifier() {
    let f = fixtures();
    for alg in [Alg::Es256, Alg::Es384, Alg::Rs256, Alg::EdDsa, Alg::Ps256] {
        let genuine = f
            .issuer
            .token_signed_with(f.issuer.key(alg))
            .bound_to(&f.pki.alice)
            .sign();
        assert_served(&send_as_alice(&genuine));
        assert_refused(
            &send_as_alice(&with_tampered_signature(&genuine)),
            SIGNATURE_INVALID,
        );
    }
}

/// A token verified once is cached, but the cache never stands in for the binding: the same
/// token from another client, or without a certificate, is refused between two good calls.
#[test]
fn cached_token_still_needs_its_certificate_on_every_request() {
    let f = fixtures();
    let token = alice_bound_token();
    for _ in 0..2 {
        assert_served(&send_as_alice(&token));
        let stolen = request("/orders")
            .cert(&f.pki.mallory)
            .bearer(&token)
            .send();
        assert_refused(&stolen, CERTIFICATE_MISMATCH);
        let bare = request("/orders").bearer(&token).send();
        assert_refused(&bare, CLIENT_CERTIFICATE_MISSING);
    }
}

/// With `token_cache_entries: 0` every request verifies the signature, with the same results.
#[test]
fn cache_disabled_gives_the_same_decisions() {
    let f = fixtures();
    let mut config = contract_config(&f.issuer);
    config["token_cache_entries"] = json!(0);
    let uncached = Envoy::start(&Bootstrap::new(&f.pki, f.echo.port(), Some(config)));
    let token = alice_bound_token();
    for _ in 0..2 {
        let served = HttpsRequest::new(uncached.https_port(), &f.pki.ca, "/orders")
            .cert(&f.pki.alice)
            .bearer(&token)
            .send();
        assert_served(&served);
        let stolen = HttpsRequest::new(uncached.https_port(), &f.pki.ca, "/orders")
            .cert(&f.pki.mallory)
            .bearer(&token)
            .send();
        assert_refused(&stolen, CERTIFICATE_MISMATCH);
        let forged = HttpsRequest::new(uncached.https_port(), &f.pki.ca, "/orders")
            .cert(&f.pki.alice)
            .bearer(&with_tampered_signature(&token))
            .send();
        assert_refused(&forged, SIGNATURE_INVALID);
    }
    uncached.stop();
}
