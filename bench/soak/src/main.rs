//! `make soak`: a million requests through one Envoy (`--concurrency 2`) with Tether, over
//! HTTP/1.1 and HTTP/2, in a mix of every kind Tether must serve or refuse; each answer is
//! checked as it arrives, and the run as a whole at the end.
//!
//! The driver makes its own PKI (openssl), keys and tokens, runs the upstream itself (so it
//! can see what Tether let through), starts Envoy with `dist/tether.wasm`, sends the plan
//! (kinds.rs) from fast and slow lanes (load.rs), samples Envoy's VmRSS, and then checks
//! (checks.rs): every answer is its kind's (status and `error_description`), Tether's
//! counters moved by exactly the counts sent, the upstream saw each served request once and
//! no refused one, memory is flat after warm-up, no VM restarted or trapped, and no answer
//! came later than `body_timeout_ms` plus a margin. The summary is printed and written to
//! `bench/results/soak-<UTC time>.json` and `soak-latest.json`. Exits 1 when a check fails.
//!
//! Settings (environment): `SOAK_REQUESTS` (1000000), `SOAK_SEED` (the time; the plan's
//! order), `SOAK_RESULTS` (`bench/results`), `SOAK_LANES` (32 fast lanes), `SOAK_SLOW_LANES`
//! (64), `SOAK_H2_CONNECTIONS` (4), `TETHER_ENVOY` (`.venv/bin/envoy`), `TETHER_WASM`
//! (`dist/tether.wasm`). Run from the repository's root (scripts/soak.sh does).

mod checks;
mod envoy;
mod jose;
mod kinds;
mod load;
mod pki;
mod report;
mod requests;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use checks::Sample;
use envoy::Envoy;
use jose::{EsKey, AUDIENCE, CLIENT_ID, ISSUER};
use kinds::{BODY_TIMEOUT_MS, DEADLINE_MARGIN_MS, MAX_AGE_SECONDS};
use load::{Connector, Load};
use pki::Pki;
use report::{Check, RowSummary};
use requests::{Keys, SUB_HEADER};

/// How often Envoy's VmRSS is sampled during the load, and progress printed (every 5th).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

struct Settings {
    requests: u64,
    seed: u64,
    results: PathBuf,
    lanes: load::Lanes,
    envoy: PathBuf,
    wasm: PathBuf,
}

impl Settings {
    fn from_env(root: &Path) -> Result<Settings, String> {
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(text) if !text.trim().is_empty() => text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={text:?} is not a number")),
                _ => Ok(default),
            }
        };
        let path = |name: &str, default: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join(default))
        };
        let requests = number("SOAK_REQUESTS", 1_000_000)?;
        if requests < 1000 {
            return Err("SOAK_REQUESTS must be at least 1000".into());
        }
        Ok(Settings {
            requests,
            seed: number("SOAK_SEED", jose::now())?,
            results: path("SOAK_RESULTS", "bench/results"),
            lanes: load::Lanes {
                fast_lanes: number("SOAK_LANES", 32)?.max(1) as usize,
                slow_lanes: number("SOAK_SLOW_LANES", 64)?.max(1) as usize,
                h2_connections: number("SOAK_H2_CONNECTIONS", 4)?.max(1) as usize,
            },
            envoy: path("TETHER_ENVOY", ".venv/bin/envoy"),
            wasm: path("TETHER_WASM", "dist/tether.wasm"),
        })
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: FAILED (see the checks above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let started = Instant::now();
    let root = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let settings = Settings::from_env(&root)?;
    for (what, path) in [("Envoy", &settings.envoy), ("the filter", &settings.wasm)] {
        if !path.exists() {
            return Err(format!(
                "{what} not found at {} (run `make build`)",
                path.display()
            ));
        }
    }
    let work = root.join("build/soak/run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;

    println!(
        "Tether soak (make soak): {} requests, one Envoy with --concurrency {}, HTTP/1.1 and HTTP/2 over mTLS",
        settings.requests,
        envoy::WORKERS
    );
    let pki = Pki::generate(&work.join("pki"))?;
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let keys = Keys {
        issuer: EsKey::generate("issuer-es256"),
        client: EsKey::generate("app-es256"),
        hmac_kid: "app-hs256",
        hmac_secret: secret.to_vec(),
        alice: pki.alice.thumbprint.clone(),
        mallory: pki.mallory.thumbprint.clone(),
    };
    let tether = tether_config(&keys);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    runtime.block_on(soak(settings, work, pki, keys, tether, started))
}

/// Tether's configuration: inline keys (no fetch ever waits), certificate-bound tokens
/// everywhere, request signatures on `/signed`, the `sub` claim to `x-tether-sub`.
fn tether_config(keys: &Keys) -> Value {
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": {"keys": [keys.issuer.jwk()]}}],
        "clients": [{
            "client_id": CLIENT_ID,
            "jwks": {"keys": [keys.client.jwk()]},
            "hmac_keys": [{"kid": keys.hmac_kid, "k": jose::b64(&keys.hmac_secret)}],
        }],
        "signed_requests": {"max_age_seconds": MAX_AGE_SECONDS, "body_timeout_ms": BODY_TIMEOUT_MS},
        "rules": [
            {"prefix": "/signed", "require": "mtls", "signed_request": true},
            {"prefix": "/", "require": "mtls"},
        ],
        "claims_to_headers": [{"claim": "sub", "header": SUB_HEADER}],
    })
}

