"""The request event is written without structlog's processor chain when logs are JSON; the
line must be the one structlog would have written."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from gateway.observe import logs
from gateway.observe.logs import configure_logging, get_logger, info_event

FIELDS = {
    "request_id": "r-1",
    "method": "GET",
    "path": "/orders/\u00e9",
    "status": 200,
    "duration_ms": 1.25,
    "upstream_ms": None,
    "sub": "alice",
}


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """Each test configures logging its own way; the rest of the suite gets back what it had."""
    saved = structlog.get_config(), logs._min_level, logs._json_lines
    yield
    structlog.configure(**saved[0])
    logs._min_level, logs._json_lines = saved[1], saved[2]


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_the_direct_json_line_is_the_line_structlog_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    log = get_logger("gateway")
    info_event(log, "request", dict(FIELDS))
    log.info("request", **FIELDS)
    direct, through_structlog = lines(capsys)
    assert list(direct) == list(through_structlog)  # same keys, same order
    assert direct.pop("timestamp") <= through_structlog.pop("timestamp")
    assert direct == through_structlog


def test_the_console_format_still_goes_through_structlog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("console", "info")
    info_event(get_logger("gateway"), "request", dict(FIELDS))
    out = capsys.readouterr().out
    assert "request" in out and "request_id=r-1" in out and not out.startswith("{")
