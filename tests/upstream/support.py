"""Building blocks for the upstream client's tests: a pool aimed at a loopback server, one
exchange driven by hand the way the forwarder drives it, scripted raw answers, and a small
aiohttp front that hands each request to ``forward()``.

Well-behaved upstreams are real aiohttp servers (``tests.e2e.wire.http_upstream``); misbehaving
ones are raw asyncio servers that write exactly the bytes a test gives them
(``tests.e2e.wire.tcp_upstream``). Every wait is bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from gateway.upstream.client import UpstreamPool
from gateway.upstream.forward import forward
from gateway.upstream.http1 import Http1Connection
from gateway.upstream.target import UpstreamTarget
from tests.e2e.wire import ConnectionHandler, TcpUpstream, read_request_head

# Bounds every exchange and every wait on the other side, so a hang fails the test quickly.
WAIT = 5.0
MAX_REQUESTS = 100  # a scripted upstream answers at most this many requests per connection
MAX_CHUNKS = 10_000  # in one chunked request body


def target_for(
    url: str,
    *,
    connect_timeout: float = 1.0,
    timeout: float = WAIT,
    max_connections: int = 8,
) -> UpstreamTarget:
    parsed = URL(url)
    assert parsed.host is not None and parsed.port is not None
    return UpstreamTarget(
        name="up",
        scheme=parsed.scheme,
        host=parsed.host,
        port=parsed.port,
        base_path="",
        connect_timeout=connect_timeout,
        timeout=timeout,
        max_connections=max_connections,
        preserve_host=False,
    )


@asynccontextmanager
async def pool_to(
    url: str,
    *,
    idle_timeout: float = 15.0,
    connect_timeout: float = 1.0,
    timeout: float = WAIT,
    max_connections: int = 8,
) -> AsyncIterator[UpstreamPool]:
    target = target_for(
        url, connect_timeout=connect_timeout, timeout=timeout, max_connections=max_connections
    )
    pool = UpstreamPool(target, idle_timeout=idle_timeout)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def request_head(pool: UpstreamPool, method: str = "GET", target: str = "/") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: {pool.host}\r\n\r\n".encode()


async def read_body(connection: Http1Connection) -> bytes:
    body = bytearray()
    while chunk := await connection.read():
        body += chunk
    return bytes(body)


async def exchange(pool: UpstreamPool, method: str = "GET", target: str = "/") -> Answer:
    """One request without a body, as ``forward()`` makes it: a slot, a pooled connection,
    the answer read to its end, the connection released (kept only if reusable)."""
    async with asyncio.timeout(WAIT), pool.slot():
        connection = await pool.connect()
        try:
            connection.begin(request_head(pool, method, target), no_body=method == "HEAD")
            status, reason, headers = await connection.response()
            return Answer(status, reason, headers, await read_body(connection))
        finally:
            pool.release(connection)


def answering(*responses: bytes, close: bool = False) -> ConnectionHandler:
    """A raw upstream that reads each request head and answers it with the next of
    ``responses``, written at once; then closes (``close``) or waits for the client to."""

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        for response in responses:
            upstream.requests.append(await read_request_head(reader))
            writer.write(response)
            await writer.drain()
        if not close:
            await asyncio.wait_for(reader.read(), WAIT)

    return on_connection


def keep_answering(response: bytes) -> ConnectionHandler:
    """A raw upstream that answers every request on a connection with ``response``."""

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        for _ in range(MAX_REQUESTS):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            upstream.requests.append(head)
            writer.write(response)
            await writer.drain()

    return on_connection


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's bytes as they came: the head, then a body framed by Content-Length or
    chunked (without trailers)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    lowered = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lowered:
        return head + await asyncio.wait_for(read_chunks(reader), WAIT)
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return head + await asyncio.wait_for(reader.readexactly(int(line[15:])), WAIT)
    return head


async def read_chunks(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    for _ in range(MAX_CHUNKS):
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        body += size_line + await reader.readexactly(size + 2)
        if size == 0:
            return bytes(body)
    raise AssertionError(f"more than {MAX_CHUNKS} chunks")


def recording(response: bytes) -> ConnectionHandler:
    """A raw upstream that records each request's bytes whole and answers ``response``."""

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        for _ in range(MAX_REQUESTS):
            upstream.requests.append(await read_request(reader))
            writer.write(response)
            await writer.drain()

    return on_connection


@asynccontextmanager
async def front(
    pool: UpstreamPool,
    headers: Iterable[tuple[str, str]] = (),
    *,
    max_body_bytes: int = 1 << 20,
    target: str | None = None,
    host: str | None = None,
) -> AsyncIterator[str]:
    """An aiohttp server that forwards every request to ``pool`` with ``forward()``: the
    request's raw target (or ``target``), ``host`` (None: the upstream's own) and ``headers``
    (in this order) as the upstream headers."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        forwarded = await forward(
            request,
            pool=pool,
            target=request.raw_path if target is None else target,
            headers=list(headers),
            host=host,
            max_body_bytes=max_body_bytes,
            request_id="req-1",
        )
        return forwarded.response

    runner = web.ServerRunner(web.Server(handler), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
