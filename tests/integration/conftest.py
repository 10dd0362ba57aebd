"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.idp_fixture import OpenIdProvider, node_executable, start_provider
from tests.integration.redis_fixture import RedisServer, redis_server_executable, start_redis


@pytest.fixture(scope="session")
def idp() -> Iterator[OpenIdProvider]:
    """A real OpenID provider (oidc-provider on Node.js) on a random loopback port.

    Fails (does not skip) when Node.js is missing: CI installs it, and silently
    skipping would hide the whole integration suite.
    """
    if node_executable() is None:
        pytest.fail(
            "Node.js (`node`) is not on PATH: the integration tests need Node.js 20+ "
            "for the test OpenID provider in tests/integration/idp",
            pytrace=False,
        )
    provider = start_provider()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` on a random loopback port, no persistence.

    Fails (does not skip) when ``redis-server`` is missing: CI installs it.
    Tests that pause, restart or stop a server should start their own with
    ``start_redis()``; this shared one is resumed / restarted by ``redis_url``
    if a test left it paused or stopped.
    """
    if redis_server_executable() is None:
        pytest.fail(
            "`redis-server` is not on PATH: the integration tests need a real Redis "
            "(Debian/Ubuntu: apt-get install redis-server; .ci/run installs it)",
            pytrace=False,
        )
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL (``redis://127.0.0.1:N/0``) of the shared Redis, flushed (FLUSHALL) for this test."""
    if redis_server.paused:
        redis_server.resume()
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()
    return redis_server.url
