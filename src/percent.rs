//! Hex and percent-encoding (RFC 3986 §2.1), decoded one way everywhere Tether reads
//! a URL or a form: a `%` must be followed by exactly two hex digits, nothing more lenient
//! (Rust's `from_str_radix` would also take `%+f`), so that no check decodes differently
//! from the servers it protects.

/// Lowercase hex of `bytes` (as Envoy writes digests, and as Tether names things in logs and
/// shared-data keys).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The byte two ASCII hex digits (either case) spell; `None` for anything else.
pub fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    match pair {
        [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
        _ => None,
    }
}

/// One round of `application/x-www-form-urlencoded` decoding: `%XX` escapes, and `+` as a
/// space. A `%` not followed by two hex digits stays as it is.
pub fn form_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match (byte, input.get(i + 1..i + 3).and_then(hex_byte)) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Strict percent-decoding (RFC 3986 §2.1): every `%XX` decoded, and a `%` not followed by
/// two hex digits is an error (`None`); `+` is kept as it is.
pub fn decode_strict(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            out.push(hex_byte(input.get(i + 1..i + 3)?)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_pairs_are_exactly_two_hex_digits() {
        assert_eq!(hex_byte(b"2e"), Some(0x2e));
        assert_eq!(hex(&[0x00, 0x2e, 0xff]), "002eff");
        assert_eq!(hex_byte(hex(&[0xc0]).as_bytes()), Some(0xc0));
        assert_eq!(hex_byte(b"C0"), Some(0xc0));
        // Regression test for the review of issue 7: `from_str_radix` takes a sign.
        for bad in [&b"+f"[..], b"-1", b" f", b"g0", b"0", b"000", b""] {
            assert_eq!(hex_byte(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn form_decoding_handles_escapes_plus_and_stray_percent_signs() {
        assert_eq!(form_decode(b"a%5Fb+c"), b"a_b c");
        // `%+f` is no escape (its `+` is a space), never the byte 0x0F.
        assert_eq!(form_decode(b"%zz%+f%"), b"%zz% f%");
        assert_eq!(form_decode(b"%25%35%46"), b"%5F");
    }
}
