//! Configuration: a strict parse of the filter's JSON, then validation into an immutable
//! [`Policy`]. Unknown fields are errors everywhere (except inside JWKs, which carry many
//! registered members): a misspelt field must never silently weaken a policy.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::bind::dpop::{self, Nonces};
use crate::bind::httpsig;
use crate::bind::identity::{Cidr, Identity};
use crate::bind::jws::{HmacKey, MIN_HMAC_KEY_BYTES};
use crate::bind::peer::{PeerSource, TrustedPeer};
use crate::cache::{DEFAULT_ENTRIES, MAX_ENTRIES};
use crate::introspect::{self, Introspection};
use crate::jwe::DecryptionKey;
use crate::jwk::{parse_jwks, Alg};
use crate::keyset::{JwksEndpoint, KeySource, DEFAULT_REFRESH_SECONDS, DEFAULT_TIMEOUT_MS};
use crate::policy::{Require, Rule, Rules, SignatureFormat};
use crate::respond::{self, ResponseSigning};
use crate::sfv;
use crate::sign::SigningKey;
use crate::token::{Issuer, TimeLimits};

/// Default for `signed_requests.header`.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-jws-signature";
/// Default for `signed_requests.max_age_seconds`.
pub const DEFAULT_SIGNATURE_MAX_AGE_SECONDS: u64 = 60;
/// Default for `signed_requests.body_timeout_ms`.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 10_000;
/// Bounds of `signed_requests.body_timeout_ms`.
pub const BODY_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=300_000;
/// Default for `signed_requests.max_body_bytes` (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The largest `signed_requests.max_body_bytes` accepted (16 MiB): the body of a signed
/// request is held in the proxy's memory until it is verified.
pub const MAX_BODY_BYTES_LIMIT: usize = 16 << 20;
/// Default for `clock_skew_seconds`.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 30;
/// Default for `max_token_lifetime_seconds`.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 900;
/// The largest clock skew accepted: more would make `exp` meaningless for short tokens.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;
/// The largest `max_token_lifetime_seconds` accepted (one day).
pub const MAX_TOKEN_LIFETIME_LIMIT_SECONDS: u64 = 86_400;
/// Default for `max_held_requests`.
pub const DEFAULT_MAX_HELD_REQUESTS: usize = 1024;
/// Bounds of `max_held_requests`.
pub const MAX_HELD_REQUESTS_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
/// The largest configuration read.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The most `source_cidrs` of one client.
pub const MAX_SOURCE_CIDRS: usize = 64;
/// The most `peer_certificate.trusted_peers`.
pub const MAX_TRUSTED_PEERS: usize = 16;
/// RFC 8705 §2.1.2's certificate identities of a client: it registers at most one.
const IDENTITY_METADATA: [&str; 5] = [
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
];

/// Request headers that `claims_to_headers` may not set: pseudo-headers, hop-by-hop and
/// framing headers, credentials, and headers an upstream trusts to describe the client or
/// the connection (a claim must never overwrite what the proxy itself vouches for).
const RESERVED_HEADERS: [&str; 19] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "dpop",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-real-ip",
    "x-request-id",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default = "default_clock_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "default_max_lifetime")]
    max_token_lifetime_seconds: u64,
    #[serde(default)]
    claims_to_headers: Vec<RawClaimHeader>,
    #[serde(default)]
    strip_authorization: bool,
    #[serde(default = "default_cache_entries")]
    token_cache_entries: usize,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    signed_requests: RawSignedRequests,
    #[serde(default = "default_max_held_requests")]
    max_held_requests: usize,
    #[serde(default)]
    form_body_tokens: FormBodyTokens,
    dpop: Option<RawDpop>,
    #[serde(default)]
    message_signatures: RawMessageSignatures,
    response_signing: Option<RawResponseSigning>,
    peer_certificate: Option<RawPeerCertificate>,
}

/// `peer_certificate`: where the client certificate is read from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerCertificate {
    source: RawPeerSource,
    trusted_peers: Option<Vec<RawTrustedPeer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawPeerSource {
    Connection,
    Xfcc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustedPeer {
    san_uri: Option<String>,
    san_dns: Option<String>,
}

/// `message_signatures`: which RFC 9421 signature of a request is checked, and what it
/// must cover.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMessageSignatures {
    tag: String,
    label: Option<String>,
    max_age_seconds: u64,
    required_components: Vec<String>,
}

impl Default for RawMessageSignatures {
    fn default() -> Self {
        RawMessageSignatures {
            tag: httpsig::DEFAULT_REQUEST_TAG.to_string(),
            label: None,
            max_age_seconds: DEFAULT_SIGNATURE_MAX_AGE_SECONDS,
            required_components: httpsig::FAPI_REQUIRED_COMPONENTS
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }
    }
}

/// `response_signing`: the keys Tether signs responses with and publishes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponseSigning {
    keys: Vec<RawResponseKey>,
    #[serde(default = "default_jwks_path")]
    jwks_path: String,
    #[serde(default = "default_jwks_max_age")]
    jwks_max_age_seconds: u64,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponseKey {
    kid: String,
    private_jwk_env: String,
}

fn default_jwks_path() -> String {
    respond::DEFAULT_JWKS_PATH.to_string()
}

fn default_jwks_max_age() -> u64 {
    respond::DEFAULT_JWKS_MAX_AGE_SECONDS
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// `rules[].signed_request`: a format, or `true` for `"jws"` (its meaning before RFC 9421
/// signatures), or `false` for none.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSignedRequest {
    Flag(bool),
    Format(SignatureFormat),
}

impl RawSignedRequest {
    fn format(self) -> Option<SignatureFormat> {
        match self {
            RawSignedRequest::Flag(true) => Some(SignatureFormat::Jws),
            RawSignedRequest::Flag(false) => None,
            RawSignedRequest::Format(format) => Some(format),
        }
    }
}

/// DPoP (RFC 9449) proofs: `dpop`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpop {
    algs: Option<Vec<String>>,
    #[serde(default = "default_dpop_max_age")]
    max_age_seconds: u64,
    nonce_secret: Option<RawSecret>,
    #[serde(default = "default_nonce_lifetime")]
    nonce_lifetime_seconds: u64,
}

fn default_dpop_max_age() -> u64 {
    dpop::DEFAULT_MAX_AGE_SECONDS
}

fn default_nonce_lifetime() -> u64 {
    dpop::DEFAULT_NONCE_LIFETIME_SECONDS
}

/// Bounds of `dpop.max_age_seconds`.
pub const DPOP_MAX_AGE_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Bounds of `dpop.nonce_lifetime_seconds`.
pub const NONCE_LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;

/// What to do with an `application/x-www-form-urlencoded` body on a route that examines a
/// token (RFC 6750 §2.2 lets a client send the token as its `access_token` parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormBodyTokens {
    /// Hold the body (up to `signed_requests.max_body_bytes`) and refuse the request if a
    /// parameter reads as `access_token`: an upstream that accepts body tokens would
    /// otherwise act on a token Tether never checked.
    #[default]
    Refuse,
    /// Forward form bodies unread. Only for upstreams that never read a token from a body,
    /// or where Envoy cannot hand the body to the filter (`allow_on_headers_stop_iteration`
    /// not settable).
    Ignore,
}

fn default_max_held_requests() -> usize {
    DEFAULT_MAX_HELD_REQUESTS
}

fn default_cache_entries() -> usize {
    DEFAULT_ENTRIES
}

fn default_clock_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECONDS
}

fn default_max_lifetime() -> u64 {
    DEFAULT_MAX_TOKEN_LIFETIME_SECONDS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    jwks: Option<Value>,
    remote_jwks: Option<RawJwksEndpoint>,
    introspection: Option<RawIntrospection>,
    decryption_keys: Option<Vec<RawDecryptionKey>>,
}

/// `issuers[].decryption_keys[]`: a private JWK its encrypted tokens are decrypted with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecryptionKey {
    kid: String,
    private_jwk: RawSecret,
}

/// `issuers[].introspection`: the issuer's RFC 7662 endpoint, through an Envoy cluster.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    cluster: String,
    authority: Option<String>,
    path: String,
    client_id: String,
    client_secret: RawSecret,
    #[serde(default = "default_introspection_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_introspection_cache_seconds")]
    cache_seconds: u64,
    #[serde(default = "default_negative_cache_seconds")]
    negative_cache_seconds: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    token_prefix: Option<String>,
    #[serde(default)]
    signed_response: bool,
}

fn default_introspection_timeout_ms() -> u64 {
    introspect::DEFAULT_TIMEOUT_MS
}

fn default_introspection_cache_seconds() -> u64 {
    introspect::DEFAULT_CACHE_SECONDS
}

fn default_negative_cache_seconds() -> u64 {
    introspect::DEFAULT_NEGATIVE_CACHE_SECONDS
}

