"""The pooled upstream client: one keep-alive connection pool per upstream, bounded.

When every connection of an upstream is busy a request waits up to ``connect_timeout`` for one,
then is refused with 503 (SPEC §3 ``max_connections``): queueing without bound would only turn a
slow backend into an outage of the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp

from .target import UpstreamTarget


class UpstreamBusy(Exception):
    """No connection to the upstream became free within its ``connect_timeout``."""


class UpstreamPool:
    """The client session and concurrency limit of one upstream."""

    def __init__(self, target: UpstreamTarget) -> None:
        self.target = target
        self._slots = asyncio.Semaphore(target.max_connections)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
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

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the upstream's connections for the length of a request."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.target.connect_timeout)
        except TimeoutError:
            raise UpstreamBusy(self.target.name) from None
        try:
            yield
        finally:
            self._slots.release()

    async def close(self) -> None:
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
