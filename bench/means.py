"""What each of the gateway's speed means pays, and where its time goes, in one run.

    python bench/means.py                # 3 rounds of 10 s per variant, then a py-spy profile
    python bench/means.py --quick        # 1 round of 3 s: a smoke run
    python bench/means.py --json out.json

The gateway's RS256 route (one token, as `bench/compare.py` sends it) is measured as shipped
and with one means turned off at a time, each in its own gateway process started through this
script, which changes the means at start-up and then runs the gateway's own command line (no
file of the gateway is changed):

- ``no-uvloop``: the standard asyncio event loop (``uvloop`` cannot be imported);
- ``no-token-cache``: the verified-token cache holds nothing, so every request is a signature
  check (``cache_size`` 0);
- ``no-short-way``: every client connection is handed to aiohttp's server, rather than the
  common request being served by ``gateway/downstream.py``;

and the public route as shipped, for scale. Every variant must refuse a bad token and accept
the good one before it is measured. Rounds alternate the variants, the median round is
reported, with req/s and CPU time a request, and each variant's ratio to the gateway as
shipped in the same run.

Then, with py-spy (``pip install py-spy``; it samples the process from outside, so the
gateway runs at full speed) the gateway as shipped is sampled while wrk loads its RS256 route:
the share of samples by area (the gateway's modules, aiohttp, the event loop, crypto) and the
functions with the most samples, themselves and with what they call. Time in C (a system call,
OpenSSL) counts for the Python line that called it.

Same machine set-up as ``bench/compare.py``: nginx upstream, wrk with 50 connections, the
target pinned to one core and the load to the other; loopback only, every run bounded in time,
every process started here stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as `python bench/means.py`: compare.py beside it
    sys.path.insert(0, str(BENCH))

from compare import (  # noqa: E402
    REPO,
    Bench,
    Introspection,
    Row,
    Server,
    Service,
    Target,
    Tokens,
    core_plan,
    gateway_config,
    gateway_version,
    limit_jwt_cache,
    load_arguments,
    load_average,
    measure_all,
    pinned,
    prepare_tokens,
    run_meta,
    start_upstream,
    stop,
    wrk,
)

# variant -> what is off in it
VARIANTS = {
    "shipped": "nothing: the gateway as shipped",
    "no-uvloop": "uvloop: the standard asyncio event loop",
    "no-token-cache": "the verified-token cache: every request a signature check",
    "no-short-way": "the short way: every connection served by aiohttp's server",
}
PROFILE_RATE = 200  # py-spy samples a second


def variant_server(bench: Bench, tokens: Tokens, introspection: int, variant: str) -> Server:
    config, port, admin = gateway_config(bench, f"gateway-{variant}", introspection)
    command = [sys.executable, __file__, "--serve-gateway", variant]
    command += ["run", "--config", str(config), "--log-level", "warning"]
    targets = [
        Target(variant, f"RS256 route, off: {VARIANTS[variant]}", "/rs/item", "1 token",
               tokens.scripts["rs"], tokens.rs, tokens.rs_bad),
    ]  # fmt: skip
    if variant == "shipped":
        targets.append(
            Target("shipped-public", "public route, the gateway as shipped", "/public/item",
                   "1 token", tokens.scripts["rs"], tokens.rs, None),
        )  # fmt: skip
    return Server(f"gateway-{variant}", command, port, targets, admin=admin, cwd=REPO)


def serve_gateway(variant: str, argv: list[str]) -> int:
    """The gateway's command line, with one means turned off first."""
    sys.path.insert(0, str(REPO))
    if variant == "no-uvloop":
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # `import uvloop` fails
    elif variant == "no-token-cache":
        limit_jwt_cache(0)
    elif variant == "no-short-way":
        from gateway.server import GuardedServer

        # Every connection aiohttp's from its first byte (downstream.py is compiled: its class
        # cannot be patched, the interpreted server's can).
        GuardedServer.__call__ = lambda self: self.guarded(self._limits())  # type: ignore[method-assign]
    elif variant != "shipped":
        raise SystemExit(f"unknown variant {variant}")
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


# -- the profile ------------------------------------------------------------------------------


