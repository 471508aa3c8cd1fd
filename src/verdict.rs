//! The pipeline: the facts of one request and the time in, a verdict out.
//!
//! The glue gathers the facts, this module decides, the glue acts: nothing here touches
//! the host. Checks run cheapest first: path and rule, token extraction, the token
//! (signature, then claims), then the proof of possession.

use std::rc::Rc;

use crate::bind::mtls::PeerCertificate;
use crate::bind::Confirmation;
use crate::cache::TokenCache;
use crate::config::Policy;
use crate::crypto::SignatureVerifier;
use crate::extract;
use crate::policy::{self, Require};
use crate::reject::Reason;
use crate::token::{self, VerifiedToken};

/// What the filter knows of a request when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a, 'r> {
    /// The `:path` pseudo-header, query included, as raw bytes.
    pub path: &'r [u8],
    /// Every `Authorization` header value, as raw bytes.
    pub authorization: &'a [&'r [u8]],
}

/// The decision for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'p, 'r> {
    /// Forward the request, setting these headers (from `claims_to_headers`).
    Allow { headers: Vec<(&'p str, String)> },
    /// Refuse the request. `token` is the presented token, for the log's fingerprint only.
    Deny {
        reason: Reason,
        token: Option<&'r str>,
    },
}

/// Decides a request at time `now` (seconds since the Unix epoch). `peer` gives the
/// connection's client certificate; it is asked only when a binding needs it.
pub fn decide<'p, 'r>(
    policy: &'p Policy,
    request: Request<'_, 'r>,
    peer: impl FnOnce() -> Option<PeerCertificate>,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Verdict<'p, 'r> {
    let deny = |reason, token| Verdict::Deny { reason, token };
    let path = match std::str::from_utf8(request.path) {
        Ok(path) if policy::is_normalized(path) => path,
        _ => return deny(Reason::PathNotNormalized, None),
    };
    let require = policy.rules.requirement(path);
    if require == Require::None {
        return Verdict::Allow {
            headers: Vec::new(),
        };
    }
    if let Err(reason) = extract::reject_token_in_query(path) {
        return deny(reason, None);
    }
    let token = match extract::bearer_token(request.authorization) {
        Ok(Some(token)) => token,
        Ok(None) => return deny(Reason::TokenMissing, None),
        Err(reason) => return deny(reason, None),
    };
    match verify_and_prove(policy, require, token, peer, tokens, now) {
        Ok(verified) => Verdict::Allow {
            headers: claim_headers(policy, &verified),
        },
        Err(reason) => deny(reason, Some(token)),
    }
}

/// How access tokens are verified: the signature verifier and the cache of verified tokens.
pub struct Tokens<'a> {
    pub crypto: &'a dyn SignatureVerifier,
    pub cache: &'a mut TokenCache,
}

impl Tokens<'_> {
    /// The verified token, from the cache or verified now (and then cached).
    fn verify(
        &mut self,
        policy: &Policy,
        token: &str,
        now: u64,
    ) -> Result<Rc<VerifiedToken>, Reason> {
        let key = self.cache.key(token);
        if let Some(cached) = key.as_ref().and_then(|k| self.cache.get(k, now)) {
            return Ok(cached);
        }
        let verified = Rc::new(token::verify(
            token,
            &policy.issuers,
            policy.limits,
            self.crypto,
            now,
        )?);
        if let Some(key) = key {
            self.cache.insert(key, Rc::clone(&verified), now);
        }
        Ok(verified)
    }
}

fn verify_and_prove(
    policy: &Policy,
    require: Require,
    token: &str,
    peer: impl FnOnce() -> Option<PeerCertificate>,
    tokens: &mut Tokens<'_>,
    now: u64,
) -> Result<Rc<VerifiedToken>, Reason> {
    let verified = tokens.verify(policy, token, now)?;
    let confirmation = Confirmation::from_claim(verified.confirmation())?;
    let constrained = match require {
        Require::Mtls => confirmation.x5t_s256.is_some(),
        Require::Bound => confirmation.is_bound(),
        Require::Bearer | Require::None => true,
    };
    if !constrained {
        return Err(Reason::NotSenderConstrained);
    }
    // On every route, a bound token is accepted only with its proof.
    confirmation.prove(peer)?;
    Ok(verified)
}

