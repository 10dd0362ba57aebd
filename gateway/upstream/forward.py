"""Forwarding a permitted request upstream and streaming the answer back (SPEC §4 "Forwarding").

Bodies are streamed both ways, never held whole: a 100 MB upload costs a few chunks of memory.
A body over the route's limit is refused with 413 as soon as it is known to be too large: at
once by ``Content-Length``, or by counting when it is chunked. The upstream hop is the
gateway's own HTTP/1.1 client (``http1``, pooled by ``client``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from itertools import chain

from aiohttp import HttpVersion11, web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from gateway.pipeline import errors

from .client import Deadline, UpstreamBusy, UpstreamPool
from .headers import copy_response_headers, http_date, response_head_lines
from .http1 import Http1Connection, UpstreamError

CHUNK = 64 * 1024

# Methods whose request carries a body by definition: sent with "Content-Length: 0" when the
# client sent none (RFC 9110 §8.6), as any HTTP/1.1 client library does.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _BodyError(Exception):
    """The client's request body could not be forwarded: over the limit, or malformed."""

    def __init__(self, *, exceeded: bool) -> None:
        super().__init__("request body over the limit" if exceeded else "malformed request body")
        self.exceeded = exceeded


class _SentResponse(web.StreamResponse):
    """An answer already written whole by :func:`_send_whole`: for aiohttp it is done
    (``prepare()`` and ``write_eof()`` do nothing once the end was sent)."""

    _eof_sent = True

    def __init__(self, status: int, *, keep_alive: bool) -> None:
        # What StreamResponse.__init__ sets, without its checks (the status came through
        # llhttp) and its reason phrase (the answer is sent: nothing reads it): one per answer.
        self._state = {}
        self._headers = CIMultiDict()
        self._status = status
        self._reason = ""
        self._keep_alive = keep_alive  # what aiohttp's server asks before reading on


class _WholeResponse(web.StreamResponse):
    """An answer whose body is complete before its head is sent: aiohttp holds the head back
    and writes it with the body (as it does for ``web.Response``), one send instead of two.
    A streamed answer's head goes at once, so that a slow body is not a slow head."""

    _send_headers_immediately = False


class Forwarded:
    """What happened upstream, for metrics and the access log. (A plain class: compiled, its
    ``__init__`` is native code, where a dataclass's is generated Python.)"""

    __slots__ = ("response", "upstream_seconds")

    def __init__(self, response: web.StreamResponse, upstream_seconds: float | None) -> None:
        self.response = response
        self.upstream_seconds = upstream_seconds


