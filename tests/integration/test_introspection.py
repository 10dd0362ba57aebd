"""Opaque tokens end to end: the real ``oidc-provider`` issues them, answers introspection and
revokes them; the gateway introspects, caches the answer (never the decision), judges it by the
route's rules and forwards identity headers to a real upstream. A failing authorization server is
a loopback stub (tests/pipeline/test_introspection.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.idp_fixture import (
    ACME_CLIENT,
    DEFAULT_CLIENT,
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_POST_CLIENT,
    INTROSPECTOR_SECRET,
    OpenIdProvider,
)
from tests.pipeline.test_introspection import (
    FAILURES,
    AuthorizationServer,
    authorization_server,
    refused_endpoint,
)
from tests.support import RunningGateway, Upstream, echo_upstream, running_gateway, write_config

RESOURCE = "https://api.example.test"

CONFIG = """\
issuers:
  idp:
    issuer: {issuer}
    audiences: [{resource}]
    {discovery}
    introspection:
      {endpoint}
      client_id: {client_id}
      client_secret: {secret}
      auth_method: {auth_method}
      timeout: 300ms
      cache_ttl: {cache_ttl}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders-read
    match: {{path: /orders/**, methods: [GET]}}
    upstream: echo
    auth:
      scopes: [orders:read]
  - name: orders-write
    match: {{path: /orders/**, methods: [POST]}}
    upstream: echo
    auth:
      scopes: [orders:write]
  - name: billing
    match: {{path: /billing/**}}
    upstream: echo
    auth:
      audience: [https://billing.example.test]
  - name: acme-support
    match: {{path: /support/**}}
    upstream: echo
    auth:
      claims:
        tenant: acme
        groups: {{contains: support}}
"""


@dataclass
class Stack:
    gateway: RunningGateway
    upstream: Upstream
    http: aiohttp.ClientSession

    async def request(self, path: str, token: str, method: str = "GET") -> aiohttp.ClientResponse:
        response = await self.http.request(
            method, self.gateway.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        await response.read()
        return response

    def sample(self, name: str, **labels: str) -> float:
        return self.gateway.metrics.registry.get_sample_value(name, labels) or 0.0

    def decisions(self, route: str, result: str, reason: str) -> float:
        return self.sample(
            "gateway_auth_decisions_total", route=route, result=result, reason=reason
        )

    def introspections(self, result: str) -> float:
        return self.sample("gateway_introspection_requests_total", issuer="idp", result=result)

    def lookups(self, result: str) -> float:
        return self.sample("gateway_token_cache_total", cache="introspection", result=result)

    def received_header(self, name: str) -> str | None:
        [received] = self.upstream.received
        values = [value for key, value in received.headers if key.lower() == name.lower()]
        return values[0] if values else None


@asynccontextmanager
async def gateway_for(
    directory: Path,
    issuer: str,
    *,
    endpoint: str | None,
    client_id: str = INTROSPECTOR_CLIENT,
    auth_method: str = "client_secret_basic",
    cache_ttl: str = "5m",
) -> AsyncIterator[Stack]:
    """A gateway whose one issuer introspects at ``endpoint`` (None: found by discovery)."""
    async with echo_upstream() as upstream:
        path = write_config(
            directory,
            CONFIG,
            issuer=issuer,
            resource=RESOURCE,
            discovery="discovery: true" if endpoint is None else "",
            endpoint=f"endpoint: {endpoint}" if endpoint else "",
            client_id=client_id,
            secret=INTROSPECTOR_SECRET,
            auth_method=auth_method,
            cache_ttl=cache_ttl,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, http)


@pytest.fixture
async def stack(idp: OpenIdProvider, tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_for(tmp_path, idp.issuer, endpoint=idp.introspection_endpoint) as stack:
        yield stack


# -- introspected, with either client authentication, at a configured or discovered endpoint ---


@pytest.mark.parametrize(
    ("auth_method", "client_id"),
    [
        ("client_secret_basic", INTROSPECTOR_CLIENT),
        ("client_secret_post", INTROSPECTOR_POST_CLIENT),
    ],
)
async def test_an_opaque_token_is_introspected_with_either_client_authentication(
    idp: OpenIdProvider, tmp_path: Path, auth_method: str, client_id: str
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    before = idp.introspection_requests()
    async with gateway_for(
        tmp_path,
        idp.issuer,
        endpoint=idp.introspection_endpoint,
        client_id=client_id,
        auth_method=auth_method,
    ) as stack:
        response = await stack.request("/orders/1", token)
        assert response.status == 200
        assert stack.introspections("active") == 1
    assert idp.introspection_requests() - before == 1


async def test_a_client_authentication_the_provider_refuses_is_unavailable_not_invalid(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    # The provider answers 401 invalid_client: the token may well be good, so never a 401.
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    async with gateway_for(
        tmp_path,
        idp.issuer,
        endpoint=idp.introspection_endpoint,
        client_id=INTROSPECTOR_POST_CLIENT,
        auth_method="client_secret_basic",
    ) as stack:
        response = await stack.request("/orders/1", token)
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert "WWW-Authenticate" not in response.headers
        assert stack.introspections("error") == 1


async def test_the_introspection_endpoint_is_found_through_discovery(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    async with gateway_for(tmp_path, idp.issuer, endpoint=None) as stack:
        response = await stack.request("/orders/1", token)
        assert response.status == 200
        assert stack.introspections("active") == 1


# -- the answer, judged by the route's rules ----------------------------------------------------


async def test_the_identity_headers_come_from_the_introspection_answer(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read", "profile"], resource=RESOURCE)
    response = await stack.request("/orders/1", token)
    assert response.status == 200
    assert stack.received_header("X-Auth-Subject") == DEFAULT_CLIENT
    assert stack.received_header("X-Auth-Client-Id") == DEFAULT_CLIENT
    assert stack.received_header("X-Auth-Scopes") == "orders:read profile"
    assert stack.received_header("X-Auth-Issuer") == idp.issuer


async def test_a_token_the_provider_does_not_know_is_refused_as_inactive(stack: Stack) -> None:
    response = await stack.request("/orders/1", "nWq8zXbXkP0b5yKc4bHfRzq5nD2u7JtL9sE3aVcYgM1")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert stack.decisions("orders-read", "deny", "inactive") == 1
    assert stack.upstream.received == []


async def test_a_revoked_token_is_refused_as_inactive_once_asked_again(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    idp.revoke(token)
    response = await stack.request("/orders/1", token)
    assert response.status == 401
    assert stack.decisions("orders-read", "deny", "inactive") == 1


async def test_an_opaque_token_for_another_audience_is_refused_as_wrong_audience(
    idp: OpenIdProvider, stack: Stack
) -> None:
    response = await stack.request(
        "/billing/1", idp.opaque_token(["orders:read"], resource=RESOURCE)
    )
    assert response.status == 401
    assert stack.decisions("billing", "deny", "wrong_audience") == 1


async def test_an_opaque_token_lacking_the_scope_gets_403_naming_the_scope(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    response = await stack.request("/orders/1", token, method="POST")
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="orders:write"'
    )
    assert stack.upstream.received == []


async def test_claim_conditions_hold_for_an_opaque_token_whose_answer_carries_the_claims(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], client=ACME_CLIENT, resource=RESOURCE)
    response = await stack.request("/support/tickets", token)
    assert response.status == 200
    assert stack.received_header("X-Auth-Client-Id") == ACME_CLIENT


async def test_claim_conditions_refuse_an_opaque_token_whose_answer_lacks_the_claims(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    response = await stack.request("/support/tickets", token)
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert stack.decisions("acme-support", "deny", "claim_mismatch") == 1


# -- the cache keeps answers, not decisions -----------------------------------------------------


async def test_a_token_cached_on_a_read_route_is_still_denied_on_a_write_route(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    before = idp.introspection_requests()
    read = await stack.request("/orders/1", token)
    write = await stack.request("/orders/1", token, method="POST")
    assert (read.status, write.status) == (200, 403)
    assert stack.decisions("orders-write", "deny", "insufficient_scope") == 1
    assert idp.introspection_requests() - before == 1  # the write was judged on the cached answer
    assert stack.lookups("hit") == 1


async def test_a_revoked_token_stops_working_within_cache_ttl(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    cache_ttl = 1.0
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    async with gateway_for(
        tmp_path, idp.issuer, endpoint=idp.introspection_endpoint, cache_ttl="1s"
    ) as stack:
        asked = time.monotonic()
        assert (await stack.request("/orders/1", token)).status == 200
        idp.revoke(token)
        statuses = []
        while time.monotonic() - asked < cache_ttl + 1.5:  # bounded: polls every 50 ms
            statuses.append((await stack.request("/orders/1", token)).status)
            if statuses[-1] == 401:
                break
            await asyncio.sleep(0.05)
        refused_after = time.monotonic() - asked
    assert statuses[-1] == 401
    assert set(statuses) <= {200, 401}
    assert refused_after <= cache_ttl + 0.5
    assert stack.introspections("active") == 1
    assert stack.introspections("inactive") == 1


# -- single flight, metrics ---------------------------------------------------------------------


async def test_500_concurrent_requests_with_one_uncached_token_cause_one_introspection(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.opaque_token(["orders:read"], resource=RESOURCE)
    before = idp.introspection_requests()

    async def one(http: aiohttp.ClientSession) -> int:
        async with http.get(
            stack.gateway.url + "/orders/1", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status

    # 100 connections at a time (aiohttp's default pool): more would overflow the listen
    # backlog and wait a second for SYN retries. The held-server test in tests/pipeline has all
    # 500 waiting at once.
    statuses = await asyncio.wait_for(asyncio.gather(*(one(stack.http) for _ in range(500))), 30)
    assert statuses == [200] * 500
    assert idp.introspection_requests() - before == 1
    assert stack.introspections("active") == 1
    assert stack.lookups("hit") + stack.lookups("miss") == 500
    # Requests that found no answer and joined the one call in flight: more than one, or the
    # test would not have shown any sharing.
    assert stack.lookups("miss") > 1


async def test_introspections_and_cache_lookups_are_counted_exactly(
    idp: OpenIdProvider, stack: Stack
) -> None:
    good = idp.opaque_token(["orders:read"], resource=RESOURCE)
    unknown = "0pAqUe-T0k3n-Th3-Pr0v1d3r-N3v3r-1ssu3d-xyz"
    for token in (good, good, good, unknown, unknown):
        await stack.request("/orders/1", token)
    assert (stack.introspections("active"), stack.introspections("inactive")) == (1, 1)
    assert stack.introspections("error") == 0
    assert (stack.lookups("miss"), stack.lookups("hit")) == (2, 3)


# -- a broken authorization server (loopback stub) ----------------------------------------------


@pytest.fixture
async def broken() -> AsyncIterator[AuthorizationServer]:
    async with authorization_server() as server:
        yield server


@pytest.mark.parametrize("mode", [*FAILURES, "connection_refused"])
async def test_a_failed_introspection_answers_503_with_retry_after_and_is_never_kept(
    broken: AuthorizationServer, tmp_path: Path, mode: str
) -> None:
    endpoint = refused_endpoint() if mode == "connection_refused" else broken.endpoint
    if mode != "connection_refused":
        broken.fail(mode)
    async with gateway_for(tmp_path, broken.issuer, endpoint=endpoint) as stack:
        for _ in range(2):
            response = await stack.request("/orders/1", "an-opaque-token")
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            assert "WWW-Authenticate" not in response.headers
        assert stack.introspections("error") == 2  # the second request asked again
        assert stack.decisions("orders-read", "deny", "unavailable") == 2


ODD_ANSWERS: dict[str, tuple[dict[str, Any], str]] = {
    "active-string": ({"active": "true"}, "inactive"),
    "active-one": ({"active": 1}, "inactive"),
    "active-missing": ({"active": None}, "inactive"),
    "expired": ({"exp": int(time.time()) - 3600}, "expired"),
    "not-yet-valid": ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
    "another-issuer": ({"iss": "https://other.example.test"}, "wrong_issuer"),
    "refresh-token": ({"token_type": "refresh_token"}, "wrong_type"),
    "huge-exp": ({"exp": 10**400}, "malformed_token"),
}


@pytest.mark.parametrize("case", ODD_ANSWERS)
async def test_an_answer_the_gateway_refuses_is_a_401_with_its_reason(
    broken: AuthorizationServer, tmp_path: Path, case: str
) -> None:
    claims, reason = ODD_ANSWERS[case]
    broken.accept("an-opaque-token", **claims)  # a claim given as None is left out
    async with gateway_for(tmp_path, broken.issuer, endpoint=broken.endpoint) as stack:
        response = await stack.request("/orders/1", "an-opaque-token")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert stack.decisions("orders-read", "deny", reason) == 1
