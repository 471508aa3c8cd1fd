//! The two Envoys: their bootstraps (the front one with a listener per filter chain, the
//! back end answering 200) and the processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::load::MemorySample;
use crate::machine::Tools;
use crate::support::envoy::{envoy_binary, validate};
use crate::support::pki::Pki;
use crate::tokens::Keys;
use crate::variants::Listener;
use crate::{command_output, fail, write_json, AUDIENCE, CACHE_ENTRIES, ISSUER};

pub fn socket_address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

pub fn tether_config(keys: &Keys, cache_entries: Option<u64>) -> Value {
    let mut config = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": keys.jwks()}],
        "rules": [{"prefix": "/", "require": "mtls"}],
    });
    if let Some(entries) = cache_entries {
        config["token_cache_entries"] = json!(entries);
    }
    config
}

/// The DPoP listener's Tether: the same issuer, keys and token cache as `tether_cache`, a
/// `dpop` block and `require: dpop` on every path. Proofs live `max_age_seconds` (60, the
/// default), and are recorded that long against replay.
pub fn tether_dpop_config(keys: &Keys, cache_entries: Option<u64>) -> Value {
    let mut config = tether_config(keys, cache_entries);
    config["dpop"] = json!({"algs": DPOP_ALGS, "max_age_seconds": DPOP_MAX_AGE_SECONDS});
    config["rules"] = json!([{"prefix": "/", "require": "dpop"}]);
    config
}

/// The opaque-token listener's Tether: two introspecting issuers, whose opaque tokens begin
/// `alice_` and `mallory_` and whose answers (the back end's `/introspect/<name>`) bind them to
/// that client's certificate; answers are cached an hour.
pub fn tether_opaque_config() -> Value {
    let issuer = |name: &str| {
        json!({
            "issuer": format!("https://as-{name}.bench"),
            "audiences": [AUDIENCE],
            "introspection": {
                "cluster": "backend", "authority": "as.bench",
                "path": format!("/introspect/{name}"),
                "client_id": "bench", "client_secret": "bench-secret",
                "cache_seconds": 3600, "token_prefix": format!("{name}_")
            }
        })
    };
    json!({
        "issuers": [issuer("alice"), issuer("mallory")],
        "rules": [{"prefix": "/", "require": "mtls"}],
    })
}

/// What the back end's introspection endpoint answers about every token of `client`'s
/// issuer: active for a day from `now`, bound to the certificate of thumbprint `x5t`.
fn introspection_answer(x5t: &str, now: i64) -> String {
    json!({"active": true, "aud": AUDIENCE, "client_id": "bench-app", "sub": "alice",
           "token_type": "Bearer", "iat": now, "exp": now + 86_400,
           "cnf": {"x5t#S256": x5t}})
    .to_string()
}

/// The proof algorithms the DPoP listener accepts.
pub const DPOP_ALGS: [&str; 2] = ["ES256", "EdDSA"];
pub const DPOP_MAX_AGE_SECONDS: u64 = 60;

/// A wasm filter in its own VM (`vm_id`), so that no two listeners share a VM or its memory.
pub fn wasm_filter(name: &str, wasm: &Path, configuration: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration.to_string(),
                },
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}},
                },
            },
        },
    })
}

pub fn jwt_authn_filter(keys: &Keys, cache: bool) -> Value {
    let mut provider = json!({
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": keys.jwks().to_string()},
        // Default extraction: `Authorization: Bearer`. Keep the header, as Tether does.
        "forward": true,
    });
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": CACHE_ENTRIES});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    })
}

pub fn http_filters(
    listener: Listener,
    keys: &Keys,
    tools: &Tools,
    cache_supported: bool,
) -> Vec<Value> {
    let tether = |cache: bool| {
        let entries = match (cache_supported, cache) {
            (false, _) => None,
            (true, true) => Some(CACHE_ENTRIES),
            (true, false) => Some(0),
        };
        wasm_filter(
            listener.name(),
            &tools.tether_wasm,
            &tether_config(keys, entries),
        )
    };
    let mut filters = match listener {
        Listener::NoAuth => vec![],
        Listener::Ceiling => vec![wasm_filter("ceiling", &tools.ceiling_wasm, &json!({}))],
        Listener::JwtAuthnCache => vec![jwt_authn_filter(keys, true)],
        Listener::JwtAuthnNoCache => vec![jwt_authn_filter(keys, false)],
        Listener::TetherCache => vec![tether(true)],
        Listener::TetherNoCache => vec![tether(false)],
        Listener::TetherDpop => vec![wasm_filter(
            listener.name(),
            &tools.tether_wasm,
            &tether_dpop_config(keys, cache_supported.then_some(CACHE_ENTRIES)),
        )],
        Listener::TetherOpaque => vec![wasm_filter(
            listener.name(),
            &tools.tether_wasm,
            &tether_opaque_config(),
        )],
    };
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    filters
}

