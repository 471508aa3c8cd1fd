//! The upstream behind Envoy: an HTTP/1.1 server in the driver that answers `200 ok` and
//! checks what Tether let through.
//!
//! It counts the requests of each row that reached it (a refused request must never arrive;
//! a served one exactly once), and records a violation when a request arrives with anything
//! but Tether's own `x-tether-sub` (a client's forged copy, or a look-alike such as
//! `x_tether_sub`), with a body of another length than was sent, or, for the trailers row,
//! without its trailer or with a forged claim trailer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::jose::SUBJECT;
use crate::kinds::{Kind, Row};
use crate::requests::{BODY_BYTES_HEADER, ROW_HEADER, SUB_HEADER, TRAILER};

const EXAMPLES: usize = 10;

/// What reached the upstream.
pub struct Seen {
    rows: Vec<Row>,
    /// Requests per row (indexed like `rows`).
    pub reached: Vec<AtomicU64>,
    /// Requests with no known row tag.
    pub untagged: AtomicU64,
    pub violations: AtomicU64,
    pub examples: Mutex<Vec<String>>,
}

impl Seen {
    fn violation(&self, row: &str, what: String) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < EXAMPLES {
            examples.push(format!("{row}: {what}"));
        }
    }
}

/// Listens on 127.0.0.1 (any free port); serves until the process ends.
pub async fn start(rows: Vec<Row>) -> Result<(u16, Arc<Seen>), String> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| format!("upstream: bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("upstream: {e}"))?
        .port();
    let seen = Arc::new(Seen {
        reached: rows.iter().map(|_| AtomicU64::new(0)).collect(),
        rows,
        untagged: AtomicU64::new(0),
        violations: AtomicU64::new(0),
        examples: Mutex::new(Vec::new()),
    });
    let server = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let seen = Arc::clone(&server);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let seen = Arc::clone(&seen);
                    async move { Ok::<_, Infallible>(serve(&seen, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((port, seen))
}

async fn serve(seen: &Seen, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let tag = request
        .headers()
        .get(ROW_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let row = seen.rows.iter().position(|r| r.tag() == tag);
    match row {
        Some(index) => {
            seen.reached[index].fetch_add(1, Ordering::Relaxed);
        }
        None => {
            seen.untagged.fetch_add(1, Ordering::Relaxed);
        }
    }
    let label = if tag.is_empty() { "untagged" } else { &tag };
    check_claim_headers(seen, label, request.headers(), true);
    let announced: Option<usize> = request
        .headers()
        .get(BODY_BYTES_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());

    let mut received = 0usize;
    let mut trailers: Option<HeaderMap> = None;
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => received += data.len(),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(e) => {
                seen.violation(label, format!("body cut short: {e}"));
                break;
            }
        }
    }
    if let Some(announced) = announced {
        if announced != received {
            seen.violation(label, format!("body of {received} bytes, {announced} sent"));
        }
    }
    if row.is_some_and(|i| seen.rows[i].kind == Kind::Trailers) {
        match &trailers {
            Some(t) if t.get(TRAILER).is_some_and(|v| v == "done") => {
                check_claim_headers(seen, label, t, false)
            }
            _ => seen.violation(label, format!("trailer {TRAILER} missing")),
        }
    }
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

/// `x-tether-sub` is Tether's alone: exactly one, saying the token's `sub`, among the
/// headers (`required`), and no look-alike of it (names equal once `_` and `.` are read as
/// `-`, as CGI and WSGI read them) anywhere.
fn check_claim_headers(seen: &Seen, label: &str, headers: &HeaderMap, required: bool) {
    let mut subs = headers.get_all(SUB_HEADER).iter();
    match (subs.next(), subs.next(), required) {
        (Some(value), None, true) if value == SUBJECT => {}
        (None, None, false) => {}
        (first, _, _) => seen.violation(
            label,
            format!(
                "{SUB_HEADER} was {:?}",
                first.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            ),
        ),
    }
    for name in headers.keys() {
        let folded = name.as_str().replace(['_', '.'], "-");
        if folded == SUB_HEADER && name.as_str() != SUB_HEADER {
            seen.violation(
                label,
                format!("look-alike header {name} reached the upstream"),
            );
        }
    }
}
