"""Structured logs (SPEC §7): JSON lines on stdout by default, a console format for people.

Nothing here ever receives a token, an Authorization header, a secret or a query string: callers
log a token only as its fingerprint (:func:`token_fingerprint`).

Levels: ``debug`` adds detail (why a token was refused, in the words sent to the client);
``info`` (the default) has one ``request`` event per request and the lifecycle events
(``config_loaded``, ``started``, ``jwks_loaded``, ``config_reloaded``, ``shutdown``, ``stopped``);
``warning`` keeps only what needs a person (``jwks_fetch_failed``, ``introspection_failed``,
``config_reload_failed``, ...), so ``request`` lines are not written.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import select
import sys
import time
from typing import Any, Literal

import orjson
import structlog

from gateway.digest import token_digest

LogFormat = Literal["json", "console"]


# The lowest level written (everything until configure_logging says otherwise).
_min_level = logging.NOTSET


def enabled(level: int) -> bool:
    """Whether events of ``level`` are written: checked before building an event costs
    anything (the per-request log is most of a request's Python time when it is off)."""
    return level >= _min_level


# Whether events are JSON lines: then ``info_event`` writes them itself.
_json_lines = False


def info_event(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """Log an info ``event``: the per-request log's path. In JSON, the line structlog would
    write (the fields, then ``event``, ``level``, ``timestamp``) is made directly: its
    processor chain cost ~30 us a line, a third of a proxied request. (No context variables are
    bound anywhere in the gateway, so there is nothing to merge.) The line is written with the
    others of the same turn of the event loop (:class:`_HeldLines`)."""
    if not _json_lines:
        logger.info(event, **fields)
        return
    fields["event"] = event
    fields["level"] = "info"
    fields["timestamp"] = _timestamp()
    _held.add(json_line(fields))


def json_line(obj: Any, **kwargs: Any) -> str:
    """``obj`` as compact JSON in ASCII, for one log line. orjson writes it in a tenth of
    json.dumps's time (3 us a request line); what it cannot write (a lone surrogate, an integer
    past 64 bits) and text beyond ASCII, which it would write unescaped, go to json.dumps, which
    escapes it: a line in ASCII is written whatever stdout's encoding. ``kwargs``: json.dumps's
    (structlog passes ``default``)."""
    try:
        data = orjson.dumps(obj, default=kwargs.get("default"))
    except TypeError:
        data = None
    if data is not None and data.isascii():
        return data.decode("ascii")
    return json.dumps(obj, separators=(",", ":"), **kwargs)


# The UTC second last stamped, and its ISO 8601 text: formatted once a second, not a line.
_second: tuple[int, str] = (0, "")


def _timestamp() -> str:
    """Now in UTC as structlog's ISO stamp writes it (``2026-01-31T12:00:00.123456Z``)."""
    global _second
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int((now - second) * 1e6):06d}Z"


class _HeldLines:
    """Request lines written to stdout together once a turn of the event loop, rather than
    each with a flush of its own: under load one turn finishes several requests, and every flush
    is a system call (two with print() and stdout unbuffered). A line is held for the rest of
    its turn at most; any other log line writes those held first, so the order is kept; what is
    held at exit is written then. Without a running loop (a command, a test) a line is written
    at once.

    Each write is whole lines of at most ``PIPE_BUF`` bytes together (a longer line alone), as
    each line was when it had a write of its own: workers share their supervisor's stdout, and
    the kernel keeps a write to a pipe in one piece only up to that size."""

    def __init__(self) -> None:
        self._lines: list[str] = []  # each with its line end
        self._loop: asyncio.AbstractEventLoop | None = None  # where the flush is scheduled

    def add(self, line: str) -> None:
        self._lines.append(line + "\n")
        if self._loop is not None and self._loop.is_running():
            return  # this turn's flush is scheduled already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._loop = None
        lines, self._lines = self._lines, []
        # A line that cannot be written (stdout closed, a full pipe) must fail no request.
        try:
            start = size = 0
            for end, line in enumerate(lines):
                if size + len(line) > PIPE_BUF and end > start:
                    _write(lines[start:end])
                    start, size = end, 0
                size += len(line)
            if start < len(lines):
                _write(lines[start:])
        except (OSError, ValueError):
            pass


# Bytes the kernel writes to a pipe in one piece (POSIX: at least 512; Linux: 4096).
PIPE_BUF = getattr(select, "PIPE_BUF", 512)


def write_lines(lines: list[str]) -> None:
    """Write whole lines (each with its line end) to stdout in one write, after the request
    lines held back (so that the lines stay in order). ``sys.stdout`` is looked up each time,
    so a replaced stdout is followed."""
    _held.flush()
    _write(lines)


def _write(lines: list[str]) -> None:
    sys.stdout.write("".join(lines))
    sys.stdout.flush()


_held = _HeldLines()
atexit.register(_held.flush)


def _in_order(_logger: Any, _method: str, event_dict: Any) -> Any:
    """structlog processor: request lines held back are written before any other line."""
    _held.flush()
    return event_dict


def configure_logging(log_format: LogFormat = "json", level: str = "info") -> None:
    """Route structlog (and the standard library's logging) to stdout in the chosen format."""
    global _min_level, _json_lines
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _min_level = numeric
    _json_lines = log_format == "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=json_line)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamped: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            _in_order,
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # No file argument: sys.stdout is looked up for each line (the logger is not cached),
        # so a replaced stdout (tests, daemons) is followed. WriteLogger, not PrintLogger: a
        # line and its line end go in one write (print() makes two when stdout is unbuffered,
        # as PYTHONUNBUFFERED=1 in the image makes it, and another worker's line could land
        # between them).
        logger_factory=structlog.WriteLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # aiohttp's own loggers would print request lines with query strings: keep them quiet.
    logging.getLogger("aiohttp.access").disabled = True
    # aiohttp's server logger quotes the offending raw header line of a request it cannot parse
    # (an Authorization header with a stray control byte, say): that would put a token in the
    # logs. The gateway logs its own failures itself.
    logging.getLogger("aiohttp.server").disabled = True
    # Imported here: that module imports this one (write_lines).
    from gateway.observe.stdlib import StdoutHandler

    handler = StdoutHandler(level=max(numeric, logging.WARNING))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, StdoutHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)


def get_logger(name: str = "gateway") -> Any:
    return structlog.get_logger(name)


def token_fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: enough to correlate, useless to replay."""
    return digest_fingerprint(token_digest(token))


def digest_fingerprint(digest: bytes) -> str:
    """``token_fingerprint`` of a token from its SHA-256 ``digest``, already made."""
    return digest[:6].hex()
