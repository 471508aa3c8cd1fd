//! Signature verification: one interface for the whole filter, two implementations.
//!
//! - [`InVm`] verifies inside the wasm VM with the RustCrypto crates (the ones jwt-simple is
//!   built on): every algorithm Tether supports, on any host.
//! - [`native::Native`] hands RS256/RS384/RS512, ES256 and ES384 to the host's native crypto
//!   (Envoy's `verify_signature` foreign function, BoringSSL), many times faster than
//!   big-number arithmetic in the VM, and falls back to [`InVm`] for the rest (EdDSA and PSS,
//!   which Envoy's function does not offer) and whenever the host call fails.
//!
//! Tokens and, later, request signatures all go through [`SignatureVerifier`].

pub mod native;

use p256::ecdsa::signature::Verifier as _;
use rsa::{Pkcs1v15Sign, Pss};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::jwk::{Alg, PublicKey, VerificationKey};

/// Verifies a signature over a message with a trusted key, for the key's algorithm.
pub trait SignatureVerifier {
    /// Whether `signature` (in its JWS form, RFC 7518 §3) is a valid signature of `message`
    /// by `key` under `key.alg`. Any malformed input is simply `false`.
    fn verify(&self, key: &VerificationKey, message: &[u8], signature: &[u8]) -> bool;
}

/// Verification inside the VM with the RustCrypto crates.
#[derive(Clone, Copy, Debug, Default)]
pub struct InVm;

impl SignatureVerifier for InVm {
    fn verify(&self, key: &VerificationKey, message: &[u8], signature: &[u8]) -> bool {
        match (&key.public, key.alg) {
            // RFC 7518 §3.3: RSASSA-PKCS1-v1_5.
            (PublicKey::Rsa(k), Alg::Rs256) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message),
                    signature,
                )
                .is_ok(),
            (PublicKey::Rsa(k), Alg::Rs384) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha384>(),
                    &Sha384::digest(message),
                    signature,
                )
                .is_ok(),
            (PublicKey::Rsa(k), Alg::Rs512) => k
                .verify(
                    Pkcs1v15Sign::new::<Sha512>(),
                    &Sha512::digest(message),
                    signature,
                )
                .is_ok(),
            // RFC 7518 §3.5: RSASSA-PSS with MGF1 of the same hash and a salt as long as it.
            (PublicKey::Rsa(k), Alg::Ps256) => k
                .verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature)
                .is_ok(),
            (PublicKey::Rsa(k), Alg::Ps384) => k
                .verify(Pss::new::<Sha384>(), &Sha384::digest(message), signature)
                .is_ok(),
            (PublicKey::Rsa(k), Alg::Ps512) => k
                .verify(Pss::new::<Sha512>(), &Sha512::digest(message), signature)
                .is_ok(),
            // RFC 7518 §3.4: the signature is R || S, each exactly the curve's size;
            // from_slice refuses any other length.
            (PublicKey::P256(k), Alg::Es256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            (PublicKey::P384(k), Alg::Es384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            // RFC 8037 §3.1: Ed25519, a 64-byte signature. RFC 8032 §5.1.7, with S < L and
            // small-order R refused (`verify_strict`; ed25519-dalek, whose 32-bit field
            // arithmetic suits wasm32: 2.5 times ed25519-compact's speed in V8, issue 13).
            (PublicKey::Ed25519(k), Alg::EdDsa) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
            // A key never verifies an algorithm of another family.
            _ => false,
        }
    }
}

/// Verifies an `HS256` tag (RFC 7518 §3.2) in constant time.
pub fn hmac_sha256_verify(secret: &[u8], message: &[u8], tag: &[u8]) -> bool {
    use hmac::Mac as _;
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::jwk::parse_jwks;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    use super::native::self_test::{INPUT as A3_INPUT, SIG as A3_SIG};

    /// RFC 8037 Appendix A.4: the Ed25519 example.
    const A4_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const A4_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    const A4_SIG: &str =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    /// RFC 7515 Appendix A.3: the ES256 example key.
    pub(crate) fn a3_key() -> VerificationKey {
        super::native::self_test::vector().unwrap().0
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn rfc7515_a3_es256_example_verifies_and_tampering_fails() {
        let key = a3_key();
        assert!(InVm.verify(&key, A3_INPUT.as_bytes(), &b64(A3_SIG)));
        let mut tampered = b64(A3_SIG);
        tampered[10] ^= 1;
        assert!(!InVm.verify(&key, A3_INPUT.as_bytes(), &tampered));
        assert!(!InVm.verify(&key, b"another input", &b64(A3_SIG)));
    }

    #[test]
    fn ecdsa_signature_of_wrong_length_fails() {
        let key = a3_key();
        let mut long = b64(A3_SIG);
        long.push(0);
        assert!(!InVm.verify(&key, A3_INPUT.as_bytes(), &long));
        assert!(!InVm.verify(&key, A3_INPUT.as_bytes(), &long[..63]));
        assert!(!InVm.verify(&key, A3_INPUT.as_bytes(), &[]));
    }

    #[test]
    fn rfc8037_a4_ed25519_example_verifies_and_tampering_fails() {
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": A4_X}]});
        let key = parse_jwks(&jwks).unwrap().keys.remove(0);
        assert!(InVm.verify(&key, A4_INPUT.as_bytes(), &b64(A4_SIG)));
        let mut tampered = b64(A4_SIG);
        tampered[0] ^= 1;
        assert!(!InVm.verify(&key, A4_INPUT.as_bytes(), &tampered));
    }

    #[test]
    fn key_of_another_family_never_verifies() {
        let mut key = a3_key();
        key.alg = Alg::Rs256;
        assert!(!InVm.verify(&key, A3_INPUT.as_bytes(), &b64(A3_SIG)));
    }
}
