"""RFC 7662 introspection, one issuer's conversation with its authorization server: client
authentication, where the endpoint comes from, how answers are judged, how long they are kept,
failures that are never kept, single flight and the bound on concurrent calls. Against a real
authorization server stub on loopback (:class:`AuthorizationServer`), which other introspection
tests use too."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web

from gateway.config import ConfigError, load_and_compile
from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.verify.discovery import IssuerMetadata
from gateway.pipeline.verify.expiring import ExpiringLru
from gateway.pipeline.verify.fetch import MAX_DOCUMENT_BYTES
from gateway.pipeline.verify.introspection import (
    MAX_CONCURRENT_CALLS,
    IntrospectionClient,
    Introspector,
    judge_answer,
)
from gateway.pipeline.verify.jwt import JwtVerifier
from gateway.pipeline.verify.token_cache import (
    MIN_NEGATIVE_ENTRIES,
    AnswerCache,
    SharedCache,
    cache_key,
)
from gateway.pipeline.verify.tokens import IssuerPolicy, TokenVerifier
from tests.integration.redis_fixture import free_port
from tests.support import AUDIENCE

CLIENT_ID = "gateway:edge"  # a ':' must be form-encoded before it goes into Basic credentials
CLIENT_SECRET = "s3cret/with+odd&chars"
TIMEOUT = 0.3  # the introspection timeout here; a "slow" server takes far longer
PATIENT = 5.0  # the timeout where a test holds calls back on purpose
SLOW = 10.0


# -- a real authorization server on loopback ----------------------------------------------------


@dataclass(frozen=True)
class IntrospectionRequest:
    form: Mapping[str, str]
    headers: Mapping[str, str]


Respond = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class AuthorizationServer:
    """An authorization server on loopback: an introspection endpoint (``/introspect``) that
    answers what a test set with :meth:`accept` (``{"active": false}`` for any other token) or
    fails as :meth:`fail` says, a discovery document naming it, and a record of every
    introspection request. ``hold()`` keeps requests waiting until ``release()``."""

    name: str = "as"
    url: str = ""
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[IntrospectionRequest] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)  # may be shared: the order servers were asked
    failure: Respond | None = None
    discovered_endpoint: str | None = None
    in_flight: int = 0
    most_in_flight: int = 0
    _gate: asyncio.Event | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def endpoint(self) -> str:
        return self.url + "/introspect"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def tokens_asked(self) -> list[str]:
        return [request.form["token"] for request in self.requests]

    def accept(self, token: str, **claims: Any) -> dict[str, Any]:
        """Answer ``token`` as active, with typical claims (``None`` removes one)."""
        now = int(time.time())
        answer: dict[str, Any] = {
            "active": True,
            "iss": self.issuer,
            "sub": "alice",
            "client_id": "client-1",
            "scope": "orders:read profile",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "token_type": "Bearer",
        }
        answer.update(claims)
        self.answers[token] = {k: v for k, v in answer.items() if v is not None}
        return self.answers[token]

    def answer(self, token: str, answer: dict[str, Any]) -> None:
        """Answer ``token`` with exactly ``answer``."""
        self.answers[token] = answer

    def fail(self, mode: str | None) -> None:
        """Fail every introspection request from now on as ``mode`` says (None: stop failing)."""
        self.failure = None if mode is None else FAILURES[mode](self)

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    async def linger(self) -> None:
        """Hold a slow answer back (until the server closes, at the latest)."""
        await asyncio.wait_for(self._closing.wait(), SLOW)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith("/.well-known/"):
            return web.json_response(
                {"issuer": self.issuer, "introspection_endpoint": self.discovered_endpoint}
            )
        if request.path != "/introspect" or request.method != "POST":
            return web.json_response({"error": "not_found"}, status=404)
        form = {name: str(value) for name, value in (await request.post()).items()}
        self.requests.append(IntrospectionRequest(form, dict(request.headers)))
        self.journal.append(self.name)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self._gate is not None:
                await asyncio.wait_for(self._gate.wait(), SLOW)
            if self.failure is not None:
                return await self.failure(request)
            return web.json_response(self.answers.get(form.get("token", ""), {"active": False}))
        finally:
            self.in_flight -= 1


async def _streamed_over_limit(request: web.BaseRequest) -> web.StreamResponse:
    # No Content-Length: only counting the bytes as they come can stop this one.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'{"active": true, "padding": "')
    chunk = b"x" * 65536
    for _ in range(MAX_DOCUMENT_BYTES // len(chunk) + 2):
        await response.write(chunk)
    await response.write(b'"}')
    await response.write_eof()
    return response


def _fixed(body: bytes, status: int = 200, **headers: str) -> Respond:
    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers)

    return respond


def _slower_than_the_timeout(server: AuthorizationServer) -> Respond:
    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        await server.linger()
        return web.json_response({"active": True})

    return respond


_ACTIVE = b'{"active": true, "sub": "alice", "scope": "orders:read"}'
FAILURES: dict[str, Callable[[AuthorizationServer], Respond]] = {
    "timeout": _slower_than_the_timeout,
    "server_error": lambda s: _fixed(b'{"error": "down"}', status=500),
    "unauthorized": lambda s: _fixed(b'{"error": "invalid_client"}', status=401),
    "redirect": lambda s: _fixed(b"", status=302, Location=s.endpoint),
    "not_json": lambda s: _fixed(b"<html>maintenance</html>", content_type="text/html"),
    "truncated_json": lambda s: _fixed(_ACTIVE[:-10]),
    "not_an_object": lambda s: _fixed(b'[{"active": true}]'),
    "over_1_mib": lambda s: _fixed(
        b'{"active": true, "padding": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}'
    ),
    "over_1_mib_streamed": lambda s: _streamed_over_limit,
}


@asynccontextmanager
async def authorization_server(name: str = "as") -> AsyncIterator[AuthorizationServer]:
    server = AuthorizationServer(name=name)
    runner = web.ServerRunner(web.Server(server.handle), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    server.discovered_endpoint = server.endpoint
    try:
        yield server
    finally:
        server.release()
        server._closing.set()
        await runner.cleanup()


def refused_endpoint() -> str:
    """An introspection endpoint on loopback where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/introspect"


