"""A real OpenID provider (``oidc-provider`` on Node.js) for integration tests.

``start_provider()`` launches ``tests/integration/idp/provider.mjs`` on a random
loopback port and returns an :class:`OpenIdProvider` handle that mints real,
signed tokens through the provider's HTTP endpoints. Everything here is
synchronous and uses only the standard library, so it works from sync tests,
async tests and session-scoped fixtures alike.

What the provider offers (see the header of ``provider.mjs`` for details):

* clients ``gateway-tests`` (client_secret_basic), ``gateway-tests-post``
  (client_secret_post) and ``gateway-tests-acme`` (client_secret_basic; its
  tokens carry ``tenant: "acme"`` and ``groups: ["support", "dev"]``), all with
  secret ``gateway-tests-secret`` and only the client_credentials grant;
* introspection clients ``gateway-introspector`` (client_secret_basic) and
  ``gateway-introspector-post`` (client_secret_post), secret
  ``gateway-introspector-secret``, that may introspect every client's tokens
  (a token client may introspect only its own);
* any http(s) URL as ``resource``; the JWT access token (``typ: at+jwt``) has
  ``aud`` = resource and is signed with the ``alg`` passed to
  :meth:`OpenIdProvider.token`, else with RS256 / ES256 / EdDSA when the URL's
  last path segment is ``rs256`` / ``es256`` / ``eddsa`` (RS256 otherwise);
* opaque access tokens (:meth:`OpenIdProvider.opaque_token`, for any resource; a
  plain token request gets one too when the resource URL's last path segment is
  ``opaque``) that resolve only through the introspection endpoint
  (:meth:`OpenIdProvider.introspect`) and can be revoked
  (:meth:`OpenIdProvider.revoke`);
* the scopes in :data:`ALLOWED_SCOPES`; other requested scopes are dropped;
* access token lifetime 600 s;
* test-only endpoints to mint an ID token, to rotate / retire the keys, and to
  count the JWKS and discovery documents served and the introspection requests
  received (:meth:`OpenIdProvider.jwks_requests`,
  :meth:`OpenIdProvider.introspection_requests`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IDP_DIR = Path(__file__).resolve().parent / "idp"
PROVIDER_SCRIPT = IDP_DIR / "provider.mjs"

CLIENT_SECRET = "gateway-tests-secret"
DEFAULT_CLIENT = "gateway-tests"
POST_CLIENT = "gateway-tests-post"
ACME_CLIENT = "gateway-tests-acme"
CLIENTS: dict[str, str] = {
    DEFAULT_CLIENT: "client_secret_basic",
    POST_CLIENT: "client_secret_post",
    ACME_CLIENT: "client_secret_basic",
}
ACME_EXTRA_CLAIMS: dict[str, Any] = {"tenant": "acme", "groups": ["support", "dev"]}
ACCESS_TOKEN_TTL = 600

INTROSPECTOR_SECRET = "gateway-introspector-secret"
INTROSPECTOR_CLIENT = "gateway-introspector"
INTROSPECTOR_POST_CLIENT = "gateway-introspector-post"
# May introspect every client's tokens; cannot get tokens themselves.
INTROSPECTION_CLIENTS: dict[str, str] = {
    INTROSPECTOR_CLIENT: "client_secret_basic",
    INTROSPECTOR_POST_CLIENT: "client_secret_post",
}
# A resource whose tokens are opaque even without the X-Test-Format header.
OPAQUE_RESOURCE = "https://api.example.test/opaque"

# Must match ALLOWED_SCOPES in provider.mjs.
ALLOWED_SCOPES: tuple[str, ...] = (
    "read",
    "write",
    "admin",
    "profile",
    "email",
    "orders:read",
    "orders:write",
    "orders:admin",
    "users:read",
    "users:write",
    "users:admin",
    "inventory:read",
    "inventory:write",
    "billing:read",
    "billing:write",
    "reports:read",
    "metrics:read",
    "api:read",
    "api:write",
    "api:admin",
)

_ALG_SUFFIX = {"RS256": "rs256", "ES256": "es256", "EDDSA": "eddsa"}
_TOKEN_FORMATS = ("jwt", "opaque")
_AUTH_METHODS: dict[str, str] = {**CLIENTS, **INTROSPECTION_CLIENTS}
_B64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HTTP_TIMEOUT = 10.0
# Loopback only: never send requests to the provider through an HTTP(S)_PROXY.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProviderError(RuntimeError):
    """The test OpenID provider could not be started or refused a request."""


def _b64url_json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("JWT segment is not a JSON object")
    return value


def decode_jwt_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(header, payload)`` of a compact JWS without verifying it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    return _b64url_json(parts[0]), _b64url_json(parts[1])


def is_jwt(token: str) -> bool:
    """Whether ``token`` looks like a compact JWS (three base64url segments)."""
    parts = token.split(".")
    return len(parts) == 3 and all(part and set(part) <= _B64URL_CHARS for part in parts)


def _default_secret(client: str) -> str:
    return INTROSPECTOR_SECRET if client in INTROSPECTION_CLIENTS else CLIENT_SECRET


def _authenticate(client: str, secret: str, form: dict[str, str], headers: dict[str, str]) -> None:
    """Add ``client``'s credentials to ``form`` / ``headers`` the way it is registered."""
    if _AUTH_METHODS.get(client, "client_secret_basic") == "client_secret_post":
        form["client_id"] = client
        form["client_secret"] = secret
    else:
        # RFC 6749 section 2.3.1: form-urlencode id and secret before base64.
        user = urllib.parse.quote(client, safe="")
        password = urllib.parse.quote(secret, safe="")
        creds = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {creds}"


