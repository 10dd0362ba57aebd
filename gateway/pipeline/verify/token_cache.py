"""Caching the authorization server's introspection answers (SPEC §3 "Introspection caching").

What is cached is the answer, never a decision: audience, scope and claim rules are judged again
on every request, so a token cached on one route is judged afresh on another. Keys are a SHA-256
of the issuer and the token, never the token, here and in Redis. Active answers live at most
``cache_ttl`` and never past the token's ``exp``; inactive ones ``negative_cache_ttl``, in a space
of their own, so that a flood of random tokens cannot evict a single good entry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.digest import token_digest
from gateway.observe.logs import get_logger

from .claims import is_number
from .expiring import ExpiringLru

log = get_logger("gateway.cache")

Answer = Mapping[str, Any]

# Inactive answers get this share of the entries, at most (a flood is bounded by it).
NEGATIVE_SHARE = 0.1
MIN_NEGATIVE_ENTRIES = 1024


def cache_key(issuer: str, token: str) -> str:
    """The one name of a token in every cache: it cannot be turned back into the token."""
    return token_digest(f"{issuer}\0{token}").hex()


def answer_ttl(answer: Answer, *, now: float, cache_ttl: float, negative_cache_ttl: float) -> float:
    """How long an answer may be kept: inactive ``negative_cache_ttl``; active ``cache_ttl``,
    but never past the token's ``exp`` (RFC 7662 §4: a cached answer must not outlive it)."""
    if answer.get("active") is not True:
        return negative_cache_ttl
    if "exp" not in answer:
        return cache_ttl
    exp = answer["exp"]
    if not is_number(exp):
        # Its lifetime cannot be read (a string, or 10**400, which no float holds and which
        # made `exp - now` raise): not kept, so nothing outlives a token's exp. Judged malformed.
        return 0.0
    return max(0.0, min(cache_ttl, float(exp) - now))


class AnswerCache:
    """The in-process cache of one issuer's answers: active and inactive kept apart."""

    def __init__(self, size: int, *, clock: Callable[[], float] = time.time) -> None:
        negative_size = max(MIN_NEGATIVE_ENTRIES, int(size * NEGATIVE_SHARE))
        self._clock = clock
        self._active: ExpiringLru[str, Answer] = ExpiringLru(size, clock)
        self._inactive: ExpiringLru[str, Answer] = ExpiringLru(negative_size, clock)

    def get(self, key: str) -> Answer | None:
        answer = self._active.get(key)
        return answer if answer is not None else self._inactive.get(key)

    def put(self, key: str, answer: Answer, ttl: float) -> None:
        if not ttl > 0:  # NaN too: a time that cannot be compared is no time to keep it
            return
        expires = self._clock() + ttl
        if answer.get("active") is True:
            self._inactive.discard(key)
            self._active.put(key, answer, expires)
        else:
            self._active.discard(key)
            self._inactive.put(key, answer, expires)

    def __len__(self) -> int:
        return len(self._active) + len(self._inactive)


class SharedCache(Protocol):
    """A cache shared between gateway processes (Redis). It may fail: then it answers None,
    and the gateway carries on with its own cache and the authorization server."""

    async def get(self, key: str) -> tuple[Answer, float] | None:
        """The answer under ``key`` and the seconds it has left, or None."""
        ...

    async def put(self, key: str, answer: Answer, ttl: float) -> None: ...

    async def close(self) -> None: ...


class RedisCache:
    """Answers shared through Redis, under ``key_prefix``, with the same expiry as in memory.

    Every call is bounded by ``timeout``; after a failure Redis is left alone for a few seconds
    (so a dead or hung Redis costs nothing per request), then tried again: the client
    reconnects by itself. Never raises.
    """

    RETRY_AFTER = 5.0

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._prefix = key_prefix
        self._timeout = timeout
        self._monotonic = monotonic
        self._down_until = 0.0
        self._down = False

    async def get(self, key: str) -> tuple[Answer, float] | None:
        # The time left comes with the answer (one round trip): a replica that reads an entry
        # late in its life must keep it only that long, not a whole cache_ttl more, or a
        # revocation would not be seen by all replicas at once.
        name = self._prefix + key
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.get(name)
        pipeline.pttl(name)
        reply = await self._call(pipeline.execute())
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        raw, milliseconds = reply
        # PTTL -1 (no expiry) is no entry of ours: it would never expire. -2: gone meanwhile.
        if not isinstance(raw, bytes | str) or not isinstance(milliseconds, int):
            return None
        if milliseconds <= 0:
            return None
        try:
            answer = json.loads(raw)
        except ValueError:
            return None
        return (answer, milliseconds / 1000) if isinstance(answer, dict) else None

    async def put(self, key: str, answer: Answer, ttl: float) -> None:
        milliseconds = int(ttl * 1000)
        if milliseconds <= 0:
            return
        value = json.dumps(answer, separators=(",", ":"))
        await self._call(self._redis.set(self._prefix + key, value, px=milliseconds))

    async def _call(self, command: Any) -> Any:
        if self._monotonic() < self._down_until:
            command.close()
            return None
        try:
            result = await asyncio.wait_for(command, self._timeout)
        except Exception as error:  # any Redis failure is survivable: SPEC §3 `cache`
            self._down_until = self._monotonic() + self.RETRY_AFTER
            if not self._down:
                self._down = True
                log.warning("redis_unavailable", error=type(error).__name__)
            return None
        if self._down:
            self._down = False
            log.info("redis_available")
        return result

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception as error:  # closing a broken connection must not fail shutdown
            log.info("redis_close_failed", error=type(error).__name__)
