//! Why a request is refused, and what each refusal puts on the wire: the one table.
//!
//! Every refusal in Tether is a [`Reason`]. Only this module decides the HTTP status, the
//! `WWW-Authenticate` challenge (RFC 6750 §3) and the JSON body for a reason, and the name
//! of its counter. Descriptions name the cause and never echo any part of the request.

/// The OAuth error code of a refusal (RFC 6750 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request carried no credential at all: the challenge has no error code
    /// (RFC 6750 §3.1: "the resource server SHOULD NOT include an error code").
    None,
    /// The request is malformed (400).
    InvalidRequest,
    /// The request signature is missing or not acceptable (401, `invalid_signature`).
    InvalidSignature,
    /// The body is larger than a signed route accepts (413): no challenge is sent.
    TooLarge,
    /// The body did not arrive in time (408): no challenge is sent.
    Timeout,
    /// The filter itself cannot decide (503): no challenge is sent.
    Unavailable,
    /// The upstream's response cannot be sent as the route requires (502, `server_error`):
    /// no challenge is sent.
    ServerError,
    /// The access token, or its proof of possession, is not acceptable (401).
    InvalidToken,
    /// The DPoP proof is missing or not acceptable (401, RFC 9449 §7.1).
    InvalidDpopProof,
    /// The route asks for a DPoP proof with a fresh server nonce (401, RFC 9449 §8): the
    /// response carries one in `DPoP-Nonce`.
    UseDpopNonce,
}

impl ErrorCode {
    /// The code as it appears in `error="..."`, if any.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            ErrorCode::None
            | ErrorCode::TooLarge
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::ServerError => None,
            ErrorCode::InvalidRequest => Some("invalid_request"),
            ErrorCode::InvalidToken => Some("invalid_token"),
            ErrorCode::InvalidSignature => Some("invalid_signature"),
            ErrorCode::InvalidDpopProof => Some("invalid_dpop_proof"),
            ErrorCode::UseDpopNonce => Some("use_dpop_nonce"),
        }
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $status:literal, $code:ident, $desc:literal; )*) => {
        /// Every reason Tether refuses a request. The names are stable: they are the
        /// counter names (`tether.refused.<name>`) and they appear in the log.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// All reasons, for defining one counter each at start-up.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )* ];

            /// The stable name of the reason (snake case).
            pub fn name(self) -> &'static str {
                match self { $( Reason::$variant => $name, )* }
            }

            /// The HTTP status of the refusal.
            pub fn status(self) -> u16 {
                match self { $( Reason::$variant => $status, )* }
            }

            /// The OAuth error code of the refusal.
            pub fn error_code(self) -> ErrorCode {
                match self { $( Reason::$variant => ErrorCode::$code, )* }
            }

            /// A short description for `error_description`: the cause, never request data.
            pub fn description(self) -> &'static str {
                match self { $( Reason::$variant => $desc, )* }
            }
        }
    };
}

