"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol around llhttp.

aiohttp's ``ClientSession`` spent more time per proxied request than the whole rest of the
gateway (bench/RESULTS.md): cookie jars, redirects, auto headers, tracing hooks, a timer per
phase. An upstream hop needs none of that, so the gateway speaks HTTP/1.1 to its upstreams
itself, parsing answers with ``httptools`` (the llhttp parser Node.js uses, strict: no
leniencies) and keeping the rest small:

- one request at a time per connection, never pipelined; the pool (``client.UpstreamPool``)
  reuses a connection only when its last answer was complete and allowed it;
- interim answers (``100 Continue``, ``103 Early Hints``) are skipped: the gateway answers the
  client's ``Expect`` itself and never forwards it;
- a response to HEAD has no body whatever its headers say; llhttp cannot be told so, so the
  connection is not reused after one;
- a body without a length ends when the upstream closes the connection cleanly (a FIN, not a
  reset, nor the gateway's own abort); every other early close is an error
  (``UpstreamError``), never a short body taken as complete;
- only HTTP/1.0 and 1.1 answers with a status of 100-599 are taken; trailer fields are
  dropped (they arrive after the head was passed on); anything after the final answer (a
  second answer, stray bytes) is ignored and the connection is not used again;
- both directions respect flow control: reading from the upstream pauses while
  ``READ_HIGH_WATER`` bytes wait for the client, and writes wait while the kernel's buffer is
  full.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

# Bytes of response body held for the client before reading from the upstream pauses.
READ_HIGH_WATER = 256 * 1024

# The most an answer's status line and header fields may hold (aiohttp's client allowed 8190
# bytes a line): llhttp has no bound of its own, and an upstream is not trusted to be sane.
MAX_HEAD_BYTES = 64 * 1024


class _Stop(Exception):
    """Raised from a parser callback to stop parsing what is left of a read."""


class UpstreamError(Exception):
    """The upstream broke the exchange: refused, reset, closed early or spoke invalid HTTP."""


class Http1Connection(asyncio.Protocol):
    """A client connection to one upstream, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # False once anything makes the next exchange unsafe. (A body that ends with the
        # connection leaves it True until then: finish() reuses only a complete exchange.)
        self.reusable = True
        self.reused = False  # it has carried an exchange before this one
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._lost = False
        self._loop = asyncio.get_running_loop()
        # The exchange in progress.
        self._active = False
        self._no_body = False  # the request was HEAD
        self._started = False  # a byte of the answer has arrived
        self._interim = False  # the message being parsed is a 1xx
        self._stray = False  # bytes came after the final answer
        self._head_bytes = 0
        self._head: asyncio.Future[tuple[int, bytes, list[tuple[bytes, bytes]]]] | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- what the pool and the forwarder use ----------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether an idle connection can carry another exchange."""
        transport = self.transport
        return (
            self.reusable
            and not self._lost
            and transport is not None
            and not transport.is_closing()
        )

    def begin(self, head: bytes, *, no_body: bool) -> None:
        """Start an exchange by writing the request head (and any body sent with it)."""
        assert self.transport is not None and not self._active
        self._active, self._no_body, self._started = True, no_body, False
        self._interim = self._complete = self._stray = False
        self._head_bytes = 0
        self._head = self._loop.create_future()
        self._reason, self._headers = b"", []
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        if self._lost:
            self._fail("the upstream closed the connection")
            return
        self.transport.write(head)

    async def write(self, data: bytes) -> None:
        """Send part of the request body, waiting while the socket's buffer is full."""
        if self._error is not None:
            raise self._error
        if self._lost or self.transport is None:
            raise UpstreamError("the upstream closed the connection")
        self.transport.write(data)
        if self._writing_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def response(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Status, reason and raw header lines of the (final) answer."""
        return await self.answer

    @property
    def answer(self) -> asyncio.Future[tuple[int, bytes, list[tuple[bytes, bytes]]]]:
        """The future of ``response()``, to wait on alongside something else."""
        assert self._head is not None
        return self._head

    @property
    def started(self) -> bool:
        """Whether any byte of an answer arrived (a failure before that may be retried)."""
        return self._started

    def body_if_complete(self) -> bytes | None:
        """The whole body, when all of it has already arrived (the common small answer)."""
        if not self._complete:
            return None
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        return body

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < READ_HIGH_WATER // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        return chunk

    def finish(self) -> bool:
        """End the exchange; True when the connection may carry another one."""
        self._active = False
        head = self._head
        if head is not None and head.done() and not head.cancelled():
            head.exception()  # retrieved: a failure nobody awaited is not logged as lost
        done = self._complete and not self._chunks and self._error is None
        self.reusable = self.reusable and done and not self._no_body
        self.reused = True
        if not self.reusable:
            self.close()
        return self.reusable

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes; they have their methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._active or self._complete or self._error is not None:
            # Bytes no request asked for: nothing later on this connection can be trusted.
            self._stray = True
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the upstream switched protocols unasked")
        except httptools.HttpParserError:
            if self._stray:
                self.abort()  # the answer before them stands
            else:
                self._fail("the upstream's answer is not valid HTTP/1.1")

    def eof_received(self) -> bool | None:
        # A clean close by the upstream: the end of a body that has no length. A reset, or
        # the gateway's own abort, never comes here and so never ends a body as complete.
        self.reusable = False
        head = self._head
        if (
            self._active
            and not self._complete
            and head is not None
            and head.done()
            and not head.cancelled()
            and head.exception() is None
        ):
            status, _, lines = head.result()
            if self._reads_until_close(status, lines):
                self._complete = True
                self._wake()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.reusable = False
        if self._active and not self._complete:
            self._fail("the upstream closed the connection")
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # A second answer after the final one: never part of this exchange.
            self._stray = True
            self.reusable = False
            raise _Stop
        self._started = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._count_head(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        # _count_head inlined: this runs for every header line of every answer. Trailer fields
        # count too, and go to a list nobody reads (see on_headers_complete).
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail("the upstream's answer head is too large")
            raise _Stop
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            self._fail(f"the upstream answered with status {status}")
            raise _Stop
        if self._parser.get_http_version() not in ("1.1", "1.0"):
            self._fail("the upstream answered in another version than HTTP/1.x")
            raise _Stop
        if status < 200:
            # An interim answer; llhttp completes it as a message of its own.
            self._interim = True
            self._reason, self._headers = b"", []
            return
        # Whether the body ends with the connection is asked only when the connection ends
        # (eof_received): until then, such a body is not complete, so the connection is not
        # reused whatever it is.
        head, lines = self._head, self._headers
        self._headers = []  # for trailer fields, which are dropped
        if head is not None and not head.done():
            head.set_result((status, self._reason, lines))
        if self._no_body:
            self._complete = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._no_body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete = True
        self._wake()

    # -- inside ---------------------------------------------------------------------------

    def _reads_until_close(self, status: int, lines: list[tuple[bytes, bytes]]) -> bool:
        """Whether an answer with this status and these header lines ends with the connection."""
        if self._no_body or status in (204, 304):
            return False
        length = False
        for name, value in lines:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                # RFC 9112 §6.3: chunked framing only when chunked is the last coding.
                return value.rpartition(b",")[2].strip().lower() != b"chunked"
            if lowered == b"content-length":
                length = True
        return not length

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail("the upstream's answer head is too large")
            raise _Stop

    def _fail(self, message: str) -> None:
        if self._error is not None:
            return
        self._error = UpstreamError(message)
        self.abort()
        head = self._head
        if head is not None and not head.done():
            head.set_exception(self._error)
        self._wake()

    def _wake(self) -> None:
        waiter, self._body_waiter = self._body_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
