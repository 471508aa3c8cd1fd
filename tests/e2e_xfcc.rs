//! Issue 11, end to end with two real Envoys: an edge that ends the client's mutual TLS and
//! forwards the client certificate in `x-forwarded-client-cert` (XFCC) over mutual TLS of its
//! own, and a sidecar running Tether with `peer_certificate.source: xfcc`, trusting the edge
//! by its SPIFFE ID. Also client identity (RFC 8705 §2.1.2) and `source_cidrs` on a direct
//! connection, with the certificate's every SAN read from the Cert Envoy forwards to its
//! filters (`SANITIZE_SET` with `set_current_client_cert_details.cert`).
//!
//! Certificates come from `openssl` (tests/support/pki.rs), tokens from the harness's issuer;
//! the XFCC the sidecar reads is written by the edge Envoy itself.

mod support;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{Bootstrap, Envoy};
use support::frames::{Frames, Protocol, Stream};
use support::jwt::Issuer;
use support::pki::{ClientCert, Pki};
use support::scratch::ScratchDir;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

/// The edge's client certificate, as Envoy writes it in XFCC (every field it can).
fn sanitize_set() -> Value {
    json!({
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {
            "subject": true, "cert": true, "uri": true, "dns": true
        },
    })
}

fn hash_hex(client: &ClientCert) -> String {
    Sha256::digest(&client.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends `request` to `envoy` (Tether's) and checks it was refused with `status` for
/// `reason`: by that reason's counter, which moves by one, and never reached the upstream.
#[track_caller]
fn assert_refused(
    envoy: &Envoy,
    echo: &EchoBackend,
    request: HttpsRequest,
    status: u16,
    reason: &str,
) {
    let counter = format!("wasmcustom.tether.refused.{reason}");
    let before = envoy.stat(&counter);
    let response = request.send();
    assert_eq!(response.status, status, "{reason}: {}", response.text());
    let code = if status == 400 {
        "invalid_request"
    } else {
        "invalid_token"
    };
    assert_eq!(response.json()["error"], code, "{reason}");
    assert_eq!(envoy.stat(&counter), before + 1, "{counter}");
    assert!(!echo.received(&response.test_id), "{reason}");
}

/// A PKI with an edge certificate (`ingress`, trusted by its SPIFFE ID), an issuer and an
/// upstream, for a sidecar that reads the client certificate from the edge's XFCC.
struct EdgeSetup {
    _dir: ScratchDir,
    pki: Pki,
    ingress: ClientCert,
    issuer: Issuer,
    echo: EchoBackend,
}

impl EdgeSetup {
    fn new(name: &str) -> EdgeSetup {
        let dir = ScratchDir::new(name);
        let pki = Pki::generate(&dir.join("pki"));
        let ingress = pki.issue_client("ingress", "/CN=ingress", "");
        let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
        EdgeSetup {
            _dir: dir,
            pki,
            ingress,
            issuer,
            echo: EchoBackend::start(),
        }
    }

    /// Tether's configuration with `rules`: Alice's client registered by her SPIFFE ID, XFCC
    /// trusted from the edge.
    fn config(&self, rules: Value) -> Value {
        json!({
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": self.issuer.jwks()}],
            "rules": rules,
            "clients": [{"client_id": "alice-app", "tls_client_auth_san_uri": self.pki.alice.spiffe_id}],
            "peer_certificate": {"source": "xfcc", "trusted_peers": [{"san_uri": self.ingress.spiffe_id}]},
        })
    }
}

#[test]
fn a_trusted_edge_forwards_the_client_certificate_and_nobody_else_can() {
    let setup = EdgeSetup::new("e2e-xfcc");
    let EdgeSetup {
        pki,
        ingress,
        issuer,
        echo,
        ..
    } = &setup;
    let config = setup.config(json!([
        {"prefix": "/healthz", "require": "none"},
        {"prefix": "/", "require": "mtls"}
    ]));
    // The sidecar keeps XFCC and appends its own element, for the edge's connection: Tether
    // must skip that one.
    let mut sidecar = Bootstrap::new(pki, echo.port(), Some(config));
    sidecar.connection_manager = Some(json!({
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": {"uri": true},
    }));
    let sidecar = Envoy::start(&sidecar);
    let mut edge = Bootstrap::new(pki, sidecar.https_port(), None);
    edge.connection_manager = Some(sanitize_set());
    edge.upstream_tls = Some(ingress.clone());
    let edge = Envoy::start(&edge);

    let via_edge = |client: Option<&ClientCert>, token: &str| {
        let request = HttpsRequest::new(edge.https_port(), &pki.ca, "/orders/1").bearer(token);
        match client {
            Some(client) => request.cert(client),
            None => request,
        }
    };
    let alices = issuer.token().bound_to(&pki.alice).sign();

    // Alice through the edge: her certificate-bound token is served, and her identity holds.
    let response = via_edge(Some(&pki.alice), &alices).send();
    assert_eq!(response.status, 200, "{}", response.text());
    let forwarded = response
        .upstream_header("x-forwarded-client-cert")
        .join(",");
    assert!(
        forwarded.contains(&format!("Hash={}", hash_hex(&pki.alice))),
        "the upstream did not get the edge's XFCC: {forwarded}"
    );

    // Mallory through the edge with Alice's token: the edge forwards Mallory's certificate.
    assert_refused(
        &sidecar,
        echo,
        via_edge(Some(&pki.mallory), &alices),
        401,
        "certificate_mismatch",
    );
    // Mallory's own token of Alice's client: not Alice's registered identity.
    let mallorys = issuer.token().bound_to(&pki.mallory).sign();
    assert_refused(
        &sidecar,
        echo,
        via_edge(Some(&pki.mallory), &mallorys),
        401,
        "client_identity_mismatch",
    );
    // A certificate of the same CA whose URI SAN, written unescaped by the edge, would read
    // as an element of its own naming Alice's certificate (an attacker's review of issue 11):
    // one element was expected, two are refused.
    let injector = pki.issue_client_with_uris(
        "injector",
        &[&format!(
            "https://m.example/x,Hash={};URI={}",
            hash_hex(&pki.alice),
            pki.alice.spiffe_id
        )],
    );
    assert_refused(
        &sidecar,
        echo,
        via_edge(Some(&injector), &alices),
        400,
        "xfcc_malformed",
    );
    // No client certificate at the edge: the edge's own never stands in for it.
    assert_refused(
        &sidecar,
        echo,
        via_edge(None, &alices),
        401,
        "client_certificate_missing",
    );

    // The same XFCC sent straight to the sidecar by Mallory is not trusted: it is removed,
    // counted, and Mallory's own certificate is the client's.
    let forged = format!("Hash={};URI={}", hash_hex(&pki.alice), pki.alice.spiffe_id);
    let untrusted_before = sidecar.stat("wasmcustom.tether.xfcc_untrusted");
    let request = HttpsRequest::new(sidecar.https_port(), &pki.ca, "/orders/1")
        .cert(&pki.mallory)
        .bearer(&alices)
        .header("x-forwarded-client-cert", &forged);
    assert_refused(&sidecar, echo, request, 401, "certificate_mismatch");
    assert_eq!(
        sidecar.stat("wasmcustom.tether.xfcc_untrusted"),
        untrusted_before + 1
    );
    // Alice straight to the sidecar, with a forged XFCC naming Mallory: direct mesh clients
    // keep working, and the forged header never reaches the upstream.
    let forged = format!("Hash={}", hash_hex(&pki.mallory));
    let response = HttpsRequest::new(sidecar.https_port(), &pki.ca, "/orders/1")
        .cert(&pki.alice)
        .bearer(&alices)
        .header("x-forwarded-client-cert", &forged)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = response
        .upstream_header("x-forwarded-client-cert")
        .join(",");
    assert!(
        !upstream.contains(&hash_hex(&pki.mallory)),
        "a forged XFCC reached the upstream: {upstream}"
    );
    assert_eq!(
        sidecar.stat("wasmcustom.tether.xfcc_untrusted"),
        untrusted_before + 2
    );

    // Alice straight to the sidecar with no header of her own: the element the sidecar
    // appends for her connection is not forwarded either (it could as well be a client's own
    // writing), and nothing is counted.
    let response = HttpsRequest::new(sidecar.https_port(), &pki.ca, "/orders/1")
        .cert(&pki.alice)
        .bearer(&alices)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response
        .upstream_header("x-forwarded-client-cert")
        .is_empty());
    assert_eq!(
        sidecar.stat("wasmcustom.tether.xfcc_untrusted"),
        untrusted_before + 2
    );

    // A malformed XFCC from the trusted peer itself (acting as the edge): 400, never half read.
    let request = HttpsRequest::new(sidecar.https_port(), &pki.ca, "/orders/1")
        .cert(ingress)
        .bearer(&alices)
        .header("x-forwarded-client-cert", "Hash=\"unterminated");
    assert_refused(&sidecar, echo, request, 400, "xfcc_malformed");
    // On every route: a broken edge's header is never forwarded half understood.
    let request = HttpsRequest::new(sidecar.https_port(), &pki.ca, "/healthz")
        .cert(ingress)
        .header("x-forwarded-client-cert", "Hash=00");
    assert_refused(&sidecar, echo, request, 400, "xfcc_malformed");
    edge.stop();
    sidecar.stop();
}

#[test]
fn client_identity_and_networks_hold_on_direct_connections() {
    let dir = ScratchDir::new("e2e-identity");
    let pki = Pki::generate(&dir.join("pki"));
    // Several SANs: the registered one is not the first URI SAN Envoy's attributes report.
    let tpp = pki.issue_client(
        "tpp",
        "/C=GB/O=Example Bank, Ltd./CN=tpp+UID=42",
        ",URI:https://tpp.example.com/id,DNS:tpp.example.com,DNS:api.tpp.example.com,IP:2001:db8::7,email:ops@tpp.example.com",
    );
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "rules": [
            {"prefix": "/partners", "require": "bearer", "require_registered_client": true},
            {"prefix": "/", "require": "bearer"}
        ],
        "clients": [
            {"client_id": "by-uri", "tls_client_auth_san_uri": "https://tpp.example.com/id"},
            {"client_id": "by-dns", "tls_client_auth_san_dns": "API.tpp.example.com"},
            {"client_id": "by-ip", "tls_client_auth_san_ip": "2001:db8:0:0:0:0:0:7"},
            {"client_id": "by-email", "tls_client_auth_san_email": "ops@TPP.example.com"},
            {"client_id": "by-dn", "tls_client_auth_subject_dn": "uid=42+cn=TPP, o=Example Bank\\, Ltd., c=GB"},
            {"client_id": "other-uri", "tls_client_auth_san_uri": "https://other.example.com/id"},
            {"client_id": "loopback", "source_cidrs": ["127.0.0.0/8", "::1"]},
            {"client_id": "elsewhere", "source_cidrs": ["10.0.0.0/8"]}
        ],
    });
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config));
    bootstrap.connection_manager = Some(sanitize_set());
    let envoy = Envoy::start(&bootstrap);
    let call = |client_id: &str, path: &str, cert: Option<&ClientCert>| {
        let token = issuer.token().claim("client_id", client_id).sign();
        let request = HttpsRequest::new(envoy.https_port(), &pki.ca, path).bearer(&token);
        match cert {
            Some(cert) => request.cert(cert),
            None => request,
        }
    };
    for client_id in ["by-uri", "by-dns", "by-ip", "by-email", "by-dn"] {
        let response = call(client_id, "/orders", Some(&tpp)).send();
        assert_eq!(response.status, 200, "{client_id}: {}", response.text());
        // Someone else's certificate, and no certificate.
        assert_refused(
            &envoy,
            &echo,
            call(client_id, "/orders", Some(&pki.alice)),
            401,
            "client_identity_mismatch",
        );
        assert_refused(
            &envoy,
            &echo,
            call(client_id, "/orders", None),
            401,
            "client_identity_mismatch",
        );
    }
    assert_refused(
        &envoy,
        &echo,
        call("other-uri", "/orders", Some(&tpp)),
        401,
        "client_identity_mismatch",
    );
    // The connection's own address, from 127.0.0.1.
    let response = call("loopback", "/orders", None).send();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_refused(
        &envoy,
        &echo,
        call("elsewhere", "/orders", None),
        401,
        "client_network_mismatch",
    );
    // Envoy (use_remote_address: false, its default) takes source.address from
    // x-forwarded-for: a client in the wrong network that writes one is not believed.
    assert_refused(
        &envoy,
        &echo,
        call("elsewhere", "/orders", None).header("x-forwarded-for", "10.1.2.3"),
        401,
        "client_network_mismatch",
    );
    // Registered clients only on /partners.
    assert_refused(
        &envoy,
        &echo,
        call("stranger", "/partners/1", None),
        401,
        "client_not_registered",
    );
    let response = call("stranger", "/orders", None).send();
    assert_eq!(response.status, 200, "{}", response.text());
    let response = call("loopback", "/partners/1", None).send();
    assert_eq!(response.status, 200, "{}", response.text());

    // Without the Cert that SANITIZE_SET puts in XFCC, Envoy's attributes tell only the first
    // URI and DNS SAN: the second URI SAN is not seen (the README says so).
    let mut attributes_only = bootstrap.clone();
    attributes_only.connection_manager = None;
    let plain = Envoy::start(&attributes_only);
    let token = issuer.token().claim("client_id", "by-uri").sign();
    let request = HttpsRequest::new(plain.https_port(), &pki.ca, "/orders")
        .cert(&tpp)
        .bearer(&token);
    assert_refused(&plain, &echo, request, 401, "client_identity_mismatch");
    let token = issuer.token().claim("client_id", "by-dn").sign();
    let response = HttpsRequest::new(plain.https_port(), &pki.ca, "/orders")
        .cert(&tpp)
        .bearer(&token)
        .send();
    assert_eq!(response.status, 200, "{}", response.text());
    plain.stop();
    envoy.stop();
}

