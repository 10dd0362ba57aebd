"""WebSocket upgrades, proxied only after the token on the handshake has been checked."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from gateway.pipeline import errors

from .client import UpstreamBusy, UpstreamPool

# Handshake headers that the client library makes itself for the upstream leg.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    headers = request.headers
    return (
        "Upgrade" in headers  # first: most requests have none, and this is one look-up
        and request.method == "GET"
        and headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("Connection", "").lower()
    )


async def proxy_websocket(
    request: web.BaseRequest,
    *,
    pool: UpstreamPool,
    url: URL,
    headers: CIMultiDict[str],
    request_id: str,
) -> web.StreamResponse:
    """Open the upstream socket first, then accept the client's, then relay both ways."""
    protocols = [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in value.split(",")
        if p.strip()
    ]
    upstream_headers = CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE
    )
    ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
    try:
        async with pool.slot():
            upstream = await pool.session.ws_connect(
                ws_url,
                headers=upstream_headers,
                protocols=protocols,
                autoclose=False,
                autoping=False,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
            )
            async with upstream:
                client = web.WebSocketResponse(
                    protocols=[upstream.protocol] if upstream.protocol else (),
                    autoclose=False,
                    autoping=False,
                )
                client.headers["X-Request-Id"] = request_id
                await client.prepare(request)
                await _relay(client, upstream)
                return client
    except UpstreamBusy:
        return errors.upstream_busy(request_id)
    except aiohttp.WSServerHandshakeError:
        return errors.bad_gateway(request_id)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return errors.gateway_timeout(request_id)
    except (aiohttp.ClientError, OSError):
        return errors.bad_gateway(request_id)


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type == WSMsgType.CLOSE:
                reason = message.extra.encode() if isinstance(message.extra, str) else b""
                await sink.close(code=source.close_code or 1000, message=reason)
                return
            else:
                break
        with contextlib.suppress(Exception):
            await sink.close()

    tasks = [
        asyncio.ensure_future(pump(client, upstream)),
        asyncio.ensure_future(pump(upstream, client)),
    ]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
