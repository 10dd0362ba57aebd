"""Where the gateway takes the token from (RFC 6750 §2), seen from a client of the running gateway.

Only the Authorization header is read. A token sent twice (two headers, or a header plus an
``access_token`` in the query or form body) is a malformed request: the gateway cannot know which
copy the upstream would believe.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc.jws import JWSRegistry
from multidict import CIMultiDict
from yarl import URL

from tests.e2e.conftest import BASIC_CONFIG, Stack
from tests.support import (
    AUDIENCE,
    Received,
    TokenIssuer,
    Upstream,
    b64json,
    b64url,
    running_gateway,
    write_config,
)

MAX_TOKEN_BYTES = 8192  # the default of `limits.max_token_bytes`


def decisions(stack: Stack, route: str, result: str, reason: str) -> float:
    value = stack.gateway.metrics.registry.get_sample_value(
        "gateway_auth_decisions_total", {"route": route, "result": result, "reason": reason}
    )
    return value or 0.0


def token_of_length(issuer: TokenIssuer, length: int) -> str:
    """A valid token of exactly ``length`` characters, padded with a filler claim.

    base64url output grows by 4 characters per 3 bytes, so not every length is reachable by
    the payload alone: spaces inside the header's JSON shift the remainder."""
    key = issuer.rsa
    signature_length = len(b64url(b"s" * 256))  # RS256 with a 2048-bit key
    header = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}
    for spaces in range(4):
        raw_header = json.dumps(header).replace("{", "{" + " " * spaces, 1)
        head = b64url(raw_header)
        for filler in range(length):
            payload = b64json(issuer.claims(filler="f" * filler))
            total = len(head) + len(payload) + signature_length + 2
            if total == length:
                signing_input = f"{head}.{payload}"
                signature = JWSRegistry.algorithms["RS256"].sign(signing_input.encode(), key)
                return f"{signing_input}.{b64url(signature)}"
            if total > length:
                break
    raise AssertionError(f"no token of exactly {length} characters")


@pytest.fixture
async def roomy_stack(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[Stack]:
    """The basic stack, but with an upstream that accepts header lines as long as the gateway
    does (the shared echo upstream keeps aiohttp's 8190-byte default and would answer 400)."""
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    upstream = Upstream()

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        upstream.received.append(
            Received(request.method, request.path, "", list(request.headers.items()), b"")
        )
        return web.json_response({})

    runner = web.ServerRunner(web.Server(echo, max_field_size=16384), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    path = write_config(
        tmp_path, BASIC_CONFIG, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream.url
    )
    try:
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, issuer, http)
    finally:
        await runner.cleanup()


async def assert_invalid_request(stack: Stack, response: Any, route: str) -> None:
    assert response.status == 400
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
    body = await response.json()
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["error"] == "invalid_request"
    assert stack.upstream.received == []
    assert decisions(stack, route, "deny", "invalid_request") == 1


async def test_the_bearer_scheme_is_accepted_in_lower_case(stack: Stack) -> None:
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"bearer {token}"}
    ) as response:
        assert response.status == 200
    assert decisions(stack, "orders-read", "allow", "none") == 1


async def test_two_authorization_headers_are_a_400_invalid_request(stack: Stack) -> None:
    token = stack.issuer.token()
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", "Bearer x")])
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        await assert_invalid_request(stack, response, "orders-read")


async def test_two_identical_authorization_headers_are_still_a_400(stack: Stack) -> None:
    token = stack.issuer.token()
    headers = CIMultiDict([("Authorization", f"Bearer {token}")] * 2)
    async with stack.http.get(f"{stack.url}/orders/1", headers=headers) as response:
        await assert_invalid_request(stack, response, "orders-read")


async def test_the_bearer_scheme_without_a_token_is_a_400_invalid_request(stack: Stack) -> None:
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": "Bearer"}
    ) as response:
        await assert_invalid_request(stack, response, "orders-read")


async def test_a_token_in_the_header_and_in_the_query_is_a_400_invalid_request(
    stack: Stack,
) -> None:
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/1?access_token={token}", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await assert_invalid_request(stack, response, "orders-read")


async def test_a_token_in_the_header_and_in_the_query_under_an_encoded_name_is_a_400(
    stack: Stack,
) -> None:
    token = stack.issuer.token()
    async with stack.http.get(
        URL(f"{stack.url}/orders/1?access%5Ftoken=forged", encoded=True),
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        # A backend decoding the query would read a second token under `access_token`.
        await assert_invalid_request(stack, response, "orders-read")


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8"],
)
async def test_a_token_in_the_header_and_in_a_form_body_is_a_400_and_nothing_is_forwarded(
    stack: Stack, content_type: str
) -> None:
    token = stack.issuer.token(scope="orders:write")
    async with stack.http.post(
        f"{stack.url}/orders/1",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        data=f"item=42&access_token={token}".encode(),
    ) as response:
        await assert_invalid_request(stack, response, "orders-write")


