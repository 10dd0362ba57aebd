"""Configuration reload (SPEC §8): SIGHUP and ``--watch`` parse, validate and compile the file,
then swap it in at once. Requests in flight finish on the configuration they started with; a
broken file keeps the old one serving; keys and introspection answers of unchanged issuers
survive. Each test runs a real ``gateway run`` process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession

from tests.e2e.process import GatewayProcess, gateway_process
from tests.integration.idp_fixture import (
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_SECRET,
    OPAQUE_RESOURCE,
    OpenIdProvider,
)
from tests.operations.support import (
    Named,
    get_text,
    named_upstream,
    run_load,
    sample,
    scrape,
    wait_for_events,
    write_atomically,
    ws_echo_upstream,
)
from tests.support import AUDIENCE, TokenIssuer

# Two upstreams that answer their own name: which one answers tells which configuration did.
ROUTES_V1 = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 5s
upstreams:
  a: {{url: "{a}"}}
  b: {{url: "{b}"}}
routes:
  - name: api
    match: {{path: /api/**}}
    upstream: a
    auth: public
"""
# /api/** changed to b, /new/** added.
ROUTES_V2 = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 5s
upstreams:
  a: {{url: "{a}"}}
  b: {{url: "{b}"}}
routes:
  - name: api
    match: {{path: /api/**}}
    upstream: b
    auth: public
  - name: new
    match: {{path: /new/**}}
    upstream: b
    auth: public
"""
BROKEN = (
    ROUTES_V1
    + """\
  - name: new
    match: {{path: /new/**}}
    upstream: nowhere
    auth: public
"""
)
BROKEN_LINE = next(n for n, line in enumerate(BROKEN.splitlines(), 1) if "nowhere" in line)

WS_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 1s
upstreams:
  a: {{url: "{a}"}}
  b: {{url: "{b}"}}
  ws: {{url: "{ws}"}}
routes:
  - name: chat
    match: {{path: /chat/**}}
    upstream: ws
    auth: public
  - name: {route}
    match: {{path: /api/**}}
    upstream: a
    auth: public
"""
# Token-checked (keys from a file), its one route to {upstream}.
PROTECTED = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 5s
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  a: {{url: "{a}"}}
  b: {{url: "{b}"}}
routes:
  - name: api
    match: {{path: /api/**}}
    upstream: {upstream}
"""


@dataclass
class Site:
    a: Named
    b: Named
    config: Path
    log: Path

    def write(self, text: str, **values: str) -> None:
        write_atomically(self.config, text, a=self.a.url, b=self.b.url, **values)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with named_upstream("A") as a, named_upstream("B") as b:
        site = Site(a, b, tmp_path / "gateway.yaml", tmp_path / "gateway.log")
        site.write(ROUTES_V1)
        yield site


async def reloads(gateway: GatewayProcess, result: str) -> float:
    return sample(await scrape(gateway.admin_url), "gateway_config_reloads_total", result=result)


async def test_sighup_makes_a_route_added_or_changed_in_the_file_take_effect(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        assert await get_text(f"{gateway.url}/api/x") == (200, "A")
        assert (await get_text(f"{gateway.url}/new/x"))[0] == 404

        site.write(ROUTES_V2)
        gateway.send_signal(signal.SIGHUP)
        [reloaded] = await wait_for_events(gateway, "config_reloaded", 1)

        assert reloaded["routes"] == 2
        assert await get_text(f"{gateway.url}/api/x") == (200, "B")
        assert await get_text(f"{gateway.url}/new/x") == (200, "B")
        assert await reloads(gateway, "ok") == 1
        assert await reloads(gateway, "error") == 0


async def test_watch_reloads_when_the_files_content_changes_and_not_when_it_is_rewritten(
    site: Site,
) -> None:
    async with gateway_process(site.config, site.log, ["--watch", "0.05"]) as gateway:
        assert await get_text(f"{gateway.url}/api/x") == (200, "A")

        site.write(ROUTES_V2)
        await wait_for_events(gateway, "config_reloaded", 1)
        assert await get_text(f"{gateway.url}/new/x") == (200, "B")

        # The same content again (a new mtime, a new inode): nothing to reload.
        site.write(ROUTES_V2)
        await asyncio.sleep(0.5)  # ten polls
        assert len(gateway.events("config_reloaded")) == 1
        assert await reloads(gateway, "ok") == 1


async def test_a_request_in_flight_during_a_reload_finishes_on_the_old_route(site: Site) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        # A response streamed over 1.2 s by upstream a: the route of the old configuration.
        slow = asyncio.ensure_future(get_text(f"{gateway.url}/api/slow?chunks=4&every=0.4"))
        await asyncio.wait_for(site.a.arrived.wait(), 5)

        site.write(ROUTES_V2)
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 1)
        assert await get_text(f"{gateway.url}/api/x") == (200, "B")
        assert not slow.done(), "the slow request was not in flight across the reload"

        assert await asyncio.wait_for(slow, 5) == (200, "A0;A1;A2;A3;")
        assert [a.path_qs for a in site.b.arrivals] == ["/api/x"]


async def test_a_websocket_open_across_a_reload_keeps_relaying_past_shutdown_timeout(
    site: Site,
) -> None:
    """A reload is not a shutdown: the old configuration's upstream connections stay open for
    as long as its requests need them, not ``shutdown_timeout`` (1 s here)."""
    async with ws_echo_upstream() as chat:
        site.write(WS_CONFIG, ws=chat.url, route="api")
        async with (
            gateway_process(site.config, site.log) as gateway,
            ClientSession() as http,
            http.ws_connect(f"{gateway.url}/chat/room") as ws,
        ):
            await ws.send_str("before")
            assert await ws.receive_str(timeout=5) == "echo: before"

            site.write(WS_CONFIG, ws=chat.url, route="api-renamed")
            gateway.send_signal(signal.SIGHUP)
            await wait_for_events(gateway, "config_reloaded", 1)
            await asyncio.sleep(1.5)

            await ws.send_str("after")
            assert await ws.receive_str(timeout=5) == "echo: after"


async def test_a_broken_file_keeps_the_old_config_serving_logs_where_and_counts_an_error(
    site: Site,
) -> None:
    async with gateway_process(site.config, site.log) as gateway:
        site.write(BROKEN)
        gateway.send_signal(signal.SIGHUP)
        [failed] = await wait_for_events(gateway, "config_reload_failed", 1)

        [problem] = failed["problems"]
        assert problem.startswith(f"{site.config}:{BROKEN_LINE}: error: routes[1].upstream: ")
        assert failed["level"] == "error"
        assert await get_text(f"{gateway.url}/api/x") == (200, "A")
        assert (await get_text(f"{gateway.url}/new/x"))[0] == 404
        assert (await get_text(f"{gateway.admin_url}/readyz"))[0] == 200
        assert await reloads(gateway, "error") == 1
        assert await reloads(gateway, "ok") == 0
        assert gateway.events("config_reloaded") == []


async def test_twenty_reloads_under_load_fail_no_request(
    site: Site, tmp_path: Path, issuer: TokenIssuer
) -> None:
    """4 clients send token-checked requests for as long as 20 reloads take (each one waited
    for), alternating the route between upstreams a and b; every answer is a 200."""
    issuer.write_jwks(tmp_path / "corp.jwks.json")
    site.write(PROTECTED, issuer=issuer.issuer, audience=AUDIENCE, upstream="a")
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    async with gateway_process(site.config, site.log) as gateway:
        stop = asyncio.Event()
        load = asyncio.ensure_future(
            run_load(
                lambda n: f"{gateway.url}/api/x?n={n}",
                clients=4,
                stop=stop,
                max_seconds=20,
                max_requests=20_000,
                headers=headers,
            )
        )
        started = time.monotonic()
        try:
            for count in range(1, 21):
                upstream = "b" if count % 2 else "a"
                site.write(PROTECTED, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream)
                gateway.send_signal(signal.SIGHUP)
                await wait_for_events(gateway, "config_reloaded", count)
            await asyncio.sleep(0.1)
        finally:
            stop.set()
            result = await asyncio.wait_for(load, 15)
        print(
            f"\n20 reloads in {time.monotonic() - started:.2f}s under load: "
            f"{len(result.outcomes)} requests, {len(result.failed)} failed"
        )
        assert result.failed == []
        assert len(result.outcomes) >= 100
        assert result.bodies() == {"A", "B"}
        assert await reloads(gateway, "ok") == 20


async def test_a_reload_reads_a_changed_jwks_file_again(
    site: Site, tmp_path: Path, issuer: TokenIssuer
) -> None:
    """SPEC §3: ``jwks_file`` holds static keys "reloaded with the config": the file is where a
    rotation is made, and SIGHUP is how the gateway is told."""
    keys = tmp_path / "corp.jwks.json"
    issuer.write_jwks(keys)
    site.write(PROTECTED, issuer=issuer.issuer, audience=AUDIENCE, upstream="a")
    rotated = TokenIssuer(issuer=issuer.issuer, prefix="rotated")
    bearer = {"Authorization": f"Bearer {rotated.token()}"}
    async with gateway_process(site.config, site.log) as gateway:
        assert (await get_text(f"{gateway.url}/api/x", headers=bearer))[0] == 401

        rotated.write_jwks(keys)  # the configuration itself unchanged
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 1)

        assert await get_text(f"{gateway.url}/api/x", headers=bearer) == (200, "A")


# -- caches of the issuers, counted on the real provider ----------------------------------------

IDP_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{audience}, {opaque}]
    leeway: {leeway}
    introspection:
      client_id: {client}
      client_secret: {secret}
upstreams:
  a: {{url: "{a}"}}
routes:
  - name: {route}
    match: {{path: /api/**}}
    upstream: a
"""


def write_idp_config(site: Site, idp: OpenIdProvider, *, route: str, leeway: str) -> None:
    write_atomically(
        site.config,
        IDP_CONFIG,
        issuer=idp.issuer,
        audience=AUDIENCE,
        opaque=OPAQUE_RESOURCE,
        client=INTROSPECTOR_CLIENT,
        secret=INTROSPECTOR_SECRET,
        a=site.a.url,
        route=route,
        leeway=leeway,
    )


async def authorized(gateway: GatewayProcess, token: str) -> tuple[int, str]:
    return await get_text(f"{gateway.url}/api/x", headers={"Authorization": f"Bearer {token}"})


async def test_a_reload_keeps_the_keys_of_an_unchanged_issuer_without_fetching_them_again(
    site: Site, idp: OpenIdProvider
) -> None:
    write_idp_config(site, idp, route="api", leeway="30s")
    token = idp.token(AUDIENCE)
    async with gateway_process(site.config, site.log) as gateway:
        assert await authorized(gateway, token) == (200, "A")
        before = idp.stats()

        write_idp_config(site, idp, route="api-renamed", leeway="30s")  # the issuer unchanged
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 1)

        assert await authorized(gateway, token) == (200, "A")
        after = idp.stats()
        assert after["jwks_requests"] == before["jwks_requests"]
        assert after["discovery_requests"] == before["discovery_requests"]
        text = await scrape(gateway.admin_url)
        assert sample(text, "gateway_requests_total", route="api-renamed", code="200") == 1


async def test_a_reload_fetches_the_keys_of_a_changed_issuer(
    site: Site, idp: OpenIdProvider
) -> None:
    write_idp_config(site, idp, route="api", leeway="30s")
    token = idp.token(AUDIENCE)
    async with gateway_process(site.config, site.log) as gateway:
        assert await authorized(gateway, token) == (200, "A")
        before = idp.jwks_requests()

        write_idp_config(site, idp, route="api", leeway="45s")  # the issuer changed
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 1)

        assert idp.jwks_requests() == before + 1
        assert await authorized(gateway, token) == (200, "A")


async def test_a_reload_keeps_the_introspection_answers_of_an_unchanged_issuer(
    site: Site, idp: OpenIdProvider
) -> None:
    write_idp_config(site, idp, route="api", leeway="30s")
    opaque = idp.opaque_token()
    async with gateway_process(site.config, site.log) as gateway:
        before = idp.introspection_requests()
        assert await authorized(gateway, opaque) == (200, "A")
        assert idp.introspection_requests() == before + 1

        write_idp_config(site, idp, route="api-renamed", leeway="30s")
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 1)

        assert await authorized(gateway, opaque) == (200, "A")
        assert idp.introspection_requests() == before + 1  # answered from the kept cache


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer()