/// Envoy's `set_filter_state` filter, giving Tether the connection's own peer address.
fn peer_address_filter() -> Value {
    json!({
        "name": "envoy.filters.http.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": [{
                "object_key": "tether.peer_address",
                "factory_key": "envoy.string",
                "format_string": {"text_format_source": {
                    "inline_string": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"
                }},
            }],
        },
    })
}

#[test]
fn source_cidrs_see_the_connections_own_address_whatever_x_forwarded_for_says() {
    let dir = ScratchDir::new("e2e-networks");
    let pki = Pki::generate(&dir.join("pki"));
    let issuer = Issuer::generate(&dir.join("issuer"), ISSUER, AUDIENCE);
    let echo = EchoBackend::start();
    let config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": issuer.jwks()}],
        "rules": [{"prefix": "/", "require": "bearer"}],
        "clients": [
            {"client_id": "loopback", "source_cidrs": ["127.0.0.0/8"]},
            {"client_id": "elsewhere", "source_cidrs": ["10.0.0.0/8"]}
        ],
    });
    let call = |envoy: &Envoy, client_id: &str, forwarded_for: Option<&str>| {
        let token = issuer.token().claim("client_id", client_id).sign();
        let request = HttpsRequest::new(envoy.https_port(), &pki.ca, "/orders").bearer(&token);
        match forwarded_for {
            Some(address) => request.header("x-forwarded-for", address),
            None => request,
        }
    };
    // With the filter state, x-forwarded-for changes nothing, whichever way Envoy reads it.
    for use_remote_address in [false, true] {
        let mut bootstrap = Bootstrap::new(&pki, echo.port(), Some(config.clone()));
        bootstrap.filters_before = vec![peer_address_filter()];
        bootstrap.connection_manager = Some(json!({"use_remote_address": use_remote_address}));
        let envoy = Envoy::start(&bootstrap);
        for forwarded_for in [None, Some("10.1.2.3"), Some("198.51.100.7")] {
            let response = call(&envoy, "loopback", forwarded_for).send();
            assert_eq!(
                response.status,
                200,
                "{forwarded_for:?}: {}",
                response.text()
            );
            assert_refused(
                &envoy,
                &echo,
                call(&envoy, "elsewhere", forwarded_for),
                401,
                "client_network_mismatch",
            );
        }
        envoy.stop();
    }
    // Without it, a request with x-forwarded-for has no known peer address: refused, and the
    // log says how to fix it.
    let envoy = Envoy::start(&Bootstrap::new(&pki, echo.port(), Some(config)));
    assert_refused(
        &envoy,
        &echo,
        call(&envoy, "loopback", Some("127.0.0.1")),
        401,
        "client_network_mismatch",
    );
    assert!(
        envoy
            .log()
            .contains("source_cidrs: a request came with x-forwarded-for"),
        "no hint in the log"
    );
    let response = call(&envoy, "loopback", None).send();
    assert_eq!(response.status, 200, "{}", response.text());
    envoy.stop();
}