async def test_a_form_body_without_a_token_is_forwarded_whole(stack: Stack) -> None:
    token = stack.issuer.token(scope="orders:write")
    async with stack.http.post(
        f"{stack.url}/orders/1",
        headers={"Authorization": f"Bearer {token}"},
        data={"item": "42", "note": "access token elsewhere"},
    ) as response:
        assert response.status == 200
    assert stack.upstream.received[0].body == b"item=42&note=access+token+elsewhere"


async def test_a_token_only_in_the_query_is_refused_as_an_invalid_request(stack: Stack) -> None:
    # The gateway reads the Authorization header only (SPEC §1); a query token is never used,
    # and the client is told why with a 400 rather than a bare 401 challenge.
    token = stack.issuer.token()
    async with stack.http.get(f"{stack.url}/orders/1?access_token={token}") as response:
        await assert_invalid_request(stack, response, "orders-read")
        assert token not in await response.text()


async def test_a_token_only_in_a_form_body_is_not_accepted(stack: Stack) -> None:
    # Tokens are taken from the Authorization header only; an anonymous form body is not even
    # read (reading it would let any client make the gateway buffer), so this is a missing token.
    token = stack.issuer.token(scope="orders:write")
    async with stack.http.post(f"{stack.url}/orders/1", data={"access_token": token}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
        assert token not in await response.text()
    assert decisions(stack, "orders-write", "deny", "missing_token") == 1
    assert stack.upstream.received == []


async def test_an_urlencoded_form_over_the_scan_limit_on_a_protected_route_is_413(
    stack: Stack,
) -> None:
    from gateway.pipeline.extract import FORM_SCAN_BYTES

    token = stack.issuer.token(scope="orders:write")
    body = b"a=" + b"x" * FORM_SCAN_BYTES
    async with stack.http.post(
        f"{stack.url}/orders/1",
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    ) as response:
        assert response.status == 413
    assert stack.upstream.received == []
    # A body limit, not a verdict on the token: counted as neither an allow nor a deny.
    assert decisions(stack, "orders-write", "allow", "none") == 0
    assert decisions(stack, "orders-write", "deny", "invalid_request") == 0


async def test_a_second_token_in_a_form_body_is_refused_for_a_token_met_before_too(
    stack: Stack,
) -> None:
    # The first request verifies the token and caches it; the second is judged from the cache
    # without a coroutine, and must still have its form body searched for a second token.
    token = stack.issuer.token(scope="orders:write")
    async with stack.http.post(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}, data={"item": "1"}
    ) as response:
        assert response.status == 200
    stack.upstream.received.clear()
    async with stack.http.post(
        f"{stack.url}/orders/1",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        data=f"item=42&access_token={token}".encode(),
    ) as response:
        await assert_invalid_request(stack, response, "orders-write")
    assert decisions(stack, "orders-write", "allow", "none") == 1
    hits = stack.gateway.metrics.registry.get_sample_value(
        "gateway_token_cache_total", {"cache": "jwt", "result": "hit"}
    )
    assert hits == 1  # the second request's token came from the cache


async def test_another_authorization_scheme_gets_the_bare_bearer_challenge(stack: Stack) -> None:
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert decisions(stack, "orders-read", "deny", "missing_token") == 1
    assert stack.upstream.received == []


async def test_a_valid_token_of_exactly_max_token_bytes_is_accepted(roomy_stack: Stack) -> None:
    # aiohttp refuses header lines over 8190 bytes by default; the gateway raises that limit.
    stack = roomy_stack
    token = token_of_length(stack.issuer, MAX_TOKEN_BYTES)
    assert len(token.encode()) == MAX_TOKEN_BYTES
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()
    assert dict(stack.upstream.received[0].headers)["Authorization"] == f"Bearer {token}"


async def test_a_valid_token_one_byte_over_max_token_bytes_is_refused_before_parsing(
    stack: Stack,
) -> None:
    token = token_of_length(stack.issuer, MAX_TOKEN_BYTES + 1)
    assert len(token.encode()) == MAX_TOKEN_BYTES + 1
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == (
            'Bearer error="invalid_token", error_description="the token is too long"'
        )
    assert stack.upstream.received == []
    assert decisions(stack, "orders-read", "deny", "malformed_token") == 1


@pytest.mark.parametrize("token", ["abc;def", "ab=cd", "{json}", "abc,def"])
async def test_a_token_outside_the_b64token_alphabet_is_refused_as_malformed(
    stack: Stack, token: str
) -> None:
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == (
            'Bearer error="invalid_token", error_description="the token is malformed"'
        )
    assert stack.upstream.received == []
    assert decisions(stack, "orders-read", "deny", "malformed_token") == 1


async def test_a_public_route_ignores_a_token_in_two_places(stack: Stack) -> None:
    async with stack.http.get(
        f"{stack.url}/status?access_token=x", headers={"Authorization": "Bearer garbage"}
    ) as response:
        assert response.status == 200
