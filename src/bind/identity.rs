//! A client's registered identity (RFC 8705 §2.1.2) and network (`source_cidrs`), checked
//! against what is known of the request's client certificate and connection (issue 11).
//!
//! Pure: the caller gathers [`CertificateFacts`] (from Envoy's connection attributes, a trusted
//! edge's XFCC element, or the certificate itself) and the peer address.
//!
//! **Identity** (RFC 8705 §2.1.2): a client registers exactly one of
//! - `tls_client_auth_subject_dn`: the certificate's subject, compared as distinguished names
//!   ([`DistinguishedName`]);
//! - `tls_client_auth_san_dns`: one `dNSName` SAN equal to it, ASCII case-insensitively (RFC
//!   4343); a wildcard in either is a literal character, never a pattern;
//! - `tls_client_auth_san_uri`: one `uniformResourceIdentifier` SAN equal to it, byte for byte
//!   (in a mesh, the workload's SPIFFE ID);
//! - `tls_client_auth_san_ip`: one `iPAddress` SAN equal to it as an address (IPv4 or IPv6, in
//!   any text form Rust reads: `::1` and `0:0:0:0:0:0:0:1` are one address);
//! - `tls_client_auth_san_email`: one `rfc822Name` SAN equal to it, the local part byte for byte
//!   and the domain ASCII case-insensitively (RFC 5321 §2.4).
//!
//! **Networks**: `source_cidrs`, CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`); the connection's
//! peer address must be in one. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is read as the
//! IPv4 address it maps. A block with bits set past its prefix (`10.0.0.1/8`) is refused: it
//! is most likely a typo for something narrower.

use std::net::IpAddr;

use crate::bind::dn::{DistinguishedName, DnError};

/// What is known of the client certificate. Absent facts are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject, as read (a name that could not be read is `None`, and never matches).
    pub subject: Option<DistinguishedName>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub ip: Vec<IpAddr>,
    pub email: Vec<String>,
}

/// A registered client's certificate identity: one of RFC 8705 §2.1.2's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    SubjectDn(DistinguishedName),
    SanDns(String),
    SanUri(String),
    SanIp(IpAddr),
    SanEmail(String),
}

