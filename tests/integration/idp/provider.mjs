// Test-only OpenID provider for the gateway integration tests.
//
// Built on `oidc-provider` (v9). NEVER use this outside tests: client secrets
// are hard-coded, keys live in memory, and there are unauthenticated
// test-only endpoints that mint ID tokens and rotate the signing keys.
//
// Start:   node provider.mjs
// Output:  exactly one JSON line on stdout once listening, e.g.
//          {"issuer": "http://127.0.0.1:41234", "port": 41234}
//          (logs and warnings go to stderr). Listens on 127.0.0.1 only, on a
//          random port. Stops cleanly on SIGTERM / SIGINT.
//
// Signing keys (generated at start, published at the jwks endpoint, every
// key has a unique "kid", "use": "sig" and an "alg"):
//   RSA 2048 -> RS256, EC P-256 -> ES256, Ed25519 -> EdDSA
//
// Clients that get tokens (grant type client_credentials only):
//   gateway-tests       / gateway-tests-secret  client_secret_basic, no extra claims
//   gateway-tests-post  / gateway-tests-secret  client_secret_post,  no extra claims
//   gateway-tests-acme  / gateway-tests-secret  client_secret_basic, extra access
//                                               token claims:
//                                               {"tenant": "acme", "groups": ["support", "dev"]}
// Introspection clients (no grant types: they cannot get tokens, only call the
// introspection endpoint, for ANY client's tokens):
//   gateway-introspector      / gateway-introspector-secret  client_secret_basic
//   gateway-introspector-post / gateway-introspector-secret  client_secret_post
// The token clients may introspect only their own tokens (someone else's token
// answers {"active": false}).
// Client authentication is strict: each client must use its registered method
// at the token, introspection and revocation endpoints alike; the other one is
// refused with 401 invalid_client (oidc-provider v9 itself would accept either
// client_secret_basic or client_secret_post from any client_secret_* client).
//
// Resources (RFC 8707 resource indicators): ANY absolute http(s) URL without
// a fragment is accepted as `resource`; the access token's aud = that URL and
// its TTL is 600 s.
//
// Access token format (JWT unless one of these says opaque):
//   1. the token request's `X-Test-Format` HTTP header, if present
//      (jwt | opaque, case-insensitive; anything else -> invalid_request);
//   2. otherwise the resource URL's last path segment: .../opaque -> opaque,
//      e.g. "https://api.example.test/opaque" or
//      "https://api.example.test/orders/opaque" (aud is the full URL,
//      "/opaque" included; use the header for opaque tokens with any other aud);
//   3. otherwise JWT.
// An opaque token is a random string (no dots) that only the provider can
// resolve: through the introspection endpoint (RFC 7662) or, to end it early,
// the revocation endpoint (RFC 7009; only the token's own client may revoke
// it). Its introspection answer carries active, client_id, sub (= client_id,
// as in the JWTs), scope, aud, iss, iat, exp, token_type "Bearer", and the
// client's extra claims (tenant, groups for gateway-tests-acme). Issued tokens
// live in memory until they expire and survive /test/rotate and /test/retire.
// JWT access tokens cannot be introspected or revoked (oidc-provider answers
// unsupported_token_type).
//
// JWT access tokens have header typ "at+jwt". Signing algorithm:
//   1. the token request's `X-Test-Alg` HTTP header, if present
//      (RS256 | ES256 | EdDSA, case-insensitive; anything else -> invalid_request);
//   2. otherwise the resource URL's last path segment:
//      .../rs256 -> RS256,  .../es256 -> ES256,  .../eddsa -> EdDSA;
//   3. otherwise RS256.
// Without a `resource` parameter the default resource
// "https://api.example.test/rs256" is used.
//
// Scopes: every resource server accepts exactly the scopes in ALLOWED_SCOPES
// below; requested scopes outside that list are silently dropped from the
// token (oidc-provider behaviour), the granted ones appear in `scope`.
//
// Test-only endpoints:
//   GET  /test/id_token?sub=alice&aud=gateway-tests
//        -> {"id_token": "..."}: an OIDC ID token signed with the current
//           RS256 key (no "typ" header), iss = issuer, aud = client id
//           (must be one of the clients above), TTL 600 s.
//   POST /test/rotate -> generate a new set of keys (new kids). The new keys
//        are used for signing from now on; the previous set stays published
//        in the JWKS (after the new ones) for a grace period.
//   POST /test/retire -> stop publishing the previous key set.
//   GET  /test/keys   -> current key state, without changing it.
//   All three reply {"signing": [kids...], "published": [kids...]}.
//   GET  /test/stats  -> {"jwks_requests": N, "discovery_requests": M,
//        "introspection_requests": I, "revocation_requests": R}: how many JWKS
//        and discovery documents were served and how many introspection and
//        revocation requests arrived since start (or the last reset), counted
//        before the provider answers (rejected ones included), so tests can
//        count a gateway's calls.
//   POST /test/stats/reset -> set all of those counters to 0; replies with them.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const CLIENT_SECRET = 'gateway-tests-secret';
const ACCESS_TOKEN_TTL = 600;
const ID_TOKEN_TTL = 600;
const DEFAULT_RESOURCE = 'https://api.example.test/rs256';
const INTROSPECTOR_SECRET = 'gateway-introspector-secret';
// oidc-provider's defaults; named here so that /test/stats counts the right paths.
const JWKS_PATH = '/jwks';
const DISCOVERY_PATH = '/.well-known/openid-configuration';
const TOKEN_PATH = '/token';
const INTROSPECTION_PATH = '/token/introspection';
const REVOCATION_PATH = '/token/revocation';
const CLIENT_AUTH_PATHS = new Set([TOKEN_PATH, INTROSPECTION_PATH, REVOCATION_PATH]);
const MAX_BODY = 56 * 1024; // oidc-provider's own limit

