"""Local JWT validation: what a token must be to pass, and the one reason each bad token gets.

The verifier runs against an in-memory JWKS and an injected clock, so every lifetime rule is
checked at an exact instant and no test touches the network or the file system.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import string
from collections.abc import Collection
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.extract import is_b64token
from gateway.pipeline.verify.fetch import FetchError
from gateway.pipeline.verify.jwks import KeyStore
from gateway.pipeline.verify.jwt import (
    JwtVerifier,
    SignatureCheck,
    _b64decode,
    issuer_keys,
    signature_ok,
)
from gateway.pipeline.verify.tokens import b64token_is_compact_jws, is_compact_jws
from tests.support import AUDIENCE, ISSUER, TokenIssuer, b64json, b64url

# Keys are slow to make: once per module. ATTACKER reuses A's issuer URL and kids, with its own
# keys.
A = TokenIssuer(ISSUER, prefix="a")
B = TokenIssuer("https://partner.test", prefix="b")
ATTACKER = TokenIssuer(ISSUER, prefix="a")

NOW = 1_800_000_000
ALL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA")
SIGNER = JWSRegistry(strict_check_header=False)


class Clock:
    """A wall clock that stands still until a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryJwks:
    """A JWKS loader serving a document from memory, counting calls; can be made to fail."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.calls = 0
        self.failing = False

    async def __call__(self) -> Any:
        self.calls += 1
        if self.failing:
            raise FetchError("the identity provider is down")
        return self.document


def claims(issuer: TokenIssuer = A, **overrides: Any) -> dict[str, Any]:
    return issuer.claims(**{"iat": NOW, "exp": NOW + 300, **overrides})


def sign(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: RSAKey | ECKey | OKPKey,
    alg: str,
) -> str:
    """A compact JWS over exactly these bytes, with no library checks on the header."""
    raw_header = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw_payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64url(raw_header)}.{b64url(raw_payload)}"
    signature = SIGNER.algorithms[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64url(signature)}"


def token(
    alg: str = "RS256",
    *,
    issuer: TokenIssuer = A,
    typ: str | None = "at+jwt",
    kid: str | bool | None = True,
    header: dict[str, Any] | None = None,
    **claim_overrides: Any,
) -> str:
    key = issuer.key_for(alg)
    protected: dict[str, Any] = {"alg": alg}
    if typ is not None:
        protected["typ"] = typ
    if kid is True:
        protected["kid"] = key.kid
    elif isinstance(kid, str):
        protected["kid"] = kid
    protected.update(header or {})
    return sign(protected, claims(issuer, **claim_overrides), key, alg)


def hmac_token(secret: bytes, **claim_overrides: Any) -> str:
    """HS256 MACed with ``secret``: built by hand, since joserfc refuses to do it."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": A.rsa.kid}
    signing_input = f"{b64json(header)}.{b64json(claims(**claim_overrides))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


async def make_verifier(
    *,
    jwks: Any = None,
    token_type: str | None = "at+jwt",
    algorithms: Collection[str] = ALL_ALGORITHMS,
    leeway: float = 30.0,
    idp_down: bool = False,
    clock: Clock | None = None,
    signature_check: SignatureCheck | None = None,
) -> JwtVerifier:
    """A verifier trusting issuer A as ``corp`` and issuer B as ``partner``; with ``idp_down``
    A's keys could never be loaded."""
    issuers = {}
    for name, issuer, document in (("corp", A, jwks or A.jwks), ("partner", B, B.jwks)):
        loader = MemoryJwks(document)
        loader.failing = idp_down and name == "corp"
        store = KeyStore(name, loader, min_refetch_interval=30, metrics=Metrics())
        await store.refresh()
        issuers[name] = issuer_keys(
            name, issuer.issuer, algorithms, leeway, token_type, "scope", store
        )
    return JwtVerifier(issuers, clock=clock or Clock(), signature_check=signature_check)


async def verify(candidate: str, **options: Any) -> VerifiedToken | Denial:
    allowed = options.pop("allowed", None)
    return await (await make_verifier(**options)).verify(candidate, allowed)


