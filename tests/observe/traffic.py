"""A scripted mix of requests against a real gateway, a real upstream, a fake introspection
endpoint and unreachable ones: every deny reason the test issuer can produce, plus 404, 405, 413,
502, 504 and an unknown method. Each request says which counters it must move."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.e2e.wire import closed_port, http_upstream
from tests.support import AUDIENCE, TokenIssuer, echo_upstream, running_gateway, write_config

DOWN_ISSUER = "https://down.test"
OPAQUE_ISSUER = "https://opaque.test"
GOOD_OPAQUE = "opaque-good-token"

MIX_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
    algorithms: [RS256, ES256]
    token_type: at+jwt
    jwks: {{min_refetch_interval: 1h}}
  down:
    issuer: {down_issuer}
    jwks_uri: http://127.0.0.1:{closed}/jwks
    audiences: [{audience}]
    jwks: {{min_refetch_interval: 1h}}
  opaque:
    issuer: {opaque_issuer}
    audiences: [{audience}]
    introspection: {{endpoint: "{introspection}", client_id: gw, client_secret: s3cret}}
  flaky:
    issuer: https://flaky.test
    audiences: [{audience}]
    introspection: {{endpoint: "http://127.0.0.1:{closed}/introspect", client_id: gw}}
upstreams:
  echo: {{url: "{upstream}"}}
  closed: {{url: "http://127.0.0.1:{closed}"}}
  slow: {{url: "{slow}", timeout: 300ms}}
routes:
  - name: status
    match: {{path: /status}}
    upstream: echo
    auth: public
  - name: orders-read
    match: {{path: /orders/**, methods: [GET, HEAD]}}
    upstream: echo
    auth: {{issuers: [corp], scopes: [orders:read]}}
  - name: orders-write
    match: {{path: /orders/**, methods: [POST, PUT]}}
    upstream: echo
    auth: {{issuers: [corp], scopes: [orders:write]}}
  - name: tenant
    match: {{path: /tenant/**}}
    upstream: echo
    auth: {{issuers: [corp], claims: {{tenant: acme}}}}
  - name: down
    match: {{path: /down/**}}
    upstream: echo
    auth: {{issuers: [down]}}
  - name: opaque
    match: {{path: /opaque/**}}
    upstream: echo
    auth: {{issuers: [opaque]}}
  - name: opaque-down
    match: {{path: /opaque-down/**}}
    upstream: echo
    auth: {{issuers: [flaky]}}
  - name: upload
    match: {{path: /upload}}
    upstream: echo
    auth: public
    limits: {{max_body_bytes: 16}}
  - name: broken
    match: {{path: /broken}}
    upstream: closed
    auth: public
  - name: slow
    match: {{path: /slow}}
    upstream: slow
    auth: public
"""

ROUTES = (
    "status", "orders-read", "orders-write", "tenant", "down", "opaque", "opaque-down", "upload",
    "broken", "slow",
)  # fmt: skip
ISSUERS = ("corp", "down", "opaque", "flaky")


@dataclass(frozen=True)
class Call:
    """One request of the mix and what it must count: its route label, its status, and (for a
    protected route) its decision."""

    method: str
    path: str
    route: str
    status: int
    reason: str | None = None  # "none" for an allowed request, a deny reason, or no decision
    token: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    forwarded: bool = False  # the upstream answered: an upstream duration is observed

    @property
    def method_label(self) -> str:
        return self.method if self.method in ("GET", "HEAD", "POST", "DELETE") else "OTHER"


@dataclass
class Scrapes:
    """The exposition before and after the mix, and what the mix was."""

    before: str
    after: str
    calls: list[Call]
    statuses: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def expected_requests(self) -> Counter[tuple[str, str, str]]:
        return Counter((c.route, c.method_label, str(c.status)) for c in self.calls)

    def expected_decisions(self) -> Counter[tuple[str, str, str]]:
        return Counter(
            (c.route, "allow" if c.reason == "none" else "deny", c.reason)
            for c in self.calls
            if c.reason is not None
        )


