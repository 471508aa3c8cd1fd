//! Which requirement applies to a request: rules matched by path prefix, first match wins.

use serde::Deserialize;

/// What a route requires of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Nothing: no token is examined.
    None,
    /// A valid access token. If the token carries a `cnf` binding it is still enforced:
    /// a bound token is never accepted without its proof.
    Bearer,
    /// A valid access token bound with `cnf["x5t#S256"]` to this connection's client
    /// certificate (RFC 8705 §3).
    Mtls,
    /// A valid access token whose `cnf` names a binding that the request proves.
    Bound,
    /// A valid DPoP-bound access token (`cnf.jkt`) presented with the `DPoP` scheme and a valid
    /// proof (RFC 9449 §7).
    Dpop,
}

/// How a request or a response is signed: `signed_request` and `sign_response` of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureFormat {
    /// A detached JWS (RFC 7515 Appendix F, RFC 7797) in `signed_requests.header`.
    Jws,
    /// HTTP Message Signatures (RFC 9421): `Signature-Input` and `Signature`.
    HttpMessageSignature,
}

/// The requirement applied when no rule matches: the strictest one.
pub const DEFAULT_REQUIRE: Require = Require::Bound;

/// One compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// A plain string prefix of the path (without the query), like Envoy's route `prefix`.
    pub prefix: String,
    pub require: Require,
    /// Whether every request must carry a valid request signature, and of which kind.
    pub signed_request: Option<SignatureFormat>,
    /// Whether Tether signs the responses of allowed requests, and how.
    pub sign_response: Option<SignatureFormat>,
    /// Whether DPoP proofs on this route must carry a nonce Tether issued (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// Whether only tokens of registered clients (`clients`) are accepted.
    pub require_registered_client: bool,
    /// Whether `prefix` matches case-sensitively (the default, like Envoy's route
    /// `case_sensitive`). Turn it off where Envoy's route or the back end ignores case,
    /// or `/ORDERS` would skip the `/orders` rule and still reach the orders service.
    pub case_sensitive: bool,
}

impl Rule {
    /// Whether this rule's prefix matches `path` (without the query).
    fn matches(&self, path: &str) -> bool {
        match path.get(..self.prefix.len()) {
            Some(head) if self.case_sensitive => head == self.prefix,
            Some(head) => head.eq_ignore_ascii_case(&self.prefix),
            None => false,
        }
    }

    /// Whether every path this rule matches is matched by `earlier` first, so that this rule
    /// can never apply.
    fn shadowed_by(&self, earlier: &Rule) -> bool {
        if earlier.case_sensitive && !self.case_sensitive {
            // This rule also matches other spellings of the prefix, which `earlier` misses
            // (unless its prefix has no letters, where case does not matter).
            return !earlier.prefix.bytes().any(|b| b.is_ascii_alphabetic())
                && earlier.matches(&self.prefix);
        }
        earlier.matches(&self.prefix)
    }
}

/// The most letters in a case-insensitive prefix whose spellings are enumerated to see
/// whether earlier rules cover them all (2^12 spellings); a longer one is not covered by
/// case-sensitive rules in any configuration a person writes.
const MAX_ENUMERATED_LETTERS: u32 = 12;

/// The index of an earlier rule that leaves `rule` nothing to match, if any: a single rule
/// that covers it, or (for a case-insensitive rule) earlier rules that between them cover
/// every spelling of its prefix (`/a` and `/A` before `/a` ignoring case).
fn shadowing(earlier: &[Rule], rule: &Rule) -> Option<usize> {
    if let Some(j) = earlier.iter().position(|e| rule.shadowed_by(e)) {
        return Some(j);
    }
    if rule.case_sensitive {
        return None;
    }
    let letters: Vec<usize> = rule
        .prefix
        .bytes()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .collect();
    let count = u32::try_from(letters.len()).ok()?;
    if count == 0 || count > MAX_ENUMERATED_LETTERS {
        return None;
    }
    let mut last = 0;
    for spelling in 0u32..(1 << count) {
        let mut bytes = rule.prefix.clone().into_bytes();
        for (bit, at) in letters.iter().enumerate() {
            if let Some(b) = bytes.get_mut(*at) {
                *b = if spelling & (1 << bit) == 0 {
                    b.to_ascii_lowercase()
                } else {
                    b.to_ascii_uppercase()
                };
            }
        }
        let spelled = String::from_utf8(bytes).ok()?;
        last = last.max(earlier.iter().position(|e| e.matches(&spelled))?);
    }
    Some(last)
}

