"""Several worker processes, one view (SPEC §5): prometheus-client's multiprocess mode.

Worker processes here are real processes: plain Python scripts using ``Metrics``, two
``gateway run`` processes sharing one directory, and ``gateway run --workers 2`` (the
supervisor). The test process itself never switches multiprocess mode on (it is chosen at
import), so its own ``Metrics()`` stay independent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.observe.metrics import (
    MULTIPROC_ENV,
    Metrics,
    clear_multiprocess_dir,
    forget_process,
    multiprocess_exposition,
)
from tests.observe.metrics_text import value
from tests.observe.process import REPO, GatewayRun, gateway_run
from tests.support import echo_upstream

WAIT = 15.0

# A worker: counts, keeps a request in flight, reports its keys and readiness, then waits for
# its stdin to close (or, with "close", stops gracefully at once).
WORKER = """
import sys
from gateway.observe.metrics import Metrics
requests, keys, ready, how = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
metrics = Metrics()
metrics.requests.labels("orders", "GET", "200").inc(requests)
metrics.request_duration.labels("orders").observe(0.01)
metrics.inflight.inc()
metrics.jwks_keys.labels("corp").set(keys)
metrics.ready.set(ready)
if how == "close":
    metrics.close()
else:
    print("counted", flush=True)
    sys.stdin.readline()
"""


def start_worker(directory: Path, *args: object) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, *map(str, args)],
        cwd=REPO,
        env={**os.environ, MULTIPROC_ENV: str(directory)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "counted\n"
    return process


def finish(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=WAIT) == 0


@dataclass
class Views:
    both_live: str
    one_dead: str  # the first worker exited and nobody has said so yet
    forgotten: str  # forget_process() was called for it


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Views]:
    directory = tmp_path_factory.mktemp("multiproc")
    first = start_worker(directory, 3, 5, 0, "wait")
    second = start_worker(directory, 2, 4, 1, "wait")
    try:
        both_live = multiprocess_exposition(str(directory)).decode()
        finish(first)
        one_dead = multiprocess_exposition(str(directory)).decode()
        forget_process(first.pid, str(directory))
        forgotten = multiprocess_exposition(str(directory)).decode()
        yield Views(both_live, one_dead, forgotten)
    finally:
        for process in (first, second):
            if process.poll() is None:
                finish(process)


def requests(text: str) -> float:
    return value(text, "gateway_requests_total", route="orders", method="GET", code="200")


def test_counters_of_every_worker_are_summed(views: Views) -> None:
    assert requests(views.both_live) == 5


def test_histograms_of_every_worker_are_summed(views: Views) -> None:
    count = "gateway_request_duration_seconds_count"
    assert value(views.both_live, count, route="orders") == 2
    bucket = "gateway_request_duration_seconds_bucket"
    assert value(views.both_live, bucket, route="orders", le="0.01") == 2


def test_a_dead_workers_counters_and_histograms_stay_in_the_sums(views: Views) -> None:
    for view in (views.one_dead, views.forgotten):
        assert requests(view) == 5
        assert value(view, "gateway_request_duration_seconds_count", route="orders") == 2


def test_in_flight_requests_are_summed_over_live_workers_only(views: Views) -> None:
    assert value(views.both_live, "gateway_inflight_requests") == 2
    assert value(views.forgotten, "gateway_inflight_requests") == 1


def test_jwks_keys_are_the_largest_count_among_live_workers(views: Views) -> None:
    assert value(views.both_live, "gateway_jwks_keys", issuer="corp") == 5
    assert value(views.forgotten, "gateway_jwks_keys", issuer="corp") == 4


def test_readiness_is_the_lowest_among_live_workers(views: Views) -> None:
    assert value(views.both_live, "gateway_ready") == 0
    assert value(views.forgotten, "gateway_ready") == 1


def test_a_dead_workers_live_gauges_count_until_it_is_forgotten(views: Views) -> None:
    # Why whatever supervises workers must call forget_process() when one dies.
    assert value(views.one_dead, "gateway_inflight_requests") == 2


def test_a_worker_that_stops_gracefully_forgets_its_own_live_gauges(tmp_path: Path) -> None:
    closed = subprocess.run(
        [sys.executable, "-c", WORKER, "7", "9", "1", "close"],
        cwd=REPO,
        env={**os.environ, MULTIPROC_ENV: str(tmp_path)},
        timeout=WAIT,
        check=True,
    )
    assert closed.returncode == 0
    view = multiprocess_exposition(str(tmp_path)).decode()
    assert requests(view) == 7
    assert value(view, "gateway_inflight_requests") == 0
    assert "gateway_jwks_keys{" not in view


def test_without_the_variable_each_metrics_object_keeps_its_own_values() -> None:
    first, second = Metrics(), Metrics()
    assert first.multiprocess_dir is None
    first.requests.labels("orders", "GET", "200").inc()
    assert requests(first.exposition().decode()) == 1
    assert requests(second.exposition().decode()) == 0


def test_the_variable_set_after_prometheus_client_was_imported_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match=MULTIPROC_ENV):
        Metrics()


def test_clearing_the_directory_removes_only_metric_files(tmp_path: Path) -> None:
    for name in ("counter_1.db", "gauge_livesum_1.db", "histogram_2.db", "notes.txt", "other.db"):
        (tmp_path / name).write_text("x")
    clear_multiprocess_dir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other.db"]


# -- real gateway processes ------------------------------------------------------------------

STATUS_CONFIG = """\
routes:
  - name: status
    match: {{path: /status}}
    upstream: "{upstream}"
    auth: public
