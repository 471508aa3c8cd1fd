#!/usr/bin/env bash
# `make oci`: dist/tether.wasm as an OCI image layout in Istio's Wasm image format, in dist/oci/
# (no registry, no Docker daemon). Prints the manifest digest to pin in a WasmPlugin's sha256
# (deploy/istio/). Push it with, for example:
#   skopeo copy oci:dist/oci:tether-<version> docker://registry.example.com/tether:<version>
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag="tether-$version"
rm -rf dist/oci
digest=$(python3 scripts/oci_layout.py dist/tether.wasm dist/oci "$tag")
echo "built dist/oci (OCI image layout, tag $tag)"
echo "sha256: $digest"
