//! Distinguished names, read from their RFC 4514 string form and compared as RFC 4517's
//! `distinguishedNameMatch` does: for `tls_client_auth_subject_dn` (RFC 8705 §2.1.2), against
//! the subject Envoy or a trusted edge reports (issue 11).
//!
//! **Reading** (RFC 4514 §3): RDNs separated by `,` (and, as RFC 4514 §4 lets a reader accept,
//! `;`), AVAs within an RDN by `+`; an attribute type is a short name or a numeric OID; a value
//! is a string with `\` escapes (`\,` or `\2C`) or `#` and the hex of its BER encoding. Escaped
//! hex pairs must make UTF-8. At most [`MAX_RDNS`] RDNs and [`MAX_AVAS`] AVAs in all, and
//! [`MAX_BYTES`] of input.
//!
//! **Comparing** (RFC 4517 §4.2.15): the same RDNs in the same order; within an RDN the same
//! AVAs in any order (a multi-valued RDN is a set). Attribute types compare as OIDs, so `cn`,
//! `CN` and `2.5.4.3` are one type. Values compare as RFC 4518 prepares strings for
//! `caseIgnoreMatch`, in part: leading and trailing spaces dropped, inner runs of spaces one
//! space, and Unicode lowercase (`char::to_lowercase`). Not done: NFKC normalization and the
//! mapping and prohibition tables of RFC 4518 §2.2–2.4 (so `ﬁ` and `fi` differ). A `#` value
//! whose BER is a UTF8String, PrintableString, IA5String, TeletexString (read as Latin-1) or
//! BMPString is compared as that text; any other `#` value as its bytes. A certificate's
//! subject ([`DistinguishedName::from_der_rdns`]) is prepared the same way.

/// The most input read.
pub const MAX_BYTES: usize = 4096;
/// The most RDNs in a name.
pub const MAX_RDNS: usize = 32;
/// The most AVAs in a name, all RDNs together.
pub const MAX_AVAS: usize = 64;

/// A distinguished name, ready to compare: equal names are `==`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistinguishedName(Vec<Vec<Ava>>);

/// One attribute type and value, prepared for comparison.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ava {
    /// The numeric OID.
    oid: String,
    value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    /// Prepared text (spaces and case as above).
    Text(String),
    /// The BER of a `#` value that is no string type read here.
    Ber(Vec<u8>),
}

/// Why a name was not read. No variant carries any of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnError {
    /// Over [`MAX_BYTES`], [`MAX_RDNS`] or [`MAX_AVAS`].
    TooLarge,
    /// Not RFC 4514: a missing `=`, an empty type, an unknown short name, a bad escape or
    /// hex string, a character that must be escaped, text that is not UTF-8.
    Malformed,
}

impl std::fmt::Display for DnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnError::TooLarge => "distinguished name is too large",
            DnError::Malformed => "distinguished name is not an RFC 4514 string",
        })
    }
}

impl std::error::Error for DnError {}

/// The attribute types known by name (RFC 4514 §3, and those certificates commonly carry).
const NAMES: [(&str, &str); 14] = [
    ("cn", "2.5.4.3"),
    ("l", "2.5.4.7"),
    ("st", "2.5.4.8"),
    ("o", "2.5.4.10"),
    ("ou", "2.5.4.11"),
    ("c", "2.5.4.6"),
    ("street", "2.5.4.9"),
    ("dc", "0.9.2342.19200300.100.1.25"),
    ("uid", "0.9.2342.19200300.100.1.1"),
    ("serialnumber", "2.5.4.5"),
    ("sn", "2.5.4.4"),
    ("title", "2.5.4.12"),
    ("emailaddress", "1.2.840.113549.1.9.1"),
    ("e", "1.2.840.113549.1.9.1"),
];

impl DistinguishedName {
    /// Reads the RFC 4514 string form. The empty string is the empty name.
    pub fn parse(text: &str) -> Result<DistinguishedName, DnError> {
        if text.len() > MAX_BYTES {
            return Err(DnError::TooLarge);
        }
        let mut reader = Reader {
            input: text.as_bytes(),
            at: 0,
        };
        let mut rdns = Vec::new();
        let mut avas = 0;
        if reader.input.is_empty() {
            return Ok(DistinguishedName(rdns));
        }
        loop {
            let mut rdn = Vec::new();
            loop {
                avas += 1;
                if avas > MAX_AVAS {
                    return Err(DnError::TooLarge);
                }
                rdn.push(reader.ava()?);
                if reader.peek() == Some(b'+') {
                    reader.at += 1;
                } else {
                    break;
                }
            }
            rdn.sort();
            rdn.dedup();
            rdns.push(rdn);
            if rdns.len() > MAX_RDNS {
                return Err(DnError::TooLarge);
            }
            match reader.next() {
                None => return Ok(DistinguishedName(rdns)),
                Some(b',' | b';') => reader.skip_spaces(),
                Some(_) => return Err(DnError::Malformed),
            }
        }
    }

