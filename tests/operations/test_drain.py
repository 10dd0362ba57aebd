"""Graceful shutdown (SPEC §8): on SIGTERM (or SIGINT) readiness goes 503 at once, the listener
stops accepting, requests in flight (streams and WebSockets too) get up to ``shutdown_timeout``
to finish, then the process exits 0. Each test runs a real ``gateway run`` process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.e2e.process import GatewayProcess, gateway_process
from tests.operations.support import (
    Named,
    WsEcho,
    eventually,
    get_text,
    named_upstream,
    run_load,
    write_atomically,
    ws_echo_upstream,
)

DRAIN_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: {shutdown_timeout}
upstreams:
  a: {{url: "{a}", timeout: 60s}}
  ws: {{url: "{ws}"}}
routes:
  - name: api
    match: {{path: /api/**}}
    upstream: a
    auth: public
  - name: chat
    match: {{path: /chat/**}}
    upstream: ws
    auth: public
"""
EXIT_WAIT = 10.0


@dataclass
class Site:
    a: Named
    ws: WsEcho
    config: Path
    log: Path

    def write(self, shutdown_timeout: str) -> Path:
        return write_atomically(
            self.config, DRAIN_CONFIG, a=self.a.url, ws=self.ws.url,
            shutdown_timeout=shutdown_timeout,
        )  # fmt: skip


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with named_upstream("A") as a, ws_echo_upstream() as ws:
        site = Site(a, ws, tmp_path / "gateway.yaml", tmp_path / "gateway.log")
        site.write("5s")
        yield site


async def readyz(gateway: GatewayProcess) -> tuple[int, str]:
    return await get_text(f"{gateway.admin_url}/readyz")


async def readyz_is(gateway: GatewayProcess, status: int) -> bool:
    try:
        return (await readyz(gateway))[0] == status
    except aiohttp.ClientConnectionError:
        return False


async def slow_request(gateway: GatewayProcess, site: Site, seconds: float) -> asyncio.Task[object]:
    """A request the upstream holds for ``seconds``, once the upstream has it."""
    task: asyncio.Task[object] = asyncio.ensure_future(
        get_text(f"{gateway.url}/api/slow?sleep={seconds}")
    )
    await asyncio.wait_for(site.a.arrived.wait(), 5)
    return task


