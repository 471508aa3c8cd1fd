//! A throw-away PKI for mutual TLS, made with the `openssl` CLI at run time so that no private
//! key is committed and nothing expires in the repository.
//!
//! All keys are ECDSA P-256. Certificates are valid for two days, which is enough for a test
//! run and short enough that a leaked one is worthless.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::openssl;

/// The trust domain of the client certificates' SPIFFE IDs (URI SANs).
pub const TRUST_DOMAIN: &str = "mesh.internal";

/// A CA, a server certificate for `localhost`, three client certificates (one revoked) and the
/// CA's CRL, as files in `dir`.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate: what Envoy trusts for client certificates and curl for the server.
    pub ca: PathBuf,
    /// The server certificate (SAN `DNS:localhost`, `IP:127.0.0.1`) and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The legitimate client, to whom tokens are issued.
    pub alice: ClientCert,
    /// A second client of the same CA: valid certificate, someone else's tokens.
    pub mallory: ClientCert,
    /// A third client of the same CA whose certificate the CA has revoked (listed in `crl`).
    pub revoked: ClientCert,
    /// The CA's CRL (PEM), listing `revoked`: what Envoy's `validation_context.crl` reads.
    pub crl: PathBuf,
    /// Where the files are, and the CA's key, to issue more certificates.
    dir: PathBuf,
    ca_key: PathBuf,
}

/// A client certificate, its key, and facts about it computed here (not by Envoy).
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `spiffe://mesh.internal/<name>`, the certificate's URI SAN.
    pub spiffe_id: String,
    /// The DER encoding of the certificate.
    pub der: Vec<u8>,
}

impl ClientCert {
    /// The certificate's SHA-256 thumbprint as RFC 8705 §3.1 defines `x5t#S256`:
    /// base64url, without padding, of the SHA-256 of the DER certificate.
    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.der)
    }
}

/// `x5t#S256` of a DER certificate (RFC 8705 §3.1, RFC 7515 §4.1.8).
pub fn x5t_s256(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The DER bytes of the first PEM block in `pem`.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END "))
        .collect();
    STANDARD
        .decode(body.trim())
        .unwrap_or_else(|e| panic!("bad PEM: {e}"))
}

impl Pki {
    /// Generates the whole PKI into `dir` (created if needed). Files: `ca.pem`, `ca.key`,
    /// `server.pem`, `server.key`, `alice.pem`, `alice.key`, `mallory.pem`, `mallory.key`,
    /// `eve.pem`, `eve.key` (revoked) and `ca.crl` (with the CA's `openssl ca` files).
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        generate_p256_key(&ca_key);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            path(&ca_key),
            "-out",
            path(&ca),
            "-days",
            "2",
            "-subj",
            "/O=Tether tests/CN=Tether Test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);

        let (server_cert, server_key) = issue(
            dir,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            &ca,
            &ca_key,
        );
        let client = |name: &str| issue_client(dir, &ca, &ca_key, name, &format!("/CN={name}"), "");
        let alice = client("alice");
        let mallory = client("mallory");
        let revoked = client("eve");
        let crl = revoke(dir, &revoked.cert, &ca, &ca_key);
        Pki {
            ca,
            server_cert,
            server_key,
            alice,
            mallory,
            revoked,
            crl,
            dir: dir.to_path_buf(),
            ca_key,
        }
    }

    /// Another client certificate of the CA, `<name>.pem`: subject `subject` (OpenSSL's
    /// `/T=v/...` form), the URI SAN `spiffe://mesh.internal/<name>` first, then `more_sans`
    /// (`,DNS:...,IP:...`) if any.
    pub fn issue_client(&self, name: &str, subject: &str, more_sans: &str) -> ClientCert {
        issue_client(&self.dir, &self.ca, &self.ca_key, name, subject, more_sans)
    }

    /// A client certificate of the CA whose URI SANs are exactly `uris`, written in an
    /// OpenSSL section, so that a URI may hold any character (a `,` included).
    pub fn issue_client_with_uris(&self, name: &str, uris: &[&str]) -> ClientCert {
        let section: String = uris
            .iter()
            .enumerate()
            .map(|(i, uri)| format!("URI.{} = {uri}\n", i + 1))
            .collect();
        let (cert, key) = issue_with_sections(
            &self.dir,
            name,
            &format!("/CN={name}"),
            "subjectAltName=@sans\nextendedKeyUsage=clientAuth\n",
            &format!("[sans]\n{section}"),
            &self.ca,
            &self.ca_key,
        );
        let pem = std::fs::read_to_string(&cert).expect("certificate just written");
        ClientCert {
            name: name.to_string(),
            der: pem_to_der(&pem),
            cert,
            key,
            spiffe_id: uris.first().map_or_else(String::new, |u| u.to_string()),
        }
    }
}