/// Why an identity or a network could not be configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    SubjectDn(DnError),
    /// A SAN value that is empty, or an IP address or CIDR block that does not read.
    Invalid(&'static str),
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityError::SubjectDn(e) => write!(f, "{e}"),
            IdentityError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for IdentityError {}

impl Identity {
    /// The identity of the metadata `name` (`tls_client_auth_subject_dn`, ...) with `value`.
    pub fn from_metadata(name: &str, value: &str) -> Result<Identity, IdentityError> {
        if value.is_empty() {
            return Err(IdentityError::Invalid("an empty identity"));
        }
        Ok(match name {
            "tls_client_auth_subject_dn" => Identity::SubjectDn(
                DistinguishedName::parse(value).map_err(IdentityError::SubjectDn)?,
            ),
            "tls_client_auth_san_dns" => Identity::SanDns(value.to_string()),
            "tls_client_auth_san_uri" => Identity::SanUri(value.to_string()),
            "tls_client_auth_san_ip" => Identity::SanIp(
                value
                    .parse()
                    .map_err(|_| IdentityError::Invalid("not an IP address"))?,
            ),
            "tls_client_auth_san_email" => {
                if !value.contains('@') {
                    return Err(IdentityError::Invalid("not an email address"));
                }
                Identity::SanEmail(value.to_string())
            }
            _ => return Err(IdentityError::Invalid("not an RFC 8705 identity")),
        })
    }

    /// Whether the certificate described by `facts` has this identity.
    pub fn matches(&self, facts: &CertificateFacts) -> bool {
        match self {
            Identity::SubjectDn(expected) => facts.subject.as_ref() == Some(expected),
            Identity::SanDns(expected) => {
                facts.dns.iter().any(|d| d.eq_ignore_ascii_case(expected))
            }
            Identity::SanUri(expected) => facts.uri.iter().any(|u| u == expected),
            Identity::SanIp(expected) => facts
                .ip
                .iter()
                .any(|ip| canonical(*ip) == canonical(*expected)),
            Identity::SanEmail(expected) => facts.email.iter().any(|e| same_email(e, expected)),
        }
    }
}

/// The local part byte for byte, the domain without regard to ASCII case.
fn same_email(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((local_a, domain_a)), Some((local_b, domain_b))) => {
            local_a == local_b && domain_a.eq_ignore_ascii_case(domain_b)
        }
        _ => false,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address; any other address as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A CIDR block of `source_cidrs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `address/prefix`; an address alone is a block of one.
    pub fn parse(text: &str) -> Result<Cidr, IdentityError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| IdentityError::Invalid("not a CIDR block"))?;
        let network = canonical(network);
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| IdentityError::Invalid("not a CIDR block"))?,
            Some(_) => return Err(IdentityError::Invalid("not a CIDR block")),
        };
        if prefix > width {
            return Err(IdentityError::Invalid(
                "a CIDR prefix longer than the address",
            ));
        }
        let cidr = Cidr { network, prefix };
        if bits(network) & !mask(prefix, u32::from(width)) != 0 {
            return Err(IdentityError::Invalid(
                "a CIDR block with address bits set past its prefix",
            ));
        }
        Ok(cidr)
    }

    /// Whether `address` is in the block.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        if address.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let width = if address.is_ipv4() { 32 } else { 128 };
        let mask = mask(self.prefix, width);
        bits(address) & mask == bits(self.network) & mask
    }
}

/// The address as a number (IPv4 in the low 32 bits).
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The network mask of `prefix` bits in an address of `width` bits.
fn mask(prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix);
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> CertificateFacts {
        CertificateFacts {
            subject: DistinguishedName::parse("CN=tpp-1,O=Example Bank,C=GB").ok(),
            dns: vec!["tpp.example.com".into(), "api.tpp.example.com".into()],
            uri: vec![
                "spiffe://mesh.local/ns/tpp/sa/client".into(),
                "https://tpp.example.com/id".into(),
            ],
            ip: vec!["10.1.2.3".parse().unwrap(), "2001:db8::7".parse().unwrap()],
            email: vec!["ops@TPP.example.com".into()],
        }
    }

    fn identity(name: &str, value: &str) -> Identity {
        Identity::from_metadata(name, value).unwrap()
    }

    #[test]
    fn each_metadata_matches_its_own_kind_of_name_only() {
        let f = facts();
        let yes = [
            (
                "tls_client_auth_subject_dn",
                "cn=TPP-1, o=example bank, c=gb",
            ),
            ("tls_client_auth_san_dns", "API.tpp.example.com"),
            (
                "tls_client_auth_san_uri",
                "spiffe://mesh.local/ns/tpp/sa/client",
            ),
            ("tls_client_auth_san_uri", "https://tpp.example.com/id"),
            ("tls_client_auth_san_ip", "2001:db8:0:0:0:0:0:7"),
            ("tls_client_auth_san_ip", "10.1.2.3"),
            ("tls_client_auth_san_email", "ops@tpp.example.com"),
        ];
        for (name, value) in yes {
            assert!(identity(name, value).matches(&f), "{name} {value}");
        }
        let no = [
            ("tls_client_auth_subject_dn", "CN=tpp-1,O=Example Bank"),
            ("tls_client_auth_subject_dn", "O=Example Bank,CN=tpp-1,C=GB"),
            ("tls_client_auth_san_dns", "*.tpp.example.com"),
            (
                "tls_client_auth_san_dns",
                "spiffe://mesh.local/ns/tpp/sa/client",
            ),
            (
                "tls_client_auth_san_uri",
                "SPIFFE://mesh.local/ns/tpp/sa/client",
            ),
            (
                "tls_client_auth_san_uri",
                "spiffe://mesh.local/ns/tpp/sa/client/",
            ),
            ("tls_client_auth_san_ip", "10.1.2.4"),
            ("tls_client_auth_san_email", "OPS@tpp.example.com"),
        ];
        for (name, value) in no {
            assert!(!identity(name, value).matches(&f), "{name} {value}");
        }
    }

    #[test]
    fn a_certificate_without_the_name_never_matches() {
        let empty = CertificateFacts::default();
        for (name, value) in [
            ("tls_client_auth_subject_dn", "CN=x"),
            ("tls_client_auth_san_dns", "x.example"),
            ("tls_client_auth_san_uri", "spiffe://x"),
            ("tls_client_auth_san_ip", "::1"),
            ("tls_client_auth_san_email", "a@b"),
        ] {
            assert!(!identity(name, value).matches(&empty), "{name}");
        }
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let mapped = CertificateFacts {
            ip: vec!["::ffff:10.1.2.3".parse().unwrap()],
            ..CertificateFacts::default()
        };
        assert!(identity("tls_client_auth_san_ip", "10.1.2.3").matches(&mapped));
        let cidr = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(cidr.contains("::ffff:10.200.0.1".parse().unwrap()));
    }

    #[test]
    fn cidr_blocks_contain_their_addresses_only() {
        let v4 = Cidr::parse("192.168.4.0/22").unwrap();
        assert!(v4.contains("192.168.4.0".parse().unwrap()));
        assert!(v4.contains("192.168.7.255".parse().unwrap()));
        assert!(!v4.contains("192.168.8.0".parse().unwrap()));
        assert!(!v4.contains("192.168.3.255".parse().unwrap()));
        assert!(!v4.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        let everything = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        let one = Cidr::parse("10.0.0.7").unwrap();
        assert!(one.contains("10.0.0.7".parse().unwrap()));
        assert!(!one.contains("10.0.0.6".parse().unwrap()));
    }

    #[test]
    fn malformed_identities_and_blocks_are_refused() {
        for (name, value) in [
            ("tls_client_auth_subject_dn", "CN"),
            ("tls_client_auth_san_ip", "10.0.0.256"),
            ("tls_client_auth_san_email", "nobody"),
            ("tls_client_auth_san_dns", ""),
            ("tls_client_auth_other", "x"),
        ] {
            assert!(
                Identity::from_metadata(name, value).is_err(),
                "{name} {value:?}"
            );
        }
        for text in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08a",
            "example.com/8",
            "",
        ] {
            assert!(Cidr::parse(text).is_err(), "{text:?}");
        }
    }
}
