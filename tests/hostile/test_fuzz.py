"""Fuzzing: generated paths, headers and tokens against an in-process gateway (hypothesis), and
random and mutated HTTP/1.1 thrown at a running ``gateway run`` process for a bounded time.

The invariants: never a 500, a deny never turns into an allow (no token, or a broken one, never
gets a 200 from a protected route, nor reaches its upstream), and the process is still healthy
and serving afterwards. ``GATEWAY_FUZZ_SECONDS`` sets the raw fuzzer's run (20 s by default);
``GATEWAY_FUZZ_SEED`` replays one (under CI the seed is fixed: see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.process import gateway_process
from tests.e2e.wire import raw_request, reset
from tests.support import (
    AUDIENCE,
    RunningGateway,
    TokenIssuer,
    Upstream,
    b64json,
    b64url,
    echo_upstream,
    running_gateway,
    write_config,
)

ISSUER = TokenIssuer()

CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 2s
limits:
  max_body_bytes: 1048576
  header_timeout: 1s
  body_timeout: 1s
  idle_timeout: 2s
issuers:
  corp:
    issuer: {issuer}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
upstreams:
  echo: {{url: "{upstream}", timeout: 2s}}
routes:
  - name: public
    match: {{path: /public/**}}
    upstream: echo
    auth: public
    cors: {{allow_origins: ["https://app.example.test"]}}
  - name: admin
    match: {{path: /admin/**}}
    upstream: echo
    auth: {{scopes: [admin]}}
  - name: private
    match: {{path: /private}}
    upstream: echo
    auth: {{}}
"""

PROTECTED = ("/admin", "/private")


def protected_paths(upstream: Upstream) -> list[str]:
    return [r.path for r in upstream.received if r.path.startswith(PROTECTED)]


def admin_token(lifetime: int = 300) -> str:
    now = int(time.time())
    return ISSUER.token(scope="admin", iat=now, exp=now + lifetime)


# -- the in-process gateway, for hypothesis ----------------------------------------------------


@dataclass
class Served:
    """A gateway and its recording upstream, on an event loop of their own: hypothesis runs
    plain functions, each example drives the loop until its request is answered."""

    loop: asyncio.AbstractEventLoop
    gateway: RunningGateway
    upstream: Upstream

    def send(
        self, target: str, headers: Sequence[tuple[str, str]] = (), method: str = "GET"
    ) -> int:
        self.upstream.received.clear()
        response = self.loop.run_until_complete(
            raw_request(self.gateway.url, target, method=method, headers=headers)
        )
        return response.status


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("fuzz")
    ISSUER.write_jwks(directory / "corp.jwks.json")
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        upstream = loop.run_until_complete(stack.enter_async_context(echo_upstream()))
        path = write_config(
            directory, CONFIG, issuer=ISSUER.issuer, audience=AUDIENCE, upstream=upstream.url
        )
        gateway = loop.run_until_complete(stack.enter_async_context(running_gateway(path)))
        yield Served(loop, gateway, upstream)
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


