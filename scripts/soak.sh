#!/usr/bin/env bash
# `make soak`: builds the soak driver bench/soak (its own crate and lock file, built into
# build/soak/target) and runs it from the repository's root: a million requests of every kind
# through one Envoy with Tether, each answer checked (bench/README.md, `make soak`).
# Expects dist/tether.wasm and .venv/bin/envoy (the Makefile builds them).
# Settings: SOAK_REQUESTS (1000000), SOAK_SEED, SOAK_RESULTS (bench/results), SOAK_LANES,
# SOAK_SLOW_LANES, SOAK_H2_CONNECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "soak: building bench/soak"
CARGO_TARGET_DIR="$PWD/build/soak/target" \
  cargo build --quiet --release --locked --manifest-path bench/soak/Cargo.toml
exec build/soak/target/release/soak
