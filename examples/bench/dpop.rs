//! The DPoP rows (RFC 9449): a GET through Tether with `Authorization: DPoP <token>` and a
//! fresh DPoP proof on every request, ES256 and EdDSA, beside the same token algorithm's
//! cached `mtls` row.
//!
//! They run in the token rows' front Envoy, in the same shuffled rounds, on the listener
//! `tether_dpop` (Tether with the token cache, a `dpop` block and `require: dpop` on every
//! path). Each measurement mints a token whose `cnf` holds both the client certificate's
//! `x5t#S256` (as every bench token) and `jkt`, the RFC 7638 thumbprint of the client's DPoP
//! key; signload presents the certificate. So a DPoP request costs Tether everything the
//! cached `mtls` row's request does (the cached token, the certificate check) plus the proof,
//! and the difference of the two rows' Envoy CPU per request is what the proof adds.
//!
//! Tether refuses a replayed proof, so `oha` (the same headers on every request) cannot send
//! these rows: `bench/signload` does, from requests made beforehand. The proofs of a
//! measurement are signed right before it, on every core, each with its own `jti` and `iat`
//! (a proof older than `max_age_seconds`, 60, is refused): outside Envoy and outside the
//! measured time. The `Signload` rows send the cached `mtls` row's own request (Bearer, the
//! same token every time) through signload too, so that the DPoP rows also compare with a row
//! sent by the same load generator.
//!
//! `BENCH_DPOP_BREAKDOWN=1` adds the breakdown stages: ES256 requests refused right after a
//! known step of Tether's checks (`variants::Stage`), whose differences show where a DPoP
//! request's time goes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::envoy::{DPOP_ALGS, DPOP_MAX_AGE_SECONDS};
use crate::load::{Bench, Load};
use crate::machine::{cpu_ticks, system_cpu_ticks};
use crate::report::Row;
use crate::signed::{planned_requests, refused_counters, refused_since, run_signload};
use crate::support::jwt::Alg;
use crate::support::now;
use crate::tokens::unique_jti;
use crate::variants::{Kind, Listener, Stage, Variant};
use crate::{fail, relative};

/// The path of every DPoP row's request (the `oha` rows' too).
pub const PATH: &str = "/bench";
/// `htu`: signload sends `host: localhost` over TLS, so Envoy's `:authority` is `localhost`
/// and `:scheme` `https`.
pub const HTU: &str = "https://localhost/bench";
/// The target of the issue: what an ES256 proof may add to the cached `mtls` row's front Envoy
/// CPU per request.
pub const TARGET_US: f64 = 80.0;
/// The longest measurement: all its proofs are signed before it starts and must still be
/// younger than `max_age_seconds` (60) when the last one is sent.
pub const MAX_SECONDS: u64 = 30;
/// The replay stage sends its proofs twice (an unmeasured first pass, then the measured one),
/// within the same 60 s.
pub const REPLAYED_MAX_SECONDS: u64 = 15;
/// The rate assumed for a row's first measurement, before it has been measured.
const FIRST_RATE: f64 = 8000.0;

/// The client's DPoP keys (fresh for every run), and a second ES256 key for the breakdown's
/// proofs by a key the token is not bound to.
pub struct DpopKeys {
    es256: p256::ecdsa::SigningKey,
    eddsa: ed25519_compact::KeyPair,
    other_es256: p256::ecdsa::SigningKey,
    /// Makes every `jti` of the run unique across runs too.
    run: [u8; 8],
}

/// Which key signs a proof.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signer {
    /// The key the token is bound to (`cnf.jkt`).
    Bound,
    /// Another ES256 key, with its own `jwk` in the proof.
    Other,
}

/// What a proof says and how it is made; a good proof unless told otherwise.
struct ProofSpec {
    alg: Alg,
    signer: Signer,
    typ: &'static str,
    htm: &'static str,
    /// A signature that is not one: for the breakdown stages refused at the signature check,
    /// or before it (where Tether never looks at it, so none is computed).
    bad_signature: bool,
}

impl ProofSpec {
    fn good(alg: Alg) -> Self {
        ProofSpec {
            alg,
            signer: Signer::Bound,
            typ: "dpop+jwt",
            htm: "GET",
            bad_signature: false,
        }
    }
}

