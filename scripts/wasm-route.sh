#!/usr/bin/env bash
# Prints how to build for wasm32-wasip1 on this machine, or fails if no route exists yet:
#   rustup   - rustup's toolchain has the wasm32-wasip1 target: a plain cargo build works;
#   debian   - Debian's rustc-web with rust-web-src: build the standard library from source.
# TETHER_WASM_ROUTE=debian|rustup forces a route (to test both on one machine).
set -euo pipefail
case "${TETHER_WASM_ROUTE:-}" in
  rustup|debian) echo "$TETHER_WASM_ROUTE"; exit 0 ;;
esac
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  echo rustup
elif [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && command -v wasm-ld-14 >/dev/null \
  && [ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library" ] \
  && [ -d /usr/lib/wasm32-wasi ]; then
  echo debian
else
  exit 1
fi
