"""The listeners and their lifecycle: start, serve, stop.

The public listener is aiohttp's low-level server: every request goes to :meth:`Gateway.handle`,
with no framework routing in between (the gateway does its own, on the normalised path).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass

from aiohttp import web

from gateway.admin import admin_app
from gateway.config.compile import CompiledConfig
from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics
from gateway.proxy import Gateway

log = get_logger("gateway.server")

# Room for the request line and header names around a token of exactly `max_token_bytes`:
# aiohttp's default (8190 bytes a header line) would refuse an 8192-byte token outright.
HEADER_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))


class GatewayServer:
    """The public and admin listeners of one gateway process."""

    def __init__(
        self,
        compiled: CompiledConfig,
        *,
        metrics: Metrics | None = None,
        public: Address | None = None,
        admin: Address | None = None,
    ) -> None:
        self.compiled = compiled
        self.metrics = metrics or Metrics()
        self.gateway = Gateway(compiled, self.metrics)
        self.public_address = public or Address.parse(compiled.config.listen)
        self.admin_address = admin or Address.parse(compiled.config.admin.listen)
        self.stopping = False
        self._runners: list[web.BaseRunner] = []
        self.public_port = 0
        self.admin_port = 0

    def not_ready(self) -> list[str]:
        reasons = self.gateway.not_ready()
        if self.stopping:
            reasons.insert(0, "shutting down")
        return reasons

    async def start(self) -> None:
        """The admin listener first, so that /readyz answers 503 (rather than refusing
        connections) while the first keys load; the public listener once they have."""
        admin_runner = web.AppRunner(
            admin_app(self.metrics, self.not_ready), handle_signals=False, access_log=None
        )
        await admin_runner.setup()
        self._runners.append(admin_runner)
        await web.TCPSite(admin_runner, self.admin_address.host, self.admin_address.port).start()
        self.admin_port = _bound_port(admin_runner)
        await self.gateway.start()
        field_limit = self.compiled.config.limits.max_token_bytes + HEADER_OVERHEAD
        public = web.Server(
            self.gateway.handle,
            max_field_size=max(8190, field_limit),
            max_line_size=max(8190, field_limit),
        )
        public_runner = web.ServerRunner(public, handle_signals=False, access_log=None)
        await public_runner.setup()
        self._runners.append(public_runner)
        public_site = web.TCPSite(
            public_runner,
            self.public_address.host,
            self.public_address.port,
            reuse_port=self.compiled.config.workers != 1,
        )
        await public_site.start()
        self.public_port = _bound_port(public_runner)
        log.info(
            "started",
            listen=f"{self.public_address.host}:{self.public_port}",
            admin=f"{self.admin_address.host}:{self.admin_port}",
            routes=len(self.compiled.routes),
        )

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to ``shutdown_timeout``), close."""
        self.stopping = True
        timeout = self.compiled.config.shutdown_timeout
        # The public listener first, the admin one (answering 503 on /readyz) last.
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), timeout)
        await self.gateway.close()
        log.info("stopped")


def _bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


async def serve_forever(server: GatewayServer) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        log.info("shutdown")
        await server.stop()