/// The held-request path over HTTP/2 (Python's `h2`): a form body read slowly, with trailers,
/// on a request whose client certificate a trusted edge forwarded. The client is decided on
/// the headers; the body and the trailers change nothing about whose certificate it was.
#[test]
fn over_http2_a_forwarded_certificate_holds_through_a_slow_body_and_trailers() {
    let setup = EdgeSetup::new("e2e-xfcc-h2");
    let EdgeSetup {
        pki,
        ingress,
        issuer,
        echo,
        ..
    } = &setup;
    let config = setup.config(json!([{"prefix": "/", "require": "mtls"}]));
    let mut bootstrap = Bootstrap::new(pki, echo.port(), Some(config));
    bootstrap.http2 = true;
    bootstrap.connection_manager = Some(json!({"forward_client_cert_details": "FORWARD_ONLY"}));
    let sidecar = Envoy::start(&bootstrap);
    let alices = issuer.token().bound_to(&pki.alice).sign();
    let element =
        |client: &ClientCert| format!("Hash={};URI={}", hash_hex(client), client.spiffe_id);
    let post = |xfcc: &str, body: &[&[u8]]| {
        let mut stream = Stream::new("POST", "/orders/1")
            .header("authorization", &format!("Bearer {alices}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-client-cert", xfcc);
        for (i, chunk) in body.iter().enumerate() {
            stream = stream.data(300 * i as u64, chunk, false);
        }
        stream.trailers(300 * body.len() as u64, &[("x-checksum", "1")])
    };
    let as_edge = Frames::new(sidecar.https_port(), pki, Protocol::H2).cert(ingress);
    let answers = as_edge.send(&[
        post(&element(&pki.alice), &[b"amount=10", b"&note=slow"]),
        post(&element(&pki.mallory), &[b"amount=10", b"&note=slow"]),
        post(
            &element(&pki.alice),
            &[b"amount=10&access", b"_token=stolen"],
        ),
        post("Hash=\"unterminated", &[b"amount=10"]),
    ]);
    assert_eq!(answers[0].status, Some(200), "alice: {:?}", answers[0]);
    assert_eq!(answers[0].json()["body"], "amount=10&note=slow");
    assert_eq!(
        answers[1].status,
        Some(401),
        "mallory's element: {:?}",
        answers[1]
    );
    assert_eq!(
        answers[2].status,
        Some(400),
        "a token in the body: {:?}",
        answers[2]
    );
    assert_eq!(answers[3].status, Some(400), "malformed: {:?}", answers[3]);
    for (counter, at_least) in [
        ("certificate_mismatch", 1),
        ("token_in_body", 1),
        ("xfcc_malformed", 1),
    ] {
        let name = format!("wasmcustom.tether.refused.{counter}");
        assert_eq!(sidecar.stat(&name), at_least, "{name}");
    }
    // Mallory, straight to the sidecar over HTTP/2, with the edge's kind of header naming
    // Alice: not trusted, so Mallory's own certificate is the client's.
    let answer = Frames::new(sidecar.https_port(), pki, Protocol::H2)
        .cert(&pki.mallory)
        .send_one(post(&element(&pki.alice), &[b"amount=10", b"&note=slow"]));
    assert_eq!(answer.status, Some(401), "{answer:?}");
    assert_eq!(
        sidecar.stat("wasmcustom.tether.refused.certificate_mismatch"),
        2
    );
    assert_eq!(sidecar.stat("wasmcustom.tether.xfcc_untrusted"), 1);
    sidecar.stop();
}