reasons! {
    /// A protected route was requested without a Bearer access token.
    TokenMissing => "token_missing", 401, None, "no access token in the request";
    /// An `access_token` query parameter (RFC 6750 §2.3): URLs end up in logs and
    /// `Referer` headers, so a token there is treated as leaked and refused outright.
    TokenInQuery => "token_in_query", 400, InvalidRequest, "access token must not be sent in the URL";
    /// An `access_token` parameter in a form-encoded body (RFC 6750 §2.2) on a route that
    /// examines the `Authorization` header: more than one method (RFC 6750 §2), and an
    /// upstream could act on the token Tether did not check.
    TokenInBody => "token_in_body", 400, InvalidRequest, "access token must not be sent in the request body";
    /// More than one `Authorization` header (RFC 6750 §3.1: more than one method).
    MultipleAuthorization => "multiple_authorization", 400, InvalidRequest, "more than one Authorization header";
    /// A Bearer `Authorization` header whose credential is empty or not a `b64token`
    /// (RFC 6750 §2.1).
    MalformedAuthorization => "malformed_authorization", 400, InvalidRequest, "malformed Authorization header";
    /// The path has dot segments or encoded separators, so path-prefix rules could be
    /// bypassed (`/healthz/../admin`). Envoy's `normalize_path` prevents this upstream.
    PathNotNormalized => "path_not_normalized", 400, InvalidRequest, "request path is not normalized";
    /// The token is longer than Tether accepts (8 KiB).
    TokenTooLarge => "token_too_large", 401, InvalidToken, "token exceeds the size limit";
    /// The token is not a JWS compact serialization with JSON header and claims.
    TokenMalformed => "token_malformed", 401, InvalidToken, "token is not a well-formed JWT";
    /// The header's `typ` declares another kind of JWT (a DPoP proof, a logout token, ...):
    /// RFC 8725 §3.11.
    TokenTypeNotAllowed => "token_type_not_allowed", 401, InvalidToken, "token is not an access token";
    /// The token's `alg` is `none`, unsupported, or not the algorithm of the key it names.
    AlgorithmNotAllowed => "algorithm_not_allowed", 401, InvalidToken, "token algorithm is not allowed";
    /// The token's `iss` is not a configured issuer.
    IssuerUnknown => "issuer_unknown", 401, InvalidToken, "token issuer is not trusted";
    /// No configured key of the issuer matches the token's `kid` and `alg`.
    KeyUnknown => "key_unknown", 401, InvalidToken, "no trusted key matches the token";
    /// The signature does not verify with the issuer's key.
    SignatureInvalid => "signature_invalid", 401, InvalidToken, "token signature is invalid";
    /// `exp` is in the past, beyond the clock skew.
    TokenExpired => "token_expired", 401, InvalidToken, "token has expired";
    /// The token has no `exp`: an access token that never expires is refused.
    ExpiryMissing => "expiry_missing", 401, InvalidToken, "token has no expiry";
    /// `nbf` or `iat` is in the future, beyond the clock skew.
    TokenNotYetValid => "token_not_yet_valid", 401, InvalidToken, "token is not yet valid";
    /// `exp - iat` (or `exp - now`) exceeds `max_token_lifetime_seconds`.
    LifetimeTooLong => "lifetime_too_long", 401, InvalidToken, "token lifetime exceeds the maximum";
    /// None of the token's `aud` values is a configured audience of its issuer.
    AudienceMismatch => "audience_mismatch", 401, InvalidToken, "token audience is not accepted";
    /// The route requires a sender-constrained token and the token has no (or an empty) `cnf`.
    NotSenderConstrained => "not_sender_constrained", 401, InvalidToken, "token is not sender-constrained";
    /// The token's `cnf` names a confirmation method Tether cannot prove (`jku`, `kid`, ...):
    /// accepting it without its proof would make it a bearer token.
    BindingUnsupported => "binding_unsupported", 401, InvalidToken, "token binding cannot be proved";
    /// `cnf` is not a JSON object, or its `x5t#S256` is not a base64url SHA-256 digest.
    CnfMalformed => "cnf_malformed", 401, InvalidToken, "token confirmation claim is malformed";
    /// The token is certificate-bound but the connection presented no client certificate.
    ClientCertificateMissing => "client_certificate_missing", 401, InvalidToken, "no client certificate";
    /// The token is bound to a different certificate than the connection's (RFC 8705 §3).
    CertificateMismatch => "certificate_mismatch", 401, InvalidToken, "token is bound to another certificate";
    /// The token's client is registered with a certificate identity (RFC 8705 §2.1.2
    /// `tls_client_auth_*`) that the client certificate does not have, or there is no client
    /// certificate.
    ClientIdentityMismatch => "client_identity_mismatch", 401, InvalidToken, "client certificate is not the registered client's";
    /// The token's client is registered with `source_cidrs` and the connection's peer address
    /// is in none of them.
    ClientNetworkMismatch => "client_network_mismatch", 401, InvalidToken, "request does not come from the client's registered networks";
    /// The route takes tokens of registered clients only (`require_registered_client`), and
    /// the token's client (`client_id`, else `azp`, of its issuer) is not one.
    ClientNotRegistered => "client_not_registered", 401, InvalidToken, "token's client is not registered";
    /// `x-forwarded-client-cert` from a trusted peer (`peer_certificate.source: xfcc`) is
    /// malformed, or its `Cert` is not the certificate its `Hash` names: a broken edge is
    /// never half read.
    XfccMalformed => "xfcc_malformed", 400, InvalidRequest, "malformed x-forwarded-client-cert header";
    /// A signed route, or a token bound with `cnf.jwk`, and no request signature header.
    RequestSignatureMissing => "request_signature_missing", 401, InvalidSignature, "request signature is missing";
    /// The signature header is not a detached compact JWS with a well-formed protected
    /// header (RFC 7515 Appendix F, §4.1.11 `crit`, RFC 7797 §6 `b64`).
    RequestSignatureMalformed => "request_signature_malformed", 401, InvalidSignature, "request signature is malformed";
    /// `iat` is older than `max_age_seconds`, or in the future beyond the clock skew.
    RequestSignatureExpired => "request_signature_expired", 401, InvalidSignature, "request signature is expired or not yet valid";
    /// `htm`, `htu` or `ath` do not describe this request and this token.
    RequestSignatureMismatch => "request_signature_mismatch", 401, InvalidSignature, "request signature does not match the request";
    /// No registered key: unknown client, unknown `kid`, or no `kid` with several keys.
    RequestSignatureKeyUnknown => "request_signature_key_unknown", 401, InvalidSignature, "no registered key for the request signature";
    /// The signature does not verify over the body with the key.
    RequestSignatureInvalid => "request_signature_invalid", 401, InvalidSignature, "request signature is invalid";
    /// The signature was already used: a captured request replayed.
    RequestSignatureReplayed => "request_signature_replayed", 401, InvalidSignature, "request signature was already used";
    /// An RFC 9421 signature does not cover a component `message_signatures.required_components`
    /// requires (`dpop` only with a `DPoP` header, `content-digest` only with a body).
    RequestSignatureIncomplete => "request_signature_incomplete", 401, InvalidSignature, "request signature does not cover the required components";
    /// An RFC 9421 signature's `alg` is not its key's algorithm, or the key has none RFC 9421
    /// §3.3 names.
    RequestSignatureAlgorithmMismatch => "request_signature_algorithm_mismatch", 401, InvalidSignature, "request signature algorithm is not the key's";
    /// A signed request with a body has no `Content-Digest` (RFC 9530 §2).
    ContentDigestMissing => "content_digest_missing", 401, InvalidSignature, "Content-Digest is missing";
    /// `Content-Digest` is not a valid Dictionary of byte sequences, or names no algorithm
    /// Tether knows (`sha-256`, `sha-512`).
    ContentDigestMalformed => "content_digest_malformed", 401, InvalidSignature, "Content-Digest is malformed or has no supported algorithm";
    /// `Content-Digest` is not the digest of the body received.
    ContentDigestMismatch => "content_digest_mismatch", 401, InvalidSignature, "Content-Digest does not match the body";
    /// The replay store has no room for a new signature or DPoP proof: fail closed rather
    /// than forget.
    ReplayStoreFull => "replay_store_full", 503, Unavailable, "signatures cannot be checked for replay right now";
    /// A DPoP-bound token (`cnf.jkt`) presented with the `Bearer` scheme: a downgrade that
    /// would skip its proof (RFC 9449 §7.2). Refused on every route.
    DpopTokenAsBearer => "dpop_token_as_bearer", 401, InvalidToken, "a DPoP-bound token must be presented with the DPoP scheme";
    /// A token presented with the `DPoP` scheme has no `cnf.jkt`: there is no key for the proof
    /// to prove (RFC 9449 §7.1).
    TokenNotDpopBound => "token_not_dpop_bound", 401, InvalidToken, "token is not bound to a DPoP key";
    /// The `DPoP` scheme without a `DPoP` header (RFC 9449 §7.1).
    DpopProofMissing => "dpop_proof_missing", 401, InvalidDpopProof, "no DPoP proof";
    /// More than one `DPoP` header, or one holding a comma-joined list (RFC 9449 §4.3 check 1).
    MultipleDpopProofs => "multiple_dpop_proofs", 401, InvalidDpopProof, "more than one DPoP proof";
    /// The proof is not a compact JWS with JSON header and claims, is larger than 8 KiB, repeats
    /// a member, or names a `crit` extension (RFC 9449 §4.3 check 2).
    DpopProofMalformed => "dpop_proof_malformed", 401, InvalidDpopProof, "DPoP proof is not a well-formed JWT";
    /// The proof's `typ` is not `dpop+jwt` (RFC 9449 §4.3 check 4).
    DpopProofTypeInvalid => "dpop_proof_type_invalid", 401, InvalidDpopProof, "DPoP proof typ is not dpop+jwt";
    /// The proof's `alg` is not in `dpop.algs` (never `none`, never a MAC; §4.3 check 5).
    DpopAlgorithmNotAllowed => "dpop_algorithm_not_allowed", 401, InvalidDpopProof, "DPoP proof algorithm is not allowed";
    /// The proof's `jwk` is missing, holds private members, is of an unsupported type or size,
    /// or does not fit `alg` (RFC 9449 §4.3 check 7).
    DpopKeyInvalid => "dpop_key_invalid", 401, InvalidDpopProof, "DPoP proof key is missing, private or unsupported";
    /// The proof's signature does not verify with its `jwk` (RFC 9449 §4.3 check 6).
    DpopSignatureInvalid => "dpop_signature_invalid", 401, InvalidDpopProof, "DPoP proof signature is invalid";
    /// The proof has no `jti`, or one longer than 256 bytes (RFC 9449 §4.2, §4.3 check 3).
    DpopJtiInvalid => "dpop_jti_invalid", 401, InvalidDpopProof, "DPoP proof jti is missing or too long";
    /// The proof's `htm` is not the request's method (RFC 9449 §4.3 check 8).
    DpopMethodMismatch => "dpop_method_mismatch", 401, InvalidDpopProof, "DPoP proof htm does not match the request method";
    /// The proof's `htu` is not the request's URI, query and fragment aside (§4.3 check 9).
    DpopUriMismatch => "dpop_uri_mismatch", 401, InvalidDpopProof, "DPoP proof htu does not match the request URI";
    /// The proof's `iat` is missing, older than `dpop.max_age_seconds`, or ahead of the clock
    /// beyond `clock_skew_seconds` (RFC 9449 §4.3 check 11, §11.1).
    DpopIatInvalid => "dpop_iat_invalid", 401, InvalidDpopProof, "DPoP proof iat is missing or outside the accepted window";
    /// The proof's `ath` is missing or not the hash of the presented token (§4.3 check 12).
    DpopAthMismatch => "dpop_ath_mismatch", 401, InvalidDpopProof, "DPoP proof ath does not match the access token";
    /// The proof's key is not the key the token is bound to: its thumbprint is not the token's
    /// `cnf.jkt` (RFC 9449 §4.3 check 12, §6.1).
    DpopKeyMismatch => "dpop_key_mismatch", 401, InvalidDpopProof, "DPoP proof key is not the key the token is bound to";
    /// The route asks for a server nonce and the proof has none (RFC 9449 §8).
    DpopNonceMissing => "dpop_nonce_missing", 401, UseDpopNonce, "a DPoP nonce is required";
    /// The proof's nonce is not one Tether issued in the current or the previous window.
    DpopNonceInvalid => "dpop_nonce_invalid", 401, UseDpopNonce, "DPoP nonce is invalid or expired";
    /// The proof (its key and `jti`) was already used: a captured request replayed
    /// (RFC 9449 §11.1).
    DpopProofReplayed => "dpop_proof_replayed", 401, InvalidDpopProof, "DPoP proof was already used";
    /// An encrypted access token (JWE) that none of its issuer's `decryption_keys` decrypts
    /// (a wrong key, a changed byte, an `epk` off its curve).
    TokenDecryptionFailed => "token_decryption_failed", 401, InvalidToken, "token cannot be decrypted";
    /// The introspection endpoint says the token is not active (RFC 7662 §2.2): expired,
    /// revoked, unknown to it, or not for this resource server.
    TokenInactive => "token_inactive", 401, InvalidToken, "token is not active";
    /// An introspected token's `token_type` is not the scheme it was presented with
    /// (`Bearer` or `DPoP`).
    TokenTypeMismatch => "token_type_mismatch", 401, InvalidToken, "token type does not match the authorization scheme";
    /// The introspection endpoint's answer is not RFC 7662's (or RFC 9701's, when configured):
    /// never served on doubt.
    IntrospectionInvalid => "introspection_invalid", 503, Unavailable, "the token could not be introspected";
    /// The body of a signed request is larger than `max_body_bytes`.
    BodyTooLarge => "body_too_large", 413, TooLarge, "request body exceeds the size limit";
    /// The body of a request held for its signature did not arrive within `body_timeout_ms`
    /// of the headers (a stalled or deliberately slow client).
    BodyTimeout => "body_timeout", 408, Timeout, "request body did not arrive in time";
    /// This worker already holds as many requests as it may (waiting for a key set or a
    /// body): fail closed rather than grow without bound.
    HeldRequestsFull => "held_requests_full", 503, Unavailable, "too many requests are waiting to be checked";
    /// The proxy did not provide what the check needs (a header map or a body it should
    /// have): fail closed.
    HostError => "host_error", 503, Unavailable, "the proxy could not provide the request to the filter";
    /// A key set fetched from a `jwks_uri` could not be had in time (never fetched, or the
    /// key server is down): fail closed.
    KeySetUnavailable => "key_set_unavailable", 503, Unavailable, "the key set needed to verify the request is not available";
    /// The introspection endpoint could not be asked in time (`timeout_ms`), failed, or
    /// too many calls are in flight: never served on doubt.
    IntrospectionUnavailable => "introspection_unavailable", 503, Unavailable, "the token could not be introspected right now";
    /// The response of a `sign_response` route is larger than `response_signing.max_body_bytes`:
    /// it is replaced, never sent unsigned.
    ResponseTooLargeToSign => "response_too_large_to_sign", 502, ServerError, "the response is too large to be signed";
    /// The response of a `sign_response` route could not be read or signed: it is replaced,
    /// never sent unsigned.
    ResponseSigningFailed => "response_signing_failed", 502, ServerError, "the response could not be signed";
    /// The filter has no valid configuration (it failed closed). Envoy normally refuses
    /// such a configuration before any request arrives.
    NotConfigured => "not_configured", 503, Unavailable, "the filter has no valid configuration";
}

