"""The admin listener (SPEC §5): liveness, readiness and metrics, never on the public port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.observe.metrics import Metrics


def admin_app(metrics: Metrics, not_ready: Callable[[], list[str]]) -> web.Application:
    """``/healthz`` (the process serves), ``/readyz`` (keys loaded, not shutting down),
    ``/metrics`` (Prometheus text)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reasons = not_ready()
        metrics.ready.set(0 if reasons else 1)
        if reasons:
            # SPEC §5: "503 with a JSON list of reasons".
            return web.json_response(reasons, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_text(request: web.Request) -> web.Response:
        # `gateway_ready` says what /readyz would answer at the moment of the scrape.
        metrics.ready.set(0 if not_ready() else 1)
        if metrics.multiprocess_dir is not None:
            # Reading every process's files is disk work: not on the event loop.
            body = await asyncio.to_thread(metrics.exposition)
        else:
            body = metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app
