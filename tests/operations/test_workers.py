"""Several worker processes (``workers: N | auto``, ``--workers``): they share the public port
(SO_REUSEPORT), a supervisor restarts one that dies, validates then forwards SIGHUP, stops them
all on SIGTERM, and serves one aggregated ``/metrics`` and a ``/readyz`` over every worker.

Which worker served a request is read where it cannot be faked: the upstream looks up, in
``/proc``, which worker process holds the other end of the connection the request came on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.process import GatewayProcess, gateway_process
from tests.operations.support import (
    Named,
    eventually,
    families_named,
    get_text,
    named_upstream,
    owner_lookup,
    pid_alive,
    run_load,
    sample,
    scrape,
    wait_for_events,
    write_atomically,
)
from tests.support import TokenIssuer

if not sys.platform.startswith("linux"):
    pytest.skip("SO_REUSEPORT load spreading and /proc are Linux's", allow_module_level=True)

WORKERS_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
workers: {workers}
shutdown_timeout: 5s
upstreams:
  a: {{url: "{a}"}}
routes:
  - name: api
    match: {{path: /api/**}}
    upstream: a
    auth: public
"""
NEW_ROUTE = """\
  - name: new
    match: {{path: /new/**}}
    upstream: a
    auth: public
"""
BROKEN_ROUTE = """\
  - name: new
    match: {{path: /new/**}}
    upstream: nowhere
    auth: public
"""
READY_WAIT = 10.0  # N workers importing the gateway at once, on two cores


@dataclass
class Site:
    a: Named
    config: Path
    log: Path
    state: Path  # the supervisor's TMPDIR: its state directory is made (and removed) here
    gateway: GatewayProcess | None = None

    def write(self, workers: str | int = 2, extra: str = "") -> None:
        write_atomically(self.config, WORKERS_CONFIG + extra, a=self.a.url, workers=workers)

    @asynccontextmanager
    async def run(self, extra_args: Sequence[str] = ()) -> AsyncIterator[GatewayProcess]:
        env = {"TMPDIR": str(self.state)}
        async with gateway_process(self.config, self.log, extra_args, env=env) as gateway:
            self.gateway = gateway
            yield gateway

    def owners(self, since: int = 0) -> Counter[int | None]:
        """How many requests each worker sent the upstream (from its ``since``-th on)."""
        return Counter(a.owner for a in self.a.arrivals[since:])


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with named_upstream("A") as a:
        state = tmp_path / "state"
        state.mkdir()
        site = Site(a, tmp_path / "gateway.yaml", tmp_path / "gateway.log", state)
        a.owner = owner_lookup(lambda: site.gateway)
        site.write()
        yield site


async def readyz(gateway: GatewayProcess) -> tuple[int, str]:
    return await get_text(f"{gateway.admin_url}/readyz")


async def all_ready(gateway: GatewayProcess) -> None:
    async def ready() -> bool:
        return (await readyz(gateway))[0] == 200

    await eventually(ready, "every worker ready", READY_WAIT)


async def spread(gateway: GatewayProcess, requests: int, path: str = "/api/x") -> list[int]:
    """``requests`` requests, each on a new connection; their statuses."""
    load = await run_load(
        lambda n: f"{gateway.url}{path}?n={n}",
        clients=4,
        stop=asyncio.Event(),
        max_seconds=20,
        max_requests=requests,
        fresh_connections=True,
    )
    assert len(load.outcomes) == requests
    return [o.status or 0 for o in load.outcomes]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize(
    ("in_file", "args"),
    [(2, []), (1, ["--workers", "2"]), (1, ["--workers", "auto"])],
    ids=["workers-2-in-the-file", "workers-flag-2", "workers-flag-auto"],
)
async def test_n_workers_share_the_public_port_and_every_one_serves_requests(
    site: Site, in_file: int, args: list[str]
) -> None:
    expected = len(os.sched_getaffinity(0)) if "auto" in args else 2
    if expected < 2:
        pytest.skip("one CPU: auto means a single process, without a supervisor")
    site.write(workers=in_file)
    async with site.run(args) as gateway:
        await all_ready(gateway)
        workers = gateway.worker_pids()
        assert len(workers) == expected
        assert all(parent_of(pid) == gateway.pid for pid in workers)

        statuses = await spread(gateway, 40 * expected)

        assert set(statuses) == {200}
        assert set(site.owners()) == set(workers), site.owners()