async def reason_of(candidate: str, **options: Any) -> str:
    result = await verify(candidate, **options)
    assert isinstance(result, Denial), f"expected a refusal, got {result}"
    return result.reason


def with_padding(candidate: str, segment: int) -> str:
    parts = candidate.split(".")
    parts[segment] += "=" * (-len(parts[segment]) % 4 or 4)
    return ".".join(parts)


# -- tokens that pass -------------------------------------------------------------------------


async def test_a_valid_token_is_verified_with_its_issuer_name_claims_and_scopes() -> None:
    result = await verify(token())
    assert isinstance(result, VerifiedToken)
    assert result.issuer == "corp"
    assert result.claims["sub"] == "alice"
    assert result.scopes == {"orders:read", "profile"}


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384", "ES256", "EdDSA"])
async def test_a_token_signed_with_any_allowed_asymmetric_algorithm_is_accepted(alg: str) -> None:
    assert isinstance(await verify(token(alg)), VerifiedToken)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_token_without_kid_is_tried_against_the_issuers_keys_of_its_type(
    alg: str,
) -> None:
    assert isinstance(await verify(token(alg, kid=None)), VerifiedToken)


async def test_a_token_of_a_second_issuer_is_verified_with_that_issuers_keys() -> None:
    result = await verify(token(issuer=B), token_type=None)
    assert isinstance(result, VerifiedToken)
    assert result.issuer == "partner"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"])
async def test_the_access_token_type_is_accepted_with_or_without_prefix_in_any_case(
    typ: str,
) -> None:
    assert isinstance(await verify(token(typ=typ)), VerifiedToken)


async def test_without_a_required_type_any_typ_is_accepted() -> None:
    assert isinstance(await verify(token(typ=None), token_type=None), VerifiedToken)


async def test_a_token_carrying_an_x5c_chain_in_its_header_is_still_verified_by_the_jwks() -> None:
    # Some identity providers put their certificate chain in the header; it is ignored, and must
    # not make an otherwise good token fail (a header over joserfc's 512-byte default).
    chain = [base64.b64encode(b"c" * 900).decode()] * 2
    assert isinstance(await verify(token(header={"x5c": chain})), VerifiedToken)


# -- forged or confused signatures ------------------------------------------------------------


async def test_an_unsigned_alg_none_token_without_signature_segment_is_a_disallowed_alg() -> None:
    unsigned = f"{b64json({'alg': 'none', 'typ': 'at+jwt'})}.{b64json(claims())}."
    assert await reason_of(unsigned) == "disallowed_alg"


async def test_a_token_of_an_allowed_alg_with_an_empty_signature_is_an_invalid_signature() -> None:
    header = {"alg": "RS256", "typ": "at+jwt", "kid": A.rsa.kid}
    assert await reason_of(f"{b64json(header)}.{b64json(claims())}.") == "invalid_signature"


async def test_an_alg_none_token_with_a_signature_segment_is_refused_as_disallowed_alg() -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": A.rsa.kid}
    forged = f"{b64json(header)}.{b64json(claims())}.{b64url(b'anything')}"
    assert await reason_of(forged) == "disallowed_alg"


async def test_a_token_with_alg_none_spelled_in_capitals_is_refused_as_disallowed_alg() -> None:
    forged = f"{b64json({'alg': 'NONE'})}.{b64json(claims())}.{b64url(b'x')}"
    assert await reason_of(forged) == "disallowed_alg"


async def test_a_token_hmaced_with_the_rsa_public_key_pem_is_refused_as_disallowed_alg() -> None:
    forged = hmac_token(A.rsa.as_pem(private=False))
    assert await reason_of(forged) == "disallowed_alg"


async def test_a_token_hmaced_with_the_rsa_public_jwk_json_is_refused_as_disallowed_alg() -> None:
    forged = hmac_token(json.dumps(A.rsa.as_dict(private=False)).encode())
    assert await reason_of(forged) == "disallowed_alg"


async def test_an_algorithm_outside_the_issuers_allow_list_is_refused() -> None:
    assert await reason_of(token("ES256"), algorithms=["RS256"]) == "disallowed_alg"