async fn soak(
    settings: Settings,
    work: PathBuf,
    pki: Pki,
    keys: Keys,
    tether: Value,
    started: Instant,
) -> Result<bool, String> {
    let rows = kinds::rows();
    let (upstream_port, seen) = upstream::start(rows.clone()).await?;
    let config = work.join("envoy.json");
    let bootstrap = envoy::bootstrap(&pki, &settings.wasm, &tether, upstream_port);
    let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())?;
    std::fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
    let envoy = tokio::task::block_in_place(|| Envoy::start(&settings.envoy, &config, &work))?;
    println!(
        "  Envoy pid {} on 127.0.0.1:{} (admin {}), upstream 127.0.0.1:{upstream_port}; work dir build/soak/run/",
        envoy.pid, envoy.port, envoy.admin
    );

    let plan = kinds::plan(&rows, settings.requests, settings.seed);
    let connector = Connector::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], envoy.port)),
        &pki.ca,
        &pki.alice.cert,
        &pki.alice.key,
    )?;
    let load = Arc::new(Load::new(
        rows.clone(),
        plan,
        keys,
        settings.seed,
        connector,
        settings.lanes.h2_connections,
    ));
    println!(
        "  {} fast lanes (one HTTP/1.1 connection each, {} shared HTTP/2 connections), {} slow lanes; seed {}",
        settings.lanes.fast_lanes,
        settings.lanes.h2_connections,
        settings.lanes.slow_lanes,
        settings.seed
    );
    println!(
        "  body_timeout_ms {BODY_TIMEOUT_MS}, deadline {} ms; warm-up: the first {:.0}% of the requests\n",
        BODY_TIMEOUT_MS + DEADLINE_MARGIN_MS,
        checks::WARM_UP_SHARE * 100.0
    );

    let before = envoy.stats()?;
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let load_started = Instant::now();
    let sampler = {
        let (load, samples, pid) = (Arc::clone(&load), Arc::clone(&samples), envoy.pid);
        let total = settings.requests;
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                let done = load.done.load(Ordering::Relaxed);
                let seconds = load_started.elapsed().as_secs_f64();
                let rss_kib = envoy::rss_kib(pid).unwrap_or(0);
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Sample {
                        seconds,
                        done,
                        rss_kib,
                    });
                if tick.is_multiple_of(5) && tick > 0 {
                    println!(
                        "  {:>6.0} s  {done:>8} / {total} requests  {:>6.0} req/s  Envoy VmRSS {:.1} MiB",
                        seconds,
                        done as f64 / seconds,
                        rss_kib as f64 / 1024.0
                    );
                }
                tick += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let tallies = load.run(&settings.lanes).await;
    let load_seconds = load_started.elapsed().as_secs_f64();
    sampler.abort();
    // Held requests are all answered; let Envoy finish its bookkeeping (on_log, counters).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = load.done.load(Ordering::Relaxed);
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Sample {
            seconds: load_started.elapsed().as_secs_f64(),
            done,
            rss_kib: envoy.rss_kib().unwrap_or(0),
        });
    let after = envoy.stats()?;
    let alive = envoy.is_running();
    let log = envoy.log_text();

    let summaries: Vec<RowSummary> = rows
        .iter()
        .zip(tallies)
        .enumerate()
        .map(|(i, (row, tally))| {
            RowSummary::new(*row, tally, seen.reached[i].load(Ordering::Relaxed))
        })
        .collect();
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (counters_check, counters) = checks::counters(&summaries, &before, &after);
    let (memory_check, memory) = checks::memory(&samples, settings.requests);
    let (vm_check, vm) = checks::vm(&before, &after, &log, alive);
    let all: Vec<Check> = vec![
        checks::answers(&summaries),
        counters_check,
        checks::upstream(&summaries, &seen),
        memory_check,
        vm_check,
        checks::deadlines(&summaries),
    ];
    let passed = all.iter().all(|c| c.passed);
    let sent: u64 = summaries.iter().map(|r| r.tally.sent).sum();
    let wall_seconds = started.elapsed().as_secs_f64();

    let table = report::table(&summaries);
    let checks_text = report::checks_text(&all);
    println!("\n{table}");
    println!(
        "{sent} requests in {load_seconds:.1} s ({:.0} req/s); connections opened: {} HTTP/1.1, {} HTTP/2; wall time {wall_seconds:.1} s\n",
        sent as f64 / load_seconds,
        load.connector.opened_h1.load(Ordering::Relaxed),
        load.connector.opened_h2.load(Ordering::Relaxed),
    );
    println!("Checks:\n{checks_text}");
    println!("soak: {}", if passed { "PASSED" } else { "FAILED" });

    let timestamp = report::utc_timestamp(jose::now());
    let mut shown_config = tether.clone();
    // The HMAC secret is random per run; it is no figure and stays out of the results.
    shown_config["clients"][0]["hmac_keys"][0]["k"] = json!("<32 random bytes>");
    let report = json!({
        "timestamp": timestamp,
        "passed": passed,
        "requests": sent,
        "load_seconds": load_seconds,
        "requests_per_second": sent as f64 / load_seconds,
        "wall_seconds": wall_seconds,
        "seed": settings.seed,
        "envoy": {"binary": settings.envoy, "concurrency": envoy::WORKERS},
        "tether_wasm": {
            "path": settings.wasm,
            "bytes": std::fs::metadata(&settings.wasm).map(|m| m.len()).unwrap_or(0),
        },
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "settings": {
            "fast_lanes": settings.lanes.fast_lanes,
            "slow_lanes": settings.lanes.slow_lanes,
            "h2_connections": settings.lanes.h2_connections,
            "body_timeout_ms": BODY_TIMEOUT_MS,
            "deadline_ms": BODY_TIMEOUT_MS + DEADLINE_MARGIN_MS,
            "warm_up_share": checks::WARM_UP_SHARE,
        },
        "connections_opened": {
            "h1": load.connector.opened_h1.load(Ordering::Relaxed),
            "h2": load.connector.opened_h2.load(Ordering::Relaxed),
        },
        "tether_config": shown_config,
        "rows": report::rows_json(&summaries),
        "checks": report::checks_json(&all),
        "counters": counters,
        "memory": memory,
        "vm": vm,
        "table": table,
        "checks_text": checks_text,
    });
    let path = report::write(&settings.results, &timestamp, &report)?;
    println!("results: {} and soak-latest.json beside it", path.display());
    drop(envoy);
    Ok(passed)
}