async def test_a_worker_killed_with_sigkill_is_replaced_and_requests_keep_succeeding(
    site: Site,
) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        victim, survivor = gateway.worker_pids()

        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: not pid_alive(victim), "the worker gone")
        statuses = await spread(gateway, 40)  # while it is being replaced
        replacement = (await wait_for_events(gateway, "worker_started", 3))[2]
        await all_ready(gateway)
        served_before = len(site.a.arrivals)
        statuses += await spread(gateway, 40)

        assert set(statuses) == {200}
        [exited] = gateway.events("worker_exited")
        assert (exited["pid"], exited["returncode"]) == (victim, -signal.SIGKILL)
        assert replacement["pid"] not in (victim, survivor)
        assert set(site.owners(served_before)) == {survivor, replacement["pid"]}


async def test_readyz_is_503_while_a_worker_is_gone_and_200_once_it_is_replaced(
    site: Site,
) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        victim = gateway.worker_pids()[0]

        os.kill(victim, signal.SIGKILL)

        async def not_ready() -> bool:
            return (await readyz(gateway))[0] == 503

        await eventually(not_ready, "/readyz 503", timeout=2.0)
        status, body = await readyz(gateway)
        await all_ready(gateway)
        assert status == 503
        assert any(str(victim) in r or "not running" in r for r in json.loads(body)), body
        assert len(gateway.worker_pids()) == 3


@dataclass
class GatedJwks:
    """A JWKS endpoint that answers only when the test lets a request through."""

    issuer: TokenIssuer
    url: str = ""
    waiting: int = 0
    permits: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    open: bool = False


@asynccontextmanager
async def gated_jwks(issuer: TokenIssuer) -> AsyncIterator[GatedJwks]:
    gate = GatedJwks(issuer)

    async def jwks(request: web.BaseRequest) -> web.StreamResponse:
        if not gate.open:
            gate.waiting += 1
            try:
                await asyncio.wait_for(gate.permits.get(), 4.0)  # the gateway waits 5 s
            finally:
                gate.waiting -= 1
        return web.json_response(gate.issuer.jwks)

    server = web.Server(jwks)
    runner = web.ServerRunner(server, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    gate.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    try:
        yield gate
    finally:
        await runner.cleanup()


ISSUER = """\
issuers:
  corp:
    issuer: https://issuer.test
    jwks_uri: {jwks}
    audiences: [https://api.example.test]
"""


async def test_readyz_is_503_until_every_worker_is_ready(site: Site) -> None:
    """Each worker is ready once it has its issuer's keys; the keys are handed out one worker
    at a time."""
    async with gated_jwks(TokenIssuer()) as gate:
        write_atomically(
            site.config, ISSUER + WORKERS_CONFIG, jwks=gate.url, a=site.a.url, workers=2
        )
        async with site.run() as gateway:
            await eventually(lambda: gate.waiting == 2, "both workers asking for keys", READY_WAIT)
            assert (await readyz(gateway))[0] == 503

            gate.permits.put_nowait(None)
            await wait_for_events(gateway, "started", 1)  # a worker has its keys and listens
            status, body = await readyz(gateway)
            assert status == 503
            [reason] = json.loads(body)  # the other one
            assert reason in {f"worker {pid}: not ready" for pid in gateway.worker_pids()}

            gate.open = True
            gate.permits.put_nowait(None)
            await all_ready(gateway)


async def test_the_admin_listener_serves_one_metrics_view_summed_over_the_workers(
    site: Site,
) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)

        assert set(await spread(gateway, 60)) == {200}

        per_worker = site.owners()
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
        text = await scrape(gateway.admin_url)
        assert sample(text, "gateway_requests_total", route="api", code="200") == 60
        for name in ("gateway_requests_total", "gateway_config_reloads_total"):
            assert families_named(text, name) == 1, f"{name} declared more than once"