async def test_a_signature_longer_than_64_kib_is_an_invalid_signature_without_being_checked() -> (
    None
):
    # Reachable only where `max_token_bytes` is raised past about 87 KiB: the bound joserfc's
    # registry would apply, kept without it.
    header, payload, _ = token().split(".")
    checks: list[bytes] = []

    def counted(algorithm: Any, signed: bytes, signature: bytes, key: Any) -> bool:
        checks.append(signature)
        return signature_ok(algorithm, signed, signature, key)

    verifier = await make_verifier(signature_check=counted)
    for size in (64 * 1024, 64 * 1024 + 1):
        signature = base64.urlsafe_b64encode(bytes(size)).rstrip(b"=").decode()
        result = await verifier.verify(f"{header}.{payload}.{signature}")
        assert isinstance(result, Denial) and result.reason == "invalid_signature"
    assert [len(s) for s in checks] == [64 * 1024]  # the longer one was refused unchecked


@pytest.mark.parametrize("cut", [1, 2, 3])
async def test_a_signature_of_a_length_no_base64url_encoding_has_is_an_invalid_signature(
    cut: int,
) -> None:
    # Found by the raw-socket fuzzer: 4n+1 characters cannot be decoded at all (a 500 then).
    header, payload, signature = token().split(".")
    for length in (len(signature) - cut, len(signature) + 4 - cut):
        mangled = (signature * 2)[:length]
        assert await reason_of(f"{header}.{payload}.{mangled}") == "invalid_signature"


async def test_an_rs256_signature_relabelled_ps256_is_refused_as_invalid_signature() -> None:
    _, payload, signature = token("RS256").split(".")
    relabelled = b64json({"alg": "PS256", "typ": "at+jwt", "kid": A.rsa.kid})
    assert await reason_of(f"{relabelled}.{payload}.{signature}") == "invalid_signature"


async def test_an_rsa_key_named_by_a_token_claiming_es256_is_refused_as_disallowed_alg() -> None:
    _, payload, signature = token("RS256").split(".")
    relabelled = b64json({"alg": "ES256", "typ": "at+jwt", "kid": A.rsa.kid})
    assert await reason_of(f"{relabelled}.{payload}.{signature}") == "disallowed_alg"


async def test_a_jwk_alg_binds_its_key_to_that_algorithm_only() -> None:
    pinned = {"keys": [{**A.rsa.as_dict(private=False), "alg": "RS256"}]}
    assert isinstance(await verify(token("RS256"), jwks=pinned), VerifiedToken)
    assert await reason_of(token("PS256"), jwks=pinned) == "disallowed_alg"


async def test_a_token_signed_by_another_key_under_a_known_kid_has_an_invalid_signature() -> None:
    assert await reason_of(token(issuer=ATTACKER)) == "invalid_signature"


async def test_a_payload_carried_under_another_tokens_signature_is_invalid() -> None:
    first, second = token(sub="alice"), token(sub="admin")
    spliced = ".".join([*second.split(".")[:2], first.split(".")[2]])
    assert await reason_of(spliced) == "invalid_signature"


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
async def test_a_token_pointing_at_or_embedding_its_own_key_is_never_trusted(
    header: dict[str, Any],
) -> None:
    forged = token(issuer=ATTACKER, kid=None, header=header)
    assert await reason_of(forged) == "invalid_signature"


async def test_a_token_embedding_its_key_under_a_new_kid_names_an_unknown_key() -> None:
    forged = token(issuer=ATTACKER, kid="attacker", header={"jwk": ATTACKER.rsa.as_dict()})
    assert await reason_of(forged) == "unknown_key"


# -- keys -------------------------------------------------------------------------------------


async def test_an_unknown_kid_is_refused_as_unknown_key() -> None:
    assert await reason_of(token(kid="rotated-away")) == "unknown_key"


async def test_a_token_without_kid_and_no_key_of_its_type_is_refused_as_unknown_key() -> None:
    only_rsa = {"keys": [A.rsa.as_dict(private=False)]}
    assert await reason_of(token("ES256", kid=None), jwks=only_rsa) == "unknown_key"


