//! Opaque access tokens, by OAuth 2.0 Token Introspection (RFC 7662) at the issuer's
//! authorization server, optionally with a JWT response (RFC 9701) (issue 12).
//!
//! Pure: the call is made by the glue through an Envoy cluster; this module writes the
//! request ([`Introspection::request`]) and reads the answer ([`read_answer`]) into a
//! [`VerifiedToken`] like a verified JWT's, so that every binding (`cnf`, RFC 8705 §3.2 and
//! RFC 9449 §6.2) and every request check runs on it the same way.
//!
//! **The request** (RFC 7662 §2.1): `POST` of `token=<token>&token_type_hint=access_token`
//! (`application/x-www-form-urlencoded`), the resource server authenticated with HTTP Basic
//! (`client_secret_basic`, RFC 6749 §2.3.1: `client_id` and secret form-urlencoded, then
//! base64). `Accept` asks for JSON, or for `application/token-introspection+jwt`.
//!
//! **The answer** (RFC 7662 §2.2): a 200 with a JSON object whose `active` is a boolean;
//! anything else is not an answer. `active: false` is an inactive token. An active one must
//! name this issuer in `iss` if it has `iss`, an audience of this issuer in `aud`, and an `exp`
//! (required here, as for JWTs) not past, an `nbf`/`iat` not ahead, with the clock skew.
//! `token_type`, when present, is checked against the scheme by the caller.
//!
//! **A JWT answer** (RFC 9701 §5): a JWS of `typ` `token-introspection+jwt`, signed by the
//! issuer's key set, whose `iss` is the issuer and whose `aud` names `client_id`; the
//! introspection response is its `token_introspection` claim.

use std::rc::Rc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::crypto::SignatureVerifier;
use crate::keyset::FetchedKeys;
use crate::reject::Reason;
use crate::token::{self, Issuer, TimeLimits, VerifiedToken};

/// The longest opaque token introspected: longer ones are refused unasked (`token_too_large`),
/// so that made-up tokens cannot fill the answer cache with long keys.
pub const MAX_OPAQUE_TOKEN_BYTES: usize = 2048;
/// The largest introspection answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Default of `introspection.timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// Default of `introspection.cache_seconds`.
pub const DEFAULT_CACHE_SECONDS: u64 = 60;
/// Default of `introspection.negative_cache_seconds`.
pub const DEFAULT_NEGATIVE_CACHE_SECONDS: u64 = 5;
/// Default of `introspection.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// The media type of a JWT introspection answer (RFC 9701 §5).
pub const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// An issuer's introspection endpoint (`issuers[].introspection`).
pub struct Introspection {
    /// The Envoy cluster the call goes through.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub client_id: String,
    /// The resource server's secret; never in a log or a `Debug` print.
    client_secret: String,
    pub timeout_ms: u64,
    /// How long an active answer is kept (never past the token's `exp`).
    pub cache_seconds: u64,
    /// How long an inactive answer is kept.
    pub negative_cache_seconds: u64,
    /// The most calls this VM has in flight to this endpoint.
    pub max_in_flight: usize,
    /// With several introspecting issuers: the opaque tokens that start with this are this
    /// issuer's.
    pub token_prefix: Option<String>,
    /// Ask for, and accept only, an RFC 9701 JWT answer.
    pub signed_response: bool,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("cache_seconds", &self.cache_seconds)
            .field("negative_cache_seconds", &self.negative_cache_seconds)
            .field("max_in_flight", &self.max_in_flight)
            .field("token_prefix", &self.token_prefix)
            .field("signed_response", &self.signed_response)
            .finish()
    }
}

/// What goes to the endpoint: headers (pseudo-headers included) and body.
pub struct Request {
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Introspection {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: String,
        authority: String,
        path: String,
        client_id: String,
        client_secret: String,
        timeout_ms: u64,
        cache_seconds: u64,
        negative_cache_seconds: u64,
        max_in_flight: usize,
        token_prefix: Option<String>,
        signed_response: bool,
    ) -> Introspection {
        Introspection {
            cluster,
            authority,
            path,
            client_id,
            client_secret,
            timeout_ms,
            cache_seconds,
            negative_cache_seconds,
            max_in_flight,
            token_prefix,
            signed_response,
        }
    }

