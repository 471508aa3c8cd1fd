//! Encrypted access tokens: compact JWE (RFC 7516 §7.1) whose payload is a nested JWT signed
//! by the issuer (issue 12). Decrypted with the issuer's `decryption_keys`, then verified like
//! any other token; the verified token is cached, so a token is decrypted once.
//!
//! **Accepted** (RFC 7518): key management `RSA-OAEP-256` (§4.3), `ECDH-ES` (§4.6, direct) and
//! `ECDH-ES+A128KW` / `ECDH-ES+A256KW` (§4.6, then AES Key Wrap, §4.4) on P-256 and P-384, and
//! `dir` only with a symmetric key configured for it; content encryption `A128GCM`,
//! `A256GCM` (§5.3) and `A128CBC-HS256` (§5.2). The protected header must say `cty: JWT`: an
//! encrypted but unsigned token is never accepted.
//!
//! **Refused**, before any key is touched: `RSA1_5` (Bleichenbacher's padding oracle),
//! `PBES2-*` (an attacker-chosen `p2c` is unbounded work), `zip` (a decompression bomb),
//! `dir` without a key for it, any other `alg` or `enc`, and `crit`. An ECDH-ES `epk` must be
//! a point on the key's own curve (the invalid-curve attack: a point off the curve leaks the
//! private key), and a key of another type than `alg` needs is never tried.
//!
//! The primitives are RustCrypto's (`rsa`, `p256`/`p384` ECDH, `aes-gcm`, `aes-kw`, `aes`
//! with `cbc`, `hmac`, `concat-kdf`); this module only composes them as RFC 7518 says.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::extract::MAX_TOKEN_BYTES;
use crate::reject::Reason;

/// The largest protected header read (base64url characters).
const MAX_HEADER_CHARS: usize = 2048;

/// A private key an issuer's tokens are encrypted to (`decryption_keys[]`). Its `Debug` shows
/// the `kid` and the type only.
pub struct DecryptionKey {
    pub kid: String,
    key: Private,
    /// The JWK's `alg`, when it names one: the only key management algorithm it serves.
    alg: Option<Alg>,
}

enum Private {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    /// A symmetric key: `dir` only.
    Oct(Vec<u8>),
}

impl std::fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.key {
            Private::Rsa(_) => "RSA",
            Private::P256(_) => "EC P-256",
            Private::P384(_) => "EC P-384",
            Private::Oct(_) => "oct",
        };
        f.debug_struct("DecryptionKey")
            .field("kid", &self.kid)
            .field("kty", &kind)
            .finish()
    }
}