/// One mTLS listener: the same TLS and HTTP settings for every row. Its route goes to the
/// back end, or answers itself (`direct`: `BENCH_UPSTREAM=direct`, where the filters' cost is
/// the larger share of a request's).
pub fn https_listener(name: &str, pki: &Pki, filters: Vec<Value>, direct: bool) -> Value {
    let route = if direct {
        json!({"match": {"prefix": "/"},
               "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    } else {
        json!({"match": {"prefix": "/"}, "route": {"cluster": "backend"}})
    };
    let file = |path: &Path| json!({"filename": path});
    json!({
        "name": name,
        "address": socket_address(0),
        "filter_chains": [{
            "transport_socket": {
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
                    },
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "normalize_path": true,
                    "merge_slashes": true,
                    "route_config": {"virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [route],
                    }]},
                    "http_filters": filters,
                },
            }],
        }],
    })
}

pub fn front_bootstrap(
    listeners: &[Listener],
    backend_port: u16,
    pki: &Pki,
    keys: &Keys,
    tools: &Tools,
    cache_supported: bool,
    direct: bool,
) -> Value {
    json!({
        "admin": {"address": socket_address(0)},
        "static_resources": {
            "listeners": listeners
                .iter()
                .map(|&l| {
                    let filters = http_filters(l, keys, tools, cache_supported);
                    https_listener(l.name(), pki, filters, direct)
                })
                .collect::<Vec<_>>(),
            "clusters": [backend_cluster(backend_port)],
        },
    })
}

/// The one upstream cluster every listener routes to.
pub fn backend_cluster(port: u16) -> Value {
    json!({
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
    })
}

/// Whether this `dist/tether.wasm` knows `token_cache_entries`: `envoy --mode validate` on a
/// one-listener bootstrap with the field set to 0. Tether refuses unknown fields, so a build
/// before the token cache fails here, naming the field.
pub fn probe_token_cache(work: &Path, pki: &Pki, keys: &Keys, tools: &Tools) -> bool {
    let outcome = validate_tether(work, pki, tools, &tether_config(keys, Some(0)));
    if outcome.success {
        return true;
    }
    if outcome.output.contains("token_cache_entries") {
        return false;
    }
    fail(&format!(
        "envoy --mode validate refused the Tether configuration for another reason:\n{}",
        outcome.output
    ))
}

/// Whether this `dist/tether.wasm` knows DPoP: `envoy --mode validate` on the DPoP listener's
/// configuration. A build before DPoP refuses the `dpop` block (or `require: dpop`).
pub fn probe_dpop(work: &Path, pki: &Pki, keys: &Keys, tools: &Tools) -> bool {
    let outcome = validate_tether(work, pki, tools, &tether_dpop_config(keys, None));
    if outcome.success {
        return true;
    }
    if outcome.output.contains("dpop") {
        return false;
    }
    fail(&format!(
        "envoy --mode validate refused the DPoP Tether configuration for another reason:\n{}",
        outcome.output
    ))
}

/// `envoy --mode validate` on a one-listener bootstrap running Tether with `configuration`.
fn validate_tether(
    work: &Path,
    pki: &Pki,
    tools: &Tools,
    configuration: &Value,
) -> crate::support::envoy::Outcome {
    let config = work.join("probe.json");
    let filters = vec![
        wasm_filter("probe", &tools.tether_wasm, configuration),
        json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }),
    ];
    write_json(
        &config,
        &json!({
            "admin": {"address": socket_address(0)},
            "static_resources": {
                "listeners": [https_listener("probe", pki, filters, false)],
                "clusters": [backend_cluster(1)],
            },
        }),
    );
    validate(&config, work)
}

pub fn start_backend(work: &Path, pki: &Pki) -> EnvoyProcess {
    let now = crate::support::now();
    let answer = |x5t: String| {
        json!({
            "status": 200,
            "body": {"inline_string": introspection_answer(&x5t, now)},
        })
    };
    let json_type = json!([{"header": {"key": "content-type", "value": "application/json"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]);
    let dir = work.join("backend");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&format!("create backend dir: {e}")));
    let config = dir.join("backend.json");
    write_json(
        &config,
        &json!({
            "admin": {"address": socket_address(0)},
            "static_resources": {"listeners": [{
                "name": "backend",
                "address": socket_address(0),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "backend",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                // The opaque-token row's introspection endpoint.
                                {
                                    "match": {"path": "/introspect/alice"},
                                    "direct_response": answer(pki.alice.x5t_s256()),
                                    "response_headers_to_add": json_type,
                                },
                                {
                                    "match": {"path": "/introspect/mallory"},
                                    "direct_response": answer(pki.mallory.x5t_s256()),
                                    "response_headers_to_add": json_type,
                                },
                                // The signed-response rows' 1 KiB answer.
                                {
                                    "match": {"prefix": "/resp-"},
                                    "direct_response": {"status": 200, "body": {
                                        "inline_string": "r".repeat(crate::signed::RESPONSE_BYTES)}},
                                },
                                {
                                    "match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                                },
                            ],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }]},
        }),
    );
    EnvoyProcess::start("backend", &config, &dir, 1, 1)
        .unwrap_or_else(|log| fail(&format!("the back-end Envoy did not start:\n{log}")))
}

