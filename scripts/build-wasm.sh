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
built=target/wasm/wasm32-wasip1/release/tether.wasm
# Binaryen's optimizer (Debian's `binaryen`, installed by scripts/setup.sh): 10% smaller and
# slightly faster in Envoy's V8 (issue 13, bench/README.md "Performance notes"). The features
# are those rustc enables for wasm32-wasip1; without wasm-opt the module is used as built.
if command -v wasm-opt >/dev/null; then
  # Written beside, then moved: a failed run never leaves a partial dist/tether.wasm.
  rm -f dist/tether.wasm.tmp
  wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
    "$built" -o dist/tether.wasm.tmp
  mv dist/tether.wasm.tmp dist/tether.wasm
  note="wasm-opt -O3 from $(stat -c %s "$built") bytes"
else
  cp "$built" dist/tether.wasm
  note="wasm-opt not found: not optimized further"
fi
echo "built dist/tether.wasm ($(stat -c %s dist/tether.wasm) bytes; $note)"
