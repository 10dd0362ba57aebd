"""Finding an issuer's keys through its metadata (OpenID Connect Discovery 1.0, RFC 8414), against
real HTTP servers on loopback: where the document is looked for, the mix-up defence, and which
``jwks_uri`` is used."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.pipeline.verify.discovery import discover, discovered_loader
from gateway.pipeline.verify.fetch import FetchError
from tests.support import AUDIENCE, TokenIssuer, echo_upstream, running_gateway, write_config

OIDC = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"
TIMEOUT = 5.0

Answer = Callable[["MetadataServer"], web.StreamResponse]


@dataclass
class MetadataServer:
    """An identity provider's web server on loopback: ``answers`` maps a path to a function
    making its response (404 otherwise); every requested path is recorded in order."""

    answers: dict[str, Answer] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    url: str = ""

    def document(self, path: str, **members: Any) -> None:
        self.answers[path] = lambda server: web.json_response(members)

    def keys(self, path: str, jwks: dict[str, Any]) -> None:
        self.answers[path] = lambda server: web.json_response(jwks)


@asynccontextmanager
async def metadata_server() -> AsyncIterator[MetadataServer]:
    server = MetadataServer()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        server.requested.append(request.path)
        answer = server.answers.get(request.path)
        return answer(server) if answer else web.json_response({"error": "nf"}, status=404)

    runner = web.ServerRunner(web.Server(handler), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def idp() -> AsyncIterator[MetadataServer]:
    async with metadata_server() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def discovered(session: aiohttp.ClientSession, issuer: str) -> dict[str, Any]:
    return await discover(session, issuer, timeout=TIMEOUT, allow_http=False)


# -- where the document is looked for -----------------------------------------------------------


async def test_discovery_reads_the_openid_configuration_under_the_issuer(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(OIDC, issuer=idp.url, jwks_uri=f"{idp.url}/keys")
    document = await discovered(session, idp.url)
    assert document["jwks_uri"] == f"{idp.url}/keys"
    assert idp.requested == [OIDC]


async def test_discovery_falls_back_to_the_oauth_authorization_server_document(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(RFC8414, issuer=idp.url, jwks_uri=f"{idp.url}/oauth-keys")
    document = await discovered(session, idp.url)
    assert document["jwks_uri"] == f"{idp.url}/oauth-keys"
    assert idp.requested == [OIDC, RFC8414]


async def test_for_an_issuer_with_a_path_the_fallback_puts_the_well_known_part_before_it(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    # OpenID Connect Discovery §4 appends to the issuer; RFC 8414 §3.1 inserts before its path.
    issuer = f"{idp.url}/tenants/acme"
    idp.document(f"{RFC8414}/tenants/acme", issuer=issuer, jwks_uri=f"{issuer}/keys")
    document = await discovered(session, issuer)
    assert document["issuer"] == issuer
    assert idp.requested == [f"/tenants/acme{OIDC}", f"{RFC8414}/tenants/acme"]


async def test_discovery_fails_when_neither_document_exists(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FetchError):
        await discovered(session, idp.url)
    assert idp.requested == [OIDC, RFC8414]


async def test_a_redirect_from_the_metadata_location_is_not_followed(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.answers[OIDC] = lambda server: web.Response(
        status=302, headers={"Location": f"{server.url}/elsewhere"}
    )
    idp.document("/elsewhere", issuer=idp.url, jwks_uri=f"{idp.url}/keys")
    with pytest.raises(FetchError):
        await discovered(session, idp.url)
    assert "/elsewhere" not in idp.requested


async def test_plain_http_discovery_of_a_non_loopback_issuer_is_refused_before_any_request(
    session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(FetchError, match="plain http"):
        await discovered(session, "http://idp.example.com")


# -- the mix-up defence (RFC 8414 §3.3) ---------------------------------------------------------


async def test_a_document_naming_another_issuer_is_refused_without_trying_the_fallback(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(OIDC, issuer="https://attacker.example", jwks_uri=f"{idp.url}/keys")
    idp.document(RFC8414, issuer=idp.url, jwks_uri=f"{idp.url}/keys")
    with pytest.raises(FetchError, match="another issuer"):
        await discovered(session, idp.url)
    assert idp.requested == [OIDC]


async def test_a_fallback_document_naming_another_issuer_is_refused(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(RFC8414, issuer=f"{idp.url}/other", jwks_uri=f"{idp.url}/keys")
    with pytest.raises(FetchError, match="another issuer"):
        await discovered(session, idp.url)


@pytest.mark.parametrize("suffix", ["/", "/ ", "?x=1"])
async def test_the_documents_issuer_must_equal_the_configured_one_exactly(
    idp: MetadataServer, session: aiohttp.ClientSession, suffix: str
) -> None:
    idp.document(OIDC, issuer=idp.url + suffix, jwks_uri=f"{idp.url}/keys")
    with pytest.raises(FetchError, match="another issuer"):
        await discovered(session, idp.url)


# -- the jwks_uri -------------------------------------------------------------------------------


def loader_for(session: aiohttp.ClientSession, issuer: str, allow_http: bool = False) -> Any:
    return discovered_loader(lambda: session, issuer, timeout=TIMEOUT, allow_http=allow_http)


async def test_the_jwks_uri_is_taken_from_the_discovery_document(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    jwks = TokenIssuer(idp.url).jwks
    idp.document(OIDC, issuer=idp.url, jwks_uri=f"{idp.url}/published/keys")
    idp.keys("/published/keys", jwks)
    assert await loader_for(session, idp.url)() == jwks
    assert idp.requested == [OIDC, "/published/keys"]


async def test_discovery_happens_once_and_later_loads_fetch_only_the_jwks(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(OIDC, issuer=idp.url, jwks_uri=f"{idp.url}/keys")
    idp.keys("/keys", TokenIssuer(idp.url).jwks)
    load = loader_for(session, idp.url)
    for _ in range(3):
        await load()
    assert idp.requested == [OIDC, "/keys", "/keys", "/keys"]


async def test_a_discovered_plain_http_jwks_uri_to_a_non_loopback_host_is_refused(
    idp: MetadataServer, session: aiohttp.ClientSession
) -> None:
    idp.document(OIDC, issuer=idp.url, jwks_uri="http://keys.example.com/jwks")
    with pytest.raises(FetchError, match="plain http"):
        await loader_for(session, idp.url)()
    assert idp.requested == [OIDC]


@pytest.mark.parametrize("jwks_uri", [None, 42, "", "file:///etc/passwd"], ids=repr)
async def test_a_discovery_document_without_a_usable_jwks_uri_is_a_fetch_error(
    idp: MetadataServer, session: aiohttp.ClientSession, jwks_uri: Any
) -> None:
    idp.document(OIDC, issuer=idp.url, **({} if jwks_uri is None else {"jwks_uri": jwks_uri}))
    with pytest.raises(FetchError):
        await loader_for(session, idp.url, allow_http=True)()
    assert idp.requested == [OIDC]


# -- through the gateway ------------------------------------------------------------------------

GATEWAY_CONFIG = """\
issuers:
  corp:
    issuer: {issuer}
    discovery: true
    {jwks_uri}
    audiences: [{audience}]
    jwks: {{min_refetch_interval: 0s}}
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
"""


@asynccontextmanager
async def gateway_discovering(
    idp: MetadataServer, directory: Path, jwks_uri: str | None = None
) -> AsyncIterator[tuple[str, str]]:
    """A gateway with ``discovery: true`` for ``idp`` (and a ``jwks_uri`` if given); yields its
    public and admin URLs."""
    async with echo_upstream() as upstream:
        path = write_config(
            directory,
            GATEWAY_CONFIG,
            issuer=idp.url,
            jwks_uri=f"jwks_uri: {jwks_uri}" if jwks_uri else "",
            audience=AUDIENCE,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway:
            yield gateway.url, gateway.admin_url


async def test_a_configured_jwks_uri_wins_over_the_discovered_one(
    idp: MetadataServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    issuer = TokenIssuer(idp.url)
    idp.document(OIDC, issuer=idp.url, jwks_uri=f"{idp.url}/discovered")
    idp.keys("/discovered", issuer.jwks)
    idp.keys("/configured", issuer.jwks)
    async with gateway_discovering(idp, tmp_path, jwks_uri=f"{idp.url}/configured") as (url, _):
        headers = {"Authorization": f"Bearer {issuer.token()}"}
        async with session.get(f"{url}/orders/1", headers=headers) as response:
            assert response.status == 200
    assert "/configured" in idp.requested
    assert "/discovered" not in idp.requested


async def test_an_issuer_whose_document_names_another_issuer_is_unusable_never_refusing_tokens(
    idp: MetadataServer, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The keys are right there, and the token is signed with them: but the document speaks for
    # someone else, so nothing it points at may be trusted. The token may be good: 503, not 401.
    issuer = TokenIssuer(idp.url)
    idp.document(OIDC, issuer="https://attacker.example", jwks_uri=f"{idp.url}/keys")
    idp.keys("/keys", issuer.jwks)
    async with gateway_discovering(idp, tmp_path) as (url, admin):
        headers = {"Authorization": f"Bearer {issuer.token()}"}
        for _ in range(3):
            async with session.get(f"{url}/orders/1", headers=headers) as response:
                assert response.status == 503
                assert "Retry-After" in response.headers
                assert "WWW-Authenticate" not in response.headers
        async with session.get(f"{admin}/readyz") as response:
            assert response.status == 503
            assert (await response.json()) == ["issuer corp: signing keys not loaded"]
    assert "/keys" not in idp.requested