fn default_max_in_flight() -> usize {
    introspect::DEFAULT_MAX_IN_FLIGHT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: String,
    require: Require,
    signed_request: Option<RawSignedRequest>,
    sign_response: Option<SignatureFormat>,
    #[serde(default)]
    dpop_nonce: bool,
    #[serde(default = "default_true")]
    case_sensitive: bool,
    #[serde(default)]
    require_registered_client: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    client_id: String,
    issuer: Option<String>,
    jwks: Option<Value>,
    remote_jwks: Option<RawJwksEndpoint>,
    hmac_keys: Option<Vec<RawHmacKey>>,
    tls_client_auth_subject_dn: Option<String>,
    tls_client_auth_san_dns: Option<String>,
    tls_client_auth_san_uri: Option<String>,
    tls_client_auth_san_ip: Option<String>,
    tls_client_auth_san_email: Option<String>,
    source_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHmacKey {
    kid: String,
    k: RawSecret,
}

/// A secret in the configuration: inline, or `{"env": "NAME"}`, read from an environment
/// variable of the VM. Envoy shows the plugin configuration in its admin `/config_dump`; a
/// secret given by name stays out of it (Envoy passes the variable to the VM with
/// `vm_config.environment_variables.host_env_keys`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSecret {
    Inline(String),
    Env(EnvReference),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvReference {
    env: String,
}

/// Reads an environment variable of the VM (`std::env::var` in the filter; tests pass their
/// own).
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

impl RawSecret {
    /// The secret's value; `at` names the field in errors (never the value).
    fn resolve(self, at: &str, environment: Environment<'_>) -> Result<String, String> {
        match self {
            RawSecret::Inline(value) => Ok(value),
            RawSecret::Env(EnvReference { env }) => {
                let valid_name = env
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid_name {
                    return Err(format!(
                        "{at}.env {env:?} is not an environment variable name"
                    ));
                }
                match environment(&env) {
                    Some(value) if !value.is_empty() => Ok(value),
                    _ => Err(format!(
                        "{at}: environment variable {env:?} is not set in the VM (pass it with vm_config.environment_variables.host_env_keys)"
                    )),
                }
            }
        }
    }
}

/// A key set fetched from an Envoy cluster.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwksEndpoint {
    cluster: String,
    authority: Option<String>,
    path: String,
    #[serde(default = "default_refresh_seconds")]
    refresh_seconds: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_refresh_seconds() -> u64 {
    DEFAULT_REFRESH_SECONDS
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl RawJwksEndpoint {
    fn compile(self, at: &str) -> Result<JwksEndpoint, String> {
        if self.cluster.is_empty() {
            return Err(format!("{at}.remote_jwks.cluster must not be empty"));
        }
        if !self.path.starts_with('/') {
            return Err(format!("{at}.remote_jwks.path must start with '/'"));
        }
        if !(10..=86_400).contains(&self.refresh_seconds) {
            return Err(format!(
                "{at}.remote_jwks.refresh_seconds must be between 10 and 86400"
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "{at}.remote_jwks.timeout_ms must be between 1 and 60000"
            ));
        }
        let authority = self.authority.unwrap_or_else(|| self.cluster.clone());
        Ok(JwksEndpoint {
            cluster: self.cluster,
            authority,
            path: self.path,
            refresh_seconds: self.refresh_seconds,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// Compiles an issuer's or client's key source: inline keys, or a fetched key set registered in
/// `jwks_endpoints` (the same source registered once).
fn key_source(
    at: &str,
    jwks: Option<&Value>,
    remote: Option<RawJwksEndpoint>,
    jwks_endpoints: &mut Vec<JwksEndpoint>,
    notes: &mut Vec<String>,
) -> Result<Option<KeySource>, String> {
    match (jwks, remote) {
        (Some(_), Some(_)) => Err(format!(
            "{at} needs exactly one of \"jwks\" and \"remote_jwks\""
        )),
        (None, None) => Ok(None),
        (None, Some(remote)) => {
            let remote = remote.compile(at)?;
            let index = match jwks_endpoints.iter().position(|r| *r == remote) {
                Some(index) => index,
                None => {
                    jwks_endpoints.push(remote);
                    jwks_endpoints.len() - 1
                }
            };
            Ok(Some(KeySource::Fetched(index)))
        }
        (Some(jwks), None) => {
            let set = parse_jwks(jwks).map_err(|e| format!("{at}.jwks: {e}"))?;
            notes.extend(set.skipped.iter().map(|note| format!("{at}.jwks {note}")));
            if set.keys.is_empty() {
                return Err(format!(
                    "{at}.jwks has no usable signature verification key"
                ));
            }
            Ok(Some(KeySource::Inline(set.keys)))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSignedRequests {
    header: String,
    max_age_seconds: u64,
    max_body_bytes: usize,
    body_timeout_ms: u64,
}

impl Default for RawSignedRequests {
    fn default() -> Self {
        RawSignedRequests {
            header: DEFAULT_SIGNATURE_HEADER.to_string(),
            max_age_seconds: DEFAULT_SIGNATURE_MAX_AGE_SECONDS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            body_timeout_ms: DEFAULT_BODY_TIMEOUT_MS,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimHeader {
    claim: String,
    header: String,
}

/// A registered client: the keys it signs requests with (public keys and/or HMAC secrets),
/// the certificate identity it registered (RFC 8705 §2.1.2) and the networks it connects
/// from.
#[derive(Debug)]
pub struct Client {
    pub client_id: String,
    /// The issuer whose tokens name this client: a `client_id` means nothing across issuers.
    pub issuer: String,
    pub keys: KeySource,
    pub hmac_keys: Vec<HmacKey>,
    /// One of `tls_client_auth_*`: its client certificate must have it.
    pub identity: Option<Identity>,
    /// `source_cidrs`: its connections come from one of these (empty: from anywhere).
    pub networks: Vec<Cidr>,
}

/// How request signatures are read and bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequests {
    /// The request header carrying the detached JWS (lowercase).
    pub header: String,
    pub max_age_seconds: u64,
    pub max_body_bytes: usize,
    /// How long the body of a request held for its signature may take, from the headers.
    pub body_timeout_ms: u64,
}

/// How RFC 9421 request signatures are read (`message_signatures`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSignatures {
    /// The signature checked: the one with `label` when configured, else the one `tag`ged.
    pub label: Option<String>,
    pub tag: String,
    pub max_age_seconds: u64,
    /// Components every signature must cover; `dpop` and `content-digest` only when the
    /// request has a `DPoP` header or a body (FAPI 2.0 HTTP Signatures).
    pub required_components: Vec<String>,
    /// The `Accept-Signature` value (RFC 9421 §5.1) sent with `request_signature_missing`.
    pub accept_signature: String,
}

impl MessageSignatures {
    pub fn select(&self) -> httpsig::Select<'_> {
        match &self.label {
            Some(label) => httpsig::Select::Label(label),
            None => httpsig::Select::Tag(&self.tag),
        }
    }
}

/// A claim copied into a request header for the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

/// The validated, immutable configuration the filter enforces.
#[derive(Debug)]
pub struct Policy {
    pub issuers: Vec<Issuer>,
    pub rules: Rules,
    pub limits: TimeLimits,
    pub claims_to_headers: Vec<ClaimHeader>,
    pub strip_authorization: bool,
    /// How many verified tokens each VM caches (0: none).
    pub token_cache_entries: usize,
    /// Clients that sign requests, by `client_id`.
    pub clients: Vec<Client>,
    /// Key sets fetched from `jwks_uri`s, referred to by index from issuers and clients.
    pub jwks_endpoints: Vec<JwksEndpoint>,
    pub signed_requests: SignedRequests,
    /// The most requests one worker VM holds at once (for a key set or a body).
    pub max_held_requests: usize,
    pub form_body_tokens: FormBodyTokens,
    /// How DPoP proofs are checked (defaults without a `dpop` block).
    pub dpop: dpop::Settings,
    /// How RFC 9421 request signatures are chosen and what they must cover.
    pub message_signatures: MessageSignatures,
    /// The keys responses are signed with, when any rule signs them.
    pub response_signing: Option<ResponseSigning>,
    /// Where the client certificate is read from (`peer_certificate`).
    pub peer_certificate: PeerSource,
    /// Whether some issuer has a key for `dir` JWEs: a token's `dir` does not say whose key
    /// it needs, so it is refused unless one exists (decided here, not per token).
    pub decrypts_dir: bool,
    /// Whether a request's header lines are kept whole ([`crate::verdict::Facts::lines`]):
    /// a rule verifies RFC 9421 request signatures or signs responses.
    pub reads_header_lines: bool,
    /// Things worth logging at start-up that are not errors (skipped JWKS keys).
    pub notes: Vec<String>,
}

impl Policy {
    /// The issuer whose introspection endpoint is asked about an opaque `token`: the only one
    /// that introspects (if `token` has its `token_prefix`, when it has one), else the one
    /// whose `token_prefix` `token` has.
    pub fn opaque_issuer(&self, token: &str) -> Option<usize> {
        self.issuers.iter().position(|issuer| {
            issuer.introspection.as_ref().is_some_and(|introspection| {
                introspection
                    .token_prefix
                    .as_deref()
                    .is_none_or(|prefix| token.starts_with(prefix))
            })
        })
    }

    /// Whether a request header named `name` must be removed because an upstream could take
    /// it for one of the `claims_to_headers` headers: the same name once case, `_` and `.`
    /// are folded to `-`, as CGI, WSGI, PHP and many frameworks fold them (`x_tether_sub`
    /// and `X.Tether.Sub` both read as `x-tether-sub`). Issue 7, finding 6.
    pub fn spoofs_claim_header(&self, name: &str) -> bool {
        self.claims_to_headers
            .iter()
            .any(|mapping| same_folded(name, &mapping.header))
    }
}

/// `a` and `b` are equal once ASCII case, `_`, `.` and `-` are folded together.
fn same_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' | b'.' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// A configuration that cannot be enforced. The message names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Policy {
    /// Parses and validates the filter configuration; `{"env": ...}` secrets come from the
    /// process (the VM's) environment.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, ConfigError> {
        Policy::from_json_with(bytes, &|name| std::env::var(name).ok())
    }

    /// Parses and validates the filter configuration, reading `{"env": ...}` secrets from
    /// `environment`.
    pub fn from_json_with(
        bytes: &[u8],
        environment: Environment<'_>,
    ) -> Result<Policy, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError(format!(
                "configuration is larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        // The error names the JSON path of the field (`rules[3].require: unknown variant ...`).
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json)
            .map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        json.end()
            .map_err(|e| ConfigError(format!("invalid configuration: {e}")))?;
        Policy::compile(raw, environment).map_err(ConfigError)
    }

    fn compile(raw: RawConfig, environment: Environment<'_>) -> Result<Policy, String> {
        if raw.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(format!(
                "clock_skew_seconds must be at most {MAX_CLOCK_SKEW_SECONDS}"
            ));
        }
        if raw.max_token_lifetime_seconds == 0
            || raw.max_token_lifetime_seconds > MAX_TOKEN_LIFETIME_LIMIT_SECONDS
        {
            return Err(format!("max_token_lifetime_seconds must be between 1 and {MAX_TOKEN_LIFETIME_LIMIT_SECONDS}"));
        }
        if !MAX_HELD_REQUESTS_RANGE.contains(&raw.max_held_requests) {
            return Err(format!(
                "max_held_requests must be between {} and {}",
                MAX_HELD_REQUESTS_RANGE.start(),
                MAX_HELD_REQUESTS_RANGE.end()
            ));
        }
        if raw.token_cache_entries > MAX_ENTRIES {
            return Err(format!("token_cache_entries must be at most {MAX_ENTRIES}"));
        }
        let mut notes = Vec::new();
        let mut jwks_endpoints = Vec::new();
        let issuers = compile_issuers(raw.issuers, &mut jwks_endpoints, &mut notes, environment)?;
        let rules = Rules::new(
            raw.rules
                .into_iter()
                .map(|r| Rule {
                    prefix: r.prefix,
                    require: r.require,
                    signed_request: r.signed_request.and_then(RawSignedRequest::format),
                    sign_response: r.sign_response,
                    dpop_nonce: r.dpop_nonce,
                    require_registered_client: r.require_registered_client,
                    case_sensitive: r.case_sensitive,
                })
                .collect(),
        )?;
        let clients = compile_clients(
            raw.clients,
            &issuers,
            &mut jwks_endpoints,
            &mut notes,
            environment,
        )?;
        let claims_to_headers = compile_claim_headers(raw.claims_to_headers)?;
        let decrypts_dir = issuers.iter().any(|issuer| {
            issuer
                .decryption_keys
                .iter()
                .any(DecryptionKey::is_symmetric)
        });
        let peer_certificate = raw
            .peer_certificate
            .map(compile_peer_certificate)
            .transpose()?
            .unwrap_or_default();
        let signed_requests = compile_signed_requests(raw.signed_requests, &claims_to_headers)?;
        let dpop = compile_dpop(raw.dpop, environment)?;
        let message_signatures = compile_message_signatures(raw.message_signatures)?;
        let response_signing = raw
            .response_signing
            .map(|r| compile_response_signing(r, environment))
            .transpose()?;
        let reads_header_lines = rules.iter().any(|rule| {
            rule.signed_request == Some(SignatureFormat::HttpMessageSignature)
                || rule.sign_response.is_some()
        });
        if response_signing.is_none() {
            if let Some(i) = rules.iter().position(|rule| rule.sign_response.is_some()) {
                return Err(format!(
                    "rules[{i}].sign_response needs response_signing: responses are signed with its keys"
                ));
            }
        }
        if dpop.nonces.is_none() {
            if let Some(i) = rules.iter().position(|rule| rule.dpop_nonce) {
                return Err(format!(
                    "rules[{i}].dpop_nonce needs dpop.nonce_secret: nonces are made with it"
                ));
            }
        }
        Ok(Policy {
            issuers,
            rules,
            limits: TimeLimits {
                clock_skew_seconds: raw.clock_skew_seconds,
                max_token_lifetime_seconds: raw.max_token_lifetime_seconds,
            },
            claims_to_headers,
            strip_authorization: raw.strip_authorization,
            token_cache_entries: raw.token_cache_entries,
            clients,
            jwks_endpoints,
            signed_requests,
            max_held_requests: raw.max_held_requests,
            form_body_tokens: raw.form_body_tokens,
            dpop,
            message_signatures,
            response_signing,
            peer_certificate,
            decrypts_dir,
            reads_header_lines,
            notes,
        })
    }
}

fn compile_issuers(
    raw: Vec<RawIssuer>,
    jwks_endpoints: &mut Vec<JwksEndpoint>,
    notes: &mut Vec<String>,
    environment: Environment<'_>,
) -> Result<Vec<Issuer>, String> {
    if raw.is_empty() {
        return Err("issuers must name at least one issuer".into());
    }
    let mut issuers: Vec<Issuer> = Vec::with_capacity(raw.len());
    for (i, issuer) in raw.into_iter().enumerate() {
        let at = format!("issuers[{i}]");
        if issuer.issuer.is_empty() {
            return Err(format!("{at}.issuer must not be empty"));
        }
        if issuers.iter().any(|known| known.issuer == issuer.issuer) {
            return Err(format!(
                "{at}.issuer {:?} is configured twice",
                issuer.issuer
            ));
        }
        // A token is accepted only by the audiences it was issued for (RFC 9068 §4).
        if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
            return Err(format!(
                "{at}.audiences must list at least one non-empty audience"
            ));
        }
        let keys = key_source(
            &at,
            issuer.jwks.as_ref(),
            issuer.remote_jwks,
            jwks_endpoints,
            notes,
        )?;
        let introspection = issuer
            .introspection
            .map(|raw| compile_introspection(&at, raw, environment))
            .transpose()?;
        let decryption_keys = match issuer.decryption_keys {
            None => Vec::new(),
            Some(raw) => compile_decryption_keys(&at, raw, environment)?,
        };
        if !decryption_keys.is_empty() && keys.is_none() {
            return Err(format!(
                "{at}.decryption_keys needs the issuer's key set (\"jwks\" or \"remote_jwks\"): an encrypted token holds a JWT signed by the issuer, verified with it"
            ));
        }
        match (&keys, &introspection) {
            (None, None) => {
                return Err(format!(
                    "{at} needs \"jwks\", \"remote_jwks\" or \"introspection\" (or a key set and introspection)"
                ))
            }
            (None, Some(i)) if i.signed_response => {
                return Err(format!(
                    "{at}.introspection.signed_response needs the issuer's key set (\"jwks\" or \"remote_jwks\"): RFC 9701 answers are signed with it"
                ))
            }
            _ => {}
        }
        issuers.push(Issuer {
            issuer: issuer.issuer,
            audiences: issuer.audiences.into_iter().collect(),
            keys,
            introspection,
            decryption_keys,
        });
    }
    // Opaque tokens carry no issuer: with several introspecting issuers, a prefix of the
    // token must say whose it is, and no token may be two issuers'.
    let prefixes: Vec<(usize, Option<&str>)> = issuers
        .iter()
        .enumerate()
        .filter_map(|(i, issuer)| {
            let introspection = issuer.introspection.as_ref()?;
            Some((i, introspection.token_prefix.as_deref()))
        })
        .collect();
    if prefixes.len() > 1 {
        for &(i, prefix) in &prefixes {
            let Some(prefix) = prefix else {
                return Err(format!(
                    "issuers[{i}].introspection.token_prefix is required when several issuers introspect: an opaque token names no issuer"
                ));
            };
            if let Some(&(j, _)) = prefixes
                .iter()
                .find(|&&(j, other)| j != i && other.is_some_and(|other| other.starts_with(prefix)))
            {
                return Err(format!(
                    "issuers[{i}].introspection.token_prefix is a prefix of issuers[{j}]'s: a token would be both issuers'"
                ));
            }
        }
    }
    Ok(issuers)
}

/// The most `decryption_keys` of one issuer.
pub const MAX_DECRYPTION_KEYS: usize = 8;

fn compile_decryption_keys(
    at: &str,
    raw: Vec<RawDecryptionKey>,
    environment: Environment<'_>,
) -> Result<Vec<DecryptionKey>, String> {
    if raw.is_empty() || raw.len() > MAX_DECRYPTION_KEYS {
        return Err(format!(
            "{at}.decryption_keys must list 1 to {MAX_DECRYPTION_KEYS} keys"
        ));
    }
    let mut keys: Vec<DecryptionKey> = Vec::with_capacity(raw.len());
    for (j, key) in raw.into_iter().enumerate() {
        let at = format!("{at}.decryption_keys[{j}]");
        if key.kid.is_empty() || keys.iter().any(|k| k.kid == key.kid) {
            return Err(format!("{at}.kid must be non-empty and unique"));
        }
        let text = key
            .private_jwk
            .resolve(&format!("{at}.private_jwk"), environment)?;
        // Never quote the key: the error names the field only.
        let jwk: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{at}.private_jwk is not a JSON JWK"))?;
        keys.push(
            DecryptionKey::from_jwk(key.kid, &jwk).map_err(|e| format!("{at}.private_jwk: {e}"))?,
        );
    }
    Ok(keys)
}

fn compile_introspection(
    at: &str,
    raw: RawIntrospection,
    environment: Environment<'_>,
) -> Result<Introspection, String> {
    let at = format!("{at}.introspection");
    if raw.cluster.is_empty() {
        return Err(format!("{at}.cluster must not be empty"));
    }
    if !raw.path.starts_with('/') {
        return Err(format!("{at}.path must start with '/'"));
    }
    if raw.client_id.is_empty() {
        return Err(format!("{at}.client_id must not be empty"));
    }
    let client_secret = raw
        .client_secret
        .resolve(&format!("{at}.client_secret"), environment)?;
    if client_secret.is_empty() {
        return Err(format!("{at}.client_secret must not be empty"));
    }
    if !(1..=60_000).contains(&raw.timeout_ms) {
        return Err(format!("{at}.timeout_ms must be between 1 and 60000"));
    }
    // At least a second: the requests that wait on an answer read it from the cache.
    if !(1..=3600).contains(&raw.cache_seconds) {
        return Err(format!("{at}.cache_seconds must be between 1 and 3600"));
    }
    if !(1..=300).contains(&raw.negative_cache_seconds) {
        return Err(format!(
            "{at}.negative_cache_seconds must be between 1 and 300"
        ));
    }
    if !(1..=4096).contains(&raw.max_in_flight) {
        return Err(format!("{at}.max_in_flight must be between 1 and 4096"));
    }
    if raw.token_prefix.as_deref() == Some("") {
        return Err(format!("{at}.token_prefix must not be empty"));
    }
    let authority = raw.authority.unwrap_or_else(|| raw.cluster.clone());
    Ok(Introspection::new(
        raw.cluster,
        authority,
        raw.path,
        raw.client_id,
        client_secret,
        raw.timeout_ms,
        raw.cache_seconds,
        raw.negative_cache_seconds,
        raw.max_in_flight,
        raw.token_prefix,
        raw.signed_response,
    ))
}

fn compile_clients(
    raw: Vec<RawClient>,
    issuers: &[Issuer],
    jwks_endpoints: &mut Vec<JwksEndpoint>,
    notes: &mut Vec<String>,
    environment: Environment<'_>,
) -> Result<Vec<Client>, String> {
    let mut clients: Vec<Client> = Vec::with_capacity(raw.len());
    for (i, client) in raw.into_iter().enumerate() {
        let at = format!("clients[{i}]");
        if client.client_id.is_empty() {
            return Err(format!("{at}.client_id must not be empty"));
        }
        // A client is the client of one issuer: with several issuers, any of them could
        // issue a token naming this client_id, and it would select this client's keys.
        let issuer = match (client.issuer, issuers) {
            (Some(issuer), _) if issuers.iter().any(|known| known.issuer == issuer) => issuer,
            (Some(issuer), _) => {
                return Err(format!(
                    "{at}.issuer {issuer:?} is not one of the configured issuers"
                ))
            }
            (None, [only]) => only.issuer.clone(),
            (None, _) => {
                return Err(format!(
                    "{at}.issuer is required when several issuers are configured"
                ))
            }
        };
        if clients
            .iter()
            .any(|c| c.client_id == client.client_id && c.issuer == issuer)
        {
            return Err(format!(
                "{at}.client_id {:?} is configured twice for issuer {issuer:?}",
                client.client_id
            ));
        }
        let keys = key_source(
            &at,
            client.jwks.as_ref(),
            client.remote_jwks,
            jwks_endpoints,
            notes,
        )?;
        let mut hmac_keys: Vec<HmacKey> = Vec::new();
        for (j, key) in client.hmac_keys.unwrap_or_default().into_iter().enumerate() {
            let k = key
                .k
                .resolve(&format!("{at}.hmac_keys[{j}].k"), environment)?;
            let secret = URL_SAFE_NO_PAD
                .decode(k.trim())
                .map_err(|_| format!("{at}.hmac_keys[{j}].k is not unpadded base64url"))?;
            // RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
            if secret.len() < MIN_HMAC_KEY_BYTES {
                return Err(format!(
                    "{at}.hmac_keys[{j}].k must be at least {MIN_HMAC_KEY_BYTES} bytes"
                ));
            }
            if key.kid.is_empty() || hmac_keys.iter().any(|k| k.kid == key.kid) {
                return Err(format!(
                    "{at}.hmac_keys[{j}].kid must be non-empty and unique"
                ));
            }
            hmac_keys.push(HmacKey {
                kid: key.kid,
                secret,
            });
        }
        let identities = [
            client.tls_client_auth_subject_dn,
            client.tls_client_auth_san_dns,
            client.tls_client_auth_san_uri,
            client.tls_client_auth_san_ip,
            client.tls_client_auth_san_email,
        ];
        let mut identity = None;
        for (name, value) in IDENTITY_METADATA.iter().zip(identities) {
            let Some(value) = value else { continue };
            if identity.is_some() {
                return Err(format!(
                    "{at} registers more than one of {}: RFC 8705 §2.1.2 allows exactly one",
                    IDENTITY_METADATA.join(", ")
                ));
            }
            identity = Some(
                Identity::from_metadata(name, &value).map_err(|e| format!("{at}.{name}: {e}"))?,
            );
        }
        let networks = match client.source_cidrs {
            None => Vec::new(),
            Some(blocks) if blocks.is_empty() || blocks.len() > MAX_SOURCE_CIDRS => {
                return Err(format!(
                    "{at}.source_cidrs must list 1 to {MAX_SOURCE_CIDRS} CIDR blocks"
                ))
            }
            Some(blocks) => blocks
                .iter()
                .enumerate()
                .map(|(j, block)| {
                    Cidr::parse(block).map_err(|e| format!("{at}.source_cidrs[{j}]: {e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        if keys.is_none() && hmac_keys.is_empty() && identity.is_none() && networks.is_empty() {
            return Err(format!(
                "{at} registers nothing: it needs \"jwks\", \"remote_jwks\", \"hmac_keys\", a tls_client_auth_* identity or \"source_cidrs\""
            ));
        }
        clients.push(Client {
            client_id: client.client_id,
            issuer,
            keys: keys.unwrap_or(KeySource::Inline(Vec::new())),
            hmac_keys,
            identity,
            networks,
        });
    }
    Ok(clients)
}

fn compile_peer_certificate(raw: RawPeerCertificate) -> Result<PeerSource, String> {
    let peers = match (raw.source, raw.trusted_peers) {
        (RawPeerSource::Connection, None) => return Ok(PeerSource::Connection),
        (RawPeerSource::Connection, Some(_)) => {
            return Err(
                "peer_certificate.trusted_peers goes with source \"xfcc\" only: the connection's certificate trusts no header".into(),
            )
        }
        (RawPeerSource::Xfcc, Some(peers))
            if !peers.is_empty() && peers.len() <= MAX_TRUSTED_PEERS =>
        {
            peers
        }
        (RawPeerSource::Xfcc, _) => {
            return Err(format!(
                "peer_certificate.trusted_peers must list 1 to {MAX_TRUSTED_PEERS} peers with source \"xfcc\": XFCC is trusted from those only"
            ))
        }
    };
    let mut trusted_peers = Vec::with_capacity(peers.len());
    for (i, peer) in peers.into_iter().enumerate() {
        trusted_peers.push(match (peer.san_uri, peer.san_dns) {
            (Some(uri), None) if !uri.is_empty() => TrustedPeer::SanUri(uri),
            (None, Some(dns)) if !dns.is_empty() => TrustedPeer::SanDns(dns),
            _ => {
                return Err(format!(
                    "peer_certificate.trusted_peers[{i}] needs exactly one non-empty \"san_uri\" or \"san_dns\""
                ))
            }
        });
    }
    Ok(PeerSource::Xfcc { trusted_peers })
}

fn compile_signed_requests(
    raw: RawSignedRequests,
    claim_headers: &[ClaimHeader],
) -> Result<SignedRequests, String> {
    let header = raw.header.to_ascii_lowercase();
    let is_token = !header.is_empty() && header.bytes().all(sfv::is_tchar);
    // Envoy's own headers, and the claim headers Tether removes from every request (also
    // under a look-alike name), cannot carry a client's signature.
    let taken = RESERVED_HEADERS.contains(&header.as_str())
        || header.starts_with("x-envoy-")
        || claim_headers
            .iter()
            .any(|c| same_folded(&c.header, &header));
    if !is_token || taken {
        return Err(format!(
            "signed_requests.header {:?} is not a usable header name",
            raw.header
        ));
    }
    if raw.max_age_seconds == 0 || raw.max_age_seconds > 3600 {
        return Err("signed_requests.max_age_seconds must be between 1 and 3600".into());
    }
    if raw.max_body_bytes > MAX_BODY_BYTES_LIMIT {
        return Err(format!(
            "signed_requests.max_body_bytes must be at most {MAX_BODY_BYTES_LIMIT}"
        ));
    }
    if !BODY_TIMEOUT_MS_RANGE.contains(&raw.body_timeout_ms) {
        return Err(format!(
            "signed_requests.body_timeout_ms must be between {} and {}",
            BODY_TIMEOUT_MS_RANGE.start(),
            BODY_TIMEOUT_MS_RANGE.end()
        ));
    }
    Ok(SignedRequests {
        header,
        max_age_seconds: raw.max_age_seconds,
        max_body_bytes: raw.max_body_bytes,
        body_timeout_ms: raw.body_timeout_ms,
    })
}

fn compile_message_signatures(raw: RawMessageSignatures) -> Result<MessageSignatures, String> {
    if !(1..=3600).contains(&raw.max_age_seconds) {
        return Err("message_signatures.max_age_seconds must be between 1 and 3600".into());
    }
    if raw.tag.is_empty()
        || raw.tag.len() > 256
        || !raw.tag.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err("message_signatures.tag must be 1 to 256 printable ASCII characters".into());
    }
    if let Some(label) = &raw.label {
        if !sfv::is_key(label) {
            return Err(format!(
                "message_signatures.label {label:?} is not a structured-field key (RFC 9651 §3.1.2)"
            ));
        }
    }
    if raw.required_components.is_empty() {
        return Err("message_signatures.required_components must name at least one component (a signature covering nothing would authorize any request of its client)".into());
    }
    if raw.required_components.len() > httpsig::MAX_COMPONENTS {
        return Err(format!(
            "message_signatures.required_components lists more than {} components",
            httpsig::MAX_COMPONENTS
        ));
    }
    for (i, component) in raw.required_components.iter().enumerate() {
        if !httpsig::is_request_component_name(component) {
            return Err(format!(
                "message_signatures.required_components[{i}] {component:?} is not a request component Tether can require (a lowercase field name, or @method, @target-uri, @authority, @scheme, @request-target, @path or @query)"
            ));
        }
        if raw.required_components[..i].contains(component) {
            return Err(format!(
                "message_signatures.required_components[{i}] {component:?} is listed twice"
            ));
        }
    }
    let accept_signature = httpsig::accept_signature(
        raw.label.as_deref().unwrap_or("sig1"),
        &raw.required_components,
        &raw.tag,
    );
    Ok(MessageSignatures {
        label: raw.label,
        tag: raw.tag,
        max_age_seconds: raw.max_age_seconds,
        required_components: raw.required_components,
        accept_signature,
    })
}

/// The most response signing keys (one signs, the others are published for rotation).
pub const MAX_RESPONSE_KEYS: usize = 8;

fn compile_response_signing(
    raw: RawResponseSigning,
    environment: Environment<'_>,
) -> Result<ResponseSigning, String> {
    if raw.keys.is_empty() || raw.keys.len() > MAX_RESPONSE_KEYS {
        return Err(format!(
            "response_signing.keys must list 1 to {MAX_RESPONSE_KEYS} keys (the first signs)"
        ));
    }
    let mut keys: Vec<SigningKey> = Vec::with_capacity(raw.keys.len());
    for (i, key) in raw.keys.into_iter().enumerate() {
        let at = format!("response_signing.keys[{i}]");
        if key.kid.is_empty() || key.kid.len() > 256 || keys.iter().any(|k| k.kid() == key.kid) {
            return Err(format!(
                "{at}.kid must be non-empty, at most 256 bytes and unique"
            ));
        }
        let text = RawSecret::Env(EnvReference {
            env: key.private_jwk_env,
        })
        .resolve(&format!("{at}.private_jwk_env"), environment)?;
        // Never the value in an error: it is a private key.
        let jwk: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{at}: the environment variable does not hold a JSON object"))?;
        let signing =
            SigningKey::from_private_jwk(&key.kid, &jwk).map_err(|e| format!("{at}: {e}"))?;
        keys.push(signing);
    }
    if !raw.jwks_path.starts_with('/')
        || raw.jwks_path.len() > 1024
        || raw.jwks_path.contains(['?', '#'])
        || !crate::policy::is_normalized(&raw.jwks_path)
    {
        return Err(format!(
            "response_signing.jwks_path {:?} must be a normalized path starting with '/', without a query",
            raw.jwks_path
        ));
    }
    if !(0..=86_400).contains(&raw.jwks_max_age_seconds) {
        return Err("response_signing.jwks_max_age_seconds must be at most 86400".into());
    }
    if raw.max_body_bytes > MAX_BODY_BYTES_LIMIT {
        return Err(format!(
            "response_signing.max_body_bytes must be at most {MAX_BODY_BYTES_LIMIT}"
        ));
    }
    Ok(ResponseSigning::new(
        keys,
        raw.jwks_path,
        raw.jwks_max_age_seconds,
        raw.max_body_bytes,
    ))
}

fn compile_dpop(
    raw: Option<RawDpop>,
    environment: Environment<'_>,
) -> Result<dpop::Settings, String> {
    let Some(raw) = raw else {
        return Ok(dpop::Settings::default());
    };
    let algs = match raw.algs {
        None => dpop::DEFAULT_ALGS.to_vec(),
        Some(names) => {
            let mut algs: Vec<Alg> = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                // `Alg` has no `none` and no MAC: RFC 9449 §4.3 check 5 wants an asymmetric
                // algorithm, so that only the key's holder can make a proof.
                let alg = Alg::from_name(name).ok_or_else(|| {
                    format!("dpop.algs[{i}] {name:?} is not an asymmetric JWS algorithm Tether verifies")
                })?;
                if algs.contains(&alg) {
                    return Err(format!("dpop.algs[{i}] {name:?} is listed twice"));
                }
                algs.push(alg);
            }
            if algs.is_empty() {
                return Err("dpop.algs must name at least one algorithm".into());
            }
            algs
        }
    };
    if !DPOP_MAX_AGE_RANGE.contains(&raw.max_age_seconds) {
        return Err(format!(
            "dpop.max_age_seconds must be between {} and {}",
            DPOP_MAX_AGE_RANGE.start(),
            DPOP_MAX_AGE_RANGE.end()
        ));
    }
    if !NONCE_LIFETIME_RANGE.contains(&raw.nonce_lifetime_seconds) {
        return Err(format!(
            "dpop.nonce_lifetime_seconds must be between {} and {}",
            NONCE_LIFETIME_RANGE.start(),
            NONCE_LIFETIME_RANGE.end()
        ));
    }
    let nonces = match raw.nonce_secret {
        None => None,
        Some(secret) => {
            let secret = secret.resolve("dpop.nonce_secret", environment)?;
            let secret = URL_SAFE_NO_PAD
                .decode(secret.trim())
                .map_err(|_| "dpop.nonce_secret is not unpadded base64url".to_string())?;
            if secret.len() < dpop::MIN_NONCE_SECRET_BYTES {
                return Err(format!(
                    "dpop.nonce_secret must be at least {} bytes",
                    dpop::MIN_NONCE_SECRET_BYTES
                ));
            }
            Some(Nonces::new(secret, raw.nonce_lifetime_seconds))
        }
    };
    Ok(dpop::Settings::new(algs, raw.max_age_seconds, nonces, true))
}

fn compile_claim_headers(raw: Vec<RawClaimHeader>) -> Result<Vec<ClaimHeader>, String> {
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let header = entry.header.to_ascii_lowercase();
            let is_token = !header.is_empty() && header.bytes().all(sfv::is_tchar);
            if !is_token {
                return Err(format!(
                    "claims_to_headers[{i}].header {:?} is not a valid header name",
                    entry.header
                ));
            }
            if RESERVED_HEADERS.contains(&header.as_str()) || header.starts_with("x-envoy-") {
                return Err(format!(
                    "claims_to_headers[{i}].header {header:?} is reserved"
                ));
            }
            if entry.claim.is_empty() {
                return Err(format!("claims_to_headers[{i}].claim must not be empty"));
            }
            if !seen.insert(header.clone()) {
                return Err(format!(
                    "claims_to_headers[{i}].header {header:?} is set twice"
                ));
            }
            Ok(ClaimHeader {
                claim: entry.claim,
                header,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwks() -> Value {
        // RFC 7515 Appendix A.3 public key.
        json!({"keys": [{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})
    }

    fn contract() -> Value {
        json!({
            "issuers": [{"issuer": "https://idp.example.com", "audiences": ["https://orders.mesh.internal"], "jwks": jwks()}],
            "rules": [
                {"prefix": "/healthz", "require": "none"},
                {"prefix": "/legacy", "require": "bearer"},
                {"prefix": "/orders", "require": "mtls"},
                {"prefix": "/", "require": "bound"}
            ],
            "clock_skew_seconds": 30,
            "max_token_lifetime_seconds": 900,
            "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}],
            "strip_authorization": false
        })
    }

    fn parse(v: &Value) -> Result<Policy, ConfigError> {
        Policy::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn contract_example_parses() {
        let policy = parse(&contract()).unwrap();
        assert_eq!(policy.issuers.len(), 1);
        assert_eq!(policy.rules.requirement("/orders/1").require, Require::Mtls);
        assert_eq!(policy.claims_to_headers[0].header, "x-tether-sub");
    }

    #[test]
    fn defaults_apply_when_fields_are_absent() {
        let policy = parse(&json!({"issuers": contract()["issuers"]})).unwrap();
        assert_eq!(policy.limits.clock_skew_seconds, 30);
        assert_eq!(policy.limits.max_token_lifetime_seconds, 900);
        assert!(!policy.strip_authorization);
        assert_eq!(policy.token_cache_entries, 4096);
        assert_eq!(policy.max_held_requests, 1024);
        assert_eq!(policy.form_body_tokens, FormBodyTokens::Refuse);
        assert!(policy.claims_to_headers.is_empty());
        assert_eq!(
            policy.rules.requirement("/anything").require,
            Require::Bound
        );
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let mut top = contract();
        top["strip_authorisation"] = json!(true);
        assert!(parse(&top).unwrap_err().0.contains("strip_authorisation"));
        let mut rule = contract();
        rule["rules"][0]["requires"] = json!("none");
        assert!(parse(&rule).unwrap_err().0.contains("requires"));
        let mut issuer = contract();
        issuer["issuers"][0]["audience"] = json!("x");
        assert!(parse(&issuer).unwrap_err().0.contains("audience"));
        let mut mapping = contract();
        mapping["claims_to_headers"][0]["name"] = json!("x");
        assert!(parse(&mapping).unwrap_err().0.contains("name"));
    }

    #[test]
    fn unknown_require_value_is_an_error_naming_its_path() {
        let mut c = contract();
        c["rules"][2]["require"] = json!("optional");
        let err = parse(&c).unwrap_err().0;
        assert!(
            err.contains("rules[2].require") && err.contains("optional"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_an_error_naming_its_path() {
        let mut c = contract();
        c["clock_skew_seconds"] = json!("30");
        let err = parse(&c).unwrap_err().0;
        assert!(err.contains("clock_skew_seconds"), "{err}");
    }

    #[test]
    fn trailing_data_is_an_error() {
        assert!(Policy::from_json(format!("{} {{}}", contract()).as_bytes()).is_err());
    }

    #[test]
    fn issuer_needs_audiences_and_usable_keys() {
        let mut c = contract();
        c["issuers"][0]["audiences"] = json!([]);
        assert!(parse(&c).unwrap_err().0.contains("audiences"));
        let mut c = contract();
        c["issuers"][0]["jwks"] = json!({"keys": []});
        assert!(parse(&c).unwrap_err().0.contains("no usable"));
        let mut c = contract();
        c["issuers"] = json!([]);
        assert!(parse(&c).is_err());
        let mut c = contract();
        c["issuers"][0]["jwks"]["keys"][0]["d"] =
            json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI");
        assert!(parse(&c).unwrap_err().0.contains("private"));
    }

    #[test]
    fn duplicate_issuers_are_errors() {
        let mut c = contract();
        let first = c["issuers"][0].clone();
        c["issuers"] = json!([first.clone(), first]);
        assert!(parse(&c).unwrap_err().0.contains("twice"));
    }

    #[test]
    fn limits_are_bounded() {
        let mut c = contract();
        c["clock_skew_seconds"] = json!(3600);
        assert!(parse(&c).unwrap_err().0.contains("clock_skew_seconds"));
        let mut c = contract();
        c["max_token_lifetime_seconds"] = json!(0);
        assert!(parse(&c)
            .unwrap_err()
            .0
            .contains("max_token_lifetime_seconds"));
        let mut c = contract();
        c["clock_skew_seconds"] = json!(-1);
        assert!(parse(&c).is_err());
    }

    #[test]
    fn max_held_requests_is_bounded() {
        for (n, ok) in [(0, false), (1, true), (65_536, true), (65_537, false)] {
            let mut c = contract();
            c["max_held_requests"] = json!(n);
            assert_eq!(parse(&c).is_ok(), ok, "{n}");
        }
    }

    #[test]
    fn token_cache_entries_can_be_zero_and_is_bounded() {
        let mut c = contract();
        c["token_cache_entries"] = json!(0);
        assert_eq!(parse(&c).unwrap().token_cache_entries, 0);
        c["token_cache_entries"] = json!(10_000_000);
        assert!(parse(&c).unwrap_err().0.contains("token_cache_entries"));
        c["token_cache_entries"] = json!(-1);
        assert!(parse(&c).unwrap_err().0.contains("token_cache_entries"));
    }

    #[test]
    fn signed_requests_defaults_and_clients_parse() {
        let policy = parse(&contract()).unwrap();
        assert_eq!(policy.signed_requests.header, "x-jws-signature");
        assert_eq!(policy.signed_requests.max_age_seconds, 60);
        assert_eq!(policy.signed_requests.max_body_bytes, 1_048_576);
        assert_eq!(policy.signed_requests.body_timeout_ms, 10_000);
        let mut c = contract();
        c["clients"] = json!([
            {"client_id": "alice-app", "jwks": jwks()},
            {"client_id": "legacy-erp", "hmac_keys": [{"kid": "k1", "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}
        ]);
        c["signed_requests"] = json!({"header": "X-JWS-Signature", "max_age_seconds": 30});
        c["rules"][2]["signed_request"] = json!(true);
        let policy = parse(&c).unwrap();
        assert_eq!(policy.clients.len(), 2);
        assert_eq!(policy.clients[1].hmac_keys[0].secret.len(), 64);
        assert_eq!(policy.signed_requests.header, "x-jws-signature");
        assert_eq!(policy.signed_requests.max_body_bytes, 1_048_576);
        assert_eq!(
            policy.rules.requirement("/orders").signed_request,
            Some(SignatureFormat::Jws)
        );
    }

    /// Issue 7 ("client lookup ignores the issuer"): a client names its issuer, required
    /// when several are trusted.
    #[test]
    fn a_client_belongs_to_one_issuer() {
        let mut c = contract();
        let second =
            json!({"issuer": "https://other-idp.example.com", "audiences": ["a"], "jwks": jwks()});
        c["issuers"].as_array_mut().unwrap().push(second);
        c["clients"] = json!([{"client_id": "alice-app", "jwks": jwks()}]);
        let err = parse(&c).unwrap_err().0;
        assert!(err.contains("clients[0].issuer is required"), "{err}");
        c["clients"][0]["issuer"] = json!("https://unknown.example.com");
        assert!(parse(&c)
            .unwrap_err()
            .0
            .contains("not one of the configured issuers"));
        c["clients"] = json!([
            {"client_id": "alice-app", "issuer": "https://idp.example.com", "jwks": jwks()},
            {"client_id": "alice-app", "issuer": "https://other-idp.example.com", "jwks": jwks()}
        ]);
        let policy = parse(&c).unwrap();
        assert_eq!(policy.clients[1].issuer, "https://other-idp.example.com");
        c["clients"][1]["issuer"] = json!("https://idp.example.com");
        assert!(parse(&c).unwrap_err().0.contains("configured twice"));
        // With one issuer, it is implied.
        let mut one = contract();
        one["clients"] = json!([{"client_id": "alice-app", "jwks": jwks()}]);
        assert_eq!(
            parse(&one).unwrap().clients[0].issuer,
            "https://idp.example.com"
        );
    }

    #[test]
    fn rule_case_sensitivity_is_configurable() {
        let mut c = contract();
        c["rules"][2]["case_sensitive"] = json!(false);
        let policy = parse(&c).unwrap();
        assert_eq!(policy.rules.requirement("/ORDERS").require, Require::Mtls);
        assert_eq!(
            parse(&contract())
                .unwrap()
                .rules
                .requirement("/ORDERS")
                .require,
            Require::Bound
        );
    }

    /// Issue 7 ("secrets in Envoy's config dump"): an HMAC key given by the name of an
    /// environment variable of the VM.
    /// Issue 9's configuration example.
    #[test]
    fn dpop_contract_example_parses() {
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut c = contract();
        c["dpop"] = json!({"algs": ["ES256", "EdDSA"], "max_age_seconds": 60,
                           "nonce_secret": secret, "nonce_lifetime_seconds": 300});
        c["rules"] = json!([{"prefix": "/transfers", "require": "dpop", "dpop_nonce": true},
                            {"prefix": "/", "require": "bound"}]);
        let policy = parse(&c).unwrap();
        assert_eq!(policy.dpop.algs, vec![Alg::Es256, Alg::EdDsa]);
        assert_eq!(policy.dpop.algs_challenge, "ES256 EdDSA");
        assert!(policy.dpop.nonces.is_some() && policy.dpop.announced);
        let route = policy.rules.requirement("/transfers/1");
        assert_eq!(route.require, Require::Dpop);
        assert!(route.dpop_nonce);
    }

    #[test]
    fn dpop_defaults_apply_without_a_dpop_block() {
        let policy = parse(&contract()).unwrap();
        assert_eq!(policy.dpop.algs_challenge, "ES256 ES384 EdDSA PS256 RS256");
        assert_eq!(policy.dpop.max_age_seconds, 60);
        assert!(policy.dpop.nonces.is_none() && !policy.dpop.announced);
        // A `dpop` route needs no block: the defaults serve it.
        let mut c = contract();
        c["rules"] = json!([{"prefix": "/", "require": "dpop"}]);
        assert!(parse(&c).is_ok());
        c["dpop"] = json!({});
        let policy = parse(&c).unwrap();
        assert!(policy.dpop.announced && policy.dpop.nonces.is_none());
        assert_eq!(policy.dpop.algs.len(), 5);
    }

    #[test]
    fn dpop_settings_are_checked() {
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let bad = [
            (json!({"algs": ["none"]}), "dpop.algs[0]"),
            (json!({"algs": ["HS256"]}), "dpop.algs[0]"),
            (json!({"algs": ["ES256", "ES256"]}), "listed twice"),
            (json!({"algs": []}), "at least one"),
            (json!({"max_age_seconds": 0}), "dpop.max_age_seconds"),
            (json!({"max_age_seconds": 3601}), "dpop.max_age_seconds"),
            (
                json!({"nonce_lifetime_seconds": 9}),
                "dpop.nonce_lifetime_seconds",
            ),
            (
                json!({"nonce_lifetime_seconds": 86_401}),
                "dpop.nonce_lifetime_seconds",
            ),
            (json!({"nonce_secret": "c2hvcnQ"}), "at least 32 bytes"),
            (json!({"nonce_secret": "not base64!"}), "unpadded base64url"),
            (
                json!({"nonce_secret": secret, "nonce_ttl": 5}),
                "unknown field",
            ),
        ];
        for (dpop, expected) in bad {
            let mut c = contract();
            c["dpop"] = dpop.clone();
            let err = parse(&c).unwrap_err().0;
            assert!(err.contains(expected), "{dpop}: {err}");
        }
    }

    #[test]
    fn a_nonce_route_needs_a_nonce_secret_and_a_token() {
        let mut c = contract();
        c["rules"] = json!([{"prefix": "/transfers", "require": "dpop", "dpop_nonce": true}]);
        let err = parse(&c).unwrap_err().0;
        assert!(
            err.contains("rules[0].dpop_nonce needs dpop.nonce_secret"),
            "{err}"
        );
        c["dpop"] = json!({"algs": ["ES256"]});
        assert!(parse(&c).is_err());
        c["dpop"] = json!({"nonce_secret": {"env": "TETHER_NONCE"}});
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let env = |name: &str| (name == "TETHER_NONCE").then(|| secret.clone());
        assert!(Policy::from_json_with(c.to_string().as_bytes(), &env).is_ok());
        c["rules"] = json!([{"prefix": "/public", "require": "none", "dpop_nonce": true}]);
        let err = Policy::from_json_with(c.to_string().as_bytes(), &env)
            .unwrap_err()
            .0;
        assert!(err.contains("cannot go with require \"none\""), "{err}");
    }

    #[test]
    fn hmac_key_from_the_environment() {
        const K: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let mut c = contract();
        c["clients"] = json!([{"client_id": "erp", "hmac_keys": [{"kid": "k1", "k": {"env": "TETHER_ERP_KEY"}}]}]);
        let env = |name: &str| (name == "TETHER_ERP_KEY").then(|| K.to_string());
        let policy = Policy::from_json_with(c.to_string().as_bytes(), &env).unwrap();
        assert_eq!(policy.clients[0].hmac_keys[0].secret.len(), 64);
        // Unset, empty, a bad name, or another member: configuration errors naming the field,
        // never the value.
        let none = |_: &str| None;
        let err = Policy::from_json_with(c.to_string().as_bytes(), &none)
            .unwrap_err()
            .0;
        assert!(
            err.contains("clients[0].hmac_keys[0].k") && err.contains("TETHER_ERP_KEY"),
            "{err}"
        );
        let empty = |_: &str| Some(String::new());
        assert!(Policy::from_json_with(c.to_string().as_bytes(), &empty).is_err());
        c["clients"][0]["hmac_keys"][0]["k"] = json!({"env": "1BAD-NAME"});
        assert!(Policy::from_json_with(c.to_string().as_bytes(), &env)
            .unwrap_err()
            .0
            .contains("not an environment variable name"));
        c["clients"][0]["hmac_keys"][0]["k"] = json!({"env": "TETHER_ERP_KEY", "default": "x"});
        assert!(Policy::from_json_with(c.to_string().as_bytes(), &env).is_err());
        let short = |_: &str| Some("c2hvcnQ".to_string());
        c["clients"][0]["hmac_keys"][0]["k"] = json!({"env": "TETHER_ERP_KEY"});
        let err = Policy::from_json_with(c.to_string().as_bytes(), &short)
            .unwrap_err()
            .0;
        assert!(
            err.contains("at least 32 bytes") && !err.contains("c2hvcnQ"),
            "{err}"
        );
    }

    #[test]
    fn short_hmac_keys_and_clients_without_anything_registered_are_errors() {
        let mut c = contract();
        c["clients"] = json!([{"client_id": "x", "hmac_keys": [{"kid": "k1", "k": "c2hvcnQ"}]}]);
        assert!(parse(&c).unwrap_err().0.contains("at least 32 bytes"));
        c["clients"] = json!([{"client_id": "x"}]);
        assert!(parse(&c).is_err());
        c["clients"] = json!([{"client_id": "x", "jwks": jwks(), "secret": "s"}]);
        assert!(parse(&c).unwrap_err().0.contains("secret"));
    }

    #[test]
    fn client_identity_and_networks_parse_and_suffice_for_a_client() {
        let mut c = contract();
        c["clients"] = json!([
            {"client_id": "tpp", "tls_client_auth_san_uri": "spiffe://mesh.local/ns/tpp/sa/client",
             "source_cidrs": ["10.0.0.0/8", "2001:db8::/32"]},
            {"client_id": "bank", "tls_client_auth_subject_dn": "CN=bank,O=Example Bank"},
            {"client_id": "ip", "tls_client_auth_san_ip": "::1"},
            {"client_id": "mail", "tls_client_auth_san_email": "ops@example.com"},
            {"client_id": "dns", "tls_client_auth_san_dns": "tpp.example.com"},
            {"client_id": "net", "source_cidrs": ["192.0.2.7"]}
        ]);
        let policy = parse(&c).unwrap();
        assert_eq!(
            policy.clients[0].identity,
            Some(Identity::SanUri(
                "spiffe://mesh.local/ns/tpp/sa/client".into()
            ))
        );
        assert_eq!(policy.clients[0].networks.len(), 2);
        assert!(matches!(
            policy.clients[1].identity,
            Some(Identity::SubjectDn(_))
        ));
        assert!(policy.clients[5].identity.is_none());
        assert_eq!(policy.peer_certificate, PeerSource::Connection);
    }

    #[test]
    fn a_client_with_two_identities_or_bad_networks_is_an_error() {
        let mut c = contract();
        for (client, expected) in [
            (
                json!({"client_id": "x", "tls_client_auth_san_uri": "spiffe://a", "tls_client_auth_san_dns": "a.example"}),
                "exactly one",
            ),
            (
                json!({"client_id": "x", "tls_client_auth_subject_dn": "CN"}),
                "clients[0].tls_client_auth_subject_dn",
            ),
            (
                json!({"client_id": "x", "tls_client_auth_san_ip": "10.0.0.256"}),
                "clients[0].tls_client_auth_san_ip",
            ),
            (
                json!({"client_id": "x", "tls_client_auth_san_uri": ""}),
                "clients[0].tls_client_auth_san_uri",
            ),
            (
                json!({"client_id": "x", "source_cidrs": []}),
                "source_cidrs",
            ),
            (
                json!({"client_id": "x", "source_cidrs": ["10.0.0.1/8"]}),
                "clients[0].source_cidrs[0]",
            ),
            (
                json!({"client_id": "x", "tls_client_auth_san_url": "spiffe://a"}),
                "tls_client_auth_san_url",
            ),
            (json!({"client_id": "x"}), "registers nothing"),
        ] {
            c["clients"] = json!([client]);
            let error = parse(&c).unwrap_err().0;
            assert!(error.contains(expected), "{client}: {error}");
        }
        c["clients"] =
            json!([{"client_id": "x", "source_cidrs": vec!["10.0.0.0/8"; MAX_SOURCE_CIDRS + 1]}]);
        assert!(parse(&c).unwrap_err().0.contains("source_cidrs"));
    }

    #[test]
    fn peer_certificate_needs_trusted_peers_with_xfcc_only() {
        let mut c = contract();
        c["peer_certificate"] = json!({"source": "xfcc", "trusted_peers": [
            {"san_uri": "spiffe://mesh.local/ns/edge/sa/ingress"}, {"san_dns": "edge.example.com"}
        ]});
        assert_eq!(
            parse(&c).unwrap().peer_certificate,
            PeerSource::Xfcc {
                trusted_peers: vec![
                    TrustedPeer::SanUri("spiffe://mesh.local/ns/edge/sa/ingress".into()),
                    TrustedPeer::SanDns("edge.example.com".into()),
                ]
            }
        );
        c["peer_certificate"] = json!({"source": "connection"});
        assert_eq!(parse(&c).unwrap().peer_certificate, PeerSource::Connection);
        for (bad, expected) in [
            (json!({"source": "xfcc"}), "trusted_peers"),
            (
                json!({"source": "xfcc", "trusted_peers": []}),
                "trusted_peers",
            ),
            (
                json!({"source": "connection", "trusted_peers": [{"san_uri": "spiffe://e"}]}),
                "trusted_peers",
            ),
            (
                json!({"source": "xfcc", "trusted_peers": [{"san_uri": "spiffe://e", "san_dns": "e"}]}),
                "trusted_peers[0]",
            ),
            (
                json!({"source": "xfcc", "trusted_peers": [{"san_uri": ""}]}),
                "trusted_peers[0]",
            ),
            (
                json!({"source": "xfcc", "trusted_peers": [{"subject": "CN=e"}]}),
                "subject",
            ),
            (json!({"source": "header"}), "source"),
            (json!({"trusted_peers": []}), "source"),
        ] {
            c["peer_certificate"] = bad.clone();
            let error = parse(&c).unwrap_err().0;
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn remote_jwks_are_registered_once_per_source_with_defaults() {
        let mut c = contract();
        let remote = json!({"cluster": "idp", "path": "/.well-known/jwks.json"});
        c["issuers"][0].as_object_mut().unwrap().remove("jwks");
        c["issuers"][0]["remote_jwks"] = remote.clone();
        c["clients"] = json!([{"client_id": "batch-job", "remote_jwks": remote}]);
        let policy = parse(&c).unwrap();
        assert_eq!(policy.jwks_endpoints.len(), 1);
        let set = &policy.jwks_endpoints[0];
        assert_eq!(
            (set.authority.as_str(), set.refresh_seconds, set.timeout_ms),
            ("idp", 300, 2000)
        );
        assert!(matches!(
            policy.issuers[0].keys,
            Some(KeySource::Fetched(0))
        ));
        assert!(matches!(policy.clients[0].keys, KeySource::Fetched(0)));
    }

    #[test]
    fn jwks_and_remote_jwks_together_or_neither_are_errors() {
        let mut c = contract();
        c["issuers"][0]["remote_jwks"] = json!({"cluster": "idp", "path": "/jwks"});
        assert!(parse(&c).unwrap_err().0.contains("exactly one"));
        c["issuers"][0]
            .as_object_mut()
            .unwrap()
            .remove("remote_jwks");
        c["issuers"][0].as_object_mut().unwrap().remove("jwks");
        let error = parse(&c).unwrap_err().0;
        assert!(
            error.contains("needs \"jwks\", \"remote_jwks\" or \"introspection\""),
            "{error}"
        );
    }

    fn introspection() -> Value {
        json!({"cluster": "as", "path": "/introspect", "client_id": "rs",
               "client_secret": {"env": "TETHER_INTROSPECTION_SECRET"}})
    }

    fn parse_with_secret(v: &Value) -> Result<Policy, ConfigError> {
        Policy::from_json_with(v.to_string().as_bytes(), &|name| {
            (name == "TETHER_INTROSPECTION_SECRET").then(|| "s3cret".to_string())
        })
    }

    #[test]
    fn introspection_parses_with_defaults_alone_or_beside_a_key_set() {
        let mut c = contract();
        c["issuers"][0]["introspection"] = introspection();
        let policy = parse_with_secret(&c).unwrap();
        let i = policy.issuers[0].introspection.as_ref().unwrap();
        assert_eq!(i.authority, "as");
        assert_eq!(i.timeout_ms, introspect::DEFAULT_TIMEOUT_MS);
        assert_eq!(i.cache_seconds, 60);
        assert_eq!(i.negative_cache_seconds, 5);
        assert_eq!(i.max_in_flight, introspect::DEFAULT_MAX_IN_FLIGHT);
        assert!(!i.signed_response && i.token_prefix.is_none());
        assert!(policy.issuers[0].keys.is_some());
        assert_eq!(policy.opaque_issuer("2YotnFZFEjr1zCsicMWpAA"), Some(0));
        // Instead of a key set.
        c["issuers"][0].as_object_mut().unwrap().remove("jwks");
        let policy = parse_with_secret(&c).unwrap();
        assert!(policy.issuers[0].keys.is_none());
        // The secret is never in the Debug print of the policy.
        assert!(!format!("{policy:?}").contains("s3cret"));
        // RFC 9701 answers need the key set they are signed with.
        c["issuers"][0]["introspection"]["signed_response"] = json!(true);
        assert!(parse_with_secret(&c)
            .unwrap_err()
            .0
            .contains("signed_response"));
    }

    #[test]
    fn introspection_fields_are_checked() {
        for (edit, field) in [
            (json!({"cluster": ""}), "cluster"),
            (json!({"path": "introspect"}), "path"),
            (json!({"client_id": ""}), "client_id"),
            (
                json!({"client_secret": {"env": "UNSET_VARIABLE"}}),
                "client_secret",
            ),
            (json!({"timeout_ms": 0}), "timeout_ms"),
            (json!({"cache_seconds": 3601}), "cache_seconds"),
            (json!({"cache_seconds": 0}), "cache_seconds"),
            (
                json!({"negative_cache_seconds": 0}),
                "negative_cache_seconds",
            ),
            (
                json!({"negative_cache_seconds": 301}),
                "negative_cache_seconds",
            ),
            (json!({"max_in_flight": 0}), "max_in_flight"),
            (json!({"token_prefix": ""}), "token_prefix"),
            (json!({"client_secrett": "x"}), "client_secrett"),
        ] {
            let mut c = contract();
            let mut raw = introspection();
            for (name, value) in edit.as_object().unwrap() {
                raw[name] = value.clone();
            }
            c["issuers"][0]["introspection"] = raw;
            let error = parse_with_secret(&c).unwrap_err().0;
            assert!(error.contains(field), "{edit}: {error}");
        }
    }

    /// RFC 7520 §5.5's P-256 key (a public test value), as a decryption key.
    const RFC7520_P256: &str = r#"{"kty":"EC","kid":"meriadoc.brandybuck@buckland.example","use":"enc","crv":"P-256","x":"Ze2loSV3wrroKUN_4zhwGhCqo3Xhu1td4QjeQ5wIVR0","y":"HlLtdXARY_f55A3fnzQbPcm6hgr34Mp8p-nuzQCE0Zw","d":"r_kHyZ-a06rmxM3yESK84r1otSg-aQcVStkRhA-iCM8"}"#;

    #[test]
    fn decryption_keys_come_from_the_environment_and_need_the_key_set() {
        let environment = |name: &str| (name == "TETHER_JWE_KEY").then(|| RFC7520_P256.to_string());
        let mut c = contract();
        c["issuers"][0]["decryption_keys"] =
            json!([{"kid": "k1", "private_jwk": {"env": "TETHER_JWE_KEY"}}]);
        let policy = Policy::from_json_with(c.to_string().as_bytes(), &environment).unwrap();
        assert_eq!(policy.issuers[0].decryption_keys.len(), 1);
        assert!(!format!("{policy:?}").contains("r_kHy"));
        for (keys, expected) in [
            (json!([]), "1 to 8"),
            (
                json!([{"kid": "", "private_jwk": {"env": "TETHER_JWE_KEY"}}]),
                "kid",
            ),
            (
                json!([{"kid": "a", "private_jwk": {"env": "TETHER_JWE_KEY"}},
                       {"kid": "a", "private_jwk": {"env": "TETHER_JWE_KEY"}}]),
                "unique",
            ),
            (
                json!([{"kid": "a", "private_jwk": "not json"}]),
                "decryption_keys[0].private_jwk is not a JSON JWK",
            ),
            (
                json!([{"kid": "a", "private_jwk": "{\"kty\":\"EC\",\"crv\":\"P-256\"}"}]),
                "decryption_keys[0].private_jwk",
            ),
            (
                json!([{"kid": "a", "private_jwk": {"env": "UNSET_VARIABLE"}}]),
                "decryption_keys[0].private_jwk",
            ),
        ] {
            c["issuers"][0]["decryption_keys"] = keys.clone();
            let error = Policy::from_json_with(c.to_string().as_bytes(), &environment)
                .unwrap_err()
                .0;
            assert!(error.contains(expected), "{keys}: {error}");
            assert!(!error.contains("r_kHy"), "{error}");
        }
        // An encrypted token holds a signed JWT: the issuer's key set is required.
        c["issuers"][0]["decryption_keys"] =
            json!([{"kid": "k1", "private_jwk": {"env": "TETHER_JWE_KEY"}}]);
        c["issuers"][0]["introspection"] = json!({"cluster": "as", "path": "/i",
            "client_id": "rs", "client_secret": "s"});
        c["issuers"][0].as_object_mut().unwrap().remove("jwks");
        let error = Policy::from_json_with(c.to_string().as_bytes(), &environment)
            .unwrap_err()
            .0;
        assert!(
            error.contains("decryption_keys needs the issuer's key set"),
            "{error}"
        );
    }

    #[test]
    fn several_introspecting_issuers_need_distinct_token_prefixes() {
        let mut c = contract();
        let second = |prefix: Option<&str>| {
            let mut raw = introspection();
            if let Some(prefix) = prefix {
                raw["token_prefix"] = json!(prefix);
            }
            json!({"issuer": "https://other.example", "audiences": ["a"], "introspection": raw})
        };
        c["issuers"][0]["introspection"] = introspection();
        c["issuers"][0]["introspection"]["token_prefix"] = json!("idp_");
        c["issuers"]
            .as_array_mut()
            .unwrap()
            .push(second(Some("other_")));
        let policy = parse_with_secret(&c).unwrap();
        assert_eq!(policy.opaque_issuer("idp_2YotnFZFEjr1zCsicMWpAA"), Some(0));
        assert_eq!(policy.opaque_issuer("other_2YotnFZFEjr1zC"), Some(1));
        assert_eq!(policy.opaque_issuer("2YotnFZFEjr1zCsicMWpAA"), None);
        c["issuers"][1] = second(None);
        assert!(parse_with_secret(&c)
            .unwrap_err()
            .0
            .contains("token_prefix is required"));
        c["issuers"][1] = second(Some("idp_x"));
        assert!(parse_with_secret(&c)
            .unwrap_err()
            .0
            .contains("is a prefix of"));
    }

    #[test]
    fn remote_jwks_fields_are_checked() {
        for (remote, field) in [
            (json!({"cluster": "idp", "path": "jwks"}), "path"),
            (json!({"cluster": "", "path": "/jwks"}), "cluster"),
            (
                json!({"cluster": "idp", "path": "/jwks", "refresh_seconds": 1}),
                "refresh_seconds",
            ),
            (
                json!({"cluster": "idp", "path": "/jwks", "timeout_ms": 0}),
                "timeout_ms",
            ),
            (
                json!({"cluster": "idp", "path": "/jwks", "uri": "x"}),
                "uri",
            ),
        ] {
            let mut c = contract();
            c["issuers"][0].as_object_mut().unwrap().remove("jwks");
            c["issuers"][0]["remote_jwks"] = remote;
            assert!(parse(&c).unwrap_err().0.contains(field), "{field}");
        }
    }

    #[test]
    fn body_timeout_is_bounded() {
        for (timeout, ok) in [(99, false), (100, true), (300_000, true), (300_001, false)] {
            let mut c = contract();
            c["signed_requests"] = json!({"body_timeout_ms": timeout});
            match parse(&c) {
                Ok(policy) => {
                    assert!(ok, "{timeout}");
                    assert_eq!(policy.signed_requests.body_timeout_ms, timeout);
                }
                Err(e) => assert!(!ok && e.0.contains("body_timeout_ms"), "{timeout}: {e}"),
            }
        }
    }

    /// Issue 8: the signature header cannot be one Envoy or Tether itself owns.
    #[test]
    fn signature_header_cannot_be_envoys_or_a_claim_header() {
        for header in [
            "x-envoy-original-path",
            "X-Tether-Sub",
            "x_tether_sub",
            "authorization",
        ] {
            let mut c = contract();
            c["signed_requests"] = json!({"header": header});
            let err = parse(&c).unwrap_err().0;
            assert!(err.contains("signed_requests.header"), "{header}: {err}");
        }
        let mut c = contract();
        c["signed_requests"] = json!({"header": "x-request-signature"});
        assert_eq!(
            parse(&c).unwrap().signed_requests.header,
            "x-request-signature"
        );
    }

    #[test]
    fn signed_request_on_none_rule_is_an_error() {
        let mut c = contract();
        c["rules"][0]["signed_request"] = json!(true);
        assert!(parse(&c).unwrap_err().0.contains("signed_request"));
    }

    #[test]
    fn reserved_or_invalid_claim_headers_are_errors() {
        for header in [
            "authorization",
            "x-forwarded-client-cert",
            ":path",
            "x-envoy-original-path",
            "bad header",
            "",
            "Host",
        ] {
            let mut c = contract();
            c["claims_to_headers"][0]["header"] = json!(header);
            assert!(parse(&c).is_err(), "{header}");
        }
    }

    #[test]
    fn look_alike_claim_headers_are_recognised() {
        let policy = parse(&contract()).unwrap();
        for spoof in [
            "x-tether-sub",
            "X-Tether-Sub",
            "x_tether_sub",
            "x.tether.sub",
            "X_TETHER.SUB",
        ] {
            assert!(policy.spoofs_claim_header(spoof), "{spoof}");
        }
        for other in [
            "x-tether-subject",
            "x-tether-su",
            "xtethersub",
            "x-tether-sub-",
        ] {
            assert!(!policy.spoofs_claim_header(other), "{other}");
        }
    }

    #[test]
    fn claim_header_names_are_lowercased() {
        let mut c = contract();
        c["claims_to_headers"][0]["header"] = json!("X-Tether-Sub");
        assert_eq!(
            parse(&c).unwrap().claims_to_headers[0].header,
            "x-tether-sub"
        );
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(Policy::from_json(b"not json").is_err());
        assert!(Policy::from_json(b"").is_err());
    }
}
