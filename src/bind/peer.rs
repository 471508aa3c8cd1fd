//! Which certificate is the client's (issue 11): the connection's own, or the one a trusted
//! edge proxy forwarded in `x-forwarded-client-cert` (XFCC) after it ended the client's TLS.
//!
//! `peer_certificate.source`:
//! - `connection` (the default): the client certificate is the connection's. XFCC is not
//!   trusted; it may only *describe* the connection's certificate: an element whose `Cert`
//!   hashes to the connection's own digest (Envoy's `SANITIZE_SET` with
//!   `set_current_client_cert_details.cert` writes one) gives every SAN of it. Without one,
//!   the names are Envoy's connection attributes: the subject and the first URI and DNS SAN.
//! - `xfcc`: when the connection's own peer certificate is a trusted peer (by its first URI
//!   or DNS SAN, as Envoy reports them), the client certificate is the one the client's XFCC
//!   element describes ([`xfcc::client_element`]): its `Hash` for `x5t#S256`, its `Cert` (or
//!   else `Subject`, `URI` and `DNS`) for identity. No element, or one without `Hash`: the
//!   client had no certificate; the edge's own certificate never stands in for it. From any
//!   other peer, XFCC is never read: it is [`Forwarded::Untrusted`], and the connection's
//!   own certificate is the client's, so that direct mesh clients keep working.
//!
//! Pure: what Envoy reports of the connection comes through [`Peer`], read when first asked.

use std::net::IpAddr;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::bind::certificate;
use crate::bind::dn::DistinguishedName;
use crate::bind::identity::CertificateFacts;
use crate::bind::mtls::PeerCertificate;
use crate::bind::xfcc::{self, Element};
use crate::reject::Reason;

/// Where the client certificate is read from (`peer_certificate`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerSource {
    #[default]
    Connection,
    Xfcc {
        trusted_peers: Vec<TrustedPeer>,
    },
}

/// An edge proxy whose XFCC is trusted, named by its certificate's first SAN of a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustedPeer {
    /// `san_uri`: byte for byte (a SPIFFE ID in a mesh).
    SanUri(String),
    /// `san_dns`: ASCII case-insensitively, never as a wildcard.
    SanDns(String),
}

/// What Envoy reports of the connection's peer certificate (its attributes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerNames {
    /// `connection.subject_peer_certificate`: the subject in RFC 2253 form.
    pub subject: Option<String>,
    /// `connection.uri_san_peer_certificate`: the first URI SAN.
    pub uri: Option<String>,
    /// `connection.dns_san_peer_certificate`: the first DNS SAN.
    pub dns: Option<String>,
}

/// The connection, as Envoy reports it. Each is read when first asked.
pub trait Peer {
    /// The SHA-256 of the peer's verified certificate; `None` without one.
    fn digest(&mut self) -> Option<PeerCertificate>;
    /// The names Envoy reports of that certificate.
    fn names(&mut self) -> PeerNames;
    /// The peer's address (never a forwarded header).
    fn address(&mut self) -> Option<IpAddr>;
    /// The facts of the certificate of `digest`, if they were read from it before (a VM's
    /// [`certificate::FactsCache`]): a certificate is parsed once, not on every request.
    fn remembered(&mut self, _digest: &PeerCertificate) -> Option<Rc<CertificateFacts>> {
        None
    }
    /// Keeps the facts read from the certificate of `digest`.
    fn remember(&mut self, _digest: &PeerCertificate, _facts: &Rc<CertificateFacts>) {}
}

/// The filter state key where Envoy's `set_filter_state` HTTP filter puts the connection's
/// own peer address (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`) for Tether.
pub const PEER_ADDRESS_STATE: &str = "tether.peer_address";

/// The connection's own peer address, for `source_cidrs`: never one a forwarded header gave.
///
/// `direct` is the [`PEER_ADDRESS_STATE`] filter state, which always holds the connection's
/// address. Without it, Envoy's `source.address` (read by `source`, only when it is used) is
/// the connection's address only while no `x-forwarded-for` came with the request: with
/// `use_remote_address: false` (the default) Envoy takes the address from that header, which
/// anyone can write. So with the header and without the filter state, the address is unknown,
/// and no network matches.
pub fn peer_address(
    direct: Option<&[u8]>,
    forwarded_for: bool,
    source: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<IpAddr> {
    let read = |text: &[u8]| {
        let text = std::str::from_utf8(text).ok()?;
        // `ip:port`, `[v6]:port`, or an address alone.
        text.parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| text.parse())
            .ok()
    };
    match direct {
        Some(direct) => read(direct),
        None if forwarded_for => None,
        None => read(&source()?),
    }
}

