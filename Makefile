# Tether: every target installs what it needs through `make setup` (idempotent).
SHELL := /bin/bash
.DEFAULT_GOAL := build

ENVOY := .venv/bin/envoy
WASM := dist/tether.wasm
export TETHER_ENVOY := $(CURDIR)/$(ENVOY)
export TETHER_WASM := $(CURDIR)/$(WASM)

.PHONY: setup build fmt lint unit e2e test demo bench clean

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

# End-to-end tests: the real Envoy 1.40 with dist/tether.wasm, real mTLS, real HTTPS requests
# (and a hostile plugin beside it, dist/intruder.wasm).
e2e: build
	@scripts/build-fixture.sh tests/plugins/intruder intruder
	cargo test --locked --test '*'

test: fmt lint unit e2e

demo: build
	cargo run --quiet --locked --example demo

# A benchmark, not a test: Tether beside Envoy's jwt_authn in one Envoy worker (bench/README.md).
# Prints figures and writes bench/results/; never fails on a number. Quick run:
# BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_MEMORY_TOKENS=10000 make bench
bench: build
	@scripts/build-ceiling.sh
	@scripts/bench.sh

clean:
	rm -rf target dist build
