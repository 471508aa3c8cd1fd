//! `make bench`: Tether's throughput and latency beside Envoy's native `jwt_authn`, measured
//! in one Envoy process with one worker under a real HTTPS load generator.
//!
//! One front Envoy (`--concurrency 1`) has one mutual-TLS listener per filter chain under
//! test, all forwarding to the same back end (a second Envoy answering with a fixed 200):
//!
//! - `no_auth`: no filter but the router, the floor of every other row's cost;
//! - `ceiling`: `dist/ceiling.wasm`, a wasm filter that only reads the `Authorization` header
//!   and the peer-certificate digest (bench/ceiling): the most any wasm filter can reach;
//! - `jwt_authn_cache` / `jwt_authn_nocache`: Envoy's `jwt_authn`, the same issuer and keys,
//!   with and without its JWT cache;
//! - `tether_cache` / `tether_nocache`: Tether, `require: mtls`, with `token_cache_entries`
//!   4096 and 0.
//!
//! Each row is one listener and one token algorithm. `oha` sends the same token with the
//! client certificate it is bound to, over keep-alive connections, at the same concurrency on
//! every row; rows are interleaved in a shuffled order each round, and each row's figures are
//! the median over the rounds with the spread beside them, so that drift shows.
//!
//! Before measuring, every row is checked to do what it says (the bench token passes, no
//! token is refused by the authenticating filters, a token bound to another certificate is
//! refused by Tether). After measuring, 100k distinct tokens go to the Tether listener with
//! the cache, and Envoy's memory is read before, during and after.
//!
//! Then the signed-request rows (`signed.rs`): a separate front Envoy with one worker and one
//! Tether listener, a 1 KiB POST unsigned (`/plain`) and with a fresh request signature on
//! every request (`/signed`: ES256, EdDSA, HS256), sent by `bench/signload` since every
//! request differs. Their table is printed after the first one, and their figures go into the
//! results under `signed_requests`.
//!
//! The DPoP rows (`dpop.rs`) run in the token rows' front Envoy, on the listener `tether_dpop`
//! (`require: dpop`), in the same rounds: a GET with `Authorization: DPoP` and a fresh DPoP
//! proof (ES256, EdDSA) on every request, sent by `bench/signload`, beside the cached `mtls` row
//! of the same token algorithm (and the same request sent by signload), with
//! `openssl speed ecdsap256` for scale. `BENCH_DPOP_BREAKDOWN=1` adds requests refused after
//! each step of the proof's checks, to show where the time goes.
//!
//! A benchmark, not a test: it prints figures and writes them to `bench/results/`, and fails
//! only when it cannot measure (a tool missing, Envoy refusing to start, a row not behaving).
//!
//! Settings (environment): `BENCH_SECONDS` (10) per measurement, `BENCH_ROUNDS` (3),
//! `BENCH_WARMUP` (3) seconds per row before the first round, `BENCH_CONCURRENCY` (32),
//! `BENCH_MEMORY_TOKENS` (100000, 0 skips the memory run), `BENCH_SEED` (the row order),
//! `BENCH_OHA` (the `oha` binary, default `build/tools/bin/oha`), `BENCH_CEILING_WASM`
//! (default `dist/ceiling.wasm`), `BENCH_RESULTS` (default `bench/results`),
//! `BENCH_SIGNLOAD` (default `bench/signload/target/release/signload`), `BENCH_ONLY`
//! (`signed`: only the signed-request rows; `dpop`: only the DPoP rows and the cached `mtls`
//! rows they compare with; for iterating on them; the results then go to
//! `build/bench-results/` unless `BENCH_RESULTS` says otherwise), `BENCH_DPOP_BREAKDOWN` (`1`:
//! add the DPoP breakdown rows).

#[path = "../../tests/support/mod.rs"]
mod support;

mod dpop;
mod envoy;
mod load;
mod machine;
mod report;
mod signed;
mod tokens;
mod variants;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use dpop::{DpopBench, DpopReport, OpensslSpeed};
use envoy::{front_bootstrap, probe_dpop, probe_token_cache, start_backend, EnvoyProcess};
use load::Bench;
use machine::{clock_ticks_per_second, machine_info, print_machine, Tools};
use report::{
    dpop_target, evaluate_targets, print_memory, print_table, print_targets, report_json,
    summarize, utc_timestamp, Row,
};
use signed::{ClientKeys, SignedBench};
use support::jwt::Alg;
use support::pki::Pki;
use support::{now, repo_root};
use tokens::{Keys, TOKEN_LIFETIME_SECONDS};
use variants::{Listener, Variant};