    /// The name of a certificate's `Name` (RFC 5280 §4.1.2.4), given in its DER order (the
    /// most general RDN first): each RDN's attributes as the numeric OID and the BER of the
    /// value. The string form lists RDNs the other way round (RFC 4514 §2.1); so does this.
    pub fn from_der_rdns(rdns: &[Vec<(String, Vec<u8>)>]) -> Result<DistinguishedName, DnError> {
        let avas: usize = rdns.iter().map(Vec::len).sum();
        if rdns.len() > MAX_RDNS || avas > MAX_AVAS {
            return Err(DnError::TooLarge);
        }
        let mut out = Vec::with_capacity(rdns.len());
        for rdn in rdns.iter().rev() {
            let mut prepared: Vec<Ava> = rdn
                .iter()
                .map(|(oid, ber)| Ava {
                    oid: oid.clone(),
                    value: ber_text(ber).map_or_else(
                        || Value::Ber(ber.clone()),
                        |text| Value::Text(prepare(&text)),
                    ),
                })
                .collect();
            prepared.sort();
            prepared.dedup();
            out.push(prepared);
        }
        Ok(DistinguishedName(out))
    }

    /// The number of RDNs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    /// `attributeType "=" attributeValue`.
    fn ava(&mut self) -> Result<Ava, DnError> {
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            self.at += 1;
        }
        let name = std::str::from_utf8(&self.input[start..self.at])
            .map_err(|_| DnError::Malformed)?
            .to_ascii_lowercase();
        self.skip_spaces();
        if self.next() != Some(b'=') {
            return Err(DnError::Malformed);
        }
        let oid = oid_of(&name)?;
        let value = if self.peek() == Some(b'#') {
            self.at += 1;
            self.hex_value()?
        } else {
            Value::Text(prepare(&self.string()?))
        };
        Ok(Ava { oid, value })
    }

    /// `#` then hex pairs: the BER of the value.
    fn hex_value(&mut self) -> Result<Value, DnError> {
        let mut ber = Vec::new();
        while let Some(pair) = self.input.get(self.at..self.at + 2) {
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                break;
            }
            ber.push(crate::percent::hex_byte(pair).ok_or(DnError::Malformed)?);
            self.at += 2;
        }
        if ber.is_empty() || !matches!(self.peek(), None | Some(b',' | b';' | b'+')) {
            return Err(DnError::Malformed);
        }
        Ok(ber_text(&ber).map_or(Value::Ber(ber), |text| Value::Text(prepare(&text))))
    }

    /// A `string` (RFC 4514 §3) up to an unescaped `,`, `;` or `+`, escapes undone.
    fn string(&mut self) -> Result<String, DnError> {
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            match b {
                b',' | b';' | b'+' => break,
                b'\\' => {
                    self.at += 1;
                    match self.next() {
                        Some(c) if b"\\\"+,;<>= #".contains(&c) => out.push(c),
                        Some(c) if c.is_ascii_hexdigit() => {
                            let low = self.next().ok_or(DnError::Malformed)?;
                            let byte =
                                crate::percent::hex_byte(&[c, low]).ok_or(DnError::Malformed)?;
                            out.push(byte);
                        }
                        _ => return Err(DnError::Malformed),
                    }
                }
                // Characters RFC 4514 §3 requires escaped (and NUL).
                b'"' | b'<' | b'>' | 0 => return Err(DnError::Malformed),
                _ => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| DnError::Malformed)
    }
}

/// The numeric OID of an attribute type: a known short name, or a numeric OID as given.
fn oid_of(name: &str) -> Result<String, DnError> {
    if let Some((_, oid)) = NAMES.iter().find(|(short, _)| *short == name) {
        return Ok((*oid).to_string());
    }
    let numeric = name
        .split('.')
        .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
        && name.contains('.');
    if numeric {
        Ok(name.to_string())
    } else {
        Err(DnError::Malformed)
    }
}

