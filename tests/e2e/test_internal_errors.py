"""A bug in the gateway costs one request a 500 — answered, counted and logged as a 500."""

from __future__ import annotations

import pytest

from gateway.pipeline.decision import Denial, VerifiedToken
from tests.e2e.conftest import Stack


async def test_an_unexpected_error_is_a_json_500_counted_as_500(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> VerifiedToken | Denial:
        raise RuntimeError("a bug")

    # What the gateway awaits for a token it has not verified before.
    monkeypatch.setattr(stack.gateway.server.gateway.verifier, "verify_new", broken)
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 500
        body = await response.json()
        assert body["error"] == "server_error"
        assert body["request_id"] == response.headers["X-Request-Id"]
    registry = stack.gateway.metrics.registry
    labels = {"route": "orders-read", "method": "GET", "code": "500"}
    assert registry.get_sample_value("gateway_requests_total", labels) == 1
    assert stack.upstream.received == []


async def test_the_gateway_keeps_serving_after_an_unexpected_error(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = stack.gateway.server.gateway.verifier
    original = verifier.verify_new

    async def broken_once(*args: object, **kwargs: object) -> VerifiedToken | Denial:
        monkeypatch.setattr(verifier, "verify_new", original)
        raise RuntimeError("a bug")

    monkeypatch.setattr(verifier, "verify_new", broken_once)
    headers = {"Authorization": f"Bearer {stack.issuer.token()}"}
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        assert response.status == 500
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        assert response.status == 200