impl DecryptionKey {
    /// Reads a private JWK: RSA (at least 2048 bits), EC P-256 or P-384, or `oct` (for
    /// `dir`, 16 or 32 bytes). Its `use`, `key_ops` and `alg`, when present, must allow
    /// decryption (RFC 7517 §4.2-4.4): a signing key is not a decryption key. Errors never
    /// quote the key.
    pub fn from_jwk(kid: String, jwk: &Value) -> Result<DecryptionKey, String> {
        if jwk.get("use").is_some_and(|u| u != "enc") {
            return Err("the key's \"use\" is not \"enc\"".into());
        }
        if let Some(ops) = jwk.get("key_ops") {
            let ops = ops
                .as_array()
                .ok_or("the key's \"key_ops\" is not a list")?;
            let decrypts = ops
                .iter()
                .any(|op| op == "decrypt" || op == "unwrapKey" || op == "deriveKey");
            if !decrypts {
                return Err("the key's \"key_ops\" allow no decryption".into());
            }
        }
        let alg = match jwk.get("alg") {
            None => None,
            // A `dir` key may name the content encryption it is for: no key management then.
            Some(Value::String(name)) if ENCS.contains(&name.as_str()) => None,
            Some(Value::String(name)) => Some(
                key_management(name, true).ok_or("the key's \"alg\" is not one Tether decrypts")?,
            ),
            Some(_) => return Err("the key's \"alg\" is not a string".into()),
        };
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let text = jwk
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the key has no \"{name}\""))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| format!("the key's \"{name}\" is not base64url"))
        };
        let key = match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let n = rsa::BigUint::from_bytes_be(&member("n")?);
                let e = rsa::BigUint::from_bytes_be(&member("e")?);
                let d = rsa::BigUint::from_bytes_be(&member("d")?);
                let primes = vec![
                    rsa::BigUint::from_bytes_be(&member("p")?),
                    rsa::BigUint::from_bytes_be(&member("q")?),
                ];
                let key = rsa::RsaPrivateKey::from_components(n, e, d, primes)
                    .map_err(|_| "the RSA key is not consistent".to_string())?;
                use rsa::traits::PublicKeyParts as _;
                if key.size() < 256 {
                    return Err("the RSA key is shorter than 2048 bits".into());
                }
                key.validate()
                    .map_err(|_| "the RSA key is not consistent".to_string())?;
                Private::Rsa(Box::new(key))
            }
            Some("EC") => {
                let d = member("d")?;
                let (x, y) = (member("x")?, member("y")?);
                match jwk.get("crv").and_then(Value::as_str) {
                    Some("P-256") => {
                        let key = p256::SecretKey::from_slice(&d)
                            .map_err(|_| "the P-256 key is not a valid scalar".to_string())?;
                        check_public(&key.public_key().to_sec1_bytes(), &x, &y)?;
                        Private::P256(key)
                    }
                    Some("P-384") => {
                        let key = p384::SecretKey::from_slice(&d)
                            .map_err(|_| "the P-384 key is not a valid scalar".to_string())?;
                        check_public(&key.public_key().to_sec1_bytes(), &x, &y)?;
                        Private::P384(key)
                    }
                    _ => return Err("only EC keys on P-256 and P-384 decrypt".into()),
                }
            }
            Some("oct") => {
                let k = member("k")?;
                if k.len() != 16 && k.len() != 32 {
                    return Err("an oct key (for \"dir\") must be 16 or 32 bytes".into());
                }
                Private::Oct(k)
            }
            _ => return Err("the key must be an RSA, EC or oct private JWK".into()),
        };
        let decryption = DecryptionKey { kid, key, alg };
        if alg.is_some_and(|alg| !fits(alg, &decryption.key)) {
            return Err("the key's \"alg\" needs another type of key".into());
        }
        Ok(decryption)
    }

    /// Whether this is a symmetric key, which only `dir` uses.
    pub fn is_symmetric(&self) -> bool {
        matches!(self.key, Private::Oct(_))
    }
}

/// The public point `x || y` of a JWK must be the private key's.
fn check_public(sec1: &[u8], x: &[u8], y: &[u8]) -> Result<(), String> {
    let half = (sec1.len().saturating_sub(1)) / 2;
    match sec1.split_first() {
        Some((0x04, point))
            if point.len() == 2 * half && point[..half] == *x && point[half..] == *y =>
        {
            Ok(())
        }
        _ => Err("the EC key's x and y are not its d's".into()),
    }
}

/// The protected header members read (RFC 7516 §4.1). serde refuses one given twice.
#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    zip: Option<Value>,
    cty: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
    epk: Option<Map<String, Value>>,
    apu: Option<String>,
    apv: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    RsaOaep256,
    EcdhEs,
    EcdhEsA128Kw,
    EcdhEsA256Kw,
    Dir,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Enc {
    A128Gcm,
    A256Gcm,
    A128CbcHs256,
}

impl Enc {
    fn name(self) -> &'static str {
        match self {
            Enc::A128Gcm => "A128GCM",
            Enc::A256Gcm => "A256GCM",
            Enc::A128CbcHs256 => "A128CBC-HS256",
        }
    }

    /// The content encryption key's length (RFC 7518 §5.2.3, §5.3).
    fn key_len(self) -> usize {
        match self {
            Enc::A128Gcm => 16,
            Enc::A256Gcm | Enc::A128CbcHs256 => 32,
        }
    }
}

