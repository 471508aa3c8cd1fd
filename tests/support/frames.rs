//! Requests whose every frame the test controls: HTTP/2 streams with trailers, headers now and
//! the body later, several streams at once; or HTTP/1.1 with a chunked body and trailers. Sent
//! by `tests/interop/h2_client.py` (Python's `h2`, an independent HTTP/2 implementation),
//! because curl can do none of it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::pki::{ClientCert, Pki};
use super::run_interop_client;

/// The wire protocol of a [`Frames`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    H2,
    Http11,
}

impl Protocol {
    fn alpn(self) -> &'static str {
        match self {
            Protocol::H2 => "h2",
            Protocol::Http11 => "http/1.1",
        }
    }
}

/// One request: its headers at time 0, then timed body chunks and trailers.
#[derive(Clone, Debug)]
pub struct Stream {
    headers: Vec<(String, String)>,
    events: Vec<Value>,
}

impl Stream {
    /// `method` `path` with `authorization` and the other `headers`.
    pub fn new(method: &str, path: &str) -> Stream {
        Stream {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
                (":scheme".into(), "https".into()),
                (":authority".into(), "localhost".into()),
            ],
            events: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Stream {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// `:authority` (default `localhost`), for signatures whose `htu` names a port.
    pub fn authority(mut self, authority: &str) -> Stream {
        if let Some(entry) = self.headers.iter_mut().find(|(n, _)| n == ":authority") {
            entry.1 = authority.into();
        }
        self
    }

    /// A body chunk sent `at_ms` after the start; `end` ends the stream with it.
    pub fn data(mut self, at_ms: u64, bytes: &[u8], end: bool) -> Stream {
        self.events
            .push(json!({"at": at_ms, "data": STANDARD.encode(bytes), "end": end}));
        self
    }

    /// Trailers sent `at_ms` after the start, ending the stream.
    pub fn trailers(mut self, at_ms: u64, trailers: &[(&str, &str)]) -> Stream {
        self.events.push(json!({"at": at_ms, "trailers": trailers}));
        self
    }

    /// Keeps the stream open after its headers and sends nothing more: a body that never
    /// comes. (Not an empty DATA frame: Envoy closes a connection that sends several in a
    /// row, `max_consecutive_inbound_frames_with_empty_payload`.)
    pub fn stall(mut self) -> Stream {
        self.events.push(json!({"at": 0, "stall": true}));
        self
    }
}

/// What came back on one stream.
#[derive(Clone, Debug)]
pub struct Answer {
    /// `None` if no response came before the client gave up.
    pub status: Option<u16>,
    pub headers: Value,
    pub body: String,
    /// The server reset the stream.
    pub reset: bool,
    /// Milliseconds from the start until the response headers came.
    pub answered_at_ms: Option<u64>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers[name].as_str()
    }
}

/// A run of streams on one connection (HTTP/2), or one connection each (HTTP/1.1).
pub struct Frames<'a> {
    port: u16,
    pki: &'a Pki,
    cert: Option<&'a ClientCert>,
    protocol: Protocol,
    timeout_ms: u64,
}

impl<'a> Frames<'a> {
    pub fn new(port: u16, pki: &'a Pki, protocol: Protocol) -> Frames<'a> {
        Frames {
            port,
            pki,
            cert: None,
            protocol,
            timeout_ms: 15_000,
        }
    }

    pub fn cert(mut self, cert: &'a ClientCert) -> Frames<'a> {
        self.cert = Some(cert);
        self
    }

    /// How long the client waits for all answers.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Frames<'a> {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Sends the streams and returns their answers, in order.
    pub fn send(&self, streams: &[Stream]) -> Vec<Answer> {
        let spec = json!({
            "port": self.port,
            "ca": self.pki.ca,
            "cert": self.cert.map(|c| &c.cert),
            "key": self.cert.map(|c| &c.key),
            "protocol": self.protocol.alpn(),
            "timeout_ms": self.timeout_ms,
            "streams": streams.iter().map(|s| json!({
                "headers": s.headers,
                "events": s.events,
            })).collect::<Vec<_>>(),
        });
        let result = run_interop_client("h2_client.py", &spec);
        result["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .map(|s| Answer {
                status: s["status"].as_u64().map(|n| n as u16),
                headers: s["headers"].clone(),
                body: s["body"].as_str().unwrap_or_default().to_string(),
                reset: s["reset"].as_bool().unwrap_or(false),
                answered_at_ms: s["answered_at_ms"].as_u64(),
            })
            .collect()
    }

    /// Sends one stream.
    pub fn send_one(&self, stream: Stream) -> Answer {
        self.send(&[stream]).remove(0)
    }
}