use crate::extract::Scheme;

/// The realm of every Bearer challenge Tether sends.
pub const REALM: &str = "tether";

/// The challenges a refusal sends (RFC 9110 §11.6.1): the schemes the route accepts, and the
/// scheme the request used, whose challenge carries the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Announce `Bearer` (RFC 6750 §3).
    pub bearer: bool,
    /// Announce `DPoP` with its algorithms (RFC 9449 §7.1).
    pub dpop: bool,
    /// The scheme the request presented its token with, if any.
    pub used: Option<Scheme>,
    /// The route gives out DPoP nonces (`dpop_nonce`): the response carries a fresh
    /// `DPoP-Nonce` (RFC 9449 §8).
    pub nonce: bool,
    /// The route asks for RFC 9421 request signatures: a refusal for a missing or incomplete
    /// one carries `Accept-Signature` (RFC 9421 §5.1).
    pub http_signature: bool,
}

impl Challenge {
    /// A refusal before any route is known: the Bearer challenge alone.
    pub const BEARER: Challenge = Challenge {
        bearer: true,
        dpop: false,
        used: None,
        nonce: false,
        http_signature: false,
    };
}

impl Reason {
    /// Whether this refusal tells the client, with `Accept-Signature`, which signature it
    /// expects (on a route that asks for RFC 9421 signatures).
    pub fn asks_for_signature(self) -> bool {
        matches!(
            self,
            Reason::RequestSignatureMissing | Reason::RequestSignatureIncomplete
        )
    }
}