@dataclass
class Profile:
    samples: int = 0
    areas: list[tuple[str, float]] | None = None  # (area, share of samples)
    own: list[tuple[str, float]] | None = None  # (function, share as the innermost frame)
    within: list[tuple[str, float]] | None = None  # (function, share anywhere on the stack)
    problem: str | None = None


def area(location: str) -> str:
    """Which part of the program a frame's file is in."""
    path = location.rsplit(":", 1)[0]
    if "/gateway/" in path:
        return "gateway: " + path[path.rfind("/gateway/") + 1 :]
    for marker, name in (
        ("aiohttp/", "aiohttp"),
        ("uvloop/", "event loop (uvloop, asyncio)"),
        ("asyncio/", "event loop (uvloop, asyncio)"),
        ("joserfc/", "crypto (joserfc, cryptography)"),
        ("cryptography/", "crypto (joserfc, cryptography)"),
        ("multidict/", "aiohttp's helpers (multidict, yarl)"),
        ("yarl/", "aiohttp's helpers (multidict, yarl)"),
        ("prometheus_client/", "prometheus-client"),
        ("structlog/", "logging"),
        ("logging/", "logging"),
    ):
        if marker in path:
            return name
    return "other: " + Path(path).name


def summarize(raw: str, top: int) -> Profile:
    """py-spy's raw output (one line a stack, ``frame;frame;... count``) summed up."""
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        innermost = frames[-1]
        areas[area(innermost.partition(" (")[2].rstrip(")"))] += count
        own[_label(innermost)] += count
        for label in {_label(frame) for frame in frames if not _outer(frame)}:
            within[label] += count
    if not total:
        return Profile(problem="py-spy took no sample")

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(key, value / total) for key, value in counter.most_common(top)]

    return Profile(total, shares(areas), shares(own), shares(within))


def _outer(frame: str) -> bool:
    """A frame under every request's (the start-up's), where the stack has it."""
    return frame.startswith("<module> ") or any(
        where in frame for where in ("means.py:", "/gateway/cli.py:", "/asyncio/runners.py:")
    )


def _label(frame: str) -> str:
    """``function (file:line)`` as ``function (file)``, the file from the package on."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    if (at := path.find("site-packages/")) >= 0:
        path = path[at + len("site-packages/") :]
    elif (at := path.find("/gateway/")) >= 0:
        path = path[at + 1 :]
    elif (at := path.find("/lib/python3")) >= 0:
        path = path[path.index("/", at + len("/lib/python3")) + 1 :]  # past "python3.N/"
    return f"{name} ({path})"


def profile(bench: Bench, server: Server, target: Target, seconds: float, top: int) -> Profile:
    """py-spy on the gateway while wrk loads ``target`` (py-spy on the load's core)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return Profile(problem="py-spy is not installed (pip install py-spy)")
    assert server.service is not None
    out = bench.workdir / "profile.txt"
    url = f"http://127.0.0.1:{server.port}{target.path}"
    load = dict(connections=bench.args.connections, threads=bench.args.threads,
                cores=bench.load_cores)  # fmt: skip
    wrk(url, target.script, duration=bench.args.warmup, **load)
    command = [spy, "record", "--pid", str(server.service.process.pid), "--rate",
               str(PROFILE_RATE), "--duration", str(math.ceil(seconds)), "--format", "raw",
               "--nonblocking", "--full-filenames", "--output", str(out)]  # fmt: skip
    log = (bench.workdir / "py-spy.log").open("wb")
    spying = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned(bench.load_cores)
    )
    try:
        wrk(url, target.script, duration=seconds + 2, **load)
        spying.wait(timeout=seconds + 60)
    finally:
        if spying.poll() is None:
            spying.kill()
            spying.wait()
        log.close()
    if spying.returncode != 0 or not out.exists():
        text = (bench.workdir / "py-spy.log").read_text(errors="replace").strip()
        return Profile(problem=f"py-spy failed: {' '.join(text.split())[-300:]}")
    if bench.args.raw:
        shutil.copyfile(out, bench.args.raw)
    return summarize(out.read_text(errors="replace"), top)


# -- the report -------------------------------------------------------------------------------


