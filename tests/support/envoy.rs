//! The real Envoy: a bootstrap generator for test configurations, a process wrapper that
//! starts Envoy and waits until it serves, and `envoy --mode validate`.
//!
//! Test bootstraps are JSON (Envoy reads a `.json` bootstrap as readily as YAML), built with
//! `serde_json`, so the filter's JSON configuration needs no YAML escaping.
//!
//! Envoy must not outlive the tests. A `static` Envoy shared by all tests of a binary is never
//! dropped, so Envoy is started under a tiny `bash` supervisor whose stdin is a pipe from the
//! test process: when the test process exits, however it exits, the pipe reaches end of file
//! and the supervisor kills Envoy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pki::{ClientCert, Pki};
use super::repo_root;
use super::scratch::ScratchDir;

/// Overrides the Envoy binary (the Makefile sets it to the project's `.venv/bin/envoy`).
pub const ENVOY_ENV: &str = "TETHER_ENVOY";
/// Overrides the filter module (the Makefile sets it to the project's `dist/tether.wasm`).
pub const WASM_ENV: &str = "TETHER_WASM";

/// How long Envoy may take to become ready. Compiling the module with V8 takes a moment on a
/// loaded machine; a real failure shows up much earlier as an exited process.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Log levels for every Envoy the harness runs: `info` overall, but everything the filter
/// logs (`wasm`, down to `debug`), so that the "no token in the log" test covers all of it.
/// Envoy's own `debug` logs print request headers and would leak tokens regardless of the
/// filter, which is why the overall level stays at `info`.
const LOG_ARGS: [&str; 4] = ["-l", "info", "--component-log-level", "wasm:debug"];

/// The Envoy binary: `$TETHER_ENVOY`, else `<repo>/.venv/bin/envoy`.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os(ENVOY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy not found at {} (run `make setup`, or set {ENVOY_ENV})",
        path.display()
    );
    path
}

/// The filter module: `$TETHER_WASM`, else `<repo>/dist/tether.wasm`.
pub fn wasm_module() -> PathBuf {
    let path = std::env::var_os(WASM_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist/tether.wasm"));
    assert!(
        path.exists(),
        "filter module not found at {} (run `make build`, or set {WASM_ENV})",
        path.display()
    );
    path
}

/// A test bootstrap: one HTTPS listener with mutual TLS, the Tether filter (optional) and the
/// router, sending everything to an upstream on 127.0.0.1. Ports are chosen by the kernel
/// (port 0) and read back from the admin API, so concurrent Envoys never race for a port.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The filter's JSON configuration; `None` leaves the filter out (plumbing checks).
    pub tether: Option<Value>,
    pub upstream_port: u16,
    /// `false` (the default) lets requests without a client certificate reach the filter,
    /// which must then refuse them on routes that need a binding.
    pub require_client_certificate: bool,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The filter module; `None` means [`wasm_module`], looked up only if the filter is in.
    pub wasm: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); otherwise HTTP/1.1 only.
    pub http2: bool,
    /// Let HTTP/1.1 requests carry trailers (`http_protocol_options.enable_trailers`).
    pub enable_trailers: bool,
    /// The Wasm filter's `allow_on_headers_stop_iteration` (true, as the README asks).
    pub allow_on_headers_stop_iteration: bool,
    /// Envoy's `--concurrency` (worker threads); `None` leaves Envoy's default (one per core).
    pub concurrency: Option<u32>,
    /// More plain-HTTP clusters on 127.0.0.1, by name and port (key servers).
    pub clusters: Vec<(String, u16)>,
    /// More HTTP filters, before Tether's (another plugin in the same Envoy).
    pub filters_before: Vec<Value>,
    /// A CRL for `validation_context.crl`: revoked client certificates fail the handshake.
    pub crl: Option<PathBuf>,
    /// A file access log: its path and its text format (with `%REQ_WITHOUT_QUERY(...)%`
    /// available).
    pub access_log: Option<(PathBuf, String)>,
    /// More fields of the HTTP connection manager, such as `forward_client_cert_details` and
    /// `set_current_client_cert_details` (what it does with XFCC).
    pub connection_manager: Option<Value>,
    /// Connect to the upstream over TLS, presenting this client certificate and trusting the
    /// CA (an edge in front of a sidecar).
    pub upstream_tls: Option<ClientCert>,
    /// Environment variables of the Envoy process that Tether's VM may read
    /// (`vm_config.environment_variables.host_env_keys`): secrets kept out of the config.
    pub vm_env: Vec<(String, String)>,
}

