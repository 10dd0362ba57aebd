"""What the token stages return: an :class:`Identity` or a :class:`Denial`, never an exception.

Every denial carries exactly one reason from the closed set of SPEC §6, which becomes the
``reason`` label of ``gateway_auth_decisions_total`` and the ``reason`` field of the access log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Reason = Literal[
    "missing_token",
    "invalid_request",
    "malformed_token",
    "invalid_signature",
    "unknown_key",
    "disallowed_alg",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "wrong_type",
    "inactive",
    "insufficient_scope",
    "claim_mismatch",
    "unavailable",
    "invalid_dpop_proof",
]

REASONS: tuple[Reason, ...] = Reason.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not pass. ``description`` is safe to show the client: it never
    echoes the token nor says which key, audience or claim value was expected."""

    reason: Reason
    description: str
    required_scopes: tuple[str, ...] = ()
    retry_after: int | None = None


@dataclass(slots=True, init=False)
class VerifiedToken:
    """A token whose signature (or introspection answer) and lifetime have been checked, but not
    yet its audience, scopes or claims: those depend on the route and are judged every time.

    Never changed once made (the verified-token cache shares one with every request that shows
    the token), though not a frozen dataclass: compiled, a frozen dataclass's ``__init__`` is
    generated Python setting each field through ``object.__setattr__``, about 1 µs a token on a
    cache miss; this one's is native code."""

    issuer: str
    claims: Mapping[str, Any]
    scopes: frozenset[str]
    introspected: bool  # from an introspection answer rather than a local JWT check
    # What the gateway decided for this token on each route (keyed by the route object's id,
    # which the entry holds): a token found in the verified-token cache is the same object on
    # every request, and its claims never change, so a route's verdict is worked out once.
    decisions: dict[int, Any] = field(compare=False, repr=False)

    def __init__(
        self,
        issuer: str,
        claims: Mapping[str, Any],
        scopes: frozenset[str],
        introspected: bool = False,
    ) -> None:
        self.issuer = issuer
        self.claims = claims
        self.scopes = scopes
        self.introspected = introspected
        self.decisions = {}


@dataclass(slots=True, init=False)
class Identity:
    """The caller, once authorised: what identity headers and logs are made from. Never changed
    once made (not frozen, for a native ``__init__``: see :class:`VerifiedToken`)."""

    issuer: str
    claims: Mapping[str, Any]
    scopes: frozenset[str]

    def __init__(self, issuer: str, claims: Mapping[str, Any], scopes: frozenset[str]) -> None:
        self.issuer = issuer
        self.claims = claims
        self.scopes = scopes

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def client_id(self) -> str | None:
        for name in ("client_id", "azp"):
            value = self.claims.get(name)
            if isinstance(value, str):
                return value
        return None