impl DpopKeys {
    pub fn generate() -> DpopKeys {
        let mut random = [0u8; 104];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .unwrap_or_else(|e| fail(&format!("read /dev/urandom: {e}")));
        let part =
            |i: usize| -> [u8; 32] { random[i * 32..(i + 1) * 32].try_into().expect("32 bytes") };
        let p256_key = |bytes: [u8; 32]| {
            p256::ecdsa::SigningKey::from_slice(&bytes)
                .unwrap_or_else(|e| fail(&format!("P-256 key: {e}")))
        };
        DpopKeys {
            es256: p256_key(part(0)),
            eddsa: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(part(1))),
            other_es256: p256_key(part(2)),
            run: random[96..104].try_into().expect("8 bytes"),
        }
    }

    /// The public JWK of a proof key, members in RFC 7638 order (lexicographic), so that its
    /// compact JSON is also the thumbprint's input.
    fn jwk(&self, alg: Alg, signer: Signer) -> String {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let ec = |key: &p256::ecdsa::SigningKey| {
            let point = key.verifying_key().to_encoded_point(false);
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64(point.x().expect("an uncompressed point has x")),
                b64(point.y().expect("an uncompressed point has y"))
            )
        };
        match (alg, signer) {
            (Alg::Es256, Signer::Bound) => ec(&self.es256),
            (Alg::Es256, Signer::Other) => ec(&self.other_es256),
            (Alg::EdDsa, Signer::Bound) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                b64(&self.eddsa.pk[..])
            ),
            (alg, _) => fail(&format!("the DPoP rows have no {} key", alg.name())),
        }
    }

    /// `cnf.jkt` for the key of `alg`: the RFC 7638 thumbprint, computed here (not by
    /// Tether's code): SHA-256 of the required members in lexicographic order, no spaces.
    pub fn jkt(&self, alg: Alg) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.jwk(alg, Signer::Bound).as_bytes()))
    }

    /// A `jti` of 16 bytes (22 base64url characters), unique in this run and across runs.
    fn jti(&self, number: u64) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.run);
        bytes[8..].copy_from_slice(&number.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A compact DPoP proof (RFC 9449 §4.2) for `GET https://localhost/bench` with the token
    /// whose `ath` is given, and the time it took to sign it.
    fn proof(&self, spec: &ProofSpec, ath: &str, number: u64) -> (String, f64) {
        let header = format!(
            r#"{{"typ":"{}","alg":"{}","jwk":{}}}"#,
            spec.typ,
            spec.alg.name(),
            self.jwk(spec.alg, spec.signer)
        );
        let claims = json!({
            "jti": self.jti(number),
            "htm": spec.htm,
            "htu": HTU,
            "iat": now(),
            "ath": ath,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        if spec.bad_signature {
            // Refused at the signature check (or before it): 64 bytes that are no signature of
            // the input, as long as an ES256 or EdDSA one, different for every proof.
            let first = Sha256::digest(input.as_bytes());
            let second = Sha256::digest(first);
            let signature = [first.as_slice(), second.as_slice()].concat();
            return (
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
                0.0,
            );
        }
        let signed = input.as_bytes();
        let started = Instant::now();
        let signature = match (spec.alg, spec.signer) {
            (Alg::Es256, signer) => {
                let key = if signer == Signer::Bound {
                    &self.es256
                } else {
                    &self.other_es256
                };
                let signature: p256::ecdsa::Signature = key.sign(signed);
                signature.to_bytes().to_vec()
            }
            (Alg::EdDsa, _) => self.eddsa.sk.sign(signed, None).to_vec(),
            (alg, _) => fail(&format!("the DPoP rows have no {} key", alg.name())),
        };
        let took = started.elapsed().as_secs_f64();
        (
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            took,
        )
    }
}

/// A number unique in this run for every proof's `jti`.
static PROOF_NUMBER: AtomicU64 = AtomicU64::new(0);

/// Drives the signload rows of the token rows' front Envoy.
pub struct DpopBench {
    pub keys: DpopKeys,
    pub signload: PathBuf,
    pub dir: PathBuf,
    /// Each row's last measured rate, which sizes its next measurement's requests.
    rates: Mutex<BTreeMap<String, f64>>,
}

/// One signload check.
pub struct Check {
    what: String,
    expected: &'static str,
    reason: Option<&'static str>,
    seen: String,
    refused: BTreeMap<String, u64>,
}

impl Check {
    fn ok(&self) -> bool {
        self.seen == self.expected
            && match self.reason {
                Some(reason) => self.refused.len() == 1 && self.refused.contains_key(reason),
                None => self.refused.is_empty(),
            }
    }

    fn to_json(&self) -> Value {
        json!({
            "request": self.what, "expected": self.expected, "expected_reason": self.reason,
            "status": self.seen, "refused": self.refused, "ok": self.ok(),
        })
    }
}

impl DpopBench {
    pub fn new(signload: PathBuf, dir: PathBuf) -> DpopBench {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| fail(&format!("create {}: {e}", dir.display())));
        DpopBench {
            keys: DpopKeys::generate(),
            signload,
            dir,
            rates: Mutex::new(BTreeMap::new()),
        }
    }

    /// The token of one measurement of `variant`.
    fn token(&self, bench: &Bench, variant: &Variant) -> String {
        let keys = bench.keys;
        match variant.kind {
            Kind::Oha | Kind::Signload => {
                keys.token(variant.alg, &bench.pki.alice, &unique_jti("load"))
            }
            // Bound to mallory's certificate, sent with alice's.
            Kind::Stage(Stage::MtlsRefused) => {
                keys.token(variant.alg, &bench.pki.mallory, &unique_jti("load"))
            }
            Kind::Dpop | Kind::Stage(_) => keys.dpop_token(
                variant.alg,
                &bench.pki.alice,
                &self.keys.jkt(variant.alg),
                &unique_jti("dpop"),
            ),
        }
    }

    /// `count` requests of `variant` with `token`, as signload's JSON lines, and the mean time
    /// to sign one proof in µs (`None` for the rows without a proof). Made on every core.
    fn requests(&self, variant: &Variant, token: &str, count: usize) -> (String, Option<f64>) {
        let proof = match variant.kind {
            Kind::Oha | Kind::Signload | Kind::Stage(Stage::MtlsRefused) => None,
            Kind::Dpop => Some(ProofSpec::good(variant.alg)),
            Kind::Stage(stage) => {
                let mut spec = ProofSpec::good(variant.alg);
                // Only the replayed proofs must be signed: every other stage is refused at the
                // signature check or before Tether reads the signature.
                spec.bad_signature = stage != Stage::Replayed;
                match stage {
                    Stage::TypInvalid => spec.typ = "JWT",
                    Stage::HtmMismatch => spec.htm = "POST",
                    Stage::KeyMismatch => spec.signer = Signer::Other,
                    Stage::MtlsRefused
                    | Stage::Malformed
                    | Stage::SignatureInvalid
                    | Stage::Replayed => {}
                }
                Some(spec)
            }
        };
        let malformed = variant.kind == Kind::Stage(Stage::Malformed);
        let Some(spec) = proof else {
            let line = json!({
                "method": "GET",
                "path": PATH,
                "headers": [["authorization", format!("Bearer {token}")]],
            })
            .to_string();
            let mut lines = String::with_capacity((line.len() + 1) * count);
            for _ in 0..count {
                lines.push_str(&line);
                lines.push('\n');
            }
            return (lines, None);
        };
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        let authorization = format!("DPoP {token}");
        let first = PROOF_NUMBER.fetch_add(count as u64, Ordering::Relaxed);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = count.div_ceil(threads).max(1);
        let parts: Vec<(String, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (spec, ath, authorization) = (&spec, &ath, &authorization);
                    scope.spawn(move || {
                        let start = (t * per_thread).min(count);
                        let end = ((t + 1) * per_thread).min(count);
                        let mut out = String::with_capacity((end - start) * 1700);
                        let mut signing = 0.0;
                        for i in start..end {
                            let (mut proof, took) = self.keys.proof(spec, ath, first + i as u64);
                            signing += took;
                            if malformed {
                                // Two dots instead of three parts' two: not a JWS, refused
                                // before anything is decoded. The same length as a proof.
                                proof = proof.replacen('.', "_", 1);
                            }
                            let line = json!({
                                "method": "GET",
                                "path": PATH,
                                "headers": [["authorization", authorization], ["dpop", proof]],
                            });
                            let _ = writeln!(out, "{line}");
                        }
                        (out, signing)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("proof thread"))
                .collect()
        });
        let signing: f64 = parts.iter().map(|(_, s)| s).sum();
        let lines = parts.into_iter().map(|(l, _)| l).collect::<String>();
        (lines, Some(signing * 1e6 / count.max(1) as f64))
    }

    fn run(
        &self,
        bench: &Bench,
        listener: Listener,
        file: &Path,
        connections: u64,
        max_seconds: Option<u64>,
    ) -> Result<Value, String> {
        run_signload(
            &self.signload,
            &self.dir.join("signload.json"),
            bench.port(listener),
            bench.pki,
            connections,
            file,
            max_seconds,
        )
    }

    /// The longest measurement of `variant`, at most `seconds`.
    pub fn max_seconds(variant: &Variant, seconds: u64) -> u64 {
        match variant.kind {
            Kind::Stage(Stage::Replayed) => seconds.min(REPLAYED_MAX_SECONDS),
            _ => seconds.min(MAX_SECONDS),
        }
    }

    /// One measurement of `variant`: fresh requests (fresh proofs), sent by signload over the
    /// bench's connections until they run out or `seconds` have passed.
    pub fn load(&self, bench: &Bench, variant: &Variant, seconds: u64) -> Load {
        let seconds = DpopBench::max_seconds(variant, seconds);
        let id = variant.id();
        let rate = self
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(FIRST_RATE);
        let count = planned_requests(rate, seconds);
        let token = self.token(bench, variant);
        let (lines, client_us) = self.requests(variant, &token, count);
        let file = self.dir.join(format!("{id}.jsonl"));
        std::fs::write(&file, lines)
            .unwrap_or_else(|e| fail(&format!("write {}: {e}", file.display())));
        let connections = bench.settings.concurrency;
        if variant.kind == Kind::Stage(Stage::Replayed) {
            // The first pass, not measured: every proof is accepted and recorded once.
            let report = self
                .run(bench, variant.listener, &file, connections, None)
                .unwrap_or_else(|e| fail(&format!("signload failed on {}: {e}", variant.label())));
            let ok = report["statuses"]["200"].as_u64().unwrap_or(0);
            if ok != count as u64 {
                fail(&format!(
                    "{}: the first pass got {ok} of {count} proofs accepted: {}",
                    variant.label(),
                    report
                ));
            }
        }
        let refused_before = refused_counters(bench.front);
        let front_before = cpu_ticks(bench.front_pid);
        let backend_before = cpu_ticks(bench.backend_pid);
        let system_before = system_cpu_ticks();
        let report = self
            .run(bench, variant.listener, &file, connections, Some(seconds))
            .unwrap_or_else(|e| fail(&format!("signload failed on {}: {e}", variant.label())));
        let cpu_seconds = |pid: u32, before: u64| {
            cpu_ticks(pid).saturating_sub(before) as f64 / bench.clock_ticks
        };
        let front_cpu = cpu_seconds(bench.front_pid, front_before);
        let backend_cpu = cpu_seconds(bench.backend_pid, backend_before);
        let system_after = system_cpu_ticks();
        let _ = std::fs::remove_file(&file);
        let number = |name: &str| report[name].as_f64().unwrap_or(0.0);
        let requests = report["requests"].as_u64().unwrap_or(0);
        // The run itself, without signload reading its file: Envoy's share of a core.
        let elapsed = number("elapsed_seconds").max(1e-9);
        let (expected_status, expected_reason) = variant.expected();
        let load = Load {
            rps: number("requests_per_second"),
            p50_ms: number("p50_ms"),
            p99_ms: number("p99_ms"),
            statuses: crate::report::counts(&report["statuses"]),
            errors: crate::report::counts(&report["errors"]),
            envoy_cpu: front_cpu / elapsed,
            envoy_us_per_request: front_cpu * 1e6 / requests.max(1) as f64,
            backend_cpu: backend_cpu / elapsed,
            machine_cpu: (system_after.0.saturating_sub(system_before.0)) as f64
                / (system_after.1.saturating_sub(system_before.1)).max(1) as f64,
            expected_status,
            expected_reason,
            refused: refused_since(bench.front, &refused_before),
            client_us,
            seconds: elapsed,
        };
        if load.unexpected() == 0 {
            self.rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, load.rps.max(100.0));
        }
        load
    }

    /// Before measuring, through signload (one connection; the reason from Tether's
    /// `refused.<reason>` counters): each row's request gets what its name says, and a proof
    /// is good for one request only. Exits if any answer is wrong.
    pub fn check(&self, bench: &Bench, variants: &[Variant]) -> Vec<Value> {
        println!(
            "\nChecking the DPoP rows (HTTP status seen by signload, one connection):\n  {:<62} {:>16}  Tether refusal",
            "request", "status"
        );
        let mut checks = Vec::new();
        let mut send = |what: String,
                        listener: Listener,
                        lines: &str,
                        expected: &'static str,
                        reason: Option<&'static str>| {
            let file = self.dir.join("check.jsonl");
            std::fs::write(&file, lines).unwrap_or_else(|e| fail(&format!("write check: {e}")));
            let before = refused_counters(bench.front);
            let seen = match self.run(bench, listener, &file, 1, None) {
                Ok(report) => {
                    let statuses = report["statuses"].as_object().cloned().unwrap_or_default();
                    match statuses.keys().next() {
                        Some(status) if statuses.len() == 1 => status.clone(),
                        _ => format!("{statuses:?} {}", report["errors"]),
                    }
                }
                Err(e) => format!("error: {e}"),
            };
            let check = Check {
                what,
                expected,
                reason,
                seen,
                refused: refused_since(bench.front, &before),
            };
            let mark = if check.ok() {
                format!("{} ok", check.seen)
            } else {
                format!("{} (expected {expected})", check.seen)
            };
            let reasons = check.refused.keys().cloned().collect::<Vec<_>>().join(", ");
            println!("  {:<62} {mark:>16}  {reasons}", check.what);
            checks.push(check);
        };
        let row = |listener, alg, kind| Variant {
            listener,
            alg,
            kind,
        };
        for alg in [Alg::Es256, Alg::EdDsa] {
            let baseline = row(Listener::TetherCache, alg, Kind::Signload);
            if variants.iter().any(|v| v.id() == baseline.id()) {
                let (lines, _) = self.requests(&baseline, &self.token(bench, &baseline), 1);
                send(
                    format!("{}: Bearer, the bench token", baseline.label()),
                    Listener::TetherCache,
                    &lines,
                    "200",
                    None,
                );
            }
        }
        let es256 = row(Listener::TetherDpop, Alg::Es256, Kind::Dpop);
        let token = self.token(bench, &es256);
        let (good, _) = self.requests(&es256, &token, 1);
        send(
            "DPoP, ES256 token, a fresh ES256 proof".into(),
            Listener::TetherDpop,
            &good,
            "200",
            None,
        );
        let eddsa = row(Listener::TetherDpop, Alg::EdDsa, Kind::Dpop);
        let (lines, _) = self.requests(&eddsa, &self.token(bench, &eddsa), 1);
        send(
            "DPoP, EdDSA token, a fresh EdDSA proof".into(),
            Listener::TetherDpop,
            &lines,
            "200",
            None,
        );
        send(
            "the ES256 request again (a replayed proof)".into(),
            Listener::TetherDpop,
            &good,
            "401",
            Some("dpop_proof_replayed"),
        );
        let (fresh, _) = self.requests(&es256, &token, 1);
        let line: Value = serde_json::from_str(fresh.trim()).expect("a request line");
        let with_headers = |headers: Value| {
            let mut line = line.clone();
            line["headers"] = headers;
            format!("{line}\n")
        };
        send(
            "the DPoP-bound token as Bearer, with its proof".into(),
            Listener::TetherDpop,
            &with_headers(json!([
                ["authorization", format!("Bearer {token}")],
                ["dpop", line["headers"][1][1]]
            ])),
            "401",
            Some("dpop_token_as_bearer"),
        );
        send(
            "DPoP scheme, no DPoP header".into(),
            Listener::TetherDpop,
            &with_headers(json!([["authorization", format!("DPoP {token}")]])),
            "401",
            Some("dpop_proof_missing"),
        );
        // The token's x5t#S256 is mallory's: the DPoP row checks the certificate too.
        let mallory = bench.keys.dpop_token(
            Alg::Es256,
            &bench.pki.mallory,
            &self.keys.jkt(Alg::Es256),
            &unique_jti("check"),
        );
        let (lines, _) = self.requests(&es256, &mallory, 1);
        send(
            "token bound to another certificate (+ jkt), a good proof".into(),
            Listener::TetherDpop,
            &lines,
            "401",
            Some("certificate_mismatch"),
        );
        for variant in variants {
            if let Kind::Stage(stage) = variant.kind {
                if stage == Stage::Replayed {
                    continue; // the replay above
                }
                let (lines, _) = self.requests(variant, &self.token(bench, variant), 1);
                send(
                    format!("breakdown: {}", stage.name()),
                    variant.listener,
                    &lines,
                    "401",
                    Some(stage.reason()),
                );
            }
        }
        let _ = std::fs::remove_file(self.dir.join("check.jsonl"));
        let wrong = checks.iter().filter(|c| !c.ok()).count();
        if wrong > 0 {
            fail(&format!(
                "{wrong} check(s) of the DPoP rows failed: they are not measured (Envoy logs in \
                 {})",
                relative(self.dir.parent().unwrap_or(&self.dir))
            ));
        }
        checks.iter().map(Check::to_json).collect()
    }
}

