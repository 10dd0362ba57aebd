"""The gateway's build: pyproject.toml says what it is; this compiles its request path with mypyc.

The modules in ``COMPILED`` are the ones a request runs through. They are ordinary Python, checked
by ``mypy --strict``; mypyc (the compiler mypy itself ships as) turns each into a C extension
that runs the same code without the interpreter's bytecode loop: 25-27 % fewer instructions
a request on the public and cached-token routes, 16 % on a token's first check (bench/RESULTS.md,
the callgrind section). The rest of the package, and every module when nothing is compiled,
runs as plain Python.

A module joins the list only when the whole suite passes with it compiled (scripts/test.sh runs
it so). mypyc's classes are closer to C types than Python's: their methods cannot be replaced on
an instance, and a value whose type differs from its annotation raises TypeError. The gateway
itself does neither, so compiled or not it answers the same.

``GATEWAY_COMPILE`` chooses:

- ``auto`` (the default): compile; where that cannot be done (no C compiler, no Python headers,
  the compiler failing), warn and install plain Python. pip shows the warning with ``-v``; the
  gateway's ``started`` log line says ``"compiled"`` either way.
- ``yes``: compile or fail (scripts/test.sh and the Dockerfile: what is tested and shipped is
  compiled).
- ``no``: plain Python only.

An editable install (``pip install -e .``) puts the compiled modules beside their sources, where
they take precedence: after editing one of ``COMPILED``, install again (tests/conftest.py refuses
to run the tests against a compiled module older than its source).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules every request runs through. The rest of the package stays interpreted: the
# configuration, command line, admin and discovery run once or rarely; of the request path,
# token_cache.py and server.py's handed-over connections are not compiled (bench/RESULTS.md
# says what keeps each out).
COMPILED = [
    "gateway/observe/logs.py",
    "gateway/observe/metrics.py",
    "gateway/pipeline/errors.py",
    "gateway/pipeline/extract.py",
    "gateway/pipeline/identity.py",
    "gateway/pipeline/ingress.py",
    "gateway/pipeline/routing.py",
    "gateway/pipeline/authorize.py",
    "gateway/pipeline/cors.py",
    "gateway/pipeline/decision.py",
    "gateway/pipeline/verify/claims.py",
    "gateway/pipeline/verify/expiring.py",
    "gateway/pipeline/verify/introspection.py",
    "gateway/pipeline/verify/jwks.py",
    "gateway/pipeline/verify/jwt.py",
    "gateway/pipeline/verify/tokens.py",
    "gateway/digest.py",
    "gateway/downstream.py",
    "gateway/proxy.py",
    "gateway/upstream/client.py",
    "gateway/upstream/forward.py",
    "gateway/upstream/headers.py",
    "gateway/upstream/http1.py",
    "gateway/upstream/websocket.py",
]

# The commands that build extensions; the others (metadata, sdist) need no compiling.
_BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}

MODE = os.environ.get("GATEWAY_COMPILE", "auto").strip().lower()
if MODE not in {"auto", "yes", "no"}:
    sys.exit(f"GATEWAY_COMPILE={MODE!r}: expected auto, yes or no")


def _warn(message: str) -> None:
    print(f"oauth-gateway: {message}; installing plain Python (slower, same answers)",
          file=sys.stderr)  # fmt: skip


def _cannot_compile() -> str | None:
    """Why this machine cannot compile C extensions for this Python, if it plainly cannot."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h; Debian: python3-dev)"
    return None


def _extensions() -> list[Any]:
    if MODE == "no" or not _BUILDS & set(sys.argv[1:]):
        return []
    if MODE == "auto" and (reason := _cannot_compile()):
        _warn(reason)
        return []
    try:
        from mypyc.build import mypycify

        return mypycify(COMPILED, opt_level="3")
    except (Exception, SystemExit) as error:  # mypyc exits on a type error
        if MODE == "yes":
            raise
        _warn(f"mypyc could not compile the modules ({error!r})")
        return []


class _BuildExt(build_ext):
    """build_ext that, in ``auto`` mode, falls back to plain Python when compiling fails, with
    none of the failed build's modules left behind (beside the sources, they would be imported
    instead of them)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            if MODE == "yes" or not self.extensions:
                raise
            _warn(f"compiling failed ({error})")
            for extension in self.extensions:
                for built in (self.get_ext_fullpath(extension.name), self._inplace_path(extension)):
                    Path(built).unlink(missing_ok=True)
            self.extensions = []
            self.distribution.ext_modules = []

    def _inplace_path(self, extension: Any) -> str:
        inplace, self.inplace = self.inplace, True
        try:
            return str(self.get_ext_fullpath(extension.name))
        finally:
            self.inplace = inplace


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
