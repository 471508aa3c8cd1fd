#!/usr/bin/env node
// Interop fixture: encrypted access tokens made by `jose` (panva), for tests/jwe_interop.rs
// (issue 12). A nested JWT (ES256, typ at+jwt) encrypted as compact JWE with cty "JWT",
// for each recipient of the spec.
//
// Usage: node jwe.mjs <spec.json>
//   spec: {"issuer_private": <EC P-256 private JWK with kid>, "claims": {...},
//          "recipients": [{"alg", "enc", "jwk"}]}   ("jwk" may be private: only its public
//          half is used, all of it for "dir")
// Prints {"tokens": [{"alg", "enc", "token"}]} on stdout and exits 0.

import { readFileSync } from 'node:fs';

import { CompactEncrypt, SignJWT, importJWK } from 'jose';

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi'];

function publicHalf(jwk) {
  const copy = { ...jwk };
  for (const m of PRIVATE_MEMBERS) delete copy[m];
  return copy;
}

async function main() {
  const [specPath] = process.argv.slice(2);
  if (!specPath) {
    process.stderr.write('usage: node jwe.mjs <spec.json>\n');
    process.exit(2);
  }
  const spec = JSON.parse(readFileSync(specPath, 'utf8'));
  const signingKey = await importJWK(spec.issuer_private, 'ES256');
  const signed = await new SignJWT(spec.claims)
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: spec.issuer_private.kid })
    .sign(signingKey);
  const tokens = [];
  for (const { alg, enc, jwk } of spec.recipients) {
    const key = await importJWK(alg === 'dir' ? jwk : publicHalf(jwk), alg);
    const token = await new CompactEncrypt(new TextEncoder().encode(signed))
      .setProtectedHeader({ alg, enc, cty: 'JWT', kid: jwk.kid })
      .encrypt(key);
    tokens.push({ alg, enc, token });
  }
  process.stdout.write(`${JSON.stringify({ tokens })}\n`);
}

main().catch((err) => {
  process.stderr.write(`jwe.mjs: ${err.stack || err}\n`);
  process.exit(1);
});
