"""A flood of tokens naming keys that do not exist must not turn the gateway into a JWKS download
amplifier against the identity provider (SPEC §3: at most one fetch per
``min_refetch_interval``, single flight), nor slow down callers with good tokens. Against the real
``oidc-provider``, counting the JWKS documents it served."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.idp_fixture import OpenIdProvider, start_provider
from tests.support import (
    AUDIENCE,
    TokenIssuer,
    b64json,
    b64url,
    echo_upstream,
    running_gateway,
    write_config,
)

RESOURCE = "https://api.example.test/orders"
FLOOD = 10_000
CONCURRENCY = 50
FLOOD_SECONDS = 60.0  # a bound, not an expectation: the flood takes a few seconds
VALID_MAX = 5_000

CONFIG = """\
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    jwks: {{min_refetch_interval: {min_refetch_interval}}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
"""


def forged_token(issuer: str, kid: str | None = None) -> str:
    """A token of ``issuer`` naming a random (or the given) unknown key: the gateway must look
    the kid up (and decide whether to fetch) before any signature could be checked."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": kid or secrets.token_hex(8)}
    now = int(time.time())
    claims = {"iss": issuer, "sub": "mallory", "aud": RESOURCE, "iat": now, "exp": now + 600}
    return f"{b64json(header)}.{b64json(claims)}.{b64url(os.urandom(256))}"


@dataclass
class Gateway:
    url: str
    http: aiohttp.ClientSession

    async def status(self, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get(f"{self.url}/orders/1", headers=headers) as response:
            await response.read()
            return response.status


@asynccontextmanager
async def gateway_for(
    idp: OpenIdProvider, directory: Path, min_refetch_interval: str
) -> AsyncIterator[Gateway]:
    async with echo_upstream() as upstream:
        path = write_config(
            directory,
            CONFIG,
            issuer=idp.issuer,
            resource=RESOURCE,
            min_refetch_interval=min_refetch_interval,
            upstream=upstream.url,
        )
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 2)
        async with (
            running_gateway(path) as gateway,
            aiohttp.ClientSession(connector=connector) as http,
        ):
            yield Gateway(gateway.url, http)


@dataclass
class Flood:
    """What one flood run saw."""

    seconds: float = 0.0
    forged: Counter[int] = field(default_factory=Counter)
    valid: Counter[int] = field(default_factory=Counter)
    slowest_valid: float = 0.0
    jwks_served_at_start: int = 0
    jwks_served_during: int = 0


async def flood(idp: OpenIdProvider, directory: Path) -> Flood:
    result = Flood()
    valid_token = await asyncio.to_thread(idp.token, RESOURCE, ["orders:read"])
    tokens = iter([forged_token(idp.issuer) for _ in range(FLOOD)])
    async with gateway_for(idp, directory, "30s") as gateway:
        result.jwks_served_at_start = await asyncio.to_thread(idp.jwks_requests)
        started = time.monotonic()
        deadline = started + FLOOD_SECONDS
        flooding = True

        async def attacker() -> None:
            for token in tokens:
                if time.monotonic() > deadline:
                    return
                result.forged[await gateway.status(token)] += 1

        async def client() -> None:
            # One honest caller, one request after another, for as long as the flood lasts.
            while flooding and sum(result.valid.values()) < VALID_MAX:
                sent = time.monotonic()
                result.valid[await gateway.status(valid_token)] += 1
                result.slowest_valid = max(result.slowest_valid, time.monotonic() - sent)

        honest = asyncio.ensure_future(client())
        await asyncio.gather(*(attacker() for _ in range(CONCURRENCY)))
        flooding = False
        await honest
        result.seconds = time.monotonic() - started
    result.jwks_served_during = await asyncio.to_thread(idp.jwks_requests)
    result.jwks_served_during -= result.jwks_served_at_start
    return result


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flood]:
    """One flood of 10,000 forged kids at a gateway (``min_refetch_interval: 30s``) in front of
    a private provider, shared by the tests below (each asserts one thing about it)."""
    with start_provider() as idp:
        yield asyncio.run(flood(idp, tmp_path_factory.mktemp("flood")))