impl Bootstrap {
    pub fn new(pki: &Pki, upstream_port: u16, tether: Option<Value>) -> Bootstrap {
        Bootstrap {
            tether,
            upstream_port,
            require_client_certificate: false,
            ca: pki.ca.clone(),
            server_cert: pki.server_cert.clone(),
            server_key: pki.server_key.clone(),
            wasm: None,
            http2: false,
            enable_trailers: false,
            allow_on_headers_stop_iteration: true,
            concurrency: None,
            clusters: Vec::new(),
            filters_before: Vec::new(),
            crl: None,
            access_log: None,
            connection_manager: None,
            upstream_tls: None,
            vm_env: Vec::new(),
        }
    }

    /// The Envoy bootstrap (v3 API) as JSON.
    pub fn to_json(&self) -> Value {
        let file = |path: &Path| json!({"filename": path});
        let mut http_filters = self.filters_before.clone();
        if let Some(config) = &self.tether {
            let wasm = self.wasm.clone().unwrap_or_else(wasm_module);
            let mut filter = wasm_filter(config, &wasm);
            filter["typed_config"]["config"]["allow_on_headers_stop_iteration"] =
                json!(self.allow_on_headers_stop_iteration);
            if !self.vm_env.is_empty() {
                let keys: Vec<&str> = self.vm_env.iter().map(|(k, _)| k.as_str()).collect();
                filter["typed_config"]["config"]["vm_config"]["environment_variables"] =
                    json!({"host_env_keys": keys});
            }
            http_filters.push(filter);
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }
        }));
        let mut echo = static_cluster("echo", self.upstream_port, 2000);
        if self.enable_trailers || self.http2 {
            // Trailers reach the HTTP/1.1 echo backend (chunked) only when the cluster allows.
            echo["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {"enable_trailers": true}},
                }
            });
        }
        if let Some(client) = &self.upstream_tls {
            echo["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": file(&client.cert),
                            "private_key": file(&client.key),
                        }],
                        "validation_context": {"trusted_ca": file(&self.ca)},
                    },
                },
            });
        }
        let mut clusters = vec![echo];
        clusters.extend(
            self.clusters
                .iter()
                .map(|(name, port)| static_cluster(name, *port, 1000)),
        );
        let access_log: Vec<Value> = self
            .access_log
            .iter()
            .map(|(path, format)| {
                json!({
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": path,
                        "log_format": {
                            "text_format_source": {"inline_string": format},
                            "formatters": [{
                                "name": "envoy.formatter.req_without_query",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"},
                            }],
                        },
                    },
                })
            })
            .collect();
        let mut validation = json!({"trusted_ca": file(&self.ca)});
        if let Some(crl) = &self.crl {
            validation["crl"] = file(crl);
        }
        let mut connection_manager = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "tether_https",
            "access_log": access_log,
            // The filter's path rules assume RFC 3986 normalized paths; it refuses what
            // normalization leaves ambiguous (%2F, %5C).
            "normalize_path": true,
            "merge_slashes": true,
            "http_protocol_options": {"enable_trailers": self.enable_trailers},
            "route_config": {
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{
                        "match": {"prefix": "/"},
                        "route": {"cluster": "echo"},
                    }],
                }],
            },
            "http_filters": http_filters,
        });
        if let (Some(manager), Some(more)) = (
            connection_manager.as_object_mut(),
            self.connection_manager.as_ref().and_then(Value::as_object),
        ) {
            manager.extend(more.clone());
        }
        json!({
            "admin": {"address": socket_address(0)},
            "static_resources": {
                "listeners": [{
                    "name": "tether_https",
                    "address": socket_address(0),
                    // Connections spread evenly over the workers (not by the kernel's hash),
                    // so that a test with several connections reaches every worker VM.
                    "enable_reuse_port": false,
                    "connection_balance_config": {"exact_balance": {}},
                    "filter_chains": [{
                        "transport_socket": {
                            "name": "envoy.transport_sockets.tls",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                                "require_client_certificate": self.require_client_certificate,
                                "common_tls_context": {
                                    "tls_certificates": [{
                                        "certificate_chain": file(&self.server_cert),
                                        "private_key": file(&self.server_key),
                                    }],
                                    "validation_context": validation,
                                    "alpn_protocols": if self.http2 { json!(["h2", "http/1.1"]) } else { json!(["http/1.1"]) },
                                },
                            },
                        },
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": connection_manager,
                        }],
                    }],
                }],
                "clusters": clusters,
            },
        })
    }

    /// Writes the bootstrap as `envoy.json` in `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("envoy.json");
        let text = serde_json::to_string_pretty(&self.to_json()).expect("bootstrap serializes");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// A plain-HTTP cluster named `name` with one endpoint, 127.0.0.1:`port`.
