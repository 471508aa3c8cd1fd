//! The signed-request rows: a 1 KiB POST through Tether on a route that requires a request
//! signature (ES256, EdDSA, HS256), beside the same POST on a route that does not.
//!
//! A separate front Envoy (`--concurrency 1`, the same back end) has one mTLS listener running
//! Tether with two rules: `/signed` (`require: mtls`, `signed_request: true`) and `/plain`
//! (`require: mtls`). The client `bench-app` is registered with an ES256 and an EdDSA public
//! key and an HS256 secret; the access token (ES256, from the bench issuer, bound to alice's
//! certificate) names it in `client_id`.
//!
//! Tether refuses a replayed signature, and ES256 (RFC 6979), EdDSA and HMAC are
//! deterministic, so every request has its own body (a request number inside) and its own
//! signature. `oha` sends the same request over and over, so these rows go through
//! `bench/signload`, which sends pre-generated requests, each once. The requests of a
//! measurement are signed right before it (a signature older than `max_age_seconds` is
//! refused), sized from the rate the row reached before.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::Mac as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::envoy::{backend_cluster, https_listener, socket_address, wasm_filter, EnvoyProcess};
use crate::load::XorShift;
use crate::machine::{cpu_ticks, system_cpu_ticks, Tools};
use crate::report::median;
use crate::support::jwt::Alg;
use crate::support::now;
use crate::support::pki::Pki;
use crate::tokens::{unique_jti, Keys};
use crate::{fail, relative, write_json, Settings, AUDIENCE, ISSUER};

/// The listener of the signed-request front Envoy.
pub const LISTENER: &str = "signed";
/// Its twin whose Tether signs responses with its P-256 key.
pub const LISTENER_P256: &str = "signed_p256";
/// The environment variables of the front Envoy holding Tether's response keys.
pub const RESPONSE_KEY_ED25519_ENV: &str = "TETHER_BENCH_RESPONSE_ED25519";
pub const RESPONSE_KEY_P256_ENV: &str = "TETHER_BENCH_RESPONSE_P256";
/// The registered client the token names and whose keys sign.
pub const CLIENT_ID: &str = "bench-app";
/// Every row's request body, in bytes.
pub const BODY_BYTES: usize = 1024;
/// The back end's response body on `/resp-*`, in bytes.
pub const RESPONSE_BYTES: usize = 1024;
pub const MAX_AGE_SECONDS: u64 = 60;
pub const MAX_BODY_BYTES: u64 = 65536;
/// The longest signed measurement: its requests are all signed before it starts, and must
/// still be younger than `MAX_AGE_SECONDS` when the last one goes out.
pub const MAX_SECONDS: u64 = 30;
/// The most requests generated for one measurement (about 2 KiB each, on disk and in
/// signload's memory).
pub const MAX_REQUESTS: usize = 250_000;
/// The rate assumed for a row's first (warm-up) measurement, before it has been measured.
const FIRST_RATE: f64 = 4000.0;
/// Requests generated beyond the expected rate x seconds: signload stops at the deadline,
/// so a row runs out of requests early only if it runs this much faster than it did before.
const HEADROOM: f64 = 1.3;

/// How many requests to make for a measurement of `seconds` at the row's last `rate`: signload
/// stops at the deadline, and sends each request once (fresh signatures, fresh DPoP proofs).
pub fn planned_requests(rate: f64, seconds: u64) -> usize {
    ((rate * seconds as f64 * HEADROOM) as usize + 200).min(MAX_REQUESTS)
}

/// One signed-request row.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum SignedRow {
    Unsigned,
    Es256,
    EdDsa,
    Hs256,
    /// RFC 9421 request signatures (`signed_request: "http_message_signature"`).
    HttpEs256,
    HttpEd25519,
    /// A 1 KiB response: not signed, then signed by Tether (`sign_response`) with its
    /// Ed25519 or its P-256 key (two listeners: the first key listed signs).
    ResponseUnsigned,
    ResponseEd25519,
    ResponseEs256,
}

/// How a row's requests are made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signing {
    None,
    /// A detached JWS: `alg`, `kid`.
    Jws(&'static str, &'static str),
    /// An RFC 9421 signature: `alg`, `keyid`.
    Http(&'static str, &'static str),
}

impl SignedRow {
    pub const ALL: [SignedRow; 9] = [
        SignedRow::Unsigned,
        SignedRow::Es256,
        SignedRow::EdDsa,
        SignedRow::Hs256,
        SignedRow::HttpEs256,
        SignedRow::HttpEd25519,
        SignedRow::ResponseUnsigned,
        SignedRow::ResponseEd25519,
        SignedRow::ResponseEs256,
    ];

