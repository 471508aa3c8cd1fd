// What the oidc-provider fixtures (issue.mjs, as.mjs) share: stdout kept for their JSON
// document, failures as messages, URL checks, the provider's signing keys, the listening
// server and JSON GETs. Loopback only.

import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';

/// oidc-provider prints its notices with console.info (stdout); stdout must carry the JSON
/// document only, so every console channel goes to stderr. Call it before oidc-provider is
/// loaded (the fixtures import it dynamically).
export function consoleToStderr() {
  for (const m of ['log', 'info', 'debug', 'warn']) {
    console[m] = (...args) => console.error(...args);
  }
}

/// A progress line on stderr with OIDC_VERBOSE=1.
export function note(script, msg) {
  if (process.env.OIDC_VERBOSE === '1') process.stderr.write(`${script}: ${msg}\n`);
}

/// A failure of the fixture's own checks: reported as its message, not a stack.
export function fail(msg) {
  const err = new Error(msg);
  err.fixtureFailure = true;
  throw err;
}

export function checkAbsoluteUrl(what, value) {
  const u = URL.parse(value);
  if (!u) {
    fail(`${what} must be an absolute URI, got ${JSON.stringify(value)}`);
  }
  if (u.hash) fail(`${what} must not contain a fragment, got ${JSON.stringify(value)}`);
}

/// Private signing keys of the provider (ES256 and RS256); it serves the public halves at
/// jwks_uri. An RS256 key is needed even for opaque tokens: the provider checks every
/// client's metadata against its keys, and id_token_signed_response_alg defaults to RS256.
export async function signingKeys() {
  const es = await generateKeyPair('ES256', { extractable: true });
  const rs = await generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
  const esJwk = { ...(await exportJWK(es.privateKey)), alg: 'ES256', use: 'sig' };
  const rsJwk = { ...(await exportJWK(rs.privateKey)), alg: 'RS256', use: 'sig' };
  esJwk.kid = `es256-${(await calculateJwkThumbprint(esJwk)).slice(0, 16)}`;
  rsJwk.kid = `rs256-${(await calculateJwkThumbprint(rsJwk)).slice(0, 16)}`;
  return [esJwk, rsJwk];
}

/// Listens on 127.0.0.1:`port` (0: any); resolves to the port.
export function listen(server, port = 0) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

export async function getJson(url) {
  const res = await fetch(url, { headers: { accept: 'application/json' } });
  if (!res.ok) fail(`GET ${url} -> HTTP ${res.status}: ${await res.text()}`);
  return res.json();
}
