//! JSON Web Keys (RFC 7517) to verification keys, and RFC 7638 thumbprints.
//!
//! A key decides its algorithm (RFC 8725 §2.1, §3.1): a JWK with `alg` verifies only that
//! algorithm; without `alg` the key type decides (EC P-256 → ES256, P-384 → ES384, OKP
//! Ed25519 → EdDSA). An RSA key without `alg` becomes one verification key per RSA
//! algorithm (RS256/384/512, PS256/384/512): all are RSA signatures, none can be confused
//! with a key of another type. Nothing in a token header ever supplies a key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::pkcs8::EncodePublicKey as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The most keys Tether reads from one JWKS.
pub const MAX_KEYS: usize = 64;

/// The JWS algorithms Tether verifies (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    const RSA: [Alg; 6] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
    ];

    /// The algorithm named by a JWS `alg` value. `none` and every unsupported name
    /// (including the HMAC algorithms, which have no place in access tokens verified by a
    /// resource server) give `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A decoded public key, ready to verify (RustCrypto types).
#[derive(Clone)]
pub enum PublicKey {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A trusted public key bound to exactly one algorithm, decoded once at configure time in
/// both forms a verifier needs: the key itself for verification in the VM, and its DER
/// `SubjectPublicKeyInfo` for the host's native verifier.
pub struct VerificationKey {
    /// The JWK's `kid`, if it has one.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Alg,
    /// The decoded key.
    pub public: PublicKey,
    /// DER `SubjectPublicKeyInfo` (RFC 5280 §4.1.2.7) of the key.
    pub spki_der: Vec<u8>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of a JWKS, and a note for each key that was skipped.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// Keys that are well-formed but not for Tether (encryption keys, unsupported curves
    /// or algorithms): skipping them lets an identity provider's full JWKS be used as is.
    pub skipped: Vec<String>,
}

/// Parses a JWKS (`{"keys": [...]}`, RFC 7517 §5). Malformed keys and private key
/// material are errors; keys of unsupported kinds are skipped with a note.
pub fn parse_jwks(jwks: &Value) -> Result<KeySet, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS must be an object with a \"keys\" array")?;
    if keys.len() > MAX_KEYS {
        return Err(format!("a JWKS may hold at most {MAX_KEYS} keys"));
    }
    let mut set = KeySet::default();
    for (i, jwk) in keys.iter().enumerate() {
        let jwk = jwk
            .as_object()
            .ok_or_else(|| format!("keys[{i}] is not a JSON object"))?;
        match parse_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))? {
            Parsed::Keys(keys) => set.keys.extend(keys),
            Parsed::Skipped(why) => set.skipped.push(format!("keys[{i}] skipped: {why}")),
        }
    }
    Ok(set)
}

/// The most entries of a fetched JWKS that are examined: the document is at most 256 KiB, and
/// no identity provider publishes more than a handful of keys.
pub const MAX_FETCHED_ENTRIES: usize = 256;

/// Parses a JWKS fetched from a `jwks_uri`, where the identity provider, not the operator,
/// decides what is published: every key Tether cannot use (malformed, too short an RSA
/// modulus, an `alg` that does not fit, only `x5c`, private material, or beyond the
/// [`MAX_KEYS`]th usable key) is skipped with a note, so that one odd key never blocks a
/// rotated-in good one (issue 7, finding 7). Only a document that is not a JWKS at all is an
/// error; the caller requires at least one usable key.
pub fn parse_fetched_jwks(jwks: &Value) -> Result<KeySet, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS must be an object with a \"keys\" array")?;
    let mut set = KeySet::default();
    // JWKs used (an RSA JWK without `alg` gives one key per algorithm).
    let mut used = 0;
    for (i, jwk) in keys.iter().enumerate() {
        if i == MAX_FETCHED_ENTRIES {
            set.skipped.push(format!(
                "keys[{i}] and later skipped: at most {MAX_FETCHED_ENTRIES} entries are read"
            ));
            break;
        }
        let parsed = match jwk.as_object() {
            Some(jwk) => parse_jwk(jwk),
            None => Err("not a JSON object".into()),
        };
        match parsed {
            Ok(Parsed::Keys(_)) if used == MAX_KEYS => set.skipped.push(format!(
                "keys[{i}] skipped: at most {MAX_KEYS} keys are used"
            )),
            Ok(Parsed::Keys(keys)) => {
                used += 1;
                set.keys.extend(keys);
            }
            Ok(Parsed::Skipped(why)) | Err(why) => {
                set.skipped.push(format!("keys[{i}] skipped: {why}"));
            }
        }
    }
    Ok(set)
}

