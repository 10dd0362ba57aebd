"""How long the garbage collector holds the event loop while the gateway fills its token cache,
with the heap as ``gateway run`` settles it at start (``gc.freeze``: gateway/server.py's
``collect_and_freeze``) and without, in one run.

    python bench/heap.py               # 10,000 requests, each with a token never seen before
    python bench/heap.py --quick       # 2,000: a smoke run

Each mode runs in a fresh process: the in-process gateway of ``bench/callgrind.py`` (compare.py's
configuration, its RS256 route, a real loopback connection, a fixed upstream), sent RS256 tokens
it has not seen, so that every request leaves a verified token in its cache (10,000 entries at
most): the objects that live on, which are what makes the collector walk the whole heap. Every
collection made while those requests run is timed (``gc.callbacks``); the full ones
(generation 2) are those that walk everything not hidden from the collector. Ratios are
against the unsettled run. Loopback only; every run bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import callgrind  # noqa: E402

RUN_TIMEOUT = 600  # seconds, one mode's process


class Pauses:
    """Collections timed by generation, while ``measuring``."""

    def __init__(self) -> None:
        self.measuring = False
        self.started = 0.0
        self.by_generation: dict[int, list[float]] = {0: [], 1: [], 2: []}
        gc.callbacks.append(self._callback)

    def mark(self) -> None:
        self.measuring = not self.measuring

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        elif self.measuring:
            self.by_generation[info["generation"]].append(time.perf_counter() - self.started)


def child(mode: str, workdir: Path, requests: int) -> None:
    """One mode, in this process: its figures as JSON on stdout."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    pauses = Pauses()
    target = callgrind.BY_KEY["rs256-cold"]
    started = time.perf_counter()
    asyncio.run(
        callgrind.drive(target, workdir, requests, 50, pauses.mark, settle_heap=mode == "settled")
    )
    full = pauses.by_generation[2]
    young = pauses.by_generation[0] + pauses.by_generation[1]
    print(
        json.dumps(
            {
                "full": len(full),
                "full_ms": 1000 * sum(full),
                "longest_ms": 1000 * max(full, default=0.0),
                "young": len(young),
                "young_ms": 1000 * sum(young),
                "frozen": gc.get_freeze_count(),
                "seconds": time.perf_counter() - started,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--child", choices=["plain", "settled"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    requests = 2_000 if args.quick else args.requests
    if args.child:
        child(args.child, Path(args.workdir), requests)
        return
    with tempfile.TemporaryDirectory(prefix="gateway-heap-") as directory:
        workdir = Path(directory)
        print(f"minting {requests + 50:,} RS256 tokens...", file=sys.stderr)
        callgrind.prepare(workdir, requests + 50)
        results = {}
        for mode in ("plain", "settled"):
            command = [sys.executable, __file__, "--child", mode, "--workdir", str(workdir)]
            command += ["--requests", str(requests)]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True
            )
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    plain = results["plain"]
    command = "python bench/heap.py" + (" --quick" if args.quick else "")
    if not args.quick and requests != 10_000:
        command += f" --requests {requests}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    python = sys.version.split()[0]
    print(f"`{command}`, {when}, Python {python}: {requests:,} requests, each a new RS256 token.\n")
    print(
        "| heap at start | objects hidden | full collections | longest ms | × plain "
        "| all full ms | young collections | young ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, figures in results.items():
        ratio = figures["longest_ms"] / plain["longest_ms"] if plain["longest_ms"] else 0.0
        print(f"| {mode} | {figures['frozen']:,} | {figures['full']} "
              f"| {figures['longest_ms']:.1f} | {ratio:.2f}× | {figures['full_ms']:.1f} "
              f"| {figures['young']} | {figures['young_ms']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
