"""The gateway as plain Python, where setup.py compiled part of it: a benchmark that measures
what compiling gains runs both in one run, the plain one in a process that called
:func:`use_sources` before importing anything of the gateway's."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from bench/: the test helpers live in tests/
    sys.path.insert(0, str(REPO))

from tests.compiled import module_name  # noqa: E402

__all__ = ["SourcesFirst", "checkout_compiled", "compiled_modules", "module_name", "use_sources"]


class SourcesFirst(MetaPathFinder):
    """Finds each module of the gateway package from its ``.py`` file, never a compiled one."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] != "gateway":
            return None
        spec = PathFinder.find_spec(fullname, path)
        name = module_name(Path(spec.origin)) if spec is not None and spec.origin else None
        if spec is None or name is None:
            return spec  # a plain module or package, or one for the next finder
        source = Path(str(spec.origin)).with_name(f"{name}.py")  # __init__.py for a package
        return spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


def use_sources() -> None:
    """Import the gateway from its sources in this process (before its first import)."""
    if any(name.partition(".")[0] == "gateway" for name in sys.modules):
        raise RuntimeError("the gateway is imported already: call use_sources() first")
    sys.meta_path.insert(0, SourcesFirst())


def checkout_compiled() -> list[Path]:
    """The compiled modules the checkout's gateway/ holds for this Python (an editable install
    builds them there), which a process running from the checkout imports."""
    return [path for path in (REPO / "gateway").rglob("*") if module_name(path)]


def compiled_modules() -> list[str]:
    """The gateway's modules this process runs compiled (after their import)."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.partition(".")[0] == "gateway"
        and str(getattr(module, "__file__", "")).endswith(".so")
    )
