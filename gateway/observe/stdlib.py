"""The standard library's log records (aiohttp's, asyncio's) on stdout, rendered like the
gateway's own lines.

A module of its own, left plain Python: logs.py is compiled (setup.py), and a compiled class
deriving from ``logging.Handler`` crashed the process in the garbage collector (the logging
module keeps weak references to its handlers)."""

from __future__ import annotations

import logging

from gateway.observe.logs import write_lines


class StdoutHandler(logging.Handler):
    """Writes each record as one line on stdout, after any request lines held back."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_lines([self.format(record) + "\n"])  # one write, as every line
        except Exception:
            self.handleError(record)