    /// The call that introspects `token` (RFC 7662 §2.1).
    pub fn request(&self, token: &str) -> Request {
        // RFC 6749 §2.3.1: the client id and secret are form-urlencoded, then joined by `:`.
        let credentials = format!(
            "{}:{}",
            form_urlencode(&self.client_id),
            form_urlencode(&self.client_secret)
        );
        let accept = if self.signed_response {
            JWT_MEDIA_TYPE
        } else {
            "application/json"
        };
        Request {
            headers: vec![
                (":method", "POST".to_string()),
                (":path", self.path.clone()),
                (":authority", self.authority.clone()),
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept", accept.to_string()),
                (
                    "authorization",
                    format!("Basic {}", STANDARD.encode(credentials)),
                ),
            ],
            body: format!(
                "token={}&token_type_hint=access_token",
                form_urlencode(token)
            )
            .into_bytes(),
        }
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG URL standard's serializer): ASCII
/// alphanumerics and `*-._` as they are, space as `+`, every other byte `%XX`.
fn form_urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The endpoint's answer as the glue received it.
pub struct Answer<'a> {
    /// `:status`; `None` when the call failed (timeout, reset, no healthy host).
    pub status: Option<u16>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What an answer says of a token.
#[derive(Debug)]
pub enum Outcome {
    /// Active, and acceptable here: the token, as verified.
    Active(Rc<VerifiedToken>),
    /// `active: false` (RFC 7662 §2.2): expired, revoked, unknown, or not for us.
    Inactive,
}

/// What an answer needs besides itself: the issuer it came from and how its JWT answers are
/// verified.
pub struct Context<'a> {
    pub introspection: &'a Introspection,
    pub issuer: &'a Issuer,
    pub fetched: &'a FetchedKeys,
    pub crypto: &'a dyn SignatureVerifier,
    pub limits: TimeLimits,
}

/// Reads the answer about `token` at `now`. `introspection_unavailable` when there was no
/// proper answer (the call failed, or a status but 200); `introspection_invalid` when the
/// answer does not read as RFC 7662 (or RFC 9701) says; else what the checks on an active
/// token's claims say.
pub fn read_answer(
    answer: &Answer<'_>,
    token: &str,
    context: &Context<'_>,
    now: u64,
) -> Result<Outcome, Reason> {
    if answer.status != Some(200) {
        return Err(Reason::IntrospectionUnavailable);
    }
    if answer.body.len() > MAX_ANSWER_BYTES {
        return Err(Reason::IntrospectionInvalid);
    }
    let media_type = answer.content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let members = if context.introspection.signed_response {
        if media_type.as_deref() != Some(JWT_MEDIA_TYPE) {
            return Err(Reason::IntrospectionInvalid);
        }
        let jwt = std::str::from_utf8(answer.body).map_err(|_| Reason::IntrospectionInvalid)?;
        let claims = token::verify_introspection_jwt(
            jwt.trim(),
            context.issuer,
            &context.introspection.client_id,
            context.fetched,
            context.crypto,
            context.limits.clock_skew_seconds,
            now,
        )?;
        match claims.get("token_introspection") {
            Some(Value::Object(members)) => members.clone(),
            _ => return Err(Reason::IntrospectionInvalid),
        }
    } else {
        if media_type.as_deref() != Some("application/json") {
            return Err(Reason::IntrospectionInvalid);
        }
        match serde_json::from_slice::<Value>(answer.body) {
            Ok(Value::Object(members)) => members,
            _ => return Err(Reason::IntrospectionInvalid),
        }
    };
    read_members(members, token, context, now)
}

/// RFC 7662 §2.2's members, once they are known to be the authorization server's.
fn read_members(
    members: Map<String, Value>,
    token: &str,
    context: &Context<'_>,
    now: u64,
) -> Result<Outcome, Reason> {
    match members.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Outcome::Inactive),
        _ => return Err(Reason::IntrospectionInvalid),
    }
    token::from_introspection(members, token, context.issuer, context.limits, now)
        .map(|verified| Outcome::Active(Rc::new(verified)))
}

/// The introspection calls of a VM: at most one per token (the requests that carry it wait
/// for the same answer), at most `max_in_flight` per endpoint, queued or in flight. A call is
/// queued by the request that needs it and sent on the root context's next tick, so that its
/// answer reaches the root context whatever becomes of that request (Envoy ties a call to the
/// context that sends it, and drops the answer of a context that is gone).
#[derive(Default)]
pub struct Calls {
    queued: Vec<(usize, String)>,
    in_flight: std::collections::HashMap<u32, (usize, String)>,
}

impl Calls {
    /// Whether a call about `token` is queued or in flight.
    pub fn asking(&self, token: &str) -> bool {
        self.queued.iter().any(|(_, t)| t == token)
            || self.in_flight.values().any(|(_, t)| t == token)
    }

    /// Whether `issuer`'s endpoint may be asked once more (fewer than `max` queued or in
    /// flight).
    pub fn may_ask(&self, issuer: usize, max: usize) -> bool {
        let queued = self.queued.iter().filter(|(i, _)| *i == issuer).count();
        let flying = self
            .in_flight
            .values()
            .filter(|(i, _)| *i == issuer)
            .count();
        queued + flying < max
    }

    /// Queues the call about `token` to `issuer`'s endpoint.
    pub fn queue(&mut self, issuer: usize, token: &str) {
        self.queued.push((issuer, token.to_string()));
    }

