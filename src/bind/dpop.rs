//! DPoP (RFC 9449): a token bound to a key the client proves it holds, with a fresh signed
//! proof on every request.
//!
//! The token carries `cnf.jkt`, the RFC 7638 thumbprint of the client's public key (§6.1). The
//! client sends the token with the `DPoP` scheme (§7.1) and a `DPoP` header: a JWT of type
//! `dpop+jwt`, signed with that key, whose header carries the public key (`jwk`) and whose
//! claims name this request (`htm`, `htu`), this moment (`iat`, and a server `nonce` where
//! asked, §8), this token (`ath`) and itself (`jti`, recorded once against replay, §11.1).
//! A stolen token without the key is worthless; a captured proof is good for one request.
//!
//! The checks of §4.3 run cheapest first: the header (size, shape, `typ`, `alg`, `jwk`), then
//! the claims, the key binding and the nonce, then the signature, and last the replay record, which is written only for a proof that passed everything else, so that a
//! forged proof can never use up a genuine `jti`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::htu;
use super::jose::{self, numeric_date, UniqueObject};
use crate::crypto::SignatureVerifier;
use crate::jwk::{self, Alg, VerificationKey};
use crate::reject::Reason;
use crate::replay::ReplayStore;

/// The `cnf` member of a DPoP binding (RFC 9449 §6.1).
pub const CNF_MEMBER: &str = "jkt";
/// The largest `DPoP` header Tether reads.
pub const MAX_PROOF_BYTES: usize = 8192;
/// The longest `jti` accepted.
pub const MAX_JTI_BYTES: usize = 256;
/// The proof's `typ` (RFC 9449 §4.2).
pub const PROOF_TYPE: &str = "dpop+jwt";
/// Default for `dpop.algs`: the asymmetric algorithms clients use, cheapest to verify first.
pub const DEFAULT_ALGS: [Alg; 5] = [Alg::Es256, Alg::Es384, Alg::EdDsa, Alg::Ps256, Alg::Rs256];
/// Default for `dpop.max_age_seconds`.
pub const DEFAULT_MAX_AGE_SECONDS: u64 = 60;
/// Default for `dpop.nonce_lifetime_seconds`.
pub const DEFAULT_NONCE_LIFETIME_SECONDS: u64 = 300;
/// The shortest `dpop.nonce_secret`, in bytes: as long as HMAC-SHA256's output (RFC 2104 §3).
pub const MIN_NONCE_SECRET_BYTES: usize = 32;

/// How DPoP proofs are checked (the configuration's `dpop`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The algorithms a proof may use (never `none`, never a MAC).
    pub algs: Vec<Alg>,
    /// `algs` as a challenge names them (`ES256 EdDSA`, RFC 9449 §7.1).
    pub algs_challenge: String,
    /// How old a proof's `iat` may be.
    pub max_age_seconds: u64,
    /// The nonces of routes with `dpop_nonce` (`None` without `dpop.nonce_secret`).
    pub nonces: Option<Nonces>,
    /// The configuration has a `dpop` block: routes that accept both schemes announce DPoP
    /// beside Bearer in their challenges.
    pub announced: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(DEFAULT_ALGS.to_vec(), DEFAULT_MAX_AGE_SECONDS, None, false)
    }
}

impl Settings {
    pub fn new(
        algs: Vec<Alg>,
        max_age_seconds: u64,
        nonces: Option<Nonces>,
        announced: bool,
    ) -> Self {
        let algs_challenge = algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" ");
        Settings {
            algs,
            algs_challenge,
            max_age_seconds,
            nonces,
            announced,
        }
    }
}

/// Stateless server nonces (RFC 9449 §8): the HMAC-SHA256 of a time window's number under
/// `dpop.nonce_secret`, valid in that window and the next. Nothing is stored, and every
/// replica that shares the secret and the lifetime accepts every other's nonces.
#[derive(Clone)]
pub struct Nonces {
    secret: Vec<u8>,
    lifetime_seconds: u64,
}