    pub fn id(self) -> &'static str {
        match self {
            SignedRow::Unsigned => "post_unsigned_mtls",
            SignedRow::Es256 => "post_signed_es256",
            SignedRow::EdDsa => "post_signed_eddsa",
            SignedRow::Hs256 => "post_signed_hs256",
            SignedRow::HttpEs256 => "post_rfc9421_ecdsa_p256",
            SignedRow::HttpEd25519 => "post_rfc9421_ed25519",
            SignedRow::ResponseUnsigned => "response_1k_unsigned",
            SignedRow::ResponseEd25519 => "response_1k_signed_ed25519",
            SignedRow::ResponseEs256 => "response_1k_signed_es256",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SignedRow::Unsigned => "POST 1 KiB, unsigned (mtls)",
            SignedRow::Es256 => "POST 1 KiB, signed ES256",
            SignedRow::EdDsa => "POST 1 KiB, signed EdDSA",
            SignedRow::Hs256 => "POST 1 KiB, signed HS256",
            SignedRow::HttpEs256 => "POST 1 KiB, RFC 9421 ES256",
            SignedRow::HttpEd25519 => "POST 1 KiB, RFC 9421 Ed25519",
            SignedRow::ResponseUnsigned => "1 KiB response, unsigned",
            SignedRow::ResponseEd25519 => "1 KiB response, Ed25519",
            SignedRow::ResponseEs256 => "1 KiB response, ES256",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            SignedRow::Unsigned => "/plain",
            SignedRow::Es256 | SignedRow::EdDsa | SignedRow::Hs256 => "/signed",
            SignedRow::HttpEs256 | SignedRow::HttpEd25519 => "/httpsig",
            SignedRow::ResponseUnsigned => "/resp-plain",
            SignedRow::ResponseEd25519 | SignedRow::ResponseEs256 => "/resp-signed",
        }
    }

    /// The front listener the row's requests go to.
    pub fn listener(self) -> &'static str {
        match self {
            SignedRow::ResponseEs256 => LISTENER_P256,
            _ => LISTENER,
        }
    }

    /// The row this one is compared with: the same request without the signature.
    pub fn baseline(self) -> SignedRow {
        match self {
            SignedRow::ResponseEd25519 | SignedRow::ResponseEs256 => SignedRow::ResponseUnsigned,
            _ => SignedRow::Unsigned,
        }
    }

    pub fn is_baseline(self) -> bool {
        matches!(self, SignedRow::Unsigned | SignedRow::ResponseUnsigned)
    }

    pub fn signing(self) -> Signing {
        match self {
            SignedRow::Es256 => Signing::Jws("ES256", "app-es256"),
            SignedRow::EdDsa => Signing::Jws("EdDSA", "app-eddsa"),
            SignedRow::Hs256 => Signing::Jws("HS256", "app-hs256"),
            SignedRow::HttpEs256 => Signing::Http("ecdsa-p256-sha256", "app-es256"),
            SignedRow::HttpEd25519 => Signing::Http("ed25519", "app-eddsa"),
            _ => Signing::None,
        }
    }

    /// The signature's `alg` and `kid` (`keyid`); `None` for an unsigned request.
    pub fn alg_kid(self) -> Option<(&'static str, &'static str)> {
        match self.signing() {
            Signing::Jws(alg, kid) | Signing::Http(alg, kid) => Some((alg, kid)),
            Signing::None => None,
        }
    }
}

/// The client's signing keys: fresh for every run, from the system's random source.
pub struct ClientKeys {
    es256: p256::ecdsa::SigningKey,
    eddsa: ed25519_compact::KeyPair,
    hmac: [u8; 32],
}

impl ClientKeys {
    pub fn generate() -> ClientKeys {
        let mut random = [0u8; 96];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .unwrap_or_else(|e| fail(&format!("read /dev/urandom: {e}")));
        let part =
            |i: usize| -> [u8; 32] { random[i * 32..(i + 1) * 32].try_into().expect("32 bytes") };
        ClientKeys {
            es256: p256::ecdsa::SigningKey::from_slice(&part(0))
                .unwrap_or_else(|e| fail(&format!("P-256 key: {e}"))),
            eddsa: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(part(1))),
            hmac: part(2),
        }
    }

    /// The client's public keys, as registered in Tether's `clients[].jwks`.
    pub fn jwks(&self) -> Value {
        let point = self.es256.verifying_key().to_encoded_point(false);
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        json!({"keys": [
            {
                "kty": "EC", "crv": "P-256", "kid": "app-es256", "use": "sig", "alg": "ES256",
                "x": b64(point.x().expect("an uncompressed point has x")),
                "y": b64(point.y().expect("an uncompressed point has y")),
            },
            {
                "kty": "OKP", "crv": "Ed25519", "kid": "app-eddsa", "use": "sig", "alg": "EdDSA",
                "x": b64(&self.eddsa.pk[..]),
            },
        ]})
    }

    pub fn hmac_keys(&self) -> Value {
        json!([{"kid": "app-hs256", "k": URL_SAFE_NO_PAD.encode(self.hmac)}])
    }

    /// The JWS signature of `input` for `row` (ES256: `R || S`, RFC 7518 §3.4).
    pub fn sign(&self, row: SignedRow, input: &[u8]) -> Vec<u8> {
        match row {
            SignedRow::Es256 | SignedRow::HttpEs256 => {
                let signature: p256::ecdsa::Signature = self.es256.sign(input);
                signature.to_bytes().to_vec()
            }
            SignedRow::EdDsa | SignedRow::HttpEd25519 => self.eddsa.sk.sign(input, None).to_vec(),
            SignedRow::Hs256 => {
                let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.hmac)
                    .expect("HMAC takes any key length");
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            _ => Vec::new(),
        }
    }
}

/// Tether's response signing keys, fresh for every run: private JWKs, handed to the front
/// Envoy's VMs through its environment.
pub struct ResponseKeys {
    pub ed25519: String,
    pub p256: String,
}

