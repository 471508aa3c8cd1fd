//! The Istio deployment kit in `deploy/istio/` (issue 11): every manifest validates against
//! Istio's published CRD schemas (the npm package @kubernetes-models/istio, installed by `make
//! setup`), and the Tether configurations inside them are configurations Tether accepts.

mod support;

use std::path::PathBuf;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use support::repo_root;
use support::scratch::ScratchDir;
use tether::config::Policy;

/// Runs the validator on `files`; its documents.
fn validate(files: &[PathBuf]) -> Vec<Value> {
    let dir = repo_root().join("tests/interop/istio");
    let output = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .args(files)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (make setup installs it): {e}"));
    assert!(
        output.status.success(),
        "validate.mjs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("validator JSON");
    answer["documents"].as_array().expect("documents").clone()
}

fn kit() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/istio"))
        .expect("deploy/istio")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn find<'d>(documents: &'d [Value], kind: &str, name: &str) -> &'d Value {
    &documents
        .iter()
        .find(|d| d["kind"] == kind && d["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/istio"))["document"]
}

/// The environment the kit's secrets come from, in a test.
fn environment(name: &str) -> Option<String> {
    matches!(
        name,
        "TETHER_DPOP_NONCE_SECRET" | "TETHER_PAYMENTS_HMAC_KEY"
    )
    .then(|| URL_SAFE_NO_PAD.encode([7u8; 32]))
}

#[test]
fn every_manifest_validates_against_istios_crd_schemas() {
    let documents = validate(&kit());
    assert!(documents.len() >= 5, "{documents:?}");
    for document in &documents {
        assert_eq!(
            document["ok"], true,
            "{} {} in {}: {}",
            document["kind"], document["name"], document["file"], document["error"]
        );
    }
    // The validator does refuse what the schemas forbid.
    let scratch = ScratchDir::new("istio-kit");
    let broken = scratch.join("broken.yaml");
    let wasmplugin =
        std::fs::read_to_string(repo_root().join("deploy/istio/wasmplugin.yaml")).expect("read");
    std::fs::write(&broken, wasmplugin.replace("phase: AUTHN", "phase: FIRST")).expect("write");
    let refused = validate(&[broken]);
    assert_eq!(refused[0]["ok"], false, "{refused:?}");
}

#[test]
fn the_kit_deploys_tether_fail_closed_over_strict_mtls() {
    let documents = validate(&kit());
    let plugin = find(&documents, "WasmPlugin", "tether");
    assert_eq!(plugin["spec"]["phase"], "AUTHN");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    let sha256 = plugin["spec"]["sha256"].as_str().expect("sha256 pinned");
    assert!(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()));
    let config = plugin["spec"]["pluginConfig"].to_string();
    Policy::from_json_with(config.as_bytes(), &environment)
        .unwrap_or_else(|e| panic!("the WasmPlugin's pluginConfig: {e}"));
    let peer = find(&documents, "PeerAuthentication", "default");
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    let filter = find(&documents, "EnvoyFilter", "tether");
    let wasm = &filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"];
    assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
    assert_eq!(wasm["vm_config"]["vm_id"], "tether");
    assert_eq!(wasm["fail_open"], false);
    let embedded = wasm["configuration"]["value"]
        .as_str()
        .expect("configuration");
    Policy::from_json_with(embedded.as_bytes(), &environment)
        .unwrap_or_else(|e| panic!("the EnvoyFilter's Tether configuration: {e}"));
    let edge = find(&documents, "EnvoyFilter", "forward-client-cert");
    let hcm = &edge["spec"]["configPatches"][0]["patch"]["value"]["typed_config"];
    assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
    assert_eq!(hcm["set_current_client_cert_details"]["cert"], true);
}