def markdown(rows: list[Row], found: Profile, meta: dict[str, Any]) -> str:
    lines = [
        f"`{meta['command']}`, {meta['date']}, {meta['cores']} cores; {meta['pinning']}.",
        f"Upstream: {meta['upstream']}. Load: wrk {meta['wrk']}, {meta['rounds']} round(s), "
        "each run after a warm-up.",
        f"Gateway: {meta['gateway']}; Python {meta['python']}.",
        f"Load average (1/5/15 min) before: {meta['load_before']}; after: {meta['load_after']}.",
        "",
        "| variant | req/s | CPU µs/req | × shipped (req/s) | × shipped (CPU/req) | check "
        "| notes |",
        "|---|---|---|---|---|---|---|",
    ]
    shipped = next((r for r in rows if r.key == "shipped" and r.status == "ok"), None)
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.label} | {row.status} | | | | | |")
            continue
        by_rps = by_cpu = "–"
        if shipped is not None and shipped.rps > 0:
            by_rps = f"{row.rps / shipped.rps:.2f}×"
            by_cpu = f"{shipped.cpu_us_per_request / row.cpu_us_per_request:.2f}×"
        lines.append(
            f"| {row.label} | {row.rps:.0f} | {row.cpu_us_per_request:.1f} | {by_rps} | "
            f"{by_cpu} | {row.check} | {row.notes} |"
        )
    lines += ["", "× shipped below 1: the means pays (the gateway is slower without it)."]
    lines += ["", f"py-spy, {PROFILE_RATE} samples a second, the gateway as shipped, RS256 route:"]
    if found.problem is not None:
        lines.append(f"not measured: {found.problem}")
        return "\n".join(lines)
    lines += ["", f"{found.samples} samples.", "", "| area | share |", "|---|---|"]
    lines += [f"| {name} | {share:.1%} |" for name, share in found.areas or []]
    # The event loop's frame innermost: uvloop's C code at work (polling, reading sockets).
    lines += ["", "| function, innermost (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in found.own or []]
    lines += ["", "| function, anywhere on the stack (with what it calls) | share |", "|---|---|"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in found.within or []]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_arguments(parser, "variant")
    parser.add_argument("--profile", type=float, default=10.0, help="seconds sampled by py-spy")
    parser.add_argument("--top", type=int, default=15, help="functions listed from the profile")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--raw", metavar="PATH", help="also keep py-spy's samples (by line)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.profile = 3.0, 1.0, 3.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.max_warmup, args.only = 20.0, None  # what compare.Bench reads
    if shutil.which(os.environ.get("WRK", "wrk")) is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    target_cores, load_cores, pinning = core_plan()
    if load_cores is not None:
        os.sched_setaffinity(0, load_cores)
    load_before, gateway = load_average(), gateway_version()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-means-"))
    bench = Bench(args, workdir, target_cores, load_cores)
    introspection = Introspection(set())
    started: list[Service] = []
    try:
        tokens = prepare_tokens(workdir, 1, introspection)
        upstream, upstream_text = start_upstream(bench)
        started.append(upstream)
        print(f"upstream: {upstream_text}; {pinning}", file=sys.stderr)
        servers = [variant_server(bench, tokens, introspection.port, v) for v in VARIANTS]
        for server in servers:
            bench.launch(server)
            if server.service is not None:
                started.append(server.service)
        rows = measure_all(bench, servers)
        shipped = servers[0]
        print("  profile: py-spy on the gateway as shipped, RS256 route", file=sys.stderr)
        found = (
            profile(bench, shipped, shipped.targets[0], args.profile, args.top)
            if shipped.problem is None
            else Profile(problem=shipped.problem)
        )
    finally:
        for service in reversed(started):
            stop(service)
        introspection.close()
    meta = run_meta(
        "bench/means.py", args, pinning, upstream_text, load_before, gateway, target_cores
    )
    if args.json:
        document = {"meta": meta, "rows": [asdict(r) for r in rows], "profile": asdict(found)}
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    print(markdown(rows, found, meta))
    with contextlib.suppress(OSError):
        shutil.rmtree(workdir)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-gateway":
        sys.exit(serve_gateway(sys.argv[2], sys.argv[3:]))
    main()
