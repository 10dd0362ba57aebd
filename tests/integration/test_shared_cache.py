"""Introspection answers shared through a real Redis (SPEC §3 ``cache.redis``): keys under
``key_prefix``, the same expiry as in memory, no token anywhere a Redis reader could find it;
replicas serving each other's answers; and a Redis that is slow, down or absent never costing a
5xx. With the real ``oidc-provider`` and a real ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.observe.metrics import Metrics
from gateway.pipeline.verify.introspection import IntrospectionClient, Introspector
from gateway.pipeline.verify.token_cache import AnswerCache, RedisCache, cache_key
from tests.e2e.process import gateway_process
from tests.integration.idp_fixture import (
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_SECRET,
    OpenIdProvider,
)
from tests.integration.redis_fixture import RedisServer, free_port, start_redis
from tests.support import RunningGateway, Upstream, echo_upstream, running_gateway, write_config

RESOURCE = "https://api.example.test"
PREFIX = "edge-7:"

CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
cache:
  redis: {{url: "{redis_url}", key_prefix: "{prefix}", timeout: {redis_timeout}}}
issuers:
  idp:
    issuer: {issuer}
    audiences: [{resource}]
    introspection:
      endpoint: {endpoint}
      client_id: {client_id}
      client_secret: {secret}
      cache_ttl: {cache_ttl}
      negative_cache_ttl: 10s
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders-read
    match: {{path: /orders/**}}
    upstream: echo
    auth:
      scopes: [orders:read]
"""


def config_text(
    idp: OpenIdProvider,
    upstream: Upstream,
    redis_url: str,
    *,
    cache_ttl: str = "5m",
    # Generous: on a loaded 2-core machine a 50 ms Redis call can time out, and the 5 s back-off
    # that follows would fail tests that are not about timeouts.
    redis_timeout: str = "1s",
) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "prefix": PREFIX,
        "redis_timeout": redis_timeout,
        "issuer": idp.issuer,
        "resource": RESOURCE,
        "endpoint": idp.introspection_endpoint,
        "client_id": INTROSPECTOR_CLIENT,
        "secret": INTROSPECTOR_SECRET,
        "cache_ttl": cache_ttl,
        "upstream": upstream.url,
    }


