"""Test building blocks: an issuer that mints (and forges) tokens, a real upstream HTTP server on
loopback that records what it received, and a gateway started on a configuration text."""

from __future__ import annotations

import base64
import json
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.config import load_and_compile
from gateway.observe.metrics import Metrics
from gateway.server import Address, GatewayServer

ISSUER = "https://issuer.test"
AUDIENCE = "https://api.example.test"


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")))


class TokenIssuer:
    """An issuer with one key of each kind; writes its JWKS to a file for ``jwks_file``."""

    def __init__(self, issuer: str = ISSUER, prefix: str = "k") -> None:
        self.issuer = issuer
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": f"{prefix}-rsa", "use": "sig"})
        self.ec = ECKey.generate_key("P-256", parameters={"kid": f"{prefix}-ec"})
        self.ed = OKPKey.generate_key("Ed25519", parameters={"kid": f"{prefix}-ed"})

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in (self.rsa, self.ec, self.ed)]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks))
        return path

    def key_for(self, alg: str) -> RSAKey | ECKey | OKPKey:
        if alg.startswith(("RS", "PS")):
            return self.rsa
        if alg.startswith("ES"):
            return self.ec
        return self.ed

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": AUDIENCE,
            "client_id": "client-1",
            "scope": "orders:read profile",
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        alg: str = "RS256",
        *,
        header: dict[str, Any] | None = None,
        kid: str | bool | None = True,
        typ: str | None = "at+jwt",
        **claims: Any,
    ) -> str:
        key = self.key_for(alg)
        protected: dict[str, Any] = {"alg": alg}
        if typ is not None:
            protected["typ"] = typ
        if kid is True:
            protected["kid"] = key.kid
        elif isinstance(kid, str):
            protected["kid"] = kid
        protected.update(header or {})
        return jwt.encode(protected, self.claims(**claims), key, algorithms=[alg])


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """A real HTTP server on loopback that answers 200 with a JSON echo and records requests."""

    url: str = ""
    received: list[Received] = field(default_factory=list)


async def _echo_handler(upstream: Upstream, request: web.BaseRequest) -> web.StreamResponse:
    body = await request.read()
    raw_path, _, query = request.raw_path.partition("?")
    upstream.received.append(
        Received(request.method, raw_path, query, list(request.headers.items()), body)
    )
    return web.json_response(
        {"method": request.method, "path": raw_path, "query": query, "bytes": len(body)}
    )


@asynccontextmanager
async def echo_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await _echo_handler(upstream, request)

    # Like an operator's upstream behind a gateway that forwards 8 KiB tokens: long header lines.
    server = web.Server(handler, max_field_size=16384, max_line_size=16384)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream.url = f"http://127.0.0.1:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


@dataclass
class RunningGateway:
    server: GatewayServer
    metrics: Metrics

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.public_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.server.admin_port}"


def write_config(directory: Path, text: str, **values: Any) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(textwrap.dedent(text).format(**values))
    return path


@asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway serving ``config_path`` on ephemeral loopback ports."""
    compiled, _ = load_and_compile(config_path)
    metrics = Metrics()
    server = GatewayServer(
        compiled,
        metrics=metrics,
        public=Address("127.0.0.1", 0),
        admin=Address("127.0.0.1", 0),
        config_path=config_path,  # so that a test can reload()
    )
    await server.start()
    try:
        yield RunningGateway(server, metrics)
    finally:
        await server.stop()
