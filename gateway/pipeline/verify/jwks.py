"""Where an issuer's signing keys come from, and when they are fetched again.

A :class:`KeyStore` per issuer holds the last good :class:`KeySet`. Keys are imported once per
distinct JWK (never per request, never again when a refresh returns the same key). An unknown
``kid`` may trigger a fetch, at most one per ``min_refetch_interval``, shared by every request
waiting for it (single flight), so a flood of forged ``kid`` values cannot turn the gateway into a
JWKS download amplifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics

from .fetch import FetchError

PublicKey = RSAKey | ECKey | OKPKey

# RFC 7518 §3.1 and RFC 8037 §3.1: each algorithm is bound to one key type (and curve), so a key
# can only ever verify the algorithms of its own kind (no RS/ES/HS confusion).
ALGORITHM_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}

log = get_logger("gateway.jwks")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One usable public signing key from a JWKS."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: PublicKey

    def can_verify(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be checked with this key."""
        binding = ALGORITHM_KEY_TYPES.get(alg)
        if binding is None or binding[0] != self.kty:
            return False
        if binding[1] is not None and self.crv not in binding[1]:
            return False
        # RFC 7517 §4.4: when the JWK names its algorithm, no other may be used with it.
        return self.alg is None or self.alg == alg


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable snapshot of an issuer's usable keys."""

    keys: tuple[SigningKey, ...] = ()
    by_kid: Mapping[str, SigningKey] = field(default_factory=dict)
    # Some identity providers publish keys of different types under one kid.
    all_by_kid: Mapping[str, tuple[SigningKey, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Iterable[SigningKey]) -> KeySet:
        keys = tuple(keys)
        grouped: dict[str, tuple[SigningKey, ...]] = {}
        for key in keys:
            if key.kid is not None:
                grouped[key.kid] = (*grouped.get(key.kid, ()), key)
        return cls(keys, {kid: group[0] for kid, group in grouped.items()}, grouped)

    def candidates(self, alg: str) -> list[SigningKey]:
        """Keys that could have signed a token with ``alg`` and no ``kid``."""
        return [k for k in self.keys if k.can_verify(alg)]


class KeyImporter:
    """Imports JWKs, remembering each distinct JWK so that it is never imported twice."""

    def __init__(self) -> None:
        self._imported: dict[str, SigningKey] = {}

    def key_set(self, document: Any) -> tuple[KeySet, list[str]]:
        """The usable keys of a JWKS document, and a note for each key that was skipped."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise FetchError('a JWKS must be a JSON object with a "keys" array')
        keys: list[SigningKey] = []
        skipped: list[str] = []
        seen: dict[str, SigningKey] = {}
        for index, jwk in enumerate(document["keys"]):
            try:
                imported = self._import(jwk)
            except (JoseError, ValueError, TypeError, KeyError, RecursionError) as error:
                skipped.append(f"key {index}: {type(error).__name__}")
                continue
            if imported is None:
                continue
            keys.append(imported)
            seen[_canonical(jwk)] = imported
        if keys:
            # Forget keys that are no longer published; but a set with no usable key is refused
            # by the store, and must not make the next good fetch import every key again.
            self._imported = seen
        return KeySet.of(keys), skipped

    def _import(self, jwk: Any) -> SigningKey | None:
        if not isinstance(jwk, dict):
            raise ValueError("a JWK must be an object")
        # RFC 7517 §4.2: keys for encryption are not for signatures; keys without `use` are.
        if jwk.get("use", "sig") != "sig":
            return None
        if jwk.get("kty") not in ("RSA", "EC", "OKP"):
            # Symmetric (`oct`) keys in a JWKS would let anyone holding the public document
            # forge HMAC tokens: never usable.
            return None
        canonical = _canonical(jwk)
        if (known := self._imported.get(canonical)) is not None:
            return known
        public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        key = JWKRegistry.import_key(public)
        if not isinstance(key, RSAKey | ECKey | OKPKey):
            return None
        kid, alg, crv = jwk.get("kid"), jwk.get("alg"), jwk.get("crv")
        for name, value in (("kid", kid), ("alg", alg), ("crv", crv)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        return SigningKey(kid=kid, kty=jwk["kty"], crv=crv, alg=alg, key=key)


def _canonical(jwk: Any) -> str:
    return json.dumps(jwk, sort_keys=True, separators=(",", ":"))


JwksLoader = Callable[[], Awaitable[Any]]


def file_loader(path: Path) -> JwksLoader:
    """A loader reading static keys from a file (reloaded with the config)."""

    async def load() -> Any:
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except OSError as error:
            raise FetchError(f"cannot read {path}: {error.strerror}") from error
        if len(text) > 1024 * 1024:
            raise FetchError(f"{path} is larger than 1 MiB")
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as error:
            raise FetchError(f"{path} is not JSON") from error

    return load


class KeySource(Protocol):
    """What the verifier needs of an issuer's keys. :class:`KeyStore` is the in-process one; a
    store shared between worker processes could stand in for it."""

    @property
    def loaded(self) -> bool: ...

    @property
    def stale(self) -> bool: ...

    @property
    def keys(self) -> KeySet: ...

    async def refresh_for_unknown_kid(self) -> None: ...


Sleep = Callable[[float], Awaitable[None]]


class KeyStore:
    """An issuer's keys: loaded at start, refreshed in the background every
    ``refresh_interval`` (with jitter), fetched again for an unknown ``kid`` (throttled, single
    flight), and served while the identity provider is down for at most ``max_stale``."""

    def __init__(
        self,
        issuer: str,
        loader: JwksLoader,
        *,
        min_refetch_interval: float,
        metrics: Metrics,
        refresh_interval: float | None = None,
        max_stale: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),
    ) -> None:
        self.issuer = issuer
        self._loader = loader
        self._min_refetch_interval = min_refetch_interval
        self._refresh_interval = refresh_interval
        self._max_stale = max_stale
        self._metrics = metrics
        self._monotonic = monotonic
        self._sleep = sleep
        self._jitter = jitter
        self._importer = KeyImporter()
        self._keys: KeySet | None = None
        self._loaded_at: float | None = None
        self._last_attempt: float | None = None
        self._last_failed = False
        self._inflight: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        """Whether keys were loaded at least once (SPEC §5 readiness)."""
        return self._keys is not None

    @property
    def stale(self) -> bool:
        """Whether the last good keys are older than ``max_stale``: then tokens cannot be
        checked (503), since the identity provider may have revoked those keys meanwhile."""
        if self._max_stale is None or self._loaded_at is None:
            return False
        return self._monotonic() - self._loaded_at > self._max_stale

    @property
    def keys(self) -> KeySet:
        return self._keys or KeySet()

    async def refresh(self) -> None:
        """Fetch the keys now; on failure keep the last good ones and count the error."""
        self._last_attempt = self._monotonic()
        try:
            document = await self._loader()
            keys, skipped = self._importer.key_set(document)
            if not keys.keys:
                # Never replace good keys with nothing: an empty or wholly broken set is an
                # identity provider fault, not a rotation.
                raise FetchError("the JWKS holds no usable signing key")
        except FetchError as error:
            self._fetch_failed()
            log.warning("jwks_fetch_failed", issuer=self.issuer, error=str(error))
            return
        except Exception:
            # The document comes from outside: whatever it provokes (a bug here, or in a library)
            # must cost one failed fetch, not start-up, the refresh loop, or the last good keys.
            self._fetch_failed()
            log.exception("jwks_fetch_failed", issuer=self.issuer)
            return
        self._last_failed = False
        self._metrics.jwks_fetches.labels(self.issuer, "ok").inc()
        if skipped:
            log.warning("jwks_keys_skipped", issuer=self.issuer, skipped=skipped)
        self._keys = keys
        self._loaded_at = self._monotonic()
        self._metrics.jwks_keys.labels(self.issuer).set(len(keys.keys))
        log.info("jwks_loaded", issuer=self.issuer, keys=len(keys.keys))

    def _fetch_failed(self) -> None:
        self._last_failed = True
        self._metrics.jwks_fetches.labels(self.issuer, "error").inc()

    async def refresh_for_unknown_kid(self) -> None:
        """Fetch again because a token named a key we do not have: at most once per
        ``min_refetch_interval``, and one fetch shared by all who ask meanwhile."""
        if self._inflight is None:
            now = self._monotonic()
            recent = (
                self._last_attempt is not None
                and now - self._last_attempt < self._min_refetch_interval
            )
            if recent:
                return
        await self._shared_refresh()

    async def _shared_refresh(self) -> None:
        """Join the fetch in flight, or start one (single flight)."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh_once())
        await asyncio.shield(self._inflight)

    async def _refresh_once(self) -> None:
        try:
            await self.refresh()
        finally:
            self._inflight = None

    def next_refresh_delay(self) -> float:
        """Seconds until the next background refresh: ``refresh_interval`` with ±10% jitter
        (so replicas do not fetch in step), sooner after a failure."""
        assert self._refresh_interval is not None
        interval = self._refresh_interval
        if self._max_stale is not None:
            # Fetch well before the keys would age out: with `max_stale` below
            # `refresh_interval`, every token would get 503 for part of each interval while the
            # identity provider is perfectly healthy.
            interval = min(interval, self._max_stale / 2)
        if self._last_failed or not self.loaded:
            interval = min(interval, max(self._min_refetch_interval, 5.0))
        return interval * self._jitter()

    async def run_refresh_loop(self) -> None:
        """Refresh in the background until cancelled; never on a request's path."""
        while True:
            await self._sleep(self.next_refresh_delay())
            await self._shared_refresh()

    def start_background_refresh(self) -> None:
        if self._refresh_interval is not None and self._background is None:
            self._background = asyncio.ensure_future(self.run_refresh_loop())

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
