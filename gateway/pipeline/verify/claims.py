"""Reading standard claims the same way for every kind of token (JWT or introspection answer)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..decision import Denial


def parse_scopes(claims: Mapping[str, Any], scope_claim: str = "scope") -> frozenset[str]:
    """The token's scopes: a space-separated string (RFC 8693 §4.2, RFC 9068 §2.2.3), or an
    array of strings under ``scope`` or ``scp`` as several identity providers issue them.
    The first of the configured claim, ``scope`` and ``scp`` that is present is used alone."""
    for name in dict.fromkeys((scope_claim, "scope", "scp")):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(s for item in value if isinstance(item, str) for s in item.split())
    return frozenset()


def is_number(value: Any) -> bool:
    """A JSON number: RFC 7519 §2 NumericDate (booleans are not numbers here).

    Only finite numbers that fit a float count: `1e400` parses as infinity (never expires), and
    `exp + leeway` on an integer like 10**400 raises OverflowError (a 500, not a refusal)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def audiences(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    """``aud`` as a tuple (RFC 7519 §4.1.3: a string or an array of strings), or None if
    it is neither."""
    aud = claims.get("aud")
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    return None


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted claim path (``realm_access.roles``), or None when absent."""
    if "." not in path:
        return claims.get(path)  # a top-level claim: most paths
    value: Any = claims
    for part in path.split("."):
        # A JSON object is a dict: the abstract Mapping check (slow) is for anything else.
        if not isinstance(value, dict) and not isinstance(value, Mapping):
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


def malformed(description: str = "the token is malformed") -> Denial:
    return Denial("malformed_token", description)


def claim_type_denial(claims: Mapping[str, Any]) -> Denial | None:
    """Registered claims of the wrong JSON type (RFC 7519 §4.1): refused, never coerced."""
    for name in ("exp", "nbf", "iat"):
        if name in claims and not is_number(claims[name]):
            return malformed(f"the token's {name} is not a number")
    if "sub" in claims and not isinstance(claims["sub"], str):
        return malformed("the token's sub is not a string")
    if audiences(claims) is None:
        return malformed("the token's aud is not a string or an array of strings")
    return None


def lifetime_denial(
    claims: Mapping[str, Any], *, leeway: float, now: float, require_exp: bool
) -> Denial | None:
    """Why the token is outside its validity window (with ``leeway``), or None."""
    exp = claims.get("exp")
    if exp is None:
        if require_exp:
            # RFC 9068 §2.2: JWT access tokens carry `exp`; one without would be valid forever.
            return malformed("the token has no expiry")
    elif now > exp + leeway:
        return Denial("expired", "the token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and now + leeway < nbf:
        return Denial("not_yet_valid", "the token is not valid yet")
    iat = claims.get("iat")
    if iat is not None and now + leeway < iat:
        return Denial("not_yet_valid", "the token was issued in the future")
    return None
