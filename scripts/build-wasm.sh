#!/usr/bin/env bash
# Builds the release filter into dist/tether.wasm by whichever route this machine has.
# Wasm builds use their own target directory so that host builds are never disturbed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/wasm
case "$(scripts/wasm-route.sh)" in
  rustup)
    cargo build --release --locked --target wasm32-wasip1 --lib ;;
  debian)
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-C link-self-contained=no -L /usr/lib/wasm32-wasi -C linker=wasm-ld-14" \
      /usr/bin/cargo build --release --locked --target wasm32-wasip1 --lib \
        -Zbuild-std=std,panic_abort ;;
esac
mkdir -p dist
cp target/wasm/wasm32-wasip1/release/tether.wasm dist/tether.wasm
echo "built dist/tether.wasm ($(stat -c %s dist/tether.wasm) bytes)"
