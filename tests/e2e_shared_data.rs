//! End-to-end tests of Tether's shared data against another Wasm plugin in the same Envoy
//! (tests/plugins/intruder, built into dist/intruder.wasm): it writes records shaped like
//! Tether's key-set records, with the attacker's key, where Tether keeps its key sets.
//!
//! Regression tests for issue 7, finding 5: with an empty `vm_id` and one fixed key name, a
//! co-located plugin injected a key set with a far-future `fetched_at`; tokens signed by the
//! attacker were served, and the record was never refreshed.

mod support;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{plugin_filter, Bootstrap, Envoy};
use support::jwt::{Alg, Issuer, SigningKey};
use support::keyserver::KeyServer;
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";
const CLUSTER: &str = "idp";
const AUTHORITY: &str = "idp.example.com";
const PATH: &str = "/.well-known/jwks.json";

struct Setup {
    pki: Pki,
    issuer: Issuer,
    attacker: SigningKey,
    echo: EchoBackend,
    server: KeyServer,
    _dir: ScratchDir,
}

fn setup() -> Setup {
    let dir = ScratchDir::new("e2e-shared-data");
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let keys = dir.join("attacker");
    std::fs::create_dir_all(&keys).expect("attacker key dir");
    let server = KeyServer::start(&issuer.jwks());
    Setup {
        pki: Pki::generate(&dir.join("pki")),
        issuer,
        attacker: SigningKey::generate(&keys, Alg::Es256, "attacker-1", true),
        echo: EchoBackend::start(),
        server,
        _dir: dir,
    }
}

fn config() -> Value {
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                     "remote_jwks": {"cluster": CLUSTER, "authority": AUTHORITY, "path": PATH}}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where Tether keeps this key set: what an attacker who knows the configuration can work out
/// (README, "Shared data"). Also v0.1's fixed key, for a run against the old module.
fn tether_keys(config: &Value) -> [String; 2] {
    let source = hex(&Sha256::digest(format!("{CLUSTER}\n{AUTHORITY}\n{PATH}"))[..8]);
    let namespace = Sha256::new()
        .chain_update(b"tether.namespace.v1\0")
        .chain_update(b"")
        .chain_update(b"\0")
        .chain_update(config.to_string().as_bytes())
        .finalize();
    [
        format!("tether.{}.jwks.{source}", hex(&namespace[..8])),
        format!("tether.jwks.{source}"),
    ]
}

/// Envoy with the intruder (in VM `intruder_vm`) writing `record` lines, then Tether.
fn envoy(s: &Setup, intruder_vm: &str, when: &str, document: &str) -> Envoy {
    let config = config();
    let lines: Vec<String> = tether_keys(&config)
        .iter()
        .map(|key| format!("{key} {when} {document}"))
        .collect();
    let mut bootstrap = Bootstrap::new(&s.pki, s.echo.port(), Some(config));
    bootstrap.clusters.push((CLUSTER.into(), s.server.port));
    bootstrap.filters_before.push(plugin_filter(
        "intruder",
        &repo_root().join("dist/intruder.wasm"),
        &lines.join("\n"),
        intruder_vm,
    ));
    let envoy = Envoy::start(&bootstrap);
    assert!(envoy.log().contains("intruder: wrote"), "{}", envoy.log());
    envoy
}

fn call(s: &Setup, envoy: &Envoy, token: &str) -> Response {
    HttpsRequest::new(envoy.https_port(), &s.pki.ca, "/orders")
        .cert(&s.pki.alice)
        .bearer(token)
        .send()
}

fn attacker_jwks(s: &Setup) -> String {
    json!({"keys": [s.attacker.jwk()]}).to_string()
}

/// The attacker's token is refused and the issuer's is served.
fn assert_only_the_issuer_is_trusted(s: &Setup, envoy: &Envoy) {
    let forged = s
        .issuer
        .token_signed_with(&s.attacker)
        .bound_to(&s.pki.alice)
        .sign();
    let response = call(s, envoy, &forged);
    assert_eq!(
        response.status,
        401,
        "attacker's token: {}",
        response.text()
    );
    let genuine = s.issuer.token().bound_to(&s.pki.alice).sign();
    let response = call(s, envoy, &genuine);
    assert_eq!(response.status, 200, "issuer's token: {}", response.text());
    assert!(s.server.hits() >= 1, "Tether fetched the key set itself");
}

#[test]
fn key_set_injected_with_a_future_fetch_time_is_refused_and_fetched_again() {
    let s = setup();
    // The same vm_id as Tether: the intruder reaches Tether's records.
    let envoy = envoy(&s, "tether", "future", &attacker_jwks(&s));
    assert_only_the_issuer_is_trusted(&s, &envoy);
    assert!(
        envoy
            .log()
            .contains("shared record of the key set from cluster \"idp\" refused"),
        "{}",
        envoy.log()
    );
    envoy.stop();
}

#[test]
fn injected_document_that_is_not_a_key_set_is_fetched_again() {
    let s = setup();
    let envoy = envoy(&s, "tether", "now", "{\"not\": \"a key set\"}");
    let genuine = s.issuer.token().bound_to(&s.pki.alice).sign();
    let response = call(&s, &envoy, &genuine);
    assert_eq!(response.status, 200, "{}", response.text());
    envoy.stop();
}

#[test]
fn a_plugin_in_another_vm_cannot_reach_tethers_records() {
    let s = setup();
    // A plausible record, in every way Tether's own but for the key: only the VM boundary
    // keeps it out (README: give Tether a vm_id of its own).
    let envoy = envoy(&s, "", "now", &attacker_jwks(&s));
    assert_only_the_issuer_is_trusted(&s, &envoy);
    envoy.stop();
}
