"""Request-target path normalisation, done once at ingress before any routing decision.

The gateway decides which policy applies from the path, and the upstream then interprets the
same bytes again. Any disagreement between the two readings is a bypass, so this module turns
the raw path into one canonical form (RFC 3986 §6.2.2) and rejects, rather than guesses at,
every input that different servers are known to read differently.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from .recent import Recent

__all__ = ["AmbiguousPath", "normalize_path"]


class AmbiguousPath(ValueError):
    """A request path the gateway refuses to interpret; the caller answers 400.

    The message names the rule that was broken and never echoes the path itself, so it is safe
    to put into a response body or a log line.
    """


# RFC 3986 §3.3: path = *( "/" / pchar ), pchar = unreserved / pct-encoded / sub-delims / ":" /
# "@". Anything else (controls, space, non-ASCII, '"', "<", ">", "\", "^", "`", "{", "|", "}",
# "[", "]", "?", "#") has no meaning inside a path and servers disagree on how to repair it.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")

# A "%" followed by anything; the group is empty when the two hex digits are missing.
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})?")

# RFC 3986 §2.3: unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~".
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

_MULTI_SLASH = re.compile(r"/{2,}")


# Canonical forms remembered by raw path, oldest out first (a refused path is not kept): the
# same few paths come again and again. Long paths are not kept, so the memory is bounded.
REMEMBERED_PATHS = 4096
REMEMBERED_PATH_CHARS = 256
_remembered: Recent[str, str] = Recent(REMEMBERED_PATHS)


def normalize_path(raw_path: str) -> str:
    """Return the canonical form of a raw, still percent-encoded request path.

    Raises AmbiguousPath for anything two HTTP servers could read differently, so that the path
    the gateway routes on is exactly the path the upstream will act on.
    """
    path = _remembered.get(raw_path)
    if path is None:
        path = _normalize(raw_path)
        if len(raw_path) <= REMEMBERED_PATH_CHARS:
            _remembered.remember(raw_path, path)
    return path


def _normalize(raw_path: str) -> str:
    if raw_path == "":
        # RFC 9112 §3.2.1: an empty path in origin-form is the same as "/".
        return "/"
    if not raw_path.startswith("/"):
        # Only origin-form reaches us; a relative path has no defined meaning for routing.
        raise AmbiguousPath("path must start with '/'")
    _check_raw_characters(raw_path)
    path = raw_path
    if "%" in raw_path:
        path = _normalize_escapes(raw_path)
        _check_utf8(path)
    if "//" not in path and "/." not in path:
        # Fast path: no empty segments and no segment starting with a dot, nothing to rewrite.
        return path
    return _remove_dot_segments(_MULTI_SLASH.sub("/", path))


def _check_raw_characters(path: str) -> None:
    """Reject characters that are not allowed unencoded in a path (RFC 3986 §3.3)."""
    if "\x00" in path:
        # NUL truncates strings in C-based upstreams: "/public\0/../admin".
        raise AmbiguousPath("path contains a NUL character")
    if "\\" in path:
        # IIS, Windows back ends and some proxies treat "\" as "/": "/public\..\admin".
        raise AmbiguousPath("path contains a backslash")
    if ";" in path:
        # Tomcat, Jetty and Spring drop ";params" from a segment before routing: the gateway
        # would match "/admin;x=1/users" as another route than the "/admin/users" they serve
        # (the Shiro CVE-2020-1957 bypass). An encoded "%3B" stays data for them and is kept.
        raise AmbiguousPath("path contains a ';' (path parameters are not accepted)")
    if _PATH_CHARS.fullmatch(path) is None:
        raise AmbiguousPath("path contains a character that must be percent-encoded")


def _normalize_escapes(path: str) -> str:
    """Decode escaped unreserved characters and upper-case every other escape (RFC 3986 §6.2.2)."""
    return _PERCENT.sub(_normalize_escape, path)


def _normalize_escape(match: re.Match[str]) -> str:
    """Rewrite one "%XX" escape to its canonical form, or reject it."""
    hex_digits = match.group(1)
    if hex_digits is None:
        # "%zz" or a lone "%": servers variously keep, drop or reinterpret it.
        raise AmbiguousPath("path contains an invalid percent escape")
    code = int(hex_digits, 16)
    if code == 0x00:
        # "%00" decodes to NUL, which truncates paths in C-based upstreams.
        raise AmbiguousPath("path contains an encoded NUL")
    if code == 0x2F:
        # "%2F" is a slash to some upstreams and data to others: "/public/..%2fadmin".
        raise AmbiguousPath("path contains an encoded slash")
    if code == 0x5C:
        # "%5C" is decoded and then treated as "/" by Windows-style back ends.
        raise AmbiguousPath("path contains an encoded backslash")
    char = chr(code)
    if char in _UNRESERVED:
        # RFC 3986 §6.2.2.2: "%2E%2E" is "..", and must be treated as such below.
        return char
    # RFC 3986 §6.2.2.1: hex digits in escapes are case-insensitive; upper case is canonical.
    return "%" + hex_digits.upper()


def _check_utf8(path: str) -> None:
    """Reject escapes that do not decode to UTF-8 (RFC 3629 §3).

    An overlong "%C0%AE" is "." to decoders that skip this check (IIS, CVE-2000-0884; Tomcat,
    CVE-2008-2938): "/public/%C0%AE%C0%AE/admin" would be "/admin" behind the gateway's back.
    """
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath("path contains percent escapes that are not UTF-8") from None


def _remove_dot_segments(path: str) -> str:
    """Resolve "." and ".." segments of a slash-merged path (RFC 3986 §5.2.4).

    Unlike §5.2.4, a ".." above the root is rejected rather than dropped, because servers differ
    on whether "/../admin" means "/admin" or is an error.
    """
    segments = path[1:].split("/")
    output: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if not output:
                raise AmbiguousPath("path climbs above the root")
            output.pop()
            continue
        if segment:
            output.append(segment)
    # §5.2.4 keeps a trailing slash, and a final "." or ".." also leaves one: "/a/b/.." is "/a/".
    trailing = segments[-1] in ("", ".", "..")
    if not output:
        return "/"
    return "/" + "/".join(output) + ("/" if trailing else "")
