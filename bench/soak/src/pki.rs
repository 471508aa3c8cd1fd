//! A throw-away PKI for the soak's mutual TLS, made with the `openssl` CLI as the e2e harness
//! makes its own (tests/support/pki.rs): a CA, a server certificate for `localhost`, and two
//! client certificates. Every connection presents `alice`'s; `mallory`'s exists only so that
//! a token can be bound to another client's certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub alice: ClientCert,
    pub mallory: ClientCert,
}

pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `x5t#S256` (RFC 8705 §3.1): base64url SHA-256 of the certificate's DER.
    pub thumbprint: String,
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`, `alice.pem`, `mallory.pem` and their keys into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        p256_key(&ca_key)?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            path(&ca_key)?,
            "-out",
            path(&ca)?,
            "-days",
            "2",
            "-subj",
            "/O=Tether soak/CN=Tether Soak CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        let (server_cert, server_key) = issue(
            dir,
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            &ca,
            &ca_key,
        )?;
        let client = |name: &str| -> Result<ClientCert, String> {
            let extensions = format!(
                "subjectAltName=URI:spiffe://mesh.internal/{name}\nextendedKeyUsage=clientAuth\n"
            );
            let (cert, key) = issue(dir, name, &extensions, &ca, &ca_key)?;
            let pem = std::fs::read_to_string(&cert)
                .map_err(|e| format!("read {}: {e}", cert.display()))?;
            let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(pem_to_der(&pem)?));
            Ok(ClientCert {
                cert,
                key,
                thumbprint,
            })
        };
        Ok(Pki {
            alice: client("alice")?,
            mallory: client("mallory")?,
            ca,
            server_cert,
            server_key,
        })
    }
}

/// Issues `<dir>/<name>.pem` (key `<name>.key`), signed by the CA, with `extensions`.
fn issue(
    dir: &Path,
    name: &str,
    extensions: &str,
    ca: &Path,
    ca_key: &Path,
) -> Result<(PathBuf, PathBuf), String> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    let cert = dir.join(format!("{name}.pem"));
    p256_key(&key)?;
    let subject = format!("/CN={name}");
    openssl(&[
        "req",
        "-new",
        "-key",
        path(&key)?,
        "-subj",
        &subject,
        "-out",
        path(&csr)?,
    ])?;
    // `x509 -req` adds only the extensions listed here, so a leaf is never a CA by accident.
    let extensions = format!(
        "{extensions}basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    );
    std::fs::write(&ext, extensions).map_err(|e| format!("write {}: {e}", ext.display()))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr)?,
        "-CA",
        path(ca)?,
        "-CAkey",
        path(ca_key)?,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path(&ext)?,
        "-out",
        path(&cert)?,
    ])?;
    let _ = std::fs::remove_file(&csr);
    let _ = std::fs::remove_file(&ext);
    Ok((cert, key))
}

fn p256_key(out: &Path) -> Result<(), String> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path(out)?,
    ])
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl (run `make setup`): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The DER bytes of the first PEM block in `pem`.
fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END "))
        .collect();
    STANDARD
        .decode(body.trim())
        .map_err(|e| format!("bad PEM: {e}"))
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("not a UTF-8 path: {}", p.display()))
}