# -- the introspector under test ----------------------------------------------------------------


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[AuthorizationServer]:
    async with authorization_server() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Subject:
    """An introspector with the cache, clock and metrics it was made with."""

    introspector: Introspector
    cache: AnswerCache
    clock: Clock
    metrics: Metrics

    async def answer(self, token: str) -> Mapping[str, Any] | None:
        return await self.introspector.answer(token)

    def introspections(self, result: str) -> float:
        labels = {"issuer": self.introspector.issuer, "result": result}
        sample = self.metrics.registry.get_sample_value(
            "gateway_introspection_requests_total", labels
        )
        return sample or 0.0

    def lookups(self, result: str) -> float:
        labels = {"cache": "introspection", "result": result}
        return self.metrics.registry.get_sample_value("gateway_token_cache_total", labels) or 0.0


def introspector_for(
    server: AuthorizationServer,
    session: aiohttp.ClientSession,
    *,
    endpoint: str | None = None,
    metadata: IssuerMetadata | None = None,
    auth_method: str = "client_secret_basic",
    cache_ttl: float = 300,
    negative_cache_ttl: float = 10,
    cache_size: int = 1000,
    shared: SharedCache | None = None,
    clock: Clock | None = None,
    timeout: float = TIMEOUT,
) -> Subject:
    clock = clock or Clock()
    cache = AnswerCache(cache_size, clock=clock)
    metrics = Metrics()
    introspector = Introspector(
        "corp",
        client=IntrospectionClient(CLIENT_ID, CLIENT_SECRET, auth_method),
        endpoint=endpoint if endpoint is not None or metadata else server.endpoint,
        metadata=metadata,
        sessions=lambda: session,
        timeout=timeout,
        cache_ttl=cache_ttl,
        negative_cache_ttl=negative_cache_ttl,
        cache=cache,
        shared=shared,
        metrics=metrics,
        clock=clock,
    )
    return Subject(introspector, cache, clock, metrics)