async def forward(
    request: web.BaseRequest,
    *,
    pool: UpstreamPool,
    target: str,
    headers: Sequence[tuple[str, str]],
    max_body_bytes: int,
    request_id: str,
    identity_lines: str = "",
    host: str | None = None,
    body: bytes | None = None,
    decorate: Callable[[CIMultiDict[str]], None] | None = None,
) -> Forwarded:
    """Send the request to ``target`` (path and query) and stream the answer to the client.

    ``headers`` go upstream in their order after the ``Host`` line (``host``, else the
    upstream's own), then ``identity_lines`` (header lines made and checked already, each
    ending in CRLF), then the framing the body needs. ``body`` is given when the request body
    was already read (a form searched for a second token); otherwise the body streams from the
    client, counted against ``max_body_bytes``. The answer gets ``X-Request-Id``, and whatever
    else ``decorate`` adds to its headers before it is sent (CORS).
    """
    streamed = body is None and request.body_exists
    started = time.perf_counter()
    upstream_seconds: float | None = None
    response: web.StreamResponse | None = None
    connection: Http1Connection | None = None
    sender: asyncio.Task[None] | None = None
    deadline = pool.deadline()
    slot = False
    try:
        if not pool.take_free_slot():
            await pool.take_slot()
        slot = True
        head = _request_head(
            request, target, headers, identity_lines, host or pool.host, body, streamed
        )
        connection = deadline.watch(pool.reuse() or await pool.connect())
        if streamed:
            connection.begin(head, no_body=request.method == "HEAD")
            sender = asyncio.ensure_future(
                _send_body(connection, request, max_body_bytes, request.content_length is not None)
            )
            await _first_of(sender, connection)
        else:
            connection = await _begin(pool, connection, head, body, request.method, deadline)
        status, reason, lines = await connection.response()
        upstream_seconds = time.perf_counter() - started
        whole = connection.body_if_complete()
        if (
            whole is not None
            and decorate is None
            and request.version == HttpVersion11
            and request.method != "CONNECT"
        ):
            response = _send_whole(request, status, reason, lines, whole, request_id)
            return Forwarded(response, upstream_seconds)
        # A body already here goes out in the same write as the head (one send, not two).
        kind = _WholeResponse if whole is not None else web.StreamResponse
        response = kind(status=status, reason=reason.decode("latin-1"))
        copy_response_headers(lines, response.headers)
        response.headers["X-Request-Id"] = request_id
        if decorate is not None:
            decorate(response.headers)
        await response.prepare(request)
        if whole is not None:
            await response.write_eof(whole)
        else:
            while chunk := await connection.read():
                await response.write(chunk)
            await response.write_eof()
        return Forwarded(response, upstream_seconds)
    except UpstreamBusy:
        return Forwarded(errors.upstream_busy(request_id), None)
    except _BodyError as error:
        if error.exceeded:
            return Forwarded(errors.too_large(request_id), upstream_seconds)
        return Forwarded(errors.bad_request(request_id, "the request body is malformed"), None)
    except (TimeoutError, UpstreamError, OSError) as failure:
        timed_out = deadline.expired or isinstance(failure, TimeoutError)
        if response is not None and response.prepared:
            return Forwarded(_cut(request, response), upstream_seconds)
        if timed_out:
            return Forwarded(errors.gateway_timeout(request_id), upstream_seconds)
        return Forwarded(errors.bad_gateway(request_id), upstream_seconds)
    finally:
        pool.forget(deadline)
        if sender is not None and not sender.done():
            sender.cancel()
            if connection is not None:
                connection.reusable = False  # the request was never sent whole
        elif (
            sender is not None
            and not sender.cancelled()
            and sender.exception() is not None
            and connection is not None
        ):
            # The body failed after the upstream had answered: that answer stood, the
            # connection did not (and the failure is retrieved, not reported as a lost task).
            connection.reusable = False
        if connection is not None:
            pool.release(connection)  # before the slot: whoever takes it finds the connection
        if slot:
            pool.free_slot()


_EMPTY_STATUSES = frozenset({204, 304, *range(100, 200)})  # never a body (RFC 9110 §6.4.1)
# Upstream header lines _send_whole writes its own of: the request id always, and the length
# of a body it frames.
_RENAMED = frozenset({b"x-request-id"})
_REFRAMED = _RENAMED | {b"content-length"}
_SERVER = SERVER_SOFTWARE.encode()


