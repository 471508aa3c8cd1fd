//! The request URI a signature or a proof names (`htu`): compared after the normalization
//! RFC 3986 §6.2.2–6.2.3 allows for HTTP URIs, and no other.
//!
//! Scheme and host compare case-insensitively and the scheme's default port is dropped; the
//! path and query compare exactly, so that a signature for `/pay?amount=10` never covers
//! `/pay?amount=1000`. A DPoP proof's `htu` leaves the query and fragment out (RFC 9449 §4.3
//! check 9): [`without_query`] removes them from both sides first.

/// `uri` as `scheme://authority/path?query`: scheme and host in lower case, the scheme's
/// default port (or an empty one) dropped, an empty path as `/`, the rest as it is.
pub fn normalize(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let scheme = scheme.to_ascii_lowercase();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let mut authority = authority.to_ascii_lowercase();
    // RFC 3986 §6.2.3: an empty port is the default one.
    if authority.ends_with(':') {
        authority.pop();
    }
    let default_port = match scheme.as_str() {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    if let Some(port) = default_port {
        if authority.ends_with(port) {
            authority.truncate(authority.len() - port.len());
        }
    }
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    format!("{scheme}://{authority}{path}")
}

/// `uri` without its query and fragment.
pub fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_scheme_and_host_are_case_insensitive_and_default_port_ignored() {
        let n = normalize;
        assert_eq!(
            n("HTTPS://API.Example.com:443/pay?x=1"),
            n("https://api.example.com/pay?x=1")
        );
        assert_eq!(n("http://a.example:80/"), n("http://a.example/"));
        assert_eq!(n("https://a.example:/p"), n("https://a.example/p"));
        assert_eq!(n("https://a.example"), "https://a.example/");
        assert_ne!(n("https://a.example:8443/p"), n("https://a.example/p"));
        assert_ne!(n("https://a.example/Pay"), n("https://a.example/pay"));
        assert_ne!(
            n("https://a.example/pay?x=1"),
            n("https://a.example/pay?x=2")
        );
        assert_ne!(n("http://a.example/pay"), n("https://a.example/pay"));
    }

    #[test]
    fn without_query_drops_query_and_fragment_only() {
        assert_eq!(
            without_query("https://a.example/p?x=1#f"),
            "https://a.example/p"
        );
        assert_eq!(
            without_query("https://a.example/p#f?x"),
            "https://a.example/p"
        );
        assert_eq!(without_query("https://a.example/p"), "https://a.example/p");
        assert_eq!(
            normalize(without_query("https://a.example?x=1")),
            "https://a.example/"
        );
    }
}
