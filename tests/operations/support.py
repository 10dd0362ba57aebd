"""Building blocks for the operations tests (SPEC §8): configurations written atomically, named
upstreams that can be slow or stream, bounded load loops, scrapes of ``/metrics``, and which
worker process owns a connection (read from ``/proc``).

Every wait here is bounded in time, every loop in time and in count.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.process import GatewayProcess
from tests.e2e.wire import CountingUpstream, http_upstream

WAIT = 5.0  # the longest any single condition is waited for
POLL = 0.02


def write_atomically(path: Path, text: str, **values: Any) -> Path:
    """Write ``text`` (dedented, ``str.format``-ed with ``values``) in one step, so that a
    ``--watch`` poll never reads half a file."""
    body = textwrap.dedent(text).format(**values)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(body)
    os.replace(temporary, path)
    return path


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    what: str,
    timeout: float = WAIT,
) -> float:
    """Wait until ``check()`` is true; return how long it took (fail after ``timeout``)."""
    started = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"timed out waiting for: {what}"
        await asyncio.sleep(POLL)


async def wait_for_events(gateway: GatewayProcess, name: str, count: int) -> list[dict[str, Any]]:
    """Wait until the log holds at least ``count`` lines of event ``name``."""
    await eventually(lambda: len(gateway.events(name)) >= count, f"{count} x {name}")
    return gateway.events(name)


# -- upstreams ----------------------------------------------------------------------------------


@dataclass
class Arrival:
    """One request as an upstream saw it: when it arrived, what it asked for, and (with an
    ``owner`` lookup) which gateway process sent it."""

    at: float
    path_qs: str
    owner: int | None = None


@dataclass
class Named:
    """A loopback upstream that answers its own ``name``; ``?sleep=S`` first waits S seconds;
    ``?chunks=N&every=S`` streams N chunks of ``name``, S seconds apart; a POST is read to its
    end and answered ``name:bytes``."""

    name: str
    server: CountingUpstream = field(default_factory=CountingUpstream)
    arrivals: list[Arrival] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    owner: Callable[[web.BaseRequest], int | None] | None = None

    @property
    def url(self) -> str:
        return self.server.url


@asynccontextmanager
async def named_upstream(name: str) -> AsyncIterator[Named]:
    upstream = Named(name)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        owner = upstream.owner(request) if upstream.owner is not None else None
        upstream.arrivals.append(Arrival(time.monotonic(), request.path_qs, owner))
        upstream.arrived.set()
        if request.method == "POST":
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
            return web.Response(text=f"{name}:{size}")
        if "sleep" in request.query:
            await asyncio.sleep(float(request.query["sleep"]))
        if "chunks" in request.query:
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            for index in range(int(request.query["chunks"])):
                if index:
                    await asyncio.sleep(float(request.query.get("every", "0.1")))
                await response.write(f"{name}{index};".encode())
            await response.write_eof()
            return response
        return web.Response(text=name)

    async with http_upstream(handle) as server:
        upstream.server = server
        yield upstream


@dataclass
class WsEcho:
    url: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def ws_echo_upstream() -> AsyncIterator[WsEcho]:
    """A WebSocket server on loopback that echoes text messages."""
    upstream = WsEcho()

    async def chat(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo: {message.data}")
        upstream.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    number: int
    started: float
    finished: float
    status: int | None  # None: no response (the error says why)
    body: str = ""
    error: str = ""


@dataclass
class Load:
    """What a bounded load loop saw."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def bodies(self) -> set[str]:
        return {o.body for o in self.outcomes if o.status == 200}


async def run_load(
    url: Callable[[int], str],
    *,
    clients: int,
    stop: asyncio.Event,
    max_seconds: float,
    max_requests: int,
    fresh_connections: bool = False,
    headers: dict[str, str] | None = None,
) -> Load:
    """``clients`` concurrent clients, each sending GET ``url(n)`` one after another until
    ``stop`` is set, ``max_seconds`` have passed or ``max_requests`` (in all) have been sent.
    ``fresh_connections``: a new TCP connection for every request (so that the kernel spreads
    them over the processes sharing the port)."""
    load = Load()
    deadline = time.monotonic() + max_seconds
    numbers = iter(range(max_requests))
    timeout = aiohttp.ClientTimeout(total=WAIT * 2)
    connector = aiohttp.TCPConnector(force_close=fresh_connections, limit=clients)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def client() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                number = next(numbers, None)
                if number is None:
                    return
                started = time.monotonic()
                try:
                    async with http.get(url(number), headers=headers) as response:
                        body = await response.text()
                        outcome = Outcome(number, started, time.monotonic(), response.status, body)
                except (aiohttp.ClientError, TimeoutError) as error:
                    outcome = Outcome(number, started, time.monotonic(), None, error=repr(error))
                load.outcomes.append(outcome)

        await asyncio.gather(*(client() for _ in range(clients)))
    return load


async def get_text(url: str, *, fresh: bool = True, **kwargs: Any) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(force_close=fresh)
    timeout = aiohttp.ClientTimeout(total=WAIT * 2)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.get(url, **kwargs) as response,
    ):
        return response.status, await response.text()


# -- metrics ------------------------------------------------------------------------------------


async def scrape(admin_url: str) -> str:
    status, text = await get_text(f"{admin_url}/metrics")
    assert status == 200, text
    return text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent); ``labels`` must all match, others may vary and
    are summed over."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def families_named(text: str, name: str) -> int:
    """How many metric families of this name the exposition declares (one, in a valid one)."""
    return sum(1 for line in text.splitlines() if line.startswith(f"# TYPE {name} "))


# -- which process owns a connection (Linux) ----------------------------------------------------


def _tcp_sockets() -> Iterable[tuple[int, int, int]]:
    """(local port, remote port, inode) of every TCP socket on this machine's loopback."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            yield int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), inode


def connection_owner(local_port: int, remote_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the TCP socket from ``local_port`` to ``remote_port``."""
    inodes = {i for lp, rp, i in _tcp_sockets() if lp == local_port and rp == remote_port}
    wanted = {f"socket:[{inode}]" for inode in inodes if inode}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return pid
            except OSError:
                continue
    return None


def owner_lookup(
    gateway: Callable[[], GatewayProcess | None],
) -> Callable[[web.BaseRequest], int | None]:
    """For an upstream: which worker of ``gateway()`` sent this request (its connection's
    other end is a socket one worker holds)."""

    def owner(request: web.BaseRequest) -> int | None:
        process = gateway()
        if process is None or request.transport is None:
            return None
        peer_port = request.transport.get_extra_info("peername")[1]
        own_port = request.transport.get_extra_info("sockname")[1]
        return connection_owner(peer_port, own_port, process.worker_pids())

    return owner


def pid_alive(pid: int) -> bool:
    """Whether any thread of process ``pid`` still runs (a zombie, exited but not yet reaped,
    does not count).

    Every thread counts, not just the first: a worker has libuv's pool threads beside it, and
    when SIGKILL ends them all, the first can be a zombie while the others are still exiting.
    The process's files, its listening socket among them, close only when the last one has
    gone; until then the kernel still sends it new connections, and resets them as it closes.
    """
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    return any(_thread_state(thread) not in (None, "Z") for thread in threads)


def _thread_state(thread: Path) -> str | None:
    """A thread's state letter from ``/proc/PID/task/TID/stat``; None once it is gone."""
    try:
        return (thread / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
