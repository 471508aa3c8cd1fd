//! Envoy's `x-forwarded-client-cert` (XFCC) header: the client certificate of a connection
//! that TLS ended at a trusted edge proxy (issue 11), read strictly.
//!
//! Pure: this module reads the header and picks the client's element; whether the header is
//! trusted at all (the connection's own peer must be a configured trusted peer) is the
//! caller's, and the header from any other peer is never read.
//!
//! **Format** (Envoy's `config_http_conn_man_headers_x-forwarded-client-cert`): elements
//! separated by commas, one per proxy that appended one; each element `Key=Value` pairs
//! separated by semicolons. Keys: `By` (the appending proxy's URI SAN), `Hash` (the SHA-256
//! of the client certificate, hex), `Cert` and `Chain` (URL-encoded PEM), `Subject` (always
//! double-quoted), `URI` and `DNS` (SANs; `DNS`, `URI` and `By` may repeat). A value is an
//! RFC 7230 §3.2.6 quoted-string (with `\` quoted-pairs) or a run of visible ASCII without
//! `"`, `,` and `;`. Several header lines are one list, in order (RFC 7230 §3.2.2), and
//! optional whitespace is allowed around the commas between elements only.
//!
//! **Strict**: a key outside that list, a key given twice where it cannot repeat, an empty
//! element, a missing `=`, an unterminated quote, a control character, a `Hash` that is not 64
//! hex digits, a quoted value that is not UTF-8, more than [`MAX_ELEMENTS`] elements, more than
//! [`MAX_PAIRS`] pairs in one, or more than [`MAX_BYTES`] in all, is [`XfccError`]: a
//! malformed header from a trusted peer is refused, never half read. Keys are matched
//! case-insensitively (Envoy writes them as above). An empty value means the key is absent
//! (Envoy writes `URI=` for a certificate without a URI SAN).

use crate::bind::mtls::PeerCertificate;

/// The header's name.
pub const HEADER: &str = "x-forwarded-client-cert";
/// The most bytes read, all lines together (a `Cert` is a few KiB of URL-encoded PEM).
pub const MAX_BYTES: usize = 64 * 1024;
/// The most elements (proxies) in the header.
pub const MAX_ELEMENTS: usize = 16;
/// The most pairs in one element.
pub const MAX_PAIRS: usize = 64;

/// One proxy's element: what it says of the client certificate it saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub by: Vec<String>,
    /// `Hash`: the certificate's SHA-256, the digest `x5t#S256` is made of.
    pub hash: Option<PeerCertificate>,
    /// `Cert`: the certificate, URL-encoded PEM, as given.
    pub cert: Option<String>,
    /// `Chain`: the chain, URL-encoded PEM, as given.
    pub chain: Option<String>,
    pub subject: Option<String>,
    pub uri: Vec<String>,
    pub dns: Vec<String>,
}

/// Why the header was not read. No variant carries any of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XfccError {
    /// Over [`MAX_BYTES`], [`MAX_ELEMENTS`] or [`MAX_PAIRS`].
    TooLarge,
    /// Not the grammar above: an empty element or value list, a missing `=`, a stray quote,
    /// an unterminated quoted-string, a control character, a quoted value that is not UTF-8.
    Malformed,
    /// A key Envoy does not write.
    UnknownKey,
    /// `Hash`, `Cert`, `Chain` or `Subject` twice in one element.
    RepeatedKey,
    /// A `Hash` that is not 64 hex digits.
    BadHash,
    /// From a trusted edge, more than one element describing a client
    /// ([`client_element`]).
    SeveralClients,
}

impl std::fmt::Display for XfccError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XfccError::TooLarge => "x-forwarded-client-cert is too large",
            XfccError::Malformed => "x-forwarded-client-cert is malformed",
            XfccError::UnknownKey => "x-forwarded-client-cert has an unknown key",
            XfccError::RepeatedKey => "x-forwarded-client-cert repeats a key",
            XfccError::BadHash => "x-forwarded-client-cert has a malformed Hash",
            XfccError::SeveralClients => "x-forwarded-client-cert describes more than one client",
        })
    }
}

