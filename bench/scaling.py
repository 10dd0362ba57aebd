"""How the gateway scales with the size of its configuration and its caches, in one run.

    python bench/scaling.py           # 3 rounds of 4 s per target, then the memory runs (~9 min)
    python bench/scaling.py --quick   # 1 round of 1 s; 10, 100, 1,000 routes; 2,000 tokens: smoke

Measures, with the setup of bench/compare.py (nginx upstream `return 200 "ok"`; the gateway,
one worker, `--log-level warning`, pinned to core 0; wrk and the upstream on core 1; the bearer
header from a Lua script) and with ratios to baselines measured in the same run:

1. Route count: 10, 1,000 and 10,000 protected routes (per service `/svc{i}/items/**`, an `{id}`
   route or an exact path, all RS256), both with distinct first segments and under one shared
   prefix `/api/v1`; requests for a route near the start and one near the end of the table,
   the `{id}` going round 100,000 values (more paths than the gateway remembers lookups for).
   req/s and CPU per request against 10 routes, `gateway check` wall time, start to /readyz,
   and VmRSS at idle.
2. Keys per JWKS: 1 against 20 RSA keys, the token signed by the last one, with the JWT cache
   warm (one token) and off (every request a signature check).
3. Memory: VmRSS of the gateway process at idle, then after N distinct valid ES256 JWTs were
   verified (the verified-token cache holds at most VERIFIED_CACHE_SIZE of them), then after N
   distinct opaque tokens were introspected and cached (`introspection.cache_size`).

Loopback only; every wrk run is bounded in time, every token phase in requests and time; only
the processes this script started are stopped, each by its PID. Progress goes to stderr, the
Markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from joserfc.jwk import RSAKey

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (REPO, BENCH):  # run as `python bench/scaling.py`: gateway/ and compare.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from compare import (  # noqa: E402
    AS_ISSUER,
    AUDIENCE,
    EC_KID,
    ES_ISSUER,
    GATEWAY_HEAD,
    ISSUER,
    MIX_LUA,
    SINGLE_LUA,
    Bench,
    Introspection,
    Keys,
    Row,
    Server,
    Service,
    Target,
    cache_counts,
    core_plan,
    free_port,
    gateway_version,
    get,
    load_average,
    make_keys,
    measure_all,
    mint,
    pinned,
    run_meta,
    start_upstream,
    stop,
    wrk,
)

from gateway.pipeline.verify.jwt import VERIFIED_CACHE_SIZE  # noqa: E402

SHAPES = {"distinct": "", "shared": "/api/v1"}  # the paths' shape -> the prefix of every route
EXTRA_KEYS = 19  # the 20-key JWKS: 19 other RSA keys, then the signing key last
COLD_MIX = 1_000  # distinct tokens sent to a gateway whose JWT cache holds one
GOAL = 0.95  # the issue's target: 10,000 routes at least 0.95× the req/s of 10 routes

CONFIG = GATEWAY_HEAD + "{routes}"  # compare.py's issuers and upstream, routes of our own

MEMORY_ROUTES = """\
  - name: es256
    match: {path: /es/**}
    upstream: up
    auth: {issuers: [es], scopes: [read]}
  - name: introspected
    match: {path: /opaque/**}
    upstream: up
    auth: {issuers: [opaque], scopes: [read]}
"""


def service_routes(count: int, prefix: str) -> str:
    """``count`` protected routes, one per service: a catch-all, an ``{id}`` route for GET and
    HEAD, or an exact path for GET, in turn. None covers another."""
    shapes = [
        '{{path: "{p}/svc{i}/items/**"}}',
        '{{path: "{p}/svc{i}/items/{{id}}", methods: [GET, HEAD]}}',
        '{{path: "{p}/svc{i}/status", methods: [GET]}}',
    ]
    return "".join(
        f"  - name: svc{i}\n"
        f"    match: {shapes[i % 3].format(p=prefix, i=i)}\n"
        "    upstream: up\n"
        "    auth: {issuers: [rs], scopes: [read]}\n"
        for i in range(count)
    )


def last_catch_all(count: int) -> int:
    """The last service whose route is a catch-all: the end of the table for a linear scan."""
    return (count - 1) - (count - 1) % 3


def vm_rss_mib(pid: int) -> float:
    """VmRSS of one process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- tokens -----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_es256_many(private: ec.EllipticCurvePrivateKey, count: int) -> list[str]:
    """``count`` distinct ES256 access tokens, signed with ``cryptography`` directly (joserfc
    per token would take minutes for 100,000); the claims are those of ``compare.mint``."""
    compact = {"separators": (",", ":")}
    header = _b64(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": EC_KID}, **compact).encode())
    now = int(time.time())
    tokens = []
    for n in range(count):
        claims = {
            "iss": ES_ISSUER, "aud": AUDIENCE, "sub": f"user-{n}", "client_id": "bench-client",
            "scope": "read", "iat": now, "exp": now + 3 * 3600, "jti": secrets.token_hex(8),
        }  # fmt: skip
        signing_input = f"{header}.{_b64(json.dumps(claims, **compact).encode())}"
        der = private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        tokens.append(f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
    return tokens


@dataclass
class Material:
    """Keys, JWKS files, tokens and wrk scripts, all in the work directory."""

    keys: Keys
    rs: str  # one RS256 token, signed by the last key of the 20-key JWKS
    rs_bad: str  # same claims and kid, another key
    es: str
    opaque: str
    jwks: dict[int, Path]  # keys in the JWKS -> file
    scripts: dict[str, Path]
    opaque_count: int
    jwt_count: int


# The route phases ask for `.../items/<id>` with the id going round 1..100,000: more distinct
# paths than the gateway remembers lookups and canonical paths for (4,096 each), so every
# request is routed through the index, not answered from what the last one found.
IDS_LUA = """\
local prefix = nil
local id = 0
function request()
  if prefix == nil then prefix = wrk.path:match("^(.*/)") end
  id = id % 100000 + 1
  return wrk.format(nil, prefix .. id, {["Authorization"] = "Bearer {token}"})
