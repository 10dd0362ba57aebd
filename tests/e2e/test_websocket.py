"""WebSocket upgrades (SPEC §4 "Forwarding"): proxied only after the token on the handshake has
been checked, then relayed both ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.support import AUDIENCE, TokenIssuer, running_gateway, write_config

WS_CONFIG = """\
shutdown_timeout: 1s
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  chat: {{url: "{upstream}", timeout: 300ms}}
routes:
  - name: chat
    match: {{path: /chat/**}}
    upstream: chat
"""

WAIT = 5.0


@dataclass
class WsUpstream:
    """An aiohttp WebSocket server that echoes and records every handshake it accepted."""

    url: str = ""
    handshakes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    upstream = WsUpstream()

    async def chat(request: web.Request) -> web.StreamResponse:
        upstream.handshakes.append((request.raw_path, dict(request.headers)))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo: {message.data}")
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        upstream.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


@dataclass
class Chat:
    url: str
    upstream: WsUpstream
    issuer: TokenIssuer
    http: aiohttp.ClientSession


@pytest.fixture
async def chat(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[Chat]:
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    async with ws_upstream() as upstream:
        path = write_config(
            tmp_path, WS_CONFIG, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream.url
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Chat(gateway.url, upstream, issuer, http)


async def test_an_upgrade_with_a_valid_token_is_proxied_both_ways(chat: Chat) -> None:
    headers = {"Authorization": f"Bearer {chat.issuer.token()}"}
    async with chat.http.ws_connect(f"{chat.url}/chat/room?x=1", headers=headers) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=WAIT) == "echo: hello"
        await ws.send_bytes(b"abc")
        assert await ws.receive_bytes(timeout=WAIT) == b"cba"
    [(path, received)] = chat.upstream.handshakes
    assert path == "/chat/room?x=1"
    assert received["X-Auth-Subject"] == "alice"


async def test_an_upgrade_without_a_token_gets_401_and_never_reaches_the_upstream(
    chat: Chat,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await chat.http.ws_connect(f"{chat.url}/chat/room")
    assert refused.value.status == 401
    assert chat.upstream.handshakes == []


async def test_an_upgrade_with_a_forged_token_gets_401_and_never_reaches_the_upstream(
    chat: Chat, tmp_path: Path
) -> None:
    forged = TokenIssuer(issuer=chat.issuer.issuer).token()  # right iss, wrong key
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await chat.http.ws_connect(
            f"{chat.url}/chat/room", headers={"Authorization": f"Bearer {forged}"}
        )
    assert refused.value.status == 401
    assert chat.upstream.handshakes == []


async def test_an_open_websocket_outlives_the_upstream_response_timeout(chat: Chat) -> None:
    headers = {"Authorization": f"Bearer {chat.issuer.token()}"}
    async with chat.http.ws_connect(f"{chat.url}/chat/room", headers=headers) as ws:
        await asyncio.sleep(0.6)  # twice the upstream's 300 ms `timeout`
        await ws.send_str("still there")
        assert await ws.receive_str(timeout=WAIT) == "echo: still there"


async def test_closing_the_client_socket_closes_the_upstream_one(chat: Chat) -> None:
    headers = {"Authorization": f"Bearer {chat.issuer.token()}"}
    async with chat.http.ws_connect(f"{chat.url}/chat/room", headers=headers) as ws:
        await ws.send_str("bye")
        assert await ws.receive_str(timeout=WAIT) == "echo: bye"
        await ws.close()
        assert ws.close_code == 1000
    await asyncio.wait_for(chat.upstream.closed.wait(), WAIT)