export const ALLOWED_SCOPES = [
  'read',
  'write',
  'admin',
  'profile',
  'email',
  'orders:read',
  'orders:write',
  'orders:admin',
  'users:read',
  'users:write',
  'users:admin',
  'inventory:read',
  'inventory:write',
  'billing:read',
  'billing:write',
  'reports:read',
  'metrics:read',
  'api:read',
  'api:write',
  'api:admin',
];

const EXTRA_CLAIMS = {
  'gateway-tests-acme': { tenant: 'acme', groups: ['support', 'dev'] },
};

const TOKEN_CLIENTS = [
  { client_id: 'gateway-tests', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'gateway-tests-post', token_endpoint_auth_method: 'client_secret_post' },
  { client_id: 'gateway-tests-acme', token_endpoint_auth_method: 'client_secret_basic' },
].map((client) => ({
  ...client,
  client_secret: CLIENT_SECRET,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  id_token_signed_response_alg: 'RS256',
}));

// May introspect every client's tokens (see introspectionAllowed).
const INTROSPECTORS = new Set(['gateway-introspector', 'gateway-introspector-post']);

const INTROSPECTION_CLIENTS = [
  { client_id: 'gateway-introspector', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'gateway-introspector-post', token_endpoint_auth_method: 'client_secret_post' },
].map((client) => ({
  ...client,
  client_secret: INTROSPECTOR_SECRET,
  grant_types: [],
  response_types: [],
  redirect_uris: [],
}));

const CLIENTS = [...TOKEN_CLIENTS, ...INTROSPECTION_CLIENTS];
const AUTH_METHODS = new Map(CLIENTS.map((c) => [c.client_id, c.token_endpoint_auth_method]));

function log(...args) {
  console.error('[idp]', ...args);
}

let generation = 0;

function generateKeySet() {
  generation += 1;
  const stamp = `${generation}-${crypto.randomBytes(6).toString('hex')}`;
  const make = (type, options, alg, prefix) => {
    const { privateKey } = crypto.generateKeyPairSync(type, options);
    return { ...privateKey.export({ format: 'jwk' }), kid: `${prefix}-${stamp}`, use: 'sig', alg };
  };
  return [
    make('rsa', { modulusLength: 2048 }, 'RS256', 'rs256'),
    make('ec', { namedCurve: 'P-256' }, 'ES256', 'es256'),
    make('ed25519', {}, 'EdDSA', 'eddsa'),
  ];
}

const ALG_NAMES = { rs256: 'RS256', es256: 'ES256', eddsa: 'EdDSA' };
const FORMAT_NAMES = { jwt: 'jwt', opaque: 'opaque' };

function lastPathSegment(resource) {
  try {
    const { pathname } = new URL(resource);
    return pathname.replace(/\/+$/, '').split('/').pop().toLowerCase();
  } catch {
    return '';
  }
}

function formatForRequest(ctx, resource) {
  const requested = ctx.get('x-test-format');
  if (requested) {
    const format = FORMAT_NAMES[requested.toLowerCase()];
    if (!format) {
      throw new errors.InvalidRequest(`unsupported X-Test-Format header value ${requested}`);
    }
    return format;
  }
  return lastPathSegment(resource) === 'opaque' ? 'opaque' : 'jwt';
}

