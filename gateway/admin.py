"""The admin listener (SPEC §5): liveness, readiness and metrics, never on the public port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


def admin_app(
    not_ready: Callable[[], list[str]],
    exposition: Callable[[], bytes],
    *,
    offload: bool = False,
    observe_ready: Callable[[bool], None] | None = None,
) -> web.Application:
    """``/healthz`` (the process serves), ``/readyz`` (503 with the reasons while it should get
    no traffic), ``/metrics`` (Prometheus text from ``exposition``).

    ``offload`` runs the exposition in a thread (reading several processes' files is disk work,
    not for the event loop); ``observe_ready`` is told what /readyz answers at each probe and
    scrape (for the ``gateway_ready`` gauge).
    """

    def reasons() -> list[str]:
        found = not_ready()
        if observe_ready is not None:
            observe_ready(not found)
        return found

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        found = reasons()
        if found:
            # SPEC §5: "503 with a JSON list of reasons".
            return web.json_response(found, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_text(request: web.Request) -> web.Response:
        reasons()
        body = await asyncio.to_thread(exposition) if offload else exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app
