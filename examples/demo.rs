//! `make demo`: Tether refusing a stolen access token, with real requests.
//!
//! Starts a backend on 127.0.0.1:18080 and Envoy with `envoy/demo.yaml` (mTLS on
//! localhost:10443, Tether in front of the backend), makes a throw-away PKI in `build/demo/`,
//! mints tokens with the DEMO-ONLY key `envoy/demo-issuer.key.pem`, signs requests with the
//! DEMO-ONLY client key `envoy/demo-client.key.pem`, and plays nine scenes. Then DPoP
//! (RFC 9449) on demo.yaml's `require: "dpop"` route: four more scenes, with client keys and
//! proofs made by jwcrypto (`tests/interop/dpop_client.py`). Then HTTP Message Signatures
//! (RFC 9421) both ways on the `/transfers` route: a request signed and a response checked by
//! http-message-signatures (`tests/interop/httpsig_exchange.py`). Then opaque tokens issued by
//! a real authorization server, oidc-provider (`tests/interop/oidc/as.mjs`, on
//! 127.0.0.1:18081), which Tether introspects at that server's own endpoint (RFC 7662).
//! Exits non-zero if any scene does not end as the story says.

#[path = "../tests/support/mod.rs"]
mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use support::client::{HttpsRequest, Response};
use support::echo::EchoBackend;
use support::envoy::{envoy_binary, Envoy};
use support::jws::{self, Signer};
use support::jwt::{Alg, Issuer, SigningKey};
use support::oidc::AuthorizationServer;
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
    // Tether's response signing key: made here (by jwcrypto), handed to Envoy's VM through
    // its environment (demo.yaml's host_env_keys), never written in the configuration.
    let signer_dir = demo_dir.join("httpsig-client-keys");
    std::fs::create_dir_all(&signer_dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", signer_dir.display()));
    let signer_dir = signer_dir.to_str().expect("a UTF-8 path").to_string();
    let made = run_interop_client(
        "httpsig_exchange.py",
        &json!({"mode": "keys", "dir": signer_dir}),
    );
    std::env::set_var(
        "TETHER_DEMO_RESPONSE_KEY",
        made["tether"]["ed25519"].as_str().expect("a private JWK"),
    );
    println!("  Tether's response signing key (Ed25519) made by jwcrypto, passed to Envoy's VM by environment");
    let authorization_server = AuthorizationServer::start(
        &demo_dir.join("authorization-server.log"),
        AUDIENCE,
        &pki.alice.cert,
        &[format!("https://localhost:{HTTPS_PORT}/orders/42")],
        Some(AS_PORT),
    )
    .unwrap_or_else(|e| {
        eprintln!("the authorization server did not start (is port {AS_PORT} free?): {e}");
        std::process::exit(1);
    });
    std::env::set_var(
        "TETHER_DEMO_RS_SECRET",
        authorization_server.issued["rs"]["client_secret"]
            .as_str()
            .expect("the resource server's secret"),
    );
    println!("  an authorization server (oidc-provider) on 127.0.0.1:{AS_PORT}: it issued opaque tokens, one bound to alice's certificate; Tether's secret at its introspection endpoint passed to Envoy's VM by environment");
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

    // HTTP Message Signatures (RFC 9421) both ways, on demo.yaml's /transfers route: the
    // payment app signs the request with http-message-signatures (the same key as its JWS),
    // and checks the response Tether signs against the key set Tether publishes.
    // Counted apart from `failures`, which `scene` holds until its last use.
    let mut misses = 0;
    println!("\nHTTP Message Signatures (RFC 9421): a signed request, a signed response");
    let pem = std::fs::read_to_string(root.join("envoy/demo-client.key.pem")).expect("demo key");
    let block = &pem[pem.find("-----BEGIN").expect("a PEM block")..];
    std::fs::write(format!("{signer_dir}/ecdsa-p256-sha256"), block).expect("write the key");
    let url = format!("https://localhost:{HTTPS_PORT}/transfers");
    let transfer_headers = vec![
        ("authorization".to_string(), format!("Bearer {app_token}")),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let spec = json!({"mode": "sign", "dir": signer_dir, "requests": [{
        "alg": "ecdsa-p256-sha256", "keyid": "demo-app-1", "method": "POST", "url": url,
        "headers": transfer_headers, "body": STANDARD.encode(body), "created": support::now(),
        "components": ["@method", "@target-uri", "authorization", "content-digest"]}]});
    let mut signed_headers = transfer_headers.clone();
    for pair in run_interop_client("httpsig_exchange.py", &spec)["headers"][0]
        .as_array()
        .expect("headers")
    {
        let name = pair[0].as_str().expect("a name").to_string();
        signed_headers.push((name, pair[1].as_str().expect("a value").to_string()));
    }
    let transfer = || {
        let mut request = get("/transfers").cert(&pki.alice).method("POST").body(body);
        for (name, value) in &signed_headers {
            request = request.header(name, value);
        }
        request
    };
    println!(
        "\n[14] The payment app signs its request with RFC 9421 and checks the signed response"
    );
    println!("    POST /transfers, Signature-Input: sig1=(\"@method\" \"@target-uri\" \"authorization\" \"content-digest\");tag=\"fapi-2-request\"");
    let response = transfer().send();
    println!("    -> {}", outcome(&response));
    let jwks = get("/.well-known/jwks.json").send().json();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .flat_map(|(n, values)| values.iter().map(move |v| (n.clone(), v.clone())))
        .collect();
    let check = json!({"mode": "verify_response", "jwks": jwks,
        "request": {"method": "POST", "url": url, "headers": signed_headers},
        "response": {"status": response.status, "headers": headers,
                     "body": STANDARD.encode(&response.body)}});
    let checked = run_interop_client("httpsig_exchange.py", &check);
    if response.status == 200 && checked["ok"] == true {
        println!("    -> the client verified the response's signature against /.well-known/jwks.json (sig1, tag fapi-2-response)");
    } else {
        println!("    !! expected HTTP 200 with a signed response the client verifies: {checked}");
        misses += 1;
    }
    println!("\n[15] The signed request is captured and replayed");
    println!("    the same POST /transfers again, same signature");
    let replayed = transfer().send();
    println!("    -> {}", outcome(&replayed));
    if replayed.status != 401 || challenge_param(&replayed, "error") != Some("invalid_signature") {
        println!("    !! expected HTTP 401 invalid_signature");
        misses += 1;
    }

    // Opaque tokens (RFC 7662): oidc-provider issued them; Tether asks its introspection
    // endpoint about each once and enforces the binding the answer names.
    println!("\nOpaque tokens, introspected at the authorization server (RFC 7662)");
    let (bound, revoked) = (
        authorization_server.token("mtls"),
        authorization_server.token("revoked"),
    );
    let before = authorization_server.introspections();
    scene(
        16,
        "A partner app presents an opaque token bound to alice's certificate, six times",
        "GET /orders/42, Authorization: Bearer <opaque>, with alice's certificate",
        get("/orders/42").cert(&pki.alice).bearer(&bound),
        200,
        None,
    );
    for _ in 0..5 {
        let again = get("/orders/42").cert(&pki.alice).bearer(&bound).send();
        if again.status != 200 {
            println!("    !! expected HTTP 200 again, got {}", again.status);
            misses += 1;
        }
    }
    let calls = authorization_server.introspections() - before;
    // Each Envoy worker has its own VM, and asks once.
    let workers = envoy
        .admin_get("/server_info")
        .ok()
        .and_then(|info| serde_json::from_str::<serde_json::Value>(&info).ok())
        .and_then(|info| info["command_line_options"]["concurrency"].as_u64())
        .unwrap_or(1);
    println!("    -> the authorization server was asked {calls} time(s) for six requests ({workers} Envoy worker(s), each asks once)");
    if calls == 0 || calls as u64 > workers.min(6) {
        println!("    !! expected at most one introspection per worker");
        misses += 1;
    }
    scene(
        17,
        "Mallory stole the opaque token and sends it with her own certificate",
        "GET /orders/42, Authorization: Bearer <alice's opaque token>, with mallory's certificate",
        get("/orders/42").cert(&pki.mallory).bearer(&bound),
        401,
        Some("invalid_token"),
    );
    scene(
        18,
        "A token the authorization server revoked",
        "GET /legacy/1, Authorization: Bearer <revoked opaque token>",
        get("/legacy/1").bearer(&revoked),
        401,
        Some("invalid_token"),
    );
    failures += misses;
    authorization_server.stop();

    // Envoy shows a wasm filter's own counters under "wasmcustom.".
    print_counters("http://127.0.0.1:19901", &envoy);
    envoy.stop();

    if failures > 0 {
        eprintln!("\n{failures} scene(s) did not end as expected");
        std::process::exit(1);
    }
    println!("\nEvery scene ended as expected.");
}

/// Must match `envoy/demo.yaml`'s `authorization_server` cluster.
const AS_PORT: u16 = 18081;

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