/// The content encryption algorithms accepted (`enc`).
const ENCS: [&str; 3] = ["A128GCM", "A256GCM", "A128CBC-HS256"];

/// The key management algorithm named `name`, if accepted (`dir` only if `dir_allowed`).
fn key_management(name: &str, dir_allowed: bool) -> Option<Alg> {
    match name {
        "RSA-OAEP-256" => Some(Alg::RsaOaep256),
        "ECDH-ES" => Some(Alg::EcdhEs),
        "ECDH-ES+A128KW" => Some(Alg::EcdhEsA128Kw),
        "ECDH-ES+A256KW" => Some(Alg::EcdhEsA256Kw),
        "dir" if dir_allowed => Some(Alg::Dir),
        _ => None,
    }
}

/// Why a JWE was not opened with a set of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unopened {
    /// No key of the set fits the token (its `kid`, the type its `alg` needs): another
    /// issuer's keys may.
    NoKeyFits,
    /// Refused: for what the token is, or because the key that fits did not open it.
    Refused(Reason),
}

/// The nested JWT of an encrypted access token `token`, decrypted with one of `keys`.
/// `algorithm_not_allowed` for what is refused outright (above), `token_malformed` for a JWE
/// that does not read or whose `cty` is not `JWT`, `token_decryption_failed` when no key
/// decrypts it.
pub fn nested_jwt(token: &str, keys: &[DecryptionKey]) -> Result<String, Reason> {
    let dir_allowed = keys.iter().any(DecryptionKey::is_symmetric);
    open_nested(token, keys, dir_allowed).map_err(Reason::from)
}

/// With no other keys to try, a JWE no key fits is one that could not be decrypted.
impl From<Unopened> for Reason {
    fn from(unopened: Unopened) -> Reason {
        match unopened {
            Unopened::NoKeyFits => Reason::TokenDecryptionFailed,
            Unopened::Refused(reason) => reason,
        }
    }
}

/// [`nested_jwt`] with one issuer's `keys` of several: `dir_allowed` when any issuer has a key
/// for `dir`, and [`Unopened::NoKeyFits`] when none of these keys is the token's.
pub fn open_nested(
    token: &str,
    keys: &[DecryptionKey],
    dir_allowed: bool,
) -> Result<String, Unopened> {
    let (header, plaintext) = decrypt(token, keys, dir_allowed)?;
    if !header
        .cty
        .as_deref()
        .is_some_and(|cty| cty.eq_ignore_ascii_case("JWT"))
    {
        return Err(Unopened::Refused(Reason::TokenMalformed));
    }
    String::from_utf8(plaintext).map_err(|_| Unopened::Refused(Reason::TokenMalformed))
}