impl ResponseKeys {
    pub fn generate() -> ResponseKeys {
        let mut random = [0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .unwrap_or_else(|e| fail(&format!("read /dev/urandom: {e}")));
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let seed: [u8; 32] = random[..32].try_into().expect("32 bytes");
        let ed = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        let p256 = p256::ecdsa::SigningKey::from_slice(&random[32..])
            .unwrap_or_else(|e| fail(&format!("P-256 key: {e}")));
        let point = p256.verifying_key().to_encoded_point(false);
        ResponseKeys {
            ed25519: json!({"kty": "OKP", "crv": "Ed25519", "d": b64(&seed), "x": b64(&ed.pk[..])})
                .to_string(),
            p256: json!({"kty": "EC", "crv": "P-256", "d": b64(&p256.to_bytes()),
                "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))})
            .to_string(),
        }
    }
}

/// Tether's configuration on the signed-request listeners; `first` is the response key that
/// signs (`ed25519` or `p256`).
pub fn tether_config(keys: &Keys, client: &ClientKeys, first: &str) -> Value {
    let ed25519 = json!({"kid": "resp-ed25519", "private_jwk_env": RESPONSE_KEY_ED25519_ENV});
    let p256 = json!({"kid": "resp-p256", "private_jwk_env": RESPONSE_KEY_P256_ENV});
    let response_keys = if first == "p256" {
        json!([p256, ed25519])
    } else {
        json!([ed25519, p256])
    };
    json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"keys": [keys.es256.jwk()]},
        }],
        "clients": [{
            "client_id": CLIENT_ID,
            "jwks": client.jwks(),
            "hmac_keys": client.hmac_keys(),
        }],
        "signed_requests": {"max_age_seconds": MAX_AGE_SECONDS, "max_body_bytes": MAX_BODY_BYTES},
        "message_signatures": {"max_age_seconds": MAX_AGE_SECONDS},
        "response_signing": {"keys": response_keys, "max_body_bytes": MAX_BODY_BYTES},
        "rules": [
            {"prefix": "/signed", "require": "mtls", "signed_request": true},
            {"prefix": "/httpsig", "require": "mtls", "signed_request": "http_message_signature"},
            {"prefix": "/plain", "require": "mtls"},
            {"prefix": "/resp-signed", "require": "mtls", "sign_response": "http_message_signature"},
            {"prefix": "/resp-plain", "require": "mtls"},
        ],
    })
}

/// The signed-request front Envoy: two listeners (Tether signing responses with its Ed25519,
/// or its P-256 key), Tether with `allow_on_headers_stop_iteration` (without it Envoy holds
/// the body back from a filter that paused on the headers, and a signed request never
/// completes) and the response keys from the environment.
pub fn bootstrap(
    backend_port: u16,
    pki: &Pki,
    keys: &Keys,
    client: &ClientKeys,
    tools: &Tools,
) -> Value {
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    });
    let listener = |name: &str, first: &str| {
        let mut tether = wasm_filter(
            "tether_signed",
            &tools.tether_wasm,
            &tether_config(keys, client, first),
        );
        let config = &mut tether["typed_config"]["config"];
        config["allow_on_headers_stop_iteration"] = json!(true);
        config["vm_config"]["environment_variables"] =
            json!({"host_env_keys": [RESPONSE_KEY_ED25519_ENV, RESPONSE_KEY_P256_ENV]});
        https_listener(name, pki, vec![tether, router.clone()], false)
    };
    json!({
        "admin": {"address": socket_address(0)},
        "static_resources": {
            "listeners": [listener(LISTENER, "ed25519"), listener(LISTENER_P256, "p256")],
            "clusters": [backend_cluster(backend_port)],
        },
    })
}

/// What one signload run measured.
#[derive(Debug, Clone)]
pub struct SignedLoad {
    pub requests: u64,
    pub planned: usize,
    pub unsent: u64,
    pub elapsed: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Tether's refusal counters over the run, by reason.
    pub refused: BTreeMap<String, u64>,
    /// Front Envoy CPU per second of the run (1.0 = one core), and per response.
    pub envoy_cpu: f64,
    pub envoy_us_per_request: f64,
    pub backend_cpu: f64,
    pub machine_cpu: f64,
    /// The driver's time to compute one signature (one core), before the run.
    pub client_sign_us: f64,
}

impl SignedLoad {
    pub fn non_200(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| status.as_str() != "200")
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.errors.values().sum::<u64>()
    }

    pub fn problems(&self) -> String {
        if self.non_200() == 0 {
            return String::new();
        }
        format!(
            "   !! FAILED MEASUREMENT, not all 200: {:?}{}{}",
            self.statuses,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(" errors {:?}", self.errors)
            },
            if self.refused.is_empty() {
                String::new()
            } else {
                format!(" refused {:?}", self.refused)
            }
        )
    }
}

/// Drives the signed-request listener.
pub struct SignedBench<'a> {
    pub settings: &'a Settings,
    pub pki: &'a Pki,
    pub keys: &'a Keys,
    pub client: &'a ClientKeys,
    pub front: &'a EnvoyProcess,
    pub backend_pid: u32,
    /// The front listeners' ports, by name.
    pub ports: BTreeMap<String, u16>,
    pub clock_ticks: f64,
    pub signload: PathBuf,
    pub dir: PathBuf,
}

/// A request number unique in this run: it goes into every body, so that no two
/// (deterministic) signatures are the same.
static REQUEST_NUMBER: AtomicU64 = AtomicU64::new(0);

