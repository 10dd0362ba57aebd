"""The gateway against HAProxy, Apache mod_auth_openidc and a naive aiohttp proxy, in one run.

    python bench/compare.py                  # 3 rounds of 10 s per target, Markdown on stdout
    python bench/compare.py --quick          # 1 round of 3 s per target: a smoke run
    python bench/compare.py --json out.json  # also write every figure as JSON (`--json -`: stdout)

Starts an upstream (nginx from Debian, `return 200 "ok"`; a small Python upstream if nginx is
missing) and every target server, each pinned to core 0 while wrk and the upstream share core 1
(where the machine has two cores), then loads one target at a time: the gateway (`python -m
gateway run`, one worker) on a public route, an RS256 JWT route, an ES256 route and an
introspected opaque-token route (warm cache); the same gateway with its verified-JWT cache
disabled (the cold-cache figure); a naive aiohttp proxy (`bench/naive_proxy.py`: PyJWT per
request, ClientSession), the same without auth; HAProxy with `jwt_verify` and Apache with
mod_auth_openidc, both on the same RS256 token.
Every target must first refuse a bad token (401/403) and accept the good one, else it is not
measured. wrk sends the bearer header from a Lua script: one token, or 10,000 distinct valid
tokens round-robin. Every target is measured once per round, all in the same order, and the
median round is reported. Figures: req/s, p50/p99 latency, CPU time of the target's processes
per request (from /proc), and ratios to the baselines measured in the same run. Loopback only;
every load run is bounded by --duration. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.client
import importlib.util
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
ISSUER = "https://issuer.bench"
ES_ISSUER = "https://issuer-es.bench"
AS_ISSUER = "https://as.bench"
AUDIENCE = "https://api.bench"
RSA_KID = "bench-rsa"
EC_KID = "bench-ec"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

# The baselines every row is divided by: (key of the row, column title).
BASELINES = [
    ("haproxy", "×HAProxy"),
    ("naive", "×naive"),
    ("naive-noauth", "×naive no-auth"),
    ("apache", "×Apache"),
    ("gw-public", "×gw public"),
]
# The issue's targets: (row, baseline row, at least, what it says).
GOALS = [
    ("gw-rs256", "haproxy", 1.0, "JWT route ≥ 1.0× HAProxy jwt_verify RS256"),
    ("gw-rs256", "naive-noauth", 2.0, "JWT route ≥ 2× naive proxy without auth"),
    ("gw-rs256", "apache", 3.0, "JWT route ≥ 3× Apache mod_auth_openidc"),
    ("gw-rs256", "gw-public", 0.9, "JWT route ≥ 0.9× the gateway's public route"),
    ("gw-rs256-cold", "haproxy-mix", 0.5, "cache-miss mix (cache off) ≥ 0.5× HAProxy"),
]

# Everything but the routes: bench/scaling.py adds routes of its own to it.
GATEWAY_HEAD = """\
listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin}"}}
workers: 1
shutdown_timeout: 2s
issuers:
  rs:
    issuer: {issuer}
    jwks_file: {rs_jwks}
    algorithms: [RS256]
    audiences: [{audience}]
  es:
    issuer: {es_issuer}
    jwks_file: {es_jwks}
    algorithms: [ES256]
    audiences: [{audience}]
  opaque:
    issuer: {as_issuer}
    allow_http: true
    introspection:
      endpoint: http://127.0.0.1:{introspection}/introspect
      client_id: bench
      client_secret: bench-secret
upstreams:
  up: {{url: "http://127.0.0.1:{upstream}", max_connections: 1024}}
