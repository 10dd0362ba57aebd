"""Settings for the whole suite.

Under CI (``CI`` set, as on every CI service) randomised tests are repeatable, so that a red run
is about the change it tests: hypothesis draws its examples from a fixed seed, and the raw-socket
fuzzer (tests/hostile/test_fuzz.py) starts from a fixed seed unless told another. Elsewhere both
explore afresh on every run; hypothesis prints how to replay a failure, the fuzzer its seed.

The tests run against the gateway as installed: with the modules setup.py compiles, when it
compiled them. An editable install keeps those beside their sources, where they are imported
instead of them; a compiled module older than its source would test code that is no longer
there, so the suite refuses to start until it is built again.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.compiled import PACKAGE, stale_compiled_modules


def pytest_configure(config: pytest.Config) -> None:
    if stale := stale_compiled_modules(PACKAGE):
        raise pytest.UsageError(
            f"changed or gone since they were compiled: {', '.join(stale)}. Compile them again "
            "(GATEWAY_COMPILE=yes .venv/bin/pip install -e '.[dev]'), or delete gateway/**/*.so "
            "to test plain Python"
        )


settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
