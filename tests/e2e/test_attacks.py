"""Forged, confused and malformed tokens, sent through a running gateway.

Each attack must be refused with the right status and challenge, a JSON body that gives nothing
away, the exact deny reason counted in the metrics, and no request reaching the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from tests.e2e.conftest import Stack
from tests.support import (
    AUDIENCE,
    ISSUER,
    TokenIssuer,
    b64json,
    b64url,
    echo_upstream,
    running_gateway,
    write_config,
)

CORP = TokenIssuer(ISSUER, prefix="corp")
PARTNER = TokenIssuer("https://partner.test", prefix="partner")
# Claims to be the corp issuer and reuses its kids, but holds keys of its own.
ATTACKER = TokenIssuer(ISSUER, prefix="corp")
SIGNER = JWSRegistry(strict_check_header=False)

CONFIG = """\
issuers:
  corp:
    issuer: {corp}
    jwks_file: corp.jwks.json
    audiences: [{audience}]
    token_type: at+jwt
    leeway: 30s
  partner:
    issuer: {partner}
    jwks_file: partner.jwks.json
    audiences: [{audience}]
upstreams:
  echo: {{url: "{upstream}"}}
routes:
  - name: orders
    match: {{path: /orders/**}}
    upstream: echo
    auth:
      scopes: [orders:read]
  - name: corp-only
    match: {{path: /corp/**}}
    upstream: echo
    auth:
      issuers: [corp]
"""

# What a refusal must never reveal: what the gateway expected.
EXPECTED_VALUES = (
    ISSUER,
    PARTNER.issuer,
    AUDIENCE,
    "at+jwt",
    "orders:read",
    *(key.kid for issuer in (CORP, PARTNER) for key in (issuer.rsa, issuer.ec, issuer.ed)),
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    CORP.write_jwks(tmp_path / "corp.jwks.json")
    PARTNER.write_jwks(tmp_path / "partner.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            tmp_path,
            CONFIG,
            corp=CORP.issuer,
            partner=PARTNER.issuer,
            audience=AUDIENCE,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, CORP, http)


# -- building tokens by hand ------------------------------------------------------------------


def claims(issuer: TokenIssuer = CORP, **overrides: Any) -> dict[str, Any]:
    return issuer.claims(**overrides)


def sign(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: RSAKey | ECKey | OKPKey = CORP.rsa,
    alg: str = "RS256",
) -> str:
    """A compact JWS over exactly these bytes, with no library checks on the header."""
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw_payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(raw_header)}.{b64url(raw_payload)}"
    return f"{signing_input}.{b64url(SIGNER.algorithms[alg].sign(signing_input.encode(), key))}"


def corp_header(**extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "at+jwt", "kid": CORP.rsa.kid, **extra}


def hs256_with(secret: bytes) -> str:
    header = b64json({"alg": "HS256", "typ": "at+jwt", "kid": CORP.rsa.kid})
    signing_input = f"{header}.{b64json(claims())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


# -- what a refusal looks like ----------------------------------------------------------------


def deny_counts(stack: Stack) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for metric in stack.gateway.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "gateway_auth_decisions_total" and sample.labels["result"] == "deny":
                counts[sample.labels["route"], sample.labels["reason"]] = sample.value
    return {key: value for key, value in counts.items() if value}


async def refused(
    stack: Stack,
    token: str,
    reason: str,
    *,
    path: str = "/orders/1",
    route: str = "orders",
) -> dict[str, Any]:
    """Send ``token``; assert a 401 invalid_token refusal for ``reason`` and nothing forwarded."""
    async with stack.http.get(
        stack.url + path, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401, await response.text()
        assert response.content_type == "application/json"
        challenge = response.headers["WWW-Authenticate"]
        body = await response.json()
        request_id = response.headers["X-Request-Id"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert set(body) == {"error", "error_description", "request_id"}
    assert body["error"] == "invalid_token"
    assert body["request_id"] == request_id
    description = body["error_description"]
    assert challenge.endswith(f'error_description="{description}"')
    assert token not in description and token not in challenge
    for secret in EXPECTED_VALUES:
        assert secret not in description, f"{secret!r} revealed in {description!r}"
    assert stack.upstream.received == [], "a refused request reached the upstream"
    assert deny_counts(stack) == {(route, reason): 1}
    return dict(body)


async def accepted(stack: Stack, token: str, path: str = "/orders/1") -> None:
    async with stack.http.get(
        stack.url + path, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()
    assert len(stack.upstream.received) == 1


# -- unsigned and HMAC-confused tokens --------------------------------------------------------


async def test_an_alg_none_token_without_a_signature_is_refused_as_disallowed_alg(
    stack: Stack,
) -> None:
    unsigned = f"{b64json({'alg': 'none', 'typ': 'at+jwt'})}.{b64json(claims())}."
    await refused(stack, unsigned, "disallowed_alg")


async def test_an_alg_none_token_with_a_signature_segment_is_refused_as_disallowed_alg(
    stack: Stack,
) -> None:
    forged = f"{b64json({'alg': 'none', 'typ': 'at+jwt'})}.{b64json(claims())}.{b64url(b'sig')}"
    await refused(stack, forged, "disallowed_alg")


async def test_a_token_signed_with_hs256_using_the_rsa_public_key_pem_is_refused_as_disallowed_alg(
    stack: Stack,
) -> None:
    await refused(stack, hs256_with(CORP.rsa.as_pem(private=False)), "disallowed_alg")


async def test_a_token_signed_with_hs256_using_the_rsa_public_jwk_is_refused_as_disallowed_alg(
    stack: Stack,
) -> None:
    jwk_json = json.dumps(CORP.rsa.as_dict(private=False)).encode()
    await refused(stack, hs256_with(jwk_json), "disallowed_alg")


# -- keys from the wrong place ----------------------------------------------------------------


async def test_a_token_naming_another_issuers_kid_and_signed_by_that_key_is_an_unknown_key(
    stack: Stack,
) -> None:
    # iss is corp; the key is partner's (a real, trusted key, but not corp's): only corp's keys
    # are consulted, where that kid does not exist.
    forged = sign(corp_header(kid=PARTNER.rsa.kid), claims(CORP), PARTNER.rsa)
    await refused(stack, forged, "unknown_key")


async def test_a_token_reusing_a_known_kid_but_signed_by_another_key_has_an_invalid_signature(
    stack: Stack,
) -> None:
    await refused(stack, ATTACKER.token(), "invalid_signature")


@pytest.mark.parametrize(
    "header",
    [
        {"jku": "https://attacker.test/jwks.json"},
        {"x5u": "https://attacker.test/cert.pem"},
        {"jwk": ATTACKER.rsa.as_dict(private=False)},
        {"x5c": [base64.b64encode(b"attacker certificate").decode()]},
    ],
    ids=["jku", "x5u", "jwk", "x5c"],
)
async def test_a_token_pointing_at_or_embedding_an_attacker_key_is_refused_as_invalid_signature(
    stack: Stack, header: dict[str, Any]
) -> None:
    forged = sign({"alg": "RS256", "typ": "at+jwt", **header}, claims(), ATTACKER.rsa)
    await refused(stack, forged, "invalid_signature")


async def test_a_token_with_an_unknown_kid_is_refused_as_unknown_key(stack: Stack) -> None:
    await refused(stack, CORP.token(kid="rotated-away"), "unknown_key")


async def test_an_rs256_signature_relabelled_ps256_is_refused_as_invalid_signature(
    stack: Stack,
) -> None:
    _, payload, signature = CORP.token().split(".")
    relabelled = b64json(corp_header(alg="PS256"))
    await refused(stack, f"{relabelled}.{payload}.{signature}", "invalid_signature")


async def test_an_rs256_signature_relabelled_es256_is_refused_as_disallowed_alg(
    stack: Stack,
) -> None:
    _, payload, signature = CORP.token().split(".")
    relabelled = b64json(corp_header(alg="ES256"))
    await refused(stack, f"{relabelled}.{payload}.{signature}", "disallowed_alg")


# -- structure --------------------------------------------------------------------------------


async def test_a_token_requiring_an_unknown_critical_extension_is_malformed(stack: Stack) -> None:
    forged = sign(corp_header(crit=["urn:example:must-understand"]), claims())
    await refused(stack, forged, "malformed_token")


@pytest.mark.parametrize("segment", [0, 1, 2], ids=["header", "payload", "signature"])
async def test_a_token_with_a_padded_base64url_segment_is_malformed(
    stack: Stack, segment: int
) -> None:
    parts = CORP.token().split(".")
    parts[segment] += "=" * (-len(parts[segment]) % 4 or 2)
    await refused(stack, ".".join(parts), "malformed_token")


async def test_a_flattened_jws_json_serialisation_is_malformed(stack: Stack) -> None:
    header, payload, signature = CORP.token().split(".")
    flattened = {"protected": header, "payload": payload, "signature": signature}
    await refused(stack, json.dumps(flattened, separators=(",", ":")), "malformed_token")


async def test_a_general_jws_json_serialisation_is_malformed(stack: Stack) -> None:
    header, payload, signature = CORP.token().split(".")
    general = {"payload": payload, "signatures": [{"protected": header, "signature": signature}]}
    await refused(stack, json.dumps(general, separators=(",", ":")), "malformed_token")


async def test_a_five_segment_jwe_looking_token_is_malformed(stack: Stack) -> None:
    header = b64json({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": CORP.rsa.kid})
    jwe = ".".join([header, b64url(b"k" * 256), b64url(b"iv"), b64url(b"cipher"), b64url(b"t")])
    await refused(stack, jwe, "malformed_token")


async def test_a_header_with_a_duplicate_alg_member_is_malformed(stack: Stack) -> None:
    header = b'{"alg":"RS256","typ":"at+jwt","kid":"%s","alg":"none"}' % CORP.rsa.kid.encode()
    await refused(stack, sign(header, claims()), "malformed_token")


# -- claims of the wrong type -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": [ISSUER]},
        {"exp": str(int(time.time()) + 300)},
        {"nbf": str(int(time.time()))},
        {"iat": str(int(time.time()))},
        {"sub": 1234},
    ],
    ids=["iss-array", "exp-string", "nbf-string", "iat-string", "sub-number"],
)
async def test_a_claim_of_the_wrong_json_type_is_malformed(
    stack: Stack, overrides: dict[str, Any]
) -> None:
    await refused(stack, sign(corp_header(), claims(**overrides)), "malformed_token")


# -- token type -------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", None], ids=["typ-JWT", "no-typ"])
async def test_an_id_token_typed_jwt_is_refused_as_wrong_type_where_at_jwt_is_required(
    stack: Stack, typ: str | None
) -> None:
    await refused(stack, CORP.token(typ=typ, nonce="n-0S6", auth_time=1), "wrong_type")


@pytest.mark.parametrize("typ", ["application/at+jwt", "Application/AT+JWT", "AT+JWT"])
async def test_the_access_token_type_is_accepted_in_either_form_and_any_case(
    stack: Stack, typ: str
) -> None:
    await accepted(stack, CORP.token(typ=typ))


# -- issuer, audience, lifetime ---------------------------------------------------------------


async def test_a_good_token_of_another_issuer_is_refused_as_wrong_issuer_on_a_restricted_route(
    stack: Stack,
) -> None:
    await accepted(stack, PARTNER.token(typ=None))  # good elsewhere
    stack.upstream.received.clear()
    await refused(stack, PARTNER.token(typ=None), "wrong_issuer", path="/corp/1", route="corp-only")


async def test_a_good_signature_for_another_audience_is_refused_as_wrong_audience(
    stack: Stack,
) -> None:
    await refused(stack, CORP.token(aud="https://other-api.test"), "wrong_audience")


async def test_a_token_expired_beyond_the_leeway_is_refused_as_expired(stack: Stack) -> None:
    now = int(time.time())
    await refused(stack, CORP.token(iat=now - 600, exp=now - 120), "expired")


async def test_a_token_expired_within_the_leeway_is_accepted(stack: Stack) -> None:
    now = int(time.time())
    await accepted(stack, CORP.token(iat=now - 600, exp=now - 10))


async def test_a_token_not_valid_until_the_future_is_refused_as_not_yet_valid(
    stack: Stack,
) -> None:
    await refused(stack, CORP.token(nbf=int(time.time()) + 600), "not_yet_valid")


# -- garbage ----------------------------------------------------------------------------------


def _random_token(seed: int, length: int) -> str:
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(0x21, 0x7F)]
    return "".join(rng.choice(alphabet) for _ in range(length))


GARBAGE = {
    "random-printable": _random_token(1, 300),
    "random-b64": "".join(random.Random(2).choice("ab._-~+/") for _ in range(2000)),
    "dots-only": "." * 50,
    "deep-json": f"{b64url(b'[' * 5000)}.{b64json(claims())}.c2ln",
    "just-over-the-limit": "a" * 8193,
    "far-over-the-limit": "eyJ" * 3000,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
async def test_garbage_tokens_are_refused_as_malformed_never_a_server_error(
    stack: Stack, name: str
) -> None:
    await refused(stack, GARBAGE[name], "malformed_token")


@pytest.mark.parametrize("length", [10_000, 100_000])
async def test_a_huge_authorization_header_is_refused_before_the_gateway_never_a_500(
    stack: Stack, length: int
) -> None:
    async with stack.http.get(
        f"{stack.url}/orders/1", headers={"Authorization": "Bearer " + "a" * length}
    ) as response:
        assert 400 <= response.status < 500
    assert stack.upstream.received == []


async def test_random_bytes_as_a_token_are_never_a_server_error(stack: Stack) -> None:
    rng = random.Random(7)
    for _ in range(20):
        raw = bytes(rng.choice([*range(0x21, 0x7F), *range(0x80, 0x100)]) for _ in range(200))
        async with stack.http.get(
            f"{stack.url}/orders/1", headers={"Authorization": "Bearer " + raw.decode("latin-1")}
        ) as response:
            assert response.status == 401
    assert stack.upstream.received == []


# -- keys that could never be loaded ----------------------------------------------------------


@pytest.fixture
async def keyless_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The same gateway, but corp's key file is unreadable: its keys were never loaded."""
    (tmp_path / "corp.jwks.json").write_text("this is not a JWKS")
    PARTNER.write_jwks(tmp_path / "partner.jwks.json")
    async with echo_upstream() as upstream:
        path = write_config(
            tmp_path,
            CONFIG,
            corp=CORP.issuer,
            partner=PARTNER.issuer,
            audience=AUDIENCE,
            upstream=upstream.url,
        )
        async with running_gateway(path) as gateway, aiohttp.ClientSession() as http:
            yield Stack(gateway, upstream, CORP, http)


async def test_a_token_that_cannot_be_checked_because_keys_never_loaded_is_503_never_401(
    keyless_stack: Stack,
) -> None:
    stack = keyless_stack
    for kid in (CORP.rsa.kid, "forged-1", "forged-2"):
        async with stack.http.get(
            f"{stack.url}/orders/1", headers={"Authorization": f"Bearer {CORP.token(kid=kid)}"}
        ) as response:
            assert response.status == 503
            assert "WWW-Authenticate" not in response.headers
            assert int(response.headers["Retry-After"]) > 0
            body = await response.json()
        assert set(body) == {"error", "error_description", "request_id"}
    assert stack.upstream.received == []
    assert deny_counts(stack) == {("orders", "unavailable"): 3}
    # A flood of unknown kids while the keys are missing costs at most the start-up read.
    fetches = stack.gateway.metrics.registry.get_sample_value(
        "gateway_jwks_fetches_total", {"issuer": "corp", "result": "error"}
    )
    assert fetches == 1
