"""The access log: one JSON `request` event per request, every SPEC §7 field, never a token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.observe.logs import configure_logging, token_fingerprint
from tests.e2e.conftest import Stack
from tests.e2e.process import gateway_process
from tests.support import write_config

PROCESS_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
routes:
  - name: status
    match: {{path: /status}}
    upstream: http://127.0.0.1:9
    auth: public
"""

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


async def test_a_token_that_is_not_a_jwt_is_logged_by_its_fingerprint_too(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "opaque-token-without-a-dot"
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
    output = capsys.readouterr().out
    (event,) = request_events(output)
    assert event["result"] == "deny"
    assert event["token_fp"] == token_fingerprint(token)
    assert token not in output


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


async def test_a_request_the_http_parser_rejects_never_puts_its_token_in_the_logs(
    tmp_path: Path,
) -> None:
    """aiohttp quotes the raw header line of a request it cannot parse; the gateway's logs
    must not, even at debug level."""
    secret = "eyJTOKENSECRETPART.eyJpayload.c2lnbmF0dXJl"
    config = write_config(tmp_path, PROCESS_CONFIG)
    log = tmp_path / "gateway.log"
    async with gateway_process(config, log, ["--log-level", "debug"]) as gateway:
        for line in (
            f"Authorization: Bearer {secret}\x01",
            f"Authorization : Bearer {secret}",
            f"X-Note: {secret}\x7f",
        ):
            head = f"GET /status HTTP/1.1\r\nHost: gw\r\n{line}\r\n\r\n".encode("latin-1")
            host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            assert status_line.split()[1] == b"400"
    assert "TOKENSECRETPART" not in log.read_text(errors="replace")


async def test_a_token_refused_for_its_scopes_is_logged_with_its_subject(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    token = stack.issuer.token(scope="profile")
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 403
    (event,) = request_events(capsys.readouterr().out)
    assert (event["reason"], event["sub"], event["client_id"]) == (
        "insufficient_scope",
        "alice",
        "client-1",
    )
