"""What the client of ``forward()`` sees when the upstream fails: 502 or 504 before the status
line is sent on, and after it a cut connection, never a complete-looking short body."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.wire import (
    ConnectionHandler,
    TcpUpstream,
    raw_request,
    read_request_head,
    reset,
    tcp_upstream,
)

from .support import WAIT, answering, front, pool_to


def answering_then_stalling(first: bytes) -> ConnectionHandler:
    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(first)
        await asyncio.wait_for(reader.read(), WAIT)

    return on_connection


def answering_then_resetting(first: bytes) -> ConnectionHandler:
    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.1)
        reset(writer)

    return on_connection


async def fetch(url: str) -> tuple[int, bytes | aiohttp.ClientPayloadError]:
    """Status and body, or the payload error of a body that was cut."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        try:
            return response.status, await response.read()
        except aiohttp.ClientPayloadError as cut:
            return response.status, cut


async def through_front(handler: ConnectionHandler, *, timeout: float = WAIT) -> tuple[int, object]:
    async with (
        tcp_upstream(handler) as upstream,
        pool_to(upstream.url, timeout=timeout) as pool,
        front(pool) as url,
    ):
        return await fetch(url + "/")


async def test_an_upstream_that_never_answers_is_answered_504() -> None:
    status, _ = await through_front(answering_then_stalling(b""), timeout=0.3)
    assert status == 504


async def test_an_upstream_that_stalls_inside_the_head_is_answered_504() -> None:
    status, _ = await through_front(answering_then_stalling(b"HTTP/1.1 200 OK\r\nX-A"), timeout=0.3)
    assert status == 504


async def test_an_upstream_closing_without_an_answer_is_answered_502() -> None:
    status, _ = await through_front(answering(b"", close=True))
    assert status == 502


async def test_an_invalid_answer_is_answered_502() -> None:
    status, _ = await through_front(answering(b"HTTP/1.1 2000 OK\r\n\r\n"))
    assert status == 502


async def test_a_status_code_below_100_is_answered_502() -> None:
    # An upstream's "099" must not become the gateway's own (invalid) status line.
    low = b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok"
    async with (
        tcp_upstream(answering(low)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        answer = await raw_request(url, "/")
        assert answer.status == 502


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
        b"HTTP/1.1 200 OK\r\n\r\npartial",
    ],
    ids=["length", "chunked", "until-close"],
)
async def test_a_deadline_passing_mid_body_cuts_the_clients_response(first: bytes) -> None:
    status, body = await through_front(answering_then_stalling(first), timeout=0.3)
    assert status == 200
    assert isinstance(body, aiohttp.ClientPayloadError), body


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
        b"HTTP/1.1 200 OK\r\n\r\npartial",
    ],
    ids=["length", "chunked", "until-close"],
)
async def test_a_reset_mid_body_cuts_the_clients_response(first: bytes) -> None:
    status, body = await through_front(answering_then_resetting(first))
    assert status == 200
    assert isinstance(body, aiohttp.ClientPayloadError), body


async def test_a_body_without_a_length_ended_by_a_close_reaches_the_client_whole() -> None:
    status, body = await through_front(answering(b"HTTP/1.1 200 OK\r\n\r\nwhole", close=True))
    assert (status, body) == (200, b"whole")
