//! The machine and the tools: what the report says the figures were measured on, and the
//! CPU time of a process.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::envoy::{envoy_binary, wasm_module};
use crate::{command_output, fail, Settings};

pub struct Tools {
    pub envoy_version: String,
    pub oha: PathBuf,
    pub oha_version: String,
    pub tether_wasm: PathBuf,
    pub ceiling_wasm: PathBuf,
}

impl Tools {
    pub fn find(root: &Path) -> Tools {
        let envoy = envoy_binary();
        let tether_wasm = wasm_module();
        let ceiling_wasm = std::env::var_os("BENCH_CEILING_WASM")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("dist/ceiling.wasm"));
        if !ceiling_wasm.exists() {
            fail(&format!(
                "{} is missing: run `make bench` (or scripts/build-ceiling.sh)",
                ceiling_wasm.display()
            ));
        }
        let oha = std::env::var_os("BENCH_OHA")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("build/tools/bin/oha"));
        let oha_version = command_output(&oha, &["--version"])
            .unwrap_or_else(|e| fail(&format!("oha not usable at {}: {e}", oha.display())));
        let envoy_version = command_output(&envoy, &["--version"])
            .map(|v| {
                // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
                v.split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .split('/')
                    .nth(1)
                    .map_or_else(|| v.clone(), |release| format!("envoy {release}"))
            })
            .unwrap_or_else(|e| fail(&format!("envoy not usable: {e}")));
        Tools {
            envoy_version,
            oha,
            oha_version: oha_version.trim().to_string(),
            tether_wasm,
            ceiling_wasm,
        }
    }
}

pub fn machine_info(tools: &Tools) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim())
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |k| format!("Linux {}", k.trim()));
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let git = command_output(Path::new("git"), &["rev-parse", "--short", "HEAD"])
        .map(|sha| {
            let dirty = command_output(Path::new("git"), &["status", "--porcelain"])
                .is_ok_and(|s| !s.trim().is_empty());
            format!("{}{}", sha.trim(), if dirty { "-dirty" } else { "" })
        })
        .unwrap_or_else(|_| "unknown".into());
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    json!({
        "nproc": nproc,
        "cpu": cpu,
        "memory_gib": memory_gib,
        "kernel": kernel,
        "load_average_at_start": load,
        "envoy": tools.envoy_version,
        "oha": tools.oha_version,
        "git": git,
        "wasm_bytes": {
            "tether.wasm": size(&tools.tether_wasm),
            "ceiling.wasm": size(&tools.ceiling_wasm),
        },
    })
}

pub fn print_machine(machine: &Value, settings: &Settings) {
    println!(
        "Machine: {} x {} ({} GiB), {}, load {}",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or_default(),
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or_default(),
        machine["load_average_at_start"]
            .as_str()
            .unwrap_or_default()
    );
    println!(
        "Tools:   {}, {}, commit {}",
        machine["envoy"].as_str().unwrap_or_default(),
        machine["oha"].as_str().unwrap_or_default(),
        machine["git"].as_str().unwrap_or_default()
    );
    println!(
        "Modules: dist/tether.wasm {} bytes, dist/ceiling.wasm {} bytes",
        machine["wasm_bytes"]["tether.wasm"], machine["wasm_bytes"]["ceiling.wasm"]
    );
    println!(
        "Method:  {} round(s) x {} s per row, {} s warm-up per row, {} keep-alive connections, \
         {} front worker(s), upstream: {}",
        settings.rounds,
        settings.seconds,
        settings.warmup,
        settings.concurrency,
        settings.workers,
        if settings.direct {
            "direct_response in the front Envoy"
        } else {
            "the back end"
        }
    );
}

/// User and system CPU time of process `pid` (all its threads), in clock ticks; 0 if gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name start at field 3; utime and stime
            // are fields 14 and 15 (proc(5)).
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Busy and total time of all CPUs together since boot, in clock ticks (`/proc/stat`).
pub fn system_cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let idle = at(3) + at(4);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    (busy, busy + idle)
}

pub fn clock_ticks_per_second() -> f64 {
    command_output(Path::new("getconf"), &["CLK_TCK"])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}
