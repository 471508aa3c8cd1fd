//! Sends the plan: HTTP/1.1 and HTTP/2 over mutual TLS (the `alice` certificate on every
//! connection), and checks every answer against its kind as it arrives.
//!
//! Fast lanes each keep one HTTP/1.1 connection and share a few HTTP/2 connections (their
//! streams interleave), and take the next item of the fast plan until it runs out. Slow lanes
//! do the same with the slow plan (bodies that come late or never), so that the fast lanes
//! never wait on a held body; an HTTP/1.1 request whose body never came leaves its
//! connection unusable, so slow lanes open a connection per HTTP/1.1 request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::kinds::{row_index, Expected, Kind, Plan, Protocol, Row};
use crate::requests::{BodyPlan, Factory, Keys, Outgoing, AUTHORITY, ROW_HEADER};

/// No answer within this is an error (the deadline check is far stricter: see kinds.rs).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// Mismatch examples kept per row.
const EXAMPLES: usize = 5;

/// What one row saw.
#[derive(Default)]
pub struct RowTally {
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection error, or nothing within 30 s).
    pub errors: u64,
    pub mismatches: u64,
    pub latencies_us: Vec<u32>,
    pub examples: Vec<String>,
}

impl RowTally {
    fn merge(&mut self, other: RowTally) {
        self.sent += other.sent;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += n;
        }
        self.errors += other.errors;
        self.mismatches += other.mismatches;
        self.latencies_us.extend(other.latencies_us);
        for example in other.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(example);
            }
        }
    }
}

/// One answer, or why there was none.
struct Answer {
    status: Option<u16>,
    body: Bytes,
    latency: Duration,
    error: Option<String>,
}

/// Everything the lanes share.
pub struct Load {
    pub rows: Vec<Row>,
    pub plan: Plan,
    pub keys: Keys,
    pub seed: u64,
    pub connector: Connector,
    h2: Vec<Mutex<Option<http2::SendRequest<SoakBody>>>>,
    next_fast: AtomicUsize,
    next_slow: AtomicUsize,
    /// Requests answered (or failed) so far, for progress and the memory samples.
    pub done: AtomicU64,
}

/// How many lanes of each sort, and HTTP/2 connections they share.
pub struct Lanes {
    pub fast_lanes: usize,
    pub slow_lanes: usize,
    pub h2_connections: usize,
}

