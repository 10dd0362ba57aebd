"""The soak of bench/soak.py, short enough for the suite: 20 s of steady mixed traffic (valid
JWTs and opaque tokens, refusals of every kind) at a real ``gateway run`` process in front of the
real provider, with Redis as its shared cache and a reload (SIGHUP) every 5 s. The hour-scale
version is run by hand (bench/RESULTS.md); this one catches what a short run can: an unexpected
status, a reload that fails or drops a request, memory or file descriptors that grow.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc/PID/status and /proc/PID/fd", allow_module_level=True)

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
DURATION, RELOAD_EVERY, WARMUP = 20, 5, 5


def soak_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One short soak, through the script's own command line; its JSON report."""
    report = tmp_path_factory.mktemp("soak") / "soak.json"
    argv = [
        f"--duration={DURATION}",
        f"--reload-every={RELOAD_EVERY}",
        f"--warmup={WARMUP}",
        "--sample-every=1",
        "--rate=100",
        "--concurrency=8",
        "--redis",
        f"--json={report}",
    ]
    code = soak_module().main(argv)
    result: dict[str, Any] = json.loads(report.read_text())
    result["exit_status"] = code
    yield result


def test_the_soak_passes_its_own_judgement(soaked: dict[str, Any]) -> None:
    assert (soaked["exit_status"], soaked["failures"]) == (0, [])


def test_every_request_got_the_one_status_expected_for_its_kind(soaked: dict[str, Any]) -> None:
    assert soaked["unexpected"] == 0, soaked["examples"]
    expected = {"no_scope": "403", "jwt": "200", "opaque": "200", "public": "200"}
    for kind, statuses in soaked["statuses"].items():
        assert list(statuses) == [expected.get(kind, "401")], (kind, statuses)
    assert soaked["requests"] >= DURATION * 100 * 0.9


def test_every_reload_was_counted_ok(soaked: dict[str, Any]) -> None:
    assert soaked["reloads"] == {"ok": DURATION // RELOAD_EVERY, "error": 0}
    assert soaked["same_process"]


def test_resident_memory_is_flat_within_ten_percent_after_warm_up(soaked: dict[str, Any]) -> None:
    assert soaked["rss_start"] > 0
    assert soaked["rss_end"] <= soaked["rss_start"] * 1.10
    assert soaked["rss_max"] <= soaked["rss_start"] * 1.10


def test_open_file_descriptors_do_not_grow(soaked: dict[str, Any]) -> None:
    start, end = soaked["fds_start"], soaked["fds_end"]
    for kind in ("files", "unix", "listening", "other_tcp"):
        assert end.get(kind, 0) <= start.get(kind, 0), (kind, start, end)
    # Connections come and go with the load: never more of a kind than it can hold open.
    concurrency = soaked["options"]["concurrency"]
    for kind, bound in {"clients": concurrency + 2, "upstream": 2 * concurrency + 4}.items():
        assert soaked["fds_max"].get(kind, 0) <= bound, (kind, soaked["fds_max"])
    assert soaked["fds_max"].get("idp", 0) <= 34
    assert soaked["fds_max"].get("redis", 0) <= concurrency + 2
