#!/usr/bin/env node
// Interop fixture: a real OAuth 2.0 authorization server (oidc-provider) issues
// a DPoP-bound JWT access token (cnf.jkt, RFC 9449 §6.1) through its token
// endpoint, and a real DPoP client library (dpop) makes the proofs.
//
// Usage: node issue.mjs <audience> <htu> [<htu> ...]
//
// Prints exactly one JSON document on stdout and exits 0; on any failure it
// prints a message on stderr and exits non-zero. Only loopback traffic.
//
// Environment (optional):
//   OIDC_AT_ALG  JWS alg of the access token: ES256 (default) or RS256.
//   OIDC_VERBOSE=1  a few progress lines on stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import * as DPoP from 'dpop';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  jwtVerify,
} from 'jose';

import {
  checkAbsoluteUrl, consoleToStderr, fail, getJson, listen, note as noteAs, signingKeys,
} from './common.mjs';

// Before oidc-provider is loaded (it is imported dynamically below).
consoleToStderr();

const CLIENT_ID = 'dpop-app';
const CLIENT_SECRET = crypto.randomBytes(32).toString('base64url');
const SCOPE = 'api:read';
const ACCESS_TOKEN_TTL = 300; // seconds; the consumer refuses tokens living > 900 s
const PROOF_ALG = 'ES256';
const METHODS = ['GET', 'POST'];

function note(msg) {
  noteAs('issue.mjs', msg);
}

function usage() {
  process.stderr.write('usage: node issue.mjs <audience> <htu> [<htu> ...]\n');
  process.exit(2);
}

async function tokenRequest(tokenEndpoint, keypair, audience) {
  const basic = Buffer.from(
    `${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`,
  ).toString('base64');
  let nonce;
  // At most one use_dpop_nonce retry (RFC 9449 §8).
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const proof = await DPoP.generateProof(keypair, tokenEndpoint, 'POST', nonce);
    const res = await fetch(tokenEndpoint, {
      method: 'POST',
      headers: {
        authorization: `Basic ${basic}`,
        'content-type': 'application/x-www-form-urlencoded',
        accept: 'application/json',
        dpop: proof,
      },
      body: new URLSearchParams({
        grant_type: 'client_credentials',
        resource: audience,
        scope: SCOPE,
      }).toString(),
    });
    const body = await res.json().catch(() => ({}));
    const newNonce = res.headers.get('dpop-nonce');
    if (res.status === 400 && body.error === 'use_dpop_nonce' && newNonce && nonce === undefined) {
      nonce = newNonce;
      continue;
    }
    if (!res.ok) {
      fail(`token request -> HTTP ${res.status}: ${JSON.stringify(body)}`);
    }
    return { body, usedNonce: nonce !== undefined };
  }
  fail('token request: provider kept asking for a DPoP nonce');
}