/// What the matching rule asks of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub require: Require,
    pub signed_request: Option<SignatureFormat>,
    pub sign_response: Option<SignatureFormat>,
    pub dpop_nonce: bool,
    pub require_registered_client: bool,
}

/// The route applied when no rule matches: the strictest requirement, no signature.
const DEFAULT_ROUTE: Route = Route {
    require: DEFAULT_REQUIRE,
    signed_request: None,
    sign_response: None,
    dpop_nonce: false,
    require_registered_client: false,
};

/// The ordered rules of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Compiles the rules, refusing a rule that can never match because an earlier rule's
    /// prefix already covers it (a sign of a mistake that would silently change a policy).
    pub fn new(rules: Vec<Rule>) -> Result<Self, String> {
        for (i, rule) in rules.iter().enumerate() {
            if !rule.prefix.starts_with('/') {
                return Err(format!("rules[{i}].prefix must start with '/'"));
            }
            // What examines a token has nothing to examine on a route that reads none.
            let needs_a_token = [
                ("signed_request", rule.signed_request.is_some()),
                ("sign_response", rule.sign_response.is_some()),
                ("dpop_nonce", rule.dpop_nonce),
                ("require_registered_client", rule.require_registered_client),
            ];
            if rule.require == Require::None {
                if let Some((field, _)) = needs_a_token.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "rules[{i}].{field} needs a token: it cannot go with require \"none\""
                    ));
                }
            }
            if let Some(j) = shadowing(&rules[..i], rule) {
                return Err(format!(
                    "rules[{i}] (prefix {:?}) can never match: rules[{j}] (prefix {:?}) comes first",
                    rule.prefix, rules[j].prefix
                ));
            }
        }
        Ok(Rules(rules))
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter()
    }

    /// The route for a request path (the `:path` pseudo-header, query included).
    pub fn requirement(&self, path: &str) -> Route {
        let path = path_without_query(path);
        self.0
            .iter()
            .find(|rule| rule.matches(path))
            .map_or(DEFAULT_ROUTE, |rule| Route {
                require: rule.require,
                signed_request: rule.signed_request,
                sign_response: rule.sign_response,
                dpop_nonce: rule.dpop_nonce,
                require_registered_client: rule.require_registered_client,
            })
    }
}

