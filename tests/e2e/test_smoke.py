"""The basic promise: a good token passes with identity headers, everything else is refused."""

from __future__ import annotations

from tests.e2e.conftest import Stack


async def test_a_valid_token_reaches_the_upstream_with_identity_headers(stack: Stack) -> None:
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/42?x=1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()
    received = stack.upstream.received[-1]
    headers = dict(received.headers)
    assert received.path == "/orders/42"
    assert received.query == "x=1"
    assert headers["X-Auth-Subject"] == "alice"
    assert headers["X-Auth-Client-Id"] == "client-1"


async def test_a_request_without_a_token_gets_a_bare_bearer_challenge(stack: Stack) -> None:
    async with stack.http.get(f"{stack.url}/orders/42") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
        body = await response.json()
    assert body["error"] == "missing_token"
    assert stack.upstream.received == []


async def test_a_token_without_the_scope_is_refused_naming_the_scope(stack: Stack) -> None:
    token = stack.issuer.token(scope="profile")
    async with stack.http.post(
        f"{stack.url}/orders/42", headers={"Authorization": f"Bearer {token}"}, data=b"x"
    ) as response:
        assert response.status == 403
        assert response.headers["WWW-Authenticate"] == (
            'Bearer error="insufficient_scope", scope="orders:write"'
        )


async def test_a_public_route_needs_no_token(stack: Stack) -> None:
    async with stack.http.get(f"{stack.url}/status") as response:
        assert response.status == 200
