//! Tether's own signing keys, for signed responses (issue 10): Ed25519 (RFC 8032) and ECDSA
//! P-256 with SHA-256 (FIPS 186-4, deterministic nonces of RFC 6979), read from a private JWK
//! (RFC 7517, RFC 7518 §6.2.2, RFC 8037 §2).
//!
//! Both algorithms are deterministic: the same key signs the same message the same way, so the
//! RFCs' own vectors test the signing code. Signing uses the RustCrypto `p256` crate and
//! `ed25519-compact`, the crates Tether already verifies with; nothing here is hand-made
//! cryptography. A key's `Debug` shows its `kid` and algorithm, never its private part.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};

use crate::jwk::{b64_member, string_member};

/// The algorithms Tether signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlg {
    /// Ed25519 (RFC 8032 §5.1): JWS `EdDSA`, RFC 9421 `ed25519`.
    Ed25519,
    /// ECDSA on P-256 with SHA-256: JWS `ES256`, RFC 9421 `ecdsa-p256-sha256`.
    EcdsaP256Sha256,
}

impl SigningAlg {
    /// The JWS `alg` (RFC 7518 §3.1, RFC 8037 §3.1).
    pub fn jws_name(self) -> &'static str {
        match self {
            SigningAlg::Ed25519 => "EdDSA",
            SigningAlg::EcdsaP256Sha256 => "ES256",
        }
    }

    /// The HTTP Message Signatures algorithm (RFC 9421 §6.2.2).
    pub fn http_signature_name(self) -> &'static str {
        match self {
            SigningAlg::Ed25519 => "ed25519",
            SigningAlg::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }
}