FUZZ = settings(
    max_examples=int(os.environ.get("GATEWAY_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Pieces that path tricks are made of (tests/hostile/test_bypass_corpus.py has them one by one).
PATH_PIECES = [
    "admin", "public", "private", "users", "..", ".", "", "%2e", "%2E%2e", ".%2e", "%2f", "%2F",
    "%5c", "\\", ";", ";x=y", "%3b", "%00", "%23", "#", "?", "?x=/public", "*", "**",
    "%c0%ae", "%e0%80%ae", "%ff", "%25", "%252e", "%u002e", "~", "%7e", "//", "%20", "%",
    "%zz", "é", "\x7f", ":", "@", "!", "'", "(", "%41dmin", "%61dmin", "ADMIN",
]  # fmt: skip

paths = st.lists(
    st.one_of(
        st.sampled_from(PATH_PIECES),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=4),
    ),
    max_size=10,
).map(lambda pieces: "/" + "/".join(pieces))


@FUZZ
@given(target=paths)
def test_no_generated_path_is_a_server_error_or_reaches_a_protected_upstream_without_a_token(
    served: Served, target: str
) -> None:
    status = served.send(target)
    assert status < 500
    assert protected_paths(served.upstream) == []
    if status == 200:
        assert [r.path.startswith("/public") for r in served.upstream.received] == [True]


IDENTITY_NAMES = [
    "X-Auth-Subject", "x-auth-subject", "X_Auth_Subject", "X-AUTH-SCOPES", "x_auth_issuer",
    "X-Auth-Client-Id", "X-Auth-Anything", "x-auth-", "X_AUTH_", "X-Original-URL",
    "X_Original_URL", "X-Rewrite-URL", "X-Forwarded-Prefix", "X_Forwarded_For", "Forwarded",
    "X-Real-IP",
]  # fmt: skip
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

header_names = st.one_of(
    st.sampled_from(IDENTITY_NAMES), st.text(TOKEN_CHARS, min_size=1, max_size=20)
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x09, max_codepoint=0xFF, exclude_characters="\r\n"),
    max_size=40,
)


@FUZZ
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=12),
    target=st.sampled_from(["/public/x", "/admin/users", "/private"]),
    method=st.sampled_from(["GET", "POST", "OPTIONS", "DELETE", "HEAD", "PATCH"]),
)
def test_generated_headers_never_make_a_server_error_an_allow_or_a_spoofed_header_upstream(
    served: Served, headers: list[tuple[str, str]], target: str, method: str
) -> None:
    status = served.send(target, headers, method=method)
    assert status < 500
    assert protected_paths(served.upstream) == []
    assert not (target.startswith(PROTECTED) and status == 200)
    for received in served.upstream.received:
        for name, _ in received.headers:
            key = name.lower().replace("_", "-")
            assert not key.startswith("x-auth-"), name
            assert key not in {"x-original-url", "x-rewrite-url", "x-forwarded-prefix",
                               "forwarded", "x-real-ip"}, name  # fmt: skip


def _mutate_text(text: str, data: st.DataObject) -> str:
    position = data.draw(st.integers(0, len(text)), label="position")
    piece = data.draw(st.text(alphabet=TOKEN_CHARS + '=/ \t\x7f\xa0\xff{}"', max_size=3))
    cut = data.draw(st.integers(0, 3), label="deleted")
    return text[:position] + piece + text[position + cut :]


@FUZZ
@given(data=st.data(), segment=st.sampled_from([0, 1]))
def test_a_valid_admin_token_with_its_header_or_claims_mutated_is_never_allowed(
    served: Served, data: st.DataObject, segment: int
) -> None:
    token = admin_token()
    parts = token.split(".")
    parts[segment] = _mutate_text(parts[segment], data)
    forged = ".".join(parts)
    if forged.strip(" \t") == token:  # the same token (spaces around it are no part of it)
        return
    status = served.send("/admin/users", [("Authorization", f"Bearer {forged}")])
    assert status in (400, 401, 403)
    assert served.upstream.received == []


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
jose_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["none", "RS256", "HS256", "ES256", "EdDSA", "PS256", "", "rs256"]),
        "kid": st.one_of(st.sampled_from([ISSUER.rsa.kid, ISSUER.ec.kid, "x"]), json_values),
        "typ": st.one_of(st.sampled_from(["at+jwt", "JWT"]), json_values),
        "crit": json_values,
        "jku": st.just("https://attacker.test/jwks"),
        "b64": st.booleans(),
    },
)
claim_sets = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.one_of(st.just(ISSUER.issuer), st.just([ISSUER.issuer]), json_values),
        "aud": st.one_of(st.just(AUDIENCE), json_values),
        "scope": st.one_of(st.just("admin"), json_values),
        "exp": st.one_of(st.just(int(time.time()) + 3600), json_values),
        "sub": json_values,
    },
)