end
"""


def prepare(workdir: Path, tokens: int, introspection: Introspection) -> Material:
    keys = make_keys(workdir)  # rs-jwks.json (one key), es-jwks.json
    others = [
        RSAKey.generate_key(2048, parameters={"kid": f"other-{n}", "use": "sig"})
        for n in range(EXTRA_KEYS)
    ]
    many = workdir / "rs-jwks-20.json"
    many.write_text(json.dumps({"keys": [k.as_dict(private=False) for k in [*others, keys.rsa]]}))
    scripts: dict[str, Path] = {}

    def lines(name: str, values: list[str]) -> None:
        path = workdir / f"{name}.txt"
        path.write_text("".join(value + "\n" for value in values))
        scripts[name] = workdir / f"{name}.lua"
        scripts[name].write_text(MIX_LUA.format(path=path))

    material = Material(
        keys=keys, rs=mint(keys.rsa, "RS256", ISSUER), rs_bad=mint(keys.wrong_rsa, "RS256", ISSUER),
        es=mint(keys.ec, "ES256", ES_ISSUER), opaque="opaque-" + secrets.token_urlsafe(24),
        jwks={1: workdir / "rs-jwks.json", 20: many}, scripts=scripts, opaque_count=tokens,
        jwt_count=tokens,
    )  # fmt: skip
    for name, token in (("rs", material.rs), ("es", material.es)):
        scripts[name] = workdir / f"{name}.lua"
        scripts[name].write_text(SINGLE_LUA.format(token=token))
    scripts["rs-ids"] = workdir / "rs-ids.lua"
    scripts["rs-ids"].write_text(IDS_LUA.replace("{token}", material.rs))
    lines("rs-mix", [mint(keys.rsa, "RS256", ISSUER, f"user-{n}") for n in range(COLD_MIX)])
    started = time.monotonic()
    private = keys.ec.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    lines("es-many", mint_es256_many(private, tokens))
    print(f"  {tokens} ES256 tokens in {time.monotonic() - started:.0f}s", file=sys.stderr)
    opaque = ["opaque-" + secrets.token_urlsafe(24) for _ in range(tokens)]
    introspection.tokens.update([material.opaque, *opaque])
    lines("opaque-many", opaque)
    return material


# -- gateways ---------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One gateway configuration: its server for compare.measure_all, and what loading it took."""

    key: str
    server: Server
    config: Path
    routes: int
    shape: str = ""
    keys: int = 1
    check_s: float = float("nan")
    ready_s: float = float("nan")
    idle_rss_mib: float = float("nan")
    problem: str = ""