async def test_a_kid_of_another_issuer_is_unknown_to_the_issuer_the_token_names() -> None:
    # iss says A, the header names B's key and B signed it: only A's keys are ever consulted.
    forged = sign({"alg": "RS256", "typ": "at+jwt", "kid": B.rsa.kid}, claims(A), B.rsa, "RS256")
    assert await reason_of(forged) == "unknown_key"


async def test_a_token_that_cannot_be_checked_because_keys_never_loaded_is_unavailable() -> None:
    result = await verify(token(), idp_down=True)
    assert isinstance(result, Denial)
    assert result.reason == "unavailable"
    assert result.retry_after is not None and result.retry_after > 0


async def test_a_token_without_kid_when_keys_never_loaded_is_unavailable() -> None:
    assert await reason_of(token(kid=None), idp_down=True) == "unavailable"


# -- issuer and type --------------------------------------------------------------------------


async def test_a_token_of_an_unconfigured_issuer_is_refused_as_wrong_issuer() -> None:
    assert await reason_of(token(iss="https://elsewhere.test")) == "wrong_issuer"


async def test_a_token_of_an_issuer_not_allowed_on_the_route_is_refused_as_wrong_issuer() -> None:
    assert await reason_of(token(issuer=B), allowed={"corp"}) == "wrong_issuer"


@pytest.mark.parametrize("iss", [[ISSUER], 42, None, {"iss": ISSUER}])
async def test_an_iss_that_is_not_a_string_is_malformed(iss: Any) -> None:
    forged = sign({"alg": "RS256", "kid": A.rsa.kid}, {**claims(), "iss": iss}, A.rsa, "RS256")
    assert await reason_of(forged) == "malformed_token"


@pytest.mark.parametrize("typ", ["JWT", "jwt", None, "dpop+jwt", "application/jwt", "at+jwt+x"])
async def test_a_token_of_another_type_is_refused_as_wrong_type_when_at_jwt_is_required(
    typ: str | None,
) -> None:
    assert await reason_of(token(typ=typ)) == "wrong_type"


# -- claim types and lifetime -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": str(NOW + 300)},
        {"exp": True},
        {"exp": [NOW + 300]},
        {"nbf": str(NOW)},
        {"iat": str(NOW)},
        {"exp": 10**400},
        {"exp": 1e400},
        {"sub": 42},
        {"sub": ["alice"]},
        {"aud": 7},
        {"aud": [AUDIENCE, 7]},
    ],
    ids=repr,
)
async def test_a_claim_of_the_wrong_json_type_makes_the_token_malformed(
    overrides: dict[str, Any],
) -> None:
    assert await reason_of(token(**overrides)) == "malformed_token"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_an_exp_written_as_a_non_json_constant_is_malformed(constant: str) -> None:
    body = json.dumps(claims()).replace(f'"exp": {NOW + 300}', f'"exp": {constant}')
    forged = sign(
        {"alg": "RS256", "typ": "at+jwt", "kid": A.rsa.kid}, body.encode(), A.rsa, "RS256"
    )
    assert await reason_of(forged) == "malformed_token"


async def test_a_token_without_exp_is_malformed() -> None:
    assert await reason_of(token(exp=None)) == "malformed_token"


async def test_a_token_expired_beyond_the_leeway_is_refused_as_expired() -> None:
    assert await reason_of(token(exp=NOW - 31), leeway=30) == "expired"


async def test_a_token_expired_within_the_leeway_is_accepted() -> None:
    assert isinstance(await verify(token(exp=NOW - 29), leeway=30), VerifiedToken)


async def test_a_token_not_valid_before_a_time_beyond_the_leeway_is_not_yet_valid() -> None:
    assert await reason_of(token(nbf=NOW + 31), leeway=30) == "not_yet_valid"


async def test_a_token_not_valid_before_a_time_within_the_leeway_is_accepted() -> None:
    assert isinstance(await verify(token(nbf=NOW + 29), leeway=30), VerifiedToken)


async def test_a_token_issued_in_the_future_beyond_the_leeway_is_not_yet_valid() -> None:
    assert await reason_of(token(iat=NOW + 120), leeway=30) == "not_yet_valid"


