#!/usr/bin/env node
// Interop fixture: a real OAuth 2.0 authorization server (oidc-provider) that
// issues OPAQUE access tokens and keeps serving its introspection endpoint
// (RFC 7662) until stdin reaches end of file.
//
// Usage: node as.mjs <audience> <client-cert.pem> <htu> [<htu> ...]
//
// At start it acts as client and obtains four opaque tokens for <audience>:
//   mtls     certificate-bound (RFC 8705, cnf["x5t#S256"]) for client "tpp"
//   dpop     DPoP-bound (RFC 9449, cnf.jkt) for client "dpop-app", plus proofs
//   bearer   unbound Bearer for client "legacy"
//   revoked  unbound Bearer for client "legacy", revoked at once (RFC 7009)
// It checks each one through the introspection endpoint, then prints exactly
// one JSON document on ONE stdout line and keeps serving. Client "rs" (the
// resource server) may introspect any token. Each request to the
// introspection endpoint after setup is logged on stderr as
// "as.mjs: introspection <n>" (n counts from 1).
//
// Exit: 0 when stdin ends; 1 (message on stderr) if setup fails; 2 on a usage
// error. Only loopback traffic.
//
// There is no TLS: the client certificate reaches the provider in the request
// header x-test-client-cert (URL-encoded PEM), standing in for a TLS
// terminator in front of the AS.
//
// Environment (optional):
//   OIDC_VERBOSE=1  a few progress lines on stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import * as DPoP from 'dpop';
import { calculateJwkThumbprint, decodeJwt, exportJWK } from 'jose';

import {
  checkAbsoluteUrl, consoleToStderr, fail, getJson, listen, note as noteAs, signingKeys,
} from './common.mjs';

// Before oidc-provider is loaded (it is imported dynamically below).
consoleToStderr();

const SCOPE = 'api:read';
const ACCESS_TOKEN_TTL = 300; // seconds; the consumer refuses tokens living > 900 s
const PROOF_ALG = 'ES256';
const METHODS = ['GET', 'POST'];
const CERT_HEADER = 'x-test-client-cert';

function secret() {
  return crypto.randomBytes(32).toString('base64url');
}

const CLIENTS = {
  tpp: secret(),
  'dpop-app': secret(),
  legacy: secret(),
  rs: secret(),
};

function note(msg) {
  noteAs('as.mjs', msg);
}

function usage() {
  process.stderr.write('usage: node as.mjs <audience> <client-cert.pem> <htu> [<htu> ...]\n');
  process.exit(2);
}

function readCertificate(file) {
  let pem;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch (e) {
    fail(`cannot read <client-cert.pem> ${file}: ${e.message}`);
  }
  let cert;
  try {
    cert = new crypto.X509Certificate(pem);
  } catch (e) {
    fail(`<client-cert.pem> ${file} is not a PEM certificate: ${e.message}`);
  }
  // cert.toString() is the PEM of the (first) certificate alone, without any
  // surrounding text or chain: oidc-provider hashes whatever base64 sits
  // between the PEM armour, so it must get exactly one certificate.
  return {
    pem: cert.toString(),
    x5t: crypto.createHash('sha256').update(cert.raw).digest('base64url'),
  };
}

function basicAuth(clientId) {
  const creds = `${encodeURIComponent(clientId)}:${encodeURIComponent(CLIENTS[clientId])}`;
  return `Basic ${Buffer.from(creds).toString('base64')}`;
}

function form(params) {
  return new URLSearchParams(params).toString();
}