/// The `claims_to_headers` values of a verified token: string claims only, and only values
/// of visible ASCII and spaces, so that a claim can neither inject a header line nor smuggle
/// characters an upstream might decode differently.
fn claim_headers<'p>(policy: &'p Policy, token: &VerifiedToken) -> Vec<(&'p str, String)> {
    policy
        .claims_to_headers
        .iter()
        .filter_map(|mapping| {
            let value = token.string_claim(&mapping.claim)?;
            let safe =
                value.len() <= 4096 && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            safe.then(|| (mapping.header.as_str(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jwt_simple::prelude::*;
    use serde_json::{json, Map, Value};
    use sha2::{Digest, Sha256};
    use std::cell::Cell;

    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "https://orders.mesh.internal";
    const NOW: u64 = 1_800_000_000;
    const ALICE_DER: &[u8] = b"alice's certificate";
    const MALLORY_DER: &[u8] = b"mallory's certificate";

    struct Fixture {
        key: ES256KeyPair,
        policy: Policy,
    }

    fn fixture() -> Fixture {
        let key = ES256KeyPair::generate().with_key_id("k1");
        let point = key.public_key().public_key().to_bytes_uncompressed();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
                         "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        let config = json!({
            "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks": {"keys": [jwk]}}],
            "rules": [
                {"prefix": "/healthz", "require": "none"},
                {"prefix": "/legacy", "require": "bearer"},
                {"prefix": "/orders", "require": "mtls"},
                {"prefix": "/", "require": "bound"}
            ],
            "claims_to_headers": [{"claim": "sub", "header": "x-tether-sub"}, {"claim": "tenant", "header": "x-tenant"}]
        });
        let policy = Policy::from_json(config.to_string().as_bytes()).unwrap();
        Fixture { key, policy }
    }

    fn cert(der: &[u8]) -> PeerCertificate {
        let hex: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PeerCertificate::from_hex_digest(hex.as_bytes()).unwrap()
    }

    fn token(f: &Fixture, cnf: Option<Value>, extra: &[(&str, Value)]) -> String {
        let mut custom = Map::new();
        if let Some(cnf) = cnf {
            custom.insert("cnf".into(), cnf);
        }
        for (name, value) in extra {
            custom.insert((*name).into(), value.clone());
        }
        let mut claims = Claims::with_custom_claims(custom, Duration::from_secs(300))
            .with_issuer(ISS)
            .with_audience(AUD)
            .with_subject("alice");
        claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
        claims.invalid_before = None;
        claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
        f.key.sign(claims).unwrap()
    }

    fn bound_to(der: &[u8]) -> Option<Value> {
        Some(json!({"x5t#S256": URL_SAFE_NO_PAD.encode(Sha256::digest(der))}))
    }

    fn run<'p, 'r>(
        f: &'p Fixture,
        path: &'r str,
        auth: Option<&'r str>,
        peer: Option<&[u8]>,
    ) -> Verdict<'p, 'r> {
        let peer = peer.map(cert);
        let values: Vec<&'r [u8]> = auth.map(str::as_bytes).into_iter().collect();
        let request = Request {
            path: path.as_bytes(),
            authorization: &values,
        };
        let mut cache = TokenCache::new(0);
        let mut tokens = Tokens {
            crypto: &InVm,
            cache: &mut cache,
        };
        decide(&f.policy, request, || peer, &mut tokens, NOW)
    }

    fn reason(v: Verdict) -> Reason {
        match v {
            Verdict::Deny { reason, .. } => reason,
            Verdict::Allow { .. } => panic!("allowed"),
        }
    }

    fn uncached() -> Tokens<'static> {
        Tokens {
            crypto: &InVm,
            cache: Box::leak(Box::new(TokenCache::new(0))),
        }
    }

    /// Counts the signatures it verifies (in the VM).
    struct Counting(Cell<usize>);

    impl SignatureVerifier for Counting {
        fn verify(
            &self,
            key: &crate::jwk::VerificationKey,
            message: &[u8],
            signature: &[u8],
        ) -> bool {
            self.0.set(self.0.get() + 1);
            InVm.verify(key, message, signature)
        }
    }

    #[test]
    fn cached_token_skips_the_signature_but_not_the_binding() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let counting = Counting(Cell::new(0));
        let mut cache = TokenCache::new(16);
        let mut tokens = Tokens {
            crypto: &counting,
            cache: &mut cache,
        };
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
        };
        for _ in 0..3 {
            let alice = decide(
                &f.policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut tokens,
                NOW,
            );
            assert!(matches!(alice, Verdict::Allow { .. }));
            let mallory = decide(
                &f.policy,
                request,
                || Some(cert(MALLORY_DER)),
                &mut tokens,
                NOW,
            );
            assert_eq!(reason(mallory), Reason::CertificateMismatch);
        }
        assert_eq!(counting.0.get(), 1);
        // After `exp` the cache does not answer: the token is verified again, and refused.
        let late = decide(
            &f.policy,
            request,
            || Some(cert(ALICE_DER)),
            &mut tokens,
            NOW + 400,
        );
        assert_eq!(reason(late), Reason::TokenExpired);
        assert_eq!(counting.0.get(), 2);
    }

    #[test]
    fn refused_tokens_are_not_cached() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        let counting = Counting(Cell::new(0));
        let mut cache = TokenCache::new(16);
        let mut tokens = Tokens {
            crypto: &counting,
            cache: &mut cache,
        };
        let values = [auth.as_bytes()];
        let request = Request {
            path: b"/orders",
            authorization: &values,
        };
        for _ in 0..2 {
            let early = decide(
                &f.policy,
                request,
                || Some(cert(ALICE_DER)),
                &mut tokens,
                NOW - 100,
            );
            assert_eq!(reason(early), Reason::TokenNotYetValid);
        }
        assert_eq!(counting.0.get(), 2);
    }

    #[test]
    fn bound_token_with_its_certificate_is_allowed_with_claim_headers() {
        let f = fixture();
        let auth = format!(
            "Bearer {}",
            token(&f, bound_to(ALICE_DER), &[("tenant", json!("acme"))])
        );
        let verdict = run(&f, "/orders/1", Some(&auth), Some(ALICE_DER));
        assert_eq!(
            verdict,
            Verdict::Allow {
                headers: vec![
                    ("x-tether-sub", "alice".into()),
                    ("x-tenant", "acme".into())
                ]
            }
        );
        assert!(matches!(
            run(&f, "/anything", Some(&auth), Some(ALICE_DER)),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn stolen_bound_token_over_another_certificate_is_refused_on_every_route() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        for path in ["/orders", "/", "/legacy"] {
            assert_eq!(
                reason(run(&f, path, Some(&auth), Some(MALLORY_DER))),
                Reason::CertificateMismatch,
                "{path}"
            );
            assert_eq!(
                reason(run(&f, path, Some(&auth), None)),
                Reason::ClientCertificateMissing,
                "{path}"
            );
        }
    }

    #[test]
    fn unbound_token_is_refused_on_mtls_and_bound_but_served_on_bearer() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, None, &[]));
        assert_eq!(
            reason(run(&f, "/orders", Some(&auth), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
        assert_eq!(
            reason(run(&f, "/", Some(&auth), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
        assert!(matches!(
            run(&f, "/legacy", Some(&auth), None),
            Verdict::Allow { .. }
        ));
        let empty_cnf = format!("Bearer {}", token(&f, Some(json!({})), &[]));
        assert_eq!(
            reason(run(&f, "/", Some(&empty_cnf), Some(ALICE_DER))),
            Reason::NotSenderConstrained
        );
    }

    #[test]
    fn none_route_examines_nothing() {
        let f = fixture();
        assert_eq!(
            run(&f, "/healthz", Some("Bearer !!!"), None),
            Verdict::Allow { headers: vec![] }
        );
        assert_eq!(
            run(&f, "/healthz", None, None),
            Verdict::Allow { headers: vec![] }
        );
    }

    #[test]
    fn missing_token_and_token_in_query() {
        let f = fixture();
        assert_eq!(
            reason(run(&f, "/", None, Some(ALICE_DER))),
            Reason::TokenMissing
        );
        let auth = format!("Bearer {}", token(&f, bound_to(ALICE_DER), &[]));
        assert_eq!(
            reason(run(&f, "/?access_token=x", Some(&auth), Some(ALICE_DER))),
            Reason::TokenInQuery
        );
    }

    #[test]
    fn unnormalized_paths_are_refused_before_rule_matching() {
        let f = fixture();
        assert_eq!(
            reason(run(&f, "/healthz/../orders", None, None)),
            Reason::PathNotNormalized
        );
        let request = Request {
            path: b"/\xff",
            authorization: &[],
        };
        assert_eq!(
            reason(decide(&f.policy, request, || None, &mut uncached(), NOW)),
            Reason::PathNotNormalized
        );
    }

    #[test]
    fn refusal_after_extraction_carries_the_token_for_its_fingerprint() {
        let f = fixture();
        let t = token(&f, None, &[]);
        let auth = format!("Bearer {t}");
        assert_eq!(
            run(&f, "/", Some(&auth), None),
            Verdict::Deny {
                reason: Reason::NotSenderConstrained,
                token: Some(t.as_str())
            }
        );
    }

    #[test]
    fn claim_with_control_characters_is_not_forwarded() {
        let f = fixture();
        let auth = format!(
            "Bearer {}",
            token(
                &f,
                bound_to(ALICE_DER),
                &[("tenant", json!("a\r\nx-admin: 1"))]
            )
        );
        assert_eq!(
            run(&f, "/", Some(&auth), Some(ALICE_DER)),
            Verdict::Allow {
                headers: vec![("x-tether-sub", "alice".into())]
            }
        );
        let non_ascii = format!(
            "Bearer {}",
            token(&f, bound_to(ALICE_DER), &[("tenant", json!("caf\u{e9}"))])
        );
        assert_eq!(
            run(&f, "/", Some(&non_ascii), Some(ALICE_DER)),
            Verdict::Allow {
                headers: vec![("x-tether-sub", "alice".into())]
            }
        );
    }

    #[test]
    fn peer_certificate_is_not_read_for_unbound_bearer_tokens() {
        let f = fixture();
        let auth = format!("Bearer {}", token(&f, None, &[]));
        let request = Request {
            path: b"/legacy",
            authorization: &[auth.as_bytes()],
        };
        let verdict = decide(
            &f.policy,
            request,
            || panic!("peer certificate read"),
            &mut uncached(),
            NOW,
        );
        assert!(matches!(verdict, Verdict::Allow { .. }));
    }
}
