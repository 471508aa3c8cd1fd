#!/usr/bin/env bash
# Builds the benchmark's wasm ceiling (bench/ceiling) into dist/ceiling.wasm.
set -euo pipefail
exec "$(dirname "$0")/build-fixture.sh" bench/ceiling ceiling