/// `openssl speed -seconds 1 <algorithm>`: the line of its table and the figures.
pub struct OpensslSpeed {
    pub command: String,
    pub version: String,
    pub line: String,
    pub sign_per_s: f64,
    pub verify_per_s: f64,
}

impl OpensslSpeed {
    /// Runs `openssl speed -seconds 1 <algorithm>` (one core) and reads the row whose text
    /// contains `row` (`nistp256`, `Ed25519`).
    pub fn measure(algorithm: &str, row: &str) -> Option<OpensslSpeed> {
        let args = ["speed", "-seconds", "1", algorithm];
        let output = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().find(|l| l.contains(row))?.trim().to_string();
        let numbers: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        let (&verify_per_s, rest) = numbers.split_last()?;
        let &sign_per_s = rest.last()?;
        let version = Command::new("openssl")
            .arg("version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Some(OpensslSpeed {
            command: format!("openssl {}", args.join(" ")),
            version,
            line,
            sign_per_s,
            verify_per_s,
        })
    }

    pub fn us_per_verify(&self) -> f64 {
        1e6 / self.verify_per_s
    }

    pub fn describe(&self) -> String {
        format!(
            "{}: {:.0} verify/s = {:.1} us per verify ({:.0} sign/s); {}",
            self.command,
            self.verify_per_s,
            self.us_per_verify(),
            self.sign_per_s,
            self.version
        )
    }

    pub fn to_json(&self) -> Value {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "command": self.command,
            "openssl": self.version,
            "output_line": self.line,
            "sign_per_second": self.sign_per_s,
            "verify_per_second": self.verify_per_s,
            "us_per_verify": round2(self.us_per_verify()),
        })
    }
}