pub const ISSUER: &str = "https://idp.bench.internal";
pub const AUDIENCE: &str = "https://backend.bench.internal";
/// The entries of both caches when on: Tether's default, and the same for `jwt_authn`.
pub const CACHE_ENTRIES: u64 = 4096;

fn main() {
    let settings = Settings::from_env();
    let root = repo_root();
    let tools = Tools::find(&root);
    let work = root.join("build/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("create build/bench: {e}")));

    println!("Tether benchmark (make bench): one Envoy, one worker, mTLS listeners side by side\n");
    let machine = machine_info(&tools);
    print_machine(&machine, &settings);

    println!("\nSetting up (build/bench/):");
    let pki = Pki::generate(&work.join("pki"));
    let keys = Keys::generate(&work.join("keys"));
    println!("  PKI (CA, server, client certificates alice and mallory); ES256, RS256, EdDSA keys");

    let backend = start_backend(&work, &pki);
    let backend_port = backend.listener_ports()["backend"];
    println!("  back end: a second Envoy (direct_response 200) on 127.0.0.1:{backend_port}");

    let main_rows = match settings.only {
        Some(Only::Signed) => {
            println!("  BENCH_ONLY=signed: the token rows and the memory run are skipped");
            None
        }
        Some(Only::Dpop) => {
            println!(
                "  BENCH_ONLY=dpop: only the DPoP rows and the cached mtls rows they compare \
                 with; no memory run, no signed-request rows"
            );
            Some(token_rows(&settings, &tools, &work, &pki, &keys, &backend))
        }
        None => Some(token_rows(&settings, &tools, &work, &pki, &keys, &backend)),
    };
    let signed = (settings.only != Some(Only::Dpop))
        .then(|| signed_rows(&settings, &tools, &work, &pki, &keys, &backend));
    drop(backend);

    if let Some(main) = &main_rows {
        println!();
        print_table(&main.rows, &machine, &settings);
        print_targets(&main.targets, main.cache_supported);
        if let Some(dpop) = &main.dpop {
            dpop.print(settings.rounds);
        }
        if let Some(memory) = &main.memory {
            print_memory(memory);
        }
    }
    if let Some(signed) = &signed {
        signed::print_table(&signed.rows, &settings, signed.seconds);
        if let Some(timings) = &signed.vm_signing {
            signed::print_vm_signing(timings, &signed.rows);
        }
    }

    let timestamp = utc_timestamp(now());
    let empty = MainRows::default();
    let main = main_rows.as_ref().unwrap_or(&empty);
    let mut report = report_json(
        &timestamp,
        &machine,
        &settings,
        &tools,
        main.cache_supported,
        &main.orders,
        &main.rows,
        &main.targets,
        main.memory.as_ref(),
    );
    report["signed_requests"] = signed.as_ref().map_or(Value::Null, |signed| {
        signed::report_json(
            &signed.rows,
            &signed.check,
            &signed.orders,
            &settings,
            signed.seconds,
            &tools,
            &signed.signload,
        )
    });
    if let Some(signed) = &signed {
        report["signed_requests"]["vm_signing"] = signed.vm_signing.clone().unwrap_or(Value::Null);
    }
    report["dpop"] = main.dpop.as_ref().map_or(Value::Null, |dpop| {
        dpop.to_json(settings.rounds, settings.concurrency)
    });
    match settings.only {
        Some(Only::Signed) => report["only"] = serde_json::json!("signed"),
        Some(Only::Dpop) => report["only"] = serde_json::json!("dpop"),
        None => {}
    }
    let results = &settings.results;
    std::fs::create_dir_all(results)
        .unwrap_or_else(|e| fail(&format!("create {}: {e}", results.display())));
    // A run in another mode has its own latest file (scripts/bench.sh draws its chart).
    let mode = settings.mode_suffix();
    let dated = results.join(format!("{}{mode}.json", timestamp.file));
    let latest = results.join(format!("latest{mode}.json"));
    write_json(&dated, &report);
    write_json(&latest, &report);
    println!("\nWritten: {} and {}", relative(&dated), relative(&latest));
}

/// The token rows: their front Envoy, checks, warm-up, rounds and memory run.
#[derive(Default)]
struct MainRows {
    cache_supported: bool,
    orders: Vec<Vec<String>>,
    rows: Vec<Row>,
    targets: Vec<report::Target>,
    memory: Option<load::Memory>,
    dpop: Option<DpopReport>,
}

fn token_rows(
    settings: &Settings,
    tools: &Tools,
    work: &Path,
    pki: &Pki,
    keys: &Keys,
    backend: &EnvoyProcess,
) -> MainRows {
    let cache_supported = probe_token_cache(work, pki, keys, tools);
    if cache_supported {
        println!("  dist/tether.wasm accepts \"token_cache_entries\": cache on = {CACHE_ENTRIES}, off = 0");
    } else {
        println!(
            "  dist/tether.wasm refuses \"token_cache_entries\" (this build has no token cache):\n  \
             Tether's \"cache\" rows run without the field, its \"no cache\" rows are unavailable"
        );
    }
    let backend_port = backend.listener_ports()["backend"];
    // The DPoP rows compare with the cached mtls rows: they need the token cache too.
    let dpop_supported = cache_supported && probe_dpop(work, pki, keys, tools);
    if !dpop_supported {
        println!("  dist/tether.wasm has no DPoP (or no token cache): the DPoP rows are skipped");
    }
    let only_dpop = settings.only == Some(Only::Dpop);
    if only_dpop && !dpop_supported {
        fail("BENCH_ONLY=dpop, but this dist/tether.wasm cannot run the DPoP rows");
    }

    let listeners = Listener::ALL
        .iter()
        .copied()
        .filter(|l| cache_supported || *l != Listener::TetherNoCache)
        .filter(|l| dpop_supported || *l != Listener::TetherDpop)
        .filter(|l| !only_dpop || matches!(l, Listener::TetherCache | Listener::TetherDpop))
        .collect::<Vec<_>>();
    let bootstrap = front_bootstrap(
        &listeners,
        backend_port,
        pki,
        keys,
        tools,
        cache_supported,
        settings.direct,
    );
    let config = work.join("front.json");
    write_json(&config, &bootstrap);
    let front = EnvoyProcess::start("front", &config, work, settings.workers, listeners.len())
        .unwrap_or_else(|log| fail(&format!("the front Envoy did not start:\n{log}")));
    let ports = front.listener_ports();
    let idle = front.memory();
    println!(
        "  front Envoy (--concurrency {}, pid {}{}), listeners: {}",
        settings.workers,
        front.pid,
        if settings.direct {
            ", every route a direct_response: BENCH_UPSTREAM=direct"
        } else {
            ""
        },
        listeners
            .iter()
            .map(|l| format!("{} :{}", l.name(), ports[l.name()]))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let variants: Vec<Variant> = Variant::all(dpop_supported, settings.dpop_breakdown)
        .into_iter()
        .filter(|v| listeners.contains(&v.listener))
        .filter(|v| {
            !only_dpop
                || v.by_signload()
                || (v.listener == Listener::TetherCache && matches!(v.alg, Alg::Es256 | Alg::EdDsa))
        })
        .collect();
    let dpop_bench = dpop_supported.then(|| {
        let signload = SignedBench::signload_binary(&repo_root());
        println!(
            "  DPoP rows: listener tether_dpop (require: dpop), proofs ES256 and EdDSA, load by {}{}",
            relative(&signload),
            if settings.dpop_breakdown {
                ", with the breakdown rows (BENCH_DPOP_BREAKDOWN=1)"
            } else {
                ""
            }
        );
        DpopBench::new(signload, work.join("dpop"))
    });
    let bench = Bench {
        settings,
        tools,
        pki,
        keys,
        ports: &ports,
        front: &front,
        front_pid: front.pid,
        backend_pid: backend.pid,
        clock_ticks: clock_ticks_per_second(),
        dpop: dpop_bench.as_ref(),
    };

    println!("\nChecking that every row does what it says (HTTP status seen by curl):");
    bench.check(&variants);
    let dpop_check = dpop_bench
        .as_ref()
        .map(|d| d.check(&bench, &variants))
        .unwrap_or_default();

    bench.warm_up(&variants);
    let (measurements, orders) = bench.rounds(&variants);

    // OpenSSL's ES256 verify on this machine, for scale beside the DPoP rows: one core, while
    // both Envoys are idle.
    let (ecdsa, ed25519) = if dpop_bench.is_some() {
        println!("\nopenssl speed -seconds 1 ecdsap256 / ed25519 (one core, Envoys idle):");
        let ecdsa = OpensslSpeed::measure("ecdsap256", "nistp256");
        let ed25519 = OpensslSpeed::measure("ed25519", "Ed25519");
        for speed in [&ecdsa, &ed25519].into_iter().flatten() {
            println!("  {}", speed.describe());
        }
        if ecdsa.is_none() {
            println!("  (openssl speed ecdsap256 could not be run or read)");
        }
        (ecdsa, ed25519)
    } else {
        (None, None)
    };

    let memory = if settings.memory_tokens > 0 && !only_dpop {
        Some(bench.memory_run(&front, cache_supported, idle))
    } else {
        None
    };
    drop(front);

    let rows = summarize(&variants, &measurements, cache_supported);
    let mut targets = evaluate_targets(&rows);
    let dpop = dpop_bench.map(|_| {
        let seconds = variants
            .iter()
            .find(|v| v.by_signload())
            .map_or(settings.seconds, |v| {
                DpopBench::max_seconds(v, settings.seconds)
            });
        dpop::summarize(&rows, dpop_check, ecdsa, ed25519, seconds)
    });
    if let Some(target) = dpop.as_ref().and_then(dpop_target) {
        targets.push(target);
    }
    MainRows {
        cache_supported,
        orders,
        rows,
        targets,
        memory,
        dpop,
    }
}

/// The signed-request rows (`signed.rs`), on their own front Envoy.
fn signed_rows(
    settings: &Settings,
    tools: &Tools,
    work: &Path,
    pki: &Pki,
    keys: &Keys,
    backend: &EnvoyProcess,
) -> SignedRows {
    let dir = work.join("signed");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("create {e}")));
    let signload = SignedBench::signload_binary(&repo_root());
    let client = ClientKeys::generate();
    let backend_port = backend.listener_ports()["backend"];
    let config = dir.join("front-signed.json");
    write_json(
        &config,
        &signed::bootstrap(backend_port, pki, keys, &client, tools),
    );
    // Tether's response signing keys reach its VMs through the front Envoy's environment
    // (`host_env_keys`), as in a deployment.
    let response_keys = signed::ResponseKeys::generate();
    std::env::set_var(signed::RESPONSE_KEY_ED25519_ENV, &response_keys.ed25519);
    std::env::set_var(signed::RESPONSE_KEY_P256_ENV, &response_keys.p256);
    let front = EnvoyProcess::start("front-signed", &config, &dir, settings.workers, 2)
        .unwrap_or_else(|log| {
            fail(&format!(
                "the signed-request front Envoy did not start:\n{log}"
            ))
        });
    let ports = front.listener_ports();
    println!(
        "\nSigned requests: a second front Envoy (--concurrency {}, pid {}), listeners {:?}, \
         Tether with /signed (JWS), /httpsig (RFC 9421), /plain, /resp-signed (signed \
         responses) and /resp-plain; client {} with ES256, EdDSA and HS256 keys; load by {}",
        settings.workers,
        front.pid,
        ports,
        signed::CLIENT_ID,
        relative(&signload)
    );
    let bench = SignedBench {
        settings,
        pki,
        keys,
        client: &client,
        front: &front,
        backend_pid: backend.pid,
        ports,
        clock_ticks: clock_ticks_per_second(),
        signload: signload.clone(),
        dir,
    };
    println!("\nChecking the signed-request listener (HTTP status seen by signload):");
    let check = bench.check();
    let (measurements, orders, seconds) = bench.rounds();
    drop(front);
    SignedRows {
        vm_signing: signed::vm_signing(&repo_root()),
        rows: signed::summarize(&measurements),
        check,
        orders,
        seconds,
        signload,
    }
}