/// Decrypts a compact JWE with one of `keys`: its protected header and plaintext.
///
/// One private-key operation at most: the key the `kid` names, or, without a `kid`, the one
/// key that fits (an RSA decryption costs milliseconds, and a made-up token must not buy
/// several).
fn decrypt(
    token: &str,
    keys: &[DecryptionKey],
    dir_allowed: bool,
) -> Result<(Header, Vec<u8>), Unopened> {
    let refuse = |reason| Unopened::Refused(reason);
    if token.len() > MAX_TOKEN_BYTES {
        return Err(refuse(Reason::TokenTooLarge));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, encrypted_key_b64, iv_b64, ciphertext_b64, tag_b64] = parts[..] else {
        return Err(refuse(Reason::TokenMalformed));
    };
    if header_b64.len() > MAX_HEADER_CHARS {
        return Err(refuse(Reason::TokenMalformed));
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| refuse(Reason::TokenMalformed))
    };
    let header: Header =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| refuse(Reason::TokenMalformed))?;
    // The refusals that need no key come first (RFC 8725 §3.1, §3.2).
    let alg =
        key_management(&header.alg, dir_allowed).ok_or(refuse(Reason::AlgorithmNotAllowed))?;
    let enc = match header.enc.as_str() {
        "A128GCM" => Enc::A128Gcm,
        "A256GCM" => Enc::A256Gcm,
        "A128CBC-HS256" => Enc::A128CbcHs256,
        _ => return Err(refuse(Reason::AlgorithmNotAllowed)),
    };
    if header.zip.is_some() {
        return Err(refuse(Reason::AlgorithmNotAllowed));
    }
    if header.crit.is_some() {
        return Err(refuse(Reason::TokenMalformed));
    }
    let encrypted_key = decode(encrypted_key_b64)?;
    let iv = decode(iv_b64)?;
    let ciphertext = decode(ciphertext_b64)?;
    let tag = decode(tag_b64)?;
    // RFC 7516 §5.2 step 14: the AAD is the protected header as sent.
    let aad = header_b64.as_bytes();
    let fitting: Vec<&DecryptionKey> = keys
        .iter()
        .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
        .filter(|k| fits(alg, &k.key) && k.alg.is_none_or(|only| only == alg))
        .collect();
    let key = match fitting[..] {
        [] => return Err(Unopened::NoKeyFits),
        [key] => key,
        // Several keys fit and the token names none (kids are unique): which one is not
        // guessed, one private-key operation after another.
        _ => return Err(refuse(Reason::TokenDecryptionFailed)),
    };
    content_key(alg, enc, &header, &encrypted_key, &key.key)
        .and_then(|cek| open(enc, &cek, &iv, &ciphertext, &tag, aad))
        .map(|plaintext| (header, plaintext))
        .map_err(|()| refuse(Reason::TokenDecryptionFailed))
}

/// Whether `key` is of the type `alg` needs.
fn fits(alg: Alg, key: &Private) -> bool {
    matches!(
        (alg, key),
        (Alg::RsaOaep256, Private::Rsa(_))
            | (
                Alg::EcdhEs | Alg::EcdhEsA128Kw | Alg::EcdhEsA256Kw,
                Private::P256(_) | Private::P384(_)
            )
            | (Alg::Dir, Private::Oct(_))
    )
}

/// The content encryption key (RFC 7516 §5.2 steps 6 to 10).
fn content_key(
    alg: Alg,
    enc: Enc,
    header: &Header,
    encrypted_key: &[u8],
    key: &Private,
) -> Result<Vec<u8>, ()> {
    let cek = match (alg, key) {
        // Blinded with the host's randomness (WASI `random_get`): RSA decryption in the `rsa`
        // crate is not constant-time (RUSTSEC-2023-0071); blinding hides the key's use from
        // the timing of an attacker's ciphertexts. ECDH-ES keys have no such concern.
        (Alg::RsaOaep256, Private::Rsa(private)) => private
            .decrypt_blinded(
                &mut rand_core::OsRng,
                rsa::Oaep::new::<Sha256>(),
                encrypted_key,
            )
            .map_err(|_| ())?,
        (Alg::Dir, Private::Oct(k)) if encrypted_key.is_empty() => k.clone(),
        (Alg::EcdhEs, _) if encrypted_key.is_empty() => {
            // §4.6.2: direct key agreement, AlgorithmID is `enc`.
            agree(header, key, enc.name(), enc.key_len())?
        }
        (Alg::EcdhEsA128Kw | Alg::EcdhEsA256Kw, _) => {
            let (name, kek_len) = match alg {
                Alg::EcdhEsA128Kw => ("ECDH-ES+A128KW", 16),
                _ => ("ECDH-ES+A256KW", 32),
            };
            let kek = agree(header, key, name, kek_len)?;
            unwrap_key(&kek, encrypted_key)?
        }
        _ => return Err(()),
    };
    if cek.len() == enc.key_len() {
        Ok(cek)
    } else {
        Err(())
    }
}

