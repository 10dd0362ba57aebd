"""The access log: one JSON `request` event per request, every SPEC §7 field, never a token."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from gateway.observe.logs import configure_logging, token_fingerprint
from tests.e2e.conftest import Stack

FIELDS = {
    "request_id", "method", "path", "route", "status", "duration_ms", "upstream_ms", "result",
    "reason", "sub", "client_id", "token_fp", "remote",
}  # fmt: skip


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    """JSON logs at debug level, as `gateway run --log-level debug` writes them."""
    configure_logging("json", "debug")
    yield
    structlog.reset_defaults()


def request_events(output: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == "request"]


async def test_an_allowed_request_is_logged_once_with_every_field_and_no_token(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    token = stack.issuer.token()
    async with stack.http.get(
        f"{stack.url}/orders/1?secret=query-value", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
    output = capsys.readouterr().out
    (event,) = request_events(output)
    assert event.keys() >= FIELDS
    assert event["path"] == "/orders/1"
    assert event["result"] == "allow"
    assert event["sub"] == "alice"
    assert event["token_fp"] == token_fingerprint(token)
    assert token not in output
    assert token.split(".")[2] not in output
    assert "query-value" not in output


async def test_a_denied_request_logs_its_reason_and_never_the_token_from_the_query(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    token = stack.issuer.token(scope="profile")
    async with stack.http.get(
        f"{stack.url}/orders/1?access_token={token}", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 400
    output = capsys.readouterr().out
    (event,) = request_events(output)
    assert event["result"] == "deny"
    assert event["reason"] == "invalid_request"
    assert token not in output