impl std::error::Error for XfccError {}

/// Reads every element of the header's lines, in order.
pub fn parse(lines: &[&[u8]]) -> Result<Vec<Element>, XfccError> {
    let total = lines
        .iter()
        .fold(0usize, |sum, line| sum.saturating_add(line.len()));
    if total > MAX_BYTES {
        return Err(XfccError::TooLarge);
    }
    let mut elements = Vec::new();
    for line in lines {
        let mut reader = Reader { input: line, at: 0 };
        loop {
            reader.skip_ows();
            if elements.len() == MAX_ELEMENTS {
                return Err(XfccError::TooLarge);
            }
            elements.push(reader.element()?);
            reader.skip_ows();
            match reader.next() {
                None => break,
                Some(b',') => continue,
                Some(_) => return Err(XfccError::Malformed),
            }
        }
    }
    Ok(elements)
}

/// The element that describes the client, from a trusted edge: the only one, once an element
/// the Envoy in front of Tether appended itself is set aside (`APPEND_FORWARD` on Tether's own
/// listener: the last element, describing the connection's peer, the edge, `connection`).
/// `Ok(None)`: no element describes the client, so the client had no certificate.
///
/// An edge that replaces the client's header (`SANITIZE_SET`) writes one element. More than
/// one is [`XfccError::SeveralClients`]: Envoy does not escape the URI SANs it writes, so a
/// certificate with a URI SAN like `x,Hash=...` would otherwise write an element of its own,
/// naming another client's certificate.
pub fn client_element<'e>(
    elements: &'e [Element],
    connection: Option<&PeerCertificate>,
) -> Result<Option<&'e Element>, XfccError> {
    let described = match elements.split_last() {
        Some((last, before)) if connection.is_some() && last.hash.as_ref() == connection => before,
        _ => elements,
    };
    match described {
        [] => Ok(None),
        [client] => Ok(Some(client)),
        _ => Err(XfccError::SeveralClients),
    }
}

/// A cursor over one header line.
struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// `pair *( ";" pair )`, up to the `,` or the end.
    fn element(&mut self) -> Result<Element, XfccError> {
        let mut element = Element::default();
        let mut pairs = 0;
        loop {
            pairs += 1;
            if pairs > MAX_PAIRS {
                return Err(XfccError::TooLarge);
            }
            let key = self.key()?;
            // Envoy writes its RFC 2253 subject between quotes without escaping it: the
            // backslashes in it are RFC 2253's escapes (which also keep every `"` escaped),
            // not quoted-pairs to undo.
            let value = self.value(key == "subject")?;
            element.set(&key, value)?;
            if self.peek() == Some(b';') {
                self.at += 1;
            } else {
                return Ok(element);
            }
        }
    }

    /// `1*ALPHA "="`.
    fn key(&mut self) -> Result<String, XfccError> {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.at += 1;
        }
        let key = &self.input[start..self.at];
        if key.is_empty() || self.next() != Some(b'=') {
            return Err(XfccError::Malformed);
        }
        Ok(String::from_utf8_lossy(key).to_ascii_lowercase())
    }

    /// A quoted-string (its content as written if `raw`, else with quoted-pairs undone), or
    /// visible ASCII without `"`, `,` and `;` (possibly empty).
    fn value(&mut self, raw: bool) -> Result<String, XfccError> {
        if self.peek() == Some(b'"') {
            self.at += 1;
            return self.quoted(raw);
        }
        let start = self.at;
        while let Some(b) = self.peek() {
            match b {
                b',' | b';' => break,
                b'"' => return Err(XfccError::Malformed),
                // Whitespace may only follow the element, before a comma or the end.
                b' ' | b'\t' => break,
                0x21..=0x7e => self.at += 1,
                _ => return Err(XfccError::Malformed),
            }
        }
        let value =
            std::str::from_utf8(&self.input[start..self.at]).map_err(|_| XfccError::Malformed)?;
        // Only whitespace before a comma or the end may follow an unquoted value.
        if matches!(self.peek(), Some(b' ' | b'\t')) {
            let mut probe = self.at;
            while matches!(self.input.get(probe), Some(b' ' | b'\t')) {
                probe += 1;
            }
            if !matches!(self.input.get(probe), None | Some(b',')) {
                return Err(XfccError::Malformed);
            }
        }
        Ok(value.to_string())
    }

    /// RFC 7230 §3.2.6, after the opening quote: `*( qdtext / quoted-pair ) DQUOTE`.
    fn quoted(&mut self, raw: bool) -> Result<String, XfccError> {
        let mut out = Vec::new();
        loop {
            match self.next() {
                None => return Err(XfccError::Malformed),
                Some(b'"') => break,
                Some(b'\\') => match self.next() {
                    Some(b @ (b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)) => {
                        if raw {
                            out.push(b'\\');
                        }
                        out.push(b)
                    }
                    _ => return Err(XfccError::Malformed),
                },
                Some(b @ (b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff)) => out.push(b),
                Some(_) => return Err(XfccError::Malformed),
            }
        }
        // A quoted value ends the pair.
        if !matches!(self.peek(), None | Some(b';' | b',' | b' ' | b'\t')) {
            return Err(XfccError::Malformed);
        }
        String::from_utf8(out).map_err(|_| XfccError::Malformed)
    }
}

