//! The end-to-end harness: everything a test needs to put the real Envoy, with the built
//! `dist/tether.wasm`, between a real TLS client and a real upstream.
//!
//! - [`pki`]: a throw-away certificate authority, a server certificate for `localhost` and
//!   client certificates for "alice" and "mallory", made with the `openssl` CLI; the RFC 8705
//!   §3.1 `x5t#S256` thumbprint of a client certificate, computed here independently of Envoy.
//! - [`jws`]: request signatures (detached JWS over the body), made as a client makes them.
//! - [`jwt`]: an issuer with keys for every supported algorithm, its public JWKS, a token minter
//!   with full control over header and claims, and hand-made bad tokens.
//! - [`echo`]: an HTTP/1.1 upstream that answers with what it received, so a test can see the
//!   headers the filter let through, added or removed.
//! - [`envoy`]: the Envoy process (bootstrap, start, readiness, stats, log, shutdown) and
//!   `envoy --mode validate`.
//! - [`client`]: HTTPS requests through `curl`, with or without a client certificate.
//! - [`introspection`]: an RFC 7662 introspection endpoint the test controls (late, failing,
//!   malformed), counting its calls; [`oidc`]: a real authorization server (oidc-provider).
//! - [`wycheproof`]: Project Wycheproof's signature test groups for Tether's algorithms, chosen
//!   by their parameters, each with its JWK (for tests/wycheproof.rs and tests/e2e_wycheproof.rs).
//! - [`der`] and [`scratch`]: the small pieces underneath (DER parsing of OpenSSL's output,
//!   scratch directories).
//!
//! Tokens are signed by OpenSSL, not by `jwt-simple`: the filter verifies with `jwt-simple`,
//! and a test that signed with the same library could not catch an encoding mistake both
//! sides share. `tests/harness.rs` checks the other way round, that `jwt-simple` accepts what
//! the harness signs, so that a refusal seen through Envoy is the filter's and not a bad
//! test token.
//!
//! The module is compiled into several test crates and the demo, each using a part of it.
#![allow(dead_code)]

pub mod client;
pub mod der;
pub mod echo;
pub mod envoy;
pub mod frames;
pub mod introspection;
pub mod jws;
pub mod jwt;
pub mod keyserver;
pub mod oidc;
pub mod pki;
pub mod scratch;
pub mod wycheproof;

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The repository root (where `Cargo.toml` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `openssl` with `args`, panicking with its stderr on failure; returns its stdout.
///
/// Test fixtures cannot be made any other way, so failing loudly is the right handling.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Runs the test client `tests/interop/<script>` with the project's Python (`.venv`, made by
/// `make setup`) on `spec`, written to a JSON file; its output, as JSON. Panics with the
/// client's stderr if it fails (and shows its stderr anyway when `H2_DEBUG` is set).
pub fn run_interop_client(script: &str, spec: &serde_json::Value) -> serde_json::Value {
    let dir = scratch::ScratchDir::new("client");
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).expect("write the client spec");
    let output = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/interop").join(script))
        .arg(&spec_file)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script} (run `make setup`): {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed: {stderr}");
    if std::env::var_os("H2_DEBUG").is_some() {
        eprintln!("{stderr}");
    }
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{script} output: {e}"))
}

/// Seconds since the Unix epoch, as JWT `NumericDate` values are counted (RFC 7519 §2).
pub fn now() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_secs()).expect("the clock fits in an i64")
}