impl SignedBench<'_> {
    /// The signload binary: `$BENCH_SIGNLOAD`, or the one `make bench` builds.
    pub fn signload_binary(root: &Path) -> PathBuf {
        let binary = std::env::var_os("BENCH_SIGNLOAD")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("bench/signload/target/release/signload"));
        if !binary.exists() {
            fail(&format!(
                "{} is missing: run `make bench` (it builds bench/signload)",
                binary.display()
            ));
        }
        binary
    }

    /// `count` requests for `row` with `token`, as signload's JSON lines, and the mean time of
    /// one signature in µs (0 for the unsigned row). Signed on every core, each request
    /// with its own `iat`.
    pub fn requests(&self, row: SignedRow, token: &str, count: usize) -> (String, f64) {
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        let htu = format!("https://localhost{}", row.path());
        let authorization = format!("Bearer {token}");
        let first = REQUEST_NUMBER.fetch_add(count as u64, Ordering::Relaxed);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = count.div_ceil(threads).max(1);
        let parts: Vec<(String, f64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (ath, htu, authorization) = (&ath, &htu, &authorization);
                    scope.spawn(move || {
                        let start = (t * per_thread).min(count);
                        let end = ((t + 1) * per_thread).min(count);
                        let mut out = String::with_capacity((end - start) * 2300);
                        let mut signing = 0.0;
                        for i in start..end {
                            let number = first + i as u64;
                            let body = body(number, row);
                            let mut headers = vec![
                                json!(["authorization", authorization]),
                                json!(["content-type", "application/json"]),
                            ];
                            if let Signing::Http(alg, keyid) = row.signing() {
                                // RFC 9530 and RFC 9421 §2.5, as a FAPI 2.0 client signs.
                                let digest = format!(
                                    "sha-256=:{}:",
                                    STANDARD.encode(Sha256::digest(body.as_bytes()))
                                );
                                let params = format!(
                                    "(\"@method\" \"@target-uri\" \"authorization\" \"content-digest\");\
                                     created={};keyid=\"{keyid}\";alg=\"{alg}\";tag=\"fapi-2-request\"",
                                    now()
                                );
                                let base = format!(
                                    "\"@method\": POST\n\"@target-uri\": {htu}\n\"authorization\": \
                                     {authorization}\n\"content-digest\": {digest}\n\
                                     \"@signature-params\": {params}"
                                );
                                let started = Instant::now();
                                let signature = self.client.sign(row, base.as_bytes());
                                signing += started.elapsed().as_secs_f64();
                                headers.push(json!(["content-digest", digest]));
                                headers.push(json!(["signature-input", format!("sig1={params}")]));
                                headers.push(json!([
                                    "signature",
                                    format!("sig1=:{}:", STANDARD.encode(signature))
                                ]));
                            }
                            if let Signing::Jws(alg, kid) = row.signing() {
                                let header = json!({
                                    "alg": alg, "kid": kid, "b64": false, "crit": ["b64"],
                                    "iat": now(), "htm": "POST", "htu": htu, "ath": ath,
                                });
                                let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
                                // RFC 7797 §3: ASCII(BASE64URL(header)) || '.' || body.
                                let mut input =
                                    Vec::with_capacity(header_b64.len() + 1 + BODY_BYTES);
                                input.extend_from_slice(header_b64.as_bytes());
                                input.push(b'.');
                                input.extend_from_slice(body.as_bytes());
                                let started = Instant::now();
                                let signature = self.client.sign(row, &input);
                                signing += started.elapsed().as_secs_f64();
                                let jws =
                                    format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(signature));
                                headers.push(json!(["x-jws-signature", jws]));
                            }
                            let line = json!({
                                "method": "POST",
                                "path": row.path(),
                                "headers": headers,
                                "body": body,
                            });
                            let _ = writeln!(out, "{line}");
                        }
                        (out, signing)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("signing thread"))
                .collect()
        });
        let signing: f64 = parts.iter().map(|(_, s)| s).sum();
        let lines = parts.into_iter().map(|(l, _)| l).collect::<String>();
        (lines, signing * 1e6 / count.max(1) as f64)
    }

    /// A fresh token for `client_id` `bench-app`, bound to alice's certificate.
    pub fn token(&self) -> String {
        self.keys.token_for(
            Alg::Es256,
            &self.pki.alice,
            &unique_jti("signed"),
            CLIENT_ID,
        )
    }

    /// Runs signload on `requests` (a file of JSON lines) against `row`'s listener and
    /// returns its report.
    fn signload(
        &self,
        row: SignedRow,
        requests: &Path,
        connections: u64,
        max_seconds: Option<u64>,
    ) -> Result<Value, String> {
        run_signload(
            &self.signload,
            &self.dir.join("signload.json"),
            self.ports[row.listener()],
            self.pki,
            connections,
            requests,
            max_seconds,
        )
    }

    /// Tether's refusal counters (`wasmcustom.tether.refused.<reason>`).
    fn refused(&self) -> BTreeMap<String, u64> {
        refused_counters(self.front)
    }

    fn refused_since(&self, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        refused_since(self.front, before)
    }

    /// One measurement: `count` fresh requests for `row`, sent by signload over the bench's
    /// connections until they run out or `seconds` have passed.
    pub fn measure(&self, row: SignedRow, count: usize, seconds: u64) -> SignedLoad {
        let token = self.token();
        let (lines, client_sign_us) = self.requests(row, &token, count);
        let file = self.dir.join(format!("{}.jsonl", row.id()));
        std::fs::write(&file, lines)
            .unwrap_or_else(|e| fail(&format!("write {}: {e}", file.display())));
        let refused_before = self.refused();
        let front_before = cpu_ticks(self.front.pid);
        let backend_before = cpu_ticks(self.backend_pid);
        let system_before = system_cpu_ticks();
        let report = self
            .signload(row, &file, self.settings.concurrency, Some(seconds))
            .unwrap_or_else(|e| fail(&format!("signload failed on {}: {e}", row.label())));
        let cpu_seconds =
            |pid: u32, before: u64| cpu_ticks(pid).saturating_sub(before) as f64 / self.clock_ticks;
        let front_cpu = cpu_seconds(self.front.pid, front_before);
        let backend_cpu = cpu_seconds(self.backend_pid, backend_before);
        let system_after = system_cpu_ticks();
        let _ = std::fs::remove_file(&file);
        let number = |name: &str| report[name].as_f64().unwrap_or(0.0);
        let requests = report["requests"].as_u64().unwrap_or(0);
        // The run itself, without signload reading its file: Envoy's share of a core.
        let elapsed = number("elapsed_seconds").max(1e-9);
        SignedLoad {
            requests,
            planned: count,
            unsent: report["unsent"].as_u64().unwrap_or(0),
            elapsed,
            rps: number("requests_per_second"),
            p50_ms: number("p50_ms"),
            p99_ms: number("p99_ms"),
            statuses: crate::report::counts(&report["statuses"]),
            errors: crate::report::counts(&report["errors"]),
            refused: self.refused_since(&refused_before),
            envoy_cpu: front_cpu / elapsed,
            envoy_us_per_request: front_cpu * 1e6 / requests.max(1) as f64,
            backend_cpu: backend_cpu / elapsed,
            machine_cpu: (system_after.0.saturating_sub(system_before.0)) as f64
                / (system_after.1.saturating_sub(system_before.1)).max(1) as f64,
            client_sign_us,
        }
    }

    /// Before measuring: fresh signatures pass, a replay and a missing signature are
    /// refused, the unsigned route passes. Exits if any answer is wrong.
    pub fn check(&self) -> Vec<Value> {
        println!(
            "  {:<44} {:>16}  Tether refusal",
            "request (signload, one connection)", "status"
        );
        let token = self.token();
        let mut results = Vec::new();
        let mut wrong = 0;
        let mut send = |what: &str, row: SignedRow, lines: &str, expected: &str| {
            let file = self.dir.join("check.jsonl");
            std::fs::write(&file, lines).unwrap_or_else(|e| fail(&format!("write check: {e}")));
            let before = self.refused();
            let seen = match self.signload(row, &file, 1, None) {
                Ok(report) => {
                    let statuses = report["statuses"].as_object().cloned().unwrap_or_default();
                    match statuses.keys().next() {
                        Some(status) if statuses.len() == 1 => status.clone(),
                        _ => format!("{statuses:?} {}", report["errors"]),
                    }
                }
                Err(e) => format!("error: {e}"),
            };
            let refused = self.refused_since(&before);
            let reasons = refused.keys().cloned().collect::<Vec<_>>().join(", ");
            let mark = if seen == expected {
                format!("{seen} ok")
            } else {
                wrong += 1;
                format!("{seen} (expected {expected})")
            };
            println!("  {what:<44} {mark:>16}  {reasons}");
            results.push(json!({
                "request": what, "expected": expected, "status": seen,
                "refused": refused, "ok": seen == expected,
            }));
        };
        let mut replays = Vec::new();
        for row in [
            SignedRow::Es256,
            SignedRow::EdDsa,
            SignedRow::Hs256,
            SignedRow::HttpEs256,
            SignedRow::HttpEd25519,
        ] {
            let (lines, _) = self.requests(row, &token, 1);
            send(
                &format!("{}, fresh signature", row.label()),
                row,
                &lines,
                "200",
            );
            if matches!(row, SignedRow::Es256 | SignedRow::HttpEs256) {
                replays.push((row, lines));
            }
        }
        for (row, lines) in replays {
            send(
                &format!("{} again (a replay)", row.label()),
                row,
                &lines,
                "401",
            );
        }
        let (unsigned, _) = self.requests(SignedRow::Unsigned, &token, 1);
        for path in ["/signed", "/httpsig"] {
            send(
                &format!("POST 1 KiB without a signature to {path}"),
                SignedRow::Unsigned,
                &unsigned.replace("\"/plain\"", &format!("\"{path}\"")),
                "401",
            );
        }
        send(
            "POST 1 KiB without a signature to /plain",
            SignedRow::Unsigned,
            &unsigned,
            "200",
        );
        for row in [
            SignedRow::ResponseUnsigned,
            SignedRow::ResponseEd25519,
            SignedRow::ResponseEs256,
        ] {
            let (lines, _) = self.requests(row, &token, 1);
            send(row.label(), row, &lines, "200");
        }
        let _ = std::fs::remove_file(self.dir.join("check.jsonl"));
        if wrong > 0 {
            fail(&format!(
                "{wrong} check(s) of the signed-request listener failed: its rows are not measured \
                 (Envoy logs in {})",
                relative(&self.dir)
            ));
        }
        results
    }

    /// The warm-up (which also measures each row's rate, to size its requests) and the
    /// rounds: the measurements by row, each round's order, and the seconds per measurement.
    pub fn rounds(&self) -> (BTreeMap<SignedRow, Vec<SignedLoad>>, Vec<Vec<String>>, u64) {
        let seconds = self.settings.seconds.min(MAX_SECONDS);
        if seconds < self.settings.seconds {
            println!(
                "  (signed rows: {seconds} s per measurement, the most that fits signatures \
                 signed beforehand into max_age_seconds {MAX_AGE_SECONDS})"
            );
        }
        let line = |row: SignedRow, load: &SignedLoad| {
            let short = if load.unsent == 0 && load.elapsed < seconds as f64 * 0.9 {
                format!(
                    "  (ran out of its {} requests after {:.1} s)",
                    load.planned, load.elapsed
                )
            } else {
                String::new()
            };
            println!(
                "  {:<28} {:>6.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms  Envoy {:>3.0}% CPU \
                 {:>3.0} us/req  back end {:>3.0}%  all CPUs {:>3.0}%  {} sent{short}{}",
                row.label(),
                load.rps,
                load.p50_ms,
                load.p99_ms,
                load.envoy_cpu * 100.0,
                load.envoy_us_per_request,
                load.backend_cpu * 100.0,
                load.machine_cpu * 100.0,
                load.requests,
                load.problems()
            );
        };

        let warmup = self.settings.warmup.max(1);
        println!(
            "\nSigned requests, warm-up (also sizes each row's requests): {warmup} s per row, {} \
             connections",
            self.settings.concurrency
        );
        let mut rate: BTreeMap<SignedRow, f64> = BTreeMap::new();
        for row in SignedRow::ALL {
            let load = self.measure(row, planned_requests(FIRST_RATE, warmup), warmup);
            line(row, &load);
            rate.insert(row, load.rps.max(100.0));
        }

        let mut measurements: BTreeMap<SignedRow, Vec<SignedLoad>> = BTreeMap::new();
        let mut orders = Vec::new();
        let mut rng = XorShift::new(self.settings.seed ^ 0x5167_4E45_4452_4551);
        for round in 1..=self.settings.rounds {
            let mut order = SignedRow::ALL.to_vec();
            rng.shuffle(&mut order);
            orders.push(order.iter().map(|r| r.id().to_string()).collect());
            println!(
                "\nSigned requests, round {round}/{} ({seconds} s per row, {} connections):",
                self.settings.rounds, self.settings.concurrency
            );
            for row in order {
                let load = self.measure(row, planned_requests(rate[&row], seconds), seconds);
                line(row, &load);
                if load.non_200() == 0 {
                    rate.insert(row, load.rps.max(100.0));
                }
                measurements.entry(row).or_default().push(load);
            }
        }
        (measurements, orders, seconds)
    }
}

