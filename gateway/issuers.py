"""The configured issuers made live: discovery, key stores, introspectors, answer caches, and
the token verifier that uses them. Owns the HTTP session for the identity providers."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.config.compile import CompiledConfig, IssuerSource
from gateway.observe.metrics import Metrics
from gateway.pipeline.verify.discovery import IssuerMetadata, discovered_loader, url_loader
from gateway.pipeline.verify.introspection import IntrospectionClient, Introspector
from gateway.pipeline.verify.jwks import JwksLoader, KeyStore, file_loader
from gateway.pipeline.verify.jwt import IssuerKeys, JwtVerifier, issuer_keys
from gateway.pipeline.verify.token_cache import AnswerCache, RedisCache, SharedCache
from gateway.pipeline.verify.tokens import IssuerPolicy, TokenVerifier

# Discovery documents and JWKS: bounded in time (and, in fetch.py, in size).
FETCH_TIMEOUT = 5.0


class _Sessions:
    """The HTTP session to the identity providers, shared by the generations of a reload."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class Issuers:
    """Every issuer's verification machinery, for one compiled configuration.

    Built again on every reload with the ``previous`` generation: an issuer whose settings did
    not change keeps its key store (keys, background refresh) and its introspection cache, so a
    reload costs the identity providers nothing.
    """

    def __init__(
        self, compiled: CompiledConfig, metrics: Metrics, previous: Issuers | None = None
    ) -> None:
        self._session: _Sessions = previous._session if previous is not None else _Sessions()
        self.sources = dict(compiled.issuers)
        self.key_stores: dict[str, KeyStore] = {}
        self.introspectors: dict[str, Introspector] = {}
        self._fresh: set[str] = set()
        redis = compiled.config.cache.redis if compiled.config.cache else None
        self._redis_settings = redis
        self.shared_cache: SharedCache | None = None
        if previous is not None and previous._redis_settings == redis:
            self.shared_cache = previous.shared_cache
        elif redis is not None:
            self.shared_cache = RedisCache(
                redis.url, key_prefix=redis.key_prefix, timeout=redis.timeout
            )
        keys: dict[str, IssuerKeys] = {}
        policies: dict[str, IssuerPolicy] = {}
        for name, source in compiled.issuers.items():
            config = source.config
            if previous is not None and previous.sources.get(name) == source:
                store = previous.key_stores.get(name)
                introspector = previous.introspectors.get(name)
                if source.jwks_file is not None:
                    # Static keys are "reloaded with the config" (SPEC §3): the file may have
                    # changed even where its name did not.
                    store = self._key_store(source, None, metrics)
                    self._fresh.add(name)
            else:
                store, introspector = self._build(source, metrics)
                self._fresh.add(name)
            if store is not None:
                self.key_stores[name] = store
                if config.validation == "auto":
                    keys[name] = issuer_keys(
                        name,
                        config.issuer,
                        config.algorithms,
                        config.leeway,
                        config.token_type,
                        config.scope_claim,
                        store,
                    )
            if introspector is not None:
                self.introspectors[name] = introspector
            policies[name] = IssuerPolicy(
                name=name,
                issuer=config.issuer,
                leeway=config.leeway,
                scope_claim=config.scope_claim,
                introspector=introspector,
                introspect_jwts=config.validation == "introspect" or store is None,
            )
        self.jwt = JwtVerifier(keys, metrics=metrics)
        self.verifier = TokenVerifier(self.jwt, policies)

    def _build(
        self, source: IssuerSource, metrics: Metrics
    ) -> tuple[KeyStore | None, Introspector | None]:
        config = source.config
        metadata = None
        if config.discovery:
            metadata = IssuerMetadata(
                self._session,
                config.issuer,
                timeout=FETCH_TIMEOUT,
                allow_http=config.allow_http,
            )
        return (
            self._key_store(source, metadata, metrics),
            self._introspector(source, metadata, metrics),
        )

    def _key_store(
        self, source: IssuerSource, metadata: IssuerMetadata | None, metrics: Metrics
    ) -> KeyStore | None:
        config = source.config
        loader: JwksLoader
        if source.jwks_file is not None:
            loader = file_loader(source.jwks_file)
        elif config.jwks_uri:
            loader = url_loader(self._session, config.jwks_uri, timeout=FETCH_TIMEOUT)
        elif metadata is not None:
            loader = discovered_loader(
                self._session,
                config.issuer,
                timeout=FETCH_TIMEOUT,
                allow_http=config.allow_http,
                metadata=metadata,
            )
        else:
            return None  # introspection only
        remote = source.jwks_file is None
        return KeyStore(
            source.name,
            loader,
            min_refetch_interval=config.jwks.min_refetch_interval,
            metrics=metrics,
            # A key file is read again only with the configuration; remote keys are refreshed
            # in the background and age out after `max_stale`.
            refresh_interval=config.jwks.refresh_interval if remote else None,
            max_stale=config.jwks.max_stale if remote else None,
        )

    def _introspector(
        self, source: IssuerSource, metadata: IssuerMetadata | None, metrics: Metrics
    ) -> Introspector | None:
        settings = source.config.introspection
        if settings is None:
            return None
        return Introspector(
            source.name,
            client=IntrospectionClient(
                settings.client_id, settings.client_secret, settings.auth_method
            ),
            endpoint=settings.endpoint,
            metadata=metadata,
            sessions=self._session,
            timeout=settings.timeout,
            cache_ttl=settings.cache_ttl,
            negative_cache_ttl=settings.negative_cache_ttl,
            cache=AnswerCache(settings.cache_size),
            shared=self.shared_cache,
            metrics=metrics,
            cache_scope=source.config.issuer,
        )

    async def start(self) -> None:
        """Load the keys of every issuer new in this generation once (failures are logged;
        readiness reports them), then keep them fresh in the background."""
        fresh = [store for name, store in self.key_stores.items() if name in self._fresh]
        await asyncio.gather(*(store.refresh() for store in fresh))
        for store in fresh:
            store.start_background_refresh()

    async def close(self, keep: Issuers | None = None) -> None:
        """Close what this generation owns and ``keep`` (its successor) does not use."""
        kept_stores = set(map(id, keep.key_stores.values())) if keep else set()
        stores = [s for s in self.key_stores.values() if id(s) not in kept_stores]
        await asyncio.gather(*(store.close() for store in stores))
        if self.shared_cache is not None and (
            keep is None or keep.shared_cache is not self.shared_cache
        ):
            await self.shared_cache.close()
        if keep is None:
            await self._session.close()

    def not_ready(self) -> list[str]:
        """Issuers whose keys never loaded (SPEC §5)."""
        return [
            f"issuer {name}: signing keys not loaded"
            for name, store in self.key_stores.items()
            if not store.loaded
        ]
