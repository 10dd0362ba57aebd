"""Bounded JSON documents from the identity provider (JWKS, discovery).

SPEC §3: responses are bounded in size (1 MiB) and time, so a hostile or broken identity provider
can neither exhaust memory nor hold a request forever.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

MAX_DOCUMENT_BYTES = 1024 * 1024


class FetchError(Exception):
    """A document could not be had: the message says why, without any secret."""


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plain_http_refused(url: str, allow_http: bool) -> str | None:
    """Why ``url`` may not be used (plain http to a non-loopback host), or None when it may."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        return "plain http is only allowed for loopback hosts unless allow_http is true"
    return None


async def fetch_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> Any:
    """GET ``url`` and parse its JSON body, refusing redirects, large bodies and slow servers."""
    return await request_json(session, "GET", url, timeout=timeout, max_bytes=max_bytes)


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout: float,
    form: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> Any:
    """One bounded JSON exchange with the identity provider: an HTTP 200 with a JSON body of at
    most ``max_bytes``, within ``timeout``, without redirects; anything else is a FetchError
    (whose message never holds the form, which may carry a token or a secret)."""
    try:
        async with session.request(
            method,
            url,
            data=dict(form) if form is not None else None,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
            headers={"Accept": "application/json", **(headers or {})},
        ) as response:
            if response.status != 200:
                raise FetchError(f"HTTP {response.status} from {url}")
            if (response.content_length or 0) > max_bytes:
                raise FetchError(f"document from {url} is larger than {max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"document from {url} is larger than {max_bytes} bytes")
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise FetchError(f"cannot reach {url}: {type(error).__name__}") from error
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        # RecursionError: a few thousand `[` (far below 1 MiB) exhaust the parser's stack; that
        # is a broken document, and must not escape as anything but a failed fetch.
        raise FetchError(f"document from {url} is not JSON") from error