/// Runs signload (`binary`) on `requests` (a file of JSON lines) against 127.0.0.1:`port`,
/// with alice's certificate, its settings written to `settings`; returns its report.
pub fn run_signload(
    binary: &Path,
    settings: &Path,
    port: u16,
    pki: &Pki,
    connections: u64,
    requests: &Path,
    max_seconds: Option<u64>,
) -> Result<Value, String> {
    let mut value = json!({
        "address": format!("127.0.0.1:{port}"),
        "server_name": "localhost",
        "ca": pki.ca,
        "cert": pki.alice.cert,
        "key": pki.alice.key,
        "connections": connections,
        "requests": requests,
    });
    if let Some(seconds) = max_seconds {
        value["max_seconds"] = json!(seconds);
    }
    write_json(settings, &value);
    let output = Command::new(binary)
        .arg(settings)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "signload's output ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Tether's refusal counters (`wasmcustom.tether.refused.<reason>`) in `front`, summed over
/// its Tether VMs.
pub fn refused_counters(front: &EnvoyProcess) -> BTreeMap<String, u64> {
    let text = front
        .admin_get("/stats?filter=tether\\.refused\\.")
        .unwrap_or_default();
    let mut counters = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some((_, reason)) = name.trim().rsplit_once("refused.") else {
            continue;
        };
        if let Ok(n) = value.trim().parse::<u64>() {
            *counters.entry(reason.to_string()).or_insert(0) += n;
        }
    }
    counters
}

