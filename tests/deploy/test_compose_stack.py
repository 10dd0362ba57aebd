"""The compose stack's own pieces, run for real on loopback, since no Docker engine is at hand:
the test provider through the compose wrapper (deploy/compose/idp/start.mjs), the sample echo
upstream (deploy/compose/upstream/echo.py), a real Redis, and `gateway run` on the compose
configuration (deploy/compose/gateway/gateway.yaml) with only its addresses moved to free loopback
ports. A JWT and an opaque token from the provider, asked for as the README and compose.yaml
say, pass the gateway; the echo shows the identity headers; the opaque token's introspection
answer lands in Redis; /metrics counts the requests."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.e2e.process import gateway_process
from tests.integration.idp_fixture import (
    IDP_DIR,
    OpenIdProvider,
    _read_line,
    ensure_node_modules,
    node_executable,
)
from tests.integration.redis_fixture import (
    RedisServer,
    free_port,
    redis_server_executable,
    start_redis,
)

COMPOSE_DIR = DEPLOY / "compose"
RESOURCE = "https://api.example.test"  # what compose.yaml's and the README's curl ask for
READY_TIMEOUT = 15.0


def compose_environment(name: str) -> dict[str, str]:
    compose = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    return {k: str(v) for k, v in compose["services"][name].get("environment", {}).items()}


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[OpenIdProvider]:
    """provider.mjs started by the compose wrapper, as the idp service starts it."""
    node = node_executable()
    if node is None:
        pytest.fail("Node.js (`node`) is not on PATH: CI installs it", pytrace=False)
    ensure_node_modules()
    port = free_port()
    env = {
        **os.environ,
        **compose_environment("idp"),
        # Loopback only here (the container binds 0.0.0.0); the port is a free one.
        "IDP_HOST": "127.0.0.1",
        "IDP_PORT": str(port),
        "IDP_PROVIDER": str(IDP_DIR / "provider.mjs"),
    }
    log = (tmp_path / "idp.log").open("wb")
    process = subprocess.Popen(
        [node, str(COMPOSE_DIR / "idp" / "start.mjs")],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    log.close()
    try:
        started = json.loads(_read_line(process, 30))
        # The wrapper moved the port and kept the provider's own loopback issuer.
        assert started == {"issuer": f"http://127.0.0.1:{port}", "port": port}
        provider = OpenIdProvider(process, started["issuer"], port, tmp_path / "idp.log")
    except BaseException:
        process.kill()
        process.wait(5)
        raise
    with provider:
        yield provider


@pytest.fixture
def upstream() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "ECHO_HOST": "127.0.0.1", "ECHO_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(COMPOSE_DIR / "upstream" / "echo.py")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "no echo"
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(5)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if redis_server_executable() is None:
        pytest.fail("`redis-server` is not on PATH: CI installs it", pytrace=False)
    with start_redis() as server:
        yield server


def loopback_config(tmp_path: Path, idp: OpenIdProvider, upstream: str, redis: RedisServer) -> Path:
    """The compose configuration with the container addresses replaced by loopback ones."""
    text = (COMPOSE_DIR / "gateway" / "gateway.yaml").read_text()
    for old, new in [
        ("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0"),
        ("listen: 0.0.0.0:9901", "listen: 127.0.0.1:0"),
        ("http://127.0.0.1:9000", idp.issuer),
        ("redis://redis:6379/0", redis.url),
        ("http://upstream:8000", upstream),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


async def wait_ready(http: aiohttp.ClientSession, admin_url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        async with http.get(f"{admin_url}/readyz") as response:
            if response.status == 200:
                return
            body = await response.text()
        assert time.monotonic() < deadline, f"never ready: {body}"
        await asyncio.sleep(0.1)


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def test_the_stack_serves_tokens_from_its_provider(
    tmp_path: Path, idp: OpenIdProvider, upstream: str, redis: RedisServer
) -> None:
    config = loopback_config(tmp_path, idp, upstream, redis)
    env = compose_environment("gateway")
    env.pop("GATEWAY_CONFIG")  # the container's path; gateway_process passes --config
    jwt = idp.token(RESOURCE, "api:read")
    opaque = idp.token_response(RESOURCE, "api:read", token_format="opaque")["access_token"]
    assert "." not in opaque

    async with (
        gateway_process(config, tmp_path / "gateway.log", env=env) as gateway,
        aiohttp.ClientSession() as http,
    ):
        await wait_ready(http, gateway.admin_url)

        status, echo = await call(http, "GET", f"{gateway.url}/api/hello", jwt)
        assert status == 200, echo
        assert echo["path"] == "/api/hello"
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        assert headers["x-auth-subject"] == "gateway-tests"
        assert headers["x-auth-client-id"] == "gateway-tests"
        assert headers["x-auth-issuer"] == idp.issuer

        status, body = await call(http, "POST", f"{gateway.url}/api/hello", jwt)
        assert status == 403 and body["error"] == "insufficient_scope"
        status, body = await call(http, "GET", f"{gateway.url}/api/hello")
        assert status == 401
        status, echo = await call(http, "GET", f"{gateway.url}/public/page")
        assert status == 200 and echo["path"] == "/public/page"

        status, echo = await call(http, "GET", f"{gateway.url}/api/opaque", opaque)
        assert status == 200, echo
        assert idp.introspection_requests() == 1
        keys = redis.command("KEYS", "gw:*")
        assert keys, "the introspection answer was not shared through Redis"

        async with http.get(f"{gateway.admin_url}/metrics") as response:
            metrics = await response.text()
        assert 'gateway_requests_total{code="200",method="GET",route="api-read"}' in metrics
