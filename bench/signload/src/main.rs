//! `signload`: sends pre-generated HTTP/1.1 requests, each at most once, over keep-alive
//! mutual-TLS connections, and reports requests/s and latency percentiles as JSON.
//!
//! `make bench` uses it for signed requests: every request carries a fresh signature
//! (`x-jws-signature`), which `oha` cannot do (its headers are the same on every request),
//! and Tether refuses a replayed one. The unsigned baseline row goes through it too, so the
//! two compare like with like.
//!
//! Usage: `signload <settings.json>` with
//! `{"address": "127.0.0.1:10443", "server_name": "localhost", "ca": "ca.pem",
//!   "cert": "client.pem", "key": "client.key", "connections": 32,
//!   "requests": "requests.jsonl", "max_seconds": 10}`; each line of the requests file is
//! `{"method": "POST", "path": "/x", "headers": [["name", "value"]], "body": "..."}`
//! (`content-length` is added, except on a GET or HEAD without a body).
//!
//! Every request is sent once, in file order across the connections, until the file is used
//! up or `max_seconds` (optional) have passed; the requests left then are not sent. The report:
//! `{"requests", "elapsed_seconds", "requests_per_second", "p50_ms", "p99_ms",
//!   "statuses": {"200": n, ...}, "errors": {"message": n}, "unsent": n}`. `requests` counts
//! the responses; a request that got none (connection closed, bad response) is counted in
//! `errors` and its connection is replaced. A request is never sent twice.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

type Stream = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn main() {
    if let Err(error) = run() {
        eprintln!("signload: {error}");
        std::process::exit(1);
    }
}

/// What one connection's thread saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

fn run() -> Result<(), String> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: signload <settings.json>")?;
    let settings: Value =
        serde_json::from_str(&read(&path)?).map_err(|e| format!("{path}: {e}"))?;
    let text = |name: &str| -> Result<String, String> {
        settings[name]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("settings: missing {name}"))
    };
    let requests = Arc::new(load_requests(&text("requests")?, &text("server_name")?)?);
    let tls = Arc::new(client_config(&text("ca")?, &text("cert")?, &text("key")?)?);
    let server_name = ServerName::try_from(text("server_name")?).map_err(|e| e.to_string())?;
    let address = text("address")?;
    let connections = settings["connections"].as_u64().unwrap_or(32).max(1) as usize;
    let max_seconds = settings["max_seconds"].as_f64();

    let next = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = max_seconds.map(|s| started + Duration::from_secs_f64(s));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (requests, tls, next) =
                (Arc::clone(&requests), Arc::clone(&tls), Arc::clone(&next));
            let total = Arc::clone(&total);
            let (address, server_name) = (address.clone(), server_name.clone());
            std::thread::spawn(move || {
                let mut own = Tally::default();
                let mut stream: Option<Stream> = None;
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    if stream.is_none() {
                        // Connected and handshaken before a request is taken, so that the
                        // handshake is not in any request's latency and a failed connection
                        // does not use up a request.
                        match connect(&address, &tls, &server_name) {
                            Ok(s) => stream = Some(s),
                            Err(e) => {
                                *own.errors.entry(format!("connect: {e}")).or_insert(0) += 1;
                                std::thread::sleep(Duration::from_millis(50));
                                if next.load(Ordering::Relaxed) >= requests.len() {
                                    break;
                                }
                                continue;
                            }
                        }
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(request) = requests.get(i) else {
                        break;
                    };
                    let Some(conn) = stream.as_mut() else { break };
                    let sent = Instant::now();
                    match exchange(conn, request) {
                        Ok((status, keep_alive)) => {
                            own.latencies_us.push(sent.elapsed().as_micros() as u64);
                            *own.statuses.entry(status).or_insert(0) += 1;
                            if !keep_alive {
                                stream = None;
                            }
                        }
                        Err(e) => {
                            *own.errors.entry(e).or_insert(0) += 1;
                            stream = None;
                        }
                    }
                }
                let mut all = total.lock().unwrap_or_else(|e| e.into_inner());
                all.latencies_us.extend(own.latencies_us);
                for (status, n) in own.statuses {
                    *all.statuses.entry(status).or_insert(0) += n;
                }
                for (error, n) in own.errors {
                    *all.errors.entry(error).or_insert(0) += n;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let unsent = requests
        .len()
        .saturating_sub(next.load(Ordering::Relaxed).min(requests.len()));
    let mut tally = total.lock().unwrap_or_else(|e| e.into_inner());
    tally.latencies_us.sort_unstable();
    let latencies = &tally.latencies_us;
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index] as f64 / 1000.0
    };
    let report = json!({
        "requests": latencies.len(),
        "elapsed_seconds": elapsed,
        "requests_per_second": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "statuses": tally
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "errors": tally.errors,
        "unsent": unsent,
    });
    println!("{report}");
    Ok(())
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// Each request serialized once, ready to write.
fn load_requests(path: &str, host: &str) -> Result<Vec<Vec<u8>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Value =
            serde_json::from_str(&line).map_err(|e| format!("{path}:{}: {e}", number + 1))?;
        let body = r["body"].as_str().unwrap_or_default();
        let method = r["method"].as_str().unwrap_or("GET");
        let mut bytes = format!(
            "{method} {} HTTP/1.1\r\nhost: {host}\r\n",
            r["path"].as_str().unwrap_or("/")
        );
        // A GET or HEAD without a body has no content-length, as `oha` sends it (the DPoP rows
        // compare with oha's rows); any other request says its length, even 0.
        if !(body.is_empty() && matches!(method, "GET" | "HEAD")) {
            bytes.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        for header in r["headers"].as_array().into_iter().flatten() {
            let (Some(name), Some(value)) = (header[0].as_str(), header[1].as_str()) else {
                return Err(format!(
                    "{path}:{}: a header is not [name, value]",
                    number + 1
                ));
            };
            bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        bytes.push_str("\r\n");
        bytes.push_str(body);
        out.push(bytes.into_bytes());
    }
    Ok(out)
}

fn client_config(ca: &str, cert: &str, key: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())
}

