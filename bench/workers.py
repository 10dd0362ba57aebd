"""Worker scaling: throughput of the gateway with 1, 2, 4, 8 worker processes, in one run.

    python bench/workers.py --workers 1,2,4,8 --duration 10

Starts a fast upstream (raw asyncio, several processes on one port), then for each worker count
a `gateway run --workers N` on an RS256-protected route, warms it, loads it with wrk (Lua script
for the bearer header) and records req/s and latency. Every figure is also printed as a ratio to
the 1-worker result of the same run (the baseline), since absolute numbers depend on the
machine. The gateway, the upstream and wrk run on separate CPU sets where there are enough
cores. Only loopback; every load run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import RSAKey

REPO = Path(__file__).resolve().parents[1]
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

CONFIG = """\
listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
workers: {workers}
shutdown_timeout: 2s
issuers:
  bench:
    issuer: https://issuer.bench
    jwks_file: {jwks}
    audiences: [https://api.bench]
upstreams:
  up: {{url: "http://127.0.0.1:{upstream}", max_connections: 1024}}
routes:
  - name: jwt
    match: {{path: /api/**}}
    upstream: up
    auth: {{scopes: [read]}}
"""

LUA = """\
wrk.headers["Authorization"] = "Bearer {token}"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Upstream(asyncio.Protocol):
    """Answers every request with a fixed 200 (keep-alive); enough to never be the bottleneck."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


def run_upstream(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port, reuse_port=True)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def cpu_sets(workers: int) -> tuple[set[int] | None, set[int] | None, set[int] | None]:
    """Separate cores for the gateway, the upstream and wrk, when the machine has them."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers + 4:
        return None, None, None
    gateway = set(cores[:workers])
    rest = cores[workers:]
    half = max(1, len(rest) // 2)
    return gateway, set(rest[:half]), set(rest[half:])


def pinned(cores: set[int] | None) -> dict[str, object]:
    if cores is None:
        return {}
    return {"preexec_fn": lambda: os.sched_setaffinity(0, cores)}


def wait_ready(admin: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


def wrk(url: str, script: Path, *, duration: int, connections: int, threads: int,
        cores: set[int] | None) -> dict[str, float]:  # fmt: skip
    command = [
        os.environ.get("WRK", "wrk"), f"-t{threads}", f"-c{connections}", f"-d{duration}s",
        "--latency", "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=True, **pinned(cores)
    ).stdout  # type: ignore[call-overload]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out)) for p in ("50", "99")}
    return {
        "rps": rate,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def _ms(found: re.Match[str] | None) -> float:
    if found is None:
        return float("nan")
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", found.group(1)).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(unit, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--upstream-processes", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    key = RSAKey.generate_key(2048, parameters={"kid": "bench"})
    (workdir / "jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    now = int(time.time())
    claims = {"iss": "https://issuer.bench", "aud": "https://api.bench", "sub": "bench",
              "scope": "read", "iat": now, "exp": now + 3600}  # fmt: skip
    token = jwt.encode({"alg": "RS256", "kid": "bench"}, claims, key)
    script = workdir / "bearer.lua"
    script.write_text(LUA.format(token=token))

    upstream_port = free_port()
    _, upstream_cores, _ = cpu_sets(max(counts))
    upstreams = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", str(upstream_port)],
            **pinned(upstream_cores),  # type: ignore[arg-type]
        )
        for _ in range(args.upstream_processes)
    ]
    results: list[dict[str, float]] = []
    try:
        time.sleep(1.0)
        for count in counts:
            gateway_cores, _, wrk_cores = cpu_sets(max(counts))
            if gateway_cores is not None:
                gateway_cores = set(sorted(gateway_cores)[:count])
            port, admin = free_port(), free_port()
            config = workdir / f"gateway-{count}.yaml"
            jwks = workdir / "jwks.json"
            config.write_text(
                CONFIG.format(
                    port=port, admin=admin, workers=count, jwks=jwks, upstream=upstream_port
                )
            )
            log = (workdir / f"gateway-{count}.log").open("wb")
            command = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
            gateway = subprocess.Popen(
                [*command, "--log-level", "warning"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                **pinned(gateway_cores),  # type: ignore[arg-type]
            )
            try:
                wait_ready(admin, time.monotonic() + 60)
                url = f"http://127.0.0.1:{port}/api/item"
                # Warm-up: connection pools and caches filled before measuring.
                wrk(url, script, duration=2, connections=args.connections,
                    threads=args.threads, cores=wrk_cores)  # fmt: skip
                figures = wrk(url, script, duration=args.duration, connections=args.connections,
                              threads=args.threads, cores=wrk_cores)  # fmt: skip
                figures["workers"] = count
                results.append(figures)
            finally:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=30)
                log.close()
    finally:
        for process in upstreams:
            process.terminate()
            process.wait(timeout=10)

    baseline = results[0]["rps"]
    print(
        f"cores: {len(os.sched_getaffinity(0))}, connections: {args.connections}, "
        f"duration: {args.duration}s, route: RS256 JWT, baseline: 1 worker"
    )
    print("| workers | req/s | ratio to 1 worker | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|")
    for row in results:
        print(f"| {int(row['workers'])} | {row['rps']:.0f} | {row['rps'] / baseline:.2f}x | "
              f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {int(row['non_2xx'])} |")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-upstream":
        run_upstream(int(sys.argv[2]))
    else:
        main()