async def test_the_same_token_expires_when_the_clock_passes_exp_plus_leeway() -> None:
    clock = Clock()
    verifier = await make_verifier(clock=clock, leeway=10)
    good = token(exp=NOW + 60)
    assert isinstance(await verifier.verify(good), VerifiedToken)
    clock.now = NOW + 70
    assert isinstance(await verifier.verify(good), VerifiedToken)
    clock.now = NOW + 71
    result = await verifier.verify(good)
    assert isinstance(result, Denial) and result.reason == "expired"


async def test_lifetime_can_be_left_unchecked_to_explain_an_expired_token() -> None:
    verifier = await make_verifier()
    expired = token(exp=NOW - 3600)
    result = await verifier.verify(expired, check_lifetime=False)
    assert isinstance(result, VerifiedToken)
    denial = verifier.lifetime_denial("corp", result.claims)
    assert denial is not None and denial.reason == "expired"


# -- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize("segment", [0, 1, 2])
async def test_a_padded_base64url_segment_makes_the_token_malformed(segment: int) -> None:
    assert await reason_of(with_padding(token(), segment)) == "malformed_token"


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
async def test_trailing_whitespace_after_the_signature_makes_the_token_malformed(
    suffix: str,
) -> None:
    assert await reason_of(token() + suffix) == "malformed_token"


async def test_a_standard_base64_segment_is_malformed() -> None:
    header, payload, signature = token().split(".")
    standard = signature.replace("-", "+").replace("_", "/") + "+/"
    assert await reason_of(f"{header}.{payload}.{standard}") == "malformed_token"


async def test_a_flattened_jws_json_serialisation_is_malformed() -> None:
    header, payload, signature = token().split(".")
    flattened = json.dumps({"protected": header, "payload": payload, "signature": signature})
    assert await reason_of(flattened) == "malformed_token"
    assert await reason_of(b64url(flattened)) == "malformed_token"


async def test_a_general_jws_json_serialisation_is_malformed() -> None:
    header, payload, signature = token().split(".")
    general = {"payload": payload, "signatures": [{"protected": header, "signature": signature}]}
    assert await reason_of(json.dumps(general)) == "malformed_token"


async def test_a_five_segment_jwe_is_malformed() -> None:
    header = b64json({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": A.rsa.kid})
    jwe = ".".join([header, b64url(b"k" * 256), b64url(b"iv" * 6), b64url(b"c" * 40), "tag"])
    assert not is_compact_jws(jwe)
    assert await reason_of(jwe) == "malformed_token"


@pytest.mark.parametrize("candidate", ["", ".", "..", "a.b", "a.b.c.d", "a..c", ".b.c"])
async def test_a_token_of_the_wrong_shape_is_malformed(candidate: str) -> None:
    assert await reason_of(candidate) == "malformed_token"


async def test_a_header_with_a_duplicate_alg_member_is_malformed() -> None:
    header = b'{"alg":"RS256","typ":"at+jwt","kid":"%s","alg":"none"}' % A.rsa.kid.encode()
    assert await reason_of(sign(header, claims(), A.rsa, "RS256")) == "malformed_token"


async def test_a_payload_with_a_duplicate_sub_member_is_malformed() -> None:
    payload = json.dumps(claims()).removesuffix("}") + ', "sub": "admin"}'
    header = {"alg": "RS256", "typ": "at+jwt", "kid": A.rsa.kid}
    assert await reason_of(sign(header, payload.encode(), A.rsa, "RS256")) == "malformed_token"


@pytest.mark.parametrize(
    "encoded",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # a UTF-8 byte order mark first
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-32-le"),
    ],
    ids=["utf-8 with a BOM", "utf-16", "utf-32"],
)
async def test_a_payload_not_in_plain_utf_8_is_malformed(encoded: Any) -> None:
    # RFC 7519 §7.2: the claims are UTF-8. Other parsers may skip a BOM or guess the encoding;
    # the gateway reads every payload one way only.
    header = {"alg": "RS256", "typ": "at+jwt", "kid": A.rsa.kid}
    payload = encoded(json.dumps(claims()))
    assert await reason_of(sign(header, payload, A.rsa, "RS256")) == "malformed_token"


@pytest.mark.parametrize("segment", [0, 1])
async def test_a_deeply_nested_json_segment_is_malformed_not_a_crash(segment: int) -> None:
    # About 6 KB of `[` still fits under max_token_bytes and exhausts the JSON parser's stack.
    parts = token().split(".")
    parts[segment] = b64url(b'{"x":' + b"[" * 5000)
    assert await reason_of(".".join(parts)) == "malformed_token"


@pytest.mark.parametrize("header", [[], "RS256", 1, None], ids=repr)
async def test_a_header_that_is_not_a_json_object_is_malformed(header: Any) -> None:
    forged = f"{b64json(header)}.{b64json(claims())}.{b64url(b'sig')}"
    assert await reason_of(forged) == "malformed_token"


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": NOW},
        {"crit": ["urn:example:unknown"]},
        {"crit": []},
        {"crit": "b64"},
        {"b64": False, "crit": ["b64"]},
        {"b64": False},
        {"enc": "A256GCM"},
        {"zip": "DEF"},
    ],
    ids=repr,
)
async def test_a_header_asking_for_an_unsupported_extension_is_malformed(
    extra: dict[str, Any],
) -> None:
    assert await reason_of(token(header=extra)) == "malformed_token"


