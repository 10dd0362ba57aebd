"""Which check a token gets: a JWT is verified locally with its issuer's keys, an opaque token (or
any token of an issuer with ``validation: introspect``, or without keys) is introspected.

An opaque token does not say who issued it. It is sent only to issuers the route trusts: in the
order of the route's ``auth.issuers`` when it lists them, else in the order of the file's
``issuers``; the first that says it is active decides. A token is never sent to an issuer the
route does not accept.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.digest import token_digest

from ..decision import Denial, VerifiedToken
from ..extract import is_b64token, not_b64token
from .claims import lifetime_denial, malformed
from .expiring import ExpiringLru
from .introspection import Introspector, judge_answer
from .jwt import JwtVerifier, unverified_issuer
from .token_cache import Answer

# SPEC §3: a token is opaque unless it is three base64url segments. Counting dots is not enough:
# RFC 6750 §2.1 lets an opaque token hold "." as well as "~+/=", and such a token was refused as
# a malformed JWT instead of being introspected. (Segments may be empty: `x.y.` stays a JWT, to
# be refused as one.)
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


# Introspection answers whose judgement is remembered (least recently used first out).
JUDGED_ANSWERS = 4096


def is_compact_jws(token: str) -> bool:
    """Whether ``token`` has the shape of a JWT (and is checked as one) rather than opaque."""
    return _COMPACT_JWS.fullmatch(token) is not None


def b64token_is_compact_jws(token: str) -> bool:
    """``is_compact_jws`` for a token already known to be a b64token (RFC 6750 §2.1: letters,
    digits and ``-._~+/``, then ``=`` padding): two dots, and none of the characters base64url
    lacks. A few scans for one character each instead of a regular expression over it all."""
    return token.count(".") == 2 and not (
        "~" in token or "+" in token or "/" in token or "=" in token
    )


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """How tokens of one configured issuer are checked."""

    name: str
    issuer: str
    leeway: float
    scope_claim: str
    introspector: Introspector | None
    introspect_jwts: bool  # `validation: introspect`, or no keys to check a JWT with


def jwt_cache_key(token: str) -> bytes | None:
    """The key a token is looked up by in the verified-JWT cache (its ``token_digest``), or None
    for a token never looked up there: only what could be a JWT is hashed to look (an opaque
    token rarely has a dot)."""
    return token_digest(token) if "." in token else None


class TokenVerifier:
    """Verifies a token by the right means for its kind and issuer."""

    def __init__(
        self,
        jwt: JwtVerifier,
        issuers: Mapping[str, IssuerPolicy],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwt = jwt
        # A JWT verified before, by its jwt_cache_key: the request path looks here first, and
        # awaits verify() only on a miss.
        self.cached = jwt.cached
        self._issuers = issuers
        self._clock = clock
        # Whether any JWT is ever introspected; if none is, a JWT's claimed issuer need not be
        # read before it is verified.
        self._introspects_jwts = any(p.introspect_jwts and p.introspector for p in issuers.values())
        # _jwt_introspection_candidates, by the route's ``allowed``.
        self._jwt_introspection: dict[tuple[str, ...] | None, tuple[IssuerPolicy, ...]] = {}
        # Without an end of their own (``math.inf``): an answer's time is its cache's business.
        self._judgements: ExpiringLru[tuple[int, str], tuple[Answer, VerifiedToken | Denial]] = (
            ExpiringLru(JUDGED_ANSWERS, clock)
        )

    async def verify(
        self,
        token: str,
        allowed: Collection[str] | None = None,
        *,
        check_lifetime: bool = True,
        digest: bytes | None = None,
    ) -> VerifiedToken | Denial:
        """``digest``: the token's ``jwt_cache_key``, when the caller has made it already."""
        # A JWT that checked out before needs no parsing, nor a look at its issuer first.
        if digest is None:
            digest = jwt_cache_key(token)
        if digest is not None:
            known = self._jwt.cached(digest, allowed, check_lifetime=check_lifetime)
            if known is not None:
                return known
        return await self.verify_new(token, digest, allowed, check_lifetime=check_lifetime)

    async def verify_new(
        self,
        token: str,
        digest: bytes | None,
        allowed: Collection[str] | None = None,
        *,
        check_lifetime: bool = True,
    ) -> VerifiedToken | Denial:
        """:meth:`verify` for a token just looked for with :attr:`cached` (by ``digest``, its
        ``jwt_cache_key``) and not found there."""
        # Any token met for the first time must be a b64token (RFC 6750 §2.1); one that was
        # verified before was one (the gateway's extraction leaves this check to here).
        if b64token_is_compact_jws(token):
            # Shaped like a JWT (two dots, none of `~+/=`), if it is a b64token at all:
            # JwtVerifier.verify_new refuses anything but base64url characters and dots
            # itself, as malformed, as is_b64token's refusal is.
            # The claimed issuer is read (the payload parsed) only when the route trusts an
            # issuer whose JWTs are introspected: otherwise the local check decides anyway.
            if candidates := self._jwt_introspection_candidates(allowed):
                if not is_b64token(token):
                    return not_b64token()
                iss = unverified_issuer(token)
                same = [p for p in candidates if p.issuer == iss]
                if same and all(p.introspect_jwts and p.introspector for p in same):
                    return await self._introspect(token, same, check_lifetime)
            # A JWT has dots: it has a digest, and it was looked for in the cache.
            assert digest is not None
            return await self._jwt.verify_new(token, digest, allowed, check_lifetime=check_lifetime)
        if not is_b64token(token):
            return not_b64token()
        introspecting = [p for p in self._candidates(allowed) if p.introspector is not None]
        if not introspecting:
            return malformed("the token is not a JWT, and no issuer here introspects tokens")
        return await self._introspect(token, introspecting, check_lifetime)

    def _judged(self, answer: Answer, policy: IssuerPolicy) -> VerifiedToken | Denial:
        """``judge_answer`` but the lifetime, once per cached answer and issuer: an answer
        found in the introspection cache is the same object each time, and so then is the
        verified token, whose routes' verdicts the gateway keeps with it."""
        key = (id(answer), policy.name)
        memo = self._judgements.get(key)
        if memo is not None and memo[0] is answer:
            return memo[1]
        judged = judge_answer(
            answer,
            issuer_name=policy.name,
            issuer=policy.issuer,
            leeway=policy.leeway,
            scope_claim=policy.scope_claim,
            now=self._clock(),
            check_lifetime=False,
        )
        # The answer is held with its judgement, so that its id is not reused while it is here.
        self._judgements.put(key, (answer, judged), math.inf)
        return judged

    def _jwt_introspection_candidates(
        self, allowed: Collection[str] | None
    ) -> Sequence[IssuerPolicy]:
        """The issuers ``allowed`` if any of them introspects JWTs, else none: worked out once
        per route's list of issuers (a tuple from the configuration, or None), not per token."""
        if not self._introspects_jwts:
            return ()
        if allowed is not None and not isinstance(allowed, tuple):
            return self._introspecting(allowed)  # not a route's list: not remembered
        known = self._jwt_introspection.get(allowed)
        if known is None:
            known = self._jwt_introspection[allowed] = self._introspecting(allowed)
        return known

    def _introspecting(self, allowed: Collection[str] | None) -> tuple[IssuerPolicy, ...]:
        candidates = self._candidates(allowed)
        if any(p.introspect_jwts and p.introspector for p in candidates):
            return tuple(candidates)
        return ()

    def _candidates(self, allowed: Collection[str] | None) -> list[IssuerPolicy]:
        if allowed is None:
            return list(self._issuers.values())
        # A route's list is a tuple: tested first, as isinstance() of an ABC is slow.
        order = allowed if isinstance(allowed, (tuple, Sequence)) else sorted(allowed)
        return [self._issuers[name] for name in order if name in self._issuers]

    async def _introspect(
        self, token: str, policies: Sequence[IssuerPolicy], check_lifetime: bool
    ) -> VerifiedToken | Denial:
        unavailable = False
        refusal: Denial | None = None
        for policy in policies:
            assert policy.introspector is not None
            answer = await policy.introspector.answer(token)
            if answer is None:
                unavailable = True
                continue
            result = self._judged(answer, policy)
            if isinstance(result, VerifiedToken) and check_lifetime:
                claims: Mapping[str, Any] = result.claims
                now = self._clock()
                if problem := lifetime_denial(
                    claims, leeway=policy.leeway, now=now, require_exp=False
                ):
                    result = problem
            if isinstance(result, VerifiedToken):
                return result
            if result.reason != "inactive" and refusal is None:
                refusal = result
        if refusal is not None:
            return refusal
        if unavailable:
            # Some authorization server could not be asked: the token may be good there.
            return Denial("unavailable", "the token cannot be checked now", retry_after=5)
        return Denial("inactive", "the token is not active")

    def lifetime_denial(self, token: VerifiedToken) -> Denial | None:
        """Why a verified token is outside its validity window (for ``gateway explain``)."""
        if not token.introspected:
            return self._jwt.lifetime_denial(token.issuer, token.claims)
        policy = self._issuers[token.issuer]
        claims: Mapping[str, Any] = token.claims
        return lifetime_denial(claims, leeway=policy.leeway, now=self._clock(), require_exp=False)
