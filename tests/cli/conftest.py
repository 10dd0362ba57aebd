"""Running the ``gateway`` command the way a user does: ``python -m gateway ...`` in a
subprocess, from the directory that holds the configuration file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from tests.support import AUDIENCE, TokenIssuer, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]

GatewayCommand = Callable[..., subprocess.CompletedProcess[str]]


def command_env(**extra: str) -> dict[str, str]:
    """The environment for a gateway subprocess: ours, without GATEWAY_CONFIG unless given,
    with the repository importable whatever the working directory."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture
def gateway_command(tmp_path: Path) -> GatewayCommand:
    """``gateway_command("check", "--config", "gateway.yaml")`` runs in ``tmp_path``."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=tmp_path,
            env=command_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``gateway.cli.main`` configures structlog and the root logger for the process: undo it,
    so that later tests do not log into this test's captured (and closed) stdout."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("aiohttp.access").disabled
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = access


# A valid configuration without warnings: a public route and a protected one, keys in a file
# next to the configuration (written relative, as operators do).
VALID_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: keys/corp.jwks.json
    audiences: [{audience}]
upstreams:
  orders: {{url: "{upstream}"}}
routes:
  - name: status
    match: {{path: /status, methods: [GET]}}
    upstream: orders
    auth: public
  - name: orders-read
    match: {{path: /orders/**, methods: [GET, HEAD]}}
    upstream: orders
    auth:
      scopes: [orders:read]
"""

# Nothing listens on the discard port; explain and check never connect to an upstream anyway.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(scope="session")
def token_issuer() -> TokenIssuer:
    return TokenIssuer()


def write_valid_config(directory: Path, issuer: TokenIssuer, upstream: str = NOWHERE) -> Path:
    (directory / "keys").mkdir(exist_ok=True)
    issuer.write_jwks(directory / "keys" / "corp.jwks.json")
    return write_config(
        directory, VALID_CONFIG, issuer=issuer.issuer, audience=AUDIENCE, upstream=upstream
    )


@pytest.fixture
def valid_config(tmp_path: Path, token_issuer: TokenIssuer) -> Path:
    return write_valid_config(tmp_path, token_issuer)