    /// Whether calls wait to be sent.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The queued calls, to send now.
    pub fn take_queued(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.queued)
    }

    /// Call `id`, about `token`, went to `issuer`'s endpoint.
    pub fn sent(&mut self, id: u32, issuer: usize, token: String) {
        self.in_flight.insert(id, (issuer, token));
    }

    /// Call `id` is answered (or failed): its issuer and token, if it was one of these.
    pub fn answered(&mut self, id: u32) -> Option<(usize, String)> {
        self.in_flight.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use crate::keyset::KeySource;
    use serde_json::json;
    use std::collections::HashSet;

    /// RFC 7662 §2.2's example response, its times moved to `NOW`.
    const NOW: u64 = 1_419_350_238;
    const LIMITS: TimeLimits = TimeLimits {
        clock_skew_seconds: 30,
        max_token_lifetime_seconds: 900,
    };

    fn rfc7662_example() -> Value {
        json!({
            "active": true,
            "client_id": "l238j323ds-23ij4",
            "username": "jdoe",
            "scope": "read write dolphin",
            "sub": "Z5O3upPC88QrAjx00dis",
            "aud": "https://protected.example.net/resource",
            "iss": "https://server.example.com/",
            "exp": 1419356238,
            "iat": 1419350238,
            "extension_field": "twenty-seven"
        })
    }

    fn introspection(signed_response: bool) -> Introspection {
        Introspection::new(
            "as".into(),
            "server.example.com".into(),
            "/introspect".into(),
            "rs 1".into(),
            "s3cr&t:x".into(),
            DEFAULT_TIMEOUT_MS,
            DEFAULT_CACHE_SECONDS,
            DEFAULT_NEGATIVE_CACHE_SECONDS,
            DEFAULT_MAX_IN_FLIGHT,
            None,
            signed_response,
        )
    }

    fn issuer() -> Issuer {
        Issuer {
            issuer: "https://server.example.com/".into(),
            audiences: HashSet::from(["https://protected.example.net/resource".to_string()]),
            keys: Some(KeySource::Inline(Vec::new())),
            introspection: None,
            decryption_keys: Vec::new(),
        }
    }

    fn read(body: &Value, content_type: &str) -> Result<Outcome, Reason> {
        let introspection = introspection(false);
        let issuer = issuer();
        let context = Context {
            introspection: &introspection,
            issuer: &issuer,
            fetched: &FetchedKeys::default(),
            crypto: &InVm,
            limits: LIMITS,
        };
        let body = body.to_string();
        let answer = Answer {
            status: Some(200),
            content_type: Some(content_type),
            body: body.as_bytes(),
        };
        read_answer(&answer, "2YotnFZFEjr1zCsicMWpAA", &context, NOW)
    }

    #[test]
    fn the_request_is_a_form_post_with_client_secret_basic() {
        let request = introspection(false).request("mF_9.B5f-4.1JqM +/");
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header(":method"), Some("POST"));
        assert_eq!(header(":path"), Some("/introspect"));
        assert_eq!(
            header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header("accept"), Some("application/json"));
        // RFC 6749 §2.3.1: "rs 1" and "s3cr&t:x", form-urlencoded, then base64.
        assert_eq!(
            header("authorization"),
            Some(format!("Basic {}", STANDARD.encode("rs+1:s3cr%26t%3Ax")).as_str())
        );
        assert_eq!(
            request.body,
            b"token=mF_9.B5f-4.1JqM+%2B%2F&token_type_hint=access_token"
        );
        assert_eq!(
            introspection(true)
                .request("t")
                .headers
                .iter()
                .find(|(n, _)| *n == "accept")
                .map(|(_, v)| v.as_str()),
            Some(JWT_MEDIA_TYPE)
        );
    }

    #[test]
    fn calls_are_one_per_token_and_bounded_per_endpoint_queued_or_in_flight() {
        let mut calls = Calls::default();
        assert!(!calls.asking("t1") && calls.may_ask(0, 2) && !calls.has_queued());
        calls.queue(0, "t1");
        assert!(calls.asking("t1") && calls.has_queued());
        calls.queue(0, "t2");
        assert!(!calls.may_ask(0, 2) && calls.may_ask(1, 2));
        let queued = calls.take_queued();
        assert_eq!(queued, [(0, "t1".to_string()), (0, "t2".to_string())]);
        assert!(!calls.has_queued() && !calls.asking("t1"));
        for (id, (issuer, token)) in (10..).zip(queued) {
            calls.sent(id, issuer, token);
        }
        assert!(calls.asking("t2") && !calls.may_ask(0, 2));
        assert_eq!(calls.answered(10), Some((0, "t1".to_string())));
        assert_eq!(calls.answered(10), None);
        assert!(calls.may_ask(0, 2) && !calls.asking("t1"));
        // A key-set fetch's answer is not an introspection.
        assert_eq!(calls.answered(99), None);
    }

    #[test]
    fn the_debug_print_never_shows_the_secret() {
        let printed = format!("{:?}", introspection(false));
        assert!(!printed.contains("s3cr"), "{printed}");
    }

    #[test]
    fn rfc7662_example_response_is_an_active_token() {
        let Ok(Outcome::Active(token)) = read(&rfc7662_example(), "application/json") else {
            panic!("not active");
        };
        assert_eq!(token.string_claim("sub"), Some("Z5O3upPC88QrAjx00dis"));
        assert_eq!(token.string_claim("client_id"), Some("l238j323ds-23ij4"));
        assert_eq!(token.expires_at(), 1419356238);
        assert!(!token.confirmation().is_bound());
        // With a charset parameter, too.
        assert!(matches!(
            read(&rfc7662_example(), "application/json; charset=utf-8"),
            Ok(Outcome::Active(_))
        ));
    }

    #[test]
    fn rfc7662_inactive_example_is_inactive() {
        assert!(matches!(
            read(&json!({"active": false}), "application/json"),
            Ok(Outcome::Inactive)
        ));
    }

    #[test]
    fn an_active_token_is_checked_like_a_jwt() {
        let with = |edit: &dyn Fn(&mut Map<String, Value>)| {
            let mut members = rfc7662_example();
            if let Some(object) = members.as_object_mut() {
                edit(object);
            }
            read(&members, "application/json").map(|_| ())
        };
        type Edit<'a> = &'a dyn Fn(&mut Map<String, Value>);
        let cases: [(Edit, Reason); 7] = [
            (
                &|m| {
                    m.insert("iss".into(), json!("https://other.example/"));
                },
                Reason::IssuerUnknown,
            ),
            (
                &|m| {
                    m.insert("aud".into(), json!(["https://elsewhere.example"]));
                },
                Reason::AudienceMismatch,
            ),
            (
                &|m| {
                    m.remove("aud");
                },
                Reason::AudienceMismatch,
            ),
            (
                &|m| {
                    m.remove("exp");
                },
                Reason::ExpiryMissing,
            ),
            (
                &|m| {
                    m.insert("exp".into(), json!(NOW - 31));
                },
                Reason::TokenExpired,
            ),
            (
                &|m| {
                    m.insert("nbf".into(), json!(NOW + 31));
                },
                Reason::TokenNotYetValid,
            ),
            (
                &|m| {
                    m.insert("cnf".into(), json!({"jku": "https://x"}));
                },
                Reason::BindingUnsupported,
            ),
        ];
        for (edit, reason) in cases {
            assert_eq!(with(edit), Err(reason));
        }
        // `iss` may be absent: the answer came from the issuer's own endpoint.
        assert_eq!(
            with(&|m| {
                m.remove("iss");
            }),
            Ok(())
        );
        // A lifetime longer than max_token_lifetime_seconds is the server's to decide.
        assert_eq!(
            with(&|m| {
                m.insert("exp".into(), json!(NOW + 86_400));
            }),
            Ok(())
        );
    }

    #[test]
    fn anything_but_an_rfc7662_object_is_invalid() {
        for body in [
            json!({"active": "true"}),
            json!({"active": 1}),
            json!({"sub": "x"}),
            json!([{"active": true}]),
            json!("active"),
        ] {
            assert_eq!(
                read(&body, "application/json").map(|_| ()),
                Err(Reason::IntrospectionInvalid),
                "{body}"
            );
        }
        assert_eq!(
            read(&rfc7662_example(), "text/html").map(|_| ()),
            Err(Reason::IntrospectionInvalid)
        );
    }

    #[test]
    fn no_answer_or_another_status_is_unavailable() {
        let introspection = introspection(false);
        let issuer = issuer();
        let context = Context {
            introspection: &introspection,
            issuer: &issuer,
            fetched: &FetchedKeys::default(),
            crypto: &InVm,
            limits: LIMITS,
        };
        let body = rfc7662_example().to_string();
        for status in [None, Some(401), Some(500), Some(503), Some(204)] {
            let answer = Answer {
                status,
                content_type: Some("application/json"),
                body: body.as_bytes(),
            };
            assert_eq!(
                read_answer(&answer, "t", &context, NOW).map(|_| ()),
                Err(Reason::IntrospectionUnavailable),
                "{status:?}"
            );
        }
        let huge = vec![b' '; MAX_ANSWER_BYTES + 1];
        let answer = Answer {
            status: Some(200),
            content_type: Some("application/json"),
            body: &huge,
        };
        assert_eq!(
            read_answer(&answer, "t", &context, NOW).map(|_| ()),
            Err(Reason::IntrospectionInvalid)
        );
    }
}
