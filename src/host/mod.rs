//! The proxy-wasm glue: the only code that talks to Envoy. It reads the configuration
//! once, gathers each request's facts, asks [`crate::verdict::decide`], and acts.

mod metrics;
mod replay;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::bind::mtls::PeerCertificate;
use crate::cache::TokenCache;
use crate::config::Policy;
use crate::crypto::native::{ForeignFunction, Native};
use crate::crypto::{InVm, SignatureVerifier};
use crate::reject::Reason;
use crate::token::fingerprint;
use crate::verdict::{decide, Pending, Request, Tokens, Verdict};
use metrics::Metrics;
use replay::SharedReplayStore;

#[allow(unsafe_code)] // `main!` exports the VM entry point with #[no_mangle].
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

fn log(level: LogLevel, message: &str) {
    // Logging must never fail a request.
    let _ = hostcalls::log(level, message);
}

/// Envoy's foreign functions, called through the proxy-wasm ABI.
struct Envoy;

impl ForeignFunction for Envoy {
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        hostcalls::call_foreign_function(name, Some(arguments))
            .ok()
            .flatten()
    }
}

/// One per VM and plugin: holds the compiled policy and what all its requests share.
struct Root {
    policy: Option<Rc<Policy>>,
    metrics: Rc<Metrics>,
    crypto: Rc<dyn SignatureVerifier>,
    cache: Rc<RefCell<TokenCache>>,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            policy: None,
            metrics: Rc::default(),
            crypto: Rc::new(InVm),
            cache: Rc::new(RefCell::new(TokenCache::new(0))),
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(Some(bytes)) => bytes,
            _ => Vec::new(),
        };
        match Policy::from_json(&bytes) {
            Ok(policy) => {
                for note in &policy.notes {
                    log(LogLevel::Warn, &format!("tether: {note}"));
                }
                self.cache = Rc::new(RefCell::new(TokenCache::new(policy.token_cache_entries)));
                self.policy = Some(Rc::new(policy));
                self.metrics = Rc::new(Metrics::define());
                // Detected once per VM: the host's verifier must pass a known-answer test.
                self.crypto = match Native::detect(Envoy) {
                    Some(native) => {
                        log(LogLevel::Info, "tether: signatures: RS256/RS384/RS512/ES256/ES384 by Envoy's native verify_signature, EdDSA and PS* in the VM");
                        Rc::new(native)
                    }
                    None => {
                        log(LogLevel::Warn, "tether: signatures: Envoy's verify_signature is not available; every signature is verified in the VM");
                        Rc::new(InVm)
                    }
                };
                true
            }
            Err(error) => {
                // Returning false makes Envoy refuse the configuration: fail closed.
                log(
                    LogLevel::Critical,
                    &format!("tether: configuration rejected: {error}"),
                );
                self.policy = None;
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            policy: self.policy.clone(),
            metrics: Rc::clone(&self.metrics),
            crypto: Rc::clone(&self.crypto),
            cache: Rc::clone(&self.cache),
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One per HTTP request.
struct Filter {
    policy: Option<Rc<Policy>>,
    metrics: Rc<Metrics>,
    crypto: Rc<dyn SignatureVerifier>,
    cache: Rc<RefCell<TokenCache>>,
    /// A request whose signature waits for the body.
    pending: Option<Box<Pending>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            return self.refuse(Reason::NotConfigured, None);
        };
        // The claim headers are Tether's to set: a client's copy is removed on every
        // request, whatever the route, so that it can never be spoofed upstream.
        for mapping in &policy.claims_to_headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, &mapping.header, None);
        }
        // All header lines in one host call: a repeated `Authorization` header must be
        // seen as such (Envoy's single-header accessor returns only the first of some).
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let values = |wanted: &str| -> Vec<&[u8]> {
            headers
                .iter()
                .filter(|(name, _)| name == wanted)
                .map(|(_, value)| value.as_slice())
                .collect()
        };
        let first = |wanted: &str| values(wanted).first().copied().unwrap_or_default();
        let authorization = values("authorization");
        let signature = values(&policy.signed_requests.header);
        let request = Request {
            path: first(":path"),
            authorization: &authorization,
            method: first(":method"),
            scheme: first(":scheme"),
            authority: first(":authority"),
            signature: &signature,
        };
        // The VM runs one callback at a time, so the cache is never borrowed twice; were it
        // ever, the request is served uncached rather than trapping the VM.
        let mut spare = TokenCache::new(0);
        let mut borrowed = self.cache.try_borrow_mut();
        let cache = match borrowed.as_deref_mut() {
            Ok(cache) => cache,
            Err(_) => &mut spare,
        };
        let mut tokens = Tokens {
            crypto: self.crypto.as_ref(),
            cache,
        };
        let verdict = decide(
            &policy,
            request,
            peer_certificate,
            &mut tokens,
            now_seconds(),
        );
        drop(borrowed);
        match verdict {
            Verdict::Allow { headers } => {
                self.allow(&policy, headers.iter().map(|(n, v)| (*n, v.as_str())));
                Action::Continue
            }
            Verdict::Deny { reason, token } => self.refuse(reason, token),
            Verdict::NeedBody(pending) => {
                // Refuse at once a body announced larger than a signed request may be.
                let declared = first("content-length");
                let too_large = std::str::from_utf8(declared)
                    .ok()
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .is_some_and(|n| n > policy.signed_requests.max_body_bytes);
                if too_large {
                    return self.refuse(Reason::BodyTooLarge, Some(&pending.presented));
                }
                if end_of_stream {
                    return self.finish(&policy, *pending, &[]);
                }
                self.pending = Some(pending);
                // Held only until the body has arrived (Envoy buffers it meanwhile).
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(policy), Some(_)) = (self.policy.clone(), self.pending.as_ref()) else {
            return Action::Continue;
        };
        if body_size > policy.signed_requests.max_body_bytes {
            let presented = self.pending.take().map(|p| p.presented);
            return self.refuse(Reason::BodyTooLarge, presented.as_deref());
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        // Continue here resumes the headers held back in on_http_request_headers.
        self.finish(&policy, *pending, &body)
    }
}