fn static_cluster(name: &str, port: u16, connect_timeout_ms: u64) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": format!("{}s", connect_timeout_ms as f64 / 1000.0),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
    })
}

fn socket_address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// The `envoy.filters.http.wasm` entry running Tether with `config` (the plugin
/// configuration is passed to the module as a JSON string), in Tether's own VM.
pub fn wasm_filter(config: &Value, wasm: &Path) -> Value {
    // Tether's own VM: shared data is scoped by vm_id, and another plugin must not share
    // Tether's key sets and replay record (README).
    plugin_filter("tether", wasm, &config.to_string(), "tether")
}

/// The `envoy.filters.http.wasm` entry running the plugin `wasm` named `name`, with the
/// configuration string `configuration`, in VM `vm_id`.
pub fn plugin_filter(name: &str, wasm: &Path, configuration: &str, vm_id: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                // Envoy >= 1.35: a filter that pauses on the headers still receives the body
                // (without it Envoy holds the body back too), which request signatures need.
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}},
                },
            },
        },
    })
}

/// The supervisor: runs Envoy in the background with its output appended to
/// `$TETHER_ENVOY_LOG`, prints Envoy's pid, then waits for a line or end of file on stdin and
/// kills Envoy. (A background job of a non-interactive shell reads /dev/null, not the pipe.)
const SUPERVISOR: &str = r#"
"$@" >>"$TETHER_ENVOY_LOG" 2>&1 &
envoy=$!
echo "$envoy"
read -r _ || true
kill "$envoy" 2>/dev/null
wait "$envoy"
"#;

/// A running Envoy. Dropping it stops Envoy; so does the test process exiting.
#[derive(Debug)]
pub struct Envoy {
    supervisor: Child,
    /// Closing this stops Envoy (see [`SUPERVISOR`]).
    stop: Option<ChildStdin>,
    pid: u32,
    admin: String,
    https_port: u16,
    log: PathBuf,
    /// The directory of a harness-generated bootstrap and its log, removed after Envoy stops.
    owned_dir: Option<ScratchDir>,
}