/// A DPoP row beside the cached `mtls` row of the same token algorithm.
pub struct Comparison {
    pub dpop: String,
    pub dpop_label: String,
    pub mtls_label: String,
    pub signload_label: Option<String>,
    pub alg: Alg,
    pub dpop_us: f64,
    pub mtls: String,
    pub mtls_us: f64,
    /// The DPoP row's front Envoy CPU per request beyond the cached `mtls` row's (`oha`).
    pub extra_us: f64,
    pub signload: Option<String>,
    pub signload_us: Option<f64>,
    /// The same beyond the `mtls` request sent by signload (the same load generator).
    pub extra_like_us: Option<f64>,
    /// The issue's target (ES256 only).
    pub target_us: Option<f64>,
    pub client_proof_us: f64,
}

impl Comparison {
    pub fn met(&self) -> Option<bool> {
        self.target_us.map(|t| self.extra_us <= t)
    }

    pub fn to_json(&self) -> Value {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "dpop_row": self.dpop,
            "dpop_label": self.dpop_label,
            "mtls_label": self.mtls_label,
            "signload_mtls_label": self.signload_label,
            "algorithm": self.alg.name(),
            "dpop_envoy_cpu_us_per_request": round2(self.dpop_us),
            "mtls_row": self.mtls,
            "mtls_envoy_cpu_us_per_request": round2(self.mtls_us),
            "extra_envoy_cpu_us_per_request": round2(self.extra_us),
            "signload_mtls_row": self.signload,
            "signload_mtls_envoy_cpu_us_per_request": self.signload_us.map(round2),
            "extra_vs_signload_mtls_us_per_request": self.extra_like_us.map(round2),
            "target_us": self.target_us,
            "met": self.met(),
            "client_proof_us": round2(self.client_proof_us),
        })
    }
}

