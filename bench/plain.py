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


class SourcesFirst(MetaPathFinder):
    """Finds each module of the gateway package from its ``.py`` file, never a compiled one."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] != "gateway":
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(".so"):
            return spec  # a package, a plain module, or one for the next finder
        source = Path(spec.origin).with_name(fullname.rpartition(".")[2] + ".py")
        return spec_from_file_location(fullname, source)


def use_sources() -> None:
    """Import the gateway from its sources in this process (before its first import)."""
    if any(name.partition(".")[0] == "gateway" for name in sys.modules):
        raise RuntimeError("the gateway is imported already: call use_sources() first")
    sys.meta_path.insert(0, SourcesFirst())


def compiled_modules() -> list[str]:
    """The gateway's modules this process runs compiled (after their import)."""
    return sorted(
        name
        for name, module in sys.modules.items()
        if name.partition(".")[0] == "gateway"
        and str(getattr(module, "__file__", "")).endswith(".so")
    )
