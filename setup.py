"""The gateway's build: pyproject.toml says what it is; this compiles its request path with mypyc.

The modules in ``COMPILED`` are the ones a request runs through. They are ordinary Python, checked
by ``mypy --strict``; mypyc (the compiler mypy itself ships as) turns each into a C extension
that runs the same code without the interpreter's bytecode loop: about a sixth fewer
instructions a request (bench/RESULTS.md, "Compiled with mypyc"). The rest of the package, and
every module when nothing is compiled, runs as plain Python, with the same behaviour.

A module joins the list only when the whole suite passes with it compiled (scripts/test.sh runs
it so). mypyc's classes are closer to C types than Python's: their methods cannot be replaced on
an instance, and a value whose type differs from its annotation raises TypeError.

``GATEWAY_COMPILE`` chooses:

- ``auto`` (the default): compile; where that cannot be done (no C compiler, no Python headers,
  no mypyc), warn and install plain Python.
- ``yes``: compile or fail (scripts/test.sh and the Dockerfile: what is tested and shipped is
  compiled).
- ``no``: plain Python only.

An editable install (``pip install -e .``) puts the compiled modules beside their sources, where
they take precedence: after editing one of ``COMPILED``, install again (tests/conftest.py refuses
to run the tests against a compiled module older than its source).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules every request runs through; the rest of the package (configuration, command line,
# admin, discovery) runs once or rarely and stays interpreted.
COMPILED = [
    "gateway/observe/metrics.py",
    "gateway/pipeline/extract.py",
    "gateway/pipeline/ingress.py",
    "gateway/proxy.py",
    "gateway/upstream/forward.py",
    "gateway/upstream/headers.py",
    "gateway/upstream/http1.py",
]

MODE = os.environ.get("GATEWAY_COMPILE", "auto").strip().lower()
if MODE not in {"auto", "yes", "no"}:
    sys.exit(f"GATEWAY_COMPILE={MODE!r}: expected auto, yes or no")


def _warn(message: str) -> None:
    print(f"oauth-gateway: {message}; installing plain Python (slower, same behaviour)",
          file=sys.stderr)  # fmt: skip


def _extensions() -> list[Any]:
    if MODE == "no":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if MODE == "yes":
            raise
        _warn("mypyc is not installed")
        return []
    return mypycify(COMPILED, opt_level="3")


class _BuildExt(build_ext):
    """build_ext that, in ``auto`` mode, falls back to plain Python when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            if MODE == "yes" or not self.extensions:
                raise
            _warn(f"compiling failed ({error})")
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
