//! Just enough DER (X.690) to take apart what OpenSSL hands back: a SubjectPublicKeyInfo
//! (RFC 5280 §4.1.2.7), an RSAPublicKey (RFC 8017 §A.1.1) and an ECDSA-Sig-Value
//! (RFC 3279 §2.2.3). Inputs come from our own `openssl` runs, so malformed input is a harness
//! bug and panics.

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const SEQUENCE: u8 = 0x30;

/// Reads one element of type `tag` from the front of `input`; returns (contents, rest).
pub fn read(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert!(input.len() >= 2, "DER: truncated element");
    assert_eq!(
        input[0], tag,
        "DER: expected tag {tag:#04x}, found {:#04x}",
        input[0]
    );
    let (length, header) = match input[1] {
        short @ 0..=0x7f => (usize::from(short), 2),
        long => {
            let count = usize::from(long & 0x7f);
            assert!(
                (1..=4).contains(&count) && input.len() >= 2 + count,
                "DER: bad length"
            );
            let length = input[2..2 + count]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (length, 2 + count)
        }
    };
    assert!(
        input.len() >= header + length,
        "DER: element overruns its input"
    );
    (&input[header..header + length], &input[header + length..])
}

/// The unsigned big-endian magnitude of a DER INTEGER (its sign octet removed).
pub fn unsigned(integer: &[u8]) -> &[u8] {
    match integer {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    }
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo: for EC the SEC1 point, for Ed25519
/// the 32-byte key (RFC 8410 §4), for RSA a DER RSAPublicKey.
pub fn spki_public_key(spki: &[u8]) -> &[u8] {
    let (body, _) = read(spki, SEQUENCE);
    let (_algorithm, rest) = read(body, SEQUENCE);
    let (bits, _) = read(rest, BIT_STRING);
    assert_eq!(
        bits.first(),
        Some(&0),
        "DER: public key is not a whole number of octets"
    );
    &bits[1..]
}

/// (n, e) of a DER RSAPublicKey, as unsigned big-endian octets.
pub fn rsa_public_key(der: &[u8]) -> (&[u8], &[u8]) {
    let (body, _) = read(der, SEQUENCE);
    let (n, rest) = read(body, INTEGER);
    let (e, _) = read(rest, INTEGER);
    (unsigned(n), unsigned(e))
}

/// Converts a DER ECDSA-Sig-Value into the JWS form: R and S as fixed-width big-endian
/// octets, concatenated (RFC 7518 §3.4).
pub fn ecdsa_signature_to_jws(der: &[u8], width: usize) -> Vec<u8> {
    let (body, _) = read(der, SEQUENCE);
    let (r, rest) = read(body, INTEGER);
    let (s, _) = read(rest, INTEGER);
    let mut out = Vec::with_capacity(2 * width);
    for part in [unsigned(r), unsigned(s)] {
        assert!(
            part.len() <= width,
            "DER: ECDSA scalar wider than the curve"
        );
        out.resize(out.len() + width - part.len(), 0);
        out.extend_from_slice(part);
    }
    out
}