impl Envoy {
    /// Starts Envoy with a generated bootstrap; panics with the log if it does not come up.
    pub fn start(bootstrap: &Bootstrap) -> Envoy {
        Envoy::try_start(bootstrap).unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Starts Envoy with a generated bootstrap; `Err` with the log if it does not come up.
    pub fn try_start(bootstrap: &Bootstrap) -> Result<Envoy, String> {
        let scratch = ScratchDir::new("envoy");
        let config = bootstrap.write(scratch.path());
        let mut envoy = Envoy::start_with_args(
            &config,
            scratch.path(),
            scratch.path(),
            bootstrap.concurrency,
            &bootstrap.vm_env,
        )?;
        envoy.owned_dir = Some(scratch);
        Ok(envoy)
    }

    /// Starts Envoy with the config file `config`, run from `cwd` (relative paths in the
    /// config resolve against it); the log and admin address file go to `workdir`. Waits until
    /// the admin API says `LIVE` and the first listener accepts connections.
    ///
    /// Returns the log text if Envoy exits or does not become ready in time.
    pub fn start_with_file(config: &Path, cwd: &Path, workdir: &Path) -> Result<Envoy, String> {
        Envoy::start_with_args(config, cwd, workdir, None, &[])
    }

    /// [`start_with_file`](Self::start_with_file), with `--concurrency` if given.
    pub fn start_with_args(
        config: &Path,
        cwd: &Path,
        workdir: &Path,
        concurrency: Option<u32>,
        env: &[(String, String)],
    ) -> Result<Envoy, String> {
        let log = workdir.join("envoy.log");
        let admin_file = workdir.join("admin-address");
        // A log left by an earlier run (the demo reuses its directory) would confuse readers.
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&admin_file);
        let mut supervisor = Command::new("bash")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("tether-envoy-supervisor")
            .arg(envoy_binary())
            .arg("-c")
            .arg(config)
            // Several Envoys run at once (one per test binary, more for special configs).
            .arg("--disable-hot-restart")
            .args(
                concurrency
                    .map(|n| ["--concurrency".to_string(), n.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(LOG_ARGS)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .env("TETHER_ENVOY_LOG", &log)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
        let stop = supervisor.stdin.take();
        let mut pid_line = String::new();
        if let Some(stdout) = supervisor.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut pid_line);
        }
        let pid = pid_line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("supervisor printed {pid_line:?} instead of a pid"));

        let mut envoy = Envoy {
            supervisor,
            stop,
            pid,
            admin: String::new(),
            https_port: 0,
            log,
            owned_dir: None,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !envoy.is_running() {
                return Err(format!("Envoy exited during startup:\n{}", envoy.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Envoy not ready after {READY_TIMEOUT:?}:\n{}",
                    envoy.log()
                ));
            }
            if envoy.admin.is_empty() {
                // Only a complete address: the file may be caught half-written.
                if let Ok(address) = std::fs::read_to_string(&admin_file) {
                    if address.trim().parse::<SocketAddr>().is_ok() {
                        envoy.admin = address.trim().to_string();
                    }
                }
            }
            if !envoy.admin.is_empty()
                && envoy
                    .admin_get("/ready")
                    .is_ok_and(|body| body.trim() == "LIVE")
            {
                if let Some(port) = envoy.first_listener_port() {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        envoy.https_port = port;
                        return Ok(envoy);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the (first) HTTPS listener on 127.0.0.1.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `host:port` of the admin API.
    pub fn admin_address(&self) -> &str {
        &self.admin
    }

    /// GET `path` on the admin API; the body on HTTP 200.
    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        let output = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.admin))
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Counters and gauges from `/stats` (histograms are left out).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text = self
            .admin_get("/stats")
            .unwrap_or_else(|e| panic!("GET /stats failed: {e}"));
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// The value of stat `name`, 0 if Envoy does not show it (yet).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the Envoy process is still alive (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        process_alive(self.pid)
    }

    /// Stops Envoy and waits for it to exit.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        // End of file on the supervisor's stdin: it kills Envoy and waits for it.
        drop(self.stop.take());
        let _ = self.supervisor.wait();
    }

    fn first_listener_port(&self) -> Option<u16> {
        let listeners: Value =
            serde_json::from_str(&self.admin_get("/listeners?format=json").ok()?).ok()?;
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()?;
        u16::try_from(port).ok()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Linux: a process is alive if it has a /proc entry and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The result of running Envoy to completion.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    /// Envoy's stdout and stderr (where it logs).
    pub output: String,
}

/// `envoy --mode validate -c <config>` from `cwd`: loads the config, including the wasm module
/// and the filter's `on_configure`, without serving.
pub fn validate(config: &Path, cwd: &Path) -> Outcome {
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .args(LOG_ARGS)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run Envoy: {e}"));
    Outcome {
        success: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Starts Envoy normally with a config that should make it refuse to start. Returns
/// `success: false` with the log if Envoy exited with an error, as expected; if it came up
/// instead, stops it and returns `success: true`.
pub fn start_expecting_failure(config: &Path, cwd: &Path) -> Outcome {
    let workdir = ScratchDir::new("envoy-fail");
    match Envoy::start_with_file(config, cwd, workdir.path()) {
        Ok(envoy) => {
            let output = envoy.log();
            envoy.stop();
            Outcome {
                success: true,
                output,
            }
        }
        Err(output) => Outcome {
            success: false,
            output,
        },
    }
}