@FUZZ
@given(
    header=jose_headers,
    claims=claim_sets,
    signature=st.binary(max_size=300),
    shape=st.sampled_from(["jws", "unsigned", "json", "raw"]),
    raw=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=60),
)
def test_a_forged_token_of_any_shape_is_refused_never_a_server_error(
    served: Served,
    header: dict[str, object],
    claims: dict[str, object],
    signature: bytes,
    shape: str,
    raw: str,
) -> None:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    token = {
        "jws": f"{signing_input}.{b64url(signature)}",
        "unsigned": f"{signing_input}.",
        "json": json.dumps(
            {
                "protected": b64json(header),
                "payload": b64json(claims),
                "signature": b64url(signature),
            }
        ),
        "raw": raw,
    }[shape]
    status = served.send("/admin/users", [("Authorization", f"Bearer {token}")])
    assert status in (400, 401, 403)
    assert served.upstream.received == []


def test_the_hypothesis_gateway_does_allow_the_unmutated_token(served: Served) -> None:
    # The properties above would pass against a gateway that refuses everything.
    assert served.send("/admin/users", [("Authorization", f"Bearer {admin_token()}")]) == 200
    assert served.send("/public/x") == 200


# -- the raw-socket fuzzer against a running process -------------------------------------------

FUZZ_SECONDS = float(os.environ.get("GATEWAY_FUZZ_SECONDS", "20"))
CI_SEED = 20261201
FUZZ_SEED = int(
    os.environ.get("GATEWAY_FUZZ_SEED")
    or (CI_SEED if os.environ.get("CI") else random.randrange(1 << 30))
)
CONCURRENCY = 64
ANSWER_TIMEOUT = 5.0  # > header_timeout, body_timeout and the upstream timeout together
MAX_REQUESTS = 2_000_000  # a bound on the count, whatever the time

SPECIAL = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b"%", b"%00", b"%2f", b"/..", b"..;",
    b"\\", b"\xff", b"\xc0\xae", b"chunked", b"\r\nTransfer-Encoding: chunked",
    b"\r\nContent-Length: 7", b"\r\nContent-Length: -1", b"\r\n\r\n", b"0\r\n\r\n",
    b"HTTP/1.1", b"Bearer ", b"?access_token=x", b"\r\n x", b"#", b"*", b"\r\nExpect: 100-continue",
    b"\r\nConnection: close", b"\r\nUpgrade: websocket", b"\r\nX_Auth_Subject: root",
]  # fmt: skip


def seeds(token: str) -> list[tuple[bytes, int]]:
    """Valid requests to start from, each with the status it gets unmutated."""
    host = b"Host: api.example.test\r\n"
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n"
    return [
        (b"GET /public/x?q=1 HTTP/1.1\r\n" + host + b"Accept: */*\r\n\r\n", 200),
        (b"GET /admin/users HTTP/1.1\r\n" + host + auth + b"\r\n", 200),
        (b"GET /private HTTP/1.1\r\n" + host + b"\r\n", 401),
        (b"POST /public/x HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello", 200),
        (b"POST /admin/users HTTP/1.1\r\n" + host + auth
         + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200),
        (b"OPTIONS /public/x HTTP/1.1\r\n" + host + b"Origin: https://app.example.test\r\n"
         b"Access-Control-Request-Method: GET\r\n\r\n", 204),
        (b"HEAD /admin/users HTTP/1.1\r\n" + host + auth + b"Connection: keep-alive\r\n\r\n", 200),
        (b"POST /public/x HTTP/1.1\r\n" + host + b"Content-Type: application/x-www-form-urlencoded"
         b"\r\nContent-Length: 14\r\n\r\naccess_token=x", 200),
        (b"GET /public/x HTTP/1.0\r\n\r\n", 200),
    ]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(buffer))
        operation = rng.randrange(10)
        if operation == 0 and buffer:
            index = min(at, len(buffer) - 1)
            buffer[index] ^= 1 << rng.randrange(8)
        elif operation == 1:
            buffer[at:at] = rng.choice(SPECIAL)
        elif operation == 2:
            del buffer[at : at + rng.randint(1, 16)]
        elif operation == 3:
            buffer[at:at] = rng.randbytes(rng.randint(1, 16))
        elif operation == 4:  # a random header line after the request line
            name = "".join(rng.choice(TOKEN_CHARS) for _ in range(rng.randint(1, 12))).encode()
            value = rng.randbytes(rng.randint(0, 24)).replace(b"\r", b"").replace(b"\n", b"")
            line_end = buffer.find(b"\r\n") + 2 or len(buffer)
            buffer[line_end:line_end] = name + b": " + value + b"\r\n"
        elif operation == 5:  # a huge value somewhere
            buffer[at:at] = b"A" * rng.choice([1_000, 9_000, 70_000])
        elif operation == 6:  # a random method
            method = "".join(rng.choice(TOKEN_CHARS) for _ in range(rng.randint(1, 10)))
            space = buffer.find(b" ")
            buffer[: max(space, 0)] = method.encode() if rng.random() < 0.8 else rng.randbytes(4)
        elif operation == 7:  # a line twice
            lines = bytes(buffer).split(b"\r\n")
            line = rng.choice(lines)
            lines.insert(rng.randint(0, len(lines)), line)
            buffer = bytearray(b"\r\n".join(lines))
        elif operation == 8:
            del buffer[at:]
        elif buffer:
            buffer[min(at, len(buffer) - 1)] = rng.randrange(256)
    return bytes(buffer)