function algForRequest(ctx, resource) {
  const requested = ctx.get('x-test-alg');
  if (requested) {
    const alg = ALG_NAMES[requested.toLowerCase()];
    if (!alg) {
      throw new errors.InvalidRequest(`unsupported X-Test-Alg header value ${requested}`);
    }
    return alg;
  }
  return algForResource(resource);
}

function algForResource(resource) {
  return ALG_NAMES[lastPathSegment(resource)] ?? 'RS256';
}

async function introspectionAllowed(_ctx, client, token) {
  return INTROSPECTORS.has(client.clientId) || token.clientId === client.clientId;
}

// Stateful data (opaque tokens) in one module-wide store, so that it outlives
// the Provider instances that /test/rotate and /test/retire replace, with no
// size limit (oidc-provider's own memory adapter keeps at most 1000 entries per
// Provider instance). Entries are dropped once expired.
const STORE = new Map(); // `${model}:${id}` -> { payload, expiresAt (ms) }
let upsertsSincePurge = 0;

function purgeExpired() {
  const now = Date.now();
  for (const [key, entry] of STORE) {
    if (entry.expiresAt <= now) STORE.delete(key);
  }
}

class SharedMemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    upsertsSincePurge += 1;
    if (upsertsSincePurge >= 1000) {
      upsertsSincePurge = 0;
      purgeExpired();
    }
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    STORE.set(this.key(id), { payload: structuredClone(payload), expiresAt });
  }

  async find(id) {
    const key = this.key(id);
    const entry = STORE.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      STORE.delete(key);
      return undefined;
    }
    return structuredClone(entry.payload);
  }

  async #findBy(field, value) {
    const prefix = `${this.model}:`;
    for (const [key, entry] of STORE) {
      if (key.startsWith(prefix) && entry.payload[field] === value) {
        return this.find(key.slice(prefix.length));
      }
    }
    return undefined;
  }

  async findByUid(uid) {
    return this.#findBy('uid', uid);
  }

  async findByUserCode(userCode) {
    return this.#findBy('userCode', userCode);
  }

  async consume(id) {
    const entry = STORE.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    STORE.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of STORE) {
      if (entry.payload.grantId === grantId) STORE.delete(key);
    }
  }
}

function isAcceptableResource(resource) {
  try {
    const url = new URL(resource);
    return (url.protocol === 'https:' || url.protocol === 'http:') && !url.hash;
  } catch {
    return false;
  }
}

function buildProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    adapter: SharedMemoryAdapter,
    clients: CLIENTS,
    routes: { jwks: JWKS_PATH, introspection: INTROSPECTION_PATH, revocation: REVOCATION_PATH },
    jwks: { keys },
    // Only used for keygrip-signed cookies of user flows we never run.
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', ...ALLOWED_SCOPES],
    claims: { openid: ['sub'] },
    clientDefaults: { id_token_signed_response_alg: 'RS256' },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: introspectionAllowed },
      // The default policy: only the token's own client may revoke it.
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? DEFAULT_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (!isAcceptableResource(resourceIndicator)) {
            throw new errors.InvalidTarget();
          }
          const info = {
            scope: ALLOWED_SCOPES.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: formatForRequest(ctx, resourceIndicator),
          };
          if (info.accessTokenFormat === 'jwt') {
            info.jwt = { sign: { alg: algForRequest(ctx, resourceIndicator) } };
          }
          return info;
        },
      },
    },
    ttl: {
      ClientCredentials: ACCESS_TOKEN_TTL,
      AccessToken: ACCESS_TOKEN_TTL,
      IdToken: ID_TOKEN_TTL,
    },
    extraTokenClaims: async (_ctx, token) => {
      const clientId = token.clientId ?? token.client?.clientId;
      const extra = structuredClone(EXTRA_CLAIMS[clientId] ?? {});
      if (token.resourceServer?.accessTokenFormat === 'opaque' && !token.accountId) {
        // Introspection reports `sub` only for tokens with an end-user; a
        // client_credentials JWT has sub = client_id, so say the same here.
        extra.sub = clientId;
      }
      return Object.keys(extra).length ? extra : undefined;
    },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub }),
    }),
  });
  provider.on('server_error', (_ctx, err) => log('server_error', err));
  return provider;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('request entity too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Why the request's client authentication is refused, or null to let
// oidc-provider judge it: a client_secret_basic client that sends its secret in
// the body, or a client_secret_post client that sends an Authorization header.
function authMethodMismatch(req, body) {
  let clientId;
  let used;
  const header = req.headers.authorization;
  if (header !== undefined && /^basic\s/i.test(header)) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon === -1) return null;
    try {
      clientId = decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
    } catch {
      return null;
    }
    used = 'client_secret_basic';
  } else {
    const params = new URLSearchParams(body);
    if (!params.has('client_secret')) return null;
    clientId = params.get('client_id');
    used = 'client_secret_post';
  }
  const registered = AUTH_METHODS.get(clientId);
  if (registered === undefined || registered === used) return null;
  return `client ${clientId} must authenticate with ${registered}, not ${used}`;
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
    'cache-control': 'no-store',
  });
  res.end(data);
}

