"""Which route a request reaches, and the exact path the upstream then receives (SPEC §3 routes,
§4 path normalisation). Every route forwards to the same recording upstream under a base path
that names the route, so the path the upstream received says which route matched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.e2e.wire import raw_request
from tests.support import RunningGateway, Upstream, echo_upstream, running_gateway, write_config

ROUTING_CONFIG = """\
routes:
  - name: exact-host
    match: {{hosts: [api.example.test], path: /hosted}}
    upstream: "{upstream}/by-exact-host"
    auth: public
  - name: wildcard-host
    match: {{hosts: ["*.tenants.test"], path: /hosted}}
    upstream: "{upstream}/by-wildcard-host"
    auth: public
  - name: exact
    match: {{path: /exact}}
    upstream: "{upstream}/by-exact"
    auth: public
  - name: one-segment
    match: {{path: /one/*}}
    upstream: "{upstream}/by-one"
    auth: public
  - name: any-rest
    match: {{path: /any/**}}
    upstream: "{upstream}/by-any"
    auth: public
  - name: parameter
    match: {{path: "/items/{{id}}"}}
    upstream: "{upstream}/by-param"
    auth: public
  - name: reads
    match: {{path: /methods, methods: [GET]}}
    upstream: "{upstream}/by-get"
    auth: public
  - name: writes
    match: {{path: /methods, methods: [POST, PUT]}}
    upstream: "{upstream}/by-write"
    auth: public
  - name: first-narrow
    match: {{path: /first/*}}
    upstream: "{upstream}/by-first-narrow"
    auth: public
  - name: first-broad
    match: {{path: /first/**}}
    upstream: "{upstream}/by-first-broad"
    auth: public
  - name: stripped
    match: {{path: /api/v1/**}}
    upstream: "{upstream}"
    strip_prefix: /api/v1
    auth: public
  - name: stripped-under-base
    match: {{path: /legacy/**}}
    upstream: "{upstream}/v2/service"
    strip_prefix: /legacy
    auth: public
  - name: public
    match: {{path: /public}}
    upstream: "{upstream}"
    auth: public
  - name: plain
    match: {{path: /orders/**}}
    upstream: "{upstream}"
    auth: public
"""


@dataclass
class Routed:
    gateway: RunningGateway
    upstream: Upstream
    http: aiohttp.ClientSession

    async def get(self, target: str, **kwargs: object) -> tuple[int, str | None]:
        """GET ``target`` (sent without client-side normalisation) and return the status and
        the path the upstream received, or None when nothing was forwarded."""
        before = len(self.upstream.received)
        url = URL(self.gateway.url + target, encoded=True)
        async with self.http.get(url, **kwargs) as response:  # type: ignore[arg-type]
            await response.read()
            status = response.status
        forwarded = self.upstream.received[before:]
        return status, forwarded[-1].path if forwarded else None


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[Routed]:
    async with echo_upstream() as upstream:
        path = write_config(tmp_path, ROUTING_CONFIG, upstream=upstream.url)
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Routed(gateway, upstream, http)


async def test_an_exact_host_matches_case_insensitively_and_ignores_the_port(
    routed: Routed,
) -> None:
    status, path = await routed.get("/hosted", headers={"Host": "API.Example.TEST:8443"})
    assert (status, path) == (200, "/by-exact-host/hosted")


async def test_a_wildcard_host_matches_any_subdomain(routed: Routed) -> None:
    status, path = await routed.get("/hosted", headers={"Host": "eu.Tenants.test"})
    assert (status, path) == (200, "/by-wildcard-host/hosted")


async def test_a_wildcard_host_does_not_match_the_bare_suffix(routed: Routed) -> None:
    assert await routed.get("/hosted", headers={"Host": "tenants.test"}) == (404, None)


async def test_an_exact_path_matches_only_itself(routed: Routed) -> None:
    assert await routed.get("/exact") == (200, "/by-exact/exact")
    assert await routed.get("/exact/more") == (404, None)


async def test_a_single_star_matches_exactly_one_segment(routed: Routed) -> None:
    assert await routed.get("/one/x") == (200, "/by-one/one/x")
    assert await routed.get("/one/x/y") == (404, None)
    assert await routed.get("/one/") == (404, None)


async def test_a_double_star_matches_any_rest_of_the_path(routed: Routed) -> None:
    assert await routed.get("/any/x/y/z") == (200, "/by-any/any/x/y/z")


async def test_a_named_parameter_matches_one_segment(routed: Routed) -> None:
    assert await routed.get("/items/42") == (200, "/by-param/items/42")
    assert await routed.get("/items/42/parts") == (404, None)


async def test_the_method_picks_between_routes_on_the_same_path(routed: Routed) -> None:
    assert await routed.get("/methods") == (200, "/by-get/methods")
    async with routed.http.put(f"{routed.gateway.url}/methods", data=b"x") as response:
        assert response.status == 200
    assert routed.upstream.received[-1].path == "/by-write/methods"


async def test_a_method_no_route_allows_gets_405_listing_the_allowed_ones(routed: Routed) -> None:
    async with routed.http.delete(f"{routed.gateway.url}/methods") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, POST, PUT"
        assert response.content_type == "application/json"
    assert routed.upstream.received == []


async def test_the_first_matching_route_in_file_order_wins(routed: Routed) -> None:
    assert await routed.get("/first/x") == (200, "/by-first-narrow/first/x")
    assert await routed.get("/first/x/y") == (200, "/by-first-broad/first/x/y")


async def test_a_request_no_route_matches_gets_404_and_is_never_forwarded(routed: Routed) -> None:
    async with routed.http.get(f"{routed.gateway.url}/nowhere") as response:
        assert response.status == 404
        body = await response.json()
    assert body["error"] == "not_found"
    assert routed.upstream.received == []


async def test_the_upstream_receives_the_normalised_path_that_was_matched(routed: Routed) -> None:
    response = await raw_request(routed.gateway.url, "/orders/./a//b/../c")
    assert response.status == 200
    assert [r.path for r in routed.upstream.received] == ["/orders/a/c"]


async def test_escaped_unreserved_characters_are_decoded_before_matching(routed: Routed) -> None:
    response = await raw_request(routed.gateway.url, "/%61ny/%7Euser/%41")
    assert response.status == 200
    assert [r.path for r in routed.upstream.received] == ["/by-any/any/~user/A"]


async def test_other_escapes_reach_the_upstream_upper_cased_not_decoded(routed: Routed) -> None:
    response = await raw_request(routed.gateway.url, "/orders/a%20b/%c3%a9/a%3bb=c/%2b%3d")
    assert response.status == 200
    assert [r.path for r in routed.upstream.received] == ["/orders/a%20b/%C3%A9/a%3Bb=c/%2B%3D"]


@pytest.mark.parametrize(
    "target",
    [
        "/orders/a%2Fb",
        "/orders/a%2fb",
        "/orders/a%5Cb",
        "/orders/a%00b",
        "/../orders/a",
        "/orders/../../orders/a",
        "/orders;jsessionid=x/a",
        "/orders/..;/admin",
        "/orders/%2E%2E/%2e%2e/x",
    ],
    ids=["encoded-slash", "encoded-slash-lower", "encoded-backslash", "nul", "dotdot-at-root",
         "dotdot-above-root", "path-parameter", "dotdot-parameter", "encoded-dotdot-above-root"],
)  # fmt: skip
async def test_an_ambiguous_path_gets_400_and_is_never_forwarded(
    routed: Routed, target: str
) -> None:
    response = await raw_request(routed.gateway.url, target)
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert routed.upstream.received == []


async def test_the_query_string_takes_no_part_in_matching(routed: Routed) -> None:
    response = await raw_request(routed.gateway.url, "/private?x=/public")
    assert response.status == 404
    assert routed.upstream.received == []


async def test_a_query_that_looks_like_a_path_does_not_change_the_route(routed: Routed) -> None:
    response = await raw_request(routed.gateway.url, "/public?/../orders/x")
    assert response.status == 200
    received = routed.upstream.received
    assert [(r.path, r.query) for r in received] == [("/public", "/../orders/x")]


@pytest.mark.parametrize("target", ["/public#/../orders/x", "/public#x?y=1"])
async def test_a_fragment_takes_no_part_in_matching_or_in_the_query(
    routed: Routed, target: str
) -> None:
    response = await raw_request(routed.gateway.url, target)
    assert response.status == 200
    assert [(r.path, r.query) for r in routed.upstream.received] == [("/public", "")]


async def test_the_query_string_is_forwarded_byte_for_byte(routed: Routed) -> None:
    query = "b=2&a=1&a=%2f&c=%7E&d=a+b&e=&f&g=%C3%A9&h=/x/../y"
    response = await raw_request(routed.gateway.url, f"/exact?{query}")
    assert response.status == 200
    assert [(r.path, r.query) for r in routed.upstream.received] == [("/by-exact/exact", query)]


async def test_strip_prefix_removes_the_prefix_before_forwarding(routed: Routed) -> None:
    assert await routed.get("/api/v1/users/7") == (200, "/users/7")
    assert await routed.get("/api/v1") == (200, "/")


async def test_strip_prefix_applies_under_the_upstream_base_path(routed: Routed) -> None:
    assert await routed.get("/legacy/users/7") == (200, "/v2/service/users/7")


async def test_the_upstream_base_path_is_put_before_the_matched_path(routed: Routed) -> None:
    assert await routed.get("/items/7?x=1") == (200, "/by-param/items/7")
    assert routed.upstream.received[-1].query == "x=1"