/// Shows the lifetime, never the secret.
impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime_seconds", &self.lifetime_seconds)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    pub fn new(secret: Vec<u8>, lifetime_seconds: u64) -> Self {
        Nonces {
            secret,
            lifetime_seconds: lifetime_seconds.max(1),
        }
    }

    /// The nonce of the window `now` falls in.
    pub fn mint(&self, now: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(now / self.lifetime_seconds))
    }

    /// Whether `nonce` is the current window's or the previous one's, compared in constant
    /// time: a nonce lives between one and two lifetimes. Within `clock_skew_seconds` of the
    /// next window, that one's too: a replica whose clock is a little ahead may already give
    /// it out, and its clients would otherwise be refused here until this clock turns.
    pub fn accepts(&self, nonce: &str, now: u64, clock_skew_seconds: u64) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let window = now / self.lifetime_seconds;
        let ahead = now.saturating_add(clock_skew_seconds) / self.lifetime_seconds;
        let mut accepted = tag.ct_eq(&self.tag(window));
        if let Some(previous) = window.checked_sub(1) {
            accepted |= tag.ct_eq(&self.tag(previous));
        }
        if ahead != window {
            accepted |= tag.ct_eq(&self.tag(ahead));
        }
        bool::from(accepted)
    }

    fn tag(&self, window: u64) -> [u8; 32] {
        let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            // HMAC takes a key of any length; this cannot happen.
            Err(_) => return [0; 32],
        };
        mac.update(b"tether.dpop.nonce.v1\0");
        mac.update(&window.to_be_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The request a proof must describe.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:scheme://:authority:path`.
    pub uri: &'a str,
}

/// What a proof is checked against besides the request: the settings, the token's binding
/// and the time.
pub struct Expected<'a> {
    pub settings: &'a Settings,
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    /// The access token's `ath` (the base64url SHA-256 of the token as presented), computed
    /// once per verified token.
    pub access_token_hash: &'a str,
    /// The route asks for a nonce (`dpop_nonce`).
    pub nonce_required: bool,
    /// `clock_skew_seconds`: how far ahead `iat` may be.
    pub clock_skew_seconds: u64,
}