fn issue_client(
    dir: &Path,
    ca: &Path,
    ca_key: &Path,
    name: &str,
    subject: &str,
    more_sans: &str,
) -> ClientCert {
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/{name}");
    let (cert, key) = issue(
        dir,
        name,
        subject,
        &format!("subjectAltName=URI:{spiffe_id}{more_sans}\nextendedKeyUsage=clientAuth\n"),
        ca,
        ca_key,
    );
    let pem = std::fs::read_to_string(&cert).expect("certificate just written");
    ClientCert {
        name: name.to_string(),
        der: pem_to_der(&pem),
        cert,
        key,
        spiffe_id,
    }
}

fn generate_p256_key(out: &Path) {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path(out),
    ]);
}

/// Issues an end-entity certificate `<dir>/<name>.pem` (key `<name>.key`) signed by the CA.
fn issue(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
    ca: &Path,
    ca_key: &Path,
) -> (PathBuf, PathBuf) {
    issue_with_sections(dir, name, subject, extensions, "", ca, ca_key)
}

/// [`issue`], with more sections of the extensions file (that `extensions` refers to).
fn issue_with_sections(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
    sections: &str,
    ca: &Path,
    ca_key: &Path,
) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    let cert = dir.join(format!("{name}.pem"));
    generate_p256_key(&key);
    openssl(&[
        "req",
        "-new",
        "-key",
        path(&key),
        "-subj",
        subject,
        "-out",
        path(&csr),
    ]);
    // `x509 -req` adds only the extensions listed here, so a leaf is never accidentally a CA.
    let extensions = format!(
        "{extensions}basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{sections}"
    );
    std::fs::write(&ext, extensions).expect("write extensions file");
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(ca),
        "-CAkey",
        path(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path(&ext),
        "-out",
        path(&cert),
    ]);
    let _ = std::fs::remove_file(&csr);
    let _ = std::fs::remove_file(&ext);
    (cert, key)
}

/// Revokes `cert` and writes the CA's CRL, `<dir>/ca.crl`, with `openssl ca` (its database in
/// `dir`).
fn revoke(dir: &Path, cert: &Path, ca: &Path, ca_key: &Path) -> PathBuf {
    let config = dir.join("ca.cnf");
    let index = dir.join("index.txt");
    let number = dir.join("crlnumber");
    std::fs::write(
        &config,
        format!(
            "[ ca ]\ndefault_ca = tether_ca\n[ tether_ca ]\ndatabase = {}\ncrlnumber = {}\n\
             default_md = sha256\ndefault_crl_days = 2\n",
            path(&index),
            path(&number)
        ),
    )
    .expect("write the CA's openssl config");
    std::fs::write(&index, "").expect("write the CA's database");
    std::fs::write(&number, "01\n").expect("write the CRL number");
    let crl = dir.join("ca.crl");
    let ca_args = [
        "-config",
        path(&config),
        "-keyfile",
        path(ca_key),
        "-cert",
        path(ca),
    ];
    openssl(&[&["ca"][..], &ca_args, &["-revoke", path(cert)]].concat());
    openssl(&[&["ca"][..], &ca_args, &["-gencrl", "-out", path(&crl)]].concat());
    crl
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}
