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
// Clients (grant type client_credentials only):
//   gateway-tests       / gateway-tests-secret  client_secret_basic, no extra claims
//   gateway-tests-post  / gateway-tests-secret  client_secret_post,  no extra claims
//   gateway-tests-acme  / gateway-tests-secret  client_secret_basic, extra access
//                                               token claims:
//                                               {"tenant": "acme", "groups": ["support", "dev"]}
//
// Resources (RFC 8707 resource indicators): ANY absolute http(s) URL without
// a fragment is accepted as `resource`. The access token is then a JWT
// (header typ "at+jwt") with aud = that URL and TTL 600 s. Signing algorithm:
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
//   GET  /test/stats  -> {"jwks_requests": N, "discovery_requests": M}: how many
//        JWKS and discovery documents were served since start (counted before
//        the provider answers), so tests can count a gateway's fetches.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import { Provider, errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const CLIENT_SECRET = 'gateway-tests-secret';
const ACCESS_TOKEN_TTL = 600;
const ID_TOKEN_TTL = 600;
const DEFAULT_RESOURCE = 'https://api.example.test/rs256';
// oidc-provider's default; named here so that /test/stats counts the right path.
const JWKS_PATH = '/jwks';
const DISCOVERY_PATH = '/.well-known/openid-configuration';

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

const CLIENTS = [
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
  let last = '';
  try {
    const { pathname } = new URL(resource);
    last = pathname.replace(/\/+$/, '').split('/').pop().toLowerCase();
  } catch {
    // fall through to the default
  }
  return ALG_NAMES[last] ?? 'RS256';
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
    clients: CLIENTS,
    routes: { jwks: JWKS_PATH },
    jwks: { keys },
    // Only used for keygrip-signed cookies of user flows we never run.
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', ...ALLOWED_SCOPES],
    claims: { openid: ['sub'] },
    clientDefaults: { id_token_signed_response_alg: 'RS256' },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? DEFAULT_RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (!isAcceptableResource(resourceIndicator)) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: ALLOWED_SCOPES.join(' '),
            audience: resourceIndicator,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: algForRequest(ctx, resourceIndicator) } },
          };
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
      const extra = EXTRA_CLAIMS[clientId];
      return extra ? structuredClone(extra) : undefined;
    },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub }),
    }),
  });
  provider.on('server_error', (_ctx, err) => log('server_error', err));
  return provider;
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
  const stats = { jwks_requests: 0, discovery_requests: 0 };

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