impl Default for Challenge {
    fn default() -> Self {
        Challenge::BEARER
    }
}

impl Reason {
    /// The `WWW-Authenticate` value for this refusal (RFC 6750 §3, RFC 9449 §7.1), if it has
    /// one: a challenge per scheme the route accepts (`dpop_algs` names the DPoP algorithms),
    /// the one that carries the error first. A DPoP proof's error goes in the DPoP challenge;
    /// any other in the challenge of the scheme the request used.
    pub fn www_authenticate(self, challenge: Challenge, dpop_algs: &str) -> Option<String> {
        let code = self.error_code();
        if matches!(
            code,
            ErrorCode::Unavailable
                | ErrorCode::TooLarge
                | ErrorCode::Timeout
                | ErrorCode::ServerError
        ) {
            return None;
        }
        let dpop_error = matches!(code, ErrorCode::InvalidDpopProof | ErrorCode::UseDpopNonce);
        let bearer = challenge.bearer;
        // A DPoP-bound token sent as Bearer: tell the client which scheme it needs.
        let dpop = challenge.dpop
            || dpop_error
            || challenge.used == Some(Scheme::Dpop)
            || self == Reason::DpopTokenAsBearer;
        let preferred = if dpop_error {
            Some(Scheme::Dpop)
        } else {
            challenge.used
        };
        // The carrier must be a scheme the response announces.
        let carrier = match preferred {
            Some(Scheme::Bearer) if bearer => Scheme::Bearer,
            Some(Scheme::Dpop) if dpop => Scheme::Dpop,
            _ if bearer => Scheme::Bearer,
            _ => Scheme::Dpop,
        };
        let error = code.as_str().map(|error| {
            format!(
                "error=\"{error}\", error_description=\"{}\"",
                self.description()
            )
        });
        let render = |scheme: Scheme| {
            let error = error.as_deref().filter(|_| scheme == carrier);
            match (scheme, error) {
                (Scheme::Bearer, None) => format!("Bearer realm=\"{REALM}\""),
                (Scheme::Bearer, Some(error)) => format!("Bearer realm=\"{REALM}\", {error}"),
                (Scheme::Dpop, None) => format!("DPoP algs=\"{dpop_algs}\""),
                // RFC 9449 §8's form: the error first.
                (Scheme::Dpop, Some(error)) if code == ErrorCode::UseDpopNonce => {
                    format!("DPoP {error}, algs=\"{dpop_algs}\"")
                }
                (Scheme::Dpop, Some(error)) => format!("DPoP algs=\"{dpop_algs}\", {error}"),
            }
        };
        let mut challenges = vec![render(carrier)];
        for (announced, scheme) in [(bearer, Scheme::Bearer), (dpop, Scheme::Dpop)] {
            if announced && scheme != carrier {
                challenges.push(render(scheme));
            }
        }
        Some(challenges.join(", "))
    }