@pytest.mark.parametrize("kid", [7, ["a-rsa"], {"kid": "a-rsa"}], ids=repr)
async def test_a_kid_that_is_not_a_string_is_malformed(kid: Any) -> None:
    assert await reason_of(token(header={"kid": kid})) == "malformed_token"


async def test_no_denial_description_repeats_the_token_or_what_was_expected() -> None:
    candidates = [
        token(kid="secret-kid-123"),
        token(iss="https://elsewhere.test"),
        token(exp=NOW - 3600),
        token(typ="JWT"),
        token(issuer=ATTACKER),
        hmac_token(A.rsa.as_pem(private=False)),
    ]
    secrets = [ISSUER, AUDIENCE, A.rsa.kid, "secret-kid-123", "at+jwt", "elsewhere"]
    for candidate in candidates:
        result = await verify(candidate)
        assert isinstance(result, Denial)
        assert candidate not in result.description
        assert not any(secret in result.description for secret in secrets), result


# -- nothing crashes the verifier -------------------------------------------------------------

_shared: list[JwtVerifier] = []


def shared_verifier() -> JwtVerifier:
    if not _shared:
        _shared.append(asyncio.run(make_verifier()))
    return _shared[0]


def run_verify(candidate: str) -> VerifiedToken | Denial:
    return asyncio.run(shared_verifier().verify(candidate))


SEGMENT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_string_is_refused_without_raising(candidate: str) -> None:
    assert isinstance(run_verify(candidate), Denial)


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=40)
    .flatmap(lambda body: st.integers(0, 3).map(lambda pad: body + "=" * pad))
    .filter(is_b64token)
)
def test_a_b64token_is_taken_for_a_jwt_exactly_when_it_has_the_compact_jws_shape(
    candidate: str,
) -> None:
    assert b64token_is_compact_jws(candidate) == is_compact_jws(candidate)


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=6).map(".".join))
def test_any_dotted_base64url_string_is_refused_without_raising(candidate: str) -> None:
    assert isinstance(run_verify(candidate), Denial)


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "jwk", "b64", "x5c", "cty"]), JSON
    )
    | st.fixed_dictionaries(
        {"alg": st.sampled_from([*ALL_ALGORITHMS, "none", "HS256", "ES512"])},
        optional={"kid": st.sampled_from([A.rsa.kid, A.ec.kid, "nope"]) | JSON},
    ),
    payload=st.dictionaries(
        st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "scope", "scp"]), JSON
    ).map(lambda c: {**c, "iss": ISSUER}),
    signature=st.binary(max_size=600),
)
def test_any_json_header_and_payload_with_a_random_signature_is_refused_without_raising(
    header: dict[str, Any], payload: dict[str, Any], signature: bytes
) -> None:
    candidate = f"{b64json(header)}.{b64json(payload)}.{b64url(signature)}"
    assert isinstance(run_verify(candidate), Denial)


GOOD = {alg: token(alg, exp=NOW + 10**6) for alg in ("RS256", "PS256", "ES256", "EdDSA")}

