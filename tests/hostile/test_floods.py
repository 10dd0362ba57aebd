"""Floods of forged tokens at a real ``gateway run`` process in front of the real
``oidc-provider``: 10,000 JWTs naming random keys, then 10,000 random opaque tokens on an issuer
that introspects. The provider counts what it served: the gateway must not turn a flood into a
JWKS download amplifier (SPEC §3: one fetch per ``min_refetch_interval``) nor ask the
authorization server twice about the same bogus token (the negative cache), its memory must stay
bounded (measured in ``/proc``), and honest callers must keep getting 200 throughout.

In-process relatives: tests/integration/test_unknown_kid_flood.py (single flight, a valid token
not delayed by a fetch in flight) and tests/pipeline/test_introspection.py (the negative cache's
bound at the unit level).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.process import GatewayProcess, gateway_process
from tests.integration.idp_fixture import (
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_SECRET,
    OpenIdProvider,
    start_provider,
)
from tests.operations.support import sample, scrape
from tests.support import b64json, b64url, echo_upstream, write_config

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc/PID/status", allow_module_level=True)

MB = 1024 * 1024
RESOURCE = "https://api.example.test/orders"
FLOOD = 10_000
CONCURRENCY = 50
FLOOD_SECONDS = 120.0  # a bound per flood, not an expectation
HONEST_MAX = 5_000  # requests of each honest caller, at most
REPLAYED = 1_000  # flood tokens sent a second time, to show the negative cache holds them
# Resident memory the floods may add. 10,000 remembered inactive answers are a few MB; keeping
# every forged token, or a task per request, would cost far more.
RSS_GROWTH_LIMIT = 50 * MB

CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    jwks: {{min_refetch_interval: 30s}}
    introspection:
      client_id: {client_id}
      client_secret: {secret}
      # Generous: the provider, the gateway and the flood share two cores here; a timeout
      # would show up as a 503 and fail the test, not hide anything.
      timeout: 5s
      negative_cache_ttl: 10m        # outlives the flood and the replay after it
      cache_size: 200000             # a tenth for inactive answers: room for the whole flood
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth: {{scopes: [orders:read]}}
"""


def forged_jwt(issuer: str) -> str:
    """A well-formed token of ``issuer`` naming a key that does not exist."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_hex(8)}
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "mallory",
        "aud": RESOURCE,
        "scope": "orders:read",
        "iat": now,
        "exp": now + 600,
    }
    return f"{b64json(header)}.{b64json(claims)}.{b64url(os.urandom(256))}"


def random_opaque() -> str:
    """A token that looks like the provider's opaque ones and was never issued."""
    return secrets.token_urlsafe(32)


@dataclass
class Memory:
    rss: int
    peak: int

    def __str__(self) -> str:
        return f"RSS {self.rss / MB:.1f} MB (peak {self.peak / MB:.1f} MB)"


@dataclass
class FloodRun:
    """What one flood of distinct tokens saw."""

    seconds: float = 0.0
    statuses: Counter[int | str] = field(default_factory=Counter)
    honest: dict[str, Counter[int | str]] = field(default_factory=dict)
    provider_calls: int = 0  # JWKS documents or introspection requests the provider got
    memory_after: Memory = field(default_factory=lambda: Memory(0, 0))

    def line(self, what: str, calls: str) -> str:
        honest = ", ".join(f"{name} {dict(c)}" for name, c in self.honest.items())
        return (
            f"{what}: {sum(self.statuses.values())} requests in {self.seconds:.1f} s "
            f"({sum(self.statuses.values()) / max(self.seconds, 1e-9):.0f}/s), "
            f"statuses {dict(self.statuses)}; honest alongside: {honest}; "
            f"{calls}: {self.provider_calls}; {self.memory_after}"
        )


@dataclass
class Floods:
    """Both floods against one gateway process, and what the provider counted."""

    jwks_at_start: int = 0
    memory_before: Memory = field(default_factory=lambda: Memory(0, 0))
    jwt: FloodRun = field(default_factory=FloodRun)
    opaque: FloodRun = field(default_factory=FloodRun)
    replay_statuses: Counter[int | str] = field(default_factory=Counter)
    replay_introspections: int = 0
    introspections_counted: dict[str, float] = field(default_factory=dict)
    healthy_after: tuple[int, int] = (0, 0)
    alive_after: bool = False