/// Parses one public JWK that must be usable, such as a token's `cnf.jwk` (RFC 7800 §3.2):
/// unlike a JWKS, where unsupported keys are skipped, an unusable key here is an error.
pub fn parse_one(jwk: &Value) -> Result<Vec<VerificationKey>, String> {
    parse_object(jwk.as_object().ok_or("a JWK must be a JSON object")?)
}

/// [`parse_one`] of a JWK already known to be an object (a DPoP proof's `jwk`).
pub fn parse_object(jwk: &Map<String, Value>) -> Result<Vec<VerificationKey>, String> {
    match parse_jwk(jwk)? {
        Parsed::Keys(keys) => Ok(keys),
        Parsed::Skipped(why) => Err(why),
    }
}

enum Parsed {
    Keys(Vec<VerificationKey>),
    Skipped(String),
}

/// Members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "r"];

fn parse_jwk(jwk: &Map<String, Value>) -> Result<Parsed, String> {
    let kty = string_member(jwk, "kty")?.ok_or("missing \"kty\"")?;
    if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "has private or secret key material (\"{private}\"); configure public keys only"
        ));
    }
    // RFC 7517 §4.2, §4.3: a key meant for encryption must not verify signatures.
    if let Some(key_use) = string_member(jwk, "use")? {
        if key_use != "sig" {
            return Ok(Parsed::Skipped(format!(
                "\"use\" is {key_use:?}, not \"sig\""
            )));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("\"key_ops\" is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(Parsed::Skipped(
                "\"key_ops\" does not include \"verify\"".into(),
            ));
        }
    }
    let kid = string_member(jwk, "kid")?.map(str::to_string);
    let alg = match string_member(jwk, "alg")? {
        None => None,
        Some(name) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            None => {
                return Ok(Parsed::Skipped(format!(
                    "algorithm {name:?} is not supported"
                )))
            }
        },
    };
    if !matches!(kty, "RSA" | "EC" | "OKP") {
        return Ok(Parsed::Skipped(format!(
            "key type {kty:?} is not supported"
        )));
    }
    let key = |alg: Alg, public: PublicKey, spki_der: Vec<u8>| VerificationKey {
        kid: kid.clone(),
        alg,
        public,
        spki_der,
    };
    let keys = match kty {
        "RSA" => {
            let n = b64_member(jwk, "n")?;
            let e = b64_member(jwk, "e")?;
            let algs: Vec<Alg> = match alg {
                Some(alg) if Alg::RSA.contains(&alg) => vec![alg],
                Some(alg) => return Err(format!("\"alg\" {} does not fit an RSA key", alg.name())),
                None => Alg::RSA.to_vec(),
            };
            let public = rsa_key(&n, &e)?;
            let der = public
                .to_public_key_der()
                .map_err(|_| "cannot encode the RSA key")?
                .into_vec();
            algs.into_iter()
                .map(|alg| key(alg, PublicKey::Rsa(public.clone()), der.clone()))
                .collect()
        }
        "EC" => {
            let crv = string_member(jwk, "crv")?.ok_or("missing \"crv\"")?;
            let (curve_alg, size) = match crv {
                "P-256" => (Alg::Es256, 32),
                "P-384" => (Alg::Es384, 48),
                other => return Ok(Parsed::Skipped(format!("curve {other:?} is not supported"))),
            };
            if alg.is_some_and(|a| a != curve_alg) {
                return Err(format!("\"alg\" does not fit curve {crv}"));
            }
            let x = b64_member(jwk, "x")?;
            let y = b64_member(jwk, "y")?;
            // RFC 7518 §6.2.1.2: x and y are the full-length coordinates.
            if x.len() != size || y.len() != size {
                return Err(format!("coordinates of a {crv} key must be {size} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let invalid = || format!("not a valid point on {crv}");
            let (public, der) = if curve_alg == Alg::Es256 {
                let k = p256::PublicKey::from_sec1_bytes(&point).map_err(|_| invalid())?;
                let der = k.to_public_key_der().map_err(|_| invalid())?.into_vec();
                (PublicKey::P256(k.into()), der)
            } else {
                let k = p384::PublicKey::from_sec1_bytes(&point).map_err(|_| invalid())?;
                let der = k.to_public_key_der().map_err(|_| invalid())?.into_vec();
                (PublicKey::P384(k.into()), der)
            };
            vec![key(curve_alg, public, der)]
        }
        "OKP" => {
            let crv = string_member(jwk, "crv")?.ok_or("missing \"crv\"")?;
            if crv != "Ed25519" {
                return Ok(Parsed::Skipped(format!("curve {crv:?} is not supported")));
            }
            if alg.is_some_and(|a| a != Alg::EdDsa) {
                return Err("\"alg\" does not fit an Ed25519 key".into());
            }
            let x = b64_member(jwk, "x")?;
            // A point on the curve, in its one canonical encoding, not of small order: the
            // keys ed25519-compact refused when verifying (issue 13 moved verification to
            // ed25519-dalek, whose `from_bytes` reduces a non-canonical y); refused here, once.
            let public = <[u8; 32]>::try_from(x.as_slice())
                .ok()
                .and_then(|x| ed25519_dalek::VerifyingKey::from_bytes(&x).ok())
                .filter(|k| k.to_edwards().compress().as_bytes() == k.as_bytes() && !k.is_weak())
                .ok_or("not a valid Ed25519 public key")?;
            // RFC 8410 §4: SubjectPublicKeyInfo of an Ed25519 key (OID 1.3.101.112).
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(public.as_bytes());
            vec![key(Alg::EdDsa, PublicKey::Ed25519(public), der)]
        }
        other => {
            return Ok(Parsed::Skipped(format!(
                "key type {other:?} is not supported"
            )))
        }
    };
    Ok(Parsed::Keys(keys))
}

/// RSA moduli Tether accepts, in bits: RFC 7518 §3.3 requires at least 2048, and larger
/// than 4096 only costs verification time.
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

fn rsa_key(n: &[u8], e: &[u8]) -> Result<RsaPublicKey, String> {
    let significant = n.iter().position(|b| *b != 0).map_or(&[][..], |i| &n[i..]);
    let bits = significant.first().map_or(0, |top| {
        (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if !RSA_MODULUS_BITS.contains(&bits) {
        return Err(format!(
            "the RSA modulus has {bits} bits; it must have 2048 to 4096"
        ));
    }
    RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
        .map_err(|_| "not a usable RSA public key".to_string())
}

/// A JWK's string member, if present (an error if it is not a string).
pub(crate) fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" is not a string")),
    }
}

/// A JWK's required base64url member, decoded (at most 1024 characters).
pub(crate) fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let value = string_member(jwk, name)?.ok_or_else(|| format!("missing \"{name}\""))?;
    if value.len() > 1024 {
        return Err(format!("\"{name}\" is too long"));
    }
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("\"{name}\" is not unpadded base64url"))
}