def calls(issuer: TokenIssuer) -> list[Call]:
    now = int(time.time())
    impostor = TokenIssuer(issuer.issuer)  # the same kids, other keys
    good, acme = issuer.token(), issuer.token(tenant="acme")

    def allowed(path: str, route: str, token: str, method: str = "GET") -> Call:
        return Call(method, path, route, 200, "none", token, _bearer(token), forwarded=True)

    def denied(reason: str, status: int, token: str, path: str = "/orders/1") -> Call:
        route = "orders-read" if path.startswith("/orders/") else path.split("/")[1]
        return Call("GET", path, route, status, reason, token, _bearer(token))

    return [
        Call("GET", "/status", "status", 200, forwarded=True),
        Call("PROPFIND", "/status", "status", 200, forwarded=True),
        allowed("/orders/1", "orders-read", good),
        allowed("/orders/2", "orders-read", good, method="HEAD"),
        Call("GET", "/orders/1", "orders-read", 401, "missing_token"),
        Call(
            "GET",
            f"/orders/1?access_token={good}",
            "orders-read",
            400,
            "invalid_request",
            good,
            _bearer(good),
        ),
        denied("malformed_token", 401, "not-a-jwt"),
        denied("invalid_signature", 401, impostor.token()),
        denied("unknown_key", 401, issuer.token(kid="no-such-key")),
        denied("disallowed_alg", 401, issuer.token("EdDSA")),
        denied("expired", 401, issuer.token(iat=now - 7200, exp=now - 3600)),
        denied("not_yet_valid", 401, issuer.token(nbf=now + 3600)),
        denied("wrong_issuer", 401, issuer.token(iss="https://elsewhere.test")),
        denied("wrong_audience", 401, issuer.token(aud="https://elsewhere.test")),
        denied("wrong_type", 401, issuer.token(typ="JWT")),
        denied("insufficient_scope", 403, issuer.token(scope="profile")),
        denied("claim_mismatch", 403, issuer.token(tenant="other"), "/tenant/1"),
        allowed("/tenant/1", "tenant", acme),
        denied("unavailable", 503, TokenIssuer(DOWN_ISSUER).token(), "/down/1"),
        denied("inactive", 401, "opaque-revoked-token", "/opaque/1"),
        allowed("/opaque/1", "opaque", GOOD_OPAQUE),
        allowed("/opaque/2", "opaque", GOOD_OPAQUE),  # answered from the cache
        denied("unavailable", 503, "opaque-any-token", "/opaque-down/1"),
        Call("GET", "/nowhere/at/all", "(none)", 404),
        Call("DELETE", "/orders/1", "(none)", 405),
        Call("POST", "/upload", "upload", 413, body=b"x" * 100),
        Call("GET", "/broken", "broken", 502),
        Call("GET", "/slow", "slow", 504),
    ]


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),)


async def _introspection(request: web.BaseRequest) -> web.StreamResponse:
    form = await request.post()
    if form.get("token") == GOOD_OPAQUE:
        return web.json_response(
            {
                "active": True,
                "iss": OPAQUE_ISSUER,
                "sub": "bob",
                "client_id": "svc",
                "aud": AUDIENCE,
                "scope": "orders:read",
                "exp": int(time.time()) + 300,
            }
        )
    return web.json_response({"active": False})


async def _slow(request: web.BaseRequest) -> web.StreamResponse:
    await asyncio.sleep(10)  # cancelled when the gateway gives up and closes the connection
    return web.Response(text="too late")


async def run_mix(directory: Path, issuer: TokenIssuer) -> Scrapes:
    issuer.write_jwks(directory / "corp.jwks.json")
    script = calls(issuer)
    async with (
        echo_upstream() as upstream,
        http_upstream(_slow) as slow,
        http_upstream(_introspection) as introspection,
    ):
        config = write_config(
            directory,
            MIX_CONFIG,
            issuer=issuer.issuer,
            audience=AUDIENCE,
            down_issuer=DOWN_ISSUER,
            opaque_issuer=OPAQUE_ISSUER,
            closed=closed_port(),
            upstream=upstream.url,
            slow=slow.url,
            introspection=f"{introspection.url}/introspect",
        )
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:

            async def scrape() -> str:
                async with http.get(f"{gateway.admin_url}/metrics") as response:
                    assert response.status == 200
                    return await response.text()

            before = await scrape()
            statuses = []
            for call in script:
                async with http.request(
                    call.method, gateway.url + call.path, headers=list(call.headers), data=call.body
                ) as response:
                    await response.read()
                    statuses.append(response.status)
            after = await scrape()
    return Scrapes(before, after, script, statuses, [c.token for c in script if c.token])
