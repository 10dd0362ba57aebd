"""Which of the package's compiled modules (setup.py) no longer match their sources."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

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
