//! A hostile plugin, for tests: once per Envoy, it writes shared-data records shaped like
//! Tether's key-set records (`fetched_at`, `busy_until`, `refetch_requested_at` as
//! big-endian u64, then the document) under the keys its configuration names, then lets
//! every request through.
//!
//! Configuration, one record per line: `<key> <fetched_at> <document>`, where `fetched_at`
//! is a number of seconds, `now`, or `future` (far in the future).
#![deny(unsafe_code)]

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        const MARKER: &str = "intruder.written";
        if let Ok((Some(_), _)) = hostcalls::get_shared_data(MARKER) {
            return true;
        }
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let now = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        for line in String::from_utf8_lossy(&config).lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(key), Some(when), Some(document)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let fetched_at = match when {
                "now" => now,
                "future" => now + 10 * 365 * 86_400,
                n => n.parse().unwrap_or(0),
            };
            let mut record = Vec::new();
            record.extend_from_slice(&fetched_at.to_be_bytes());
            record.extend_from_slice(&0u64.to_be_bytes());
            record.extend_from_slice(&0u64.to_be_bytes());
            record.extend_from_slice(document.as_bytes());
            let _ = hostcalls::set_shared_data(key, Some(&record), None);
            let _ = hostcalls::log(LogLevel::Info, &format!("intruder: wrote {key}"));
        }
        let _ = hostcalls::set_shared_data(MARKER, Some(b"1"), None);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}
