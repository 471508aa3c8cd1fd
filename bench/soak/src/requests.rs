//! What each kind of request looks like on the wire: its token, its headers (hostile ones
//! included), its body and when the body comes.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;
use serde_json::json;

use crate::jose::{self, EsKey, RequestSigner, TokenSpec};
use crate::kinds::{Kind, Rng, SLOW_BODY_DELAY};

/// The authority every request names (the server certificate's name) and signatures cover.
pub const AUTHORITY: &str = "localhost";
/// The header by which the upstream counts the requests of each row that reached it.
pub const ROW_HEADER: &str = "x-soak-row";
/// The length of the body sent, which the upstream compares with what it received.
pub const BODY_BYTES_HEADER: &str = "x-soak-body-bytes";
/// The trailer a `Trailers` request ends with; the upstream expects it.
pub const TRAILER: &str = "x-soak-trailer";
/// Tether's `claims_to_headers` header for `sub`: clients forge it, Tether must replace it.
pub const SUB_HEADER: &str = "x-tether-sub";
/// Uses of a token before a lane mints the next: a token is verified once and then served
/// from Tether's cache. About 100 new tokens a second fill the cache (4096 per worker)
/// within the warm-up, and eviction runs from then on.
const TOKEN_USES: u32 = 25;

/// The keys of the run: the issuer's, the registered client's, and the two certificates'
/// thumbprints.
pub struct Keys {
    pub issuer: EsKey,
    pub client: EsKey,
    pub hmac_kid: &'static str,
    pub hmac_secret: Vec<u8>,
    pub alice: String,
    pub mallory: String,
}

/// A request to send. Cloned to replay it.
#[derive(Clone)]
pub struct Outgoing {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: BodyPlan,
}

impl Outgoing {
    /// Sets (or replaces) header `name`.
    pub fn set_header(&mut self, name: &'static str, value: HeaderValue) {
        let name = HeaderName::from_static(name);
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
    }
}

/// The body and its timing.
#[derive(Clone)]
pub enum BodyPlan {
    Empty,
    Now(Bytes),
    /// Headers first, the body `after` later.
    Late {
        body: Bytes,
        after: Duration,
    },
    /// Headers announcing `length` bytes, then nothing.
    Never {
        length: usize,
    },
    /// The body, then trailers (HTTP/2).
    WithTrailers {
        body: Bytes,
        trailers: HeaderMap,
    },
}

/// A token a lane uses a number of times before minting the next.
struct Reused {
    token: String,
    uses: u32,
}

/// One lane's request factory: its own tokens, sequence numbers and randomness.
pub struct Factory<'k> {
    keys: &'k Keys,
    lane: usize,
    sequence: u64,
    rng: Rng,
    valid: Option<Reused>,
    expired: Option<Reused>,
    misbound: Option<Reused>,
}

#[derive(Clone, Copy)]
enum TokenKind {
    Valid,
    Expired,
    Misbound,
}

