"""Configuration: YAML -> validated models -> compiled objects, with every problem located."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .compile import CompiledConfig, compile_config
from .load import LoadedConfig, load_config
from .problems import ConfigError, Problem


def load_and_compile(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[CompiledConfig, LoadedConfig]:
    """Everything ``gateway check`` does: load, validate, compile. Errors and warnings come
    back with the line of the key they are about."""
    loaded = load_config(path, environ)
    try:
        compiled = compile_config(loaded.config, loaded.base_dir)
    except ConfigError as error:
        located = [p.at_line(loaded.source_map.line_of(p.path)) for p in error.problems]
        raise ConfigError(located, source=str(path)) from None
    compiled.warnings[:] = [w.at_line(loaded.source_map.line_of(w.path)) for w in compiled.warnings]
    return compiled, loaded


__all__ = ["CompiledConfig", "ConfigError", "LoadedConfig", "Problem", "load_and_compile"]