/// A DPoP proof read from the `DPoP` header, its header checked (RFC 9449 §4.3 checks 2, 4, 5
/// and 7: the shape, `typ`, `alg` and `jwk`). Nothing in its claims is trusted until its signature
/// verifies; its `Debug` shows the algorithm and the key's thumbprint only.
pub struct Proof {
    /// `BASE64URL(header) '.' BASE64URL(claims)`, the signing input.
    signing_input: String,
    signature: Vec<u8>,
    /// The proof's own public key (`jwk`), for the algorithm of its `alg`.
    key: VerificationKey,
    /// The RFC 7638 thumbprint of `jwk`, computed once.
    thumbprint: String,
    claims: UniqueObject,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proof")
            .field("alg", &self.key.alg)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Proof {
    /// Reads a proof and checks its header: a compact JWS of at most [`MAX_PROOF_BYTES`]
    /// with no repeated member, `typ` `dpop+jwt`, an `alg` in `algs`, and a public `jwk` of a
    /// supported type and size that fits `alg`.
    pub fn parse(value: &[u8], algs: &[Alg]) -> Result<Proof, Reason> {
        if value.len() > MAX_PROOF_BYTES {
            return Err(Reason::DpopProofMalformed);
        }
        let value = std::str::from_utf8(value).map_err(|_| Reason::DpopProofMalformed)?;
        let mut parts = value.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::DpopProofMalformed);
        };
        let object = |b64: &str| -> Result<UniqueObject, Reason> {
            let json = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| Reason::DpopProofMalformed)?;
            serde_json::from_slice(&json).map_err(|_| Reason::DpopProofMalformed)
        };
        let header = object(header_b64)?;
        let claims = object(claims_b64)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| Reason::DpopProofMalformed)?;
        if signature.is_empty() {
            return Err(Reason::DpopProofMalformed);
        }
        // RFC 7515 §4.1.11: a `crit` extension must be understood; a proof needs none.
        if header.get("crit").is_some() {
            return Err(Reason::DpopProofMalformed);
        }
        // RFC 8725 §3.11: the type keeps a proof from being taken for another kind of JWT.
        if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYPE) {
            return Err(Reason::DpopProofTypeInvalid);
        }
        // §4.3 check 5: an asymmetric algorithm the operator allows; `none` and MACs have no
        // `Alg` at all.
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::from_name)
            .filter(|alg| algs.contains(alg))
            .ok_or(Reason::DpopAlgorithmNotAllowed)?;
        // §4.3 check 7: a public key (private members make `parse_one` fail), usable, of the
        // algorithm's family and size.
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or(Reason::DpopKeyInvalid)?;
        let key = jwk::parse_object(jwk)
            .map_err(|_| Reason::DpopKeyInvalid)?
            .into_iter()
            .find(|key| key.alg == alg)
            .ok_or(Reason::DpopKeyInvalid)?;
        let thumbprint = jwk::thumbprint(jwk).map_err(|_| Reason::DpopKeyInvalid)?;
        Ok(Proof {
            signing_input: format!("{header_b64}.{claims_b64}"),
            signature,
            key,
            thumbprint,
            claims,
        })
    }

    /// The RFC 7638 thumbprint of the proof's key.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    fn string_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// The proof's `iat`, if it is a NumericDate (RFC 7519 §2; a fraction is truncated).
    pub fn iat(&self) -> Option<u64> {
        self.claims.get("iat").and_then(numeric_date)
    }

    /// The claims that describe the request, the time and the token (§4.3 checks 3, 8, 9, 11
    /// and the `ath` of 12): each its own refusal.
    pub fn check_claims(
        &self,
        target: Target<'_>,
        expected: &Expected<'_>,
        now: u64,
    ) -> Result<(), Reason> {
        match self.string_claim("jti") {
            Some(jti) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => {}
            _ => return Err(Reason::DpopJtiInvalid),
        }
        if self.string_claim("htm") != Some(target.method) {
            return Err(Reason::DpopMethodMismatch);
        }
        // §4.3 check 9: the URI without query and fragment, RFC 3986 §6.2.2–6.2.3 folded.
        let same_uri = self.string_claim("htu").is_some_and(|proof_htu| {
            htu::normalize(htu::without_query(proof_htu))
                == htu::normalize(htu::without_query(target.uri))
        });
        if !same_uri {
            return Err(Reason::DpopUriMismatch);
        }
        let window = Window {
            max_age_seconds: expected.settings.max_age_seconds,
            clock_skew_seconds: expected.clock_skew_seconds,
        };
        // §4.3 check 11, §11.1.
        if !self.iat().is_some_and(|iat| window.contains(iat, now)) {
            return Err(Reason::DpopIatInvalid);
        }
        // §4.3 check 12, §7.1: the proof names the token it travels with.
        let ath = expected.access_token_hash;
        let ath_matches = self
            .string_claim("ath")
            .is_some_and(|claimed| bool::from(claimed.as_bytes().ct_eq(ath.as_bytes())));
        if !ath_matches {
            return Err(Reason::DpopAthMismatch);
        }
        Ok(())
    }

    /// §4.3 check 12, §6.1: the proof's key is the one the token is bound to.
    pub fn check_binding(&self, jkt: &str) -> Result<(), Reason> {
        if bool::from(self.thumbprint.as_bytes().ct_eq(jkt.as_bytes())) {
            Ok(())
        } else {
            Err(Reason::DpopKeyMismatch)
        }
    }

    /// §4.3 check 10, §8: the proof carries a nonce Tether issued, still valid.
    pub fn check_nonce(
        &self,
        nonces: &Nonces,
        now: u64,
        clock_skew_seconds: u64,
    ) -> Result<(), Reason> {
        match self.string_claim("nonce") {
            None => Err(Reason::DpopNonceMissing),
            Some(nonce) if nonces.accepts(nonce, now, clock_skew_seconds) => Ok(()),
            Some(_) => Err(Reason::DpopNonceInvalid),
        }
    }

    /// §4.3 check 6: the signature verifies with the proof's own key.
    pub fn verify_signature(&self, crypto: &dyn SignatureVerifier) -> Result<(), Reason> {
        if crypto.verify(&self.key, self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(Reason::DpopSignatureInvalid)
        }
    }

    /// The replay record's key (§11.1): the SHA-256 of the key's thumbprint and `jti`, what
    /// the client signed, never the signature bytes (a second valid signature of the same
    /// claims must not pass as another proof).
    pub fn replay_id(&self) -> [u8; 32] {
        let mut id = Sha256::new();
        id.update(b"tether.replay.dpop.v1\0");
        // The thumbprint has a fixed length (43 characters): nothing of `jti` can shift into it.
        id.update(self.thumbprint.as_bytes());
        id.update(self.string_claim("jti").unwrap_or_default().as_bytes());
        id.finalize().into()
    }
}

/// The proof's time window: `iat` at most `max_age_seconds` old and at most
/// `clock_skew_seconds` ahead.
#[derive(Clone, Copy, Debug)]
struct Window {
    max_age_seconds: u64,
    clock_skew_seconds: u64,
}

