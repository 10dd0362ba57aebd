"""The route table's index: lookups, shadowing and overlap must give exactly what trying every
route in file order gives, and must not try every route to get it, whatever the table's size
or shape (10,000 routes under one shared prefix included).

These tests count the comparisons made by wrapping the classes' methods, so they run
``routing.py`` from its source (``from_source``): compiled (setup.py), the table calls those
methods directly and no wrapper would ever count. The table as compiled answers
tests/pipeline/test_routing.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.compiled import from_source

routing = from_source("gateway.pipeline.routing")
if TYPE_CHECKING:
    from gateway.pipeline.routing import (
        HostPattern,
        Match,
        MethodNotAllowed,
        PathPattern,
        RouteMatcher,
        RouteTable,
        host_without_port,
    )
else:
    HostPattern, Match, MethodNotAllowed = (
        routing.HostPattern,
        routing.Match,
        routing.MethodNotAllowed,
    )
    PathPattern, RouteMatcher, RouteTable = (
        routing.PathPattern,
        routing.RouteMatcher,
        routing.RouteTable,
    )
    host_without_port = routing.host_without_port

# --- The specification: every route, in file order --------------------------------------------


def linear_lookup(
    entries: Sequence[tuple[RouteMatcher, int]], host: str | None, path: str, method: str
) -> Match[int] | MethodNotAllowed | None:
    host_name = None if host is None else host_without_port(host)
    allow: set[str] = set()
    for matcher, value in entries:
        params = matcher.path.match(path)
        if params is None or not matcher.matches_host(host_name):
            continue
        if matcher.allows(method):
            return Match(value, params)
        assert matcher.methods is not None
        allow |= matcher.methods
    return MethodNotAllowed(tuple(sorted(allow))) if allow else None


def linear_shadowed(entries: Sequence[tuple[RouteMatcher, int]]) -> list[tuple[int, int]]:
    pairs = []
    for later, (matcher, _) in enumerate(entries):
        for earlier in range(later):
            if entries[earlier][0].covers(matcher):
                pairs.append((earlier, later))
                break
    return pairs


def linear_overlapping(
    entries: Sequence[tuple[RouteMatcher, int]], routes: list[int], among: list[int]
) -> list[tuple[int, int]]:
    pairs = []
    for index in routes:
        for other in sorted(among):
            if entries[index][0].overlaps(entries[other][0]):
                pairs.append((index, other))
                break
    return pairs


# --- Small random tables, hosts and methods included ------------------------------------------

LABELS = ("a", "b", "z")
PATHS = ["/"] + [
    "/" + "/".join(labels) + end
    for length in range(1, 5)
    for labels in itertools.product(LABELS, repeat=length)
    for end in ("", "/")
]
HOSTS = ["a.test", "x.a.test", "y.x.a.test", "b.test", "*.a.test", "*.x.a.test", "*.test"]


@st.composite
def pattern_texts(draw: st.DrawFn) -> str:
    """A path pattern as a file writes it, over the labels a and b, wildcards and ``**``."""
    tokens = draw(st.lists(st.sampled_from(["a", "b", "*", "{}"]), max_size=4))
    segments = [f"{{p{i}}}" if token == "{}" else token for i, token in enumerate(tokens)]
    text = "/" + "/".join(segments)
    ending = draw(st.sampled_from(["", "/", "/**"]))
    if ending == "/**":
        text = text.rstrip("/") + "/**"
    elif ending == "/" and segments:
        text += "/"
    return text


@st.composite
def patterns(draw: st.DrawFn) -> PathPattern:
    return PathPattern.parse(draw(pattern_texts()))


@st.composite
def matchers(draw: st.DrawFn) -> RouteMatcher:
    hosts = draw(st.lists(st.sampled_from(HOSTS), max_size=2, unique=True))
    methods = draw(st.none() | st.frozensets(st.sampled_from(["GET", "POST"]), min_size=1))
    return RouteMatcher(tuple(HostPattern.parse(h) for h in hosts), draw(patterns()), methods)


tables = st.lists(matchers(), max_size=10).map(lambda ms: [(m, i) for i, m in enumerate(ms)])


@given(
    tables,
    st.lists(st.sampled_from(PATHS), min_size=1, max_size=8),
    st.sampled_from([None, "a.test", "x.a.test", "y.x.a.test:8443", "b.test", "c.test"]),
    st.sampled_from(["GET", "POST", "PUT"]),
)
def test_a_lookup_agrees_with_trying_every_route_in_file_order(
    entries: list[tuple[RouteMatcher, int]], paths: list[str], host: str | None, method: str
) -> None:
    table = RouteTable(entries)
    for path in paths + paths:  # the second time from the table's remembered answers
        assert table.lookup(host, path, method) == linear_lookup(entries, host, path, method)


def test_remembered_lookups_are_bounded_and_the_oldest_go_first(
    comparisons: dict[str, int],
) -> None:
    table = RouteTable([(RouteMatcher((), PathPattern.parse("/a/{id}"), None), 0)], recent=8)
    for n in range(100):
        assert table.lookup(None, f"/a/{n}", "GET") == Match(0, {"id": str(n)})
    assert len(table._recent) == 8
    before = comparisons["match"]
    assert table.lookup(None, "/a/99", "GET") == Match(0, {"id": "99"})  # remembered
    assert comparisons["match"] == before
    assert table.lookup(None, "/a/0", "GET") == Match(0, {"id": "0"})  # long gone: matched
    assert comparisons["match"] == before + 1


def test_a_lookup_with_a_long_path_is_answered_but_not_remembered() -> None:
    table = RouteTable([(RouteMatcher((), PathPattern.parse("/a/**"), None), 0)])
    long_path = "/a/" + "x" * routing.RECENT_KEY_CHARS
    assert table.lookup("a.test", long_path, "GET") == Match(0, {})
    assert table.lookup("a.test", "/a/short", "GET") == Match(0, {})
    assert list(table._recent) == [("a.test", "/a/short", "GET")]


@given(tables)
def test_shadowing_agrees_with_comparing_every_earlier_route(
    entries: list[tuple[RouteMatcher, int]],
) -> None:
    assert RouteTable(entries).shadowed() == linear_shadowed(entries)


@given(tables, st.data())
def test_overlap_agrees_with_comparing_every_route(
    entries: list[tuple[RouteMatcher, int]], data: st.DataObject
) -> None:
    indices = list(range(len(entries)))
    routes = data.draw(st.lists(st.sampled_from(indices), unique=True) if indices else st.just([]))
    among = [i for i in indices if i not in routes]
    table = RouteTable(entries)
    assert table.overlapping(routes, among) == linear_overlapping(entries, routes, among)


# --- 10,000 routes ----------------------------------------------------------------------------

ROUTES = 10_000


def service_routes(count: int, prefix: str) -> list[RouteMatcher]:
    """A realistic large table: per service a catch-all, an `{id}` route or an exact path."""
    shapes = [
        lambda i: RouteMatcher.build(f"{prefix}/svc{i}/items/**"),
        lambda i: RouteMatcher.build(f"{prefix}/svc{i}/items/{{id}}", methods=["GET"]),
        lambda i: RouteMatcher.build(f"{prefix}/svc{i}/status", methods=["GET", "HEAD"]),
    ]
    return [shapes[i % 3](i) for i in range(count)]


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How many times a route is compared with another route or with a request's path."""
    counts = {"covers": 0, "overlaps": 0, "match": 0}

    def counting(name: str, original: Callable[..., object]) -> Callable[..., object]:
        def counted(*args: object) -> object:
            counts[name] += 1
            return original(*args)

        return counted

    monkeypatch.setattr(RouteMatcher, "covers", counting("covers", RouteMatcher.covers))
    monkeypatch.setattr(RouteMatcher, "overlaps", counting("overlaps", RouteMatcher.overlaps))
    monkeypatch.setattr(
        PathPattern, "_match_segments", counting("match", PathPattern._match_segments)
    )
    yield counts


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_ten_thousand_routes_report_exactly_the_shadowed_ones_without_comparing_every_pair(
    prefix: str, comparisons: dict[str, int]
) -> None:
    matchers = service_routes(ROUTES, prefix)
    # Hidden: by a catch-all at the start, by a catch-all near the end (whatever the host),
    # by the same exact path with more methods; the last one is covered by no route.
    matchers += [
        RouteMatcher.build(f"{prefix}/svc0/items/7"),
        RouteMatcher.build(f"{prefix}/svc9999/items/7/x", ["a.test"]),
        RouteMatcher.build(f"{prefix}/svc9998/status", methods=["GET"]),
        RouteMatcher.build(f"{prefix}/svc9998/items/1", methods=["GET"]),
    ]
    table = RouteTable([(matcher, index) for index, matcher in enumerate(matchers)])
    assert table.shadowed() == [(0, ROUTES), (9999, ROUTES + 1), (9998, ROUTES + 2)]
    # Compared with a few earlier routes each, not with all of them (50 million pairs).
    assert comparisons["covers"] < 2 * len(matchers)


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_a_lookup_in_ten_thousand_routes_tries_only_the_routes_whose_path_matches(
    prefix: str, comparisons: dict[str, int]
) -> None:
    table = RouteTable([(m, i) for i, m in enumerate(service_routes(ROUTES, prefix))])
    assert table.lookup(None, f"{prefix}/svc9999/items/4/5", "POST") == Match(9999, {})
    assert table.lookup(None, f"{prefix}/svc9997/items/4", "GET") == Match(9997, {"id": "4"})
    assert table.lookup(None, f"{prefix}/svc9998/status", "PUT") == MethodNotAllowed(
        ("GET", "HEAD")
    )
    assert table.lookup(None, f"{prefix}/svc0/items", "GET") == Match(0, {})
    assert table.lookup(None, f"{prefix}/svc10000/items/1", "GET") is None
    assert comparisons["match"] <= 5


def test_public_routes_among_ten_thousand_are_compared_only_with_routes_they_may_overlap(
    comparisons: dict[str, int],
) -> None:
    matchers = service_routes(ROUTES, "/api/v1")
    matchers += [RouteMatcher.build(f"/api/v1/svc{i}/health") for i in range(0, ROUTES, 10)]
    matchers.append(RouteMatcher.build("/api/v1/svc9999/items/open/**"))
    table = RouteTable([(matcher, index) for index, matcher in enumerate(matchers)])
    public = list(range(ROUTES, len(matchers)))
    assert table.overlapping(public, list(range(ROUTES))) == [(len(matchers) - 1, 9999)]
    assert comparisons["overlaps"] <= 1
