"""Which headers cross the gateway, both ways (RFC 9110 §7.6.1, SPEC §4 "Forwarding")."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable, Mapping
from email.utils import formatdate
from functools import lru_cache
from random import getrandbits

from multidict import CIMultiDict, CIMultiDictProxy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Headers some frameworks (IIS URL Rewrite, Symfony, Laravel) trust to override the request path:
# a client must never be able to re-route itself behind the gateway's back.
PATH_OVERRIDES = frozenset({"x-original-url", "x-rewrite-url", "x-original-uri"})

# Headers some frameworks (Rails, Symfony, Express's method-override, ASP.NET, Google APIs) trust
# to change the request method: a GET the gateway allowed must not become a DELETE behind it.
METHOD_OVERRIDES = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})

# Headers describing the client that only a trusted proxy may set.
PEER_DESCRIPTIONS = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-real-ip",
    }
)

# Request headers never sent upstream as the client sent them (the gateway drops them, or
# writes its own: Host, X-Request-Id, the X-Forwarded-* set).
NEVER_FORWARDED = (
    HOP_BY_HOP
    | PATH_OVERRIDES
    | METHOD_OVERRIDES
    | PEER_DESCRIPTIONS
    | {"host", "x-request-id", "expect"}
)

# Request headers no identity header may be: those the gateway itself writes, removes or
# frames the request with on its way upstream. A claim there would let whoever controls the
# claim reframe the request (Content-Length, Transfer-Encoding: request smuggling), re-route it
# (Host, X-Original-URL), change its method, or speak for another client (X-Forwarded-For).
RESERVED_REQUEST_HEADERS = NEVER_FORWARDED | {"content-length", "authorization"}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def request_id(incoming: str | None) -> str:
    """The client's ``X-Request-Id`` when it is a safe token, otherwise a fresh one."""
    if incoming is not None and _REQUEST_ID.match(incoming):
        return incoming
    # 128 random bits in uuid4's hex form, without a system call per request: an id tells
    # requests apart in logs, it grants nothing.
    return f"{getrandbits(128):032x}"


def connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop by declaration (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    getall = getattr(headers, "getall", None)
    values: Iterable[str] = getall("Connection", ()) if getall else [headers.get("Connection", "")]
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


@lru_cache(maxsize=1024)
def _is_trusted(peer: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def is_trusted_peer(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    return bool(peer and trusted and _is_trusted(peer, trusted))


def forwarded_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    trusted: bool,
) -> list[tuple[str, str]]:
    """``X-Forwarded-For/Proto/Host``: appended to when the peer is a trusted proxy, otherwise
    replaced, so that an untrusted client cannot claim another address."""
    out: list[tuple[str, str]] = []
    prior_for = ", ".join(incoming.getall("X-Forwarded-For", ())) if trusted else ""
    chain = [part for part in (prior_for, peer or "") if part]
    if chain:
        out.append(("X-Forwarded-For", ", ".join(chain)))
    proto = incoming.get("X-Forwarded-Proto") if trusted else None
    out.append(("X-Forwarded-Proto", proto or scheme))
    forwarded_host = incoming.get("X-Forwarded-Host") if trusted else None
    if forwarded_host or host:
        out.append(("X-Forwarded-Host", forwarded_host or host or ""))
    if trusted:
        for name in ("Forwarded", "X-Real-IP"):
            out.extend((name, value) for value in incoming.getall(name, ()))
    return out


_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)


_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """Now as an HTTP date (RFC 9110 §5.6.7), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]


def end_to_end_lines(lines: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """The upstream's response header lines, as parsed, less the hop-by-hop ones (including any
    that its ``Connection`` header names): (name, lower-case name, value) each."""
    kept = []
    named: set[bytes] = set()  # what `Connection` names beyond the usual hop-by-hop headers
    for name, value in lines:
        lower = name.lower()
        if lower in _HOP_BY_HOP_BYTES:
            if lower == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
                named -= _HOP_BY_HOP_BYTES  # `keep-alive`, as a rule: nothing more to drop
            continue
        kept.append((name, lower, value))
    if named:
        kept = [line for line in kept if line[1] not in named]
    return kept


# `Connection` values that name no header beyond the hop-by-hop ones (nearly every answer's).
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def response_head_lines(
    lines: list[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> tuple[list[bytes], set[bytes]]:
    """The lines ``end_to_end_lines`` keeps, less those whose lower-case name is in ``drop``,
    as the pieces of a response head (name, ``": "``, value, CRLF each), and the lower-case
    names among them. The same lines as ``end_to_end_lines`` but in one pass, as the whole-answer
    path needs them: the second pass is made only when ``Connection`` names another header."""
    skip = _skipped(drop)
    pieces: list[bytes] = []
    names: set[bytes] = set()
    for name, value in lines:
        lower = name.lower()
        if lower in skip:
            if lower == b"connection" and value.strip().lower() not in _PLAIN_CONNECTION:
                # It names other headers: those go first, then the rest as usual (no
                # Connection header is left to name any).
                kept = [(name, value) for name, _, value in end_to_end_lines(lines)]
                return response_head_lines(kept, drop)
            continue
        names.add(lower)
        pieces += (name, b": ", value, b"\r\n")
    return pieces, names


@lru_cache(maxsize=8)
def _skipped(drop: frozenset[bytes]) -> frozenset[bytes]:
    return _HOP_BY_HOP_BYTES | drop


def copy_response_headers(lines: list[tuple[bytes, bytes]], into: CIMultiDict[str]) -> None:
    """Add the upstream's end-to-end response header lines to ``into``."""
    add = into.add
    for name, _, value in end_to_end_lines(lines):
        add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