async def test_readyz_turns_503_the_moment_sigterm_arrives(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        assert (await readyz(gateway))[0] == 200
        slow = await slow_request(gateway, site, 2.0)  # keeps the process draining

        gateway.send_signal(signal.SIGTERM)
        took = await eventually(lambda: readyz_is(gateway, 503), "/readyz 503", timeout=1.0)
        status, reasons = await readyz(gateway)

        assert took < 0.5, f"/readyz turned 503 only after {took:.2f}s"
        assert (status, reasons) == (503, '["shutting down"]')
        assert not slow.done()
        assert await asyncio.wait_for(slow, 5) == (200, "A")
        assert await gateway.exited(EXIT_WAIT) == 0


async def test_the_public_listener_stops_accepting_on_sigterm(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        slow = await slow_request(gateway, site, 1.5)
        url = URL(gateway.url)

        gateway.send_signal(signal.SIGTERM)
        await eventually(lambda: readyz_is(gateway, 503), "/readyz 503", timeout=1.0)

        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection(url.host, url.port), 5)
        assert not slow.done()
        assert await asyncio.wait_for(slow, 5) == (200, "A")
        assert await gateway.exited(EXIT_WAIT) == 0


async def test_a_streaming_response_in_flight_at_sigterm_streams_to_its_end(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway, aiohttp.ClientSession() as http:
        url = f"{gateway.url}/api/stream?chunks=5&every=0.3"
        async with http.get(url) as response:
            assert response.status == 200
            received = await asyncio.wait_for(response.content.readany(), 5)
            assert received == b"A0;"

            gateway.send_signal(signal.SIGTERM)
            await eventually(lambda: readyz_is(gateway, 503), "/readyz 503")
            received += await asyncio.wait_for(response.content.read(), 5)

        assert received == b"A0;A1;A2;A3;A4;"
        assert await gateway.exited(EXIT_WAIT) == 0


async def test_an_upload_in_flight_at_sigterm_is_received_to_its_end(site: Site) -> None:
    sent_first = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for index in range(5):
            if index:
                await asyncio.sleep(0.3)
            yield bytes(1000)
            sent_first.set()

    async with gateway_process(site.config, site.log) as gateway, aiohttp.ClientSession() as http:
        upload = asyncio.ensure_future(http.post(f"{gateway.url}/api/upload", data=body()))
        await asyncio.wait_for(site.a.arrived.wait(), 5)

        gateway.send_signal(signal.SIGTERM)
        await eventually(lambda: readyz_is(gateway, 503), "/readyz 503")
        response = await asyncio.wait_for(upload, 5)
        async with response:
            assert (response.status, await response.text()) == (200, "A:5000")
        assert await gateway.exited(EXIT_WAIT) == 0


async def test_a_websocket_open_at_sigterm_keeps_relaying_until_the_client_closes_it(
    site: Site,
) -> None:
    async with gateway_process(site.config, site.log) as gateway, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{gateway.url}/chat/room") as ws:
            await ws.send_str("before")
            assert await ws.receive_str(timeout=5) == "echo: before"

            gateway.send_signal(signal.SIGTERM)
            await eventually(lambda: readyz_is(gateway, 503), "/readyz 503")
            await asyncio.sleep(0.3)
            await ws.send_str("during the drain")
            assert await ws.receive_str(timeout=5) == "echo: during the drain"
            closed = time.monotonic()

        # Closed by the client: the drain ends there, long before the 5 s shutdown_timeout.
        assert await gateway.exited(EXIT_WAIT) == 0
        assert time.monotonic() - closed < 3.0
        assert site.ws.closed.is_set()


async def test_sigterm_under_load_fails_none_of_the_requests_accepted_before_it(
    site: Site,
) -> None:
    """8 clients on keep-alive connections, each request held 0.2 s by the upstream. Accepted
    before SIGTERM: the upstream had it before the signal was sent. Every one of those is a
    200, and so is every request the clients had begun before it (the drain still reads
    connections, so a request already written is read and served, with ``Connection: close``)."""
    async with gateway_process(site.config, site.log) as gateway:
        stop = asyncio.Event()
        load = asyncio.ensure_future(
            run_load(
                lambda n: f"{gateway.url}/api/x?n={n}&sleep=0.2",
                clients=8,
                stop=stop,
                max_seconds=10,
                max_requests=5_000,
            )
        )
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        code = await gateway.exited(EXIT_WAIT)
        exited = time.monotonic()
        await asyncio.sleep(0.3)
        stop.set()
        result = await asyncio.wait_for(load, 15)

        arrived = {int(URL(a.path_qs).query["n"]): a.at for a in site.a.arrivals}
        accepted = [o for o in result.outcomes if arrived.get(o.number, signalled) < signalled]
        in_flight = [o for o in accepted if o.finished > signalled]
        begun = [o for o in result.outcomes if o.started < signalled]
        print(
            f"\n{len(accepted)} accepted before SIGTERM ({len(in_flight)} in flight), "
            f"{len(begun)} begun before it, {len([o for o in begun if o.status != 200])} of "
            f"those failed; exit {code} {exited - signalled:.2f}s after SIGTERM"
        )
        assert code == 0
        # Done once those in flight are: clients that keep their connections busy do not
        # hold the drain open until the 5 s shutdown_timeout.
        assert exited - signalled < 2.0
        assert len(in_flight) >= 4
        assert [o for o in accepted if o.status != 200] == []
        assert [o for o in begun if o.status != 200] == []
        # Nothing was left hanging: every request ended with the process (give or take this
        # loop's turn to read it), and later ones were refused at once.
        assert all(o.finished < exited + 0.5 for o in begun)
        late = [o for o in result.outcomes if o.started > exited]
        assert late
        assert all(o.status is None and o.finished - o.started < 1.0 for o in late)


async def test_a_request_running_past_shutdown_timeout_is_cut_and_the_process_still_exits_0(
    site: Site,
) -> None:
    site.write("1s")
    async with gateway_process(site.config, site.log) as gateway:
        stuck = await slow_request(gateway, site, 30.0)

        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        code = await gateway.exited(EXIT_WAIT)
        took = time.monotonic() - signalled

        assert code == 0
        assert 0.9 < took < 3.5, f"exited {took:.2f}s after SIGTERM with a 1s shutdown_timeout"
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(stuck, 5)


async def test_a_zero_shutdown_timeout_cuts_requests_in_flight_at_once(site: Site) -> None:
    """aiohttp reads a shutdown timeout of 0 as "no timeout": ``0s`` must not mean forever."""
    site.write("0s")
    async with gateway_process(site.config, site.log) as gateway:
        stuck = await slow_request(gateway, site, 30.0)

        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert await gateway.exited(EXIT_WAIT) == 0
        assert time.monotonic() - signalled < 2.0
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(stuck, 5)


async def test_sigint_drains_like_sigterm(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        slow = await slow_request(gateway, site, 1.0)

        gateway.send_signal(signal.SIGINT)
        await eventually(lambda: readyz_is(gateway, 503), "/readyz 503", timeout=1.0)

        assert await asyncio.wait_for(slow, 5) == (200, "A")
        assert await gateway.exited(EXIT_WAIT) == 0