/// The refusal counters that moved since `before`, by how much.
pub fn refused_since(
    front: &EnvoyProcess,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    refused_counters(front)
        .into_iter()
        .filter_map(|(reason, n)| {
            let delta = n.saturating_sub(before.get(&reason).copied().unwrap_or(0));
            (delta > 0).then_some((reason, delta))
        })
        .collect()
}

/// A body of exactly `BODY_BYTES`, JSON, with the request number inside.
pub fn body(number: u64, row: SignedRow) -> String {
    let head = format!(
        "{{\"request\":{number},\"row\":\"{}\",\"amount\":\"125.00\",\"currency\":\"EUR\",\
         \"creditor\":\"DE89370400440532013000\",\"remittance\":\"",
        row.id()
    );
    let tail = "\"}";
    let filler = BODY_BYTES.saturating_sub(head.len() + tail.len());
    let mut body = head;
    body.extend(
        "invoice 2026-11 bench payload "
            .chars()
            .cycle()
            .take(filler),
    );
    body.push_str(tail);
    body
}

/// A row's figures over the rounds.
pub struct SignedSummary {
    pub row: SignedRow,
    pub loads: Vec<SignedLoad>,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub envoy_cpu: f64,
    pub envoy_us_per_request: f64,
    pub backend_cpu: f64,
    pub machine_cpu: f64,
    pub client_sign_us: f64,
    /// Requests/s against the unsigned row.
    pub vs_unsigned: Option<f64>,
    /// Front Envoy CPU µs per request beyond the unsigned row's.
    pub extra_cpu_us: Option<f64>,
    /// `1e6 / rps - 1e6 / rps(unsigned)`: the wall-clock time per request beyond the
    /// unsigned row's, on this machine (the load generator shares its CPUs).
    pub extra_wall_us: Option<f64>,
}

impl SignedSummary {
    pub fn non_200(&self) -> u64 {
        self.loads.iter().map(SignedLoad::non_200).sum()
    }

    pub fn statuses(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for load in &self.loads {
            for (status, n) in &load.statuses {
                *all.entry(status.clone()).or_insert(0) += n;
            }
        }
        all
    }

    fn sum_maps(&self, pick: fn(&SignedLoad) -> &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for load in &self.loads {
            for (key, n) in pick(load) {
                *all.entry(key.clone()).or_insert(0) += n;
            }
        }
        all
    }

    pub fn to_json(&self) -> Value {
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let opt2 = |x: Option<f64>| x.map(round2);
        json!({
            "id": self.row.id(),
            "label": self.row.label(),
            "path": self.row.path(),
            "algorithm": self.row.alg_kid().map(|(alg, _)| alg),
            "kid": self.row.alg_kid().map(|(_, kid)| kid),
            "rps": {
                "median": round2(self.rps),
                "min": round2(self.rps_min),
                "max": round2(self.rps_max),
                "rounds": self.loads.iter().map(|l| round2(l.rps)).collect::<Vec<_>>(),
            },
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "requests": self.loads.iter().map(|l| l.requests).collect::<Vec<_>>(),
            "elapsed_seconds": self.loads.iter().map(|l| round2(l.elapsed)).collect::<Vec<_>>(),
            "envoy_cpu_cores": round3(self.envoy_cpu),
            "envoy_cpu_us_per_request": round2(self.envoy_us_per_request),
            "backend_cpu_cores": round3(self.backend_cpu),
            "machine_cpu_busy": round3(self.machine_cpu),
            "client_sign_us_per_request": round2(self.client_sign_us),
            "ratio_rps_vs_unsigned": self.vs_unsigned.map(round3),
            "signing_cost_envoy_cpu_us_per_request": opt2(self.extra_cpu_us),
            "signing_cost_wall_us_per_request": opt2(self.extra_wall_us),
            "statuses": self.statuses(),
            "errors": self.sum_maps(|l| &l.errors),
            "refused": self.sum_maps(|l| &l.refused),
            "non_200": self.non_200(),
            "failed": self.non_200() > 0,
        })
    }
}

