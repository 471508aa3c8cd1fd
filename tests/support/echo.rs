//! The upstream behind Envoy: a small HTTP/1.1 server that answers every request with 200 and
//! a JSON description of what it received, so a test can see exactly which headers the filter
//! forwarded, added or removed.
//!
//! It is deliberately minimal: one thread per connection, one request per connection
//! (`Connection: close`), bodies by `Content-Length` or chunked (a streamed HTTP/2 body; the
//! trailer section, if any, is reported as `trailers`). Anything else gets a 5xx, so a test
//! notices rather than passes by accident.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

/// The header the HTTPS client puts on every request so that a test can ask the echo backend
/// whether that request reached it (see [`EchoBackend::received`]).
pub const TEST_ID_HEADER: &str = "x-tether-test-id";

/// Limit on the request head, well above Envoy's own default (60 KiB).
const MAX_HEAD_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct EchoBackend {
    port: u16,
    /// Values of [`TEST_ID_HEADER`] seen so far.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl EchoBackend {
    /// Starts on an ephemeral port of 127.0.0.1. The server runs until the process exits.
    pub fn start() -> EchoBackend {
        EchoBackend::start_on(0)
    }

    /// Starts on `port` of 127.0.0.1 (0 for any free port).
    pub fn start_on(port: u16) -> EchoBackend {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("echo backend cannot listen on 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("bound address").port();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let backend = EchoBackend { port, seen };
        let server = backend.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        backend
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether a request carrying `test_id` in [`TEST_ID_HEADER`] has reached the backend.
    pub fn received(&self, test_id: &str) -> bool {
        self.seen.lock().expect("echo lock").contains(test_id)
    }

    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut writer = match stream.try_clone() {
            Ok(writer) => writer,
            Err(_) => return,
        };
        let (status, body) = match read_request(stream) {
            Ok(request) => {
                if let Some(ids) = request.headers.get(TEST_ID_HEADER) {
                    self.seen
                        .lock()
                        .expect("echo lock")
                        .extend(ids.iter().cloned());
                }
                let body = json!({
                    "method": request.method,
                    "path": request.path,
                    "headers": request.headers,
                    "body": String::from_utf8_lossy(&request.body),
                    "trailers": request.trailers,
                });
                ("200 OK", body)
            }
            Err(problem) => ("501 Not Implemented", json!({ "echo_error": problem })),
        };
        let body = body.to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = writer.write_all(response.as_bytes());
        let _ = writer.flush();
    }
}

struct Request {
    method: String,
    path: String,
    /// Lower-case names; repeated headers keep every value, in order.
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
    /// The trailer section of a chunked body: lower-case names.
    trailers: BTreeMap<String, Vec<String>>,
}

fn read_request(stream: TcpStream) -> Result<Request, String> {
    let mut reader = BufReader::new(stream);
    let mut head_bytes = 0;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), String> {
        line.clear();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - head_bytes) as u64)
            .read_line(line)
            .map_err(|e| format!("reading the request: {e}"))?;
        head_bytes += n;
        if n == 0 || !line.ends_with('\n') {
            return Err("truncated request head".into());
        }
        Ok(())
    };

    read_line(&mut line)?;
    let mut request_line = line.split_whitespace();
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();

    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        read_line(&mut line)?;
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("bad header line {header:?}"))?;
        headers
            .entry(name.trim().to_ascii_lowercase())
            .or_default()
            .push(value.trim().to_string());
    }

    let mut trailers = BTreeMap::new();
    let body = match headers.get("transfer-encoding").map(|v| v.as_slice()) {
        None => {
            let length = match headers.get("content-length").map(|v| v.as_slice()) {
                None => 0,
                Some([one]) => one
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {one:?}"))?,
                Some(_) => return Err("several content-length headers".into()),
            };
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("reading the body: {e}"))?;
            body
        }
        Some([chunked]) if chunked.eq_ignore_ascii_case("chunked") => {
            if headers.contains_key("content-length") {
                return Err("both content-length and transfer-encoding".into());
            }
            read_chunked(&mut reader, &mut trailers)?
        }
        Some(other) => return Err(format!("unsupported transfer-encoding {other:?}")),
    };
    Ok(Request {
        method,
        path,
        headers,
        body,
        trailers,
    })
}

/// A chunked body (RFC 9112 §7.1), at most [`MAX_HEAD_BYTES`] long, and its trailer section.
fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    trailers: &mut BTreeMap<String, Vec<String>>,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading a chunk size: {e}"))?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            break;
        }
        if body.len() + size > MAX_HEAD_BYTES {
            return Err("chunked body too large for the echo backend".into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .map_err(|e| format!("reading a chunk: {e}"))?;
        let mut crlf = [0; 2];
        reader
            .read_exact(&mut crlf)
            .map_err(|e| format!("reading a chunk end: {e}"))?;
    }
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the trailer section: {e}"))?;
        let field = line.trim_end_matches(['\r', '\n']);
        if field.is_empty() {
            return Ok(body);
        }
        let (name, value) = field
            .split_once(':')
            .ok_or_else(|| format!("bad trailer line {field:?}"))?;
        trailers
            .entry(name.trim().to_ascii_lowercase())
            .or_default()
            .push(value.trim().to_string());
    }
}
