"""``python -m gateway run`` as a subprocess on loopback ports chosen beforehand, with its stdout
and stderr kept apart, so that tests can read both whatever the log format or level (a run at
``warning`` level, or in console format, writes no JSON ``started`` line to find its ports in).
Stopped by its PID; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    """Loopback ports free now, all different (held open together while they are chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@dataclass
class GatewayRun:
    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait for the exit (SIGKILL past the timeout); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


@asynccontextmanager
async def gateway_run(
    directory: Path,
    config_body: str,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    name: str = "gateway",
) -> AsyncIterator[GatewayRun]:
    """Write ``config_body`` (without ``listen``/``admin``) with two free ports into
    ``directory/<name>.yaml``, run it, and yield once both listeners accept connections."""
    public, admin = free_ports(2)
    config = directory / f"{name}.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{public}"\nadmin: {{listen: "127.0.0.1:{admin}"}}\n' + config_body
    )
    stdout_path, stderr_path = directory / f"{name}.stdout", directory / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), *args],
            cwd=REPO,
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    run = GatewayRun(
        process, f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin}", stdout_path, stderr_path
    )
    try:
        await _wait_listening(run, public)
        yield run
    finally:
        run.stop()


async def _wait_listening(run: GatewayRun, public_port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as http:
        while True:
            assert run.process.poll() is None, f"the gateway exited:\n{run.stdout}\n{run.stderr}"
            assert time.monotonic() < deadline, f"the gateway did not start:\n{run.stdout}"
            try:
                async with http.get(f"{run.admin_url}/healthz") as response:
                    healthy = response.status == 200
                _, writer = await asyncio.open_connection("127.0.0.1", public_port)
                writer.close()
                if healthy:
                    return
            except (aiohttp.ClientConnectionError, OSError):
                pass
            await asyncio.sleep(0.05)
