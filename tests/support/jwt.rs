//! An issuer of JWT access tokens (RFC 9068) for the tests: signing keys for every algorithm
//! the filter supports (one key per key type; RSA keys sign with any RS*/PS* algorithm), the
//! public JWKS (RFC 7517) to configure the filter with, and a minter that can produce any
//! header and any claims, including wrong ones.
//!
//! Keys are made and used by the `openssl` CLI (see the module docs of `support` for why);
//! the JWK members are computed here from the DER public keys OpenSSL prints.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::pki::ClientCert;
use super::scratch::ScratchDir;
use super::{der, now, openssl};

/// The JWS algorithms (RFC 7518 §3.1, RFC 8037 §3.1) the harness can sign with: every one
/// the filter supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Es384,
    EdDsa,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

impl Alg {
    /// One algorithm per kind of key an [`Issuer`] generates.
    pub const ISSUER_KEYS: [Alg; 5] = [Alg::Es256, Alg::Es384, Alg::EdDsa, Alg::Rs256, Alg::Ps256];
    /// Every algorithm an RSA key can sign with.
    pub const RSA: [Alg; 6] = [
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
    ];

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
        }
    }

    /// `openssl genpkey` arguments for a fresh key of the right type.
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            Alg::Es256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Alg::Es384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Alg::EdDsa => &["-algorithm", "ED25519"],
            _ => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    /// The `openssl dgst` digest option of an RSA algorithm.
    fn rsa_digest(self) -> &'static str {
        match self {
            Alg::Rs384 | Alg::Ps384 => "-sha384",
            Alg::Rs512 | Alg::Ps512 => "-sha512",
            _ => "-sha256",
        }
    }
}

/// A private signing key (a PEM file OpenSSL can use) with its `kid` and public JWK.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub alg: Alg,
    pub kid: String,
    pem: PathBuf,
    jwk: Value,
}

impl SigningKey {
    /// Generates a new key for `alg` in `dir`.
    ///
    /// `publish_alg` decides whether the public JWK carries an `alg` member: the filter then
    /// accepts only that algorithm for the key; without it, the key type decides.
    pub fn generate(dir: &Path, alg: Alg, kid: &str, publish_alg: bool) -> SigningKey {
        let pem = dir.join(format!("{kid}.key.pem"));
        let pem_str = pem.to_str().expect("scratch paths are UTF-8");
        let mut args = vec!["genpkey"];
        args.extend_from_slice(alg.genpkey_args());
        args.extend_from_slice(&["-out", pem_str]);
        openssl(&args);
        SigningKey::from_pem_file(&pem, alg, kid, publish_alg)
    }

    /// Loads an existing private key (any PEM form OpenSSL reads) for `alg`.
    pub fn from_pem_file(pem: &Path, alg: Alg, kid: &str, publish_alg: bool) -> SigningKey {
        let pem_str = pem.to_str().expect("key paths are UTF-8");
        let spki = openssl(&["pkey", "-in", pem_str, "-pubout", "-outform", "DER"]);
        let mut jwk = public_jwk(alg, der::spki_public_key(&spki));
        jwk.insert("kid".into(), json!(kid));
        jwk.insert("use".into(), json!("sig"));
        if publish_alg {
            jwk.insert("alg".into(), json!(alg.name()));
        }
        SigningKey {
            alg,
            kid: kid.to_string(),
            pem: pem.to_path_buf(),
            jwk: Value::Object(jwk),
        }
    }

    /// The same key material and `kid`, signing with `alg` instead (which must suit the key
    /// type): for tokens whose algorithm disagrees with the one the JWKS publishes.
    pub fn signing_as(&self, alg: Alg) -> SigningKey {
        SigningKey {
            alg,
            ..self.clone()
        }
    }

