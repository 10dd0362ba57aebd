"""A bug in the gateway costs one request a 500 — answered, counted and logged as a 500."""

from __future__ import annotations

import pytest

from gateway.pipeline.verify.jwks import KeyStore
from tests.e2e.conftest import Stack

# What the gateway awaits for a token naming a key it does not have: the issuer's keys fetched
# again. A RuntimeError there stands for any bug on the request path. KeyStore's class is
# patched, compiled as it is (setup.py): the verifier calls it through the KeySource protocol,
# which looks the method up by name, so the patched one is called. (Compiled code that called
# a compiled class's method by its class would call the original.)
UNKNOWN_KID = "no-such-key"


async def test_an_unexpected_error_is_a_json_500_counted_as_500(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: KeyStore) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(KeyStore, "refresh_for_unknown_kid", broken)
    token = stack.issuer.token(kid=UNKNOWN_KID)
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
    async def broken(self: KeyStore) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(KeyStore, "refresh_for_unknown_kid", broken)
    headers = {"Authorization": f"Bearer {stack.issuer.token(kid=UNKNOWN_KID)}"}
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        assert response.status == 500
    headers = {"Authorization": f"Bearer {stack.issuer.token()}"}
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        assert response.status == 200
