#!/usr/bin/env bash
# `make bench`: installs the benchmark's tools if missing (oha from crates.io into
# build/tools, matplotlib into .venv), builds bench/signload (the load generator of the
# signed-request rows), runs the driver (examples/bench/), then draws the chart.
# Expects dist/tether.wasm, dist/ceiling.wasm, dist/signprobe.wasm and .venv/bin/envoy (the
# Makefile builds them).
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
OHA=build/tools/bin/oha
if ! "$OHA" --version 2>/dev/null | grep -qx "oha $OHA_VERSION"; then
  echo "bench: installing oha $OHA_VERSION into build/tools (takes a few minutes, once)"
  CARGO_INSTALL_ROOT="$PWD/build/tools" cargo install --quiet --locked --version "$OHA_VERSION" oha
fi
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  echo "bench: installing matplotlib into .venv"
  .venv/bin/pip install -q --disable-pip-version-check matplotlib
fi

# The signed-request rows and the DPoP rows send a different request every time, which oha
# cannot: bench/signload does (its own crate, its own lock file, target dir
# bench/signload/target).
echo "bench: building bench/signload"
cargo build --quiet --release --locked --manifest-path bench/signload/Cargo.toml

# BENCH_ONLY=signed or dpop is a partial run: its results go to build/bench-results/ (unless
# BENCH_RESULTS says otherwise), not over bench/results/.
if [[ -n "${BENCH_ONLY:-}" && -z "${BENCH_RESULTS:-}" ]]; then
  export BENCH_RESULTS="$PWD/build/bench-results"
fi
RESULTS="${BENCH_RESULTS:-$PWD/bench/results}"

# The driver mints and signs up to 100k tokens: build it optimized, but without the release
# profile's whole-program LTO, which only lengthens the build.
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  BENCH_OHA="$PWD/$OHA" BENCH_SIGNLOAD="$PWD/bench/signload/target/release/signload" \
  BENCH_SIGNPROBE="$PWD/dist/signprobe.wasm" \
  cargo run --quiet --release --locked --example bench
# The run's results: the latest file the driver has just written (latest.json, or another
# mode's latest-direct.json, ...), and its chart beside it.
LATEST=$(ls -t "$RESULTS"/latest*.json | head -1)
.venv/bin/python bench/chart.py "$LATEST" "${LATEST%.json}.png"
