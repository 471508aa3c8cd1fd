//! `make oci` (issue 11): the filter as an OCI image layout in Istio's Wasm image format, built
//! without a registry or a Docker daemon by `scripts/oci_layout.py`, and read back by a
//! standard tool, skopeo: the digest it reports is the one printed to pin, the image's one
//! layer holds `plugin.wasm` byte for byte, and the same module always gives the same digest.

mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::Command;

use support::envoy::wasm_module;
use support::repo_root;
use support::scratch::ScratchDir;

const TAG: &str = "tether-test";

/// Writes the layout of `module` into `dir`; the digest printed.
fn layout(module: &Path, dir: &Path) -> String {
    let output = Command::new("python3")
        .arg(repo_root().join("scripts/oci_layout.py"))
        .arg(module)
        .arg(dir)
        .arg(TAG)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

fn skopeo(args: &[&str]) -> String {
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo (make setup installs it): {e}"));
    assert!(
        output.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn the_image_layout_reads_back_with_skopeo_and_holds_the_module() {
    let scratch = ScratchDir::new("oci");
    let module = wasm_module();
    let wasm = std::fs::read(&module).expect("read the module");
    let first = scratch.join("first");
    let digest = layout(&module, &first);
    assert_eq!(digest.len(), 64, "{digest}");
    let reference = format!("oci:{}:{TAG}", first.display());
    let inspected: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &reference])).expect("skopeo's JSON");
    assert_eq!(inspected["Digest"], format!("sha256:{digest}"));
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1));
    // Copied out as a registry would serve it, the one layer is a tar holding plugin.wasm.
    let copied = scratch.join("copied");
    skopeo(&["copy", &reference, &format!("dir:{}", copied.display())]);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(copied.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .expect("layer digest");
    let gz = std::fs::read(copied.join(layer)).expect("layer blob");
    let tar_path = scratch.join("layer.tar.gz");
    std::fs::write(&tar_path, gz).expect("write layer");
    let listing = Command::new("tar")
        .args(["-tzf", tar_path.to_str().expect("path")])
        .output()
        .expect("tar");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "plugin.wasm"
    );
    let mut extracted = Command::new("tar")
        .args(["-xzOf", tar_path.to_str().expect("path"), "plugin.wasm"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tar");
    let mut bytes = Vec::new();
    extracted
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut bytes)
        .expect("read plugin.wasm");
    assert!(extracted.wait().expect("tar").success());
    assert!(bytes == wasm, "plugin.wasm is not the module");
    // Reproducible: the same module, the same digest to pin.
    assert_eq!(layout(&module, &scratch.join("second")), digest);
}