async function mintIdToken(provider, sub, aud) {
  const client = await provider.Client.find(aud);
  if (!client) {
    const err = new Error(`unknown client ${aud}`);
    err.status = 400;
    throw err;
  }
  const idToken = new provider.IdToken({ sub }, { client });
  idToken.scope = 'openid';
  idToken.set('auth_time', Math.floor(Date.now() / 1000));
  idToken.set('nonce', crypto.randomBytes(8).toString('hex'));
  return idToken.issue({ use: 'idtoken' });
}

async function main() {
  let current = null; // the active Provider instance
  let handler = null; // current.callback()
  let signingKeys = generateKeySet();
  let previousKeys = [];
  let issuer = null;
  const stats = {
    jwks_requests: 0,
    discovery_requests: 0,
    introspection_requests: 0,
    revocation_requests: 0,
  };

  const publicKids = () => [...signingKeys, ...previousKeys].map((k) => k.kid);
  const rebuild = () => {
    current = buildProvider(issuer, [...signingKeys, ...previousKeys]);
    handler = current.callback();
  };
  const keyState = () => ({ signing: signingKeys.map((k) => k.kid), published: publicKids() });

  const testRoutes = async (req, res, url) => {
    if (req.method === 'GET' && url.pathname === '/test/id_token') {
      const sub = url.searchParams.get('sub') || 'alice';
      const aud = url.searchParams.get('aud') || 'gateway-tests';
      try {
        sendJson(res, 200, { id_token: await mintIdToken(current, sub, aud) });
      } catch (err) {
        log('id_token failed', err);
        sendJson(res, err.status || 500, { error: String(err.message || err) });
      }
      return true;
    }
    if (req.method === 'POST' && url.pathname === '/test/rotate') {
      previousKeys = signingKeys;
      signingKeys = generateKeySet();
      rebuild();
      sendJson(res, 200, keyState());
      return true;
    }
    if (req.method === 'POST' && url.pathname === '/test/retire') {
      previousKeys = [];
      rebuild();
      sendJson(res, 200, keyState());
      return true;
    }
    if (url.pathname === '/test/keys') {
      sendJson(res, 200, keyState());
      return true;
    }
    if (req.method === 'GET' && url.pathname === '/test/stats') {
      sendJson(res, 200, stats);
      return true;
    }
    if (req.method === 'POST' && url.pathname === '/test/stats/reset') {
      for (const key of Object.keys(stats)) stats[key] = 0;
      sendJson(res, 200, stats);
      return true;
    }
    return false;
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://placeholder.invalid');
    if (url.pathname.startsWith('/test/')) {
      testRoutes(req, res, url).then((handled) => {
        if (!handled) sendJson(res, 404, { error: 'not_found' });
      });
      return;
    }
    if (!handler) {
      sendJson(res, 503, { error: 'starting' });
      return;
    }
    if (req.method === 'GET' && url.pathname === JWKS_PATH) stats.jwks_requests += 1;
    if (req.method === 'GET' && url.pathname === DISCOVERY_PATH) stats.discovery_requests += 1;
    if (req.method === 'POST' && url.pathname === INTROSPECTION_PATH) {
      stats.introspection_requests += 1;
    }
    if (req.method === 'POST' && url.pathname === REVOCATION_PATH) stats.revocation_requests += 1;
    if (req.method === 'POST' && CLIENT_AUTH_PATHS.has(url.pathname)) {
      // Read the form here to enforce the registered auth method; oidc-provider
      // then takes the already read body from req.body.
      readBody(req).then(
        (body) => {
          const mismatch = authMethodMismatch(req, body);
          if (mismatch) {
            sendJson(res, 401, { error: 'invalid_client', error_description: mismatch });
            return;
          }
          req.body = body;
          handler(req, res);
        },
        (err) => {
          if (!res.headersSent) {
            const description = String(err.message);
            sendJson(res, 400, { error: 'invalid_request', error_description: description });
          }
        },
      );
      return;
    }
    handler(req, res);
  });
  server.keepAliveTimeout = 1000;

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, resolve);
  });
  const { port } = server.address();
  issuer = `http://${HOST}:${port}`;
  rebuild();

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    log(`received ${signal}, shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
}

main().catch((err) => {
  log('fatal', err);
  process.exit(1);
});
