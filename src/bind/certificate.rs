//! The facts of a client certificate read from its DER (RFC 5280), for client identity
//! (issue 11): the subject and the `dNSName`, `uniformResourceIdentifier`, `iPAddress` and
//! `rfc822Name` subject alternative names, every one of them (Envoy's connection attributes
//! give only the first URI and DNS SAN).
//!
//! Parsed by RustCrypto's `x509-cert`; nothing here checks a signature or a chain: the
//! certificate was validated by the TLS layer that accepted it, and the caller only reads a
//! DER whose SHA-256 is the digest that layer reported. An XFCC `Cert` (URL-encoded PEM) is
//! read with [`der_from_url_encoded_pem`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::bind::dn::DistinguishedName;
use crate::bind::identity::CertificateFacts;

/// The largest certificate read (DER).
pub const MAX_DER_BYTES: usize = 16 * 1024;
/// The most SANs read from one certificate.
pub const MAX_SANS: usize = 256;

/// Why a certificate was not read. No variant carries any of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateError {
    /// Larger than [`MAX_DER_BYTES`], or more than [`MAX_SANS`] SANs.
    TooLarge,
    /// Not a PEM `CERTIFICATE` block, or not DER `Certificate`, or a SAN extension that does
    /// not read, or an `iPAddress` SAN of neither 4 nor 16 bytes.
    Malformed,
}

impl std::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertificateError::TooLarge => "client certificate is too large",
            CertificateError::Malformed => "client certificate is malformed",
        })
    }
}

impl std::error::Error for CertificateError {}

/// The subject and SANs of the certificate `der`.
pub fn facts_from_der(der: &[u8]) -> Result<CertificateFacts, CertificateError> {
    if der.len() > MAX_DER_BYTES {
        return Err(CertificateError::TooLarge);
    }
    let certificate = Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
    let tbs = &certificate.tbs_certificate;
    let mut rdns = Vec::with_capacity(tbs.subject.0.len());
    for rdn in &tbs.subject.0 {
        let mut avas = Vec::new();
        for ava in rdn.0.iter() {
            let ber = ava
                .value
                .to_der()
                .map_err(|_| CertificateError::Malformed)?;
            avas.push((ava.oid.to_string(), ber));
        }
        rdns.push(avas);
    }
    let mut facts = CertificateFacts {
        // A subject too large to compare is kept as no subject: it never matches.
        subject: DistinguishedName::from_der_rdns(&rdns).ok(),
        ..CertificateFacts::default()
    };
    let san_oid = SubjectAltName::OID;
    for extension in tbs.extensions.iter().flatten() {
        if extension.extn_id != san_oid {
            continue;
        }
        let names = SubjectAltName::from_der(extension.extn_value.as_bytes())
            .map_err(|_| CertificateError::Malformed)?;
        if names.0.len() > MAX_SANS {
            return Err(CertificateError::TooLarge);
        }
        for name in names.0 {
            match name {
                GeneralName::DnsName(dns) => facts.dns.push(dns.to_string()),
                GeneralName::UniformResourceIdentifier(uri) => facts.uri.push(uri.to_string()),
                GeneralName::Rfc822Name(email) => facts.email.push(email.to_string()),
                GeneralName::IpAddress(octets) => facts.ip.push(ip(octets.as_bytes())?),
                _ => {}
            }
        }
    }
    Ok(facts)
}

fn ip(octets: &[u8]) -> Result<IpAddr, CertificateError> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = <[u8; 16]>::try_from(octets).map_err(|_| CertificateError::Malformed)?;
    Ok(IpAddr::V6(Ipv6Addr::from(v6)))
}

/// How many certificates' facts a VM keeps ([`FactsCache`]).
pub const FACTS_CACHE_ENTRIES: usize = 256;