    /// The public JWK (RFC 7517 §4; members per RFC 7518 §6 and RFC 8037 §2).
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// The JWS signature of `signing_input` (RFC 7515 §5.1 step 5) by this key.
    pub fn sign(&self, signing_input: &[u8]) -> Vec<u8> {
        let scratch = ScratchDir::new("sign");
        let input = scratch.join("input");
        std::fs::write(&input, signing_input).expect("write signing input");
        let input = input.to_str().expect("scratch paths are UTF-8");
        let key = self.pem.to_str().expect("key paths are UTF-8");
        let dgst = |digest: &str, extra: &[&str]| {
            let mut args = vec!["dgst", digest, "-binary", "-sign", key];
            args.extend_from_slice(extra);
            args.push(input);
            openssl(&args)
        };
        match self.alg {
            // RFC 7518 §3.4: R || S, each as wide as the curve order.
            Alg::Es256 => der::ecdsa_signature_to_jws(&dgst("-sha256", &[]), 32),
            Alg::Es384 => der::ecdsa_signature_to_jws(&dgst("-sha384", &[]), 48),
            // RFC 8037 §3.1: pure Ed25519 over the signing input itself.
            Alg::EdDsa => openssl(&["pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", input]),
            // RFC 7518 §3.3: RSASSA-PKCS1-v1_5 with the SHA-2 function of the name.
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => dgst(self.alg.rsa_digest(), &[]),
            // RFC 7518 §3.5: RSASSA-PSS, MGF1 with the same hash, salt as long as the hash.
            Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => dgst(
                self.alg.rsa_digest(),
                &[
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ],
            ),
        }
    }
}

/// The key-type members of a public JWK from the subjectPublicKey bits of an SPKI.
fn public_jwk(alg: Alg, public_key: &[u8]) -> Map<String, Value> {
    let b64 = |bytes: &[u8]| json!(URL_SAFE_NO_PAD.encode(bytes));
    let ec = |crv: &str, width: usize| {
        // An uncompressed SEC1 point: 0x04 || X || Y (SEC 1 §2.3.3).
        assert_eq!(public_key.len(), 1 + 2 * width, "unexpected EC point size");
        assert_eq!(public_key[0], 0x04, "EC point is not uncompressed");
        let (x, y) = public_key[1..].split_at(width);
        json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
    };
    let jwk = match alg {
        Alg::Es256 => ec("P-256", 32),
        Alg::Es384 => ec("P-384", 48),
        Alg::EdDsa => {
            assert_eq!(public_key.len(), 32, "unexpected Ed25519 key size");
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public_key)})
        }
        _ => {
            let (n, e) = der::rsa_public_key(public_key);
            json!({"kty": "RSA", "n": b64(n), "e": b64(e)})
        }
    };
    match jwk {
        Value::Object(members) => members,
        _ => unreachable!("json! of an object literal"),
    }
}

/// An authorization server: an `iss` value, the audience it issues for, and its signing keys.
/// Generated key ids are the lower-case algorithm name with `-1` (`es256-1`, ...).
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    keys: Vec<SigningKey>,
}

impl Issuer {
    /// Generates one key per entry of [`Alg::ISSUER_KEYS`] into `dir`.
    ///
    /// ES256 and RS256 keys publish their `alg` in the JWKS; the others do not, so both ways
    /// the filter chooses an algorithm for a key are exercised.
    pub fn generate(dir: &Path, issuer: &str, audience: &str) -> Issuer {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let keys = Alg::ISSUER_KEYS
            .iter()
            .map(|&alg| {
                let kid = format!("{}-1", alg.name().to_ascii_lowercase());
                let publish_alg = matches!(alg, Alg::Es256 | Alg::Rs256);
                SigningKey::generate(dir, alg, &kid, publish_alg)
            })
            .collect();
        Issuer::with_keys(issuer, audience, keys)
    }

    pub fn with_keys(issuer: &str, audience: &str, keys: Vec<SigningKey>) -> Issuer {
        Issuer {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            keys,
        }
    }

    pub fn key(&self, alg: Alg) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.alg == alg)
            .unwrap_or_else(|| panic!("issuer has no {} key", alg.name()))
    }

    /// The public JWK Set (RFC 7517 §5) to put in the filter's configuration.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(SigningKey::jwk).collect::<Vec<_>>()})
    }

    /// A token minter for a valid ES256 access token for `alice`, not yet bound to anything.
    pub fn token(&self) -> TokenBuilder<'_> {
        self.token_signed_with(self.key(Alg::Es256))
    }

    /// A token minter with this issuer's claims, signed with `key` (which may be any key,
    /// including one the issuer does not publish).
    pub fn token_signed_with<'k>(&self, key: &'k SigningKey) -> TokenBuilder<'k> {
        TokenBuilder::new(key)
            .claim("iss", &self.issuer)
            .claim("aud", &self.audience)
    }
}

