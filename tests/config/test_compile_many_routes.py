"""Compiling a configuration of 10,000 routes: every check that compares routes (names used twice,
routes that can never match, public routes reaching into protected ones) reports exactly what it
reports for a small file, without comparing every route with every other one.

Comparisons are counted by wrapping ``RouteMatcher``'s methods, which the compiled route table
(setup.py) calls directly: so here the configuration is compiled with ``routing.py`` run from
its source (``from_source``), the same code, interpreted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.config import compile as compile_module
from gateway.config.compile import compile_config
from gateway.config.schema import Config
from tests.compiled import from_source

ROUTES = 10_000


def service_route(index: int) -> dict[str, Any]:
    path = [
        f"/api/v1/svc{index}/items/**",
        f"/api/v1/svc{index}/items/{{id}}",
        f"/api/v1/svc{index}/status",
    ][index % 3]
    return {
        "name": f"svc{index}",
        "match": {"path": path},
        "upstream": "up",
        "auth": {"issuers": ["corp"], "scopes": ["read"]},
    }


def config(extra_routes: list[dict[str, Any]]) -> Config:
    return Config.model_validate(
        {
            "issuers": {
                "corp": {
                    "issuer": "https://idp.example.com",
                    "jwks_uri": "https://idp.example.com/jwks",
                    "audiences": ["https://api.example.test"],
                }
            },
            "upstreams": {"up": {"url": "http://up.internal:8000"}},
            "routes": [service_route(i) for i in range(ROUTES)] + extra_routes,
        }
    )


@pytest.fixture
def comparisons(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"covers": 0, "overlaps": 0}

    def counting(name: str, original: Callable[..., bool]) -> Callable[..., bool]:
        def counted(*args: Any) -> bool:
            counts[name] += 1
            return original(*args)

        return counted

    routing = from_source("gateway.pipeline.routing")
    for name in ("HostPattern", "PathPattern", "RouteMatcher", "RouteTable"):
        monkeypatch.setattr(compile_module, name, getattr(routing, name))
    matcher = routing.RouteMatcher
    monkeypatch.setattr(matcher, "covers", counting("covers", matcher.covers))
    monkeypatch.setattr(matcher, "overlaps", counting("overlaps", matcher.overlaps))
    return counts


def test_ten_thousand_distinct_routes_compile_with_few_comparisons(
    tmp_path: Path, comparisons: dict[str, int]
) -> None:
    health = [
        {"name": f"health{i}", "match": {"path": f"/api/v1/svc{i}/health"}, "upstream": "up",
         "auth": "public"}
        for i in range(0, ROUTES, 100)
    ]  # fmt: skip
    compiled = compile_config(config(health), tmp_path)
    assert len(compiled.routes) == ROUTES + len(health)
    assert compiled.warnings == []
    assert compiled.routes.lookup(None, "/api/v1/svc9999/items/1/2", "GET") is not None
    # None at all, as it happens: no two of these paths can meet. (The next test shows that
    # the comparisons that are made are counted.)
    assert comparisons["covers"] + comparisons["overlaps"] < ROUTES


def test_ten_thousand_routes_report_every_repeated_name_shadowed_route_and_public_overlap(
    tmp_path: Path, comparisons: dict[str, int]
) -> None:
    extra = [
        {"name": "svc9999", "match": {"path": "/api/v1/other"}, "upstream": "up"},
        {"name": "hidden", "match": {"path": "/api/v1/svc9999/items/7"}, "upstream": "up"},
        {"name": "open", "match": {"path": "/api/v1/svc9997/**"}, "upstream": "up",
         "auth": "public"},
    ]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        compile_config(config(extra), tmp_path)
    assert [problem.describe() for problem in caught.value.problems] == [
        f"error: routes[{ROUTES}].name: route name 'svc9999' is used twice",
        f"error: routes[{ROUTES + 1}].match: route 'hidden' can never match: route 'svc9999'"
        " (routes[9999]) matches everything it does",
        f"warning: routes[{ROUTES + 2}].match.path: public route 'open' overlaps protected"
        " route 'svc9997'",
    ]
    assert 0 < comparisons["covers"] + comparisons["overlaps"] < ROUTES
