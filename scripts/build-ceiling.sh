#!/usr/bin/env bash
# Builds the benchmark's wasm ceiling (bench/ceiling, its own crate) into dist/ceiling.wasm,
# by the same route as scripts/build-wasm.sh builds Tether, so that both modules come out of
# the same compiler with the same release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=bench/ceiling/Cargo.toml
export CARGO_TARGET_DIR=target/wasm-ceiling
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
cp target/wasm-ceiling/wasm32-wasip1/release/tether_bench_ceiling.wasm dist/ceiling.wasm
echo "built dist/ceiling.wasm ($(stat -c %s dist/ceiling.wasm) bytes)"
