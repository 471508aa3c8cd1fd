//! The host's native verifier: Envoy's `verify_signature` foreign function.
//!
//! Envoy (1.40, `source/extensions/common/wasm/ext/verify_signature.proto`) takes a
//! protobuf `VerifySignatureArguments {hash_function = 1, public_key = 2 (DER SPKI),
//! signature = 3, text = 4}` and answers `VerifySignatureResult {result = 1, error = 2}`.
//! It verifies with BoringSSL's default padding, so it serves RSASSA-PKCS1-v1_5 and ECDSA
//! (whose signature it wants in DER, not the JWS `R || S`), but not PSS or Ed25519.
//!
//! The messages are encoded here by hand: four length-delimited fields do not justify a
//! protobuf code generator in the filter.

use super::{InVm, SignatureVerifier};
use crate::jwk::{Alg, VerificationKey};

/// The name Envoy registers the function under.
pub const FUNCTION: &str = "verify_signature";

/// Calls a host foreign function: the glue's implementation calls Envoy; tests use doubles.
pub trait ForeignFunction {
    /// The function's raw result, or `None` when the call failed.
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>>;
}

/// Verifies with the host where it can, in the VM otherwise.
pub struct Native<F> {
    host: F,
}

impl<F: ForeignFunction> Native<F> {
    /// Checks once, at start, that the host verifies correctly: the RFC 7515 Appendix A.3
    /// ES256 example must verify and a tampered copy must not. Returns `None` when the host
    /// does not offer the function or answers wrongly, so the caller uses [`InVm`] alone.
    pub fn detect(host: F) -> Option<Self> {
        let native = Native { host };
        let (key, input, signature) = self_test::vector()?;
        let mut tampered = signature.clone();
        if let Some(byte) = tampered.get_mut(7) {
            *byte ^= 1;
        }
        let genuine = native.host_verify(&key, input, &signature)?;
        let forged = native.host_verify(&key, input, &tampered)?;
        (genuine && !forged).then_some(native)
    }

    /// The host's answer, or `None` when the algorithm is not the host's or the call failed.
    fn host_verify(&self, key: &VerificationKey, message: &[u8], signature: &[u8]) -> Option<bool> {
        let (hash, ecdsa_size) = match key.alg {
            Alg::Rs256 => ("sha256", None),
            Alg::Rs384 => ("sha384", None),
            Alg::Rs512 => ("sha512", None),
            Alg::Es256 => ("sha256", Some(32)),
            Alg::Es384 => ("sha384", Some(48)),
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::EdDsa => return None,
        };
        let der;
        let signature = match ecdsa_size {
            Some(size) => match ecdsa_raw_to_der(signature, size) {
                Some(encoded) => {
                    der = encoded;
                    der.as_slice()
                }
                // Not exactly R || S of the curve's size: invalid, no need to ask.
                None => return Some(false),
            },
            None => signature,
        };
        let arguments = encode_arguments(hash, &key.spki_der, signature, message);
        decode_result(&self.host.call(FUNCTION, &arguments)?)
    }
}

impl<F: ForeignFunction> SignatureVerifier for Native<F> {
    fn verify(&self, key: &VerificationKey, message: &[u8], signature: &[u8]) -> bool {
        match self.host_verify(key, message, signature) {
            Some(valid) => valid,
            // EdDSA, PSS, or a host failure: verify in the VM rather than refuse.
            None => InVm.verify(key, message, signature),
        }
    }
}

/// Encodes `VerifySignatureArguments` (proto3; fields in number order).
pub fn encode_arguments(hash: &str, spki_der: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hash.len() + spki_der.len() + signature.len() + text.len() + 20);
    for (field, value) in [
        (1u8, hash.as_bytes()),
        (2, spki_der),
        (3, signature),
        (4, text),
    ] {
        out.push(field << 3 | 2); // wire type 2: length-delimited
        push_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Decodes `VerifySignatureResult`: `Some(result)`, or `None` if the message is malformed.
/// proto3 omits a `false` bool, so an empty message means "not valid".
pub fn decode_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut at = 0;
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => result = read_varint(bytes, &mut at)? != 0,
            (_, 0) => {
                read_varint(bytes, &mut at)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                at = at.checked_add(len).filter(|end| *end <= bytes.len())?;
            }
            _ => return None,
        }
    }
    Some(result)
}