def resource_for_alg(alg: str, base: str = "https://api.example.test") -> str:
    """Resource URL whose tokens the provider signs with ``alg``."""
    try:
        suffix = _ALG_SUFFIX[alg.upper()]
    except KeyError:
        raise ValueError(f"unsupported alg {alg!r}; use one of RS256, ES256, EdDSA") from None
    return f"{base.rstrip('/')}/{suffix}"


class OpenIdProvider:
    """Handle on a running ``provider.mjs`` process."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        issuer: str,
        port: int,
        log_path: Path | None = None,
    ) -> None:
        self._process = process
        self.issuer: str = issuer
        self.port: int = port
        self.log_path = log_path
        self.discovery: dict[str, Any] = self._get_json("/.well-known/openid-configuration")
        self.jwks_uri: str = self.discovery["jwks_uri"]
        self.token_endpoint: str = self.discovery["token_endpoint"]
        self.introspection_endpoint: str = self.discovery["introspection_endpoint"]
        self.revocation_endpoint: str = self.discovery["revocation_endpoint"]
        self.introspector_client_id: str = INTROSPECTOR_CLIENT
        self.introspector_secret: str = INTROSPECTOR_SECRET
        self.introspector_post_client_id: str = INTROSPECTOR_POST_CLIENT
        self.introspector_post_secret: str = INTROSPECTOR_SECRET
        # opaque token -> the client it was issued to (only that client may revoke it)
        self._opaque_clients: dict[str, str] = {}

    # -- HTTP helpers ------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.issuer + path_or_url

    def _request(
        self,
        method: str,
        path_or_url: str,
        *,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(
            self._url(path_or_url), data=body, method=method, headers=dict(headers or {})
        )
        req.add_header("Accept", "application/json")
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with _OPENER.open(req, timeout=_HTTP_TIMEOUT) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise ProviderError(
                f"{method} {path_or_url} -> HTTP {exc.code}: {detail}\n{self.log_tail()}"
            ) from None
        if not isinstance(payload, dict):
            raise ProviderError(f"{method} {path_or_url}: unexpected response {payload!r}")
        return payload

    def _get_json(self, path_or_url: str) -> dict[str, Any]:
        return self._request("GET", path_or_url)

    # -- tokens ------------------------------------------------------------------------------

    def token_response(
        self,
        resource: str | None,
        scopes: Iterable[str] | str = "",
        *,
        client: str = DEFAULT_CLIENT,
        alg: str | None = None,
        secret: str = CLIENT_SECRET,
        token_format: str | None = None,
    ) -> dict[str, Any]:
        """Full client_credentials token response (``access_token``, ``scope``, ...).

        ``resource=None`` means the provider's default resource
        (``https://api.example.test/rs256``). ``alg`` forces the signing algorithm
        (RS256 / ES256 / EdDSA) through the ``X-Test-Alg`` request header; without it
        the provider picks the algorithm from the resource URL's last path segment.
        ``token_format`` (``"jwt"`` / ``"opaque"``) forces the access token format
        through the ``X-Test-Format`` header; without it the token is opaque when the
        resource URL's last path segment is ``opaque`` and a JWT otherwise.
        """
        headers: dict[str, str] = {}
        if alg is not None:
            if alg.upper() not in _ALG_SUFFIX:
                raise ValueError(f"unsupported alg {alg!r}; use one of RS256, ES256, EdDSA")
            headers["X-Test-Alg"] = alg
        if token_format is not None:
            if token_format.lower() not in _TOKEN_FORMATS:
                raise ValueError(f"unsupported token_format {token_format!r}; use jwt or opaque")
            headers["X-Test-Format"] = token_format
        scope = scopes if isinstance(scopes, str) else " ".join(scopes)
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        if resource is not None:
            form["resource"] = resource
        _authenticate(client, secret, form, headers)
        response = self._request("POST", self.token_endpoint, data=form, headers=headers)
        token = response.get("access_token")
        if isinstance(token, str) and not is_jwt(token):
            self._opaque_clients[token] = client
        return response

    def token(
        self,
        resource: str,
        scopes: list[str] | str = "",
        *,
        client: str = DEFAULT_CLIENT,
        alg: str | None = None,
    ) -> str:
        """A JWT access token (``typ: at+jwt``, ``aud`` = ``resource``) with ``scopes``.

        ``alg`` (RS256 / ES256 / EdDSA) selects the signing key; by default the
        provider derives it from the resource URL (``.../es256`` -> ES256,
        ``.../eddsa`` -> EdDSA, anything else -> RS256).
        """
        token = self.token_response(resource, scopes, client=client, alg=alg)["access_token"]
        if not isinstance(token, str):
            raise ProviderError(f"no access_token in token response: {token!r}")
        return token

    def opaque_token(
        self,
        scopes: list[str] | str = "",
        *,
        client: str = DEFAULT_CLIENT,
        resource: str = OPAQUE_RESOURCE,
    ) -> str:
        """An opaque access token (not a JWT) with ``scopes`` and audience ``resource``.

        Any http(s) ``resource`` works (the format is forced by a request header).
        Only the introspection endpoint can tell what the token means.
        """
        response = self.token_response(resource, scopes, client=client, token_format="opaque")
        token = response["access_token"]
        if not isinstance(token, str) or is_jwt(token):
            raise ProviderError(f"expected an opaque access token, got {token!r}")
        return token

    def introspect(
        self,
        token: str,
        *,
        client: str = INTROSPECTOR_CLIENT,
        secret: str | None = None,
        token_type_hint: str | None = None,
    ) -> dict[str, Any]:
        """The provider's RFC 7662 introspection answer for ``token``.

        Authenticates as ``client`` (``gateway-introspector``: client_secret_basic,
        ``gateway-introspector-post``: client_secret_post, or a token client, which
        sees only its own tokens as active). Counts as an introspection request.
        """
        form: dict[str, str] = {"token": token}
        if token_type_hint is not None:
            form["token_type_hint"] = token_type_hint
        headers: dict[str, str] = {}
        _authenticate(
            client, secret if secret is not None else _default_secret(client), form, headers
        )
        return self._request("POST", self.introspection_endpoint, data=form, headers=headers)

    def revoke(self, token: str, *, client: str | None = None, secret: str | None = None) -> None:
        """Revoke ``token`` (RFC 7009): later introspections say ``{"active": false}``.

        oidc-provider lets only the token's own client revoke it, so this
        authenticates as the client that :meth:`opaque_token` / :meth:`token_response`
        got it for (``client`` overrides; unknown tokens default to ``gateway-tests``).
        Revoking an unknown or already revoked token succeeds, as RFC 7009 says.
        """
        if client is None:
            client = self._opaque_clients.get(token, DEFAULT_CLIENT)
        form: dict[str, str] = {"token": token}
        headers: dict[str, str] = {}
        _authenticate(
            client, secret if secret is not None else _default_secret(client), form, headers
        )
        self._request("POST", self.revocation_endpoint, data=form, headers=headers)

    def id_token(self, sub: str = "alice", *, aud: str = DEFAULT_CLIENT) -> str:
        """An OIDC ID token for ``sub`` (RS256, no ``typ`` header, ``aud`` = client id)."""
        query = urllib.parse.urlencode({"sub": sub, "aud": aud})
        token = self._get_json(f"/test/id_token?{query}")["id_token"]
        if not isinstance(token, str):
            raise ProviderError(f"unexpected id_token response: {token!r}")
        return token

    def jwks(self) -> dict[str, Any]:
        """The currently published JWKS."""
        return self._get_json(self.jwks_uri)

    def rotate(self) -> dict[str, list[str]]:
        """Sign with fresh keys (new kids) from now on; keep publishing the old ones."""
        return self._request("POST", "/test/rotate")

    def retire(self) -> dict[str, list[str]]:
        """Stop publishing the keys that were replaced by the last :meth:`rotate`."""
        return self._request("POST", "/test/retire")

    def key_state(self) -> dict[str, list[str]]:
        """``{"signing": [kids], "published": [kids]}``."""
        return self._get_json("/test/keys")

    def stats(self) -> dict[str, int]:
        """``{"jwks_requests": N, "discovery_requests": M, "introspection_requests": I,
        "revocation_requests": R}``: documents served and requests received since start
        or the last :meth:`reset_stats` (the fixture's own :meth:`jwks`,
        :meth:`introspect`, :meth:`revoke` and start-up discovery count too)."""
        return {key: int(value) for key, value in self._get_json("/test/stats").items()}

    def reset_stats(self) -> dict[str, int]:
        """Set all :meth:`stats` counters to 0 (affects every user of this provider)."""
        return {
            key: int(value) for key, value in self._request("POST", "/test/stats/reset").items()
        }

    def jwks_requests(self) -> int:
        """How many times the provider has served its JWKS so far."""
        return self.stats()["jwks_requests"]

    def introspection_requests(self) -> int:
        """How many introspection requests the provider has received so far
        (rejected ones included)."""
        return self.stats()["introspection_requests"]

    def revocation_requests(self) -> int:
        """How many revocation requests the provider has received so far."""
        return self.stats()["revocation_requests"]

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        if self.log_path is None:
            return ""
        return _read_tail(self.log_path, limit)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the provider process (SIGTERM, then SIGKILL). Idempotent."""
        _stop_process(self._process, timeout)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> OpenIdProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"OpenIdProvider(issuer={self.issuer!r}, pid={self._process.pid})"


def _read_tail(path: Path, limit: int) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=timeout)
    if process.stdout is not None:
        process.stdout.close()


