//! Driving the listeners: the behaviour checks, the `oha` runs and the memory run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::dpop::DpopBench;
use crate::envoy::EnvoyProcess;
use crate::machine::{cpu_ticks, system_cpu_ticks, Tools};
use crate::support::client::HttpsRequest;
use crate::support::jwt::Alg;
use crate::support::pki::Pki;
use crate::support::repo_root;
use crate::tokens::{unique_jti, Keys};
use crate::variants::{Listener, Variant};
use crate::{fail, Settings, CACHE_ENTRIES};

/// Requests per `curl` process in the memory run; Envoy's memory is read after each batch.
const MEMORY_BATCH: usize = 10_000;
const MEMORY_PARALLEL: &str = "16";

pub struct Bench<'a> {
    pub settings: &'a Settings,
    pub tools: &'a Tools,
    pub pki: &'a Pki,
    pub keys: &'a Keys,
    pub ports: &'a BTreeMap<String, u16>,
    pub front: &'a EnvoyProcess,
    pub front_pid: u32,
    pub backend_pid: u32,
    pub clock_ticks: f64,
    /// The rows sent by `bench/signload` (DPoP, their baselines, the breakdown stages).
    pub dpop: Option<&'a DpopBench>,
}

impl Bench<'_> {
    /// One pass over every row before the first round: V8 tiers up the modules, connection
    /// pools and allocators settle.
    pub fn warm_up(&self, variants: &[Variant]) {
        println!(
            "\nWarm-up: {} s per row, {} connections",
            self.settings.warmup, self.settings.concurrency
        );
        for variant in variants {
            if self.settings.warmup > 0 {
                let load = self.load(variant, self.settings.warmup);
                // The signload rows' warm-up also sizes their next measurement: show it.
                if variant.by_signload() {
                    print_load(variant, &load);
                }
            }
        }
    }

    /// `rounds` passes over every row, each in a new shuffled order: the measurements by row
    /// id, and each round's order.
    pub fn rounds(&self, variants: &[Variant]) -> (BTreeMap<String, Vec<Load>>, Vec<Vec<String>>) {
        let mut measurements: BTreeMap<String, Vec<Load>> = BTreeMap::new();
        let mut orders = Vec::new();
        let mut rng = XorShift::new(self.settings.seed);
        for round in 1..=self.settings.rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            rng.shuffle(&mut order);
            orders.push(order.iter().map(|&i| variants[i].id()).collect::<Vec<_>>());
            println!(
                "\nRound {round}/{} ({} s per row, {} connections):",
                self.settings.rounds, self.settings.seconds, self.settings.concurrency
            );
            for &i in &order {
                let variant = &variants[i];
                let load = self.load(variant, self.settings.seconds);
                print_load(variant, &load);
                measurements.entry(variant.id()).or_default().push(load);
            }
        }
        (measurements, orders)
    }

    pub fn port(&self, listener: Listener) -> u16 {
        self.ports[listener.name()]
    }

    /// Each row answers as it should before it is measured; exits otherwise.
    pub fn check(&self, variants: &[Variant]) {
        println!(
            "  {:<28} {:>11} {:>10} {:>22}",
            "row", "bench token", "no token", "token of another cert"
        );
        let mut wrong = 0;
        // The signload rows are checked by `DpopBench::check`, through signload.
        for variant in variants.iter().filter(|v| !v.by_signload()) {
            let listener = variant.listener;
            let alice = &self.pki.alice;
            let request =
                || HttpsRequest::new(self.port(listener), &self.pki.ca, "/check").cert(alice);
            let status = |request: HttpsRequest| {
                request
                    .try_send()
                    .map_or_else(|e| format!("error: {}", e.trim()), |r| r.status.to_string())
            };
            let good = self.token(variant, "alice", &unique_jti("check"));
            let stolen = self.token(variant, "mallory", &unique_jti("check"));
            let with_token = status(request().bearer(&good));
            let without = status(request());
            let other_cert = status(request().bearer(&stolen));
            let expect_without = if listener.authenticates() {
                "401"
            } else {
                "200"
            };
            let expect_other = if listener.is_tether() { "401" } else { "200" };
            let mark = |seen: &str, expected: &str| {
                if seen == expected {
                    format!("{seen} ok")
                } else {
                    format!("{seen} (expected {expected})")
                }
            };
            let note = if listener.filter() == "jwt_authn" {
                "   (jwt_authn does not check the binding)"
            } else {
                ""
            };
            println!(
                "  {:<28} {:>11} {:>10} {:>22}{note}",
                variant.label(),
                mark(&with_token, "200"),
                mark(&without, expect_without),
                mark(&other_cert, expect_other),
            );
            wrong += usize::from(with_token != "200")
                + usize::from(without != expect_without)
                + usize::from(other_cert != expect_other);
        }
        if wrong > 0 {
            fail(&format!(
                "{wrong} check(s) failed: a row does not do what it says, so it is not measured \
                 (Envoy logs in build/bench/)"
            ));
        }
    }

    /// A token of `variant`'s kind bound to the certificate of `client` (`alice` or
    /// `mallory`): a JWT of the row's algorithm, or an opaque token of that client's issuer.
    fn token(&self, variant: &Variant, client: &str, jti: &str) -> String {
        if variant.listener == Listener::TetherOpaque {
            return format!("{client}_{jti}");
        }
        let cert = if client == "alice" {
            &self.pki.alice
        } else {
            &self.pki.mallory
        };
        self.keys.token(variant.alg, cert, jti)
    }

    /// One measurement of `seconds` of `variant`: by `oha`, or by signload for its rows.
    pub fn load(&self, variant: &Variant, seconds: u64) -> Load {
        if variant.by_signload() {
            match self.dpop {
                Some(dpop) => dpop.load(self, variant, seconds),
                None => fail(&format!("{} needs bench/signload", variant.label())),
            }
        } else {
            self.oha_load(variant, seconds)
        }
    }

    /// One `oha` run of `seconds` against `variant`, with a fresh token.
    pub fn oha_load(&self, variant: &Variant, seconds: u64) -> Load {
        let token = self.token(variant, "alice", &unique_jti("load"));
        let url = format!("https://localhost:{}/bench", self.port(variant.listener));
        let front_before = cpu_ticks(self.front_pid);
        let backend_before = cpu_ticks(self.backend_pid);
        let system_before = system_cpu_ticks();
        let started = Instant::now();
        let output = Command::new(&self.tools.oha)
            .args(["--no-tui", "--output-format", "json"])
            .args(["-z", &format!("{seconds}s")])
            .args(["-c", &self.settings.concurrency.to_string()])
            .arg("--cert")
            .arg(&self.pki.alice.cert)
            .arg("--key")
            .arg(&self.pki.alice.key)
            .arg("--cacert")
            .arg(&self.pki.ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run oha: {e}")));
        if !output.status.success() {
            fail(&format!(
                "oha failed on {}: {}",
                variant.label(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu_seconds =
            |pid: u32, before: u64| cpu_ticks(pid).saturating_sub(before) as f64 / self.clock_ticks;
        let system_after = system_cpu_ticks();
        let front_cpu = cpu_seconds(self.front_pid, front_before);
        let backend_cpu = cpu_seconds(self.backend_pid, backend_before);
        let mut load = Load::from_oha(&output.stdout).unwrap_or_else(|e| {
            fail(&format!(
                "cannot read oha's output ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            ))
        });
        load.envoy_cpu = front_cpu / wall;
        load.backend_cpu = backend_cpu / wall;
        load.machine_cpu = (system_after.0.saturating_sub(system_before.0)) as f64
            / (system_after.1.saturating_sub(system_before.1)).max(1) as f64;
        let responses = load.statuses.values().sum::<u64>().max(1);
        load.envoy_us_per_request = front_cpu * 1e6 / responses as f64;
        load.seconds = seconds as f64;
        load
    }

    /// Sends `memory_tokens` distinct valid tokens to the Tether listener with the cache and
    /// reads Envoy's memory before, after each batch, and after.
    /// `idle`: the front Envoy's memory when it had started, before any request.
    pub fn memory_run(
        &self,
        front: &EnvoyProcess,
        cache_supported: bool,
        idle: MemorySample,
    ) -> Memory {
        let total = self.settings.memory_tokens;
        let port = self.port(Listener::TetherCache);
        println!(
            "\nMemory: {total} distinct ES256 tokens to {} (curl, {MEMORY_PARALLEL} in parallel, \
             keep-alive)",
            Listener::TetherCache.name()
        );
        let before = front.memory();
        println!("  before: {}", before.describe());
        let dir = repo_root().join("build/bench/memory");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("create {e}")));
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        let mut sent = 0;
        while sent < total {
            let batch = MEMORY_BATCH.min(total - sent);
            // Minted per batch, so that no token nears its expiry, however long the run.
            let tokens = self.mint_batch(sent, batch);
            let config = dir.join("batch.curl");
            std::fs::write(&config, self.curl_config(port, &tokens))
                .unwrap_or_else(|e| fail(&format!("write curl config: {e}")));
            let output = Command::new("curl")
                .args(["--parallel", "--parallel-max", MEMORY_PARALLEL, "-s", "-K"])
                .arg(&config)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| fail(&format!("cannot run curl: {e}")));
            for status in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                *statuses.entry(status.to_string()).or_default() += 1;
            }
            sent += batch;
            let mut sample = front.memory();
            sample.tokens = sent;
            println!(
                "  after {sent:>7}: {}  ({:.0} tokens/s)",
                sample.describe(),
                sent as f64 / started.elapsed().as_secs_f64()
            );
            samples.push(sample);
        }
        let _ = std::fs::remove_file(dir.join("batch.curl"));
        Memory {
            tokens: total,
            listener: Listener::TetherCache.name(),
            cache_entries: cache_supported.then_some(CACHE_ENTRIES),
            seconds: started.elapsed().as_secs_f64(),
            idle,
            before,
            samples,
            statuses,
        }
    }

    pub fn mint_batch(&self, first: usize, count: usize) -> Vec<String> {
        let alice = &self.pki.alice;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = count.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let start = first + t * per_thread;
                    let end = (first + (t + 1) * per_thread).min(first + count);
                    scope.spawn(move || {
                        (start..end)
                            .map(|i| self.keys.token(Alg::Es256, alice, &format!("memory-{i}")))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("minting thread"))
                .collect()
        })
    }

    /// A curl config: one transfer per token, `next` between them (each transfer needs its
    /// own TLS options); the status of each goes to stdout.
    pub fn curl_config(&self, port: u16, tokens: &[String]) -> String {
        let quoted = |p: &Path| format!("\"{}\"", p.display());
        let per_transfer = format!(
            "url = \"https://localhost:{port}/memory\"\ncert = {}\nkey = {}\ncacert = {}\n\
             output = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\nmax-time = 30\n",
            quoted(&self.pki.alice.cert),
            quoted(&self.pki.alice.key),
            quoted(&self.pki.ca),
        );
        let mut config = String::with_capacity(tokens.len() * (per_transfer.len() + 600));
        for (i, token) in tokens.iter().enumerate() {
            if i > 0 {
                config.push_str("next\n");
            }
            config.push_str(&per_transfer);
            config.push_str(&format!("header = \"Authorization: Bearer {token}\"\n"));
        }
        config
    }
}

/// What one `oha` run measured.
#[derive(Debug, Clone)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses by status code.
    pub statuses: BTreeMap<String, u64>,
    /// Failures without a response, by error (the requests cut at the deadline are left out).
    pub errors: BTreeMap<String, u64>,
    /// CPU time of the front Envoy (all threads) per second of the run: 1.0 is one core.
    pub envoy_cpu: f64,
    /// CPU time of the front Envoy per response: the cost of a request through the chain.
    pub envoy_us_per_request: f64,
    /// CPU time of the back end per second of the run: it must stay well below one core.
    pub backend_cpu: f64,
    /// The share of all the machine's CPUs busy during the run (everything: Envoys, `oha`,
    /// and anything else running), 1.0 when all are.
    pub machine_cpu: f64,
    /// The status every response must have (`200`, or `401` for a DPoP breakdown stage).
    pub expected_status: &'static str,
    /// Tether's refusal reason every response must have, when `expected_status` is a refusal.
    pub expected_reason: Option<&'static str>,
    /// Tether's refusal counters over the run, by reason (signload rows only).
    pub refused: BTreeMap<String, u64>,
    /// The driver's time to make one request's DPoP proof beforehand (one core), in µs.
    pub client_us: Option<f64>,
    /// The measurement's length in seconds (a signload row's may be capped).
    pub seconds: f64,
}