/// A new connection, with its TLS handshake done.
fn connect(
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
    server_name: &ServerName<'static>,
) -> Result<Stream, String> {
    let mut tcp = TcpStream::connect(address).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut connection = rustls::ClientConnection::new(Arc::clone(tls), server_name.clone())
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(BufReader::new(rustls::StreamOwned::new(connection, tcp)))
}

/// Writes one request and reads its response; returns the status and whether the
/// connection stays open.
fn exchange<S: Read + Write>(
    conn: &mut BufReader<S>,
    request: &[u8],
) -> Result<(u16, bool), String> {
    conn.get_mut()
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    conn.get_mut().flush().map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    read_line(conn, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", line.trim_end()))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = !line.starts_with("HTTP/1.0");
    loop {
        line.clear();
        read_line(conn, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| "bad content-length".to_string())?,
                    )
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    if chunked {
        read_chunked(conn)?;
    } else if let Some(length) = length {
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        // Neither a length nor chunks: the body runs to the end of the connection.
        std::io::copy(conn, &mut std::io::sink()).map_err(|e| format!("read body: {e}"))?;
        keep_alive = false;
    }
    Ok((status, keep_alive))
}

/// One CRLF-terminated line; end of file before it is an error.
fn read_line<R: BufRead>(conn: &mut R, line: &mut String) -> Result<(), String> {
    match conn.read_line(line) {
        Ok(0) => Err("connection closed before the response".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A chunked body (RFC 9112 §7.1), read and dropped, trailers included.
fn read_chunked<R: BufRead>(conn: &mut R) -> Result<(), String> {
    let mut line = String::new();
    loop {
        line.clear();
        read_line(conn, &mut line)?;
        let size_text = line.trim_end().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            loop {
                line.clear();
                read_line(conn, &mut line)?;
                if line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        conn.read_exact(&mut chunk)
            .map_err(|e| format!("read chunk: {e}"))?;
    }
}
