//! Introspection calls, the host's part (issue 12): sending a token to its issuer's endpoint
//! through the Envoy cluster, and filing the answer where the requests that wait on it read
//! it ([`crate::cache::IntrospectionCache`]). Which calls may go, and what an answer means, is
//! [`crate::introspect`]'s (tested on the host).

use std::time::Duration;

use super::hostcalls::{self, Buffer, Level, Map};
use super::{log, Shared};
use crate::cache::Introspected;
use crate::introspect::{self, Answer, Context, Outcome, MAX_ANSWER_BYTES};
use crate::keyset::FetchedKeys;
use crate::reject::Reason;
use crate::verdict::Introspect;

/// The least the answer cache holds, whatever `token_cache_entries` says: the requests that
/// wait on an answer read it there.
pub const MIN_CACHE_ENTRIES: usize = 1024;

/// How long a failed call is remembered: long enough for the requests that waited on it to
/// be refused together, short enough that the next request asks again.
const FAILED_SECONDS: u64 = 1;

/// How often, at most, a failing endpoint is logged (milliseconds).
const WARN_EVERY_MS: u64 = 10_000;

/// How many answers `issuer`'s endpoint has given this VM.
pub fn answers(shared: &Shared, issuer: usize) -> u64 {
    shared
        .introspection_answers
        .try_borrow()
        .ok()
        .and_then(|answers| answers.get(issuer).copied())
        .unwrap_or(0)
}

fn answered(shared: &Shared, issuer: usize) {
    if let Ok(mut answers) = shared.introspection_answers.try_borrow_mut() {
        if let Some(count) = answers.get_mut(issuer) {
            *count = count.wrapping_add(1);
        }
    }
}

/// Makes sure `ask.token` is being introspected: a call is queued, to go on the root
/// context's next tick (set to [`SEND_TICK_MS`] until the queue is sent), unless one already
/// is queued or in flight. With `max_in_flight` calls out already, none is queued: the
/// request waits (until its deadline) for an answer to free one, and asks again then, so
/// that a flood of made-up tokens delays other new tokens rather than turning them away.
pub fn ask(shared: &Shared, ask: &Introspect) -> Result<(), Reason> {
    let introspection = shared
        .policy
        .issuers
        .get(ask.issuer)
        .and_then(|issuer| issuer.introspection.as_ref())
        .ok_or(Reason::IntrospectionUnavailable)?;
    let mut calls = shared
        .calls
        .try_borrow_mut()
        .map_err(|_| Reason::IntrospectionUnavailable)?;
    if calls.asking(&ask.token) || !calls.may_ask(ask.issuer, introspection.max_in_flight) {
        return Ok(());
    }
    if !calls.has_queued() && hostcalls::set_tick_period_ms(SEND_TICK_MS).is_err() {
        return Err(Reason::IntrospectionUnavailable);
    }
    calls.queue(ask.issuer, &ask.token);
    Ok(())
}

/// The tick period while calls wait to be sent (milliseconds).
pub const SEND_TICK_MS: u32 = 1;

/// On the root context's tick: sends the queued calls (so that their answers come to the
/// root context). A call Envoy will not send fails the requests waiting on it at once.
/// Returns whether the queue was empty already.
pub fn send_queued(shared: &Shared, now_ms: u64) -> bool {
    let queued = match shared.calls.try_borrow_mut() {
        Ok(mut calls) => calls.take_queued(),
        Err(_) => return true,
    };
    if queued.is_empty() {
        return true;
    }
    for (issuer_index, token) in queued {
        let Some(introspection) = shared
            .policy
            .issuers
            .get(issuer_index)
            .and_then(|issuer| issuer.introspection.as_ref())
        else {
            continue;
        };
        let request = introspection.request(&token);
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let timeout = Duration::from_millis(introspection.timeout_ms);
        match proxy_wasm::hostcalls::dispatch_http_call(
            &introspection.cluster,
            headers,
            Some(&request.body),
            vec![],
            timeout,
        ) {
            Ok(id) => {
                if let Ok(mut calls) = shared.calls.try_borrow_mut() {
                    calls.sent(id, issuer_index, token);
                }
                shared.metrics.introspection_sent();
            }
            Err(_) => {
                shared.metrics.introspection_failed();
                warn_failure(
                    shared,
                    &introspection.cluster,
                    Reason::IntrospectionUnavailable,
                    None,
                    now_ms,
                );
                file(
                    shared,
                    issuer_index,
                    &token,
                    Introspected::Failed(Reason::IntrospectionUnavailable),
                    FAILED_SECONDS,
                    now_ms / 1000,
                );
            }
        }
    }
    false
}

