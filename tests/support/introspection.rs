//! An introspection endpoint (RFC 7662) the test controls, for the ways a real one fails:
//! it answers each token with what the test says, late, or not at all, and counts the calls
//! per token. (The real authorization server is oidc-provider: `tests/interop/oidc/as.mjs`.)

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the endpoint answers about one token: a status, a content type and a body, after a
/// delay.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    pub delay_ms: u64,
}

impl Reply {
    /// 200 with the JSON `body`.
    pub fn json(body: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json".into(),
            body: body.to_string(),
            delay_ms: 0,
        }
    }

    pub fn late(mut self, delay_ms: u64) -> Reply {
        self.delay_ms = delay_ms;
        self
    }
}

type Replies = Arc<Mutex<HashMap<String, Reply>>>;

#[derive(Clone)]
pub struct IntrospectionServer {
    pub port: u16,
    replies: Replies,
    /// Calls per token, and the Authorization header of the last call.
    calls: Arc<Mutex<HashMap<String, usize>>>,
    last_authorization: Arc<Mutex<Option<String>>>,
}

impl IntrospectionServer {
    /// A server answering `{"active": false}` to any token it was not told about.
    pub fn start() -> IntrospectionServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind introspection server");
        let port = listener.local_addr().expect("address").port();
        let server = IntrospectionServer {
            port,
            replies: Arc::default(),
            calls: Arc::default(),
            last_authorization: Arc::default(),
        };
        let serving = server.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serving = serving.clone();
                std::thread::spawn(move || serving.answer(stream));
            }
        });
        server
    }

    /// Answers `token` with `reply` from now on.
    pub fn reply(&self, token: &str, reply: Reply) {
        self.replies
            .lock()
            .expect("replies")
            .insert(token.to_string(), reply);
    }

    /// How many calls asked about `token`.
    pub fn calls(&self, token: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(token)
            .copied()
            .unwrap_or(0)
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.last_authorization
            .lock()
            .expect("authorization")
            .clone()
    }

    fn answer(&self, stream: TcpStream) {
        let mut reader = BufReader::new(&stream);
        let mut length = 0usize;
        let mut authorization = None;
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("authorization:") {
                authorization = Some(line["authorization:".len()..].trim().to_string());
            }
            line.clear();
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let form = String::from_utf8_lossy(&body).into_owned();
        let token = form
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(percent_decode)
            .unwrap_or_default();
        *self.last_authorization.lock().expect("authorization") = authorization;
        *self
            .calls
            .lock()
            .expect("calls")
            .entry(token.clone())
            .or_default() += 1;
        let reply = self
            .replies
            .lock()
            .expect("replies")
            .get(&token)
            .cloned()
            .unwrap_or_else(|| Reply::json(&serde_json::json!({"active": false})));
        std::thread::sleep(Duration::from_millis(reply.delay_ms));
        let _ = write!(
            &stream,
            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            reply.status,
            reply.content_type,
            reply.body.len(),
            reply.body
        );
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