def node_executable() -> str | None:
    return shutil.which("node")


def ensure_node_modules(workdir: Path = IDP_DIR, timeout: float = 300) -> None:
    """Run ``npm ci`` in ``workdir`` unless ``node_modules/oidc-provider`` exists."""
    if (workdir / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ProviderError(
            f"{workdir}/node_modules is missing and npm is not on PATH; run `npm ci` in {workdir}"
        )
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", "replace")[-4000:]
        raise ProviderError(f"`npm ci` failed in {workdir} (exit {result.returncode}):\n{output}")


def start_provider(
    workdir: Path | None = None, timeout: float = 30, attempts: int = 2
) -> OpenIdProvider:
    """Start ``provider.mjs`` and wait (at most ``timeout`` seconds) until it listens; once more
    if it printed nothing in that time. (Twice in many full runs on a loaded 2-core machine, a
    provider started but never printed its startup line, cause not found; each time the same
    tests passed on the next run.)"""
    for attempt in range(1, attempts + 1):
        try:
            return _start_provider(workdir, timeout)
        except ProviderError as error:
            if attempt == attempts or "no startup line" not in str(error):
                raise
    raise AssertionError("unreachable")


def _start_provider(workdir: Path | None, timeout: float) -> OpenIdProvider:
    workdir = Path(workdir) if workdir is not None else IDP_DIR
    node = node_executable()
    if node is None:
        raise ProviderError(
            "Node.js (`node`) is not on PATH; the integration tests need Node.js 20+ "
            "to run the test OpenID provider (tests/integration/idp)."
        )
    ensure_node_modules(workdir)

    log_fd, log_name = tempfile.mkstemp(prefix="idp-", suffix=".log")
    log_path = Path(log_name)
    env = dict(os.environ)
    env.setdefault("NODE_ENV", "test")
    try:
        process = subprocess.Popen(
            [node, str(workdir / "provider.mjs")],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            env=env,
        )
    finally:
        os.close(log_fd)

    try:
        line = _read_line(process, timeout)
        info = json.loads(line)
        issuer, port = str(info["issuer"]), int(info["port"])
        return OpenIdProvider(process, issuer, port, log_path)
    except BaseException as exc:
        _stop_process(process, 5.0)
        tail = _read_tail(log_path, 4000)
        with contextlib.suppress(OSError):
            log_path.unlink()
        if isinstance(exc, ProviderError | ValueError | KeyError | OSError):
            raise ProviderError(f"test OpenID provider failed to start: {exc}\n{tail}") from exc
        raise


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """Read the first stdout line of ``process`` within ``timeout`` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderError(f"no startup line within {timeout:.0f}s")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ProviderError(f"process exited with code {process.wait()} before listening")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8")
