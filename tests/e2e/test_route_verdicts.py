"""A token's verdict belongs to a route: the gateway remembers a verified token, and what each
route decided for it, but one route's verdict never answers for another, nor for the same
route after a reload changed it."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support import AUDIENCE, TokenIssuer, echo_upstream, running_gateway, write_config

ISSUER = TokenIssuer()

CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: reports
    match: {{path: /reports/**}}
    upstream: echo
    auth: {{scopes: [{reports_scope}]}}
  - name: admin
    match: {{path: /admin/**}}
    upstream: echo
    auth: {{scopes: [admin]}}
"""


async def status(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status


async def test_one_token_is_allowed_and_refused_by_two_routes_on_every_request(
    tmp_path: Path,
) -> None:
    ISSUER.write_jwks(tmp_path / "corp.jwks.json")
    token = ISSUER.token(scope="read")
    async with echo_upstream() as upstream:
        config = write_config(
            tmp_path, CONFIG, issuer=ISSUER.issuer, audience=AUDIENCE,
            upstream=upstream.url, reports_scope="read",
        )  # fmt: skip
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
            for _ in range(3):
                assert await status(http, f"{gateway.url}/reports/1", token) == 200
                assert await status(http, f"{gateway.url}/admin/1", token) == 403


async def test_a_reload_that_tightens_a_route_refuses_a_token_it_allowed_before(
    tmp_path: Path,
) -> None:
    ISSUER.write_jwks(tmp_path / "corp.jwks.json")
    token = ISSUER.token(scope="read")
    async with echo_upstream() as upstream:
        values = {"issuer": ISSUER.issuer, "audience": AUDIENCE, "upstream": upstream.url}
        config = write_config(tmp_path, CONFIG, reports_scope="read", **values)
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
            assert await status(http, f"{gateway.url}/reports/1", token) == 200
            write_config(tmp_path, CONFIG, reports_scope="reports:read", **values)
            assert await gateway.server.reload()
            assert await status(http, f"{gateway.url}/reports/1", token) == 403
            received = len(upstream.received)
            assert await status(http, f"{gateway.url}/reports/1", token) == 403
            assert len(upstream.received) == received
