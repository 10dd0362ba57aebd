"""The public listener's client connections: the common request served here, the rest by
aiohttp's server.

aiohttp's server wraps every request in machinery the common case does not need: limits and
timers re-armed per read (``GuardedConnection``), a queue of parsed messages, a payload stream
set up for every request. Most requests an API gateway sees are well-formed HTTP/1.1 requests
without a body whose head arrives in one read: a :class:`ClientConnection` parses each such head
with aiohttp's own parser (so it is read exactly as aiohttp would read it, every refusal
included), makes the same request object aiohttp would, and answers it in the connection's one
task (its worker), which waits on a future between requests. In bench/callgrind.py this took a
public request from 264k to 237k instructions; one task a connection rather than one a request,
a further 222k to 219.5k.

Anything else is *handed over*: the connection becomes aiohttp's (``hand_over()`` makes a
:class:`~gateway.server.GuardedConnection`), which gets every byte not yet answered and keeps the
connection to its end, so that every limit, timeout, refusal and upgrade it applies still
applies, unchanged: a head that arrives in pieces (slow clients, ``header_timeout``), a head
longer than one header line may be, a body of any kind, an upgrade (WebSocket), ``CONNECT``,
HTTP/1.0, a target that is not a path, and any head aiohttp's parser refuses (it answers it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_parser import HttpRequestParser
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.tcp_helpers import tcp_keepalive, tcp_nodelay

from gateway.config.compile import ConnectionLimits
from gateway.observe.logs import get_logger

log = get_logger("gateway.server")

# Bytes of pipelined requests held while one is answered, before reading pauses.
PIPELINE_HIGH_WATER = 64 * 1024

# The name of a connection's task (its worker, below), by which tests and operators find it.
WORKER_NAME = "gateway-client-connection"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# A parsed request head: aiohttp's ``RawRequestMessage``. Typed loosely, as this module is
# compiled (setup.py) and compiled code checks the types it is given: the stubs declare a
# NamedTuple, and aiohttp's C parser makes a class of its own.
Message = Any


class ClientConnection(asyncio.Protocol):
    """One client connection of the public listener, until (if ever) it is handed over.

    Requests are answered one at a time, in order; bytes of the next ones wait meanwhile
    (pipelining). The connection closes when idle for ``idle_timeout`` (from its start, too:
    a client that never sends a request does not hold it), after a request or answer that
    does not keep it alive, and at shutdown (idle ones at once, busy ones after their answer).
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        limits: ConnectionLimits,
        handler: Handler,
        hand_over: Callable[[], asyncio.Protocol],
        registry: set[ClientConnection],
    ) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        # Flow control, as aiohttp's StreamWriter reads it (``_paused``, ``_drain_helper``):
        # the attributes of aiohttp's BaseProtocol, which a compiled class cannot derive from.
        self._paused = False  # writing: the transport's buffer is full
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._limits = limits
        self._handler = handler
        self._hand_over = hand_over
        self._registry = registry
        # aiohttp's own parser, with the limits its server applies (the buffer size is for
        # bodies, which are aiohttp's to read: a head with one is handed over unread, so the
        # parser never feeds this class a body and needs none of BaseProtocol's reading).
        self._parser_state = HttpRequestParser(
            self,  # type: ignore[arg-type]
            loop,
            2**16,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_line_bytes,
            max_headers=limits.max_headers,
        )
        self._pending = b""  # bytes received and not yet answered
        # The connection's one task, which serves its requests in turn (one task a request
        # would cost more: Python 3.11 records each new task in a WeakSet); _serving while a
        # request is served, else waiting on _waiter for the next one. Its requests share its
        # request.task and its contextvars context: bind no context variable per request.
        self._worker: asyncio.Task[None] | None = None
        self._serving: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[Message | None] | None = None
        self._closing = False  # no further request: shutting down
        self._idle_since = 0.0
        self._idle_check: asyncio.TimerHandle | None = None
        # What aiohttp's request object reads from its protocol.
        self.ssl_context = None
        self.peername: object = None
        self.sockname: object = None
        # request.remote, worked out once a connection as aiohttp's request would work it out
        # (each request's own look-up cost more than the rest of its making).
        self._remote: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tcp_nodelay(self.transport, True)
        tcp_keepalive(self.transport)
        self.peername = peer = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        if isinstance(peer, (list, tuple)):
            self._remote = str(peer[0])
        elif peer is not None:
            self._remote = str(peer)
        self._registry.add(self)
        self._idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._resume_writer(exc)
        self._registry.discard(self)
        self._stop_idle_check()
        self._wake(None)  # an idle worker ends
        # A request in progress runs to its end (as with aiohttp's server): its answer is
        # logged, and the upstream connection it holds is released properly.

    def data_received(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        self._pending = data
        if self._serving is not None:
            if len(data) > PIPELINE_HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self._pause_transport_reading()
            return
        self._next()

    def eof_received(self) -> None:
        return None  # the transport closes (a request in progress still runs to its end)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._resume_writer(None)

    # -- flow control -------------------------------------------------------------------------

    async def _drain_helper(self) -> None:
        """Wait until the transport takes writes again (aiohttp's StreamWriter calls it)."""
        if self.transport is None:
            raise ClientConnectionResetError("Connection lost")
        if not self._paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        await self._drain_waiter

    def _resume_writer(self, exc: BaseException | None) -> None:
        """Wake a writer waiting in ``_drain_helper``: writing resumed, or the connection
        was lost (``exc``: how)."""
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            error = ConnectionError("Connection lost")
            error.__cause__ = exc
            waiter.set_exception(error)

    def _pause_transport_reading(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
                self.transport.pause_reading()

    def _resume_transport_reading(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
                self.transport.resume_reading()

    # -- requests -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the request at the start of what is pending, or hand the connection over."""
        message = self._take()
        if message is None:
            return
        if self._waiter is not None:
            self._serving = self._worker
            self._wake(message)
        else:
            worker = self._loop.create_task(self._work(message), name=WORKER_NAME)
            self._serving = self._worker = worker

    def _take(self) -> Message | None:
        """The request at the start of what is pending, taken from it; or None, the
        connection handed over."""
        data = self._pending
        end = data.find(b"\r\n\r\n")
        message = None
        if end >= 0 and end + 4 <= self._limits.max_line_bytes:
            message = self._parse(data[: end + 4])
        if message is None:
            self._give_away()
            return None
        self._pending = data[end + 4 :]
        return message

    def _wake(self, message: Message | None) -> None:
        """Give the idle worker its next request, or None: there is none, it ends."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def _work(self, message: Message | None) -> None:
        """The worker: each request in turn, while the connection is kept alive."""
        try:
            while message is not None:
                if not await self._serve(message):
                    return
                if self._pending:  # pipelined: the next request is here already
                    message = self._take()
                    continue
                self._serving = None
                self._idle()
                self._waiter = self._loop.create_future()
                message = None  # the last request is not held while the connection is idle
                message = await self._waiter
        finally:
            # However it ends (cancelled while idle, too), the next request gets a new worker.
            self._serving = self._waiter = None

    def _parse(self, head: bytes) -> Message | None:
        """The request in ``head`` (one whole head), if it is one served here."""
        try:
            parsed: Any = self._parser_state.feed_data(head)  # (messages, upgraded, tail)
        except Exception:  # anything aiohttp refuses: it will say so, in its own words
            return None
        messages, upgraded = parsed[0], parsed[1]
        if len(messages) != 1 or upgraded:
            return None
        message, payload = messages[0]
        if (
            payload is not EMPTY_PAYLOAD  # a body follows
            or message.version != HttpVersion11
            or message.upgrade
            or not message.path.startswith("/")
        ):
            return None
        return message

    async def _serve(self, message: Message) -> bool:
        """Answer one request; whether the connection goes on to the next one."""
        loop = self._loop
        # This task is _serving (the worker); asyncio.current_task() would cost a
        # getpid() system call on Python 3.11, as does every other look-up of the running loop.
        task = self._serving
        assert task is not None
        # Passed as aiohttp's RequestHandler, and as the writer's BaseProtocol: the request and
        # the writer read only what this class has too.
        request = web.BaseRequest(
            message,
            EMPTY_PAYLOAD,
            self,  # type: ignore[arg-type]
            StreamWriter(self, loop),  # type: ignore[arg-type]
            task,
            loop,
            remote=self._remote,
        )
        keep_alive = False
        try:
            response = await self._handler(request)
            if not response.prepared:
                await response.prepare(request)
                await response.write_eof()
            keep_alive = bool(response.keep_alive) and not message.should_close
            if keep_alive and self._paused:
                await self._drain_helper()  # the answer is still leaving: no next one yet
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the shutdown deadline came: nothing more to send
        except Exception:
            # The gateway answers its own failures; this is one after an answer had begun
            # (a second status line would be read as its body): all that is left is to close.
            log.exception("response_failed")
        if not keep_alive or self._closing or self.transport is None:
            self._close_transport()
            return False
        if self._reading_paused:
            self._reading_paused = False
            self._resume_transport_reading()
        return True

    def _give_away(self) -> None:
        """Hand the connection, and what it sent that is not answered yet, to aiohttp."""
        transport, data = self.transport, self._pending
        self._pending = b""
        self._stop_idle_check()
        self._wake(None)  # an idle worker ends
        self._registry.discard(self)
        if transport is None:
            return
        self.transport = None
        if self._reading_paused:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                transport.resume_reading()
        successor = self._hand_over()
        transport.set_protocol(successor)
        successor.connection_made(transport)
        successor.data_received(data)

    # -- idle connections and shutdown --------------------------------------------------------

    def _idle(self) -> None:
        self._idle_since = self._loop.time()
        if self._idle_check is None:
            self._idle_check = self._loop.call_at(
                self._idle_since + self._limits.idle_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        """Close the connection once it has been idle ``idle_timeout``; one timer a connection,
        moved on when it fires early, rather than one a request."""
        self._idle_check = None
        if self.transport is None or self._serving is not None:
            return
        expiry = self._idle_since + self._limits.idle_timeout
        if self._loop.time() < expiry:
            self._idle_check = self._loop.call_at(expiry, self._check_idle)
        else:
            self._close_transport()

    def _stop_idle_check(self) -> None:
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Serve no further request: close now if idle, else once the answer is sent."""
        self._closing = True
        if self._serving is None:
            self._wake(None)
            self._close_transport()

    async def shutdown(self, timeout: float | None) -> None:
        """Give the request in progress up to ``timeout`` to finish, then close."""
        self.close()
        serving = self._serving
        if serving is not None:
            await asyncio.wait((serving,), timeout=timeout)
            if not serving.done():
                serving.cancel()
                await asyncio.wait((serving,))
        self._close_transport()