/// The text of a BER string value (tag, short or long length, contents), for the string
/// types a certificate's names use; `None` for anything else.
fn ber_text(ber: &[u8]) -> Option<String> {
    let (&tag, rest) = ber.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, contents) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 2 || rest.len() < count {
            return None;
        }
        let (length, contents) = rest.split_at(count);
        (
            length
                .iter()
                .fold(0usize, |n, b| (n << 8) | usize::from(*b)),
            contents,
        )
    };
    if contents.len() != length {
        return None;
    }
    match tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => String::from_utf8(contents.to_vec()).ok(),
        // TeletexString, read as Latin-1 as most software does.
        0x14 => Some(contents.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UCS-2, big-endian.
        0x1e if contents.len() % 2 == 0 => char::decode_utf16(
            contents
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        _ => None,
    }
}

/// RFC 4518-style preparation for `caseIgnoreMatch` (see the module documentation).
fn prepare(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(text: &str) -> DistinguishedName {
        DistinguishedName::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn types_compare_as_oids_and_values_ignore_case_and_extra_spaces() {
        let a = dn("CN=Alice Smith,O=Example Corp,C=GB");
        assert_eq!(a, dn("cn=alice smith, o=EXAMPLE  corp, c=gb"));
        assert_eq!(
            a,
            dn("2.5.4.3=Alice Smith;2.5.4.10= Example Corp ;2.5.4.6=GB")
        );
        assert_ne!(a, dn("CN=Alice Smith,O=Example Corp,C=DE"));
        // The order of RDNs matters.
        assert_ne!(a, dn("C=GB,O=Example Corp,CN=Alice Smith"));
        assert_ne!(a, dn("CN=Alice Smith,O=Example Corp"));
        assert_eq!(a.len(), 3);
    }

    /// RFC 4514 §4's examples.
    #[test]
    fn rfc4514_examples_read() {
        let multi = dn("OU=Sales+CN=J.  Smith,DC=example,DC=net");
        assert_eq!(multi, dn("CN=J. Smith+OU=Sales,DC=example,DC=net"));
        assert_eq!(multi.len(), 3);
        let escaped = dn("CN=James \\\"Jim\\\" Smith\\, III,DC=example,DC=net");
        assert_eq!(
            escaped,
            dn("CN=James \\22Jim\\22 Smith\\2c III,DC=example,DC=net")
        );
        let leading = dn("CN=Before\\0dAfter,DC=example,DC=net");
        assert_eq!(leading.len(), 3);
        // `#` and the BER of an OCTET STRING ("Hi"): compared as bytes.
        let ber = dn("1.3.6.1.4.1.1466.0=#04024869");
        assert_eq!(ber.len(), 1);
        // UTF-8 by escaped pairs, raw, and as the BER of a UTF8String: one value.
        let utf8 = dn("SN=Lu\\C4\\8Di\\C4\\87");
        assert_eq!(utf8, dn("SN=lu\u{10d}i\u{107}"));
        assert_eq!(utf8, dn("2.5.4.4=#0C074C75C48D69C487"));
    }

    #[test]
    fn a_multi_valued_rdn_is_a_set() {
        assert_eq!(dn("CN=a+UID=b,O=x"), dn("UID=b+CN=a,O=x"));
        assert_ne!(dn("CN=a+UID=b,O=x"), dn("CN=a,UID=b,O=x"));
    }

    #[test]
    fn escapes_keep_separators_inside_values() {
        assert_ne!(dn("CN=a\\,O=b"), dn("CN=a,O=b"));
        assert_eq!(dn("CN=a\\,O=b").len(), 1);
        assert_eq!(dn("CN=a\\+b"), dn("CN=A\\2Bb"));
        assert_eq!(dn("CN=a\\+b").len(), 1);
    }

    #[test]
    fn malformed_names_are_refused() {
        for text in [
            "CN",
            "=x",
            "CN=a,",
            "CN=a,,O=b",
            "XX=a",
            "CN=a\\",
            "CN=a\\zz",
            "CN=a\\2",
            "CN=a\\ff",
            "CN=a\"b",
            "CN=<x>",
            "2.5.4.3=#",
            "2.5.4.3=#0g",
            "2.5.4.3=#0c01 ",
            "..=x",
        ] {
            assert_eq!(
                DistinguishedName::parse(text),
                Err(DnError::Malformed),
                "{text:?}"
            );
        }
        assert_eq!(dn(""), DistinguishedName(Vec::new()));
        assert_eq!(
            DistinguishedName::parse(&"CN=a,".repeat(40)[..199]),
            Err(DnError::TooLarge)
        );
        assert_eq!(
            DistinguishedName::parse(&"a".repeat(MAX_BYTES + 1)),
            Err(DnError::TooLarge)
        );
    }
}