/// One step of the breakdown: a stage and what it cost beyond the stage before it.
pub struct Step {
    pub id: String,
    pub reason: &'static str,
    pub what: &'static str,
    pub us: f64,
    pub delta_us: Option<f64>,
}

/// The DPoP section of the results.
pub struct DpopReport {
    pub comparisons: Vec<Comparison>,
    pub steps: Vec<Step>,
    /// (DPoP ES256 - signload mtls ES256) - (replayed - mtls 401): what the 200 path of a DPoP
    /// request costs beyond the breakdown's last stage (the replay record's write).
    pub rest_us: Option<f64>,
    pub ecdsa: Option<OpensslSpeed>,
    pub ed25519: Option<OpensslSpeed>,
    pub check: Vec<Value>,
    pub seconds: u64,
}

pub fn summarize(
    rows: &[Row],
    check: Vec<Value>,
    ecdsa: Option<OpensslSpeed>,
    ed25519: Option<OpensslSpeed>,
    seconds: u64,
) -> DpopReport {
    let find = |id: &str| rows.iter().find(|r| r.variant.id() == id);
    let comparisons = rows
        .iter()
        .filter(|r| r.variant.kind == Kind::Dpop)
        .filter_map(|row| {
            let mtls = find(&row.variant.mtls_row_id())?;
            let signload = find(&row.variant.signload_row_id());
            let mut client = row
                .loads
                .iter()
                .filter_map(|l| l.client_us)
                .collect::<Vec<_>>();
            Some(Comparison {
                dpop: row.variant.id(),
                dpop_label: row.variant.label(),
                mtls_label: mtls.variant.label(),
                signload_label: signload.map(|s| s.variant.label()),
                alg: row.variant.alg,
                dpop_us: row.envoy_us_per_request,
                mtls: mtls.variant.id(),
                mtls_us: mtls.envoy_us_per_request,
                extra_us: row.envoy_us_per_request - mtls.envoy_us_per_request,
                signload: signload.map(|s| s.variant.id()),
                signload_us: signload.map(|s| s.envoy_us_per_request),
                extra_like_us: signload.map(|s| row.envoy_us_per_request - s.envoy_us_per_request),
                target_us: (row.variant.alg == Alg::Es256).then_some(TARGET_US),
                client_proof_us: crate::report::median(&mut client),
            })
        })
        .collect::<Vec<_>>();
    let mut steps: Vec<Step> = Vec::new();
    for stage in Stage::ALL {
        let id = format!("dpop_stage_{}", stage.name());
        if let Some(row) = find(&id) {
            let delta_us = steps.last().map(|s| row.envoy_us_per_request - s.us);
            steps.push(Step {
                id,
                reason: stage.reason(),
                what: stage.step(),
                us: row.envoy_us_per_request,
                delta_us,
            });
        }
    }
    let stage_us = |stage: Stage| {
        steps
            .iter()
            .find(|s| s.reason == stage.reason())
            .map(|s| s.us)
    };
    let rest_us = match (
        comparisons
            .iter()
            .find(|c| c.alg == Alg::Es256)
            .and_then(|c| c.extra_like_us),
        stage_us(Stage::Replayed),
        stage_us(Stage::MtlsRefused),
    ) {
        (Some(total), Some(replayed), Some(refused)) => Some(total - (replayed - refused)),
        _ => None,
    };
    DpopReport {
        comparisons,
        steps,
        rest_us,
        ecdsa,
        ed25519,
        check,
        seconds,
    }
}

