"""Authorisation: may this verified token use this route? Audience, scopes, claim conditions.

This runs on every request, even when the token's verification came from a cache, so a token
accepted on one route is judged afresh on another (SPEC §3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .decision import Denial, Identity, VerifiedToken
from .verify.claims import audiences, claim_at


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """One claim condition: the claim equals ``value``, or (``contains``) is a list holding it."""

    path: str
    value: str | int | float | bool
    contains: bool = False

    def holds(self, claims: Mapping[str, Any]) -> bool:
        actual = claim_at(claims, self.path)
        if self.contains:
            return isinstance(actual, list) and any(_same(item, self.value) for item in actual)
        return _same(actual, self.value)


def _same(actual: Any, expected: Any) -> bool:
    # Strict: `true` must not equal 1, nor "1" equal 1 (type confusion grants nothing).
    return type(actual) is type(expected) and actual == expected


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a protected route demands of a token, compiled from its ``auth`` block."""

    issuers: tuple[str, ...] | None = None  # in the order opaque tokens are tried
    audience: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    any_scopes: tuple[str, ...] = ()
    claims: tuple[ClaimRule, ...] = ()


class Authorizer:
    """Judges verified tokens against route requirements."""

    def __init__(self, issuer_audiences: Mapping[str, tuple[str, ...]]) -> None:
        self._issuer_audiences = issuer_audiences

    def effective_audience(self, requirement: Requirement, issuer: str) -> tuple[str, ...]:
        """The route's audience, else the issuer's default audiences (SPEC §3)."""
        if requirement.audience is not None:
            return requirement.audience
        return self._issuer_audiences.get(issuer, ())

    def authorize(self, requirement: Requirement, token: VerifiedToken) -> Identity | Denial:
        """The identity, or the first reason the token may not use the route."""
        for denial in self.denials(requirement, token):
            return denial
        return Identity(issuer=token.issuer, claims=token.claims, scopes=token.scopes)

    def denials(self, requirement: Requirement, token: VerifiedToken) -> Iterator[Denial]:
        """Every reason the token may not use the route, in the order they are checked."""
        if requirement.issuers is not None and token.issuer not in requirement.issuers:
            yield Denial("wrong_issuer", "the token's issuer is not accepted here")
        expected = self.effective_audience(requirement, token.issuer)
        if expected and not set(expected).intersection(audiences(token.claims) or ()):
            yield Denial("wrong_audience", "the token is not meant for this API")
        missing_all = [s for s in requirement.scopes if s not in token.scopes]
        missing_any = bool(requirement.any_scopes) and token.scopes.isdisjoint(
            requirement.any_scopes
        )
        if missing_all or missing_any:
            # RFC 6750 §3.1: the challenge names the scope needed.
            needed = requirement.scopes + (requirement.any_scopes if missing_any else ())
            yield Denial(
                "insufficient_scope", "the token lacks a required scope", required_scopes=needed
            )
        if not all(rule.holds(token.claims) for rule in requirement.claims):
            yield Denial("claim_mismatch", "the token does not meet this API's conditions")
