//! # Tether: sender-constrained access tokens for Envoy
//!
//! A proxy-wasm HTTP filter that accepts an access token only from the party it was issued
//! to. For every request, in this order (cheapest first):
//!
//! 1. [`policy`]: the path must be normalized ([`percent`] decodes it one strict way); the
//!    first rule whose prefix matches decides the requirement (`none`, `bearer`, `mtls`,
//!    `bound`; `bound` when none matches).
//! 2. [`extract`]: the token comes from `Authorization: Bearer` only; a token in the URL (under
//!    any name a server reads as `access_token`), in a form body, repeated `Authorization`
//!    headers or a malformed credential are refused.
//! 3. [`token`]: the JWT is verified against the configured issuers' keys ([`jwk`], inline or
//!    fetched: [`keyset`]): `alg` from the key, signature ([`crypto`]: in the VM or by Envoy),
//!    `iss`, `aud`, `exp` (required), `nbf`, `iat`, lifetime; verified tokens are cached
//!    ([`cache`]).
//! 4. [`bind`]: the token's `cnf` binding is proved by the request: the certificate
//!    ([`bind::mtls`], RFC 8705) and the request signature ([`bind::jws`], detached JWS),
//!    recorded once against replay ([`replay`]).
//!
//! [`verdict`] runs that pipeline on plain inputs and the time, and says when it needs a key
//! set or the body. [`lifecycle`] is one held request's life (waiting for keys or a body,
//! trailers, deadlines). [`reject`] maps every refusal to its response. [`config`] parses and
//! validates the configuration. What VMs share ([`shared`]: the replay record, fetched key
//! sets) goes through one trait. Only `host` (built for wasm32, feature `glue`) talks to
//! Envoy, through [`abi`]'s byte formats and one module of host calls that never panic.

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
pub mod introspect;
pub mod jwe;
pub mod jwk;
pub mod keyset;
pub mod lifecycle;
pub mod percent;
pub mod policy;
pub mod reject;
pub mod replay;
pub mod respond;
pub mod sfv;
pub mod shared;
pub mod sign;
pub mod token;
pub mod verdict;

#[cfg(all(target_arch = "wasm32", feature = "glue"))]
mod host;
