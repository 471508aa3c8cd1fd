//! Where the access token is: the `Authorization` header, and nowhere else.
//!
//! RFC 6750 §2 allows three ways to send a Bearer token. Tether accepts only the
//! `Authorization` header (§2.1), with the `Bearer` or the `DPoP` scheme (RFC 9449 §7.1). A token in the URI query (§2.3) is refused: URLs are
//! logged by proxies and servers and leak through `Referer`, so such a token must be
//! treated as already stolen. The form-body method (§2.2) is never read.

use crate::percent::form_decode;
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
    if has_access_token_parameter(query.as_bytes()) {
        return Err(Reason::TokenInQuery);
    }
    Ok(())
}

/// Whether `application/x-www-form-urlencoded` data (a query, or a form body) has a
/// parameter whose name any common server would read as `access_token`.
pub fn has_access_token_parameter(data: &[u8]) -> bool {
    data.split(|b| *b == b'&' || *b == b';').any(|pair| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        is_access_token_name(name)
    })
}

/// Whether a `Content-Type` value is `application/x-www-form-urlencoded` (media types are
/// case-insensitive, RFC 9110 §8.3.1; parameters such as `charset` may follow).
pub fn is_form_urlencoded(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// How many rounds of percent-decoding a parameter name gets: servers that decode twice
/// (`access%255Ftoken`) exist; three rounds cover them with room to spare.
const DECODING_ROUNDS: usize = 3;

/// The parameter names servers read a bearer token from: RFC 6750 §2.2 and §2.3's
/// `access_token`, and `bearer_token` (Doorkeeper, Rails).
const TOKEN_PARAMETERS: [&str; 2] = [QUERY_PARAMETER, "bearer_token"];

/// Whether a raw parameter name reads as a token parameter once normalised the ways servers
/// and frameworks normalise names, so that none of them can smuggle a token past the check
/// (issue 7): percent-decoding (repeated), `+` as a space, a NUL ending the name (C-based
/// servers), spaces around it trimmed, ASCII case, ` ` or `.` read as `_` (PHP), and the
/// bracket syntax of PHP, Rack and Node's `qs` (see [`names_read_from`]).
fn is_access_token_name(raw: &[u8]) -> bool {
    // A plain name (the usual case) needs none of the normalisations below: compared as it is,
    // without allocating.
    let plain = !raw
        .iter()
        .any(|b| matches!(b, b'%' | b'+' | b'[' | b'.' | 0) || b.is_ascii_whitespace());
    if plain {
        return TOKEN_PARAMETERS
            .iter()
            .any(|parameter| raw.eq_ignore_ascii_case(parameter.as_bytes()));
    }
    let mut name = raw.to_vec();
    for _ in 0..DECODING_ROUNDS {
        let decoded = form_decode(&name);
        if decoded == name {
            break;
        }
        name = decoded;
    }
    if let Some(end) = name.iter().position(|b| *b == 0) {
        name.truncate(end);
    }
    names_read_from(&name).iter().any(|candidate| {
        let trimmed = candidate.trim_ascii();
        TOKEN_PARAMETERS.iter().any(|parameter| {
            trimmed.len() == parameter.len()
                && trimmed
                    .iter()
                    .map(|b| match b {
                        // `[` reaches here only unmatched (see `names_read_from`).
                        b' ' | b'.' | b'[' => b'_',
                        b => b.to_ascii_lowercase(),
                    })
                    .eq(parameter.bytes())
        })
    })
}

/// The top-level names a server may read from one parameter name with brackets:
/// `access_token[]` and `access_token[x]` are `access_token` (PHP, Rack, `qs`); a leading
/// `[access_token]` is `access_token` (`qs`, Rack); a `[` with no `]` after it is part of
/// the name and read as `_` (PHP: `access[token` is `access_token`). A nested
/// `x[access_token]` is a member of `x`, not a token parameter.
fn names_read_from(name: &[u8]) -> Vec<&[u8]> {
    let name = name.trim_ascii_start();
    let Some(open) = name.iter().position(|b| *b == b'[') else {
        return vec![name];
    };
    let before = name.get(..open).unwrap_or_default();
    let after = name.get(open + 1..).unwrap_or_default();
    match after.iter().position(|b| *b == b']') {
        // `name[...]`, or a leading `[name]`.
        Some(close) if open == 0 => vec![before, after.get(..close).unwrap_or_default()],
        Some(_) => vec![before],
        // PHP reads the unmatched `[` as `_`: compare the two halves around it.
        None => vec![before, name],
    }
}

/// The authentication scheme an access token is presented with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750 §2.1).
    Bearer,
    /// `DPoP` (RFC 9449 §7.1): the token comes with a proof in the `DPoP` header.
    Dpop,
}

