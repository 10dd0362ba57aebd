"""An upstream that breaks the exchange: it closes or resets early, sends less than it declared,
speaks something that is not HTTP/1.1, switches protocols unasked, or sends bytes no request
asked for. Each ends in ``UpstreamError`` (never a short body taken as complete), and a
connection that saw one is never used again."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream.client import UpstreamPool
from gateway.upstream.http1 import MAX_HEAD_BYTES, UpstreamError
from tests.e2e.wire import (
    ConnectionHandler,
    TcpUpstream,
    closed_port,
    read_request_head,
    reset,
    tcp_upstream,
)

from .support import WAIT, answering, exchange, keep_answering, pool_to, read_body, request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def refused(pool: UpstreamPool) -> None:
    """The exchange fails with UpstreamError, and its connection is not kept."""
    with pytest.raises(UpstreamError):
        await exchange(pool)
    assert pool.idle == 0


async def test_an_upstream_refusing_the_connection_raises_os_error() -> None:
    async with pool_to(f"http://127.0.0.1:{closed_port()}") as pool, pool.slot():
        with pytest.raises(OSError):
            await pool.connect()
        assert pool.opened == 0


async def test_an_upstream_closing_before_the_status_line_is_an_error() -> None:
    async with tcp_upstream(answering(b"", close=True)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_an_upstream_closing_inside_the_head_is_an_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Type: text/pl"
    async with tcp_upstream(answering(cut, close=True)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_a_body_shorter_than_its_content_length_is_an_error_not_a_short_body() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    async with (
        tcp_upstream(answering(short, close=True)) as upstream,
        pool_to(upstream.url) as pool,
    ):
        await refused(pool)


async def test_a_chunked_body_cut_before_its_last_chunk_is_an_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    async with tcp_upstream(answering(cut, close=True)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_a_chunked_body_cut_inside_its_trailers_is_an_error() -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n"
    async with tcp_upstream(answering(cut, close=True)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


def filler_fields(count: int) -> bytes:
    """``count`` header lines of 1,011 bytes of name and value each (CRLF not counted)."""
    return b"".join(b"X-Fill-%04d: %b\r\n" % (n, b"a" * 1000) for n in range(count))


async def test_an_answer_head_larger_than_the_limit_is_an_error() -> None:
    # 70 x 1,011 bytes: over MAX_HEAD_BYTES (64 KiB) of names and values.
    head = b"HTTP/1.1 200 OK\r\n" + filler_fields(70) + b"Content-Length: 2\r\n\r\nok"
    assert MAX_HEAD_BYTES < 70 * 1011
    async with tcp_upstream(answering(head)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_an_answer_head_within_the_limit_is_read_whole() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + filler_fields(60) + b"Content-Length: 2\r\n\r\nok"
    async with tcp_upstream(answering(head)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
    assert answer.body == b"ok"
    assert len(answer.headers) == 61


async def test_trailer_fields_larger_than_the_head_limit_are_an_error() -> None:
    # Trailer fields are dropped, but they count against the same limit as the head's: an
    # upstream cannot make the gateway take in header lines without end after a body either.
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        + filler_fields(70)
        + b"\r\n"
    )
    async with tcp_upstream(answering(answer)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


def resetting_after(head: bytes, first: bytes, first_read: asyncio.Event) -> ConnectionHandler:
    """Answers with ``head`` and ``first``, waits until the client has read some of it, then
    resets the connection (a TCP RST, not a FIN)."""

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(head + first)
        await writer.drain()
        await asyncio.wait_for(first_read.wait(), WAIT)
        reset(writer)

    return on_connection


async def assert_reset_mid_body_is_an_error(head: bytes, first: bytes) -> None:
    first_read = asyncio.Event()
    handler = resetting_after(head, first, first_read)
    async with tcp_upstream(handler) as upstream, pool_to(upstream.url) as pool:
        connection = await pool.connect()
        try:
            async with asyncio.timeout(WAIT):
                connection.begin(request_head(pool), no_body=False)
                await connection.response()
                assert await connection.read()  # some of the body came before the reset
                first_read.set()
                with pytest.raises(UpstreamError):
                    await read_body(connection)
        finally:
            pool.release(connection)
        assert pool.idle == 0


async def test_a_reset_in_the_middle_of_a_body_with_a_length_is_an_error() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    await assert_reset_mid_body_is_an_error(head, b"x" * 10_000)


async def test_a_reset_in_the_middle_of_a_chunked_body_is_an_error() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    await assert_reset_mid_body_is_an_error(head, b"2710\r\n" + b"x" * 10_000 + b"\r\n")


async def test_a_reset_in_the_middle_of_a_body_without_a_length_is_an_error() -> None:
    # Only a clean close (FIN) ends such a body (RFC 9112 §6.3 item 8); a reset is a failure.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    await assert_reset_mid_body_is_an_error(head, b"x" * 10_000)


@pytest.mark.parametrize(
    "status_line",
    [
        b"garbage",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 OK",
        b"HTTP/1.2 200 OK",
        b"HTTP/3.0 200 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 000 Zero",
        b"HTTP/2.0 200 OK",
        b"HTTP/0.9 200 OK",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello: wrong port
    ],
)
async def test_an_invalid_status_line_is_an_error(status_line: bytes) -> None:
    answer = status_line + b"\r\nContent-Length: 2\r\n\r\nok"
    async with tcp_upstream(answering(answer)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n",
        b"HTTP/1.1 200 OK\r\nX: folded\r\n value\r\nContent-Length: 2\r\n",
    ],
)
async def test_an_invalid_answer_head_is_an_error(head: bytes) -> None:
    async with (
        tcp_upstream(answering(head + b"\r\nok")) as upstream,
        pool_to(upstream.url) as pool,
    ):
        await refused(pool)


async def test_an_invalid_chunk_size_is_an_error() -> None:
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    async with tcp_upstream(answering(bad)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_an_unsolicited_101_switching_protocols_is_an_error() -> None:
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with tcp_upstream(answering(switching)) as upstream, pool_to(upstream.url) as pool:
        await refused(pool)


async def test_bytes_arriving_while_a_connection_is_idle_keep_it_from_being_reused() -> None:
    async def answer_then_chatter(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(OK)
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
        await asyncio.wait_for(reader.read(), WAIT)

    async with (
        tcp_upstream(answer_then_chatter) as upstream,
        pool_to(upstream.url) as pool,
    ):
        assert (await exchange(pool)).body == b"ok"
        await asyncio.sleep(0.2)
        assert (await exchange(pool)).body == b"ok"
        assert pool.opened == 2


async def test_a_second_answer_sent_along_with_the_first_is_not_part_of_its_body() -> None:
    both = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    async with tcp_upstream(keep_answering(both)) as upstream, pool_to(upstream.url) as pool:
        assert (await exchange(pool)).body == b"ok"


async def test_a_second_answer_sent_along_with_the_first_keeps_the_connection_from_reuse() -> None:
    both = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with tcp_upstream(keep_answering(both)) as upstream, pool_to(upstream.url) as pool:
        await exchange(pool)
        assert pool.idle == 0


async def test_stray_bytes_after_a_complete_answer_keep_the_connection_from_reuse() -> None:
    async with (
        tcp_upstream(keep_answering(OK + b"HTTP/1.1 2")) as upstream,
        pool_to(upstream.url) as pool,
    ):
        assert (await exchange(pool)).body == b"ok"
        assert pool.idle == 0
