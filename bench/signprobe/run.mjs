// Times Tether's response signing in V8 (Node's WebAssembly): `node run.mjs <signprobe.wasm>`.
// Prints one JSON object: microseconds per call of each export of bench/signprobe (see its
// src/lib.rs), the median of 5 batches after a warm-up, and the V8 version.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const wasi = new WASI({ version: "preview1", args: [], env: {} });
const module = await WebAssembly.compile(readFileSync(process.argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
wasi.initialize(instance);
const exports = instance.exports;

function time(name, perBatch) {
  exports[name](Math.max(1, perBatch / 10)); // warm-up (and the keys' one-time setup)
  const batches = [];
  for (let i = 0; i < 5; i++) {
    const start = process.hrtime.bigint();
    exports[name](perBatch);
    batches.push(Number(process.hrtime.bigint() - start) / 1000 / perBatch);
  }
  batches.sort((a, b) => a - b);
  return Math.round(batches[2] * 100) / 100;
}

console.log(JSON.stringify({
  engine: `V8 ${process.versions.v8} (Node ${process.version})`,
  ed25519_sign_us: time("sign_ed25519", 2000),
  p256_sign_us: time("sign_p256", 200),
  content_digest_1k_us: time("content_digest_1k", 20000),
  sign_http_ed25519_us: time("sign_http_ed25519", 2000),
  sign_http_p256_us: time("sign_http_p256", 200),
}));