impl Load {
    pub fn from_oha(stdout: &[u8]) -> Result<Load, String> {
        let report: Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
        let number = |v: &Value| v.as_f64().ok_or("missing figure");
        let mut errors = crate::report::counts(&report["errorDistribution"]);
        errors.retain(|error, _| !error.contains("deadline"));
        Ok(Load {
            rps: number(&report["summary"]["requestsPerSec"])?,
            p50_ms: number(&report["latencyPercentiles"]["p50"])? * 1000.0,
            p99_ms: number(&report["latencyPercentiles"]["p99"])? * 1000.0,
            statuses: crate::report::counts(&report["statusCodeDistribution"]),
            errors,
            envoy_cpu: 0.0,
            envoy_us_per_request: 0.0,
            backend_cpu: 0.0,
            machine_cpu: 0.0,
            expected_status: "200",
            expected_reason: None,
            refused: BTreeMap::new(),
            client_us: None,
            seconds: 0.0,
        })
    }

    pub fn non_200(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| status.as_str() != "200")
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.errors.values().sum::<u64>()
    }

    /// Responses other than the row's expected ones (status, and refusal reason for a
    /// breakdown stage), and requests without a response.
    pub fn unexpected(&self) -> u64 {
        let wrong_status = self
            .statuses
            .iter()
            .filter(|(status, _)| status.as_str() != self.expected_status)
            .map(|(_, n)| n)
            .sum::<u64>();
        let wrong_reason = match self.expected_reason {
            Some(reason) => self
                .refused
                .iter()
                .filter(|(r, _)| r.as_str() != reason)
                .map(|(_, n)| n)
                .sum::<u64>(),
            None => 0,
        };
        wrong_status + wrong_reason + self.errors.values().sum::<u64>()
    }

    pub fn problems(&self) -> String {
        if self.unexpected() == 0 {
            return String::new();
        }
        format!(
            "   !! not all {}{}: {:?} {:?}{}",
            self.expected_status,
            self.expected_reason
                .map_or_else(String::new, |r| format!(" {r}")),
            self.statuses,
            self.errors,
            if self.refused.is_empty() {
                String::new()
            } else {
                format!(" refused {:?}", self.refused)
            }
        )
    }
}

