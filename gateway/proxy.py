"""A request's way through the gateway: ingress -> route -> extract -> verify -> authorize ->
forward -> observe. Each step lives in its own module; this one puts them in order
(:class:`Gateway`, one a configuration) and holds the public listener's handler
(:class:`Listener`: the current gateway, the requests in flight, the drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config.compile import CompiledConfig, CompiledRoute
from gateway.issuers import Issuers
from gateway.observe.logs import digest_fingerprint, get_logger, info_event, token_fingerprint
from gateway.observe.logs import enabled as logs_enabled
from gateway.observe.metrics import UNMATCHED_ROUTE, Metrics, method_label
from gateway.observe.trace import trace_id
from gateway.pipeline import errors
from gateway.pipeline.authorize import Authorizer
from gateway.pipeline.cors import is_preflight, label_for_origin, preflight_response
from gateway.pipeline.decision import Denial, Identity, VerifiedToken
from gateway.pipeline.extract import (
    FORM_CONTENT_TYPE,
    FORM_SCAN_BYTES,
    carries_access_token,
    extract_bearer,
)
from gateway.pipeline.identity import header_key, identity_headers
from gateway.pipeline.ingress import AmbiguousPath, normalize_path
from gateway.pipeline.routing import Match, MethodNotAllowed
from gateway.pipeline.verify.tokens import jwt_cache_key
from gateway.upstream.client import UpstreamClients
from gateway.upstream.forward import forward
from gateway.upstream.headers import (
    NEVER_FORWARDED,
    connection_tokens,
    forwarded_headers,
    is_trusted_peer,
    request_id,
)
from gateway.upstream.websocket import is_websocket_upgrade, proxy_websocket

log = get_logger("gateway")

# Request headers never sent upstream, compared like identity headers, with "_" equal to "-": a
# CGI or WSGI backend reads X_Original_URL and X_Forwarded_For as the headers removed here.
_NEVER_FORWARDED = frozenset(header_key(name) for name in NEVER_FORWARDED)


# How many request header names a gateway remembers the forwarding verdict of (exactly as
# sent: `X-Foo` and `x-foo` are two); names of other requests are judged each time.
FORWARDABLE_NAMES = 1024


class Exchange:
    """What is known about one request as it moves through the pipeline (for logs, metrics).

    A plain class rather than a dataclass, as one is made for every request: compiled, its
    ``__init__`` is native code, about a fifth of the time of a dataclass's generated Python."""

    __slots__ = (
        "caller", "denial", "identity", "identity_headers", "identity_lines", "method", "path",
        "request_id", "route", "started", "token", "token_digest", "upstream_seconds",
    )  # fmt: skip

    def __init__(self, request_id: str, method: str, started: float) -> None:
        self.request_id = request_id
        self.method = method
        self.started = started
        self.path: str | None = None
        self.route: CompiledRoute | None = None
        self.identity: Identity | None = None
        # Who a verified token says the caller is, even when the route then refuses it: the
        # log names the subject of an insufficient_scope denial too.
        self.caller: Identity | None = None
        self.denial: Denial | None = None
        self.token: str | None = None
        # A JWT's SHA-256, the verified-token cache's key: made once, for the log's token_fp.
        self.token_digest: bytes | None = None
        self.upstream_seconds: float | None = None
        self.identity_headers: Sequence[tuple[str, str]] = ()  # for the upstream
        self.identity_lines = ""  # the same, as header lines (CRLF after each)