def gateway(
    bench: Bench, material: Material, introspection: int, key: str, routes: str, *,
    jwks: Path, cold: bool = False,
) -> tuple[Server, Path]:  # fmt: skip
    port, admin = free_ports()
    config = bench.workdir / f"{key}.yaml"
    config.write_text(
        CONFIG.format(
            port=port, admin=admin, issuer=ISSUER, rs_jwks=jwks, audience=AUDIENCE,
            es_issuer=ES_ISSUER, es_jwks=bench.workdir / "es-jwks.json", as_issuer=AS_ISSUER,
            introspection=introspection, upstream=bench.upstream_port, routes=routes,
        )
    )  # fmt: skip
    # compare.py's launcher sets the JWT cache of the gateway's own CLI to one entry.
    launcher = (
        [str(BENCH / "compare.py"), "--serve-gateway-uncached"] if cold else ["-m", "gateway"]
    )
    command = [sys.executable, *launcher, "run", "--config", str(config), "--log-level", "warning"]
    return Server(key, command, port, [], admin=admin, cwd=REPO), config


def free_ports() -> tuple[int, int]:
    first = free_port()
    while (second := free_port()) == first:
        pass
    return first, second


def route_gateways(
    bench: Bench, material: Material, introspection: int, counts: list[int]
) -> list[Gateway]:
    out = []
    for shape, prefix in SHAPES.items():
        for count in counts:
            key = f"routes-{shape}-{count}"
            server, config = gateway(
                bench, material, introspection, key, service_routes(count, prefix),
                jwks=material.jwks[1],
            )  # fmt: skip
            for where, service in (("start", 0), ("end", last_catch_all(count))):
                server.targets.append(
                    Target(f"{key}-{where}", f"{count} routes, {shape}, {where}",
                           f"{prefix}/svc{service}/items/42", "1 token, 100,000 paths",
                           material.scripts["rs-ids"], material.rs, material.rs_bad)
                )  # fmt: skip
            out.append(Gateway(key, server, config, count, shape=shape))
    return out


def key_gateways(bench: Bench, material: Material, introspection: int) -> list[Gateway]:
    out = []
    routes = service_routes(10, "")
    for keys in (1, 20):
        for cold in (False, True):
            key = f"keys-{keys}" + ("-cold" if cold else "")
            server, config = gateway(
                bench, material, introspection, key, routes, jwks=material.jwks[keys], cold=cold
            )
            script, mix = material.scripts["rs"], "1 token, warm JWT cache"
            if cold:
                script, mix = material.scripts["rs-mix"], f"{COLD_MIX} tokens, JWT cache off"
            server.targets.append(
                Target(key, f"{keys} key(s) in the JWKS", "/svc9/items/42", mix, script,
                       material.rs, material.rs_bad)
            )  # fmt: skip
            out.append(Gateway(key, server, config, 10, keys=keys))
    return out


