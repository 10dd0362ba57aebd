"""Slow, idle and oversized clients: each holds a connection only for a bounded time, gets the
right status, and leaves every other client's requests as fast as before.

The gateway runs with short ``limits`` (1 s header and body timeouts, 1.5 s idle) so that the set
stays fast; every client loop here is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from gateway.config import load_and_compile
from gateway.config.compile import ConnectionLimits
from gateway.config.schema import Limits
from gateway.server import Address, GatewayServer
from tests.e2e.wire import (
    IO_TIMEOUT,
    CountingUpstream,
    RawResponse,
    http_upstream,
    raw_request,
    read_response,
    request_head,
)
from tests.support import RunningGateway, running_gateway, write_config

CONFIG = """\
shutdown_timeout: 1s
limits:
  header_timeout: {timeout}
  body_timeout: {timeout}
  idle_timeout: {idle}
upstreams:
  up: {{url: "{upstream}"}}
routes:
  - name: open
    match: {{path: /open/**}}
    upstream: up
    auth: public
"""

TIMEOUT = 1.0  # header_timeout and body_timeout of the gateway under test
# idle_timeout: longer, as by default, so that a slow head meets the header timeout first (the
# idle one also runs from the moment a connection opens).
IDLE = 1.5
# How late a cut may come: the timer's own granularity plus a loaded CI machine.
SLACK = 1.5
MiB = 1024 * 1024


@dataclass
class Target:
    gateway: RunningGateway
    upstream: CountingUpstream
    bodies: list[int]  # bytes of each body the upstream read to its end

    @property
    def port(self) -> int:
        return self.gateway.server.public_port


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[Target]:
    bodies: list[int] = []

    async def counting(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _echo_websocket(request)
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        bodies.append(size)
        return web.Response(text=f"read {size}")

    async with http_upstream(counting) as upstream:
        path = write_config(
            tmp_path, CONFIG, upstream=upstream.url, timeout=f"{TIMEOUT}s", idle=f"{IDLE}s"
        )
        async with running_gateway(path) as gateway:
            yield Target(gateway, upstream, bodies)


async def _echo_websocket(request: web.BaseRequest) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(f"echo: {message.data}")
    return ws


async def connect(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), IO_TIMEOUT)


async def closed_by_gateway(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the gateway still sends, until it closes the connection (bounded)."""
    received = bytearray()
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionError:  # a reset: closed too
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk
    raise AssertionError(f"the gateway kept the connection open for {within} s")


async def a_valid_request_is_quick(target: Target) -> float:
    started = time.monotonic()
    response = await raw_request(f"http://127.0.0.1:{target.port}", "/open/ok")
    assert response.status == 200
    return time.monotonic() - started


def parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return RawResponse(status, headers, body)  # type: ignore[arg-type]


# -- defaults --------------------------------------------------------------------------------


def test_the_connection_limits_have_safe_defaults() -> None:
    limits = Limits()
    assert limits.header_timeout == 10.0
    assert limits.body_timeout == 60.0
    assert limits.idle_timeout == 60.0
    assert limits.max_headers == 100
    assert limits.max_header_bytes == 64 * 1024


@pytest.mark.parametrize("key", ["header_timeout", "body_timeout", "idle_timeout"])
@pytest.mark.parametrize("value", ["0s", "-1s", 0])
def test_a_zero_or_negative_connection_timeout_is_a_config_error(key: str, value: object) -> None:
    with pytest.raises(ValueError):
        Limits(**{key: value})  # type: ignore[arg-type]


def test_a_token_of_the_maximum_size_always_fits_within_the_head_limit() -> None:
    limits = ConnectionLimits.of(Limits(max_token_bytes=100_000, max_header_bytes=1_000))
    assert limits.max_line_bytes > 100_000 + len("Authorization: Bearer ")
    assert limits.max_head_bytes > limits.max_line_bytes


async def test_new_limits_apply_to_connections_opened_after_a_reload(
    tmp_path: Path, target: Target
) -> None:
    path = write_config(tmp_path, CONFIG, upstream=target.upstream.url, timeout="5s", idle="9s")
    compiled, _ = load_and_compile(path)
    server = GatewayServer(
        compiled, public=Address("127.0.0.1", 0), admin=Address("127.0.0.1", 0), config_path=path
    )
    await server.start()
    try:
        write_config(tmp_path, CONFIG, upstream=target.upstream.url, timeout="300ms", idle="9s")
        assert await server.reload()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.public_port), IO_TIMEOUT
        )
        started = time.monotonic()
        try:
            writer.write(b"GET /open/x HTTP/1.1\r\nHost: gw\r\n")
            answer = await closed_by_gateway(reader, 5.0)
        finally:
            writer.close()
    finally:
        await server.stop()
    assert parse(answer).status == 408
    assert time.monotonic() - started < 2.0


# -- slow heads ------------------------------------------------------------------------------


async def test_a_slowloris_sending_its_headers_a_byte_at_a_time_gets_408_and_is_closed(
    target: Target,
) -> None:
    reader, writer = await connect(target)
    head = request_head("GET", "/open/x", "gw", [("X-Padding", "a" * 200)])
    started = time.monotonic()
    # Read all along: the answer must be taken in before a late byte of ours meets the closed
    # socket and the reset that comes back discards it.
    answer = asyncio.ensure_future(closed_by_gateway(reader, TIMEOUT + SLACK))
    try:
        # A byte every 0.25 s, never the blank line: at most 40 bytes, or until cut.
        for byte in head[:40]:
            if answer.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.25)
        received = await answer
    except ConnectionError:
        received = await answer
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK
    response = parse(received)
    assert response.status == 408
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Connection"] == "close"
    assert target.upstream.peers == []


async def test_the_header_clock_starts_again_for_each_request_on_a_kept_alive_connection(
    target: Target,
) -> None:
    reader, writer = await connect(target)
    try:
        for index in range(3):  # each request within the limit, together well over it
            for part in (b"GET /open/", str(index).encode(), b" HTTP/1.1\r\nHost: gw\r\n\r\n"):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(TIMEOUT / 4)
            assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    assert len(target.upstream.peers) == 3


# -- slow bodies -----------------------------------------------------------------------------


async def test_a_body_that_stalls_is_cut_after_the_body_timeout_and_never_completes_upstream(
    target: Target,
) -> None:
    reader, writer = await connect(target)
    started = time.monotonic()
    try:
        writer.write(request_head("POST", "/open/x", "gw", [("Content-Length", "1000")]))
        writer.write(b"x" * 100)
        await writer.drain()
        answer = await closed_by_gateway(reader, TIMEOUT + SLACK)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK
    if answer:  # the gateway may still say why before it closes
        assert parse(answer).status == 400
    assert target.bodies == []  # the upstream never saw the body end


async def test_a_slow_but_steady_body_is_not_cut(target: Target) -> None:
    reader, writer = await connect(target)
    try:
        writer.write(request_head("POST", "/open/x", "gw", [("Content-Length", "500")]))
        for _ in range(5):  # 5 pieces, 0.4 s apart: 2 s in all, twice the body timeout
            writer.write(b"y" * 100)
            await writer.drain()
            await asyncio.sleep(TIMEOUT * 0.4)
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 200
    assert target.bodies == [500]


# -- idle connections ------------------------------------------------------------------------


async def test_many_idle_keep_alive_connections_are_closed_after_the_idle_timeout(
    target: Target,
) -> None:
    connections = [await connect(target) for _ in range(50)]
    try:
        for reader, writer in connections[:25]:  # half served once, then idle
            writer.write(request_head("GET", "/open/x", "gw"))
            await writer.drain()
            assert (await read_response(reader)).status == 200
        started = time.monotonic()
        # The other half never sent a byte: closed too, without an answer.
        answers = await asyncio.gather(
            *(closed_by_gateway(reader, IDLE + SLACK) for reader, _ in connections)
        )
        elapsed = time.monotonic() - started
    finally:
        for _, writer in connections:
            writer.close()
    assert IDLE * 0.5 <= elapsed <= IDLE + SLACK
    assert answers == [b""] * 50


# -- big clients -----------------------------------------------------------------------------


async def upload_until_refused(target: Target, head: bytes, piece: bytes) -> tuple[int, int]:
    """Send ``head``, then ``piece`` after ``piece`` (100 at most, 1 MiB of body each) until
    the gateway answers; its status, and how many MiB of body went out before it did."""
    reader, writer = await connect(target)
    answer = asyncio.ensure_future(read_response(reader))
    sent = 0
    try:
        writer.write(head)
        while sent < 100 and not answer.done():
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
            sent += 1
    except ConnectionError:
        pass  # closed by the gateway after its answer
    finally:
        try:
            response = await asyncio.wait_for(answer, IO_TIMEOUT)
        finally:
            writer.close()
    return response.status, sent


async def test_a_100_mb_body_with_its_length_declared_gets_413_at_once(target: Target) -> None:
    started = time.monotonic()
    head = request_head("POST", "/open/x", "gw", [("Content-Length", str(100 * MiB))])
    status, sent = await upload_until_refused(target, head, b"z" * MiB)
    assert status == 413
    assert time.monotonic() - started < 5.0
    assert sent < 100
    assert target.upstream.peers == []


async def test_a_100_mb_chunked_body_gets_413_by_counting_without_being_buffered(
    target: Target,
) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    head = request_head("POST", "/open/x", "gw", [("Transfer-Encoding", "chunked")])
    status, sent = await upload_until_refused(target, head, b"%x\r\n" % MiB + b"z" * MiB + b"\r\n")
    assert status == 413
    assert time.monotonic() - started < 5.0
    assert sent < 100  # refused once past the 10 MiB limit, long before the end
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 64 * 1024, f"the process grew by {grown} KiB"
    assert target.bodies == []  # nothing was forwarded to its end


async def _refused_on_its_head(target: Target, head: bytes) -> RawResponse:
    reader, writer = await connect(target)
    # Read all along, so that the answer is in before a reset could discard it.
    answer = asyncio.ensure_future(closed_by_gateway(reader, IO_TIMEOUT))
    try:
        writer.write(head)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        received = await answer
        writer.close()
    return parse(received)


async def test_a_single_64_kib_header_gets_400_and_the_connection_is_closed(
    target: Target,
) -> None:
    head = request_head("GET", "/open/x", "gw", [("X-Big", "b" * 64 * 1024)])
    response = await _refused_on_its_head(target, head)
    assert response.status in (400, 431)
    assert response.headers["Content-Type"] == "application/json"
    assert b"bbbbbbbb" not in response.body  # the answer never quotes the request
    assert target.upstream.peers == []


async def test_64_kib_of_headers_in_many_lines_gets_431_and_the_connection_is_closed(
    target: Target,
) -> None:
    # 65 lines of 1 KiB: each line, and their number, within aiohttp's own limits.
    lines = [(f"X-Line-{index}", "c" * 1024) for index in range(65)]
    response = await _refused_on_its_head(target, request_head("GET", "/open/x", "gw", lines))
    assert response.status == 431
    assert response.headers["Content-Type"] == "application/json"
    assert target.upstream.peers == []


async def test_thousands_of_headers_get_400_and_the_connection_is_closed(target: Target) -> None:
    lines = [(f"X-{index}", "1") for index in range(5000)]
    response = await _refused_on_its_head(target, request_head("GET", "/open/x", "gw", lines))
    assert response.status in (400, 431)
    assert target.upstream.peers == []


async def test_a_head_just_within_the_size_limit_is_served(target: Target) -> None:
    lines = [(f"X-Line-{index}", "d" * 1024) for index in range(60)]
    response = await raw_request(f"http://127.0.0.1:{target.port}", "/open/x", headers=lines)
    assert response.status == 200


# -- everyone else -----------------------------------------------------------------------------


async def test_other_clients_are_served_quickly_while_slow_and_idle_clients_hold_connections(
    target: Target,
) -> None:
    held: list[asyncio.StreamWriter] = []
    try:
        for index in range(150):  # 50 slowloris heads, 50 stalled bodies, 50 idle sockets
            _, writer = await connect(target)
            held.append(writer)
            if index % 3 == 0:
                writer.write(b"GET /open/slow HTTP/1.1\r\nHost: gw\r\nX-A:")
            elif index % 3 == 1:
                writer.write(request_head("POST", "/open/x", "gw", [("Content-Length", "9999")]))
        latencies = [await a_valid_request_is_quick(target) for _ in range(20)]
    finally:
        for writer in held:
            writer.close()
    assert max(latencies) < 0.5, latencies
    assert target.bodies == [0] * 20


async def test_a_websocket_quiet_for_longer_than_every_timeout_stays_open(
    target: Target,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{target.port}/open/ws") as ws,
    ):
        await asyncio.sleep(TIMEOUT * 1.5)
        await ws.send_str("still here")
        message = await asyncio.wait_for(ws.receive(), IO_TIMEOUT)
    assert message.data == "echo: still here"