"""


async def scrape(http: aiohttp.ClientSession, run: GatewayRun) -> str:
    async with http.get(f"{run.admin_url}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def get_status(http: aiohttp.ClientSession, run: GatewayRun, times: int) -> None:
    for _ in range(times):
        async with http.get(f"{run.url}/status") as response:
            assert response.status == 200


def status_requests(text: str) -> float:
    return value(text, "gateway_requests_total", route="status", method="GET", code="200")


async def test_gateway_processes_sharing_the_directory_serve_one_view_that_outlives_one(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "metrics"
    env = {MULTIPROC_ENV: str(shared)}
    async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
        body = STATUS_CONFIG.format(upstream=upstream.url)
        async with (
            gateway_run(tmp_path, body, env=env, name="first") as first,
            gateway_run(tmp_path, body, env=env, name="second") as second,
        ):
            await get_status(http, first, 3)
            await get_status(http, second, 2)
            assert status_requests(await scrape(http, first)) == 5
            assert status_requests(await scrape(http, second)) == 5
            assert second.stop() == 0
            after = await scrape(http, first)
            assert status_requests(after) == 5
            # The stopped one forgot its own live gauges: readiness is the live one's.
            assert value(after, "gateway_ready") == 1
            assert value(after, "gateway_inflight_requests") == 0


def worker_pids(run: GatewayRun) -> list[int]:
    pids = []
    for line in run.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line still being written
            continue
        if event.get("event") == "worker_started":
            pids.append(int(event["pid"]))
    return pids


async def wait_for(condition: object, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_killed_and_restarted_worker_does_not_reset_the_supervisors_counts(
    tmp_path: Path, promtool: str
) -> None:
    async with echo_upstream() as upstream, aiohttp.ClientSession() as http:
        body = STATUS_CONFIG.format(upstream=upstream.url)
        async with gateway_run(tmp_path, body, ["--workers", "2"]) as supervisor:

            async def ready() -> bool:
                async with http.get(f"{supervisor.admin_url}/readyz") as response:
                    return response.status == 200

            await wait_for(ready, "the workers never became ready")
            await get_status(http, supervisor, 20)
            before = await scrape(http, supervisor)
            assert status_requests(before) == 20
            victim = worker_pids(supervisor)[0]
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                return len(worker_pids(supervisor)) == 3 and await ready()

            await wait_for(restarted, "the killed worker was not replaced")
            after = await scrape(http, supervisor)
            assert status_requests(after) == 20
            assert value(after, "gateway_inflight_requests") == 0
            checked = subprocess.run(
                [promtool, "check", "metrics"],
                input=after,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