def check_time(config: Path, cores: set[int] | None) -> tuple[float, str]:
    """Wall time of ``gateway check`` (load, validate, compile, print the table), and why it
    failed if it did."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600,
        preexec_fn=pinned(cores),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        return elapsed, "gateway check: " + " / ".join(done.stderr.strip().splitlines()[-3:])
    return elapsed, ""


def launch(bench: Bench, item: Gateway, started: list[Service]) -> None:
    """Start one gateway (alone, so that its start is timed undisturbed) and read its idle RSS."""
    begun = time.monotonic()
    bench.launch(item.server)
    if item.server.service is not None:
        started.append(item.server.service)
    if item.server.problem is not None:
        item.problem = item.server.problem
        return
    item.ready_s = time.monotonic() - begun
    assert item.server.service is not None
    time.sleep(0.5)
    item.idle_rss_mib = vm_rss_mib(item.server.service.process.pid)


# -- memory -----------------------------------------------------------------------------------


@dataclass
class MemoryStep:
    state: str
    rss_mib: float
    sent: int | None = None  # requests sent during the step
    misses: float = float("nan")  # cache misses during the step: tokens verified/introspected
    non_2xx: float = 0.0
    note: str = ""


@dataclass
class TokenPhase:
    """Sends a token file's tokens in order, one wrk thread, resuming where the last run ended."""

    url: str
    script: Path
    sent: int = 0
    non_2xx: float = 0.0
    rate: float = 0.0

    def send_until(self, bench: Bench, goal: int, deadline: float) -> None:
        while self.sent < goal and (left := deadline - time.monotonic()) > 1:
            # Aim at the goal from the last run's rate, 1 s to 10 s at a time, within the bound.
            duration = 2.0 if not self.rate else (goal - self.sent) / self.rate
            duration = max(1.0, min(10.0, duration, left - 1))
            figures = wrk(
                self.url, self.script, duration=duration, connections=bench.args.connections,
                threads=1, cores=bench.load_cores, start=self.sent,
            )  # fmt: skip
            self.sent += int(figures["requests"])
            self.non_2xx += figures["non_2xx"] + figures["socket_errors"]
            self.rate = figures["rps"] or 1.0


def measure_memory(bench: Bench, material: Material, item: Gateway) -> list[MemoryStep]:
    service, admin = item.server.service, item.server.admin
    assert service is not None
    pid, port = service.process.pid, item.server.port
    steps = [MemoryStep("idle, 12 routes", item.idle_rss_mib)]
    for path, token in (("/es/item", material.es), ("/opaque/item", material.opaque)):
        status, body = get(port, path, token)
        if status != 200 or body != b"ok":
            raise RuntimeError(f"{path}: the good token got {status}, not 200 ok")
    warm = TokenPhase(f"http://127.0.0.1:{port}/es/item", material.scripts["es"])
    warm.send_until(bench, 1, time.monotonic() + 30)
    steps.append(MemoryStep("after 2 s of one ES256 token (pools warm)", vm_rss_mib(pid),
                            warm.sent, non_2xx=warm.non_2xx))  # fmt: skip
    total, bound = material.jwt_count, bench.args.phase_time
    phases = [
        ("jwt", "ES256 JWTs", "/es/item", material.scripts["es-many"]),
        ("introspection", "opaque tokens", "/opaque/item", material.scripts["opaque-many"]),
    ]
    for cache, what, path, script in phases:
        then = "then " if cache == "introspection" else ""
        phase = TokenPhase(f"http://127.0.0.1:{port}{path}", script)
        deadline = time.monotonic() + bound
        for goal in sorted({min(total, VERIFIED_CACHE_SIZE), total}):
            before, sent = cache_counts(admin), phase.sent
            phase.send_until(bench, goal, deadline)
            misses = cache_counts(admin).get(f"{cache}_miss", 0.0) - before.get(f"{cache}_miss", 0)
            note = "" if phase.sent >= goal else f"stopped at the {bound:.0f} s bound"
            distinct = min(phase.sent, total)
            steps.append(MemoryStep(f"{then}after {distinct:,} distinct {what}",
                                    vm_rss_mib(pid), phase.sent - sent, misses, phase.non_2xx,
                                    note))  # fmt: skip
            phase.non_2xx = 0.0
        if not service.alive():
            raise RuntimeError(f"the gateway exited: {service.log_tail()}")
    return steps


