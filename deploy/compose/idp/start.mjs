// Starts the repository's test OpenID provider (tests/integration/idp/provider.mjs) for the
// local compose stack. TEST ONLY: its client secrets are public and its keys live in memory.
//
// provider.mjs listens on 127.0.0.1 and a random port, and names itself
// http://127.0.0.1:<port>. This wrapper only fixes the port and the bind address, before
// the provider starts:
//   IDP_PORT      the port (default 9000)
//   IDP_HOST      the bind address (default 0.0.0.0, so that the host reaches the token
//                 endpoint through the published port)
//   IDP_PROVIDER  the provider script (default ./provider.mjs)
// The issuer stays http://127.0.0.1:<port>: in compose.yaml the provider shares the gateway's
// network namespace, so that URL means the same to the gateway, the provider and the host.

import * as http from 'node:http';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

const port = Number.parseInt(process.env.IDP_PORT ?? '9000', 10);
const host = process.env.IDP_HOST ?? '0.0.0.0';
const provider = path.resolve(process.env.IDP_PROVIDER ?? 'provider.mjs');

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function fixedListen(...args) {
  const callback = args.find((arg) => typeof arg === 'function');
  return listen.call(this, port, host, callback);
};

await import(pathToFileURL(provider).href);
