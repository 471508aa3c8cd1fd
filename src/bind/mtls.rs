//! RFC 8705 §3: certificate-bound access tokens.
//!
//! The token carries `cnf["x5t#S256"]`, the base64url SHA-256 of the DER of the client
//! certificate it was issued to (§3.1). The resource server compares it with the
//! certificate of the mutual-TLS connection the token arrives on (§3): a token replayed
//! over any other connection fails. Envoy gives the digest of the verified leaf
//! certificate as lowercase hex (`connection.sha256_peer_certificate_digest`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::reject::Reason;

/// The `cnf` member of a certificate binding (RFC 8705 §3.1).
pub const CNF_MEMBER: &str = "x5t#S256";

/// The client certificate of the connection, as its SHA-256 digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    sha256: [u8; 32],
}

impl PeerCertificate {
    /// Reads Envoy's `sha256_peer_certificate_digest`: 64 hex digits.
    pub fn from_hex_digest(hex: &[u8]) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (byte, pair) in sha256.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = crate::percent::hex_byte(pair)?;
        }
        Some(PeerCertificate { sha256 })
    }

    /// The SHA-256 of the certificate's DER.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The certificate's thumbprint in the form of `x5t#S256`.
    pub fn thumbprint(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }
}

/// Parses `cnf["x5t#S256"]`: the unpadded base64url of a SHA-256 digest, so exactly 43
/// characters of the base64url alphabet (RFC 4648 §5).
pub fn parse_thumbprint(value: &Value) -> Result<String, Reason> {
    let text = value.as_str().ok_or(Reason::CnfMalformed)?;
    let is_b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if text.len() != 43 || !text.bytes().all(is_b64url) {
        return Err(Reason::CnfMalformed);
    }
    Ok(text.to_string())
}

/// Checks the binding of a certificate-bound token to the connection's certificate: the
/// token's `x5t#S256` must equal the base64url SHA-256 of the connection's certificate.
/// The comparison is constant-time, so timing reveals nothing of the expected value.
pub fn prove(bound_to: &str, peer: Option<&PeerCertificate>) -> Result<(), Reason> {
    let peer = peer.ok_or(Reason::ClientCertificateMissing)?;
    // Encoded on the stack: this runs on every request of a bound token (issue 13).
    let mut thumbprint = [0u8; 43];
    let written = URL_SAFE_NO_PAD
        .encode_slice(peer.sha256, &mut thumbprint)
        .unwrap_or(0);
    if bool::from(thumbprint[..written].ct_eq(bound_to.as_bytes())) {
        Ok(())
    } else {
        Err(Reason::CertificateMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest, Sha256};

    /// RFC 8705 §3.1 example value of `x5t#S256`.
    const RFC8705_X5T: &str = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2";

    #[test]
    fn thumbprint_of_the_connection_certificate_proves_the_binding() {
        let der = b"DER of alice's certificate";
        let hex: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let peer = PeerCertificate::from_hex_digest(hex.as_bytes()).unwrap();
        let bound = parse_thumbprint(&json!(URL_SAFE_NO_PAD.encode(Sha256::digest(der)))).unwrap();
        assert_eq!(prove(&bound, Some(&peer)), Ok(()));
    }

    #[test]
    fn rfc8705_example_value_has_the_thumbprint_form() {
        assert_eq!(parse_thumbprint(&json!(RFC8705_X5T)).unwrap(), RFC8705_X5T);
    }

    #[test]
    fn envoy_digest_of_a_der_certificate_matches_its_x5t() {
        // Envoy reports lowercase hex of SHA-256(leaf DER); x5t#S256 is its base64url.
        let der = b"any DER bytes of a leaf certificate";
        let hex: String = Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let peer = PeerCertificate::from_hex_digest(hex.as_bytes()).unwrap();
        assert_eq!(
            peer.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(der))
        );
        assert_eq!(
            PeerCertificate::from_hex_digest(hex.to_uppercase().as_bytes()),
            Some(peer)
        );
    }

    #[test]
    fn another_certificate_is_a_mismatch() {
        let bound = parse_thumbprint(&json!(RFC8705_X5T)).unwrap();
        let other = PeerCertificate::from_hex_digest(&[b'0'; 64]).unwrap();
        assert_eq!(
            prove(&bound, Some(&other)),
            Err(Reason::CertificateMismatch)
        );
    }

    #[test]
    fn no_client_certificate_is_refused() {
        let bound = parse_thumbprint(&json!(RFC8705_X5T)).unwrap();
        assert_eq!(prove(&bound, None), Err(Reason::ClientCertificateMissing));
    }

    #[test]
    fn malformed_thumbprints_are_refused() {
        for bad in [
            json!(""),
            json!(format!("{RFC8705_X5T}=")),
            json!(&RFC8705_X5T[..42]),
            json!(RFC8705_X5T.replace('_', "/")),
            json!(format!("{}+", &RFC8705_X5T[..42])),
            json!(1),
            json!({"x5t#S256": RFC8705_X5T}),
        ] {
            assert_eq!(parse_thumbprint(&bad), Err(Reason::CnfMalformed), "{bad}");
        }
    }

    #[test]
    fn malformed_envoy_digests_are_no_certificate() {
        assert_eq!(PeerCertificate::from_hex_digest(b""), None);
        assert_eq!(PeerCertificate::from_hex_digest(&[b'z'; 64]), None);
        assert_eq!(PeerCertificate::from_hex_digest(&[b'0'; 63]), None);
    }
}
