"""Outages of what the gateway depends on, with real components, against a real ``gateway run``
process: the identity provider (the real ``oidc-provider`` behind a loopback link the test can
cut, slow down or fill with garbage), Redis (a real ``redis-server`` paused, stopped, restarted)
and the upstream (refusing, resetting, slow). Each outage must end in the documented status
(README "Errors"), every request must be answered within a client timeout, and once the component
is back the same gateway process must serve normally again, without a restart.

In-process relatives, not repeated here: tests/integration/test_jwks_outage.py (each kind of
broken JWKS, ``max_stale``), tests/integration/test_introspection.py (each kind of failed
introspection), tests/integration/test_shared_cache.py (Redis hung, stopped, absent, restarted)
and tests/e2e/test_forwarding.py (502, 504, a body cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.e2e.process import GatewayProcess, gateway_process
from tests.e2e.wire import closed_port
from tests.integration.idp_fixture import (
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_SECRET,
    OpenIdProvider,
    start_provider,
)
from tests.integration.redis_fixture import RedisServer, start_redis
from tests.operations.support import sample, scrape
from tests.support import b64json, b64url, echo_upstream, write_config

if not sys.platform.startswith("linux"):
    pytest.skip("real processes on loopback, SIGSTOP", allow_module_level=True)

RESOURCE = "https://api.example.test/orders"
CLIENT_TIMEOUT = 15.0  # every request is answered well within this, or the test fails
SLOW = 10.0  # how long a slow component takes to answer
INTROSPECTION_TIMEOUT = 1.0
JWKS_FETCH_TIMEOUT = 5.0  # gateway/issuers.py FETCH_TIMEOUT
RECOVERY = 10.0  # the longest a recovery is waited for
POLL = 0.1
# Every connection of the test's own servers ends after this, whatever it is waiting for.
CONNECTION_LIFETIME = 60.0
MAX_CHUNKS = 100_000  # relayed per direction and connection, at most


# -- asking the gateway -------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no answer (the error says why)
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""


async def ask(
    http: aiohttp.ClientSession, url: str, token: str | None = None, path: str = "/orders/1"
) -> Answer:
    """One GET, bounded by CLIENT_TIMEOUT, read to its end."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    try:
        async with http.get(url + path, headers=headers) as response:
            await response.read()
            return Answer(response.status, time.monotonic() - started, dict(response.headers))
    except (aiohttp.ClientError, TimeoutError) as error:
        return Answer(None, time.monotonic() - started, error=type(error).__name__)


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT))


async def until(
    http: aiohttp.ClientSession, url: str, token: str | None, status: int, path: str = "/orders/1"
) -> tuple[float, list[Answer]]:
    """Ask every POLL seconds until the answer is ``status``; how long that took, and every
    answer on the way (fails after RECOVERY seconds)."""
    started = time.monotonic()
    seen: list[Answer] = []
    for _ in range(int(RECOVERY / POLL)):
        if time.monotonic() - started > RECOVERY:
            break
        seen.append(await ask(http, url, token, path))
        if seen[-1].status == status:
            return time.monotonic() - started, seen
        await asyncio.sleep(POLL)
    raise AssertionError(f"no {status} within {RECOVERY} s: {[a.status for a in seen][-10:]}")


def assert_unavailable(answer: Answer) -> None:
    """SPEC §4: the token cannot be checked now. 503 with Retry-After, never a challenge."""
    assert answer.status == 503, answer
    assert int(answer.headers["Retry-After"]) > 0
    assert "WWW-Authenticate" not in answer.headers


def forged_kid_token(issuer: str) -> str:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_hex(8)}
    now = int(time.time())
    claims = {"iss": issuer, "sub": "mallory", "aud": RESOURCE, "iat": now, "exp": now + 600}
    return f"{b64json(header)}.{b64json(claims)}.{b64url(secrets.token_bytes(256))}"


@pytest.fixture(scope="module")
def idp() -> Iterator[OpenIdProvider]:
    """A private provider: these tests rotate its keys."""
    with start_provider() as provider:
        yield provider


# -- the identity provider, behind a link the test controls --------------------------------------

GARBAGE = b"<html><body>Service temporarily unavailable (maintenance)</body></html>"


