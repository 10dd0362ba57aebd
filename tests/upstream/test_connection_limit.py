"""``max_connections``: a request finding every connection busy waits up to ``connect_timeout``
for one, then is refused (SPEC §3), instead of queueing without bound."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from gateway.upstream.client import UpstreamBusy
from tests.e2e.wire import Handler, http_upstream

from .support import WAIT, exchange, front, pool_to


def held_until(release: asyncio.Event) -> Handler:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), WAIT)
        return web.Response(text="done")

    return handler


async def test_with_every_slot_busy_a_request_waits_connect_timeout_then_is_refused() -> None:
    release = asyncio.Event()
    async with (
        http_upstream(held_until(release)) as upstream,
        pool_to(upstream.url, max_connections=2, connect_timeout=0.3) as pool,
    ):
        busy = [asyncio.create_task(exchange(pool)) for _ in range(2)]
        for _ in range(100):  # both exchanges reach the upstream
            if len(upstream.peers) == 2:
                break
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamBusy):
            await exchange(pool)
        assert 0.25 <= loop.time() - started < 2.0
        release.set()
        assert [answer.body for answer in await asyncio.gather(*busy)] == [b"done", b"done"]
        assert pool.opened == 2


async def test_a_slot_freed_within_connect_timeout_is_taken_by_the_waiting_request() -> None:
    release = asyncio.Event()
    async with (
        http_upstream(held_until(release)) as upstream,
        pool_to(upstream.url, max_connections=1, connect_timeout=WAIT) as pool,
    ):
        first = asyncio.create_task(exchange(pool))
        waiting = asyncio.create_task(exchange(pool))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        release.set()
        assert (await first).body == b"done"
        assert (await waiting).body == b"done"
        assert pool.opened == 1  # the waiting request inherited the released connection


async def test_forward_answers_503_with_retry_after_when_the_upstream_is_busy() -> None:
    release = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        http_upstream(held_until(release)) as upstream,
        pool_to(upstream.url, max_connections=1, connect_timeout=0.2) as pool,
        front(pool) as url,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        busy = asyncio.create_task(exchange(pool))
        for _ in range(100):
            if upstream.peers:
                break
            await asyncio.sleep(0.01)
        async with http.get(url + "/x") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
        release.set()
        assert (await busy).body == b"done"


async def test_requests_that_give_up_waiting_leave_every_slot_to_later_ones() -> None:
    # Waiters refused at connect_timeout, or cancelled (their client went away), must neither
    # keep a slot nor be handed one that is then lost.
    release = asyncio.Event()
    async with (
        http_upstream(held_until(release)) as upstream,
        pool_to(upstream.url, max_connections=2, connect_timeout=0.2) as pool,
    ):
        busy = [asyncio.create_task(exchange(pool)) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = [asyncio.create_task(exchange(pool)) for _ in range(3)]
        cancelled = [asyncio.create_task(exchange(pool)) for _ in range(3)]
        await asyncio.sleep(0.05)
        for task in cancelled:
            task.cancel()
        for task in refused:
            with pytest.raises(UpstreamBusy):
                await task
        release.set()
        await asyncio.gather(*busy)
        await asyncio.gather(*cancelled, return_exceptions=True)
        # Both slots are free again: two requests at once get through without waiting.
        answers = await asyncio.wait_for(asyncio.gather(exchange(pool), exchange(pool)), 0.15)
        assert [answer.body for answer in answers] == [b"done", b"done"]
