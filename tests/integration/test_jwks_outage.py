"""When the keys cannot be had: the identity provider down (last good keys until ``max_stale``,
then 503), a JWKS that is broken, huge or slow (never a crash, never good keys replaced by
nothing, always counted), and readiness until every issuer's keys loaded once. Against real HTTP
servers on loopback and the real ``oidc-provider``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import VerifiedToken
from gateway.pipeline.verify.discovery import url_loader
from gateway.pipeline.verify.fetch import MAX_DOCUMENT_BYTES
from gateway.pipeline.verify.jwks import KeyStore
from gateway.pipeline.verify.jwt import JwtVerifier, issuer_keys
from tests.integration.idp_fixture import OpenIdProvider, start_provider
from tests.support import AUDIENCE, TokenIssuer, echo_upstream, running_gateway, write_config

FETCH_TIMEOUT = 0.3  # the store-level tests' JWKS timeout; "slow" answers take far longer
SLOW = 5.0  # how long a slow answer would take, were the client to wait

KEYS = TokenIssuer("https://keys.test", prefix="o")
MALFORMED = [
    {"kty": "RSA", "kid": "no-modulus", "e": "AQAB"},
    {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
    {"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AA"},
    "not a key",
]

Answer = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class JwksServer:
    """A JWKS endpoint on loopback whose answer a test switches with :meth:`serve`."""

    url: str = ""
    mode: str = "good"
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def serve(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode

    async def linger(self) -> None:
        """Hold a slow answer back (until the server closes, at the latest)."""
        await asyncio.wait_for(self.released.wait(), SLOW)


def _json(document: Any) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), content_type="application/json")


async def _streamed_over_limit(request: web.BaseRequest) -> web.StreamResponse:
    # No Content-Length: only counting the bytes as they come can stop this one.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"keys": [], "padding": "')
    chunk = b"x" * 65536
    for _ in range(MAX_DOCUMENT_BYTES // len(chunk) + 2):
        await response.write(chunk)
    await response.write(b'"}')
    await response.write_eof()
    return response


def answers(server: JwksServer) -> dict[str, Answer]:
    async def good(request: web.BaseRequest) -> web.StreamResponse:
        return _json(KEYS.jwks)

    async def slower_than_the_timeout(request: web.BaseRequest) -> web.StreamResponse:
        await server.linger()
        return _json(KEYS.jwks)

    async def body_slower_than_the_timeout(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"keys": ')
        await server.linger()
        await response.write(json.dumps(KEYS.jwks["keys"]).encode() + b"}")
        return response

    async def fixed(body: bytes, status: int = 200, **headers: str) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    padding = "x" * MAX_DOCUMENT_BYTES
    mixed = {"keys": [MALFORMED[0], *KEYS.jwks["keys"], MALFORMED[1]]}
    table: dict[str, Answer] = {
        "good": good,
        "good_and_malformed_keys": lambda r: fixed(json.dumps(mixed).encode()),
        "not_json": lambda r: fixed(b"<html>maintenance</html>", content_type="text/html"),
        "truncated_json": lambda r: fixed(json.dumps(KEYS.jwks).encode()[:-40]),
        "deeply_nested_json": lambda r: fixed(b"[" * 100_000 + b"]" * 100_000),
        "json_but_not_a_jwks": lambda r: fixed(b'{"keys": "none"}'),
        "no_keys": lambda r: fixed(b'{"keys": []}'),
        "only_malformed_keys": lambda r: fixed(json.dumps({"keys": MALFORMED}).encode()),
        "over_1_mib_declared": lambda r: fixed(
            json.dumps({**KEYS.jwks, "padding": padding}).encode()
        ),
        "over_1_mib_streamed": _streamed_over_limit,
        "slower_than_the_timeout": slower_than_the_timeout,
        "body_slower_than_the_timeout": body_slower_than_the_timeout,
        "server_error": lambda r: fixed(b'{"error": "down"}', status=500),
        "redirect": lambda r: fixed(b"", status=302, Location=f"{server.url}/elsewhere"),
    }
    return table


MODES = tuple(answers(JwksServer()))
BROKEN = [mode for mode in MODES if not mode.startswith("good")]


@asynccontextmanager
async def jwks_server(mode: str = "good") -> AsyncIterator[JwksServer]:
    server = JwksServer(mode=mode)
    table = answers(server)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await table[server.mode](request)

    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        server.released.set()
        await runner.cleanup()


def fetch_count(metrics: Metrics, issuer: str, result: str) -> float:
    labels = {"issuer": issuer, "result": result}
    return metrics.registry.get_sample_value("gateway_jwks_fetches_total", labels) or 0.0


# -- a broken JWKS, fetched by the key store ----------------------------------------------------


@asynccontextmanager
async def store_fetching(server: JwksServer) -> AsyncIterator[tuple[KeyStore, Metrics]]:
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        loader = url_loader(lambda: session, f"{server.url}/keys", timeout=FETCH_TIMEOUT)
        yield KeyStore("corp", loader, min_refetch_interval=30.0, metrics=metrics), metrics


@pytest.mark.parametrize("mode", BROKEN)
async def test_a_broken_jwks_never_replaces_the_good_keys_and_is_counted_as_an_error(
    mode: str,
) -> None:
    async with jwks_server() as server, store_fetching(server) as (store, metrics):
        await store.refresh()
        good = dict(store.keys.by_kid)
        server.serve(mode)
        started = time.monotonic()
        await asyncio.wait_for(store.refresh(), timeout=FETCH_TIMEOUT + 2)
        assert time.monotonic() - started < FETCH_TIMEOUT + 1
        assert dict(store.keys.by_kid) == good
        assert all(store.keys.by_kid[kid] is key for kid, key in good.items())
        assert fetch_count(metrics, "corp", "error") == 1
        assert fetch_count(metrics, "corp", "ok") == 1
        gauge = metrics.registry.get_sample_value("gateway_jwks_keys", {"issuer": "corp"})
        assert gauge == 3
        keys = issuer_keys("corp", KEYS.issuer, ["ES256"], 30.0, None, "scope", store)
        verified = await JwtVerifier({"corp": keys}).verify(KEYS.token("ES256"))
        assert isinstance(verified, VerifiedToken)


@pytest.mark.parametrize("mode", BROKEN)
async def test_a_broken_first_jwks_leaves_the_issuer_unloaded_without_raising(mode: str) -> None:
    async with jwks_server(mode) as server, store_fetching(server) as (store, metrics):
        await asyncio.wait_for(store.refresh(), timeout=FETCH_TIMEOUT + 2)
        assert not store.loaded
        assert fetch_count(metrics, "corp", "error") == 1


async def test_one_malformed_key_in_a_served_set_does_not_spoil_the_others() -> None:
    async with (
        jwks_server("good_and_malformed_keys") as server,
        store_fetching(server) as (store, metrics),
    ):
        await store.refresh()
    assert set(store.keys.by_kid) == {"o-rsa", "o-ec", "o-ed"}
    assert fetch_count(metrics, "corp", "ok") == 1


# -- through the gateway ------------------------------------------------------------------------

REMOTE = KEYS  # the issuer whose keys every JwksServer serves
FILES = TokenIssuer("https://files.test", prefix="f")

TWO_ISSUERS_CONFIG = """\
issuers:
  files:
    issuer: {files_issuer}
    jwks_file: files.jwks.json
    audiences: [{audience}]
  remote:
    issuer: {remote_issuer}
    jwks_uri: {jwks_uri}
    audiences: [{audience}]
    jwks: {{min_refetch_interval: 0s}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
"""


@dataclass
class Gateway:
    url: str
    admin_url: str
    http: aiohttp.ClientSession

    async def get(self, token: str) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.get(f"{self.url}/orders/1", headers=headers) as response:
            await response.read()
            return response

    async def readyz(self) -> tuple[int, Any]:
        async with self.http.get(f"{self.admin_url}/readyz") as response:
            return response.status, await response.json()

    async def metric(self, name: str, **labels: str) -> float | None:
        async with self.http.get(f"{self.admin_url}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == name and found.labels == labels:
                    return float(found.value)
        return None


@asynccontextmanager
async def gateway_with_remote_keys(server: JwksServer, directory: Path) -> AsyncIterator[Gateway]:
    """A gateway with two issuers: ``files`` (a key file) and ``remote`` (``server``'s JWKS; an
    unknown kid may fetch again at once)."""
    FILES.write_jwks(directory / "files.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            directory,
            TWO_ISSUERS_CONFIG,
            files_issuer=FILES.issuer,
            remote_issuer=REMOTE.issuer,
            jwks_uri=f"{server.url}/keys",
            audience=AUDIENCE,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Gateway(gateway.url, gateway.admin_url, http)


async def test_readyz_is_503_naming_each_issuer_without_keys_until_they_load_then_200(
    tmp_path: Path,
) -> None:
    async with (
        jwks_server("server_error") as server,  # the remote JWKS fails at start
        gateway_with_remote_keys(server, tmp_path) as gateway,
    ):
        status, body = await gateway.readyz()
        assert status == 503
        assert body == ["issuer remote: signing keys not loaded"]
        assert await gateway.metric("gateway_jwks_keys", issuer="files") == 3
        assert await gateway.metric("gateway_jwks_keys", issuer="remote") == 0
        server.serve("good")
        # The first token of that issuer fetches its keys (min_refetch_interval: 0s).
        assert (await gateway.get(REMOTE.token())).status == 200
        status, body = await gateway.readyz()
        assert (status, body["status"]) == (200, "ready")
        assert await gateway.metric("gateway_jwks_keys", issuer="remote") == 3


@pytest.mark.parametrize("mode", ["not_json", "deeply_nested_json", "only_malformed_keys"])
async def test_a_gateway_whose_first_jwks_is_broken_starts_not_ready_and_answers_503(
    tmp_path: Path, mode: str
) -> None:
    async with (
        jwks_server(mode) as server,
        gateway_with_remote_keys(server, tmp_path) as gateway,
    ):
        assert (await gateway.readyz())[0] == 503
        response = await gateway.get(REMOTE.token())
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert "WWW-Authenticate" not in response.headers
        errors = await gateway.metric("gateway_jwks_fetches_total", issuer="remote", result="error")
        assert errors is not None and errors >= 2  # at start, and for the token's kid
        # The other issuers are unaffected.
        assert (await gateway.get(FILES.token())).status == 200


async def test_a_gateway_keeps_its_good_keys_while_its_jwks_turns_to_garbage(
    tmp_path: Path,
) -> None:
    async with jwks_server() as server, gateway_with_remote_keys(server, tmp_path) as gateway:
        for mode in BROKEN:
            if mode.startswith(("slow", "body_slow")):
                continue  # the gateway waits 5 s for a JWKS: the store-level tests show these
            server.serve(mode)
            # A forged kid makes the gateway fetch (min_refetch_interval: 0s): the garbage.
            forged = await gateway.get(REMOTE.token(kid=f"forged-{mode}"))
            assert forged.status == 401, mode
            assert (await gateway.get(REMOTE.token())).status == 200, mode
        errors = await gateway.metric("gateway_jwks_fetches_total", issuer="remote", result="error")
        ok = await gateway.metric("gateway_jwks_fetches_total", issuer="remote", result="ok")
        assert (errors, ok) == (len(BROKEN) - 2, 1)
        assert await gateway.metric("gateway_jwks_keys", issuer="remote") == 3


# -- the real identity provider goes away -------------------------------------------------------

RESOURCE = "https://api.example.test/orders"
MAX_STALE = 2.0
REFRESH = 0.2

PROVIDER_CONFIG = """\
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    jwks: {{refresh_interval: {refresh}s, min_refetch_interval: 30s, max_stale: {max_stale}s}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
"""


@dataclass
class Answered:
    after: float  # seconds since the provider was stopped
    status: int
    headers: dict[str, str]


async def test_with_the_provider_down_tokens_work_until_max_stale_then_get_503_never_401(
    tmp_path: Path,
) -> None:
    # Real time, kept short: keys refreshed every 0.2 s while the provider is up, then 2 s of
    # grace. Requests in the first second after the stop must pass; the first 503 cannot come
    # before 2 s minus one refresh interval.
    idp: OpenIdProvider = await asyncio.to_thread(start_provider)
    try:
        token = await asyncio.to_thread(idp.token, RESOURCE, ["orders:read"])
        async with echo_upstream() as upstream:
            path = write_config(
                tmp_path,
                PROVIDER_CONFIG,
                issuer=idp.issuer,
                resource=RESOURCE,
                refresh=REFRESH,
                max_stale=MAX_STALE,
                upstream=upstream.url,
            )
            async with running_gateway(path) as running, aiohttp.ClientSession() as http:
                gateway = Gateway(running.url, running.admin_url, http)
                assert (await gateway.get(token)).status == 200
                stopped = time.monotonic()
                await asyncio.to_thread(idp.stop)
                answered: list[Answered] = []
                while time.monotonic() - stopped < MAX_STALE + 4 and len(answered) < 400:
                    response = await gateway.get(token)
                    after = time.monotonic() - stopped
                    answered.append(Answered(after, response.status, dict(response.headers)))
                    if [a.status for a in answered[-3:]] == [503] * 3:
                        break
                    await asyncio.sleep(0.05)
                errors = running.metrics.registry.get_sample_value(
                    "gateway_jwks_fetches_total", {"issuer": "idp", "result": "error"}
                )
    finally:
        idp.stop()
    statuses = [a.status for a in answered]
    assert set(statuses) <= {200, 503}, statuses
    early = [a.status for a in answered if a.after < MAX_STALE / 2]
    assert len(early) >= 5 and set(early) == {200}
    first = statuses.index(503)
    assert answered[first].after > MAX_STALE - 2 * REFRESH
    assert set(statuses[first:]) == {503}  # once stale, never a 200 from keys of unknown age
    for late in answered[first:]:
        assert int(late.headers["Retry-After"]) > 0
        assert "WWW-Authenticate" not in late.headers
    assert errors is not None and errors >= 1
