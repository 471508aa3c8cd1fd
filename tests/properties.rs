//! Property tests of every parser that sees attacker bytes, and of the pure state machines
//! beside them (issue 8).
//!
//! Each property is named for what it guarantees, and its comment names the attack it stands
//! for. Inputs are random but shaped where shape matters: JSON objects whose members come from
//! the vocabulary the parser knows, with random types and values; compact JWS with random
//! segments; header maps whose lengths lie; event sequences in any order.
//!
//! Runs are reproducible: one fixed seed (ChaCha), so `make test` explores the same cases every
//! time, and no `proptest-regressions` file is ever written into the tree. A failure prints its
//! shrunk input: make it a named regression test beside the code it breaks.
//! `TETHER_PROPTEST_CASES` sets the number of cases (`make fuzz` runs many more, in release);
//! `TETHER_PROPTEST_SEED` picks another seed, to explore further.

use std::collections::HashSet;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{RngAlgorithm, RngSeed, TestCaseError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// Cases per property when `TETHER_PROPTEST_CASES` is not set: every branch of the generators
/// is reached many times, and the whole file still runs in seconds in a debug build.
const DEFAULT_CASES: u32 = 512;

/// The seed of every run unless `TETHER_PROPTEST_SEED` names another.
const DEFAULT_SEED: u64 = 0x7e7_4e12;

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    // A typo must not silently fall back to the short run.
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The configuration of a property whose cases cost about `weight` cheap ones (a signature to
/// make or check): it runs `1/weight` of the cases, so that a long run stays balanced.
fn runner(weight: u32) -> ProptestConfig {
    let cases = env_number("TETHER_PROPTEST_CASES").unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases: (cases / weight).max(1),
        // Never write `proptest-regressions/` into the source tree.
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(env_number("TETHER_PROPTEST_SEED").unwrap_or(DEFAULT_SEED)),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------------------------

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// One of `values`.
fn pick(values: &[&'static str]) -> BoxedStrategy<String> {
    select(values.to_vec()).prop_map(str::to_string).boxed()
}

/// One of `values`, as a JSON string.
fn pick_json_string(values: &[&'static str]) -> BoxedStrategy<String> {
    select(values.to_vec()).prop_map(json_string).boxed()
}

/// One of `values` as a JSON string, or now and then any JSON at all (often a wrong type).
fn json_string_or_any(values: &[&'static str]) -> BoxedStrategy<String> {
    prop_oneof![4 => pick_json_string(values), 1 => json_text()].boxed()
}

/// Object members named `name`, with values (JSON text) from `value`.
fn member(name: &'static str, value: BoxedStrategy<String>) -> BoxedStrategy<(String, String)> {
    value.prop_map(move |v| (name.to_string(), v)).boxed()
}

/// Any JSON value, a few levels deep.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z]{0,6}", inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
    .boxed()
}

/// The text of any JSON value, and numbers that fit neither a `u64` nor an `f64` (a parser
/// must refuse them, not wrap them).
fn json_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => any_json().prop_map(|v| v.to_string()),
        1 => pick(&[
            "1e400", "-1e400", "18446744073709551616", "-0", "-0.0", "1.5", "1e-400",
            "9007199254740993",
        ]),
    ]
    .boxed()
}

/// A JSON object written member by member, so that a member may be given twice (`Value`
/// would keep only one, and a parser that reads the other is a classic confusion).
fn object_text(members: &[(String, String)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{}:{value}", json_string(name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The JSON text of an object with the `present` members that have a value, then `extra`.
fn object_with(present: &[(&str, Option<String>)], extra: Vec<(String, String)>) -> String {
    let mut members: Vec<(String, String)> = present
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)))
        .collect();
    members.extend(extra);
    object_text(&members)
}

/// A time near a reference time, or anywhere.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// Seconds after (before, if negative) the reference.
    After(i64),
    /// An absolute time: 0, `u64::MAX`, anything.
    At(u64),
}

impl Moment {
    fn resolve(self, reference: u64) -> u64 {
        match self {
            Moment::After(delta) => reference.saturating_add_signed(delta),
            Moment::At(time) => time,
        }
    }
}

fn moment(spread: i64) -> BoxedStrategy<Moment> {
    prop_oneof![
        8 => (-spread..=spread).prop_map(Moment::After),
        1 => prop_oneof![Just(0), Just(u64::MAX), any::<u64>()].prop_map(Moment::At),
    ]
    .boxed()
}

/// Bytes of a valid document with random edits: replaced, inserted and deleted bytes, and
/// the end cut off, the way a corrupted or truncated transfer looks.
fn mutated(original: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    vec((any::<Index>(), any::<u8>(), 0u8..4), 1..6)
        .prop_map(move |edits| {
            let mut bytes = original.clone();
            for (at, byte, kind) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => bytes.truncate(i),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => bytes.push(byte),
                }
            }
            bytes
        })
        .boxed()
}

/// RFC 7515 Appendix A.3: the ES256 example public key.
const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

fn p256_jwk(kid: &str) -> Value {
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": P256_X, "y": P256_Y})
}

// ---------------------------------------------------------------------------------------------
// extract: the Authorization header and the query
// ---------------------------------------------------------------------------------------------

mod extract {
    use super::*;
    use tether::extract::{
        credential, has_access_token_parameter, is_form_urlencoded, reject_token_in_query,
        MAX_TOKEN_BYTES,
    };
    use tether::reject::Reason;

