//! Fetching remote key sets: one fetch serves all worker VMs.
//!
//! Each VM's root context looks at the shared record of every remote key set on each tick:
//! it decodes a newer document, and when a fetch is due and nobody is fetching, it claims
//! the fetch (compare-and-swap on the record) and sends it with `dispatch_http_call` to the
//! configured Envoy cluster. The answer is checked (HTTP 200, a JWKS with a usable key)
//! before it replaces the last good document; a failure keeps the last good one and backs
//! off. A failure is any answer that is not that: no response at all (a reset, a timeout),
//! a status, a body too large or not a key set. None of them may trap the VM.

use std::collections::HashMap;
use std::time::Duration;

use super::hostcalls::{self, Buffer, Level, Map};
use super::{log, Shared};
use crate::abi::Status;
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
    let (bytes, cas) = hostcalls::shared_data(key).ok()?;
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
        match hostcalls::set_shared_data(key, &record.encode(), cas) {
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
            let key = source.shared_key(&shared.namespace);
            let Some((record, _)) = read(&key) else {
                continue;
            };
            if let Err(error) = shared.remote.borrow_mut().install(i, &record, now) {
                // Tether writes only checked documents with plausible times: this record was
                // written by something else. Fetch it again rather than trust or keep it.
                log(
                    Level::Warn,
                    &format!(
                        "tether: shared record of the key set from cluster {:?} refused: {error}; fetching it again",
                        source.cluster
                    ),
                );
                update(&key, |r| {
                    r.refetch_requested_at = r.fetched_at.saturating_add(1);
                    r.busy_until = 0;
                    true
                });
            }
            let Some((record, _)) = read(&key) else {
                continue;
            };
            if !record.due(source, now) || self.in_flight.values().any(|s| *s == i) {
                continue;
            }
            let busy_for = source.timeout_ms.div_ceil(1000) + 1;
            let claimed = update(&key, |r| {
                let due = r.due(source, now);
                if !r.plausible(now) {
                    // Times no fetch of Tether's wrote: start over from a clean record.
                    *r = SharedRecord {
                        document: std::mem::take(&mut r.document),
                        ..SharedRecord::default()
                    };
                }
                r.busy_until = now.saturating_add(busy_for);
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
            // The SDK's call: it registers the call with the dispatcher that routes the answer
            // back (see `hostcalls`).
            match proxy_wasm::hostcalls::dispatch_http_call(
                &source.cluster,
                headers,
                None,
                vec![],
                timeout,
            ) {
                Ok(token) => {
                    self.in_flight.insert(token, i);
                }
                Err(_) => {
                    log(
                        Level::Warn,
                        &format!(
                            "tether: cannot fetch the key set from cluster {:?}",
                            source.cluster
                        ),
                    );
                    shared.metrics.fetched(false);
                    update(&key, |r| {
                        r.busy_until = now.saturating_add(RETRY_SECONDS);
                        true
                    });
                }
            }
        }
    }

    /// Takes a fetch's answer: a good key set replaces the shared document, a bad one or a
    /// failure keeps the last good one and backs off. `headers` is the number of response
    /// headers: 0 when there is no response at all (Envoy reports a reset or a timeout so).
    pub fn on_response(
        &mut self,
        shared: &Shared,
        token: u32,
        headers: usize,
        body_size: usize,
        now: u64,
    ) {
        let Some(i) = self.in_flight.remove(&token) else {
            return;
        };
        let Some(source) = shared.policy.remote_sets.get(i) else {
            return;
        };
        let checked = check_answer(headers, body_size)
            .and_then(|body| decode_document(&body).map(|document| (body, document.skipped)));
        let key = source.shared_key(&shared.namespace);
        match checked {
            Ok((document, skipped)) => {
                shared.metrics.fetched(true);
                if !skipped.is_empty() {
                    shared.metrics.keys_skipped(skipped.len());
                    for note in &skipped {
                        log(
                            Level::Warn,
                            &format!("tether: key set from cluster {:?}: {note}", source.cluster),
                        );
                    }
                }
                update(&key, |r| {
                    // Strictly newer, so that every VM (and waiting request) sees a change.
                    r.fetched_at = now.max(r.fetched_at.saturating_add(1));
                    r.busy_until = 0;
                    r.document = document.clone();
                    true
                });
            }
            Err(error) => {
                shared.metrics.fetched(false);
                log(
                    Level::Warn,
                    &format!("tether: key set fetch from cluster {:?} failed: {error}; keeping the last good key set", source.cluster),
                );
                update(&key, |r| {
                    r.busy_until = now.saturating_add(RETRY_SECONDS);
                    true
                });
            }
        }
        if let Some((record, _)) = read(&key) {
            let _ = shared.remote.borrow_mut().install(i, &record, now);
        }
    }
}

/// The body of a fetch's answer if it is an HTTP 200 of at most [`MAX_DOCUMENT_BYTES`].
fn check_answer(headers: usize, body_size: usize) -> Result<Vec<u8>, String> {
    if headers == 0 {
        return Err("no response (connection reset, refused, or timed out)".into());
    }
    let status = match hostcalls::header(Map::HttpCallResponseHeaders, ":status") {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => return Err("no response status".into()),
    };
    if status != b"200" {
        return Err(format!("HTTP status {}", String::from_utf8_lossy(&status)));
    }
    if body_size > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "key set document of {body_size} bytes is larger than {MAX_DOCUMENT_BYTES}"
        ));
    }
    match hostcalls::buffer(Buffer::HttpCallResponseBody, 0, body_size) {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Ok(Vec::new()),
        Err(status) => Err(format!("response body unreadable ({status:?})")),
    }
}

/// Asks for an early refetch of key set `set` (an unknown `kid`): at most one per
/// [`EARLY_REFETCH_INTERVAL_SECONDS`] per key set, across all VMs. Returns whether it was
/// granted (then the request waits for it).
pub fn request_refetch(shared: &Shared, set: usize, now: u64) -> bool {
    let Some(source) = shared.policy.remote_sets.get(set) else {
        return false;
    };
    update(&source.shared_key(&shared.namespace), |r| {
        let allowed = r.refetch_requested_at == 0
            || now
                >= r.refetch_requested_at
                    .saturating_add(EARLY_REFETCH_INTERVAL_SECONDS);
        if allowed {
            // Strictly after the document in hand, even within the same second, so that
            // the refetch is due.
            r.refetch_requested_at = now.max(r.fetched_at.saturating_add(1));
        }
        allowed
    })
}