# -- output -----------------------------------------------------------------------------------


def _num(value: float, digits: int = 0) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(value: float, base: float) -> str:
    return "–" if math.isnan(value) or math.isnan(base) or base <= 0 else f"{value / base:.2f}×"


def _versus(row: Row, base: Row | None) -> str:
    """A row's ratio cells against its baseline: median round's req/s, best round's req/s (the
    least disturbed by the machine's other load), and CPU time per request (baseline over row)."""
    if base is None:
        return "– | – | –"
    best = _ratio(max(row.rounds_rps, default=math.nan), max(base.rounds_rps, default=math.nan))
    cpu = _ratio(base.cpu_us_per_request, row.cpu_us_per_request)
    return f"{_ratio(row.rps, base.rps)} | {best} | {cpu}"


@dataclass
class Report:
    meta: dict[str, Any]
    routes: list[Gateway]
    keys: list[Gateway]
    rows: dict[str, Row]
    memory: list[MemoryStep] = field(default_factory=list)
    memory_problem: str = ""

    def row(self, key: str) -> Row | None:
        row = self.rows.get(key)
        return row if row is not None and row.status == "ok" else None

    def markdown(self) -> str:
        meta = self.meta
        lines = [
            f"{meta['date']}, {meta['cores']} cores; {meta['pinning']}.",
            f"Command: `{meta['command']}`. Gateway: {meta['gateway']}; Python {meta['python']}.",
            f"Upstream: {meta['upstream']}. Load: wrk {meta['wrk']}, {meta['rounds']} round(s), "
            "median round reported, each run after a warm-up.",
            f"Load average (1/5/15 min) before: {meta['load_before']}; after: "
            f"{meta['load_after']}.",
            "",
            *self.route_table(),
            "",
            *self.load_table(),
            "",
            *self.key_table(),
            "",
            *self.memory_table(),
            "",
            *self.goals(),
        ]
        return "\n".join(lines)

    def route_table(self) -> list[str]:
        lines = [
            "### Route count (one RS256 token, warm JWT cache; the `{id}` going round 100,000"
            " values)",
            "",
            "| routes | paths | request for | req/s | p50 ms | p99 ms | CPU µs/req | "
            "×10 routes (req/s) | ×10 routes (best round) | ×10 routes (by CPU/req) | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for item in self.routes:
            for target in item.server.targets:
                where = target.key.rsplit("-", 1)[1]
                base = self.row(f"routes-{item.shape}-10-{where}")
                row = self.rows.get(target.key)
                head = f"| {item.routes:,} | {item.shape} | `{target.path}` ({where}) |"
                if row is None or row.status != "ok":
                    status = row.status if row else item.problem or "not measured"
                    lines.append(f"{head} {status} | – | – | – | – | – | – | |")
                    continue
                lines.append(
                    f"{head} {_num(row.rps)} | {_num(row.p50_ms, 2)} | {_num(row.p99_ms, 2)} | "
                    f"{_num(row.cpu_us_per_request)} | {_versus(row, base)} | {row.notes} |"
                )
        return lines

    def load_table(self) -> list[str]:
        lines = [
            "### Loading the configuration",
            "",
            "| routes | paths | `gateway check` s | start to /readyz s | idle VmRSS MiB | "
            "×10 routes (RSS) |",
            "|---|---|---|---|---|---|",
        ]
        for item in self.routes:
            base = next(g for g in self.routes if g.shape == item.shape and g.routes == 10)
            lines.append(
                f"| {item.routes:,} | {item.shape} | {_num(item.check_s, 2)} | "
                f"{_num(item.ready_s, 2)} | {_num(item.idle_rss_mib, 1)} | "
                f"{_ratio(item.idle_rss_mib, base.idle_rss_mib)} |"
            )
        return lines

    def key_table(self) -> list[str]:
        lines = [
            "### Keys per JWKS (10 routes; the token signed by the last key)",
            "",
            "| keys | mix | req/s | p99 ms | CPU µs/req | ×1 key (req/s) | ×1 key (best round) "
            "| ×1 key (by CPU/req) | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for item in self.keys:
            target = item.server.targets[0]
            row = self.rows.get(target.key)
            base = self.row(target.key.replace(f"keys-{item.keys}", "keys-1"))
            if row is None or row.status != "ok":
                status = row.status if row else item.problem or "not measured"
                lines.append(f"| {item.keys} | {target.mix} | {status} | – | – | – | – | – | |")
                continue
            lines.append(
                f"| {item.keys} | {target.mix} | {_num(row.rps)} | {_num(row.p99_ms, 2)} | "
                f"{_num(row.cpu_us_per_request)} | {_versus(row, base)} | {row.notes} |"
            )
        return lines

    def memory_table(self) -> list[str]:
        small = next((g for g in self.routes if g.routes == 10), None)
        big = max(self.routes, key=lambda g: (g.routes, g.shape == "distinct"), default=None)
        base = small.idle_rss_mib if small else math.nan
        lines = [
            "### Memory (VmRSS of the gateway process)",
            "",
            f"The verified-JWT cache holds at most {VERIFIED_CACHE_SIZE:,} tokens "
            "(`VERIFIED_CACHE_SIZE` in gateway/pipeline/verify/jwt.py; no configuration key "
            "sets it); the introspection cache `issuers.<name>.introspection.cache_size` "
            "(default 100,000) active answers. RSS is what the process holds: memory Python "
            "freed is mostly kept for reuse, not returned.",
            "",
            "| state | requests in step | cache misses in step | VmRSS MiB | Δ MiB | "
            "×small idle | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, item in (("idle, 10 routes", small), ("idle, largest table", big)):
            if item is not None:
                name = label if item is small else f"idle, {item.routes:,} routes ({item.shape})"
                lines.append(
                    f"| {name} | – | – | {_num(item.idle_rss_mib, 1)} | – | "
                    f"{_ratio(item.idle_rss_mib, base)} | |"
                )
        if self.memory_problem:
            lines.append(f"| memory runs | not measured: {self.memory_problem} | | | | | |")
        previous = math.nan
        for step in self.memory:
            delta = "–" if math.isnan(previous) else f"{step.rss_mib - previous:+,.1f}"
            notes = [step.note] if step.note else []
            if step.non_2xx:
                notes.append(f"{step.non_2xx:.0f} non-2xx or socket errors")
            lines.append(
                f"| {step.state} | {'–' if step.sent is None else f'{step.sent:,}'} | "
                f"{_num(step.misses)} | {_num(step.rss_mib, 1)} "
                f"| {delta} | {_ratio(step.rss_mib, base)} | {'; '.join(notes)} |"
            )
            previous = step.rss_mib
        return lines

    def goals(self) -> list[str]:
        lines = [
            "| target | measured (median round) | ratio | met | ratio, best rounds | "
            "ratio by CPU/request |",
            "|---|---|---|---|---|---|",
        ]
        largest = max((g.routes for g in self.routes), default=0)
        for shape in SHAPES:
            row = self.row(f"routes-{shape}-{largest}-end")
            base = self.row(f"routes-{shape}-10-end")
            text = f"{largest:,} routes ({shape} paths, request near the end) ≥ {GOAL}× 10 routes"
            if row is None or base is None:
                lines.append(f"| {text} | not measured | – | – | – | – |")
                continue
            ratio = row.rps / base.rps
            _, best, cpu = _versus(row, base).split(" | ")
            lines.append(
                f"| {text} | {row.rps:,.0f} vs {base.rps:,.0f} req/s | {ratio:.2f}× | "
                f"{'yes' if ratio >= GOAL else 'no'} | {best} | {cpu} |"
            )
        return lines


# -- the run ----------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 2 minutes)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (4)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (1)")
    parser.add_argument("--rounds", type=int, help="runs per target, median reported (3)")
    parser.add_argument("--routes", help="route counts, comma-separated (10,1000,10000)")
    parser.add_argument("--tokens", type=int, help="distinct JWTs, then opaque tokens (100000)")
    parser.add_argument("--phase-time", type=float, help="bound in s per token phase (150)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    args = parser.parse_args()
    quick = args.quick
    args.duration = args.duration or (1.0 if quick else 4.0)
    args.warmup = args.warmup or 1.0
    args.rounds = args.rounds or (1 if quick else 3)
    args.tokens = args.tokens or (2_000 if quick else 100_000)
    args.phase_time = args.phase_time or (30.0 if quick else 150.0)
    args.counts = [int(n) for n in (args.routes or ("10,100,1000" if quick else "10,1000,10000"))
                   .split(",")]  # fmt: skip
    if 10 not in args.counts:
        parser.error("--routes must include 10: the baseline")
    args.max_warmup, args.only = 20.0, None  # what compare.Bench reads besides
    return args


def main() -> None:
    args = arguments()
    if shutil.which(os.environ.get("WRK", "wrk")) is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    target_cores, load_cores, pinning = core_plan()
    if load_cores is not None:
        os.sched_setaffinity(0, load_cores)  # this script and its introspection endpoint
    load_before, version = load_average(), gateway_version()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-scaling-"))
    bench = Bench(args, workdir, target_cores, load_cores)
    introspection = Introspection(set())
    # Thousands of distinct opaque tokens: keep the gateway's connections to the endpoint open
    # (HTTP/1.1), answer without waiting for Nagle (the head and the body are two writes), and
    # let a burst of connections queue rather than be dropped (the stub listens with 5).
    handler = introspection.server.RequestHandlerClass
    handler.protocol_version = "HTTP/1.1"  # type: ignore[attr-defined]
    handler.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    introspection.server.socket.listen(1024)
    started: list[Service] = []
    print(f"preparing keys and {args.tokens} + {args.tokens} tokens in {workdir}", file=sys.stderr)
    try:
        material = prepare(workdir, args.tokens, introspection)
        upstream, upstream_text = start_upstream(bench)
        started.append(upstream)
        print(f"upstream: {upstream_text}; {pinning}", file=sys.stderr)
        routes = route_gateways(bench, material, introspection.port, args.counts)
        keys = key_gateways(bench, material, introspection.port)
        memory_server, _ = gateway(
            bench, material, introspection.port, "memory",
            service_routes(10, "") + MEMORY_ROUTES, jwks=material.jwks[1],
        )  # fmt: skip
        memory = Gateway("memory", memory_server, workdir / "memory.yaml", 12)
        for item in routes:
            print(f"  gateway check: {item.key}", file=sys.stderr)
            item.check_s, item.problem = check_time(item.config, target_cores)
        for item in [*routes, *keys, memory]:
            if not item.problem:
                print(f"  starting {item.key}", file=sys.stderr)
                launch(bench, item, started)
            if item.problem:
                item.server.problem = item.problem
        servers = [item.server for item in [*routes, *keys]]
        rows = {row.key: row for row in measure_all(bench, servers)}
        report = Report({}, routes, keys, rows)
        if memory.problem:
            report.memory_problem = memory.problem
        else:
            print("  memory: distinct JWTs, then distinct opaque tokens", file=sys.stderr)
            try:
                report.memory = measure_memory(bench, material, memory)
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                report.memory_problem = " ".join(str(error).split())[:300]
        if not upstream.alive():
            raise SystemExit(f"the upstream exited during the run: {upstream.log_tail()}")
    finally:
        for service in reversed(started):
            stop(service)
        introspection.close()
    report.meta = run_meta(
        "bench/scaling.py", args, pinning, upstream_text, load_before, version, target_cores
    )
    print(report.markdown())
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