async def test_a_killed_workers_counts_stay_in_the_aggregated_metrics(site: Site) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        assert set(await spread(gateway, 40)) == {200}
        served = site.owners()
        assert set(served) == set(gateway.worker_pids())  # both served some
        victim = gateway.worker_pids()[0]

        os.kill(victim, signal.SIGKILL)
        await wait_for_events(gateway, "worker_started", 3)
        await all_ready(gateway)
        assert set(await spread(gateway, 20)) == {200}

        # 40 + 20, the victim's share of the 40 included.
        text = await scrape(gateway.admin_url)
        assert sample(text, "gateway_requests_total", route="api", code="200") == 60


async def test_sighup_to_the_supervisor_reloads_every_worker(site: Site) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        workers = set(gateway.worker_pids())

        site.write(extra=NEW_ROUTE)
        gateway.send_signal(signal.SIGHUP)
        await wait_for_events(gateway, "config_reloaded", 2)  # one a worker

        assert set(await spread(gateway, 40, "/new/x")) == {200}
        assert set(site.owners()) == workers
        text = await scrape(gateway.admin_url)
        assert sample(text, "gateway_config_reloads_total", result="ok") == 1  # once, not twice


async def test_watch_under_a_supervisor_reloads_every_worker(site: Site) -> None:
    async with site.run(["--watch", "0.05"]) as gateway:
        await all_ready(gateway)

        site.write(extra=NEW_ROUTE)
        await wait_for_events(gateway, "config_reloaded", 2)

        assert set(await spread(gateway, 40, "/new/x")) == {200}
        assert set(site.owners()) == set(gateway.worker_pids())


async def test_a_broken_file_on_sighup_is_refused_once_by_the_supervisor(site: Site) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)

        site.write(extra=BROKEN_ROUTE)
        gateway.send_signal(signal.SIGHUP)
        [failed] = await wait_for_events(gateway, "config_reload_failed", 1)
        await asyncio.sleep(0.3)  # time for a worker to have (wrongly) tried too

        assert "routes[1].upstream" in failed["problems"][0]
        assert len(gateway.events("config_reload_failed")) == 1
        assert gateway.events("config_reloaded") == []
        text = await scrape(gateway.admin_url)
        assert sample(text, "gateway_config_reloads_total", result="error") == 1
        assert sample(text, "gateway_config_reloads_total", result="ok") == 0
        assert set(await spread(gateway, 40)) == {200}  # the old routes, on both workers
        assert set(site.owners()) == set(gateway.worker_pids())


async def test_sigterm_to_the_supervisor_stops_every_worker_and_exits_0(site: Site) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        workers = gateway.worker_pids()
        slow = asyncio.ensure_future(get_text(f"{gateway.url}/api/slow?sleep=1"))
        await asyncio.wait_for(site.a.arrived.wait(), 5)

        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        code = await gateway.exited(10)

        assert code == 0
        assert time.monotonic() - signalled < 5.0
        assert await asyncio.wait_for(slow, 5) == (200, "A")  # drained, not cut
        assert [pid for pid in workers if pid_alive(pid)] == []
        assert list(site.state.iterdir()) == []  # its state directory removed
        assert len(gateway.events("stopped")) == 1 + len(workers)


async def test_sigterm_while_a_worker_is_being_replaced_leaves_nothing_running(
    site: Site,
) -> None:
    async with site.run() as gateway:
        await all_ready(gateway)
        victim, survivor = gateway.worker_pids()

        os.kill(victim, signal.SIGKILL)
        await wait_for_events(gateway, "worker_exited", 1)  # its replacement is 0.5 s away
        gateway.send_signal(signal.SIGTERM)

        assert await gateway.exited(10) == 0
        assert gateway.worker_pids() == [victim, survivor]  # none started while stopping
        assert not pid_alive(survivor)