/// A connection whose facts are known already (tests, and any caller that read them).
#[derive(Clone, Debug, Default)]
pub struct Reported {
    pub digest: Option<PeerCertificate>,
    pub names: PeerNames,
    pub address: Option<IpAddr>,
}

impl Reported {
    /// A connection whose client certificate is `digest`, nothing else known.
    pub fn with(digest: Option<PeerCertificate>) -> Reported {
        Reported {
            digest,
            ..Reported::default()
        }
    }
}

impl Peer for Reported {
    fn digest(&mut self) -> Option<PeerCertificate> {
        self.digest
    }
    fn names(&mut self) -> PeerNames {
        self.names.clone()
    }
    fn address(&mut self) -> Option<IpAddr> {
        self.address
    }
}

/// What an XFCC header means on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// No header, or the source is `connection`: Tether leaves it to Envoy's own
    /// `forward_client_cert_details`.
    Absent,
    /// The header comes from a trusted peer: it names the client certificate.
    Trusted,
    /// The header comes from a trusted peer and does not read: the request is refused
    /// ([`Reason::XfccMalformed`]) on every route, never forwarded half understood.
    Malformed,
    /// From a peer that is not trusted, only an element naming the connection's own
    /// certificate: the one the Envoy in front of Tether appends (`APPEND_FORWARD`), or the
    /// client's own writing (`FORWARD_ONLY`). Ignored and removed before forwarding.
    OwnElement,
    /// From a peer that is not trusted: ignored, counted and removed before forwarding.
    Untrusted,
}

/// What the XFCC `lines` mean on this connection with `source`.
pub fn forwarded(source: &PeerSource, peer: &mut dyn Peer, lines: &[&[u8]]) -> Forwarded {
    let PeerSource::Xfcc { trusted_peers } = source else {
        return Forwarded::Absent;
    };
    if lines.is_empty() {
        return Forwarded::Absent;
    }
    if is_trusted(trusted_peers, peer) {
        let digest = peer.digest();
        let readable = xfcc::parse(lines)
            .and_then(|elements| xfcc::client_element(&elements, digest.as_ref()).map(|_| ()));
        return match readable {
            Ok(()) => Forwarded::Trusted,
            Err(_) => Forwarded::Malformed,
        };
    }
    match xfcc::parse(lines) {
        Ok(elements) => match elements.as_slice() {
            [only] if only.hash.is_some() && only.hash == peer.digest() => Forwarded::OwnElement,
            _ => Forwarded::Untrusted,
        },
        Err(_) => Forwarded::Untrusted,
    }
}

/// Whether the connection's peer presented a certificate of one of `trusted_peers`.
fn is_trusted(trusted_peers: &[TrustedPeer], peer: &mut dyn Peer) -> bool {
    if trusted_peers.is_empty() || peer.digest().is_none() {
        return false;
    }
    let names = peer.names();
    trusted_peers.iter().any(|trusted| match trusted {
        TrustedPeer::SanUri(uri) => names.uri.as_deref() == Some(uri.as_str()),
        TrustedPeer::SanDns(dns) => names
            .dns
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case(dns)),
    })
}

/// The client's certificate, as far as Tether knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Its SHA-256, the digest of `x5t#S256`; `None`: the client had no certificate.
    pub digest: Option<PeerCertificate>,
    origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    /// The connection's own certificate.
    Connection,
    /// The element a trusted edge forwarded.
    Forwarded(Box<Element>),
}

/// The client certificate of a request whose XFCC lines (after any removal) are `lines`.
/// A malformed header from a trusted peer is [`Reason::XfccMalformed`].
pub fn client_certificate(
    source: &PeerSource,
    peer: &mut dyn Peer,
    lines: &[&[u8]],
) -> Result<ClientCertificate, Reason> {
    let trusted = match source {
        PeerSource::Xfcc { trusted_peers } => is_trusted(trusted_peers, peer),
        PeerSource::Connection => false,
    };
    if !trusted {
        return Ok(ClientCertificate {
            digest: peer.digest(),
            origin: Origin::Connection,
        });
    }
    let elements = xfcc::parse(lines).map_err(|_| Reason::XfccMalformed)?;
    let connection = peer.digest();
    let client =
        xfcc::client_element(&elements, connection.as_ref()).map_err(|_| Reason::XfccMalformed)?;
    Ok(match client {
        Some(element) if element.hash.is_some() => ClientCertificate {
            digest: element.hash,
            origin: Origin::Forwarded(Box::new(element.clone())),
        },
        _ => ClientCertificate {
            digest: None,
            origin: Origin::Connection,
        },
    })
}

