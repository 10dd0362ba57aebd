"""A real ``gateway run`` process for tests that need one: started on free loopback ports,
waited for until healthy, stopped by its PID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

START_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewayProcess:
    pid: int
    url: str
    admin_url: str

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes: the resident size now and its peak so far."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]


def _started_line(log: Path) -> dict[str, str] | None:
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "started":
            return dict(event)
    return None


@asynccontextmanager
async def gateway_process(
    config: Path, log: Path, extra_args: Sequence[str] = ()
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway run`` on free loopback ports, stopped by its PID; its stdout and
    stderr go to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), *extra_args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (started := _started_line(log)) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.05)
        gateway = GatewayProcess(
            process.pid, f"http://{started['listen']}", f"http://{started['admin']}"
        )
        await _wait_healthy(gateway.admin_url, deadline)
        yield gateway
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


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
