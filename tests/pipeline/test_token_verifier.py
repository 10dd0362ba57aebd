"""Which check a token gets, and from which issuer: JWTs locally (or introspected with
``validation: introspect``), opaque tokens by introspection, asked of the issuers a route trusts
in a defined order and never of any other. The verifier is built from a configuration as the
gateway builds it, in front of authorization servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_and_compile
from gateway.issuers import Issuers
from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.verify.tokens import TokenVerifier
from tests.pipeline.test_introspection import AuthorizationServer, authorization_server
from tests.support import TokenIssuer, echo_upstream, running_gateway

OPAQUE = "2YotnFZFEjr1zCsicMWpAA"  # RFC 6749's example access token


def introspecting(name: str, server: AuthorizationServer, extra: str = "") -> str:
    return f"""\
  {name}:
    issuer: {server.issuer}
    introspection:
      endpoint: {server.endpoint}
      client_id: gateway
      client_secret: secret
      timeout: 300ms
{extra}"""


@asynccontextmanager
async def verifier_for(directory: Path, issuers: str) -> AsyncIterator[TokenVerifier]:
    """The token verifier of a gateway configured with ``issuers`` (YAML under ``issuers:``)."""
    path = directory / "gateway.yaml"
    path.write_text(
        "issuers:\n"
        + issuers
        + "routes:\n"
        + "  - {name: r, match: {path: /r}, upstream: 'http://127.0.0.1:9'}\n"
    )
    compiled, _ = load_and_compile(path, environ={})
    live = Issuers(compiled, Metrics())
    await live.start()
    try:
        yield live.verifier
    finally:
        await live.close()


@pytest.fixture
async def first() -> AsyncIterator[AuthorizationServer]:
    async with authorization_server("first") as server:
        yield server


@pytest.fixture
async def second(first: AuthorizationServer) -> AsyncIterator[AuthorizationServer]:
    async with authorization_server("second") as server:
        server.journal = first.journal  # one record of the order both were asked in
        yield server


@pytest.fixture
def keys(tmp_path: Path) -> TokenIssuer:
    issuer = TokenIssuer("https://jwt-issuer.test")
    issuer.write_jwks(tmp_path / "keys.json")
    return issuer


def reason(result: VerifiedToken | Denial) -> str:
    return result.reason if isinstance(result, Denial) else "verified"


# -- opaque or JWT ------------------------------------------------------------------------------


async def test_an_opaque_token_is_introspected_by_an_issuer_that_introspects(
    tmp_path: Path, first: AuthorizationServer
) -> None:
    first.accept(OPAQUE)
    async with verifier_for(tmp_path, introspecting("first", first)) as verifier:
        result = await verifier.verify(OPAQUE)
    assert isinstance(result, VerifiedToken)
    assert (result.issuer, result.introspected) == ("first", True)
    assert first.tokens_asked() == [OPAQUE]


@pytest.mark.parametrize("token", ["ab+/c.de~f.ghi==", "a.b", "a.b.c.d", "tok.en"])
async def test_a_token_that_is_not_three_base64url_segments_is_introspected(
    tmp_path: Path, first: AuthorizationServer, token: str
) -> None:
    # RFC 6750 §2.1 b64token allows "." "~" "+" "/" "=": dots alone do not make a JWT.
    first.accept(token)
    async with verifier_for(tmp_path, introspecting("first", first)) as verifier:
        assert reason(await verifier.verify(token)) == "verified"
    assert first.tokens_asked() == [token]


@pytest.mark.parametrize(
    "token", ["a b", "tok\u00e9n", "ab=c", "a.b.c\n", "a.b c.d", "a.b.\u00e9", "a.b.c!"], ids=repr
)
async def test_a_token_outside_the_b64token_alphabet_is_malformed_and_never_introspected(
    tmp_path: Path, first: AuthorizationServer, token: str
) -> None:
    first.accept(token)
    async with verifier_for(tmp_path, introspecting("first", first)) as verifier:
        assert reason(await verifier.verify(token)) == "malformed_token"
    assert first.tokens_asked() == []


@pytest.mark.parametrize("stray", [" ", "!", "\u00e9", "\x00", "\n"], ids=repr)
async def test_a_signed_jwt_with_a_character_outside_base64url_put_in_is_malformed(
    tmp_path: Path, keys: TokenIssuer, stray: str
) -> None:
    issuers = f"  jwt:\n    issuer: {keys.issuer}\n    jwks_file: keys.json\n"
    header, payload, signature = keys.token().split(".")
    half = len(signature) // 2
    token = f"{header}.{payload}.{signature[:half]}{stray}{signature[half:]}"
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(token)) == "malformed_token"


async def test_an_opaque_token_is_malformed_where_no_issuer_introspects(
    tmp_path: Path, keys: TokenIssuer
) -> None:
    issuers = f"  jwt:\n    issuer: {keys.issuer}\n    jwks_file: keys.json\n"
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE)) == "malformed_token"


async def test_a_jwt_of_an_issuer_with_keys_is_checked_locally_not_introspected(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    issuers = introspecting("corp", first).replace(
        f"issuer: {first.url}", f"issuer: {keys.issuer}\n    jwks_file: keys.json"
    )
    token = keys.token()
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(token)
    assert isinstance(result, VerifiedToken)
    assert not result.introspected
    assert first.calls == 0


async def test_validation_introspect_sends_the_issuers_jwts_to_introspection(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    issuers = introspecting("corp", first, "    validation: introspect\n").replace(
        f"issuer: {first.url}", f"issuer: {keys.issuer}\n    jwks_file: keys.json"
    )
    token = keys.token()
    first.accept(token, iss=keys.issuer)
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(token)
    assert isinstance(result, VerifiedToken)
    assert result.introspected
    assert first.tokens_asked() == [token]


async def test_validation_introspect_refuses_a_well_signed_jwt_the_server_calls_inactive(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    # The point of `validation: introspect`: a revoked JWT is refused though its signature holds.
    issuers = introspecting("corp", first, "    validation: introspect\n").replace(
        f"issuer: {first.url}", f"issuer: {keys.issuer}\n    jwks_file: keys.json"
    )
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(keys.token())) == "inactive"
    assert first.calls == 1


async def test_a_jwt_of_another_issuer_is_never_sent_to_an_introspecting_one(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    issuers = introspecting("opaque", first, "    validation: introspect\n")
    issuers += f"  jwt:\n    issuer: {keys.issuer}\n    jwks_file: keys.json\n"
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(keys.token())) == "verified"
    assert first.calls == 0


async def test_each_routes_issuer_list_decides_whether_a_jwt_is_introspected(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    # The verifier remembers, per list of issuers, whether any introspects JWTs: one route's
    # answer must never be taken for another's, in either order.
    issuers = introspecting("corp", first, "    validation: introspect\n").replace(
        f"issuer: {first.url}", f"issuer: {keys.issuer}\n    jwks_file: keys.json"
    )
    other = TokenIssuer("https://other-issuer.test")
    other.write_jwks(tmp_path / "other.json")
    issuers += f"  other:\n    issuer: {other.issuer}\n    jwks_file: other.json\n"
    token = keys.token()
    first.accept(token, iss=keys.issuer)
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(token, ("other",))) == "wrong_issuer"
        assert first.calls == 0
        introspected = await verifier.verify(token, ("corp",))
        assert isinstance(introspected, VerifiedToken) and introspected.introspected
        assert reason(await verifier.verify(token, ("other",))) == "wrong_issuer"
        assert reason(await verifier.verify(other.token(), ("other", "corp"))) == "verified"
    assert first.tokens_asked() == [token]


# -- which issuers, in which order --------------------------------------------------------------


async def test_a_routes_issuer_list_is_the_order_an_opaque_token_is_tried_in(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE, ("second", "first"))) == "inactive"
    assert first.journal == ["second", "first"]


async def test_without_a_routes_issuer_list_the_files_issuer_order_is_followed(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    # Listed "second" before "first": the file's order, not the names', decides.
    issuers = introspecting("second", second) + introspecting("first", first)
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE)) == "inactive"
    assert first.journal == ["second", "first"]


async def test_the_first_issuer_to_call_the_token_active_decides_and_no_later_one_is_asked(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    first.accept(OPAQUE)
    second.accept(OPAQUE)
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(OPAQUE, ("first", "second"))
    assert isinstance(result, VerifiedToken) and result.issuer == "first"
    assert second.calls == 0


async def test_an_issuer_later_in_the_order_accepts_what_earlier_ones_do_not_know(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    second.accept(OPAQUE)
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(OPAQUE, ("first", "second"))
    assert isinstance(result, VerifiedToken) and result.issuer == "second"
    assert first.journal == ["first", "second"]


async def test_a_route_restricted_to_one_issuer_never_sends_the_token_to_another(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    second.accept(OPAQUE)  # the other issuer would even accept it
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE, ("first",))) == "inactive"
    assert (first.calls, second.calls) == (1, 0)


async def test_a_route_trusting_no_introspecting_issuer_never_sends_the_token_anywhere(
    tmp_path: Path, first: AuthorizationServer, keys: TokenIssuer
) -> None:
    first.accept(OPAQUE)
    issuers = introspecting("opaque", first)
    issuers += f"  jwt:\n    issuer: {keys.issuer}\n    jwks_file: keys.json\n"
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE, ("jwt",))) == "malformed_token"
    assert first.calls == 0


async def test_through_the_gateway_a_route_listing_one_issuer_never_asks_another(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    second.accept(OPAQUE)
    first.accept("first-token")
    issuers = introspecting("first", first) + introspecting("second", second)
    async with echo_upstream() as upstream:
        path = tmp_path / "gateway.yaml"
        path.write_text(
            "issuers:\n"
            + issuers
            + "routes:\n"
            + f"  - {{name: r, match: {{path: /r}}, upstream: '{upstream.url}',"
            + " auth: {issuers: [first]}}\n"
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            statuses = []
            for token in (OPAQUE, "first-token"):
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(gateway.url + "/r", headers=headers) as response:
                    statuses.append(response.status)
    assert statuses == [401, 200]
    assert first.tokens_asked() == [OPAQUE, "first-token"]
    assert second.calls == 0


# -- when an authorization server cannot be asked -----------------------------------------------


async def test_an_unreachable_issuer_makes_the_token_unavailable_when_no_other_accepts_it(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    first.fail("server_error")
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(OPAQUE, ("first", "second"))
    assert isinstance(result, Denial)
    assert (result.reason, result.retry_after) == ("unavailable", 5)


async def test_an_unreachable_issuer_does_not_stop_another_from_accepting_the_token(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    first.fail("timeout")
    second.accept(OPAQUE)
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        result = await verifier.verify(OPAQUE, ("first", "second"))
    assert isinstance(result, VerifiedToken) and result.issuer == "second"


async def test_a_refusal_by_the_issuer_that_knows_the_token_wins_over_inactive_elsewhere(
    tmp_path: Path, first: AuthorizationServer, second: AuthorizationServer
) -> None:
    first.accept(OPAQUE, token_type="refresh_token")
    issuers = introspecting("first", first) + introspecting("second", second)
    async with verifier_for(tmp_path, issuers) as verifier:
        assert reason(await verifier.verify(OPAQUE, ("first", "second"))) == "wrong_type"