pub fn summarize(measurements: &BTreeMap<SignedRow, Vec<SignedLoad>>) -> Vec<SignedSummary> {
    let mut rows: Vec<SignedSummary> = SignedRow::ALL
        .iter()
        .map(|&row| {
            let loads = measurements.get(&row).cloned().unwrap_or_default();
            let pick = |f: fn(&SignedLoad) -> f64| loads.iter().map(f).collect::<Vec<_>>();
            let mut rps = pick(|l| l.rps);
            SignedSummary {
                row,
                rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
                rps_max: rps.iter().copied().fold(0.0, f64::max),
                rps: median(&mut rps),
                p50_ms: median(&mut pick(|l| l.p50_ms)),
                p99_ms: median(&mut pick(|l| l.p99_ms)),
                envoy_cpu: median(&mut pick(|l| l.envoy_cpu)),
                envoy_us_per_request: median(&mut pick(|l| l.envoy_us_per_request)),
                backend_cpu: median(&mut pick(|l| l.backend_cpu)),
                machine_cpu: median(&mut pick(|l| l.machine_cpu)),
                client_sign_us: median(&mut pick(|l| l.client_sign_us)),
                loads,
                vs_unsigned: None,
                extra_cpu_us: None,
                extra_wall_us: None,
            }
        })
        .collect();
    let baselines: BTreeMap<SignedRow, (f64, f64)> = rows
        .iter()
        .filter(|r| r.row.is_baseline())
        .map(|r| (r.row, (r.rps, r.envoy_us_per_request)))
        .collect();
    for row in rows.iter_mut().filter(|r| !r.row.is_baseline()) {
        if let Some(&(rps, us)) = baselines.get(&row.row.baseline()) {
            if rps > 0.0 && row.rps > 0.0 {
                row.vs_unsigned = Some(row.rps / rps);
                row.extra_wall_us = Some(1e6 / row.rps - 1e6 / rps);
            }
            row.extra_cpu_us = Some(row.envoy_us_per_request - us);
        }
    }
    rows
}

pub fn print_table(rows: &[SignedSummary], settings: &Settings, seconds: u64) {
    println!(
        "\nSigned requests: median of {} round(s) x {seconds} s, {} connections, signload; \
         its own front Envoy ({} worker(s), two listeners), the same back end",
        settings.rounds, settings.concurrency, settings.workers
    );
    let opt = |x: Option<f64>, precision: usize| {
        x.map_or_else(|| "-".to_string(), |x| format!("{x:.precision$}"))
    };
    println!(
        "  {:<28} {:>7} {:>13} {:>7} {:>7} {:>10} {:>10} {:>7} {:>12} {:>13} {:>12}",
        "row",
        "req/s",
        "min-max",
        "p50 ms",
        "p99 ms",
        "x unsigned",
        "Envoy CPU",
        "us/req",
        "+us/req CPU",
        "+us/req wall",
        "client sign"
    );
    println!(
        "  {}",
        "-".repeat(28 + 7 + 13 + 7 + 7 + 10 + 10 + 7 + 12 + 13 + 12 + 10)
    );
    for row in rows {
        let marks = if row.non_200() > 0 {
            format!(
                "  !! FAILED MEASUREMENT: {} non-200 {:?}, refused {:?}",
                row.non_200(),
                row.statuses(),
                row.sum_maps(|l| &l.refused)
            )
        } else {
            String::new()
        };
        println!(
            "  {:<28} {:>7.0} {:>13} {:>7.2} {:>7.2} {:>10} {:>9.0}% {:>7.0} {:>12} {:>13} {:>12}{marks}",
            row.row.label(),
            row.rps,
            format!("{:.0}-{:.0}", row.rps_min, row.rps_max),
            row.p50_ms,
            row.p99_ms,
            opt(row.vs_unsigned, 2),
            row.envoy_cpu * 100.0,
            row.envoy_us_per_request,
            opt(row.extra_cpu_us, 0),
            opt(row.extra_wall_us, 0),
            if row.row.alg_kid().is_none() {
                "-".to_string()
            } else {
                format!("{:.1} us", row.client_sign_us)
            },
        );
    }
    println!(
        "  The signing cost per request, against the unsigned row (the response rows against \
         the unsigned 1 KiB response): +us/req CPU is the front Envoy's CPU time per response \
         beyond the unsigned row's (the steadier figure); +us/req wall is 1e6/req/s beyond the \
         unsigned row's, on this machine, whose CPUs signload shares.\n  client sign: the \
         driver's time to sign one request beforehand (Rust, one core), not part of the run. \
         The response rows' cost is Tether holding the 1 KiB response, its Content-Digest and \
         its signature in the VM (Ed25519 by ed25519-dalek, ES256 by p256)."
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.non_200() > 0)
        .map(|r| r.row.label())
        .collect();
    if !failed.is_empty() {
        println!(
            "  !! FAILED MEASUREMENTS (responses other than 200): {}",
            failed.join("; ")
        );
    }
}

