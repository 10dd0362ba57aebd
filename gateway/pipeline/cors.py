"""CORS for browser callers: preflights answered here, responses labelled for their origin.

A preflight carries no token, so forwarding it would either fail authentication or need the
route opened to anonymous OPTIONS; and a browser hides even a 401 from a page unless that answer
is labelled for the page's origin.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """A route's compiled ``cors`` block."""

    allow_origins: frozenset[str]
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    allow_credentials: bool
    max_age: int

    def allows_origin(self, origin: str | None) -> bool:
        if origin is None:
            return False
        # The Fetch standard forbids "*" together with credentials: then only listed origins.
        return origin in self.allow_origins or (
            "*" in self.allow_origins and not self.allow_credentials
        )


def is_preflight(request: web.BaseRequest) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def label_for_origin(headers: CIMultiDict[str], cors: CorsPolicy, origin: str) -> None:
    """Mark a response as readable by ``origin`` (an origin the policy allows)."""
    headers["Access-Control-Allow-Origin"] = origin
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    vary = headers.get("Vary")
    if not vary:
        headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        headers["Vary"] = f"{vary}, Origin"


def preflight_response(cors: CorsPolicy) -> web.Response:
    """The gateway's own answer to a preflight from an allowed origin."""
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ", ".join(cors.allow_methods)
    response.headers["Access-Control-Allow-Headers"] = ", ".join(cors.allow_headers)
    response.headers["Access-Control-Max-Age"] = str(cors.max_age)
    return response