async function main() {
  const [audience, ...htus] = process.argv.slice(2);
  if (!audience || htus.length === 0) usage();
  checkAbsoluteUrl('<audience>', audience);
  for (const htu of htus) checkAbsoluteUrl('<htu>', htu);

  const atAlg = process.env.OIDC_AT_ALG || 'ES256';
  if (!['ES256', 'RS256'].includes(atAlg)) fail(`OIDC_AT_ALG must be ES256 or RS256, got ${atAlg}`);

  const { default: Provider, errors } = await import('oidc-provider');

  // Bind first so the issuer identifier can carry the ephemeral port.
  const server = http.createServer();
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;

  try {
    const provider = new Provider(issuer, {
      scopes: [SCOPE],
      clients: [{
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: SCOPE,
      }],
      jwks: { keys: await signingKeys() },
      cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        dPoP: {
          enabled: true,
          // Server-provided nonces: exercises the client's use_dpop_nonce retry.
          nonceSecret: crypto.randomBytes(32),
          requireNonce: () => true,
        },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => audience,
          useGrantedResource: () => true,
          getResourceServerInfo: (ctx, resourceIndicator, client) => {
            if (resourceIndicator !== audience) {
              // Unknown resource: the provider answers invalid_target.
              throw new errors.InvalidTarget();
            }
            return {
              audience,
              scope: SCOPE,
              accessTokenTTL: ACCESS_TOKEN_TTL,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: atAlg } },
            };
          },
        },
      },
      ttl: {
        AccessToken: ACCESS_TOKEN_TTL,
        ClientCredentials: ACCESS_TOKEN_TTL,
        AuthorizationCode: 60,
        IdToken: 300,
        RefreshToken: 600,
        Interaction: 300,
        Session: 600,
        Grant: 600,
      },
    });
    provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
    server.on('request', provider.callback());

    // Discover like a client would.
    const meta = await getJson(`${issuer}/.well-known/openid-configuration`);
    if (meta.issuer !== issuer) fail(`discovery issuer ${meta.issuer} != ${issuer}`);
    if (!meta.dpop_signing_alg_values_supported?.includes(PROOF_ALG)) {
      fail(`provider does not advertise ${PROOF_ALG} in dpop_signing_alg_values_supported`);
    }
    const jwks = await getJson(meta.jwks_uri);
    for (const k of jwks.keys ?? []) {
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) {
        if (priv in k) fail(`jwks_uri served a private member "${priv}" (kid ${k.kid})`);
      }
    }

    // The client's DPoP key pair, made by the dpop library.
    const keypair = await DPoP.generateKeyPair(PROOF_ALG);
    const publicJwk = await exportJWK(keypair.publicKey);
    const jkt = await calculateJwkThumbprint(publicJwk, 'sha256');
    const jktDpop = await DPoP.calculateThumbprint(keypair.publicKey);
    if (jkt !== jktDpop) fail(`thumbprint mismatch: jose ${jkt} vs dpop ${jktDpop}`);

    const { body: tokenResponse, usedNonce } = await tokenRequest(meta.token_endpoint, keypair, audience);
    note(`token endpoint ${meta.token_endpoint}: token_type ${tokenResponse.token_type}, `
      + `${usedNonce ? 'after a use_dpop_nonce retry' : 'no nonce asked'}`);
    if (tokenResponse.token_type !== 'DPoP') {
      fail(`token_type is ${JSON.stringify(tokenResponse.token_type)}, expected "DPoP"`);
    }
    const accessToken = tokenResponse.access_token;
    if (typeof accessToken !== 'string' || accessToken.split('.').length !== 3) {
      fail(`access_token is not a JWS compact JWT: ${JSON.stringify(accessToken)}`);
    }

    const header = decodeProtectedHeader(accessToken);
    const claims = decodeJwt(accessToken);
    if (header.alg !== atAlg) fail(`access token alg ${header.alg}, expected ${atAlg}`);
    if (header.typ !== 'at+jwt') fail(`access token typ ${header.typ}, expected at+jwt`);
    if (claims.cnf?.jkt !== jkt) {
      fail(`access token cnf.jkt ${JSON.stringify(claims.cnf?.jkt)} != client key thumbprint ${jkt}`);
    }
    // Verify it against the JWKS as served, like the resource server will.
    await jwtVerify(accessToken, createLocalJWKSet(jwks), {
      issuer,
      audience,
      typ: 'at+jwt',
      algorithms: [atAlg],
    }).catch((e) => fail(`access token does not verify against jwks_uri: ${e.message}`));
    if (claims.exp - claims.iat > 900) fail(`access token lifetime ${claims.exp - claims.iat}s > 900s`);

    const proofs = {};
    for (const htu of htus) {
      proofs[htu] = {};
      for (const method of METHODS) {
        proofs[htu][method] = await DPoP.generateProof(keypair, htu, method, undefined, accessToken);
      }
    }
    const ath = crypto.createHash('sha256').update(accessToken).digest('base64url');
    for (const htu of htus) {
      for (const method of METHODS) {
        const p = decodeJwt(proofs[htu][method]);
        if (p.ath !== ath || p.htu !== htu || p.htm !== method) {
          fail(`proof for ${method} ${htu} has unexpected claims ${JSON.stringify(p)}`);
        }
      }
    }

    return {
      issuer,
      jwks,
      access_token: accessToken,
      token_type: tokenResponse.token_type,
      claims,
      jkt,
      proofs,
      proof_alg: PROOF_ALG,
    };
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

main().then(
  (doc) => {
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`, () => process.exit(0));
  },
  (err) => {
    process.stderr.write(`issue.mjs: ${err.fixtureFailure ? err.message : err.stack || err}\n`);
    process.exit(1);
  },
);
