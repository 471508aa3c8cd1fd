//! Where the access token is: the `Authorization` header, and nowhere else.
//!
//! RFC 6750 §2 allows three ways to send a Bearer token. Tether accepts only the
//! `Authorization` header (§2.1). A token in the URI query (§2.3) is refused: URLs are
//! logged by proxies and servers and leak through `Referer`, so such a token must be
//! treated as already stolen. The form-body method (§2.2) is never read.

use crate::reject::Reason;

/// The largest access token Tether reads, in bytes. Real access tokens are well below
/// 4 KiB; the cap bounds the work a hostile request can cause before any signature check.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// The query parameter RFC 6750 §2.3 defines for tokens in URLs.
const QUERY_PARAMETER: &str = "access_token";

/// Refuses a request that carries an access token in its URL query (RFC 6750 §2.3), even
/// when it also has an `Authorization` header: the token has already been exposed.
pub fn reject_token_in_query(path: &str) -> Result<(), Reason> {
    let Some((_, query)) = path.split_once('?') else {
        return Ok(());
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    for pair in query.split(['&', ';']) {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if is_access_token_name(name) {
            return Err(Reason::TokenInQuery);
        }
    }
    Ok(())
}

/// Whether a raw query parameter name is `access_token`, also when percent-encoded
/// (`access%5Ftoken`), so that encoding cannot smuggle a token past the check.
fn is_access_token_name(raw: &str) -> bool {
    if raw.len() > QUERY_PARAMETER.len() * 3 {
        return false;
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    decoded.push(b);
                    i += 3;
                }
                None => return false,
            },
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.eq_ignore_ascii_case(QUERY_PARAMETER.as_bytes())
}

/// Reads the Bearer token from the request's `Authorization` header values (raw bytes,
/// one per header line).
///
/// More than one `Authorization` header is ambiguous (an upstream might use another one
/// than Tether checked) and refused (RFC 6750 §3.1, `invalid_request`). Envoy hands a
/// filter some repeated headers joined with `,`; a `b64token` (RFC 6750 §2.1) never
/// contains a comma, so a comma in a Bearer credential is refused the same way.
///
/// `Ok(None)` means no Bearer credential: no header, or another scheme (`Basic`, ...).
pub fn bearer_token<'r>(authorization: &[&'r [u8]]) -> Result<Option<&'r str>, Reason> {
    let value = match authorization {
        [] => return Ok(None),
        [value] => *value,
        _ => return Err(Reason::MultipleAuthorization),
    };
    // Header values may carry any octet but NUL, CR and LF; a credential is ASCII.
    let value = std::str::from_utf8(value).map_err(|_| Reason::MalformedAuthorization)?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    // The auth-scheme is case-insensitive (RFC 7235 §2.1).
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if credential.contains(',') {
        return Err(Reason::MultipleAuthorization);
    }
    let token = credential.trim_start_matches(' ');
    if token.is_empty() {
        return Err(Reason::MalformedAuthorization);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reason::TokenTooLarge);
    }
    if !is_b64token(token) {
        return Err(Reason::MalformedAuthorization);
    }
    Ok(Some(token))
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(
            bearer_token(&["Bearer abc.def.ghi".as_bytes()]),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(
            bearer_token(&["bearer abc.def.ghi".as_bytes()]),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(
            bearer_token(&["BEARER   abc.def.ghi".as_bytes()]),
            Ok(Some("abc.def.ghi"))
        );
    }

    #[test]
    fn no_header_or_other_scheme_is_no_token() {
        assert_eq!(bearer_token(&[]), Ok(None));
        assert_eq!(bearer_token(&["Basic dXNlcjpwYXNz".as_bytes()]), Ok(None));
        assert_eq!(bearer_token(&["Bearerabc".as_bytes()]), Ok(None));
    }

    #[test]
    fn empty_bearer_credential_is_malformed() {
        assert_eq!(
            bearer_token(&["Bearer".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            bearer_token(&["Bearer    ".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
    }

    #[test]
    fn credential_outside_b64token_charset_is_malformed() {
        assert_eq!(
            bearer_token(&["Bearer !!!".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            bearer_token(&["Bearer a b".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            bearer_token(&["Bearer ===".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            bearer_token(&["Bearer ab=c".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            bearer_token(&["Bearer abc==".as_bytes()]),
            Ok(Some("abc=="))
        );
    }

    #[test]
    fn non_utf8_header_is_malformed() {
        assert_eq!(
            bearer_token(&[b"Bearer \xff\xfe"]),
            Err(Reason::MalformedAuthorization)
        );
    }

    #[test]
    fn repeated_authorization_headers_are_refused() {
        let two: [&[u8]; 2] = [b"Bearer a", b"Bearer b"];
        assert_eq!(bearer_token(&two), Err(Reason::MultipleAuthorization));
        let mixed: [&[u8]; 2] = [b"Basic x", b"Bearer b"];
        assert_eq!(bearer_token(&mixed), Err(Reason::MultipleAuthorization));
    }

    #[test]
    fn other_schemes_with_commas_are_no_token() {
        assert_eq!(
            bearer_token(&[b"Digest username=\"a\", realm=\"b\"".as_slice()]),
            Ok(None)
        );
    }

    #[test]
    fn joined_duplicate_headers_are_refused() {
        assert_eq!(
            bearer_token(&["Bearer a,Bearer b".as_bytes()]),
            Err(Reason::MultipleAuthorization)
        );
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(&[big.as_bytes()]), Err(Reason::TokenTooLarge));
        let fits = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES));
        assert!(bearer_token(&[fits.as_bytes()]).is_ok());
    }

    #[test]
    fn access_token_in_query_is_refused() {
        assert_eq!(
            reject_token_in_query("/orders?access_token=abc"),
            Err(Reason::TokenInQuery)
        );
        assert_eq!(
            reject_token_in_query("/orders?a=1&access_token"),
            Err(Reason::TokenInQuery)
        );
        assert_eq!(
            reject_token_in_query("/orders?a=1;ACCESS_TOKEN=x"),
            Err(Reason::TokenInQuery)
        );
        assert_eq!(
            reject_token_in_query("/orders?access%5Ftoken=x"),
            Err(Reason::TokenInQuery)
        );
        assert_eq!(
            reject_token_in_query("/orders?access%5ftoken=x"),
            Err(Reason::TokenInQuery)
        );
    }

    #[test]
    fn other_query_parameters_pass() {
        assert_eq!(reject_token_in_query("/orders"), Ok(()));
        assert_eq!(
            reject_token_in_query("/orders?my_access_token=1&x=access_token"),
            Ok(())
        );
        assert_eq!(reject_token_in_query("/access_token?x=1"), Ok(()));
        assert_eq!(reject_token_in_query("/orders?%zz=1"), Ok(()));
    }
}