/// The signed-request section of the results JSON.
pub fn report_json(
    rows: &[SignedSummary],
    check: &[Value],
    orders: &[Vec<String>],
    settings: &Settings,
    seconds: u64,
    tools: &Tools,
    signload: &Path,
) -> Value {
    // "signload 0.1.0", from its manifest.
    let version =
        std::fs::read_to_string(crate::support::repo_root().join("bench/signload/Cargo.toml"))
            .ok()
            .and_then(|manifest| {
                manifest.lines().find_map(|l| {
                    l.strip_prefix("version = ")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .map_or_else(|| "signload".to_string(), |v| format!("signload {v}"));
    json!({
        "method": {
            "front_envoy": "a separate process, --concurrency 1, one mTLS listener \
                            (require_client_certificate), HTTP/1.1; the same back end",
            "tether": {
                "wasm": relative(&tools.tether_wasm),
                "allow_on_headers_stop_iteration": true,
                "rules": [
                    {"prefix": "/signed", "require": "mtls", "signed_request": true},
                    {"prefix": "/httpsig", "require": "mtls", "signed_request": "http_message_signature"},
                    {"prefix": "/plain", "require": "mtls"},
                    {"prefix": "/resp-signed", "require": "mtls", "sign_response": "http_message_signature"},
                    {"prefix": "/resp-plain", "require": "mtls"},
                ],
                "signed_requests": {"max_age_seconds": MAX_AGE_SECONDS, "max_body_bytes": MAX_BODY_BYTES},
                "response_signing": "listener signed: resp-ed25519 (Ed25519) signs; listener \
                                     signed_p256: resp-p256 (ES256) signs",
                "client": {"client_id": CLIENT_ID, "keys": ["app-es256 (ES256)", "app-eddsa (EdDSA)", "app-hs256 (HS256)"]},
            },
            "token": "ES256 from the bench issuer, cnf x5t#S256 of the client certificate, \
                      client_id bench-app; one per measurement (Tether's token cache verifies \
                      it once)",
            "request": format!("POST, a {BODY_BYTES}-byte JSON body with a request number \
                                inside, content-type application/json"),
            "signature": "x-jws-signature: detached compact JWS, b64 false (RFC 7797), \
                          protected header alg, kid, iat, htm, htu, ath; a fresh signature on \
                          every request, all signed right before the measurement",
            "rfc9421_signature": "Signature-Input sig1=(@method @target-uri authorization \
                                  content-digest);created;keyid;alg;tag=fapi-2-request, \
                                  Content-Digest sha-256; fresh on every request",
            "response": format!("the back end answers /resp-* with a {RESPONSE_BYTES}-byte \
                                 body; Tether holds it and signs it (RFC 9421, FAPI 2.0 \
                                 components, Content-Digest) on /resp-signed"),
            "load_generator": version,
            "load_generator_path": relative(signload),
            "keep_alive": true,
            "concurrency": settings.concurrency,
            "seconds_per_measurement": seconds,
            "rounds": settings.rounds,
            "warmup": format!("one measurement of {} s per row, which also sizes the \
                               requests of the next", settings.warmup.max(1)),
            "requests_per_measurement": format!("{HEADROOM} x the row's last rate x seconds \
                                                 (at most {MAX_REQUESTS}); signload stops at the \
                                                 deadline"),
            "order": format!("shuffled each round (BENCH_SEED={})", settings.seed),
            "round_orders": orders,
            "signing_cost": "envoy CPU: front Envoy CPU us per response minus the unsigned \
                             row's; wall: 1e6/rps minus 1e6/rps of the unsigned row",
        },
        "check": check,
        "rows": rows.iter().map(SignedSummary::to_json).collect::<Vec<_>>(),
    })
}

/// Tether's response signing timed in V8 (`bench/signprobe`, run by Node): where a signed
/// response's CPU goes. `None` (with a note) without the probe or Node.
pub fn vm_signing(root: &Path) -> Option<Value> {
    let probe = std::env::var_os("BENCH_SIGNPROBE").map(PathBuf::from)?;
    let output = Command::new("node")
        .arg("--no-warnings")
        .arg(root.join("bench/signprobe/run.mjs"))
        .arg(&probe)
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => serde_json::from_slice(&output.stdout).ok(),
        Ok(output) => {
            println!(
                "  (signing in V8 not timed: {})",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("  (signing in V8 not timed: cannot run node: {e})");
            None
        }
    }
}

/// Prints the V8 timings beside the signed-response rows' cost.
pub fn print_vm_signing(timings: &Value, rows: &[SignedSummary]) {
    let us = |name: &str| timings[name].as_f64().unwrap_or(f64::NAN);
    let extra = |row: SignedRow| {
        rows.iter()
            .find(|r| r.row == row)
            .and_then(|r| r.extra_cpu_us)
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nWhere a signed response's cost goes (bench/signprobe: Tether's signing code as \
         wasm32, timed in {}):",
        timings["engine"].as_str().unwrap_or("V8")
    );
    for (label, row, sign, whole) in [
        (
            "Ed25519",
            SignedRow::ResponseEd25519,
            "ed25519_sign_us",
            "sign_http_ed25519_us",
        ),
        (
            "ES256",
            SignedRow::ResponseEs256,
            "p256_sign_us",
            "sign_http_p256_us",
        ),
    ] {
        let cost = extra(row);
        if cost < us(whole) {
            println!(
                "  {label:<8} +{cost:>5.0} us/req Envoy CPU, but the probe alone took {:.0} us \
                 (the signature {:.0} us): the probe and the rows are separate measurements, \
                 and this one disagrees; run again on a quieter machine",
                us(whole),
                us(sign)
            );
            continue;
        }
        println!(
            "  {label:<8} +{cost:>5.0} us/req Envoy CPU: signing the response in the VM {:>5.0} us \
             (the signature alone {:>5.0} us, Content-Digest of 1 KiB {:.1} us); holding and \
             reading the response, setting its headers: the other {:>4.0} us",
            us(whole),
            us(sign),
            us("content_digest_1k_us"),
            cost - us(whole),
        );
    }
}
