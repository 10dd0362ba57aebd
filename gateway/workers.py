"""Several worker processes on one port (``workers: N``, ``--workers N``).

A supervisor starts N ``gateway run`` workers that share the public port with SO_REUSEPORT (the
kernel spreads connections among them), restarts any that dies, validates the configuration
before it forwards a reload (SIGHUP or ``--watch``) to them, and on SIGTERM/SIGINT stops them
all, each draining its requests. It serves the admin listener itself: one ``/metrics`` summed
over the workers (prometheus-client's multiprocess mode, which keeps a dead worker's counts),
and a ``/readyz`` that is ready only when every worker is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from gateway.admin import admin_app
from gateway.config import ConfigError, load_and_compile
from gateway.config.compile import CompiledConfig
from gateway.observe.logs import get_logger
from gateway.observe.metrics import forget_process, multiprocess_exposition
from gateway.server import Address, bound_port, reload_problems, watch_file

log = get_logger("gateway.workers")

RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0  # a worker that lived this long died of something else than its start


def cpu_count() -> int:
    """Worker count for ``workers: auto``: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Supervisor:
    """Starts, watches and stops the workers; serves the aggregated admin listener."""

    def __init__(
        self,
        compiled: CompiledConfig,
        config_path: str,
        workers: int,
        *,
        worker_args: Sequence[str] = (),
        watch: float | None = None,
    ) -> None:
        self.compiled = compiled
        self.config_path = config_path
        self.count = workers
        self._worker_args = list(worker_args)
        self._watch = watch
        self._state = Path(tempfile.mkdtemp(prefix="gateway-workers-"))
        self._metrics_dir = self._state / "metrics"
        self._ready_dir = self._state / "ready"
        self._metrics_dir.mkdir()
        self._ready_dir.mkdir()
        self._own = CollectorRegistry()
        self._reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads",
            ["result"],
            registry=self._own,
        )
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._started_at: dict[int, float] = {}
        self._quick_deaths = 0
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._port_reservation: socket.socket | None = None
        self.public_port = 0
        self.admin_port = 0

    # -- admin ------------------------------------------------------------------------------

    def not_ready(self) -> list[str]:
        if self._stopping:
            return ["shutting down"]
        ready = {int(p.stem) for p in self._ready_dir.glob("*.ready")}
        missing = [pid for pid in self._processes if pid not in ready]
        return [f"worker {pid}: not ready" for pid in missing] + (
            [f"{self.count - len(self._processes)} workers not running"]
            if len(self._processes) < self.count
            else []
        )

    def exposition(self) -> bytes:
        return multiprocess_exposition(str(self._metrics_dir)) + generate_latest(self._own)

    # -- workers ----------------------------------------------------------------------------

    def _reserve_port(self) -> int:
        """The public port, chosen here when the file says 0, so that all workers share it."""
        address = Address.parse(self.compiled.config.listen)
        if address.port != 0:
            return address.port
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        reservation = socket.socket(family, socket.SOCK_STREAM)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind((address.host, 0))  # bound, never listening: receives nothing
        self._port_reservation = reservation
        return int(reservation.getsockname()[1])

    async def _spawn(self) -> None:
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            self.config_path,
            "--worker-of",
            str(self._ready_dir),
            "--public-port",
            str(self.public_port),
            *self._worker_args,
            env=environment,
        )
        self._processes[process.pid] = process
        self._started_at[process.pid] = asyncio.get_running_loop().time()
        log.info("worker_started", pid=process.pid)
        if self._stopping:
            # Stopping began while this one was being made: it must not outlive the rest.
            process.send_signal(signal.SIGTERM)

    async def _watch_workers(self) -> None:
        """Restart any worker that exits while the gateway is not stopping."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            waits = {asyncio.ensure_future(p.wait()): pid for pid, p in self._processes.items()}
            if not waits:
                await asyncio.sleep(RESTART_DELAY)
                continue
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                pid = waits[task]
                self._processes.pop(pid, None)
                (self._ready_dir / f"{pid}.ready").unlink(missing_ok=True)
                forget_process(pid, str(self._metrics_dir))
                if self._stopping:
                    continue
                lived = loop.time() - self._started_at.pop(pid, 0.0)
                # A worker that dies young (a file broken since the last reload, say) is
                # restarted ever more slowly, up to MAX_RESTART_DELAY, not in a tight loop.
                self._quick_deaths = self._quick_deaths + 1 if lived < STABLE_AFTER else 0
                delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, self._quick_deaths - 1))
                log.warning("worker_exited", pid=pid, returncode=task.result(), restart_in=delay)
                await asyncio.sleep(delay)
                if not self._stopping:
                    await self._spawn()

    def _signal_workers(self, signum: int) -> None:
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def reload(self) -> bool:
        """Validate the file here first: a broken one is refused once, for all workers."""
        async with self._reload_lock:
            try:
                await asyncio.to_thread(load_and_compile, self.config_path)
            except (ConfigError, OSError) as error:
                self._reloads.labels("error").inc()
                log.error("config_reload_failed", problems=reload_problems(error, self.config_path))
                return False
            self._signal_workers(signal.SIGHUP)
            self._reloads.labels("ok").inc()
            log.info("config_reload_forwarded", workers=len(self._processes))
            return True

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        background: set[asyncio.Task[object]] = set()

        def reload() -> None:
            task: asyncio.Task[object] = asyncio.ensure_future(self.reload())
            background.add(task)
            task.add_done_callback(background.discard)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload)
        admin = Address.parse(self.compiled.config.admin.listen)
        app = admin_app(self.not_ready, self.exposition, offload=True)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, admin.host, admin.port).start()
        self.admin_port = bound_port(runner)
        self.public_port = self._reserve_port()
        for _ in range(self.count):
            await self._spawn()
        watcher = asyncio.ensure_future(self._watch_workers())
        if self._watch is not None:
            watcher_task = watch_file(Path(self.config_path), self._watch, self.reload)
            background.add(asyncio.ensure_future(watcher_task))
        log.info(
            "supervisor_started",
            workers=self.count,
            listen=f"{Address.parse(self.compiled.config.listen).host}:{self.public_port}",
            admin=f"{admin.host}:{self.admin_port}",
        )
        try:
            await stop.wait()
        finally:
            log.info("shutdown")
            self._stopping = True
            for task in list(background):
                task.cancel()
            await self._stop_workers()
            watcher.cancel()
            await runner.cleanup()
            if self._port_reservation is not None:
                self._port_reservation.close()
            shutil.rmtree(self._state, ignore_errors=True)
            log.info("stopped")

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker (each drains up to ``shutdown_timeout``), then wait."""
        self._signal_workers(signal.SIGTERM)
        grace = self.compiled.config.shutdown_timeout + 5.0
        waits = [p.wait() for p in self._processes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            self._signal_workers(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self._processes.values()))
