"""The identity provider rotates its signing keys while traffic flows: no request may fail.
Against the real ``oidc-provider`` (a private one per test: rotating the session's provider
would change the keys under other tests), counting the JWKS documents it served."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.integration.idp_fixture import OpenIdProvider, start_provider
from tests.support import RunningGateway, echo_upstream, running_gateway, write_config

RESOURCE = "https://api.example.test/orders"
WORKERS = 8
LOAD_SECONDS = 20.0  # bound on the load loop, far above what it needs
LOAD_REQUESTS = 20_000  # bound on the load loop's requests
REFETCH = 0.5  # min_refetch_interval, seconds

CONFIG = """\
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    token_type: at+jwt
    jwks: {{min_refetch_interval: {refetch}s, refresh_interval: {refresh}}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth: {{scopes: [orders:read]}}
"""


@dataclass
class Stack:
    idp: OpenIdProvider
    gateway: RunningGateway
    http: aiohttp.ClientSession

    async def status(self, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get(f"{self.gateway.url}/orders/1", headers=headers) as response:
            await response.read()
            return response.status

    async def token(self) -> str:
        return await asyncio.to_thread(self.idp.token, RESOURCE, ["orders:read"])

    async def jwks_served(self) -> int:
        return await asyncio.to_thread(self.idp.jwks_requests)

    def keys_loaded(self) -> float | None:
        labels = {"issuer": "idp"}
        return self.gateway.metrics.registry.get_sample_value("gateway_jwks_keys", labels)


@asynccontextmanager
async def rotating_stack(directory: Path, refresh: str = "15m") -> AsyncIterator[Stack]:
    """A private provider and a gateway trusting it through discovery; the provider is stopped
    at the end whatever happens."""
    idp = await asyncio.to_thread(start_provider)
    try:
        async with echo_upstream() as upstream:
            path = write_config(
                directory,
                CONFIG,
                issuer=idp.issuer,
                resource=RESOURCE,
                refetch=REFETCH,
                refresh=refresh,
                upstream=upstream.url,
            )
            async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
                yield Stack(idp, gateway, http)
    finally:
        await asyncio.to_thread(idp.stop)


@dataclass
class Load:
    """A bounded load loop: ``WORKERS`` callers sending the tokens in ``tokens`` by turns."""

    stack: Stack
    tokens: dict[str, str]
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    running: bool = True

    def sent(self, kind: str) -> int:
        return sum(self.statuses.get(kind, Counter()).values())

    async def worker(self, deadline: float) -> None:
        turn = 0
        while self.running and time.monotonic() < deadline:
            if sum(self.sent(kind) for kind in self.statuses) >= LOAD_REQUESTS:
                return
            kinds = sorted(self.tokens)
            kind = kinds[turn % len(kinds)]
            turn += 1
            status = await self.stack.status(self.tokens[kind])
            self.statuses.setdefault(kind, Counter())[status] += 1

    async def until(self, kind: str, count: int, deadline: float) -> None:
        while self.sent(kind) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def test_rotating_the_providers_keys_mid_run_fails_no_request(tmp_path: Path) -> None:
    async with rotating_stack(tmp_path) as stack:
        load = Load(stack, {"old": await stack.token()})
        deadline = time.monotonic() + LOAD_SECONDS
        workers = [asyncio.ensure_future(load.worker(deadline)) for _ in range(WORKERS)]
        try:
            await load.until("old", 200, deadline)
            # Past min_refetch_interval since the start-up fetch: a new kid may be fetched.
            await asyncio.sleep(REFETCH)
            served_before = await stack.jwks_served()
            rotated = await asyncio.to_thread(stack.idp.rotate)
            load.tokens["new"] = await stack.token()
            await load.until("new", 500, deadline)
            await load.until("old", load.sent("old") + 500, deadline)
        finally:
            load.running = False
            await asyncio.gather(*workers)
        served_after = await stack.jwks_served()
        old_kids = set(rotated["published"]) - set(rotated["signing"])
    assert len(old_kids) == 3  # the old keys were still published throughout
    assert load.sent("new") >= 500 and load.sent("old") >= 700
    assert load.statuses == {
        "old": Counter({200: load.sent("old")}),
        "new": Counter({200: load.sent("new")}),
    }
    # The new kid was fetched once, by all the callers that met it first, together.
    assert served_after - served_before == 1


async def test_a_new_key_is_picked_up_by_the_background_refresh_before_any_token_names_it(
    tmp_path: Path,
) -> None:
    async with rotating_stack(tmp_path, refresh="300ms") as stack:
        assert stack.keys_loaded() == 3
        await asyncio.to_thread(stack.idp.rotate)
        deadline = time.monotonic() + 10
        while stack.keys_loaded() != 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # No request has named the new keys yet: the background refresh found them.
        assert stack.keys_loaded() == 6
        assert await stack.status(await stack.token()) == 200


async def test_an_old_key_token_is_refused_once_the_key_is_retired_and_the_keys_refreshed(
    tmp_path: Path,
) -> None:
    async with rotating_stack(tmp_path) as stack:
        old = await stack.token()
        await asyncio.to_thread(stack.idp.rotate)
        await asyncio.to_thread(stack.idp.retire)
        # Until the gateway fetches again it still knows the retired key.
        assert await stack.status(old) == 200
        await stack.gateway.server.gateway.key_stores["idp"].refresh()
        assert stack.keys_loaded() == 3
        # Past min_refetch_interval, the retired kid makes the gateway look again: still gone.
        await asyncio.sleep(REFETCH)
        assert await stack.status(old) == 401
        assert await stack.status(await stack.token()) == 200
