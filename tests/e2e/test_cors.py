"""Per-route CORS (SPEC §3 "Details of the configuration", ``cors``): the gateway answers an
allowed origin's preflight itself, and labels every response to that origin, refusals included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import (
    AUDIENCE,
    TokenIssuer,
    Upstream,
    echo_upstream,
    running_gateway,
    write_config,
)

APP = "https://app.example.test"
OTHER = "https://evil.example.test"

CORS_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: api
    match: {{path: /api/**, methods: [GET, POST]}}
    upstream: echo
    auth: {{scopes: [orders:read]}}
    cors:
      allow_origins: ["{app}"]
      allow_methods: [GET, POST]
      allow_headers: [Authorization, Content-Type, X-Trace]
      max_age: 10m
  - name: every-method
    match: {{path: /every/**}}
    upstream: echo
    cors: {{allow_origins: ["{app}"]}}
  - name: plain
    match: {{path: /plain/**}}
    upstream: echo
"""


@dataclass
class Cors:
    url: str
    upstream: Upstream
    issuer: TokenIssuer
    http: aiohttp.ClientSession

    def bearer(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.token(**claims)}"}


@pytest.fixture
async def cors(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[Cors]:
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            tmp_path,
            CORS_CONFIG,
            issuer=issuer.issuer,
            audience=AUDIENCE,
            upstream=upstream.url,
            app=APP,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Cors(gateway.url, upstream, issuer, http)


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def varies_on_origin(headers: aiohttp.typedefs.LooseHeaders) -> bool:
    values = headers.getall("Vary", [])  # type: ignore[union-attr]
    return any("origin" in part.strip().lower() for v in values for part in v.split(","))


async def test_a_preflight_from_an_allowed_origin_is_answered_without_token_or_forwarding(
    cors: Cors,
) -> None:
    async with cors.http.options(f"{cors.url}/every/x", headers=preflight(APP)) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert varies_on_origin(response.headers)
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Max-Age"] == "600"
    assert cors.upstream.received == []


async def test_a_preflight_lists_the_configured_methods_headers_and_max_age(cors: Cors) -> None:
    async with cors.http.options(f"{cors.url}/api/x", headers=preflight(APP)) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"
        assert response.headers["Access-Control-Allow-Headers"] == (
            "Authorization, Content-Type, X-Trace"
        )
        assert response.headers["Access-Control-Max-Age"] == "600"
    assert cors.upstream.received == []


async def test_a_preflight_is_answered_on_a_route_whose_methods_leave_out_options(
    cors: Cors,
) -> None:
    async with cors.http.options(f"{cors.url}/api/x", headers=preflight(APP, "GET")) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == APP
    assert cors.upstream.received == []


async def test_a_preflight_from_another_origin_is_an_ordinary_options_request(
    cors: Cors,
) -> None:
    async with cors.http.options(f"{cors.url}/every/x", headers=preflight(OTHER)) as response:
        assert response.status == 401
        assert "Access-Control-Allow-Origin" not in response.headers
    assert cors.upstream.received == []


async def test_a_401_to_an_allowed_origin_carries_the_cors_headers(cors: Cors) -> None:
    async with cors.http.get(f"{cors.url}/api/x", headers={"Origin": APP}) as response:
        assert response.status == 401
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert varies_on_origin(response.headers)


async def test_a_403_to_an_allowed_origin_carries_the_cors_headers(cors: Cors) -> None:
    headers = {"Origin": APP, **cors.bearer(scope="profile")}
    async with cors.http.get(f"{cors.url}/api/x", headers=headers) as response:
        assert response.status == 403
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert varies_on_origin(response.headers)
    assert cors.upstream.received == []


async def test_a_forwarded_response_to_an_allowed_origin_carries_the_cors_headers(
    cors: Cors,
) -> None:
    headers = {"Origin": APP, **cors.bearer()}
    async with cors.http.get(f"{cors.url}/api/x", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert varies_on_origin(response.headers)
    assert [r.path for r in cors.upstream.received] == ["/api/x"]


async def test_a_response_to_another_origin_has_no_allow_origin(cors: Cors) -> None:
    async with cors.http.get(f"{cors.url}/api/x", headers={"Origin": OTHER}) as response:
        assert response.status == 401
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_without_cors_a_preflight_shaped_options_needs_a_token(cors: Cors) -> None:
    async with cors.http.options(f"{cors.url}/plain/x", headers=preflight(APP)) as response:
        assert response.status == 401
        assert "Access-Control-Allow-Origin" not in response.headers
    assert cors.upstream.received == []


async def test_without_cors_options_with_a_token_is_forwarded_like_any_method(cors: Cors) -> None:
    headers = {**preflight(APP), **cors.bearer()}
    async with cors.http.options(f"{cors.url}/plain/x", headers=headers) as response:
        assert response.status == 200
    assert [(r.method, r.path) for r in cors.upstream.received] == [("OPTIONS", "/plain/x")]