/// ECDH-ES (RFC 7518 §4.6): the shared secret of our key and the header's `epk`, which must be
/// a point on our key's curve, through the Concat KDF into `len` bytes for `algorithm`.
fn agree(header: &Header, key: &Private, algorithm: &str, len: usize) -> Result<Vec<u8>, ()> {
    let epk = header.epk.as_ref().ok_or(())?;
    let coordinate = |name: &str| {
        epk.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or(())
    };
    if epk.get("kty").and_then(Value::as_str) != Some("EC") {
        return Err(());
    }
    let crv = epk.get("crv").and_then(Value::as_str);
    let (x, y) = (coordinate("x")?, coordinate("y")?);
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    // `from_sec1_bytes` refuses a point that is not on the curve (or is the identity).
    let z: Vec<u8> = match (key, crv) {
        (Private::P256(secret), Some("P-256")) if x.len() == 32 && y.len() == 32 => {
            let public = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| ())?;
            p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        (Private::P384(secret), Some("P-384")) if x.len() == 48 && y.len() == 48 => {
            let public = p384::PublicKey::from_sec1_bytes(&sec1).map_err(|_| ())?;
            p384::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        _ => return Err(()),
    };
    let party = |value: &Option<String>| match value {
        Some(v) => URL_SAFE_NO_PAD.decode(v).map_err(|_| ()),
        None => Ok(Vec::new()),
    };
    // §4.6.2: OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo, each of the
    // first three prefixed with its 32-bit big-endian length; SuppPubInfo is the key length in
    // bits, 32-bit big-endian.
    let mut other_info = Vec::new();
    for datum in [
        algorithm.as_bytes().to_vec(),
        party(&header.apu)?,
        party(&header.apv)?,
    ] {
        let length = u32::try_from(datum.len()).map_err(|_| ())?;
        other_info.extend_from_slice(&length.to_be_bytes());
        other_info.extend_from_slice(&datum);
    }
    let bits = u32::try_from(len * 8).map_err(|_| ())?;
    other_info.extend_from_slice(&bits.to_be_bytes());
    let mut derived = vec![0u8; len];
    concat_kdf::derive_key_into::<Sha256>(&z, &other_info, &mut derived).map_err(|_| ())?;
    Ok(derived)
}

/// AES Key Wrap (RFC 3394), as RFC 7518 §4.4 uses it.
fn unwrap_key(kek: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, ()> {
    let mut out = vec![0u8; wrapped.len().checked_sub(8).ok_or(())?];
    match kek.len() {
        16 => aes_kw::KekAes128::try_from(kek)
            .map_err(|_| ())?
            .unwrap(wrapped, &mut out)
            .map_err(|_| ())?,
        32 => aes_kw::KekAes256::try_from(kek)
            .map_err(|_| ())?
            .unwrap(wrapped, &mut out)
            .map_err(|_| ())?,
        _ => return Err(()),
    }
    Ok(out)
}

/// Authenticated decryption of the content (RFC 7518 §5.2.2.2, §5.3).
fn open(
    enc: Enc,
    cek: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, ()> {
    use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
    match enc {
        Enc::A128Gcm | Enc::A256Gcm => {
            // §5.3: a 96-bit IV and a 128-bit tag.
            if iv.len() != 12 || tag.len() != 16 {
                return Err(());
            }
            let mut sealed = ciphertext.to_vec();
            sealed.extend_from_slice(tag);
            let payload = Payload { msg: &sealed, aad };
            let nonce = aes_gcm::Nonce::from_slice(iv);
            match enc {
                Enc::A128Gcm => aes_gcm::Aes128Gcm::new_from_slice(cek)
                    .map_err(|_| ())?
                    .decrypt(nonce, payload)
                    .map_err(|_| ()),
                _ => aes_gcm::Aes256Gcm::new_from_slice(cek)
                    .map_err(|_| ())?
                    .decrypt(nonce, payload)
                    .map_err(|_| ()),
            }
        }
        Enc::A128CbcHs256 => open_cbc_hs256(cek, iv, ciphertext, tag, aad),
    }
}

/// AES_128_CBC_HMAC_SHA_256 (RFC 7518 §5.2.2.2, §5.2.3): the first 16 bytes of the key are
/// the MAC key, the last 16 the encryption key; the tag is the first 16 bytes of
/// HMAC-SHA-256(AAD || IV || ciphertext || AL), AL the AAD's length in bits (64-bit big
/// endian), checked in constant time before anything is decrypted.
fn open_cbc_hs256(
    cek: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, ()> {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut as _, KeyIvInit as _};
    use hmac::Mac as _;
    let (mac_key, enc_key) = cek.split_at(16);
    if iv.len() != 16 || tag.len() != 16 {
        return Err(());
    }
    let aad_bits = u64::try_from(aad.len())
        .ok()
        .and_then(|n| n.checked_mul(8))
        .ok_or(())?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(mac_key).map_err(|_| ())?;
    mac.update(aad);
    mac.update(iv);
    mac.update(ciphertext);
    mac.update(&aad_bits.to_be_bytes());
    mac.verify_truncated_left(tag).map_err(|_| ())?;
    cbc::Decryptor::<aes::Aes128>::new_from_slices(enc_key, iv)
        .map_err(|_| ())?
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7520 §5 (the `ietf-jose/cookbook` JSON of those sections, checked by jwcrypto
    /// when it was copied: tests/vectors/rfc7520_jwe.json).
    fn vectors() -> Value {
        serde_json::from_str(include_str!("../tests/vectors/rfc7520_jwe.json")).unwrap()
    }

    fn entry(section: &str) -> Value {
        vectors()["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["section"] == section)
            .unwrap()
            .clone()
    }

    /// Decrypts with one issuer's keys, as [`nested_jwt`] does, without the `cty` check.
    fn dec(token: &str, keys: &[DecryptionKey]) -> Result<(Header, Vec<u8>), Reason> {
        let dir_allowed = keys.iter().any(DecryptionKey::is_symmetric);
        decrypt(token, keys, dir_allowed).map_err(Reason::from)
    }

    fn key_of(entry: &Value) -> DecryptionKey {
        let kid = entry["key"]["kid"].as_str().unwrap_or("k").to_string();
        let mut jwk = entry["key"].clone();
        // 5.2's key is for RSA-OAEP (SHA-1), which Tether does not decrypt: used here as an
        // RSA key of no particular algorithm.
        if jwk["alg"] == "RSA-OAEP" {
            jwk.as_object_mut().unwrap().remove("alg");
        }
        DecryptionKey::from_jwk(kid, &jwk).unwrap()
    }

    #[test]
    fn rfc7520_5_4_ecdh_es_a128kw_with_a128gcm_on_p384_decrypts() {
        let e = entry("5.4");
        let (_, plaintext) = dec(e["compact"].as_str().unwrap(), &[key_of(&e)]).unwrap();
        assert_eq!(String::from_utf8(plaintext).unwrap(), e["plaintext"]);
    }

    #[test]
    fn rfc7520_5_5_ecdh_es_with_a128cbc_hs256_on_p256_decrypts() {
        let e = entry("5.5");
        let (_, plaintext) = dec(e["compact"].as_str().unwrap(), &[key_of(&e)]).unwrap();
        assert_eq!(String::from_utf8(plaintext).unwrap(), e["plaintext"]);
    }

    #[test]
    fn rfc7520_5_6_dir_with_a128gcm_decrypts_with_a_key_for_it() {
        let e = entry("5.6");
        let (_, plaintext) = dec(e["compact"].as_str().unwrap(), &[key_of(&e)]).unwrap();
        assert_eq!(String::from_utf8(plaintext).unwrap(), e["plaintext"]);
        // Without a symmetric key configured, `dir` is refused outright.
        let other = entry("5.5");
        assert_eq!(
            dec(e["compact"].as_str().unwrap(), &[key_of(&other)]).map(|_| ()),
            Err(Reason::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn rfc7520_payloads_are_not_nested_jwts_and_are_refused_as_tokens() {
        let e = entry("5.5");
        assert_eq!(
            nested_jwt(e["compact"].as_str().unwrap(), &[key_of(&e)]),
            Err(Reason::TokenMalformed)
        );
    }

    #[test]
    fn rsa1_5_pbes2_rsa_oaep_sha1_and_zip_are_refused_before_any_key_is_used() {
        // 5.1 RSA1_5, 5.2 RSA-OAEP (SHA-1), 5.3 PBES2-HS512+A256KW, 5.9 A128KW with zip.
        let rsa = key_of(&entry("5.2"));
        for section in ["5.1", "5.2", "5.3", "5.9"] {
            let e = entry(section);
            assert_eq!(
                dec(e["compact"].as_str().unwrap(), std::slice::from_ref(&rsa)).map(|_| ()),
                Err(Reason::AlgorithmNotAllowed),
                "{section}"
            );
        }
        // zip with an otherwise accepted alg and enc.
        let header = URL_SAFE_NO_PAD.encode(
            json!({"alg": "ECDH-ES", "enc": "A128GCM", "zip": "DEF", "cty": "JWT"}).to_string(),
        );
        assert_eq!(
            dec(
                &format!("{header}..AAAA.AAAA.AAAA"),
                &[key_of(&entry("5.5"))]
            )
            .map(|_| ()),
            Err(Reason::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn a_changed_byte_anywhere_fails_decryption() {
        for section in ["5.4", "5.5", "5.6"] {
            let e = entry(section);
            let compact = e["compact"].as_str().unwrap();
            let key = key_of(&e);
            let parts: Vec<&str> = compact.split('.').collect();
            // The ciphertext, the tag, the IV, and (5.4) the wrapped key.
            for part in 1..5 {
                if parts[part].is_empty() {
                    continue;
                }
                let mut bytes = URL_SAFE_NO_PAD.decode(parts[part]).unwrap();
                bytes[0] ^= 1;
                let mut changed = parts.clone();
                let encoded = URL_SAFE_NO_PAD.encode(&bytes);
                changed[part] = &encoded;
                assert_eq!(
                    dec(&changed.join("."), std::slice::from_ref(&key)).map(|_| ()),
                    Err(Reason::TokenDecryptionFailed),
                    "{section} part {part}"
                );
            }
        }
    }

    #[test]
    fn an_epk_off_the_curve_or_on_another_curve_is_refused() {
        let e = entry("5.5");
        let compact = e["compact"].as_str().unwrap();
        let key = key_of(&e);
        let parts: Vec<&str> = compact.split('.').collect();
        let mut header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let mut off_curve = header.clone();
        let mut y = URL_SAFE_NO_PAD
            .decode(header["epk"]["y"].as_str().unwrap())
            .unwrap();
        y[31] ^= 1;
        off_curve["epk"]["y"] = json!(URL_SAFE_NO_PAD.encode(&y));
        let mut other_curve = header.clone();
        other_curve["epk"]["crv"] = json!("P-384");
        header["epk"]["kty"] = json!("OKP");
        for bad in [off_curve, other_curve, header] {
            let mut changed = parts.clone();
            let encoded = URL_SAFE_NO_PAD.encode(bad.to_string());
            changed[0] = &encoded;
            assert_eq!(
                dec(&changed.join("."), std::slice::from_ref(&key)).map(|_| ()),
                Err(Reason::TokenDecryptionFailed)
            );
        }
    }

    #[test]
    fn a_key_of_another_type_is_never_tried() {
        // 5.4 is ECDH-ES+A128KW: an RSA key and a symmetric key do not fit it.
        let e = entry("5.4");
        let compact = e["compact"].as_str().unwrap();
        let wrong = [key_of(&entry("5.2")), key_of(&entry("5.6"))];
        assert_eq!(
            dec(compact, &wrong).map(|_| ()),
            Err(Reason::TokenDecryptionFailed)
        );
        assert!(!fits(Alg::RsaOaep256, &wrong[1].key));
        assert!(!fits(Alg::EcdhEs, &wrong[0].key));
        assert!(!fits(Alg::Dir, &key_of(&e).key));
    }

    /// Found by an attacker's review of issue 12: a made-up RSA JWE without `kid` bought one
    /// private-key operation per configured key. Now at most one, and none when several fit.
    #[test]
    fn without_a_kid_only_a_single_fitting_key_is_tried() {
        let e = entry("5.5");
        let compact = e["compact"].as_str().unwrap();
        let parts: Vec<&str> = compact.split('.').collect();
        let mut header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        header.as_object_mut().unwrap().remove("kid");
        let encoded = URL_SAFE_NO_PAD.encode(header.to_string());
        let mut without_kid = parts.clone();
        without_kid[0] = &encoded;
        let without_kid = without_kid.join(".");
        // One P-256 key fits: it is tried (the AAD changed with the header, so it fails).
        assert_eq!(
            decrypt(&without_kid, &[key_of(&e)], false).map(|_| ()),
            Err(Unopened::Refused(Reason::TokenDecryptionFailed))
        );
        // Two fit: none is tried.
        let mut second = e["key"].clone();
        second["kid"] = json!("another");
        let two = [
            key_of(&e),
            DecryptionKey::from_jwk("another".into(), &second).unwrap(),
        ];
        assert_eq!(
            decrypt(&without_kid, &two, false).map(|_| ()),
            Err(Unopened::Refused(Reason::TokenDecryptionFailed))
        );
        // With its kid, the right one of the two opens it.
        assert!(decrypt(compact, &two, false).is_ok());
        // No key of the set fits: another issuer's keys may.
        assert_eq!(
            decrypt(compact, &[key_of(&entry("5.2"))], false).map(|_| ()),
            Err(Unopened::NoKeyFits)
        );
    }

    #[test]
    fn a_key_serves_only_the_algorithm_and_use_it_names() {
        let mut signing = entry("5.5")["key"].clone();
        signing["use"] = json!("sig");
        assert!(DecryptionKey::from_jwk("k".into(), &signing).is_err());
        let mut ops = entry("5.5")["key"].clone();
        ops["key_ops"] = json!(["sign"]);
        assert!(DecryptionKey::from_jwk("k".into(), &ops).is_err());
        let mut rsa_alg_on_ec = entry("5.5")["key"].clone();
        rsa_alg_on_ec["alg"] = json!("RSA-OAEP-256");
        assert!(DecryptionKey::from_jwk("k".into(), &rsa_alg_on_ec).is_err());
        // 5.5 is ECDH-ES: a key for ECDH-ES+A128KW only does not open it.
        let e = entry("5.5");
        let mut kw_only = e["key"].clone();
        kw_only["alg"] = json!("ECDH-ES+A128KW");
        let kid = e["key"]["kid"].as_str().unwrap().to_string();
        let key = DecryptionKey::from_jwk(kid, &kw_only).unwrap();
        assert_eq!(
            decrypt(e["compact"].as_str().unwrap(), &[key], false).map(|_| ()),
            Err(Unopened::NoKeyFits)
        );
    }

    #[test]
    fn keys_that_are_not_private_or_consistent_are_refused_without_quoting_them() {
        let mut public_only = entry("5.5")["key"].clone();
        public_only.as_object_mut().unwrap().remove("d");
        let mut wrong_point = entry("5.5")["key"].clone();
        wrong_point["x"] = entry("5.4")["key"]["x"].clone();
        let short_oct = json!({"kty": "oct", "k": "AAAA"});
        let ed25519 = json!({"kty": "OKP", "crv": "Ed25519", "d": "AAAA", "x": "AAAA"});
        for bad in [public_only, wrong_point, short_oct, ed25519] {
            let error = DecryptionKey::from_jwk("k".into(), &bad).unwrap_err();
            assert!(!error.contains("r_kHy"), "{error}");
        }
        let printed = format!("{:?}", key_of(&entry("5.5")));
        assert!(!printed.contains("r_kHy"), "{printed}");
    }
}
