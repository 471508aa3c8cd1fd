//! The example Envoy configurations in `envoy/` are loaded by the real Envoy with the built
//! filter (`envoy --mode validate`, which also runs Tether's configuration check), so the
//! documentation and the demo cannot drift from what Envoy and Tether accept.

mod support;

use std::path::{Path, PathBuf};

use support::envoy::{validate, wasm_module};
use support::jwt::{Alg, SigningKey};
use support::pki::Pki;
use support::repo_root;
use support::scratch::ScratchDir;

/// Every `envoy/*.yaml`, sorted.
fn example_configs() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("envoy"))
        .expect("envoy/ exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    configs.sort();
    configs
}

/// The values of every `filename:` in a YAML config (block or flow style).
fn referenced_files(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split("filename:").skip(1))
        .map(|rest| {
            rest.split(['}', ',', '#'])
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches(['"', '\''])
                .to_string()
        })
        .collect()
}

/// Lays out, under `root`, every file `config` references: certificates from a fresh PKI
/// (chosen by file name: `*.crl` the CA's CRL, `*ca*.pem` the CA, `*.key` the server key,
/// other `*.pem` the server certificate) and the built filter for `*.wasm`.
fn materialize(config: &Path, root: &Path, pki: &Pki) {
    let yaml = std::fs::read_to_string(config).expect("read config");
    let files = referenced_files(&yaml);
    assert!(
        files.iter().any(|f| f.ends_with(".wasm")),
        "{} does not load a wasm module",
        config.display()
    );
    for file in files {
        let relative = Path::new(&file);
        // Relative paths keep the examples runnable from a checkout and testable here.
        assert!(
            relative.is_relative(),
            "{}: {file} should be relative to Envoy's working directory",
            config.display()
        );
        let target = root.join(relative);
        std::fs::create_dir_all(target.parent().expect("file has a parent")).expect("mkdir");
        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let source = if name.ends_with(".wasm") {
            std::os::unix::fs::symlink(wasm_module(), &target).expect("symlink the filter");
            continue;
        } else if name.ends_with(".crl") {
            &pki.crl
        } else if name.ends_with(".key") {
            &pki.server_key
        } else if name.ends_with(".pem") && name.contains("ca") {
            &pki.ca
        } else if name.ends_with(".pem") {
            &pki.server_cert
        } else {
            panic!("{}: don't know what {file} is", config.display());
        };
        std::fs::copy(source, &target).expect("copy certificate material");
    }
}

#[test]
fn every_example_config_passes_envoy_validation() {
    let configs = example_configs();
    assert!(
        configs.iter().any(|c| c.ends_with("demo.yaml")) && configs.len() >= 2,
        "expected envoy/demo.yaml and envoy/sidecar.yaml, found {configs:?}"
    );
    let material = ScratchDir::new("configs-pki");
    let pki = Pki::generate(material.path());
    // demo.yaml's response signing key comes from Envoy's environment (`make demo` makes one):
    // here, RFC 8037 Appendix A.1's Ed25519 example key, a public value.
    std::env::set_var(
        "TETHER_DEMO_RESPONSE_KEY",
        r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
    );
    // Its secret at the demo's introspection endpoint, likewise (any non-empty value).
    std::env::set_var("TETHER_DEMO_RS_SECRET", "demo-introspection-secret");
    for config in configs {
        let root = ScratchDir::new("config-root");
        materialize(&config, root.path(), &pki);
        let outcome = validate(&config, root.path());
        assert!(
            outcome.success,
            "{} does not validate:\n{}",
            config.display(),
            outcome.output
        );
    }
}

/// What every shipped Envoy configuration and README snippet must say (issue 7): Tether in a
/// VM of its own, because Envoy scopes shared data by `vm_id` and another plugin in Tether's
/// VM id could write its key sets; and underscores in header names refused, because many
/// frameworks read `x_tether_sub` as `x-tether-sub`.
const REQUIRED_SETTINGS: [&str; 2] = [
    "vm_id: tether",
    "headers_with_underscores_action: REJECT_REQUEST",
];

#[test]
fn every_shipped_config_and_readme_snippet_isolates_tether_and_refuses_underscores() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    // The README's Envoy snippets: YAML blocks that load the Wasm filter.
    let snippets: Vec<String> = readme
        .split("```yaml")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("envoy.filters.http.wasm"))
        .map(str::to_string)
        .collect();
    assert!(!snippets.is_empty(), "no Envoy snippet found in the README");
    let configs = example_configs()
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read config");
            (path.display().to_string(), text)
        })
        .chain(
            snippets
                .into_iter()
                .map(|s| ("README snippet".to_string(), s)),
        );
    for (name, text) in configs {
        for setting in REQUIRED_SETTINGS {
            assert!(text.contains(setting), "{name} does not set `{setting}`");
        }
    }
}

#[test]
fn referenced_files_are_found_in_block_and_flow_style() {
    let yaml = "a:\n  filename: x/ca.pem\nb: { filename: \"dist/t.wasm\" }\n# filename: no\n";
    assert_eq!(referenced_files(yaml), ["x/ca.pem", "dist/t.wasm"]);
}

/// The demo mints tokens with `envoy/demo-issuer.key.pem`; `demo.yaml` must publish exactly
/// its public half as key `demo-1`, or every scene of the demo fails.
#[test]
fn demo_config_publishes_the_public_half_of_the_demo_issuer_key() {
    let root = repo_root();
    let key = SigningKey::from_pem_file(
        &root.join("envoy/demo-issuer.key.pem"),
        Alg::Es256,
        "demo-1",
        true,
    );
    let jwk = key.jwk();
    let yaml = std::fs::read_to_string(root.join("envoy/demo.yaml")).expect("read demo.yaml");
    for member in ["x", "y"] {
        let value = jwk[member].as_str().expect("EC JWK member");
        assert!(
            yaml.contains(&format!("\"{member}\": \"{value}\"")),
            "demo.yaml does not publish {member} = {value}"
        );
    }
    assert!(yaml.contains("\"kid\": \"demo-1\""));
}
