"""End to end with a real OpenID provider (oidc-provider on Node.js): its real access tokens,
its discovery document and JWKS, through the gateway, to a real upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.idp_fixture import (
    ACME_CLIENT,
    DEFAULT_CLIENT,
    OpenIdProvider,
    start_provider,
)
from tests.support import RunningGateway, Upstream, echo_upstream, running_gateway, write_config

RESOURCE = "https://api.example.test/orders"

CONFIG = """\
issuers:
  idp:
    issuer: {issuer}
    {key_source}
    audiences: [{resource}]
    token_type: at+jwt
    jwks: {{min_refetch_interval: {min_refetch_interval}}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders-read
    match: {{path: /orders/**, methods: [GET]}}
    upstream: echo
    auth:
      scopes: [orders:read]
  - name: orders-manage
    match: {{path: /manage/**}}
    upstream: echo
    auth:
      any_scopes: [orders:admin, orders:write]
  - name: acme-support
    match: {{path: /support/**}}
    upstream: echo
    auth:
      scopes: [orders:read]
      claims:
        tenant: acme
        groups: {{contains: support}}
"""


@dataclass
class Stack:
    gateway: RunningGateway
    upstream: Upstream
    http: aiohttp.ClientSession

    async def get(self, path: str, token: str) -> aiohttp.ClientResponse:
        response = await self.http.get(
            self.gateway.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        await response.read()
        return response

    def decisions(self, route: str, result: str, reason: str) -> float:
        labels = {"route": route, "result": result, "reason": reason}
        value = self.gateway.metrics.registry.get_sample_value(
            "gateway_auth_decisions_total", labels
        )
        return value or 0.0

    def received_header(self, name: str) -> str | None:
        [received] = self.upstream.received
        values = [value for key, value in received.headers if key.lower() == name.lower()]
        return values[0] if values else None


KEY_SOURCES = {
    "discovery": lambda idp: "discovery: true",
    "jwks_uri": lambda idp: f"jwks_uri: {idp.jwks_uri}",
}


@asynccontextmanager
async def gateway_for(
    idp: OpenIdProvider,
    directory: Path,
    *,
    key_source: str = "discovery",
    min_refetch_interval: str = "30s",
) -> AsyncIterator[Stack]:
    """A gateway trusting ``idp`` (keys found by discovery or a given jwks_uri; plain http is
    allowed because the provider is on loopback) in front of a recording upstream."""
    async with echo_upstream() as upstream:
        path = write_config(
            directory,
            CONFIG,
            issuer=idp.issuer,
            key_source=KEY_SOURCES[key_source](idp),
            resource=RESOURCE,
            min_refetch_interval=min_refetch_interval,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, http)


@pytest.fixture
async def stack(idp: OpenIdProvider, tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_for(idp, tmp_path) as stack:
        yield stack


# joserfc warns that RFC 9864 deprecates the name "EdDSA"; providers still use it, and so must we.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize("key_source", ["discovery", "jwks_uri"])
@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_real_access_token_with_the_scope_reaches_the_upstream_with_identity_headers(
    idp: OpenIdProvider, tmp_path: Path, alg: str, key_source: str
) -> None:
    token = idp.token(RESOURCE, ["orders:read", "profile"], alg=alg)
    async with gateway_for(idp, tmp_path, key_source=key_source) as stack:
        response = await stack.get("/orders/42", token)
        assert response.status == 200
        assert stack.received_header("X-Auth-Subject") == DEFAULT_CLIENT
        assert stack.received_header("X-Auth-Client-Id") == DEFAULT_CLIENT
        assert stack.received_header("X-Auth-Scopes") == "orders:read profile"
        assert stack.received_header("X-Auth-Issuer") == idp.issuer
        assert stack.decisions("orders-read", "allow", "none") == 1


async def test_a_token_for_another_resource_is_refused_as_wrong_audience(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.token("https://api.example.test/invoices", ["orders:read"])
    response = await stack.get("/orders/42", token)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert stack.decisions("orders-read", "deny", "wrong_audience") == 1
    assert stack.upstream.received == []


async def test_a_token_without_the_scope_is_refused_naming_the_scope(
    idp: OpenIdProvider, stack: Stack
) -> None:
    response = await stack.get("/orders/42", idp.token(RESOURCE, ["orders:write"]))
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="orders:read"'
    )
    assert stack.decisions("orders-read", "deny", "insufficient_scope") == 1
    assert stack.upstream.received == []


async def test_any_one_of_the_any_scopes_is_enough(idp: OpenIdProvider, stack: Stack) -> None:
    response = await stack.get("/manage/7", idp.token(RESOURCE, ["orders:write"]))
    assert response.status == 200
    assert stack.decisions("orders-manage", "allow", "none") == 1


async def test_a_token_with_none_of_the_any_scopes_is_refused_naming_them(
    idp: OpenIdProvider, stack: Stack
) -> None:
    response = await stack.get("/manage/7", idp.token(RESOURCE, ["orders:read"]))
    assert response.status == 403
    assert 'scope="orders:admin orders:write"' in response.headers["WWW-Authenticate"]


async def test_claim_conditions_pass_for_the_client_whose_tokens_carry_the_claims(
    idp: OpenIdProvider, stack: Stack
) -> None:
    token = idp.token(RESOURCE, ["orders:read"], client=ACME_CLIENT, alg="ES256")
    response = await stack.get("/support/tickets", token)
    assert response.status == 200
    assert stack.received_header("X-Auth-Client-Id") == ACME_CLIENT


async def test_claim_conditions_fail_for_a_client_without_the_claims(
    idp: OpenIdProvider, stack: Stack
) -> None:
    response = await stack.get("/support/tickets", idp.token(RESOURCE, ["orders:read"]))
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert stack.decisions("acme-support", "deny", "claim_mismatch") == 1
    assert stack.upstream.received == []


async def test_an_id_token_is_refused_where_access_tokens_are_required(
    idp: OpenIdProvider, stack: Stack
) -> None:
    response = await stack.get("/orders/42", idp.id_token("alice"))
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert stack.decisions("orders-read", "deny", "wrong_type") == 1
    assert stack.upstream.received == []


async def test_the_gateway_is_ready_once_the_providers_keys_are_loaded(stack: Stack) -> None:
    async with stack.http.get(stack.gateway.admin_url + "/readyz") as response:
        assert response.status == 200
    registry = stack.gateway.metrics.registry
    assert registry.get_sample_value("gateway_jwks_keys", {"issuer": "idp"}) == 3
    ok = {"issuer": "idp", "result": "ok"}
    assert registry.get_sample_value("gateway_jwks_fetches_total", ok) == 1


async def test_the_gateway_is_not_ready_while_the_provider_cannot_be_reached(
    tmp_path: Path,
) -> None:
    with start_provider() as gone:
        pass  # stopped: its issuer URL now refuses connections
    async with gateway_for(gone, tmp_path) as stack:
        response = await stack.http.get(stack.gateway.admin_url + "/readyz")
        assert response.status == 503
        assert (await response.json()) == ["issuer idp: signing keys not loaded"]


async def test_a_token_signed_with_a_rotated_key_is_accepted_after_one_refetch(
    tmp_path: Path,
) -> None:
    # A private provider: rotating the session's one would change the keys of other tests.
    with start_provider() as idp:
        async with gateway_for(idp, tmp_path, min_refetch_interval="0s") as stack:
            before = await stack.get("/orders/1", idp.token(RESOURCE, ["orders:read"]))
            assert before.status == 200
            idp.rotate()
            rotated = idp.token(RESOURCE, ["orders:read"])
            after = await stack.get("/orders/2", rotated)
            assert after.status == 200
            again = await stack.get("/orders/3", idp.token(RESOURCE, ["orders:read"]))
            assert again.status == 200
            ok = {"issuer": "idp", "result": "ok"}
            registry = stack.gateway.metrics.registry
            # One fetch at start, one for the unknown kid, none for the kid now known.
            assert registry.get_sample_value("gateway_jwks_fetches_total", ok) == 2
            assert registry.get_sample_value("gateway_jwks_keys", {"issuer": "idp"}) == 6