struct SignedRows {
    rows: Vec<signed::SignedSummary>,
    /// Tether's response signing timed in V8 (bench/signprobe).
    vm_signing: Option<Value>,
    check: Vec<Value>,
    orders: Vec<Vec<String>>,
    seconds: u64,
    signload: PathBuf,
}

pub struct Settings {
    pub seconds: u64,
    pub rounds: u64,
    pub warmup: u64,
    pub concurrency: u64,
    pub memory_tokens: usize,
    pub seed: u64,
    pub results: PathBuf,
    /// `BENCH_ONLY`: only the signed-request rows, or only the DPoP rows.
    pub only: Option<Only>,
    /// `BENCH_DPOP_BREAKDOWN=1`: the DPoP breakdown rows too.
    pub dpop_breakdown: bool,
    /// `BENCH_UPSTREAM=direct`: the token rows' routes answer in the front Envoy
    /// (`direct_response`) instead of going to the back end.
    pub direct: bool,
    /// `BENCH_WORKERS`: the front Envoys' `--concurrency` (1, or 2 to see the VMs of two
    /// workers share the key sets and the replay record).
    pub workers: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Only {
    Signed,
    Dpop,
}

impl Settings {
    /// What the results' file names carry for a run in another mode: `-direct`, `-workers2`.
    pub fn mode_suffix(&self) -> String {
        let mut suffix = String::new();
        if self.direct {
            suffix.push_str("-direct");
        }
        if self.workers != 1 {
            suffix.push_str(&format!("-workers{}", self.workers));
        }
        suffix
    }