def test_the_whole_flood_was_sent_within_its_time_bound(flooded: Flood) -> None:
    assert sum(flooded.forged.values()) == FLOOD
    print(
        f"flood: {FLOOD} forged requests in {flooded.seconds:.1f} s, "
        f"{sum(flooded.valid.values())} valid requests alongside, "
        f"JWKS served: {flooded.jwks_served_at_start} at start, "
        f"{flooded.jwks_served_during} during the flood; "
        f"slowest valid request {flooded.slowest_valid * 1000:.0f} ms"
    )


def test_ten_thousand_random_kids_cost_the_provider_at_most_one_jwks_fetch_after_start(
    flooded: Flood,
) -> None:
    assert flooded.jwks_served_at_start == 1
    assert flooded.jwks_served_during <= 1


def test_every_token_naming_an_unknown_key_is_refused_as_401(flooded: Flood) -> None:
    assert flooded.forged == Counter({401: FLOOD})


def test_valid_tokens_keep_succeeding_during_the_flood(flooded: Flood) -> None:
    assert sum(flooded.valid.values()) >= 20  # the honest caller really ran alongside
    assert set(flooded.valid) == {200}


async def test_concurrent_unknown_kids_after_the_interval_share_one_fetch(tmp_path: Path) -> None:
    # The interval since start-up has passed: the first unknown kid fetches, everyone who asks
    # while it is in flight waits for that one fetch, and everyone after it is throttled.
    with start_provider() as idp:
        async with gateway_for(idp, tmp_path, "2s") as gateway:
            served = await asyncio.to_thread(idp.jwks_requests)
            await asyncio.sleep(2.1)
            same = forged_token(idp.issuer, kid="the-same-unknown-kid")
            tokens = [same if n % 2 else forged_token(idp.issuer) for n in range(CONCURRENCY * 4)]
            statuses = await asyncio.gather(*(gateway.status(token) for token in tokens))
            assert set(statuses) == {401}
            assert await asyncio.to_thread(idp.jwks_requests) == served + 1


@dataclass
class HeldJwks:
    url: str = ""
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def held_jwks(jwks: dict[str, Any]) -> AsyncIterator[HeldJwks]:
    """A JWKS endpoint on loopback that answers the first fetch at once and holds every later
    one until :attr:`HeldJwks.release` is set (5 s at most)."""
    held = HeldJwks()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        held.requests += 1
        if held.requests > 1:
            await asyncio.wait_for(held.release.wait(), 5)
        return web.json_response(jwks)

    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    held.url = f"http://127.0.0.1:{runner.addresses[0][1]}/keys"
    try:
        yield held
    finally:
        held.release.set()
        await runner.cleanup()


HELD_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_uri: {jwks_uri}
    audiences: [{audience}]
    jwks: {{min_refetch_interval: 0s}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
"""


async def test_a_valid_token_is_not_delayed_by_a_jwks_fetch_in_flight(tmp_path: Path) -> None:
    issuer = TokenIssuer()
    async with held_jwks(issuer.jwks) as jwks, echo_upstream() as upstream:
        path = write_config(
            tmp_path,
            HELD_CONFIG,
            issuer=issuer.issuer,
            jwks_uri=jwks.url,
            audience=AUDIENCE,
            upstream=upstream.url,
        )
        async with running_gateway(path) as running, aiohttp.ClientSession() as http:
            gateway = Gateway(running.url, http)
            forged = asyncio.ensure_future(gateway.status(issuer.token(kid="not-yet-published")))
            deadline = time.monotonic() + 5
            while jwks.requests < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert jwks.requests == 2  # the forged kid's fetch is in flight, held
            started = time.monotonic()
            assert await gateway.status(issuer.token()) == 200
            assert time.monotonic() - started < 1.0
            assert not forged.done()
            jwks.release.set()
            assert await asyncio.wait_for(forged, 5) == 401
