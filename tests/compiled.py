"""Which of the package's compiled modules (setup.py) are older than their sources."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"


def stale_compiled_modules(package: Path) -> list[str]:
    """The compiled modules (``name.*.so``) in ``package`` older than their ``name.py``."""
    stale = []
    for compiled in package.rglob("*.so"):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
            stale.append(str(source.relative_to(package.parent)))
    return sorted(stale)
