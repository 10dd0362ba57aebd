"""The listeners and their lifecycle: start, serve, reload, drain, stop (SPEC §8).

The public listener is aiohttp's low-level server, with a short way of its own for the common
request (``gateway.downstream``): every request goes to the current :class:`Gateway`, with no
framework routing in between (the gateway does its own, on the normalised path). A reload
builds a whole new Gateway from the file and swaps it in at once: requests in flight finish on
the one they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError, _ErrInfo

from gateway.admin import admin_app
from gateway.config import ConfigError, load_and_compile
from gateway.config.compile import CompiledConfig, ConnectionLimits
from gateway.downstream import ClientConnection
from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics
from gateway.pipeline import errors
from gateway.proxy import Gateway, Listener
from gateway.upstream.headers import request_id

log = get_logger("gateway.server")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))


class GuardedConnection(RequestHandler):
    """aiohttp's handler of one client connection, with the bounds it lacks (``limits``).

    aiohttp closes idle connections (``keepalive_timeout``: ``idle_timeout``) and bounds each
    header line and their number, but lets a client spend forever on a request head sent a byte
    at a time (slowloris), pause in the middle of a body for as long as it likes, and send up to
    ``max_headers`` lines of the maximum length. Here, besides:

    - a head must be complete within ``header_timeout`` of its first byte: else 408, closed;
    - a body may pause at most ``body_timeout`` while the gateway is ready to read it: else the
      request fails and the connection is closed (the clock starts when the head ends: a client
      waiting for ``100 Continue`` waits while its token is checked);
    - a head over ``max_head_bytes`` is refused with 431 (a head pipelined behind a body in the
      same read is bounded only by aiohttp's limits on lines);
    - framing that breaks in the middle of a body (a bad chunk size) fails the request reading
      that body at once; aiohttp would leave it waiting for bytes it will never parse, and only
      then answer 400 as if to a second request;
    - a request line of HTTP/0.9 (no version) or HTTP/2.0 is refused with 400, like any other
      version but 1.0 and 1.1 and any unparseable head.

    It relies on RequestHandler internals (``_messages``, ``_upgraded``, ``_payload_parser``, the
    read-pause flags); tests/hostile/test_slow_clients.py fails if they change.
    """

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_started: float | None = None  # first byte of a head not yet complete
        self._head_bytes = 0
        self._body: StreamReader | None = None  # the body of the last head parsed
        self._body_read = 0.0  # when a piece of that body last came
        self._deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._payload_parser is not None:
            super().data_received(data)  # a WebSocket: frames, not requests
            return
        now = self._loop.time()
        # No data: aiohttp re-parsing what it held back while its queue of requests was full.
        if not data and self._parse(data):
            self._head_started, self._head_bytes = None, 0
        while data and not (self._close or self._force_close):
            if self._in_body():
                self._body_read = now
                self._parse(data)
                break
            if self._head_started is None:
                self._head_started = now
            # Parse no more than the head may still grow by: a 1 MB head in one read is
            # refused at 64 KiB, not read whole first.
            budget = self._limits.max_head_bytes - self._head_bytes
            if len(data) <= budget:
                piece, data = data, b""  # the common read: no copies
            else:
                piece, data = data[:budget], data[budget:]
            if self._parse(piece):
                self._head_started, self._head_bytes = None, 0
                self._body_read = now
            else:
                self._head_bytes += len(piece)
                if data:
                    self._refuse(431, "the request headers are too large")
        self._arm()

    def _parse(self, data: bytes) -> bool:
        """Feed aiohttp's parser; True when it completed at least one head (or gave up)."""
        body, before = self._body, self._request_count
        super().data_received(data)
        added = self._request_count - before
        if not added:
            return False
        for index in range(len(self._messages) - added, len(self._messages)):
            message, payload = self._messages[index]
            if not isinstance(message, _ErrInfo) and message.version.major != 1:
                # llhttp reads "GET /x\r\n" as HTTP/0.9 (the header lines after it would be
                # read as further requests) and accepts "HTTP/2.0" in a request line; aiohttp
                # would answer either with that version in its status line.
                refusal = BadHttpMessage(f"HTTP/{message.version.major} is not served here")
                self._messages[index] = (_ErrInfo(400, refusal, refusal.message), payload)
        message, payload = self._messages[-1]
        if not isinstance(message, _ErrInfo):
            self._body = payload
        elif body is not None and not body.is_eof():
            body.set_exception(RequestPayloadError("the request body is malformed"))
            self.close()  # after that request: nothing further on this connection is trusted
        return True

    def _in_body(self) -> bool:
        return self._body is not None and not self._body.is_eof()

    def _expiry(self) -> float | None:
        if self._upgraded or self._payload_parser is not None:
            return None
        if self._in_body():
            return self._body_read + self._limits.body_timeout
        if self._head_started is not None:
            return self._head_started + self._limits.header_timeout
        return None

    def _arm(self) -> None:
        """Schedule a check at the next expiry, unless one comes no later."""
        expiry = self._expiry()
        if expiry is None or (self._deadline is not None and self._deadline.when() <= expiry):
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_at(expiry, self._check)

    def _check(self) -> None:
        self._deadline = None
        if self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if self._in_body() and (self._reading_paused or getattr(self, "_buffer_paused", False)):
            self._body_read = now  # reading is paused: the gateway is behind, not the client
        expiry = self._expiry()
        if expiry is None:
            return
        if now < expiry:
            self._arm()
        elif self._in_body():
            assert self._body is not None
            log.info("connection_closed", reason="body_timeout", remote=_peer(self))
            self._body.set_exception(RequestPayloadError("the request body timed out"))
            self.force_close()
        else:
            log.info("connection_closed", reason="header_timeout", remote=_peer(self))
            self._refuse(408, "the request headers did not arrive in time")

    def _refuse(self, status: int, description: str) -> None:
        """Answer ``status`` and close, or, with a response already under way, only close
        once it is done (a second status line would be read as part of its body)."""
        if self._request_in_progress or self._messages or self.transport is None:
            self.close()
            return
        rid, phrase = request_id(None), HTTPStatus(status).phrase
        error = phrase.lower().replace(" ", "_")  # request_timeout, ...
        body = json.dumps({"error": error, "error_description": description, "request_id": rid})
        head = (
            f"HTTP/1.1 {status} {phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write((head + body).encode())
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse quotes the offending bytes back in
        text/plain; the gateway's errors are JSON (SPEC §4) and never echo what was sent."""
        super().handle_error(request, status, exc, message)  # logs; raises if a response began
        rid = request_id(None)
        if status >= 500:
            response = errors.error_response(status, "server_error", "the request failed", rid)
        else:
            description = "the request is not valid HTTP/1.1"
            response = errors.error_response(status, "invalid_request", description, rid)
        response.headers["X-Request-Id"] = rid
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


def _peer(handler: RequestHandler) -> str | None:
    peer = handler.peername
    return str(peer[0]) if isinstance(peer, tuple) else None


class GuardedServer(web.Server):
    """The public listener's connections, each with the limits of the configuration current
    when it opens (a reload applies to the connections opened after it).

    A connection starts as a :class:`~gateway.downstream.ClientConnection`, which serves
    well-formed requests without a body itself and hands anything else, with the connection,
    to a :class:`GuardedConnection` (aiohttp's low-level server)."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Any],
        limits: Callable[[], ConnectionLimits],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self.clients: set[ClientConnection] = set()  # not handed over (yet)

    def __call__(self) -> ClientConnection:  # type: ignore[override]
        limits = self._limits()
        return ClientConnection(
            loop=self._loop,
            limits=limits,
            handler=self.request_handler,
            hand_over=partial(self.guarded, limits),
            registry=self.clients,
        )

    def pre_shutdown(self) -> None:
        for client in list(self.clients):
            client.close()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(client.shutdown(timeout) for client in list(self.clients)))
        await super().shutdown(timeout)

    def guarded(self, limits: ConnectionLimits) -> GuardedConnection:
        """aiohttp's connection, for a connection handed over."""
        return GuardedConnection(
            self,
            limits,
            loop=self._loop,
            keepalive_timeout=limits.idle_timeout,
            max_headers=limits.max_headers,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_line_bytes,
            **self._kwargs,
        )


class GatewayServer:
    """The public and admin listeners of one gateway process.

    ``admin=None`` (a worker under a supervisor) serves no admin listener; ``ready_file`` is
    then written while the worker is ready, for the supervisor's /readyz.
    """

    def __init__(
        self,
        compiled: CompiledConfig,
        *,
        metrics: Metrics | None = None,
        public: Address | None = None,
        admin: Address | None = None,
        config_path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        serve_admin: bool = True,
        reuse_port: bool | None = None,
        ready_file: Path | None = None,
        settle_heap: bool = False,
    ) -> None:
        """``settle_heap``: once started, and after each reload has retired the configuration
        it replaced, collect the garbage and hide what is left from the garbage collector
        (:func:`collect_and_freeze`). For a process that serves until it stops (``gateway
        run``), not one that starts servers again and again (the tests)."""
        self.compiled = compiled
        self.metrics = metrics or Metrics()
        # The request path's own state (compiled): the current gateway, requests in flight.
        self.listener = Listener(Gateway(compiled, self.metrics))
        _declare_series(self.metrics, self.gateway)
        self.public_address = public or Address.parse(compiled.config.listen)
        self.admin_address = admin or Address.parse(compiled.config.admin.listen)
        self.config_path = Path(config_path) if config_path is not None else None
        self._environ = environ
        self._serve_admin = serve_admin
        self._reuse_port = compiled.config.workers != 1 if reuse_port is None else reuse_port
        self._ready_file = ready_file
        self._settle_heap = settle_heap
        self._runners: list[web.BaseRunner] = []
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._public_runner: web.ServerRunner | None = None
        self.public_port = 0
        self.admin_port = 0

    @property
    def direct_connections(self) -> int:
        """Open public connections still served by the gateway's own short way (none handed
        over to aiohttp's server)."""
        public = self._public_runner
        server = public.server if public is not None else None
        return len(server.clients) if isinstance(server, GuardedServer) else 0

    @property
    def gateway(self) -> Gateway:
        """The current generation: the one a request arriving now is served by."""
        return self.listener.gateway

    @property
    def stopping(self) -> bool:
        """Draining: set by :meth:`stop`."""
        return self.listener.stopping

    def not_ready(self) -> list[str]:
        reasons = self.gateway.not_ready()
        if self.stopping:
            reasons.insert(0, "shutting down")
        return reasons

    async def start(self) -> None:
        """The admin listener first, so that /readyz answers 503 (rather than refusing
        connections) while the first keys load; the public listener once they have."""
        timeout = self.compiled.config.shutdown_timeout
        if self._serve_admin:
            admin_runner = web.AppRunner(
                admin_app(
                    self.not_ready,
                    self.metrics.exposition,
                    offload=self.metrics.multiprocess_dir is not None,
                    observe_ready=lambda ready: self.metrics.ready.set(1 if ready else 0),
                ),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=timeout,
            )
            await admin_runner.setup()
            self._runners.append(admin_runner)
            admin_site = web.TCPSite(admin_runner, self.admin_address.host, self.admin_address.port)
            await admin_site.start()
            self.admin_port = bound_port(admin_runner)
        await self.gateway.start()
        if self._settle_heap:
            collect_and_freeze()  # before the public listener opens: no request waits for it
        # Each new connection gets the limits of the configuration current when it opens.
        public = GuardedServer(self.listener.handle, lambda: self.compiled.connection)
        public_runner = web.ServerRunner(
            public, handle_signals=False, access_log=None, shutdown_timeout=timeout
        )
        await public_runner.setup()
        self._runners.append(public_runner)
        self._public_runner = public_runner
        public_site = web.TCPSite(
            public_runner,
            self.public_address.host,
            self.public_address.port,
            reuse_port=self._reuse_port,
        )
        await public_site.start()
        self.public_port = bound_port(public_runner)
        self._mark_ready(True)
        log.info(
            "started",
            listen=f"{self.public_address.host}:{self.public_port}",
            admin=f"{self.admin_address.host}:{self.admin_port}" if self._serve_admin else None,
            routes=len(self.compiled.routes),
            # Whether the request path runs as built by mypyc (setup.py), or as plain Python
            # (an install that could not compile it: the same behaviour, slower).
            compiled=is_compiled(),
        )

    def _mark_ready(self, ready: bool) -> None:
        ready = ready and not self.not_ready()
        self.metrics.ready.set(1 if ready else 0)
        if self._ready_file is None:
            return
        if ready:
            self._ready_file.write_text("ready")
        else:
            self._ready_file.unlink(missing_ok=True)

    async def reload(self) -> bool:
        """Parse, validate and compile the file again, then swap the new configuration in at
        once. On any error the old configuration keeps serving; the error is logged (with key
        path and line) and counted."""
        if self.config_path is None:
            return False
        async with self._reload_lock:
            try:
                compiled, _ = await asyncio.to_thread(
                    load_and_compile, self.config_path, self._environ
                )
            except (ConfigError, OSError) as error:
                self._count_reload("error")
                log.error("config_reload_failed", problems=reload_problems(error, self.config_path))
                return False
            for setting in _needs_restart(self.compiled, compiled):
                log.warning("config_reload_restart_needed", setting=setting)
            new = Gateway(compiled, self.metrics, previous=self.gateway)
            _declare_series(self.metrics, new)
            await new.start()
            old, self.listener.gateway, self.compiled = self.gateway, new, compiled
            self._mark_ready(True)
            task = asyncio.ensure_future(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            self._count_reload("ok")
            log.info("config_reloaded", routes=len(compiled.routes), issuers=len(compiled.issuers))
            return True

    def _count_reload(self, result: str) -> None:
        # Under a supervisor, the supervisor counts each reload once, not once a worker.
        if self._serve_admin:
            self.metrics.config_reloads.labels(result).inc()

    async def _retire(self, old: Gateway) -> None:
        """Close the replaced gateway once its requests are done.

        No deadline: a reload is not a shutdown (SPEC §8: requests in flight finish on the old
        configuration). What is in flight ends by its own upstream ``timeout``, a WebSocket
        when its ends close it; closing the old upstream pools at ``shutdown_timeout`` instead
        cut every WebSocket, and every longer download, that a reload found open."""
        while old.inflight:
            await asyncio.sleep(0.1)
        await old.close(keep=self.gateway)
        if self._settle_heap:
            # What the old configuration left in reference cycles was hidden from the collector
            # with everything else: given back to it, collected, and the rest hidden again.
            del old
            collect_and_freeze()

    async def watch(self, interval: float = 1.0) -> None:
        """Reload whenever the file's content changes (``--watch``), polling every ``interval``."""
        assert self.config_path is not None
        await watch_file(self.config_path, interval, self.reload)

    async def stop(self) -> None:
        """Readiness off at once, stop accepting, let requests in flight finish (up to
        ``shutdown_timeout``), then close everything."""
        self.listener.stopping = True
        self._mark_ready(False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.compiled.config.shutdown_timeout
        public = self._public_runner
        if public is not None:
            for site in list(public.sites):
                await site.stop()  # no new connections from here on
            # The drain is waited for here, not in aiohttp's shutdown: that one stops reading
            # every connection the moment it starts, so an upload still arriving or a
            # WebSocket's next frame would never be read, and the request would hang until cut.
            while self.listener.inflight and loop.time() < deadline:
                await asyncio.sleep(0.02)
            if public.server is not None:
                # Idle keep-alive connections close now; what still runs is cut at the
                # deadline (aiohttp reads a timeout of 0 as "none": hence the floor).
                public.server.pre_shutdown()
                await public.server.shutdown(max(deadline - loop.time(), 0.001))
        # The public listener first, the admin one (answering 503 meanwhile) last.
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        for task in list(self._retiring):
            task.cancel()
        await self.gateway.close()
        self.metrics.close()
        log.info("stopped")


def _declare_series(metrics: Metrics, gateway: Gateway) -> None:
    """The configuration's JWKS and introspection series, there from the start. (A key store
    kept across a reload keeps its keys: its count is not reset.)"""
    metrics.declare(
        jwks_keys={name: len(store.keys.keys) for name, store in gateway.key_stores.items()},
        introspection_issuers=[
            name
            for name, source in gateway.compiled.issuers.items()
            if source.config.introspection is not None
        ],
    )


def file_digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


async def watch_file(
    path: Path, interval: float, on_change: Callable[[], Awaitable[object]]
) -> None:
    """Call ``on_change`` whenever the file's content changes, checking every ``interval``."""
    seen = file_digest(path)
    while True:
        await asyncio.sleep(interval)
        current = file_digest(path)
        if current is not None and current != seen:
            seen = current
            await on_change()


def reload_problems(error: ConfigError | OSError, path: Path | str) -> list[str]:
    """What a failed reload logs: each problem with the file, line and key path."""
    if isinstance(error, ConfigError):
        return [problem.describe(str(path)) for problem in error.problems]
    return [f"{path}: cannot read: {error}"]


def _needs_restart(old: CompiledConfig, new: CompiledConfig) -> list[str]:
    """Settings a reload cannot change: the sockets and processes are already made."""
    before, after = old.config, new.config
    changed = []
    for name, a, b in (
        ("listen", before.listen, after.listen),
        ("admin.listen", before.admin.listen, after.admin.listen),
        ("workers", before.workers, after.workers),
    ):
        if a != b:
            changed.append(name)
    return changed


def collect_and_freeze() -> None:
    """Collect the garbage, then move every object left to the collector's permanent generation
    (``gc.freeze``), which its collections never walk.

    A full collection walks every object it tracks and holds the event loop meanwhile. At
    start those are mostly the modules, the configuration and the libraries (about 65,000
    objects); none of them becomes garbage while the configuration serves, so walking them
    again is waste (bench/heap.py: the longest full collection while the token cache fills,
    33 ms, becomes 11). Collections then walk what came later: the caches'
    entries, the connections. What the collector cannot see it cannot free from a reference
    cycle, so a reload, which makes the old configuration garbage, gives everything back to
    the collector first (``gc.unfreeze``): each reload pays one full collection, of what the
    caches hold too, once its old configuration has retired."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def is_compiled() -> bool:
    """Whether the request path (gateway.proxy and the modules setup.py compiles with it) runs
    compiled by mypyc."""
    return str(getattr(sys.modules[Gateway.__module__], "__file__", "")).endswith(".so")


def bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


async def serve_forever(server: GatewayServer, *, watch: float | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop; SIGHUP (or a changed file, with
    ``watch``) reloads the configuration."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    background: set[asyncio.Task[object]] = set()

    def reload() -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(server.reload())
        background.add(task)
        task.add_done_callback(background.discard)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    await server.start()
    if watch is not None and server.config_path is not None:
        watcher: asyncio.Task[object] = asyncio.ensure_future(server.watch(watch))
        background.add(watcher)
    try:
        await stop.wait()
    finally:
        log.info("shutdown")
        for task in list(background):
            task.cancel()
        await server.stop()
