"""The test OpenID provider fixture mints real, verifiable tokens."""

from __future__ import annotations

import base64
import time
import warnings
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

from tests.integration.idp_fixture import (
    ACME_CLIENT,
    ACME_EXTRA_CLAIMS,
    DEFAULT_CLIENT,
    INTROSPECTOR_CLIENT,
    INTROSPECTOR_POST_CLIENT,
    OPAQUE_RESOURCE,
    POST_CLIENT,
    OpenIdProvider,
    ProviderError,
    decode_jwt_unverified,
    is_jwt,
    start_provider,
)

API = "https://api.example.test"


def verify(idp: OpenIdProvider, token: str, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``token`` against the provider's published JWKS; return (header, claims)."""
    keys = KeySet.import_key_set(idp.jwks())  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as deprecated by RFC 9864; the provider still uses it.
        warnings.simplefilter("ignore", SecurityWarning)
        decoded = jwt.decode(token, keys, algorithms=[alg])
    return dict(decoded.header), dict(decoded.claims)


def test_discovery(idp: OpenIdProvider) -> None:
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert not idp.issuer.endswith("/")
    assert idp.discovery["issuer"] == idp.issuer
    assert idp.jwks_uri.startswith(idp.issuer + "/")
    keys = idp.jwks()["keys"]
    assert {(k["kty"], k["alg"]) for k in keys} == {
        ("RSA", "RS256"),
        ("EC", "ES256"),
        ("OKP", "EdDSA"),
    }
    for key in keys:
        assert key["use"] == "sig"
        assert key["kid"]
        assert "d" not in key  # public halves only


@pytest.mark.parametrize(
    ("suffix", "alg"),
    [("rs256", "RS256"), ("es256", "ES256"), ("eddsa", "EdDSA")],
)
def test_access_token(idp: OpenIdProvider, suffix: str, alg: str) -> None:
    resource = f"{API}/{suffix}"
    token = idp.token(resource, ["orders:read"], alg=alg)

    header, payload = decode_jwt_unverified(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == alg
    assert header["kid"] in {k["kid"] for k in idp.jwks()["keys"]}

    vheader, claims = verify(idp, token, alg)
    assert vheader == header
    assert claims == payload
    now = time.time()
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == resource
    assert "orders:read" in claims["scope"].split()
    assert now < claims["exp"] <= now + 600 + 5
    assert claims["client_id"] == DEFAULT_CLIENT
    assert claims["sub"] == DEFAULT_CLIENT
    assert "tenant" not in claims
    assert "groups" not in claims


def test_scopes_and_default_alg(idp: OpenIdProvider) -> None:
    resource = f"{API}/orders"
    response = idp.token_response(resource, "orders:read orders:write admin not-a-scope")
    assert response["expires_in"] == 600
    assert response["token_type"] == "Bearer"
    header, claims = verify(idp, response["access_token"], "RS256")
    assert header["alg"] == "RS256"
    assert claims["aud"] == resource
    assert set(claims["scope"].split()) == {"orders:read", "orders:write", "admin"}
    assert response["scope"] == claims["scope"]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_alg_override(idp: OpenIdProvider, alg: str) -> None:
    resource = f"{API}/orders"
    header, claims = verify(idp, idp.token(resource, "read", alg=alg), alg)
    assert header["alg"] == alg
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == resource
    # The explicit alg wins over the resource URL's suffix.
    header, _ = verify(idp, idp.token(f"{API}/rs256", "read", alg=alg), alg)
    assert header["alg"] == alg


def test_unsupported_alg(idp: OpenIdProvider) -> None:
    with pytest.raises(ValueError):
        idp.token(f"{API}/orders", "read", alg="HS256")


def test_default_resource(idp: OpenIdProvider) -> None:
    response = idp.token_response(None, "read")
    _, claims = verify(idp, response["access_token"], "RS256")
    assert claims["aud"] == f"{API}/rs256"


def test_invalid_resource(idp: OpenIdProvider) -> None:
    with pytest.raises(ProviderError, match="invalid_target"):
        idp.token("urn:not-a-url", "read")


def test_acme_client_extra_claims(idp: OpenIdProvider) -> None:
    token = idp.token(f"{API}/es256", ["orders:read", "orders:write"], client=ACME_CLIENT)
    _, claims = verify(idp, token, "ES256")
    assert claims["client_id"] == ACME_CLIENT
    assert claims["tenant"] == ACME_EXTRA_CLAIMS["tenant"]
    assert claims["groups"] == ACME_EXTRA_CLAIMS["groups"]
    assert claims["scope"] == "orders:read orders:write"


def test_client_secret_post(idp: OpenIdProvider) -> None:
    token = idp.token(f"{API}/rs256", "read", client=POST_CLIENT)
    _, claims = verify(idp, token, "RS256")
    assert claims["client_id"] == POST_CLIENT


def test_bad_secret_is_rejected(idp: OpenIdProvider) -> None:
    with pytest.raises(ProviderError, match="invalid_client"):
        idp.token_response(f"{API}/rs256", "read", secret="wrong")


def test_id_token(idp: OpenIdProvider) -> None:
    token = idp.id_token("alice")
    header, payload = decode_jwt_unverified(token)
    assert header["alg"] == "RS256"
    assert header.get("typ", "JWT") == "JWT"
    _, claims = verify(idp, token, "RS256")
    assert claims["iss"] == idp.issuer
    assert claims["sub"] == "alice"
    assert claims["aud"] == DEFAULT_CLIENT
    assert claims["exp"] > time.time()
    assert claims == payload


def test_rotate_and_retire() -> None:
    # A private provider: rotating the session-wide one would confuse other tests.
    with start_provider() as idp:
        old_token = idp.token(f"{API}/rs256", "read")
        old_kid = decode_jwt_unverified(old_token)[0]["kid"]
        old_kids = {k["kid"] for k in idp.jwks()["keys"]}
        assert old_kid in old_kids

        state = idp.rotate()
        new_kids = set(state["signing"])
        assert len(new_kids) == 3
        assert not new_kids & old_kids
        published = [k["kid"] for k in idp.jwks()["keys"]]
        assert set(published) == new_kids | old_kids
        assert set(published[:3]) == new_kids  # new keys listed first

        for suffix, alg in (("rs256", "RS256"), ("es256", "ES256"), ("eddsa", "EdDSA")):
            header, _ = verify(idp, idp.token(f"{API}/{suffix}", "read"), alg)
            assert header["kid"] in new_kids
        assert decode_jwt_unverified(idp.id_token())[0]["kid"] in new_kids
        verify(idp, old_token, "RS256")  # still verifiable during the grace period

        state = idp.retire()
        assert set(state["published"]) == new_kids
        assert {k["kid"] for k in idp.jwks()["keys"]} == new_kids
        with pytest.raises(JoseError):
            verify(idp, old_token, "RS256")
    assert not idp.running


# -- opaque tokens, introspection, revocation ------------------------------------------------


def test_discovery_lists_introspection_and_revocation(idp: OpenIdProvider) -> None:
    assert idp.introspection_endpoint == idp.discovery["introspection_endpoint"]
    assert idp.revocation_endpoint == idp.discovery["revocation_endpoint"]
    assert idp.introspection_endpoint.startswith(idp.issuer + "/")
    assert idp.revocation_endpoint.startswith(idp.issuer + "/")
    assert idp.introspector_client_id == INTROSPECTOR_CLIENT
    assert idp.introspector_post_client_id == INTROSPECTOR_POST_CLIENT
    assert idp.introspector_secret == idp.introspector_post_secret == "gateway-introspector-secret"


def test_opaque_token_introspects_active(idp: OpenIdProvider) -> None:
    token = idp.opaque_token(["orders:read", "orders:write", "not-a-scope"])
    assert not is_jwt(token)
    assert token.count(".") < 2
    with pytest.raises(ValueError):
        decode_jwt_unverified(token)

    before = time.time()
    answer = idp.introspect(token)
    assert set(answer) == {
        "active",
        "sub",
        "client_id",
        "exp",
        "iat",
        "iss",
        "aud",
        "scope",
        "token_type",
    }
    assert answer["active"] is True
    assert set(answer["scope"].split()) == {"orders:read", "orders:write"}
    assert answer["aud"] == OPAQUE_RESOURCE
    assert answer["client_id"] == DEFAULT_CLIENT
    assert answer["sub"] == DEFAULT_CLIENT
    assert answer["iss"] == idp.issuer
    assert answer["token_type"] == "Bearer"
    assert answer["iat"] <= before + 5
    assert answer["exp"] - answer["iat"] == 600


def test_opaque_token_for_any_audience(idp: OpenIdProvider) -> None:
    resource = f"{API}/orders"
    token = idp.opaque_token("orders:read", resource=resource)
    assert not is_jwt(token)
    assert idp.introspect(token)["aud"] == resource


def test_opaque_by_resource_suffix(idp: OpenIdProvider) -> None:
    resource = f"{API}/orders/opaque"
    response = idp.token_response(resource, "read write")
    assert response["token_type"] == "Bearer"
    assert response["expires_in"] == 600
    assert not is_jwt(response["access_token"])
    answer = idp.introspect(response["access_token"])
    assert answer["active"] is True
    assert answer["aud"] == resource
    assert answer["scope"] == response["scope"] == "read write"

    # The X-Test-Format header wins over the suffix.
    jwt_token = idp.token_response(resource, "read", token_format="jwt")["access_token"]
    _, claims = verify(idp, jwt_token, "RS256")
    assert claims["aud"] == resource
    # ... and JWTs are not introspectable (oidc-provider refuses them).
    with pytest.raises(ProviderError, match="unsupported_token_type"):
        idp.introspect(jwt_token)


def test_unsupported_token_format(idp: OpenIdProvider) -> None:
    with pytest.raises(ValueError):
        idp.token_response(f"{API}/orders", "read", token_format="paseto")


def test_opaque_acme_extra_claims(idp: OpenIdProvider) -> None:
    token = idp.opaque_token(["orders:read"], client=ACME_CLIENT)
    answer = idp.introspect(token)
    assert answer["active"] is True
    assert answer["client_id"] == answer["sub"] == ACME_CLIENT
    assert answer["tenant"] == ACME_EXTRA_CLAIMS["tenant"]
    assert answer["groups"] == ACME_EXTRA_CLAIMS["groups"]


def test_opaque_token_post_client(idp: OpenIdProvider) -> None:
    token = idp.opaque_token("read", client=POST_CLIENT)
    assert idp.introspect(token)["client_id"] == POST_CLIENT
    idp.revoke(token)  # authenticates as gateway-tests-post, with client_secret_post
    assert idp.introspect(token) == {"active": False}


@pytest.mark.parametrize("client", [INTROSPECTOR_CLIENT, INTROSPECTOR_POST_CLIENT])
def test_introspector_auth_methods(idp: OpenIdProvider, client: str) -> None:
    token = idp.opaque_token("read")
    answer = idp.introspect(token, client=client)
    assert answer["active"] is True
    assert answer["client_id"] == DEFAULT_CLIENT
    with pytest.raises(ProviderError, match="invalid_client"):
        idp.introspect(token, client=client, secret="wrong")


def _basic(client: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()}


@pytest.mark.parametrize(
    ("client", "secret"),
    [
        (INTROSPECTOR_CLIENT, "gateway-introspector-secret"),
        (INTROSPECTOR_POST_CLIENT, "gateway-introspector-secret"),
        (DEFAULT_CLIENT, "gateway-tests-secret"),
        (POST_CLIENT, "gateway-tests-secret"),
    ],
)
def test_wrong_auth_method_is_rejected(idp: OpenIdProvider, client: str, secret: str) -> None:
    """Each client must use its registered method (basic or post), at every endpoint."""
    token = idp.opaque_token("read")
    if client in (INTROSPECTOR_POST_CLIENT, POST_CLIENT):  # registered for post, sends basic
        form: dict[str, str] = {}
        headers = _basic(client, secret)
    else:  # registered for basic, sends post
        form = {"client_id": client, "client_secret": secret}
        headers = {}
    endpoints = {
        idp.introspection_endpoint: {"token": token},
        idp.revocation_endpoint: {"token": token},
        idp.token_endpoint: {"grant_type": "client_credentials", "scope": "read"},
    }
    for endpoint, params in endpoints.items():
        with pytest.raises(ProviderError, match=r"HTTP 401: .*invalid_client.*must authenticate"):
            idp._request("POST", endpoint, data={**params, **form}, headers=headers)
    assert idp.introspect(token)["active"] is True  # the revocation did not happen


def test_revoke(idp: OpenIdProvider) -> None:
    token = idp.opaque_token("read")
    other = idp.opaque_token("read")
    assert idp.introspect(token)["active"] is True
    idp.revoke(token)
    assert idp.introspect(token) == {"active": False}
    assert idp.introspect(other)["active"] is True  # only that one token
    idp.revoke(token)  # revoking twice is fine (RFC 7009)


def test_only_the_tokens_client_may_revoke(idp: OpenIdProvider) -> None:
    token = idp.opaque_token("read")
    with pytest.raises(ProviderError, match="invalid_request"):
        idp.revoke(token, client=INTROSPECTOR_CLIENT)
    assert idp.introspect(token)["active"] is True


def test_unknown_token_is_inactive(idp: OpenIdProvider) -> None:
    assert idp.introspect("not-a-token-the-provider-issued") == {"active": False}
    assert idp.introspect("x" * 43, client=INTROSPECTOR_POST_CLIENT) == {"active": False}


def test_token_clients_see_only_their_own_tokens(idp: OpenIdProvider) -> None:
    token = idp.opaque_token("read", client=ACME_CLIENT)
    assert idp.introspect(token, client=ACME_CLIENT)["active"] is True
    assert idp.introspect(token, client=DEFAULT_CLIENT) == {"active": False}


def test_introspectors_cannot_get_tokens(idp: OpenIdProvider) -> None:
    with pytest.raises(ProviderError, match="grant type is not allowed"):
        idp.token_response(
            OPAQUE_RESOURCE, "read", client=INTROSPECTOR_CLIENT, secret=idp.introspector_secret
        )


def test_introspection_counter(idp: OpenIdProvider) -> None:
    token = idp.opaque_token("read")
    before = idp.introspection_requests()
    revocations = idp.revocation_requests()
    idp.introspect(token)
    idp.introspect(token, client=INTROSPECTOR_POST_CLIENT)
    idp.introspect("unknown")
    with pytest.raises(ProviderError):
        idp.introspect(token, secret="wrong")  # rejected requests count too
    assert idp.introspection_requests() == before + 4
    idp.revoke(token)
    assert idp.revocation_requests() == revocations + 1
    assert idp.introspection_requests() == before + 4


def test_stats_reset_and_opaque_tokens_survive_rotation() -> None:
    # A private provider: resetting or rotating the session-wide one would confuse other tests.
    with start_provider() as idp:
        token = idp.opaque_token("read", client=ACME_CLIENT)
        idp.introspect(token)
        idp.jwks()
        assert idp.stats()["introspection_requests"] == 1
        assert idp.reset_stats() == {
            "jwks_requests": 0,
            "discovery_requests": 0,
            "introspection_requests": 0,
            "revocation_requests": 0,
        }
        idp.rotate()
        idp.retire()
        answer = idp.introspect(token)
        assert answer["active"] is True
        assert answer["tenant"] == "acme"
        assert idp.introspection_requests() == 1
        idp.revoke(token)
        assert idp.introspect(token) == {"active": False}
