"""``gateway demo``: the whole product on one machine with nothing to set up.

It makes an ephemeral signing key, serves its own issuer metadata and JWKS and an echo upstream
on loopback, writes a ready configuration, starts the gateway on it, and prints curl commands
that show an allowed request and the typical refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.config import load_and_compile
from gateway.server import GatewayServer, serve_forever

AUDIENCE = "https://demo.api.test"

CONFIG = """\
# Written by `gateway demo`. Try: gateway check --config {path}
listen: 127.0.0.1:{port}
admin:
  listen: 127.0.0.1:{admin_port}
issuers:
  demo:
    issuer: {issuer}
    discovery: true                 # metadata and JWKS served by the demo itself
    audiences: [{audience}]
    token_type: at+jwt              # RFC 9068 access tokens only
upstreams:
  echo:
    url: {echo}
routes:
  - name: status
    match: {{path: /status, methods: [GET]}}
    upstream: echo
    auth: public
  - name: orders
    match: {{path: /api/orders/**}}
    upstream: echo
    auth:
      scopes: [orders:read]
"""


def _free_port(preferred: int) -> int:
    """``preferred`` if it can be bound on loopback, else 0 (any free port)."""
    if preferred == 0:
        return 0
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


async def _echo(request: web.Request) -> web.Response:
    """The demo upstream: tells what it received, identity headers included."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "body_bytes": len(body),
        }
    )


def _issuer_app(issuer: str, jwks: dict[str, Any]) -> web.Application:
    async def metadata(request: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json"})

    async def keys(request: web.Request) -> web.Response:
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", metadata)
    app.router.add_get("/jwks.json", keys)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


class DemoIssuer:
    """Mints RFC 9068 access tokens with an ephemeral key."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = RSAKey.generate_key(
            2048, parameters={"kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "RS256"}
        )

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def token(self, scope: str, *, lifetime: int = 3600, issued: float | None = None) -> str:
        now = int(issued if issued is not None else time.time())
        claims = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": AUDIENCE,
            "client_id": "demo-client",
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": "RS256", "kid": self.key.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, self.key)


async def run_demo(port: int = 8080, admin_port: int = 9901, out: TextIO = sys.stdout) -> None:
    # The issuer URL needs the port, so bind first, then build the real app behind it.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    issuer_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    demo = DemoIssuer(issuer_url)
    runner = web.AppRunner(_issuer_app(issuer_url, demo.jwks), access_log=None)
    await runner.setup()
    # The configuration lives only as long as the demo: it names ports and an issuer that are
    # gone once it stops, so leaving it behind in the temp folder would only mislead.
    workdir = tempfile.TemporaryDirectory(prefix="gateway-demo-")
    try:
        await web.SockSite(runner, sock).start()
        config_path = Path(workdir.name) / "gateway.yaml"
        config_path.write_text(
            CONFIG.format(
                path=config_path,
                port=_free_port(port),
                admin_port=_free_port(admin_port),
                issuer=issuer_url,
                audience=AUDIENCE,
                echo=issuer_url,
            )
        )
        compiled, _ = load_and_compile(config_path)
        server = GatewayServer(compiled)
        task = asyncio.ensure_future(serve_forever(server))
        while not server.admin_port and not task.done():
            await asyncio.sleep(0.05)
        if not task.done():
            base = f"http://127.0.0.1:{server.public_port}"
            _print_guide(out, demo, base, server.admin_port, config_path)
        await task
    finally:
        await runner.cleanup()
        workdir.cleanup()


def _print_guide(out: TextIO, demo: DemoIssuer, base: str, admin_port: int, path: Path) -> None:
    good = demo.token("orders:read profile")
    no_scope = demo.token("profile")
    expired = demo.token("orders:read", lifetime=60, issued=time.time() - 3600)
    url = f"{base}/api/orders/42"
    lines = [
        "",
        "gateway demo is running (Ctrl-C stops it).",
        f"  config:  {path}",
        f"  gateway: {base}",
        f"  admin:   http://127.0.0.1:{admin_port}/metrics  /readyz  /healthz",
        "",
        "# 1. Allowed (200): the echo upstream shows the identity headers it received",
        f"curl -s -i -H 'Authorization: Bearer {good}' {url}",
        "",
        '# 2. No token (401, WWW-Authenticate: Bearer realm="gateway")',
        f"curl -s -i {url}",
        "",
        '# 3. Token without the scope orders:read (403, error="insufficient_scope", scope=...)',
        f"curl -s -i -H 'Authorization: Bearer {no_scope}' {url}",
        "",
        '# 4. Expired token (401, error="invalid_token")',
        f"curl -s -i -H 'Authorization: Bearer {expired}' {url}",
        "",
        "# 5. A public route needs no token",
        f"curl -s -i {base}/status",
        "",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def main(port: int = 8080, admin_port: int = 9901) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(port, admin_port))
    return 0
