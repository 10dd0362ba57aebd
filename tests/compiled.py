"""Which of the package's compiled modules (setup.py) no longer match their sources, and a
module of the package imported from its source whether or not it is compiled."""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def module_name(file: Path) -> str | None:
    """The module this Python would import ``file`` as, if it is an extension module for it."""
    for suffix in EXTENSION_SUFFIXES:
        name = file.name.removesuffix(suffix)
        if name != file.name and "." not in name:
            return name
    return None


def stale_compiled_modules(package: Path) -> list[str]:
    """The modules of ``package`` this Python would import compiled from a file older than their
    ``.py`` source, or with no source beside it."""
    stale = []
    for compiled in package.rglob("*"):
        name = module_name(compiled)
        if name is None:
            continue
        source = compiled.with_name(f"{name}.py")
        if not source.exists() or source.stat().st_mtime > compiled.stat().st_mtime:
            stale.append(str(source.relative_to(package.parent)))
    return sorted(stale)


def from_source(name: str) -> ModuleType:
    """The package's module ``name`` (``gateway.pipeline.routing``) run from its ``.py`` source,
    as ``<name>_source``, even where ``name`` itself is imported compiled: for a test that wraps
    a class's methods to count their calls, which compiled code makes directly, never through
    the class's attributes. The same code; only the interpreter runs it."""
    source_name = f"{name}_source"
    if (known := sys.modules.get(source_name)) is not None:
        return known
    path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(source_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[source_name] = module  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[source_name]  # as importlib does: no half-made module to find later
        raise
    return module
