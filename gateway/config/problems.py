"""Configuration problems: what is wrong, where in the file, and how bad.

Every stage that can reject a configuration (YAML parsing, ``${VAR}`` substitution, schema
validation, compilation) reports :class:`Problem` values with the key path, so that an operator is
always told ``routes[2].auth.scopes`` and the line, never just "invalid config".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

KeyPath = tuple[str | int, ...]
Severity = Literal["error", "warning"]


def format_key_path(path: Sequence[str | int]) -> str:
    """Render a key path the way SPEC writes it: ``routes[2].auth.scopes``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(top level)"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in a configuration file."""

    path: KeyPath
    message: str
    severity: Severity = "error"
    line: int | None = None

    def at_line(self, line: int | None) -> Problem:
        return replace(self, line=line)

    def describe(self, source: str | None = None) -> str:
        if source:
            where = f"{source}:{self.line}: " if self.line else f"{source}: "
        else:
            where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.severity}: {format_key_path(self.path)}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; carries every error found, in file order."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, format_key_path(p.path)))
        self.source = source
        super().__init__("\n".join(p.describe(source) for p in self.problems))
