//! Client certificate facts (issue 11) read from certificates OpenSSL makes: several SANs of
//! every kind, IPv6, a SAN-less certificate, subjects with escaped characters and a
//! multi-valued RDN. The subject Tether reads from the DER is compared with the RFC 2253
//! string OpenSSL prints for it (`-nameopt RFC2253`), read by Tether's RFC 4514 reader: two
//! independent routes to one name.

mod support;

use std::net::IpAddr;
use std::path::Path;

use tether::bind::certificate::{der_from_url_encoded_pem, facts_from_der};
use tether::bind::dn::DistinguishedName;
use tether::bind::identity::{CertificateFacts, Identity};

use support::openssl;
use support::scratch::ScratchDir;

/// A self-signed P-256 certificate with `subject` (OpenSSL's `/type=value` form, multi-valued
/// RDNs with `+`) and `sans` (`subjectAltName` syntax, or none); its DER and PEM, and the
/// subject as OpenSSL prints it in RFC 2253 form.
fn certificate(
    dir: &Path,
    name: &str,
    subject: &str,
    sans: Option<&str>,
) -> (Vec<u8>, String, String) {
    let key = dir.join(format!("{name}.key"));
    let pem = dir.join(format!("{name}.pem"));
    let (key, pem) = (key.to_str().expect("path"), pem.to_str().expect("path"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        pem,
        "-days",
        "1",
        "-multivalue-rdn",
        "-subj",
        subject,
    ];
    let san;
    if let Some(sans) = sans {
        san = format!("subjectAltName={sans}");
        args.extend(["-addext", &san]);
    }
    openssl(&args);
    let der = openssl(&["x509", "-in", pem, "-outform", "DER"]);
    let printed = String::from_utf8(openssl(&[
        "x509", "-in", pem, "-noout", "-subject", "-nameopt", "RFC2253",
    ]))
    .expect("UTF-8");
    let rfc2253 = printed
        .trim()
        .strip_prefix("subject=")
        .expect("subject=")
        .trim()
        .to_string();
    (der, std::fs::read_to_string(pem).expect("PEM"), rfc2253)
}

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses.iter().map(|a| a.parse().expect("IP")).collect()
}

#[test]
fn every_san_of_every_kind_is_read() {
    let dir = ScratchDir::new("certificates");
    let sans = "DNS:tpp.example.com,DNS:api.tpp.example.com,URI:spiffe://mesh.local/ns/tpp/sa/client,\
                URI:https://tpp.example.com/id,IP:10.1.2.3,IP:2001:db8::7,email:ops@tpp.example.com";
    let (der, _, rfc2253) = certificate(
        dir.path(),
        "many",
        "/C=GB/O=Example Bank/CN=tpp-1",
        Some(sans),
    );
    let facts = facts_from_der(&der).expect("facts");
    assert_eq!(facts.dns, ["tpp.example.com", "api.tpp.example.com"]);
    assert_eq!(
        facts.uri,
        [
            "spiffe://mesh.local/ns/tpp/sa/client",
            "https://tpp.example.com/id"
        ]
    );
    assert_eq!(facts.ip, ips(&["10.1.2.3", "2001:db8::7"]));
    assert_eq!(facts.email, ["ops@tpp.example.com"]);
    assert_eq!(rfc2253, "CN=tpp-1,O=Example Bank,C=GB");
    let subject = DistinguishedName::parse(&rfc2253).expect("OpenSSL's RFC 2253 subject");
    assert_eq!(facts.subject, Some(subject));
    // The second SAN of each kind, which Envoy's connection attributes do not give.
    for (name, value) in [
        ("tls_client_auth_san_dns", "api.tpp.example.com"),
        ("tls_client_auth_san_uri", "https://tpp.example.com/id"),
        ("tls_client_auth_san_ip", "2001:db8:0::7"),
        ("tls_client_auth_san_email", "ops@tpp.example.com"),
        (
            "tls_client_auth_subject_dn",
            "cn=TPP-1, o=example bank, c=GB",
        ),
    ] {
        let identity = Identity::from_metadata(name, value).expect("identity");
        assert!(identity.matches(&facts), "{name} {value}");
    }
}

#[test]
fn a_certificate_without_sans_has_a_subject_only() {
    let dir = ScratchDir::new("certificates-bare");
    let (der, _, _) = certificate(dir.path(), "bare", "/CN=bare-client", None);
    let facts = facts_from_der(&der).expect("facts");
    assert_eq!(
        facts,
        CertificateFacts {
            subject: Some(DistinguishedName::parse("CN=bare-client").expect("DN")),
            ..CertificateFacts::default()
        }
    );
    let dns = Identity::from_metadata("tls_client_auth_san_dns", "bare-client").expect("id");
    assert!(!dns.matches(&facts), "a CN is not a dNSName SAN");
}

