#!/usr/bin/env bash
# Builds a fixture Wasm plugin (its own crate: the benchmark's ceiling, the tests' intruder)
# into dist/<name>.wasm, by the same route as scripts/build-wasm.sh builds Tether, so that
# every module comes out of the same compiler.
#   scripts/build-fixture.sh <crate directory> <name>
set -euo pipefail
cd "$(dirname "$0")/.."
crate=$1
name=$2
manifest=$crate/Cargo.toml
package=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
export CARGO_TARGET_DIR=target/wasm-$name
case "$(scripts/wasm-route.sh)" in
  rustup)
    cargo build --release --locked --target wasm32-wasip1 --manifest-path "$manifest" ;;
  debian)
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-C link-self-contained=no -L /usr/lib/wasm32-wasi -C linker=wasm-ld-14" \
      /usr/bin/cargo build --release --locked --target wasm32-wasip1 --manifest-path "$manifest" \
        -Zbuild-std=std,panic_abort ;;
esac
mkdir -p dist
cp "target/wasm-$name/wasm32-wasip1/release/${package//-/_}.wasm" "dist/$name.wasm"
echo "built dist/$name.wasm ($(stat -c %s "dist/$name.wasm") bytes)"