/// Builds one signed token. Starts from an RFC 9068 access token for `alice` that lives five
/// minutes; every header member and claim can be replaced or removed.
#[derive(Debug, Clone)]
pub struct TokenBuilder<'k> {
    key: &'k SigningKey,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl<'k> TokenBuilder<'k> {
    pub fn new(key: &'k SigningKey) -> TokenBuilder<'k> {
        let now = now();
        let mut header = Map::new();
        header.insert("alg".into(), json!(key.alg.name()));
        // RFC 9068 §2.1: access tokens are typed, so they cannot be confused with ID tokens.
        header.insert("typ".into(), json!("at+jwt"));
        header.insert("kid".into(), json!(key.kid));
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        claims.insert("client_id".into(), json!("alice-app"));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 300));
        claims.insert("jti".into(), json!(unique_id()));
        TokenBuilder {
            key,
            header,
            claims,
        }
    }

    /// Sets claim `name` to `value` (any JSON).
    pub fn claim(mut self, name: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).expect("claim serializes");
        self.claims.insert(name.to_string(), value);
        self
    }

    /// Removes claim `name`.
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets JOSE header member `name` (RFC 7515 §4).
    pub fn header(mut self, name: &str, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).expect("header member serializes");
        self.header.insert(name.to_string(), value);
        self
    }

    /// Removes JOSE header member `name`.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Binds the token to `client`'s certificate: `cnf: {"x5t#S256": ...}` (RFC 8705 §3.1).
    pub fn bound_to(self, client: &ClientCert) -> Self {
        self.claim("cnf", json!({"x5t#S256": client.x5t_s256()}))
    }

    /// Sets `iat`, `nbf` or `exp` (or any numeric claim) to now + `offset` seconds.
    pub fn at(self, claim: &str, offset: i64) -> Self {
        self.claim(claim, now() + offset)
    }

    /// The claims as they will be signed.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The compact serialization (RFC 7515 §7.1), signed with the builder's key.
    pub fn sign(&self) -> String {
        let signing_input = signing_input(&self.header, &self.claims);
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// The same token with `alg: none` and an empty signature (RFC 7519 §6.1): the
    /// "unsecured JWT" every verifier must refuse (RFC 8725 §3.1).
    pub fn unsecured(&self) -> String {
        let mut header = self.header.clone();
        header.insert("alg".into(), json!("none"));
        format!("{}.", signing_input(&header, &self.claims))
    }

    /// A token whose header says HS256 and whose MAC is keyed with the public key of
    /// `public_key_of`: the key-confusion attack of RFC 8725 §2.1, which succeeds against a
    /// verifier that lets the token choose the algorithm.
    pub fn hs256_keyed_with_public_key(&self, public_key_of: &SigningKey) -> String {
        let mut header = self.header.clone();
        header.insert("alg".into(), json!("HS256"));
        header.insert("kid".into(), json!(public_key_of.kid));
        let signing_input = signing_input(&header, &self.claims);
        let scratch = ScratchDir::new("hmac");
        let input = scratch.join("input");
        std::fs::write(&input, &signing_input).expect("write signing input");
        let secret = serde_json::to_string(&public_key_of.jwk()).expect("jwk serializes");
        let mac = openssl(&[
            "dgst",
            "-sha256",
            "-binary",
            "-hmac",
            &secret,
            input.to_str().expect("scratch paths are UTF-8"),
        ]);
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac))
    }
}

fn signing_input(header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
    let encode = |members: &Map<String, Value>| {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(members).expect("JSON object serializes"))
    };
    format!("{}.{}", encode(header), encode(claims))
}

/// `token` with its payload replaced by `edit(claims)`, keeping the original signature: what
/// an attacker who wants more privileges would try.
pub fn tampered(token: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let [header, payload, signature] = segments(token);
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    let mut claims: Map<String, Value> = serde_json::from_slice(&json).expect("payload is JSON");
    edit(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
    format!("{header}.{payload}.{signature}")
}

/// The three segments of a compact JWS.
pub fn segments(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    match parts[..] {
        [h, p, s] => [h, p, s],
        _ => panic!("not a compact JWS: {token}"),
    }
}

/// A `jti` unique within and across test runs (RFC 7519 §4.1.7).
fn unique_id() -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}
