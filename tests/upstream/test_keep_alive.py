"""When a connection to the upstream carries another exchange, and when it must not: reuse,
``Connection: close`` and HTTP/1.0 answers, idle expiry, and an upstream that closes first."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tests.e2e.wire import (
    ConnectionHandler,
    TcpUpstream,
    http_upstream,
    read_request_head,
    tcp_upstream,
)

from .support import WAIT, answering, exchange, front, keep_answering, pool_to

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def hello(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="hello")


async def test_sequential_requests_travel_on_one_connection() -> None:
    async with http_upstream(hello) as upstream, pool_to(upstream.url) as pool:
        for _ in range(5):
            answer = await exchange(pool)
            assert (answer.status, answer.body) == (200, b"hello")
        assert pool.opened == 1
        assert upstream.connections == 1


async def test_a_connection_whose_answer_said_connection_close_is_not_reused() -> None:
    async def closing(request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(text="bye")
        response.force_close()
        return response

    async with http_upstream(closing) as upstream, pool_to(upstream.url) as pool:
        assert (await exchange(pool)).body == b"bye"
        assert pool.idle == 0
        assert (await exchange(pool)).body == b"bye"
        assert pool.opened == 2


async def test_a_connection_whose_answer_was_http_1_0_is_not_reused() -> None:
    http_1_0 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with tcp_upstream(keep_answering(http_1_0)) as upstream, pool_to(upstream.url) as pool:
        assert (await exchange(pool)).body == b"ok"
        assert pool.idle == 0
        assert (await exchange(pool)).body == b"ok"
        assert pool.opened == 2


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    closed = asyncio.Event()

    async def answer_then_see_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(OK)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        closed.set()

    async with (
        tcp_upstream(answer_then_see_close) as upstream,
        pool_to(upstream.url, idle_timeout=0.2) as pool,
    ):
        loop = asyncio.get_running_loop()
        await exchange(pool)
        released = loop.time()
        assert pool.idle == 1
        await asyncio.wait_for(closed.wait(), WAIT)
        assert loop.time() - released >= 0.15
        assert pool.idle == 0


async def test_a_request_after_the_idle_timeout_opens_a_new_connection() -> None:
    async with (
        tcp_upstream(keep_answering(OK)) as upstream,
        pool_to(upstream.url, idle_timeout=0.2) as pool,
    ):
        await exchange(pool)
        await asyncio.sleep(0.5)
        assert (await exchange(pool)).body == b"ok"
        assert pool.opened == 2


async def test_an_idle_connection_the_upstream_closed_is_replaced_by_a_new_one() -> None:
    async with tcp_upstream(answering(OK, close=True)) as upstream, pool_to(upstream.url) as pool:
        await exchange(pool)
        await asyncio.sleep(0.1)  # the upstream's FIN arrives while the connection is idle
        assert (await exchange(pool)).body == b"ok"
        assert pool.opened == 2


def closing_the_first_connection_on_its_second_request(second_answer: bytes) -> ConnectionHandler:
    """Connection 1 answers one request, then reads the next and writes ``second_answer``
    before closing (a keep-alive race lost); later connections answer every request."""
    connections = 0

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            await keep_answering(OK)(reader, writer, upstream)
            return
        upstream.requests.append(await read_request_head(reader))
        writer.write(OK)
        upstream.requests.append(await read_request_head(reader))
        writer.write(second_answer)
        await writer.drain()

    return on_connection


async def get(url: str) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        return response.status, await response.read()


async def test_a_reused_connection_closed_before_answering_is_retried_on_a_new_one() -> None:
    handler = closing_the_first_connection_on_its_second_request(b"")
    async with (
        tcp_upstream(handler) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        assert await get(url + "/a") == (200, b"ok")
        assert await get(url + "/b") == (200, b"ok")
        assert len(upstream.requests) == 3
        assert pool.opened == 2


async def test_a_reused_connection_closed_after_it_began_to_answer_is_not_retried() -> None:
    handler = closing_the_first_connection_on_its_second_request(b"HTTP/1.1 200 OK\r\nContent-")
    async with (
        tcp_upstream(handler) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        assert await get(url + "/a") == (200, b"ok")
        status, _ = await get(url + "/b")
        assert status == 502
        assert len(upstream.requests) == 2
        assert pool.opened == 1
