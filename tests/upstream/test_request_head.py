"""What ``forward()`` writes to the upstream, byte for byte: the request line with the target
untouched, the Host line, the headers in their order, the body's framing; and a head that would
carry a line break in a value is never sent at all."""

from __future__ import annotations

import pytest

from tests.e2e.wire import raw_request, tcp_upstream

from .support import front, pool_to, recording

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_the_upstream_receives_the_method_target_host_and_headers_in_order() -> None:
    headers = [("X-B", "2"), ("Accept", "*/*"), ("X-A", "1"), ("X-B", "3")]
    target = "/a%2Fb/./c;p?x=%2F&y=a+b&&z=%zz"
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, headers) as url,
    ):
        answer = await raw_request(url, target, method="DELETE")
        assert (answer.status, answer.body) == (200, b"ok")
        port = pool.target.port
        assert upstream.requests == [
            f"DELETE {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "X-B: 2\r\nAccept: */*\r\nX-A: 1\r\nX-B: 3\r\n\r\n".encode()
        ]


async def test_a_host_given_replaces_the_upstreams_own_in_the_host_line() -> None:
    headers = [("X-A", "1"), ("X-B", "2")]
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, headers, host="api.example.test") as url,
    ):
        await raw_request(url, "/")
        assert upstream.requests == [
            b"GET / HTTP/1.1\r\nHost: api.example.test\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        ]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_request_that_carries_a_body_by_definition_gets_content_length_zero(
    method: str,
) -> None:
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, [("X-A", "1")]) as url,
    ):
        await raw_request(url, "/p", method=method)
        port = pool.target.port
        assert upstream.requests == [
            f"{method} /p HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-A: 1\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        ]


async def test_a_get_without_a_body_has_no_framing_header() -> None:
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        await raw_request(url, "/g")
        assert upstream.requests == [f"GET /g HTTP/1.1\r\nHost: {pool.host}\r\n\r\n".encode()]


async def test_a_streamed_body_without_a_length_is_sent_chunked() -> None:
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool) as url,
    ):
        answer = await raw_request(
            url, "/up", method="POST", headers=[("Transfer-Encoding", "chunked")], body=chunked
        )
        assert answer.status == 200
        [sent] = upstream.requests
        head, _, body = sent.partition(b"\r\n\r\n")
        assert (
            head == f"POST /up HTTP/1.1\r\nHost: {pool.host}\r\nTransfer-Encoding: chunked".encode()
        )
        assert dechunk(body) == b"hello world"


def dechunk(body: bytes) -> bytes:
    data, rest = bytearray(), body
    for _ in range(1000):
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert rest == b"\r\n"
            return bytes(data)
        data += rest[:size]
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    raise AssertionError("too many chunks")


async def test_a_streamed_body_with_a_length_is_sent_as_it_came() -> None:
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, [("Content-Length", "11")]) as url,
    ):
        await raw_request(url, "/up", method="PUT", body=b"hello world")
        assert upstream.requests == [
            f"PUT /up HTTP/1.1\r\nHost: {pool.host}\r\nContent-Length: 11\r\n\r\n".encode()
            + b"hello world"
        ]


async def test_a_chunked_body_over_the_limit_is_answered_413() -> None:
    chunked = b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n"
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, max_body_bytes=1000) as url,
    ):
        answer = await raw_request(
            url, "/up", method="POST", headers=[("Transfer-Encoding", "chunked")], body=chunked
        )
        assert answer.status == 413
        assert pool.idle == 0  # the upstream got a head and part of a body: never reused


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Evil", "a\r\nX-Injected: 1"),
        ("X-Evil", "a\nX-Injected: 1"),
        ("X-Evil", "a\rX-Injected: 1"),
        ("X-Evil", "a\0b"),
        ("X-Evil\r\nX-Injected", "1"),
    ],
)
async def test_a_header_with_a_line_break_is_refused_and_nothing_is_sent(
    name: str, value: str
) -> None:
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, [("X-A", "1"), (name, value)]) as url,
    ):
        answer = await raw_request(url, "/")
        assert answer.status == 502
        assert pool.opened == 0
        assert upstream.requests == []


async def test_a_target_with_a_line_break_is_refused_and_nothing_is_sent() -> None:
    async with (
        tcp_upstream(recording(OK)) as upstream,
        pool_to(upstream.url) as pool,
        front(pool, target="/a HTTP/1.1\r\nX-Injected: 1\r\nX:") as url,
    ):
        answer = await raw_request(url, "/")
        assert answer.status == 502
        assert pool.opened == 0
        assert upstream.requests == []