impl<'k> Factory<'k> {
    pub fn new(keys: &'k Keys, lane: usize, seed: u64) -> Factory<'k> {
        Factory {
            keys,
            lane,
            sequence: 0,
            rng: Rng::new(seed ^ (lane as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
            valid: None,
            expired: None,
            misbound: None,
        }
    }

    /// A new request of `kind` (for `Replayed`: the original, to be sent twice).
    pub fn build(&mut self, kind: Kind) -> Outgoing {
        self.sequence += 1;
        match kind {
            Kind::Valid => self.get(TokenKind::Valid),
            Kind::Expired => self.get(TokenKind::Expired),
            Kind::Misbound => self.get(TokenKind::Misbound),
            Kind::Malformed => {
                let token = self.token(TokenKind::Valid);
                let credential = self.malformed(&token);
                self.get_with_authorization(format!("Bearer {credential}").into_bytes())
            }
            Kind::Oversized => {
                let length = self.rng.within(8193..16385) as usize;
                let credential = self.base64url_chars(length);
                self.get_with_authorization(format!("Bearer {credential}").into_bytes())
            }
            Kind::HostileAuthorization => {
                let token = self.token(TokenKind::Valid);
                let credential = self.hostile_credential(&token);
                self.get_with_authorization(credential)
            }
            Kind::HostileHeaders => {
                let mut request = self.get(TokenKind::Valid);
                self.add_hostile_headers(&mut request);
                request
            }
            Kind::Signed | Kind::Replayed => self.signed(BodyPlan::Now),
            Kind::Trailers => self.signed(|body| {
                let mut trailers = HeaderMap::new();
                trailers.insert(TRAILER, HeaderValue::from_static("done"));
                // A forged claim header as a trailer: Tether removes it there too.
                trailers.insert(SUB_HEADER, HeaderValue::from_static("forged-in-a-trailer"));
                BodyPlan::WithTrailers { body, trailers }
            }),
            Kind::SlowBody => {
                let after = Duration::from_millis(self.rng.within(SLOW_BODY_DELAY));
                self.signed(|body| BodyPlan::Late { body, after })
            }
            Kind::StalledBody => self.signed(|body| BodyPlan::Never { length: body.len() }),
        }
    }

    fn token(&mut self, kind: TokenKind) -> String {
        let slot = match kind {
            TokenKind::Valid => &mut self.valid,
            TokenKind::Expired => &mut self.expired,
            TokenKind::Misbound => &mut self.misbound,
        };
        if let Some(reused) = slot.as_mut().filter(|r| r.uses < TOKEN_USES) {
            reused.uses += 1;
            return reused.token.clone();
        }
        let jti = format!(
            "soak-{}-{}-{}",
            std::process::id(),
            self.lane,
            self.sequence
        );
        let spec = TokenSpec {
            thumbprint: match kind {
                TokenKind::Misbound => &self.keys.mallory,
                _ => &self.keys.alice,
            },
            // Expired: issued 7 minutes ago, so `exp` (300 s later) is 2 minutes past, beyond
            // the 30 s clock skew.
            issued_offset: match kind {
                TokenKind::Expired => -420,
                _ => 0,
            },
            jti: &jti,
        };
        let token = jose::token(&self.keys.issuer, &spec);
        *slot = Some(Reused {
            token: token.clone(),
            uses: 1,
        });
        token
    }

    /// A GET with a token of `kind`.
    fn get(&mut self, kind: TokenKind) -> Outgoing {
        let token = self.token(kind);
        self.get_with_authorization(format!("Bearer {token}").into_bytes())
    }

    fn get_with_authorization(&mut self, authorization: Vec<u8>) -> Outgoing {
        let mut headers = Vec::new();
        if let Ok(value) = HeaderValue::from_bytes(&authorization) {
            headers.push((hyper::header::AUTHORIZATION, value));
        }
        Outgoing {
            method: Method::GET,
            path: format!("/api/orders?lane={}&n={}", self.lane, self.sequence),
            headers,
            body: BodyPlan::Empty,
        }
    }

    /// A POST to the signed route with a fresh signature over a unique body (its lane and
    /// sequence number: no two signatures of a run are the same).
    fn signed(&mut self, body_plan: impl FnOnce(Bytes) -> BodyPlan) -> Outgoing {
        let token = self.token(TokenKind::Valid);
        let pad_length = self.rng.within(32..2048) as usize;
        let pad = self.base64url_chars(pad_length);
        let body = json!({"lane": self.lane, "n": self.sequence, "pad": pad}).to_string();
        let path = format!("/signed/payments?n={}", self.sequence);
        let htu = format!("https://{AUTHORITY}{path}");
        let signer = if self.rng.next().is_multiple_of(4) {
            RequestSigner::Es256(&self.keys.client)
        } else {
            RequestSigner::Hs256 {
                kid: self.keys.hmac_kid,
                secret: &self.keys.hmac_secret,
            }
        };
        let signature = jose::request_signature(&signer, "POST", &htu, &token, body.as_bytes());
        let mut headers = Vec::new();
        let mut push = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.push((HeaderName::from_static(name), value));
            }
        };
        push("authorization", format!("Bearer {token}"));
        push("x-jws-signature", signature);
        push("content-type", "application/json".into());
        push(BODY_BYTES_HEADER, body.len().to_string());
        Outgoing {
            method: Method::POST,
            path,
            headers,
            body: body_plan(Bytes::from(body)),
        }
    }

    /// A `b64token` that is not a JWT, in one of several ways.
    fn malformed(&mut self, token: &str) -> String {
        let mut segments = token.split('.');
        let header = segments.next().unwrap_or_default();
        let payload = segments.next().unwrap_or_default();
        match self.rng.next() % 5 {
            // Three segments of base64url that are not JSON.
            0 => "Zm9v.YmFy.YmF6".to_string(),
            // Two segments.
            1 => format!("{header}.{payload}"),
            // Four segments.
            2 => format!("{token}.e30"),
            // A signature segment that is not base64url (one character cannot be).
            3 => format!("{header}.{payload}.A"),
            // A header that is base64url of something other than JSON.
            _ => format!("{}.{payload}.{}", jose::b64(b"not json"), jose::b64(b"sig")),
        }
    }

    /// `Bearer` and a credential with bytes outside ASCII: not UTF-8, or UTF-8 that is no
    /// `b64token`. (Control bytes would be refused by Envoy's codec before any filter.)
    fn hostile_credential(&mut self, token: &str) -> Vec<u8> {
        let mut value = b"Bearer ".to_vec();
        match self.rng.next() % 4 {
            0 => {
                value.extend_from_slice(token.as_bytes());
                value.push(0xff);
            }
            1 => {
                // U+200B ZERO WIDTH SPACE: valid UTF-8, invisible, not a b64token.
                value.extend_from_slice("\u{200b}".as_bytes());
                value.extend_from_slice(token.as_bytes());
            }
            2 => {
                let cut = (self.rng.next() as usize) % token.len().max(1);
                value.extend_from_slice(&token.as_bytes()[..cut]);
                value.extend_from_slice(&[0x80, 0xc3, 0x28, 0xfe]);
                value.extend_from_slice(&token.as_bytes()[cut..]);
            }
            _ => {
                let length = self.rng.within(1..64) as usize;
                value.extend(self.obs_text(length));
            }
        }
        value
    }

    /// Forged claim headers (the real name with obs-text bytes, and look-alikes CGI and WSGI
    /// read as it) and a header of obs-text bytes: Tether must replace or remove the first,
    /// and pass the request.
    fn add_hostile_headers(&mut self, request: &mut Outgoing) {
        let mut forged = b"admin\xff\xfe".to_vec();
        forged.extend(self.obs_text(8));
        let junk = {
            let length = self.rng.within(1..256) as usize;
            let mut bytes = self.obs_text(length);
            bytes.extend_from_slice(b"\tvisible text");
            bytes
        };
        let headers = [
            (SUB_HEADER, forged),
            ("x_tether_sub", b"admin".to_vec()),
            ("x.tether.sub", b"admin".to_vec()),
            ("x-soak-junk", junk),
            ("user-agent", "soak/\u{1f4a3}".as_bytes().to_vec()),
        ];
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                request.headers.push((HeaderName::from_static(name), value));
            }
        }
    }

    /// Bytes in 0x80..=0xFF (HTTP's obs-text: allowed on the wire, never ASCII).
    fn obs_text(&mut self, length: usize) -> Vec<u8> {
        (0..length)
            .map(|_| 0x80 | (self.rng.next() as u8))
            .collect()
    }

    fn base64url_chars(&mut self, length: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..length)
            .map(|_| ALPHABET[(self.rng.next() % 64) as usize] as char)
            .collect()
    }
}