# Outcomes that are failures: a few of the requests that got them are kept, to replay.
BAD_OUTCOMES = ("500", "garbled", "no-answer", "connect-failed")


@dataclass
class Tally:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seed_misses: list[tuple[bytes, str]] = field(default_factory=list)
    probe_seconds: list[float] = field(default_factory=list)
    examples: dict[str, list[bytes]] = field(default_factory=dict)

    def record(self, data: bytes, outcome: str) -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        if outcome in BAD_OUTCOMES or outcome.startswith("5"):
            kept = self.examples.setdefault(outcome, [])
            if len(kept) < 3:
                kept.append(data[:400])


async def throw(host: str, port: int, data: bytes, rng: random.Random) -> str:
    """Send ``data`` on a new connection (in one to three writes); the status of the first
    answer, or how the connection ended without one."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError):
        return "connect-failed"
    try:
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 2)))
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            writer.write(data[start:end])
            await asyncio.wait_for(writer.drain(), ANSWER_TIMEOUT)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
        status_line = head.split(b"\r\n", 1)[0].split(b" ")
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            return "garbled"
        return status_line[1].decode("latin-1")
    except asyncio.IncompleteReadError as error:
        return "garbled" if error.partial else "closed"
    except asyncio.LimitOverrunError:
        return "garbled"
    except ConnectionError:
        return "reset"
    except TimeoutError:
        return "no-answer"
    finally:
        # A reset, not a FIN: thousands of connections a second leave no TIME_WAIT behind.
        with contextlib.suppress(OSError):
            reset(writer)


async def fuzz(host: str, port: int, token: str, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    corpus = seeds(token)

    async def worker(index: int) -> None:
        rng = random.Random(FUZZ_SEED * 1000 + index)
        while time.monotonic() < deadline and tally.sent < MAX_REQUESTS:
            base, expected = rng.choice(corpus)
            roll = rng.random()
            if roll < 0.05:
                data, expect = rng.randbytes(rng.randint(1, 300)), None
            elif roll < 0.15:
                data, expect = base, expected  # unmutated: must still be served as ever
            else:
                data, expect = mutate(rng, base), None
            outcome = await throw(host, port, data, rng)
            tally.record(data, outcome)
            if expect is not None and outcome != str(expect):
                tally.seed_misses.append((data[:60], outcome))

    async def prober() -> None:
        """A valid request every half second, all along: the gateway keeps serving."""
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with http.get(
                    f"http://{host}:{port}/admin/users",
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    assert response.status == 200
                    await response.read()
                tally.probe_seconds.append(time.monotonic() - started)
                await asyncio.sleep(0.5)

    await asyncio.gather(prober(), *(worker(index) for index in range(CONCURRENCY)))
    return tally


def logged_errors(log: Path) -> list[str]:
    """Error and critical lines of the gateway's log (read line by line: a long run's log is
    large), a failed request's ``request_failed`` among them."""
    found = []
    with log.open(errors="replace") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("level") in ("error", "critical"):
                found.append(line[:500])
    return found


