//! # Tether: sender-constrained access tokens for Envoy
//!
//! A proxy-wasm HTTP filter that accepts an access token only from the party it was issued
//! to. For every request, in this order (cheapest first):
//!
//! 1. [`policy`]: the path must be normalized; the first rule whose prefix matches decides
//!    the requirement (`none`, `bearer`, `mtls`, `bound`; `bound` when none matches).
//! 2. [`extract`]: the token comes from `Authorization: Bearer` only; a token in the URL,
//!    repeated `Authorization` headers or a malformed credential are refused.
//! 3. [`token`]: the JWT is verified against the configured issuers' keys ([`jwk`]): `alg`
//!    from the key, signature, `iss`, `aud`, `exp` (required), `nbf`, `iat`, lifetime.
//! 4. [`bind`]: the token's `cnf` binding is proved by the request: RFC 8705 certificate
//!    binding ([`bind::mtls`]).
//!
//! [`verdict`] runs the pipeline on plain inputs and the time; [`reject`] maps every
//! refusal to its response. Only `host` (built for wasm32) talks to Envoy.

#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![cfg_attr(target_arch = "wasm32", deny(unsafe_code))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod abi;
pub mod bind;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod extract;
pub mod jwk;
pub mod keyset;
pub mod lifecycle;
pub mod percent;
pub mod policy;
pub mod reject;
pub mod replay;
pub mod shared;
pub mod token;
pub mod verdict;

#[cfg(all(target_arch = "wasm32", feature = "glue"))]
mod host;
