"""The pooled upstream client: one keep-alive connection pool per upstream, bounded.

When every connection of an upstream is busy a request waits up to ``connect_timeout`` for one,
then is refused with 503 (SPEC §3 ``max_connections``): queueing without bound would only turn a
slow backend into an outage of the gateway.

Plain requests travel on the gateway's own HTTP/1.1 connections (``http1``); WebSocket
handshakes go through an aiohttp ``ClientSession``, made only when a route first needs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Mapping

import aiohttp

from .http1 import Http1Connection
from .target import UpstreamTarget

# An idle keep-alive connection is closed after this long (nginx's default keepalive_timeout is
# 75 s, many frameworks use 5 s: an upstream closing first is handled, see ``connect``).
IDLE_TIMEOUT = 15.0


class UpstreamBusy(Exception):
    """No connection to the upstream became free within its ``connect_timeout``."""


class Deadline:
    """An exchange's upstream ``timeout``: once it passes, the exchange's connection is
    aborted (and ``expired`` tells a 504 from a 502). Watched by its pool's clock."""

    __slots__ = ("connection", "expired", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.connection: Http1Connection | None = None
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        if self.connection is not None:
            self.connection.abort()

    def watch(self, connection: Http1Connection) -> Http1Connection:
        """Abort ``connection`` when the time is up (at once if it already is)."""
        self.connection = connection
        if self.expired:
            connection.abort()
        return connection


class Slot:
    """One of an upstream's connections held for the length of an ``async with`` block.
    (A class rather than ``contextlib.asynccontextmanager``: this module is compiled, and
    mypyc compiles no async generator.)"""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    async def __aenter__(self) -> None:
        await self._pool.take_slot()

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool.free_slot()


class UpstreamPool:
    """The connections and concurrency limit of one upstream."""

    def __init__(self, target: UpstreamTarget, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.target = target
        self.idle_timeout = idle_timeout
        self._free = target.max_connections  # slots not taken
        self._waiting: deque[asyncio.Future[None]] = deque()  # for a slot, first come first
        self._idle: list[Http1Connection] = []  # most recently used last
        self._sweep: asyncio.TimerHandle | None = None
        # Deadlines of exchanges in progress, checked by one clock a pool rather than a timer
        # made and cancelled per request; it ticks only while some are pending, at a tenth of
        # the timeout (at most 0.1 s): a deadline passes at most that late.
        self._deadlines: set[Deadline] = set()
        self._clock: asyncio.TimerHandle | None = None
        # Deadlines and idle stamps are read on time.monotonic(), not the loop's clock: on
        # Python 3.11 each look-up of the running loop is a getpid() system call, and a request
        # made two. The loop is looked up only to start a timer, once a tick at most.
        self._tick = min(0.1, target.timeout / 10)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        host = f"[{target.host}]" if ":" in target.host else target.host
        port = "" if target.port == (443 if target.scheme == "https" else 80) else f":{target.port}"
        self.host = f"{host}{port}"  # the Host the upstream sees unless preserve_host
        self.opened = 0  # connections made, for tests and metrics
        # https upstreams: the system's trust store, the name in the URL verified.
        self._tls = ssl.create_default_context() if target.scheme == "https" else None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session for WebSocket handshakes."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.target.max_connections,
                limit_per_host=self.target.max_connections,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # bodies pass through byte for byte
                cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=self.target.timeout,
                    sock_connect=self.target.connect_timeout,
                ),
            )
        return self._session

    def slot(self) -> Slot:
        """Hold one of the upstream's connections for the length of a request
        (``async with pool.slot():``)."""
        return Slot(self)

    def take_free_slot(self) -> bool:
        """Take a slot if one is free with nobody waiting (no coroutine: the common case)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return True
        return False

    async def take_slot(self) -> None:
        """``slot()`` without a context manager (the forwarder's hot path): pair each call
        that returns with one ``free_slot()``. (A counter rather than asyncio.Semaphore,
        whose ``locked()`` alone cost more than the rest of this.)"""
        if self.take_free_slot():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.target.connect_timeout)
        except TimeoutError:
            raise UpstreamBusy(self.target.name) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.free_slot()  # handed over as this request gave up: pass it on
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def free_slot(self) -> None:
        """Give a slot back: to the longest waiting request, if any still waits."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def reuse(self) -> Http1Connection | None:
        """An idle pooled connection still usable, if there is one (within a slot)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
        return None

    async def connect(self, *, fresh: bool = False) -> Http1Connection:
        """An idle pooled connection, or a new one (``fresh``: always a new one).

        Call within ``slot()``. Raises TimeoutError past ``connect_timeout``, OSError when the
        upstream refuses."""
        if not fresh and (connection := self.reuse()) is not None:
            return connection
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.target.connect_timeout):
            _, connection = await loop.create_connection(
                Http1Connection,
                self.target.host,
                self.target.port,
                ssl=self._tls,
                server_hostname=self.target.host if self._tls else None,
            )
        self.opened += 1
        return connection

    def deadline(self) -> Deadline:
        """The deadline of an exchange starting now; pair with ``forget()``."""
        deadline = Deadline(time.monotonic() + self.target.timeout)
        self._deadlines.add(deadline)
        if self._clock is None:
            self._clock = asyncio.get_running_loop().call_later(self._tick, self._check_deadlines)
        return deadline

    def forget(self, deadline: Deadline) -> None:
        self._deadlines.discard(deadline)

    def _check_deadlines(self) -> None:
        self._clock = None
        now = time.monotonic()
        for deadline in [d for d in self._deadlines if d.when <= now]:
            self._deadlines.discard(deadline)
            deadline.expire()
        if self._deadlines:
            self._clock = asyncio.get_running_loop().call_later(self._tick, self._check_deadlines)

    def release(self, connection: Http1Connection) -> None:
        """Return a connection after its exchange; kept only if it can carry another one."""
        if not connection.finish() or self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire)

    def _expire(self) -> None:
        """Close connections idle for ``idle_timeout``; runs while any are idle."""
        self._sweep = None
        now = time.monotonic()
        cutoff = now - self.idle_timeout
        keep: list[Http1Connection] = []
        for connection in self._idle:
            if connection.idle_since <= cutoff or not connection.usable:
                connection.close()
            else:
                keep.append(connection)
        self._idle = keep
        if keep:
            wait = keep[0].idle_since + self.idle_timeout - now
            self._sweep = asyncio.get_running_loop().call_later(max(wait, 0.01), self._expire)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        self._closed = True
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        if self._session is not None:
            await self._session.close()


class UpstreamClients:
    """Every upstream's pool, created once per configuration."""

    def __init__(self, targets: Mapping[str, UpstreamTarget]) -> None:
        self._pools: dict[str, UpstreamPool] = {}
        for target in targets.values():
            self._pools.setdefault(target.name, UpstreamPool(target))

    def pool(self, target: UpstreamTarget) -> UpstreamPool:
        return self._pools[target.name]

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))
