"""SPEC §7 logs, read from real ``gateway run`` processes: JSON lines on stdout by default, a
console format for people, levels, lifecycle events, and never a secret."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from gateway.observe.logs import configure_logging
from tests.observe.logged_run import LoggedRun, logged_run
from tests.support import TokenIssuer

SPEC_FIELDS = {
    "request_id", "method", "path", "route", "status", "duration_ms", "upstream_ms", "result",
    "reason", "sub", "client_id", "token_fp", "remote",
}  # fmt: skip
EXPECTED_STATUSES = [200, 400, 400, 200, 503, 403]


def run_with(factory: pytest.TempPathFactory, *args: str) -> LoggedRun:
    return asyncio.run(logged_run(factory.mktemp("logs"), TokenIssuer(), args))


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return run_with(tmp_path_factory, "--log-level", "debug")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return run_with(tmp_path_factory)


@pytest.fixture(scope="module")
def console_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return run_with(tmp_path_factory, "--log-format", "console")


@pytest.fixture(scope="module")
def warning_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return run_with(tmp_path_factory, "--log-level", "warning")


# -- never a secret ---------------------------------------------------------------------------


def test_the_runs_got_the_answers_they_were_written_for(
    debug_run: LoggedRun, default_run: LoggedRun
) -> None:
    assert debug_run.statuses == EXPECTED_STATUSES
    assert default_run.statuses == EXPECTED_STATUSES
    assert debug_run.exit_status == default_run.exit_status == 0


def test_no_token_secret_or_query_string_is_in_stdout_or_stderr_at_debug_level(
    debug_run: LoggedRun,
) -> None:
    for output in (debug_run.stdout, debug_run.stderr):
        for secret in debug_run.secrets:
            assert secret not in output
        assert "access_token" not in output
        assert "?" not in output


def test_the_debug_run_did_log_the_failing_introspection_and_every_request(
    debug_run: LoggedRun,
) -> None:
    # The scan above means something only if the lines that could leak were written.
    assert debug_run.named("introspection_failed")
    assert len(debug_run.named("request")) == len(EXPECTED_STATUSES)
    assert debug_run.named("denied")


# -- the request line -------------------------------------------------------------------------


def test_each_request_is_logged_once_with_every_spec_field(default_run: LoggedRun) -> None:
    lines = default_run.named("request")
    assert [line["status"] for line in lines] == EXPECTED_STATUSES
    for line in lines:
        assert line.keys() >= SPEC_FIELDS
        assert line["path"] in ("/orders/1", "/opaque/1")


def test_the_token_fingerprint_finds_the_log_line_of_a_users_request(
    default_run: LoggedRun,
) -> None:
    # What an operator does with a token a user shows them: hash it, search the logs.
    fingerprint = hashlib.sha256(default_run.allowed_token.encode()).hexdigest()[:12]
    (line,) = [e for e in default_run.named("request") if e.get("token_fp") == fingerprint]
    assert line["request_id"] == default_run.allowed_request_id
    assert line["sub"] == "alice"
    assert line["client_id"] == "client-1"


def test_the_request_line_carries_the_trace_id_of_a_valid_traceparent(
    default_run: LoggedRun,
) -> None:
    (line,) = [e for e in default_run.named("request") if e.get("trace_id")]
    assert line["trace_id"] == default_run.trace_id
    assert line["request_id"] == default_run.allowed_request_id


def test_an_invalid_traceparent_is_neither_a_trace_id_nor_logged(default_run: LoggedRun) -> None:
    (line,) = [
        e for e in default_run.named("request") if e["request_id"] == default_run.denied_request_id
    ]
    assert line["trace_id"] is None
    assert default_run.invalid_traceparent not in default_run.stdout


# -- formats ----------------------------------------------------------------------------------


def test_logs_are_json_lines_on_stdout_by_default(default_run: LoggedRun) -> None:
    lines = default_run.stdout.splitlines()
    assert lines
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert default_run.stderr == ""


def test_the_console_format_writes_readable_lines_on_stdout(console_run: LoggedRun) -> None:
    lines = [line for line in console_run.stdout.splitlines() if " request " in line]
    assert len(lines) == len(EXPECTED_STATUSES)
    for line in lines:
        assert not line.startswith("{")
        assert "\x1b[" not in line  # no colour codes in a file or a pipe
        assert re.search(r"\bstatus=\d{3}\b", line)
        assert re.search(r"\bpath=/(orders|opaque)/1\b", line)
    assert console_run.stderr == ""


def test_the_console_format_keeps_secrets_out_too(console_run: LoggedRun) -> None:
    for secret in console_run.secrets:
        assert secret not in console_run.stdout + console_run.stderr


def test_standard_library_log_records_are_json_lines_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        configure_logging("json", "info")
        logging.getLogger("some.library").warning("disk %s is full", "/var")
    finally:
        structlog.reset_defaults()
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["event"] == "disk /var is full"
    assert line["level"] == "warning"
    assert line["logger"] == "some.library"


# -- levels -----------------------------------------------------------------------------------


def test_debug_level_adds_why_each_token_was_refused(debug_run: LoggedRun) -> None:
    (detail,) = [e for e in debug_run.named("denied") if e["reason"] == "insufficient_scope"]
    assert detail["request_id"] == debug_run.denied_request_id
    assert detail["detail"]


def test_info_level_has_request_lines_but_no_debug_detail(default_run: LoggedRun) -> None:
    assert default_run.named("request")
    assert not default_run.named("denied")
    assert {e["level"] for e in default_run.events} <= {"info", "warning", "error"}


def test_warning_level_hides_request_lines_and_keeps_warnings(warning_run: LoggedRun) -> None:
    assert warning_run.statuses == EXPECTED_STATUSES
    assert not warning_run.named("request")
    assert not warning_run.named("started")
    assert warning_run.named("jwks_fetch_failed")
    assert warning_run.named("introspection_failed")
    assert {e["level"] for e in warning_run.events} <= {"warning", "error"}


# -- lifecycle --------------------------------------------------------------------------------


def test_the_started_line_says_whether_the_request_path_runs_compiled(
    default_run: LoggedRun,
) -> None:
    import gateway.proxy

    (started,) = default_run.named("started")
    assert started["compiled"] is str(gateway.proxy.__file__).endswith(".so")


def test_lifecycle_events_are_logged_each_as_its_own_event_in_order(default_run: LoggedRun) -> None:
    names = [e["event"] for e in default_run.events]
    lifecycle = [
        "config_loaded", "jwks_loaded", "jwks_fetch_failed", "started", "introspection_failed",
        "shutdown", "stopped",
    ]  # fmt: skip
    positions = [names.index(name) for name in lifecycle]
    assert positions[:1] + sorted(positions[1:3]) + positions[3:] == sorted(positions)


def test_config_loaded_counts_routes_issuers_and_upstreams(default_run: LoggedRun) -> None:
    (loaded,) = default_run.named("config_loaded")
    assert (loaded["routes"], loaded["issuers"], loaded["upstreams"]) == (2, 3, 1)


def test_jwks_events_name_the_issuer(default_run: LoggedRun) -> None:
    (loaded,) = default_run.named("jwks_loaded")
    assert (loaded["issuer"], loaded["keys"]) == ("corp", 3)
    assert {e["issuer"] for e in default_run.named("jwks_fetch_failed")} == {"down"}


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
