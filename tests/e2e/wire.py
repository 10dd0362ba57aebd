"""Test helpers that work at the level of bytes on a loopback socket.

A real HTTP client library repairs what it is given (it merges ``//``, resolves ``..``, adds
``Connection`` and ``Host`` headers of its own), which would hide exactly what the gateway is
meant to handle. ``raw_request`` sends the bytes it is told to; ``tcp_upstream`` answers with the
bytes it is told to; ``http_upstream`` is a real aiohttp server that also counts connections.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

# Every wait in these helpers is bounded, so a gateway that hangs fails a test instead of the run.
IO_TIMEOUT = 10.0


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, CIMultiDict[str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: CIMultiDict[str]) -> bytes:
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "Content-Length" in headers:
        return await reader.readexactly(int(headers["Content-Length"]))
    return await reader.read()


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> RawResponse:
    """Read one response; ends at its declared length, so it never waits for the close."""
    status, headers = await asyncio.wait_for(_read_head(reader), IO_TIMEOUT)
    if method == "HEAD" or status in (204, 304):
        return RawResponse(status, headers, b"")
    body = await asyncio.wait_for(_read_body(reader, headers), IO_TIMEOUT)
    return RawResponse(status, headers, body)


def _head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_request(
    base_url: str,
    target: str,
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    host: str | None = None,
) -> RawResponse:
    """Send exactly ``METHOD target HTTP/1.1`` with these headers, and read the answer.

    ``target`` goes on the wire untouched (no normalisation, no encoding). A ``Content-Length``
    is added for a non-empty body unless the headers already frame it.
    """
    url = URL(base_url)
    assert url.host is not None and url.port is not None
    headers = list(headers)
    framed = any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers)
    if body and not framed:
        headers.append(("Content-Length", str(len(body))))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), IO_TIMEOUT)
    try:
        writer.write(_head(method, target, host or f"{url.host}:{url.port}", headers) + body)
        await writer.drain()
        return await read_response(reader, method)
    finally:
        writer.close()


@asynccontextmanager
async def open_raw(
    base_url: str,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A bare connection to the gateway, for requests written piece by piece."""
    url = URL(base_url)
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), IO_TIMEOUT)
    try:
        yield reader, writer
    finally:
        writer.close()


def request_head(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    return _head(method, target, host, headers)


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class CountingUpstream:
    """A real aiohttp server on loopback that knows which connection each request came on."""

    url: str = ""
    peers: list[tuple[str, int]] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(set(self.peers))


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def http_upstream(handler: Handler) -> AsyncIterator[CountingUpstream]:
    """Serve ``handler`` on a loopback port. A handler whose client went away is cancelled, so
    a slow handler never holds up the end of a test."""
    upstream = CountingUpstream()

    async def counted(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        upstream.peers.append(request.transport.get_extra_info("peername")[:2])
        return await handler(request)

    server = web.Server(counted, handler_cancellation=True)
    runner = web.ServerRunner(server, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


@dataclass
class TcpUpstream:
    """A loopback server that speaks whatever bytes its connection handler writes."""

    url: str
    requests: list[bytes]


ConnectionHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, TcpUpstream], Awaitable[None]
]


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)


@asynccontextmanager
async def tcp_upstream(on_connection: ConnectionHandler) -> AsyncIterator[TcpUpstream]:
    tasks: set[asyncio.Task[None]] = set()
    upstream = TcpUpstream(url="", requests=[])

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await on_connection(reader, writer, upstream)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
