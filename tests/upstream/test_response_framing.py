"""How the client finds where an upstream's answer ends (RFC 9112 §6.3): by length, by chunks,
by the connection's close, or not at all (204, 304, HEAD); interim answers skipped; a large body
read in pieces, with reading paused while the reader is behind."""

from __future__ import annotations

import asyncio
import hashlib
import os

from aiohttp import web

from gateway.upstream.http1 import READ_HIGH_WATER
from tests.e2e.wire import (
    TcpUpstream,
    http_upstream,
    raw_request,
    read_request_head,
    tcp_upstream,
)

from .support import WAIT, answering, exchange, front, keep_answering, pool_to, request_head

PAYLOAD = os.urandom(100_000)


async def test_a_body_with_a_content_length_is_read_to_that_length() -> None:
    async def payload(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=PAYLOAD)

    async with http_upstream(payload) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert (b"Content-Length", b"100000") in answer.headers
        assert answer.body == PAYLOAD
        assert (await exchange(pool)).body == PAYLOAD
        assert pool.opened == 1


async def test_a_chunked_body_from_a_real_server_is_read_whole() -> None:
    async def streamed(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(PAYLOAD), 7000):
            await response.write(PAYLOAD[start : start + 7000])
        await response.write_eof()
        return response

    async with http_upstream(streamed) as upstream, pool_to(upstream.url) as pool:
        assert (await exchange(pool)).body == PAYLOAD
        assert (await exchange(pool)).body == PAYLOAD
        assert pool.opened == 1


async def test_a_chunked_body_with_extensions_and_trailers_is_read_and_the_connection_kept() -> (
    None
):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b'1;quoted="a b";flag\r\n \r\n'
        b"A\r\n0123456789\r\n"
        b"0;last=1\r\nChecksum: abc\r\nX-Trailer: yes\r\n\r\n"
    )
    async with tcp_upstream(keep_answering(chunked)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert answer.body == b"hello 0123456789"
        assert (await exchange(pool)).body == b"hello 0123456789"
        assert pool.opened == 1


TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\nSet-Cookie: session=forged\r\nX-Trailer: yes\r\n\r\n"
)


async def test_trailer_fields_are_not_taken_as_header_fields() -> None:
    # RFC 9110 §6.5.1: a trailer is not merged into the header section unasked.
    async with tcp_upstream(keep_answering(TRAILERS)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert answer.body == b"ok"
        assert answer.headers == [(b"Transfer-Encoding", b"chunked")]


async def test_trailer_fields_do_not_reach_the_client_as_headers() -> None:
    async with (
        tcp_upstream(keep_answering(TRAILERS)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        answer = await raw_request(url, "/")
        assert answer.body == b"ok"
        assert "Set-Cookie" not in answer.headers
        assert "X-Trailer" not in answer.headers


async def test_a_body_without_a_length_ends_when_the_upstream_closes() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PAYLOAD
    async with (
        tcp_upstream(answering(until_close, close=True)) as upstream,
        pool_to(upstream.url) as pool,
    ):
        assert (await exchange(pool)).body == PAYLOAD
        assert pool.idle == 0


async def test_a_204_answer_has_no_body_and_keeps_the_connection() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    async with tcp_upstream(keep_answering(no_content)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert (answer.status, answer.body) == (204, b"")
        assert (await exchange(pool)).status == 204
        assert pool.opened == 1


async def test_a_304_answer_has_no_body_even_with_a_content_length() -> None:
    # RFC 9110 §8.6: a 304's Content-Length is the length the 200 would have had.
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 100\r\n\r\n'
    async with (
        tcp_upstream(keep_answering(not_modified)) as upstream,
        pool_to(upstream.url) as pool,
    ):
        answer = await exchange(pool)
        assert (answer.status, answer.body) == (304, b"")
        assert (await exchange(pool)).status == 304
        assert pool.opened == 1


async def test_an_answer_to_head_has_no_body_and_its_connection_is_not_reused() -> None:
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    async with tcp_upstream(keep_answering(head_answer)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool, "HEAD")
        assert (answer.status, answer.body) == (200, b"")
        assert (b"Content-Length", b"100") in answer.headers
        assert pool.idle == 0
        await exchange(pool, "HEAD")
        assert pool.opened == 2


async def test_interim_100_and_103_answers_are_skipped_before_the_final_one() -> None:
    answers = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
    )
    async with tcp_upstream(keep_answering(answers)) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert (answer.status, answer.reason, answer.body) == (201, b"Created", b"ok")
        assert answer.headers == [(b"X-Final", b"yes"), (b"Content-Length", b"2")]
        assert (await exchange(pool)).status == 201
        assert pool.opened == 1


async def test_an_answer_arriving_one_byte_at_a_time_is_read_the_same() -> None:
    answers = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    )

    async def dribble(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        for index in range(len(answers)):
            writer.write(answers[index : index + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.wait_for(reader.read(), WAIT)

    async with tcp_upstream(dribble) as upstream, pool_to(upstream.url) as pool:
        answer = await exchange(pool)
        assert (answer.status, answer.body) == (200, b"abc")
        assert pool.idle == 1


BLOCK = 64 * 1024
BLOCKS = 320  # 20 MiB


def block(index: int) -> bytes:
    return index.to_bytes(4, "big") * (BLOCK // 4)


async def test_a_large_body_read_slowly_is_buffered_only_up_to_the_high_water_mark() -> None:
    async def large(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (BLOCK * BLOCKS))
        for index in range(BLOCKS):
            writer.write(block(index))
            await asyncio.wait_for(writer.drain(), WAIT)
        await asyncio.wait_for(reader.read(), WAIT)

    expected = hashlib.sha256(b"".join(block(index) for index in range(BLOCKS))).digest()
    async with tcp_upstream(large) as upstream, pool_to(upstream.url) as pool:
        connection = await pool.connect()
        connection.begin(request_head(pool), no_body=False)
        async with asyncio.timeout(4 * WAIT):
            await connection.response()
            received, most, digest = 0, 0, hashlib.sha256()
            while True:
                await asyncio.sleep(0.001)  # a slow client: the upstream is faster
                most = max(most, connection._buffered)  # what waits for the reader right now
                chunk = await connection.read()
                if not chunk:
                    break
                received += len(chunk)
                digest.update(chunk)
        pool.release(connection)
        assert received == BLOCK * BLOCKS
        assert digest.digest() == expected
        # Reading paused at the mark; one socket read (at most 256 KiB) may land past it.
        assert READ_HIGH_WATER <= most <= 2 * READ_HIGH_WATER
        assert pool.idle == 1