impl DpopReport {
    pub fn print(&self, rounds: u64) {
        println!(
            "\nDPoP (RFC 9449): GET {PATH}, Authorization: DPoP + a fresh proof on every request \
             (signload; proofs signed beforehand), the token (cnf x5t#S256 + jkt) verified once \
             and cached; median of {rounds} round(s) x {} s",
            self.seconds
        );
        println!(
            "  {:<26} {:>7}   {:<26} {:>7} {:>8}   {:<34} {:>7} {:>8}   {:>9} {:>11}",
            "row",
            "us/req",
            "cached mtls row (oha)",
            "us/req",
            "+us/req",
            "mtls by signload (same client)",
            "us/req",
            "+us/req",
            "target",
            "client proof"
        );
        println!(
            "  {}",
            "-".repeat(26 + 7 + 26 + 7 + 8 + 34 + 7 + 8 + 9 + 11 + 16)
        );
        for c in &self.comparisons {
            let verdict = match (c.target_us, c.met()) {
                (Some(t), Some(true)) => format!("<= {t:.0} met"),
                (Some(t), Some(false)) => format!("<= {t:.0} MISSED"),
                _ => "-".to_string(),
            };
            println!(
                "  {:<26} {:>7.1}   {:<26} {:>7.1} {:>+8.1}   {:<34} {:>7} {:>8}   {:>9} {:>8.1} us",
                c.dpop_label,
                c.dpop_us,
                c.mtls_label,
                c.mtls_us,
                c.extra_us,
                c.signload_label.as_deref().unwrap_or("-"),
                c.signload_us
                    .map_or("-".to_string(), |x| format!("{x:.1}")),
                c.extra_like_us
                    .map_or("-".to_string(), |x| format!("{x:+.1}")),
                verdict,
                c.client_proof_us,
            );
        }
        println!(
            "  us/req: the front Envoy's CPU time per response (median over the rounds); +us/req: \
             the DPoP row's beyond the cached mtls row's, the cost of the proof. Target (ES256): \
             at most +{TARGET_US:.0} us over the cached mtls row.\n  client proof: the driver's \
             time to sign one proof beforehand (Rust, one core), not part of the run."
        );
        for speed in [&self.ecdsa, &self.ed25519].into_iter().flatten() {
            println!("  {}", speed.describe());
        }
        if let Some(ecdsa) = &self.ecdsa {
            if let Some(c) = self.comparisons.iter().find(|c| c.alg == Alg::Es256) {
                println!(
                    "  The ES256 proof's +{:.1} us is {:.1} x OpenSSL's ES256 verify on this \
                     machine ({:.1} us); the target {TARGET_US:.0} us is {:.1} x.",
                    c.extra_us,
                    c.extra_us / ecdsa.us_per_verify(),
                    ecdsa.us_per_verify(),
                    TARGET_US / ecdsa.us_per_verify()
                );
            }
        }
        if !self.steps.is_empty() {
            println!(
                "\nDPoP breakdown (ES256; BENCH_DPOP_BREAKDOWN=1): requests refused right after \
                 a known step; +us/req is the step's cost, the stage's Envoy CPU per response \
                 beyond the stage before it"
            );
            println!(
                "  {:<30} {:>7} {:>8} {:>8}   step",
                "stage (Tether's refusal)", "us/req", "+us/req", "vs 1st"
            );
            let first = self.steps.first().map_or(0.0, |s| s.us);
            for step in &self.steps {
                println!(
                    "  {:<30} {:>7.1} {:>8} {:>+8.1}   {}",
                    step.reason,
                    step.us,
                    step.delta_us
                        .map_or("-".to_string(), |d| format!("{d:+.1}")),
                    step.us - first,
                    step.what
                );
            }
            if let Some(rest) = self.rest_us {
                println!(
                    "  {:<30} {:>7} {:>+8.1} {:>8}   (DPoP ES256 - mtls ES256 by signload) - \
                     (replayed - certificate_mismatch): the replay record's write (compare-and-\
                     swap set), and what a 200 costs beyond a 401",
                    "accepted (200)", "", rest, ""
                );
            }
        }
    }

