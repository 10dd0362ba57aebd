"""A protected gateway in front of a recording upstream, with a token issuer, for e2e tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    AUDIENCE,
    RunningGateway,
    TokenIssuer,
    Upstream,
    echo_upstream,
    running_gateway,
    write_config,
)

BASIC_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
    token_type: at+jwt
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: status
    match: {{path: /status}}
    upstream: echo
    auth: public
  - name: orders-read
    match: {{path: /orders/**, methods: [GET, HEAD]}}
    upstream: echo
    auth:
      scopes: [orders:read]
  - name: orders-write
    match: {{path: /orders/**, methods: [POST, PUT]}}
    upstream: echo
    auth:
      scopes: [orders:write]
"""


@dataclass
class Stack:
    gateway: RunningGateway
    upstream: Upstream
    issuer: TokenIssuer
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="session")
def issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture
async def stack(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[Stack]:
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            tmp_path, BASIC_CONFIG, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream.url
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, issuer, http)
