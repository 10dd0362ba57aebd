"""Refusals become HTTP responses in one place, exactly as SPEC §4 lists them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from gateway.pipeline import errors
from gateway.pipeline.decision import REASONS, Denial, Reason

RID = "req-123"


def body_of(response: web.Response) -> dict[str, Any]:
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    body = json.loads(response.body)
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["request_id"] == RID
    return dict(body)


def respond(reason: Reason, description: str = "why", **extra: Any) -> web.Response:
    return errors.denial_response(Denial(reason, description, **extra), RID)


def test_a_missing_token_gets_a_bare_challenge_without_an_error_code() -> None:
    response = respond("missing_token")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert body_of(response)["error"] == "missing_token"


def test_an_invalid_request_is_400_with_its_challenge() -> None:
    response = respond("invalid_request", "more than one Authorization header")
    assert response.status == 400
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
    assert body_of(response) == {
        "error": "invalid_request",
        "error_description": "more than one Authorization header",
        "request_id": RID,
    }


@pytest.mark.parametrize(
    "reason",
    [
        "malformed_token",
        "invalid_signature",
        "unknown_key",
        "disallowed_alg",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "wrong_type",
        "inactive",
    ],
)
def test_a_bad_token_is_401_invalid_token_with_a_description(reason: Reason) -> None:
    response = respond(reason, "the token has expired")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="the token has expired"'
    )
    assert body_of(response)["error"] == "invalid_token"
    assert "Retry-After" not in response.headers


def test_missing_scopes_are_403_naming_the_scopes_needed_once_each() -> None:
    response = respond("insufficient_scope", required_scopes=("a:read", "b:write", "a:read"))
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="a:read b:write"'
    )
    assert body_of(response)["error"] == "insufficient_scope"


def test_a_failed_claim_condition_is_403_insufficient_scope_without_a_scope() -> None:
    response = respond("claim_mismatch")
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert body_of(response)["error"] == "insufficient_scope"


def test_a_token_that_cannot_be_checked_now_is_503_with_retry_after_and_no_challenge() -> None:
    response = respond("unavailable", "keys cannot be loaded now", retry_after=5)
    assert response.status == 503
    assert "WWW-Authenticate" not in response.headers
    assert response.headers["Retry-After"] == "5"
    assert body_of(response)["error"] == "temporarily_unavailable"


def test_quotes_and_backslashes_in_a_description_are_escaped_in_the_challenge() -> None:
    response = respond("expired", 'say "no" \\ twice')
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="say \\"no\\" \\\\ twice"'
    )


@pytest.mark.parametrize("reason", REASONS)
def test_every_deny_reason_has_a_client_error_or_503_status(reason: Reason) -> None:
    response = respond(reason)
    assert response.status in {400, 401, 403, 503}
    body_of(response)


def test_no_route_is_a_404_without_a_challenge() -> None:
    response = errors.not_found(RID)
    assert response.status == 404 and "WWW-Authenticate" not in response.headers
    assert body_of(response)["error"] == "not_found"


def test_a_wrong_method_is_a_405_listing_the_allowed_ones() -> None:
    response = errors.method_not_allowed(RID, ("GET", "HEAD"))
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"
    body_of(response)


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda: errors.bad_request(RID, "ambiguous path"), 400),
        (lambda: errors.too_large(RID), 413),
        (lambda: errors.bad_gateway(RID), 502),
        (lambda: errors.gateway_timeout(RID), 504),
    ],
    ids=["400", "413", "502", "504"],
)
def test_other_errors_carry_the_json_body_and_no_challenge(make: Any, status: int) -> None:
    response = make()
    assert response.status == status
    assert "WWW-Authenticate" not in response.headers
    body_of(response)


def test_an_upstream_without_a_free_connection_is_503_with_retry_after() -> None:
    response = errors.upstream_busy(RID)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    body_of(response)