impl Element {
    fn set(&mut self, key: &str, value: String) -> Result<(), XfccError> {
        fn once(slot: &mut Option<String>, value: String) -> Result<(), XfccError> {
            if slot.is_some() {
                return Err(XfccError::RepeatedKey);
            }
            *slot = Some(value);
            Ok(())
        }
        let empty = value.is_empty();
        match key {
            "by" => self.by.extend((!empty).then_some(value)),
            "uri" => self.uri.extend((!empty).then_some(value)),
            "dns" => self.dns.extend((!empty).then_some(value)),
            "hash" if empty => {}
            "hash" => {
                if self.hash.is_some() {
                    return Err(XfccError::RepeatedKey);
                }
                let hash =
                    PeerCertificate::from_hex_digest(value.as_bytes()).ok_or(XfccError::BadHash)?;
                self.hash = Some(hash);
            }
            "cert" if empty => {}
            "cert" => once(&mut self.cert, value)?,
            "chain" if empty => {}
            "chain" => once(&mut self.chain, value)?,
            "subject" if empty => {}
            "subject" => once(&mut self.subject, value)?,
            _ => return Err(XfccError::UnknownKey),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";
    const EDGE_HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn one(line: &str) -> Result<Vec<Element>, XfccError> {
        parse(&[line.as_bytes()])
    }

    fn digest(hex: &str) -> PeerCertificate {
        PeerCertificate::from_hex_digest(hex.as_bytes()).unwrap()
    }

    /// Envoy's documentation's examples.
    #[test]
    fn envoys_examples_read() {
        let line = format!(
            "By=http://frontend.lyft.com;Hash={HASH};Subject=\"/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client\";URI=http://testclient.lyft.com"
        );
        let elements = one(&line).unwrap();
        assert_eq!(elements.len(), 1);
        let e = &elements[0];
        assert_eq!(e.by, ["http://frontend.lyft.com"]);
        assert_eq!(e.hash, Some(digest(HASH)));
        assert_eq!(
            e.subject.as_deref(),
            Some("/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client")
        );
        assert_eq!(e.uri, ["http://testclient.lyft.com"]);
        // Two proxies, and several DNS SANs, each its own pair.
        let line = format!(
            "By=http://frontend.lyft.com;Hash={HASH};URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash={HASH};URI=http://frontend.lyft.com"
        );
        let elements = one(&line).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1].by, ["http://backend.lyft.com"]);
        let line = format!(
            "By=http://frontend.lyft.com;Hash={HASH};Subject=\"\";URI=;DNS=lyft.com;DNS=www.lyft.com"
        );
        let e = &one(&line).unwrap()[0];
        assert_eq!(e.dns, ["lyft.com", "www.lyft.com"]);
        assert!(e.uri.is_empty() && e.subject.is_none());
    }

