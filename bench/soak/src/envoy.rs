//! The Envoy under soak: its bootstrap (one mTLS listener offering `h2` and `http/1.1`,
//! Tether, the router to the driver's upstream; as the e2e harness builds it in
//! tests/support/envoy.rs), the process, and what the soak reads from it: the admin API's
//! `/stats`, its resident memory, and its log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pki::Pki;

/// Envoy's worker threads: the soak's one figure that must not change.
pub const WORKERS: u32 = 2;

pub fn bootstrap(pki: &Pki, wasm: &Path, tether: &Value, upstream_port: u16) -> Value {
    json!({
        "admin": {"address": address(0)},
        "static_resources": {
            "listeners": [{
                "name": "soak",
                "address": address(0),
                // Connections spread evenly over the two workers (not by the kernel's hash),
                // so that both worker VMs take their share of every kind.
                "enable_reuse_port": false,
                "connection_balance_config": {"exact_balance": {}},
                "filter_chains": [{
                    "transport_socket": tls(pki),
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "soak",
                            "normalize_path": true,
                            "merge_slashes": true,
                            "http_protocol_options": {"enable_trailers": true},
                            "route_config": {"virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                            }]},
                            "http_filters": [
                                tether_filter(wasm, tether),
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                                },
                            ],
                        },
                    }],
                }],
            }],
            "clusters": [upstream_cluster(upstream_port)],
        },
    })
}

fn address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// Mutual TLS, every client with a certificate of the soak's CA; `h2` offered before
/// `http/1.1`.
fn tls(pki: &Pki) -> Value {
    let file = |path: &Path| json!({"filename": path});
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": file(&pki.server_cert),
                    "private_key": file(&pki.server_key),
                }],
                "validation_context": {"trusted_ca": file(&pki.ca)},
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    })
}

/// Tether in its own VM (`vm_id`), as README's "Running it in Envoy" asks.
fn tether_filter(wasm: &Path, tether: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tether",
                // Signed requests: Envoy hands the body to a filter that paused on the
                // headers (README).
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": tether.to_string(),
                },
                "vm_config": {
                    "vm_id": "tether",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}},
                },
            },
        },
    })
}

/// The driver's upstream over HTTP/1.1, trailers included (chunked), so that the trailers
/// row can be checked there.
fn upstream_cluster(port: u16) -> Value {
    json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(port)}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}},
            },
        },
    })
}

/// Runs Envoy in the background with its output appended to `$SOAK_ENVOY_LOG`, prints its
/// pid, and kills it when stdin reaches end of file: however the driver ends, Envoy does not
/// outlive it (as in the e2e harness).
const SUPERVISOR: &str = r#"
"$@" >>"$SOAK_ENVOY_LOG" 2>&1 &
envoy=$!
echo "$envoy"
read -r _ || true
kill "$envoy" 2>/dev/null
wait "$envoy"
"#;

pub struct Envoy {
    supervisor: Child,
    stop: Option<ChildStdin>,
    pub pid: u32,
    pub admin: String,
    pub port: u16,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts `envoy -c <config> --concurrency 2`; waits until the admin API says LIVE and
    /// the listener accepts connections. `Err` carries the log.
    pub fn start(binary: &Path, config: &Path, dir: &Path) -> Result<Envoy, String> {
        let log = dir.join("envoy.log");
        let admin_file = dir.join("envoy.admin");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&admin_file);
        let mut supervisor = Command::new("bash")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("tether-soak-supervisor")
            .arg(binary)
            .arg("-c")
            .arg(config)
            .args(["--concurrency", &WORKERS.to_string()])
            .arg("--disable-hot-restart")
            // Tether logs each refusal at info: half a million lines would only slow the run.
            // Warnings and errors remain, and with them panics and traps.
            .args(["-l", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .env("SOAK_ENVOY_LOG", &log)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let stop = supervisor.stdin.take();
        let mut pid_line = String::new();
        if let Some(stdout) = supervisor.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut pid_line);
        }
        let pid = pid_line
            .trim()
            .parse()
            .map_err(|_| format!("supervisor printed {pid_line:?} instead of a pid"))?;
        let mut envoy = Envoy {
            supervisor,
            stop,
            pid,
            admin: String::new(),
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if !envoy.is_running() {
                return Err(format!(
                    "Envoy exited during startup:\n{}",
                    envoy.log_text()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after 120 s:\n{}",
                    envoy.log_text()
                ));
            }
            if envoy.admin.is_empty() {
                if let Ok(address) = std::fs::read_to_string(&admin_file) {
                    if address.trim().parse::<SocketAddr>().is_ok() {
                        envoy.admin = address.trim().to_string();
                    }
                }
            }
            if !envoy.admin.is_empty() && envoy.get("/ready").is_ok_and(|b| b.trim() == "LIVE") {
                if let Some(port) = envoy.listener_port() {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        envoy.port = port;
                        return Ok(envoy);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the Envoy process is alive (not gone, not a zombie).
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state != "Z" && state != "X")
    }

    /// A GET on the admin API (plain HTTP/1.1, one request per connection, on 127.0.0.1).
    pub fn get(&self, path: &str) -> Result<String, String> {
        let mut stream = TcpStream::connect(&self.admin).map_err(|e| format!("admin: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("admin: {e}"))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
        )
        .map_err(|e| format!("admin: {e}"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| format!("admin {path}: {e}"))?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or(format!("admin {path}: no response"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!(
                "admin {path}: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body).ok_or(format!("admin {path}: bad chunked body"))
        } else {
            Ok(body.to_string())
        }
    }

    fn listener_port(&self) -> Option<u16> {
        let listeners: Value =
            serde_json::from_str(&self.get("/listeners?format=json").ok()?).ok()?;
        let port = listeners["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == "soak")?["local_address"]["socket_address"]["port_value"]
            .as_u64()?;
        u16::try_from(port).ok()
    }

    /// Every counter and gauge of `/stats` (histograms left out), by name.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, String> {
        let text = self.get("/stats?format=json")?;
        let stats: Value = serde_json::from_str(&text).map_err(|e| format!("/stats: {e}"))?;
        Ok(stats["stats"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// VmRSS of the Envoy process, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A chunked body (RFC 9112 §7.1) read whole.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for Envoy {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.supervisor.wait();
    }
}
