"""W3C Trace Context: ``traceparent`` and ``tracestate`` reach the upstream unchanged, and the
request's log line carries the trace id of a valid ``traceparent`` (and nothing of an invalid
one)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import structlog

from gateway.observe.logs import configure_logging
from gateway.observe.trace import trace_id
from tests.support import Upstream, echo_upstream, running_gateway, write_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


PUBLIC_CONFIG = """\
routes:
  - name: status
    match: {{path: /status}}
    upstream: "{upstream}"
    auth: public
"""


@dataclass
class Stack:
    url: str
    upstream: Upstream
    http: aiohttp.ClientSession


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with echo_upstream() as upstream:
        config = write_config(tmp_path, PUBLIC_CONFIG, upstream=upstream.url)
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway.url, upstream, http)


@pytest.fixture(autouse=True)
def json_logs() -> Iterator[None]:
    configure_logging("json", "info")
    yield
    structlog.reset_defaults()


def request_line(output: str) -> dict[str, object]:
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (event,) = [e for e in events if e.get("event") == "request"]
    return event


async def test_traceparent_and_tracestate_reach_the_upstream_unchanged(stack: Stack) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    async with stack.http.get(f"{stack.url}/status", headers=headers) as response:
        assert response.status == 200
    (received,) = stack.upstream.received
    forwarded = [(n.lower(), v) for n, v in received.headers if n.lower().startswith("trace")]
    assert forwarded == [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]


async def test_the_request_line_carries_the_trace_id(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async with stack.http.get(f"{stack.url}/status", headers={"traceparent": TRACEPARENT}):
        pass
    assert request_line(capsys.readouterr().out)["trace_id"] == TRACE


async def test_an_invalid_traceparent_is_forwarded_but_never_logged(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    invalid = "00-NOT-A-TRACE-secretish-value"
    async with stack.http.get(f"{stack.url}/status", headers={"traceparent": invalid}):
        pass
    output = capsys.readouterr().out
    assert request_line(output)["trace_id"] is None
    assert "secretish" not in output
    (received,) = stack.upstream.received
    assert ("traceparent", invalid) in [(n.lower(), v) for n, v in received.headers]


async def test_a_request_without_traceparent_logs_no_trace_id(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async with stack.http.get(f"{stack.url}/status"):
        pass
    assert request_line(capsys.readouterr().out)["trace_id"] is None


def test_a_valid_version_00_traceparent_gives_its_trace_id() -> None:
    assert trace_id([TRACEPARENT]) == TRACE


def test_a_later_version_may_carry_more_fields_after_a_dash() -> None:
    assert trace_id([f"01-{TRACE}-00f067aa0ba902b7-01-extra"]) == TRACE


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # uppercase hex
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # forbidden version
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
        f"01-{TRACE}-00f067aa0ba902b7-01x",  # a later version's extra fields follow a dash
        f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",  # short trace id
        f"00_{TRACE}_00f067aa0ba902b7_01",
        "",
    ],
)
def test_an_invalid_traceparent_gives_no_trace_id(value: str) -> None:
    assert trace_id([value]) is None


def test_two_traceparent_headers_give_no_trace_id() -> None:
    assert trace_id([TRACEPARENT, TRACEPARENT]) is None