/// Reads the access token and its scheme from the request's `Authorization` header values
/// (raw bytes, one per header line): `Bearer` (RFC 6750 §2.1) or `DPoP` (RFC 9449 §7.1), the
/// scheme case-insensitive (RFC 9110 §11.1); both carry a `token68`, a b64token.
///
/// More than one `Authorization` header is ambiguous (an upstream might use another one
/// than Tether checked) and refused (RFC 6750 §3.1, `invalid_request`). Envoy hands a
/// filter some repeated headers joined with `,`; a `b64token` (RFC 6750 §2.1) never
/// contains a comma, so a comma in a credential is refused the same way.
///
/// `Ok(None)` means no access token: no header, or another scheme (`Basic`, ...).
pub fn credential<'r>(authorization: &[&'r [u8]]) -> Result<Option<(Scheme, &'r str)>, Reason> {
    let value = match authorization {
        [] => return Ok(None),
        [value] => *value,
        _ => return Err(Reason::MultipleAuthorization),
    };
    // Header values may carry any octet but NUL, CR and LF; a credential is ASCII.
    let value = std::str::from_utf8(value).map_err(|_| Reason::MalformedAuthorization)?;
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Ok(None);
    };
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
    Ok(Some((scheme, token)))
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// Every request's token passes here: one table look-up per byte (issue 13: the character
/// tests were a quarter of a cached request's work in the VM).
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The bytes of a `b64token` before its `=` padding.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The token of a `Bearer` credential.
    fn bearer_token<'r>(authorization: &[&'r [u8]]) -> Result<Option<&'r str>, Reason> {
        credential(authorization).map(|c| c.filter(|(s, _)| *s == Scheme::Bearer).map(|(_, t)| t))
    }

    #[test]
    fn dpop_scheme_is_read_case_insensitively() {
        for value in ["DPoP abc.def.ghi", "dpop abc.def.ghi", "DPOP  abc.def.ghi"] {
            assert_eq!(
                credential(&[value.as_bytes()]),
                Ok(Some((Scheme::Dpop, "abc.def.ghi")))
            );
        }
        assert_eq!(
            credential(&["DPoP".as_bytes()]),
            Err(Reason::MalformedAuthorization)
        );
        assert_eq!(
            credential(&["DPoP a,DPoP b".as_bytes()]),
            Err(Reason::MultipleAuthorization)
        );
        assert_eq!(credential(&["DPoPabc".as_bytes()]), Ok(None));
    }

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

    /// The table holds exactly RFC 6750 §2.1's characters.
    #[test]
    fn b64token_table_is_the_rfc_charset() {
        const RFC6750: &str =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
        for b in 0..=255u8 {
            assert_eq!(
                B64TOKEN[usize::from(b)],
                RFC6750.as_bytes().contains(&b),
                "{b}"
            );
        }
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
        for other in [
            "access_tokens",
            "access-token",
            "accesstoken",
            "access_token_x",
            "x[access_token]",
        ] {
            assert_eq!(
                reject_token_in_query(&format!("/orders?{other}=1")),
                Ok(()),
                "{other}"
            );
        }
    }

    /// Regression test for issue 7 ("query and body token smuggling"): these names passed,
    /// and many servers read each of them as `access_token`.
    #[test]
    fn access_token_under_any_name_a_server_would_read_as_it_is_refused() {
        for smuggled in [
            "access_token[]",
            "access_token[0]",
            "access_token%5B%5D",
            "access_token+",
            "+access_token",
            "%20access_token%20",
            "access%255Ftoken",
            "access%25255Ftoken",
            "access.token",
            "access+token",
            "access_token%00junk",
            "ACCESS_TOKEN",
            // Found by the review of these fixes:
            "access[token",
            "[access_token]",
            "[access_token][]",
            "%5Baccess_token%5D",
            "bearer_token",
        ] {
            assert_eq!(
                reject_token_in_query(&format!("/orders?a=1&{smuggled}=eyJ")),
                Err(Reason::TokenInQuery),
                "{smuggled}"
            );
        }
        // However long the padding: no length cap lets a name through.
        let padded = format!("/orders?access_token{}=x", "+".repeat(500));
        assert_eq!(reject_token_in_query(&padded), Err(Reason::TokenInQuery));
    }

    #[test]
    fn form_content_types_are_recognised() {
        for form in [
            &b"application/x-www-form-urlencoded"[..],
            b"Application/X-WWW-Form-URLEncoded; charset=utf-8",
            b" application/x-www-form-urlencoded ",
        ] {
            assert!(is_form_urlencoded(form), "{form:?}");
        }
        for other in [
            &b"application/json"[..],
            b"multipart/form-data; boundary=x",
            b"",
        ] {
            assert!(!is_form_urlencoded(other), "{other:?}");
        }
    }

    #[test]
    fn form_data_is_read_the_same_way() {
        assert!(has_access_token_parameter(b"amount=10&access_token=eyJ"));
        assert!(has_access_token_parameter(b"access_token%5B%5D=eyJ"));
        assert!(!has_access_token_parameter(b"amount=10&note=access_token"));
        assert!(!has_access_token_parameter(b""));
    }
}
