//! Proof of possession: what a token's `cnf` claim (RFC 7800) binds it to, and whether the
//! request proves it.
//!
//! Every confirmation method a token names must be proved; a method Tether cannot check
//! on this request makes the token unusable rather than a plain bearer token.

pub mod certificate;
pub mod digest;
pub mod dn;
pub mod dpop;
pub mod httpsig;
pub mod htu;
pub mod identity;
pub mod jose;
pub mod jws;
pub mod mtls;
pub mod peer;
pub mod xfcc;

use serde_json::Value;

use crate::jwk::{self, VerificationKey};
use crate::reject::Reason;

/// The confirmation methods of a verified token's `cnf` claim.
#[derive(Debug, Default)]
pub struct Confirmation {
    /// RFC 8705 §3.1: SHA-256 of the DER of the client certificate the token is bound to.
    pub x5t_s256: Option<String>,
    /// RFC 7800 §3.2: the public key the token is bound to. Proved by a request signature
    /// made with it ([`jws`]); one entry per algorithm the key may use.
    pub jwk: Option<Vec<VerificationKey>>,
    /// The RFC 7638 thumbprint of `jwk`: the `keyid` an RFC 9421 signature made with it names.
    pub jwk_thumbprint: Option<String>,
    /// RFC 9449 §6.1: the RFC 7638 thumbprint of the key the token is bound to. Proved by a
    /// DPoP proof made with it ([`dpop`]), the token presented with the `DPoP` scheme.
    pub jkt: Option<String>,
}

impl Confirmation {
    /// Reads the `cnf` claim. No claim, or an empty object, means an unbound token. A
    /// member Tether does not know how to prove (`jku`, `kid`, ...) is refused:
    /// accepting the token without its proof would turn a bound token into a bearer one.
    pub fn from_claim(cnf: Option<&Value>) -> Result<Self, Reason> {
        let Some(cnf) = cnf else {
            return Ok(Confirmation::default());
        };
        let members = cnf.as_object().ok_or(Reason::CnfMalformed)?;
        let mut confirmation = Confirmation::default();
        for (name, value) in members {
            match name.as_str() {
                mtls::CNF_MEMBER => confirmation.x5t_s256 = Some(mtls::parse_thumbprint(value)?),
                "jwk" => {
                    confirmation.jwk =
                        Some(jwk::parse_one(value).map_err(|_| Reason::CnfMalformed)?);
                    confirmation.jwk_thumbprint = value
                        .as_object()
                        .and_then(|object| jwk::thumbprint(object).ok());
                }
                dpop::CNF_MEMBER => confirmation.jkt = Some(dpop::parse_jkt(value)?),
                _ => return Err(Reason::BindingUnsupported),
            }
        }
        Ok(confirmation)
    }

    /// Whether the token names any binding at all.
    pub fn is_bound(&self) -> bool {
        self.x5t_s256.is_some() || self.jwk.is_some() || self.jkt.is_some()
    }

    /// Proves the certificate binding, if the token has one. `peer` is asked for the
    /// connection's certificate only then. (A key binding is proved by the request
    /// signature or the DPoP proof, later.)
    pub fn prove_certificate(
        &self,
        peer: impl FnOnce() -> Option<mtls::PeerCertificate>,
    ) -> Result<(), Reason> {
        if let Some(x5t) = &self.x5t_s256 {
            mtls::prove(x5t, peer().as_ref())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_or_empty_cnf_is_unbound() {
        assert!(!Confirmation::from_claim(None).unwrap().is_bound());
        assert!(!Confirmation::from_claim(Some(&json!({})))
            .unwrap()
            .is_bound());
    }

    #[test]
    fn certificate_thumbprint_is_read() {
        let cnf = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
        assert!(Confirmation::from_claim(Some(&cnf))
            .unwrap()
            .x5t_s256
            .is_some());
    }

    /// RFC 9449 §6.1's example `cnf`.
    #[test]
    fn dpop_key_thumbprint_is_read() {
        let cnf = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
        let confirmation = Confirmation::from_claim(Some(&cnf)).unwrap();
        assert_eq!(
            confirmation.jkt.as_deref(),
            Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
        assert!(confirmation.is_bound());
        for bad in [
            json!({"jkt": "short"}),
            json!({"jkt": 7}),
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4="}),
        ] {
            assert_eq!(
                Confirmation::from_claim(Some(&bad)).unwrap_err(),
                Reason::CnfMalformed
            );
        }
    }

    #[test]
    fn cnf_that_is_not_an_object_is_malformed() {
        for cnf in [json!("x"), json!(["x5t#S256"]), json!(null), json!(1)] {
            assert_eq!(
                Confirmation::from_claim(Some(&cnf)).unwrap_err(),
                Reason::CnfMalformed
            );
        }
    }

    #[test]
    fn unknown_confirmation_method_is_refused() {
        let cnf = json!({"jku": "https://client.example.com/jwks"});
        assert_eq!(
            Confirmation::from_claim(Some(&cnf)).unwrap_err(),
            Reason::BindingUnsupported
        );
        let both = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2", "jwk": {}});
        assert_eq!(
            Confirmation::from_claim(Some(&both)).unwrap_err(),
            Reason::CnfMalformed
        );
    }
}
