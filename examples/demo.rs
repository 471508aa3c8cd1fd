//! `make demo`: Tether refusing a stolen access token, with real requests.
//!
//! Starts a backend on 127.0.0.1:18080 and Envoy with `envoy/demo.yaml` (mTLS on
//! localhost:10443, Tether in front of the backend), makes a throw-away PKI in `build/demo/`,
//! mints tokens with the DEMO-ONLY key `envoy/demo-issuer.key.pem`, signs requests with the
//! DEMO-ONLY client key `envoy/demo-client.key.pem`, and plays nine scenes. Then DPoP
//! (RFC 9449) on demo.yaml's `require: "dpop"` route: four more scenes, with client keys and
//! proofs made by jwcrypto (`tests/interop/dpop_client.py`).
//! Exits non-zero if any scene does not end as the story says.

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::json;

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{envoy_binary, Envoy};
use support::jws::{self, Signer};
use support::jwt::{Alg, Issuer, SigningKey};
use support::pki::Pki;
use support::{repo_root, run_interop_client};

/// Must match `envoy/demo.yaml`.
const HTTPS_PORT: u16 = 10443;
const BACKEND_PORT: u16 = 18080;
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://orders.mesh.internal";

fn main() {
    let root = repo_root();
    // Fail early with a hint rather than halfway through the story. (demo.yaml loads the
    // filter from dist/tether.wasm, whatever TETHER_WASM says.)
    envoy_binary();
    if !root.join("dist/tether.wasm").exists() {
        eprintln!("dist/tether.wasm is missing: run `make demo` (or `make build` first)");
        std::process::exit(1);
    }

    let demo_dir = root.join("build/demo");
    println!("Tether demo: access tokens bound to the client's certificate (RFC 8705) or key (DPoP, RFC 9449)\n");
    println!("Setting up:");
    let pki = Pki::generate(&demo_dir);
    println!("  PKI in build/demo/: a CA, a server certificate, client certificates for alice and mallory");
    let _backend = EchoBackend::start_on(BACKEND_PORT);
    println!("  backend on 127.0.0.1:{BACKEND_PORT}: answers with the request it received");
    let envoy = Envoy::start_with_file(&root.join("envoy/demo.yaml"), &root, &demo_dir)
        .unwrap_or_else(|log| {
            eprintln!("Envoy did not start (are ports 10443/19901 free?):\n{log}");
            std::process::exit(1);
        });
    println!("  Envoy with Tether on https://localhost:{HTTPS_PORT} (log: build/demo/envoy.log)");
    let key = SigningKey::from_pem_file(
        &root.join("envoy/demo-issuer.key.pem"),
        Alg::Es256,
        "demo-1",
        true,
    );
    let idp = Issuer::with_keys(ISSUER, AUDIENCE, vec![key]);
    let alice_token = idp
        .token()
        .claim("sub", "alice")
        .bound_to(&pki.alice)
        .sign();
    println!(
        "  the IdP issues alice a token bound to her certificate: cnf.x5t#S256 = {}",
        pki.alice.x5t_s256()
    );

    let get = |path: &str| HttpsRequest::new(HTTPS_PORT, &pki.ca, path);
    let mut failures = 0;
    // `error`: the `error` code a refusal must carry too (where the status alone cannot tell
    // one refusal from another).
    let mut scene = |number: u32,
                     title: &str,
                     how: &str,
                     request: HttpsRequest,
                     expect: u16,
                     error: Option<&str>| {
        println!("\n[{number}] {title}");
        println!("    {how}");
        let response = request.send();
        println!("    -> {}", outcome(&response));
        if response.status != expect {
            println!("    !! expected HTTP {expect}");
            failures += 1;
        } else if let Some(error) =
            error.filter(|e| challenge_param(&response, "error") != Some(*e))
        {
            println!("    !! expected error {error}");
            failures += 1;
        }
    };

    scene(
        1,
        "Alice calls with her bound token over her own certificate",
        "GET /orders/42, client certificate: alice",
        get("/orders/42").cert(&pki.alice).bearer(&alice_token),
        200,
        None,
    );
    scene(
        2,
        "Mallory stole the token and replays it over her own (valid) certificate",
        "GET /orders/42, client certificate: mallory",
        get("/orders/42").cert(&pki.mallory).bearer(&alice_token),
        401,
        None,
    );
    scene(
        3,
        "The stolen token is replayed without any client certificate",
        "GET /orders/42, no client certificate",
        get("/orders/42").bearer(&alice_token),
        401,
        None,
    );
    let unbound = idp.token().claim("sub", "alice").sign();
    scene(
        4,
        "A plain bearer token (no cnf claim) is not good enough here",
        "GET /orders/42, client certificate: alice, token without cnf",
        get("/orders/42").cert(&pki.alice).bearer(&unbound),
        401,
        None,
    );
    scene(
        5,
        "The token is put in the URL, where logs and Referer headers would leak it",
        "GET /orders/42?access_token=..., client certificate: alice",
        get(&format!("/orders/42?access_token={alice_token}")).cert(&pki.alice),
        400,
        None,
    );
    scene(
        6,
        "Health checks need no token",
        "GET /healthz, no certificate, no token",
        get("/healthz"),
        200,
        None,
    );

    // Signed requests: the payment app signs each request with its own key (a detached JWS
    // over the body, bound to the method, the URI and the token).
    let app_key = SigningKey::from_pem_file(
        &root.join("envoy/demo-client.key.pem"),
        Alg::Es256,
        "demo-app-1",
        true,
    );
    let app_token = idp
        .token()
        .claim("sub", "alice")
        .claim("client_id", "demo-app")
        .bound_to(&pki.alice)
        .sign();
    let body = br#"{"amount":"10.00","to":"bob"}"#;
    let header = jws::protected(
        "ES256",
        Some("demo-app-1"),
        "POST",
        &format!("https://localhost:{HTTPS_PORT}/payments"),
        &app_token,
    );
    let signature = jws::detached(&header, body, Signer::Key(&app_key));
    let payment = |body: &[u8]| {
        get("/payments")
            .cert(&pki.alice)
            .bearer(&app_token)
            .method("POST")
            .header("x-jws-signature", &signature)
            .body(body)
    };
    scene(
        7,
        "Alice's payment app signs its request: body, method, URI and token",
        "POST /payments {\"amount\":\"10.00\"}, client certificate: alice, x-jws-signature",
        payment(body),
        200,
        None,
    );
    scene(
        8,
        "The signed request is captured and replayed, byte for byte",
        "the same POST /payments again, same token, same signature",
        payment(body),
        401,
        None,
    );
    scene(
        9,
        "The captured request is replayed with a tampered body",
        "POST /payments {\"amount\":\"9999.00\"} with the original signature",
        payment(br#"{"amount":"9999.00","to":"bob"}"#),
        401,
        None,
    );

    // DPoP (RFC 9449): the token is bound to a key the client holds (`cnf.jkt`, its RFC 7638
    // thumbprint), and every request carries a fresh proof signed with that key: demo.yaml's
    // /accounts route. The client keys and the proofs are made by jwcrypto, as a client makes
    // them.
    println!("\nSetting up DPoP (RFC 9449): tokens bound to a key the client holds");
    let keys_dir = demo_dir.join("dpop-client-keys");
    std::fs::create_dir_all(&keys_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", keys_dir.display()));
    let keys = keys_dir.to_str().expect("a UTF-8 path");
    let made = run_interop_client("dpop_client.py", &json!({"mode": "keys", "dir": keys}));
    let app_jkt = made["jkt"]["es256"].as_str().expect("a thumbprint");
    println!(
        "  client keys made by jwcrypto in build/demo/dpop-client-keys/: the wallet app's, and a thief's"
    );
    let dpop_token = idp
        .token()
        .claim("sub", "alice")
        .claim("client_id", "wallet-app")
        .claim("cnf", json!({"jkt": app_jkt}))
        .sign();
    println!("  the IdP issues alice's wallet app a token bound to its key: cnf.jkt = {app_jkt}");

    let accounts = "/accounts/42";
    let proof_by = |key: &str| {
        json!({"key": key, "htm": "GET", "token": dpop_token,
               "htu": format!("https://localhost:{HTTPS_PORT}{accounts}")})
    };
    let spec = json!({"mode": "proofs", "dir": keys,
                      "proofs": [proof_by("es256"), proof_by("es256-other")]});
    let proofs: Vec<String> = run_interop_client("dpop_client.py", &spec)["proofs"]
        .as_array()
        .expect("proofs")
        .iter()
        .map(|proof| proof.as_str().expect("a proof").to_string())
        .collect();
    let (app_proof, thief_proof) = (&proofs[0], &proofs[1]);
    let accounts_get = || HttpsRequest::new(HTTPS_PORT, &pki.ca, accounts);
    let with_dpop = |proof: &str| {
        accounts_get()
            .header("authorization", &format!("DPoP {dpop_token}"))
            .header("dpop", proof)
    };
    scene(
        10,
        "Alice's wallet app calls with its DPoP token and a fresh proof",
        "GET /accounts/42, Authorization: DPoP <token>, DPoP: proof signed with the app's key",
        with_dpop(app_proof),
        200,
        None,
    );
    scene(
        11,
        "A thief stole the token (not the key) and sends it as a plain Bearer token",
        "GET /accounts/42, Authorization: Bearer <token>, no proof",
        accounts_get().bearer(&dpop_token),
        401,
        Some("invalid_token"),
    );
    scene(
        12,
        "The thief sends the token as DPoP, with a proof signed by the thief's own key",
        "GET /accounts/42, Authorization: DPoP <token>, DPoP: proof signed with the thief's key",
        with_dpop(thief_proof),
        401,
        Some("invalid_dpop_proof"),
    );
    scene(
        13,
        "An eavesdropper captured the app's request (token and proof) and sends it again",
        "the same GET /accounts/42 again, same token, same proof",
        with_dpop(app_proof),
        401,
        Some("invalid_dpop_proof"),
    );

    // Envoy shows a wasm filter's own counters under "wasmcustom.".
    print_counters("http://127.0.0.1:19901", &envoy);
    envoy.stop();

    if failures > 0 {
        eprintln!("\n{failures} scene(s) did not end as expected");
        std::process::exit(1);
    }
    println!("\nEvery scene ended as expected.");
}

/// Tether's counters in `envoy` that are not zero, under a heading naming it (`label`).
fn print_counters(label: &str, envoy: &Envoy) {
    println!("\nTether's counters ({label}/stats?filter=tether):");
    for (name, value) in envoy.stats() {
        if let Some(counter) = name.strip_prefix("wasmcustom.") {
            if value > 0 {
                println!("    {counter} = {value}");
            }
        }
    }
}

/// One line: the status, and either what the backend saw or why Tether refused (the `error`
/// code and the `error_description` of its challenge).
fn outcome(response: &Response) -> String {
    let status = format!("HTTP {}", response.status);
    if response.status == 200 {
        let seen = response
            .json()
            .get("headers")
            .and_then(|headers| headers.get("x-tether-sub"))
            .and_then(|values| values.get(0))
            .and_then(|value| value.as_str())
            .map(|sub| format!("the backend saw x-tether-sub: {sub}"))
            .unwrap_or_else(|| "served by the backend (no x-tether-sub)".to_string());
        return format!("{status}: {seen}");
    }
    let error = challenge_param(response, "error").unwrap_or("(no error)");
    let reason = challenge_param(response, "error_description").unwrap_or("(no error description)");
    format!("{status} {error}: {reason}")
}

/// The value of parameter `name` (`name="value"`) in the response's `WWW-Authenticate`.
fn challenge_param<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response
        .header("www-authenticate")
        .and_then(|challenge| challenge.split(&format!("{name}=\"")).nth(1))
        .and_then(|rest| rest.split('"').next())
}