/// The facts of certificates already read, by the SHA-256 of their DER, so that a client's
/// certificate is parsed once per VM rather than on every request. At most `capacity`
/// entries; the oldest read is forgotten first.
pub struct FactsCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Rc<CertificateFacts>>,
    order: VecDeque<[u8; 32]>,
}

impl FactsCache {
    pub fn new(capacity: usize) -> FactsCache {
        FactsCache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, sha256: &[u8; 32]) -> Option<Rc<CertificateFacts>> {
        self.entries.get(sha256).cloned()
    }

    pub fn insert(&mut self, sha256: [u8; 32], facts: Rc<CertificateFacts>) {
        if self.capacity == 0 || self.entries.contains_key(&sha256) {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        self.entries.insert(sha256, facts);
        self.order.push_back(sha256);
    }
}

/// The DER of an XFCC `Cert` value: URL-encoded (percent-encoded) PEM of one `CERTIFICATE`
/// (RFC 7468 §5).
pub fn der_from_url_encoded_pem(value: &str) -> Result<Vec<u8>, CertificateError> {
    if value.len() > MAX_DER_BYTES * 3 {
        return Err(CertificateError::TooLarge);
    }
    let pem = crate::percent::decode_strict(value.as_bytes()).ok_or(CertificateError::Malformed)?;
    let pem = std::str::from_utf8(&pem).map_err(|_| CertificateError::Malformed)?;
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN CERTIFICATE-----")
        .and_then(|rest| rest.strip_suffix("-----END CERTIFICATE-----"))
        .ok_or(CertificateError::Malformed)?;
    let base64: String = body.split_ascii_whitespace().collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| CertificateError::Malformed)?;
    if der.len() > MAX_DER_BYTES {
        return Err(CertificateError::TooLarge);
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_cache_is_bounded_and_forgets_the_oldest_first() {
        let facts = |uri: &str| {
            Rc::new(CertificateFacts {
                uri: vec![uri.to_string()],
                ..CertificateFacts::default()
            })
        };
        let mut cache = FactsCache::new(2);
        cache.insert([1; 32], facts("a"));
        cache.insert([2; 32], facts("b"));
        // Already known: kept as first read.
        cache.insert([1; 32], facts("other"));
        assert_eq!(cache.get(&[1; 32]), Some(facts("a")));
        cache.insert([3; 32], facts("c"));
        assert_eq!(cache.get(&[1; 32]), None);
        assert_eq!(cache.get(&[2; 32]), Some(facts("b")));
        assert_eq!(cache.get(&[3; 32]), Some(facts("c")));
        assert_eq!(cache.entries.len(), 2);
        let mut off = FactsCache::new(0);
        off.insert([1; 32], facts("a"));
        assert_eq!(off.get(&[1; 32]), None);
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(
            facts_from_der(b"not a certificate"),
            Err(CertificateError::Malformed)
        );
        assert_eq!(
            facts_from_der(&vec![0x30; MAX_DER_BYTES + 1]),
            Err(CertificateError::TooLarge)
        );
        for value in [
            "",
            "-----BEGIN%20CERTIFICATE-----%0AMIIB",
            "-----BEGIN%20CERTIFICATE-----%0A%%%0A-----END%20CERTIFICATE-----",
            "-----BEGIN%20CERTIFICATE-----%0A%G1%0A-----END%20CERTIFICATE-----",
            "-----BEGIN%20PRIVATE%20KEY-----%0AAAAA%0A-----END%20PRIVATE%20KEY-----",
        ] {
            assert_eq!(
                der_from_url_encoded_pem(value),
                Err(CertificateError::Malformed),
                "{value:?}"
            );
        }
        assert_eq!(
            der_from_url_encoded_pem(
                "-----BEGIN%20CERTIFICATE-----%0AAAECAw%3D%3D%0A-----END%20CERTIFICATE-----%0A"
            ),
            Ok(vec![0, 1, 2, 3])
        );
        assert_eq!(ip(&[1, 2, 3]), Err(CertificateError::Malformed));
    }
}