    /// The JSON body of the refusal: `{"error": ..., "error_description": ...}`. A refusal
    /// without an OAuth error code says `missing_token` (no token at all) or
    /// `temporarily_unavailable` (the filter cannot decide).
    pub fn body(self) -> String {
        let error = match self.error_code() {
            ErrorCode::Unavailable => "temporarily_unavailable",
            ErrorCode::TooLarge => "request_too_large",
            ErrorCode::Timeout => "request_timeout",
            ErrorCode::ServerError => "server_error",
            code => code.as_str().unwrap_or("missing_token"),
        };
        serde_json::json!({ "error": error, "error_description": self.description() }).to_string()
    }

    /// The counter incremented for this refusal.
    pub fn metric_name(self) -> String {
        format!("tether.refused.{}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const ALGS: &str = "ES256 EdDSA";

    fn both(used: Option<Scheme>) -> Challenge {
        Challenge {
            bearer: true,
            dpop: true,
            used,
            nonce: false,
            http_signature: false,
        }
    }

    fn dpop_only(used: Option<Scheme>) -> Challenge {
        Challenge {
            bearer: false,
            ..both(used)
        }
    }

    #[test]
    fn missing_token_challenge_has_no_error_code() {
        assert_eq!(
            Reason::TokenMissing
                .www_authenticate(Challenge::BEARER, ALGS)
                .unwrap(),
            "Bearer realm=\"tether\""
        );
        assert_eq!(Reason::TokenMissing.status(), 401);
    }

    #[test]
    fn invalid_token_challenge_names_error_and_description() {
        assert_eq!(
            Reason::TokenExpired
                .www_authenticate(Challenge::BEARER, ALGS)
                .unwrap(),
            "Bearer realm=\"tether\", error=\"invalid_token\", error_description=\"token has expired\""
        );
    }

    /// RFC 9449 §7.1: a DPoP route without a token gets the bare DPoP challenge; a route that
    /// accepts both schemes announces both (§7.2, RFC 9110 §11.6.1).
    #[test]
    fn missing_token_challenges_every_accepted_scheme() {
        assert_eq!(
            Reason::TokenMissing
                .www_authenticate(dpop_only(None), ALGS)
                .unwrap(),
            "DPoP algs=\"ES256 EdDSA\""
        );
        assert_eq!(
            Reason::TokenMissing
                .www_authenticate(both(None), ALGS)
                .unwrap(),
            "Bearer realm=\"tether\", DPoP algs=\"ES256 EdDSA\""
        );
    }

    #[test]
    fn a_bad_proof_is_answered_in_the_dpop_challenge() {
        let expected = "DPoP algs=\"ES256 EdDSA\", error=\"invalid_dpop_proof\", error_description=\"DPoP proof signature is invalid\"";
        assert_eq!(
            Reason::DpopSignatureInvalid
                .www_authenticate(dpop_only(Some(Scheme::Dpop)), ALGS)
                .unwrap(),
            expected
        );
        assert_eq!(
            Reason::DpopSignatureInvalid
                .www_authenticate(both(Some(Scheme::Dpop)), ALGS)
                .unwrap(),
            format!("{expected}, Bearer realm=\"tether\"")
        );
    }

    #[test]
    fn a_bad_token_is_answered_in_the_scheme_it_came_with() {
        assert_eq!(
            Reason::TokenExpired
                .www_authenticate(both(Some(Scheme::Dpop)), ALGS)
                .unwrap(),
            "DPoP algs=\"ES256 EdDSA\", error=\"invalid_token\", error_description=\"token has expired\", Bearer realm=\"tether\""
        );
        assert_eq!(
            Reason::TokenExpired
                .www_authenticate(both(Some(Scheme::Bearer)), ALGS)
                .unwrap(),
            "Bearer realm=\"tether\", error=\"invalid_token\", error_description=\"token has expired\", DPoP algs=\"ES256 EdDSA\""
        );
        // A Bearer token on a route that takes DPoP only: the DPoP challenge says why.
        assert_eq!(
            Reason::DpopTokenAsBearer
                .www_authenticate(dpop_only(Some(Scheme::Bearer)), ALGS)
                .unwrap(),
            "DPoP algs=\"ES256 EdDSA\", error=\"invalid_token\", error_description=\"a DPoP-bound token must be presented with the DPoP scheme\""
        );
    }

    /// RFC 9449 §8's form of the nonce challenge.
    #[test]
    fn a_missing_nonce_asks_for_one() {
        assert_eq!(
            Reason::DpopNonceMissing
                .www_authenticate(dpop_only(Some(Scheme::Dpop)), ALGS)
                .unwrap(),
            "DPoP error=\"use_dpop_nonce\", error_description=\"a DPoP nonce is required\", algs=\"ES256 EdDSA\""
        );
        let body: serde_json::Value =
            serde_json::from_str(&Reason::DpopNonceInvalid.body()).unwrap();
        assert_eq!(body["error"], "use_dpop_nonce");
        let body: serde_json::Value =
            serde_json::from_str(&Reason::DpopUriMismatch.body()).unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof");
    }

    /// Even where the configuration does not announce DPoP, a downgraded DPoP token is told.
    #[test]
    fn a_downgrade_names_the_dpop_scheme() {
        assert_eq!(
            Reason::DpopTokenAsBearer
                .www_authenticate(
                    Challenge {
                        used: Some(Scheme::Bearer),
                        ..Challenge::BEARER
                    },
                    ALGS
                )
                .unwrap(),
            "Bearer realm=\"tether\", error=\"invalid_token\", error_description=\"a DPoP-bound token must be presented with the DPoP scheme\", DPoP algs=\"ES256 EdDSA\""
        );
    }

    #[test]
    fn refusals_without_a_challenge_stay_without_one() {
        for r in [
            Reason::ReplayStoreFull,
            Reason::BodyTooLarge,
            Reason::BodyTimeout,
        ] {
            assert_eq!(r.www_authenticate(both(Some(Scheme::Dpop)), ALGS), None);
        }
    }

    #[test]
    fn malformed_requests_are_400_invalid_request() {
        for r in [
            Reason::TokenInQuery,
            Reason::MultipleAuthorization,
            Reason::MalformedAuthorization,
        ] {
            assert_eq!(r.status(), 400);
            assert_eq!(r.error_code(), ErrorCode::InvalidRequest);
        }
    }

    #[test]
    fn body_is_json_with_error_and_description() {
        let body: serde_json::Value =
            serde_json::from_str(&Reason::CertificateMismatch.body()).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(
            body["error_description"],
            "token is bound to another certificate"
        );
    }

    #[test]
    fn names_are_unique_and_descriptions_are_header_safe() {
        let names: HashSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for r in Reason::ALL {
            // RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
            assert!(r
                .description()
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'));
        }
    }
}
