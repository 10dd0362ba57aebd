"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.idp_fixture import OpenIdProvider, node_executable, start_provider


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
