"""A real ``gateway run`` process for tests that need one: started on free loopback ports,
waited for until healthy, stopped by its PID.

With several workers (``workers: N``, ``--workers N``) the process started is the supervisor: it
logs ``supervisor_started`` (with the public and admin addresses) instead of ``started``, and its
workers log ``worker_started`` lines through it. Whatever the test leaves running is stopped
by PID when the context ends: the process, then any worker of it still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]
# The line that gives the addresses: a single process's, or a supervisor's. A worker's own
# `started` line names no admin listener (the supervisor serves it), so it never matches.
STARTED_EVENTS = ("started", "supervisor_started")


@dataclass
class GatewayProcess:
    pid: int
    url: str
    admin_url: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log: Path | None = None

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes: the resident size now and its peak so far."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines written so far (of the workers too), or those of one event."""
        return [e for e in _events(self.log) if name is None or e.get("event") == name]

    def worker_pids(self) -> list[int]:
        """Every worker the supervisor has started so far, in order (restarts included)."""
        return [int(e["pid"]) for e in self.events("worker_started")]

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited (``subprocess.TimeoutExpired`` if it
        has not within ``timeout`` seconds)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    async def exited(self, timeout: float) -> int:
        """Like :meth:`wait`, without blocking the event loop (the test's own servers, its
        upstreams, keep answering meanwhile)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            await asyncio.sleep(0.02)
        return code


def _events(log: Path | None) -> list[dict[str, Any]]:
    if log is None or not log.exists():
        return []
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _started_line(log: Path) -> dict[str, str] | None:
    for event in _events(log):
        if event.get("event") in STARTED_EVENTS and event.get("admin"):
            return dict(event)
    return None


@asynccontextmanager
async def gateway_process(
    config: Path,
    log: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway run`` on free loopback ports, stopped by its PID; its stdout and
    stderr go to ``log``. ``env`` adds to (or replaces in) the environment."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), *extra_args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    gateway: GatewayProcess | None = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (started := _started_line(log)) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.05)
        gateway = GatewayProcess(
            process.pid,
            f"http://{started['listen']}",
            f"http://{started['admin']}",
            process=process,
            log=log,
        )
        await _wait_healthy(gateway.admin_url, deadline)
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)  # nothing, if it has already exited
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        _kill_stray_workers(_events(log))


def _kill_stray_workers(events: list[dict[str, Any]]) -> None:
    """A supervisor that was killed (or failed) leaves its workers running: end them, by PID,
    checking first that the PID is still one of our workers and not a process started since."""
    for event in events:
        if event.get("event") != "worker_started":
            continue
        pid = int(event["pid"])
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone
        if b"--worker-of" in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _wait_healthy(admin_url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{admin_url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "the gateway never became healthy"
            await asyncio.sleep(0.05)
