"""Soak: a steady mix of good and bad traffic at one ``gateway run`` process for a bounded time,
with a configuration reload (SIGHUP) every so often, watching for what only time reveals.

    python bench/soak.py                                  # 10 minutes, reload every minute
    python bench/soak.py --duration 20 --reload-every 5 --warmup 5 --redis

The gateway runs in front of the real test OpenID provider (``tests/integration/idp``; needs
Node.js and its ``npm ci``), optionally with a real ``redis-server`` as the shared introspection
cache (``--redis``), and a minimal upstream on loopback. The load is a fixed rate (``--rate``
requests/s from ``--concurrency`` clients) cycling through valid JWTs (200), valid opaque tokens
(200, introspected once then cached), a public route (200), and refusals: a token without the
scope (403), a forged signature, a forged ``kid``, a never-issued opaque token, no token (401).
Tokens are minted afresh every minute, so none expires during the run.

It reports, and fails (exit status 1) on: any answer other than the one expected for its kind
(a client timeout or a cut connection included); the gateway's resident memory at the end more
than ``--rss-tolerance`` (10 %) above its value after ``--warmup``; any growth between the same
two points of its open file descriptors (``/proc/PID/fd``) other than connections (files, pipes,
listeners), or more connections of one kind at any moment than the load can hold open at once
(connections come and go with the load, so their count is bounded, not compared); a reload that
was not counted ``ok``; the process not being the one started. Only loopback; every loop is
bounded by ``--duration`` and a count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/soak.py`: the test helpers live in tests/
    sys.path.insert(0, str(REPO))

from tests.e2e.process import GatewayProcess, gateway_process  # noqa: E402
from tests.integration.idp_fixture import (  # noqa: E402
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_SECRET,
    OpenIdProvider,
    start_provider,
)
from tests.integration.redis_fixture import RedisServer, start_redis  # noqa: E402
from tests.operations.support import sample, scrape  # noqa: E402
from tests.support import b64json, b64url  # noqa: E402

MB = 1024 * 1024
RESOURCE = "https://api.example.test/orders"
CLIENT_TIMEOUT = 10.0
TOKEN_REFRESH = 60.0  # provider tokens live 600 s; new ones are minted this often
TOKENS_PER_KIND = 4
RELOAD_WAIT = 10.0  # the longest a reload may take to be counted
MAX_EXAMPLES = 20  # unexpected answers kept for the report

CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
{cache}
issuers:
  idp:
    issuer: {issuer}
    discovery: true
    audiences: [{resource}]
    introspection:
      client_id: {client_id}
      client_secret: {secret}
      timeout: 2s
upstreams:
  app: {{url: "{upstream}"}}
routes:
  - name: status
    match: {{path: /status}}
    upstream: app
    auth: public
  - name: orders
    match: {{path: /orders/**}}
    upstream: app
    auth: {{scopes: [orders:read]}}
  # Changes with every reload, so that each one compiles and swaps in a new route table.
  - name: generation-{generation}
    match: {{path: /generation/{generation}}}
    upstream: app
    auth: public
"""

# Each kind of request: its share of the traffic (how many times it is in one cycle) and the
# one status it must get.
MIX: dict[str, tuple[int, int]] = {
    "jwt": (4, 200),
    "opaque": (2, 200),
    "public": (1, 200),
    "no_scope": (1, 403),
    "bad_signature": (1, 401),
    "forged_kid": (1, 401),
    "unknown_opaque": (1, 401),
    "missing": (1, 401),
}


@dataclass
class Options:
    duration: float = 600.0
    reload_every: float = 60.0
    warmup: float = 60.0
    rate: float = 100.0
    concurrency: int = 8
    sample_every: float = 5.0
    redis: bool = False
    rss_tolerance: float = 0.10


@dataclass
class Sample:
    at: float  # seconds since the load began
    rss: int
    peak: int
    fds: dict[str, int]  # see fd_census

    @property
    def total(self) -> int:
        return sum(self.fds.values())