/// The RFC 7638 JWK thumbprint: the base64url SHA-256 of the JSON object of the key's
/// required members (§3.2: EC `crv,kty,x,y`; RSA `e,kty,n`; OKP `crv,kty,x` per RFC 8037
/// §2), in lexicographic order with no whitespace.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, String> {
    let kty = string_member(jwk, "kty")?.ok_or("missing \"kty\"")?;
    let members: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        other => {
            return Err(format!(
                "no thumbprint is defined here for key type {other:?}"
            ))
        }
    };
    let mut canonical = Map::new();
    for member in members {
        let value = string_member(jwk, member)?.ok_or_else(|| format!("missing \"{member}\""))?;
        canonical.insert((*member).to_string(), Value::String(value.to_string()));
    }
    // serde_json's Map is ordered by key (no `preserve_order` feature), and to_string
    // writes no whitespace: exactly the canonical form of RFC 7638 §3.3.
    let json = Value::Object(canonical).to_string();
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7638 §3.1: the example RSA key and its thumbprint.
    fn rfc7638_key() -> Value {
        json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        })
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        let key = rfc7638_key();
        assert_eq!(
            thumbprint(key.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// An Ed25519 key is a point of large order in its canonical encoding (RFC 8032 §5.1.3):
    /// the keys ed25519-compact refused at each verification are refused once, here.
    #[test]
    fn ed25519_keys_of_small_order_or_not_canonical_are_refused() {
        let okp =
            |x: &[u8]| json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x)});
        assert!(parse_one(&okp(&URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap()))
        .is_ok());
        // The neutral point (y = 1), of order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // y = p + 1: the neutral point again, encoded with y >= p.
        let mut above_p = [0xffu8; 32];
        above_p[0] = 0xee;
        above_p[31] = 0x7f;
        // (0, -1), of order 2: y = p - 1.
        let mut order_two = [0xffu8; 32];
        order_two[0] = 0xec;
        order_two[31] = 0x7f;
        for x in [identity, above_p, order_two] {
            assert!(parse_one(&okp(&x)).is_err(), "{x:?}");
        }
        // Every y from p to 2^255 - 1 (y - p < 19), with either sign of x: some are points of
        // large order, which ed25519-dalek decodes by reducing y, and which must be refused.
        let mut large_order = 0;
        for low in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut x = [0xffu8; 32];
                x[0] = 0xed + low;
                x[31] = 0x7f | sign;
                if ed25519_dalek::VerifyingKey::from_bytes(&x).is_ok_and(|k| !k.is_weak()) {
                    large_order += 1;
                }
                assert!(parse_one(&okp(&x)).is_err(), "{x:?}");
            }
        }
        assert!(
            large_order > 0,
            "no encoding tested reaches the canonical-form check"
        );
    }

    /// RFC 8037 Appendix A.3: the Ed25519 example key's thumbprint.
    #[test]
    fn rfc8037_okp_thumbprint() {
        let key =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(
            thumbprint(key.as_object().unwrap()).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_ignores_optional_members() {
        let mut key = rfc7638_key();
        key["use"] = json!("sig");
        key["kid"] = json!("other");
        assert_eq!(
            thumbprint(key.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rsa_key_with_alg_verifies_only_that_alg() {
        let set = parse_jwks(&json!({"keys": [rfc7638_key()]})).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].alg, Alg::Rs256);
        assert_eq!(set.keys[0].kid.as_deref(), Some("2011-04-29"));
    }

    #[test]
    fn rsa_key_without_alg_verifies_rsa_algs_only() {
        let mut key = rfc7638_key();
        key.as_object_mut().unwrap().remove("alg");
        let set = parse_jwks(&json!({"keys": [key]})).unwrap();
        let algs: Vec<Alg> = set.keys.iter().map(|k| k.alg).collect();
        assert_eq!(algs, Alg::RSA.to_vec());
    }

    #[test]
    fn ec_and_okp_keys_take_the_alg_of_their_curve() {
        // RFC 7515 Appendix A.3 (P-256) and RFC 8037 Appendix A (Ed25519) public keys.
        let set = parse_jwks(&json!({"keys": [
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}))
        .unwrap();
        assert_eq!(set.keys[0].alg, Alg::Es256);
        assert_eq!(set.keys[1].alg, Alg::EdDsa);
    }

    #[test]
    fn alg_that_does_not_fit_the_key_type_is_an_error() {
        let mut key = rfc7638_key();
        key["alg"] = json!("ES256");
        assert!(parse_jwks(&json!({"keys": [key]})).is_err());
        let ec = json!({"kty":"EC","crv":"P-256","alg":"ES384","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        assert!(parse_jwks(&json!({"keys": [ec]})).is_err());
    }

    #[test]
    fn private_key_material_is_refused() {
        // RFC 7515 Appendix A.3 private key.
        let ec = json!({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"});
        let err = parse_jwks(&json!({"keys": [ec]})).unwrap_err();
        assert!(err.contains("private"), "{err}");
        let oct = json!({"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"});
        assert!(parse_jwks(&json!({"keys": [oct]})).is_err());
    }

    #[test]
    fn encryption_and_unsupported_keys_are_skipped() {
        let mut enc = rfc7638_key();
        enc["use"] = json!("enc");
        let p521 = json!({"kty":"EC","crv":"P-521","x":"AA","y":"AA"});
        let hs = json!({"kty":"RSA","alg":"HS256","n":"AA","e":"AQAB"});
        let set = parse_jwks(&json!({"keys": [enc, p521, hs]})).unwrap();
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped.len(), 3);
    }

    #[test]
    fn rsa_keys_below_2048_bits_are_refused() {
        // A well-formed 1024-bit modulus (top bit set, odd): valid RSA, too weak for Tether.
        let mut n = vec![0xc5u8; 128];
        n[127] = 0x01;
        let key = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"});
        let err = parse_jwks(&json!({"keys": [key]})).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
        // With a leading zero byte, the 2048-bit RFC 7638 modulus still counts as 2048 bits.
        let mut padded = URL_SAFE_NO_PAD
            .decode(rfc7638_key()["n"].as_str().unwrap())
            .unwrap();
        padded.insert(0, 0);
        let key = json!({"kty": "RSA", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(&padded), "e": "AQAB"});
        assert_eq!(parse_jwks(&json!({"keys": [key]})).unwrap().keys.len(), 1);
    }

    #[test]
    fn malformed_keys_are_errors() {
        let short = json!({"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"});
        assert!(parse_jwks(&json!({"keys": [short]})).is_err());
        let padded =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="});
        assert!(parse_jwks(&json!({"keys": [padded]})).is_err());
        let not_on_curve = json!({"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a4"});
        assert!(parse_jwks(&json!({"keys": [not_on_curve]})).is_err());
        let weak_rsa = json!({"kty":"RSA","n":"AQAB","e":"AQAB"});
        assert!(parse_jwks(&json!({"keys": [weak_rsa]})).is_err());
        assert!(parse_jwks(&json!({"keys": "nope"})).is_err());
        assert!(parse_jwks(&json!([])).is_err());
    }

    const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    /// Regression test for issue 7, finding 7: each of these in a fetched key set rejected
    /// the whole document, so a rotated-in good key was never picked up.
    #[test]
    fn fetched_set_skips_each_unusable_key_and_keeps_the_good_one() {
        let mut weak = vec![0xc5u8; 128];
        weak[127] = 0x01;
        let odd_keys = [
            json!({"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode(&weak), "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-256", "alg": "RS256", "kid": "misfit", "x": A3_X, "y": A3_Y}),
            json!({"kty": "RSA", "kid": "x5c-only", "x5c": ["MIIB"]}),
            json!({"kty": "EC", "crv": "P-256", "kid": "private", "x": A3_X, "y": A3_Y,
                   "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}),
            json!("not an object"),
        ];
        let good = json!({"kty": "EC", "crv": "P-256", "kid": "rotated", "x": A3_X, "y": A3_Y});
        for odd in &odd_keys {
            // The strict parse of inline configuration refuses each of them...
            assert!(parse_jwks(&json!({"keys": [odd, good]})).is_err(), "{odd}");
            // ...the fetched one skips it and keeps the good key.
            let set = parse_fetched_jwks(&json!({"keys": [odd, good]})).unwrap();
            assert_eq!(set.keys.len(), 1, "{odd}");
            assert_eq!(set.keys[0].kid.as_deref(), Some("rotated"));
            assert_eq!(set.skipped.len(), 1, "{odd}");
        }
        assert!(parse_fetched_jwks(&json!({"keys": "nope"})).is_err());
        assert!(parse_fetched_jwks(&json!([])).is_err());
    }

    #[test]
    fn fetched_set_uses_at_most_64_keys_and_reads_a_bounded_number_of_entries() {
        let key = |i: usize| json!({"kty": "EC", "crv": "P-256", "kid": format!("k{i}"), "x": A3_X, "y": A3_Y});
        let many: Vec<Value> = (0..65).map(key).collect();
        let set = parse_fetched_jwks(&json!({"keys": many})).unwrap();
        assert_eq!(set.keys.len(), MAX_KEYS);
        assert_eq!(
            set.skipped,
            vec!["keys[64] skipped: at most 64 keys are used"]
        );
        // An RSA key without `alg` is one JWK, however many algorithms it verifies.
        let mut rsa = rfc7638_key();
        rsa.as_object_mut().unwrap().remove("alg");
        let mut mixed: Vec<Value> = (0..63).map(key).collect();
        mixed.push(rsa);
        assert_eq!(
            parse_fetched_jwks(&json!({"keys": mixed}))
                .unwrap()
                .keys
                .len(),
            63 + 6
        );
        let junk: Vec<Value> = (0..300).map(|_| json!({})).collect();
        let set = parse_fetched_jwks(&json!({"keys": junk})).unwrap();
        assert_eq!(set.skipped.len(), MAX_FETCHED_ENTRIES + 1);
    }
}