/// Converts a JWS ECDSA signature (`R || S`, each exactly `size` bytes, RFC 7518 §3.4) to
/// the DER `ECDSA-Sig-Value` (RFC 3279 §2.2.3) that BoringSSL verifies. `None` when the
/// length is not exactly `2 * size`.
pub fn ecdsa_raw_to_der(raw: &[u8], size: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * size {
        return None;
    }
    let (r, s) = raw.split_at(size);
    let r = der_integer(r);
    let s = der_integer(s);
    let body_len = r.len() + s.len();
    let mut out = Vec::with_capacity(body_len + 3);
    out.push(0x30); // SEQUENCE
    if body_len >= 0x80 {
        out.push(0x81); // long form, for curves larger than P-384
    }
    out.push(body_len as u8);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

/// A DER INTEGER of an unsigned big-endian value: minimal, with a leading zero when the top
/// bit is set (the value is positive).
fn der_integer(value: &[u8]) -> Vec<u8> {
    let start = value
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(value.len().saturating_sub(1));
    let digits = value.get(start..).filter(|d| !d.is_empty()).unwrap_or(&[0]);
    let pad = digits[0] & 0x80 != 0;
    let mut out = Vec::with_capacity(digits.len() + 3);
    out.push(0x02);
    out.push((digits.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

/// The known-answer test the host must pass before it is trusted (also used by unit tests).
pub(crate) mod self_test {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    use crate::jwk::{parse_jwks, VerificationKey};

    /// RFC 7515 Appendix A.3: the ES256 example key, signing input and signature.
    pub(crate) const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    pub(crate) const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    pub(crate) const INPUT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    pub(crate) const SIG: &str =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    pub fn vector() -> Option<(VerificationKey, &'static [u8], Vec<u8>)> {
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": X, "y": Y}]});
        let key = parse_jwks(&jwks).ok()?.keys.into_iter().next()?;
        Some((key, INPUT.as_bytes(), URL_SAFE_NO_PAD.decode(SIG).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::self_test::{INPUT as A3_INPUT, SIG as A3_SIG};
    use super::*;
    use crate::crypto::tests::a3_key;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;
    use std::cell::Cell;

    /// A host double that implements `verify_signature` for P-256 the way Envoy does: it
    /// decodes the arguments, parses the DER SPKI and the DER signature, and verifies.
    struct FakeEnvoy {
        calls: Cell<usize>,
    }

    fn fields(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let mut at = 1;
            let len = read_varint(bytes, &mut at).unwrap() as usize;
            out.push(bytes[at..at + len].to_vec());
            bytes = &bytes[at + len..];
        }
        out
    }

    impl ForeignFunction for FakeEnvoy {
        fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
            use p256::pkcs8::DecodePublicKey as _;
            self.calls.set(self.calls.get() + 1);
            assert_eq!(name, FUNCTION);
            let f = fields(arguments);
            assert_eq!(f[0], b"sha256");
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&f[1]).ok()?;
            let valid = p256::ecdsa::Signature::from_der(&f[2])
                .is_ok_and(|s| key.verify(&f[3], &s).is_ok());
            Some(if valid { vec![0x08, 0x01] } else { vec![] })
        }
    }

    /// A host without the function.
    struct NoFunction;

    impl ForeignFunction for NoFunction {
        fn call(&self, _: &str, _: &[u8]) -> Option<Vec<u8>> {
            None
        }
    }

    #[test]
    fn host_that_verifies_correctly_is_detected_and_used() {
        let native = Native::detect(FakeEnvoy {
            calls: Cell::new(0),
        })
        .expect("detected");
        let key = a3_key();
        let sig = URL_SAFE_NO_PAD.decode(A3_SIG).unwrap();
        let before = native.host.calls.get();
        assert!(native.verify(&key, A3_INPUT.as_bytes(), &sig));
        let mut tampered = sig.clone();
        tampered[40] ^= 1;
        assert!(!native.verify(&key, A3_INPUT.as_bytes(), &tampered));
        assert_eq!(native.host.calls.get() - before, 2);
    }

    #[test]
    fn host_without_the_function_is_not_detected() {
        assert!(Native::detect(NoFunction).is_none());
    }

    /// A host that says yes to everything must never be trusted.
    struct Yes;

    impl ForeignFunction for Yes {
        fn call(&self, _: &str, _: &[u8]) -> Option<Vec<u8>> {
            Some(vec![0x08, 0x01])
        }
    }

    #[test]
    fn host_that_accepts_a_tampered_signature_is_not_detected() {
        assert!(Native::detect(Yes).is_none());
    }

    #[test]
    fn wrong_length_ecdsa_signature_is_refused_without_a_host_call() {
        let native = Native {
            host: FakeEnvoy {
                calls: Cell::new(0),
            },
        };
        let key = a3_key();
        assert!(!native.verify(&key, A3_INPUT.as_bytes(), &[1u8; 63]));
        assert_eq!(native.host.calls.get(), 0);
    }

    #[test]
    fn ecdsa_der_encoding_is_minimal_and_positive() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[32] = 0x80; // s has its top bit set
        let der = ecdsa_raw_to_der(&raw, 32).unwrap();
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        let zero = ecdsa_raw_to_der(&[0u8; 64], 32).unwrap();
        assert_eq!(zero, vec![0x30, 6, 0x02, 1, 0, 0x02, 1, 0]);
        assert!(ecdsa_raw_to_der(&raw[..63], 32).is_none());
        // P-384 with both top bits set: the longest body, 2 * (2 + 1 + 48) = 102 bytes,
        // still in DER's short length form.
        let der = ecdsa_raw_to_der(&[0x80u8; 96], 48).unwrap();
        assert_eq!(&der[..3], &[0x30, 102, 0x02]);
        assert!(p384::ecdsa::Signature::from_der(&der).is_ok());
    }

    #[test]
    fn der_signature_round_trips_through_p256() {
        let sig = URL_SAFE_NO_PAD.decode(A3_SIG).unwrap();
        let der = ecdsa_raw_to_der(&sig, 32).unwrap();
        let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
        assert_eq!(parsed.to_bytes().as_slice(), sig.as_slice());
    }

    #[test]
    fn arguments_are_proto3_length_delimited_fields() {
        let encoded = encode_arguments("sha256", b"K", b"SS", &[7u8; 200]);
        assert_eq!(&encoded[..8], b"\x0a\x06sha256");
        assert_eq!(&encoded[8..11], b"\x12\x01K");
        assert_eq!(&encoded[11..15], b"\x1a\x02SS");
        assert_eq!(&encoded[15..18], &[0x22, 0xc8, 0x01]); // 200 as a varint
        assert_eq!(encoded.len(), 18 + 200);
    }

    #[test]
    fn results_decode_and_malformed_results_are_none() {
        assert_eq!(decode_result(&[0x08, 0x01]), Some(true));
        assert_eq!(decode_result(&[]), Some(false));
        assert_eq!(decode_result(b"\x12\x03bad"), Some(false));
        assert_eq!(decode_result(&[0x08, 0x00, 0x12, 0x01, b'x']), Some(false));
        assert_eq!(decode_result(&[0x12, 0x05, b'x']), None);
        assert_eq!(decode_result(&[0x0d, 0, 0, 0, 0]), None);
        assert_eq!(decode_result(&[0x08]), None);
    }
}
