"""Tests for the compiled route matcher: patterns, coverage, overlap and the route table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.routing import (
    HostPattern,
    Match,
    MethodNotAllowed,
    PathPattern,
    RouteMatcher,
    RouteTable,
    host_without_port,
)
from tests.compiled import from_source
from tests.pipeline.test_routing_index import pattern_texts

# --- A tiny universe in which pattern relations can be checked by brute force -----------------

# "z" never appears in a pattern, so it witnesses what only a wildcard matches.
UNIVERSE_LABELS = ("a", "b", "z")


def _universe() -> list[str]:
    """Every canonical path of up to five segments over the labels, with and without "/"."""
    paths = ["/"]
    for length in range(1, 6):
        for labels in itertools.product(UNIVERSE_LABELS, repeat=length):
            path = "/" + "/".join(labels)
            paths += [path, path + "/"]
    return paths


UNIVERSE = _universe()


@st.composite
def small_patterns(draw: st.DrawFn) -> PathPattern:
    """Patterns of up to three segments over "a", "b", "*" and "{name}", with any ending."""
    tokens = draw(st.lists(st.sampled_from(["a", "b", "*", "{}"]), max_size=3))
    segments = [f"{{p{i}}}" if token == "{}" else token for i, token in enumerate(tokens)]
    ending = draw(st.sampled_from(["", "/", "/**"]))
    text = "/" + "/".join(segments)
    if ending == "/**":
        text = text.rstrip("/") + "/**"
    elif ending == "/" and segments:
        text += "/"
    return PathPattern.parse(text)


def brute_covers(mine: PathPattern, theirs: PathPattern) -> bool:
    return all(mine.matches(path) for path in UNIVERSE if theirs.matches(path))


def brute_overlaps(mine: PathPattern, theirs: PathPattern) -> bool:
    return any(mine.matches(path) and theirs.matches(path) for path in UNIVERSE)


# --- PathPattern parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("orders", "must start with '/'"),
        ("", "must start with '/'"),
        ("/a*b", "whole segments"),
        ("/a/*x", "whole segments"),
        ("/a/{id}.json", "whole segments"),
        ("/a/{1id}", "parameter name '1id' must match"),
        ("/a/{}", "parameter name '' must match"),
        ("/a/{x-y}", "parameter name 'x-y' must match"),
        ("/a/***", "whole segments"),
        ("/a/**/b", "'**' must be the last segment"),
        ("/**/", "'**' must be the last segment"),
        ("/a//b", "empty segment"),
        ("//", "empty segment"),
        ("/a/./b", "dot segment"),
        ("/a/../b", "dot segment"),
        ("/a/%2e%2E", "dot segment"),
        ("/a/..;x=y", "';'"),
        ("/a%2Fb", "encoded slash"),
        ("/a b", "percent-encoded"),
        ("/a%zz", "invalid percent escape"),
        ("/{id}/{id}", "repeats"),
    ],
)
def test_a_bad_path_pattern_is_rejected_with_a_clear_message(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        PathPattern.parse(pattern)


def test_a_literal_pattern_is_stored_in_canonical_form() -> None:
    pattern = PathPattern.parse("/%7euser/caf%c3%a9")
    assert pattern.source == "/~user/caf%C3%A9"
    assert pattern.exact == "/~user/caf%C3%A9"
    assert pattern.matches("/~user/caf%C3%A9")


def test_a_pattern_with_wildcards_has_no_exact_path() -> None:
    assert PathPattern.parse("/a/*").exact is None
    assert PathPattern.parse("/a/**").exact is None
    assert PathPattern.parse("/a").exact == "/a"


def test_a_pattern_renders_back_to_its_source() -> None:
    for text in ["/", "/**", "/a/**", "/orders/{id}/items/*", "/a/b/"]:
        assert str(PathPattern.parse(text)) == text


# --- PathPattern matching ---------------------------------------------------------------------


def test_a_trailing_slash_is_significant_for_literal_patterns() -> None:
    assert PathPattern.parse("/orders").matches("/orders")
    assert not PathPattern.parse("/orders").matches("/orders/")
    assert PathPattern.parse("/orders/").matches("/orders/")
    assert not PathPattern.parse("/orders/").matches("/orders")


def test_literal_matching_is_case_sensitive() -> None:
    assert not PathPattern.parse("/Orders").matches("/orders")


def test_a_single_star_matches_exactly_one_non_empty_segment() -> None:
    pattern = PathPattern.parse("/a/*")
    assert pattern.matches("/a/x")
    assert not pattern.matches("/a/")
    assert not pattern.matches("/a")
    assert not pattern.matches("/a/x/y")
    assert not pattern.matches("/a/x/")


def test_a_named_parameter_captures_its_segment() -> None:
    pattern = PathPattern.parse("/orders/{id}/items/{item_id}")
    assert pattern.match("/orders/42/items/7") == {"id": "42", "item_id": "7"}
    assert pattern.match("/orders/42/items/") is None
    assert PathPattern.parse("/orders/*").match("/orders/42") == {}


def test_a_double_star_pattern_matches_its_own_prefix() -> None:
    pattern = PathPattern.parse("/a/**")
    assert pattern.matches("/a")
    assert pattern.matches("/a/")
    assert pattern.matches("/a/x")
    assert pattern.matches("/a/x/y/")
    assert not pattern.matches("/ab")
    assert not pattern.matches("/")
    assert not pattern.matches("/b/a")


def test_a_root_double_star_matches_every_path() -> None:
    pattern = PathPattern.parse("/**")
    assert all(pattern.matches(path) for path in UNIVERSE)


def test_the_root_pattern_matches_only_the_root() -> None:
    pattern = PathPattern.parse("/")
    assert [path for path in UNIVERSE if pattern.matches(path)] == ["/"]


@given(st.lists(st.text(alphabet="abcXYZ019-._~", min_size=1, max_size=4), max_size=5), st.data())
def test_a_literal_pattern_matches_exactly_its_own_path(
    segments: list[str], data: st.DataObject
) -> None:
    segments = [s for s in segments if s not in (".", "..")]
    path = "/" + "/".join(segments)
    pattern = PathPattern.parse(path)
    assert pattern.matches(path)
    assert pattern.exact == path
    other = data.draw(st.lists(st.sampled_from(["a", "b", "X", "0", ""]), max_size=6))
    other_path = "/" + "/".join(other)
    if other_path != path and "//" not in other_path:
        assert not pattern.matches(other_path)
    assert not pattern.matches(path + "/x")
    if segments:
        assert not pattern.matches(path + "/")


# --- Coverage and overlap ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        ("/a", "/a", True),
        ("/a", "/b", False),
        ("/a", "/a/", False),
        ("/*", "/a", True),
        ("/{x}", "/*", True),
        ("/*", "/{y}", True),
        ("/a", "/*", False),
        ("/a/*", "/a/", False),
        ("/a/*", "/a/b", True),
        ("/a/**", "/a", True),
        ("/a/**", "/a/", True),
        ("/a/**", "/a/b/c", True),
        ("/a/**", "/a/*/c/**", True),
        ("/a/*/**", "/a/**", False),
        ("/**", "/a/**", True),
        ("/**", "/", True),
        ("/a/**", "/**", False),
        ("/a/*", "/a/**", False),
    ],
)
def test_path_coverage_examples(mine: str, theirs: str, expected: bool) -> None:
    assert PathPattern.parse(mine).covers(PathPattern.parse(theirs)) is expected


@given(small_patterns(), small_patterns())
def test_coverage_agrees_with_brute_force_over_a_small_universe(
    mine: PathPattern, theirs: PathPattern
) -> None:
    assert mine.covers(theirs) is brute_covers(mine, theirs)


@given(small_patterns(), small_patterns(), st.sampled_from(UNIVERSE))
def test_coverage_implies_that_a_path_matched_by_the_covered_is_matched_by_the_cover(
    mine: PathPattern, theirs: PathPattern, path: str
) -> None:
    if mine.covers(theirs) and theirs.matches(path):
        assert mine.matches(path)


@given(small_patterns())
def test_every_pattern_covers_and_overlaps_itself(pattern: PathPattern) -> None:
    assert pattern.covers(pattern)
    assert pattern.overlaps(pattern)


@given(small_patterns(), small_patterns())
def test_overlap_is_symmetric_and_agrees_with_brute_force(
    mine: PathPattern, theirs: PathPattern
) -> None:
    assert mine.overlaps(theirs) is theirs.overlaps(mine)
    assert mine.overlaps(theirs) is brute_overlaps(mine, theirs)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        ("/public/**", "/public/admin", True),
        ("/public/**", "/admin/**", False),
        ("/a/*", "/a/", False),
        ("/a/**", "/a/", True),
        ("/*/b", "/a/*", True),
        ("/a", "/a/**", True),
        ("/a/b/c", "/a/**", True),
        ("/a/b", "/a/b/", False),
    ],
)
def test_path_overlap_examples(mine: str, theirs: str, expected: bool) -> None:
    assert PathPattern.parse(mine).overlaps(PathPattern.parse(theirs)) is expected


# --- Hosts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("api.example.test", "api.example.test"),
        ("API.Example.TEST", "api.example.test"),
        ("api.example.test:8443", "api.example.test"),
        ("api.example.test.", "api.example.test"),
        ("api.example.test.:443", "api.example.test"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_the_port_is_stripped_and_the_host_lower_cased(header: str, expected: str) -> None:
    assert host_without_port(header) == expected
    assert host_without_port(expected) == expected


def test_an_exact_host_pattern_is_case_insensitive() -> None:
    pattern = HostPattern.parse("API.example.test")
    assert pattern.matches(host_without_port("api.EXAMPLE.test:443"))
    assert not pattern.matches("www.example.test")


def test_a_wildcard_host_needs_at_least_one_more_label() -> None:
    pattern = HostPattern.parse("*.example.test")
    assert pattern.matches("a.example.test")
    assert pattern.matches("a.b.example.test")
    assert not pattern.matches("example.test")
    assert not pattern.matches("badexample.test")
    assert not pattern.matches(".example.test")


@pytest.mark.parametrize(
    "pattern", ["", "*", "*.", "a.*.test", "*example.test", "api.example.test:443", "x.test."]
)
def test_a_bad_host_pattern_is_rejected(pattern: str) -> None:
    with pytest.raises(ValueError):
        HostPattern.parse(pattern)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        ("a.test", "a.test", True),
        ("a.test", "b.test", False),
        ("*.a.test", "x.a.test", True),
        ("*.a.test", "a.test", False),
        ("*.a.test", "*.a.test", True),
        ("*.a.test", "*.x.a.test", True),
        ("*.x.a.test", "*.a.test", False),
        ("x.a.test", "*.a.test", False),
    ],
)
def test_host_coverage_examples(mine: str, theirs: str, expected: bool) -> None:
    assert HostPattern.parse(mine).covers(HostPattern.parse(theirs)) is expected


def test_host_overlap_is_symmetric() -> None:
    hosts = [HostPattern.parse(h) for h in ["a.test", "x.a.test", "*.a.test", "*.x.a.test"]]
    for mine, theirs in itertools.product(hosts, repeat=2):
        assert mine.overlaps(theirs) is theirs.overlaps(mine)
    assert not HostPattern.parse("a.test").overlaps(HostPattern.parse("*.a.test"))


# --- RouteMatcher -----------------------------------------------------------------------------


def test_a_matcher_without_hosts_matches_any_host_or_none() -> None:
    matcher = RouteMatcher.build("/a")
    assert matcher.matches_host("x.test")
    assert matcher.matches_host(None)


def test_a_matcher_with_hosts_never_matches_a_missing_host() -> None:
    assert not RouteMatcher.build("/a", hosts=["x.test"]).matches_host(None)


def test_build_upper_cases_methods_and_none_allows_all() -> None:
    assert RouteMatcher.build("/a", methods=["get"]).methods == frozenset({"GET"})
    assert RouteMatcher.build("/a").allows("PATCH")
    assert RouteMatcher.build("/a", methods=["GET"]).allows("GET")
    assert not RouteMatcher.build("/a", methods=["GET"]).allows("get")


@pytest.mark.parametrize("methods", [frozenset(), frozenset({"get"}), frozenset({"GE T"})])
def test_a_matcher_rejects_bad_method_sets(methods: frozenset[str]) -> None:
    with pytest.raises(ValueError):
        RouteMatcher((), PathPattern.parse("/"), methods)


@pytest.mark.parametrize(
    ("mine", "theirs", "expected"),
    [
        (RouteMatcher.build("/**"), RouteMatcher.build("/a", ["x.test"], ["GET"]), True),
        (RouteMatcher.build("/a", methods=["GET"]), RouteMatcher.build("/a"), False),
        (
            RouteMatcher.build("/a", methods=["GET", "POST"]),
            RouteMatcher.build("/a", [], ["GET"]),
            True,
        ),
        (RouteMatcher.build("/a", ["x.test"]), RouteMatcher.build("/a"), False),
        (
            RouteMatcher.build("/a", ["*.test"]),
            RouteMatcher.build("/a", ["x.test", "y.test"]),
            True,
        ),
        (
            RouteMatcher.build("/a", ["x.test"]),
            RouteMatcher.build("/a", ["x.test", "y.test"]),
            False,
        ),
        (RouteMatcher.build("/a/*"), RouteMatcher.build("/a/"), False),
    ],
)
def test_route_coverage_needs_hosts_methods_and_path_covered(
    mine: RouteMatcher, theirs: RouteMatcher, expected: bool
) -> None:
    assert mine.covers(theirs) is expected


def test_route_overlap_needs_hosts_methods_and_path_to_overlap() -> None:
    public = RouteMatcher.build("/public/**", methods=["GET"])
    assert public.overlaps(RouteMatcher.build("/public/admin"))
    assert not public.overlaps(RouteMatcher.build("/public/admin", methods=["POST"]))
    assert not RouteMatcher.build("/a", ["x.test"]).overlaps(RouteMatcher.build("/a", ["y.test"]))


# --- RouteTable -------------------------------------------------------------------------------


def test_the_first_route_in_file_order_wins() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/orders/{id}"), "pattern"),
            (RouteMatcher.build("/orders/42"), "literal"),
        ]
    )
    assert table.lookup(None, "/orders/42", "GET") == Match("pattern", {"id": "42"})


def test_an_exact_route_before_a_pattern_route_wins() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/orders/42"), "literal"),
            (RouteMatcher.build("/orders/{id}"), "pattern"),
        ]
    )
    assert table.lookup(None, "/orders/42", "GET") == Match("literal", {})
    assert table.lookup(None, "/orders/7", "GET") == Match("pattern", {"id": "7"})


def test_a_route_that_does_not_allow_the_method_is_skipped() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/orders", methods=["POST"]), "create"),
            (RouteMatcher.build("/orders", methods=["GET"]), "list"),
        ]
    )
    assert table.lookup(None, "/orders", "GET") == Match("list", {})
    assert table.lookup(None, "/orders", "POST") == Match("create", {})


def test_a_known_path_with_a_wrong_method_gives_the_allow_list() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/orders/{id}", methods=["GET", "HEAD"]), "read"),
            (RouteMatcher.build("/orders/*", methods=["DELETE"]), "delete"),
            (RouteMatcher.build("/orders/{id}", ["other.test"], ["PUT"]), "elsewhere"),
            (RouteMatcher.build("/users/**", methods=["PATCH"]), "users"),
        ]
    )
    assert table.lookup("api.test", "/orders/1", "POST") == MethodNotAllowed(
        ("DELETE", "GET", "HEAD")
    )


def test_a_route_allowing_all_methods_after_restricted_ones_matches() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/a", methods=["GET"]), "get"),
            (RouteMatcher.build("/**"), "fallback"),
        ]
    )
    assert table.lookup(None, "/a", "POST") == Match("fallback", {})


def test_an_unknown_host_or_path_gives_none() -> None:
    table = RouteTable([(RouteMatcher.build("/a", ["*.example.test"]), "a")])
    assert table.lookup("x.example.test:8443", "/a", "GET") == Match("a", {})
    assert table.lookup("example.test", "/a", "GET") is None
    assert table.lookup(None, "/a", "GET") is None
    assert table.lookup("x.example.test", "/b", "GET") is None


def test_an_empty_table_matches_nothing() -> None:
    assert RouteTable[str]([]).lookup(None, "/", "GET") is None


def test_shadowed_routes_are_reported_against_the_first_earlier_cover() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/api/**"), 0),
            (RouteMatcher.build("/api/*"), 1),
            (RouteMatcher.build("/api/{id}", methods=["GET"]), 2),
            (RouteMatcher.build("/other"), 3),
            (RouteMatcher.build("/other", methods=["GET"]), 4),
            (RouteMatcher.build("/api", ["x.test"]), 5),
        ]
    )
    assert table.shadowed() == [(0, 1), (0, 2), (3, 4), (0, 5)]


def test_a_narrower_earlier_route_does_not_shadow_a_wider_later_one() -> None:
    table = RouteTable(
        [
            (RouteMatcher.build("/a/*", methods=["GET"]), 0),
            (RouteMatcher.build("/a/**"), 1),
            (RouteMatcher.build("/a/b", ["x.test"]), 2),
            (RouteMatcher.build("/a/"), 3),
        ]
    )
    assert table.shadowed() == [(1, 2), (1, 3)]


def naive_lookup(
    entries: list[tuple[RouteMatcher, int]], path: str, method: str
) -> Match[int] | MethodNotAllowed | None:
    """The specification of lookup, without any index."""
    allow: set[str] = set()
    for matcher, value in entries:
        params = matcher.path.match(path)
        if params is None:
            continue
        if matcher.allows(method):
            return Match(value, params)
        assert matcher.methods is not None
        allow |= matcher.methods
    return MethodNotAllowed(tuple(sorted(allow))) if allow else None


@given(
    st.lists(
        st.tuples(
            small_patterns(),
            st.none() | st.frozensets(st.sampled_from(["GET", "POST"]), min_size=1),
        ),
        max_size=8,
    ),
    st.lists(st.sampled_from(UNIVERSE), min_size=1, max_size=10),
    st.sampled_from(["GET", "POST", "PUT"]),
)
def test_the_indexed_lookup_agrees_with_a_linear_scan_in_file_order(
    routes: list[tuple[PathPattern, frozenset[str] | None]], paths: list[str], method: str
) -> None:
    entries = [(RouteMatcher((), path, methods), i) for i, (path, methods) in enumerate(routes)]
    table = RouteTable(entries)
    for path in [*paths, *(p.exact for p, _ in routes if p.exact is not None)]:
        assert table.lookup(None, path, method) == naive_lookup(entries, path, method)


@given(
    st.lists(
        st.tuples(
            small_patterns(),
            st.none() | st.frozensets(st.sampled_from(["GET", "POST"]), min_size=1),
        ),
        max_size=6,
    ),
    st.sampled_from(UNIVERSE),
    st.sampled_from(["GET", "POST"]),
)
def test_a_shadowed_route_is_never_the_answer_to_a_lookup(
    routes: list[tuple[PathPattern, frozenset[str] | None]], path: str, method: str
) -> None:
    table = RouteTable([(RouteMatcher((), p, methods), i) for i, (p, methods) in enumerate(routes)])
    hidden = {later for _, later in table.shadowed()}
    result = table.lookup(None, path, method)
    if isinstance(result, Match):
        assert result.value not in hidden


# --- The compiled table answers as its source does ----------------------------------------------

# tests/pipeline/test_routing_index.py checks the table's index against trying every route, with
# routing.py run from its source (it counts comparisons, which compiled code makes unseen). Here
# the compiled table must give the same answers as that source, route for route.
SOURCE = from_source("gateway.pipeline.routing")

ROUTE_HOSTS = ["a.test", "x.a.test", "*.a.test", "*.test"]


@st.composite
def route_specs(draw: st.DrawFn) -> tuple[str, list[str], list[str] | None]:
    """A route as a file gives it: a path pattern, hosts and methods (None: every method)."""
    path = draw(pattern_texts())
    hosts = draw(st.lists(st.sampled_from(ROUTE_HOSTS), max_size=2, unique=True))
    methods = draw(st.none() | st.lists(st.sampled_from(["GET", "POST"]), min_size=1))
    return path, hosts, methods


def answer(found: object) -> object:
    """A lookup's answer as plain values, comparable between the two modules' classes."""
    if found is None:
        return None
    if hasattr(found, "allow"):
        return ("405", found.allow)
    return ("match", found.value, found.params)  # type: ignore[attr-defined]


@given(
    st.lists(route_specs(), max_size=10),
    st.lists(st.sampled_from(UNIVERSE), min_size=1, max_size=6),
    st.sampled_from([None, "a.test", "x.a.test:8443", "b.test"]),
    st.sampled_from(["GET", "POST", "PUT"]),
    st.data(),
)
def test_the_compiled_table_answers_every_question_as_its_source_does(
    specs: list[tuple[str, list[str], list[str] | None]],
    paths: list[str],
    host: str | None,
    method: str,
    data: st.DataObject,
) -> None:
    compiled = RouteTable([(RouteMatcher.build(p, h, m), i) for i, (p, h, m) in enumerate(specs)])
    source = SOURCE.RouteTable(
        [(SOURCE.RouteMatcher.build(p, h, m), i) for i, (p, h, m) in enumerate(specs)]
    )
    for path in paths + paths:  # the second time from remembered answers
        assert answer(compiled.lookup(host, path, method)) == answer(
            source.lookup(host, path, method)
        )
    assert compiled.shadowed() == source.shadowed()
    indices = list(range(len(specs)))
    routes = data.draw(st.lists(st.sampled_from(indices), unique=True) if indices else st.just([]))
    among = [i for i in indices if i not in routes]
    assert compiled.overlapping(routes, among) == source.overlapping(routes, among)
