//! Envoy counters: `tether.allowed`, one `tether.refused.<reason>` per reason, and the key
//! set fetches (`tether.jwks_fetch.success`, `.failure`, `.key_skipped`), signed responses
//! (`tether.response_signed`), key set answers (`tether.jwks_served`), XFCC headers
//! from untrusted peers, removed (`tether.xfcc_untrusted`), and introspection calls sent
//! and failed (`tether.introspection.sent`, `.failed`), and the token cache's lookups
//! (`tether.token_cache.hit`, `.miss`), shown in Envoy's `/stats` with the `wasmcustom.`
//! prefix. The cache's lookups are counted in the VM and added on the root context's tick, so
//! that they cost a request no host call.

use super::hostcalls;
use crate::cache::Lookups;
use crate::reject::Reason;

/// Counter ids, defined once per VM at configure time.
#[derive(Default)]
pub struct Metrics {
    allowed: Option<u32>,
    fetch_success: Option<u32>,
    fetch_failure: Option<u32>,
    key_skipped: Option<u32>,
    responses_signed: Option<u32>,
    jwks_served: Option<u32>,
    xfcc_untrusted: Option<u32>,
    introspection_sent: Option<u32>,
    introspection_failed: Option<u32>,
    cache_hits: Option<u32>,
    cache_misses: Option<u32>,
    /// Indexed like [`Reason::ALL`].
    refused: Vec<Option<u32>>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_counter(name).ok()
}

impl Metrics {
    pub fn define() -> Self {
        Metrics {
            allowed: counter("tether.allowed"),
            fetch_success: counter("tether.jwks_fetch.success"),
            fetch_failure: counter("tether.jwks_fetch.failure"),
            key_skipped: counter("tether.jwks_fetch.key_skipped"),
            responses_signed: counter("tether.response_signed"),
            jwks_served: counter("tether.jwks_served"),
            xfcc_untrusted: counter("tether.xfcc_untrusted"),
            introspection_sent: counter("tether.introspection.sent"),
            introspection_failed: counter("tether.introspection.failed"),
            cache_hits: counter("tether.token_cache.hit"),
            cache_misses: counter("tether.token_cache.miss"),
            refused: Reason::ALL
                .iter()
                .map(|r| counter(&r.metric_name()))
                .collect(),
        }
    }

    pub fn allowed(&self) {
        increment(self.allowed, 1);
    }

    /// A key set fetched and accepted (`ok`), or a fetch that failed.
    pub fn fetched(&self, ok: bool) {
        increment(
            if ok {
                self.fetch_success
            } else {
                self.fetch_failure
            },
            1,
        );
    }

    /// Keys of a fetched key set that could not be used and were skipped.
    pub fn keys_skipped(&self, count: usize) {
        increment(self.key_skipped, i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A response signed (`sign_response`).
    pub fn response_signed(&self) {
        increment(self.responses_signed, 1);
    }

    /// The published key set answered (`response_signing.jwks_path`).
    pub fn jwks_served(&self) {
        increment(self.jwks_served, 1);
    }

    /// An `x-forwarded-client-cert` from a peer that is not trusted, removed.
    pub fn xfcc_untrusted(&self) {
        increment(self.xfcc_untrusted, 1);
    }

    /// An introspection call sent.
    pub fn introspection_sent(&self) {
        increment(self.introspection_sent, 1);
    }

    /// An introspection call that brought no usable answer.
    pub fn introspection_failed(&self) {
        increment(self.introspection_failed, 1);
    }

    /// The token cache's lookups since the last tick.
    pub fn cache_lookups(&self, lookups: Lookups) {
        for (id, count) in [
            (self.cache_hits, lookups.hits),
            (self.cache_misses, lookups.misses),
        ] {
            if count > 0 {
                increment(id, i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    pub fn refused(&self, reason: Reason) {
        let index = Reason::ALL.iter().position(|r| *r == reason);
        increment(
            index.and_then(|i| self.refused.get(i).copied().flatten()),
            1,
        );
    }

    /// Counts a refusal by a VM without a configuration (no counters defined yet): Envoy
    /// gives the existing id when a counter is defined again.
    pub fn count_unconfigured(reason: Reason) {
        increment(counter(&reason.metric_name()), 1);
    }
}

fn increment(id: Option<u32>, by: i64) {
    if let Some(id) = id {
        let _ = hostcalls::increment_counter(id, by);
    }
}
