"""The admin listener (SPEC §5, §6): liveness, readiness, metrics, and nothing of it on the
public port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_and_compile
from gateway.server import Address, GatewayServer
from tests.e2e.conftest import Stack
from tests.e2e.wire import closed_port, http_upstream
from tests.support import AUDIENCE, TokenIssuer, running_gateway, write_config

WAIT = 5.0

UNREACHABLE_KEYS_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_uri: http://127.0.0.1:{port}/jwks
    audiences: [{audience}]
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: http://127.0.0.1:{port}
"""

DRAIN_CONFIG = """\
shutdown_timeout: 5s
routes:
  - name: slow
    match: {{path: /slow}}
    upstream: "{upstream}"
    auth: public
"""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when it is absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


async def metrics_text(http: aiohttp.ClientSession, stack: Stack) -> str:
    async with http.get(f"{stack.gateway.admin_url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def test_healthz_answers_200_while_the_process_serves(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway.admin_url}/healthz") as response:
        assert response.status == 200


async def test_readyz_answers_200_once_every_issuers_keys_are_loaded(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway.admin_url}/readyz") as response:
        assert response.status == 200


async def test_readyz_answers_503_with_reasons_when_an_issuers_keys_could_not_be_loaded(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    path = write_config(
        tmp_path,
        UNREACHABLE_KEYS_CONFIG,
        issuer=issuer.issuer,
        audience=AUDIENCE,
        port=closed_port(),
    )
    async with running_gateway(path) as gateway:
        async with http.get(f"{gateway.admin_url}/readyz") as response:
            assert response.status == 503
            assert response.content_type == "application/json"
            body = await response.json()
        async with http.get(f"{gateway.admin_url}/healthz") as response:
            assert response.status == 200
    reasons = body
    assert isinstance(reasons, list)
    assert any("corp" in reason for reason in reasons)


async def test_readyz_answers_503_from_the_moment_shutdown_begins(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        entered.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return web.Response(text="drained")

    async with http_upstream(slow) as upstream:
        compiled, _ = load_and_compile(write_config(tmp_path, DRAIN_CONFIG, upstream=upstream.url))
        server = GatewayServer(
            compiled, public=Address("127.0.0.1", 0), admin=Address("127.0.0.1", 0)
        )
        await server.start()
        public = f"http://127.0.0.1:{server.public_port}"
        admin = f"http://127.0.0.1:{server.admin_port}"
        stopping: asyncio.Future[None] | None = None
        try:
            async with http.get(f"{admin}/readyz") as response:
                assert response.status == 200

            async def in_flight() -> tuple[int, str]:
                async with http.get(f"{public}/slow") as response:
                    return response.status, await response.text()

            request = asyncio.ensure_future(in_flight())
            await asyncio.wait_for(entered.wait(), WAIT)
            stopping = asyncio.ensure_future(server.stop())
            await asyncio.sleep(0)  # stop() has begun; the request is still in flight
            async with http.get(f"{admin}/readyz") as response:
                assert response.status == 503
                body = await response.json()
            assert "shutting down" in body
            release.set()
            assert await asyncio.wait_for(request, WAIT) == (200, "drained")
        finally:
            release.set()
            await asyncio.wait_for(stopping or server.stop(), WAIT)


async def test_metrics_count_requests_by_route_method_and_code(stack: Stack) -> None:
    before = await metrics_text(stack.http, stack)
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
    async with stack.http.get(f"{stack.url}/orders/1") as response:
        assert response.status == 401
    async with stack.http.get(f"{stack.url}/nowhere") as response:
        assert response.status == 404
    after = await metrics_text(stack.http, stack)

    def moved(**labels: str) -> float:
        name = "gateway_requests_total"
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved(route="orders-read", method="GET", code="200") == 1
    assert moved(route="orders-read", method="GET", code="401") == 1
    assert moved(route="(none)", method="GET", code="404") == 1


async def test_metrics_count_auth_decisions_by_route_result_and_reason(stack: Stack) -> None:
    before = await metrics_text(stack.http, stack)
    good, unscoped = stack.issuer.token(), stack.issuer.token(scope="profile")
    for headers in ({"Authorization": f"Bearer {good}"}, {}):
        async with stack.http.get(f"{stack.url}/orders/1", headers=headers):
            pass
    async with stack.http.post(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {unscoped}"}, data=b"x"
    ) as response:
        assert response.status == 403
    async with stack.http.get(f"{stack.url}/status"):
        pass  # a public route makes no token decision
    after = await metrics_text(stack.http, stack)
    name = "gateway_auth_decisions_total"

    def moved(**labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    def total(text: str) -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        )

    assert moved(route="orders-read", result="deny", reason="missing_token") == 1
    assert moved(route="orders-write", result="deny", reason="insufficient_scope") == 1
    allowed = [
        s
        for family in text_string_to_metric_families(after)
        for s in family.samples
        if s.name == name and s.labels["result"] == "allow"
    ]
    assert [(s.labels["route"], s.value) for s in allowed] == [("orders-read", 1.0)]
    assert total(after) - total(before) == 3


async def test_the_metrics_exposition_names_every_contract_metric(stack: Stack) -> None:
    async with stack.http.get(f"{stack.url}/status"):
        pass
    text = await metrics_text(stack.http, stack)
    for name in (
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_auth_decisions_total",
        "gateway_inflight_requests",
    ):
        assert name in text, name


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
async def test_admin_endpoints_are_not_served_on_the_public_port(stack: Stack, path: str) -> None:
    async with stack.http.get(f"{stack.url}{path}") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    assert stack.upstream.received == []


async def test_routes_are_not_served_on_the_admin_port(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway.admin_url}/status") as response:
        assert response.status == 404
    assert stack.upstream.received == []