enum Secret {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// A private signing key and its `kid`.
pub struct SigningKey {
    kid: String,
    secret: Secret,
}

/// Names the key, never its private part.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a private JWK: OKP Ed25519 (`d` the 32-byte seed, `x` its public key) or EC P-256
    /// (`d`, and `x`, `y` of its public point). The public members must be the private key's.
    /// An error names what is wrong, never a value.
    pub fn from_private_jwk(kid: &str, jwk: &Value) -> Result<SigningKey, String> {
        let jwk = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        if kid.is_empty() {
            return Err("a signing key needs a non-empty kid".into());
        }
        let crv = jwk
            .get("crv")
            .and_then(Value::as_str)
            .unwrap_or("without crv");
        let kty = string_member(jwk, "kty")?.ok_or("missing \"kty\"")?;
        let secret = match (kty, crv) {
            ("OKP", "Ed25519") => {
                let seed: [u8; 32] = b64_member(jwk, "d")?
                    .try_into()
                    .map_err(|_| "\"d\" of an Ed25519 key must be 32 bytes")?;
                // A seed of zeros is no secret (ed25519-compact, used before, refused it too).
                if seed == [0u8; 32] {
                    return Err("\"d\" of an Ed25519 key must not be all zeros".into());
                }
                let pair = ed25519_dalek::SigningKey::from_bytes(&seed);
                if b64_member(jwk, "x")? != pair.verifying_key().as_bytes() {
                    return Err("\"x\" is not the public key of \"d\"".into());
                }
                Secret::Ed25519(pair)
            }
            ("EC", "P-256") => {
                let key = p256::ecdsa::SigningKey::from_slice(&b64_member(jwk, "d")?)
                    .map_err(|_| "\"d\" is not a P-256 private key")?;
                let point = key.verifying_key().to_encoded_point(false);
                let matches = point
                    .x()
                    .is_some_and(|x| b64_member(jwk, "x").is_ok_and(|j| j == x.as_slice()))
                    && point
                        .y()
                        .is_some_and(|y| b64_member(jwk, "y").is_ok_and(|j| j == y.as_slice()));
                if !matches {
                    return Err("\"x\" and \"y\" are not the public point of \"d\"".into());
                }
                Secret::P256(key)
            }
            (kty, crv) => {
                return Err(format!(
                    "a signing key must be OKP Ed25519 or EC P-256, not {kty} {crv}"
                ))
            }
        };
        Ok(SigningKey {
            kid: kid.to_string(),
            secret,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> SigningAlg {
        match self.secret {
            Secret::Ed25519(_) => SigningAlg::Ed25519,
            Secret::P256(_) => SigningAlg::EcdsaP256Sha256,
        }
    }

    /// Signs `message`: 64 bytes either way, Ed25519's `R || S` (RFC 8032 §5.1.6) or ECDSA's
    /// `r || s` of 32 bytes each (RFC 7518 §3.4, RFC 9421 §3.3.4).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.secret {
            // No noise: the deterministic signature of RFC 8032.
            Secret::Ed25519(pair) => ed25519_dalek::Signer::sign(pair, message)
                .to_bytes()
                .to_vec(),
            Secret::P256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
        }
    }

    /// The public JWK, as a key set publishes it: with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let alg = self.alg().jws_name();
        match &self.secret {
            Secret::Ed25519(pair) => json!({"kty": "OKP", "crv": "Ed25519",
                "x": b64(pair.verifying_key().as_bytes()), "kid": self.kid, "alg": alg, "use": "sig"}),
            Secret::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256",
                    "x": b64(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                    "y": b64(point.y().map(|y| y.as_slice()).unwrap_or_default()),
                    "kid": self.kid, "alg": alg, "use": "sig"})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{InVm, SignatureVerifier};

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ed25519_jwk(seed: &str, public: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "d": b64(&hex(seed)), "x": b64(&hex(public))})
    }

    /// RFC 8032 §7.1, TEST 1 (empty message) and TEST 2 (one byte).
    #[test]
    fn rfc8032_ed25519_vectors_sign_exactly() {
        let vectors = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (seed, public, message, signature) in vectors {
            let key = SigningKey::from_private_jwk("k", &ed25519_jwk(seed, public)).unwrap();
            assert_eq!(key.sign(&hex(message)), hex(signature));
        }
    }

    /// An all-zero seed is refused: anyone could sign with it.
    #[test]
    fn an_all_zero_ed25519_seed_is_refused() {
        let pair = ed25519_dalek::SigningKey::from_bytes(&[0u8; 32]);
        let public: String = pair
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let jwk = ed25519_jwk(&"00".repeat(32), &public);
        assert!(SigningKey::from_private_jwk("k", &jwk).is_err());
    }

    /// RFC 6979 Appendix A.2.5: P-256 with SHA-256, messages "sample" and "test".
    #[test]
    fn rfc6979_p256_vectors_sign_exactly() {
        let d = hex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721");
        let ux = hex("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6");
        let uy = hex("7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299");
        let jwk = json!({"kty": "EC", "crv": "P-256", "d": b64(&d), "x": b64(&ux), "y": b64(&uy)});
        let key = SigningKey::from_private_jwk("k", &jwk).unwrap();
        let sample = [
            "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
            "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
        ]
        .concat();
        let test = [
            "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
            "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
        ]
        .concat();
        assert_eq!(key.sign(b"sample"), hex(&sample));
        assert_eq!(key.sign(b"test"), hex(&test));
    }

    /// RFC 9421 Appendix B.2.6: the signature base of the B.2.6 request, signed with the B.1.4
    /// key `test-key-ed25519`, gives the RFC's signature.
    #[test]
    fn rfc9421_b26_ed25519_signature_is_reproduced() {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519",
            "d": "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU",
            "x": "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"});
        let key = SigningKey::from_private_jwk("test-key-ed25519", &jwk).unwrap();
        let base = [
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT",
            "\"@method\": POST",
            "\"@path\": /foo",
            "\"@authority\": example.com",
            "\"content-type\": application/json",
            "\"content-length\": 18",
            "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        ]
        .join("\n");
        let expected = base64::engine::general_purpose::STANDARD
            .decode("wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==")
            .unwrap();
        assert_eq!(key.sign(base.as_bytes()), expected);
        assert_eq!(key.alg().http_signature_name(), "ed25519");
    }

    /// What Tether signs, Tether's own verifier (and so any JWS verifier) accepts with the key
    /// it publishes.
    #[test]
    fn signatures_verify_with_the_published_key() {
        let ed = SigningKey::from_private_jwk(
            "resp-ed",
            &ed25519_jwk(
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            ),
        )
        .unwrap();
        let p256 = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let point = p256.verifying_key().to_encoded_point(false);
        let ec_jwk = json!({"kty": "EC", "crv": "P-256", "d": b64(&[3u8; 32]),
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        let ec = SigningKey::from_private_jwk("resp-ec", &ec_jwk).unwrap();
        for key in [ed, ec] {
            let published = key.public_jwk();
            assert_eq!(published["use"], "sig");
            assert_eq!(published["kid"], key.kid());
            assert!(published.get("d").is_none());
            let verification = crate::jwk::parse_one(&published).unwrap();
            let signature = key.sign(b"a response");
            assert!(InVm.verify(&verification[0], b"a response", &signature));
            assert!(!InVm.verify(&verification[0], b"another response", &signature));
        }
    }

    #[test]
    fn unusable_private_keys_are_refused_without_echoing_them() {
        let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        let good = ed25519_jwk(
            seed,
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        );
        let mut wrong_public = good.clone();
        wrong_public["x"] = json!(b64(&[1u8; 32]));
        let mut no_private = good.clone();
        no_private.as_object_mut().unwrap().remove("d");
        let mut short = good.clone();
        short["d"] = json!(b64(&[1u8; 31]));
        let rsa = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"});
        let p384 = json!({"kty": "EC", "crv": "P-384", "d": "AA", "x": "AA", "y": "AA"});
        for (jwk, expected) in [
            (wrong_public, "is not the public key"),
            (no_private, "\"d\""),
            (short, "32 bytes"),
            (rsa, "OKP Ed25519 or EC P-256"),
            (p384, "OKP Ed25519 or EC P-256"),
            (json!("a string"), "JSON object"),
        ] {
            let err = SigningKey::from_private_jwk("k", &jwk).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains(&b64(&hex(seed))));
        }
        assert!(SigningKey::from_private_jwk("", &good).is_err());
        let key = SigningKey::from_private_jwk("k", &good).unwrap();
        assert!(!format!("{key:?}").contains(&b64(&hex(seed))));
    }
}