@dataclass
class Replica:
    """One gateway (in-process, with its own caches) on the shared Redis."""

    gateway: RunningGateway
    http: aiohttp.ClientSession

    async def status(self, token: str) -> int:
        async with self.http.get(
            self.gateway.url + "/orders/1", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            await response.read()
            return response.status

    def sample(self, name: str, **labels: str) -> float:
        return self.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def replica(
    directory: Path, idp: OpenIdProvider, redis_url: str, **settings: str
) -> AsyncIterator[Replica]:
    directory.mkdir(exist_ok=True)
    async with echo_upstream() as upstream:
        path = write_config(directory, CONFIG, **config_text(idp, upstream, redis_url, **settings))
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Replica(gateway, http)


@pytest.fixture
async def gateway(idp: OpenIdProvider, redis_url: str, tmp_path: Path) -> AsyncIterator[Replica]:
    async with replica(tmp_path, idp, redis_url) as gateway:
        yield gateway


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private server, for tests that pause, stop or restart it."""
    with start_redis() as server:
        yield server


def redis_entries(redis: RedisServer) -> dict[bytes, bytes]:
    keys = redis.command("KEYS", "*")
    return {key: redis.command("GET", key) for key in keys}


async def wait_for_keys(redis: RedisServer, count: int, timeout: float = 5.0) -> None:
    """The answers are written to Redis in the background: wait (bounded) for them."""
    deadline = time.monotonic() + timeout
    while redis.command("DBSIZE") < count:
        assert time.monotonic() < deadline, f"Redis never held {count} keys"
        await asyncio.sleep(0.01)


def token_for(idp: OpenIdProvider) -> str:
    return idp.opaque_token(["orders:read"], resource=RESOURCE)


# -- what Redis holds ---------------------------------------------------------------------------


async def test_every_key_in_redis_starts_with_the_key_prefix(
    idp: OpenIdProvider, redis_server: RedisServer, gateway: Replica
) -> None:
    assert await gateway.status(token_for(idp)) == 200
    assert await gateway.status("never-issued-opaque-token") == 401
    await wait_for_keys(redis_server, 2)
    keys = redis_server.command("KEYS", "*")
    assert len(keys) == 2
    assert all(re.fullmatch(re.escape(PREFIX).encode() + b"[0-9a-f]{64}", key) for key in keys)


async def test_no_key_or_value_in_redis_holds_the_token(
    idp: OpenIdProvider, redis_server: RedisServer, gateway: Replica
) -> None:
    good, unknown = token_for(idp), "never-issued-opaque-token-4bq0Zk2"
    assert await gateway.status(good) == 200
    assert await gateway.status(unknown) == 401
    await wait_for_keys(redis_server, 2)
    stored = redis_entries(redis_server)
    for token in (good, unknown):
        assert not any(token.encode() in key + value for key, value in stored.items())
    assert set(stored) == {(PREFIX + cache_key(idp.issuer, t)).encode() for t in (good, unknown)}


async def test_redis_holds_the_authorization_servers_answer_not_a_decision(
    idp: OpenIdProvider, redis_server: RedisServer, gateway: Replica
) -> None:
    token = token_for(idp)
    assert await gateway.status(token) == 200
    await wait_for_keys(redis_server, 1)
    [value] = redis_entries(redis_server).values()
    answer = json.loads(value)
    assert answer["active"] is True
    assert answer["scope"] == "orders:read"
    assert answer["aud"] == RESOURCE
    assert answer["iss"] == idp.issuer


async def test_an_active_entry_expires_in_redis_when_it_expires_in_memory(
    idp: OpenIdProvider, redis_url: str, redis_server: RedisServer
) -> None:
    # cache_ttl beyond the token's lifetime (600 s): both expiries are bounded by its exp.
    clock = Clock()
    cache = AnswerCache(100, clock=clock)
    shared = RedisCache(redis_url, key_prefix=PREFIX, timeout=1.0)
    async with aiohttp.ClientSession() as session:
        introspector = introspector_for(idp, session, cache, shared, clock, cache_ttl=3600)
        token = token_for(idp)
        answer = await introspector.answer(token)
        assert answer is not None and answer["active"] is True
        await wait_for_keys(redis_server, 1)
        pttl = redis_server.command("PTTL", PREFIX + cache_key(idp.issuer, token)) / 1000
        in_memory = answer["exp"] - time.time()
        await shared.close()
    assert 500 < in_memory <= 600
    assert abs(pttl - in_memory) < 1.0
    key = cache_key(idp.issuer, token)
    clock.now = answer["exp"] - 0.5
    assert cache.get(key) is not None
    clock.now = answer["exp"] + 0.01
    assert cache.get(key) is None


async def test_an_inactive_entry_expires_in_redis_after_negative_cache_ttl(
    redis_server: RedisServer, gateway: Replica
) -> None:
    assert await gateway.status("never-issued-opaque-token") == 401
    await wait_for_keys(redis_server, 1)
    [key] = redis_server.command("KEYS", "*")
    assert 9_000 < redis_server.command("PTTL", key) <= 10_000


async def test_an_active_entry_expires_in_redis_after_cache_ttl(
    idp: OpenIdProvider, redis_server: RedisServer, gateway: Replica
) -> None:
    assert await gateway.status(token_for(idp)) == 200
    await wait_for_keys(redis_server, 1)
    [key] = redis_server.command("KEYS", "*")
    assert 299_000 < redis_server.command("PTTL", key) <= 300_000


async def test_a_redis_entry_that_is_no_answer_or_never_expires_is_a_miss(
    redis_url: str, redis_server: RedisServer
) -> None:
    # Written by someone else (or by hand): never trusted to live forever, never a crash.
    redis_server.command("SET", PREFIX + "not-json", "<html>", "PX", 10_000)
    redis_server.command("SET", PREFIX + "not-an-object", "[true]", "PX", 10_000)
    redis_server.command("SET", PREFIX + "no-expiry", '{"active": true}')
    shared = RedisCache(redis_url, key_prefix=PREFIX, timeout=1.0)
    try:
        for key in ("not-json", "not-an-object", "no-expiry", "absent"):
            assert await shared.get(key) is None, key
    finally:
        await shared.close()


# -- replicas share answers ---------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_an_answer_introspected_by_one_gateway_process_is_served_by_another(
    idp: OpenIdProvider, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with echo_upstream() as upstream:
        config = write_config(tmp_path, CONFIG, **config_text(idp, upstream, redis_url))
        token = token_for(idp)
        async with (
            gateway_process(config, tmp_path / "one.log") as one,
            gateway_process(config, tmp_path / "two.log") as two,
            aiohttp.ClientSession() as http,
        ):
            before = idp.introspection_requests()
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(one.url + "/orders/1", headers=headers) as response:
                assert response.status == 200
            await wait_for_keys(redis_server, 1)
            async with http.get(two.url + "/orders/1", headers=headers) as response:
                assert response.status == 200
            assert idp.introspection_requests() - before == 1
            async with http.get(two.admin_url + "/metrics") as response:
                exposition = await response.text()
    hit = {"cache": "introspection", "result": "hit"}
    assert metric(exposition, "gateway_token_cache_total", **hit) == 1
    assert metric(exposition, "gateway_introspection_requests_total") == 0
    assert len(upstream.received) == 2


async def test_a_revocation_is_seen_by_every_replica_once_the_first_answer_expires(
    idp: OpenIdProvider, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    cache_ttl = 1.0
    token = token_for(idp)
    async with (
        replica(tmp_path / "one", idp, redis_url, cache_ttl="1s") as one,
        replica(tmp_path / "two", idp, redis_url, cache_ttl="1s") as two,
    ):
        before = idp.introspection_requests()
        asked = time.monotonic()
        assert await one.status(token) == 200
        await wait_for_keys(redis_server, 1)
        await asyncio.sleep(0.7 - (time.monotonic() - asked))
        # Late in the answer's life: the second replica must not keep it a full cache_ttl more.
        assert await two.status(token) == 200
        assert idp.introspection_requests() - before == 1
        idp.revoke(token)
        refused: dict[str, float] = {}
        while len(refused) < 2 and time.monotonic() - asked < cache_ttl + 2:  # bounded
            for name, gateway in (("one", one), ("two", two)):
                if name not in refused and await gateway.status(token) == 401:
                    refused[name] = time.monotonic() - asked
            await asyncio.sleep(0.02)
    assert set(refused) == {"one", "two"}
    assert max(refused.values()) < cache_ttl + 0.5, refused  # kept 1 s more: >= 1.7 s


async def test_an_answer_from_redis_is_kept_in_memory_no_longer_than_it_has_left_there(
    idp: OpenIdProvider, redis_url: str, redis_server: RedisServer
) -> None:
    token = token_for(idp)
    first_cache, second_cache = AnswerCache(10), AnswerCache(10)
    first_shared = RedisCache(redis_url, key_prefix=PREFIX, timeout=1.0)
    second_shared = RedisCache(redis_url, key_prefix=PREFIX, timeout=1.0)
    async with aiohttp.ClientSession() as session:
        first = introspector_for(idp, session, first_cache, first_shared, time.time, cache_ttl=1)
        second = introspector_for(idp, session, second_cache, second_shared, time.time, cache_ttl=1)
        before = idp.introspection_requests()
        asked = time.monotonic()
        await first.answer(token)
        await wait_for_keys(redis_server, 1)
        await asyncio.sleep(0.6 - (time.monotonic() - asked))
        await second.answer(token)  # from Redis, with ~0.4 s left there
        assert idp.introspection_requests() - before == 1
        await asyncio.sleep(1.1 - (time.monotonic() - asked))
        assert second_cache.get(cache_key(idp.issuer, token)) is None
        await first_shared.close()
        await second_shared.close()


# -- Redis slow, down, absent, back ------------------------------------------------------------


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_hung_redis_costs_a_request_at_most_its_timeout_and_then_is_skipped(
    idp: OpenIdProvider, own_redis: RedisServer, tmp_path: Path
) -> None:
    timeout = 0.5
    tokens = [token_for(idp) for _ in range(11)]
    async with replica(tmp_path, idp, own_redis.url, redis_timeout="500ms") as gateway:
        assert await gateway.status(tokens[0]) == 200  # connected while Redis answers
        own_redis.pause()  # accepts, never answers
        try:
            with capture_logs() as logs:
                started = time.monotonic()
                assert await gateway.status(tokens[1]) == 200
                first = time.monotonic() - started
                later = []
                for token in tokens[2:]:
                    started = time.monotonic()
                    assert await gateway.status(token) == 200
                    later.append(time.monotonic() - started)
        finally:
            own_redis.resume()
    assert timeout <= first < timeout + 1.0
    assert max(later) < timeout, later  # Redis is left alone after a failure
    assert len(events(logs, "redis_unavailable")) == 1


async def test_a_redis_absent_at_start_leaves_the_gateway_serving_from_its_own_cache(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    token = token_for(idp)
    with capture_logs() as logs:
        async with replica(tmp_path, idp, nowhere) as gateway:
            before = idp.introspection_requests()
            assert [await gateway.status(token) for _ in range(3)] == [200, 200, 200]
            assert idp.introspection_requests() - before == 1
            assert gateway.sample("gateway_token_cache_total", cache="introspection", result="hit")
    assert len(events(logs, "redis_unavailable")) == 1


async def test_a_redis_stopped_while_serving_costs_no_5xx(
    idp: OpenIdProvider, own_redis: RedisServer, tmp_path: Path
) -> None:
    tokens = [token_for(idp) for _ in range(5)]
    async with replica(tmp_path, idp, own_redis.url) as gateway:
        assert await gateway.status(tokens[0]) == 200
        own_redis.stop()
        with capture_logs() as logs:
            assert [await gateway.status(t) for t in tokens] == [200] * len(tokens)
    assert len(events(logs, "redis_unavailable")) == 1


async def test_a_restarted_redis_is_used_again_without_restarting_the_gateway(
    idp: OpenIdProvider,
    own_redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RedisCache, "RETRY_AFTER", 0.2)  # the back-off, shortened for the test
    tokens = [token_for(idp) for _ in range(30)]
    async with replica(tmp_path, idp, own_redis.url) as gateway:
        with capture_logs() as logs:
            assert await gateway.status(tokens[0]) == 200
            await wait_for_keys(own_redis, 1)
            own_redis.stop()
            assert await gateway.status(tokens[1]) == 200
            assert len(events(logs, "redis_unavailable")) == 1
            own_redis.restart()  # a new, empty server on the same port
            for token in tokens[2:]:  # bounded: 28 requests, 0.1 s apart
                assert await gateway.status(token) == 200
                if own_redis.command("DBSIZE") > 0:
                    break
                await asyncio.sleep(0.1)
            await wait_for_keys(own_redis, 1)
    assert len(events(logs, "redis_available")) == 1


# -- helpers ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def introspector_for(
    idp: OpenIdProvider,
    session: aiohttp.ClientSession,
    cache: AnswerCache,
    shared: RedisCache,
    clock: Callable[[], float],
    *,
    cache_ttl: float,
) -> Introspector:
    return Introspector(
        "idp",
        client=IntrospectionClient(INTROSPECTOR_CLIENT, INTROSPECTOR_SECRET, "client_secret_basic"),
        endpoint=idp.introspection_endpoint,
        metadata=None,
        sessions=lambda: session,
        timeout=2.0,
        cache_ttl=cache_ttl,
        negative_cache_ttl=10,
        cache=cache,
        shared=shared,
        metrics=Metrics(),
        clock=clock,
        cache_scope=idp.issuer,
    )


async def test_500_concurrent_requests_with_one_uncached_token_cause_one_introspection(
    idp: OpenIdProvider, gateway: Replica
) -> None:
    token = token_for(idp)
    before = idp.introspection_requests()
    statuses = await asyncio.wait_for(
        asyncio.gather(*(gateway.status(token) for _ in range(500))), 30
    )
    assert statuses == [200] * 500
    assert idp.introspection_requests() - before == 1
