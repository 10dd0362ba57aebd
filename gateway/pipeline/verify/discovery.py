"""Issuer metadata (OpenID Connect Discovery 1.0, RFC 8414) and the JWKS loaders built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .fetch import FetchError, fetch_json, plain_http_refused
from .jwks import JwksLoader

SessionProvider = Callable[[], aiohttp.ClientSession]

OPENID_CONFIGURATION = "/.well-known/openid-configuration"
OAUTH_AUTHORIZATION_SERVER = "/.well-known/oauth-authorization-server"


def metadata_urls(issuer: str) -> tuple[str, str]:
    """Where the issuer's metadata may be: OpenID Connect Discovery §4 appends its well-known
    path to the issuer; RFC 8414 §3.1 inserts its own between the host and the issuer's path
    (``https://idp/tenant`` -> ``https://idp/.well-known/oauth-authorization-server/tenant``)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, OAUTH_AUTHORIZATION_SERVER + path, "", ""))
    return issuer.rstrip("/") + OPENID_CONFIGURATION, rfc8414


async def discover(
    session: aiohttp.ClientSession, issuer: str, *, timeout: float, allow_http: bool
) -> dict[str, Any]:
    """The issuer's metadata document, trying OpenID Connect's location, then RFC 8414's."""
    if reason := plain_http_refused(issuer, allow_http):
        raise FetchError(f"discovery for {issuer}: {reason}")
    errors: list[str] = []
    for url in metadata_urls(issuer):
        try:
            document = await fetch_json(session, url, timeout=timeout)
        except FetchError as error:
            errors.append(str(error))
            continue
        if not isinstance(document, dict):
            errors.append(f"{url} is not a JSON object")
            continue
        # RFC 8414 §3.3 (mix-up defence): the document must be about the issuer we asked for.
        if document.get("issuer") != issuer:
            raise FetchError(f"discovery document of {issuer} names another issuer")
        return document
    raise FetchError("; ".join(errors))


def url_loader(sessions: SessionProvider, url: str, *, timeout: float) -> JwksLoader:
    async def load() -> Any:
        return await fetch_json(sessions(), url, timeout=timeout)

    return load


class IssuerMetadata:
    """An issuer's discovery document, fetched once when first needed (one fetch shared by all
    who ask meanwhile) and kept once it was good; a failure is retried at the next need."""

    def __init__(
        self, sessions: SessionProvider, issuer: str, *, timeout: float, allow_http: bool
    ) -> None:
        self.issuer = issuer
        self._sessions = sessions
        self._timeout = timeout
        self._allow_http = allow_http
        self._document: dict[str, Any] | None = None
        self._inflight: asyncio.Task[dict[str, Any]] | None = None

    async def endpoint(self, name: str) -> str:
        """A URL from the document (``jwks_uri``, ``introspection_endpoint``), held to the
        same plain-http rule as configured URLs."""
        document = await self._get()
        url = document.get(name)
        if not isinstance(url, str):
            raise FetchError(f"discovery document of {self.issuer} has no {name}")
        if reason := plain_http_refused(url, self._allow_http):
            raise FetchError(f"{name} of {self.issuer}: {reason}")
        return url

    async def _get(self) -> dict[str, Any]:
        if self._document is not None:
            return self._document
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight is not None and self._inflight.done():
                self._inflight = None

    async def _fetch(self) -> dict[str, Any]:
        document = await discover(
            self._sessions(), self.issuer, timeout=self._timeout, allow_http=self._allow_http
        )
        self._document = document
        return document


def discovered_loader(
    sessions: SessionProvider,
    issuer: str,
    *,
    timeout: float,
    allow_http: bool,
    metadata: IssuerMetadata | None = None,
) -> JwksLoader:
    """A loader that finds ``jwks_uri`` through discovery once, then fetches it."""
    metadata = metadata or IssuerMetadata(sessions, issuer, timeout=timeout, allow_http=allow_http)

    async def load() -> Any:
        jwks_uri = await metadata.endpoint("jwks_uri")
        return await fetch_json(sessions(), jwks_uri, timeout=timeout)

    return load