@pytest.fixture
def subject(server: AuthorizationServer, session: aiohttp.ClientSession) -> Subject:
    return introspector_for(server, session)


@pytest.fixture
def patient(server: AuthorizationServer, session: aiohttp.ClientSession) -> Subject:
    """An introspector that waits long enough for calls a test holds back."""
    return introspector_for(server, session, timeout=PATIENT)


def stored_items(cache: AnswerCache) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) the cache holds, in whichever of its spaces."""
    for space in vars(cache).values():
        if isinstance(space, ExpiringLru):
            yield from space.items()


# -- client authentication and the request (RFC 7662 §2.1) -------------------------------------


async def test_basic_client_authentication_puts_form_encoded_credentials_in_the_header(
    server: AuthorizationServer, subject: Subject
) -> None:
    await subject.answer("opaque-token")
    [request] = server.requests
    scheme, _, credentials = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined with ':'.
    assert base64.b64decode(credentials).decode() == (
        f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"
    )
    assert request.form == {"token": "opaque-token", "token_type_hint": "access_token"}


async def test_post_client_authentication_puts_the_credentials_in_the_form(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    subject = introspector_for(server, session, auth_method="client_secret_post")
    await subject.answer("opaque-token")
    [request] = server.requests
    assert "Authorization" not in request.headers
    assert request.form == {
        "token": "opaque-token",
        "token_type_hint": "access_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


async def test_the_endpoint_is_found_through_discovery_when_not_configured(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    metadata = IssuerMetadata(lambda: session, server.issuer, timeout=TIMEOUT, allow_http=False)
    subject = introspector_for(server, session, metadata=metadata)
    server.accept("opaque-token")
    assert (await subject.answer("opaque-token") or {}).get("active") is True
    assert server.calls == 1


async def test_a_discovered_plain_http_endpoint_on_another_host_is_never_called(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    # The document comes from loopback, but names a plain-http endpoint elsewhere: the token
    # would cross the network in clear text. The rule for configured URLs holds here too.
    server.discovered_endpoint = "http://idp.example.test/introspect"
    metadata = IssuerMetadata(lambda: session, server.issuer, timeout=TIMEOUT, allow_http=False)
    subject = introspector_for(server, session, metadata=metadata)
    assert await subject.answer("opaque-token") is None
    assert subject.introspections("error") == 1
    assert server.calls == 0


# -- plain http (SPEC §3 `allow_http`; the non-loopback error is in tests/config) ---------------

CONFIG = """\
issuers:
  corp:
    issuer: https://idp.example.com
    audiences: [https://api.example.test]
    {allow_http}
    introspection:
      endpoint: {endpoint}
      client_id: gateway
routes:
  - name: orders
    match: {{path: /orders}}
    upstream: http://orders.internal:8000
"""

PLAIN_HTTP_WARNING = (
    "line 7: warning: issuers.corp.introspection.endpoint: the issuer is reached over plain http"
)


def compile_problems(directory: Path, endpoint: str, allow_http: bool = False) -> list[str]:
    path = directory / "gateway.yaml"
    allow = "allow_http: true" if allow_http else ""
    path.write_text(CONFIG.format(endpoint=endpoint, allow_http=allow))
    try:
        compiled, _ = load_and_compile(path, environ={})
    except ConfigError as error:
        return [problem.describe() for problem in error.problems]
    return [warning.describe() for warning in compiled.warnings]


@pytest.mark.parametrize("host", ["127.0.0.1:9000", "localhost:9000", "[::1]:9000"])
def test_a_plain_http_introspection_endpoint_on_loopback_is_only_a_warning(
    tmp_path: Path, host: str
) -> None:
    assert compile_problems(tmp_path, f"http://{host}/introspect") == [PLAIN_HTTP_WARNING]


def test_allow_http_makes_a_plain_http_introspection_endpoint_only_a_warning(
    tmp_path: Path,
) -> None:
    endpoint = "http://idp.example.com/introspect"
    assert compile_problems(tmp_path, endpoint, allow_http=True) == [PLAIN_HTTP_WARNING]


def test_an_https_introspection_endpoint_is_neither_error_nor_warning(tmp_path: Path) -> None:
    assert compile_problems(tmp_path, "https://idp.example.com/introspect") == []


# -- judging an answer (RFC 7662 §2.2, by the rules for JWT claims) -----------------------------

ISSUER = "https://idp.example.com"
NOW = 1_000_000.0


def judge(answer: dict[str, Any], *, now: float = NOW) -> VerifiedToken | Denial:
    return judge_answer(
        answer, issuer_name="corp", issuer=ISSUER, leeway=30, scope_claim="scope", now=now
    )


def reason(answer: dict[str, Any]) -> str | None:
    result = judge(answer)
    return result.reason if isinstance(result, Denial) else None


@pytest.mark.parametrize("active", [None, "true", 1, 1.0, "yes", [True], {"active": True}, False])
def test_an_answer_whose_active_is_not_exactly_true_is_inactive(active: Any) -> None:
    answer = {"sub": "alice", "exp": NOW + 60} | ({} if active is None else {"active": active})
    assert reason(answer) == "inactive"


def test_an_active_answer_past_its_exp_and_the_leeway_is_expired() -> None:
    assert reason({"active": True, "exp": NOW - 31}) == "expired"
    assert reason({"active": True, "exp": NOW - 29}) is None


def test_an_active_answer_before_its_nbf_is_not_yet_valid() -> None:
    assert reason({"active": True, "nbf": NOW + 31}) == "not_yet_valid"


def test_an_active_answer_naming_another_issuer_is_wrong_issuer() -> None:
    assert reason({"active": True, "iss": "https://other.example.com"}) == "wrong_issuer"


def test_an_answer_without_iss_is_taken_as_from_the_issuer_asked() -> None:
    result = judge({"active": True, "sub": "alice"})
    assert isinstance(result, VerifiedToken)
    assert result.claims["iss"] == ISSUER
    assert result.issuer == "corp"
    assert result.introspected


def test_an_answer_for_a_refresh_token_is_wrong_type() -> None:
    assert reason({"active": True, "token_type": "refresh_token"}) == "wrong_type"


@pytest.mark.parametrize(
    "claims",
    [{"exp": "soon"}, {"exp": 10**400}, {"nbf": True}, {"sub": 42}, {"aud": [1]}],
    ids=["exp-string", "exp-huge", "nbf-bool", "sub-number", "aud-numbers"],
)
def test_an_answer_with_claims_of_the_wrong_type_is_malformed(claims: dict[str, Any]) -> None:
    assert reason({"active": True, **claims}) == "malformed_token"


def test_the_scopes_and_claims_of_an_active_answer_are_those_of_the_token() -> None:
    result = judge(
        {"active": True, "scope": "orders:read profile", "client_id": "c1", "tenant": "acme"}
    )
    assert isinstance(result, VerifiedToken)
    assert result.scopes == {"orders:read", "profile"}
    assert result.claims["client_id"] == "c1"
    assert result.claims["tenant"] == "acme"
    assert "active" not in result.claims


# -- what is kept, and for how long -------------------------------------------------------------


async def test_an_answer_is_kept_so_the_authorization_server_is_asked_once(
    server: AuthorizationServer, subject: Subject
) -> None:
    server.accept("opaque-token")
    first = await subject.answer("opaque-token")
    second = await subject.answer("opaque-token")
    assert first == second == server.answers["opaque-token"]
    assert server.calls == 1


async def test_the_cache_holds_the_answer_under_a_sha256_key_and_never_the_token(
    server: AuthorizationServer, subject: Subject
) -> None:
    token = "opaque-" + secrets.token_urlsafe(32)
    answer = server.accept(token)
    await subject.answer(token)
    items = list(stored_items(subject.cache))
    assert [key for key, _ in items] == [cache_key("corp", token)]
    assert token not in repr(items)
    assert subject.cache.get(cache_key("corp", token)) == answer


async def test_an_active_answer_is_kept_at_most_cache_ttl(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock(NOW)
    subject = introspector_for(server, session, cache_ttl=300, clock=clock)
    server.accept("opaque-token", exp=int(NOW) + 3600)
    await subject.answer("opaque-token")
    clock.now += 299
    await subject.answer("opaque-token")
    assert server.calls == 1
    clock.now += 2
    await subject.answer("opaque-token")
    assert server.calls == 2


async def test_an_active_answer_is_never_kept_past_the_tokens_exp(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock(NOW)
    subject = introspector_for(server, session, cache_ttl=300, clock=clock)
    server.accept("opaque-token", exp=int(NOW) + 50)
    await subject.answer("opaque-token")
    clock.now += 49
    await subject.answer("opaque-token")
    assert server.calls == 1
    clock.now += 2
    await subject.answer("opaque-token")
    assert server.calls == 2


async def test_an_active_answer_already_past_its_exp_is_not_kept(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock(NOW)
    subject = introspector_for(server, session, clock=clock)
    server.accept("opaque-token", exp=int(NOW) - 1)
    await subject.answer("opaque-token")
    await subject.answer("opaque-token")
    assert server.calls == 2
    assert len(subject.cache) == 0


async def test_an_inactive_answer_is_kept_for_negative_cache_ttl(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    clock = Clock(NOW)
    subject = introspector_for(server, session, negative_cache_ttl=10, clock=clock)
    assert await subject.answer("unknown-token") == {"active": False}
    clock.now += 9
    await subject.answer("unknown-token")
    assert server.calls == 1
    clock.now += 2
    await subject.answer("unknown-token")
    assert server.calls == 2


async def test_an_answer_with_an_unreadable_exp_is_neither_kept_nor_a_crash(
    server: AuthorizationServer, subject: Subject
) -> None:
    # 10**400 is a valid JSON number that no float can hold: `exp - now` raised (a 500).
    server.answer("opaque-token", {"active": True, "exp": 10**400})
    answer = await subject.answer("opaque-token")
    assert answer is not None
    assert reason(dict(answer)) == "malformed_token"
    assert len(subject.cache) == 0


async def test_a_flood_of_random_tokens_neither_grows_the_cache_nor_evicts_a_good_answer(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    # A small cache, so that its negative space is the minimum (MIN_NEGATIVE_ENTRIES); a long
    # timeout, so that a loaded machine cannot make queued calls give up (not what is tested).
    subject = introspector_for(server, session, cache_size=100, timeout=PATIENT)
    server.accept("good-token")
    await subject.answer("good-token")
    flood = [secrets.token_urlsafe(32) for _ in range(10_000)]
    started = time.monotonic()
    for start in range(0, len(flood), 500):  # bounded in count (10,000) and in time (below)
        await asyncio.wait_for(
            asyncio.gather(*(subject.answer(t) for t in flood[start : start + 500])), 10
        )
        assert len(subject.cache) <= 1 + MIN_NEGATIVE_ENTRIES
        assert time.monotonic() - started < 60, "the flood took too long"
    assert server.calls == 1 + len(flood)
    assert await subject.answer("good-token") == server.answers["good-token"]
    assert server.calls == 1 + len(flood)
    assert subject.lookups("hit") == 1


# -- failures: never kept -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*FAILURES, "connection_refused"])
async def test_a_failed_call_is_no_answer_and_is_never_kept(
    server: AuthorizationServer, session: aiohttp.ClientSession, mode: str
) -> None:
    endpoint = refused_endpoint() if mode == "connection_refused" else None
    subject = introspector_for(server, session, endpoint=endpoint)
    server.fail(None if mode == "connection_refused" else mode)
    started = time.monotonic()
    assert await subject.answer("opaque-token") is None
    assert time.monotonic() - started < TIMEOUT + 1
    assert await subject.answer("opaque-token") is None
    assert subject.introspections("error") == 2
    assert len(subject.cache) == 0


async def test_after_a_failure_the_next_request_gets_the_answer(
    server: AuthorizationServer, subject: Subject
) -> None:
    server.accept("opaque-token")
    server.fail("server_error")
    assert await subject.answer("opaque-token") is None
    server.fail(None)
    assert (await subject.answer("opaque-token") or {}).get("active") is True


# -- single flight and the bound on concurrent calls ------------------------------------------


async def test_concurrent_requests_for_one_uncached_token_share_one_call(
    server: AuthorizationServer, patient: Subject
) -> None:
    server.accept("opaque-token")
    server.hold()
    waiting = [asyncio.ensure_future(patient.answer("opaque-token")) for _ in range(500)]
    await wait_until(lambda: server.calls == 1)
    await asyncio.sleep(0.05)  # time for a second call, were one to be made
    server.release()
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert all(a == server.answers["opaque-token"] for a in answers)
    assert server.calls == 1
    assert patient.introspections("active") == 1


class DistantSharedCache:
    """A shared cache that takes ``latency`` for every call, like Redis across a network."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.entries: dict[str, tuple[Mapping[str, Any], float]] = {}

    async def get(self, key: str) -> tuple[Mapping[str, Any], float] | None:
        await asyncio.sleep(self.latency)
        return self.entries.get(key)

    async def put(self, key: str, answer: Mapping[str, Any], ttl: float) -> None:
        await asyncio.sleep(self.latency)
        self.entries[key] = (answer, ttl)

    async def close(self) -> None:
        pass


async def test_requests_arriving_during_a_call_share_it_even_with_a_distant_shared_cache(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    # A request that missed in memory and then waited for the shared cache must still find
    # the call in flight (or its answer): a lookup that spans the end of the call made another.
    subject = introspector_for(server, session, shared=DistantSharedCache(latency=0.02))
    server.accept("opaque-token")
    waiting = []
    for _ in range(50):  # one request every 2 ms, for 100 ms
        waiting.append(asyncio.ensure_future(subject.answer("opaque-token")))
        await asyncio.sleep(0.002)
    answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert all(a == server.answers["opaque-token"] for a in answers)
    assert server.calls == 1


async def test_concurrent_requests_share_a_failure_and_the_next_one_asks_again(
    server: AuthorizationServer, patient: Subject
) -> None:
    server.fail("server_error")
    server.hold()
    waiting = [asyncio.ensure_future(patient.answer("opaque-token")) for _ in range(50)]
    await wait_until(lambda: server.calls == 1)
    server.release()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 10) == [None] * 50
    server.fail(None)
    await patient.answer("opaque-token")
    assert server.calls == 2


async def test_a_request_giving_up_does_not_cancel_the_call_others_wait_for(
    server: AuthorizationServer, patient: Subject
) -> None:
    server.accept("opaque-token")
    server.hold()
    gives_up = asyncio.ensure_future(patient.answer("opaque-token"))
    waits = asyncio.ensure_future(patient.answer("opaque-token"))
    await wait_until(lambda: server.calls == 1)
    gives_up.cancel()
    server.release()
    assert (await asyncio.wait_for(waits, 5) or {}).get("active") is True
    assert server.calls == 1


async def test_at_most_max_concurrent_calls_reach_the_authorization_server_at_once(
    server: AuthorizationServer, patient: Subject
) -> None:
    server.hold()
    tokens = [f"token-{index}" for index in range(3 * MAX_CONCURRENT_CALLS)]
    waiting = [asyncio.ensure_future(patient.answer(token)) for token in tokens]
    await wait_until(lambda: server.in_flight == MAX_CONCURRENT_CALLS)
    await asyncio.sleep(0.1)  # time for more calls to arrive, were they let through
    assert server.in_flight == MAX_CONCURRENT_CALLS
    server.release()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert server.most_in_flight == MAX_CONCURRENT_CALLS
    assert server.calls == len(tokens)


async def test_a_request_queued_behind_busy_calls_still_gets_its_answer_within_the_timeout(
    server: AuthorizationServer, subject: Subject
) -> None:
    # Every call is taken by a server that does not answer, and more requests queue for one:
    # the last must not wait for call after call to time out (a flood of tokens would stall
    # every request for minutes), but get its 503 within `timeout`.
    server.hold()
    queued = [
        asyncio.ensure_future(subject.answer(f"queued-{index}"))
        for index in range(3 * MAX_CONCURRENT_CALLS)
    ]
    await wait_until(lambda: server.in_flight == MAX_CONCURRENT_CALLS)
    started = time.monotonic()
    assert await asyncio.wait_for(subject.answer("one-more-token"), 5) is None
    assert time.monotonic() - started < TIMEOUT + 0.5  # it waited for 3 calls in turn: 4 x 0.3 s
    server.release()
    await asyncio.wait_for(asyncio.gather(*queued), 10)


# -- metrics ------------------------------------------------------------------------------------


async def test_each_call_is_counted_by_its_result_and_each_lookup_as_hit_or_miss(
    server: AuthorizationServer, subject: Subject
) -> None:
    server.accept("good-token")
    await subject.answer("good-token")  # miss, active
    await subject.answer("good-token")  # hit
    await subject.answer("unknown-token")  # miss, inactive
    await subject.answer("unknown-token")  # hit (negative)
    server.fail("server_error")
    await subject.answer("third-token")  # miss, error
    assert (subject.introspections("active"), subject.introspections("inactive")) == (1, 1)
    assert subject.introspections("error") == 1
    assert (subject.lookups("hit"), subject.lookups("miss")) == (2, 3)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


# -- the verifier's judgement of cached answers --------------------------------------------


def verifier_over(subject: Subject, issuer: str) -> TokenVerifier:
    policy = IssuerPolicy(
        name="corp",
        issuer=issuer,
        leeway=30.0,
        scope_claim="scope",
        introspector=subject.introspector,
        introspect_jwts=True,
    )
    return TokenVerifier(JwtVerifier({}), {"corp": policy}, clock=subject.clock)


async def test_a_cached_answer_is_judged_once_and_gives_the_same_verified_token(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    subject = introspector_for(server, session)
    server.accept("opaque-token")
    verifier = verifier_over(subject, server.issuer)
    first = await verifier.verify("opaque-token")
    second = await verifier.verify("opaque-token")
    assert isinstance(first, VerifiedToken) and first.claims["sub"] == "alice"
    assert second is first  # so what a route decided for it is kept with it too


async def test_a_cached_answer_still_expires_on_time(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    subject = introspector_for(server, session)
    server.accept("opaque-token", exp=int(subject.clock.now) + 60)
    verifier = verifier_over(subject, server.issuer)
    assert isinstance(await verifier.verify("opaque-token"), VerifiedToken)
    subject.clock.now += 60 + 31  # past exp and the leeway, while the judgement is remembered
    result = await verifier.verify("opaque-token")
    assert isinstance(result, Denial) and result.reason == "expired"


async def test_a_new_answer_for_a_token_is_judged_afresh(
    server: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    subject = introspector_for(server, session, cache_ttl=1)
    server.accept("opaque-token")
    verifier = verifier_over(subject, server.issuer)
    assert isinstance(await verifier.verify("opaque-token"), VerifiedToken)
    server.answer("opaque-token", {"active": False})  # revoked
    subject.clock.now += 2  # the cached answer is gone: the server is asked again
    result = await verifier.verify("opaque-token")
    assert isinstance(result, Denial) and result.reason == "inactive"