impl Filter {
    /// Verifies a pending request signature over the body and lets the request go on, or
    /// refuses it.
    fn finish(&mut self, policy: &Policy, pending: Pending, body: &[u8]) -> Action {
        let presented = pending.presented.clone();
        match pending.finish(
            policy,
            body,
            self.crypto.as_ref(),
            &mut SharedReplayStore,
            now_seconds(),
        ) {
            Ok(headers) => {
                self.allow(
                    policy,
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                );
                Action::Continue
            }
            Err(reason) => self.refuse(reason, Some(&presented)),
        }
    }

    /// Sets the claim headers, strips the token if configured, and counts the request.
    fn allow<'h>(&self, policy: &Policy, headers: impl Iterator<Item = (&'h str, &'h str)>) {
        for (name, value) in headers {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        if policy.strip_authorization {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None);
        }
        self.metrics.allowed();
    }

    /// Sends the refusal for `reason`, counts it and logs it with the token's fingerprint.
    fn refuse(&self, reason: Reason, token: Option<&str>) -> Action {
        self.metrics.refused(reason);
        let fp = token.map_or_else(|| "-".to_string(), fingerprint);
        log(
            LogLevel::Info,
            &format!(
                "tether: refused reason={} status={} token_fp={fp}",
                reason.name(),
                reason.status()
            ),
        );
        let challenge = reason.www_authenticate();
        let mut headers = vec![
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        if let Some(challenge) = challenge.as_deref() {
            headers.push(("www-authenticate", challenge));
        }
        let body = reason.body();
        let _ = hostcalls::send_http_response(
            u32::from(reason.status()),
            headers,
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

/// The connection's client certificate, from Envoy's `sha256_peer_certificate_digest`.
fn peer_certificate() -> Option<PeerCertificate> {
    let digest =
        hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]).ok()??;
    PeerCertificate::from_hex_digest(&digest)
}

/// The host's clock, read once per request, in seconds since the Unix epoch.
fn now_seconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}