    pub fn to_json(&self, rounds: u64, concurrency: u64) -> Value {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "method": {
                "listener": "tether_dpop: Tether with token_cache_entries 4096, dpop {algs, \
                             max_age_seconds}, rules [{prefix: /, require: dpop}], in the token \
                             rows' front Envoy",
                "dpop": {"algs": DPOP_ALGS, "max_age_seconds": DPOP_MAX_AGE_SECONDS},
                "token": "ES256 or EdDSA from the bench issuer (as the mtls rows'), cnf \
                          {x5t#S256: the client certificate signload presents, jkt: the RFC \
                          7638 thumbprint of the client's DPoP key}; one per measurement, \
                          verified once and cached",
                "request": format!("GET {PATH}, Authorization: DPoP <token>, DPoP: <proof>"),
                "proof": format!("typ dpop+jwt, alg ES256 or EdDSA, jwk; claims jti (16 random \
                                  bytes), htm GET, htu {HTU}, iat, ath; a fresh proof on every \
                                  request, all signed right before the measurement by the \
                                  driver (p256, ed25519-compact) on every core"),
                "load_generator": "bench/signload",
                "baseline": "the cached mtls row of the same token algorithm (oha), and the \
                             same request sent by signload (tether_cache_<alg>_signload)",
                "seconds_per_measurement": self.seconds,
                "rounds": rounds,
                "concurrency": concurrency,
                "target": format!("ES256: at most +{TARGET_US} us of front Envoy CPU per request \
                                   over the cached mtls ES256 row"),
            },
            "check": self.check,
            "comparisons": self.comparisons.iter().map(Comparison::to_json).collect::<Vec<_>>(),
            "openssl_speed": {
                "ecdsap256": self.ecdsa.as_ref().map(OpensslSpeed::to_json),
                "ed25519": self.ed25519.as_ref().map(OpensslSpeed::to_json),
            },
            "breakdown": if self.steps.is_empty() { Value::Null } else { json!({
                "steps": self.steps.iter().map(|s| json!({
                    "row": s.id,
                    "refusal": s.reason,
                    "step": s.what,
                    "envoy_cpu_us_per_request": round2(s.us),
                    "step_us_per_request": s.delta_us.map(round2),
                })).collect::<Vec<_>>(),
                "accepted_rest_us_per_request": self.rest_us.map(round2),
            })},
        })
    }
}
