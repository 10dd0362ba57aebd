"""Request smuggling: a request whose framing two servers could read differently is refused, and
a second request hidden in its body never reaches the upstream as a request of its own.

Each case is one raw byte string: a public POST whose body, read the other way, ends early and
leaves ``GET /admin/secret`` (a protected path) as a second, pipelined request. The upstream is a
byte-level server that records every request line it receives, so "forwarded as two requests"
is checked on the upstream's side of the gateway, not inferred from the client's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.wire import IO_TIMEOUT, RawResponse, TcpUpstream, read_response, tcp_upstream
from tests.support import RunningGateway, TokenIssuer, running_gateway, write_config

CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
upstreams:
  recorder: {{url: "{upstream}"}}
routes:
  - name: open
    match: {{path: /open/**}}
    upstream: recorder
    auth: public
  - name: admin
    match: {{path: /admin/**}}
    upstream: recorder
"""

ISSUER = TokenIssuer()
SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: gw\r\nX-Smuggled: 1\r\n\r\n"
# Sent after every case on the same connection: if it is answered, the connection was still in
# step after the case; what the upstream received before it tells how the case was read.
SENTINEL = b"GET /open/sentinel HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"


def post(*headers: bytes, body: bytes, start: bytes = b"POST /open/a HTTP/1.1") -> bytes:
    return start + b"\r\nHost: gw\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def length(body: bytes) -> bytes:
    return str(len(body)).encode()


CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
SMUGGLED_AS_A_CHUNK = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"


def bad_chunk(size: bytes) -> bytes:
    """A chunked body whose first chunk size is ``size`` (meant as 5), then the smuggled one."""
    return post(b"Transfer-Encoding: chunked", body=size + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED)


