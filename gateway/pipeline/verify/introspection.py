"""RFC 7662 token introspection: asking the authorization server about opaque tokens.

One :class:`Introspector` per issuer owns that conversation: the endpoint (configured or
discovered), client authentication, the timeout, a bound on concurrent calls (to protect the
authorization server), single flight (one call per token however many requests carry it), and the
answer cache. A failed call (timeout, non-200, non-JSON, over 1 MiB) is never cached and makes the
token ``unavailable`` (503): the token may be good.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics

from ..decision import Denial, VerifiedToken
from .claims import claim_type_denial, lifetime_denial, parse_scopes
from .discovery import IssuerMetadata, SessionProvider
from .fetch import FetchError, request_json
from .token_cache import Answer, AnswerCache, SharedCache, answer_ttl, cache_key

log = get_logger("gateway.introspection")

MAX_CONCURRENT_CALLS = 32


@dataclass(frozen=True, slots=True)
class IntrospectionClient:
    """How the gateway authenticates to the introspection endpoint (RFC 7662 §2.1)."""

    client_id: str
    client_secret: str
    auth_method: str  # client_secret_basic | client_secret_post

    def authenticate(self, form: dict[str, str]) -> dict[str, str]:
        """The request headers, having added the credentials to ``form`` where they go."""
        if self.auth_method == "client_secret_post":
            form["client_id"] = self.client_id
            form["client_secret"] = self.client_secret
            return {}
        # RFC 6749 §2.3.1: both parts are form-urlencoded before they are joined.
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class Introspector:
    """Introspects tokens at one issuer's authorization server, with caching."""

    def __init__(
        self,
        issuer: str,
        *,
        client: IntrospectionClient,
        endpoint: str | None,
        metadata: IssuerMetadata | None,
        sessions: SessionProvider,
        timeout: float,
        cache_ttl: float,
        negative_cache_ttl: float,
        cache: AnswerCache,
        shared: SharedCache | None,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        max_concurrent_calls: int = MAX_CONCURRENT_CALLS,
        cache_scope: str | None = None,
    ) -> None:
        self.issuer = issuer
        # Cache keys name the authorization server by its issuer URL, not by the name it has in
        # one file: two deployments sharing a Redis can never take each other's answers.
        self._cache_scope = cache_scope or issuer
        self._client = client
        self._endpoint = endpoint
        self._metadata = metadata
        self._sessions = sessions
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._negative_cache_ttl = negative_cache_ttl
        self._cache = cache
        self._shared = shared
        self._metrics = metrics
        self._clock = clock
        self._calls = asyncio.Semaphore(max_concurrent_calls)
        self._inflight: dict[str, asyncio.Task[tuple[bool, Answer | None]]] = {}
        self._sharing: set[asyncio.Task[None]] = set()
        self._hits = metrics.token_cache.labels("introspection", "hit")

    async def answer(self, token: str) -> Answer | None:
        """The authorization server's answer about ``token`` (from a cache when it may be), or
        None when it cannot be had now."""
        key = cache_key(self._cache_scope, token)
        cached = self._cache.get(key)
        if cached is not None:
            self._metrics.tally.inc(self._hits)
            return cached
        # The shared cache is asked inside the flight, not before joining it: a request that
        # missed in memory, then waited for Redis while the flight ended (and left `_inflight`)
        # would otherwise make a second call for the same token.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._look_up(key, token))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        from_shared, answer = await asyncio.shield(task)
        self._metrics.token_cache.labels("introspection", "hit" if from_shared else "miss").inc()
        return answer

    async def _look_up(self, key: str, token: str) -> tuple[bool, Answer | None]:
        """The answer from the shared cache (True) or the authorization server (False)."""
        if self._shared is not None:
            shared = await self._shared.get(key)
            if shared is not None:
                answer, left = shared
                # No longer than it has left in Redis: every replica forgets it when the one
                # that asked does, so a revocation is seen by all after at most cache_ttl.
                self._keep(key, answer, shared=False, at_most=left)
                return True, answer
        return False, await self._call_and_keep(key, token)

    async def _call_and_keep(self, key: str, token: str) -> Answer | None:
        try:
            answer = await self._bounded_call(token)
        except FetchError as error:
            self._metrics.introspection_requests.labels(self.issuer, "error").inc()
            log.warning("introspection_failed", issuer=self.issuer, error=str(error))
            return None
        result = "active" if answer.get("active") is True else "inactive"
        self._metrics.introspection_requests.labels(self.issuer, result).inc()
        self._keep(key, answer, shared=True)
        return answer

    def _keep(
        self, key: str, answer: Answer, *, shared: bool, at_most: float | None = None
    ) -> None:
        ttl = answer_ttl(
            answer,
            now=self._clock(),
            cache_ttl=self._cache_ttl,
            negative_cache_ttl=self._negative_cache_ttl,
        )
        if at_most is not None:
            ttl = min(ttl, at_most)
        self._cache.put(key, answer, ttl)
        if shared and self._shared is not None and ttl > 0:
            # Shared in the background: a slow Redis must not slow the request down.
            task = asyncio.ensure_future(self._shared.put(key, answer, ttl))
            self._sharing.add(task)
            task.add_done_callback(self._sharing.discard)

    async def _bounded_call(self, token: str) -> Answer:
        # `timeout` bounds the whole exchange, the wait for a free call included: behind a
        # flood of tokens at a stalled server a request would otherwise wait for call after
        # call to time out (minutes), where SPEC §4 wants a prompt 503.
        try:
            async with asyncio.timeout(self._timeout), self._calls:
                return await self._call(token)
        except TimeoutError as error:
            raise FetchError(f"no introspection answer within {self._timeout}s") from error

    async def _call(self, token: str) -> Answer:
        endpoint = self._endpoint
        if endpoint is None:
            assert self._metadata is not None
            endpoint = await self._metadata.endpoint("introspection_endpoint")
        form = {"token": token, "token_type_hint": "access_token"}
        headers = self._client.authenticate(form)
        answer = await request_json(
            self._sessions(), "POST", endpoint, form=form, headers=headers, timeout=self._timeout
        )
        if not isinstance(answer, dict):
            raise FetchError(f"introspection answer of {self.issuer} is not a JSON object")
        return answer


def judge_answer(
    answer: Answer,
    *,
    issuer_name: str,
    issuer: str,
    leeway: float,
    scope_claim: str,
    now: float,
    check_lifetime: bool = True,
) -> VerifiedToken | Denial:
    """An introspection answer read like a JWT's claims, by the same rules (RFC 7662 §2.2)."""
    # Anything but exactly `true` (missing, "true", 1) is inactive.
    if answer.get("active") is not True:
        return Denial("inactive", "the token is not active")
    claims: dict[str, Any] = {k: v for k, v in answer.items() if k != "active"}
    iss = claims.get("iss")
    if iss is not None and iss != issuer:
        return Denial("wrong_issuer", "the token's issuer is not accepted here")
    if claims.get("token_type") == "refresh_token":
        # RFC 7662 §2.2 `token_type`: a refresh token is no access token.
        return Denial("wrong_type", "the token is not an access token")
    if (problem := claim_type_denial(claims)) is not None:
        return problem
    if check_lifetime and (
        problem := lifetime_denial(claims, leeway=leeway, now=now, require_exp=False)
    ):
        return problem
    claims.setdefault("iss", issuer)
    return VerifiedToken(
        issuer=issuer_name,
        claims=claims,
        scopes=parse_scopes(claims, scope_claim),
        introspected=True,
    )