    #[test]
    fn quoted_values_keep_commas_semicolons_and_escaped_quotes() {
        let line = format!(r#"Hash={HASH};Subject="CN=a\"b, O=x;y""#);
        let e = &one(&line).unwrap()[0];
        // The subject is kept as written (its escapes are its own, RFC 2253 §2.4).
        assert_eq!(e.subject.as_deref(), Some(r#"CN=a\"b, O=x;y"#));
        // Any other quoted value has its quoted-pairs undone (RFC 7230 §3.2.6).
        let line = format!(r#"Hash={HASH};URI="spiffe://a\"b,c;d""#);
        assert_eq!(one(&line).unwrap()[0].uri, [r#"spiffe://a"b,c;d"#]);
        // A URL-encoded PEM, as Envoy writes Cert.
        let line = format!("Hash={HASH};Cert=\"-----BEGIN%20CERTIFICATE-----%0AMIIB\"");
        let e = &one(&line).unwrap()[0];
        assert_eq!(
            e.cert.as_deref(),
            Some("-----BEGIN%20CERTIFICATE-----%0AMIIB")
        );
    }

    #[test]
    fn several_lines_are_one_list_with_whitespace_between_elements() {
        let a = format!("By=spiffe://a;Hash={HASH}");
        let b = format!("By=spiffe://b;Hash={EDGE_HASH} ,  By=spiffe://c");
        let elements = parse(&[a.as_bytes(), b.as_bytes()]).unwrap();
        let by: Vec<&str> = elements.iter().map(|e| e.by[0].as_str()).collect();
        assert_eq!(by, ["spiffe://a", "spiffe://b", "spiffe://c"]);
    }

    #[test]
    fn malformed_headers_are_refused_whole() {
        let cases: &[(&str, XfccError)] = &[
            ("", XfccError::Malformed),
            ("Hash", XfccError::Malformed),
            ("=x", XfccError::Malformed),
            ("By=a,,By=b", XfccError::Malformed),
            ("By=a,", XfccError::Malformed),
            ("By=a;", XfccError::Malformed),
            ("By=a b", XfccError::Malformed),
            ("By = a", XfccError::Malformed),
            ("Subject=\"unterminated", XfccError::Malformed),
            ("Subject=\"a\"b", XfccError::Malformed),
            ("By=a\"b", XfccError::Malformed),
            ("Subject=\"a\u{1}\"", XfccError::Malformed),
            ("By=\u{7f}", XfccError::Malformed),
            ("Subject=\"a\\\u{1}\"", XfccError::Malformed),
            ("Foo=bar", XfccError::UnknownKey),
            ("Hash=abc", XfccError::BadHash),
            ("Subject=\"a\";Subject=\"b\"", XfccError::RepeatedKey),
            ("Cert=a;Cert=b", XfccError::RepeatedKey),
        ];
        for (line, error) in cases {
            assert_eq!(one(line), Err(*error), "{line:?}");
        }
        let repeated_hash = format!("Hash={HASH};Hash={HASH}");
        assert_eq!(one(&repeated_hash), Err(XfccError::RepeatedKey));
        // Non-UTF-8 inside quotes.
        assert_eq!(parse(&[b"Subject=\"\xff\""]), Err(XfccError::Malformed));
    }

    #[test]
    fn size_element_and_pair_limits_hold() {
        let long = format!("Cert=\"{}\"", "a".repeat(MAX_BYTES));
        assert_eq!(one(&long), Err(XfccError::TooLarge));
        let many = vec!["By=a"; MAX_ELEMENTS + 1].join(",");
        assert_eq!(one(&many), Err(XfccError::TooLarge));
        let most = vec!["By=a"; MAX_ELEMENTS].join(",");
        assert_eq!(one(&most).unwrap().len(), MAX_ELEMENTS);
        let pairs = vec!["DNS=a"; MAX_PAIRS + 1].join(";");
        assert_eq!(one(&pairs), Err(XfccError::TooLarge));
    }

    #[test]
    fn keys_match_without_regard_to_case() {
        let line = format!("hash={HASH};uri=spiffe://x");
        let e = &one(&line).unwrap()[0];
        assert_eq!(e.hash, Some(digest(HASH)));
        assert_eq!(e.uri, ["spiffe://x"]);
    }

    /// Issue 11: the edge writes the client's element; if the Envoy in front of Tether also
    /// appends one (`APPEND_FORWARD`), that last element describes the edge itself (its
    /// `Hash` is the connection's peer certificate), and the element before it is the client's.
    #[test]
    fn the_element_appended_in_front_of_tether_is_skipped() {
        let client = format!("By=spiffe://edge;Hash={HASH};URI=spiffe://client");
        let edge = format!("By=spiffe://sidecar;Hash={EDGE_HASH};URI=spiffe://edge");
        let connection = digest(EDGE_HASH);
        let forwarded = one(&client).unwrap();
        let appended = one(&format!("{client},{edge}")).unwrap();
        let chosen = |elements: &[Element]| {
            client_element(elements, Some(&connection)).map(|e| e.map(|e| e.uri.clone()))
        };
        let client_uri = Ok(Some(vec!["spiffe://client".to_string()]));
        assert_eq!(chosen(&forwarded), client_uri);
        assert_eq!(chosen(&appended), client_uri);
        // Only the edge's own element: no client certificate.
        assert_eq!(chosen(&one(&edge).unwrap()), Ok(None));
        assert_eq!(client_element(&[], Some(&connection)), Ok(None));
        // An element without Hash is a client without a certificate (the caller's reading).
        let no_cert = one("By=spiffe://edge;URI=").unwrap();
        assert_eq!(
            client_element(&no_cert, Some(&connection)).map(|e| e.and_then(|e| e.hash)),
            Ok(None)
        );
    }

    /// Envoy writes URI SANs unescaped: a certificate whose URI SAN is
    /// `https://m.example/x,Hash=<another certificate>` makes the edge's one element read as
    /// two. Found by an attacker's review of issue 11; the client is never chosen from several.
    #[test]
    fn a_uri_san_that_writes_an_element_of_its_own_is_refused() {
        let mallory = "1".repeat(64);
        let injected = format!(
            "By=spiffe://edge;Hash={mallory};URI=https://m.example/x,Hash={HASH};URI=spiffe://tpp"
        );
        let edge = format!("By=spiffe://sidecar;Hash={EDGE_HASH}");
        let connection = digest(EDGE_HASH);
        for line in [injected.clone(), format!("{injected},{edge}")] {
            let elements = one(&line).unwrap();
            assert_eq!(
                client_element(&elements, Some(&connection)),
                Err(XfccError::SeveralClients),
                "{line}"
            );
        }
        // The same SAN inside one element can only add pairs, and never a second Hash.
        let in_one = format!("Hash={mallory};URI=https://m.example/x;Hash={HASH}");
        assert_eq!(one(&in_one), Err(XfccError::RepeatedKey));
    }

    /// Envoy's `Subject` is its RFC 2253 string between quotes, unescaped: its backslashes are
    /// the DN's own escapes and are kept (found by the same review: undoing them turned one
    /// RDN `CN=bank\,O=Example Bank` into two).
    #[test]
    fn the_subject_keeps_its_rfc_2253_escapes() {
        let line = format!(r#"Hash={HASH};Subject="CN=bank\,O=Example Bank\, Ltd.,C=GB""#);
        let e = &one(&line).unwrap()[0];
        assert_eq!(
            e.subject.as_deref(),
            Some(r#"CN=bank\,O=Example Bank\, Ltd.,C=GB"#)
        );
    }
}