impl Load {
    pub fn new(
        rows: Vec<Row>,
        plan: Plan,
        keys: Keys,
        seed: u64,
        connector: Connector,
        h2_connections: usize,
    ) -> Load {
        Load {
            rows,
            plan,
            keys,
            seed,
            connector,
            h2: (0..h2_connections.max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next_fast: AtomicUsize::new(0),
            next_slow: AtomicUsize::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// Runs every lane to the end of its plan; returns the tally per row.
    pub async fn run(self: &Arc<Self>, lanes: &Lanes) -> Vec<RowTally> {
        let mut tasks = Vec::new();
        for lane in 0..lanes.fast_lanes {
            let load = Arc::clone(self);
            tasks.push(tokio::spawn(async move { load.lane(lane, false).await }));
        }
        for lane in 0..lanes.slow_lanes {
            let load = Arc::clone(self);
            let id = lanes.fast_lanes + lane;
            tasks.push(tokio::spawn(async move { load.lane(id, true).await }));
        }
        let mut total: Vec<RowTally> = self.rows.iter().map(|_| RowTally::default()).collect();
        for task in tasks {
            // A lane never panics; a join error would lose its tally, which the sent counts show.
            if let Ok(tallies) = task.await {
                for (row, tally) in total.iter_mut().zip(tallies) {
                    row.merge(tally);
                }
            }
        }
        total
    }

    async fn lane(&self, lane: usize, slow: bool) -> Vec<RowTally> {
        let mut factory = Factory::new(&self.keys, lane, self.seed);
        let mut tallies: Vec<RowTally> = self.rows.iter().map(|_| RowTally::default()).collect();
        let mut h1: Option<http1::SendRequest<SoakBody>> = None;
        let (plan, next) = if slow {
            (&self.plan.slow, &self.next_slow)
        } else {
            (&self.plan.fast, &self.next_fast)
        };
        let h2_slot = lane % self.h2.len();
        while let Some(&index) = plan.get(next.fetch_add(1, Ordering::Relaxed)) {
            let index = usize::from(index);
            let row = self.rows[index];
            if row.kind == Kind::Replayed {
                // The original over the other protocol (served, and counted as `signed`
                // there), then the very same request again over this one.
                let Some(original_index) =
                    row_index(&self.rows, Kind::Signed, row.protocol.other())
                else {
                    continue;
                };
                let mut original = factory.build(Kind::Replayed);
                let mut replay = original.clone();
                original.set_header(ROW_HEADER, tag(&self.rows[original_index]));
                let answer = self
                    .send(&mut h1, h2_slot, row.protocol.other(), original)
                    .await;
                record(
                    &mut tallies[original_index],
                    self.rows[original_index],
                    &answer,
                );
                replay.set_header(ROW_HEADER, tag(&row));
                let answer = self.send(&mut h1, h2_slot, row.protocol, replay).await;
                record(&mut tallies[index], row, &answer);
                self.done.fetch_add(2, Ordering::Relaxed);
                continue;
            }
            let mut request = factory.build(row.kind);
            request.set_header(ROW_HEADER, tag(&row));
            if slow && row.protocol == Protocol::H1 {
                h1 = None;
            }
            let answer = self.send(&mut h1, h2_slot, row.protocol, request).await;
            record(&mut tallies[index], row, &answer);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        tallies
    }

    /// Sends one request over `protocol`: HTTP/1.1 on the lane's own connection (made anew
    /// when it is gone), HTTP/2 on the shared connection `h2_slot`.
    async fn send(
        &self,
        h1: &mut Option<http1::SendRequest<SoakBody>>,
        h2_slot: usize,
        protocol: Protocol,
        request: Outgoing,
    ) -> Answer {
        let started = Instant::now();
        let never_ends = matches!(request.body, BodyPlan::Never { .. });
        let exchange = async {
            match protocol {
                Protocol::H1 => {
                    let sender = match h1.as_mut().filter(|s| !s.is_closed()) {
                        Some(sender) => sender,
                        None => h1.insert(self.connector.h1().await?),
                    };
                    // A connection Envoy closed between requests: one new one, once.
                    if sender.ready().await.is_err() {
                        *sender = self.connector.h1().await?;
                        sender.ready().await.map_err(|e| format!("h1 ready: {e}"))?;
                    }
                    let sent = Instant::now();
                    let response = sender
                        .send_request(http_request(request, Protocol::H1))
                        .await
                        .map_err(|e| format!("h1: {e}"))?;
                    read(response, sent).await
                }
                Protocol::H2 => {
                    let mut sender = self.h2_sender(h2_slot).await?;
                    sender.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
                    let sent = Instant::now();
                    let response = sender
                        .send_request(http_request(request, Protocol::H2))
                        .await
                        .map_err(|e| format!("h2: {e}"))?;
                    read(response, sent).await
                }
            }
        };
        let outcome = match tokio::time::timeout(GIVE_UP_AFTER, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {} s", GIVE_UP_AFTER.as_secs())),
        };
        if never_ends || outcome.is_err() {
            // The request body never ended (or the exchange failed): the connection cannot
            // carry another request.
            if protocol == Protocol::H1 {
                *h1 = None;
            }
        }
        match outcome {
            Ok((status, body, latency)) => Answer {
                status: Some(status),
                body,
                latency,
                error: None,
            },
            Err(error) => Answer {
                status: None,
                body: Bytes::new(),
                latency: started.elapsed(),
                error: Some(error),
            },
        }
    }

    async fn h2_sender(&self, slot: usize) -> Result<http2::SendRequest<SoakBody>, String> {
        let mut shared = self.h2[slot].lock().await;
        if let Some(sender) = shared.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let sender = self.connector.h2().await?;
        *shared = Some(sender.clone());
        Ok(sender)
    }
}

fn tag(row: &Row) -> HeaderValue {
    HeaderValue::from_str(&row.tag()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The response's status and whole body, and the time from sending (the connection made
/// and ready: a handshake is in no request's latency) to its last byte.
async fn read(
    response: hyper::Response<hyper::body::Incoming>,
    sent: Instant,
) -> Result<(u16, Bytes, Duration), String> {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body of a {status}: {e}"))?
        .to_bytes();
    Ok((status, body, sent.elapsed()))
}

fn http_request(request: Outgoing, protocol: Protocol) -> Request<SoakBody> {
    // HTTP/2 takes `:scheme` and `:authority` from the URI; HTTP/1.1 sends the path and Host.
    let uri = match protocol {
        Protocol::H1 => request.path.clone(),
        Protocol::H2 => format!("https://{AUTHORITY}{}", request.path),
    };
    let mut builder = Request::builder().method(request.method).uri(uri);
    if protocol == Protocol::H1 {
        builder = builder.header(HOST, AUTHORITY);
    }
    if let Some(length) = request.body.length() {
        builder = builder.header(CONTENT_LENGTH, length);
    }
    for (name, value) in request.headers {
        builder = builder.header(name, value);
    }
    let body = SoakBody::new(request.body);
    builder
        .body(body)
        .unwrap_or_else(|_| Request::new(SoakBody::new(BodyPlan::Empty)))
}

/// Checks one answer against its row's expectation and records it.
fn record(tally: &mut RowTally, row: Row, answer: &Answer) {
    tally.sent += 1;
    tally
        .latencies_us
        .push(answer.latency.as_micros().min(u32::MAX as u128) as u32);
    let Some(status) = answer.status else {
        tally.errors += 1;
        tally.mismatches += 1;
        if tally.examples.len() < EXAMPLES {
            let error = answer.error.as_deref().unwrap_or("no answer");
            tally.examples.push(format!("no answer: {error}"));
        }
        return;
    };
    *tally.statuses.entry(status).or_insert(0) += 1;
    if let Some(problem) = mismatch(row.kind.expected(), status, &answer.body) {
        tally.mismatches += 1;
        if tally.examples.len() < EXAMPLES {
            tally.examples.push(problem);
        }
    }
}

/// Why an answer is not the one expected, if it is not.
fn mismatch(expected: Expected, status: u16, body: &[u8]) -> Option<String> {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status != expected.status {
        return Some(format!("status {status}, body {:?}", text()));
    }
    let description = expected.description?;
    let got: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_string));
    if got.as_deref() == Some(description) {
        None
    } else {
        Some(format!(
            "status {status} but error_description {got:?}, body {:?}",
            text()
        ))
    }
}

impl BodyPlan {
    /// The `content-length` to announce. None with trailers: Envoy forwards a request with
    /// a length to an HTTP/1.1 upstream without chunks, and so without its trailers.
    fn length(&self) -> Option<usize> {
        match self {
            BodyPlan::Empty | BodyPlan::WithTrailers { .. } => None,
            BodyPlan::Now(body) | BodyPlan::Late { body, .. } => Some(body.len()),
            BodyPlan::Never { length } => Some(*length),
        }
    }
}

/// A request body that comes now, later, never, or with trailers.
pub struct SoakBody {
    state: State,
}

enum State {
    Done,
    Data(Bytes, Option<HeaderMap>),
    Waiting(Pin<Box<tokio::time::Sleep>>, Bytes),
    Trailers(HeaderMap),
    Stalled(usize),
}

impl SoakBody {
    fn new(plan: BodyPlan) -> SoakBody {
        let state = match plan {
            BodyPlan::Empty => State::Done,
            BodyPlan::Now(body) => State::Data(body, None),
            BodyPlan::Late { body, after } => {
                State::Waiting(Box::pin(tokio::time::sleep(after)), body)
            }
            BodyPlan::Never { length } => State::Stalled(length),
            BodyPlan::WithTrailers { body, trailers } => State::Data(body, Some(trailers)),
        };
        SoakBody { state }
    }
}

impl Body for SoakBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => Poll::Ready(None),
            State::Data(body, trailers) => {
                self.state = trailers.map_or(State::Done, State::Trailers);
                Poll::Ready(Some(Ok(Frame::data(body))))
            }
            State::Waiting(mut sleep, body) => match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.state = State::Done;
                    Poll::Ready(Some(Ok(Frame::data(body))))
                }
                Poll::Pending => {
                    self.state = State::Waiting(sleep, body);
                    Poll::Pending
                }
            },
            State::Trailers(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            // Never woken: the body never comes, until the request is dropped.
            State::Stalled(length) => {
                self.state = State::Stalled(length);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done | State::Trailers(_) => SizeHint::with_exact(0),
            // Not exact, so that no content-length is derived from it (see `length`).
            State::Data(body, Some(_)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(body.len() as u64);
                hint
            }
            State::Data(body, None) | State::Waiting(_, body) => {
                SizeHint::with_exact(body.len() as u64)
            }
            State::Stalled(length) => SizeHint::with_exact(*length as u64),
        }
    }
}

/// Opens mTLS connections to Envoy's listener, offering `http/1.1` or `h2` by ALPN.
pub struct Connector {
    address: SocketAddr,
    h1_tls: tokio_rustls::TlsConnector,
    h2_tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    /// Connections opened, per protocol (a figure of the report).
    pub opened_h1: AtomicU64,
    pub opened_h2: AtomicU64,
}

impl Connector {
    pub fn new(
        address: SocketAddr,
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Connector, String> {
        let config = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, String> {
            let mut config = client_config(ca, cert, key)?;
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(Connector {
            address,
            h1_tls: tokio_rustls::TlsConnector::from(config(b"http/1.1")?),
            h2_tls: tokio_rustls::TlsConnector::from(config(b"h2")?),
            server_name: ServerName::try_from(AUTHORITY).map_err(|e| e.to_string())?,
            opened_h1: AtomicU64::new(0),
            opened_h2: AtomicU64::new(0),
        })
    }

    async fn tls(
        &self,
        protocol: Protocol,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, String> {
        let tcp = TcpStream::connect(self.address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let tls = match protocol {
            Protocol::H1 => &self.h1_tls,
            Protocol::H2 => &self.h2_tls,
        };
        let stream = tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let wanted: &[u8] = match protocol {
            Protocol::H1 => b"http/1.1",
            Protocol::H2 => b"h2",
        };
        if stream.get_ref().1.alpn_protocol() != Some(wanted) {
            return Err(format!(
                "ALPN: Envoy did not agree to {}",
                String::from_utf8_lossy(wanted)
            ));
        }
        Ok(TokioIo::new(stream))
    }

    pub async fn h1(&self) -> Result<http1::SendRequest<SoakBody>, String> {
        let io = self.tls(Protocol::H1).await?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        // The connection's task ends when Envoy closes it or the sender is dropped.
        tokio::spawn(connection);
        self.opened_h1.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    pub async fn h2(&self) -> Result<http2::SendRequest<SoakBody>, String> {
        let io = self.tls(Protocol::H2).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        self.opened_h2.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

fn client_config(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())
}