    pub fn from_env() -> Settings {
        let number = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("{name}={text:?} is not a number"))),
                Err(_) => default,
            }
        };
        let mut seconds = number("BENCH_SECONDS", 10).max(1);
        // A measurement's token must outlive it (tokens live TOKEN_LIFETIME_SECONDS).
        if seconds > TOKEN_LIFETIME_SECONDS - 60 {
            eprintln!("BENCH_SECONDS capped at {}", TOKEN_LIFETIME_SECONDS - 60);
            seconds = TOKEN_LIFETIME_SECONDS - 60;
        }
        let only = match std::env::var("BENCH_ONLY") {
            Ok(only) if only.trim() == "signed" => Some(Only::Signed),
            Ok(only) if only.trim() == "dpop" => Some(Only::Dpop),
            Ok(only) if only.trim().is_empty() => None,
            Ok(only) => fail(&format!(
                "BENCH_ONLY={only:?}: the choices are \"signed\" and \"dpop\""
            )),
            Err(_) => None,
        };
        let dpop_breakdown = match std::env::var("BENCH_DPOP_BREAKDOWN") {
            Ok(value) => matches!(value.trim(), "1" | "true" | "yes"),
            Err(_) => false,
        };
        let direct = match std::env::var("BENCH_UPSTREAM") {
            Ok(value) if value.trim() == "direct" => true,
            Ok(value) if matches!(value.trim(), "" | "backend") => false,
            Ok(value) => fail(&format!(
                "BENCH_UPSTREAM={value:?}: the choices are \"backend\" and \"direct\""
            )),
            Err(_) => false,
        };
        let workers = u32::try_from(number("BENCH_WORKERS", 1).clamp(1, 8)).unwrap_or(1);
        // A partial run does not replace the results of a whole one.
        let results = std::env::var_os("BENCH_RESULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo_root().join(if only.is_some() {
                    "build/bench-results"
                } else {
                    "bench/results"
                })
            });
        Settings {
            seconds,
            rounds: number("BENCH_ROUNDS", 3).max(1),
            warmup: number("BENCH_WARMUP", 3),
            concurrency: number("BENCH_CONCURRENCY", 32).max(1),
            memory_tokens: usize::try_from(number("BENCH_MEMORY_TOKENS", 100_000))
                .unwrap_or(usize::MAX),
            seed: number("BENCH_SEED", now().unsigned_abs()),
            results,
            only,
            dpop_breakdown,
            direct,
            workers,
        }
    }
}

pub fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes");
    std::fs::write(path, text + "\n")
        .unwrap_or_else(|e| fail(&format!("write {}: {e}", path.display())));
}

/// Runs `program` with `args`; its stdout if it succeeded.
pub fn command_output(program: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

pub fn fail(message: &str) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(1);
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}
