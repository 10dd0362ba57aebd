"""What the upstream learns about the caller: spoofed identity headers removed, real ones set.

Stripping runs on every route, public ones included: a client must never be able to send
``X-Auth-Subject: admin`` (or ``X_Auth_Subject``, which CGI/WSGI backends read as the same
header) and have it reach a backend that trusts those headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .decision import Identity
from .verify.claims import claim_at

# CR, LF, NUL and the other control characters but TAB (RFC 9110 §5.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_key(name: str) -> str:
    """How identity header names are compared: case-insensitively, with ``_`` equal to ``-``."""
    return name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class HeaderStripper:
    """Decides which incoming headers are identity headers and must not reach the upstream."""

    prefixes: tuple[str, ...]
    names: frozenset[str]

    @classmethod
    def of(cls, prefixes: Iterable[str], names: Iterable[str]) -> HeaderStripper:
        return cls(
            prefixes=tuple(header_key(p) for p in prefixes),
            names=frozenset(header_key(n) for n in names),
        )

    def is_identity_header(self, name: str) -> bool:
        return self.is_identity_key(header_key(name))

    def is_identity_key(self, key: str) -> bool:
        """``is_identity_header`` for a name already made a ``header_key``."""
        return key in self.names or key.startswith(self.prefixes)


def identity_headers(identity: Identity, mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """The identity headers for ``identity``: one value each, absent when the claim is."""
    headers: list[tuple[str, str]] = []
    for name, path in mapping.items():
        value = _claim(identity, path)
        text = value if type(value) is str else _header_text(value)  # a string: most claims
        # A missing claim means the header is absent, never empty. RFC 9110 §5.5: parsers drop
        # leading and trailing whitespace, so a claim " admin" would reach the upstream as
        # "admin" (another user): not written at all instead. Nor is one holding CR, LF or NUL
        # (header injection), or any other control character.
        if text and text == text.strip(" \t") and not _CONTROL.search(text):
            headers.append((name, text))
    return headers


def _claim(identity: Identity, path: str) -> Any:
    if path == "client_id":
        return identity.client_id  # RFC 9068 §2.2: falls back to `azp`
    value = claim_at(identity.claims, path)
    if value is None and path == "scope" and identity.scopes:
        return sorted(identity.scopes)  # scopes given as an `scp` array
    return value


def _header_text(value: Any) -> str | None:
    """The header form of a claim that is not a string (None: it has none)."""
    if isinstance(value, list):
        parts = [_scalar_text(item) for item in value]
        if any(part is None for part in parts):
            return None
        return " ".join(part for part in parts if part)
    return _scalar_text(value)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None  # objects and nested lists have no single header form
