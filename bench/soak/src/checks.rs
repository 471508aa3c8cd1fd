//! What a soak run must show, each as a [`Check`]: every answer as expected, Tether's
//! counters agreeing with what was sent, the upstream seeing exactly the served requests,
//! Envoy's memory flat after warm-up, no VM restart or trap, and no answer later than the
//! deadline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::kinds::{deadline, Kind, BODY_TIMEOUT_MS};
use crate::report::{Check, RowSummary};
use crate::upstream::Seen;

/// The share of the requests that is warm-up: Tether's token cache (4096 entries per worker)
/// and its replay record (entries live `max_age_seconds`, 30 s) fill up during it.
pub const WARM_UP_SHARE: f64 = 0.3;
/// How much Envoy's resident memory may grow after warm-up and still count as flat: more
/// than allocator noise, far less than a leak of a few hundred bytes per request would make
/// over the run.
pub const RSS_GROWTH_LIMIT_KIB: u64 = 8 * 1024;

/// Lines of Envoy's log that betray a panic in the filter or a trap of its VM.
const LOG_PATTERNS: [&str; 5] = [
    "panicked",
    "Uncaught",
    "RuntimeError",
    "[critical]",
    "[error][wasm]",
];

pub fn answers(rows: &[RowSummary]) -> Check {
    let mismatches: u64 = rows.iter().map(|r| r.tally.mismatches).sum();
    let sent: u64 = rows.iter().map(|r| r.tally.sent).sum();
    let mut detail = format!("{mismatches} of {sent} answers not as expected");
    for r in rows.iter().filter(|r| r.tally.mismatches > 0) {
        let _ = write!(
            detail,
            "\n        {}: {} ({})",
            r.row.name(),
            r.tally.mismatches,
            r.tally.examples.join("; ")
        );
    }
    Check {
        name: "answers",
        passed: mismatches == 0,
        detail,
    }
}

/// `wasmcustom.tether.allowed` and every `wasmcustom.tether.refused.<reason>` moved by
/// exactly what was sent of each kind.
pub fn counters(
    rows: &[RowSummary],
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (Check, Value) {
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        let name = match r.row.kind.expected().reason {
            Some(reason) => format!("wasmcustom.tether.refused.{reason}"),
            None => "wasmcustom.tether.allowed".to_string(),
        };
        *expected.entry(name).or_insert(0) += r.tally.sent;
    }
    let mut deltas: BTreeMap<String, u64> = BTreeMap::new();
    for (name, value) in after {
        let tether =
            name == "wasmcustom.tether.allowed" || name.starts_with("wasmcustom.tether.refused.");
        let delta = value.saturating_sub(before.get(name).copied().unwrap_or(0));
        if tether && (delta > 0 || expected.contains_key(name)) {
            deltas.insert(name.clone(), delta);
        }
    }
    let differing: Vec<String> = deltas
        .keys()
        .chain(expected.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter_map(|name| {
            let got = deltas.get(name).copied().unwrap_or(0);
            let want = expected.get(name).copied().unwrap_or(0);
            (got != want).then(|| format!("{name}: +{got}, sent {want}"))
        })
        .collect();
    let detail = if differing.is_empty() {
        format!(
            "{} counters moved by exactly the counts sent (allowed +{})",
            deltas.len(),
            deltas
                .get("wasmcustom.tether.allowed")
                .copied()
                .unwrap_or(0)
        )
    } else {
        differing.join("; ")
    };
    (
        Check {
            name: "counters",
            passed: differing.is_empty(),
            detail,
        },
        json!({"deltas": deltas, "expected": expected}),
    )
}

/// Every served request reached the upstream once, no refused one reached it, and what
/// arrived carried only Tether's claim header, the whole body and (trailers row) the trailer.
pub fn upstream(rows: &[RowSummary], seen: &Seen) -> Check {
    let mut problems = Vec::new();
    for r in rows {
        let served = r.tally.statuses.get(&200).copied().unwrap_or(0);
        let want = if r.row.kind.expected().status == 200 {
            served
        } else {
            0
        };
        if r.reached_upstream != want {
            problems.push(format!(
                "{}: {} reached the upstream, {want} expected",
                r.row.name(),
                r.reached_upstream
            ));
        }
    }
    let untagged = seen.untagged.load(std::sync::atomic::Ordering::Relaxed);
    if untagged > 0 {
        problems.push(format!("{untagged} requests without a row tag"));
    }
    let violations = seen.violations.load(std::sync::atomic::Ordering::Relaxed);
    if violations > 0 {
        let examples = seen.examples.lock().unwrap_or_else(|e| e.into_inner());
        problems.push(format!("{violations} violations: {}", examples.join("; ")));
    }
    let reached: u64 = rows.iter().map(|r| r.reached_upstream).sum();
    Check {
        name: "upstream",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "{reached} requests reached it, each served one once, no refused one; \
                 x-tether-sub always Tether's, no look-alike, bodies and trailers whole"
            )
        } else {
            problems.join("; ")
        },
    }
}

/// One memory sample: seconds since the start of the load, requests done, VmRSS (KiB).
#[derive(Clone, Copy)]
pub struct Sample {
    pub seconds: f64,
    pub done: u64,
    pub rss_kib: u64,
}

