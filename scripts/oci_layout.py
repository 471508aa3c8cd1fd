"""Writes a Wasm module as an OCI image layout in Istio's Wasm image format (the Docker-compatible
variant: one gzip'd tar layer holding `plugin.wasm`), reproducibly: the same module gives the same
digest (tar and gzip without times, owners or names). Prints the manifest's digest, the value a
WasmPlugin's `sha256` pins.

Usage: oci_layout.py <module.wasm> <layout directory> <tag>
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return digest


def main() -> None:
    module, layout, tag = sys.argv[1:4]
    with open(module, "rb") as f:
        wasm = f.read()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)

    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o444, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    tar_data = tar_bytes.getvalue()
    layer = gzip.compress(tar_data, compresslevel=9, mtime=0)
    layer_digest = blob(layout, layer)

    config = json.dumps(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_data).hexdigest()]},
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    config_digest = blob(layout, config)

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + layer_digest,
                    "size": len(layer),
                }
            ],
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    manifest_digest = blob(layout, manifest)

    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + manifest_digest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": tag},
                    }
                ],
            },
            f,
        )
    print(manifest_digest)


if __name__ == "__main__":
    main()
