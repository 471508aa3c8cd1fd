//! The benchmark's wasm ceiling: a proxy-wasm HTTP filter that reads what Tether reads on
//! every request (the `Authorization` header, as bytes, and the connection's
//! `sha256_peer_certificate_digest` property) and continues.
//!
//! What it costs is what any wasm filter costs in Envoy's V8 runtime before it does any work:
//! the VM call per request, the context objects and two host calls. `make bench` measures it
//! beside Tether so that Tether's figures can be read against this bound.
#![deny(unsafe_code)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Ceiling))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Ceiling;

impl Context for Ceiling {}

impl HttpContext for Ceiling {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Read and drop: the values must cross the host boundary, as Tether's do.
        let authorization = self.get_http_request_header_bytes("authorization");
        let digest = hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]);
        std::hint::black_box((authorization, digest.ok()));
        Action::Continue
    }
}
