"""What the token caches' expiring LRU costs a look-up and a new entry, and the longest a new
entry holds the event loop, in one run.

    python bench/expiring.py            # 10,000 and 100,000 entries, 200,000 new ones each
    python bench/expiring.py --quick    # 10,000 entries, 20,000 new ones: a smoke run

``gateway/pipeline/verify/expiring.py``'s ``ExpiringLru`` (the verified-JWT cache holds 10,000
entries, the introspection cache 100,000 by default) against a bare ``OrderedDict`` LRU doing
the same look-ups and insertions with no notion of time: the floor any LRU pays, measured in
the same run, so the ratio is what expiry adds. The space is filled first, then every new entry
evicts one; a tenth of the entries expire within the run and are never looked up again, which
is the case the cache must clear without a pass over all of it. "Longest" is the single slowest
insertion: the event loop is held that long.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.pipeline.verify.expiring import ExpiringLru  # noqa: E402

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class BareLru:
    """The floor: an ``OrderedDict`` LRU, no expiry at all."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, object] = OrderedDict()

    def get(self, key: bytes) -> object | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: object, expires: float) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def run(kind: type, size: int, new: int) -> dict[str, float]:
    """Mean µs an insertion and a hit, and the slowest insertion (ms), with the clock moving
    one second every ``size // 100`` insertions; one entry in ten lives 30 s, the rest an hour."""
    clock = Clock()
    cache = kind(size, clock)
    keys = [b"%032d" % n for n in range(size + new)]
    value = object()
    for n in range(size):
        cache.put(keys[n], value, START + 3600)
    step = max(1, size // 100)
    slowest = 0
    put_ns = 0
    for n in range(size, size + new):
        if n % step == 0:
            clock.now += 1
        expires = clock.now + (30 if n % 10 == 0 else 3600)
        started = time.perf_counter_ns()
        cache.put(keys[n], value, expires)
        took = time.perf_counter_ns() - started
        put_ns += took
        slowest = max(slowest, took)
    hits = keys[size + new - size // 2 : size + new]
    started = time.perf_counter_ns()
    for key in hits:
        cache.get(key)
    hit_ns = time.perf_counter_ns() - started
    return {
        "put_us": put_ns / new / 1000,
        "hit_us": hit_ns / len(hits) / 1000,
        "slowest_ms": slowest / 1e6,
        "held": float(len(cache)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 entries, 20,000 new")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000]
    new = 20_000 if args.quick else 200_000
    command = f"python bench/expiring.py{' --quick' if args.quick else ''}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    python = sys.version.split()[0]
    print(f"`{command}`, {when}, Python {python}, {new:,} new entries a space after filling it.\n")
    print(
        "| entries | LRU | µs an insertion | × bare | µs a hit | × bare | slowest insertion ms "
        "| held at the end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        bare = run(BareLru, size, new)
        expiring = run(ExpiringLru, size, new)
        for name, figures in (("bare OrderedDict", bare), ("ExpiringLru", expiring)):
            print(f"| {size:,} | {name} | {figures['put_us']:.2f} "
                  f"| {figures['put_us'] / bare['put_us']:.2f}× | {figures['hit_us']:.2f} "
                  f"| {figures['hit_us'] / bare['hit_us']:.2f}× | {figures['slowest_ms']:.3f} "
                  f"| {figures['held']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
