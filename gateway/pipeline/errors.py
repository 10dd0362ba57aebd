"""The one place where a refusal becomes an HTTP response (SPEC §4).

Every error has ``Content-Type: application/json`` and the body
``{"error", "error_description", "request_id"}``; token refusals add the RFC 6750 §3 challenge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from .decision import Denial, Reason

REALM = "gateway"

_STATUS: Mapping[Reason, int] = {
    "missing_token": 401,
    "invalid_request": 400,
    "insufficient_scope": 403,
    "claim_mismatch": 403,
    "unavailable": 503,
}


def denial_status(denial: Denial) -> int:
    return _STATUS.get(denial.reason, 401)


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _challenge(denial: Denial) -> tuple[str, str | None]:
    """The body's ``error`` code and the ``WWW-Authenticate`` value for a denial."""
    reason = denial.reason
    if reason == "missing_token":
        # RFC 6750 §3.1: no error code when the request carried no credentials at all.
        return "missing_token", f'Bearer realm="{REALM}"'
    if reason == "invalid_request":
        # Exactly SPEC §4's form; the body's error_description says what was wrong.
        return "invalid_request", 'Bearer error="invalid_request"'
    if reason == "insufficient_scope":
        scope = " ".join(dict.fromkeys(denial.required_scopes))
        return "insufficient_scope", f'Bearer error="insufficient_scope", scope="{_quoted(scope)}"'
    if reason == "claim_mismatch":
        return "insufficient_scope", 'Bearer error="insufficient_scope"'
    if reason == "unavailable":
        return "temporarily_unavailable", None
    return "invalid_token", (
        f'Bearer error="invalid_token", error_description="{_quoted(denial.description)}"'
    )


def denial_response(denial: Denial, request_id: str) -> web.Response:
    error, challenge = _challenge(denial)
    headers: dict[str, str] = {}
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    if denial.retry_after is not None:
        headers["Retry-After"] = str(denial.retry_after)
    return error_response(
        denial_status(denial), error, denial.description, request_id, headers=headers
    )


def error_response(
    status: int,
    error: str,
    description: str,
    request_id: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": error, "error_description": description, "request_id": request_id}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def not_found(request_id: str) -> web.Response:
    return error_response(404, "not_found", "no route matches this request", request_id)


def method_not_allowed(request_id: str, allow: tuple[str, ...]) -> web.Response:
    return error_response(
        405,
        "method_not_allowed",
        "this route does not accept this method",
        request_id,
        headers={"Allow": ", ".join(allow)},
    )


def bad_request(request_id: str, description: str) -> web.Response:
    return error_response(400, "invalid_request", description, request_id)


def too_large(request_id: str) -> web.Response:
    return error_response(413, "request_too_large", "the request body is too large", request_id)


def bad_gateway(request_id: str) -> web.Response:
    return error_response(502, "bad_gateway", "the upstream could not be reached", request_id)


def gateway_timeout(request_id: str) -> web.Response:
    return error_response(504, "gateway_timeout", "the upstream did not answer in time", request_id)


def upstream_busy(request_id: str) -> web.Response:
    return error_response(
        503,
        "service_unavailable",
        "the upstream has no free connection",
        request_id,
        headers={"Retry-After": "1"},
    )
