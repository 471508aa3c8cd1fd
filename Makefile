# Tether: every target installs what it needs through `make setup` (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := build

ENVOY := .venv/bin/envoy
WASM := dist/tether.wasm
export TETHER_ENVOY := $(CURDIR)/$(ENVOY)
export TETHER_WASM := $(CURDIR)/$(WASM)

.PHONY: setup build fmt lint unit e2e test fuzz demo bench soak oci clean

setup:
	@scripts/setup.sh

build: setup
	@scripts/build-wasm.sh

fmt: setup
	cargo fmt --all -- --check

lint: setup
	cargo clippy --all-targets --locked -- -D warnings
	@# The proxy-wasm glue (src/host) only compiles for wasm32: lint it there when rustup's
	@# target is installed (Debian's route has no clippy for it).
	@if [ "$$(scripts/wasm-route.sh)" = rustup ]; then \
	  CARGO_TARGET_DIR=target/wasm-clippy cargo clippy --locked --target wasm32-wasip1 --lib -- -D warnings; \
	fi

# Unit tests of the pure core on the host (no Envoy).
unit: setup
	cargo test --locked --lib

# End-to-end tests: the real Envoy 1.40 with dist/tether.wasm, real mTLS, real HTTPS requests;
# fixture plugins beside it: a hostile one (dist/intruder.wasm) and one that runs Wycheproof
# vectors through Envoy's verify_signature with Tether's core (dist/sigprobe.wasm).
e2e: build
	@scripts/build-fixture.sh tests/plugins/intruder intruder
	@scripts/build-fixture.sh tests/plugins/sigprobe sigprobe
	cargo test --locked --test '*'

test: fmt lint unit e2e

# The property tests of tests/properties.rs (every parser that sees attacker bytes) at length:
# `make test` runs them in seconds (512 cases each, in e2e's `cargo test --test '*'`); this
# runs 200000 cases each, in release: about 1.5 minutes on 2 cores, after a release build of up
# to 3. Deterministic (a fixed seed); explore another with TETHER_PROPTEST_SEED=n. Needs no Envoy.
fuzz: setup
	TETHER_PROPTEST_CASES=200000 cargo test --locked --release --test properties

demo: build
	cargo run --quiet --locked --example demo

# The filter as an OCI image layout in Istio's Wasm image format, in dist/oci/ (no registry, no
# Docker daemon); prints the digest to pin in a WasmPlugin (deploy/istio/).
oci: build
	@scripts/build-oci.sh

# A benchmark, not a test: Tether beside Envoy's jwt_authn in one Envoy worker (bench/README.md).
# Prints figures and writes bench/results/; never fails on a number. Quick run:
# BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_MEMORY_TOKENS=10000 make bench
bench: build
	@scripts/build-ceiling.sh
	@scripts/build-fixture.sh bench/signprobe signprobe
	@scripts/bench.sh

# A soak test, not part of `make test`: a million requests of every kind (valid, expired,
# mis-bound, malformed and oversized tokens, hostile header bytes, signed, replayed, h2 trailers,
# slow and stalled bodies) through one Envoy with --concurrency 2, over HTTP/1.1 and HTTP/2; every
# answer, Tether's counters, the upstream, memory, VM health and deadlines are checked
# (bench/README.md, `make soak`). Fails on any mismatch. Fewer: SOAK_REQUESTS=100000 make soak
soak: build
	@scripts/soak.sh

clean:
	rm -rf target dist build
