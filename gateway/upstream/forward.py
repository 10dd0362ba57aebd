"""Forwarding a permitted request upstream and streaming the answer back (SPEC §4 "Forwarding").

Bodies are streamed both ways, never held whole: a 100 MB upload costs a few chunks of memory.
A body over the route's limit is refused with 413 as soon as it is known to be too large: at
once by ``Content-Length``, or by counting when it is chunked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.pipeline import errors

from .client import UpstreamBusy, UpstreamPool
from .headers import response_headers

CHUNK = 64 * 1024


class _BodyLimit:
    """Counts a request body as it streams, stopping it past the limit."""

    def __init__(self, request: web.BaseRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.exceeded = False
        self.malformed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        received = 0
        try:
            async for chunk in self.request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > self.limit:
                    self.exceeded = True
                    raise aiohttp.ClientPayloadError("request body over the limit")
                yield chunk
        except web.RequestPayloadError:
            # The client's framing broke mid-body (a bad chunk size), or its body stalled past
            # `body_timeout`: the client's fault, a 400, not the upstream's (502).
            self.malformed = True
            raise


@dataclass(slots=True)
class Forwarded:
    """What happened upstream, for metrics and the access log."""

    response: web.StreamResponse
    upstream_seconds: float | None


async def forward(
    request: web.BaseRequest,
    *,
    pool: UpstreamPool,
    url: URL,
    headers: CIMultiDict[str],
    max_body_bytes: int,
    request_id: str,
    body: bytes | None = None,
    decorate: Callable[[CIMultiDict[str]], None] | None = None,
) -> Forwarded:
    """Send the request to ``url`` and stream the upstream's answer to the client.

    ``body`` is given when the request body was already read (a form searched for a second
    token); otherwise the body streams from the client, counted against ``max_body_bytes``.
    ``decorate`` adds the gateway's own headers to the upstream's answer before it is sent.
    """
    limit = _BodyLimit(request, max_body_bytes)
    data: bytes | AsyncIterator[bytes] | None = body
    if body is None and request.body_exists:
        data = limit.chunks()
    started = time.perf_counter()
    upstream_seconds: float | None = None
    response: web.StreamResponse | None = None
    try:
        async with (
            pool.slot(),
            pool.session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                skip_auto_headers=("Content-Type",),
            ) as upstream,
        ):
            upstream_seconds = time.perf_counter() - started
            response = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=response_headers(upstream.headers),
            )
            response.headers["X-Request-Id"] = request_id
            if decorate is not None:
                decorate(response.headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return Forwarded(response, upstream_seconds)
    except UpstreamBusy:
        return Forwarded(errors.upstream_busy(request_id), None)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        if response is not None and response.prepared:
            return Forwarded(_cut(request, response), upstream_seconds)
        return Forwarded(errors.gateway_timeout(request_id), upstream_seconds)
    except (aiohttp.ClientError, OSError):
        if limit.exceeded:
            return Forwarded(errors.too_large(request_id), upstream_seconds)
        if response is not None and response.prepared:
            return Forwarded(_cut(request, response), upstream_seconds)
        if limit.malformed:
            return Forwarded(errors.bad_request(request_id, "the request body is malformed"), None)
        return Forwarded(errors.bad_gateway(request_id), upstream_seconds)


def _cut(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
    """The upstream failed after its status line was sent on: the only honest signal left is to
    close the client's connection, so that it sees a truncated body, never a complete-looking
    one. (Raising instead would reach the server's last-resort handler, which would write a
    second status line into the body of this one.)"""
    if request.transport is not None:
        request.transport.close()
    return response