class Caller:
    """Requests to the gateway, each bounded by a client timeout."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def status(self, token: str) -> int | str:
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self.http.get(f"{self.url}/orders/1", headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            return type(error).__name__  # counted, and fails the status assertions


async def flood(
    caller: Caller, tokens: list[str], honest_tokens: dict[str, str], gateway: GatewayProcess
) -> FloodRun:
    """Send every token once from CONCURRENCY attackers while one honest caller per kind of
    valid token sends requests one after another, until the flood is over."""
    run = FloodRun(honest={name: Counter() for name in honest_tokens})
    queue = iter(tokens)
    started = time.monotonic()
    deadline = started + FLOOD_SECONDS
    flooding = True

    async def attacker() -> None:
        for token in queue:
            if time.monotonic() > deadline:
                return
            run.statuses[await caller.status(token)] += 1

    async def honest(name: str, token: str) -> None:
        seen = run.honest[name]
        while flooding and sum(seen.values()) < HONEST_MAX and time.monotonic() < deadline:
            seen[await caller.status(token)] += 1

    honest_tasks = [asyncio.ensure_future(honest(n, t)) for n, t in honest_tokens.items()]
    await asyncio.gather(*(attacker() for _ in range(CONCURRENCY)))
    flooding = False
    await asyncio.gather(*honest_tasks)
    run.seconds = time.monotonic() - started
    run.memory_after = Memory(*gateway.memory())
    return run


@asynccontextmanager
async def flood_target(
    idp: OpenIdProvider, directory: Path
) -> AsyncIterator[tuple[GatewayProcess, Caller]]:
    async with echo_upstream() as upstream:
        config = write_config(
            directory,
            CONFIG,
            issuer=idp.issuer,
            resource=RESOURCE,
            client_id=INTROSPECTOR_CLIENT,
            secret=INTROSPECTOR_SECRET,
            upstream=upstream.url,
        )
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 4)
        async with (
            gateway_process(config, directory / "gateway.log") as gateway,
            aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
        ):
            yield gateway, Caller(gateway.url, http)


async def run_floods(idp: OpenIdProvider, directory: Path) -> Floods:
    result = Floods()
    valid_jwt = await asyncio.to_thread(idp.token, RESOURCE, ["orders:read"])
    valid_opaque = await asyncio.to_thread(idp.opaque_token, ["orders:read"], resource=RESOURCE)
    honest = {"jwt": valid_jwt, "opaque": valid_opaque}
    jwts = [forged_jwt(idp.issuer) for _ in range(FLOOD)]
    opaques = [random_opaque() for _ in range(FLOOD)]
    assert len(set(jwts)) == len(set(opaques)) == FLOOD
    async with flood_target(idp, directory) as (gateway, caller):
        result.jwks_at_start = await asyncio.to_thread(idp.jwks_requests)
        # Warm up (pools, lazily built objects; the honest opaque token's answer is cached):
        # that is not what is measured.
        for _ in range(20):
            assert await caller.status(valid_jwt) == 200
            assert await caller.status(valid_opaque) == 200
            assert await caller.status(forged_jwt(idp.issuer)) == 401
        result.memory_before = Memory(*gateway.memory())

        result.jwt = await flood(caller, jwts, honest, gateway)
        jwks_now = await asyncio.to_thread(idp.jwks_requests)
        result.jwt.provider_calls = jwks_now - result.jwks_at_start

        before = await asyncio.to_thread(idp.introspection_requests)
        result.opaque = await flood(caller, opaques, honest, gateway)
        after = await asyncio.to_thread(idp.introspection_requests)
        result.opaque.provider_calls = after - before

        for token in random.sample(opaques, REPLAYED):
            result.replay_statuses[await caller.status(token)] += 1
        result.replay_introspections = await asyncio.to_thread(idp.introspection_requests) - after

        metrics = await scrape(gateway.admin_url)
        result.introspections_counted = {
            outcome: sample(metrics, "gateway_introspection_requests_total", result=outcome)
            for outcome in ("active", "inactive", "error")
        }
        async with (
            caller.http.get(f"{gateway.admin_url}/healthz") as healthz,
            caller.http.get(f"{gateway.admin_url}/readyz") as readyz,
        ):
            result.healthy_after = (healthz.status, readyz.status)
        assert gateway.process is not None
        result.alive_after = gateway.process.poll() is None
    return result


@pytest.fixture(scope="module")
def floods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Floods]:
    """One gateway process and a private provider (so that its counters are ours alone),
    flooded once; the tests below each assert one thing about what happened."""
    with start_provider() as idp:
        result = asyncio.run(run_floods(idp, tmp_path_factory.mktemp("floods")))
    print(
        f"\nmemory before the floods: {result.memory_before}\n"
        + result.jwt.line("forged JWTs", "JWKS documents served during the flood")
        + "\n"
        + result.opaque.line("random opaque tokens", "introspection requests the provider got")
        + f"\nreplayed {REPLAYED} flood tokens: {dict(result.replay_statuses)}, "
        f"introspections {result.replay_introspections}; "
        f"gateway counted introspections {result.introspections_counted}"
    )
    yield result


def test_each_flood_was_sent_whole_and_every_forged_token_refused_as_401(floods: Floods) -> None:
    assert floods.jwt.statuses == Counter({401: FLOOD})
    assert floods.opaque.statuses == Counter({401: FLOOD})


def test_ten_thousand_random_kids_cost_the_provider_at_most_two_jwks_downloads(
    floods: Floods,
) -> None:
    assert floods.jwks_at_start == 1  # the gateway's start
    assert floods.jwks_at_start + floods.jwt.provider_calls <= 2


def test_every_random_opaque_token_is_introspected_once_and_its_answer_kept(
    floods: Floods,
) -> None:
    # One call per distinct token (the honest opaque token's answer was cached at warm-up)...
    assert FLOOD <= floods.opaque.provider_calls <= FLOOD + 2
    assert floods.introspections_counted["inactive"] == FLOOD
    assert floods.introspections_counted["error"] == 0
    # ...and none for a token asked about before: the negative cache answers.
    assert floods.replay_statuses == Counter({401: REPLAYED})
    assert floods.replay_introspections == 0


def test_valid_tokens_keep_succeeding_during_both_floods(floods: Floods) -> None:
    for run in (floods.jwt, floods.opaque):
        for name, statuses in run.honest.items():
            assert sum(statuses.values()) >= 20, name  # really ran alongside the flood
            assert set(statuses) == {200}, (name, statuses)


def test_resident_memory_stays_within_its_bound_through_both_floods(floods: Floods) -> None:
    before, after = floods.memory_before, floods.opaque.memory_after
    assert after.rss - before.rss < RSS_GROWTH_LIMIT
    assert after.peak - before.rss < RSS_GROWTH_LIMIT


def test_the_gateway_is_alive_healthy_and_ready_after_the_floods(floods: Floods) -> None:
    assert floods.alive_after
    assert floods.healthy_after == (200, 200)
