//! `Content-Digest` (RFC 9530): the digest of a message's content, which an HTTP Message
//! Signature covers so that the signature covers the body (RFC 9421 §7.2.8).
//!
//! A received `Content-Digest` is a Dictionary (RFC 9530 §2) of algorithm names to Byte
//! Sequences. Tether knows `sha-256` and `sha-512` (§5, both "Active"); every one of them that
//! the field carries must match the body, compared in constant time, and at least one must be
//! there. Other algorithms are ignored (§2: a recipient may ignore one it does not support),
//! the insecure ones (`md5`, `sha`, `unixsum`, `unixcksum`, `adler`, `crc32c`) included: they
//! never count as the one that matched. Tether's own responses carry `sha-256`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::sfv::{self, BareItem, ListEntry};

/// The field's name.
pub const FIELD: &str = "content-digest";

/// Why a body's digest does not check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestError {
    /// The request has no `Content-Digest`.
    Missing,
    /// It is not a Dictionary of Byte Sequences (RFC 9530 §2), or repeats an algorithm.
    Malformed,
    /// It names no algorithm Tether knows (`sha-256`, `sha-512`).
    NoKnownAlgorithm,
    /// A known algorithm's digest is not the body's.
    Mismatch,
}

/// Checks the `Content-Digest` field (its `lines`, as received) against `body`.
pub fn verify(lines: &[&[u8]], body: &[u8]) -> Result<(), DigestError> {
    if lines.is_empty() {
        return Err(DigestError::Missing);
    }
    let field = sfv::parse_dictionary_lines(lines).map_err(|_| DigestError::Malformed)?;
    // Two values for one algorithm: which one a next hop reads is anyone's guess.
    if field.has_repeated_keys() {
        return Err(DigestError::Malformed);
    }
    let mut known = 0;
    for (algorithm, entry) in field.iter() {
        let expected: Vec<u8> = match algorithm {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let received = match entry {
            ListEntry::Item(item) => match &item.bare {
                BareItem::ByteSequence(bytes) => bytes,
                _ => return Err(DigestError::Malformed),
            },
            ListEntry::InnerList(_) => return Err(DigestError::Malformed),
        };
        if !bool::from(received.as_slice().ct_eq(expected.as_slice())) {
            return Err(DigestError::Mismatch);
        }
        known += 1;
    }
    if known == 0 {
        return Err(DigestError::NoKnownAlgorithm);
    }
    Ok(())
}

/// The `Content-Digest` value for `body`: its SHA-256 (RFC 9530 §2).
pub fn field_value(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9530 §2's example content and its digests.
    const HELLO: &[u8] = br#"{"hello": "world"}"#;
    const HELLO_SHA256: &str = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
    const HELLO_SHA512: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";

    fn check(value: &str, body: &[u8]) -> Result<(), DigestError> {
        verify(&[value.as_bytes()], body)
    }

    #[test]
    fn rfc9530_examples_verify() {
        assert_eq!(check(HELLO_SHA256, HELLO), Ok(()));
        assert_eq!(check(HELLO_SHA512, HELLO), Ok(()));
        assert_eq!(
            check(&format!("{HELLO_SHA256}, {HELLO_SHA512}"), HELLO),
            Ok(())
        );
        // The two digests on two field lines, as a proxy may send them.
        assert_eq!(
            verify(&[HELLO_SHA256.as_bytes(), HELLO_SHA512.as_bytes()], HELLO),
            Ok(())
        );
        assert_eq!(field_value(HELLO), HELLO_SHA256);
    }

    #[test]
    fn another_body_is_a_mismatch() {
        assert_eq!(
            check(HELLO_SHA256, b"{\"hello\": \"world\"}\n"),
            Err(DigestError::Mismatch)
        );
        assert_eq!(check(HELLO_SHA512, b""), Err(DigestError::Mismatch));
        // Every known digest must match, not just one of them.
        let one_wrong = format!("{HELLO_SHA256}, sha-512=:{}:", STANDARD.encode([0u8; 64]));
        assert_eq!(check(&one_wrong, HELLO), Err(DigestError::Mismatch));
    }

    #[test]
    fn unknown_and_insecure_algorithms_are_ignored_but_never_enough() {
        let md5 = format!("md5=:{}:", STANDARD.encode([0u8; 16]));
        assert_eq!(check(&md5, HELLO), Err(DigestError::NoKnownAlgorithm));
        assert_eq!(check(&format!("{md5}, {HELLO_SHA256}"), HELLO), Ok(()));
        assert_eq!(
            check("unixsum=:AAAA:", HELLO),
            Err(DigestError::NoKnownAlgorithm)
        );
    }

    #[test]
    fn missing_or_malformed_fields_are_refused() {
        assert_eq!(verify(&[], HELLO), Err(DigestError::Missing));
        for bad in [
            "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
            "sha-256=\"X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=\"",
            "sha-256=(:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:)",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE:",
            "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        ] {
            assert_eq!(check(bad, HELLO), Err(DigestError::Malformed), "{bad}");
        }
        // An empty field is an empty Dictionary (RFC 9651 §4.2): no digest at all.
        assert_eq!(check("", HELLO), Err(DigestError::NoKnownAlgorithm));
        // The same algorithm twice, even with the right digest last.
        let twice = format!("sha-256=:{}:, {HELLO_SHA256}", STANDARD.encode([0u8; 32]));
        assert_eq!(check(&twice, HELLO), Err(DigestError::Malformed));
    }
}