/// RFC 4514 §2.4's escapes (`,` `+` `"` `\` `<` `>` `;`, a leading `#` and space) and a
/// multi-valued RDN, in a real certificate: OpenSSL's RFC 2253 string and Tether's reading of
/// the DER name one and the same name, and so does the string an operator writes by hand.
#[test]
fn escaped_characters_and_multi_valued_rdns_read_the_same_both_ways() {
    let dir = ScratchDir::new("certificates-escaped");
    let subject = "/C=GB/O=Example\\, Bank \"North\"/OU=#1 <eu>;a\\\\b/CN=tpp-2+UID=42";
    let (der, pem, rfc2253) = certificate(dir.path(), "escaped", subject, Some("DNS:x.example"));
    let facts = facts_from_der(&der).expect("facts");
    let printed = DistinguishedName::parse(&rfc2253).unwrap_or_else(|e| panic!("{rfc2253:?}: {e}"));
    assert_eq!(facts.subject.as_ref(), Some(&printed), "{rfc2253}");
    let by_hand = DistinguishedName::parse(
        "UID=42+CN=tpp-2, OU=\\#1 \\<eu\\>\\;a\\\\b, O=Example\\, Bank \\\"North\\\", C=GB",
    )
    .expect("DN by hand");
    assert_eq!(printed, by_hand);
    assert_eq!(printed.len(), 4);
    // The same certificate as an XFCC `Cert` (URL-encoded PEM, as Envoy writes it).
    let encoded: String = pem
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    assert_eq!(der_from_url_encoded_pem(&encoded), Ok(der));
}

/// A `Cert` in XFCC (URL-encoded PEM, as Envoy writes it) names the connection's certificate
/// in full only when its SHA-256 is the connection's digest; its facts are then remembered by
/// that digest, and the certificate is not parsed again.
#[test]
fn a_forwarded_cert_is_read_once_and_only_for_its_own_digest() {
    use std::rc::Rc;
    use tether::bind::certificate::FactsCache;
    use tether::bind::mtls::PeerCertificate;
    use tether::bind::peer::{client_certificate, Peer, PeerNames, PeerSource, Reported};

    /// A connection that remembers facts in a VM's cache, counting what it parses.
    struct Remembering {
        reported: Reported,
        cache: FactsCache,
        remembered: usize,
    }

    impl Peer for Remembering {
        fn digest(&mut self) -> Option<PeerCertificate> {
            self.reported.digest()
        }
        fn names(&mut self) -> PeerNames {
            self.reported.names()
        }
        fn address(&mut self) -> Option<IpAddr> {
            self.reported.address()
        }
        fn remembered(&mut self, digest: &PeerCertificate) -> Option<Rc<CertificateFacts>> {
            self.cache.get(digest.sha256())
        }
        fn remember(&mut self, digest: &PeerCertificate, facts: &Rc<CertificateFacts>) {
            self.remembered += 1;
            self.cache.insert(*digest.sha256(), Rc::clone(facts));
        }
    }

    let dir = ScratchDir::new("certificates-xfcc");
    let sans = "URI:spiffe://mesh.local/ns/tpp/sa/client,URI:https://tpp.example.com/id";
    let (der, pem, _) = certificate(dir.path(), "tpp", "/CN=tpp", Some(sans));
    let (_, other_pem, _) = certificate(dir.path(), "other", "/CN=other", None);
    let hex = |der: &[u8]| -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let encode = |pem: &str| -> String {
        pem.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let digest = PeerCertificate::from_hex_digest(hex(&der).as_bytes()).expect("digest");
    let mut peer = Remembering {
        reported: Reported::with(Some(digest)),
        cache: FactsCache::new(8),
        remembered: 0,
    };
    let second = Identity::from_metadata("tls_client_auth_san_uri", "https://tpp.example.com/id")
        .expect("identity");
    // Someone else's Cert, even under this connection's Hash, tells nothing.
    let wrong = format!("Hash={};Cert=\"{}\"", hex(&der), encode(&other_pem));
    let lines = [wrong.as_bytes()];
    let client = client_certificate(&PeerSource::Connection, &mut peer, &lines).expect("client");
    assert!(!second.matches(&client.facts(&mut peer, &lines).expect("facts")));
    assert_eq!(peer.remembered, 0);
    // The connection's own Cert tells every SAN, once.
    let right = format!("Hash={};Cert=\"{}\"", hex(&der), encode(&pem));
    let lines = [right.as_bytes()];
    let facts = client.facts(&mut peer, &lines).expect("facts");
    assert!(second.matches(&facts));
    assert_eq!(peer.remembered, 1);
    // Remembered: a later request without the header still has them, and nothing is parsed.
    assert!(second.matches(&client.facts(&mut peer, &[]).expect("facts")));
    assert_eq!(peer.remembered, 1);
}
