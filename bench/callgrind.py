"""Instructions per request of the in-process gateway pipeline, counted by valgrind's callgrind.

    python bench/callgrind.py                    # every target under callgrind, Markdown on stdout
    python bench/callgrind.py --quick            # fewer requests: a smoke run
    python bench/callgrind.py --top 15           # also the hottest C functions of one target
    python bench/callgrind.py --drive rs256 --requests 1000   # one driver run, without valgrind
    python bench/callgrind.py --drive rs256-cold --bytecodes 30   # bytecodes a request, by function

Seconds on a shared machine move with everyone else's load; instruction counts do not. The
driver runs in ONE process and one event loop (uvloop, as `gateway run` chooses it): a fixed
upstream (an asyncio Protocol answering `200 ok`), a tiny introspection endpoint, the server
under test on loopback, and a raw-socket client sending sequential keep-alive requests over one
connection, each answer checked to be 200. After a warm-up (caches filled, pools open) the
driver calls `os.getloadavg()` before and after the measured requests; callgrind runs with
`--dump-before=getloadavg`, so the second dump holds exactly the instructions of the measured
requests, start-up and shutdown excluded. The targets: the client against the fixed upstream
directly (the harness), a bare aiohttp low-level server (the baseline), and the gateway
(GatewayServer from a configuration like bench/compare.py's) on its public, RS256, ES256 and
introspected routes, and on the RS256 route with a new token every request (each a cache
miss); three of these again with the gateway's modules imported from their sources (`plain`:
nothing compiled, as `GATEWAY_COMPILE=no` installs it). Loopback only; every run is bounded in
time. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (REPO, BENCH):  # run as `python bench/callgrind.py`: gateway/ and compare.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import plain  # noqa: E402
from compare import (  # noqa: E402
    AS_ISSUER,
    AUDIENCE,
    ES_ISSUER,
    GATEWAY_CONFIG,
    ISSUER,
    RESPONSE,
    make_keys,
    mint,
)

MARK = "getloadavg"  # the libc function that brackets the measured requests (--dump-before)
RUN_TIMEOUT = 900.0  # seconds: the most one driver run under callgrind may take
DRIVE_TIMEOUT = 600.0  # seconds: the most the driver's requests may take, start to end
ANSWER_BYTES = 65536  # an answer longer than this is an error, not something to wait for


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    server: str  # "harness": the fixed upstream itself; "aiohttp": bare web.Server; "gateway"
    path: str
    token: str | None = None  # the key in tokens.json: one token, or a list (one a request)
    log_level: str = "warning"  # the gateway's: "info" writes a JSON line a request
    plain: bool = False  # the gateway's modules from their sources, none compiled (plain.py)


TARGETS = [
    Target("harness", "client → fixed upstream, no server between", "harness", "/public/item"),
    Target("aiohttp", "bare aiohttp `web.Server`, `Response(body=b'ok')`", "aiohttp", "/item"),
    Target("httptools", "floor: httptools server protocol, a task a request, answering `ok`",
           "httptools", "/item"),
    Target("httptools-proxy", "floor: httptools server + the gateway's upstream pool, no checks",
           "httptools-proxy", "/item"),
    Target("public", "gateway, public route", "gateway", "/public/item"),
    Target("public-token", "gateway, public route, the RS256 token sent (not checked)",
           "gateway", "/public/item", "rs256"),
    Target("rs256", "gateway, RS256 JWT route (cached)", "gateway", "/rs/item", "rs256"),
    Target("rs256-cold", "gateway, RS256 JWT route, a new token every request (cache miss)",
           "gateway", "/rs/item", "rs256-cold"),
    Target("rs256-logged", "gateway, RS256 JWT route (cached), a log line a request (`info`)",
           "gateway", "/rs/item", "rs256", log_level="info"),
    Target("es256", "gateway, ES256 JWT route (cached)", "gateway", "/es/item", "es256"),
    Target("introspected", "gateway, opaque token (warm cache)", "gateway", "/opaque/item",
           "opaque"),
    # The same gateway with nothing compiled (setup.py compiles its request path with mypyc).
    Target("public-plain", "gateway, public route, plain Python", "gateway", "/public/item",
           plain=True),
    Target("rs256-plain", "gateway, RS256 JWT route (cached), plain Python", "gateway",
           "/rs/item", "rs256", plain=True),
    Target("rs256-cold-plain", "gateway, RS256 cache miss, plain Python", "gateway", "/rs/item",
           "rs256-cold", plain=True),
]  # fmt: skip
BY_KEY = {target.key: target for target in TARGETS}
BASELINE, HARNESS = "aiohttp", "harness"


# -- the driver: one process, one event loop ---------------------------------------------------


class Buffered(asyncio.Protocol):
    """A connection's transport and the bytes received and not yet answered."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass


class FixedUpstream(Buffered):
    """Answers every request head with a fixed `200 ok`, keep-alive (GETs: no body to skip)."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(RESPONSE)


class IntrospectionEndpoint(Buffered):
    """RFC 7662 in a few lines: every token is active, with scope `read` (asked once: the
    gateway caches the answer)."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = content_length(self.buffer[:end])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            now = int(time.time())
            answer = {
                "active": True, "iss": AS_ISSUER, "sub": "bench", "client_id": "bench-client",
                "scope": "read", "token_type": "access_token", "iat": now, "exp": now + 3 * 3600,
            }  # fmt: skip
            body = json.dumps(answer).encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            self.transport.write(head.encode() + body)


def content_length(head: bytes) -> int:
    found = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    return int(found.group(1)) if found else 0


class Client(asyncio.Protocol):
    """One keep-alive connection; :meth:`send` writes a request and waits for its whole answer
    (Content-Length, or a chunked body of the few bytes answered here)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = self._answer()
        if answer is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)
        elif len(self.buffer) > ANSWER_BYTES:
            self._fail(ConnectionError(f"an answer over {ANSWER_BYTES} bytes"))

    def _answer(self) -> tuple[int, bytes] | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head, start = self.buffer[:end], end + 4
        if re.search(rb"\r\ntransfer-encoding:\s*chunked", head, re.IGNORECASE):
            last = self.buffer.find(b"0\r\n\r\n", start)
            if last < 0:
                return None
            body, self.buffer = self.buffer[start:last], self.buffer[last + 5 :]
        else:
            stop = start + content_length(head)
            if len(self.buffer) < stop:
                return None
            body, self.buffer = self.buffer[start:stop], self.buffer[stop:]
        return int(head.split(b" ", 2)[1]), body

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"the server closed the connection ({exc})"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def start_protocol(factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def bare_aiohttp() -> AsyncIterator[int]:
    """The baseline: aiohttp's low-level server, a handler that answers at once."""
    from aiohttp import web

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=b"ok")

    runner = web.ServerRunner(web.Server(handler), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


class BareHttptools(asyncio.Protocol):
    """A floor, not a server: requests parsed by httptools and handled by one task each, as
    aiohttp does; no limits, no timeouts, no checks. With ``pool``, the gateway's own upstream
    client forwards each request (head only: GETs) and relays the answer whole."""

    def __init__(self, pool: Any = None) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        headers, self.headers = self.headers, []
        asyncio.get_running_loop().create_task(self.handle(self.url, headers))

    async def handle(self, url: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.transport is not None
        if self.pool is None:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        pool = self.pool
        await pool.take_slot()
        connection = await pool.connect()
        try:
            lines = b"".join(b"%b: %b\r\n" % (n, v) for n, v in headers if n.lower() != b"host")
            connection.begin(b"GET %b HTTP/1.1\r\nHost: up\r\n%b\r\n" % (url, lines), no_body=False)
            status, _, _ = await connection.response()
            body = connection.body_if_complete() or b""
            self.transport.write(
                b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body)
            )
        finally:
            pool.release(connection)
            pool.free_slot()


@contextlib.asynccontextmanager
async def bare_httptools(upstream: int | None) -> AsyncIterator[int]:
    pool = None
    if upstream is not None:
        from gateway.upstream.client import UpstreamPool
        from gateway.upstream.target import UpstreamTarget

        target = UpstreamTarget("up", "http", "127.0.0.1", upstream, "", 5.0, 30.0, 64, False)
        pool = UpstreamPool(target)
    server = await asyncio.get_running_loop().create_server(
        lambda: BareHttptools(pool), "127.0.0.1", 0
    )
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        if pool is not None:
            await pool.close()


@contextlib.asynccontextmanager
async def gateway(
    workdir: Path, upstream: int, log_level: str, settle_heap: bool = False
) -> AsyncIterator[int]:
    """GatewayServer on ephemeral loopback ports, from compare.py's configuration, loaded and
    compiled the way `gateway run` does it; its introspection endpoint runs here too.
    ``settle_heap``: as `gateway run` starts it (bench/heap.py; callgrind's counts leave it
    out, as its one full collection would count in no request)."""
    from gateway.config import load_and_compile
    from gateway.observe.logs import configure_logging
    from gateway.server import Address, GatewayServer

    # As compare.py runs it: "warning", no line a request (but for the logged target).
    configure_logging("json", log_level)
    introspection, introspection_port = await start_protocol(IntrospectionEndpoint)
    config = workdir / f"gateway-{os.getpid()}.yaml"
    config.write_text(
        GATEWAY_CONFIG.format(
            port=0, admin=0, issuer=ISSUER, es_issuer=ES_ISSUER, as_issuer=AS_ISSUER,
            audience=AUDIENCE, rs_jwks=workdir / "rs-jwks.json",
            es_jwks=workdir / "es-jwks.json", introspection=introspection_port,
            upstream=upstream,
        )
    )  # fmt: skip
    compiled, _ = load_and_compile(config)
    server = GatewayServer(
        compiled,
        public=Address("127.0.0.1", 0),
        admin=Address("127.0.0.1", 0),
        settle_heap=settle_heap,
    )
    await server.start()
    try:
        yield server.public_port
    finally:
        await server.stop()
        introspection.close()
        config.unlink(missing_ok=True)


async def drive(
    target: Target,
    workdir: Path,
    requests: int,
    warmup: int,
    mark: Callable[[], object] = os.getloadavg,
    settle_heap: bool = False,
) -> None:
    """Warm up, then send ``requests`` measured requests between two calls of ``mark``."""
    async with contextlib.AsyncExitStack() as stack:
        upstream, upstream_port = await start_protocol(FixedUpstream)
        stack.callback(upstream.close)
        if target.server == "harness":
            port = upstream_port
        elif target.server == "aiohttp":
            port = await stack.enter_async_context(bare_aiohttp())
        elif target.server.startswith("httptools"):
            proxy_to = upstream_port if target.server == "httptools-proxy" else None
            port = await stack.enter_async_context(bare_httptools(proxy_to))
        else:
            port = await stack.enter_async_context(
                gateway(workdir, upstream_port, target.log_level, settle_heap)
            )
        head = f"GET {target.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        tokens: list[str | None] = [None]
        if target.token is not None:
            chosen = json.loads((workdir / "tokens.json").read_text())[target.token]
            tokens = chosen if isinstance(chosen, list) else [chosen]
        if len(tokens) > 1 and len(tokens) < warmup + requests:
            raise SystemExit(f"{target.key}: {len(tokens)} tokens for {warmup + requests} requests")
        heads = [
            f"{head}Authorization: Bearer {token}\r\n\r\n".encode()
            if token is not None
            else f"{head}\r\n".encode()
            for token in tokens
        ]
        sent = itertools.cycle(heads)  # one token, or each of many once
        transport, client = await asyncio.get_running_loop().create_connection(
            Client, "127.0.0.1", port
        )
        try:
            async with asyncio.timeout(DRIVE_TIMEOUT):
                if target.token is not None and target.path != "/public/item":
                    # The route does check: without a token, 401.
                    status, _ = await client.send(f"{head}\r\n".encode())
                    if status != 401:
                        raise SystemExit(f"{target.key}: {status} without a token, not 401")
                for _ in range(warmup):
                    status, body = await client.send(next(sent))
                    if status != 200 or body != b"ok":
                        raise SystemExit(f"{target.key}: {status} {body[:200]!r}, not 200 ok")
                # A full collection first: the collector's counters then start from zero in
                # every run, so its work in the measured part depends on that part alone.
                gc.collect()
                before = [stats["collections"] for stats in gc.get_stats()]
                mark()  # the measured part starts
                failed = 0
                for _ in range(requests):
                    status, _ = await client.send(next(sent))
                    failed += status != 200
                mark()  # the measured part ends
                after = [stats["collections"] for stats in gc.get_stats()]
        finally:
            transport.close()
    if failed:
        raise SystemExit(f"{target.key}: {failed} of {requests} measured answers were not 200")
    collections = "/".join(str(b - a) for a, b in zip(before, after, strict=True))
    compiled = len(plain.compiled_modules())
    if target.server == "gateway" and compiled != (
        0 if target.plain else len(plain.checkout_compiled())
    ):
        # A plain row that ran compiled code, or a compiled row that did not, measures the
        # wrong thing, silently: refuse it.
        raise SystemExit(f"{target.key}: ran {compiled} compiled gateway modules")
    print(f"{target.key}: {warmup} warm-up and {requests} measured requests, all 200; "
          f"garbage collections (generation 0/1/2) while measured: {collections}; "
          f"gateway modules compiled: {compiled}", file=sys.stderr)  # fmt: skip


def prepare(workdir: Path, cold_tokens: int) -> None:
    """Keys (the JWKS files the configuration names), one token per protected route, and
    ``cold_tokens`` distinct RS256 tokens (each sent once: every request a cache miss)."""
    keys = make_keys(workdir)
    tokens = {
        "rs256": mint(keys.rsa, "RS256", ISSUER),
        "rs256-cold": [mint(keys.rsa, "RS256", ISSUER) for _ in range(cold_tokens)],
        "es256": mint(keys.ec, "ES256", ES_ISSUER),
        "opaque": "opaque-bench-token",
    }
    (workdir / "tokens.json").write_text(json.dumps(tokens))


def run_driver(args: argparse.Namespace) -> int:
    target = BY_KEY[args.drive]
    if target.plain:
        plain.use_sources()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cg-drive-"))
    try:
        if not (workdir / "tokens.json").exists():
            prepare(workdir, args.warmup + args.requests)
        with contextlib.suppress(ImportError):  # the loop `gateway run` uses (gateway/cli.py)
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        if args.bytecodes:
            counted = Bytecodes()
            asyncio.run(drive(target, workdir, args.requests, args.warmup, counted.mark))
            print(counted.report(target.key, args.requests, args.bytecodes))
        else:
            asyncio.run(drive(target, workdir, args.requests, args.warmup))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


class Bytecodes:
    """Bytecodes run between the two marks, by function, counted from ``sys.settrace``'s opcode
    events (``--bytecodes``: where the interpreter's time goes, which callgrind cannot name).
    Only frames that start after the first mark are traced: the bytecodes of one already
    running (the client connection's worker task, started in the warm-up) are left out, those
    of every function it calls are not."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.tracing = False

    def mark(self) -> None:
        self.tracing = not self.tracing
        sys.settrace(self._frame if self.tracing else None)

    def _frame(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._opcode

    def _opcode(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            key = (Path(code.co_filename).name, code.co_qualname)
            self.counts[key] = self.counts.get(key, 0) + 1
        return self._opcode

    def report(self, key: str, requests: int, top: int) -> str:
        total = sum(self.counts.values())
        out = [
            f"`{key}`: {total / requests:.0f} bytecodes a request (frames started in the measured "
            f"part); the {top} functions running the most:",
            "",
            "| function (file) | bytecodes a request |",
            "|---|---|",
        ]
        ranked = sorted(self.counts.items(), key=lambda item: -item[1])[:top]
        out += [f"| `{name}` ({file}) | {count / requests:.1f} |" for (file, name), count in ranked]
        return "\n".join(out)


# -- the report: every target under callgrind --------------------------------------------------


@dataclass
class Run:
    target: Target
    out: Path  # callgrind's output file prefix: <out>.<pid>, .1 (warm-up), .2 (measured)
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    pid: int = 0


@dataclass
class Measured:
    target: Target
    per_request: list[float] = field(default_factory=list)  # Ir / request, one per round
    measured_file: Path | None = None  # the dump of the measured part, last round
    problem: str | None = None


def launch(target: Target, workdir: Path, args: argparse.Namespace, round_: int) -> Run:
    out = workdir / f"callgrind.{target.key}.{round_}"
    log = workdir / f"{target.key}.{round_}.log"
    command = [
        "valgrind", "--tool=callgrind", f"--dump-before={MARK}",
        f"--callgrind-out-file={out}.%p", sys.executable, __file__, "--drive", target.key,
        "--requests", str(args.requests), "--warmup", str(args.warmup),
        "--workdir", str(workdir),
    ]  # fmt: skip
    # A fixed hash seed: the same dict and set layouts, so the same instructions, every run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=REPO,
        )  # fmt: skip
    return Run(target, out, process, log, pid=process.pid)


def totals(path: Path) -> float:
    """The event total of one callgrind dump file."""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return float(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def finish(run: Run, measured: Measured, requests: int) -> None:
    code = run.process.returncode
    dump = Path(f"{run.out}.{run.pid}.2")
    if code != 0 or not dump.exists():
        tail = " / ".join(run.log.read_text(errors="replace").strip().splitlines()[-3:])
        measured.problem = f"driver failed (exit {code}): {tail}"
        return
    measured.per_request.append(totals(dump) / requests)
    measured.measured_file = dump


def measure(targets: list[Target], workdir: Path, args: argparse.Namespace) -> list[Measured]:
    """Every target, ``args.rounds`` times, at most ``args.jobs`` callgrind runs at once."""
    results = {target.key: Measured(target) for target in targets}
    queue = [(round_, target) for round_ in range(args.rounds) for target in targets]
    running: list[Run] = []
    try:
        while queue or running:
            while queue and len(running) < args.jobs:
                round_, target = queue.pop(0)
                print(f"callgrind: {target.key}, round {round_ + 1}", file=sys.stderr)
                running.append(launch(target, workdir, args, round_))
            time.sleep(0.5)
            for run in list(running):
                if run.process.poll() is None:
                    if time.monotonic() - run.started > RUN_TIMEOUT:
                        run.process.kill()  # the valgrind process this script started
                        run.process.wait()
                    else:
                        continue
                running.remove(run)
                finish(run, results[run.target.key], args.requests)
                seconds = time.monotonic() - run.started
                print(f"callgrind: {run.target.key} done in {seconds:.0f} s", file=sys.stderr)
    finally:
        for run in running:
            run.process.kill()
            run.process.wait()
    return [results[target.key] for target in targets]


def _k(value: float) -> str:
    return f"{value / 1000:,.1f}"


def markdown(rows: list[Measured], meta: dict[str, Any]) -> str:
    by_key = {row.target.key: row for row in rows if row.per_request}

    def mean(key: str) -> float | None:
        row = by_key.get(key)
        return sum(row.per_request) / len(row.per_request) if row else None

    base, harness = mean(BASELINE), mean(HARNESS)
    net_base = base - harness if base is not None and harness is not None else None
    lines = [
        f"`{meta['command']}`, {meta['date']}: {meta['requests']} measured requests per "
        f"target after {meta['warmup']} warm-up ones, one keep-alive connection, "
        f"{meta['rounds']} round(s). Python {meta['python']}, aiohttp {meta['aiohttp']}, "
        f"uvloop {meta['uvloop']}, {meta['valgrind']}. Gateway modules compiled (mypyc): "
        f"{meta['compiled']}, none in the `plain` rows.",
        "",
        "| target | k instr/request | × bare aiohttp | net k instr/request | net × bare aiohttp "
        "| rounds |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.problem is not None or not row.per_request:
            lines.append(f"| {row.target.label} | not measured: {row.problem} | | | | |")
            continue
        value = sum(row.per_request) / len(row.per_request)
        ratio = f"{value / base:.2f}×" if base else ""
        net = value - harness if harness is not None else None
        net_text = _k(net) if net is not None and row.target.key != HARNESS else ""
        net_ratio = (
            f"{net / net_base:.2f}×"
            if net is not None and net_base and row.target.key != HARNESS
            else ""
        )
        spread = ""
        if len(row.per_request) > 1:
            low, high = min(row.per_request), max(row.per_request)
            spread = f"{_k(low)}–{_k(high)} ({100 * (high - low) / value:.2f} %)"
        lines.append(
            f"| {row.target.label} | {_k(value)} | {ratio} | {net_text} | {net_ratio} | "
            f"{spread or '1'} |"
        )
    lines += [
        "",
        "Every figure counts the whole process: the client, the server under test and its "
        "upstream. **net**: minus the harness row (the same client against the fixed upstream "
        "directly), i.e. what putting this server in place of a fixed-answer asyncio Protocol "
        "adds (for the gateway, with its own hop to that Protocol). Rounds: the spread of "
        "Ir/request between rounds, when more than one.",
    ]
    return "\n".join(lines)


# -- hot spots ---------------------------------------------------------------------------------

ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+\([\d. %]+\)\s+(\S.*?)\s*$")


def function_costs(dump: Path) -> dict[str, float]:
    """Self (exclusive) Ir by function, from callgrind_annotate, as ``function (object)``.

    A dump taken mid-run charges the frames that were on the stack at both marks (main, the
    event loop, the outermost interpreter frame) with the whole part: those are left out."""
    command = ["callgrind_annotate", "--threshold=100", str(dump)]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    total = totals(dump)
    costs: dict[str, float] = {}
    objects: dict[str, str] = {}
    for line in text.split("file:function", 1)[-1].splitlines():
        match = ANNOTATE_LINE.match(line)
        if match is None or float(match.group(1).replace(",", "")) >= 0.99 * total:
            continue
        where, _, obj = match.group(2).partition(" [")
        # One function may come in several lines (its inlined parts, recursion cycles 'N).
        function = re.sub(r"'\d+$", "", where.rsplit(":", 1)[-1])
        if obj:
            objects.setdefault(function, Path(obj.rstrip("]")).name)
        costs[function] = costs.get(function, 0.0) + float(match.group(1).replace(",", ""))
    return {f"{name} ({objects.get(name, '?')})": cost for name, cost in costs.items()}


def hot_spots(rows: list[Measured], key: str, count: int, requests: int) -> str:
    """The ``count`` C functions whose self instructions per request grow the most from the
    bare aiohttp run to ``key``'s. (Python code runs inside the interpreter's C functions:
    callgrind cannot name a Python function, and inclusive figures of the interpreter loop
    are all about 100 %.)"""
    by_key = {row.target.key: row for row in rows}
    row, base = by_key[key], by_key.get(BASELINE)
    if row.measured_file is None or base is None or base.measured_file is None:
        return f"--top: {key} or the bare aiohttp baseline was not measured"
    costs, baseline = function_costs(row.measured_file), function_costs(base.measured_file)
    added = {name: cost - baseline.get(name, 0.0) for name, cost in costs.items()}
    out = [
        f"C functions adding the most self instructions per request, `{key}` over bare aiohttp "
        f"(k instr/request, from the last round):",
        "",
        f"| function (object) | {key} self | bare aiohttp self | added |",
        "|---|---|---|---|",
    ]
    for name, more in sorted(added.items(), key=lambda item: -item[1])[:count]:
        out.append(
            f"| `{name}` | {_k(costs[name] / requests)} | "
            f"{_k(baseline.get(name, 0.0) / requests)} | {_k(more / requests)} |"
        )
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drive", choices=list(BY_KEY), help="run one driver (no valgrind)")
    parser.add_argument("--requests", type=int, help="measured requests per run (500)")
    parser.add_argument("--warmup", type=int, default=50, help="requests before measuring")
    parser.add_argument("--workdir", help=argparse.SUPPRESS)  # keys and tokens, made once
    parser.add_argument("--quick", action="store_true", help="200 requests, 1 round")
    parser.add_argument("--rounds", type=int, help="callgrind runs per target (2; --quick: 1)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="callgrind runs at once (instruction counts do not care)")  # fmt: skip
    parser.add_argument("--only", help="comma-separated target keys: " + ",".join(BY_KEY))
    parser.add_argument("--top", type=int, metavar="K", help="also the K C functions adding most")
    parser.add_argument("--top-target", default="rs256", choices=list(BY_KEY))
    parser.add_argument(
        "--bytecodes", type=int, metavar="K", help="with --drive: bytecodes, the K top functions"
    )
    args = parser.parse_args()
    args.requests = args.requests or (200 if args.quick else 500)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if min(args.requests, args.rounds, args.jobs) < 1 or args.warmup < 1:
        parser.error("--requests, --warmup, --rounds and --jobs must be at least 1")
    if args.bytecodes is not None and args.drive is None:
        parser.error("--bytecodes counts one driver run: name it with --drive")
    if args.drive is not None:
        return run_driver(args)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    keys = args.only.split(",") if args.only else list(BY_KEY)
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    if args.top and args.top_target not in keys:
        keys.append(args.top_target)
    for needed in (HARNESS, BASELINE):  # every ratio needs them
        if needed not in keys:
            keys.insert(0, needed)
    targets = [target for target in TARGETS if target.key in keys]
    workdir = Path(tempfile.mkdtemp(prefix="gateway-callgrind-"))
    try:
        prepare(workdir, args.warmup + args.requests)
        started = time.monotonic()
        rows = measure(targets, workdir, args)
        print(f"callgrind: all done in {time.monotonic() - started:.0f} s", file=sys.stderr)
        valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
        meta = {
            "command": " ".join(["python", "bench/callgrind.py", *sys.argv[1:]]),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "requests": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "python": sys.version.split()[0],
            "aiohttp": version("aiohttp"),
            "uvloop": version("uvloop"),
            "valgrind": valgrind.stdout.strip(),
            # What the drivers import (the checkout's own gateway/): the rows but -plain run
            # these compiled, and each driver checked what it ran (drive()).
            "compiled": len(plain.checkout_compiled()),
        }
        print(markdown(rows, meta))
        if args.top:
            print()
            print(hot_spots(rows, args.top_target, args.top, args.requests))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(row.problem is None for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