class IdpLink:
    """A TCP relay on a fixed loopback port in front of the real provider: all the gateway sees
    of its identity provider. Modes: ``up`` relays both ways; ``down`` listens no more (the
    port refuses connections); ``slow`` accepts and says nothing for SLOW seconds, then relays;
    ``garbage`` answers every request 200 with an HTML page. Changing the mode cuts the
    connections open, so the gateway's next call (pooled or not) meets the new mode."""

    def __init__(self, target: URL) -> None:
        assert target.host is not None and target.port is not None
        self.target = (target.host, target.port)
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "up"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def set(self, mode: str) -> None:
        assert mode in ("up", "down", "slow", "garbage"), mode
        if mode == "down" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "down" and self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
        self.mode = mode
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        await self.set("down")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            async with asyncio.timeout(CONNECTION_LIFETIME):
                await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "garbage":
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(GARBAGE), GARBAGE)
            )
            await writer.drain()
            return
        if self.mode == "slow":
            await asyncio.sleep(SLOW)
        await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_reader, to_writer = await asyncio.open_connection(*self.target)
        self._writers.add(to_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                for _ in range(MAX_CHUNKS):
                    if not (data := await source.read(65536)):
                        return
                    sink.write(data)
                    await sink.drain()

        try:
            # Either side closing ends the relayed connection (HTTP needs no half-close here).
            pipes = [
                asyncio.ensure_future(pipe(reader, to_writer)),
                asyncio.ensure_future(pipe(to_reader, writer)),
            ]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for other in pipes:
                other.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._writers.discard(to_writer)
            to_writer.close()


IDP_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
issuers:
  idp:
    issuer: {issuer}
    jwks_uri: {jwks_uri}
    audiences: [{resource}]
    jwks: {{refresh_interval: 500ms, min_refetch_interval: {min_refetch}, max_stale: {max_stale}}}
    introspection:
      endpoint: {introspection}
      client_id: {client_id}
      client_secret: {secret}
      timeout: {timeout}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth: {{scopes: [orders:read]}}
"""


@dataclass
class IdpStack:
    idp: OpenIdProvider
    gateway: GatewayProcess
    http: aiohttp.ClientSession
    link: IdpLink | None = None  # None: the gateway reaches the provider directly

    async def jwt(self) -> str:
        return await asyncio.to_thread(self.idp.token, RESOURCE, ["orders:read"])

    async def opaque(self) -> str:
        return await asyncio.to_thread(self.idp.opaque_token, ["orders:read"], resource=RESOURCE)

    async def ask(self, token: str | None) -> Answer:
        return await ask(self.http, self.gateway.url, token)

    async def cable(self, mode: str) -> None:
        """Put the link to the provider in ``mode`` (see :class:`IdpLink`)."""
        assert self.link is not None
        await self.link.set(mode)

    async def metric(self, name: str, **labels: str) -> float:
        return sample(await scrape(self.gateway.admin_url), name, **labels)


@asynccontextmanager
async def behind_link(
    idp: OpenIdProvider, directory: Path, *, max_stale: str, min_refetch: str
) -> AsyncIterator[IdpStack]:
    """A gateway process whose identity provider is ``idp``, reached only through a link."""
    link = IdpLink(URL(idp.issuer))
    await link.set("up")
    try:
        async with echo_upstream() as upstream:
            config = write_config(
                directory,
                IDP_CONFIG,
                issuer=idp.issuer,  # the provider's own name, in every token it signs
                jwks_uri=URL(idp.jwks_uri).with_port(link.port),
                introspection=URL(idp.introspection_endpoint).with_port(link.port),
                resource=RESOURCE,
                min_refetch=min_refetch,
                max_stale=max_stale,
                client_id=INTROSPECTOR_CLIENT,
                secret=INTROSPECTOR_SECRET,
                timeout=f"{int(INTROSPECTION_TIMEOUT * 1000)}ms",
                upstream=upstream.url,
            )
            async with (
                gateway_process(config, directory / "gateway.log") as gateway,
                client() as http,
            ):
                yield IdpStack(idp, gateway, http, link)
    finally:
        await link.close()


MAX_STALE = 3.0


async def test_an_unreachable_idp_keeps_loaded_keys_until_max_stale_then_503_and_recovers(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    async with behind_link(idp, tmp_path, max_stale="3s", min_refetch="30s") as stack:
        jwt, cached, fresh = await stack.jwt(), await stack.opaque(), await stack.opaque()
        pid = stack.gateway.pid
        assert (await stack.ask(jwt)).status == 200
        assert (await stack.ask(cached)).status == 200  # its answer is kept 5 minutes

        await stack.cable("down")
        cut = time.monotonic()
        # An opaque token never seen needs the authorization server: 503 at once.
        unseen = await stack.ask(fresh)
        assert_unavailable(unseen)
        assert unseen.seconds < INTROSPECTION_TIMEOUT + 0.5
        assert (await stack.ask(cached)).status == 200
        # The loaded keys serve JWTs until max_stale, then 503 (never 401: the token may be
        # good); bounded: 100 ms apart, at most MAX_STALE + 3 s.
        seen: list[tuple[float, Answer]] = []
        for _ in range(int((MAX_STALE + 3) / POLL)):
            if time.monotonic() - cut > MAX_STALE + 3:
                break
            seen.append((time.monotonic() - cut, await stack.ask(jwt)))
            if seen[-1][1].status == 503:
                break
            await asyncio.sleep(POLL)
        early = [a.status for after, a in seen if after < MAX_STALE - 1]
        assert len(early) >= 5 and set(early) == {200}
        assert_unavailable(seen[-1][1])
        assert seen[-1][0] > MAX_STALE - 1
        assert (await stack.ask(jwt)).seconds < 1.0  # refused at once, not after a fetch

        await stack.cable("up")
        recovered, on_the_way = await until(stack.http, stack.gateway.url, jwt, 200)
        assert {a.status for a in on_the_way} <= {200, 503}
        assert (await stack.ask(fresh)).status == 200  # a failed call was never cached
        assert stack.gateway.pid == pid and stack.gateway.process is not None
        assert stack.gateway.process.poll() is None
        errors = await stack.metric("gateway_jwks_fetches_total", result="error")
        assert errors >= 1
        print(
            f"\nIdP down: JWT 200 for {max(a for a, s in seen if s.status == 200):.1f} s, first "
            f"503 after {seen[-1][0]:.1f} s (max_stale {MAX_STALE:.0f} s), unseen opaque token "
            f"503 in {unseen.seconds * 1000:.0f} ms; back up: 200 after {recovered:.2f} s; "
            f"JWKS fetch errors counted: {errors:.0f}"
        )


async def test_a_slow_or_garbage_speaking_idp_costs_503s_within_the_timeouts_and_recovers(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    async with behind_link(idp, tmp_path, max_stale="1h", min_refetch="0s") as stack:
        jwt = await stack.jwt()
        opaque = [await stack.opaque() for _ in range(3)]
        assert (await stack.ask(jwt)).status == 200
        keys = await stack.metric("gateway_jwks_keys", issuer="idp")
        assert keys >= 1

        # Slow: the provider takes 10 s to say anything.
        await stack.cable("slow")
        known, unseen, forged = await asyncio.gather(
            stack.ask(jwt), stack.ask(opaque[0]), stack.ask(forged_kid_token(idp.issuer))
        )
        assert known.status == 200 and known.seconds < 1.0  # no request waits for a refresh
        assert_unavailable(unseen)
        assert INTROSPECTION_TIMEOUT - 0.1 < unseen.seconds < INTROSPECTION_TIMEOUT + 1.0
        # A kid the gateway does not know waits for one fetch at most, which times out; the
        # loaded keys are kept, so it is an unknown key. (aiohttp rounds a timeout of 5 s or
        # more up to a whole second of its clock: up to 6 s.)
        assert forged.status == 401
        assert forged.seconds < JWKS_FETCH_TIMEOUT + 2.0
        await stack.cable("up")
        assert (await stack.ask(opaque[0])).status == 200
        slow_answers = (known, unseen, forged)

        # Garbage: every answer is an HTML page with status 200.
        errors_before = await stack.metric("gateway_jwks_fetches_total", result="error")
        await stack.cable("garbage")
        forged = await stack.ask(forged_kid_token(idp.issuer))  # makes the gateway fetch
        assert forged.status == 401
        assert (await stack.ask(jwt)).status == 200  # the good keys were kept
        unseen = await stack.ask(opaque[1])
        assert_unavailable(unseen)
        assert await stack.metric("gateway_jwks_fetches_total", result="error") > errors_before
        assert await stack.metric("gateway_jwks_keys", issuer="idp") == keys
        assert await stack.metric("gateway_introspection_requests_total", result="error") >= 2

        # Back: unseen tokens are asked about again, and even a rotated key is picked up.
        await stack.cable("up")
        assert (await stack.ask(opaque[1])).status == 200
        assert (await stack.ask(opaque[2])).status == 200
        await asyncio.to_thread(idp.rotate)
        assert (await stack.ask(await stack.jwt())).status == 200
        assert stack.gateway.process is not None and stack.gateway.process.poll() is None
        print(
            "\nIdP slow: "
            + ", ".join(f"{a.status} in {a.seconds:.2f} s" for a in slow_answers)
            + " (known kid, unseen opaque, unknown kid)"
            + f"; garbage: unknown kid 401, unseen opaque 503 in {unseen.seconds * 1000:.0f} ms"
        )


# -- Redis paused, stopped, restarted -----------------------------------------------------------

REDIS_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
cache:
  redis: {{url: "{redis_url}", key_prefix: "gw:", timeout: 100ms}}
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    introspection:
      client_id: {client_id}
      client_secret: {secret}
      timeout: 2s
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth: {{scopes: [orders:read]}}
"""

REDIS_TIMEOUT = 0.1
REDIS_RETRY_AFTER = 5.0  # RedisCache.RETRY_AFTER: how long a failed Redis is left alone


@dataclass
class Traffic:
    """Steady requests of three kinds, each with the one status it must get."""

    answers: dict[str, list[Answer]] = field(
        default_factory=lambda: {"jwt": [], "opaque": [], "unknown": []}
    )

    def statuses(self) -> dict[str, Counter[int | None]]:
        return {kind: Counter(a.status for a in seen) for kind, seen in self.answers.items()}

    def slowest(self) -> float:
        return max((a.seconds for seen in self.answers.values() for a in seen), default=0.0)


async def steady_traffic(
    stack: IdpStack, tokens: dict[str, list[str]], seconds: float, traffic: Traffic
) -> None:
    """For ``seconds`` (and at most 2,000 rounds): a valid JWT, a valid opaque token (each used
    twice, so both cached and fresh answers), and a never-issued opaque token."""
    deadline = time.monotonic() + seconds
    for n in range(2000):
        if time.monotonic() > deadline:
            return
        jwt = tokens["jwt"][0]
        opaque = tokens["opaque"][(n // 2) % len(tokens["opaque"])]
        for kind, token in (("jwt", jwt), ("opaque", opaque), ("unknown", secrets.token_hex(24))):
            traffic.answers[kind].append(await stack.ask(token))
        await asyncio.sleep(0.02)


async def test_redis_paused_stopped_and_restarted_never_costs_a_5xx_and_is_used_again(
    idp: OpenIdProvider, tmp_path: Path
) -> None:
    redis = await asyncio.to_thread(start_redis)
    try:
        async with echo_upstream() as upstream:
            config = write_config(
                tmp_path,
                REDIS_CONFIG,
                redis_url=redis.url,
                issuer=idp.issuer,
                resource=RESOURCE,
                client_id=INTROSPECTOR_CLIENT,
                secret=INTROSPECTOR_SECRET,
                upstream=upstream.url,
            )
            async with (
                gateway_process(config, tmp_path / "gateway.log") as gateway,
                client() as http,
            ):
                await redis_outages(IdpStack(idp, gateway, http), redis)
    finally:
        await asyncio.to_thread(redis.stop)


async def redis_outages(stack: IdpStack, redis: RedisServer) -> None:
    """Stopped (refusing), back, paused (hung), back: each outage starts when the gateway is
    using Redis, so that it really meets it."""
    tokens = {"jwt": [await stack.jwt()], "opaque": [await stack.opaque() for _ in range(40)]}
    phases: dict[str, Traffic] = {}
    recoveries: dict[str, float] = {}

    async def phase(name: str, seconds: float) -> Traffic:
        phases[name] = Traffic()
        await steady_traffic(stack, tokens, seconds, phases[name])
        return phases[name]

    async def redis_keys() -> int:
        return int(await asyncio.to_thread(redis.command, "DBSIZE"))

    async def used_again(name: str) -> None:
        """Traffic until new entries appear in Redis (after the back-off), bounded."""
        await asyncio.sleep(0.3)  # what a resumed Redis had queued lands first
        baseline = await redis_keys()
        phases[name] = traffic = Traffic()
        started = time.monotonic()
        for _ in range(200):
            if await redis_keys() > baseline:
                recoveries[name] = time.monotonic() - started
                return
            assert time.monotonic() - started < REDIS_RETRY_AFTER + RECOVERY, name
            await steady_traffic(stack, tokens, 0.2, traffic)
        raise AssertionError(f"Redis never used again ({name})")

    await phase("up", 1.0)
    assert await redis_keys() > 0

    await asyncio.to_thread(redis.stop)  # connections refused
    await phase("stopped", 1.5)
    await asyncio.to_thread(redis.restart)  # a new, empty server on the same port
    await used_again("restarted")

    await asyncio.to_thread(redis.pause)  # accepts connections, answers nothing
    try:
        paused = await phase("paused", 1.5)
    finally:
        await asyncio.to_thread(redis.resume)
    # One request may wait for Redis's timeout; then Redis is left alone for a while.
    assert paused.slowest() < REDIS_TIMEOUT + 1.0
    await used_again("resumed")

    for name, traffic in phases.items():
        statuses = traffic.statuses()
        assert set(statuses["jwt"]) == {200}, (name, statuses)
        assert set(statuses["opaque"]) == {200}, (name, statuses)
        # Never a 200: an answer mixed up between tokens after Redis came back would show here.
        assert set(statuses["unknown"]) == {401}, (name, statuses)
    events = [e["event"] for e in stack.gateway.events() if e["event"].startswith("redis_")]
    assert events == ["redis_unavailable", "redis_available"] * 2
    assert stack.gateway.process is not None and stack.gateway.process.poll() is None
    print(
        "\nRedis: "
        + "; ".join(
            f"{name}: {sum(len(v) for v in t.answers.values())} requests, "
            f"{ {k: dict(c) for k, c in t.statuses().items()} }, "
            f"slowest {t.slowest() * 1000:.0f} ms"
            for name, t in phases.items()
        )
        + f"; used again after {', '.join(f'{k} {v:.1f} s' for k, v in recoveries.items())}"
    )


# -- the upstream refusing, resetting, slow -----------------------------------------------------

UPSTREAM_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
upstreams:
  backend: {{url: "http://127.0.0.1:{port}", connect_timeout: 1s, timeout: {timeout}}}
routes:
  - name: open
    match: {{path: /open/**}}
    upstream: backend
    auth: public
"""

UPSTREAM_TIMEOUT = 1.0
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Backend:
    """An upstream on a fixed loopback port whose behaviour the test switches, per request
    (pooled keep-alive connections too): ``refusing`` (nothing listens), ``good``,
    ``reset_before_headers``, ``reset_mid_body``, ``slow`` (answers after SLOW seconds)."""

    def __init__(self) -> None:
        self.port = closed_port()
        self.mode = "refusing"
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def set(self, mode: str) -> None:
        if mode == "refusing":
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                writer.transport.abort()
        elif self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )
        self.mode = mode

    async def close(self) -> None:
        await self.set("refusing")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            async with asyncio.timeout(CONNECTION_LIFETIME):
                await self._answer(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(10_000):  # keep-alive: one request after another
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.mode == "reset_before_headers":
                rst(writer)
                return
            if self.mode == "reset_mid_body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
                await writer.drain()
                rst(writer)
                return
            if self.mode == "slow":
                await asyncio.sleep(SLOW)
            writer.write(OK)
            await writer.drain()


async def test_an_upstream_refusing_resetting_or_slow_gets_502_a_cut_or_504_and_recovers(
    tmp_path: Path,
) -> None:
    backend = Backend()
    config = write_config(
        tmp_path, UPSTREAM_CONFIG, port=backend.port, timeout=f"{UPSTREAM_TIMEOUT:.0f}s"
    )
    try:
        async with gateway_process(config, tmp_path / "gateway.log") as gateway, client() as http:
            pid = gateway.pid
            seen: list[tuple[str, Answer]] = []

            async def expect(mode: str, status: int | None, times: int = 3) -> list[Answer]:
                await backend.set(mode)
                answers = [await ask(http, gateway.url, path="/open/x") for _ in range(times)]
                seen.extend((mode, a) for a in answers)
                assert [a.status for a in answers] == [status] * times, (mode, answers)
                return answers

            refused = await expect("refusing", 502)
            assert max(a.seconds for a in refused) < 1.0
            await expect("good", 200)  # listening again: no restart needed
            await expect("reset_before_headers", 502)
            await expect("good", 200, times=5)  # the pool holds no broken connection
            cut = await expect("reset_mid_body", None)
            # The head (200) was on its way: the only honest signal left is a cut connection.
            assert {a.error for a in cut} == {"ClientPayloadError"}
            await expect("good", 200, times=5)
            slow = await expect("slow", 504, times=2)
            assert all(UPSTREAM_TIMEOUT - 0.1 < a.seconds < UPSTREAM_TIMEOUT + 1.0 for a in slow)
            await expect("good", 200, times=5)
            await expect("refusing", 502)
            await expect("good", 200)
            assert gateway.pid == pid and gateway.process is not None
            assert gateway.process.poll() is None
            summary = Counter((mode, a.status or a.error) for mode, a in seen)
            print(
                f"\nupstream: {dict(summary)}; refused in <= "
                f"{max(a.seconds for a in refused) * 1000:.0f} ms, "
                f"504 after {min(a.seconds for a in slow):.2f}-{max(a.seconds for a in slow):.2f} s"
            )
    finally:
        await backend.close()
