"""What the upstream learns about the caller, checked on what the upstream actually received.

Identity headers are written only after authorisation, one value each, never empty and never with
CR, LF or NUL; every identity header a client sends is removed first, on every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.e2e.conftest import Stack
from tests.support import (
    AUDIENCE,
    TokenIssuer,
    echo_upstream,
    running_gateway,
    write_config,
)

CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
identity:
  headers:
    X-Auth-Subject: sub
    X-Auth-Client-Id: client_id
    X-Auth-Scopes: scope
    X-Auth-Issuer: iss
    X-Auth-Groups: groups
    Remote-User: preferred_username
  forward_authorization: false
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: status
    match: {{path: /status}}
    upstream: echo
    auth: public
  - name: tenant
    match: {{path: /tenant/**}}
    upstream: echo
    identity:
      headers:
        X-Tenant: org.tenant
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth:
      scopes: [orders:read]
"""

# Every spelling a client might use to smuggle an identity in.
SPOOFED = [
    ("X-Auth-Subject", "admin"),
    ("x-auth-subject", "root"),
    ("X_Auth_Subject", "cgi-admin"),
    ("X-AUTH-ANYTHING", "prefix"),
    ("X-Auth-Client-Id", "trusted-client"),
    ("X-Tenant", "other-tenant"),
    ("x_tenant", "other-tenant"),
    ("Remote-User", "admin"),
    ("REMOTE_USER", "admin"),
]
IDENTITY_KEYS = {
    "x-auth-subject",
    "x-auth-client-id",
    "x-auth-scopes",
    "x-auth-issuer",
    "x-auth-groups",
    "x-auth-anything",
    "x-tenant",
    "remote-user",
}


@pytest.fixture
async def identity_stack(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[Stack]:
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            tmp_path, CONFIG, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream.url
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, issuer, http)


def key(name: str) -> str:
    return name.lower().replace("_", "-")


def received(stack: Stack) -> list[tuple[str, str]]:
    """The headers of the one request the upstream received."""
    assert len(stack.upstream.received) == 1
    return stack.upstream.received[0].headers


def identity_of(stack: Stack) -> dict[str, list[str]]:
    """Identity headers the upstream received, by normalised name, with every value."""
    found: dict[str, list[str]] = {}
    for name, value in received(stack):
        if key(name) in IDENTITY_KEYS or key(name).startswith("x-auth-"):
            found.setdefault(key(name), []).append(value)
    return found


async def get(
    stack: Stack, path: str, token: str | None = None, headers: Any = None
) -> aiohttp.ClientResponse:
    sent: CIMultiDict[str] = CIMultiDict(headers or [])
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with stack.http.get(stack.url + path, headers=sent) as response:
        await response.read()
        return response


# -- what is set ------------------------------------------------------------------------------