impl Window {
    fn contains(self, iat: u64, now: u64) -> bool {
        iat.saturating_add(self.max_age_seconds) >= now
            && iat <= now.saturating_add(self.clock_skew_seconds)
    }
}

/// `ath` (RFC 9449 §4.2): the unpadded base64url SHA-256 of the access token's ASCII.
pub fn access_token_hash(access_token: &str) -> String {
    jose::sha256_b64url(access_token.as_bytes())
}

/// Reads `cnf.jkt`: the unpadded base64url of a SHA-256 thumbprint, 43 characters.
pub fn parse_jkt(value: &Value) -> Result<String, Reason> {
    super::mtls::parse_thumbprint(value)
}

/// Checks the `DPoP` header of a request that presents a DPoP-bound token with the `DPoP`
/// scheme, and records the proof against replay. `lines` are the header's values.
pub fn verify(
    lines: &[&[u8]],
    target: Target<'_>,
    expected: &Expected<'_>,
    crypto: &dyn SignatureVerifier,
    replay: &mut dyn ReplayStore,
    now: u64,
) -> Result<(), Reason> {
    // §4.3 check 1: exactly one `DPoP` header. A compact JWS never holds a comma, so one
    // holding a comma is several joined (Envoy joins some repeated headers so).
    let value = match lines {
        [] => return Err(Reason::DpopProofMissing),
        [value] if !value.contains(&b',') => *value,
        _ => return Err(Reason::MultipleDpopProofs),
    };
    let proof = Proof::parse(value, &expected.settings.algs)?;
    proof.check_claims(target, expected, now)?;
    proof.check_binding(expected.jkt)?;
    if expected.nonce_required {
        // A nonce route without nonces is refused at configuration; fail closed regardless.
        let nonces = expected
            .settings
            .nonces
            .as_ref()
            .ok_or(Reason::DpopNonceInvalid)?;
        proof.check_nonce(nonces, now, expected.clock_skew_seconds)?;
    }
    proof.verify_signature(crypto)?;
    let iat = proof.iat().unwrap_or(0);
    // The record may have forgotten proofs older than this (a widened window, see
    // `replay::WindowRecord`): such a proof could be a replay.
    if iat < replay.remembers_since() {
        return Err(Reason::DpopIatInvalid);
    }
    match replay.first_use(&proof.replay_id(), iat, now) {
        Err(Reason::RequestSignatureReplayed) => Err(Reason::DpopProofReplayed),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use crate::replay;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;

    /// RFC 9449 §4.2 (Figure 3): the example proof of a token request.
    const RFC9449_TOKEN_REQUEST_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
    /// RFC 9449 §7.1 (Figure 13): the example proof of a protected resource request, with the
    /// access token it travels with and the time it was made.
    const RFC9449_RESOURCE_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
    const RFC9449_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    const RFC9449_RESOURCE_IAT: u64 = 1_562_262_618;
    /// RFC 9449 §6.1: `cnf.jkt` of the examples' key (its RFC 7638 thumbprint).
    const RFC9449_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    /// RFC 9449 §7.1: `ath` of the example access token.
    const RFC9449_ATH: &str = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
    const RESOURCE: &str = "https://resource.example.org/protectedresource";

    const NOW: u64 = 1_800_000_000;
    const URI: &str = "https://api.example/transfers";
    const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.e30.sig";

    fn settings(nonces: Option<Nonces>) -> Settings {
        Settings::new(DEFAULT_ALGS.to_vec(), 60, nonces, true)
    }

    fn nonces() -> Nonces {
        Nonces::new(vec![9; 32], 300)
    }

    /// A client's P-256 key, and its public JWK.
    fn client_key(seed: u8) -> (p256::ecdsa::SigningKey, Value) {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
        (key, jwk)
    }

    fn jkt_of(jwk: &Value) -> String {
        jwk::thumbprint(jwk.as_object().unwrap()).unwrap()
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// An ES256 proof of `header` and `claims`, each as given.
    fn sign(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn header(jwk: &Value) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})
    }

    fn claims() -> Value {
        json!({"jti": "j-1", "htm": "POST", "htu": URI, "iat": NOW,
               "ath": access_token_hash(TOKEN)})
    }

    /// The request most tests describe: POST `URI`.
    const POST: Target<'static> = Target {
        method: "POST",
        uri: URI,
    };

    /// What a proof for POST `URI` with `TOKEN`, bound to `jkt`, is checked against.
    fn expected<'a>(settings: &'a Settings, jkt: &'a str) -> Expected<'a> {
        Expected {
            settings,
            jkt,
            access_token_hash: Box::leak(access_token_hash(TOKEN).into_boxed_str()),
            nonce_required: false,
            clock_skew_seconds: 30,
        }
    }

    /// The RFC 9449 examples' expectations: their key and token, no skew.
    fn rfc_expected(settings: &Settings) -> Expected<'_> {
        Expected {
            access_token_hash: Box::leak(access_token_hash(RFC9449_ACCESS_TOKEN).into_boxed_str()),
            clock_skew_seconds: 0,
            ..expected(settings, RFC9449_JKT)
        }
    }

    /// `dpop::verify` of one header line for POST `URI` with `TOKEN`, bound to `jkt`.
    fn check(
        proof: &str,
        jkt: &str,
        settings: &Settings,
        nonce: bool,
        now: u64,
    ) -> Result<(), Reason> {
        let expected = Expected {
            nonce_required: nonce,
            ..expected(settings, jkt)
        };
        let record = replay::in_memory(8);
        verify(
            &[proof.as_bytes()],
            POST,
            &expected,
            &InVm,
            &mut &record,
            now,
        )
    }

    /// A proof of `claims` (edited from the good ones) with the client's key, checked.
    fn with_claims(edit: impl FnOnce(&mut Value)) -> Result<(), Reason> {
        let (key, jwk) = client_key(1);
        let mut claims = claims();
        edit(&mut claims);
        check(
            &sign(&key, &header(&jwk), &claims),
            &jkt_of(&jwk),
            &settings(None),
            false,
            NOW,
        )
    }

    /// A proof with the header edited, checked.
    fn with_header(edit: impl FnOnce(&mut Value)) -> Result<(), Reason> {
        let (key, jwk) = client_key(1);
        let mut header = header(&jwk);
        edit(&mut header);
        check(
            &sign(&key, &header, &claims()),
            &jkt_of(&jwk),
            &settings(None),
            false,
            NOW,
        )
    }

    #[test]
    fn rfc9449_token_request_example_verifies() {
        let proof = Proof::parse(RFC9449_TOKEN_REQUEST_PROOF.as_bytes(), &DEFAULT_ALGS).unwrap();
        assert_eq!(proof.verify_signature(&InVm), Ok(()));
        assert_eq!(proof.thumbprint(), RFC9449_JKT);
        assert_eq!(proof.iat(), Some(1_562_262_616));
        // It is a proof for the token endpoint: at a resource it names no access token.
        let settings = settings(None);
        let expected = rfc_expected(&settings);
        let target = Target {
            method: "POST",
            uri: "https://server.example.com/token",
        };
        assert_eq!(
            proof.check_claims(target, &expected, 1_562_262_616),
            Err(Reason::DpopAthMismatch)
        );
    }

    #[test]
    fn rfc9449_resource_request_example_verifies_once() {
        assert_eq!(access_token_hash(RFC9449_ACCESS_TOKEN), RFC9449_ATH);
        let settings = settings(None);
        let expected = rfc_expected(&settings);
        let target = Target {
            method: "GET",
            uri: RESOURCE,
        };
        let record = replay::in_memory(8);
        let mut store = &record;
        let lines = [RFC9449_RESOURCE_PROOF.as_bytes()];
        let at = RFC9449_RESOURCE_IAT;
        assert_eq!(
            verify(&lines, target, &expected, &InVm, &mut store, at),
            Ok(())
        );
        assert_eq!(
            verify(&lines, target, &expected, &InVm, &mut store, at + 1),
            Err(Reason::DpopProofReplayed)
        );
        // Sixty-one seconds later it is too old, replayed or not.
        let record = replay::in_memory(8);
        assert_eq!(
            verify(&lines, target, &expected, &InVm, &mut &record, at + 61),
            Err(Reason::DpopIatInvalid)
        );
    }

    #[test]
    fn a_good_proof_passes() {
        assert_eq!(with_claims(|_| {}), Ok(()));
        assert_eq!(with_header(|_| {}), Ok(()));
    }

    #[test]
    fn exactly_one_dpop_header() {
        let (key, jwk) = client_key(1);
        let proof = sign(&key, &header(&jwk), &claims());
        let (settings, jkt) = (settings(None), jkt_of(&jwk));
        let expected = expected(&settings, &jkt);
        let target = POST;
        let record = replay::in_memory(8);
        let run = |lines: &[&[u8]]| verify(lines, target, &expected, &InVm, &mut &record, NOW);
        assert_eq!(run(&[]), Err(Reason::DpopProofMissing));
        assert_eq!(
            run(&[proof.as_bytes(), proof.as_bytes()]),
            Err(Reason::MultipleDpopProofs)
        );
        let joined = format!("{proof},{proof}");
        assert_eq!(run(&[joined.as_bytes()]), Err(Reason::MultipleDpopProofs));
    }

    #[test]
    fn malformed_or_oversized_proofs_are_refused() {
        let (key, jwk) = client_key(1);
        let good = sign(&key, &header(&jwk), &claims());
        let jkt = jkt_of(&jwk);
        let run = |proof: &str| check(proof, &jkt, &settings(None), false, NOW);
        let parts: Vec<&str> = good.split('.').collect();
        let repeated = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"typ":"dpop+jwt","alg":"ES256","alg":"ES256","jwk":{jwk}}}"#
        ));
        for bad in [
            "".to_string(),
            "a.b".to_string(),
            format!("{good}.x"),
            format!("{}..{}", parts[0], parts[2]),
            format!("{}.{}.", parts[0], parts[1]),
            format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", b64(&json!([1])), parts[1], parts[2]),
            format!("{repeated}.{}.{}", parts[1], parts[2]),
            sign(
                &key,
                &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["x"]}),
                &claims(),
            ),
        ] {
            assert_eq!(run(&bad), Err(Reason::DpopProofMalformed), "{bad}");
        }
        // A repeated claim is as ambiguous as a repeated header member.
        let claims = format!(
            r#"{{"jti":"a","jti":"b","htm":"POST","htu":"{URI}","iat":{NOW},"ath":"{}"}}"#,
            access_token_hash(TOKEN)
        );
        let input = format!("{}.{}", b64(&header(&jwk)), URL_SAFE_NO_PAD.encode(claims));
        let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
        let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        assert_eq!(run(&proof), Err(Reason::DpopProofMalformed));
        // 8 KiB at most, whatever it holds.
        let big = with_claims(|c| c["pad"] = json!("x".repeat(MAX_PROOF_BYTES)));
        assert_eq!(big, Err(Reason::DpopProofMalformed));
    }

    #[test]
    fn typ_must_be_dpop_jwt_exactly() {
        for typ in [
            json!("JWT"),
            json!("DPoP+JWT"),
            json!("at+jwt"),
            json!(1),
            Value::Null,
        ] {
            let result = with_header(|h| h["typ"] = typ.clone());
            assert_eq!(result, Err(Reason::DpopProofTypeInvalid), "{typ}");
        }
        assert_eq!(
            with_header(|h| {
                h.as_object_mut().unwrap().remove("typ");
            }),
            Err(Reason::DpopProofTypeInvalid)
        );
    }

    #[test]
    fn alg_must_be_an_allowed_asymmetric_algorithm() {
        for alg in ["none", "HS256", "ES512", "RS1", ""] {
            let result = with_header(|h| h["alg"] = json!(alg));
            assert_eq!(result, Err(Reason::DpopAlgorithmNotAllowed), "{alg}");
        }
        // Allowed by Tether, not by this configuration.
        let (key, jwk) = client_key(1);
        let only_eddsa = Settings::new(vec![Alg::EdDsa], 60, None, true);
        assert_eq!(
            check(
                &sign(&key, &header(&jwk), &claims()),
                &jkt_of(&jwk),
                &only_eddsa,
                false,
                NOW
            ),
            Err(Reason::DpopAlgorithmNotAllowed)
        );
    }

    #[test]
    fn jwk_must_be_a_usable_public_key_that_fits_alg() {
        let (_, jwk) = client_key(1);
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<Edit> = vec![
            Box::new(|h| {
                h.as_object_mut().unwrap().remove("jwk");
            }),
            Box::new(|h| h["jwk"] = json!("not an object")),
            // Private members: RFC 9449 §4.3 check 7.
            Box::new(|h| h["jwk"]["d"] = json!("AAAA")),
            Box::new(|h| h["jwk"]["p"] = json!("AAAA")),
            Box::new(|h| h["jwk"]["k"] = json!("AAAA")),
            // A P-256 key for ES384.
            Box::new(|h| h["alg"] = json!("ES384")),
            // A point off the curve.
            Box::new(|h| h["jwk"]["y"] = h["jwk"]["x"].clone()),
            Box::new(|h| h["jwk"]["crv"] = json!("P-521")),
            Box::new(|h| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"})),
            // An RSA key below 2048 bits.
            Box::new(|h| {
                h["alg"] = json!("RS256");
                h["jwk"] =
                    json!({"kty": "RSA", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])});
            }),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let result = with_header(|h| edit(h));
            assert_eq!(result, Err(Reason::DpopKeyInvalid), "edit {i}");
        }
        let _ = jwk;
    }

    #[test]
    fn signature_must_verify_with_the_proofs_key() {
        let (key, jwk) = client_key(1);
        let (other, _) = client_key(2);
        let forged = sign(&other, &header(&jwk), &claims());
        assert_eq!(
            check(&forged, &jkt_of(&jwk), &settings(None), false, NOW),
            Err(Reason::DpopSignatureInvalid)
        );
        // A signature over other claims.
        let good = sign(&key, &header(&jwk), &claims());
        let mut other_claims = claims();
        other_claims["jti"] = json!("j-2");
        let parts: Vec<&str> = good.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], b64(&other_claims), parts[2]);
        assert_eq!(
            check(&spliced, &jkt_of(&jwk), &settings(None), false, NOW),
            Err(Reason::DpopSignatureInvalid)
        );
    }

    #[test]
    fn jti_is_required_and_bounded() {
        for jti in [
            Value::Null,
            json!(""),
            json!(7),
            json!("x".repeat(MAX_JTI_BYTES + 1)),
        ] {
            let result = with_claims(|c| c["jti"] = jti.clone());
            assert_eq!(result, Err(Reason::DpopJtiInvalid));
        }
        assert_eq!(
            with_claims(|c| c["jti"] = json!("x".repeat(MAX_JTI_BYTES))),
            Ok(())
        );
    }

    #[test]
    fn htm_must_be_the_method() {
        for htm in [json!("GET"), json!("post"), Value::Null] {
            assert_eq!(
                with_claims(|c| c["htm"] = htm.clone()),
                Err(Reason::DpopMethodMismatch)
            );
        }
    }

    #[test]
    fn htu_must_be_the_uri_without_query_and_fragment() {
        for same in [
            "https://api.example/transfers?x=1",
            "HTTPS://API.EXAMPLE:443/transfers",
            "https://api.example/transfers#f",
        ] {
            assert_eq!(with_claims(|c| c["htu"] = json!(same)), Ok(()), "{same}");
        }
        for other in [
            "https://api.example/Transfers",
            "https://api.example/transfers/1",
            "http://api.example/transfers",
            "https://api.example:8443/transfers",
            "https://evil.example/transfers",
            "/transfers",
        ] {
            assert_eq!(
                with_claims(|c| c["htu"] = json!(other)),
                Err(Reason::DpopUriMismatch),
                "{other}"
            );
        }
    }

    #[test]
    fn iat_within_max_age_and_skew() {
        assert_eq!(with_claims(|c| c["iat"] = json!(NOW - 60)), Ok(()));
        assert_eq!(with_claims(|c| c["iat"] = json!(NOW + 30)), Ok(()));
        // RFC 7519 §2: a NumericDate may have a fraction.
        assert_eq!(with_claims(|c| c["iat"] = json!(NOW as f64 + 0.5)), Ok(()));
        for iat in [
            json!(NOW - 61),
            json!(NOW + 31),
            Value::Null,
            json!("1800000000"),
            json!(-1),
        ] {
            assert_eq!(
                with_claims(|c| c["iat"] = iat.clone()),
                Err(Reason::DpopIatInvalid),
                "{iat}"
            );
        }
    }

    #[test]
    fn ath_must_hash_the_presented_token() {
        for ath in [
            json!(access_token_hash("another token")),
            Value::Null,
            json!(""),
        ] {
            assert_eq!(
                with_claims(|c| c["ath"] = ath.clone()),
                Err(Reason::DpopAthMismatch)
            );
        }
    }

    #[test]
    fn proof_key_must_be_the_tokens_key() {
        let (key, jwk) = client_key(1);
        let (_, other) = client_key(2);
        let proof = sign(&key, &header(&jwk), &claims());
        assert_eq!(
            check(&proof, &jkt_of(&other), &settings(None), false, NOW),
            Err(Reason::DpopKeyMismatch)
        );
    }

    #[test]
    fn a_nonce_route_wants_a_current_nonce() {
        let (key, jwk) = client_key(1);
        let jkt = jkt_of(&jwk);
        let settings = settings(Some(nonces()));
        let run = |claims: &Value, now| {
            check(
                &sign(&key, &header(&jwk), claims),
                &jkt,
                &settings,
                true,
                now,
            )
        };
        assert_eq!(run(&claims(), NOW), Err(Reason::DpopNonceMissing));
        let mut with_nonce = claims();
        with_nonce["nonce"] = json!(nonces().mint(NOW));
        assert_eq!(run(&with_nonce, NOW), Ok(()));
        with_nonce["nonce"] = json!("made-up");
        assert_eq!(run(&with_nonce, NOW), Err(Reason::DpopNonceInvalid));
        // Another secret's nonce.
        with_nonce["nonce"] = json!(Nonces::new(vec![8; 32], 300).mint(NOW));
        assert_eq!(run(&with_nonce, NOW), Err(Reason::DpopNonceInvalid));
    }

    #[test]
    fn a_nonce_lives_its_window_and_the_next() {
        let n = nonces();
        let start = NOW - NOW % 300;
        let nonce = n.mint(start);
        assert_eq!(n.mint(start + 299), nonce);
        assert_ne!(n.mint(start + 300), nonce);
        assert!(n.accepts(&nonce, start, 0));
        assert!(n.accepts(&nonce, start + 599, 0));
        assert!(!n.accepts(&nonce, start + 600, 0));
        assert!(!n.accepts(&nonce, start - 1, 0));
        // A replica whose clock is up to the skew ahead gives it out already.
        assert!(n.accepts(&nonce, start - 30, 30));
        assert!(!n.accepts(&nonce, start - 31, 30));
        // A replica with the same secret and lifetime accepts it; one with another does not.
        assert!(Nonces::new(vec![9; 32], 300).accepts(&nonce, start + 10, 0));
        assert!(!Nonces::new(vec![7; 32], 300).accepts(&nonce, start + 10, 0));
        assert!(!n.accepts("", start, 0));
        assert!(!n.accepts("!!", start, 0));
    }

    #[test]
    fn a_forged_proof_does_not_use_up_the_jti() {
        let (key, jwk) = client_key(1);
        let (other, _) = client_key(2);
        let jkt = jkt_of(&jwk);
        let settings = settings(None);
        let expected = expected(&settings, &jkt);
        let target = POST;
        let record = replay::in_memory(8);
        let mut store = &record;
        let forged = sign(&other, &header(&jwk), &claims());
        let genuine = sign(&key, &header(&jwk), &claims());
        assert_eq!(
            verify(
                &[forged.as_bytes()],
                target,
                &expected,
                &InVm,
                &mut store,
                NOW
            ),
            Err(Reason::DpopSignatureInvalid)
        );
        assert_eq!(
            verify(
                &[genuine.as_bytes()],
                target,
                &expected,
                &InVm,
                &mut store,
                NOW
            ),
            Ok(())
        );
        // The same key and jti again, freshly signed (ECDSA signs anew each time): a replay.
        let resigned = sign(&key, &header(&jwk), &claims());
        assert_eq!(
            verify(
                &[resigned.as_bytes()],
                target,
                &expected,
                &InVm,
                &mut store,
                NOW
            ),
            Err(Reason::DpopProofReplayed)
        );
    }

    #[test]
    fn an_eddsa_proof_verifies() {
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([5; 32]));
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(*pair.pk)});
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        let input = format!("{}.{}", b64(&header), b64(&claims()));
        let signature = pair.sk.sign(input.as_bytes(), None);
        let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(*signature));
        assert_eq!(
            check(&proof, &jkt_of(&jwk), &settings(None), false, NOW),
            Ok(())
        );
    }

    #[test]
    fn debug_shows_no_claims() {
        let proof = Proof::parse(RFC9449_RESOURCE_PROOF.as_bytes(), &DEFAULT_ALGS).unwrap();
        let shown = format!("{proof:?}");
        assert!(shown.contains(RFC9449_JKT));
        assert!(!shown.contains("e1j3V_bKic8-LAEB"), "{shown}");
        assert!(!format!("{:?}", nonces()).contains("9, 9"));
    }
}
