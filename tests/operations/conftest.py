"""Fixtures of the operations tests: the real OpenID provider, started only for tests that ask
for it (its start costs about a second)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.idp_fixture import OpenIdProvider, node_executable, start_provider


@pytest.fixture(scope="session")
def idp() -> Iterator[OpenIdProvider]:
    """A real OpenID provider (oidc-provider on Node.js) on a random loopback port; fails (does
    not skip) without Node.js, as the integration suite does."""
    if node_executable() is None:
        pytest.fail("Node.js (`node`) is not on PATH: see tests/integration/idp", pytrace=False)
    provider = start_provider()
    try:
        yield provider
    finally:
        provider.stop()
