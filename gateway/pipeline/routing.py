"""Compiled route matching: host and path patterns, and the ordered table that picks a route.

Routes are tried in file order and the first match wins, so the table also reports routes that
an earlier one shadows, and patterns can tell whether they overlap, to warn when a public route
reaches into a protected one. Paths given to matchers must already be canonical (see
``gateway.pipeline.ingress.normalize_path``); matching is then exact, segment by segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.pipeline.ingress import AmbiguousPath, normalize_path
from gateway.pipeline.recent import Recent

__all__ = [
    "HostPattern",
    "Match",
    "MethodNotAllowed",
    "PathPattern",
    "RouteMatcher",
    "RouteTable",
    "host_without_port",
]

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# RFC 9110 §5.6.2: a method is a token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# The segment that ``**`` stands for; only ever the last one of a pattern.
_REST = "**"


def _split(path: str) -> list[str]:
    """Split a canonical path into segments: "/" is [""], "/a/" is ["a", ""]."""
    return path.split("/")[1:]


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A parsed path pattern such as ``/orders/{id}/items/**``.

    ``segments`` holds one entry per segment before any ``**``: the canonical literal, or None
    for a single-segment wildcard (``*`` or ``{name}``). ``rest`` is True when the pattern ends
    in ``**``. Build instances with ``PathPattern.parse``.
    """

    source: str
    segments: tuple[str | None, ...]
    params: tuple[tuple[int, str], ...]
    rest: bool
    exact: str | None = field(compare=False)

    @classmethod
    def parse(cls, pattern: str) -> PathPattern:
        """Parse and validate a pattern, raising ValueError that says what is wrong with it."""
        if not pattern.startswith("/"):
            raise ValueError(f"path pattern {pattern!r} must start with '/'")
        raw_segments = pattern[1:].split("/")
        segments: list[str | None] = []
        params: list[tuple[int, str]] = []
        rest = False
        for index, raw in enumerate(raw_segments):
            last = index == len(raw_segments) - 1
            if raw == _REST:
                if not last:
                    raise ValueError(f"path pattern {pattern!r}: '**' must be the last segment")
                rest = True
            elif raw == "*":
                segments.append(None)
            elif (param := _PARAM.fullmatch(raw)) is not None:
                name = param.group(1)
                if any(name == seen for _, seen in params):
                    raise ValueError(f"path pattern {pattern!r}: parameter {name!r} repeats")
                params.append((index, name))
                segments.append(None)
            elif raw == "":
                if not last:
                    raise ValueError(f"path pattern {pattern!r} has an empty segment")
                segments.append("")
            else:
                segments.append(_literal_segment(pattern, raw))
        source = "/" + "/".join(
            _show(segment, index, params) for index, segment in enumerate(segments)
        )
        if rest:
            source = source + "/**" if segments else "/**"
        exact = None if rest or None in segments else source
        return cls(source, tuple(segments), tuple(params), rest, exact)

    def __str__(self) -> str:
        return self.source

    def match(self, path: str) -> dict[str, str] | None:
        """Return the captured parameters if the canonical path matches, else None."""
        return self._match_segments(_split(path))

    def matches(self, path: str) -> bool:
        """Whether the canonical path matches this pattern."""
        return self._match_segments(_split(path)) is not None

    def _match_segments(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Match pre-split path segments; shared by ``match`` and the route table."""
        segments = self.segments
        if len(parts) != len(segments) and not (self.rest and len(parts) >= len(segments)):
            return None
        for expected, actual in zip(segments, parts, strict=False):
            if expected is None:
                if not actual:
                    # A wildcard stands for exactly one non-empty segment: "/a/*" is not "/a/".
                    return None
            elif expected != actual:
                return None
        return {name: parts[index] for index, name in self.params}

    def covers(self, other: PathPattern) -> bool:
        """Whether every path that ``other`` matches is also matched by this pattern."""
        mine, theirs = self.segments, other.segments
        if other.rest and not self.rest:
            # ``other`` matches paths of any length, this pattern of one length only.
            return False
        if self.rest:
            if len(theirs) < len(mine):
                # ``other`` matches a path shorter than this pattern's fixed prefix.
                return False
        elif len(theirs) != len(mine):
            return False
        return all(_segment_covers(a, b) for a, b in zip(mine, theirs, strict=False))

    def overlaps(self, other: PathPattern) -> bool:
        """Whether at least one path is matched by both patterns."""
        mine, theirs = self.segments, other.segments
        if not self.rest and not other.rest and len(mine) != len(theirs):
            return False
        if not self.rest and len(theirs) > len(mine):
            return False
        if not other.rest and len(mine) > len(theirs):
            return False
        # Positions past the shorter fixed prefix are absorbed by the other pattern's "**".
        return all(_segment_overlaps(a, b) for a, b in zip(mine, theirs, strict=False))


def _literal_segment(pattern: str, raw: str) -> str:
    """Canonicalise one literal segment with the ingress rules, so it compares to real paths."""
    if raw.startswith("{") and raw.endswith("}"):
        raise ValueError(
            f"path pattern {pattern!r}: parameter name {raw[1:-1]!r} must match"
            " [A-Za-z_][A-Za-z0-9_]*"
        )
    if "*" in raw or "{" in raw or "}" in raw:
        raise ValueError(f"path pattern {pattern!r}: wildcards must be whole segments")
    if raw.lower().replace("%2e", ".") in (".", ".."):
        # A dot segment in a pattern could never match a canonical path; it is a mistake.
        raise ValueError(f"path pattern {pattern!r}: segment {raw!r} is a dot segment")
    try:
        canonical = normalize_path("/" + raw)
    except AmbiguousPath as error:
        raise ValueError(f"path pattern {pattern!r}: segment {raw!r}: {error}") from None
    return canonical[1:]


def _show(segment: str | None, index: int, params: Sequence[tuple[int, str]]) -> str:
    """Render one parsed segment back into pattern syntax for ``PathPattern.source``."""
    if segment is not None:
        return segment
    for position, name in params:
        if position == index:
            return "{" + name + "}"
    return "*"


def _segment_covers(mine: str | None, theirs: str | None) -> bool:
    """Whether one pattern segment matches every segment the other one does."""
    if mine is None:
        # A wildcard covers another wildcard and any literal except the empty trailing one.
        return theirs != ""
    return mine == theirs


def _segment_overlaps(mine: str | None, theirs: str | None) -> bool:
    """Whether some path segment is matched by both pattern segments."""
    if mine is None:
        return theirs != ""
    if theirs is None:
        return mine != ""
    return mine == theirs


def host_without_port(host: str) -> str:
    """Return the Host header value lower-cased, without its port and trailing dot.

    ``api.example.test:8443`` becomes ``api.example.test`` and ``[::1]:8080`` becomes ``[::1]``.
    The trailing dot goes because ``example.test.`` names the same host (RFC 1034 §3.1) and
    would otherwise slip past a route written for ``example.test``.
    """
    host = host.strip().lower()
    if host.startswith("["):
        # RFC 3986 §3.2.2: an IPv6 literal is bracketed, and its colons are not a port.
        end = host.find("]")
        return host if end < 0 else host[: end + 1]
    name, colon, _port = host.rpartition(":")
    if colon:
        host = name
    return host.rstrip(".")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """An exact host name, or ``*.suffix`` for any host with at least one label before suffix."""

    host: str
    wildcard: bool

    @classmethod
    def parse(cls, pattern: str) -> HostPattern:
        """Parse a host pattern, raising ValueError for a port, a stray ``*`` or an empty name."""
        text = pattern.strip().lower()
        wildcard = text.startswith("*.")
        name = text[2:] if wildcard else text
        if not name:
            raise ValueError(f"host pattern {pattern!r} is empty")
        if "*" in name:
            raise ValueError(f"host pattern {pattern!r}: '*' is only allowed as '*.suffix'")
        if host_without_port(name) != name:
            raise ValueError(f"host pattern {pattern!r} must not have a port or trailing dot")
        return cls(name, wildcard)

    def __str__(self) -> str:
        return "*." + self.host if self.wildcard else self.host

    def matches(self, host: str) -> bool:
        """Whether a host, already passed through ``host_without_port``, matches."""
        if not self.wildcard:
            return host == self.host
        # "*.example.test" must not match "example.test" itself, so demand a non-empty label.
        return len(host) > len(self.host) + 1 and host.endswith("." + self.host)

    def covers(self, other: HostPattern) -> bool:
        """Whether every host that ``other`` matches is also matched by this pattern."""
        if not other.wildcard:
            return self.matches(other.host)
        return self.wildcard and (other.host == self.host or other.host.endswith("." + self.host))

    def overlaps(self, other: HostPattern) -> bool:
        """Whether at least one host is matched by both patterns."""
        return self.covers(other) or other.covers(self)


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    """Which requests a route applies to: hosts (empty means any), a path, and methods.

    ``methods`` of None allows every method. Methods are compared exactly, since RFC 9110 §9.1
    makes them case-sensitive; configure them upper-case.
    """

    hosts: tuple[HostPattern, ...]
    path: PathPattern
    methods: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.methods is None:
            return
        if not self.methods:
            raise ValueError("a route needs at least one method, or None for all methods")
        for method in self.methods:
            if _METHOD.fullmatch(method) is None or method != method.upper():
                raise ValueError(f"method {method!r} must be an upper-case HTTP token")

    @classmethod
    def build(
        cls, path: str, hosts: Iterable[str] = (), methods: Iterable[str] | None = None
    ) -> RouteMatcher:
        """Parse pattern strings into a matcher; method names are upper-cased."""
        return cls(
            hosts=tuple(HostPattern.parse(host) for host in hosts),
            path=PathPattern.parse(path),
            methods=None if methods is None else frozenset(m.upper() for m in methods),
        )

    def matches_host(self, host: str | None) -> bool:
        """Whether a host (from ``host_without_port``, or None when absent) is allowed."""
        if not self.hosts:
            return True
        if host is None:
            return False
        return any(pattern.matches(host) for pattern in self.hosts)

    def matches_path(self, path: str) -> bool:
        """Whether a canonical path matches this route's path pattern."""
        return self.path.matches(path)

    def allows(self, method: str) -> bool:
        """Whether the method is allowed; None allows all."""
        return self.methods is None or method in self.methods

    def covers(self, other: RouteMatcher) -> bool:
        """Whether every request ``other`` matches is also matched by this one."""
        return (
            _hosts_cover(self.hosts, other.hosts)
            and _methods_cover(self.methods, other.methods)
            and self.path.covers(other.path)
        )

    def overlaps(self, other: RouteMatcher) -> bool:
        """Whether at least one request is matched by both."""
        hosts = (
            not self.hosts
            or not other.hosts
            or any(a.overlaps(b) for a in self.hosts for b in other.hosts)
        )
        methods = (
            self.methods is None or other.methods is None or bool(self.methods & other.methods)
        )
        return hosts and methods and self.path.overlaps(other.path)


def _hosts_cover(mine: tuple[HostPattern, ...], theirs: tuple[HostPattern, ...]) -> bool:
    """Whether a host list matches every host the other list matches; empty means any host."""
    if not mine:
        return True
    if not theirs:
        return False
    return all(any(a.covers(b) for a in mine) for b in theirs)


def _methods_cover(mine: frozenset[str] | None, theirs: frozenset[str] | None) -> bool:
    """Whether a method set allows every method the other one does; None means all."""
    if mine is None:
        return True
    return theirs is not None and theirs <= mine


class Match(Generic[T]):
    """The route that matched, with the values captured by ``{name}`` segments. Shared between
    requests (a table remembers its answers): never to be changed once made. A plain class:
    mypyc compiles no generic dataclass, and compiled, nothing would stop an assignment."""

    __slots__ = ("params", "value")

    def __init__(self, value: T, params: dict[str, str]) -> None:
        self.value = value
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return bool(self.value == other.value and self.params == other.params)

    __hash__ = None  # type: ignore[assignment]  # equal by value, and params is a dict

    def __repr__(self) -> str:
        return f"Match(value={self.value!r}, params={self.params!r})"


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """Host and path matched some routes but none allows the method; ``allow`` feeds 405 Allow."""

    allow: tuple[str, ...]


class _Node:
    """One segment position in a :class:`_PathTrie`."""

    __slots__ = ("ends", "literal", "rest", "wildcard")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.wildcard: _Node | None = None  # `*` and `{name}` share one child
        self.ends: list[int] = []  # patterns that end here
        self.rest: list[int] = []  # patterns whose `**` starts here


class _PathTrie:
    """Path patterns stored segment by segment, so that the patterns that concern a path (or
    another pattern) are found by walking the few nodes along it rather than by trying every
    route: a table of 10,000 routes under one shared prefix such as ``/api/v1`` must not cost
    10,000 comparisons per request, nor 50 million when the configuration is checked.

    Every answer is a list of indices in no particular order, each as often as it was added.
    """

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, pattern: PathPattern, index: int) -> None:
        node = self._root
        for segment in pattern.segments:
            if segment is None:
                if node.wildcard is None:
                    node.wildcard = _Node()
                node = node.wildcard
            else:
                child = node.literal.get(segment)
                if child is None:
                    child = node.literal[segment] = _Node()
                node = child
        (node.rest if pattern.rest else node.ends).append(index)

    def covering(self, segments: Sequence[str | None], rest: bool = False) -> list[int]:
        """The patterns that match every path that ``segments`` (and ``rest``) match.

        With the segments of a real path this is every pattern that matches the path. A literal
        segment is covered by the same literal and by a wildcard unless it is empty (a wildcard
        stands for one non-empty segment); a wildcard only by a wildcard.
        """
        found: list[int] = []
        last = len(segments)
        todo = [(self._root, 0)]
        while todo:
            node, depth = todo.pop()
            found += node.rest  # its fixed prefix is no longer than `segments`
            if depth == last:
                if not rest:
                    found += node.ends
                continue
            segment = segments[depth]
            if segment is not None and (child := node.literal.get(segment)) is not None:
                todo.append((child, depth + 1))
            if segment != "" and node.wildcard is not None:
                todo.append((node.wildcard, depth + 1))
        return found

    def overlapping(self, pattern: PathPattern) -> list[int]:
        """The patterns that match at least one path that ``pattern`` matches too."""
        found: list[int] = []
        segments, last = pattern.segments, len(pattern.segments)
        todo = [(self._root, 0)]
        while todo:
            node, depth = todo.pop()
            found += node.rest
            if depth >= last:
                found += node.ends
                if depth > last or pattern.rest:
                    # Past the pattern's fixed prefix its `**` matches whatever follows.
                    todo += [(child, depth + 1) for child in _children(node)]
                continue
            segment = segments[depth]
            if segment is None:
                # A wildcard meets every child but the empty segment.
                todo += [(c, depth + 1) for key, c in node.literal.items() if key != ""]
            elif (child := node.literal.get(segment)) is not None:
                todo.append((child, depth + 1))
            if segment != "" and node.wildcard is not None:
                todo.append((node.wildcard, depth + 1))
        return found


