//! Envoy counters: `tether.allowed`, one `tether.refused.<reason>` per reason, and
//! `tether.jwks_fetch.success` / `.failure`, shown in Envoy's `/stats` with the
//! `wasmcustom.` prefix.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::reject::Reason;

/// Counter ids, defined once per VM at configure time.
#[derive(Default)]
pub struct Metrics {
    allowed: Option<u32>,
    fetch_success: Option<u32>,
    fetch_failure: Option<u32>,
    /// Indexed like [`Reason::ALL`].
    refused: Vec<Option<u32>>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

impl Metrics {
    pub fn define() -> Self {
        Metrics {
            allowed: counter("tether.allowed"),
            fetch_success: counter("tether.jwks_fetch.success"),
            fetch_failure: counter("tether.jwks_fetch.failure"),
            refused: Reason::ALL
                .iter()
                .map(|r| counter(&r.metric_name()))
                .collect(),
        }
    }

    pub fn allowed(&self) {
        increment(self.allowed);
    }

    /// A key set fetched and accepted (`ok`), or a fetch that failed.
    pub fn fetched(&self, ok: bool) {
        increment(if ok {
            self.fetch_success
        } else {
            self.fetch_failure
        });
    }

    pub fn refused(&self, reason: Reason) {
        let index = Reason::ALL.iter().position(|r| *r == reason);
        increment(index.and_then(|i| self.refused.get(i).copied().flatten()));
    }
}

fn increment(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}
