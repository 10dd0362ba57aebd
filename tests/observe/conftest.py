"""Shared by the observability tests: promtool, and one scripted run of the gateway whose
metrics several tests read."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.observe.traffic import Scrapes, run_mix
from tests.support import TokenIssuer


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' promtool. Never skipped: CI installs it (Debian's `prometheus` package, in
    .ci/run), and a check that silently does not run is no check."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install prometheus; .ci/run does it)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Scrapes:
    """``/metrics`` before and after the scripted mix of requests (run once for all tests)."""
    directory: Path = tmp_path_factory.mktemp("mix")
    return asyncio.run(run_mix(directory, TokenIssuer()))