routes:
"""

GATEWAY_CONFIG = (
    GATEWAY_HEAD
    + """\
  - name: public
    match: {{path: /public/**}}
    upstream: up
    auth: public
  - name: rs256
    match: {{path: /rs/**}}
    upstream: up
    auth: {{issuers: [rs], scopes: [read]}}
  - name: es256
    match: {{path: /es/**}}
    upstream: up
    auth: {{issuers: [es], scopes: [read]}}
  - name: introspected
    match: {{path: /opaque/**}}
    upstream: up
    auth: {{issuers: [opaque], scopes: [read]}}
"""
)

NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
}}
"""

# HAProxy's documented JWT recipe: algorithm pinned, issuer, audience, scope, signature, expiry.
HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4000
    log stderr format short local0 err

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {issuer} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str {audience} }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{key}") -m int 1 }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request deny deny_status 403 unless {{ var(txn.bearer),jwt_payload_query('$.scope') -m reg '(^| )read( |$)' }}
    default_backend upstream

backend upstream
    server up 127.0.0.1:{upstream} maxconn 1024
"""  # noqa: E501

APACHE_MODULES = (
    "mpm_event", "authn_core", "authz_core", "authz_user", "proxy", "proxy_http", "auth_openidc",
)  # fmt: skip
APACHE_CONFIG = """\
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {dir}/apache.pid
DefaultRuntimeDir {dir}
Mutex file:{dir} default
ErrorLog {dir}/apache-error.log
LogLevel warn
{modules}
{user}
# One child process (the target runs on one core), enough threads for wrk's connections.
StartServers 1
ServerLimit 1
ThreadsPerChild 128
ThreadLimit 128
MaxRequestWorkers 128
MinSpareThreads 1
MaxSpareThreads 128
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60

OIDCCryptoPassphrase {passphrase}
OIDCOAuthVerifyCertFiles {kid}#{cert}
OIDCOAuthRemoteUserClaim sub

<Location /api>
    AuthType oauth20
    <RequireAll>
        Require claim iss:{issuer}
        Require claim aud:{audience}
        Require claim scope:read
    </RequireAll>
    ProxyPass http://127.0.0.1:{upstream}/api
</Location>
"""

SINGLE_LUA = 'wrk.headers["Authorization"] = "Bearer {token}"\n'

# Every thread reads the token file once and walks it round-robin from its own offset. A run
# goes on where the previous one stopped (`-- <start>`): a fresh wrk would begin at the first
# token again, and a warm-up of several short runs would never reach the last ones.
MIX_LUA = """\
local threads = 0
function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end
local tokens = {{}}
local next_token = 0
function init(args)
  for line in io.lines([[{path}]]) do tokens[#tokens + 1] = line end
  local start = tonumber(args[1]) or 0
  next_token = (start + (thread_index or 0) * 7919) % #tokens
end
function request()
  next_token = next_token % #tokens + 1
  return wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. tokens[next_token]}})
end
"""


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def core_plan() -> tuple[set[int] | None, set[int] | None, str]:
    """Core 0 for the target, core 1 for wrk and the upstream, when there are two."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None, f"not pinned: only {len(cores)} core available"
    target, load = {cores[0]}, {cores[1]}
    return target, load, f"target on core {cores[0]}; wrk and upstream on core {cores[1]}"


def pinned(cores: set[int] | None) -> Callable[[], None] | None:
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: the fields start after its last ")".
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_split(root: int) -> tuple[float, float]:
    """CPU time of ``root``'s process tree, including reaped children: (user, system). The
    system part is the kernel's work for the process, its socket reads and writes above all."""
    user = system = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 here.
        utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
        user += utime + cutime
        system += stime + cstime
    return user / CLK_TCK, system / CLK_TCK


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(text[-lines:])


def start(
    name: str,
    command: list[str],
    workdir: Path,
    cores: set[int] | None,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Service:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            preexec_fn=pinned(cores),
        )
    return Service(name, process, log)


def stop(service: Service) -> None:
    """SIGTERM to the process we started, then SIGKILL to any of its descendants still alive
    (each by its own PID)."""
    descendants = process_tree(service.process.pid)[1:]
    if service.alive():
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=10)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_port(service: Service, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited: {service.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not listen on port {port} within {timeout:.0f}s")


def wait_ready(service: Service, admin: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited: {service.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(admin, "/readyz")[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not become ready within {timeout:.0f}s")


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


# -- keys and tokens --------------------------------------------------------------------------


@dataclass
class Keys:
    rsa: RSAKey
    ec: ECKey
    wrong_rsa: RSAKey
    wrong_ec: ECKey
    cert: Path  # self-signed X.509 certificate of the RSA key (Apache)
    public_pem: Path  # the RSA public key (HAProxy, naive proxy)


def make_keys(workdir: Path) -> Keys:
    def rsa_key() -> tuple[rsa.RSAPrivateKey, RSAKey]:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return private, RSAKey.import_key(pem, parameters={"kid": RSA_KID, "use": "sig"})

    private, good = rsa_key()
    _, wrong = rsa_key()
    ec_good = ECKey.generate_key("P-256", parameters={"kid": EC_KID})
    ec_wrong = ECKey.generate_key("P-256", parameters={"kid": EC_KID})
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(private, hashes.SHA256())
    )
    cert_path = workdir / "rsa-cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    public_path = workdir / "rsa-public.pem"
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (workdir / "rs-jwks.json").write_text(json.dumps({"keys": [good.as_dict(private=False)]}))
    (workdir / "es-jwks.json").write_text(json.dumps({"keys": [ec_good.as_dict(private=False)]}))
    return Keys(good, ec_good, wrong, ec_wrong, cert_path, public_path)


def mint(key: RSAKey | ECKey, alg: str, issuer: str, subject: str = "bench") -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": subject,
        "client_id": "bench-client",
        "scope": "read",
        "iat": now,
        "exp": now + 3 * 3600,
        "jti": secrets.token_hex(8),
    }
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


# -- introspection stub -----------------------------------------------------------------------


class Introspection:
    """A loopback RFC 7662 endpoint that knows a set of opaque tokens (answers are cached by
    the gateway: it is asked once per token)."""

    def __init__(self, tokens: set[str]) -> None:
        self.tokens = tokens
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                token = form.get("token", [""])[0]
                now = int(time.time())
                answer: dict[str, Any] = {"active": False}
                if token in outer.tokens:
                    answer = {
                        "active": True,
                        "iss": AS_ISSUER,
                        "sub": "bench",
                        "client_id": "bench-client",
                        "scope": "read",
                        "token_type": "access_token",
                        "iat": now,
                        "exp": now + 3 * 3600,
                    }
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- load -------------------------------------------------------------------------------------


def wrk(
    url: str, script: Path, *, duration: float, connections: int, threads: int,
    cores: set[int] | None, start: int = 0,
) -> dict[str, float]:  # fmt: skip
    command = [
        os.environ.get("WRK", "wrk"), f"-t{threads}", f"-c{connections}",
        f"-d{max(1, math.ceil(duration))}s", "--latency", "-s", str(script), url, "--", str(start),
    ]  # fmt: skip
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
        preexec_fn=pinned(cores),
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise RuntimeError(f"cannot read wrk's output: {out[-300:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rate.group(1)),
        "requests": float(total.group(1)),
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out)),
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out)),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": _socket_errors(sockets.group(1)) if sockets else 0.0,
    }


def _socket_errors(text: str) -> float:
    return float(sum(int(n) for n in re.findall(r"\d+", text)))


def _ms(found: re.Match[str] | None) -> float:
    if found is None:
        return float("nan")
    match = re.fullmatch(r"([\d.]+)(\w+)", found.group(1))
    if match is None:
        return float("nan")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}.get(unit, 1.0)


def cache_counts(admin: int | None) -> dict[str, float]:
    """``gateway_token_cache_total`` by (cache, result), from the admin listener."""
    if admin is None:
        return {}
    try:
        _, body = get(admin, "/metrics")
    except (OSError, http.client.HTTPException):
        return {}
    counts = {}
    pattern = r'gateway_token_cache_total\{cache="(\w+)",result="(\w+)"\} ([\d.e+]+)'
    for cache, result, value in re.findall(pattern, body.decode()):
        counts[f"{cache}_{result}"] = float(value)
    return counts


# -- targets ----------------------------------------------------------------------------------


@dataclass
class Tokens:
    keys: Keys
    count: int  # tokens in the mix
    rs: str
    rs_bad: str  # same claims and kid, signed by another key
    es: str
    es_bad: str
    opaque: str
    opaque_bad: str  # unknown to the introspection endpoint
    scripts: dict[str, Path]  # wrk Lua scripts: rs, es, opaque (one token each), mix


def prepare_tokens(workdir: Path, count: int, introspection: Introspection) -> Tokens:
    keys = make_keys(workdir)
    mix = workdir / "tokens.txt"
    mix.write_text(
        "".join(mint(keys.rsa, "RS256", ISSUER, f"user-{n}") + "\n" for n in range(count))
    )
    tokens = Tokens(
        keys=keys,
        count=count,
        rs=mint(keys.rsa, "RS256", ISSUER),
        rs_bad=mint(keys.wrong_rsa, "RS256", ISSUER),
        es=mint(keys.ec, "ES256", ES_ISSUER),
        es_bad=mint(keys.wrong_ec, "ES256", ES_ISSUER),
        opaque="opaque-" + secrets.token_urlsafe(24),
        opaque_bad="opaque-" + secrets.token_urlsafe(24),
        scripts={},
    )
    introspection.tokens.add(tokens.opaque)
    for name, token in (("rs", tokens.rs), ("es", tokens.es), ("opaque", tokens.opaque)):
        tokens.scripts[name] = workdir / f"{name}.lua"
        tokens.scripts[name].write_text(SINGLE_LUA.format(token=token))
    tokens.scripts["mix"] = workdir / "mix.lua"
    tokens.scripts["mix"].write_text(MIX_LUA.format(path=mix))
    return tokens


@dataclass
class Target:
    key: str
    label: str
    path: str
    mix: str
    script: Path
    good: str
    bad: str | None  # None: a target without auth, nothing to deny
    warm_requests: int = 0  # each warm-up goes on until this many requests were sent
    sent: int = 0  # requests sent so far: where the next run of a mix starts


@dataclass
class Server:
    """A target server: how to start it, and the targets measured on it."""

    name: str
    command: list[str]
    port: int
    targets: list[Target]
    admin: int | None = None  # the gateway's admin port: readiness and cache metrics
    cwd: Path | None = None
    env: dict[str, str] | None = None
    service: Service | None = None
    problem: str | None = None  # why it is not measured


@dataclass
class Sample:
    """One measured wrk run against one target."""

    rps: float
    requests: float
    p50_ms: float
    p99_ms: float
    non_2xx: float
    socket_errors: float
    cpu_s: float
    wall_s: float
    cache: dict[str, float]  # gateway_token_cache_total deltas, by "<cache>_<result>"
    system_s: float = 0.0  # the part of cpu_s spent in the kernel


@dataclass
class Row:
    key: str
    label: str
    mix: str
    status: str = "ok"
    check: str = ""
    rps: float = float("nan")
    requests: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu_us_per_request: float = float("nan")
    system_us_per_request: float = float("nan")  # the kernel's part of cpu_us_per_request
    cpu_percent: float = float("nan")
    non_2xx: float = 0.0
    socket_errors: float = 0.0
    rounds_rps: list[float] = field(default_factory=list)
    notes: str = ""
    ratios: dict[str, float] = field(default_factory=dict)

    def summarize(self, samples: list[Sample]) -> None:
        """The median round (by req/s) gives the figures; cache hits count every round."""
        ordered = sorted(samples, key=lambda s: s.rps)
        median = ordered[(len(ordered) - 1) // 2]
        self.rps, self.requests = median.rps, median.requests
        self.p50_ms, self.p99_ms = median.p50_ms, median.p99_ms
        if median.requests:
            self.cpu_us_per_request = median.cpu_s / median.requests * 1e6
            self.system_us_per_request = median.system_s / median.requests * 1e6
        self.cpu_percent = 100.0 * median.cpu_s / median.wall_s
        self.non_2xx = sum(s.non_2xx for s in samples)
        self.socket_errors = sum(s.socket_errors for s in samples)
        self.rounds_rps = [s.rps for s in samples]
        notes = []
        if len(samples) > 1:
            notes.append(
                f"median of {len(samples)} rounds ({ordered[0].rps:.0f}–{ordered[-1].rps:.0f})"
            )
        for cache in ("jwt", "introspection"):
            hit = sum(s.cache.get(f"{cache}_hit", 0) for s in samples)
            miss = sum(s.cache.get(f"{cache}_miss", 0) for s in samples)
            if hit + miss:
                notes.append(f"{cache} cache hits {100 * hit / (hit + miss):.0f}%")
        if self.non_2xx or self.socket_errors:
            notes.append(f"{self.non_2xx:.0f} non-2xx, {self.socket_errors:.0f} socket errors")
        self.notes = "; ".join(notes)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    target_cores: set[int] | None
    load_cores: set[int] | None
    upstream_port: int = 0

    def wanted(self, key: str) -> bool:
        only = self.args.only
        return not only or any(key == w or key.startswith(f"{w}-") for w in only.split(","))

    def launch(self, server: Server) -> None:
        """Start a target server on the target core; a failure is its `problem`."""
        service = start(
            server.name, server.command, self.workdir, self.target_cores,
            cwd=server.cwd, env=server.env,
        )  # fmt: skip
        server.service = service
        try:
            if server.admin is not None:
                wait_ready(service, server.admin)
            else:
                wait_port(service, server.port)
        except RuntimeError as error:
            server.problem = str(error)

    def check(self, server: Server, target: Target) -> str:
        """The target must refuse a bad token and accept the good one before it is measured."""
        denied = None
        if target.bad is not None:
            denied, _ = get(server.port, target.path, target.bad)
            if denied not in (401, 403):
                raise RuntimeError(f"accepted a bad token ({denied}, not 401/403)")
        status, body = get(server.port, target.path, target.good)
        if status != 200 or body != b"ok":
            raise RuntimeError(f"the good token got {status} {body[:80]!r}, not 200 ok")
        if denied is None:
            return "no auth: nothing to deny; good 200"
        return f"bad token {denied}; good 200"

    def run(self, server: Server, target: Target) -> Sample:
        """Warm up, then one measured wrk run, with the target's CPU time from /proc."""
        assert server.service is not None
        url = f"http://127.0.0.1:{server.port}{target.path}"

        def load(duration: float) -> dict[str, float]:
            figures = wrk(
                url, target.script, duration=duration, connections=self.args.connections,
                threads=self.args.threads, cores=self.load_cores, start=target.sent,
            )  # fmt: skip
            target.sent += int(figures["requests"])
            return figures

        # Warm-up: connection pools, caches. A mix's warm-up sends every token twice, every
        # round: a 10,000-entry LRU cycled by exactly 10,000 tokens loses one to any other token
        # seen in between (another target's), and then misses for a whole pass.
        deadline, first = time.monotonic() + self.args.max_warmup, target.sent
        while target.sent == first or (
            target.sent - first < target.warm_requests and time.monotonic() < deadline
        ):
            load(self.args.warmup)
        pid = server.service.process.pid
        before_cache = cache_counts(server.admin)
        before_cpu, started = cpu_split(pid), time.monotonic()
        figures = load(self.args.duration)
        after_cpu, wall = cpu_split(pid), time.monotonic() - started
        cpu = sum(after_cpu) - sum(before_cpu)
        after_cache = cache_counts(server.admin)
        if not server.service.alive():
            raise RuntimeError(f"{server.name} exited during the run: {server.service.log_tail()}")
        return Sample(
            rps=figures["rps"],
            requests=figures["requests"],
            p50_ms=figures["p50_ms"],
            p99_ms=figures["p99_ms"],
            non_2xx=figures["non_2xx"],
            socket_errors=figures["socket_errors"],
            cpu_s=cpu,
            system_s=after_cpu[1] - before_cpu[1],
            wall_s=wall,
            cache={k: v - before_cache.get(k, 0.0) for k, v in after_cache.items()},
        )


# -- the targets' servers ---------------------------------------------------------------------


def start_upstream(bench: Bench) -> tuple[Service, str]:
    port = free_port()
    bench.upstream_port = port
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)  # fmt: skip  # noqa: E501
    if nginx is not None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (bench.workdir / f"nginx-{sub}").mkdir(exist_ok=True)
        config = bench.workdir / "nginx.conf"
        config.write_text(NGINX_CONFIG.format(dir=bench.workdir, port=port))
        command = [nginx, "-p", str(bench.workdir), "-e", str(bench.workdir / "nginx-error.log"),
                   "-c", str(config)]  # fmt: skip
        service = start("nginx", command, bench.workdir, bench.load_cores)
        wait_port(service, port)
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        return service, f'{version.split(":")[-1].strip()} (return 200 "ok", 1 worker process)'
    command = [sys.executable, __file__, "--serve-upstream", str(port)]
    service = start("python-upstream", command, bench.workdir, bench.load_cores)
    wait_port(service, port)
    return service, "a Python asyncio upstream (nginx not found: apt-get install nginx-light)"


def gateway_config(bench: Bench, name: str, introspection: int) -> tuple[Path, int, int]:
    """A gateway configuration (GATEWAY_CONFIG) on free ports, written as ``<name>.yaml`` in
    the run's directory: its path, public port and admin port."""
    port, admin = free_port(), free_port()
    config = bench.workdir / f"{name}.yaml"
    config.write_text(
        GATEWAY_CONFIG.format(
            port=port,
            admin=admin,
            issuer=ISSUER,
            es_issuer=ES_ISSUER,
            as_issuer=AS_ISSUER,
            audience=AUDIENCE,
            rs_jwks=bench.workdir / "rs-jwks.json",
            es_jwks=bench.workdir / "es-jwks.json",
            introspection=introspection,
            upstream=bench.upstream_port,
        )
    )
    return config, port, admin


def run_meta(
    script: str, args: argparse.Namespace, pinning: str, upstream: str, load_before: str,
    gateway: str, target_cores: set[int] | None,
) -> dict[str, Any]:  # fmt: skip
    """What a benchmark's report says of its run, beside the figures."""
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(["python", script, *sys.argv[1:]]),
        "cores": len(os.sched_getaffinity(0) | (target_cores or set())),
        "pinning": pinning,
        "upstream": upstream,
        "wrk": f"-t{args.threads} -c{args.connections} -d{max(1, math.ceil(args.duration))}s",
        "rounds": args.rounds,
        "load_before": load_before,
        "load_after": load_average(),
        "python": interpreter(),
        "gateway": gateway,
    }


def gateway_server(
    bench: Bench,
    tokens: Tokens,
    introspection: int,
    *,
    cached: bool,
    logged: bool = False,
    plain: bool = False,
) -> Server:
    """A gateway process: ``cached=False`` with its JWT cache off; ``logged`` at the default
    ``--log-level info``, a JSON line a request written to its log file (the others run at
    ``warning``, like HAProxy and nginx here without access logs); ``plain`` with none of its
    modules compiled (bench/plain.py), to show what compiling them gains."""
    name = (
        "gateway-logged" if logged else "gateway-plain" if plain else
        "gateway" if cached else "gateway-nocache"
    )  # fmt: skip
    config, port, admin = gateway_config(bench, name, introspection)
    launcher = (
        [__file__, "--serve-gateway-plain"] if plain else
        ["-m", "gateway"] if cached else [__file__, "--serve-gateway-uncached"]
    )  # fmt: skip
    level = "info" if logged else "warning"
    command = [sys.executable, *launcher, "run", "--config", str(config), "--log-level", level]
    scripts, mix = tokens.scripts, f"{tokens.count} tokens"
    if logged:
        targets = [
            Target("gw-rs256-logged", "gateway, RS256 JWT route, a log line a request (`info`)",
                   "/rs/item", "1 token", scripts["rs"], tokens.rs, tokens.rs_bad),
        ]  # fmt: skip
    elif plain:
        targets = [
            Target("gw-plain-public", "gateway, public route, plain Python (nothing compiled)",
                   "/public/item", "1 token", scripts["rs"], tokens.rs, None),
            Target("gw-plain-rs256", "gateway, RS256 JWT route, plain Python (nothing compiled)",
                   "/rs/item", "1 token", scripts["rs"], tokens.rs, tokens.rs_bad),
        ]  # fmt: skip
    elif cached:
        targets = [
            Target("gw-public", "gateway, public route", "/public/item", "1 token",
                   scripts["rs"], tokens.rs, None),
            Target("gw-rs256", "gateway, RS256 JWT route", "/rs/item", "1 token",
                   scripts["rs"], tokens.rs, tokens.rs_bad),
            Target("gw-rs256-mix", "gateway, RS256 JWT route (warm cache)", "/rs/item", mix,
                   scripts["mix"], tokens.rs, tokens.rs_bad, warm_requests=2 * tokens.count),
            Target("gw-es256", "gateway, ES256 JWT route", "/es/item", "1 token",
                   scripts["es"], tokens.es, tokens.es_bad),
            Target("gw-introspected", "gateway, introspected opaque token (warm cache)",
                   "/opaque/item", "1 token", scripts["opaque"], tokens.opaque,
                   tokens.opaque_bad),
        ]  # fmt: skip
    else:
        targets = [
            Target("gw-rs256-cold", "gateway, RS256 JWT route, JWT cache off (cold)",
                   "/rs/item", mix, scripts["mix"], tokens.rs, tokens.rs_bad),
        ]  # fmt: skip
    return Server(name, command, port, targets, admin=admin, cwd=REPO)


def naive_server(bench: Bench, tokens: Tokens, *, auth: bool) -> Server:
    key = "naive" if auth else "naive-noauth"
    port = free_port()
    command = [sys.executable, str(BENCH / "naive_proxy.py"), "--port", str(port),
               "--upstream", f"http://127.0.0.1:{bench.upstream_port}"]  # fmt: skip
    if auth:
        command += ["--key", str(tokens.keys.public_pem), "--issuer", ISSUER,
                    "--audience", AUDIENCE, "--scope", "read"]  # fmt: skip
        label = "naive aiohttp proxy, PyJWT per request"
    else:
        command.append("--no-auth")
        label = "naive aiohttp proxy, no auth"
    target = Target(key, label, "/api/item", "1 token", tokens.scripts["rs"], tokens.rs,
                    tokens.rs_bad if auth else None)  # fmt: skip
    server = Server(key, command, port, [target])
    if importlib.util.find_spec("jwt") is None:
        server.problem = "PyJWT is not installed (pip install -e '.[dev]')"
    return server


def haproxy_server(bench: Bench, tokens: Tokens) -> Server:
    port = free_port()
    targets = [
        Target("haproxy", "HAProxy jwt_verify RS256", "/api/item", "1 token",
               tokens.scripts["rs"], tokens.rs, tokens.rs_bad),
        Target("haproxy-mix", "HAProxy jwt_verify RS256", "/api/item",
               f"{tokens.count} tokens", tokens.scripts["mix"], tokens.rs, tokens.rs_bad),
    ]  # fmt: skip
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)  # fmt: skip  # noqa: E501
    config = bench.workdir / "haproxy.cfg"
    server = Server("haproxy", [str(haproxy), "-db", "-f", str(config)], port, targets)
    if haproxy is None:
        server.problem = "haproxy is not installed (apt-get install haproxy)"
        return server
    config.write_text(
        HAPROXY_CONFIG.format(
            port=port,
            upstream=bench.upstream_port,
            issuer=ISSUER,
            audience=AUDIENCE,
            key=tokens.keys.public_pem,
        )
    )
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    if checked.returncode != 0:
        reason = (checked.stdout + checked.stderr).strip().splitlines()
        server.problem = "haproxy -c: " + " / ".join(reason[-3:])
    return server


def apache_server(bench: Bench, tokens: Tokens) -> Server:
    port = free_port()
    targets = [
        Target("apache", "Apache mod_auth_openidc RS256", "/api/item", "1 token",
               tokens.scripts["rs"], tokens.rs, tokens.rs_bad),
    ]  # fmt: skip
    apache = shutil.which("apache2") or shutil.which("httpd")
    if apache is None and os.access("/usr/sbin/apache2", os.X_OK):
        apache = "/usr/sbin/apache2"
    config = bench.workdir / "apache.conf"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}
    server = Server("apache", [str(apache), "-f", str(config), "-DFOREGROUND"], port, targets,
                    env=env)  # fmt: skip
    modules_dir = Path("/usr/lib/apache2/modules")
    missing = [m for m in APACHE_MODULES if not (modules_dir / f"mod_{m}.so").exists()]
    if apache is None or missing:
        what = "apache2" if apache is None else f"Apache modules {', '.join(missing)}"
        server.problem = (
            f"{what} not installed (apt-get install apache2 libapache2-mod-auth-openidc)"
        )
        return server
    user = ""
    if os.geteuid() == 0:
        # Apache will not serve as root: its child switches to the Debian web user, who must be
        # able to read the key and the run directory.
        user = "User www-data\nGroup www-data"
        bench.workdir.chmod(0o755)
        for path in bench.workdir.iterdir():
            if path.suffix in (".pem", ".json"):
                path.chmod(0o644)
    modules = "\n".join(f"LoadModule {m}_module {modules_dir}/mod_{m}.so" for m in APACHE_MODULES)
    config.write_text(
        APACHE_CONFIG.format(
            port=port,
            dir=bench.workdir,
            modules=modules,
            user=user,
            passphrase=secrets.token_hex(16),
            kid=RSA_KID,
            cert=tokens.keys.cert,
            issuer=ISSUER,
            audience=AUDIENCE,
            upstream=bench.upstream_port,
        )
    )
    checked = subprocess.run(
        [apache, "-t", "-f", str(config)], capture_output=True, text=True, env=env
    )
    if checked.returncode != 0:
        reason = (checked.stdout + checked.stderr).strip().splitlines()
        server.problem = "apache2 -t: " + " / ".join(reason[-3:])
    return server


# -- the run ----------------------------------------------------------------------------------


def measure_all(bench: Bench, servers: list[Server]) -> list[Row]:
    """Check every target, then measure them in rounds (every target once per round, in the
    same order), so that a slow drift of the machine's other load touches them all alike."""
    rows: dict[str, Row] = {}
    ready: list[tuple[Server, Target]] = []
    for server in servers:
        for target in server.targets:
            row = rows[target.key] = Row(target.key, target.label, target.mix)
            if server.problem is not None:
                row.status = "not measured: " + " ".join(server.problem.split())[:300]
                continue
            try:
                row.check = bench.check(server, target)
                ready.append((server, target))
            except (RuntimeError, OSError, http.client.HTTPException) as error:
                row.status = f"not measured: {error}"
    samples: dict[str, list[Sample]] = {target.key: [] for _, target in ready}
    for round_ in range(bench.args.rounds):
        for server, target in ready:
            row = rows[target.key]
            if row.status != "ok":
                continue
            print(f"  round {round_ + 1}: {target.label} [{target.mix}]", file=sys.stderr)
            try:
                samples[target.key].append(bench.run(server, target))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                row.status = "not measured: " + " ".join(str(error).split())[:300]
    for key, row in rows.items():
        if row.status == "ok" and samples.get(key):
            row.summarize(samples[key])
    return list(rows.values())


def add_ratios(rows: list[Row]) -> None:
    by_key = {row.key: row for row in rows if row.status == "ok"}
    for row in rows:
        if row.status != "ok":
            continue
        for key, _ in BASELINES:
            base = by_key.get(key)
            if base is not None and base.rps > 0:
                row.ratios[key] = row.rps / base.rps


def goals(rows: list[Row]) -> list[dict[str, Any]]:
    by_key = {row.key: row for row in rows if row.status == "ok"}
    out = []
    for key, baseline, at_least, text in GOALS:
        if baseline == "haproxy-mix" and baseline not in by_key:
            baseline = "haproxy"
        row, base = by_key.get(key), by_key.get(baseline)
        entry: dict[str, Any] = {"goal": text, "row": key, "baseline": baseline,
                                 "at_least": at_least, "ratio": None, "met": None}  # fmt: skip
        if row is not None and base is not None and base.rps > 0:
            entry["ratio"] = row.rps / base.rps
            entry["met"] = entry["ratio"] >= at_least
            entry["measured"] = f"{row.rps:.0f} vs {base.rps:.0f} req/s"
            # The same comparison by CPU time per request: the capacity of one core, less
            # sensitive than req/s to whatever else the machine runs.
            if row.cpu_us_per_request > 0 and base.cpu_us_per_request > 0:
                entry["cpu_ratio"] = base.cpu_us_per_request / row.cpu_us_per_request
                entry["measured_cpu"] = (
                    f"{row.cpu_us_per_request:.0f} vs {base.cpu_us_per_request:.0f} µs/req"
                )
        out.append(entry)
    return out


def _num(value: float, digits: int = 0) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['date']}, {meta['cores']} cores; {meta['pinning']}.",
        f"Upstream: {meta['upstream']}. Load: wrk {meta['wrk']}, {meta['rounds']} round(s), "
        "each run after a warm-up (a mix's warm-up sends every token twice).",
        f"Gateway: {meta['gateway']}; Python {meta['python']}.",
        f"Load average (1/5/15 min) before: {meta['load_before']}; after: {meta['load_after']}.",
        "",
    ]
    titles = [title for _, title in BASELINES]
    lines.append(
        "| target | mix | req/s | p50 ms | p99 ms | CPU µs/req | of which kernel | target CPU % | "
        + " | ".join(titles)
        + " | check | notes |"
    )
    lines.append("|" + "---|" * (10 + len(titles)))
    for row in rows:
        if row.status != "ok":
            cells = [row.label, row.mix, row.status] + ["–"] * (5 + len(titles)) + [row.check, ""]
        else:
            ratios = [
                f"{row.ratios[key]:.2f}×" if key in row.ratios else "–" for key, _ in BASELINES
            ]
            cells = [
                row.label, row.mix, _num(row.rps), _num(row.p50_ms, 2), _num(row.p99_ms, 2),
                _num(row.cpu_us_per_request), _num(row.system_us_per_request),
                _num(row.cpu_percent), *ratios, row.check,
                row.notes,
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| issue target | measured | ratio | met | CPU per request | ratio by CPU/request |",
        "|---|---|---|---|---|---|",
    ]
    for goal in meta["goals"]:
        if goal["ratio"] is None:
            lines.append(f"| {goal['goal']} | not measured | – | – | – | – |")
            continue
        met = "yes" if goal["met"] else "no"
        cpu = f"{goal['cpu_ratio']:.2f}×" if "cpu_ratio" in goal else "–"
        lines.append(
            f"| {goal['goal']} | {goal['measured']} | {goal['ratio']:.2f}× | {met} | "
            f"{goal.get('measured_cpu', '–')} | {cpu} |"
        )
    return "\n".join(lines)


def _no_nan(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def gateway_version() -> str:
    """The commit measured, whether the gateway's files differ from it, and how many of its
    modules are compiled (setup.py; `python -m gateway` runs the checkout's own files)."""
    from plain import checkout_compiled

    return f"{_commit()}; {len(checkout_compiled())} modules compiled with mypyc"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    if dirty:
        return f"commit {head} plus uncommitted changes in {len(dirty)} file(s) under gateway/"
    return f"commit {head}"


def interpreter() -> str:
    """The Python that runs the gateway and the naive proxies (this script's own): its version
    and build, which move the figures by several per cent (bench/RESULTS.md)."""
    version, build = platform.python_version(), " ".join(platform.python_build()[1].split()[:3])
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return f"{version}, built {build}"
    linked = "shared libpython" if "libpython" in maps else "libpython linked into the executable"
    return f"{version}, built {build}, {linked}"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def load_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """The options of a benchmark's wrk runs (here and in bench/means.py); ``unit``: what is
    measured in rounds (target, variant)."""
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--quick", action="store_true", help="a 3-second smoke run")
    parser.add_argument("--rounds", type=int, help=f"runs per {unit}, median reported (3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_arguments(parser, "target")
    parser.add_argument("--max-warmup", type=float, default=60.0, help="bound on a mix's warm-up")
    parser.add_argument("--tokens", type=int, default=10_000, help="distinct tokens in the mix")
    parser.add_argument("--only", help="comma-separated target keys or prefixes (gw,haproxy)")
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="write JSON to PATH ('-': stdout)"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.max_warmup = 3.0, 1.0, 20.0
    args.rounds = args.rounds or (1 if args.quick else 3)
    if shutil.which(os.environ.get("WRK", "wrk")) is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    target_cores, load_cores, pinning = core_plan()
    if load_cores is not None:
        os.sched_setaffinity(0, load_cores)  # this script and its introspection endpoint
    load_before, gateway = load_average(), gateway_version()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-compare-"))
    bench = Bench(args, workdir, target_cores, load_cores)
    print(f"preparing keys and {args.tokens} tokens in {workdir}", file=sys.stderr)
    introspection = Introspection(set())
    started: list[Service] = []
    try:
        tokens = prepare_tokens(workdir, args.tokens, introspection)
        upstream, upstream_text = start_upstream(bench)
        started.append(upstream)
        print(f"upstream: {upstream_text}; {pinning}", file=sys.stderr)
        servers = [
            gateway_server(bench, tokens, introspection.port, cached=True),
            gateway_server(bench, tokens, introspection.port, cached=False),
            gateway_server(bench, tokens, introspection.port, cached=True, logged=True),
            gateway_server(bench, tokens, introspection.port, cached=True, plain=True),
            naive_server(bench, tokens, auth=True),
            naive_server(bench, tokens, auth=False),
            haproxy_server(bench, tokens),
            apache_server(bench, tokens),
        ]
        for server in servers:
            server.targets = [t for t in server.targets if bench.wanted(t.key)]
        servers = [server for server in servers if server.targets]
        for server in servers:
            if server.problem is None:
                bench.launch(server)
                if server.service is not None:
                    started.append(server.service)
        rows = measure_all(bench, servers)
        if not upstream.alive():
            raise SystemExit(f"the upstream exited during the run: {upstream.log_tail()}")
    finally:
        for service in reversed(started):
            stop(service)
        introspection.close()
    add_ratios(rows)
    meta = run_meta(
        "bench/compare.py", args, pinning, upstream_text, load_before, gateway, target_cores
    )
    meta["goals"] = goals(rows)
    if args.json is not None:
        document = json.dumps(
            {"meta": meta, "rows": [_no_nan(asdict(r)) for r in rows]}, indent=2, allow_nan=False
        )
        if args.json == "-":
            print(document)
        else:
            Path(args.json).write_text(document + "\n")
    if args.json != "-":
        print(markdown(rows, meta))
    shutil.rmtree(workdir, ignore_errors=True)


# -- helper processes -------------------------------------------------------------------------


class _Upstream:
    """Answers every request with a fixed 200 (keep-alive): the fallback without nginx."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def eof_received(self) -> None:
        pass


def run_upstream(port: int) -> None:
    import asyncio

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Upstream, "127.0.0.1", port)  # type: ignore[arg-type]
        await server.serve_forever()

    asyncio.run(serve())


def serve_gateway_plain(argv: list[str]) -> int:
    """``gateway`` with every module imported from its source, none compiled (bench/plain.py)."""
    sys.path.insert(0, str(REPO))
    from plain import use_sources

    use_sources()
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


def limit_jwt_cache(size: int) -> None:
    """Make the gateway about to start in this process keep at most ``size`` verified tokens,
    through the existing ``cache_size`` parameter of ``JwtVerifier``: the name is replaced where
    ``gateway/issuers.py`` makes the verifier (a module that is not compiled, so it looks the name
    up at call time). Changes nothing in the gateway's files."""
    sys.path.insert(0, str(REPO))
    from gateway import issuers
    from gateway.pipeline.verify.jwt import JwtVerifier

    if not str(issuers.__file__).endswith(".py"):
        raise SystemExit("gateway/issuers.py is compiled: its JwtVerifier cannot be replaced")
    vars(issuers)["JwtVerifier"] = functools.partial(JwtVerifier, cache_size=size)


def serve_gateway_uncached(argv: list[str]) -> int:
    """``gateway`` with its verified-JWT cache reduced to one entry: with a 10,000-token mix
    every request is a cache miss (the cold-cache figure; the report's 0 % cache hits shows
    that the limit took)."""
    limit_jwt_cache(1)
    from gateway.cli import main as gateway_main

    return gateway_main(argv)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-upstream":
        run_upstream(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-gateway-uncached":
        sys.exit(serve_gateway_uncached(sys.argv[2:]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-gateway-plain":
        sys.exit(serve_gateway_plain(sys.argv[2:]))
    else:
        main()