/// One measurement's line in the terminal.
pub fn print_load(variant: &Variant, load: &Load) {
    println!(
        "  {:<36} {:>6.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms  Envoy {:>3.0}% CPU \
         {:>3.0} us/req  back end {:>3.0}%  all CPUs {:>3.0}%{}",
        variant.label(),
        load.rps,
        load.p50_ms,
        load.p99_ms,
        load.envoy_cpu * 100.0,
        load.envoy_us_per_request,
        load.backend_cpu * 100.0,
        load.machine_cpu * 100.0,
        load.problems()
    );
}

#[derive(Debug, Clone)]
pub struct MemorySample {
    pub tokens: usize,
    pub rss_kib: u64,
    pub allocated: u64,
    pub heap_size: u64,
}

impl MemorySample {
    pub fn describe(&self) -> String {
        format!(
            "RSS {:>7.1} MiB, allocated {:>7.1} MiB, heap {:>7.1} MiB",
            self.rss_kib as f64 / 1024.0,
            mib(self.allocated),
            mib(self.heap_size)
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "rss_kib": self.rss_kib,
            "allocated_bytes": self.allocated,
            "heap_size_bytes": self.heap_size,
        })
    }
}

pub struct Memory {
    pub tokens: usize,
    pub listener: &'static str,
    pub cache_entries: Option<u64>,
    pub seconds: f64,
    /// When the front Envoy had started (its workers' VMs configured), before any request.
    pub idle: MemorySample,
    /// After the rounds, before the memory run's first token.
    pub before: MemorySample,
    pub samples: Vec<MemorySample>,
    pub statuses: BTreeMap<String, u64>,
}

impl Memory {
    pub fn after(&self) -> &MemorySample {
        self.samples.last().unwrap_or(&self.before)
    }

    /// The sample nearest half way, to tell growth that stops from growth that goes on.
    pub fn halfway(&self) -> &MemorySample {
        self.samples
            .iter()
            .find(|s| s.tokens * 2 >= self.tokens)
            .unwrap_or(&self.before)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "listener": self.listener,
            "algorithm": "ES256",
            "token_cache_entries": self.cache_entries,
            "seconds": self.seconds,
            "statuses": self.statuses,
            "idle": self.idle.to_json(),
            "before": self.before.to_json(),
            "after": self.after().to_json(),
            "samples": self.samples.iter().map(MemorySample::to_json).collect::<Vec<_>>(),
        })
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// xorshift64*: a seeded shuffle, so that a row order can be replayed with `BENCH_SEED`.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next_u64() % (i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}
