//! A benchmark probe: Tether's response signing, compiled to wasm32 as the filter is, timed in
//! V8 by `run.mjs` (`make bench` prints the figures beside the signed-response rows).
//!
//! Each export runs one step of signing a response `n` times and returns a checksum (so that
//! nothing is optimized away): the signature alone (Ed25519, P-256), the Content-Digest of a
//! 1 KiB body, and the whole `respond::sign_http` (digest, signature base, signature, fields).
//! The keys are the RFC 8037 A.1 Ed25519 key and the RFC 6979 A.2.5 P-256 key: public test
//! values, for timing only.
#![deny(unsafe_code)]

use std::cell::RefCell;

use serde_json::json;
use tether::bind::digest;
use tether::respond::{self, Exchange};
use tether::sign::SigningKey;

const BODY_BYTES: usize = 1024;

struct Probe {
    ed25519: SigningKey,
    p256: SigningKey,
    exchange: Exchange,
    body: Vec<u8>,
    /// A response signature base's size: what the signature alone is timed over.
    message: Vec<u8>,
}

thread_local! {
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

fn probe<T>(f: impl FnOnce(&Probe) -> T) -> T {
    PROBE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let probe = cell.get_or_insert_with(|| {
            let ed25519 = SigningKey::from_private_jwk(
                "resp-ed25519",
                &json!({"kty": "OKP", "crv": "Ed25519",
                    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
                    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            )
            .expect("RFC 8037 A.1 key");
            let p256 = SigningKey::from_private_jwk(
                "resp-p256",
                &json!({"kty": "EC", "crv": "P-256",
                    "d": "ya-p2EW6dRZrXCFXZ7HWk05Qw9s26JsSe4piKxIPZyE",
                    "x": "YP7UuiVanTHJYet0xjVtaMBJuJI7Yfps5mliLmDyn7Y",
                    "y": "eQP-EAi4vJmkGunpVii8ZPLxsgwtfp9Rd6PClNRGIpk"}),
            )
            .expect("RFC 6979 A.2.5 key");
            let token = format!("eyJhbGciOiJFUzI1NiJ9.{}.sig", "a".repeat(400));
            let exchange = Exchange {
                method: "POST".into(),
                scheme: "https".into(),
                authority: "localhost".into(),
                path_and_query: "/resp-signed".into(),
                headers: vec![
                    (
                        b"authorization".to_vec(),
                        format!("Bearer {token}").into_bytes(),
                    ),
                    (b"content-type".to_vec(), b"application/json".to_vec()),
                ],
                signature_label: None,
                signature_hash: None,
                token_hash: tether::bind::jose::sha256_b64url(token.as_bytes()),
            };
            Probe {
                ed25519,
                p256,
                exchange,
                body: vec![b'r'; BODY_BYTES],
                message: vec![b'm'; 700],
            }
        });
        f(probe)
    })
}

fn repeat(n: u32, mut step: impl FnMut(u32) -> u32) -> u32 {
    (0..n).fold(0u32, |sum, i| sum.wrapping_add(step(i)))
}

fn sign_http(key: &SigningKey, p: &Probe, n: u32) -> u32 {
    repeat(n, |i| {
        let headers = respond::sign_http(
            key,
            &p.exchange,
            200,
            &p.body,
            1_800_000_000 + u64::from(i),
        )
        .expect("signs");
        headers.iter().map(|(_, v)| v.len() as u32).sum()
    })
}

/// The functions run.mjs calls (`#[no_mangle]` exports).
#[allow(unsafe_code)]
mod exports {
    use super::*;

    #[no_mangle]
    pub extern "C" fn sign_ed25519(n: u32) -> u32 {
        probe(|p| repeat(n, |_| u32::from(p.ed25519.sign(&p.message)[0])))
    }

    #[no_mangle]
    pub extern "C" fn sign_p256(n: u32) -> u32 {
        probe(|p| repeat(n, |_| u32::from(p.p256.sign(&p.message)[0])))
    }

    #[no_mangle]
    pub extern "C" fn content_digest_1k(n: u32) -> u32 {
        probe(|p| repeat(n, |_| digest::field_value(&p.body).len() as u32))
    }

    #[no_mangle]
    pub extern "C" fn sign_http_ed25519(n: u32) -> u32 {
        probe(|p| sign_http(&p.ed25519, p, n))
    }

    #[no_mangle]
    pub extern "C" fn sign_http_p256(n: u32) -> u32 {
        probe(|p| sign_http(&p.p256, p, n))
    }
}
