"""The public listener's connections: requests without a body are served on the gateway's own
short way (gateway/downstream.py); anything else hands the connection, with every byte not yet
answered, to aiohttp's server, which keeps it to its end. A client sees one server either way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.compile import ConnectionLimits
from gateway.downstream import PIPELINE_HIGH_WATER, WORKER_NAME, ClientConnection
from tests.e2e.wire import IO_TIMEOUT, RawResponse, open_raw, read_response, request_head
from tests.support import RunningGateway, Upstream, echo_upstream, running_gateway, write_config

CONFIG = """\
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: open
    match: {{path: /open/**}}
    upstream: echo
    auth: public
"""


@pytest.fixture
async def echo(tmp_path: Path) -> AsyncIterator[tuple[RunningGateway, Upstream]]:
    async with echo_upstream() as upstream:
        path = write_config(tmp_path, CONFIG, upstream=upstream.url)
        async with running_gateway(path) as gateway:
            yield gateway, upstream


def post(path: str, body: bytes) -> bytes:
    return request_head("POST", path, "gw", [("Content-Length", str(len(body)))]) + body


async def exchange(
    gateway: RunningGateway, pieces: list[bytes], answers: int, methods: list[str] | None = None
) -> list[RawResponse]:
    """Send ``pieces`` (a pause between them) on one connection and read ``answers`` answers."""
    async with open_raw(gateway.url) as (reader, writer):
        for index, piece in enumerate(pieces):
            if index:
                await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        methods = methods or ["GET"] * answers
        return [await read_response(reader, method) for method in methods]


async def test_a_request_without_a_body_is_served_without_handing_the_connection_over(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, upstream = echo
    async with open_raw(gateway.url) as (reader, writer):
        writer.write(request_head("GET", "/open/a?x=1", "gw", [("Accept", "*/*")]))
        await writer.drain()
        response = await read_response(reader)
        assert gateway.server.direct_connections == 1
    assert response.status == 200
    assert [(r.method, r.path, r.query) for r in upstream.received] == [("GET", "/open/a", "x=1")]


async def hand_over(
    gateway: RunningGateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A request served the short way, then one with a body: the connection is aiohttp's."""
    for piece in (request_head("GET", "/open/1", "gw"), post("/open/2", b"hello")):
        writer.write(piece)
        await writer.drain()
        assert (await read_response(reader)).status == 200
    assert gateway.server.direct_connections == 0


async def test_a_request_with_a_body_hands_the_connection_over_and_later_requests_are_served(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, upstream = echo
    async with open_raw(gateway.url) as (reader, writer):
        await hand_over(gateway, reader, writer)
        writer.write(request_head("GET", "/open/3", "gw"))
        await writer.drain()
        assert (await read_response(reader)).status == 200
    assert [(r.method, r.path, r.body) for r in upstream.received] == [
        ("GET", "/open/1", b""),
        ("POST", "/open/2", b"hello"),
        ("GET", "/open/3", b""),
    ]


async def test_pipelined_requests_are_answered_in_order(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, upstream = echo
    heads = b"".join(request_head("GET", f"/open/{n}", "gw") for n in range(5))
    responses = await exchange(gateway, [heads], 5)
    assert [r.status for r in responses] == [200] * 5
    assert [b'"/open/%d"' % n in r.body for n, r in enumerate(responses)] == [True] * 5
    assert [r.path for r in upstream.received] == [f"/open/{n}" for n in range(5)]


async def test_a_request_with_a_body_pipelined_behind_one_without_is_answered_after_it(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, upstream = echo
    pieces = [request_head("GET", "/open/1", "gw") + post("/open/2", b"abc")]
    responses = await exchange(gateway, pieces, 2)
    assert [r.status for r in responses] == [200, 200]
    assert [(r.path, r.body) for r in upstream.received] == [("/open/1", b""), ("/open/2", b"abc")]


async def test_a_head_arriving_in_pieces_is_answered(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, upstream = echo
    head = request_head("GET", "/open/slow", "gw", [("Accept", "*/*")])
    responses = await exchange(gateway, [head[:20], head[20:]], 1)
    assert responses[0].status == 200
    assert [r.path for r in upstream.received] == ["/open/slow"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /open/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # a repeated singleton
        (b"GET /open/x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /open/x HTTP/2.0\r\nHost: gw\r\n\r\n", 400),
        (b"GET /open/x HTTP/1.1\r\nHost: gw\r\nX-A: a\x00b\r\n\r\n", 400),  # a NUL in a value
        (
            b"GET /open/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            400,
        ),
        (b"GET /open/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        (b"GET http://gw/open/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400),  # absolute-form
        (b"GET /open/x HTTP/1.0\r\nHost: gw\r\n\r\n", 200),
    ],
)
async def test_a_request_the_short_way_does_not_take_gets_aiohttps_answer(
    echo: tuple[RunningGateway, Upstream], head: bytes, status: int
) -> None:
    gateway, _ = echo
    async with open_raw(gateway.url) as (reader, writer):
        writer.write(head)
        await writer.drain()
        response = await read_response(reader)
        assert gateway.server.direct_connections == 0
    assert response.status == status
    if status == 400:
        assert response.headers["Content-Type"].startswith("application/json")


_NAMES = st.sampled_from(["Accept", "X-Thing", "user-agent", "Cookie", "X-Forwarded-For", "Range"])
_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=20
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "HEAD", "DELETE", "OPTIONS"]),
    path=st.sampled_from(["/open/a", "/open/a/b?c=d&e", "/open/%41?x=%2F", "/open/"]),
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    close=st.booleans(),
)
async def test_the_short_way_and_aiohttps_server_give_the_same_answer_to_the_same_request(
    echo: tuple[RunningGateway, Upstream],
    method: str,
    path: str,
    fields: list[tuple[str, str]],
    close: bool,
) -> None:
    gateway, upstream = echo
    headers = fields + ([("Connection", "close")] if close else [])
    head = request_head(method, path, "gw", headers)
    seen = []
    for pieces in ([head], [head[:5], head[5:]]):  # in pieces: handed over to aiohttp
        upstream.received.clear()
        async with asyncio.timeout(IO_TIMEOUT):
            (response,) = await exchange(gateway, pieces, 1, [method])
        names = sorted(set(response.headers) - {"Date", "X-Request-Id"})
        received = [
            (r.method, r.path, r.query, [h for h in r.headers if h[0] != "X-Request-ID"])
            for r in upstream.received
        ]
        body = response.body
        if response.status >= 400 and body:  # the gateway's own: the same but its request id
            body = json.loads(body) | {"request_id": None}
        seen.append((response.status, names, body, received))
    assert seen[0] == seen[1]


def workers() -> list[asyncio.Task[object]]:
    """The tasks serving the short way's connections (one a connection, while it lives)."""
    return [task for task in asyncio.all_tasks() if task.get_name() == WORKER_NAME]


async def until_no_workers() -> list[asyncio.Task[object]]:
    """The workers still there after up to IO_TIMEOUT (none, unless one is left behind)."""
    async with asyncio.timeout(IO_TIMEOUT):
        while workers():
            await asyncio.sleep(0.01)
    return workers()


async def test_one_task_serves_every_request_of_a_keep_alive_connection(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, _ = echo
    seen = set()
    async with open_raw(gateway.url) as (reader, writer):
        for n in range(3):
            writer.write(request_head("GET", f"/open/{n}", "gw"))
            await writer.drain()
            assert (await read_response(reader)).status == 200
            seen.update(workers())
    assert len(seen) == 1


async def test_a_connection_its_client_closes_while_idle_leaves_no_task_behind(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, _ = echo
    async with open_raw(gateway.url) as (reader, writer):
        writer.write(request_head("GET", "/open/a", "gw"))
        await writer.drain()
        assert (await read_response(reader)).status == 200
        assert len(workers()) == 1  # waiting for the next request
    assert await until_no_workers() == []


async def test_a_connection_handed_over_after_a_request_leaves_no_task_behind(
    echo: tuple[RunningGateway, Upstream],
) -> None:
    gateway, _ = echo
    async with open_raw(gateway.url) as (reader, writer):
        await hand_over(gateway, reader, writer)  # aiohttp's now, and still open
        assert await until_no_workers() == []


async def test_an_idle_connection_at_shutdown_leaves_no_task_behind(tmp_path: Path) -> None:
    async with echo_upstream() as upstream:
        path = write_config(tmp_path, CONFIG, upstream=upstream.url)
        async with running_gateway(path) as gateway:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.public_port)
            writer.write(request_head("GET", "/open/a", "gw"))
            await writer.drain()
            assert (await read_response(reader)).status == 200
        try:
            assert await until_no_workers() == []
            assert await reader.read() == b""  # closed by the gateway
        finally:
            writer.close()


class _Transport(asyncio.Transport):
    """What a connection writes, and whether it has paused reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.paused = False
        self.pauses = 0
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        self.paused = False


def short_way(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> tuple[ClientConnection, _Transport]:
    """A short-way connection serving ``handler``, on a transport that records what it does."""
    connection = ClientConnection(
        loop=asyncio.get_running_loop(),
        limits=ConnectionLimits(1.0, 1.0, 5.0, 100, 8190, 65536),
        handler=handler,
        hand_over=asyncio.Protocol,
        registry=set(),
    )
    transport = _Transport()
    connection.connection_made(transport)
    return connection, transport


async def test_reading_pauses_while_pipelined_requests_beyond_the_high_water_mark_wait() -> None:
    release = asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="ok")

    connection, transport = short_way(slow)
    head = request_head("GET", "/open/x", "gw", [("X-Pad", "p" * 1000)])
    count = PIPELINE_HIGH_WATER // len(head) + 2
    for _ in range(count):
        connection.data_received(head)
    assert transport.paused  # the first is being served; the rest wait, and no more is read
    assert transport.pauses == 1
    release.set()
    async with asyncio.timeout(IO_TIMEOUT):
        while transport.written.count(b"HTTP/1.1 200 OK") < count:
            await asyncio.sleep(0.01)
    assert not transport.paused
    assert not transport.closed


async def test_a_worker_cancelled_while_idle_does_not_stop_the_connection_serving() -> None:
    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok")

    connection, transport = short_way(ok)
    head = request_head("GET", "/open/x", "gw")
    async with asyncio.timeout(IO_TIMEOUT):
        connection.data_received(head)
        while transport.written.count(b"HTTP/1.1 200 OK") < 1:
            await asyncio.sleep(0.01)
        (worker,) = workers()  # waiting for the next request
        worker.cancel()
        while not worker.done():
            await asyncio.sleep(0.01)
        connection.data_received(head)
        while transport.written.count(b"HTTP/1.1 200 OK") < 2:
            await asyncio.sleep(0.01)
    connection.connection_lost(None)
    assert await until_no_workers() == []


CHUNK = 100_000  # more than aiohttp's writer sends before it waits for the transport (64 KiB)


def two_chunks(
    outcome: list[BaseException | None],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """A handler streaming two chunks of ``CHUNK`` bytes; how it ended goes to ``outcome``."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        try:
            await response.prepare(request)
            for _ in range(2):
                await response.write(b"x" * CHUNK)
            await response.write_eof()
        except BaseException as error:
            outcome.append(error)
            raise
        outcome.append(None)
        return response

    return handler


async def first_chunk_sent(transport: _Transport) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        while transport.written.count(b"x") < CHUNK:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # time enough for a second chunk to follow, were it not held


async def test_a_streamed_answer_waits_while_the_transport_is_full_and_goes_on_when_it_drains() -> (
    None
):
    outcome: list[BaseException | None] = []
    connection, transport = short_way(two_chunks(outcome))
    connection.pause_writing()  # the kernel's buffer is full: the client reads slowly
    connection.data_received(request_head("GET", "/open/x", "gw"))
    await first_chunk_sent(transport)
    assert transport.written.count(b"x") == CHUNK  # the second chunk waits
    assert outcome == []
    connection.resume_writing()
    async with asyncio.timeout(IO_TIMEOUT):
        while not outcome:
            await asyncio.sleep(0.01)
    assert outcome == [None]
    assert transport.written.count(b"x") == 2 * CHUNK
    assert transport.written.endswith(b"0\r\n\r\n")  # the whole chunked body
    assert not transport.closed  # kept alive for the next request
    connection.connection_lost(None)
    assert await until_no_workers() == []


@pytest.mark.parametrize("cause", [None, ConnectionResetError("reset by peer")])
async def test_a_client_lost_while_its_answer_waits_for_the_transport_leaves_no_task_behind(
    cause: BaseException | None,
) -> None:
    outcome: list[BaseException | None] = []
    connection, transport = short_way(two_chunks(outcome))
    connection.pause_writing()
    connection.data_received(request_head("GET", "/open/x", "gw"))
    await first_chunk_sent(transport)
    connection.connection_lost(cause)
    assert await until_no_workers() == []
    (error,) = outcome
    assert isinstance(error, ConnectionError)  # the handler's write failed: nothing hangs
    assert transport.written.count(b"x") == CHUNK