def _children(node: _Node) -> list[_Node]:
    children = list(node.literal.values())
    if node.wildcard is not None:
        children.append(node.wildcard)
    return children


def _covering_host_keys(host: HostPattern) -> list[str]:
    """Every host pattern, as text, that could cover ``host``: the pattern itself and a
    ``*.suffix`` for each of its name's dot-separated suffixes (a superset is enough)."""
    name = host.host
    keys = [str(host), "*." + name]
    keys += ["*." + name[position + 1 :] for position, char in enumerate(name) if char == "."]
    return keys


_UNSEEN = object()  # a lookup not remembered (None is an answer: no route)

# A table's answers remembered by (Host header, path, method), oldest out first: most traffic
# asks the same few questions (Kong's router keeps such a cache too). Long keys are not kept,
# so the memory is bounded: about RECENT × RECENT_KEY_CHARS characters at most.
RECENT = 4096
RECENT_KEY_CHARS = 512


class RouteTable(Generic[T]):
    """Routes in file order; the first one whose host, path and method all match wins.

    A lookup walks a trie of the path patterns to the routes whose path matches and tries only
    those, in file order, so it costs the same with 10 routes or 10,000 and never changes which
    route wins.
    """

    __slots__ = ("_entries", "_paths", "_recent")

    def __init__(self, entries: Iterable[tuple[RouteMatcher, T]], recent: int = RECENT) -> None:
        """``recent``: how many answers are remembered (``RECENT``)."""
        self._entries: tuple[tuple[RouteMatcher, T], ...] = tuple(entries)
        self._recent: Recent[tuple[str | None, str, str], Match[T] | MethodNotAllowed | None] = (
            Recent(recent)
        )
        self._paths = _PathTrie()
        for index, (matcher, _) in enumerate(self._entries):
            self._paths.add(matcher.path, index)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[tuple[RouteMatcher, T], ...]:
        """The routes in the order they are tried."""
        return self._entries

    def lookup(
        self, host: str | None, path: str, method: str
    ) -> Match[T] | MethodNotAllowed | None:
        """Find the route for a request; the path must already be canonical.

        ``host`` is the raw Host header (port and case are handled here) or None when absent; a
        route restricted to hosts never matches a request without one. Returns None when no
        route matches host and path (404), MethodNotAllowed when some do but not the method
        (405).
        """
        key = (host, path, method)
        recent = self._recent
        found = recent.get(key, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]  # (cast() would be a call on every request)
        found = self._find(host, path, method)
        if len(path) + len(method) + (len(host) if host else 0) <= RECENT_KEY_CHARS:
            recent.remember(key, found)
        return found

    def _find(self, host: str | None, path: str, method: str) -> Match[T] | MethodNotAllowed | None:
        host_name = None if host is None else host_without_port(host)
        parts = _split(path)
        allow: set[str] = set()
        entries = self._entries
        candidates = self._paths.covering(parts)
        if len(candidates) > 1:
            candidates.sort()  # file order: the first match wins
        for index in candidates:
            matcher, value = entries[index]
            if not matcher.matches_host(host_name):
                continue
            params = matcher.path._match_segments(parts)
            if params is None:
                continue
            if matcher.methods is None or method in matcher.methods:
                return Match(value, params)
            allow.update(matcher.methods)
        if allow:
            return MethodNotAllowed(tuple(sorted(allow)))
        return None

    def shadowed(self) -> list[tuple[int, int]]:
        """Pairs (earlier, later) where the earlier route matches everything the later one does.

        Only the first such earlier route is reported for each later one. Earlier routes are
        kept in one path trie per host pattern, so each route is compared only with those whose
        hosts and path could cover it, not with every route before it.
        """
        by_host: dict[str | None, _PathTrie] = {}
        pairs: list[tuple[int, int]] = []
        for later, (matcher, _) in enumerate(self._entries):
            keys: list[str | None] = [None]
            if matcher.hosts:
                # Whatever covers every host of this route covers its first one.
                keys += _covering_host_keys(matcher.hosts[0])
            path = matcher.path
            candidates = {
                index
                for key in keys
                if (trie := by_host.get(key)) is not None
                for index in trie.covering(path.segments, path.rest)
            }
            for earlier in sorted(candidates):
                if self._entries[earlier][0].covers(matcher):
                    pairs.append((earlier, later))
                    break
            own: list[str | None] = [str(host) for host in matcher.hosts] or [None]
            for key in own:
                by_host.setdefault(key, _PathTrie()).add(path, later)
        return pairs

    def overlapping(self, routes: Iterable[int], among: Iterable[int]) -> list[tuple[int, int]]:
        """Pairs (route, other): for each of ``routes``, the first of ``among`` in file order
        that matches at least one request it matches too; routes that meet none are left out."""
        others = _PathTrie()
        for index in among:
            others.add(self._entries[index][0].path, index)
        pairs: list[tuple[int, int]] = []
        for index in routes:
            matcher = self._entries[index][0]
            for other in sorted(others.overlapping(matcher.path)):
                if matcher.overlaps(self._entries[other][0]):
                    pairs.append((index, other))
                    break
        return pairs