# What a header value as aiohttp decodes it can hold: any character but a surrogate, and the
# surrogates U+DC80-U+DCFF that stand for bytes that are not UTF-8 (surrogateescape).
HEADER_CHARACTERS = st.characters(exclude_categories=("Cs",)) | st.integers(0xDC80, 0xDCFF).map(chr)


@settings(max_examples=300, deadline=None)
@given(
    alg=st.sampled_from(sorted(GOOD)),
    stray=HEADER_CHARACTERS.filter(lambda c: c not in string.ascii_letters + string.digits + "-_."),
    where=st.floats(0, 1),
)
def test_a_good_token_with_any_character_outside_base64url_put_in_is_malformed(
    alg: str, stray: str, where: float
) -> None:
    # Base64 decoding that skips what it does not know would read the same bytes: the
    # character must be refused, wherever it is.
    good = GOOD[alg]
    at = round(where * len(good))
    result = run_verify(good[:at] + stray + good[at:])
    assert isinstance(result, Denial) and result.reason == "malformed_token"


@settings(max_examples=200, deadline=None)
@given(alg=st.sampled_from(sorted(GOOD)), signature=st.binary(min_size=1, max_size=600))
def test_a_good_token_with_any_other_signature_is_an_invalid_signature(
    alg: str, signature: bytes
) -> None:
    header, payload, original = GOOD[alg].split(".")
    if b64url(signature) == original:
        return
    result = run_verify(f"{header}.{payload}.{b64url(signature)}")
    assert isinstance(result, Denial) and result.reason == "invalid_signature"


@settings(max_examples=200, deadline=None)
@given(
    alg=st.sampled_from(sorted(GOOD)),
    signature=st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=700),
)
def test_a_good_token_with_any_base64url_text_as_signature_is_an_invalid_signature(
    alg: str, signature: str
) -> None:
    # Any length, 4n+1 included, which no bytes encode to.
    header, payload, original = GOOD[alg].split(".")
    if signature == original:
        return
    result = run_verify(f"{header}.{payload}.{signature}")
    assert isinstance(result, Denial) and result.reason == "invalid_signature"


async def test_a_token_whose_kid_is_shared_by_keys_of_two_types_is_checked_with_the_right_one() -> (
    None
):
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import ECKey, RSAKey

    from gateway.observe.metrics import Metrics
    from gateway.pipeline.decision import VerifiedToken
    from gateway.pipeline.verify.jwks import KeyStore
    from gateway.pipeline.verify.jwt import JwtVerifier, issuer_keys

    rsa = RSAKey.generate_key(2048, parameters={"kid": "shared"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "shared"})
    document = {"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]}

    async def load() -> object:
        return document

    store = KeyStore("corp", load, min_refetch_interval=30, metrics=Metrics())
    await store.refresh()
    keys = issuer_keys("corp", "https://shared.test", ["RS256", "ES256"], 0, None, "scope", store)
    verifier = JwtVerifier({"corp": keys})
    claims = {"iss": "https://shared.test", "sub": "a", "exp": 4102444800}
    token = jose_jwt.encode({"alg": "ES256", "kid": "shared"}, claims, ec)
    assert isinstance(await verifier.verify(token), VerifiedToken)


async def test_a_header_member_of_the_wrong_type_is_refused_every_time_it_is_sent() -> None:
    # joserfc's registry check of the header is remembered per header: a refusal too. The same
    # header on a second token is refused again, and a good header still passes beside it.
    verifier = await make_verifier()
    bad = [token(header={"x5u": 5}, jti=str(n)) for n in range(2)]
    for candidate in bad:
        result = await verifier.verify(candidate)
        assert isinstance(result, Denial) and result.reason == "invalid_signature"
    assert isinstance(await verifier.verify(token()), VerifiedToken)


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=80))
def test_segments_decode_as_the_standard_library_decodes_them(segment: str) -> None:
    try:
        expected: bytes | type[Exception] = base64.urlsafe_b64decode(
            segment + "=" * (-len(segment) % 4)
        )
    except binascii.Error:
        expected = binascii.Error
    try:
        decoded: bytes | type[Exception] = _b64decode(segment)
    except binascii.Error:
        decoded = binascii.Error
    assert decoded == expected
