//! A signature probe, for tests: verifies one signature per request with Tether's
//! [`Native`] verifier over Envoy's real `verify_signature` foreign function, so that
//! Wycheproof vectors reach the host crypto that Tether trusts (tests/e2e_wycheproof.rs).
//!
//! Request body (JSON):
//! `{"alg": "ES256", "jwk": {...}, "message_hex": "...", "signature_hex": "..."}`. The JWK is
//! given `alg` so that `parse_one` returns exactly that one key, as a configured key would be.
//!
//! Answers, without reaching the upstream:
//! - 200 `valid` or `invalid`, with `x-sigprobe-host-calls` (foreign-function calls that Envoy
//!   answered during this verification) and `x-sigprobe-host-failures` (calls that failed, after
//!   which Tether verified in the VM instead: the verdict was then not Envoy's);
//! - 400 with the reason when the request is malformed;
//! - 500 with the reason when Envoy's verifier failed Tether's known-answer test, or when the
//!   key is refused.
#![deny(unsafe_code)]

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use serde_json::Value;
use tether::crypto::native::{ForeignFunction, Native};
use tether::crypto::SignatureVerifier;
use tether::jwk::parse_one;

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

/// Foreign-function calls, counted so that a response can say whether Envoy judged it.
#[derive(Default)]
struct Calls {
    answered: Cell<u32>,
    failed: Cell<u32>,
}

/// Envoy's foreign functions, as Tether's glue calls them (a failed call, or one that
/// returns nothing, is `None`).
struct Envoy {
    calls: Rc<Calls>,
}

impl ForeignFunction for Envoy {
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        match hostcalls::call_foreign_function(name, Some(arguments)) {
            Ok(Some(result)) => {
                self.calls.answered.set(self.calls.answered.get() + 1);
                Some(result)
            }
            _ => {
                self.calls.failed.set(self.calls.failed.get() + 1);
                None
            }
        }
    }
}

#[derive(Default)]
struct Root {
    /// Detected once per VM, as Tether's glue does; `None` if Envoy failed the test.
    native: Rc<Option<Native<Envoy>>>,
    calls: Rc<Calls>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let native = Native::detect(Envoy {
            calls: self.calls.clone(),
        });
        let message = match native {
            Some(_) => "sigprobe: Envoy's verify_signature passed the known-answer test",
            None => "sigprobe: Envoy's verify_signature is not available or answered wrongly",
        };
        let _ = hostcalls::log(LogLevel::Info, message);
        self.native = Rc::new(native);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            native: self.native.clone(),
            calls: self.calls.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    native: Rc<Option<Native<Envoy>>>,
    calls: Rc<Calls>,
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            respond(400, &[], b"a request body is required");
        }
        // Wait for the whole body (allow_on_headers_stop_iteration is set).
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match self.judge(&body) {
            Ok((valid, answered, failed)) => respond(
                200,
                &[
                    ("x-sigprobe-host-calls", &answered.to_string()),
                    ("x-sigprobe-host-failures", &failed.to_string()),
                ],
                if valid { b"valid" } else { b"invalid" },
            ),
            Err((status, reason)) => respond(status, &[], reason.as_bytes()),
        }
        Action::Pause
    }
}

impl Probe {
    /// The verdict and the host calls it took, or a status and a reason.
    fn judge(&self, body: &[u8]) -> Result<(bool, u32, u32), (u32, String)> {
        let bad = |reason: &str| (400, reason.to_string());
        let request: Value = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
        let alg = request["alg"].as_str().ok_or_else(|| bad("no \"alg\""))?;
        let mut jwk = request["jwk"].clone();
        jwk.as_object_mut()
            .ok_or_else(|| bad("\"jwk\" is not an object"))?
            .insert("alg".into(), Value::from(alg));
        let message = hex(&request["message_hex"]).ok_or_else(|| bad("bad \"message_hex\""))?;
        let signature =
            hex(&request["signature_hex"]).ok_or_else(|| bad("bad \"signature_hex\""))?;
        let native = self.native.as_ref().as_ref().ok_or((
            500,
            "Envoy's verify_signature failed Tether's known-answer test".to_string(),
        ))?;
        let keys = parse_one(&jwk).map_err(|e| (500, format!("key refused: {e}")))?;
        let [key] = keys.as_slice() else {
            return Err((500, format!("{} keys for one JWK", keys.len())));
        };
        if key.alg.name() != alg {
            return Err((500, format!("the key is for {}", key.alg.name())));
        }
        self.calls.answered.set(0);
        self.calls.failed.set(0);
        let valid = native.verify(key, &message, &signature);
        Ok((valid, self.calls.answered.get(), self.calls.failed.get()))
    }
}

fn respond(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let _ = hostcalls::send_http_response(status, headers.to_vec(), Some(body));
}

fn hex(value: &Value) -> Option<Vec<u8>> {
    let text = value.as_str()?.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}
