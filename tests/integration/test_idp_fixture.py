"""The test OpenID provider fixture mints real, verifiable tokens."""

from __future__ import annotations

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
    POST_CLIENT,
    OpenIdProvider,
    ProviderError,
    decode_jwt_unverified,
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
