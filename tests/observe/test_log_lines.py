"""The request event is written without structlog's processor chain when logs are JSON; the
line must be the one structlog would have written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway.observe import logs
from gateway.observe.logs import configure_logging, get_logger, info_event, json_line

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


# -- how lines are made and written -----------------------------------------------------------

# What a log line's fields hold: text (lone surrogates included: a path or a claim may decode
# to one), integers of any size, finite floats, booleans and null.
FIELD_VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, categories=None))
)


@given(st.dictionaries(st.text(), FIELD_VALUES, max_size=20))
def test_a_log_line_is_one_line_of_ascii_json_that_reads_back_as_its_fields(
    fields: dict[str, object],
) -> None:
    line = json_line(fields)
    assert line.isascii()
    assert "\n" not in line and "\r" not in line
    assert json.loads(line) == fields


async def test_request_lines_are_written_by_the_end_of_their_turn_of_the_event_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    log = get_logger("gateway")
    info_event(log, "request", {"request_id": "r-1"})
    info_event(log, "request", {"request_id": "r-2"})
    await asyncio.sleep(0)
    assert [line["request_id"] for line in lines(capsys)] == ["r-1", "r-2"]


async def test_another_log_line_comes_after_the_request_lines_logged_before_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    log = get_logger("gateway")
    info_event(log, "request", {"request_id": "r-1"})
    log.warning("jwks_fetch_failed", issuer="corp")
    info_event(log, "request", {"request_id": "r-2"})
    await asyncio.sleep(0)
    events = [(line["event"], line.get("request_id")) for line in lines(capsys)]
    assert events == [("request", "r-1"), ("jwks_fetch_failed", None), ("request", "r-2")]


async def test_a_request_line_that_cannot_be_written_fails_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging("json", "info")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    failures: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: failures.append(context))
    info_event(get_logger("gateway"), "request", {"request_id": "r-1"})
    await asyncio.sleep(0)
    assert failures == []


def test_the_timestamp_is_utc_with_microseconds_as_structlog_writes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    before = datetime.now(UTC) - timedelta(seconds=1)
    info_event(get_logger("gateway"), "request", {"request_id": "r-1"})
    stamp = str(lines(capsys)[0]["timestamp"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= datetime.now(UTC)


class Writes(io.StringIO):
    """A stdout that keeps each write apart, as an unbuffered stdout makes each a system call
    (and as a pipe's reader may get them, between other writers' ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append(text)
        return len(text)


async def test_request_lines_are_written_whole_and_at_most_pipe_buf_bytes_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers share one pipe: a write over PIPE_BUF bytes could be cut into by another's."""
    configure_logging("json", "info")
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    log = get_logger("gateway")
    for n in range(40):
        info_event(log, "request", {"request_id": f"r-{n}", "path": "/" + "p" * 300})
    await asyncio.sleep(0)
    assert len(out.writes) > 1
    assert all(len(w) <= logs.PIPE_BUF and w.endswith("\n") for w in out.writes)
    written = [json.loads(line) for line in "".join(out.writes).splitlines()]
    assert [line["request_id"] for line in written] == [f"r-{n}" for n in range(40)]


def test_every_other_log_line_reaches_stdout_in_one_write_with_its_line_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With stdout unbuffered (PYTHONUNBUFFERED=1, as in the image), print() writes a line and
    its line end separately: another worker's line could land between them."""
    configure_logging("json", "info")
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    get_logger("gateway").warning("jwks_fetch_failed", issuer="corp")
    logging.getLogger("asyncio").error("a library's own error")
    assert len(out.writes) == 2
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in out.writes)
    assert json.loads(out.writes[0])["event"] == "jwks_fetch_failed"