    /// The token of a credential, whatever its scheme (`Bearer` or `DPoP`).
    fn token_of<'r>(authorization: &[&'r [u8]]) -> Result<Option<&'r str>, Reason> {
        credential(authorization).map(|c| c.map(|(_, token)| token))
    }

    /// RFC 6750 §2.1's `b64token` characters (before the trailing `=`).
    fn is_b64token_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
    }

    /// `Bearer` in any case (RFC 7235 §2.1: the scheme is case-insensitive).
    fn bearer_scheme() -> BoxedStrategy<String> {
        vec(any::<bool>(), 6)
            .prop_map(|upper| {
                "bearer"
                    .chars()
                    .zip(upper)
                    .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
            .boxed()
    }

    /// A b64token, now and then right at the size cap.
    fn b64token() -> BoxedStrategy<String> {
        prop_oneof![
            8 => "[A-Za-z0-9._~+/-]{1,64}={0,2}",
            1 => (MAX_TOKEN_BYTES - 3..MAX_TOKEN_BYTES + 3).prop_map(|n| "a".repeat(n)),
        ]
        .boxed()
    }

    /// One `Authorization` header value: a Bearer credential near the rules, or any bytes.
    fn authorization_value() -> BoxedStrategy<Vec<u8>> {
        let scheme = prop_oneof![4 => bearer_scheme(), 1 => "[A-Za-z]{0,8}".boxed()];
        // A b64token with one other character in it: the edge of the alphabet.
        let near_token = (
            "[A-Za-z0-9._~+/-]{0,8}",
            "[ -~\u{80}-\u{10ffff}]",
            "[A-Za-z0-9._~+/-]{0,8}",
        )
            .prop_map(|(before, other, after)| format!("{before}{other}{after}"));
        let credential = prop_oneof![
            4 => b64token(),
            3 => near_token.boxed(),
            // Commas (joined duplicate headers), quotes, `=` inside, spaces.
            1 => "[ -~]{0,40}".boxed(),
            1 => ".{0,20}".boxed(),
        ];
        // RFC 7235 §2.1 separates scheme and credential with spaces only.
        let gap = prop_oneof![3 => " {1,3}", 1 => "[ \t]{0,3}"];
        prop_oneof![
            6 => ("[ \t]{0,2}", scheme, gap, credential, "[ \t]{0,2}").prop_map(
                |(lead, scheme, gap, credential, trail)| {
                    format!("{lead}{scheme}{gap}{credential}{trail}").into_bytes()
                }
            ),
            1 => vec(any::<u8>(), 0..64),
        ]
        .boxed()
    }

    /// One character of a parameter name as written in a URL: `depth` rounds of
    /// percent-encoding (`_`, `%5F`, `%255F`, `%25255F`); a bare space is written `+`.
    fn spell(c: char, depth: u8, upper_hex: bool) -> String {
        if depth == 0 {
            return if c == ' ' { "+".into() } else { c.to_string() };
        }
        let hex = if upper_hex {
            format!("{:02X}", u32::from(c))
        } else {
            format!("{:02x}", u32::from(c))
        };
        format!("%{}{hex}", "25".repeat(usize::from(depth) - 1))
    }

    /// A token parameter's name spelled the ways some server still reads as `access_token` or
    /// `bearer_token` (issue 7): any case, percent-encoded up to three times, `_` as `.`, ` `
    /// or an unmatched `[` (PHP), with `[]`, `[0]` or `[name]` brackets (PHP, Rack, `qs`),
    /// padded with spaces, or cut by a NUL (C servers).
    fn smuggled_name() -> BoxedStrategy<String> {
        (
            select(vec!["access_token", "bearer_token"]),
            vec((any::<bool>(), 0u8..=3, any::<bool>()), 12),
            select(vec!['_', '.', ' ', '[']),
            (0u8..4, 0u8..=3),
            (0usize..3, 0usize..3, 0u8..=3),
            prop::option::of((1u8..=3, "[a-z]{0,4}")),
        )
            .prop_map(
                |(name, spelling, separator, (brackets, bracket_depth), padding, nul)| {
                    // `access[token` reads as `access_token` only while no `]` follows it.
                    let brackets = if separator == '[' && brackets >= 2 {
                        0
                    } else {
                        brackets
                    };
                    let body: String = name
                        .chars()
                        .map(|c| if c == '_' { separator } else { c })
                        .zip(spelling)
                        .map(|(c, (upper, depth, upper_hex))| {
                            let c = if upper { c.to_ascii_uppercase() } else { c };
                            spell(c, depth, upper_hex)
                        })
                        .collect();
                    let bracket = |c| spell(c, bracket_depth, true);
                    let (open, close) = match brackets {
                        1 => (bracket('['), bracket(']')),
                        2 => (String::new(), format!("{}{}", bracket('['), bracket(']'))),
                        3 => (String::new(), format!("{}0{}", bracket('['), bracket(']'))),
                        _ => (String::new(), String::new()),
                    };
                    let (left, right, pad_depth) = padding;
                    let pad = |n: usize| spell(' ', pad_depth, true).repeat(n);
                    let nul = nul.map_or(String::new(), |(depth, junk)| {
                        format!("{}{junk}", spell('\0', depth, true))
                    });
                    format!("{}{open}{body}{close}{}{nul}", pad(left), pad(right))
                },
            )
            .boxed()
    }

    /// Text shaped like a URL query or a form body: escapes, separators, brackets.
    fn url_like() -> BoxedStrategy<String> {
        let shaped = "[%0-9a-fA-F_+&;=.\\[\\] a-z?#\\x00]{0,64}";
        prop_oneof![shaped, ".{0,64}"].boxed()
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// The credential goes on to the JWT parser and into logs as a fingerprint: whatever
        /// the headers hold, what comes out is one RFC 6750 b64token within the size cap,
        /// read from the only `Authorization` header (header smuggling, an oversized token
        /// as a denial of service).
        #[test]
        fn credential_yields_only_a_bounded_b64token_from_a_single_header(
            values in prop_oneof![
                3 => vec(authorization_value(), 1),
                1 => vec(authorization_value(), 0..4),
            ],
            at_cap in MAX_TOKEN_BYTES - 2..=MAX_TOKEN_BYTES + 2,
        ) {
            // The cap holds at its edge.
            let long = format!("Bearer {}", "a".repeat(at_cap));
            let read = token_of(&[long.as_bytes()]);
            prop_assert_eq!(read.is_ok(), at_cap <= MAX_TOKEN_BYTES, "{} bytes", at_cap);

            let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            let result = token_of(&values);
            if values.len() > 1 {
                prop_assert_eq!(result, Err(Reason::MultipleAuthorization));
            }
            if let Ok(Some(token)) = result {
                prop_assert!(token.len() <= MAX_TOKEN_BYTES);
                let body = token.trim_end_matches('=');
                prop_assert!(!body.is_empty(), "{:?}", token);
                prop_assert!(body.bytes().all(is_b64token_byte), "{:?}", token);
                prop_assert!(values[0].windows(token.len()).any(|w| w == token.as_bytes()));
            }
        }

        /// The b64token alphabet is exact (RFC 6750 §2.1): of every ASCII character and one
        /// other, set inside an otherwise good credential, only the alphabet's pass (and `=`
        /// only at the end). A character that slips through could split the token where the
        /// upstream reads another one.
        #[test]
        fn only_b64token_characters_pass_in_a_bearer_credential(
            before in "[A-Za-z0-9._~+/-]{1,8}",
            after in "[A-Za-z0-9._~+/-]{0,8}",
            other in "[\u{80}-\u{10ffff}]",
        ) {
            let others = (0u8..0x80).map(char::from).chain(other.chars());
            for c in others {
                let value = format!("Bearer {before}{c}{after}");
                if let Ok(Some(token)) = token_of(&[value.as_bytes()]) {
                    let allowed = c.is_ascii_alphanumeric() || "-._~+/".contains(c);
                    let padding = c == '=' && after.is_empty();
                    // Whitespace around a field value is not part of it (RFC 9110 §5.5).
                    let trimmed = (c == ' ' || c == '\t') && after.is_empty() && token == before;
                    prop_assert!(allowed || padding || trimmed, "{:?} passed in {:?}", c, token);
                }
            }
        }

        /// The other side of the property above (which would hold if everything were
        /// refused): a well-formed Bearer credential is read exactly.
        #[test]
        fn a_well_formed_bearer_credential_is_read_exactly(
            lead in "[ \t]{0,2}",
            scheme in bearer_scheme(),
            gap in " {1,3}",
            token in "[A-Za-z0-9._~+/-]{1,64}={0,2}",
            trail in "[ \t]{0,2}",
        ) {
            let value = format!("{lead}{scheme}{gap}{token}{trail}");
            prop_assert_eq!(token_of(&[value.as_bytes()]), Ok(Some(token.as_str())));
        }

        /// RFC 6750 §2.3 and issue 7: a token in the URL is as good as leaked, and an upstream
        /// that reads it would act on a token Tether never checked. Any spelling some server
        /// reads as a token parameter is refused, wherever it stands in the query.
        #[test]
        fn a_token_parameter_in_the_query_is_refused_however_it_is_spelled(
            path in "/[a-z/]{0,12}",
            before in vec("[a-z0-9%._+=-]{0,12}", 0..3),
            name in smuggled_name(),
            value in prop::option::of("[A-Za-z0-9._~%=-]{0,16}"),
            after in vec("[a-z0-9%._+=-]{0,12}", 0..3),
            separator in select(vec!["&", ";"]),
            fragment in prop::option::of("[ -~]{0,8}"),
        ) {
            let parameter = match value {
                Some(value) => format!("{name}={value}"),
                None => name,
            };
            let query = before
                .into_iter()
                .chain([parameter])
                .chain(after)
                .collect::<Vec<_>>()
                .join(separator);
            prop_assert!(has_access_token_parameter(query.as_bytes()), "{:?}", query);
            let target = match fragment {
                Some(fragment) => format!("{path}?{query}#{fragment}"),
                None => format!("{path}?{query}"),
            };
            prop_assert_eq!(
                reject_token_in_query(&target),
                Err(Reason::TokenInQuery),
                "{:?}",
                target
            );
        }

        /// The query and form checks run on every request, before anything is verified.
        #[test]
        fn query_and_form_checks_never_panic(
            target in url_like(),
            data in prop_oneof![url_like().prop_map(String::into_bytes), vec(any::<u8>(), 0..64)],
            content_type in vec(any::<u8>(), 0..48),
        ) {
            let _ = reject_token_in_query(&target);
            let _ = has_access_token_parameter(&data);
            let _ = is_form_urlencoded(&content_type);
        }

        /// A form body is searched for a smuggled token only if it is recognised as a form:
        /// media types are case-insensitive (RFC 9110 §8.3.1), so a client writing
        /// `Application/X-WWW-Form-URLEncoded ; charset=x` must not hide its body.
        #[test]
        fn a_form_media_type_is_recognised_in_any_spelling(
            upper in vec(any::<bool>(), 33),
            lead in "[ \t]{0,2}",
            trail in "[ \t]{0,2}",
            parameters in "(;[ ]?[a-z]{1,8}=[a-z0-9-]{0,8}){0,2}",
        ) {
            let media: String = "application/x-www-form-urlencoded"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let value = format!("{lead}{media}{trail}{parameters}");
            prop_assert!(is_form_urlencoded(value.as_bytes()), "{:?}", value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// percent: hex digits and form decoding
// ---------------------------------------------------------------------------------------------

mod percent {
    use super::*;
    use tether::percent::{form_decode, hex_byte};

    /// Bytes rich in what decoding reacts to: escapes (of any byte), stray `%`, `+`, hex
    /// digits, anything.
    fn escaped_bytes() -> BoxedStrategy<Vec<u8>> {
        let chunk = prop_oneof![
            2 => "%[0-9a-fA-F]{2}".prop_map(String::into_bytes).boxed(),
            // The escapes that matter: NUL, `%` itself, `+`, `_`, `.`, `/`, not UTF-8.
            1 => pick(&["%00", "%25", "%2B", "%2b", "%5F", "%2e", "%2F", "%ff", "%C0%AE"])
                .prop_map(String::into_bytes)
                .boxed(),
            2 => select(b"%+0123456789abcdefABCDEFgG-".to_vec()).prop_map(|b| vec![b]).boxed(),
            1 => any::<u8>().prop_map(|b| vec![b]).boxed(),
        ];
        vec(chunk, 0..24).prop_map(|chunks| chunks.concat()).boxed()
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Every URL and form check decodes `%XX` with this one function: it must take exactly
        /// two hex digits, nothing `from_str_radix` would also take (`+f`, `-1`), so that no
        /// check decodes differently from the servers it protects.
        #[test]
        fn hex_byte_agrees_with_a_reference(
            pair in vec(
                prop_oneof![select(b"0123456789abcdefABCDEF+- g".to_vec()), any::<u8>()],
                0..4,
            ),
        ) {
            let reference = match pair.as_slice() {
                [high, low] if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                    u8::from_str_radix(std::str::from_utf8(&pair).unwrap_or_default(), 16).ok()
                }
                _ => None,
            };
            prop_assert_eq!(hex_byte(&pair), reference);
        }

        /// Decoding runs on attacker data up to three rounds: it must never grow its input
        /// (no amplification), and must leave text without `%` or `+` as it is.
        #[test]
        fn form_decode_never_grows_its_input(input in escaped_bytes()) {
            let decoded = form_decode(&input);
            prop_assert!(decoded.len() <= input.len());
            if !input.iter().any(|b| matches!(b, b'%' | b'+')) {
                prop_assert_eq!(decoded, input);
            }
        }

        /// Any bytes, percent-encoded in either case, decode back to themselves: the check
        /// reads the name a server reads.
        #[test]
        fn form_decode_inverts_percent_encoding(
            bytes in vec((any::<u8>(), any::<bool>()), 0..32),
        ) {
            let encoded: String = bytes
                .iter()
                .map(|(b, upper)| if *upper { format!("%{b:02X}") } else { format!("%{b:02x}") })
                .collect();
            let original: Vec<u8> = bytes.iter().map(|(b, _)| *b).collect();
            prop_assert_eq!(form_decode(encoded.as_bytes()), original);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// policy: path normalization and rule matching
// ---------------------------------------------------------------------------------------------

mod policy {
    use super::*;
    use tether::policy::{
        is_normalized, Require, Route, Rule, Rules, SignatureFormat, DEFAULT_REQUIRE,
    };

    /// One path segment, or part of one: plain text, dot segments, escapes (plain, of
    /// separators, of dots, overlong UTF-8, not UTF-8 at all, malformed), and bytes a path
    /// must not carry.
    fn segment() -> BoxedStrategy<String> {
        prop_oneof![
            6 => "[A-Za-z0-9_~-]{1,6}".boxed(),
            1 => pick(&[".", "..", ""]),
            2 => "%[0-9A-Fa-f]{2}".boxed(),
            2 => pick(&[
                "%2f", "%2F", "%2e", "%2E%2e", "%5c", "%3b", "%25", "%252e", "%252f", "%C0%AE",
                "%c0%ae", "%e9", "%ff", "%C3%A9", "%e2%80%ae", "%e2%80", "%", "%2", "%zz", "%+f",
            ]),
            1 => pick(&[" ", "\t", "\u{7f}", "\u{0}", "é", "\\", ";", "#", "?", "\u{202e}"]),
        ]
        .boxed()
    }

    fn path() -> BoxedStrategy<String> {
        prop_oneof![
            8 => (
                prop::bool::weighted(0.9),
                vec(vec(segment(), 1..3).prop_map(|parts| parts.concat()), 0..6),
                prop::option::of("[ -~]{0,8}"),
            )
                .prop_map(|(absolute, segments, query)| {
                    let mut path = if absolute { "/".to_string() } else { String::new() };
                    path.push_str(&segments.join("/"));
                    if let Some(query) = query {
                        path.push('?');
                        path.push_str(&query);
                    }
                    path
                }),
            1 => ".{0,32}".boxed(),
        ]
        .boxed()
    }

    /// Percent-decoding written independently of Tether: the decoded bytes, and each escape
    /// (`None` for a `%` not followed by two hex digits).
    fn percent_decode(path: &str) -> (Vec<u8>, Vec<Option<u8>>) {
        let bytes = path.as_bytes();
        let (mut decoded, mut escapes) = (Vec::new(), Vec::new());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let hex = |pair: &[u8]| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok();
            let escape = (b == b'%').then(|| {
                bytes
                    .get(i + 1..i + 3)
                    .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))
                    .and_then(hex)
            });
            match escape {
                Some(Some(escaped)) => {
                    decoded.push(escaped);
                    escapes.push(Some(escaped));
                    i += 3;
                }
                Some(None) => {
                    decoded.push(b);
                    escapes.push(None);
                    i += 1;
                }
                None => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        (decoded, escapes)
    }

    /// Why a request path (before its query) could be resolved by a back end to another
    /// route than its prefix says; `None` if no reason is known.
    fn ambiguity(target: &str) -> Option<&'static str> {
        let path = target.split(['?', '#']).next().unwrap_or(target);
        let slashed = format!("{path}/");
        let (decoded, escapes) = percent_decode(path);
        if !path.starts_with('/') {
            Some("not absolute")
        } else if path.contains("//") {
            Some("empty segment")
        } else if slashed.contains("/../") || slashed.contains("/./") {
            Some("dot segment")
        } else if path.to_ascii_lowercase().contains("%2f") {
            Some("encoded slash")
        } else if path.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            Some("not visible ASCII")
        } else if path.contains(['\\', ';']) {
            Some("backslash or path parameter")
        } else if escapes.contains(&None) {
            Some("a % that is no escape")
        } else if escapes
            .iter()
            .flatten()
            .any(|b| b.is_ascii_alphanumeric() || b"-._~/\\;%".contains(b))
        {
            Some("encoded unreserved character or separator")
        } else if std::str::from_utf8(&decoded).is_err() {
            Some("escapes that are not UTF-8")
        } else {
            None
        }
    }

    fn rule() -> BoxedStrategy<Rule> {
        (
            prop_oneof![9 => "/[aAb/]{0,3}", 1 => "[aA]{0,2}"],
            select(vec![
                Require::None,
                Require::Bearer,
                Require::Mtls,
                Require::Bound,
                Require::Dpop,
            ]),
            format(),
            format(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    prefix,
                    require,
                    signed_request,
                    sign_response,
                    dpop_nonce,
                    require_registered_client,
                    case_sensitive,
                )| {
                    Rule {
                        prefix,
                        require,
                        signed_request,
                        sign_response,
                        dpop_nonce,
                        require_registered_client,
                        case_sensitive,
                    }
                },
            )
            .boxed()
    }

    fn format() -> impl Strategy<Value = Option<SignatureFormat>> {
        prop_oneof![
            Just(None),
            Just(Some(SignatureFormat::Jws)),
            Just(Some(SignatureFormat::HttpMessageSignature)),
        ]
    }

    /// First match wins, written out independently of Tether.
    fn reference_route(rules: &[Rule], target: &str) -> Route {
        let path = target.split(['?', '#']).next().unwrap_or(target).as_bytes();
        rules
            .iter()
            .find(|rule| {
                let prefix = rule.prefix.as_bytes();
                path.len() >= prefix.len()
                    && if rule.case_sensitive {
                        &path[..prefix.len()] == prefix
                    } else {
                        path[..prefix.len()].eq_ignore_ascii_case(prefix)
                    }
            })
            .map_or(
                Route {
                    require: DEFAULT_REQUIRE,
                    signed_request: None,
                    sign_response: None,
                    dpop_nonce: false,
                    require_registered_client: false,
                },
                |rule| Route {
                    require: rule.require,
                    signed_request: rule.signed_request,
                    sign_response: rule.sign_response,
                    dpop_nonce: rule.dpop_nonce,
                    require_registered_client: rule.require_registered_client,
                },
            )
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Rules match by prefix, so a path a back end resolves elsewhere (`/healthz/../admin`,
        /// `/%2e%2e/admin`, `//admin`, an overlong `%C0%AE`, a `%2F`) would match one rule and
        /// reach another route. None of them is ever taken as normalized.
        #[test]
        fn is_normalized_accepts_no_path_a_back_end_could_resolve_elsewhere(target in path()) {
            if is_normalized(&target) {
                prop_assert_eq!(ambiguity(&target), None, "{:?}", target);
            }
        }

        /// The other side (the property above would hold if every path were refused): plain
        /// paths, with escapes of characters that need them, are normalized.
        #[test]
        fn a_plain_path_is_normalized(
            segments in vec(
                prop_oneof![
                    4 => "[A-Za-z0-9_~.-]{1,8}"
                        .prop_filter("a dot segment", |s| s != "." && s != ".."),
                    1 => pick(&["%20", "%C3%A9", "%e2%82%ac", "%21", "%3F", "%23", "%40"]),
                ],
                1..6,
            ),
            query in prop::option::of("[a-z=&%./]{0,8}"),
        ) {
            let mut target = format!("/{}", segments.join("/"));
            if let Some(query) = query {
                target = format!("{target}?{query}");
            }
            prop_assert!(is_normalized(&target), "{:?}", target);
        }

        /// The first rule whose prefix matches decides (none matching: `bound`, the
        /// strictest), the query never takes part (`/public?/admin`), and a compiled policy
        /// has no prefix without a leading `/` and no signature or DPoP nonce without a token.
        #[test]
        fn the_first_matching_rule_decides_and_the_query_never_does(
            rules in vec(rule(), 0..5),
            targets in vec("/[aAbé/]{0,5}(\\?[aA/?]{0,3})?", 1..6),
        ) {
            let Ok(compiled) = Rules::new(rules.clone()) else {
                return Ok(());
            };
            for rule in &rules {
                prop_assert!(rule.prefix.starts_with('/'));
                prop_assert!(!(rule.signed_request.is_some() && rule.require == Require::None));
                prop_assert!(!(rule.sign_response.is_some() && rule.require == Require::None));
                prop_assert!(!(rule.dpop_nonce && rule.require == Require::None));
            }
            for target in &targets {
                prop_assert_eq!(compiled.requirement(target), reference_route(&rules, target));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// token: JWT verification
// ---------------------------------------------------------------------------------------------

mod token {
    use super::*;
    use jwt_simple::prelude::{Claims, Duration, Ed25519KeyPair, EdDSAKeyPairLike, UnixTimeStamp};
    use tether::crypto::InVm;
    use tether::jwk::parse_jwks;
    use tether::keyset::{FetchedKeys, KeySource};
    use tether::reject::Reason;
    use tether::token::{fingerprint, verify, Issuer, TimeLimits};

    const ISS: &str = "https://idp.example.com";
    const AUD: &str = "https://orders.mesh.internal";
    const NOW: u64 = 1_800_000_000;
    const LIMITS: TimeLimits = TimeLimits {
        clock_skew_seconds: 30,
        max_token_lifetime_seconds: 900,
    };

    /// RFC 8037 Appendix A.1: the Ed25519 example key (`d` private, `x` public).
    const ED25519_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn key_pair_bytes() -> Vec<u8> {
        let mut bytes = URL_SAFE_NO_PAD.decode(ED25519_D).unwrap();
        bytes.extend(URL_SAFE_NO_PAD.decode(ED25519_X).unwrap());
        bytes
    }

    /// The issuer's signing key, as jwt-simple holds it.
    fn issuer_key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_bytes(&key_pair_bytes())
            .unwrap()
            .with_key_id("k1")
    }

    /// Signs any header and claims text with the issuer's key (jwt-simple only signs claims
    /// it can represent; these may be anything).
    fn sign_raw(header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let key = ed25519_compact::KeyPair::from_slice(&key_pair_bytes()).unwrap();
        format!("{input}.{}", b64(key.sk.sign(input.as_bytes(), None)))
    }

    /// One issuer with two keys: the Ed25519 key above (`k1`) and RFC 7515 A.3's P-256 key
    /// (`k2`), so that random headers reach both verifiers.
    fn issuers() -> &'static [Issuer] {
        static ISSUERS: OnceLock<Vec<Issuer>> = OnceLock::new();
        ISSUERS.get_or_init(|| {
            let jwks = json!({"keys": [
                {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": ED25519_X},
                p256_jwk("k2"),
            ]});
            vec![Issuer {
                issuer: ISS.into(),
                audiences: HashSet::from([AUD.to_string()]),
                keys: Some(KeySource::Inline(parse_jwks(&jwks).unwrap().keys)),
                introspection: None,
                decryption_keys: Vec::new(),
            }]
        })
    }

    fn check(token: &str, limits: TimeLimits, now: u64) -> Result<(), Reason> {
        verify(
            token,
            issuers(),
            &FetchedKeys::default(),
            limits,
            &InVm,
            now,
        )
        .map(|_| ())
        .map_err(|refusal| refusal.reason)
    }

    /// Where a time claim stands: at a threshold of the checks (now; the clock skew behind
    /// or ahead; the longest lifetime and skew ahead), give or take two seconds; or anywhere
    /// within 3000 s of now. Off-by-one errors live at the thresholds.
    #[derive(Clone, Copy, Debug)]
    enum Time {
        Now(i64),
        SkewAgo(i64),
        SkewAhead(i64),
        LifetimeAhead(i64),
        Near(i64),
    }

    impl Time {
        fn at(self, now: u64, limits: TimeLimits) -> u64 {
            let skew = limits.clock_skew_seconds;
            let (base, jitter) = match self {
                Time::Now(d) | Time::Near(d) => (now, d),
                Time::SkewAgo(d) => (now.saturating_sub(skew), d),
                Time::SkewAhead(d) => (now.saturating_add(skew), d),
                Time::LifetimeAhead(d) => (
                    now.saturating_add(limits.max_token_lifetime_seconds)
                        .saturating_add(skew),
                    d,
                ),
            };
            base.saturating_add_signed(jitter)
        }
    }

    fn time() -> BoxedStrategy<Time> {
        prop_oneof![
            2 => (-2i64..=2).prop_map(Time::Now),
            2 => (-2i64..=2).prop_map(Time::SkewAgo),
            2 => (-2i64..=2).prop_map(Time::SkewAhead),
            2 => (-2i64..=2).prop_map(Time::LifetimeAhead),
            1 => (-3000i64..3000).prop_map(Time::Near),
        ]
        .boxed()
    }

    /// A claim's value: JSON text, or a NumericDate written once `now` and the limits are
    /// known (whole or fractional seconds).
    #[derive(Clone, Debug)]
    enum Piece {
        Text(String),
        Date(Time),
        Fraction(Time, u16),
    }

    type Template = Vec<(String, Piece)>;

    fn render(template: &Template, now: u64, limits: TimeLimits) -> String {
        let members: Vec<(String, String)> = template
            .iter()
            .map(|(name, piece)| {
                let value = match piece {
                    Piece::Text(text) => text.clone(),
                    Piece::Date(time) => time.at(now, limits).to_string(),
                    Piece::Fraction(time, f) => format!("{}.{f:03}", time.at(now, limits)),
                };
                (name.clone(), value)
            })
            .collect();
        object_text(&members)
    }

    fn text(values: BoxedStrategy<String>) -> BoxedStrategy<Piece> {
        values.prop_map(Piece::Text).boxed()
    }

    /// A NumericDate at a threshold, fractional, anywhere, negative, or not a number at all.
    fn date() -> BoxedStrategy<Piece> {
        let odd = [
            "1e400",
            "1e300",
            "-1",
            "-0",
            "-0.0",
            "0",
            "18446744073709551615",
            "18446744073709551616",
            "\"1800000000\"",
            "null",
            "true",
            "[]",
        ];
        prop_oneof![
            8 => time().prop_map(Piece::Date),
            1 => (time(), 1u16..1000).prop_map(|(time, f)| Piece::Fraction(time, f)),
            1 => text(any::<u64>().prop_map(|t| t.to_string()).boxed()),
            1 => text(any::<i64>().prop_map(|t| t.to_string()).boxed()),
            1 => text(pick(&odd)),
        ]
        .boxed()
    }

    /// `cnf` (RFC 7800): a certificate thumbprint, right or too short, a key thumbprint
    /// Tether cannot prove, none, a key, a key with its private part, or anything.
    fn confirmation_text() -> BoxedStrategy<String> {
        let key = json!({"kty": "OKP", "crv": "Ed25519", "x": ED25519_X});
        let mut private_key = key.clone();
        private_key["d"] = json!(ED25519_D);
        let values = vec![
            json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            json!({"x5t#S256": "short"}),
            json!({"jkt": "x"}),
            json!({}),
            json!({ "jwk": key }),
            json!({ "jwk": private_key }),
        ];
        prop_oneof![4 => select(values).prop_map(|v| v.to_string()), 1 => json_text()].boxed()
    }

    fn claim_member() -> BoxedStrategy<(String, Piece)> {
        let audiences = [
            json!(AUD),
            json!(["https://other", AUD]),
            json!([]),
            json!([1]),
        ];
        let audience = select(audiences.map(|a| a.to_string()).to_vec()).boxed();
        // Each name is a regex matching only itself.
        prop_oneof![
            (
                "iss",
                text(json_string_or_any(&[ISS, "https://evil.example", ""]))
            ),
            ("aud", text(prop_oneof![audience, json_text()].boxed())),
            ("exp", date()),
            ("nbf", date()),
            ("iat", date()),
            ("cnf", text(confirmation_text())),
            ("[a-z_]{1,6}", text(json_text())),
        ]
        .boxed()
    }

    /// Claims whose deciding members are usually there and usually right, so that random
    /// cases get past the issuer and audience to the time checks; then any members, which
    /// may repeat one of them.
    fn claims_template() -> BoxedStrategy<Template> {
        let usually = |right: &'static str| {
            prop::option::weighted(
                0.9,
                prop_oneof![9 => Just(Piece::Text(json_string(right))), 1 => text(json_text())],
            )
        };
        (
            usually(ISS),
            usually(AUD),
            prop::option::weighted(0.9, date()),
            prop::option::of(date()),
            prop::option::weighted(0.75, date()),
            vec(claim_member(), 0..3),
        )
            .prop_map(|(iss, aud, exp, nbf, iat, extra)| {
                let mut members: Template = [
                    ("iss", iss),
                    ("aud", aud),
                    ("exp", exp),
                    ("nbf", nbf),
                    ("iat", iat),
                ]
                .into_iter()
                .filter_map(|(name, value)| Some((name.to_string(), value?)))
                .collect();
                members.extend(extra);
                members
            })
            .boxed()
    }

    fn header_member() -> BoxedStrategy<(String, String)> {
        let embedded_key = json!({"kty": "OKP", "crv": "Ed25519", "x": ED25519_X}).to_string();
        prop_oneof![
            member(
                "alg",
                json_string_or_any(&[
                    "EdDSA", "ES256", "RS256", "PS256", "HS256", "none", "", "eddsa"
                ])
            ),
            member("kid", json_string_or_any(&["k1", "k2", "k3", ""])),
            member(
                "typ",
                json_string_or_any(&["JWT", "at+jwt", "application/AT+JWT", "dpop+jwt"])
            ),
            member(
                "crit",
                prop_oneof![pick(&["[\"exp\"]", "[]"]), json_text()].boxed()
            ),
            // Keys in the header are never trusted (CVE-2018-0114 and kin).
            member("jwk", Just(embedded_key).boxed()),
            member("jku", pick_json_string(&["https://evil.example/jwks"])),
            ("[a-z]{1,4}", json_text()),
        ]
        .boxed()
    }

    fn header_text() -> BoxedStrategy<String> {
        (
            prop::option::weighted(0.9, pick_json_string(&["EdDSA", "ES256", "none", "HS256"])),
            prop::option::of(pick_json_string(&["k1", "k2", "k3"])),
            vec(header_member(), 0..3),
        )
            .prop_map(|(alg, kid, extra)| object_with(&[("alg", alg), ("kid", kid)], extra))
            .boxed()
    }

    fn signature_segment() -> BoxedStrategy<String> {
        prop_oneof![
            3 => vec(any::<u8>(), 64).prop_map(b64),
            2 => vec(any::<u8>(), 0..100).prop_map(b64),
            1 => "[A-Za-z0-9_-]{0,90}",
            1 => "[!-~]{0,10}",
        ]
        .boxed()
    }

    /// A token right in every way but its signature: the header names a real key, the claims
    /// are the issuer's and current; the signature is random, or the issuer's own for other
    /// claims (a signature moved from one token to another).
    fn unsigned_token() -> BoxedStrategy<String> {
        let headers = [
            json!({"alg": "EdDSA", "kid": "k1"}),
            json!({"alg": "EdDSA"}),
            json!({"alg": "ES256", "kid": "k2"}),
            json!({"alg": "ES256", "typ": "at+jwt"}),
        ];
        let claims = json!({"iss": ISS, "aud": AUD, "sub": "mallory", "iat": NOW, "exp": NOW + 60});
        let moved = valid_token()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        (
            select(headers.map(|h| b64(h.to_string())).to_vec()),
            prop_oneof![3 => signature_segment(), 1 => Just(moved).boxed()],
        )
            .prop_map(move |(header, signature)| {
                format!("{header}.{}.{signature}", b64(claims.to_string()))
            })
            .boxed()
    }

    /// Compact serializations: right but for the signature; `a.b.c` with any JSON header and
    /// claims; any number of random segments; any string; one right at the size cap.
    fn hostile_token() -> BoxedStrategy<String> {
        prop_oneof![
            4 => unsigned_token(),
            8 => (header_text(), claims_template(), signature_segment()).prop_map(
                |(header, claims, signature)| {
                    let claims = render(&claims, NOW, LIMITS);
                    format!("{}.{}.{signature}", b64(header), b64(claims))
                }
            ),
            1 => vec("[A-Za-z0-9_=+/-]{0,24}", 0..6).prop_map(|segments| segments.join(".")),
            1 => ".{0,64}".boxed(),
            1 => (8185usize..8200).prop_map(|n| format!("e30.e30.{}", "A".repeat(n - 8))),
        ]
        .boxed()
    }

    /// A NumericDate as RFC 7519 §2 reads it, for the reference checks below.
    fn numeric_date(value: &Value) -> Option<u64> {
        value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.min(u64::MAX as f64) as u64)
        })
    }

    fn time_limits() -> BoxedStrategy<TimeLimits> {
        (0u64..=300, prop_oneof![1u64..2000, 1u64..=86_400])
            .prop_map(|(skew, max)| TimeLimits {
                clock_skew_seconds: skew,
                max_token_lifetime_seconds: max,
            })
            .boxed()
    }

    const BASE64URL_AND_DOT: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

    /// A valid token, signed by the issuer with jwt-simple, issued at `NOW` for 300 s.
    fn valid_token() -> &'static str {
        static TOKEN: OnceLock<String> = OnceLock::new();
        TOKEN.get_or_init(|| {
            let mut claims = Claims::create(Duration::from_secs(300))
                .with_issuer(ISS)
                .with_audience(AUD);
            claims.issued_at = Some(UnixTimeStamp::from_secs(NOW));
            claims.invalid_before = Some(UnixTimeStamp::from_secs(NOW));
            claims.expires_at = Some(UnixTimeStamp::from_secs(NOW + 300));
            issuer_key().sign(claims).unwrap()
        })
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Nothing but the issuer's signature makes a token valid: no header trick (`none`,
        /// HS256 with a public key, an embedded `jwk`, a `kid` of another key), no malformed
        /// number, no duplicate member, no odd segment count gets a token accepted, and none
        /// makes the verifier panic (a trap takes down the worker's VM).
        #[test]
        fn a_token_not_signed_by_the_issuer_is_never_accepted(token in hostile_token()) {
            prop_assert!(check(&token, LIMITS, NOW).is_err(), "{:?}", token);
            // Logs carry the fingerprint, never the token: always 16 hex digits.
            let name = fingerprint(&token);
            prop_assert_eq!(name.len(), 16);
            prop_assert!(name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }

        /// Integrity: changing any one character of a signed token gets it refused (base64url
        /// has no second spelling of the same bytes that Tether would accept).
        #[test]
        fn changing_any_character_of_a_signed_token_gets_it_refused(
            at in any::<Index>(),
            replacement in any::<Index>(),
        ) {
            let token = valid_token();
            prop_assert_eq!(check(token, LIMITS, NOW), Ok(()));
            let mut bytes = token.as_bytes().to_vec();
            let i = at.index(bytes.len());
            // Another character, never the same one (no rejected cases, however long the run).
            let original = bytes[i];
            let others: Vec<u8> = BASE64URL_AND_DOT
                .iter()
                .copied()
                .filter(|c| *c != original)
                .collect();
            bytes[i] = *replacement.get(&others);
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert!(check(&tampered, LIMITS, NOW).is_err(), "{:?}", tampered);
        }

        /// Claims are trusted only once signed, and then only if every check holds: a signed
        /// token with claims of any shape (strings for numbers, negative or huge dates,
        /// fractions, repeated members, `aud` arrays) is accepted only if its issuer and
        /// audience are ours and its times are within the limits, read as RFC 7519 reads them.
        #[test]
        fn signed_claims_are_accepted_only_when_every_claim_check_holds(
            claims in claims_template(),
            typ in prop::option::of(pick(&["JWT", "at+jwt", "dpop+jwt"])),
            now in prop_oneof![8 => NOW - 2500..NOW + 2500, 1 => any::<u64>()],
            limits in time_limits(),
        ) {
            let claims = render(&claims, now, limits);
            let header = match typ {
                Some(typ) => json!({"alg": "EdDSA", "kid": "k1", "typ": typ}),
                None => json!({"alg": "EdDSA", "kid": "k1"}),
            };
            let token = sign_raw(&header.to_string(), &claims);
            if check(&token, limits, now).is_err() {
                return Ok(());
            }
            // serde_json keeps the last of repeated members; the checks below read those.
            let claims: Value = serde_json::from_str(&claims)
                .map_err(|e| TestCaseError::fail(format!("accepted claims, not JSON: {e}")))?;
            prop_assert_eq!(claims["iss"].as_str(), Some(ISS));
            let audience_ok = match &claims["aud"] {
                Value::String(aud) => aud == AUD,
                Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(AUD)),
                _ => false,
            };
            prop_assert!(audience_ok);
            let skew = u128::from(limits.clock_skew_seconds);
            let max = u128::from(limits.max_token_lifetime_seconds);
            let now = u128::from(now);
            let exp = claims.get("exp").map(numeric_date);
            prop_assert!(matches!(exp, Some(Some(_))), "exp: {:?}", claims.get("exp"));
            let exp = u128::from(exp.flatten().unwrap_or_default());
            prop_assert!(now <= exp + skew, "expired");
            prop_assert!(exp.saturating_sub(now) <= max + skew, "too long from now");
            for name in ["nbf", "iat"] {
                if let Some(value) = claims.get(name) {
                    let time = numeric_date(value);
                    prop_assert!(time.is_some(), "{}: {:?}", name, value);
                    let time = u128::from(time.unwrap_or_default());
                    prop_assert!(time <= now + skew, "{} in the future", name);
                }
            }
            if let Some(iat) = claims.get("iat").and_then(numeric_date) {
                prop_assert!(exp.saturating_sub(u128::from(iat)) <= max, "lifetime");
            }
        }

        /// RFC 7519 §4.1.4-6 with Tether's skew and lifetime limits, on tokens jwt-simple
        /// signs: accepted exactly when inside the window; an expired token is refused as
        /// such, and no token outside the window is accepted (a stolen token is useful only
        /// as long as the issuer meant). jwt-simple holds times below 2^32 s, hence `now`
        /// (the thresholds are hit exactly: see `Time`).
        #[test]
        fn a_signed_token_is_accepted_exactly_within_its_time_window(
            now in 1_000_000_000u64..4_000_000_000,
            exp in prop::option::weighted(0.95, time()),
            nbf in prop::option::of(time()),
            iat in prop::option::of(time()),
            limits in time_limits(),
        ) {
            let at = |time: Time| time.at(now, limits);
            let mut claims = Claims::create(Duration::from_secs(1))
                .with_issuer(ISS)
                .with_audience(AUD);
            claims.expires_at = exp.map(|t| UnixTimeStamp::from_secs(at(t)));
            claims.invalid_before = nbf.map(|t| UnixTimeStamp::from_secs(at(t)));
            claims.issued_at = iat.map(|t| UnixTimeStamp::from_secs(at(t)));
            let token = issuer_key().sign(claims).unwrap();

            let (skew, max) = (limits.clock_skew_seconds, limits.max_token_lifetime_seconds);
            let inside = exp.map(at).is_some_and(|exp| {
                now <= exp + skew
                    && nbf.map(at).into_iter().chain(iat.map(at)).all(|t| t <= now + skew)
                    && iat.map(at).is_none_or(|iat| exp.saturating_sub(iat) <= max)
                    && exp.saturating_sub(now) <= max + skew
            });
            let result = check(&token, limits, now);
            prop_assert_eq!(result.is_ok(), inside, "{:?}", result);
            if exp.map(at).is_some_and(|exp| now > exp + skew) {
                prop_assert_eq!(result, Err(Reason::TokenExpired));
            }
            if let Err(reason) = result {
                let time_reasons = [
                    Reason::ExpiryMissing,
                    Reason::TokenExpired,
                    Reason::TokenNotYetValid,
                    Reason::LifetimeTooLong,
                ];
                prop_assert!(time_reasons.contains(&reason), "{:?}", reason);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// jwk: JSON Web Keys and key sets
// ---------------------------------------------------------------------------------------------

mod jwk {
    use super::*;
    use jwt_simple::prelude::{ECDSAP384PublicKeyLike, ES384KeyPair};
    use tether::crypto::{InVm, SignatureVerifier};
    use tether::jwk::{
        parse_fetched_jwks, parse_jwks, parse_one, thumbprint, Alg, PublicKey, VerificationKey,
        MAX_KEYS,
    };
    use tether::keyset::decode_document;

    /// RFC 7638 §3.1: the example RSA modulus (2048 bits).
    const RSA_N: &str = concat!(
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc",
        "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ",
        "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF",
        "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    );
    /// Members only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
    const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "r"];
    /// RFC 8037 Appendix A.2: the Ed25519 example public key.
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    /// A P-384 public key: the point of the private scalar 7 repeated (no RFC has one).
    fn p384_coordinates() -> (String, String) {
        let point = ES384KeyPair::from_bytes(&[7u8; 48])
            .unwrap()
            .public_key()
            .public_key()
            .to_bytes_uncompressed();
        (b64(&point[1..49]), b64(&point[49..97]))
    }

    /// A base64url member: real key material (so that random JWKs sometimes hold a usable
    /// key), random bytes of the sizes that matter, too long, not base64url, not a string.
    fn b64_member(real: Vec<String>) -> BoxedStrategy<String> {
        prop_oneof![
            3 => select(real).prop_map(|s| json_string(&s)),
            2 => vec(any::<u8>(), 0..64).prop_map(|b| json_string(&b64(b))),
            1 => select(vec![32usize, 48, 256, 257, 513])
                .prop_flat_map(|n| vec(any::<u8>(), n))
                .prop_map(|mut b| {
                    // A modulus of exactly its byte size, when it is one.
                    b[0] |= 0x80;
                    json_string(&b64(b))
                }),
            1 => pick_json_string(&["", "AQAB", "AA", "+/==", "not base64"]),
            1 => Just(json_string(&"A".repeat(1025))),
            1 => json_text(),
        ]
        .boxed()
    }

    fn jwk_member() -> BoxedStrategy<(String, String)> {
        let (x384, y384) = p384_coordinates();
        let key_ops = [
            "[\"verify\"]",
            "[\"sign\",\"verify\"]",
            "[\"encrypt\"]",
            "[]",
            "\"verify\"",
        ];
        let e = vec!["AQAB".to_string(), "Aw".into(), "AQ".into(), "AA".into()];
        prop_oneof![
            member(
                "kty",
                json_string_or_any(&["RSA", "EC", "OKP", "oct", "rsa", ""])
            ),
            member(
                "crv",
                json_string_or_any(&["P-256", "P-384", "P-521", "Ed25519", "X25519"])
            ),
            member(
                "alg",
                json_string_or_any(&["RS256", "PS512", "ES256", "ES384", "EdDSA", "HS256", "none"])
            ),
            member("use", json_string_or_any(&["sig", "enc", ""])),
            member("key_ops", prop_oneof![pick(&key_ops), json_text()].boxed()),
            member("kid", json_string_or_any(&["k1", "k2", ""])),
            member("x", b64_member(vec![P256_X.into(), x384, ED25519_X.into()])),
            member("y", b64_member(vec![P256_Y.into(), y384])),
            member("n", b64_member(vec![RSA_N.into()])),
            member("e", b64_member(e)),
            // Private and symmetric key material: never configured, never used.
            (select(PRIVATE_MEMBERS.to_vec()), json_text())
                .prop_map(|(name, value)| (name.to_string(), value)),
            member("x5c", json_text()),
            ("[a-z]{1,4}", json_text()),
        ]
        .boxed()
    }

    /// A JWK that starts as a well-formed key of some kind and gets random members (which may
    /// override one of its own), or any members at all.
    fn jwk_text() -> BoxedStrategy<String> {
        let (x384, y384) = p384_coordinates();
        let base = select(vec![
            vec![
                ("kty", "EC"),
                ("crv", "P-256"),
                ("x", P256_X),
                ("y", P256_Y),
            ],
            vec![("kty", "OKP"), ("crv", "Ed25519"), ("x", ED25519_X)],
            vec![("kty", "RSA"), ("n", RSA_N), ("e", "AQAB")],
            vec![("kty", "EC"), ("crv", "P-384")],
            vec![],
        ]);
        prop_oneof![
            6 => (base, vec(jwk_member(), 0..4)).prop_map(move |(base, extra)| {
                let mut members: Vec<(String, String)> = base
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), json_string(value)))
                    .collect();
                if members.iter().any(|(_, v)| v == "\"P-384\"") {
                    members.push(("x".into(), json_string(&x384)));
                    members.push(("y".into(), json_string(&y384)));
                }
                members.extend(extra);
                object_text(&members)
            }),
            // A whole key pair where a public key belongs (a classic configuration mistake).
            1 => (select(vec![0usize, 1, 2]), select(PRIVATE_MEMBERS.to_vec()))
                .prop_map(|(key, private)| {
                    let mut key = [
                        json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y}),
                        json!({"kty": "OKP", "crv": "Ed25519", "x": ED25519_X}),
                        json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"}),
                    ][key]
                        .clone();
                    key[private] = json!("AQAB");
                    key.to_string()
                }),
            1 => any_json().prop_map(|v| v.to_string()),
        ]
        .boxed()
    }

    fn jwks_text() -> BoxedStrategy<String> {
        prop_oneof![
            8 => vec(jwk_text(), 0..6)
                .prop_map(|keys| format!("{{\"keys\":[{}]}}", keys.join(","))),
            1 => json_text().prop_map(|keys| format!("{{\"keys\":{keys}}}")),
            1 => json_text(),
        ]
        .boxed()
    }

    /// RFC 8725 §2.1: a key verifies only the algorithm of its own kind, so that no key can
    /// be used for an algorithm confusion (an RSA key as an HMAC secret, and the like).
    fn fits(key: &VerificationKey) -> bool {
        matches!(
            (&key.public, key.alg),
            (
                PublicKey::Rsa(_),
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (PublicKey::P256(_), Alg::Es256)
                | (PublicKey::P384(_), Alg::Es384)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        ) && !key.spki_der.is_empty()
    }

    fn summary(keys: &[VerificationKey]) -> Vec<(Option<String>, Alg, Vec<u8>)> {
        keys.iter()
            .map(|k| (k.kid.clone(), k.alg, k.spki_der.clone()))
            .collect()
    }

    /// The checks on one entry that parsed as keys.
    fn check_usable_entry(
        jwk: &serde_json::Map<String, Value>,
        keys: &[VerificationKey],
    ) -> Result<(), TestCaseError> {
        prop_assert!(!keys.is_empty());
        for private in PRIVATE_MEMBERS {
            prop_assert!(!jwk.contains_key(private), "private member {}", private);
        }
        // RFC 7517 §4.2-4.3: an encryption key never verifies a signature.
        prop_assert!(jwk.get("use").is_none_or(|u| u == "sig"));
        if let Some(ops) = jwk.get("key_ops") {
            prop_assert!(ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op == "verify")));
        }
        // A usable key has an RFC 7638 thumbprint (what `cnf.jkt` would name).
        prop_assert!(thumbprint(jwk).is_ok());
        for key in keys {
            prop_assert!(fits(key), "{:?}", key);
            prop_assert_eq!(key.kid.as_deref(), jwk.get("kid").and_then(Value::as_str));
            if let Some(alg) = jwk.get("alg") {
                prop_assert_eq!(Some(key.alg.name()), alg.as_str());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(runner(2))]

        /// Configured and fetched key sets come from outside (a compromised or careless
        /// identity provider): any JSON is parsed without a panic; every key that comes out
        /// has public material only, is meant for signatures, and verifies only its own
        /// algorithm; a fetched set holds exactly the keys its entries hold one by one, so
        /// that one odd key can neither block nor alter the others (issue 7, finding 7). And
        /// every key that parses (an even RSA modulus, say) checks a signature without a
        /// panic: a token naming it reaches the verifier.
        #[test]
        fn key_sets_yield_only_public_signature_keys_of_their_own_algorithm(
            text in jwks_text(),
            signature in prop_oneof![
                vec(any::<u8>(), 0..100),
                select(vec![256usize, 257, 384, 512]).prop_flat_map(|n| vec(any::<u8>(), n)),
            ],
        ) {
            let _ = decode_document(text.as_bytes());
            let Ok(jwks) = serde_json::from_str::<Value>(&text) else {
                return Ok(());
            };
            let entries = jwks.get("keys").and_then(Value::as_array);
            let mut expected = Vec::new();
            for entry in entries.into_iter().flatten() {
                let one = parse_one(entry);
                if let (Ok(keys), Some(jwk)) = (&one, entry.as_object()) {
                    check_usable_entry(jwk, keys)?;
                    for key in keys {
                        prop_assert!(!InVm.verify(key, b"eyJ.eyJ", &signature));
                    }
                    if expected.len() < MAX_KEYS {
                        expected.push(summary(keys));
                    }
                }
            }
            let expected: Vec<_> = expected.into_iter().flatten().collect();
            match parse_fetched_jwks(&jwks) {
                Ok(set) => {
                    prop_assert!(entries.is_some());
                    prop_assert_eq!(summary(&set.keys), expected.clone());
                }
                Err(_) => prop_assert!(entries.is_none()),
            }
            // A configured set is stricter: an unusable key is an error, never silently less.
            if let Ok(set) = parse_jwks(&jwks) {
                prop_assert_eq!(summary(&set.keys), expected);
                for entry in entries.into_iter().flatten() {
                    let public_only = entry.as_object().is_some_and(|jwk| {
                        !PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m))
                    });
                    prop_assert!(public_only, "{:?}", entry);
                }
            }
        }

        /// A fetched document may be cut short or corrupted on the way: any bytes are decoded
        /// without a panic, and a document that decodes has at least one usable key.
        #[test]
        fn fetched_documents_of_any_bytes_never_panic(
            bytes in prop_oneof![
                jwks_text().prop_map(String::into_bytes).prop_flat_map(mutated),
                vec(any::<u8>(), 0..128),
            ],
        ) {
            if let Ok(document) = decode_document(&bytes) {
                prop_assert!(!document.keys.is_empty());
                prop_assert!(document.keys.iter().all(fits));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bind::jws: detached request signatures
// ---------------------------------------------------------------------------------------------

mod jws {
    use super::*;
    use hmac::{Hmac, Mac};
    use tether::bind::htu::normalize as normalize_htu;
    use tether::bind::jws::{
        DetachedJws, HmacKey, JwsKey, SignedRequest, SigningKeys, Window, MAX_SIGNATURE_BYTES,
        UNDERSTOOD_CRITICAL,
    };
    use tether::crypto::InVm;

    const NOW: u64 = 1_800_000_000;
    const TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.e30.c2ln";
    const HTU: &str = "https://api.example.com/pay?amount=10";
    const OTHER_HTU: &str = "https://api.example.com/pay?amount=1000";

    /// RFC 9449 §4.2's `ath`: the base64url SHA-256 of the access token.
    fn ath(token: &str) -> String {
        b64(Sha256::digest(token.as_bytes()))
    }

    fn header_member() -> BoxedStrategy<(String, String)> {
        let crit = vec(
            select(vec!["b64", "iat", "htm", "htu", "ath", "exp", "alg", "kid"]),
            0..4,
        )
        .prop_map(|names| Value::from(names).to_string());
        let iat = (NOW - 4000..NOW + 400).prop_map(|t| t.to_string());
        let htu = [
            HTU,
            "https://API.example.com:443/pay?amount=10",
            OTHER_HTU,
            "api.example.com/pay",
        ];
        prop_oneof![
            member(
                "alg",
                json_string_or_any(&["HS256", "ES256", "EdDSA", "none", ""])
            ),
            member("kid", json_string_or_any(&["h1", "k1", ""])),
            member(
                "b64",
                prop_oneof![pick(&["false", "true"]), json_text()].boxed()
            ),
            member("crit", prop_oneof![4 => crit, 1 => json_text()].boxed()),
            member("iat", prop_oneof![4 => iat, 1 => json_text()].boxed()),
            member("htm", json_string_or_any(&["POST", "GET", "post"])),
            member("htu", json_string_or_any(&htu)),
            member(
                "ath",
                prop_oneof![Just(json_string(&ath(TOKEN))), json_text()].boxed()
            ),
            ("[a-z]{1,4}", json_text()),
        ]
        .boxed()
    }

    /// A protected header that usually binds a request (`alg`, `iat`, `htm`, `htu`, `ath`),
    /// then any members, which may repeat one of those.
    fn header_text() -> BoxedStrategy<String> {
        (
            prop::option::weighted(0.9, pick_json_string(&["HS256", "ES256"])),
            prop::option::weighted(0.9, (NOW - 4000..NOW + 400).prop_map(|t| t.to_string())),
            prop::option::weighted(0.9, pick_json_string(&["POST", "GET"])),
            prop::option::weighted(0.9, pick_json_string(&[HTU, "https://api.example.com/pay"])),
            prop::option::weighted(0.9, Just(json_string(&ath(TOKEN)))),
            vec(header_member(), 0..3),
        )
            .prop_map(|(alg, iat, htm, htu, ath, extra)| {
                let present = [
                    ("alg", alg),
                    ("iat", iat),
                    ("htm", htm),
                    ("htu", htu),
                    ("ath", ath),
                ];
                object_with(&present, extra)
            })
            .boxed()
    }

    /// The header value: mostly `header..signature`, sometimes with a payload, whitespace,
    /// another number of segments, or anything.
    fn signature_header() -> BoxedStrategy<String> {
        prop_oneof![
            8 => (
                header_text(),
                prop_oneof![9 => Just(String::new()), 1 => "[A-Za-z0-9_-]{1,8}".boxed()],
                prop_oneof![
                    6 => vec(any::<u8>(), 1..80).prop_map(b64),
                    1 => Just(String::new()),
                    1 => "[A-Za-z0-9_=-]{0,20}".boxed(),
                ],
                pick(&["", " ", "\t"]),
            )
                .prop_map(|(header, payload, signature, ws)| {
                    format!("{ws}{}.{payload}.{signature}{ws}", b64(header))
                }),
            1 => vec("[A-Za-z0-9_-]{0,12}", 0..5).prop_map(|segments| segments.join(".")),
            1 => ".{0,40}".boxed(),
        ]
        .boxed()
    }

    fn window() -> BoxedStrategy<Window> {
        (
            prop_oneof![8 => 1u64..=3600, 1 => Just(0), 1 => Just(u64::MAX)],
            prop_oneof![8 => 0u64..=300, 1 => Just(u64::MAX)],
        )
            .prop_map(|(max_age_seconds, clock_skew_seconds)| Window {
                max_age_seconds,
                clock_skew_seconds,
            })
            .boxed()
    }

    /// The request: usually the one the generated signatures describe, sometimes another
    /// method, scheme, host or path (and the same ones spelled differently).
    fn request() -> BoxedStrategy<(String, String, String, String)> {
        let described = ("POST", "https", "api.example.com", "/pay?amount=10");
        let described =
            Just(described).prop_map(|(m, s, a, p)| (m.into(), s.into(), a.into(), p.into()));
        prop_oneof![
            2 => described,
            1 => (
                pick(&["POST", "GET", "post"]),
                pick(&["https", "HTTPS", "http"]),
                pick(&["api.example.com", "API.example.com:443", "api.example.com:8443"]),
                pick(&["/pay?amount=10", "/pay", "/PAY?amount=10", ""]),
            ),
        ]
        .boxed()
    }

    /// When the request arrives, relative to the signature's `iat` where the window decides
    /// (its end, its start under the skew, give or take two seconds), or at any time.
    #[derive(Clone, Copy, Debug)]
    enum Clock {
        At(u64),
        AtWindowEnd(i64),
        AtWindowStart(i64),
        AfterIat(i64),
    }

    impl Clock {
        fn now(self, iat: Option<u64>, window: Window) -> u64 {
            let iat = iat.unwrap_or(NOW);
            match self {
                Clock::At(now) => now,
                Clock::AtWindowEnd(d) => iat
                    .saturating_add(window.max_age_seconds)
                    .saturating_add_signed(d),
                Clock::AtWindowStart(d) => iat
                    .saturating_sub(window.clock_skew_seconds)
                    .saturating_add_signed(d),
                Clock::AfterIat(d) => iat.saturating_add_signed(d),
            }
        }
    }

    fn clock() -> BoxedStrategy<Clock> {
        prop_oneof![
            2 => (NOW - 4000..NOW + 400).prop_map(Clock::At),
            1 => any::<u64>().prop_map(Clock::At),
            2 => (-2i64..=2).prop_map(Clock::AtWindowEnd),
            2 => (-2i64..=2).prop_map(Clock::AtWindowStart),
            2 => (-100i64..100).prop_map(Clock::AfterIat),
        ]
        .boxed()
    }

    fn hs256(secret: &[u8], input: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }

    /// A header that parses and binds a request, with `iat` at `iat`.
    fn binding_header(iat: u64, unencoded: bool) -> String {
        let mut header = json!({
            "alg": "HS256", "kid": "h1", "iat": iat, "htm": "POST", "htu": HTU, "ath": ath(TOKEN),
        });
        if unencoded {
            header["b64"] = json!(false);
            header["crit"] = json!(["b64"]);
        }
        b64(header.to_string())
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// The signature header is read before anything is verified: no value makes the parser
        /// or the checks panic; a parsed signature has its content detached, a signature, and
        /// a `crit` that names only what Tether understands (RFC 7515 §4.1.11); and the
        /// request checks pass only for this method, this URI, this token and an `iat` inside
        /// the window (a captured signature cannot be moved to another request or replayed
        /// late).
        #[test]
        fn a_request_signature_binds_only_its_own_request_inside_its_window(
            value in signature_header(),
            (method, scheme, authority, path) in request(),
            window in window(),
            clock in clock(),
            body in vec(any::<u8>(), 0..32),
        ) {
            let Ok(jws) = DetachedJws::parse(value.as_bytes()) else {
                return Ok(());
            };
            prop_assert!(value.len() <= MAX_SIGNATURE_BYTES);
            let parts: Vec<&str> = value.trim().split('.').collect();
            prop_assert_eq!(parts.len(), 3);
            prop_assert!(parts[1].is_empty(), "attached payload");
            prop_assert!(!URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default().is_empty());
            let header: Value = URL_SAFE_NO_PAD
                .decode(parts[0])
                .ok()
                .and_then(|json| serde_json::from_slice(&json).ok())
                .ok_or_else(|| TestCaseError::fail("accepted a header that is not JSON"))?;
            prop_assert!(header["alg"].is_string());
            if let Some(crit) = header.get("crit") {
                let items = crit.as_array().map_or(&[][..], Vec::as_slice);
                let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                prop_assert!(!names.is_empty());
                prop_assert_eq!(names.len(), items.len(), "not all names");
                let distinct: HashSet<&&str> = names.iter().collect();
                prop_assert_eq!(distinct.len(), names.len(), "repeated");
                for name in &names {
                    prop_assert!(UNDERSTOOD_CRITICAL.contains(name) && header.get(*name).is_some());
                }
            }
            if header.get("b64").is_some() {
                prop_assert!(header["crit"].as_array().is_some_and(|c| c.contains(&json!("b64"))));
            }

            let now = clock.now(header["iat"].as_u64(), window);
            let in_window = header["iat"].as_u64().is_some_and(|iat| {
                let (iat, now) = (u128::from(iat), u128::from(now));
                iat + u128::from(window.max_age_seconds) >= now
                    && iat <= now + u128::from(window.clock_skew_seconds)
            });
            let bound = ["htm", "htu", "ath"].iter().all(|m| header[m].is_string());
            prop_assert_eq!(jws.check_window(window, now).is_ok(), in_window && bound);
            let request = SignedRequest {
                method: &method,
                scheme: &scheme,
                authority: &authority,
                path: &path,
            };
            if jws.check_request(&request, TOKEN, window, now).is_ok() {
                prop_assert!(in_window);
                prop_assert_eq!(header["htm"].as_str(), Some(method.as_str()));
                let expected_ath = ath(TOKEN);
                prop_assert_eq!(header["ath"].as_str(), Some(expected_ath.as_str()));
                let htu = header["htu"].as_str().unwrap_or_default();
                let target = format!("{scheme}://{authority}{path}");
                prop_assert_eq!(normalize_htu(htu), normalize_htu(&target));
            }
            let _ = (jws.replay_id(&body), jws.iat(), window);
            let no_keys = SigningKeys::Client { keys: &[], hmac_keys: &[] };
            prop_assert!(jws.select_key(SigningKeys::Bound(&[])).is_err());
            prop_assert!(jws.select_key(no_keys).is_err());
            prop_assert!(!jws.verify_with(JwsKey::Hmac(&[7u8; 32]), &body, &InVm));
        }

        /// The signature header is any bytes a client sends: none makes the parser panic, and
        /// none longer than the cap is read at all (work bounded before any decoding).
        #[test]
        fn detached_jws_parse_never_panics_on_any_bytes(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..96),
                signature_header().prop_map(String::into_bytes),
                signature_header().prop_map(String::into_bytes).prop_flat_map(mutated),
                (MAX_SIGNATURE_BYTES - 2..MAX_SIGNATURE_BYTES + 2).prop_map(|n| {
                    let mut value = binding_header(NOW, false).into_bytes();
                    value.extend(b"..");
                    value.resize(n, b'A');
                    value
                }),
            ],
        ) {
            let parsed = DetachedJws::parse(&bytes);
            if bytes.len() > MAX_SIGNATURE_BYTES {
                prop_assert!(parsed.is_err());
            }
        }

        /// Issue 7, finding 4: a replay record keyed by signature bytes lets each captured
        /// request through once more per re-encoding of its signature (ECDSA's `(r, n - s)`,
        /// a re-signed PSS). The id names what was signed: the same for any signature bytes
        /// over the same header and body, different for another header or body.
        #[test]
        fn the_replay_id_names_what_was_signed_never_the_signature_bytes(
            iat in NOW - 100..NOW,
            other_iat in NOW - 100..NOW,
            first in vec(any::<u8>(), 1..80),
            second in vec(any::<u8>(), 1..80),
            body in vec(any::<u8>(), 0..32),
            other_body in vec(any::<u8>(), 0..32),
        ) {
            let header = binding_header(iat, false);
            let parse = |header: &str, signature: &[u8]| {
                DetachedJws::parse(format!("{header}..{}", b64(signature)).as_bytes()).unwrap()
            };
            let (a, b) = (parse(&header, &first), parse(&header, &second));
            prop_assert_eq!(a.replay_id(&body), b.replay_id(&body));
            if body != other_body {
                prop_assert_ne!(a.replay_id(&body), a.replay_id(&other_body));
            }
            if iat != other_iat {
                let c = parse(&binding_header(other_iat, false), &first);
                prop_assert_ne!(a.replay_id(&body), c.replay_id(&body));
            }
        }

        /// RFC 7515 Appendix F and RFC 7797: a request signature verifies over exactly the
        /// body it was made for, encoded or not, and never over another body.
        #[test]
        fn a_request_signature_verifies_over_exactly_the_body_it_was_made_for(
            unencoded in any::<bool>(),
            body in vec(any::<u8>(), 0..64),
            other_body in vec(any::<u8>(), 0..64),
            secret in vec(any::<u8>(), 32..48),
        ) {
            let header = binding_header(NOW, unencoded);
            let mut input = format!("{header}.").into_bytes();
            if unencoded {
                input.extend(&body);
            } else {
                input.extend(b64(&body).bytes());
            }
            let value = format!("{header}..{}", b64(hs256(&secret, &input)));
            let jws = DetachedJws::parse(value.as_bytes()).unwrap();
            prop_assert!(jws.verify_with(JwsKey::Hmac(&secret), &body, &InVm));
            let hmac_keys = [HmacKey { kid: "h1".into(), secret: secret.clone() }];
            let keys = SigningKeys::Client { keys: &[], hmac_keys: &hmac_keys };
            prop_assert_eq!(jws.verify_body(keys, &body, &InVm), Ok(()));
            if other_body != body {
                prop_assert!(!jws.verify_with(JwsKey::Hmac(&secret), &other_body, &InVm));
                prop_assert!(jws.verify_body(keys, &other_body, &InVm).is_err());
            }
        }

        /// `htu` is compared after normalization: scheme and host case and the default port
        /// fold away (RFC 3986 §6.2.3), but the path and query never do, so a signature for
        /// `/pay?amount=10` never covers `/pay?amount=1000`. Any string normalizes without a
        /// panic.
        #[test]
        fn normalize_htu_folds_only_scheme_host_and_default_port(
            any_uri in ".{0,40}",
            scheme in pick(&["https", "http", "wss"]),
            host in "[a-z0-9.-]{1,12}",
            port in pick(&["", ":8443", ":"]),
            first in "(/[ -~]{0,10})?(\\?[ -~]{0,6})?",
            (edit, at, c) in (0u8..4, any::<Index>(), "[ -~]"),
            other in "(/[ -~]{0,10})?(\\?[ -~]{0,6})?",
            upper in any::<bool>(),
        ) {
            let _ = normalize_htu(&any_uri);
            // Another path: one character changed, case-flipped or inserted, or any other.
            let mut chars: Vec<char> = first.chars().collect();
            let c = c.chars().next().unwrap_or('x');
            match edit {
                0 if !chars.is_empty() => {
                    let i = at.index(chars.len());
                    chars[i] = c;
                }
                1 if !chars.is_empty() => {
                    let i = at.index(chars.len());
                    chars[i] = if chars[i].is_ascii_lowercase() {
                        chars[i].to_ascii_uppercase()
                    } else {
                        chars[i].to_ascii_lowercase()
                    };
                }
                2 => chars.insert(at.index(chars.len() + 1), c),
                _ => chars = other.chars().collect(),
            }
            let second: String = chars.into_iter().collect();
            let uri = |path: &str| format!("{scheme}://{host}{port}{path}");
            // RFC 3986 §6.2.3: an empty path is `/`.
            let canonical = |path: &str| {
                if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                }
            };
            prop_assert_eq!(
                normalize_htu(&uri(&first)) == normalize_htu(&uri(&second)),
                canonical(&first) == canonical(&second)
            );
            let default_port = match scheme.as_str() {
                "https" => ":443",
                "http" => ":80",
                _ => "",
            };
            let folded = if upper {
                format!("{}://{}{default_port}{first}", scheme.to_uppercase(), host.to_uppercase())
            } else {
                format!("{scheme}://{host}{default_port}{first}")
            };
            if port.is_empty() {
                prop_assert_eq!(normalize_htu(&folded), normalize_htu(&uri(&first)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dpop: DPoP proofs (RFC 9449)
// ---------------------------------------------------------------------------------------------

mod dpop {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use tether::bind::dpop::{self, Expected, Proof, Settings, Target, DEFAULT_ALGS};
    use tether::crypto::InVm;
    use tether::reject::Reason;
    use tether::replay::ReplayStore;

    const NOW: u64 = 1_800_000_000;
    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln";
    const URI: &str = "https://api.example.com/transfers";

    /// A replay record that remembers everything (a test's lifetime is short).
    #[derive(Default)]
    struct Remembers(HashSet<[u8; 32]>);

    impl ReplayStore for Remembers {
        fn first_use(&mut self, id: &[u8; 32], _: u64, _: u64) -> Result<(), Reason> {
            if self.0.insert(*id) {
                Ok(())
            } else {
                Err(Reason::RequestSignatureReplayed)
            }
        }
    }

    /// A well-made ES256 proof for GET `URI` with `TOKEN`, and its key's thumbprint.
    fn good_proof() -> &'static (String, String) {
        static PROOF: OnceLock<(String, String)> = OnceLock::new();
        PROOF.get_or_init(|| {
            let key = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).expect("a P-256 key");
            let point = key.verifying_key().to_encoded_point(false);
            let jwk = json!({"kty": "EC", "crv": "P-256",
                "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))});
            let jkt = tether::jwk::thumbprint(jwk.as_object().expect("object")).expect("jkt");
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let claims = json!({"jti": "p-1", "htm": "GET", "htu": URI, "iat": NOW,
                                "ath": b64(Sha256::digest(TOKEN.as_bytes()))});
            let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
            let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
            (format!("{input}.{}", b64(signature.to_bytes())), jkt)
        })
    }

    fn check(proof: &[u8], jkt: &str) -> Result<(), Reason> {
        let settings = Settings::default();
        let ath = dpop::access_token_hash(TOKEN);
        let expected = Expected {
            settings: &settings,
            jkt,
            access_token_hash: &ath,
            nonce_required: false,
            clock_skew_seconds: 30,
        };
        let target = Target {
            method: "GET",
            uri: URI,
        };
        dpop::verify(
            &[proof],
            target,
            &expected,
            &InVm,
            &mut Remembers::default(),
            NOW,
        )
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Whatever bytes arrive in a `DPoP` header, reading them never panics (a trap would
        /// take the worker's VM down) and any refusal is a DPoP one.
        #[test]
        fn any_dpop_header_is_read_without_panic(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..300),
                "[A-Za-z0-9_.-]{0,400}".prop_map(String::into_bytes),
            ],
        ) {
            let _ = Proof::parse(&bytes, &DEFAULT_ALGS);
            let result = check(&bytes, &good_proof().1);
            prop_assert!(result.is_err());
            let name = result.unwrap_err().name();
            prop_assert!(name.contains("dpop"), "{}", name);
        }

        /// A proof is all or nothing: any one byte of a valid proof changed, and it is refused
        /// (base64url is decoded strictly, so no two spellings of a proof exist). The proof as
        /// made is accepted, so the refusals are the change's.
        #[test]
        fn a_proof_changed_anywhere_is_refused(at in any::<Index>(), byte in any::<u8>()) {
            let (proof, jkt) = good_proof();
            prop_assert_eq!(check(proof.as_bytes(), jkt), Ok(()));
            let mut changed = proof.clone().into_bytes();
            let i = at.index(changed.len());
            prop_assume!(changed[i] != byte);
            changed[i] = byte;
            prop_assert!(check(&changed, jkt).is_err(), "accepted with byte {} at {}", byte, i);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config: the filter configuration
// ---------------------------------------------------------------------------------------------

mod dn {
    use super::*;
    use tether::bind::dn::DistinguishedName;

    /// Escapes a value as RFC 4514 §2.4 writes one: `\` before `"+,;<>\` and `=`, and
    /// every other byte outside printable ASCII as `\XX`.
    fn escape(value: &str) -> String {
        let mut out = String::new();
        for byte in value.bytes() {
            match byte {
                b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' | b'=' => {
                    out.push('\\');
                    out.push(char::from(byte));
                }
                0x21..=0x7e | b' ' => out.push(char::from(byte)),
                _ => out.push_str(&format!("\\{byte:02X}")),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// A subject from a trusted edge, or a configured `tls_client_auth_subject_dn`: any
        /// text is read or refused, never a panic.
        #[test]
        fn any_text_is_read_or_refused(text in "[ -~\u{80}-\u{10ff}]{0,120}") {
            let _ = DistinguishedName::parse(&text);
        }

        /// A name whose values hold every separator, escaped, reads back as the same name
        /// as its values with the separators escaped by hex instead, and differently cased:
        /// an escaped `,` or `+` never splits an RDN, whichever way it is written.
        #[test]
        fn escaped_values_never_split_and_compare_without_case(
            values in vec("[a-zA-Z0-9 ,+;=<>\"\\\\\u{e9}]{1,12}", 1..5),
        ) {
            let values: Vec<String> = values
                .into_iter()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            prop_assume!(!values.is_empty());
            let written: Vec<String> = values.iter().map(|v| format!("CN={}", escape(v))).collect();
            let name = DistinguishedName::parse(&written.join(","))
                .map_err(|e| TestCaseError::fail(format!("{e}: {written:?}")))?;
            prop_assert_eq!(name.len(), values.len());
            let by_hex: Vec<String> = values
                .iter()
                .map(|v| {
                    let hex: String = v.to_uppercase().bytes().map(|b| format!("\\{b:02x}")).collect();
                    format!("2.5.4.3={hex}")
                })
                .collect();
            let same = DistinguishedName::parse(&by_hex.join(","))
                .map_err(|e| TestCaseError::fail(format!("{e}: {by_hex:?}")))?;
            prop_assert_eq!(name, same);
        }
    }
}

mod identity {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use tether::bind::certificate::{der_from_url_encoded_pem, facts_from_der};
    use tether::bind::identity::Cidr;

    proptest! {
        #![proptest_config(runner(1))]

        /// A `Cert` from a trusted edge that is not what it claims: any bytes, as DER or as
        /// URL-encoded PEM, are read or refused, never a panic.
        #[test]
        fn any_certificate_bytes_are_read_or_refused(
            der in prop_oneof![
                vec(any::<u8>(), 0..400),
                // A SEQUENCE header first, so that the DER reader goes further in.
                vec(any::<u8>(), 0..400).prop_map(|mut v| { v.splice(0..0, [0x30, 0x82, 0x01, 0x80]); v }),
            ],
            text in "[-A-Za-z0-9%+/= \n]{0,200}",
        ) {
            let _ = facts_from_der(&der);
            let _ = der_from_url_encoded_pem(&text);
        }

        /// `source_cidrs` against a bit-by-bit reference: an address is in a block exactly
        /// when its first `prefix` bits are the block's, for IPv4 and IPv6 alike.
        #[test]
        fn a_block_holds_exactly_the_addresses_that_share_its_prefix(
            v6 in any::<bool>(),
            network in any::<u128>(),
            address in any::<u128>(),
            prefix in 0u8..=128,
        ) {
            let width: u32 = if v6 { 128 } else { 32 };
            let prefix = if v6 { prefix } else { prefix % 33 };
            let keep = |n: u128| {
                let n = if v6 { n } else { n & u128::from(u32::MAX) };
                if prefix == 0 { 0 } else { n >> (width - u32::from(prefix)) }
            };
            let ip = |n: u128| -> IpAddr {
                if v6 {
                    IpAddr::V6(Ipv6Addr::from(n))
                } else {
                    IpAddr::V4(Ipv4Addr::from(n as u32))
                }
            };
            let base = if prefix == 0 {
                0
            } else {
                let n = if v6 { network } else { network & u128::from(u32::MAX) };
                keep(n) << (width - u32::from(prefix))
            };
            // IPv4-mapped IPv6 addresses read as IPv4: keep the IPv6 cases out of that range.
            prop_assume!(!v6 || (base >> 32) != 0xffff);
            prop_assume!(!v6 || (address >> 32) != 0xffff);
            let text = format!("{}/{prefix}", ip(base));
            let block = Cidr::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(block.contains(ip(address)), keep(address) == keep(base), "{}", text);
            prop_assert!(block.contains(ip(base)));
        }
    }
}

mod xfcc {
    use super::*;
    use tether::bind::mtls::PeerCertificate;
    use tether::bind::xfcc::{self, Element};

    /// A value Envoy could write: visible ASCII, spaces, and (quoted) `"`, `\`, `,`, `;`, `=`.
    fn text() -> impl Strategy<Value = String> {
        "[ -~]{0,24}"
    }

    fn hex_digest() -> impl Strategy<Value = String> {
        "[0-9a-f]{64}"
    }

    /// `"` and `\` escaped with `\`: as RFC 2253 §2.4 escapes them in a subject (Envoy's
    /// `Subject`), and as a quoted-string's quoted-pairs do (RFC 7230 §3.2.6).
    fn escaped(value: &str) -> String {
        let mut out = String::new();
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// The header of a hostile client behind a misconfigured edge: any bytes, any number of
        /// lines, are read or refused, never a panic, never more elements than the bound.
        #[test]
        fn any_bytes_are_read_or_refused(lines in vec(vec(any::<u8>(), 0..300), 0..4)) {
            let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            if let Ok(elements) = xfcc::parse(&lines) {
                prop_assert!(elements.len() <= xfcc::MAX_ELEMENTS);
            }
        }

        /// What an edge writes is read back exactly, whatever the subject holds: a Subject with
        /// commas, semicolons, quotes and backslashes cannot split an element or forge a pair.
        #[test]
        fn elements_written_as_envoy_writes_them_read_back(
            elements in vec((
                vec("[a-z]{1,8}://[a-z.]{1,12}", 0..2),
                proptest::option::of(hex_digest()),
                proptest::option::of(text()),
                vec("[a-z]{1,8}://[a-z/]{1,12}", 0..3),
                vec("[a-z.]{1,16}", 0..3),
            ), 1..4),
        ) {
            let mut written = Vec::new();
            for (by, hash, subject, uri, dns) in &elements {
                let mut pairs: Vec<String> = by.iter().map(|b| format!("By={b}")).collect();
                pairs.extend(hash.iter().map(|h| format!("Hash={h}")));
                // Envoy writes its RFC 2253 subject between quotes as it is.
                pairs.extend(subject.iter().map(|s| format!("Subject=\"{}\"", escaped(s))));
                pairs.extend(uri.iter().map(|u| format!("URI={u}")));
                pairs.extend(dns.iter().map(|d| format!("DNS={d}")));
                if pairs.is_empty() {
                    pairs.push("URI=".to_string());
                }
                written.push(pairs.join(";"));
            }
            let line = written.join(",");
            let read = xfcc::parse(&[line.as_bytes()]).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
            prop_assert_eq!(read.len(), elements.len());
            for (element, (by, hash, subject, uri, dns)) in read.iter().zip(&elements) {
                let expected = Element {
                    by: by.clone(),
                    hash: hash.as_ref().and_then(|h| PeerCertificate::from_hex_digest(h.as_bytes())),
                    cert: None,
                    chain: None,
                    // Read back as written: the escapes are the subject's own.
                    subject: subject.as_deref().filter(|s| !s.is_empty()).map(escaped),
                    uri: uri.clone(),
                    dns: dns.clone(),
                };
                prop_assert_eq!(element, &expected);
            }
        }
    }
}

mod config {
    use super::*;
    use tether::bind::jws::MIN_HMAC_KEY_BYTES;
    use tether::cache::MAX_ENTRIES;
    use tether::config::{
        Policy, BODY_TIMEOUT_MS_RANGE, MAX_BODY_BYTES_LIMIT, MAX_CLOCK_SKEW_SECONDS,
        MAX_HELD_REQUESTS_RANGE, MAX_TOKEN_LIFETIME_LIMIT_SECONDS,
    };
    use tether::keyset::KeySource;

    /// The environment variable a test secret is read from.
    const SECRET_VARIABLE: &str = "TETHER_TEST_SECRET";

    fn environment(name: &str) -> Option<String> {
        match name {
            SECRET_VARIABLE => Some(b64([9u8; 32])),
            "TETHER_EMPTY" => Some(String::new()),
            "TETHER_SHORT" => Some(b64([9u8; 8])),
            _ => None,
        }
    }

    fn issuer(i: usize, remote: bool) -> Value {
        let mut issuer = json!({"issuer": format!("https://idp{i}.example"), "audiences": ["aud"]});
        if remote {
            issuer["remote_jwks"] = json!({
                "cluster": format!("idp{i}"), "path": "/jwks",
                "refresh_seconds": 300, "timeout_ms": 2000,
            });
        } else {
            issuer["jwks"] = json!({ "keys": [p256_jwk("k1")] });
        }
        issuer
    }

    fn rule(i: usize, require: &str, signed_request: bool, case_sensitive: Option<bool>) -> Value {
        let mut rule = json!({"prefix": format!("/r{i}/"), "require": require});
        // A signature needs a token to bind to.
        if signed_request && require != "none" {
            rule["signed_request"] = json!(true);
        }
        if let Some(case_sensitive) = case_sensitive {
            rule["case_sensitive"] = json!(case_sensitive);
        }
        rule
    }

    fn client(i: usize, secret_from_environment: bool, with_jwks: bool) -> Value {
        let k = if secret_from_environment {
            json!({ "env": SECRET_VARIABLE })
        } else {
            json!(b64([8u8; 32]))
        };
        let mut client = json!({
            "client_id": format!("c{i}"), "issuer": "https://idp0.example",
            "hmac_keys": [{"kid": "h1", "k": k}],
        });
        if with_jwks {
            client["jwks"] = json!({ "keys": [p256_jwk("c")] });
        }
        client
    }

    /// The optional top-level settings, each absent or within its documented bounds.
    fn settings() -> BoxedStrategy<Vec<(&'static str, Value)>> {
        let signed_requests = (1u64..=3600, 0usize..=(16 << 20), 100u64..=300_000).prop_map(
            |(age, bytes, timeout)| {
                json!({
                    "header": "x-request-signature", "max_age_seconds": age,
                    "max_body_bytes": bytes, "body_timeout_ms": timeout,
                })
            },
        );
        let claims_to_headers = (1usize..=2).prop_map(|n| {
            let header = |i| json!({"claim": "sub", "header": format!("x-claim-{i}")});
            Value::Array((0..n).map(header).collect())
        });
        let settings = [
            (
                "clock_skew_seconds",
                (0u64..=300).prop_map(Value::from).boxed(),
            ),
            (
                "max_token_lifetime_seconds",
                (1u64..=86_400).prop_map(Value::from).boxed(),
            ),
            (
                "max_held_requests",
                (1usize..=65_536).prop_map(Value::from).boxed(),
            ),
            (
                "form_body_tokens",
                pick(&["refuse", "ignore"]).prop_map(Value::from).boxed(),
            ),
            (
                "strip_authorization",
                any::<bool>().prop_map(Value::from).boxed(),
            ),
            (
                "token_cache_entries",
                (0usize..=4096).prop_map(Value::from).boxed(),
            ),
            ("signed_requests", signed_requests.boxed()),
            ("claims_to_headers", claims_to_headers.boxed()),
        ];
        settings
            .into_iter()
            .map(|(name, value)| prop::option::weighted(0.7, value.prop_map(move |v| (name, v))))
            .collect::<Vec<_>>()
            .prop_map(|chosen| chosen.into_iter().flatten().collect())
            .boxed()
    }

    /// A configuration that compiles: 1-3 issuers (inline or remote keys), rules, clients
    /// with HMAC keys (inline or from the environment), and any of the optional settings.
    fn valid_config() -> BoxedStrategy<Value> {
        let requires = select(vec!["none", "bearer", "mtls", "bound"]);
        (
            vec(any::<bool>(), 1..=3),
            vec(
                (requires, any::<bool>(), prop::option::of(any::<bool>())),
                0..=3,
            ),
            vec((any::<bool>(), any::<bool>()), 0..=2),
            settings(),
        )
            .prop_map(|(issuers, rules, clients, settings)| {
                let issuers: Vec<Value> = issuers
                    .into_iter()
                    .enumerate()
                    .map(|(i, remote)| issuer(i, remote))
                    .collect();
                let rules: Vec<Value> = rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, (require, signed, case))| rule(i, require, signed, case))
                    .collect();
                let clients: Vec<Value> = clients
                    .into_iter()
                    .enumerate()
                    .map(|(i, (from_env, with_jwks))| client(i, from_env, with_jwks))
                    .collect();
                let mut config = json!({"issuers": issuers, "rules": rules, "clients": clients});
                for (name, value) in settings {
                    config[name] = value;
                }
                config
            })
            .boxed()
    }

    /// JSON pointers to every object of the configuration that refuses unknown members.
    fn strict_objects(config: &Value) -> Vec<String> {
        let mut found = vec![String::new()];
        for list in ["issuers", "rules", "clients", "claims_to_headers"] {
            for (i, item) in config[list].as_array().into_iter().flatten().enumerate() {
                found.push(format!("/{list}/{i}"));
                if item.get("remote_jwks").is_some() {
                    found.push(format!("/{list}/{i}/remote_jwks"));
                }
                for (j, key) in item["hmac_keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    found.push(format!("/{list}/{i}/hmac_keys/{j}"));
                    if key["k"].is_object() {
                        found.push(format!("/{list}/{i}/hmac_keys/{j}/k"));
                    }
                }
            }
        }
        if config.get("signed_requests").is_some() {
            found.push("/signed_requests".into());
        }
        found
    }

    /// JSON pointers to every value in `value`, the root excepted.
    fn all_nodes(value: &Value, at: String, found: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match value {
            Value::Object(members) => members
                .iter()
                .map(|(name, v)| (name.replace('~', "~0").replace('/', "~1"), v))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        for (name, child) in children {
            let path = format!("{at}/{name}");
            found.push(path.clone());
            all_nodes(child, path, found);
        }
    }

    /// Values at the edges of what the configuration accepts, and of the wrong type.
    fn hostile_value() -> BoxedStrategy<Value> {
        let numbers = [
            0,
            1,
            9,
            10,
            99,
            100,
            300,
            301,
            3600,
            3601,
            60_000,
            60_001,
            86_400,
            86_401,
            65_536,
            65_537,
            1 << 20,
            (1 << 20) + 1,
            16 << 20,
            (16 << 20) + 1,
            u64::MAX,
        ]
        .map(Value::from);
        let strings = [
            "",
            "/",
            "A",
            "none",
            "BOUND",
            "ignore",
            "authorization",
            "Host",
            "x-envoy-original-path",
            "X-Claim-0",
            "x claim",
            "https://idp0.example",
            "c0",
            "h1",
        ]
        .map(Value::from);
        let others = [
            json!(-1),
            json!(1e20),
            json!(0.5),
            json!([]),
            json!({}),
            json!(null),
            json!(true),
            json!({ "env": SECRET_VARIABLE }),
            json!({"env": "1BAD"}),
            json!({"env": "UNSET"}),
            json!({"env": "TETHER_EMPTY"}),
            json!({"env": "TETHER_SHORT"}),
            json!(b64([1u8; 31])),
            json!({"keys": []}),
            json!({ "keys": [p256_jwk("k1"), p256_jwk("k1")] }),
        ];
        let edges: Vec<Value> = numbers.into_iter().chain(strings).chain(others).collect();
        prop_oneof![3 => select(edges), 1 => any_json()].boxed()
    }

    /// Values on either side of a field's documented bounds, by field name (or none).
    fn edges(field: &str) -> Vec<Value> {
        let values = |values: &[Value]| values.to_vec();
        match field {
            "clock_skew_seconds" => values(&[json!(300), json!(301)]),
            "max_token_lifetime_seconds" => {
                values(&[json!(0), json!(1), json!(86_400), json!(86_401)])
            }
            "refresh_seconds" => values(&[json!(9), json!(10), json!(86_400), json!(86_401)]),
            "timeout_ms" => values(&[json!(0), json!(1), json!(60_000), json!(60_001)]),
            "max_held_requests" => values(&[json!(0), json!(1), json!(65_536), json!(65_537)]),
            "token_cache_entries" => values(&[json!(1 << 20), json!((1 << 20) + 1)]),
            "max_age_seconds" => values(&[json!(0), json!(1), json!(3600), json!(3601)]),
            "max_body_bytes" => values(&[json!(16 << 20), json!((16 << 20) + 1)]),
            "body_timeout_ms" => values(&[json!(99), json!(100), json!(300_000), json!(300_001)]),
            "header" => [
                "authorization",
                "Host",
                "x-envoy-original-path",
                "",
                "x y",
                "X-Claim-0",
            ]
            .map(Value::from)
            .to_vec(),
            "prefix" => ["", "a", "/", "/r0/x"].map(Value::from).to_vec(),
            "k" => values(&[
                json!(b64([1u8; 31])),
                json!("not base64"),
                json!({"env": "TETHER_SHORT"}),
                json!({"env": "TETHER_EMPTY"}),
                json!({"env": "1BAD"}),
                json!({"env": "UNSET"}),
            ]),
            "kid" | "claim" | "client_id" | "cluster" | "path" => values(&[json!("")]),
            "issuer" => ["", "https://idp0.example", "https://unknown.example"]
                .map(Value::from)
                .to_vec(),
            "audiences" => values(&[json!([]), json!([""])]),
            "require" => values(&[json!("none"), json!("BOUND")]),
            "keys" => values(&[json!([]), json!([p256_jwk("k1"), p256_jwk("k1")])]),
            _ => Vec::new(),
        }
    }

    /// One change to a configuration: a value on either side of a bounded field's limit, any
    /// value, or a member removed.
    #[derive(Clone, Debug)]
    enum Edit {
        Edge(Index),
        Replace(Value),
        Remove,
    }

    fn edit() -> BoxedStrategy<Edit> {
        prop_oneof![
            4 => any::<Index>().prop_map(Edit::Edge),
            2 => hostile_value().prop_map(Edit::Replace),
            1 => Just(Edit::Remove),
        ]
        .boxed()
    }

    /// Applies `edit` to the value `at` picks (among the bounded fields, for an edge).
    fn apply(config: &mut Value, at: Index, edit: Edit) {
        let mut nodes = Vec::new();
        all_nodes(config, String::new(), &mut nodes);
        let field = |pointer: &str| {
            let last = pointer.rsplit('/').next().unwrap_or_default();
            last.replace("~1", "/").replace("~0", "~")
        };
        if let Edit::Edge(_) = edit {
            nodes.retain(|pointer| !edges(&field(pointer)).is_empty());
        }
        if nodes.is_empty() {
            return;
        }
        let pointer = at.get(&nodes).clone();
        let (parent, _) = pointer.rsplit_once('/').unwrap_or_default();
        match edit {
            Edit::Edge(which) => {
                *config.pointer_mut(&pointer).unwrap() = which.get(&edges(&field(&pointer))).clone()
            }
            Edit::Replace(value) => *config.pointer_mut(&pointer).unwrap() = value,
            Edit::Remove => match config.pointer_mut(parent) {
                Some(Value::Object(members)) => {
                    members.remove(&field(&pointer));
                }
                Some(Value::Array(items)) => {
                    items.remove(field(&pointer).parse::<usize>().unwrap());
                }
                _ => {}
            },
        }
    }

    /// What a compiled policy guarantees, whatever configuration it came from.
    fn check_policy(policy: &Policy) -> Result<(), TestCaseError> {
        prop_assert!(!policy.issuers.is_empty());
        let names: HashSet<&str> = policy.issuers.iter().map(|i| i.issuer.as_str()).collect();
        prop_assert_eq!(
            names.len(),
            policy.issuers.len(),
            "an issuer configured twice"
        );
        for issuer in &policy.issuers {
            prop_assert!(!issuer.issuer.is_empty());
            prop_assert!(!issuer.audiences.is_empty() && !issuer.audiences.contains(""));
            if let Some(KeySource::Inline(keys)) = &issuer.keys {
                prop_assert!(!keys.is_empty());
            }
        }
        prop_assert!(policy.limits.clock_skew_seconds <= MAX_CLOCK_SKEW_SECONDS);
        prop_assert!((1..=MAX_TOKEN_LIFETIME_LIMIT_SECONDS)
            .contains(&policy.limits.max_token_lifetime_seconds));
        prop_assert!(MAX_HELD_REQUESTS_RANGE.contains(&policy.max_held_requests));
        prop_assert!(policy.token_cache_entries <= MAX_ENTRIES);
        let signed = &policy.signed_requests;
        prop_assert!((1..=3600).contains(&signed.max_age_seconds));
        prop_assert!(signed.max_body_bytes <= MAX_BODY_BYTES_LIMIT);
        prop_assert!(BODY_TIMEOUT_MS_RANGE.contains(&signed.body_timeout_ms));
        let reserved = [
            "authorization",
            "host",
            "cookie",
            "content-length",
            "x-forwarded-for",
        ];
        prop_assert!(!signed.header.is_empty() && !reserved.contains(&signed.header.as_str()));
        let mut headers = HashSet::new();
        for mapping in &policy.claims_to_headers {
            prop_assert!(!mapping.claim.is_empty());
            prop_assert!(
                !reserved.contains(&mapping.header.as_str())
                    && !mapping.header.starts_with("x-envoy-")
            );
            prop_assert!(headers.insert(mapping.header.clone()), "a header set twice");
        }
        for client in &policy.clients {
            prop_assert!(!client.client_id.is_empty());
            prop_assert!(names.contains(client.issuer.as_str()));
            let kids: HashSet<&str> = client.hmac_keys.iter().map(|k| k.kid.as_str()).collect();
            prop_assert_eq!(kids.len(), client.hmac_keys.len());
            for key in &client.hmac_keys {
                prop_assert!(!key.kid.is_empty());
                // RFC 7518 §3.2: an HS256 key is at least as long as the hash.
                prop_assert!(key.secret.len() >= MIN_HMAC_KEY_BYTES);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Principle 6: a typo in a security policy must not silently weaken it, so a member
        /// the configuration does not know is refused in every object that has a fixed
        /// shape. (The configuration before the typo compiles, or this would hold vacuously.)
        #[test]
        fn an_unknown_member_anywhere_in_the_configuration_is_refused(
            config in valid_config(),
            at in any::<Index>(),
            name in "[a-z_]{1,12}",
            value in any_json(),
        ) {
            let bytes = serde_json::to_vec(&config).unwrap();
            let compiled = Policy::from_json_with(&bytes, &environment);
            prop_assert!(compiled.is_ok(), "{:?}", compiled.err());
            let objects = strict_objects(&config);
            let pointer = at.get(&objects);
            let mut typo = config.clone();
            let object = typo.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap();
            object.insert(format!("x_{name}"), value);
            let bytes = serde_json::to_vec(&typo).unwrap();
            prop_assert!(Policy::from_json_with(&bytes, &environment).is_err(), "{}", pointer);
        }

        /// The configuration is validated before it is enforced: whatever a member is
        /// replaced with or whichever is removed, the configuration is refused or compiles to
        /// a policy within every documented bound (no skew above the maximum, no short HMAC
        /// key, no claim written to a reserved header, ...), and never panics the VM at
        /// start-up.
        #[test]
        fn a_configuration_compiles_only_within_every_documented_bound(
            config in valid_config(),
            edits in vec((any::<Index>(), edit()), 1..3),
        ) {
            let mut config = config;
            for (at, edit) in edits {
                apply(&mut config, at, edit);
            }
            let bytes = serde_json::to_vec(&config).unwrap();
            if let Ok(policy) = Policy::from_json_with(&bytes, &environment) {
                check_policy(&policy)?;
            }
        }

        /// The configuration arrives as bytes from the control plane: any bytes, and a valid
        /// configuration corrupted on the way, are refused or compiled without a panic.
        #[test]
        fn configuration_bytes_never_panic(
            bytes in prop_oneof![
                vec(any::<u8>(), 0..128),
                valid_config().prop_flat_map(|config| mutated(config.to_string().into_bytes())),
            ],
        ) {
            if let Ok(policy) = Policy::from_json_with(&bytes, &environment) {
                check_policy(&policy)?;
            }
            let _ = Policy::from_json(&bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// abi: header maps across the VM boundary
// ---------------------------------------------------------------------------------------------

mod abi {
    use super::*;
    use tether::abi::{decode_pairs, encode_pairs, Pairs};

    /// A header map whose count and lengths may lie: small honest ones, and any `u32` (a
    /// count of four billion, a length running past the end or wrapping an offset).
    fn lying_map() -> BoxedStrategy<Vec<u8>> {
        let word = prop_oneof![4 => 0u32..8, 1 => any::<u32>(), 1 => Just(u32::MAX)];
        (
            word.clone(),
            vec(word, 0..8),
            vec(prop_oneof![3 => Just(0u8), 1 => any::<u8>()], 0..40),
        )
            .prop_map(|(count, lengths, tail)| {
                let mut bytes = count.to_le_bytes().to_vec();
                for length in lengths {
                    bytes.extend(length.to_le_bytes());
                }
                bytes.extend(tail);
                bytes
            })
            .boxed()
    }

    fn pairs() -> BoxedStrategy<Vec<(String, Vec<u8>)>> {
        vec((".{0,8}", vec(any::<u8>(), 0..16)), 0..8).boxed()
    }

    fn encode(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
        let borrowed: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        encode_pairs(&borrowed)
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// The host's bytes are not trusted to be well formed (another plugin, another host
        /// version): a map whose count or lengths lie is `None`, never a panic, never a
        /// huge allocation; and what decodes is exactly what the bytes say.
        #[test]
        fn decode_pairs_reads_only_what_the_bytes_hold(
            bytes in prop_oneof![
                lying_map(),
                vec(any::<u8>(), 0..64),
                pairs().prop_map(|p| encode(&p)).prop_flat_map(mutated),
            ],
        ) {
            let Some(pairs) = decode_pairs(&bytes) else {
                return Ok(());
            };
            if bytes.is_empty() {
                prop_assert!(pairs.is_empty());
                return Ok(());
            }
            let count = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            prop_assert_eq!(pairs.len() as u64, u64::from(count));
            if let Ok(named) = pairs
                .iter()
                .map(|(n, v)| Ok((String::from_utf8(n.clone())?, v.clone())))
                .collect::<Result<Vec<_>, std::string::FromUtf8Error>>()
            {
                prop_assert!(bytes.starts_with(&encode(&named)));
            }
        }

        /// Encoding and decoding are inverse: what Tether sets is what the host reads back.
        #[test]
        fn pairs_round_trip(pairs in pairs()) {
            let expected: Pairs = pairs
                .iter()
                .map(|(name, value)| (name.clone().into_bytes(), value.clone()))
                .collect();
            prop_assert_eq!(decode_pairs(&encode(&pairs)), Some(expected));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keyset and replay: records shared between worker VMs
// ---------------------------------------------------------------------------------------------

mod shared_records {
    use super::*;
    use tether::keyset::{FetchedKeys, KeySetRecord, KeySource};
    use tether::reject::Reason;
    use tether::replay::{Bucket, WindowRecord, BUCKET_ENTRIES, MAX_WINDOW_SECONDS};

    fn document() -> BoxedStrategy<Vec<u8>> {
        let good = json!({"keys": [p256_jwk("k1")]}).to_string();
        prop_oneof![
            Just(good.clone().into_bytes()),
            mutated(good.into_bytes()),
            vec(any::<u8>(), 0..48),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Shared data is readable and writable by every plugin in the same `vm_id`: any bytes
        /// decode to some record without a panic, and a record round-trips exactly.
        #[test]
        fn shared_records_decode_any_bytes_and_round_trip(
            bytes in vec(any::<u8>(), 0..64),
            fetched_at in any::<u64>(),
            busy_until in any::<u64>(),
            refetch_requested_at in any::<u64>(),
            document in vec(any::<u8>(), 0..32),
            max_age_seconds in any::<u64>(),
            remembers_since in any::<u64>(),
        ) {
            let decoded = KeySetRecord::decode(&bytes);
            if bytes.len() >= 24 {
                prop_assert_eq!(decoded.encode(), bytes.clone());
            }
            let record = KeySetRecord { fetched_at, busy_until, refetch_requested_at, document };
            prop_assert_eq!(KeySetRecord::decode(&record.encode()), record);

            // Only a record of exactly its size is a window record (another version's is none).
            prop_assert_eq!(WindowRecord::decode(&bytes).is_some(), bytes.len() == 16);
            let window = WindowRecord { max_age_seconds, remembers_since };
            prop_assert_eq!(WindowRecord::decode(&window.encode()), Some(window));

            // A bucket is read whole entries at a time (after its window, if it has one:
            // 8 bytes more than whole entries), trailing bytes dropped, never misread as part of
            // an entry; its window is bounded; what is written is read back the same.
            let bucket = Bucket::decode(&bytes);
            let entries = if bytes.len() % 24 == 8 { (bytes.len() - 8) / 24 } else { bytes.len() / 24 };
            prop_assert_eq!(bucket.len(), entries);
            prop_assert!(bucket.window() <= MAX_WINDOW_SECONDS);
            prop_assert_eq!(Bucket::decode(&bucket.encode()), bucket);
        }

        /// Issue 7, finding 5: a record written by another plugin in the same `vm_id` must not
        /// plant keys or far-future times: a VM installs a record only if its times are
        /// plausible and its document has a usable key, and otherwise keeps what it had.
        #[test]
        fn a_shared_record_installs_only_plausible_usable_keys(
            now in 1_000_000u64..4_000_000_000,
            fetched_at in moment(120),
            busy_until in moment(120),
            refetch_requested_at in moment(120),
            document in document(),
        ) {
            let record = KeySetRecord {
                fetched_at: fetched_at.resolve(now),
                busy_until: busy_until.resolve(now),
                refetch_requested_at: refetch_requested_at.resolve(now),
                document,
            };
            let mut keys = FetchedKeys::new(1);
            match keys.install(0, &record, now) {
                Ok(true) => {
                    prop_assert!(record.plausible(now));
                    prop_assert_eq!(keys.fetched_at(0), record.fetched_at);
                    prop_assert!(keys.resolve(&KeySource::Fetched(0)).is_ok_and(|k| !k.is_empty()));
                }
                Ok(false) => prop_assert_eq!(record.fetched_at, 0),
                Err(_) => {
                    prop_assert_eq!(keys.fetched_at(0), 0);
                    let resolved = keys.resolve(&KeySource::Fetched(0)).err();
                    prop_assert_eq!(resolved, Some(Reason::KeySetUnavailable));
                }
            }
        }

        /// A request signature is accepted once: a bucket refuses an id it remembers until
        /// its `iat` leaves the window (which may widen, never narrow, between writes),
        /// refuses a new one when full (fail closed, never forgetting a live entry to make
        /// room), and survives its round trip through shared data. Checked against a model,
        /// over random sequences with replays and a clock that moves on.
        #[test]
        fn a_replay_bucket_accepts_each_signature_once_and_fails_closed(
            // Up to 200 ids, signed up to 30 s before (or 5 s after) they arrive, 0-4 s apart,
            // under a window of 100-600 s: the bucket fills.
            operations in vec((0u8..200, 0u64..35, 0u64..4, 0u64..50), 0..200),
            window in 100u64..600,
        ) {
            let mut bucket = Bucket::default();
            let mut model: Vec<([u8; 16], u64)> = Vec::new();
            let mut now = 1_000u64;
            let mut window = window;
            for (id, age, elapsed, widen) in operations {
                now += elapsed;
                window += widen / 45;
                let iat = now + 5 - age;
                let mut full_id = [0u8; 32];
                full_id[..16].copy_from_slice(&Sha256::digest([id])[..16]);
                full_id[16..].copy_from_slice(&Sha256::digest([id, 1])[..16]);
                let prefix: [u8; 16] = full_id[..16].try_into().unwrap();
                model.retain(|(_, signed_at)| signed_at + window >= now);
                let expected = if model.iter().any(|(seen, _)| *seen == prefix) {
                    Err(Reason::RequestSignatureReplayed)
                } else if model.len() >= BUCKET_ENTRIES {
                    Err(Reason::ReplayStoreFull)
                } else {
                    model.push((prefix, iat));
                    Ok(())
                };
                prop_assert_eq!(bucket.record(&full_id, iat, now, window), expected);
                prop_assert_eq!(bucket.len(), model.len());
                prop_assert!(bucket.len() <= BUCKET_ENTRIES);
            }
            prop_assert_eq!(Bucket::decode(&bucket.encode()), bucket);
        }

        /// A widened replay window must not let back in what the narrower one already forgot
        /// (review of issue 7): whatever sequence of windows is configured, the record's
        /// window is the widest so far, it never forgets less than it did, and after a
        /// widening it remembers nothing older than the old window at that time.
        #[test]
        fn widening_the_replay_window_never_readmits_a_forgotten_signature(
            steps in vec((1u64..=3600, 0u64..5000), 1..12),
        ) {
            let mut stored: Option<WindowRecord> = None;
            let mut now = 1_800_000_000u64;
            for (max_age_seconds, elapsed) in steps {
                now += elapsed;
                let next = WindowRecord::configure(stored, max_age_seconds, now);
                let widest = stored.map_or(0, |old| old.max_age_seconds).max(max_age_seconds);
                prop_assert_eq!(next.max_age_seconds, widest);
                if let Some(old) = stored {
                    prop_assert!(next.remembers_since >= old.remembers_since);
                    if max_age_seconds > old.max_age_seconds {
                        prop_assert!(next.remembers_since >= now - old.max_age_seconds);
                    }
                }
                stored = WindowRecord::decode(&next.encode());
                prop_assert_eq!(stored, Some(next));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// lifecycle: one held request
// ---------------------------------------------------------------------------------------------

mod lifecycle {
    use super::*;
    use tether::lifecycle::{Decision, Held, Limits, Stage, Step};
    use tether::reject::Reason;

    /// How much body is buffered: any size, or the limit give or take two bytes.
    #[derive(Clone, Copy, Debug)]
    enum Size {
        Bytes(usize),
        Limit(isize),
    }

    #[derive(Clone, Debug)]
    enum Event {
        Decided(Decision),
        Body {
            buffered: Size,
            end_of_stream: bool,
        },
        Trailers,
        Verified(Result<(), Reason>),
        /// The root context's tick or a key set's arrival, `elapsed_ms` later, with the
        /// key sets loaded at `fetched_at`.
        Due {
            elapsed_ms: u64,
            fetched_at: u64,
        },
    }

    fn reason() -> BoxedStrategy<Reason> {
        select(Reason::ALL).boxed()
    }

    fn decision() -> BoxedStrategy<Decision> {
        prop_oneof![
            Just(Decision::Allow),
            reason().prop_map(Decision::Deny),
            Just(Decision::NeedBody),
            (0usize..2, 0u64..3, 0u64..5000).prop_map(|(set, seen_fetched_at, timeout_ms)| {
                Decision::NeedKeys {
                    set,
                    seen_fetched_at,
                    timeout_ms,
                }
            }),
        ]
        .boxed()
    }

    fn limits() -> BoxedStrategy<Limits> {
        (0u64..20_000, 0usize..2000)
            .prop_map(|(body_timeout_ms, max_body_bytes)| Limits {
                body_timeout_ms,
                max_body_bytes,
            })
            .boxed()
    }

    fn size() -> BoxedStrategy<Size> {
        prop_oneof![
            (0usize..3000).prop_map(Size::Bytes),
            (-2isize..=2).prop_map(Size::Limit),
        ]
        .boxed()
    }

    fn event() -> BoxedStrategy<Event> {
        prop_oneof![
            2 => decision().prop_map(Event::Decided),
            3 => (size(), any::<bool>()).prop_map(|(buffered, end_of_stream)| {
                Event::Body { buffered, end_of_stream }
            }),
            1 => Just(Event::Trailers),
            1 => prop_oneof![Just(Ok(())), reason().prop_map(Err)].prop_map(Event::Verified),
            2 => (0u64..6000, 0u64..3).prop_map(|(elapsed_ms, fetched_at)| {
                Event::Due { elapsed_ms, fetched_at }
            }),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(runner(1))]

        /// Issue 7, finding 1: proxy-wasm's default answer to trailers let a held request
        /// through unchecked. Driven by any sequence of events, a held request is never let
        /// go by its body or trailers; only a decision or a verified signature releases it;
        /// a tick never does; a refusal or a release always ends the hold; a signature is
        /// verified only over a complete body; and a body past the limit is refused.
        #[test]
        fn a_held_request_is_released_only_by_its_decision(
            start_ms in 0u64..1_000_000,
            end_of_stream in any::<bool>(),
            announced in prop::option::of(0usize..3000),
            limits in limits(),
            events in vec(event(), 0..24),
        ) {
            let mut now = start_ms;
            let mut held = Held::new(now, end_of_stream, announced, limits);
            for event in events {
                let before = held.stage();
                let step = match event.clone() {
                    Event::Decided(decision) => Some(held.decided(decision, now)),
                    Event::Body { buffered, end_of_stream } => {
                        let buffered = match buffered {
                            Size::Bytes(n) => n,
                            Size::Limit(d) => limits.max_body_bytes.saturating_add_signed(d),
                        };
                        let step = held.on_body(buffered, end_of_stream);
                        if before == Stage::AwaitingBody && buffered > limits.max_body_bytes {
                            prop_assert_eq!(step, Step::Refuse(Reason::BodyTooLarge));
                        }
                        Some(step)
                    }
                    Event::Trailers => Some(held.on_trailers()),
                    Event::Verified(result) => Some(held.verified(result)),
                    Event::Due { elapsed_ms, fetched_at } => {
                        now += elapsed_ms;
                        let step = held.due(now, |_| fetched_at);
                        prop_assert_ne!(step, Some(Step::Continue), "a tick released the request");
                        step
                    }
                };
                let Some(step) = step else { continue };
                if matches!(event, Event::Body { .. } | Event::Trailers) && step == Step::Continue {
                    prop_assert_eq!(before, Stage::Decided, "{:?} released a held request", event);
                }
                if matches!(step, Step::Continue | Step::Refuse(_)) {
                    prop_assert_eq!(held.stage(), Stage::Decided, "{:?} after {:?}", step, event);
                    prop_assert!(!held.is_held());
                }
                if step == Step::Verify {
                    prop_assert_eq!(held.stage(), Stage::AwaitingBody);
                    prop_assert!(held.complete_body().is_some());
                }
            }
        }
    }
}
