//! Tether's decisions in Envoy's access log (issue 11): the filter publishes the decision, the
//! refusal's reason, the bindings proved, the token's client and subject and the token's
//! fingerprint as filter state, and `envoy/sidecar.yaml`'s access log format prints them. This
//! test runs that very format (read from the file) in the real Envoy and reads the log. No
//! token, and no credential the test sent, ever appears in it.

mod support;

use serde_json::json;

use support::client::{credentials_sent, HttpsRequest};
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::jwt::Issuer;
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;
use tether::token::fingerprint;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

/// The access log format of `envoy/sidecar.yaml` (its one `inline_string`), unquoted.
fn sidecar_format() -> String {
    let yaml = std::fs::read_to_string(repo_root().join("envoy/sidecar.yaml")).expect("sidecar");
    let line = yaml
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("inline_string: \"[%START_TIME%]")
        })
        .expect("the access log format");
    let quoted = line
        .trim_start()
        .trim_start_matches("inline_string:")
        .trim();
    serde_json::from_str(quoted).expect("a double-quoted YAML string JSON can read")
}

/// The value of `name=` in an access log line.
fn field<'l>(line: &'l str, name: &str) -> &'l str {
    line.split(' ')
        .find_map(|part| part.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
}

#[test]
fn the_sidecars_access_log_shows_tethers_decisions_and_never_a_token() {
    let dir = ScratchDir::new("e2e-access-log");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "rules": [{"prefix": "/healthz", "require": "none"}, {"prefix": "/", "require": "mtls"}],
    });
    let log = dir.join("access.log");
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.access_log = Some((log.clone(), sidecar_format()));
    let envoy = Envoy::start(&bootstrap);
    let token = issuer
        .token()
        .bound_to(&pki.alice)
        .claim("client_id", "orders-app")
        .sign();
    let get = |path: &str| HttpsRequest::new(envoy.https_port(), &pki.ca, path);
    // Allowed: alice over her own certificate.
    assert_eq!(
        get("/orders/1")
            .cert(&pki.alice)
            .bearer(&token)
            .send()
            .status,
        200
    );
    // Refused: her token, stolen, over mallory's certificate.
    assert_eq!(
        get("/orders/2")
            .cert(&pki.mallory)
            .bearer(&token)
            .send()
            .status,
        401
    );
    // Refused before any token is read: a token in the URL.
    let in_query = format!("/orders/3?access_token={token}");
    assert_eq!(get(&in_query).cert(&pki.alice).send().status, 400);
    // Nothing to decide: the route examines no token.
    assert_eq!(get("/healthz").send().status, 200);
    envoy.stop();

    let text = std::fs::read_to_string(&log).expect("the access log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let line = |path: &str| {
        *lines
            .iter()
            .find(|l| l.contains(&format!(" {path} ")))
            .unwrap_or_else(|| panic!("no line for {path}: {text}"))
    };
    let fp = fingerprint(&token);
    let allowed = line("/orders/1");
    assert_eq!(field(allowed, "tether"), "allowed", "{allowed}");
    assert_eq!(field(allowed, "reason"), "-");
    assert_eq!(field(allowed, "binding"), "mtls");
    assert_eq!(field(allowed, "client_id"), "orders-app");
    assert_eq!(field(allowed, "sub"), "alice");
    assert_eq!(field(allowed, "token_fp"), fp);
    let stolen = line("/orders/2");
    assert_eq!(field(stolen, "tether"), "refused", "{stolen}");
    assert_eq!(field(stolen, "reason"), "certificate_mismatch");
    assert_eq!(field(stolen, "binding"), "-");
    // Whose token was replayed: the log names its client and subject.
    assert_eq!(field(stolen, "client_id"), "orders-app");
    assert_eq!(field(stolen, "sub"), "alice");
    assert_eq!(field(stolen, "token_fp"), fp);
    let query = line("/orders/3");
    assert_eq!(field(query, "reason"), "token_in_query", "{query}");
    assert_eq!(field(query, "token_fp"), "-");
    let health = line("/healthz");
    assert_eq!(field(health, "tether"), "allowed", "{health}");
    assert_eq!(field(health, "binding"), "-");
    // No part of a token, an Authorization value or a URL's query: any 24-character run of
    // one, anywhere in the log, would be a leak. Only fingerprints.
    const WINDOW: usize = 24;
    for credential in credentials_sent() {
        let pieces = credential
            .split(|c: char| " ,?&=.".contains(c))
            .filter(|piece| piece.len() >= WINDOW);
        for piece in pieces {
            for window in piece.as_bytes().windows(WINDOW) {
                let window = String::from_utf8_lossy(window);
                assert!(
                    !text.contains(window.as_ref()),
                    "part of a credential ({window}) reached the access log: {text}"
                );
            }
        }
    }
}
