"""One ``gateway run`` subprocess serving a fixed set of requests that carry secrets (tokens in
headers and in query strings, an opaque token whose introspection fails, a configured client
secret), stopped, with its stdout and stderr kept for the log tests to read."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.wire import closed_port
from tests.observe.process import gateway_run
from tests.support import AUDIENCE, TokenIssuer, echo_upstream

LOG_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
  down:
    issuer: https://down.test
    jwks_uri: http://127.0.0.1:{closed}/jwks
    audiences: [{audience}]
    jwks: {{min_refetch_interval: 1h}}
  opaque:
    issuer: https://opaque.test
    audiences: [{audience}]
    introspection:
      client_id: gw
      client_secret: ${{SECRET}}
      endpoint: http://127.0.0.1:{closed}/introspect
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth: {{issuers: [corp], scopes: [orders:read]}}
  - name: opaque
    match: {{path: /opaque/**}}
    upstream: echo
    auth: {{issuers: [opaque]}}
"""

QUERY_SECRET = "secretquery"


@dataclass
class LoggedRun:
    stdout: str
    stderr: str
    exit_status: int
    secrets: list[str]
    allowed_token: str
    allowed_request_id: str
    denied_request_id: str
    trace_id: str
    invalid_traceparent: str
    statuses: list[int] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The stdout lines that are JSON objects, parsed."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


async def logged_run(directory: Path, issuer: TokenIssuer, args: Sequence[str]) -> LoggedRun:
    issuer.write_jwks(directory / "corp.jwks.json")
    secret = "client-" + secrets.token_hex(16)
    good, in_query, query_only, second = (issuer.token() for _ in range(4))
    unscoped = issuer.token(scope="profile")
    opaque = "opaque-" + secrets.token_hex(16)
    trace = secrets.token_hex(16)
    invalid_traceparent = "00-NOTATRACE" + secrets.token_hex(8) + "-01"
    bearer = {"Authorization": f"Bearer {good}"}
    plan: list[tuple[str, dict[str, str]]] = [
        ("/orders/1", {**bearer, "traceparent": f"00-{trace}-{'b' * 16}-01"}),
        (f"/orders/1?access_token={in_query}", {"Authorization": f"Bearer {in_query}"}),
        (f"/orders/1?access_token={query_only}", {}),
        (f"/orders/1?q={QUERY_SECRET}", {"Authorization": f"Bearer {second}"}),
        (f"/opaque/1?q={QUERY_SECRET}", {"Authorization": f"Bearer {opaque}"}),
        ("/orders/1", {"Authorization": f"Bearer {unscoped}", "traceparent": invalid_traceparent}),
    ]
    statuses, request_ids = [], []
    async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
        body = LOG_CONFIG.format(
            issuer=issuer.issuer, audience=AUDIENCE, closed=closed_port(), upstream=upstream.url
        )
        async with gateway_run(directory, body, args, env={"SECRET": secret}) as run:
            for target, headers in plan:
                async with http.get(run.url + target, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
                    request_ids.append(response.headers["X-Request-Id"])
            exit_status = run.stop()
        basic = base64.b64encode(f"gw:{secret}".encode()).decode()
        tokens = [good, in_query, query_only, second, unscoped, opaque]
        return LoggedRun(
            stdout=run.stdout,
            stderr=run.stderr,
            exit_status=exit_status,
            # Every token whole and by its signature, the secret, its Basic header, the query.
            secrets=[*tokens, *(t.split(".")[-1] for t in tokens), secret, basic, QUERY_SECRET],
            allowed_token=good,
            allowed_request_id=request_ids[0],
            denied_request_id=request_ids[-1],
            trace_id=trace,
            invalid_traceparent=invalid_traceparent,
            statuses=statuses,
        )
