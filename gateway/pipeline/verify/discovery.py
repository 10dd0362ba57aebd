"""Issuer metadata (OpenID Connect Discovery 1.0, RFC 8414) and the JWKS loaders built on it."""

from __future__ import annotations

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


def discovered_loader(
    sessions: SessionProvider, issuer: str, *, timeout: float, allow_http: bool
) -> JwksLoader:
    """A loader that finds ``jwks_uri`` through discovery once, then fetches it."""
    found: list[str] = []

    async def load() -> Any:
        if not found:
            document = await discover(sessions(), issuer, timeout=timeout, allow_http=allow_http)
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError(f"discovery document of {issuer} has no jwks_uri")
            if reason := plain_http_refused(jwks_uri, allow_http):
                raise FetchError(f"jwks_uri of {issuer}: {reason}")
            found.append(jwks_uri)
        return await fetch_json(sessions(), found[0], timeout=timeout)

    return load