@dataclass
class Report:
    options: dict[str, Any]
    seconds: float = 0.0
    requests: int = 0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    reloads: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    rss_start: int = 0
    rss_end: int = 0
    rss_max: int = 0
    rss_peak: int = 0
    fds_start: dict[str, int] = field(default_factory=dict)
    fds_end: dict[str, int] = field(default_factory=dict)
    fds_max: dict[str, int] = field(default_factory=dict)
    same_process: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def judge(self, options: Options) -> None:
        if self.unexpected:
            self.failures.append(f"{self.unexpected} unexpected answers")
        if self.rss_end > self.rss_start * (1 + options.rss_tolerance):
            self.failures.append(
                f"RSS grew {self.rss_start / MB:.1f} -> {self.rss_end / MB:.1f} MB "
                f"(over {options.rss_tolerance:.0%})"
            )
        # Connections come and go with the load, so connected sockets may differ by a few
        # between two moments; everything else (files, pipes, listeners) must not change, and
        # no kind of connection may ever outnumber what the load can hold open at once.
        for kind in ("files", "unix", "listening", "other_tcp"):
            if self.fds_end.get(kind, 0) > self.fds_start.get(kind, 0):
                self.failures.append(f"{kind} fds grew {self.fds_start} -> {self.fds_end}")
        for kind, bound in connection_bounds(options).items():
            if self.fds_max.get(kind, 0) > bound:
                self.failures.append(f"up to {self.fds_max[kind]} {kind} connections (> {bound})")
        expected = int(self.seconds // options.reload_every) if options.reload_every else 0
        if self.reloads.get("error", 0) or self.reloads.get("ok", 0) < max(0, expected - 1):
            self.failures.append(f"reloads {self.reloads}, about {expected} expected")
        if not self.same_process:
            self.failures.append("the gateway process is not the one started")
        if self.requests < self.seconds * self.options["rate"] * 0.5:
            self.failures.append(f"only {self.requests} requests: the load fell behind")

    def text(self) -> str:
        lines = [
            f"soak: {self.requests} requests in {self.seconds:.0f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s), unexpected: {self.unexpected}",
            f"  latency ms: {self.latency_ms}",
            f"  reloads: {self.reloads}",
            f"  RSS after warm-up {self.rss_start / MB:.1f} MB, "
            f"at the end {self.rss_end / MB:.1f} MB "
            f"({(self.rss_end - self.rss_start) / max(self.rss_start, 1):+.1%}), "
            f"max {self.rss_max / MB:.1f} MB, VmHWM {self.rss_peak / MB:.1f} MB",
            f"  open fds after warm-up {sum(self.fds_start.values())} {self.fds_start}, "
            f"at the end {sum(self.fds_end.values())} {self.fds_end}, max {self.fds_max}",
        ]
        if self.samples:
            step = max(1, len(self.samples) // 10)
            trend = [*self.samples[::step], self.samples[-1]][:12]
            lines.append(
                "  over time (s: RSS MB / open fds): "
                + ", ".join(f"{s.at:.0f}: {s.rss / MB:.1f} / {s.total}" for s in trend)
            )
        lines += [f"  {kind}: {statuses}" for kind, statuses in self.statuses.items()]
        lines += [f"  unexpected: {example}" for example in self.examples]
        lines.append("PASS" if self.ok else "FAIL: " + "; ".join(self.failures))
        return "\n".join(lines)


def connection_bounds(options: Options) -> dict[str, int]:
    """The most connections of each kind the gateway can need at once under this load: one per
    client (plus a scrape), one per request in flight to the upstream (pools of the old
    configuration close once their requests end), the introspection calls allowed at once (32)
    and a JWKS fetch, one Redis connection per request in flight."""
    in_flight = options.concurrency + 2
    return {"clients": in_flight, "upstream": 2 * in_flight, "idp": 32 + 2, "redis": in_flight}


# -- tokens -------------------------------------------------------------------------------------


@dataclass
class Tokens:
    """Valid tokens of each kind, minted afresh every TOKEN_REFRESH seconds."""

    jwt: list[str] = field(default_factory=list)
    no_scope: list[str] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)

    @classmethod
    def mint(cls, idp: OpenIdProvider) -> Tokens:
        return cls(
            jwt=[idp.token(RESOURCE, ["orders:read"]) for _ in range(TOKENS_PER_KIND)],
            no_scope=[idp.token(RESOURCE, ["profile"]) for _ in range(TOKENS_PER_KIND)],
            opaque=[
                idp.opaque_token(["orders:read"], resource=RESOURCE) for _ in range(TOKENS_PER_KIND)
            ],
        )


def forged_kid(issuer: str) -> str:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_hex(8)}
    now = int(time.time())
    claims = {"iss": issuer, "sub": "mallory", "aud": RESOURCE, "iat": now, "exp": now + 600}
    return f"{b64json(header)}.{b64json(claims)}.{b64url(os.urandom(256))}"