impl ClientCertificate {
    /// The subject and SANs of the certificate, for client identity. `lines` are the request's
    /// XFCC lines, which may carry the connection's own certificate in full.
    ///
    /// Facts read from a certificate's DER (whose SHA-256 is the digest) are remembered by
    /// that digest and used for it from then on: they are a function of the certificate alone.
    /// (So a trusted edge that later sends a `Cert` not matching a remembered `Hash` is not
    /// caught again; the `Hash` is what the binding and the names go by.)
    pub fn facts(
        &self,
        peer: &mut dyn Peer,
        lines: &[&[u8]],
    ) -> Result<Rc<CertificateFacts>, Reason> {
        let Some(digest) = self.digest else {
            return Ok(Rc::default());
        };
        if let Some(known) = peer.remembered(&digest) {
            return Ok(known);
        }
        let read = |der: Vec<u8>, peer: &mut dyn Peer| {
            let facts = Rc::new(certificate::facts_from_der(&der).ok()?);
            peer.remember(&digest, &facts);
            Some(facts)
        };
        match &self.origin {
            Origin::Forwarded(element) => match &element.cert {
                // The edge is trusted, but a `Cert` that is not the certificate its `Hash`
                // names is a broken edge: refused, never read half.
                Some(cert) => der_of(cert, &digest)
                    .and_then(|der| read(der, peer))
                    .ok_or(Reason::XfccMalformed),
                None => Ok(Rc::new(CertificateFacts {
                    subject: element
                        .subject
                        .as_deref()
                        .and_then(|s| DistinguishedName::parse(s).ok()),
                    dns: element.dns.clone(),
                    uri: element.uri.clone(),
                    ..CertificateFacts::default()
                })),
            },
            Origin::Connection => {
                // Any element whose `Cert` is this very certificate (its SHA-256 is the
                // digest the TLS layer reported) tells all of its names, whoever wrote it.
                let described = xfcc::parse(lines).ok().and_then(|elements| {
                    elements
                        .iter()
                        .filter(|e| e.hash.as_ref() == Some(&digest))
                        .find_map(|e| der_of(e.cert.as_deref()?, &digest))
                });
                if let Some(facts) = described.and_then(|der| read(der, peer)) {
                    return Ok(facts);
                }
                let names = peer.names();
                Ok(Rc::new(CertificateFacts {
                    subject: names
                        .subject
                        .as_deref()
                        .and_then(|s| DistinguishedName::parse(s).ok()),
                    dns: names.dns.into_iter().collect(),
                    uri: names.uri.into_iter().collect(),
                    ..CertificateFacts::default()
                }))
            }
        }
    }
}

