//! The issuer's keys and the access tokens the bench sends.

use std::path::Path;

use jwt_simple::prelude::{
    Claims, ECDSAP256KeyPairLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike, HeaderOptions,
    RS256KeyPair, RSAKeyPairLike,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::support::jwt::{Alg, SigningKey};
use crate::support::openssl;
use crate::support::pki::ClientCert;
use crate::{fail, AUDIENCE, ISSUER};

/// Tether's default `max_token_lifetime_seconds` is 900: stay under it, with room for skew.
pub const TOKEN_LIFETIME_SECONDS: u64 = 840;

/// The issuer's three signing keys: made by `openssl genpkey` (whose public JWKs the harness
/// computes), then loaded into jwt-simple, which signs fast enough for 100k tokens.
pub struct Keys {
    pub es256: SigningKey,
    pub rs256: SigningKey,
    pub eddsa: SigningKey,
    pub es256_signer: ES256KeyPair,
    pub rs256_signer: RS256KeyPair,
    pub eddsa_signer: Ed25519KeyPair,
}

#[derive(Serialize, Deserialize)]
pub struct BoundClaims {
    pub client_id: String,
    pub cnf: Confirmation,
}

/// RFC 8705 §3.1, and for the DPoP rows also RFC 9449 §6.1.
#[derive(Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
    /// The RFC 7638 thumbprint of the client's DPoP key (the DPoP rows' tokens only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub jkt: Option<String>,
}

impl Keys {
    pub fn generate(dir: &Path) -> Keys {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("create keys dir: {e}")));
        let make = |alg: Alg, kid: &str, genpkey: &[&str]| -> (SigningKey, String) {
            let pem = dir.join(format!("{kid}.key.pem"));
            let mut args = vec!["genpkey"];
            args.extend_from_slice(genpkey);
            args.extend_from_slice(&["-out", pem.to_str().expect("UTF-8 path")]);
            openssl(&args);
            let text = std::fs::read_to_string(&pem).expect("key just written");
            (SigningKey::from_pem_file(&pem, alg, kid, true), text)
        };
        let (es256, es_pem) = make(
            Alg::Es256,
            "es256-1",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let (rs256, rs_pem) = make(
            Alg::Rs256,
            "rs256-1",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let (eddsa, ed_pem) = make(Alg::EdDsa, "eddsa-1", &["-algorithm", "ED25519"]);
        Keys {
            es256_signer: ES256KeyPair::from_pem(&es_pem)
                .expect("jwt-simple reads the ES256 key")
                .with_key_id(&es256.kid),
            rs256_signer: RS256KeyPair::from_pem(&rs_pem)
                .expect("jwt-simple reads the RS256 key")
                .with_key_id(&rs256.kid),
            eddsa_signer: Ed25519KeyPair::from_pem(&ed_pem)
                .expect("jwt-simple reads the Ed25519 key")
                .with_key_id(&eddsa.kid),
            es256,
            rs256,
            eddsa,
        }
    }

    /// The public JWKS, the same for Tether and `jwt_authn`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.es256.jwk(), self.rs256.jwk(), self.eddsa.jwk()]})
    }

    /// An access token signed with `alg`, bound to `client`, unique by `jti`.
    pub fn token(&self, alg: Alg, client: &ClientCert, jti: &str) -> String {
        self.token_for(alg, client, jti, "bench-client")
    }

    /// The same, for the OAuth client `client_id` (the signed-request rows name a registered
    /// client, whose keys verify the request signatures).
    pub fn token_for(&self, alg: Alg, client: &ClientCert, jti: &str, client_id: &str) -> String {
        self.mint(alg, client, None, jti, client_id)
    }

    /// A DPoP-bound token for the DPoP rows: `cnf` holds both the certificate thumbprint of
    /// `client` (`x5t#S256`, as every bench token) and `jkt`, the RFC 7638 thumbprint of the
    /// key that signs the proofs. Tether then checks on a DPoP request everything it checks on
    /// an `mtls` request (the cached token, the certificate) and the proof besides.
    pub fn dpop_token(&self, alg: Alg, client: &ClientCert, jkt: &str, jti: &str) -> String {
        self.mint(alg, client, Some(jkt.to_string()), jti, "bench-client")
    }

    fn mint(
        &self,
        alg: Alg,
        client: &ClientCert,
        jkt: Option<String>,
        jti: &str,
        client_id: &str,
    ) -> String {
        let custom = BoundClaims {
            client_id: client_id.into(),
            cnf: Confirmation {
                x5t_s256: client.x5t_s256(),
                jkt,
            },
        };
        let claims = Claims::with_custom_claims(
            custom,
            jwt_simple::prelude::Duration::from_secs(TOKEN_LIFETIME_SECONDS),
        )
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
        .with_subject("bench-client")
        .with_jwt_id(jti);
        // RFC 9068 §2.1.
        let options = HeaderOptions {
            signature_type: Some("at+jwt".into()),
            ..Default::default()
        };
        let signed = match alg {
            Alg::Es256 => self.es256_signer.sign_with_options(claims, &options),
            Alg::Rs256 => self.rs256_signer.sign_with_options(claims, &options),
            Alg::EdDsa => self.eddsa_signer.sign_with_options(claims, &options),
            other => fail(&format!("the bench has no {} key", other.name())),
        };
        signed.unwrap_or_else(|e| fail(&format!("signing a {} token: {e}", alg.name())))
    }
}

/// A `jti` unique in this run.
pub fn unique_jti(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{}-{label}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}