/// Runs Envoy in the background with its output in `$BENCH_ENVOY_LOG`, prints its pid, and
/// kills it when stdin reaches end of file, which happens however the bench exits (as in the
/// test harness; a background job of a non-interactive shell reads /dev/null, not the pipe).
const SUPERVISOR: &str = r#"
"$@" >>"$BENCH_ENVOY_LOG" 2>&1 &
envoy=$!
echo "$envoy"
read -r _ || true
kill "$envoy" 2>/dev/null
wait "$envoy"
"#;

pub struct EnvoyProcess {
    pub supervisor: Child,
    pub stop: Option<ChildStdin>,
    pub pid: u32,
    pub admin: String,
}

impl EnvoyProcess {
    /// Starts Envoy with `config` and `--concurrency <workers>`; waits until the admin API
    /// says LIVE and `listeners` listeners accept connections. `Err` carries the log.
    pub fn start(
        name: &str,
        config: &Path,
        dir: &Path,
        workers: u32,
        listeners: usize,
    ) -> Result<EnvoyProcess, String> {
        let log = dir.join(format!("{name}.log"));
        let admin_file = dir.join(format!("{name}.admin"));
        let _ = std::fs::remove_file(&admin_file);
        let mut supervisor = Command::new("bash")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("tether-bench-supervisor")
            .arg(envoy_binary())
            .arg("-c")
            .arg(config)
            .args(["--concurrency", &workers.to_string()])
            .arg("--disable-hot-restart")
            // Requests are not logged at all: the bench measures filters, not logging.
            .args(["-l", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .env("BENCH_ENVOY_LOG", &log)
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
        let mut envoy = EnvoyProcess {
            supervisor,
            stop,
            pid,
            admin: String::new(),
        };
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if !Path::new(&format!("/proc/{pid}")).exists() || envoy.is_zombie() {
                return Err(format!("Envoy exited during startup:\n{}", read_log()));
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy not ready after 120 s:\n{}", read_log()));
            }
            if envoy.admin.is_empty() {
                if let Ok(address) = std::fs::read_to_string(&admin_file) {
                    if address.trim().parse::<SocketAddr>().is_ok() {
                        envoy.admin = address.trim().to_string();
                    }
                }
            }
            if !envoy.admin.is_empty()
                && envoy.admin_get("/ready").is_ok_and(|b| b.trim() == "LIVE")
            {
                let ports = envoy.listener_ports();
                if ports.len() == listeners
                    && ports
                        .values()
                        .all(|&p| TcpStream::connect(("127.0.0.1", p)).is_ok())
                {
                    return Ok(envoy);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_zombie(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            })
            .is_none_or(|state| state == "Z" || state == "X")
    }

    pub fn admin_get(&self, path: &str) -> Result<String, String> {
        command_output(
            Path::new("curl"),
            &[
                "-sS",
                "--fail",
                "--max-time",
                "10",
                &format!("http://{}{path}", self.admin),
            ],
        )
    }

    /// Listener name -> port on 127.0.0.1.
    pub fn listener_ports(&self) -> BTreeMap<String, u16> {
        let Ok(text) = self.admin_get("/listeners?format=json") else {
            return BTreeMap::new();
        };
        let listeners: Value = serde_json::from_str(&text).unwrap_or_default();
        listeners["listener_statuses"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|l| {
                        let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                        Some((l["name"].as_str()?.to_string(), u16::try_from(port).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Resident memory (VmRSS, KiB) and Envoy's allocator figures from the admin `/memory`.
    pub fn memory(&self) -> MemorySample {
        let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse().ok())
            })
            .unwrap_or(0);
        let memory: Value = self
            .admin_get("/memory")
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            memory[name]
                .as_str()
                .and_then(|v| v.parse().ok())
                .or_else(|| memory[name].as_u64())
                .unwrap_or(0)
        };
        MemorySample {
            tokens: 0,
            rss_kib,
            allocated: field("allocated"),
            heap_size: field("heap_size"),
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.supervisor.wait();
    }
}