/// The DER of an XFCC `Cert` when it is the certificate of `digest`.
fn der_of(cert: &str, digest: &PeerCertificate) -> Option<Vec<u8>> {
    let der = certificate::der_from_url_encoded_pem(cert).ok()?;
    let actual: [u8; 32] = Sha256::digest(&der).into();
    bool::from(actual.ct_eq(digest.sha256())).then_some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 32]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn digest_of(der: &[u8]) -> PeerCertificate {
        PeerCertificate::from_hex_digest(hex(Sha256::digest(der).into()).as_bytes()).unwrap()
    }

    const EDGE: &str = "spiffe://mesh.local/ns/edge/sa/ingress";

    fn edge() -> Reported {
        Reported {
            digest: Some(digest_of(b"edge")),
            names: PeerNames {
                uri: Some(EDGE.into()),
                ..PeerNames::default()
            },
            ..Reported::default()
        }
    }

    fn xfcc_source() -> PeerSource {
        PeerSource::Xfcc {
            trusted_peers: vec![TrustedPeer::SanUri(EDGE.into())],
        }
    }

    fn element(der: &[u8], rest: &str) -> String {
        format!("Hash={}{rest}", hex(Sha256::digest(der).into()))
    }

    #[test]
    fn a_trusted_edge_names_the_client_certificate_by_its_element() {
        let alice = element(
            b"alice",
            ";URI=spiffe://mesh.local/ns/tpp/sa/client;DNS=tpp.example",
        );
        let lines = [alice.as_bytes()];
        let mut peer = edge();
        assert_eq!(
            forwarded(&xfcc_source(), &mut peer, &lines),
            Forwarded::Trusted
        );
        let client = client_certificate(&xfcc_source(), &mut peer, &lines).unwrap();
        assert_eq!(client.digest, Some(digest_of(b"alice")));
        let facts = client.facts(&mut peer, &lines).unwrap();
        assert_eq!(facts.uri, ["spiffe://mesh.local/ns/tpp/sa/client"]);
        assert_eq!(facts.dns, ["tpp.example"]);
        // Two elements describing clients: which one is not for Tether to guess (an unescaped
        // URI SAN can write the second).
        let two = format!("{},{alice}", element(b"someone", ""));
        let lines = [two.as_bytes()];
        assert_eq!(
            forwarded(&xfcc_source(), &mut peer, &lines),
            Forwarded::Malformed
        );
        assert_eq!(
            client_certificate(&xfcc_source(), &mut peer, &lines),
            Err(Reason::XfccMalformed)
        );
    }

    #[test]
    fn a_forwarded_subject_is_read_with_its_own_escapes() {
        // One RDN whose value holds commas, as Envoy writes it (RFC 2253, between quotes).
        let header = element(b"bank", r#";Subject="CN=bank\,O=Example Bank\, Ltd.""#);
        let lines = [header.as_bytes()];
        let mut peer = edge();
        let client = client_certificate(&xfcc_source(), &mut peer, &lines).unwrap();
        let facts = client.facts(&mut peer, &lines).unwrap();
        assert_eq!(
            facts.subject,
            DistinguishedName::parse(r"CN=bank\,O=Example Bank\, Ltd.").ok()
        );
        assert_ne!(
            facts.subject,
            DistinguishedName::parse(r"CN=bank,O=Example Bank\, Ltd.").ok()
        );
        assert_eq!(facts.subject.as_ref().map(DistinguishedName::len), Some(1));
    }

    #[test]
    fn the_element_envoy_appended_for_the_edge_is_skipped() {
        let header = format!("{},{}", element(b"alice", ""), element(b"edge", ""));
        let lines = [header.as_bytes()];
        let client = client_certificate(&xfcc_source(), &mut edge(), &lines).unwrap();
        assert_eq!(client.digest, Some(digest_of(b"alice")));
    }

    #[test]
    fn a_trusted_edge_without_a_client_element_means_no_client_certificate() {
        let no_hash = "URI=spiffe://x";
        let own = element(b"edge", "");
        for lines in [vec![], vec![no_hash.as_bytes()], vec![own.as_bytes()]] {
            let client = client_certificate(&xfcc_source(), &mut edge(), &lines).unwrap();
            assert_eq!(client.digest, None, "{lines:?}");
            assert_eq!(
                *client.facts(&mut edge(), &lines).unwrap(),
                CertificateFacts::default()
            );
        }
    }

    #[test]
    fn a_malformed_header_from_a_trusted_edge_is_refused() {
        for bad in ["Hash=12", "Hash=\"unterminated", "Bogus=1", ",", "Hash"] {
            assert_eq!(
                forwarded(&xfcc_source(), &mut edge(), &[bad.as_bytes()]),
                Forwarded::Malformed,
                "{bad}"
            );
            assert_eq!(
                client_certificate(&xfcc_source(), &mut edge(), &[bad.as_bytes()]),
                Err(Reason::XfccMalformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn xfcc_from_any_other_peer_is_untrusted_and_the_connection_is_the_client() {
        let spoofed = element(b"alice", ";URI=spiffe://mesh.local/ns/tpp/sa/client");
        let lines = [spoofed.as_bytes()];
        let others = [
            // A mesh client with another SPIFFE ID.
            Reported {
                digest: Some(digest_of(b"mallory")),
                names: PeerNames {
                    uri: Some("spiffe://mesh.local/ns/edge/sa/ingress2".into()),
                    ..PeerNames::default()
                },
                ..Reported::default()
            },
            // The edge's name but no certificate: names without a verified certificate.
            Reported {
                digest: None,
                names: PeerNames {
                    uri: Some(EDGE.into()),
                    ..PeerNames::default()
                },
                ..Reported::default()
            },
            // The edge's URI as a DNS SAN.
            Reported {
                digest: Some(digest_of(b"mallory")),
                names: PeerNames {
                    dns: Some(EDGE.into()),
                    ..PeerNames::default()
                },
                ..Reported::default()
            },
        ];
        for mut peer in others {
            assert_eq!(
                forwarded(&xfcc_source(), &mut peer, &lines),
                Forwarded::Untrusted
            );
            let client = client_certificate(&xfcc_source(), &mut peer, &lines).unwrap();
            assert_eq!(client.digest, peer.digest);
            // The header's names are not the client's: its facts are the connection's.
            let facts = client.facts(&mut peer, &lines).unwrap();
            let own: Vec<String> = match peer.digest {
                Some(_) => peer.names.uri.iter().cloned().collect(),
                None => Vec::new(),
            };
            assert_eq!(facts.uri, own);
        }
    }

    #[test]
    fn the_element_appended_for_a_direct_client_is_its_own() {
        let mut peer = Reported {
            digest: Some(digest_of(b"mallory")),
            ..Reported::default()
        };
        let own = element(b"mallory", "");
        assert_eq!(
            forwarded(&xfcc_source(), &mut peer, &[own.as_bytes()]),
            Forwarded::OwnElement
        );
        let with_spoof = format!("{},{own}", element(b"alice", ""));
        assert_eq!(
            forwarded(&xfcc_source(), &mut peer, &[with_spoof.as_bytes()]),
            Forwarded::Untrusted
        );
        assert_eq!(
            forwarded(&xfcc_source(), &mut peer, &[b"Hash=zz"]),
            Forwarded::Untrusted
        );
    }

    #[test]
    fn with_the_connection_source_xfcc_is_never_trusted() {
        let spoofed = element(b"alice", "");
        let lines = [spoofed.as_bytes()];
        let mut peer = edge();
        assert_eq!(
            forwarded(&PeerSource::Connection, &mut peer, &lines),
            Forwarded::Absent
        );
        let client = client_certificate(&PeerSource::Connection, &mut peer, &lines).unwrap();
        assert_eq!(client.digest, Some(digest_of(b"edge")));
    }

    #[test]
    fn the_peer_address_never_comes_from_a_forwarded_header() {
        let v4 = "10.1.2.3".parse().ok();
        let v6 = "2001:db8::1".parse().ok();
        let source = |text: &'static str| move || Some(text.as_bytes().to_vec());
        assert_eq!(peer_address(None, false, source("10.1.2.3:5555")), v4);
        assert_eq!(peer_address(None, false, source("[2001:db8::1]:443")), v6);
        // Envoy may have taken source.address from x-forwarded-for.
        assert_eq!(peer_address(None, true, source("10.1.2.3:5555")), None);
        // The filter state holds the connection's own address, whatever the headers say.
        assert_eq!(
            peer_address(Some(b"10.1.2.3"), true, source("192.0.2.9:1")),
            v4
        );
        assert_eq!(peer_address(Some(b"2001:db8::1"), false, || None), v6);
        assert_eq!(
            peer_address(Some(b"not an address"), false, source("10.1.2.3:1")),
            None
        );
        assert_eq!(peer_address(None, false, source("pipe:/x")), None);
        assert_eq!(peer_address(None, false, || None), None);
    }

    #[test]
    fn trusted_dns_names_compare_without_case_and_never_as_wildcards() {
        let source = PeerSource::Xfcc {
            trusted_peers: vec![TrustedPeer::SanDns("edge.example.com".into())],
        };
        let with_dns = |dns: &str| Reported {
            digest: Some(digest_of(b"edge")),
            names: PeerNames {
                dns: Some(dns.into()),
                ..PeerNames::default()
            },
            ..Reported::default()
        };
        let element = element(b"alice", "");
        let lines = [element.as_bytes()];
        assert_eq!(
            forwarded(&source, &mut with_dns("EDGE.example.com"), &lines),
            Forwarded::Trusted
        );
        assert_eq!(
            forwarded(&source, &mut with_dns("*.example.com"), &lines),
            Forwarded::Untrusted
        );
    }

    #[test]
    fn without_an_element_describing_it_the_connection_names_come_from_envoy() {
        let mut peer = Reported {
            digest: Some(digest_of(b"alice")),
            names: PeerNames {
                subject: Some("CN=alice,O=Example".into()),
                uri: Some("spiffe://a".into()),
                dns: Some("a.example".into()),
            },
            ..Reported::default()
        };
        let client = client_certificate(&PeerSource::Connection, &mut peer, &[]).unwrap();
        let facts = client.facts(&mut peer, &[]).unwrap();
        assert_eq!(facts.uri, ["spiffe://a"]);
        assert_eq!(facts.dns, ["a.example"]);
        assert_eq!(
            facts.subject,
            DistinguishedName::parse("cn=alice, o=example").ok()
        );
    }
}