@pytest.mark.timeout(FUZZ_SECONDS + 120)
async def test_a_running_gateway_survives_random_and_mutated_http_with_no_500(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ISSUER.write_jwks(tmp_path / "corp.jwks.json")
    token = admin_token(lifetime=int(FUZZ_SECONDS) + 600)
    async with echo_upstream() as upstream:
        config = write_config(
            tmp_path, CONFIG, issuer=ISSUER.issuer, audience=AUDIENCE, upstream=upstream.url
        )
        log = tmp_path / "gateway.log"
        async with gateway_process(config, log) as gateway:
            host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
            started = time.monotonic()
            tally = await fuzz(host, int(port), token, FUZZ_SECONDS)
            elapsed = time.monotonic() - started
            # Still alive, healthy and serving, after all of it.
            assert gateway.process is not None and gateway.process.poll() is None
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gateway.admin_url}/healthz") as response:
                    assert response.status == 200
                async with http.get(
                    f"{gateway.url}/admin/users", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    assert response.status == 200
            errors = logged_errors(log)
    histogram = dict(sorted(tally.outcomes.items()))
    with capsys.disabled():
        print(
            f"\nfuzz: seed {FUZZ_SEED}, {tally.sent} requests in {elapsed:.1f} s"
            f" ({tally.sent / elapsed:.0f}/s), outcomes {histogram},"
            f" probe max {max(tally.probe_seconds, default=0):.3f} s"
        )
    assert tally.sent > 0
    # No 5xx at all (the upstream is up and quick), no answer that is not HTTP/1.x, no
    # connection left hanging past every timeout, none refused: see the examples to replay.
    assert tally.examples == {}, (histogram, tally.examples)
    assert tally.seed_misses == []
    assert errors == [], errors[:3]


# -- atheris on normalize_path (optional) --------------------------------------------------------

ATHERIS_TARGET = textwrap.dedent(
    """\
    import re, sys
    import atheris

    with atheris.instrument_imports():  # a copy of gateway/pipeline/ingress.py (see below)
        from source.ingress import AmbiguousPath, normalize_path

    CANONICAL = re.compile(r"/[A-Za-z0-9\\-._~!$&'()*+,;=:@/%]*")

    def one_input(data: bytes) -> None:
        raw = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(256)
        try:
            path = normalize_path(raw)
        except AmbiguousPath:
            return
        assert CANONICAL.fullmatch(path), (raw, path)
        assert "//" not in path and "/./" not in path and "/../" not in path, (raw, path)
        assert not path.endswith(("/.", "/..")), (raw, path)
        for escape in re.findall(r"%(..)", path):
            assert escape == escape.upper() and escape not in ("2F", "5C", "00"), (raw, path)
        assert normalize_path(path) == path, (raw, path)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    """
)


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="atheris ships wheels for Linux x86_64 only (the dev extra installs it there)",
)
def test_atheris_finds_no_path_that_normalize_path_mishandles(tmp_path: Path) -> None:
    seconds = os.environ.get("GATEWAY_ATHERIS_SECONDS", "5")
    script = tmp_path / "fuzz_normalize_path.py"
    script.write_text(ATHERIS_TARGET)
    repo = Path(__file__).resolve().parents[2]
    # The module's source, imported beside the script: atheris instruments Python bytecode, and
    # the installed module may be compiled (setup.py), which would leave it no coverage to steer
    # by (the fuzzer would run blind, and pass).
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "__init__.py").write_text("")
    for name in ("ingress.py", "recent.py"):  # the module and what it imports (relatively)
        shutil.copy(repo / "gateway" / "pipeline" / name, tmp_path / "source" / name)
    result = subprocess.run(
        [sys.executable, str(script), f"-max_total_time={seconds}", "-rss_limit_mb=1024"],
        cwd=tmp_path,  # where libFuzzer would write a crash file
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        timeout=float(seconds) + 60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