/// The path part of a `:path` value.
pub fn path_without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Whether the path is free of everything that lets a request match the rule of one route
/// while a back end serves another:
/// - dot segments (`/healthz/../admin`, RFC 3986 §5.2.4) and empty segments (`//admin`);
/// - `;` path parameters (`/healthz/..;/admin` is resolved to `/admin` by some servers);
/// - percent-encoded unreserved characters, `/`, `\`, `;` and `%` (`/%61dmin`, `%2e%2e`,
///   `%2f`, double encoding `%252e`): RFC 3986 §6.2.2.2 makes them equivalent to the
///   decoded form, which a prefix rule would not see;
/// - backslashes, a fragment, and anything but visible ASCII;
/// - percent-encoded bytes that do not decode to UTF-8, such as the overlong `%C0%AE` (a
///   `.` to some decoders, RFC 3629 §3 forbids it).
///
/// Envoy's `normalize_path` and `merge_slashes` resolve most of these before the filter sees
/// them; this check keeps the rules sound where they are not enabled. Matching stays
/// case-sensitive, like Envoy's route `prefix`.
pub fn is_normalized(path: &str) -> bool {
    // A fragment is never part of a request target (RFC 9112 §3.2).
    if path.contains('#') {
        return false;
    }
    let path = path_without_query(path);
    if !path.starts_with('/') || path.contains("//") {
        return false;
    }
    let bytes = path.as_bytes();
    if bytes
        .iter()
        .any(|b| !b.is_ascii_graphic() || matches!(b, b'\\' | b';'))
    {
        return false;
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return false;
    }
    // Without escapes the path is visible ASCII, checked above: nothing to decode (the usual
    // case, and no allocation on the request path).
    if !bytes.contains(&b'%') {
        return true;
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let escaped = bytes.get(i + 1..i + 3).and_then(crate::percent::hex_byte);
        match escaped {
            Some(b) if !(b.is_ascii_alphanumeric() || b"-._~/\\;%".contains(&b)) => {
                decoded.push(b);
                i += 3;
            }
            _ => return false,
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, require: Require) -> Rule {
        Rule {
            prefix: prefix.to_string(),
            require,
            signed_request: None,
            sign_response: None,
            dpop_nonce: false,
            require_registered_client: false,
            case_sensitive: true,
        }
    }

    fn ignoring_case(rule: Rule) -> Rule {
        Rule {
            case_sensitive: false,
            ..rule
        }
    }

    /// Regression test for issue 7 ("rule case sensitivity"): behind a case-insensitive
    /// route or back end, `/ORDERS` skipped the `/orders` rule.
    #[test]
    fn case_insensitive_rule_matches_every_spelling() {
        let rules = Rules::new(vec![
            ignoring_case(rule("/orders", Require::Mtls)),
            rule("/", Require::Bearer),
        ])
        .unwrap();
        for path in ["/orders", "/ORDERS/1", "/Orders?x=1"] {
            assert_eq!(rules.requirement(path).require, Require::Mtls, "{path}");
        }
        assert_eq!(rules.requirement("/other").require, Require::Bearer);
        // The default stays case-sensitive, like Envoy's route prefix.
        let strict = Rules::new(vec![rule("/orders", Require::Mtls)]).unwrap();
        assert_eq!(strict.requirement("/ORDERS").require, Require::Bound);
        assert_eq!(strict.requirement("/orders").require, Require::Mtls);
    }

    #[test]
    fn shadowing_takes_case_into_account() {
        // A case-insensitive rule shadows every spelling that follows it...
        let shadowed = Rules::new(vec![
            ignoring_case(rule("/orders", Require::Mtls)),
            rule("/ORDERS/x", Require::None),
        ]);
        assert!(shadowed.is_err());
        // ...a case-sensitive one does not shadow a case-insensitive rule it only partly covers...
        assert!(Rules::new(vec![
            rule("/orders", Require::Mtls),
            ignoring_case(rule("/orders/x", Require::None)),
        ])
        .is_ok());
        // ...unless its prefix has no letters.
        assert!(Rules::new(vec![
            rule("/", Require::Mtls),
            ignoring_case(rule("/orders", Require::None)),
        ])
        .is_err());
        // Found by the property tests: two case-sensitive rules that between them cover
        // every spelling leave a later case-insensitive rule nothing to match.
        let err = Rules::new(vec![
            rule("/a", Require::Bearer),
            rule("/A", Require::Bearer),
            ignoring_case(rule("/a", Require::None)),
        ])
        .unwrap_err();
        assert!(
            err.contains("rules[2]") && err.contains("rules[1]"),
            "{err}"
        );
        // One spelling left uncovered: the rule still matches something.
        assert!(Rules::new(vec![
            rule("/ab", Require::Bearer),
            rule("/AB", Require::Bearer),
            ignoring_case(rule("/ab", Require::None)),
        ])
        .is_ok());
    }

    fn contract_rules() -> Rules {
        Rules::new(vec![
            rule("/healthz", Require::None),
            rule("/legacy", Require::Bearer),
            rule("/orders", Require::Mtls),
            rule("/", Require::Bound),
        ])
        .unwrap()
    }

    #[test]
    fn first_matching_prefix_wins() {
        let rules = contract_rules();
        assert_eq!(rules.requirement("/healthz").require, Require::None);
        assert_eq!(rules.requirement("/legacy/x?y=1").require, Require::Bearer);
        assert_eq!(rules.requirement("/orders/42").require, Require::Mtls);
        assert_eq!(rules.requirement("/payments").require, Require::Bound);
    }

    #[test]
    fn query_does_not_take_part_in_matching() {
        let rules = contract_rules();
        assert_eq!(rules.requirement("/x?/healthz").require, Require::Bound);
    }

    #[test]
    fn no_match_means_bound() {
        let rules = Rules::new(vec![rule("/healthz", Require::None)]).unwrap();
        assert_eq!(rules.requirement("/anything").require, Require::Bound);
        assert_eq!(Rules::default().requirement("/").require, Require::Bound);
    }

    #[test]
    fn shadowed_rule_is_a_configuration_error() {
        let err = Rules::new(vec![
            rule("/", Require::Bound),
            rule("/healthz", Require::None),
        ])
        .unwrap_err();
        assert!(err.contains("rules[1]"), "{err}");
        assert!(Rules::new(vec![rule("/a", Require::None), rule("/a", Require::Bearer)]).is_err());
    }

    #[test]
    fn signatures_on_a_none_rule_are_a_configuration_error() {
        let mut none = rule("/x", Require::None);
        none.signed_request = Some(SignatureFormat::Jws);
        assert!(Rules::new(vec![none])
            .unwrap_err()
            .contains("signed_request"));
        let mut none = rule("/x", Require::None);
        none.sign_response = Some(SignatureFormat::HttpMessageSignature);
        assert!(Rules::new(vec![none])
            .unwrap_err()
            .contains("sign_response"));
        let mut none = rule("/x", Require::None);
        none.require_registered_client = true;
        assert!(Rules::new(vec![none])
            .unwrap_err()
            .contains("require_registered_client"));
        let mut bearer = rule("/x", Require::Bearer);
        bearer.require_registered_client = true;
        let rules = Rules::new(vec![bearer]).unwrap();
        assert!(rules.requirement("/x/1").require_registered_client);
        assert!(!rules.requirement("/y").require_registered_client);
        let mut mtls = rule("/payments", Require::Mtls);
        mtls.signed_request = Some(SignatureFormat::HttpMessageSignature);
        mtls.sign_response = Some(SignatureFormat::Jws);
        let rules = Rules::new(vec![mtls]).unwrap();
        let route = rules.requirement("/payments/1");
        assert_eq!(
            route.signed_request,
            Some(SignatureFormat::HttpMessageSignature)
        );
        assert_eq!(route.sign_response, Some(SignatureFormat::Jws));
        assert_eq!(rules.requirement("/other").signed_request, None);
        assert_eq!(rules.requirement("/other").sign_response, None);
    }

    #[test]
    fn prefix_must_be_absolute() {
        assert!(Rules::new(vec![rule("healthz", Require::None)]).is_err());
    }

    #[test]
    fn dot_segments_and_encoded_separators_are_not_normalized() {
        for path in [
            "/healthz/../orders",
            "/./orders",
            "/healthz/%2e%2e/orders",
            "/a%2Fb",
            "/a\\b",
            "/a/..",
            "x",
            "",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
    }

    #[test]
    fn path_parameters_fragments_and_empty_segments_are_not_normalized() {
        // The `..;/` bypass of servers that strip path parameters, then resolve dot segments.
        for path in [
            "/healthz/..;/admin",
            "/healthz/.;/admin",
            "/a;b",
            "/healthz#/../admin",
            "//admin",
            "/a//b",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
    }

    #[test]
    fn encoded_unreserved_and_double_encoding_are_not_normalized() {
        for path in [
            "/%61dmin",
            "/%2561dmin",
            "/a%3bb",
            "/a%5cb",
            "/a%7e",
            "/a%",
            "/a%zz",
            "/a%2",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
    }

    #[test]
    fn control_characters_and_non_ascii_are_not_normalized() {
        for path in ["/a b", "/a\tb", "/caf\u{e9}"] {
            assert!(!is_normalized(path), "{path:?}");
        }
    }

    /// Regression test for issue 7: `%C0%AE` (an overlong `.`) passed the check.
    #[test]
    fn percent_encoded_bytes_that_are_not_utf8_are_not_normalized() {
        for path in [
            "/a/%C0%AE%C0%AE/admin",
            "/%c0%ae",
            "/%FF",
            "/%E2%82",
            "/%ED%A0%80",
        ] {
            assert!(!is_normalized(path), "{path}");
        }
        // Encoded UTF-8 (and reserved characters) stay allowed.
        for path in ["/caf%C3%A9", "/%E2%82%AC", "/a%20b", "/a%3Fb"] {
            assert!(is_normalized(path), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_are_normalized() {
        for path in [
            "/",
            "/orders/42?x=../y;z",
            "/a..b/c.d",
            "/.well-known/jwks.json",
            "/orders/",
            "/search%20term",
            "/caf%C3%A9",
        ] {
            assert!(is_normalized(path), "{path}");
        }
    }
}