/// Files an answer about `token` and tells the requests waiting on `issuer` to look.
fn file(shared: &Shared, issuer: usize, token: &str, answer: Introspected, seconds: u64, now: u64) {
    if let Ok(mut cache) = shared.introspected.try_borrow_mut() {
        cache.insert(token, answer, seconds, now);
    }
    answered(shared, issuer);
}

/// Call `id` was answered (`headers` response headers, 0 when there was no response): if it
/// was an introspection, files what it says and returns `true`.
pub fn on_answer(shared: &Shared, id: u32, headers: usize, body_size: usize, now_ms: u64) -> bool {
    let Some((issuer_index, token)) = shared
        .calls
        .try_borrow_mut()
        .ok()
        .and_then(|mut calls| calls.answered(id))
    else {
        return false;
    };
    let Some(issuer) = shared.policy.issuers.get(issuer_index) else {
        return true;
    };
    let Some(introspection) = issuer.introspection.as_ref() else {
        return true;
    };
    let status = if headers == 0 {
        None
    } else {
        hostcalls::header(Map::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
    };
    let content_type = hostcalls::header(Map::HttpCallResponseHeaders, "content-type")
        .ok()
        .flatten()
        .and_then(|c| String::from_utf8(c).ok());
    // One byte more than the limit: a larger answer is refused, never cut.
    let body = match hostcalls::buffer(
        Buffer::HttpCallResponseBody,
        0,
        body_size.min(MAX_ANSWER_BYTES + 1),
    ) {
        Ok(body) => body.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let now = now_ms / 1000;
    let outcome = {
        let empty = FetchedKeys::default();
        let fetched = shared.fetched.try_borrow();
        let context = Context {
            introspection,
            issuer,
            fetched: fetched.as_deref().unwrap_or(&empty),
            crypto: shared.crypto.as_ref(),
            limits: shared.policy.limits,
        };
        let answer = Answer {
            status,
            content_type: content_type.as_deref(),
            body: &body,
        };
        introspect::read_answer(&answer, &token, &context, now)
    };
    let (answer, seconds) = match outcome {
        Ok(Outcome::Active(verified)) => {
            (Introspected::Active(verified), introspection.cache_seconds)
        }
        Ok(Outcome::Inactive) => (Introspected::Inactive, introspection.negative_cache_seconds),
        Err(reason) => {
            if matches!(
                reason,
                Reason::IntrospectionUnavailable | Reason::IntrospectionInvalid
            ) {
                shared.metrics.introspection_failed();
                warn_failure(shared, &introspection.cluster, reason, status, now_ms);
            }
            (Introspected::Failed(reason), FAILED_SECONDS)
        }
    };
    file(shared, issuer_index, &token, answer, seconds, now);
    true
}

/// Logs a failing endpoint, at most once per [`WARN_EVERY_MS`]; never the token.
fn warn_failure(shared: &Shared, cluster: &str, reason: Reason, status: Option<u16>, now_ms: u64) {
    let last = shared.warned_introspection_at.get();
    if last != 0 && now_ms.saturating_sub(last) < WARN_EVERY_MS {
        return;
    }
    shared.warned_introspection_at.set(now_ms.max(1));
    let status = status.map_or_else(|| "no response".to_string(), |s| format!("HTTP {s}"));
    log(
        Level::Warn,
        &format!(
            "tether: introspection through cluster {cluster} failed: {} ({status}); requests that need it get 503 (logged at most every {} s)",
            reason.name(),
            WARN_EVERY_MS / 1000
        ),
    );
}
