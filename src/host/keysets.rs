//! Fetching remote key sets: one fetch serves all worker VMs.
//!
//! Each VM's root context looks at the shared record of every remote key set on each tick:
//! it decodes a newer document, and when a fetch is due and nobody is fetching, it claims
//! the fetch (compare-and-swap on the record) and sends it with `dispatch_http_call` to the
//! configured Envoy cluster. The answer is checked (HTTP 200, a JWKS with a usable key)
//! before it replaces the last good document; a failure keeps the last good one and backs
//! off.

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

use super::{log, Shared};
use crate::config::Policy;
use crate::keyset::{
    decode_document, SharedRecord, EARLY_REFETCH_INTERVAL_SECONDS, MAX_DOCUMENT_BYTES,
    RETRY_SECONDS,
};

/// Compare-and-swap attempts on a shared record.
const ATTEMPTS: usize = 8;

/// This VM's fetches in flight: call token -> key set index.
#[derive(Default)]
pub struct KeySets {
    in_flight: HashMap<u32, usize>,
}

fn read(key: &str) -> Option<(SharedRecord, Option<u32>)> {
    let (bytes, cas) = hostcalls::get_shared_data(key).ok()?;
    Some((
        SharedRecord::decode(bytes.as_deref().unwrap_or_default()),
        cas,
    ))
}

/// Applies `change` to a shared record with compare-and-swap; `false` if it could not.
fn update(key: &str, change: impl Fn(&mut SharedRecord) -> bool) -> bool {
    for _ in 0..ATTEMPTS {
        let Some((mut record, cas)) = read(key) else {
            return false;
        };
        if !change(&mut record) {
            return false;
        }
        match hostcalls::set_shared_data(key, Some(&record.encode()), cas) {
            Ok(()) => return true,
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}

impl KeySets {
    /// Decodes newer shared documents, and starts the fetches that are due.
    pub fn refresh(&mut self, shared: &Shared, now: u64) {
        for (i, source) in shared.policy.remote_sets.iter().enumerate() {
            let key = source.shared_key();
            let Some((record, _)) = read(&key) else {
                continue;
            };
            if let Err(error) = shared.remote.borrow_mut().install(i, &record) {
                log(
                    LogLevel::Warn,
                    &format!(
                        "tether: key set from cluster {:?} not usable: {error}",
                        source.cluster
                    ),
                );
            }
            if !record.due(source, now) || self.in_flight.values().any(|s| *s == i) {
                continue;
            }
            let busy_for = source.timeout_ms.div_ceil(1000) + 1;
            let claimed = update(&key, |r| {
                let due = r.due(source, now);
                r.busy_until = now + busy_for;
                due
            });
            if !claimed {
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", source.path.as_str()),
                (":authority", source.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(source.timeout_ms);
            match hostcalls::dispatch_http_call(&source.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    self.in_flight.insert(token, i);
                }
                Err(_) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "tether: cannot fetch the key set from cluster {:?}",
                            source.cluster
                        ),
                    );
                    shared.metrics.fetched(false);
                    update(&key, |r| {
                        r.busy_until = now + RETRY_SECONDS;
                        true
                    });
                }
            }
        }
    }

    /// Takes a fetch's answer: a good key set replaces the shared document, a bad one or a
    /// failure keeps the last good one and backs off.
    pub fn on_response(&mut self, shared: &Shared, token: u32, body_size: usize, now: u64) {
        let Some(i) = self.in_flight.remove(&token) else {
            return;
        };
        let Some(source) = shared.policy.remote_sets.get(i) else {
            return;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = if body_size > MAX_DOCUMENT_BYTES {
            None
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        };
        let checked = match (status.as_deref(), body) {
            (Some(b"200"), Some(body)) => decode_document(&body).map(|_| body),
            (Some(status), _) => Err(format!("HTTP status {}", String::from_utf8_lossy(status))),
            (None, _) => Err("no response (timeout or connection failure)".to_string()),
        };
        let key = source.shared_key();
        match checked {
            Ok(document) => {
                shared.metrics.fetched(true);
                update(&key, |r| {
                    // Strictly newer, so that every VM (and waiting request) sees a change.
                    r.fetched_at = now.max(r.fetched_at + 1);
                    r.busy_until = 0;
                    r.document = document.clone();
                    true
                });
            }
            Err(error) => {
                shared.metrics.fetched(false);
                log(
                    LogLevel::Warn,
                    &format!("tether: key set fetch from cluster {:?} failed: {error}; keeping the last good key set", source.cluster),
                );
                update(&key, |r| {
                    r.busy_until = now + RETRY_SECONDS;
                    true
                });
            }
        }
        if let Some((record, _)) = read(&key) {
            let _ = shared.remote.borrow_mut().install(i, &record);
        }
    }
}

/// Asks for an early refetch of key set `set` (an unknown `kid`): at most one per
/// [`EARLY_REFETCH_INTERVAL_SECONDS`] per key set, across all VMs. Returns whether it was
/// granted (then the request waits for it).
pub fn request_refetch(policy: &Policy, set: usize, now: u64) -> bool {
    let Some(source) = policy.remote_sets.get(set) else {
        return false;
    };
    update(&source.shared_key(), |r| {
        let allowed = r.refetch_requested_at == 0
            || now >= r.refetch_requested_at + EARLY_REFETCH_INTERVAL_SECONDS;
        if allowed {
            // Strictly after the document in hand, even within the same second, so that
            // the refetch is due.
            r.refetch_requested_at = now.max(r.fetched_at + 1);
        }
        allowed
    })
}