def bad_signature(token: str) -> str:
    """The same header and claims, another signature of the right length."""
    head, claims, signature = token.split(".")
    return f"{head}.{claims}.{b64url(os.urandom(len(signature) * 3 // 4))}"


def request_for(kind: str, n: int, tokens: Tokens, issuer: str) -> tuple[str, str | None]:
    """(path, token) of the n-th request of ``kind``."""
    pick = n % TOKENS_PER_KIND
    if kind == "jwt":
        return "/orders/1", tokens.jwt[pick]
    if kind == "opaque":
        return "/orders/1", tokens.opaque[pick]
    if kind == "public":
        return "/status", None
    if kind == "no_scope":
        return "/orders/1", tokens.no_scope[pick]
    if kind == "bad_signature":
        return "/orders/1", bad_signature(tokens.jwt[pick])
    if kind == "forged_kid":
        return "/orders/1", forged_kid(issuer)
    if kind == "unknown_opaque":
        return "/orders/1", secrets.token_urlsafe(32)
    return "/orders/1", None


# -- the pieces ---------------------------------------------------------------------------------


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    """A minimal upstream: 200 ``ok`` to everything, nothing recorded (a soak must not grow
    its own memory)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(text="ok")

    runner = web.ServerRunner(web.Server(handle), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def maybe_redis(wanted: bool) -> Iterator[RedisServer | None]:
    if not wanted:
        yield None
        return
    with start_redis() as redis:
        yield redis


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def write_config(
    path: Path, idp: OpenIdProvider, upstream_url: str, redis: RedisServer | None, generation: int
) -> None:
    cache = (
        f'cache: {{redis: {{url: "{redis.url}", key_prefix: "soak:", timeout: 50ms}}}}'
        if redis is not None
        else ""
    )
    text = CONFIG.format(
        cache=cache,
        issuer=idp.issuer,
        resource=RESOURCE,
        client_id=INTROSPECTOR_CLIENT,
        secret=INTROSPECTOR_SECRET,
        upstream=upstream_url,
        generation=generation,
    )
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)  # a reload never reads half a file


def _tcp_table() -> dict[str, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state) of every TCP socket on this machine."""
    table: dict[str, tuple[int, int, str]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                table[f"socket:[{inode}]"] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    "listen" if state == "0A" else "open",
                )
    return table


def _unix_inodes() -> set[str]:
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
        return {f"socket:[{line.split()[6]}]" for line in lines if len(line.split()) > 6}
    return set()