async def test_an_authorised_request_carries_one_identity_header_per_mapped_claim(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    response = await get(stack, "/orders/1", stack.issuer.token(groups=["dev", "ops"]))
    assert response.status == 200
    assert identity_of(stack) == {
        "x-auth-subject": ["alice"],
        "x-auth-client-id": ["client-1"],
        "x-auth-scopes": ["orders:read profile"],
        "x-auth-issuer": [stack.issuer.issuer],
        "x-auth-groups": ["dev ops"],
    }


async def test_no_identity_header_is_set_when_authorisation_fails(identity_stack: Stack) -> None:
    stack = identity_stack
    response = await get(stack, "/orders/1", stack.issuer.token(scope="profile"))
    assert response.status == 403
    assert stack.upstream.received == []


async def test_a_public_route_gets_no_identity_headers_even_with_a_good_token(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    response = await get(stack, "/status", stack.issuer.token())
    assert response.status == 200
    assert identity_of(stack) == {}


async def test_the_client_id_header_falls_back_to_azp(identity_stack: Stack) -> None:
    stack = identity_stack
    await get(stack, "/orders/1", stack.issuer.token(client_id=None, azp="spa-client"))
    assert identity_of(stack)["x-auth-client-id"] == ["spa-client"]


async def test_a_list_claim_is_joined_with_a_single_space(identity_stack: Stack) -> None:
    stack = identity_stack
    await get(stack, "/orders/1", stack.issuer.token(groups=["a", "b", "c"]))
    assert identity_of(stack)["x-auth-groups"] == ["a b c"]


async def test_a_route_identity_map_replaces_the_default_map_and_walks_dotted_paths(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    token = stack.issuer.token(org={"tenant": "acme", "region": "eu"})
    response = await get(stack, "/tenant/1", token)
    assert response.status == 200
    assert identity_of(stack) == {"x-tenant": ["acme"]}


@pytest.mark.parametrize(
    "sub",
    ["alice\r\nX-Admin: true", "alice\nX-Admin: true", "alice\rX-Admin: true", "alice\x00admin"],
    ids=["crlf", "lf", "cr", "nul"],
)
async def test_a_claim_with_cr_lf_or_nul_is_never_written(identity_stack: Stack, sub: str) -> None:
    stack = identity_stack
    response = await get(stack, "/orders/1", stack.issuer.token(sub=sub))
    assert response.status == 200
    identity = identity_of(stack)
    assert "x-auth-subject" not in identity
    assert identity["x-auth-client-id"] == ["client-1"]  # the other headers are still set
    assert not any(key(name) == "x-admin" for name, _ in received(stack))


@pytest.mark.parametrize(
    "claims",
    [{}, {"preferred_username": ""}, {"preferred_username": []}],
    ids=["missing", "empty-string", "empty-list"],
)
async def test_a_missing_or_empty_claim_leaves_its_header_absent_never_empty(
    identity_stack: Stack, claims: dict[str, Any]
) -> None:
    stack = identity_stack
    await get(stack, "/orders/1", stack.issuer.token(**claims))
    assert "remote-user" not in identity_of(stack)
    assert all(value for _, value in received(stack))


async def test_a_claim_with_edge_whitespace_is_not_written(identity_stack: Stack) -> None:
    # The upstream's parser would trim " admin" into "admin": another user.
    stack = identity_stack
    await get(stack, "/orders/1", stack.issuer.token(preferred_username=" admin"))
    assert "remote-user" not in identity_of(stack)


# -- what is removed --------------------------------------------------------------------------


async def test_spoofed_identity_headers_are_removed_on_a_public_route(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    response = await get(stack, "/status", headers=[*SPOOFED, ("X_Other_Header", "kept")])
    assert response.status == 200
    assert identity_of(stack) == {}
    # Underscored names do travel (so the test above is not vacuous); only identity ones go.
    assert ("X_Other_Header", "kept") in received(stack)


async def test_spoofed_identity_headers_are_removed_on_every_request_not_only_the_first(
    identity_stack: Stack,
) -> None:
    # The gateway remembers each header name's verdict after the first request: the ones after
    # it, on this route and on others, must be judged the same.
    stack = identity_stack
    spoofed = {value for _, value in SPOOFED}
    for path in ("/status", "/status", "/orders/1", "/status", "/orders/1"):
        token = stack.issuer.token() if path == "/orders/1" else None
        response = await get(stack, path, token, headers=[*SPOOFED, ("X_Other_Header", "kept")])
        assert response.status == 200
        headers = stack.upstream.received[-1].headers
        assert not [(name, value) for name, value in headers if value in spoofed]
        assert ("X_Other_Header", "kept") in headers


async def test_spoofed_identity_headers_are_replaced_by_exactly_one_true_value(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    response = await get(stack, "/orders/1", stack.issuer.token(), headers=SPOOFED)
    assert response.status == 200
    identity = identity_of(stack)
    assert identity["x-auth-subject"] == ["alice"]
    assert identity["x-auth-client-id"] == ["client-1"]
    # Named only in another route's map, or only by prefix, or with no claim: gone entirely.
    for absent in ("x-tenant", "x-auth-anything", "remote-user"):
        assert absent not in identity


async def test_spoofed_headers_on_a_route_with_its_own_map_are_removed_too(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    response = await get(stack, "/tenant/1", stack.issuer.token(), headers=SPOOFED)
    assert response.status == 200
    assert identity_of(stack) == {}  # no `org.tenant` claim: nothing, not the client's value


async def test_the_authorization_header_is_removed_when_forward_authorization_is_false(
    identity_stack: Stack,
) -> None:
    stack = identity_stack
    await get(stack, "/orders/1", stack.issuer.token())
    assert not any(key(name) == "authorization" for name, _ in received(stack))


async def test_the_authorization_header_is_forwarded_by_default(stack: Stack) -> None:
    token = stack.issuer.token()
    await get(stack, "/orders/1", token)
    assert dict(received(stack))["Authorization"] == f"Bearer {token}"