class Listener:
    """The public listener's handler: each request goes to the gateway current when it arrives,
    which serves it to the end, across reloads (``gateway`` is replaced by a reload)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.inflight = 0  # requests being handled, of every generation
        self.stopping = False  # draining: set by the server's stop()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.inflight += 1
        try:
            response = await self.gateway.handle(request)
        finally:
            self.inflight -= 1
        if self.stopping:
            # Draining: no further request on this connection (its client opens a new one,
            # elsewhere), else a client that keeps its connection busy keeps the drain going
            # to the deadline. Before the headers went out, they say `Connection: close`;
            # after (a streamed response), aiohttp closes the connection once it is sent.
            response.force_close()
        return response


class Gateway:
    """One compiled configuration made live: key stores, verifier, upstream pools."""

    def __init__(
        self, compiled: CompiledConfig, metrics: Metrics, previous: Gateway | None = None
    ) -> None:
        self.compiled = compiled
        self.metrics = metrics
        self.inflight = 0  # requests this generation still serves (a reload waits for them)
        self.issuers: Issuers = Issuers(compiled, metrics, previous.issuers if previous else None)
        self.key_stores = self.issuers.key_stores
        self.verifier = self.issuers.verifier
        self.authorizer = Authorizer(
            {name: s.config.audiences for name, s in compiled.issuers.items()}
        )
        self.upstreams = UpstreamClients(compiled.upstreams)
        self.max_token_bytes = compiled.config.limits.max_token_bytes
        self._never_forwarded = _NEVER_FORWARDED
        if not compiled.config.identity.forward_authorization:
            self._never_forwarded = _NEVER_FORWARDED | {"authorization"}
        # Request header names, as sent (any case), and whether they may be forwarded.
        self._forwardable: dict[str, bool] = {}
        # Labelled metric series by (route, method, status); bounded by the route table.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._allowed: dict[str, Any] = {}  # auth_decisions{result="allow"} by route

    async def start(self) -> None:
        await self.issuers.start()

    async def close(self, keep: Gateway | None = None) -> None:
        """Close this generation; what ``keep`` (its successor after a reload) shares stays."""
        await self.issuers.close(keep.issuers if keep else None)
        await self.upstreams.close()

    def not_ready(self) -> list[str]:
        """Why the gateway should not receive traffic yet (empty when ready)."""
        return self.issuers.not_ready()

    # -- the pipeline -------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        exchange = Exchange(
            request_id=request_id(request.headers.get("X-Request-Id")),
            method=request.method,
            started=time.perf_counter(),
        )
        tally = self.metrics.tally
        tally.enter()
        self.inflight += 1
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(request, exchange)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            # A bug must cost one request a 500 (counted and logged as one), never the process.
            log.exception("request_failed", request_id=exchange.request_id)
            if request.writer is not None and request.writer.output_size > 0:
                # A response is already on the wire: a second status line would be read as its
                # body. Re-raising lets aiohttp close the connection instead.
                raise
            response = errors.error_response(
                500, "server_error", "the gateway failed this request", exchange.request_id
            )
            response.headers["X-Request-Id"] = exchange.request_id
            return response
        finally:
            tally.leave()
            self.inflight -= 1
            self._observe(request, exchange, response)

    async def _handle(self, request: web.BaseRequest, exchange: Exchange) -> web.StreamResponse:
        rid = exchange.request_id
        # The fragment goes first: in "/a#x?y=1" everything after "#" is fragment, not query.
        raw_path, _, query = request.raw_path.partition("#")[0].partition("?")
        try:
            exchange.path = path = normalize_path(raw_path)
        except AmbiguousPath as error:
            return self._finish(errors.bad_request(rid, str(error)), exchange, None, request)
        host = request.headers.get("Host")
        if is_preflight(request) and (preflighted := self._preflighted(host, path, request)):
            exchange.route = preflighted
            assert preflighted.cors is not None
            return self._finish(
                preflight_response(preflighted.cors), exchange, preflighted, request
            )
        found = self.compiled.routes.lookup(host, path, request.method)
        if isinstance(found, MethodNotAllowed):
            return self._finish(
                errors.method_not_allowed(rid, found.allow), exchange, None, request
            )
        if found is None:
            return self._finish(errors.not_found(rid), exchange, None, request)
        exchange.route = route = found.value
        length = request.content_length
        if length is not None and length > route.max_body_bytes:
            return self._finish(errors.too_large(rid), exchange, route, request)
        body: bytes | None = None
        if route.requirement is not None:
            # Extract, verify and authorise the token: awaiting only what has to wait (a token
            # not met before, a form body), so that a JWT met before costs no coroutine.
            result = self._credentials(request, route, query, exchange)
            if result is None:
                result = await self._verify_new(route, exchange)
            if (
                isinstance(result, Identity)
                and request.body_exists
                and request.content_type == FORM_CONTENT_TYPE
            ):
                scanned = await self._scan_form(request, route, exchange)
                if isinstance(scanned, bytes):
                    body = scanned
                elif isinstance(scanned, Denial):
                    result = scanned
                else:
                    return self._finish(scanned, exchange, route, request)
            if isinstance(result, Denial):
                return self._finish(self._refuse(result, route, exchange), exchange, route, request)
            self._count_allowed(route)
            exchange.identity = result
        return await self._forward(request, route, query, exchange, body)

    def _preflighted(
        self, host: str | None, path: str, request: web.BaseRequest
    ) -> CompiledRoute | None:
        """The route whose CORS policy answers this preflight, if it allows the origin.

        The route is the one that would serve the method the browser asks about, not OPTIONS:
        a route listing only GET and POST must still answer its preflight, or no browser could
        ever call it (the preflight would get 405)."""
        method = request.headers["Access-Control-Request-Method"].strip()
        found = self.compiled.routes.lookup(host, path, method)
        if not isinstance(found, Match):
            return None
        route = found.value
        if route.cors is None or not route.cors.allows_origin(request.headers.get("Origin")):
            return None
        return route

    def _credentials(
        self, request: web.BaseRequest, route: CompiledRoute, query: str, exchange: Exchange
    ) -> Identity | Denial | None:
        """The verdict on the request's token wherever it needs no waiting: no token, a token
        refused before any check, or a JWT met before. None: the token is to be verified
        (``_verify_new``); it and its digest are on the exchange."""
        # Parsed, never searched as text: ``access%5Ftoken`` is the same name once decoded, and
        # an upstream that reads it would take a token the gateway never checked.
        in_query = bool(query) and carries_access_token(query)
        token = extract_bearer(
            request.headers.getall("Authorization", []),
            query_has_token=in_query,
            max_token_bytes=self.max_token_bytes,
            check_alphabet=False,  # the verifier checks it, for tokens it has not seen
        )
        if isinstance(token, Denial):
            return token
        exchange.token = token
        exchange.token_digest = digest = jwt_cache_key(token)
        requirement = route.requirement
        assert requirement is not None
        verified = None if digest is None else self.verifier.cached(digest, requirement.issuers)
        if verified is None:
            return None
        return verified if isinstance(verified, Denial) else self._decide(verified, route, exchange)

    async def _verify_new(self, route: CompiledRoute, exchange: Exchange) -> Identity | Denial:
        """The verdict on a token ``_credentials`` could not judge at once: the token and its
        digest are taken from the exchange, where ``_credentials`` put them."""
        token, requirement = exchange.token, route.requirement
        assert token is not None and requirement is not None
        verified = await self.verifier.verify_new(token, exchange.token_digest, requirement.issuers)
        return verified if isinstance(verified, Denial) else self._decide(verified, route, exchange)

    async def _scan_form(
        self, request: web.BaseRequest, route: CompiledRoute, exchange: Exchange
    ) -> bytes | Denial | web.StreamResponse:
        """An urlencoded form body, read (bounded) to look for a second token: the body, the
        refusal of a second token, or 413 for a body over the bound. Call it for an authorised
        caller only (``_handle`` does), so that an anonymous client cannot make the gateway
        buffer anything."""
        await _send_continue(request)
        body = await _read_limited(request, min(route.max_body_bytes, FORM_SCAN_BYTES))
        if body is None:
            return errors.too_large(exchange.request_id)
        if carries_access_token(body.decode("latin-1")):
            return Denial("invalid_request", "the token was sent in more than one place")
        return body

    def _refuse(
        self, denial: Denial, route: CompiledRoute, exchange: Exchange
    ) -> web.StreamResponse:
        """The refusal of a token: counted, put on the exchange for the log, answered."""
        exchange.denial = denial
        self.metrics.tally.inc(
            self.metrics.auth_decisions.labels(route.name, "deny", denial.reason)
        )
        return errors.denial_response(denial, exchange.request_id)

    def _count_allowed(self, route: CompiledRoute) -> None:
        """Count an allowed request (the labelled series looked up once a route)."""
        allowed = self._allowed.get(route.name)
        if allowed is None:
            allowed = self._allowed[route.name] = self.metrics.auth_decisions.labels(
                route.name, "allow", "none"
            )
        self.metrics.tally.inc(allowed)

    def _decide(
        self, verified: VerifiedToken, route: CompiledRoute, exchange: Exchange
    ) -> Identity | Denial:
        """Authorise a verified token for a route; the caller and the identity headers go on
        the exchange."""
        # Audience, scopes and claim rules depend only on the (immutable) claims and the route:
        # judged once per token and route object (a reload makes new route objects). The
        # lifetime, which does change, was judged by the verifier just now.
        memo = verified.decisions.get(id(route))
        if memo is None or memo[0] is not route:
            requirement = route.requirement
            assert requirement is not None
            caller = Identity(verified.issuer, verified.claims, verified.scopes)
            decision: Identity | Denial | None = next(
                self.authorizer.denials(requirement, verified), None
            )
            headers: list[tuple[str, str]] = []
            if decision is None:
                decision = caller
                headers = identity_headers(caller, route.identity_headers)
            # Made once a token and route: names are checked tokens (config), values hold no
            # control character (identity_headers), so the lines need no check when sent.
            lines = "\r\n".join(map(": ".join, headers)) + "\r\n" if headers else ""
            memo = verified.decisions[id(route)] = (route, caller, decision, headers, lines)
        _, exchange.caller, decision, exchange.identity_headers, exchange.identity_lines = memo
        return decision

    async def _forward(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        query: str,
        exchange: Exchange,
        body: bytes | None,
    ) -> web.StreamResponse:
        rid = exchange.request_id
        assert exchange.path is not None
        # The path is already canonical and the query reaches the upstream byte for byte.
        target = route.upstream_path(exchange.path) + (f"?{query}" if query else "")
        headers = self.upstream_headers(request, route, exchange)
        pool = self.upstreams.pool(route.upstream)
        host = request.headers.get("Host") if route.upstream.preserve_host else None
        if is_websocket_upgrade(request):
            identity = exchange.identity_headers if exchange.identity is not None else ()
            # encoded=True: a plain string would be re-quoted by yarl (``%2f`` -> ``/``).
            url = URL(route.upstream.origin + target, encoded=True)
            response = await proxy_websocket(
                request,
                pool=pool,
                url=url,
                headers=CIMultiDict([("Host", host or pool.host), *headers, *identity]),
                request_id=rid,
            )
            return self._finish(response, exchange, route, request)
        if body is None and "Expect" in request.headers:
            await _send_continue(request)
        # The upstream's answer is sent from inside forward(): its headers must get the CORS
        # headers there, before they are on the wire.
        decorate = None
        if route.cors is not None and route.cors.allows_origin(request.headers.get("Origin")):
            decorate = partial(self._decorate, exchange=exchange, route=route, request=request)
        result = await forward(
            request,
            pool=pool,
            target=target,
            headers=headers,
            identity_lines=exchange.identity_lines if exchange.identity is not None else "",
            host=host,
            max_body_bytes=route.max_body_bytes,
            request_id=rid,
            body=body,
            decorate=decorate,
        )
        exchange.upstream_seconds = result.upstream_seconds
        return self._finish(result.response, exchange, route, request)

    def upstream_headers(
        self, request: web.BaseRequest, route: CompiledRoute, exchange: Exchange
    ) -> list[tuple[str, str]]:
        """The request headers the upstream sees, in order, after its ``Host`` line: hop-by-hop,
        spoofable and identity headers removed; forwarding and request id headers set. (The
        identity headers, set after authorisation, follow them: ``Exchange.identity_lines``.)"""
        incoming = request.headers
        if "Connection" in incoming:
            stripper = self.compiled.stripper
            drop = self._never_forwarded | {header_key(n) for n in connection_tokens(incoming)}
            headers = [
                (name, value)
                for name, value in incoming.items()
                if not ((key := header_key(name)) in drop or stripper.is_identity_key(key))
            ]
        else:
            forwardable = self._forwardable
            headers = []
            for name, value in incoming.items():
                verdict = forwardable.get(name)
                if verdict is None:
                    verdict = self._judge_header(name)
                if verdict:
                    headers.append((name, value))
        peer = request.remote
        headers += forwarded_headers(
            incoming,
            peer=peer,
            scheme=request.scheme,
            host=incoming.get("Host"),
            trusted=is_trusted_peer(peer, self.compiled.trusted_proxies),
        )
        headers.append(("X-Request-Id", exchange.request_id))
        return headers

    def _judge_header(self, name: str) -> bool:
        """Whether a request header of this name may reach the upstream (``Connection`` aside),
        remembered for the next request: a client sends the same few names every time."""
        key = header_key(name)
        verdict = not (key in self._never_forwarded or self.compiled.stripper.is_identity_key(key))
        if len(self._forwardable) < FORWARDABLE_NAMES and len(name) <= 64:
            self._forwardable[name] = verdict
        return verdict

    # -- observe ------------------------------------------------------------------------------

    def _finish(
        self,
        response: web.StreamResponse,
        exchange: Exchange,
        route: CompiledRoute | None,
        request: web.BaseRequest,
    ) -> web.StreamResponse:
        if not response.prepared:
            self._decorate(response.headers, exchange, route, request)
        return response

    def _decorate(
        self,
        headers: CIMultiDict[str],
        exchange: Exchange,
        route: CompiledRoute | None,
        request: web.BaseRequest,
    ) -> None:
        """Headers every response gets, error or not: the request id, and CORS for an allowed
        origin (a browser hides even a 401 from a page unless it is labelled for its origin)."""
        headers["X-Request-Id"] = exchange.request_id
        origin = request.headers.get("Origin")
        if route is not None and route.cors is not None and route.cors.allows_origin(origin):
            assert origin is not None
            label_for_origin(headers, route.cors, origin)

    def _observe(
        self, request: web.BaseRequest, exchange: Exchange, response: web.StreamResponse | None
    ) -> None:
        # 499 (nginx's "client closed request"): the client left before any response was made.
        status = response.status if response is not None else 499
        # Labels are bounded: a route name from the configuration, never the path.
        route = exchange.route.name if exchange.route else UNMATCHED_ROUTE
        elapsed = time.perf_counter() - exchange.started
        key = (route, method_label(exchange.method), status)
        series = self._series.get(key)
        if series is None:  # looking labels up costs more than counting: once per kind
            metrics = self.metrics
            series = self._series[key] = (
                metrics.requests.labels(route, key[1], str(status)),
                metrics.request_duration.labels(route),
                metrics.upstream_duration.labels(route),
            )
        requests, duration, upstream_duration = series
        tally = self.metrics.tally
        tally.inc(requests)
        tally.observe(duration, elapsed)
        if exchange.upstream_seconds is not None:
            tally.observe(upstream_duration, exchange.upstream_seconds)
        if not logs_enabled(logging.INFO):
            return
        # A log line that cannot be written (stdout closed, a full pipe) must not fail the
        # request it describes. (Not contextlib.suppress: that makes an object a request.)
        try:  # noqa: SIM105
            self._log_request(request, exchange, status, elapsed)
        except (OSError, ValueError):
            pass

    def _log_request(
        self, request: web.BaseRequest, exchange: Exchange, status: int, elapsed: float
    ) -> None:
        """The one ``request`` event of SPEC §7. The path is logged without its query string,
        the token only as its fingerprint."""
        identity = exchange.identity
        caller = identity or exchange.caller
        denial = exchange.denial
        result = "deny" if denial is not None else "allow" if identity else None
        if denial is not None:
            log.debug(
                "denied",
                request_id=exchange.request_id,
                reason=denial.reason,
                detail=denial.description,
            )
        digest = exchange.token_digest
        fingerprint = (
            digest_fingerprint(digest)
            if digest is not None
            else token_fingerprint(exchange.token)
            if exchange.token
            else None
        )
        fields = {
            "request_id": exchange.request_id,
            "method": exchange.method,
            "path": exchange.path,
            "route": exchange.route.name if exchange.route else None,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "upstream_ms": (
                round(exchange.upstream_seconds * 1000, 3)
                if exchange.upstream_seconds is not None
                else None
            ),
            "result": result,
            "reason": denial.reason if denial else None,
            "sub": caller.subject if caller else None,
            "client_id": caller.client_id if caller else None,
            "token_fp": fingerprint,
            "remote": request.remote,
            "trace_id": trace_id(request.headers.getall("traceparent", [])),
        }
        info_event(log, "request", fields)


async def _send_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` (RFC 9110 §10.1.1) once the request is accepted.

    The header is not forwarded (the upstream's interim answer could not be relayed through the
    client library), so the gateway must say it: otherwise a client waits before sending its
    body (curl: one second per upload), and a refusal (401, 413) is still sent without one."""
    if request.version != aiohttp.HttpVersion11 or request.writer is None:
        return
    if request.headers.get("Expect", "").strip().lower() != "100-continue":
        return
    if not request.body_exists or request.content.at_eof():
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # Like aiohttp's own expect handler: the interim answer is not part of the response size.
    request.writer.output_size = 0


async def _read_limited(request: web.BaseRequest, limit: int) -> bytes | None:
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
