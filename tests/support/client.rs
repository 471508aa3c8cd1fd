//! HTTPS requests to Envoy through the `curl` CLI: a real TLS stack on the client side, with
//! or without a client certificate, and full control over the request line and headers.
//!
//! Every Authorization value and URL a test sends is remembered ([`credentials_sent`]) so that
//! a test can check afterwards that none of it ended up in Envoy's log.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use super::echo::TEST_ID_HEADER;
use super::pki::ClientCert;
use super::scratch::ScratchDir;

/// Everything sent as a credential so far: Authorization and DPoP values, request paths.
static CREDENTIALS_SENT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The Authorization values and paths (which may carry `access_token=`) sent so far by this
/// process.
pub fn credentials_sent() -> Vec<String> {
    CREDENTIALS_SENT.lock().expect("credentials lock").clone()
}

/// A request to `https://localhost:<port><path>`: build it up, then [`send`](Self::send) it.
#[derive(Debug, Clone)]
pub struct HttpsRequest {
    port: u16,
    ca: PathBuf,
    path: String,
    method: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    client_cert: Option<ClientCert>,
    test_id: String,
}

/// The response, as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-case names; repeated headers keep every value.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
    /// The value of the test-id header sent with the request (see
    /// [`EchoBackend::received`](super::echo::EchoBackend::received)).
    pub test_id: String,
}

impl HttpsRequest {
    /// A GET of `path` (sent exactly as given: no dot-segment removal by curl) to the
    /// listener on `port`, trusting `ca` for the server certificate.
    pub fn new(port: u16, ca: impl Into<PathBuf>, path: &str) -> HttpsRequest {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let test_id = format!(
            "{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        HttpsRequest {
            port,
            ca: ca.into(),
            path: path.to_string(),
            method: "GET".into(),
            headers: Vec::new(),
            body: None,
            client_cert: None,
            test_id,
        }
    }

    /// Presents `client`'s certificate in the TLS handshake.
    /// The value of the test-id header this request carries (see
    /// [`EchoBackend::received`](super::echo::EchoBackend::received)), known before it is sent.
    pub fn test_id(&self) -> &str {
        &self.test_id
    }

    pub fn cert(mut self, client: &ClientCert) -> Self {
        self.client_cert = Some(client.clone());
        self
    }

    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Adds a header (repeating a name sends it twice).
    pub fn header(self, name: &str, value: &str) -> Self {
        self.raw_header(name, value.as_bytes())
    }

    /// Adds a header whose value is arbitrary bytes (CR, LF and NUL excepted: curl cannot
    /// send them).
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = method.to_string();
        self
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }

    /// Sends the request; panics if no HTTP response came back (TLS failure, timeout).
    pub fn send(self) -> Response {
        self.try_send()
            .unwrap_or_else(|e| panic!("request {} {} failed: {e}", self.method, self.path))
    }

    /// Sends the request; `Err` with curl's message if no HTTP response came back.
    pub fn try_send(&self) -> Result<Response, String> {
        {
            let mut sent = CREDENTIALS_SENT.lock().expect("credentials lock");
            sent.push(self.path.clone());
            for (name, value) in &self.headers {
                if name.eq_ignore_ascii_case("authorization") || name.eq_ignore_ascii_case("dpop") {
                    sent.push(String::from_utf8_lossy(value).into_owned());
                }
            }
        }

        let scratch = ScratchDir::new("curl");
        let head_file = scratch.join("head");
        let body_file = scratch.join("body");
        let mut curl = Command::new("curl");
        curl.args(["--silent", "--show-error", "--http1.1", "--max-time", "20"])
            // Send the path as written: tests of path normalization need the raw form.
            .arg("--path-as-is")
            // "localhost" matches the server certificate; pin it to the IPv4 listener.
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.port))
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--request")
            .arg(&self.method)
            .arg("--dump-header")
            .arg(&head_file)
            .arg("--output")
            .arg(&body_file)
            // No `Expect: 100-continue` dance for bodies.
            .args(["--header", "Expect:"])
            .arg("--header")
            .arg(format!("{TEST_ID_HEADER}: {}", self.test_id));
        if let Some(client) = &self.client_cert {
            curl.arg("--cert")
                .arg(&client.cert)
                .arg("--key")
                .arg(&client.key);
        }
        for (name, value) in &self.headers {
            let mut header = format!("{name}: ").into_bytes();
            header.extend_from_slice(value);
            curl.arg("--header").arg(OsString::from_vec(header));
        }
        if let Some(body) = &self.body {
            let request_body = scratch.join("request-body");
            std::fs::write(&request_body, body).expect("write request body");
            curl.arg("--data-binary")
                .arg(format!("@{}", request_body.display()));
        }
        curl.arg(format!("https://localhost:{}{}", self.port, self.path));

        let output = curl
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let head = std::fs::read_to_string(&head_file).map_err(|e| e.to_string())?;
        let body = std::fs::read(&body_file).unwrap_or_default();
        let (status, headers) = parse_head(&head)?;
        Ok(Response {
            status,
            headers,
            body,
            test_id: self.test_id.clone(),
        })
    }
}

/// Parses the last header block curl dumped (earlier ones would be 1xx responses).
fn parse_head(head: &str) -> Result<(u16, BTreeMap<String, Vec<String>>), String> {
    let block = head
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .ok_or("no response head")?;
    let mut lines = block.lines();
    let status_line = lines.next().ok_or("empty response head")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    Ok((status, headers))
}

impl Response {
    /// The only value of header `name`; `None` if absent, panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.headers.get(name).map(|v| v.as_slice()) {
            None => None,
            Some([one]) => Some(one),
            Some(many) => panic!("header {name} repeated: {many:?}"),
        }
    }

    /// The body as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// What the echo backend received: the values of request header `name` upstream.
    /// Panics if the response does not come from the echo backend.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        let echo = self.json();
        assert!(
            echo.get("method").is_some(),
            "response is not from the echo backend: {echo}"
        );
        echo["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The body as (lossy) text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