def _send_whole(
    request: web.BaseRequest,
    status: int,
    reason: bytes,
    lines: list[tuple[bytes, bytes]],
    body: bytes,
    request_id: str,
) -> web.StreamResponse:
    """Write an answer that is already complete to the client in one piece: the head made from
    the upstream's header bytes as parsed (hop-by-hop ones dropped), framed and completed the
    way aiohttp's response object would (Content-Length, Date, Server, Content-Type,
    ``Connection: close``), and the body. (Through that object it costs a third of the
    gateway's time on a small answer: headers decoded to text, re-encoded, looked up again.)

    Values need no check for line breaks here: the upstream's were parsed by llhttp, and the
    request id is a safe token (``request_id``)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        # The client left while the upstream answered: nothing to send it, and the answer is
        # logged with the upstream's status, as a cut streamed answer is.
        return _SentResponse(status, keep_alive=False)
    method = request.method
    empty = status in _EMPTY_STATUSES or method == "HEAD"
    # A HEAD answer keeps the length the upstream gave; any other body is framed here.
    own_length = not (method == "HEAD" and status not in _EMPTY_STATUSES)
    lines_out, present = response_head_lines(lines, _REFRAMED if own_length else _RENAMED)
    head = [b"HTTP/1.1 %d %b\r\n" % (status, reason), *lines_out]
    head += (b"X-Request-Id: ", request_id.encode("ascii"), b"\r\n")
    if not empty:
        head.append(b"Content-Length: %d\r\n" % len(body))
        if body and b"content-type" not in present:
            head.append(b"Content-Type: application/octet-stream\r\n")
    if b"date" not in present:
        head += (b"Date: ", http_date(), b"\r\n")
    if b"server" not in present:
        head += (b"Server: ", _SERVER, b"\r\n")
    keep_alive = request.keep_alive
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    if not empty:
        head.append(body)
    data = b"".join(head)
    transport.write(data)
    if request.writer is not None:
        request.writer.output_size += len(data)
    return _SentResponse(status, keep_alive=keep_alive)


def _request_head(
    request: web.BaseRequest,
    target: str,
    headers: Sequence[tuple[str, str]],
    identity_lines: str,
    host: str,
    body: bytes | None,
    streamed: bool,
) -> bytes:
    method = request.method
    if body is not None:
        # Re-sent whole: the client's own framing header no longer describes it.
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        framing = f"Content-Length: {len(body)}\r\n"
    elif streamed:
        framing = "" if request.content_length is not None else "Transfer-Encoding: chunked\r\n"
    elif method in _BODY_METHODS and request.content_length is None:
        framing = "Content-Length: 0\r\n"
    else:
        framing = ""
    # Every value was checked where it came from (the client's by llhttp, identity headers
    # when made): a line break or NUL here would be a bug, never sent as a header of its own.
    # (Three memchr scans of the parts joined: cheaper than counting the head's line ends.)
    parts = "".join([method, target, host, *chain.from_iterable(headers)])
    if "\n" in parts or "\r" in parts or "\0" in parts:
        raise UpstreamError("refusing to send a request head with a line break in a value")
    # Each (name, value) pair joined by ": " in C, with no Python step for each header line.
    fields = "\r\n".join(map(": ".join, headers))
    end = "\r\n" if headers else ""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{fields}{end}{identity_lines}{framing}\r\n"
    )
    return head.encode("utf-8", "surrogateescape")


async def _begin(
    pool: UpstreamPool,
    connection: Http1Connection,
    head: bytes,
    body: bytes | None,
    method: str,
    deadline: Deadline,
) -> Http1Connection:
    """Send a request whose body is known; once more on a new connection when a reused one
    turns out to have been closed by the upstream before it answered (a keep-alive race)."""
    data = head + body if body else head
    connection.begin(data, no_body=method == "HEAD")
    if not connection.reused:
        return connection
    try:
        await connection.response()
        return connection
    except UpstreamError:
        if connection.started or deadline.expired:
            raise
    pool.release(connection)
    connection = deadline.watch(await pool.connect(fresh=True))
    connection.begin(data, no_body=method == "HEAD")
    return connection


async def _send_body(
    connection: Http1Connection, request: web.BaseRequest, limit: int, sized: bool
) -> None:
    """Stream the client's body upstream, counted against ``limit`` as it goes."""
    received = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            received += len(chunk)
            if received > limit:
                raise _BodyError(exceeded=True)
            if sized:
                await connection.write(chunk)
            elif chunk:
                await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    except web.RequestPayloadError:
        # The client's framing broke mid-body (a bad chunk size), or its body stalled past
        # `body_timeout`: the client's fault, a 400, not the upstream's (502).
        raise _BodyError(exceeded=False) from None
    if not sized:
        await connection.write(b"0\r\n\r\n")


async def _first_of(sender: asyncio.Task[None], connection: Http1Connection) -> None:
    """Wait until the body is sent or the upstream answers, whichever is first; an upstream may
    answer (413, 401) before it has read a body, and that answer is relayed."""
    answer = connection.answer
    await asyncio.wait((sender, answer), return_when=asyncio.FIRST_COMPLETED)
    if not sender.done():
        return
    error = sender.exception()
    if isinstance(error, _BodyError):
        raise error  # 413 or 400, whatever the upstream said
    if error is not None and not (answer.done() and answer.exception() is None):
        raise error  # the upstream failed while the body was sent, and never answered


def _cut(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """The upstream failed after its status line was sent on: the only honest signal left is to
    close the client's connection, so that it sees a truncated body, never a complete-looking
    one. (Raising instead would reach the server's last-resort handler, which would write a
    second status line into the body of this one.)"""
    if request.transport is not None:
        request.transport.close()
    return response
