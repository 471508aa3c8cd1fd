//! Fetching key sets, the host's part: sending the request through the Envoy cluster and
//! reading the answer. When to fetch, and what an answer does to the shared record, is
//! [`crate::keyset::Fetcher`]'s (tested on the host).

use std::time::Duration;

use super::hostcalls::{self, Buffer, Level, Map};
use super::{log, Shared};
use crate::keyset::{FetchEvent, JwksEndpoint, MAX_DOCUMENT_BYTES};

/// Sends the fetch of `source` with the SDK's `dispatch_http_call` (which registers the call
/// with the dispatcher that routes the answer back to the root context); its call token.
pub fn dispatch(source: &JwksEndpoint) -> Option<u32> {
    let headers = vec![
        (":method", "GET"),
        (":path", source.path.as_str()),
        (":authority", source.authority.as_str()),
        ("accept", "application/json"),
    ];
    let timeout = Duration::from_millis(source.timeout_ms);
    proxy_wasm::hostcalls::dispatch_http_call(&source.cluster, headers, None, vec![], timeout).ok()
}

/// Logs and counts what the fetcher reports.
pub fn report(shared: &Shared, events: Vec<FetchEvent>) {
    for event in events {
        match event {
            FetchEvent::Fetched { ok } => shared.metrics.fetched(ok),
            FetchEvent::KeysSkipped(n) => shared.metrics.keys_skipped(n),
            FetchEvent::Warning(message) => log(Level::Warn, &format!("tether: {message}")),
        }
    }
}

/// The body of a fetch's answer if it is an HTTP 200 of at most [`MAX_DOCUMENT_BYTES`].
/// `headers` is the number of response headers: 0 when there is no response at all (Envoy
/// reports a reset or a timeout so, and then has no response map to read: issue 7, finding 3).
pub fn read_answer(headers: usize, body_size: usize) -> Result<Vec<u8>, String> {
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
