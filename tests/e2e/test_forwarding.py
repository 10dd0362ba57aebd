"""What crosses the gateway on the way to the upstream and back (SPEC §4 "Forwarding", the error
table's 413/502/503/504, and §3 ``upstreams``), checked on what a real upstream received."""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.e2e.wire import (
    TcpUpstream,
    closed_port,
    http_upstream,
    open_raw,
    raw_request,
    read_request_head,
    read_response,
    request_head,
    reset,
    tcp_upstream,
)
from tests.support import (
    AUDIENCE,
    RunningGateway,
    TokenIssuer,
    Upstream,
    echo_upstream,
    running_gateway,
    write_config,
)

FORWARDING_CONFIG = """\
trusted_proxies: {trusted_proxies}
shutdown_timeout: 1s
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  up:
    url: "{upstream}"
    connect_timeout: {connect_timeout}
    timeout: {timeout}
    max_connections: {max_connections}
  host-preserving:
    url: "{upstream}"
    preserve_host: true
routes:
  - name: open
    match: {{path: /open/**}}
    upstream: up
    auth: public
  - name: small
    match: {{path: /small/**}}
    upstream: up
    auth: public
    limits: {{max_body_bytes: 1000}}
  - name: host
    match: {{path: /host/**}}
    upstream: host-preserving
    auth: public
  - name: orders
    match: {{path: /orders/**}}
    upstream: up
"""

# Bounds every wait on the other side of the gateway, so a hang fails fast.
WAIT = 5.0


@asynccontextmanager
async def gateway_before(
    tmp_path: Path,
    issuer: TokenIssuer,
    upstream_url: str,
    *,
    trusted_proxies: str = "[]",
    connect_timeout: str = "2s",
    timeout: str = "5s",
    max_connections: int = 16,
) -> AsyncIterator[RunningGateway]:
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    path = write_config(
        tmp_path,
        FORWARDING_CONFIG,
        issuer=issuer.issuer,
        audience=AUDIENCE,
        upstream=upstream_url,
        trusted_proxies=trusted_proxies,
        connect_timeout=connect_timeout,
        timeout=timeout,
        max_connections=max_connections,
    )
    async with running_gateway(path) as gateway:
        yield gateway


