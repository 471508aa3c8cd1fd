//! A real authorization server for the introspection tests and the demo: oidc-provider,
//! run by `tests/interop/oidc/as.mjs` until its stdin closes. It issues opaque tokens at
//! start (bound to a certificate, DPoP-bound, unbound, revoked) and answers introspection
//! calls, each logged on its stderr.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::repo_root;

pub struct AuthorizationServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What `as.mjs` printed: `issuer`, `port`, `introspection_path`, `rs`, `tokens`, ...
    pub issued: Value,
    log: PathBuf,
}

impl AuthorizationServer {
    /// Starts it for `audience`, binding the `mtls` token to `client_cert`, with DPoP proofs
    /// for each of `htus`; on `port` if given. Its stderr goes to `log`. `Err` with the log
    /// if it printed no JSON.
    pub fn start(
        log: &Path,
        audience: &str,
        client_cert: &Path,
        htus: &[String],
        port: Option<u16>,
    ) -> Result<AuthorizationServer, String> {
        let mut command = Command::new("node");
        command
            .arg(repo_root().join("tests/interop/oidc/as.mjs"))
            .arg(audience)
            .arg(client_cert)
            .args(htus)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?);
        if let Some(port) = port {
            command.env("AS_PORT", port.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run node ({e}): run `make setup`"))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let issued = serde_json::from_str(&line).map_err(|e| {
            format!(
                "as.mjs printed no JSON ({e}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })?;
        let stdin = child.stdin.take();
        Ok(AuthorizationServer {
            child,
            stdin,
            issued,
            log: log.to_path_buf(),
        })
    }

    /// The access token it issued under `name` (`mtls`, `dpop`, `bearer`, `revoked`).
    pub fn token(&self, name: &str) -> String {
        self.issued["tokens"][name]["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} token"))
            .to_string()
    }

    /// Introspection calls it has answered since it started, by its own log.
    pub fn introspections(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("as.mjs: introspection "))
            .count()
    }

    /// Closes its stdin and waits for it to exit (killing it after 10 s).
    pub fn stop(mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}