pub fn memory(samples: &[Sample], total: u64) -> (Check, Value) {
    let warm = (total as f64 * WARM_UP_SHARE) as u64;
    let first = samples.first().copied();
    let after_warm_up = samples.iter().find(|s| s.done >= warm).copied();
    let last = samples.last().copied();
    let (Some(first), Some(after), Some(last)) = (first, after_warm_up, last) else {
        return (
            Check {
                name: "memory",
                passed: false,
                detail: "too few samples of VmRSS".into(),
            },
            json!(null),
        );
    };
    let peak = samples
        .iter()
        .filter(|s| s.done >= warm)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(last.rss_kib);
    let growth = last.rss_kib as i64 - after.rss_kib as i64;
    let peak_growth = peak.saturating_sub(after.rss_kib);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let passed = peak_growth <= RSS_GROWTH_LIMIT_KIB;
    let detail = format!(
        "Envoy VmRSS {:.1} MiB at start, {:.1} MiB after warm-up ({} requests, {:.0} s), \
         {:.1} MiB at the end (peak {:.1}): {:+.1} MiB after warm-up (limit +{:.0} MiB)",
        mib(first.rss_kib),
        mib(after.rss_kib),
        after.done,
        after.seconds,
        mib(last.rss_kib),
        mib(peak),
        growth as f64 / 1024.0,
        mib(RSS_GROWTH_LIMIT_KIB),
    );
    let value = json!({
        "warm_up_requests": warm,
        "first_kib": first.rss_kib,
        "after_warm_up_kib": after.rss_kib,
        "after_warm_up_at_seconds": after.seconds,
        "last_kib": last.rss_kib,
        "peak_after_warm_up_kib": peak,
        "growth_after_warm_up_kib": growth,
        "limit_kib": RSS_GROWTH_LIMIT_KIB,
        "samples": samples.iter().map(|s| json!([s.seconds, s.done, s.rss_kib])).collect::<Vec<_>>(),
        "samples_are": ["seconds", "requests_done", "vmrss_kib"],
    });
    (
        Check {
            name: "memory",
            passed,
            detail,
        },
        value,
    )
}

/// The Wasm VMs Envoy made before the load are the ones after it (none restarted or
/// reloaded), no failure or crash counter moved, Envoy is alive, and its log has no panic
/// or trap.
pub fn vm(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    log: &str,
    envoy_alive: bool,
) -> (Check, Value) {
    let mut problems = Vec::new();
    let watched = |name: &str| {
        name.starts_with("wasm.")
            || name.starts_with("server.")
            || ["fail", "crash", "panic", "abort"]
                .iter()
                .any(|word| name.contains(word))
    };
    let mut moved = BTreeMap::new();
    for (name, value) in after.iter().filter(|(n, _)| watched(n)) {
        let was = before.get(name).copied().unwrap_or(0);
        let suspicious = ["fail", "crash", "panic", "abort", "reload"]
            .iter()
            .any(|word| name.contains(word))
            || name.starts_with("wasm.envoy.wasm.runtime.")
            || name == "wasm.wasm_vm_count";
        if suspicious && *value != was {
            problems.push(format!("{name}: {was} -> {value}"));
            moved.insert(name.clone(), json!([was, value]));
        }
    }
    let vm_stats: BTreeMap<&String, &u64> = after
        .iter()
        .filter(|(n, _)| n.starts_with("wasm.envoy.wasm.runtime.") || n.starts_with("wasm.tether."))
        .collect();
    let log_lines: Vec<&str> = log
        .lines()
        .filter(|line| LOG_PATTERNS.iter().any(|p| line.contains(p)))
        .collect();
    if !log_lines.is_empty() {
        problems.push(format!(
            "{} log lines like a panic or trap, first: {}",
            log_lines.len(),
            log_lines[0]
        ));
    }
    if !envoy_alive {
        problems.push("Envoy is no longer running".into());
    }
    let created = after
        .get("wasm.envoy.wasm.runtime.v8.created")
        .copied()
        .unwrap_or(0);
    let active = after
        .get("wasm.envoy.wasm.runtime.v8.active")
        .copied()
        .unwrap_or(0);
    let detail = if problems.is_empty() {
        format!(
            "v8 VMs created {created} and active {active}, unchanged by the load; no failure, \
             crash or reload counter moved; no panic or trap in the log; Envoy alive"
        )
    } else {
        problems.join("; ")
    };
    (
        Check {
            name: "vm",
            passed: problems.is_empty(),
            detail,
        },
        json!({
            "vm_stats_after": vm_stats,
            "moved": moved,
            "log_lines": log_lines.iter().take(20).collect::<Vec<_>>(),
            "log_patterns": LOG_PATTERNS,
        }),
    )
}

/// No answer later than `body_timeout_ms` plus the margin, and no 408 before
/// `body_timeout_ms` (a body must get all its time).
pub fn deadlines(rows: &[RowSummary]) -> Check {
    let limit_ms = deadline().as_secs_f64() * 1000.0;
    let mut problems = Vec::new();
    for r in rows.iter().filter(|r| r.tally.sent > 0) {
        if r.max_ms > limit_ms {
            problems.push(format!(
                "{}: max {:.1} ms > {limit_ms:.0} ms",
                r.row.name(),
                r.max_ms
            ));
        }
        if r.row.kind == Kind::StalledBody && r.min_ms < BODY_TIMEOUT_MS as f64 {
            problems.push(format!(
                "{}: a 408 after {:.1} ms, before body_timeout_ms {BODY_TIMEOUT_MS}",
                r.row.name(),
                r.min_ms
            ));
        }
    }
    let slowest = rows
        .iter()
        .max_by(|a, b| a.max_ms.total_cmp(&b.max_ms))
        .map(|r| format!("{} {:.1} ms", r.row.name(), r.max_ms))
        .unwrap_or_default();
    Check {
        name: "deadlines",
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "every answer within body_timeout_ms {BODY_TIMEOUT_MS} + margin = {limit_ms:.0} ms \
                 (slowest: {slowest}); no 408 before body_timeout_ms"
            )
        } else {
            problems.join("; ")
        },
    }
}