def fd_census(pid: int, peers: dict[str, int]) -> dict[str, int]:
    """The process's open file descriptors by what they are: ``files`` (everything but sockets:
    files, pipes, the event loop's own), ``unix`` sockets, ``listening`` sockets, connected TCP
    sockets by the peer they lead to (``peers``: name -> port; ``clients`` are those on the
    gateway's own port), and ``transient`` ones (opened or closed while this looked)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    table, unix = _tcp_table(), _unix_inodes()
    by_port = {port: name for name, port in peers.items()}
    census: Counter[str] = Counter()
    for target in targets:
        if not target.startswith("socket:"):
            census["files"] += 1
        elif target in unix:
            census["unix"] += 1
        elif target not in table:
            census["transient"] += 1
        else:
            local, remote, state = table[target]
            if state == "listen":
                census["listening"] += 1
            else:
                census[by_port.get(remote) or by_port.get(local) or "other_tcp"] += 1
    return dict(census)


# -- the run ------------------------------------------------------------------------------------


class Soak:
    def __init__(
        self, options: Options, idp: OpenIdProvider, gateway: GatewayProcess, config: Path
    ) -> None:
        self.options = options
        self.idp = idp
        self.gateway = gateway
        self.config = config
        self.report = Report(options=asdict(options))
        self.statuses: dict[str, Counter[str]] = {kind: Counter() for kind in MIX}
        self.latencies: list[float] = []
        self.tokens = Tokens()
        self.started = 0.0
        self.deadline = 0.0
        self.peers: dict[str, int] = {}

    async def run(self, upstream_url: str, redis: RedisServer | None) -> Report:
        self.tokens = await asyncio.to_thread(Tokens.mint, self.idp)
        self.peers = {
            "clients": port_of(self.gateway.url),
            "upstream": port_of(upstream_url),
            "idp": self.idp.port,
        }
        self.peers["admin_clients"] = port_of(self.gateway.admin_url)
        if redis is not None:
            self.peers["redis"] = redis.port
        pid = self.gateway.pid
        self.started = time.monotonic()
        self.deadline = self.started + self.options.duration
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=self.options.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await asyncio.gather(
                *(self.client(http, index) for index in range(self.options.concurrency)),
                self.reloader(http, upstream_url, redis),
                self.refresher(),
                self.sampler(),
            )
        self.report.seconds = time.monotonic() - self.started
        assert self.gateway.process is not None
        self.report.same_process = self.gateway.process.poll() is None and self.gateway.pid == pid
        self.summarise()
        return self.report

    async def client(self, http: aiohttp.ClientSession, index: int) -> None:
        """One client: requests at a steady pace (its share of ``rate``), cycling through the
        mix from its own offset."""
        cycle = [kind for kind, (share, _) in MIX.items() for _ in range(share)]
        interval = self.options.concurrency / self.options.rate
        limit = int(self.options.duration * self.options.rate / self.options.concurrency) + 1
        begin = self.started + index * interval / self.options.concurrency
        for n in range(limit):
            due = begin + n * interval
            if due > self.deadline:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            kind = cycle[(n + index) % len(cycle)]
            await self.one(http, kind, n)

    async def one(self, http: aiohttp.ClientSession, kind: str, n: int) -> None:
        path, token = request_for(kind, n, self.tokens, self.idp.issuer)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        expected = MIX[kind][1]
        sent = time.monotonic()
        try:
            async with http.get(self.gateway.url + path, headers=headers) as response:
                await response.read()
                outcome = str(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            outcome = type(error).__name__
        self.latencies.append(time.monotonic() - sent)
        self.statuses[kind][outcome] += 1
        if outcome != str(expected):
            self.report.unexpected += 1
            if len(self.report.examples) < MAX_EXAMPLES:
                at = sent - self.started
                self.report.examples.append(f"{at:.1f} s: {kind} got {outcome}, not {expected}")

    async def reloader(
        self, http: aiohttp.ClientSession, upstream_url: str, redis: RedisServer | None
    ) -> None:
        """SIGHUP every ``reload_every`` seconds with a changed file; each reload must be
        counted ``ok`` within RELOAD_WAIT."""
        if not self.options.reload_every:
            return
        for generation in itertools.count(1):
            due = self.started + generation * self.options.reload_every
            if due > self.deadline:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            write_config(self.config, self.idp, upstream_url, redis, generation)
            self.gateway.send_signal(signal.SIGHUP)
            waited = time.monotonic()
            for _ in range(int(RELOAD_WAIT / 0.1)):
                metrics = await scrape(self.gateway.admin_url)
                ok = sample(metrics, "gateway_config_reloads_total", result="ok")
                errors = sample(metrics, "gateway_config_reloads_total", result="error")
                if ok + errors >= generation or time.monotonic() - waited > RELOAD_WAIT:
                    break
                await asyncio.sleep(0.1)
            self.report.reloads = {"ok": int(ok), "error": int(errors)}

    async def refresher(self) -> None:
        """New tokens every TOKEN_REFRESH seconds (the provider's live 600 s)."""
        for round_ in itertools.count(1):
            due = self.started + round_ * TOKEN_REFRESH
            if due > self.deadline:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.tokens = await asyncio.to_thread(Tokens.mint, self.idp)

    async def sampler(self) -> None:
        """RSS, its peak and the open file descriptors, every ``sample_every`` seconds."""
        for n in itertools.count():
            due = self.started + n * self.options.sample_every
            if due > self.deadline:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.take_sample()
        self.take_sample()  # at the very end, under the same load

    def take_sample(self) -> None:
        rss, peak = self.gateway.memory()
        at = time.monotonic() - self.started
        census = fd_census(self.gateway.pid, self.peers)
        self.report.samples.append(Sample(at, rss, peak, census))

    def summarise(self) -> None:
        report = self.report
        report.statuses = {kind: dict(counter) for kind, counter in self.statuses.items()}
        report.requests = sum(sum(c.values()) for c in self.statuses.values())
        if self.latencies:
            ordered = sorted(self.latencies)
            report.latency_ms = {
                "p50": round(statistics.median(ordered) * 1000, 1),
                "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
                "max": round(ordered[-1] * 1000, 1),
            }
        after_warmup = [s for s in report.samples if s.at >= self.options.warmup]
        if after_warmup:
            first, last = after_warmup[0], after_warmup[-1]
            report.rss_start, report.rss_end = first.rss, last.rss
            report.rss_max = max(s.rss for s in after_warmup)
            report.fds_start, report.fds_end = first.fds, last.fds
            kinds = {kind for s in report.samples for kind in s.fds}
            report.fds_max = {k: max(s.fds.get(k, 0) for s in report.samples) for k in kinds}
            report.rss_peak = last.peak
        report.judge(self.options)


async def soak(options: Options, workdir: Path) -> Report:
    idp = await asyncio.to_thread(start_provider)
    try:
        with maybe_redis(options.redis) as redis:
            async with upstream() as upstream_url:
                config = workdir / "gateway.yaml"
                write_config(config, idp, upstream_url, redis, generation=0)
                async with gateway_process(config, workdir / "gateway.log") as gateway:
                    return await Soak(options, idp, gateway, config).run(upstream_url, redis)
    finally:
        await asyncio.to_thread(idp.stop)


def parse(argv: Sequence[str] | None) -> tuple[Options, Path | None]:
    defaults = Options()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds")
    parser.add_argument(
        "--reload-every", type=float, default=defaults.reload_every, help="seconds; 0: never"
    )
    parser.add_argument(
        "--warmup", type=float, default=defaults.warmup, help="seconds before the baseline"
    )
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests/s in all")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--sample-every", type=float, default=defaults.sample_every)
    parser.add_argument("--redis", action="store_true", help="share answers through Redis")
    parser.add_argument("--rss-tolerance", type=float, default=defaults.rss_tolerance)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    options = Options(
        duration=args.duration,
        reload_every=args.reload_every,
        warmup=args.warmup,
        rate=args.rate,
        concurrency=args.concurrency,
        sample_every=args.sample_every,
        redis=args.redis,
        rss_tolerance=args.rss_tolerance,
    )
    return options, args.json


def main(argv: Sequence[str] | None = None) -> int:
    options, json_path = parse(argv)
    # SIGTERM unwinds like Ctrl-C, so the provider, Redis and the gateway are stopped by PID.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
            report = asyncio.run(soak(options, Path(workdir)))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.text())
    if json_path is not None:
        json_path.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