@pytest.fixture
async def echo(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[tuple[str, Upstream]]:
    """The gateway's URL and the recording upstream behind it."""
    async with echo_upstream() as upstream, gateway_before(tmp_path, issuer, upstream.url) as gw:
        yield gw.url, upstream


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def received_headers(upstream: Upstream) -> dict[str, str]:
    """The last request's headers as the upstream saw them, names lower-cased."""
    return {name.lower(): value for name, value in upstream.received[-1].headers}


# -- bodies ------------------------------------------------------------------------------------


async def test_a_request_body_reaches_the_upstream_before_the_client_has_sent_all_of_it(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    first_chunk_arrived = asyncio.Event()
    received = bytearray()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        async for chunk in request.content.iter_any():
            received.extend(chunk)
            first_chunk_arrived.set()
        return web.Response(text=str(len(received)))

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        # A gateway that buffered the whole body would never let the upstream see this chunk.
        await asyncio.wait_for(first_chunk_arrived.wait(), WAIT)
        yield b"b" * 1000

    async with (
        http_upstream(handler) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        http.post(f"{gw.url}/open/upload", data=body()) as response,
    ):
        assert response.status == 200
        assert await response.text() == "2000"
    assert bytes(received) == b"a" * 1000 + b"b" * 1000


async def test_a_response_body_reaches_the_client_before_the_upstream_has_sent_all_of_it(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    client_has_first_chunk = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await asyncio.wait_for(client_has_first_chunk.wait(), WAIT)
        await response.write(b"second")
        await response.write_eof()
        return response

    async with (
        http_upstream(handler) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        http.get(f"{gw.url}/open/download") as response,
    ):
        first = await asyncio.wait_for(response.content.readany(), WAIT)
        client_has_first_chunk.set()
        rest = await asyncio.wait_for(response.content.read(), WAIT)
    assert first + rest == b"first;second"
    assert first == b"first;"


async def test_a_content_length_over_the_route_limit_gets_413_before_any_body_is_sent(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    async with open_raw(url) as (reader, writer):
        # Only the head goes out: the answer must not wait for a body that is never coming.
        writer.write(request_head("POST", "/small/x", "gw", [("Content-Length", "1001")]))
        response = await read_response(reader)
    assert response.status == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert upstream.received == []


async def test_a_body_at_the_route_limit_is_forwarded(echo: tuple[str, Upstream]) -> None:
    url, upstream = echo
    response = await raw_request(url, "/small/x", method="POST", body=b"x" * 1000)
    assert response.status == 200
    assert len(upstream.received[-1].body) == 1000


async def test_the_route_limit_overrides_the_global_one_only_on_its_route(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    assert (await raw_request(url, "/small/x", method="POST", body=b"x" * 5000)).status == 413
    assert (await raw_request(url, "/open/x", method="POST", body=b"x" * 5000)).status == 200
    assert [len(r.body) for r in upstream.received] == [5000]


async def test_a_chunked_body_over_the_limit_gets_413_by_counting(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    seen: list[int] = []
    complete: list[int] = []

    async def counting(request: web.BaseRequest) -> web.StreamResponse:
        async for chunk in request.content.iter_any():
            seen.append(len(chunk))
        complete.append(sum(seen))  # only reached when the body ended properly
        return web.Response(text="ok")

    async with (
        http_upstream(counting) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        open_raw(gw.url) as (reader, writer),
    ):
        writer.write(request_head("POST", "/small/x", "gw", [("Transfer-Encoding", "chunked")]))
        for _ in range(3):  # 3 x 512 bytes, over the route's 1000, paced so the first streams
            writer.write(b"200\r\n" + b"x" * 512 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        # No terminating chunk: the refusal must come from counting, not from the end.
        response = await read_response(reader)
        assert response.status == 413
        assert response.headers["Content-Type"].startswith("application/json")
        await asyncio.sleep(0.1)  # give a wrongly completed body time to land
    assert sum(seen) <= 1000
    assert complete == []


async def test_a_chunked_body_within_the_limit_is_forwarded_whole(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    response = await raw_request(
        url, "/small/x", method="POST", headers=[("Transfer-Encoding", "chunked")], body=chunks
    )
    assert response.status == 200
    assert upstream.received[-1].body == b"y" * 768


# -- upstream failures -------------------------------------------------------------------------


async def test_an_upstream_that_refuses_the_connection_gets_502(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    async with (
        gateway_before(tmp_path, issuer, dead) as gw,
        http.get(f"{gw.url}/open/x") as response,
    ):
        assert response.status == 502
        assert (await response.json())["error"] == "bad_gateway"


async def test_an_upstream_that_resets_in_the_middle_of_its_headers_gets_502(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async def half_a_head(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        upstream.requests.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl")
        await writer.drain()
        reset(writer)

    async with (
        tcp_upstream(half_a_head) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        http.get(f"{gw.url}/open/x") as response,
    ):
        assert response.status == 502
        assert (await response.json())["error"] == "bad_gateway"
    assert upstream.requests


async def test_an_upstream_slower_than_its_timeout_gets_504(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(WAIT)
        return web.Response(text="too late")

    async with (
        http_upstream(slow) as upstream,
        gateway_before(tmp_path, issuer, upstream.url, timeout="300ms") as gw,
    ):
        started = time.monotonic()
        async with http.get(f"{gw.url}/open/x") as response:
            assert response.status == 504
            assert (await response.json())["error"] == "gateway_timeout"
        assert time.monotonic() - started < 2.0


# -- headers -----------------------------------------------------------------------------------

HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Secret"),
    ("Keep-Alive", "timeout=300"),
    ("X-Secret", "only for the next hop"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Proxy-Connection", "keep-alive"),
    ("X-End-To-End", "kept"),
]


async def test_hop_by_hop_request_headers_do_not_reach_the_upstream(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    response = await raw_request(url, "/open/x", headers=HOP_BY_HOP_REQUEST)
    assert response.status == 200
    headers = received_headers(upstream)
    for name in ("keep-alive", "x-secret", "te", "trailer", "upgrade", "proxy-authorization",
                 "proxy-connection"):  # fmt: skip
        assert name not in headers, name
    assert "x-secret" not in headers.get("connection", "").lower()
    assert headers["x-end-to-end"] == "kept"


async def test_hop_by_hop_response_headers_do_not_reach_the_client(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    async def chatty(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        upstream.requests.append(await read_request_head(reader))
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            b"Connection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"X-Secret: only for the next hop\r\n"
            b'Proxy-Authenticate: Basic realm="upstream"\r\n'
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: h2c\r\n"
            b"TE: trailers\r\n"
            b"X-End-To-End: kept\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n"
        )
        await writer.drain()

    async with (
        tcp_upstream(chatty) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
    ):
        response = await raw_request(gw.url, "/open/x")
    assert response.status == 200
    assert response.body == b"hello"
    for name in ("Keep-Alive", "X-Secret", "Proxy-Authenticate", "Trailer", "Upgrade", "TE"):
        assert name not in response.headers, name
    assert "x-secret" not in response.headers.get("Connection", "").lower()
    # The gateway frames the body itself: at most its own one Transfer-Encoding.
    assert response.headers.getall("Transfer-Encoding", []) in ([], ["chunked"])
    assert response.headers["X-End-To-End"] == "kept"


async def test_forwarding_headers_from_an_untrusted_client_are_replaced(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, upstream = echo
    spoofed = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.7;proto=https",
        "X-Real-IP": "203.0.113.7",
        "Host": "api.example.test",
    }
    async with http.get(f"{url}/open/x", headers=spoofed) as response:
        assert response.status == 200
    headers = received_headers(upstream)
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "api.example.test"
    assert "forwarded" not in headers
    assert "x-real-ip" not in headers


async def test_forwarding_headers_from_a_trusted_proxy_are_kept_and_appended_to(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async with (
        echo_upstream() as upstream,
        gateway_before(tmp_path, issuer, upstream.url, trusted_proxies="[127.0.0.0/8]") as gw,
    ):
        headers = {
            "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example.test",
        }
        async with http.get(f"{gw.url}/open/x", headers=headers) as response:
            assert response.status == 200
    received = received_headers(upstream)
    assert received["x-forwarded-for"] == "203.0.113.7, 10.0.0.1, 127.0.0.1"
    assert received["x-forwarded-proto"] == "https"
    assert received["x-forwarded-host"] == "api.example.test"


async def test_path_override_headers_never_reach_the_upstream(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, upstream = echo
    overrides = {"X-Original-URL": "/admin", "X-Rewrite-URL": "/admin", "X-Original-URI": "/admin"}
    async with http.get(f"{url}/open/x", headers=overrides) as response:
        assert response.status == 200
    headers = received_headers(upstream)
    assert not {"x-original-url", "x-rewrite-url", "x-original-uri"} & set(headers)


async def test_a_well_formed_request_id_is_kept_both_ways(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, upstream = echo
    rid = "trace-01.AB_cd"
    async with http.get(f"{url}/open/x", headers={"X-Request-Id": rid}) as response:
        assert response.headers["X-Request-Id"] == rid
    assert received_headers(upstream)["x-request-id"] == rid


@pytest.mark.parametrize(
    "sent",
    ["has space", "a" * 129, "semi;colon", "new\tline"],
    ids=["space", "too-long", "semicolon", "tab"],
)
async def test_a_malformed_request_id_is_replaced_by_one_the_upstream_and_client_share(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession, sent: str
) -> None:
    url, upstream = echo
    async with http.get(f"{url}/open/x", headers={"X-Request-Id": sent}) as response:
        returned = response.headers["X-Request-Id"]
    assert returned != sent
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", returned)
    assert received_headers(upstream)["x-request-id"] == returned


async def test_a_request_id_is_returned_on_a_401(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, _ = echo
    async with http.get(f"{url}/orders/1", headers={"X-Request-Id": "rid-401"}) as response:
        assert response.status == 401
        assert response.headers["X-Request-Id"] == "rid-401"
        assert (await response.json())["request_id"] == "rid-401"


async def test_a_request_id_is_made_and_returned_on_a_404(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, _ = echo
    async with http.get(f"{url}/nowhere", headers={"X-Request-Id": "bad id"}) as response:
        assert response.status == 404
        returned = response.headers["X-Request-Id"]
        assert (await response.json())["request_id"] == returned
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", returned)


async def test_the_upstream_gets_its_own_host_unless_preserve_host_is_set(
    echo: tuple[str, Upstream], http: aiohttp.ClientSession
) -> None:
    url, upstream = echo
    upstream_authority = upstream.url.removeprefix("http://")
    async with http.get(f"{url}/open/x", headers={"Host": "api.example.test"}) as response:
        assert response.status == 200
    assert received_headers(upstream)["host"] == upstream_authority
    async with http.get(f"{url}/host/x", headers={"Host": "api.example.test"}) as response:
        assert response.status == 200
    assert received_headers(upstream)["host"] == "api.example.test"


# -- the upstream connection pool --------------------------------------------------------------


async def test_sequential_requests_reuse_one_pooled_upstream_connection(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(text="ok")

    async with http_upstream(ok) as upstream, gateway_before(tmp_path, issuer, upstream.url) as gw:
        for index in range(5):
            async with http.post(f"{gw.url}/open/{index}", data=b"body") as response:
                assert response.status == 200
                await response.read()
    assert len(upstream.peers) == 5
    assert upstream.connections == 1


async def test_with_every_connection_busy_a_request_waits_connect_timeout_then_gets_503(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held(request: web.BaseRequest) -> web.StreamResponse:
        entered.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return web.Response(text="done")

    async with (
        http_upstream(held) as upstream,
        gateway_before(
            tmp_path, issuer, upstream.url, max_connections=1, connect_timeout="300ms"
        ) as gw,
    ):

        async def first() -> tuple[int, str]:
            async with http.get(f"{gw.url}/open/first") as response:
                return response.status, await response.text()

        holder = asyncio.ensure_future(first())
        await asyncio.wait_for(entered.wait(), WAIT)
        started = time.monotonic()
        async with http.get(f"{gw.url}/open/second") as response:
            waited = time.monotonic() - started
            assert response.status == 503
            assert response.headers["Retry-After"]
            assert (await response.json())["error"] == "service_unavailable"
        release.set()
        assert await asyncio.wait_for(holder, WAIT) == (200, "done")
    assert 0.25 <= waited < 2.0
    assert len(upstream.peers) == 1


# -- HTTP details --------------------------------------------------------------------------------


async def test_a_client_expecting_100_continue_is_told_to_send_its_body(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    async with open_raw(url) as (reader, writer):
        head = [("Content-Length", "5"), ("Expect", "100-continue")]
        writer.write(request_head("POST", "/open/x", "gw", head))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello")
        response = await read_response(reader)
    assert response.status == 200
    assert upstream.received[-1].body == b"hello"
    assert "expect" not in received_headers(upstream)


async def test_a_request_refused_on_its_headers_gets_no_100_continue(
    echo: tuple[str, Upstream],
) -> None:
    url, upstream = echo
    async with open_raw(url) as (reader, writer):
        head = [("Content-Length", "5"), ("Expect", "100-continue")]
        writer.write(request_head("POST", "/orders/x", "gw", head))
        await writer.drain()
        response = await read_response(reader)
    assert response.status == 401
    assert upstream.received == []


async def test_a_head_response_keeps_the_upstreams_content_length_and_has_no_body(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    async def sized(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"x" * 1234)

    async with (
        http_upstream(sized) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
    ):
        head = await raw_request(gw.url, "/open/x", method="HEAD")
        get = await raw_request(gw.url, "/open/x")
    assert head.status == 200
    assert head.headers["Content-Length"] == "1234"
    assert get.body == b"x" * 1234


async def test_a_compressed_response_passes_through_byte_for_byte(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    compressed = gzip.compress(b"hello " * 1000)
    seen_encoding: list[str] = []

    async def gzipped(request: web.BaseRequest) -> web.StreamResponse:
        seen_encoding.append(request.headers.get("Accept-Encoding", ""))
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip"})

    async with (
        http_upstream(gzipped) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
    ):
        response = await raw_request(gw.url, "/open/x", headers=[("Accept-Encoding", "gzip")])
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.body == compressed
    assert seen_encoding == ["gzip"]


async def test_an_upstream_that_dies_in_the_middle_of_its_body_cuts_the_client_response(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async def half_a_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        upstream.requests.append(await read_request_head(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        reset(writer)

    async with (
        tcp_upstream(half_a_body) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        http.get(f"{gw.url}/open/x") as response,
    ):
        assert response.status == 200  # the head was already on its way
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), WAIT)


async def test_an_upstream_that_stalls_in_the_middle_of_its_body_past_timeout_is_cut(
    tmp_path: Path, issuer: TokenIssuer, http: aiohttp.ClientSession
) -> None:
    async def stalls(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(WAIT)
        return response

    async with (
        http_upstream(stalls) as upstream,
        gateway_before(tmp_path, issuer, upstream.url, timeout="300ms") as gw,
    ):
        started = time.monotonic()
        async with http.get(f"{gw.url}/open/x") as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), WAIT)
        assert time.monotonic() - started < 2.0


# -- answers complete before they are sent -------------------------------------------------------
# A small answer that has fully arrived is written to the client in one piece, from the
# upstream's header bytes; a larger or slower one streams through aiohttp's response. A client
# must not be able to tell which.

ANSWER_HEAD = (
    b"HTTP/1.1 201 Created\r\nX-A: 1\r\nConnection: x-hop, keep-alive\r\nX-Hop: drop\r\n"
    b"Keep-Alive: timeout=5\r\nX-Request-Id: forged\r\nTransfer-Encoding: chunked\r\n"
    b"X-B: 2\r\nX-A: 3\r\n\r\n"
)


async def whole_or_streamed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
) -> None:
    while True:
        head = await read_request_head(reader)
        upstream.requests.append(head)
        if b" /open/whole " in head:
            writer.write(ANSWER_HEAD + b"b\r\nhello world\r\n0\r\n\r\n")
        else:
            writer.write(ANSWER_HEAD + b"6\r\nhello \r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"5\r\nworld\r\n0\r\n\r\n")
        await writer.drain()


def end_to_end(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The headers, less those that frame the message or differ by request (id, time)."""
    varying = {"content-length", "transfer-encoding", "date", "x-request-id"}
    return [(k.lower(), v) for k, v in headers.items() if k.lower() not in varying]


async def test_an_answer_complete_before_it_is_sent_has_the_headers_of_a_streamed_one(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    async with (
        tcp_upstream(whole_or_streamed) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
    ):
        whole = await raw_request(gw.url, "/open/whole")
        streamed = await raw_request(gw.url, "/open/streamed")
    assert (whole.status, whole.body) == (streamed.status, streamed.body) == (201, b"hello world")
    assert end_to_end(whole.headers) == end_to_end(streamed.headers)
    assert [v for k, v in end_to_end(whole.headers) if k == "x-a"] == ["1", "3"]
    for hop in ("connection", "x-hop", "keep-alive"):
        assert hop not in whole.headers
    assert whole.headers["Content-Length"] == "11" and "Transfer-Encoding" not in whole.headers
    for response in (whole, streamed):
        assert response.headers["X-Request-Id"] != "forged"
        assert len(response.headers.getall("X-Request-Id")) == 1
        assert "Date" in response.headers


async def answer_by_status(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
) -> None:
    while True:
        head = await read_request_head(reader)
        status = head.split(b" ")[1].rsplit(b"/", 1)[1]
        if status == b"200":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:  # a length the gateway must not pass on: these answers never have a body
            writer.write(b"HTTP/1.1 %b Whatever\r\nContent-Length: 7\r\n\r\n" % status)
        await writer.drain()


async def test_204_and_304_answers_carry_no_length_and_the_next_request_is_answered(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    async with (
        tcp_upstream(answer_by_status) as upstream,
        gateway_before(tmp_path, issuer, upstream.url) as gw,
        open_raw(gw.url) as (reader, writer),
    ):
        for status in (204, 304, 200):
            writer.write(request_head("GET", f"/open/{status}", "gw"))
            await writer.drain()
            response = await read_response(reader)
            assert response.status == status
            if status == 200:
                assert response.body == b"ok"
            else:
                assert "Content-Length" not in response.headers


async def test_a_client_that_asks_to_close_is_told_so_and_its_connection_ends(
    echo: tuple[str, Upstream],
) -> None:
    url, _ = echo
    async with open_raw(url) as (reader, writer):
        writer.write(request_head("GET", "/open/x", "gw", [("Connection", "close")]))
        await writer.drain()
        response = await read_response(reader)
        assert response.status == 200
        assert response.headers["Connection"] == "close"
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
