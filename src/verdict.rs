//! The pipeline: the facts of one request and the time in, a verdict out.
//!
//! The glue gathers the facts, this module decides, the glue acts: nothing here touches
//! the host. Checks run cheapest first: path and rule, token extraction, the token
//! (signature, then claims), then the proof of possession.

use crate::bind::mtls::PeerCertificate;
use crate::bind::Confirmation;
use crate::config::Policy;
use crate::extract;
use crate::policy::{self, Require};
use crate::reject::Reason;
use crate::token::{self, VerifiedToken};

/// What the filter knows of a request when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Request<'r> {
    /// The `:path` pseudo-header, query included, as raw bytes.
    pub path: &'r [u8],
    /// The `Authorization` header as raw bytes (Envoy joins repeated headers with `,`).
    pub authorization: Option<&'r [u8]>,
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
    request: Request<'r>,
    peer: impl FnOnce() -> Option<PeerCertificate>,
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
    match verify_and_prove(policy, require, token, peer, now) {
        Ok(verified) => Verdict::Allow {
            headers: claim_headers(policy, &verified),
        },
        Err(reason) => deny(reason, Some(token)),
    }
}

fn verify_and_prove(
    policy: &Policy,
    require: Require,
    token: &str,
    peer: impl FnOnce() -> Option<PeerCertificate>,
    now: u64,
) -> Result<VerifiedToken, Reason> {
    let verified = token::verify(token, &policy.issuers, policy.limits, now)?;
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
/// that are valid header values (no control characters), so a claim can never inject a
/// header line.
fn claim_headers<'p>(policy: &'p Policy, token: &VerifiedToken) -> Vec<(&'p str, String)> {
    policy
        .claims_to_headers
        .iter()
        .filter_map(|mapping| {
            let value = token.string_claim(&mapping.claim)?;
            let safe = value.len() <= 4096 && !value.chars().any(char::is_control);
            safe.then(|| (mapping.header.as_str(), value.to_string()))
        })
        .collect()
}