// client_credentials token request. With a keypair it sends a DPoP proof and
// answers at most one use_dpop_nonce challenge (RFC 9449 §8), like issue.mjs.
async function tokenRequest(tokenEndpoint, clientId, audience, { keypair, certPem } = {}) {
  let nonce;
  for (let attempt = 0; attempt < 2; attempt += 1) {
    const headers = {
      authorization: basicAuth(clientId),
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    if (keypair) headers.dpop = await DPoP.generateProof(keypair, tokenEndpoint, 'POST', nonce);
    if (certPem) headers[CERT_HEADER] = encodeURIComponent(certPem);
    const res = await fetch(tokenEndpoint, {
      method: 'POST',
      headers,
      body: form({ grant_type: 'client_credentials', resource: audience, scope: SCOPE }),
    });
    const body = await res.json().catch(() => ({}));
    const newNonce = res.headers.get('dpop-nonce');
    if (keypair && res.status === 400 && body.error === 'use_dpop_nonce' && newNonce
        && nonce === undefined) {
      nonce = newNonce;
      continue;
    }
    if (!res.ok) {
      fail(`token request for ${clientId} -> HTTP ${res.status}: ${JSON.stringify(body)}`);
    }
    if (typeof body.access_token !== 'string' || body.access_token.length === 0) {
      fail(`token response for ${clientId} has no access_token: ${JSON.stringify(body)}`);
    }
    if (body.access_token.split('.').length === 3) {
      fail(`access token for ${clientId} looks like a JWT, expected an opaque token`);
    }
    note(`token for ${clientId}: token_type ${body.token_type}`
      + `${nonce !== undefined ? ' after a use_dpop_nonce retry' : ''}`);
    return body;
  }
  return fail(`token request for ${clientId}: provider kept asking for a DPoP nonce`);
}

async function introspect(endpoint, token) {
  const res = await fetch(endpoint, {
    method: 'POST',
    headers: {
      authorization: basicAuth('rs'),
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    },
    body: form({ token }),
  });
  const body = await res.json().catch(() => undefined);
  if (!res.ok || !body) fail(`introspection -> HTTP ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

async function revoke(endpoint, clientId, token) {
  const res = await fetch(endpoint, {
    method: 'POST',
    headers: {
      authorization: basicAuth(clientId),
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: form({ token, token_type_hint: 'access_token' }),
  });
  if (res.status !== 200) fail(`revocation -> HTTP ${res.status}: ${await res.text()}`);
}

// Checks common to every active token's introspection response.
function checkActive(name, intro, { clientId, tokenType, audience, issuer }) {
  const where = `${name} token introspection ${JSON.stringify(intro)}`;
  if (intro.active !== true) fail(`${where}: active is not true`);
  if (intro.client_id !== clientId) fail(`${where}: client_id is not ${clientId}`);
  if (intro.token_type !== tokenType) fail(`${where}: token_type is not ${tokenType}`);
  if (intro.scope !== SCOPE) fail(`${where}: scope is not ${SCOPE}`);
  if (intro.iss !== issuer) fail(`${where}: iss is not ${issuer}`);
  const aud = Array.isArray(intro.aud) ? intro.aud : [intro.aud];
  if (!aud.includes(audience)) fail(`${where}: aud does not contain ${audience}`);
  if (!(intro.exp - intro.iat <= ACCESS_TOKEN_TTL)) fail(`${where}: lifetime > ${ACCESS_TOKEN_TTL}s`);
}

async function main() {
  const [audience, certFile, ...htus] = process.argv.slice(2);
  if (!audience || !certFile || htus.length === 0) usage();
  checkAbsoluteUrl('<audience>', audience);
  for (const htu of htus) checkAbsoluteUrl('<htu>', htu);
  const clientCert = readCertificate(certFile);

  const { default: Provider, errors } = await import('oidc-provider');

  // Bind first so the issuer identifier can carry the ephemeral port.
  const server = http.createServer();
  // AS_PORT: a fixed port (`make demo`'s Envoy configuration names it); else any.
  const port = await listen(server, Number(process.env.AS_PORT || 0));
  const issuer = `http://127.0.0.1:${port}`;

  try {
    const provider = new Provider(issuer, {
      scopes: [SCOPE],
      clients: [
        {
          client_id: 'tpp',
          client_secret: CLIENTS.tpp,
          token_endpoint_auth_method: 'client_secret_basic',
          grant_types: ['client_credentials'],
          response_types: [],
          redirect_uris: [],
          scope: SCOPE,
          tls_client_certificate_bound_access_tokens: true,
        },
        {
          client_id: 'dpop-app',
          client_secret: CLIENTS['dpop-app'],
          token_endpoint_auth_method: 'client_secret_basic',
          grant_types: ['client_credentials'],
          response_types: [],
          redirect_uris: [],
          scope: SCOPE,
        },
        {
          client_id: 'legacy',
          client_secret: CLIENTS.legacy,
          token_endpoint_auth_method: 'client_secret_basic',
          grant_types: ['client_credentials'],
          response_types: [],
          redirect_uris: [],
          scope: SCOPE,
        },
        {
          // The resource server: only authenticates to the introspection endpoint.
          client_id: 'rs',
          client_secret: CLIENTS.rs,
          token_endpoint_auth_method: 'client_secret_basic',
          grant_types: [],
          response_types: [],
          redirect_uris: [],
        },
      ],
      jwks: { keys: await signingKeys() },
      cookies: { keys: [secret()] },
      features: {
        devInteractions: { enabled: false },
        clientCredentials: { enabled: true },
        introspection: {
          enabled: true,
          // oidc-provider 8.8.1's default policy already lets a client that
          // authenticates (not "none") introspect anyone's token, but warns that
          // it should be changed. Explicitly: "rs" may introspect any token,
          // other clients only their own.
          allowedPolicy: async (ctx, client, token) => client.clientId === 'rs'
            || token.clientId === client.clientId,
        },
        revocation: { enabled: true },
        dPoP: {
          enabled: true,
          // No server-provided nonce: tokens are requested with a plain proof
          // (tokenRequest still answers use_dpop_nonce if it is ever asked).
          requireNonce: () => false,
        },
        mTLS: {
          enabled: true,
          certificateBoundAccessTokens: true,
          // Stand-in for a TLS terminator that forwards the client certificate.
          getCertificate: (ctx) => {
            const value = ctx.get(CERT_HEADER);
            if (!value) return undefined;
            try {
              return decodeURIComponent(value);
            } catch {
              return undefined;
            }
          },
        },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => audience,
          useGrantedResource: () => true,
          getResourceServerInfo: (ctx, resourceIndicator) => {
            if (resourceIndicator !== audience) {
              // Unknown resource: the provider answers invalid_target.
              throw new errors.InvalidTarget();
            }
            return {
              audience,
              scope: SCOPE,
              accessTokenTTL: ACCESS_TOKEN_TTL,
              accessTokenFormat: 'opaque',
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

    // Introspection requests are counted only once setup is over (counting is
    // switched on just before the JSON document is printed), so the script's
    // own check-introspections below are never counted.
    const callback = provider.callback();
    const introspectionPath = new URL(provider.urlFor('introspection')).pathname;
    let counting = false;
    let introspections = 0;
    server.on('request', (req, res) => {
      if (counting) {
        const path = new URL(req.url, issuer).pathname;
        if (path === introspectionPath) {
          introspections += 1;
          process.stderr.write(`as.mjs: introspection ${introspections}\n`);
        }
      }
      callback(req, res);
    });

    // Discover like a client would.
    const meta = await getJson(`${issuer}/.well-known/openid-configuration`);
    if (meta.issuer !== issuer) fail(`discovery issuer ${meta.issuer} != ${issuer}`);
    for (const m of ['token_endpoint', 'introspection_endpoint', 'revocation_endpoint', 'jwks_uri']) {
      if (typeof meta[m] !== 'string') fail(`discovery has no ${m}`);
    }
    if (new URL(meta.introspection_endpoint).pathname !== introspectionPath) {
      fail(`discovery introspection_endpoint ${meta.introspection_endpoint} `
        + `does not have the path ${introspectionPath}`);
    }
    if (meta.tls_client_certificate_bound_access_tokens !== true) {
      fail('provider does not advertise tls_client_certificate_bound_access_tokens');
    }
    if (!meta.dpop_signing_alg_values_supported?.includes(PROOF_ALG)) {
      fail(`provider does not advertise ${PROOF_ALG} in dpop_signing_alg_values_supported`);
    }
    const jwks = await getJson(meta.jwks_uri);
    for (const k of jwks.keys ?? []) {
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) {
        if (priv in k) fail(`jwks_uri served a private member "${priv}" (kid ${k.kid})`);
      }
    }
    const expect = { audience, issuer };
    const tokens = {};

    // mtls: certificate-bound token for "tpp".
    {
      const t = await tokenRequest(meta.token_endpoint, 'tpp', audience, { certPem: clientCert.pem });
      if (t.token_type !== 'Bearer') fail(`mtls token_type ${JSON.stringify(t.token_type)}, expected "Bearer"`);
      const intro = await introspect(meta.introspection_endpoint, t.access_token);
      checkActive('mtls', intro, { ...expect, clientId: 'tpp', tokenType: 'Bearer' });
      if (intro.cnf?.['x5t#S256'] !== clientCert.x5t) {
        fail(`mtls token cnf ${JSON.stringify(intro.cnf)}: x5t#S256 is not ${clientCert.x5t}`);
      }
      if (intro.cnf.jkt !== undefined) fail('mtls token also has cnf.jkt');
      tokens.mtls = { access_token: t.access_token, token_type: t.token_type, introspection: intro };
    }

    // dpop: DPoP-bound token for "dpop-app", with the dpop library's key pair.
    {
      const keypair = await DPoP.generateKeyPair(PROOF_ALG);
      const jkt = await DPoP.calculateThumbprint(keypair.publicKey);
      const jktJose = await calculateJwkThumbprint(await exportJWK(keypair.publicKey), 'sha256');
      if (jkt !== jktJose) fail(`thumbprint mismatch: dpop ${jkt} vs jose ${jktJose}`);
      const t = await tokenRequest(meta.token_endpoint, 'dpop-app', audience, { keypair });
      if (t.token_type !== 'DPoP') fail(`dpop token_type ${JSON.stringify(t.token_type)}, expected "DPoP"`);
      const intro = await introspect(meta.introspection_endpoint, t.access_token);
      checkActive('dpop', intro, { ...expect, clientId: 'dpop-app', tokenType: 'DPoP' });
      if (intro.cnf?.jkt !== jkt) fail(`dpop token cnf ${JSON.stringify(intro.cnf)}: jkt is not ${jkt}`);
      if (intro.cnf['x5t#S256'] !== undefined) fail('dpop token also has cnf["x5t#S256"]');

      const proofs = {};
      const ath = crypto.createHash('sha256').update(t.access_token).digest('base64url');
      for (const htu of htus) {
        proofs[htu] = {};
        for (const method of METHODS) {
          const proof = await DPoP.generateProof(keypair, htu, method, undefined, t.access_token);
          const p = decodeJwt(proof);
          if (p.ath !== ath || p.htu !== htu || p.htm !== method) {
            fail(`proof for ${method} ${htu} has unexpected claims ${JSON.stringify(p)}`);
          }
          proofs[htu][method] = proof;
        }
      }
      tokens.dpop = {
        access_token: t.access_token,
        token_type: t.token_type,
        jkt,
        proofs,
        introspection: intro,
      };
    }

    // bearer: unbound token for "legacy".
    {
      const t = await tokenRequest(meta.token_endpoint, 'legacy', audience);
      if (t.token_type !== 'Bearer') fail(`bearer token_type ${JSON.stringify(t.token_type)}, expected "Bearer"`);
      const intro = await introspect(meta.introspection_endpoint, t.access_token);
      checkActive('bearer', intro, { ...expect, clientId: 'legacy', tokenType: 'Bearer' });
      if (intro.cnf !== undefined) fail(`bearer token has cnf ${JSON.stringify(intro.cnf)}`);
      tokens.bearer = { access_token: t.access_token, token_type: t.token_type, introspection: intro };
    }

    // revoked: another unbound token for "legacy", revoked by its client.
    {
      const t = await tokenRequest(meta.token_endpoint, 'legacy', audience);
      const before = await introspect(meta.introspection_endpoint, t.access_token);
      if (before.active !== true) fail('token to revoke is not active before revocation');
      await revoke(meta.revocation_endpoint, 'legacy', t.access_token);
      const after = await introspect(meta.introspection_endpoint, t.access_token);
      if (after.active !== false || Object.keys(after).length !== 1) {
        fail(`revoked token introspection ${JSON.stringify(after)}, expected {"active":false}`);
      }
      tokens.revoked = { access_token: t.access_token };
    }

    const doc = {
      issuer,
      port,
      introspection_path: introspectionPath,
      jwks,
      rs: { client_id: 'rs', client_secret: CLIENTS.rs },
      tokens,
    };
    counting = true;
    return { doc, server };
  } catch (err) {
    server.closeAllConnections();
    server.close();
    throw err;
  }
}

main().then(
  ({ doc, server }) => {
    process.stdout.write(`${JSON.stringify(doc)}\n`, () => {
      note('serving until stdin ends');
      process.stdin.on('end', () => {
        server.closeAllConnections();
        server.close(() => process.exit(0));
      });
      process.stdin.resume();
    });
  },
  (err) => {
    process.stderr.write(`as.mjs: ${err.fixtureFailure ? err.message : err.stack || err}\n`);
    process.exit(1);
  },
);
