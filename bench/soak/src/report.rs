//! The summary: one line per row (kind and protocol), the checks, and the JSON written to
//! `bench/results/soak-<UTC time>.json` and `bench/results/soak-latest.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::kinds::Row;
use crate::load::RowTally;

/// One row's figures, as printed and written.
pub struct RowSummary {
    pub row: Row,
    pub tally: RowTally,
    pub reached_upstream: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
}

impl RowSummary {
    pub fn new(row: Row, mut tally: RowTally, reached_upstream: u64) -> RowSummary {
        tally.latencies_us.sort_unstable();
        let latencies = &tally.latencies_us;
        let at = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            f64::from(latencies[index]) / 1000.0
        };
        RowSummary {
            row,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            min_ms: at(0.0),
            tally,
            reached_upstream,
        }
    }

    fn expected(&self) -> String {
        let expected = self.row.kind.expected();
        match expected.reason {
            Some(reason) => format!("{} {reason}", expected.status),
            None => expected.status.to_string(),
        }
    }

    fn got(&self) -> String {
        let mut parts: Vec<String> = self
            .tally
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}x{n}"))
            .collect();
        if self.tally.errors > 0 {
            parts.push(format!("no-answer x{}", self.tally.errors));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A check of the run, passed or not, with what it saw.
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// The summary table as printed (and kept in the JSON).
pub fn table(rows: &[RowSummary]) -> String {
    let mut out = String::new();
    let header = [
        "kind",
        "sent",
        "expected",
        "got",
        "mismatches",
        "upstream",
        "p50 ms",
        "p99 ms",
        "max ms",
    ];
    let mut lines: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.row.name(),
                r.tally.sent.to_string(),
                r.expected(),
                r.got(),
                r.tally.mismatches.to_string(),
                r.reached_upstream.to_string(),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.1}", r.max_ms),
            ]
        })
        .collect();
    let total_sent: u64 = rows.iter().map(|r| r.tally.sent).sum();
    let total_mismatches: u64 = rows.iter().map(|r| r.tally.mismatches).sum();
    let total_upstream: u64 = rows.iter().map(|r| r.reached_upstream).sum();
    lines.push([
        "total".into(),
        total_sent.to_string(),
        String::new(),
        String::new(),
        total_mismatches.to_string(),
        total_upstream.to_string(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let mut text = String::new();
        for (c, cell) in cells.iter().enumerate() {
            // Text columns to the left, figures to the right.
            if matches!(c, 0 | 2 | 3) {
                let _ = write!(text, "{cell:<w$}  ", w = widths[c]);
            } else {
                let _ = write!(text, "{cell:>w$}  ", w = widths[c]);
            }
        }
        text.trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header));
    let _ = writeln!(
        out,
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for (i, cells) in lines.iter().enumerate() {
        if i + 1 == lines.len() {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
            );
        }
        let _ = writeln!(out, "{}", line(cells));
    }
    out
}

pub fn checks_text(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  [{mark}] {}: {}", check.name, check.detail);
    }
    out
}

pub fn rows_json(rows: &[RowSummary]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let expected = r.row.kind.expected();
                json!({
                    "kind": r.row.kind.name(),
                    "protocol": r.row.protocol.name(),
                    "sent": r.tally.sent,
                    "expected_status": expected.status,
                    "expected_reason": expected.reason,
                    "expected_description": expected.description,
                    "got": r.tally.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                    "no_answer": r.tally.errors,
                    "mismatches": r.tally.mismatches,
                    "mismatch_examples": r.tally.examples,
                    "reached_upstream": r.reached_upstream,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "max_ms": r.max_ms,
                    "min_ms": r.min_ms,
                })
            })
            .collect(),
    )
}

pub fn checks_json(checks: &[Check]) -> Value {
    Value::Array(
        checks
            .iter()
            .map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail}))
            .collect(),
    )
}

/// Writes `soak-<timestamp>.json` and `soak-latest.json` into `dir`; returns the first.
pub fn write(dir: &Path, timestamp: &str, report: &Value) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())? + "\n";
    let path = dir.join(format!("soak-{timestamp}.json"));
    for file in [&path, &dir.join("soak-latest.json")] {
        std::fs::write(file, &text).map_err(|e| format!("write {}: {e}", file.display()))?;
    }
    Ok(path)
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (UTC; the civil calendar from days,
/// H. Hinnant's algorithm), as `make bench` names its results.
pub fn utc_timestamp(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