# Framing that one reader or another gets wrong: every one is refused before anything is sent on.
AMBIGUOUS: dict[str, bytes] = {
    "content-length-and-chunked": post(
        b"Content-Length: " + length(CHUNKED_THEN_SMUGGLED),
        b"Transfer-Encoding: chunked",
        body=CHUNKED_THEN_SMUGGLED,
    ),
    "chunked-and-content-length": post(
        b"Transfer-Encoding: chunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "two-content-lengths-different": post(
        b"Content-Length: 0", b"Content-Length: " + length(SMUGGLED), body=SMUGGLED
    ),
    "two-content-lengths-same": post(
        b"Content-Length: " + length(SMUGGLED),
        b"Content-Length: " + length(SMUGGLED),
        body=SMUGGLED,
    ),
    "content-length-list": post(
        b"Content-Length: " + length(SMUGGLED) + b", " + length(SMUGGLED), body=SMUGGLED
    ),
    "content-length-plus-sign": post(b"Content-Length: +0", body=SMUGGLED),
    "content-length-negative": post(b"Content-Length: -1", body=SMUGGLED),
    "content-length-hex": post(b"Content-Length: 0x0", body=SMUGGLED),
    "content-length-two-numbers": post(b"Content-Length: 0 " + length(SMUGGLED), body=SMUGGLED),
    "obs-fold-on-a-header": post(
        b"X-Folded: a", b" b", b"Content-Length: " + length(SMUGGLED), body=SMUGGLED
    ),
    "obs-fold-hiding-chunked": post(
        b"Transfer-Encoding: identity", b" chunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "obs-fold-with-a-tab": post(
        b"X-Folded: a", b"\tTransfer-Encoding: chunked", b"Content-Length: 3", body=SMUGGLED
    ),
    "http-0.9-request-line": b"GET /open/a\r\nHost: gw\r\n\r\n" + SMUGGLED,
    "http-0.9-request-line-alone": b"GET /open/a\r\n",
    "bare-lf-request-line": b"GET /open/a HTTP/1.1\nHost: gw\r\n\r\n" + SMUGGLED,
    "bare-lf-header-lines": b"GET /open/a HTTP/1.1\r\nHost: gw\nX-A: b\n\n" + SMUGGLED,
    "bare-lf-before-transfer-encoding": post(
        b"X-A: b\nTransfer-Encoding: chunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "http-1.0-chunked-then-a-pipelined-request": post(
        b"Transfer-Encoding: chunked", body=SMUGGLED_AS_A_CHUNK, start=b"POST /open/a HTTP/1.0"
    ),
    "bare-cr-in-a-header": post(b"X-A: b\rTransfer-Encoding: chunked", body=SMUGGLED_AS_A_CHUNK),
    "chunk-size-negative": bad_chunk(b"-5"),
    "chunk-size-hex-overflow": bad_chunk(b"1" + b"0" * 16 + b"5"),
    "chunk-size-0x-prefix": bad_chunk(b"0x5"),
    "chunk-size-0x10": post(b"Transfer-Encoding: chunked", body=b"0x10\r\n" + SMUGGLED[:16]),
    "chunk-size-leading-space": bad_chunk(b" 5"),
    "chunk-size-trailing-space": bad_chunk(b"5 "),
    "chunk-size-trailing-tab": bad_chunk(b"5\t"),
    "chunk-size-plus-sign": bad_chunk(b"+5"),
    "chunk-size-underscore": bad_chunk(b"0_5"),
    "chunk-size-empty": bad_chunk(b""),
    "chunk-size-bare-lf": post(b"Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n" + SMUGGLED),
    "chunk-extension-bare-lf": bad_chunk(b"5;a\nb"),
    "chunk-data-longer-than-its-size": post(
        b"Transfer-Encoding: chunked", body=b"2\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    ),
    "transfer-encoding-chunked-identity": post(
        b"Transfer-Encoding: chunked, identity", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-xchunked": post(
        b"Transfer-Encoding: xchunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-chunked-twice-in-one": post(
        b"Transfer-Encoding: chunked, chunked", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-duplicated": post(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-duplicated-identity": post(
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: identity",
        b"Content-Length: 3",
        body=SMUGGLED_AS_A_CHUNK,
    ),
    "transfer-encoding-space-before-colon": post(
        b"Transfer-Encoding : chunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-vertical-tab": post(
        b"Transfer-Encoding:\x0bchunked", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
    "transfer-encoding-nul": post(
        b"Transfer-Encoding: chunked\x00", b"Content-Length: 3", body=SMUGGLED_AS_A_CHUNK
    ),
}

# Unusual but well-defined framing: accepted, and read exactly one way (the smuggled bytes stay
# data inside the one request's body).
WELL_FRAMED: dict[str, bytes] = {
    "chunked-in-upper-case": post(b"Transfer-Encoding: CHUNKED", body=SMUGGLED_AS_A_CHUNK),
    "chunked-after-a-tab": post(b"Transfer-Encoding:\tchunked", body=SMUGGLED_AS_A_CHUNK),
    "chunked-with-an-extension": post(
        b"Transfer-Encoding: chunked",
        body=b"%x;ext=1\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    ),
    "chunked-with-a-trailer": post(
        b"Transfer-Encoding: chunked",
        body=b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\nX-Trailer: 1\r\n\r\n",
    ),
    "content-length-with-leading-zeros": post(
        b"Content-Length: 000" + length(SMUGGLED), body=SMUGGLED
    ),
    "get-with-a-body": post(
        b"Content-Length: " + length(SMUGGLED), body=SMUGGLED, start=b"GET /open/a HTTP/1.1"
    ),
}


# -- the recording upstream --------------------------------------------------------------------


@dataclass
class Recorder:
    """Every request line the upstream read, and each request's body, in order."""

    upstream: TcpUpstream
    bodies: list[bytes] = field(default_factory=list)

    @property
    def request_lines(self) -> list[bytes]:
        return [head.split(b"\r\n", 1)[0] for head in self.upstream.requests]


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return bytes(body)
    return await reader.readexactly(int(fields.get(b"content-length", b"0")))


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    bodies: list[bytes] = []

    async def record(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: TcpUpstream
    ) -> None:
        while True:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            upstream.requests.append(head)
            bodies.append(await asyncio.wait_for(_read_body(reader, head), IO_TIMEOUT))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with tcp_upstream(record) as upstream:
        yield Recorder(upstream, bodies)


@pytest.fixture
async def gateway(tmp_path: Path, recorder: Recorder) -> AsyncIterator[RunningGateway]:
    ISSUER.write_jwks(tmp_path / "corp.jwks.json")
    path = write_config(tmp_path, CONFIG, issuer=ISSUER.issuer, upstream=recorder.upstream.url)
    async with running_gateway(path) as gateway:
        yield gateway


# -- the client --------------------------------------------------------------------------------


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + IO_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


async def exchange(gateway: RunningGateway, *parts: bytes, pause: float = 0.0) -> list[RawResponse]:
    """Write ``parts`` on one connection (``pause`` seconds apart) and return every response
    the gateway sent before closing it. Reading starts first, so that an answer is taken in
    before a reset (the gateway closing with bytes of ours unread) could discard it."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", gateway.server.public_port), IO_TIMEOUT
    )
    received = asyncio.ensure_future(_until_closed(reader))
    try:
        for index, part in enumerate(parts):
            if index and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
    except ConnectionError:
        pass  # closed by the gateway on an earlier part
    finally:
        raw = await received
        writer.close()
    answers = asyncio.StreamReader()
    answers.feed_data(raw)
    answers.feed_eof()
    responses: list[RawResponse] = []
    while not answers.at_eof():
        responses.append(await read_response(answers))
    return responses


# -- tests -------------------------------------------------------------------------------------


async def test_the_recorder_sees_each_of_two_pipelined_requests(
    gateway: RunningGateway, recorder: Recorder
) -> None:
    # Without this, "the upstream saw one request line" below could mean it never saw any.
    responses = await exchange(gateway, b"GET /open/first HTTP/1.1\r\nHost: gw\r\n\r\n" + SENTINEL)
    assert [r.status for r in responses] == [200, 200]
    assert recorder.request_lines == [b"GET /open/first HTTP/1.1", b"GET /open/sentinel HTTP/1.1"]


@pytest.mark.parametrize("case", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_ambiguous_framing_is_refused_with_400_and_nothing_is_forwarded(
    gateway: RunningGateway, recorder: Recorder, case: bytes
) -> None:
    responses = await exchange(gateway, case + SENTINEL)
    # One answer, a 400, then the connection is closed: neither the smuggled request nor the
    # sentinel after it is read as a request of its own.
    assert [r.status for r in responses] == [400]
    assert responses[0].headers["Content-Type"].startswith("application/json")
    assert b"/admin/secret" not in responses[0].body  # the answer never quotes the request
    assert recorder.request_lines == []


@pytest.mark.parametrize(
    "request_line",
    [b"GET /open/a HTTP/2.0", b"GET /open/a HTTP/3.0", b"GET /open/a HTTP/1.2", b"PRI * HTTP/2.0"],
)
async def test_a_request_of_an_http_version_other_than_1_0_and_1_1_is_refused_with_an_http_1_400(
    gateway: RunningGateway, recorder: Recorder, request_line: bytes
) -> None:
    # Alone on its connection: llhttp parses "HTTP/2.0" and, left alone, aiohttp would forward
    # it and answer with "HTTP/2.0" in its status line, which no HTTP/1 client can read.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.public_port)
    try:
        writer.write(request_line + b"\r\nHost: gw\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
    finally:
        writer.close()
    assert raw.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), raw[:40]
    assert b"application/json" in raw.split(b"\r\n\r\n", 1)[0]
    assert recorder.request_lines == []


@pytest.mark.parametrize("case", WELL_FRAMED.values(), ids=WELL_FRAMED.keys())
async def test_unusual_but_well_defined_framing_is_read_as_exactly_one_request(
    gateway: RunningGateway, recorder: Recorder, case: bytes
) -> None:
    responses = await exchange(gateway, case + SENTINEL)
    statuses = [r.status for r in responses]
    lines = recorder.request_lines
    assert b"GET /admin/secret HTTP/1.1" not in lines
    assert lines[0].startswith((b"POST /open/a ", b"GET /open/a "))
    assert recorder.bodies[0] == SMUGGLED  # the would-be second request is data
    # The sentinel is the second request, and the last.
    assert statuses == [200, 200]
    assert lines[1:] == [b"GET /open/sentinel HTTP/1.1"]


async def test_an_http_1_0_chunked_body_is_read_as_one_request_and_ends_the_connection(
    gateway: RunningGateway, recorder: Recorder
) -> None:
    # RFC 9112 §6.1: chunked framing in HTTP/1.0 is suspect; the gateway re-frames the body
    # itself, and closes the connection after answering.
    case = post(
        b"Transfer-Encoding: chunked", body=SMUGGLED_AS_A_CHUNK, start=b"POST /open/a HTTP/1.0"
    )
    responses = await exchange(gateway, case)
    assert [r.status for r in responses] == [200]
    assert recorder.request_lines == [b"POST /open/a HTTP/1.1"]
    assert recorder.bodies == [SMUGGLED]


@pytest.mark.parametrize(
    "size", [b"-5", b"0x5", b"1" + b"0" * 16 + b"5", b" 5", b"5 ", b"zz"], ids=repr
)
async def test_a_bad_chunk_size_after_the_body_started_streaming_never_forwards_two_requests(
    gateway: RunningGateway, recorder: Recorder, size: bytes
) -> None:
    head = post(b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n")
    rest = size + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED + SENTINEL
    responses = await exchange(gateway, head, rest, pause=0.3)
    # The head was already on its way upstream when the bad size came: the request fails at
    # once with one 400 (the client's fault, not a 502), the connection is closed, and the
    # upstream never sees a complete body or a request line other than the first.
    assert [r.status for r in responses] == [400]
    assert responses[0].headers["Content-Type"].startswith("application/json")
    await asyncio.sleep(0.2)
    assert recorder.request_lines in ([], [b"POST /open/a HTTP/1.1"])
    assert recorder.bodies == []


async def test_an_underscored_transfer_encoding_is_data_to_the_gateway_and_never_forwarded(
    gateway: RunningGateway, recorder: Recorder
) -> None:
    # The gateway frames by Content-Length; an upstream that reads Transfer_Encoding as
    # Transfer-Encoding (CGI and WSGI map "_" and "-" to one name) would frame by chunks.
    case = post(
        b"Transfer_Encoding: chunked",
        b"Content-Length: " + length(SMUGGLED_AS_A_CHUNK),
        body=SMUGGLED_AS_A_CHUNK,
    )
    responses = await exchange(gateway, case + SENTINEL)
    assert [r.status for r in responses] == [200, 200]
    assert recorder.request_lines == [b"POST /open/a HTTP/1.1", b"GET /open/sentinel HTTP/1.1"]
    assert recorder.bodies[0] == SMUGGLED_AS_A_CHUNK
    assert b"transfer_encoding" not in recorder.upstream.requests[0].lower()
