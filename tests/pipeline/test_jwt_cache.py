"""The verified-token cache: a repeated token skips its signature check, and nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.digest import token_digest
from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.verify.expiring import SLOT_SECONDS, ExpiringLru
from gateway.pipeline.verify.jwks import KeySet, KeyStore, SigningKey
from gateway.pipeline.verify.jwt import (
    JwtVerifier,
    _Verified,
    issuer_keys,
    signature_ok,
)
from gateway.pipeline.verify.tokens import jwt_cache_key
from tests.pipeline.test_jwt import (
    ALL_ALGORITHMS,
    HEADER_CHARACTERS,
    NOW,
    A,
    B,
    Clock,
    MemoryJwks,
    token,
)


class Counted:
    """A verifier over issuers A (``corp``) and B (``partner``) whose signature checks are
    counted, with a clock that stands still and a JWKS for A that a test can change."""

    def __init__(self, corp_jwks: MemoryJwks, stores: dict[str, KeyStore], clock: Clock) -> None:
        self.metrics = Metrics()
        self.clock = clock
        self.corp_jwks = corp_jwks
        self.stores = stores
        issuers = {
            name: issuer_keys(name, issuer, ALL_ALGORITHMS, 30.0, "at+jwt", "scope", store)
            for (name, issuer), store in zip(
                (("corp", A.issuer), ("partner", B.issuer)), stores.values(), strict=True
            )
        }
        self.signature_checks = 0

        def counting(*args: Any) -> bool:
            self.signature_checks += 1
            return signature_ok(*args)

        self.verifier = JwtVerifier(issuers, clock, metrics=self.metrics, signature_check=counting)

    def hits(self) -> float:
        labels = {"cache": "jwt", "result": "hit"}
        return self.metrics.registry.get_sample_value("gateway_token_cache_total", labels) or 0


async def counted() -> Counted:
    clock = Clock()
    corp_jwks = MemoryJwks(A.jwks)
    stores = {}
    for name, loader in (("corp", corp_jwks), ("partner", MemoryJwks(B.jwks))):
        store = KeyStore(name, loader, min_refetch_interval=0, metrics=Metrics())
        await store.refresh()
        stores[name] = store
    return Counted(corp_jwks, stores, clock)


async def test_a_repeated_token_is_verified_once_and_then_found_in_the_cache() -> None:
    subject = await counted()
    good = token()
    for _ in range(3):
        assert isinstance(await subject.verifier.verify(good), VerifiedToken)
    assert subject.signature_checks == 1
    assert subject.hits() == 2


async def test_a_cached_token_still_expires() -> None:
    subject = await counted()
    good = token(exp=NOW + 60)
    assert isinstance(await subject.verifier.verify(good), VerifiedToken)
    subject.clock.now = NOW + 60 + 31  # past exp and the 30 s leeway
    result = await subject.verifier.verify(good)
    assert isinstance(result, Denial) and result.reason == "expired"


async def test_a_cached_token_not_valid_yet_is_refused_until_its_nbf_less_the_leeway() -> None:
    subject = await counted()
    early = token(nbf=NOW + 100)  # leeway 30 s: good from NOW + 70
    for _ in range(2):
        result = await subject.verifier.verify(early)
        assert isinstance(result, Denial) and result.reason == "not_yet_valid"
    subject.clock.now = NOW + 70
    assert isinstance(await subject.verifier.verify(early), VerifiedToken)
    assert subject.signature_checks == 1


async def test_a_cached_token_issued_in_the_future_is_refused_until_then() -> None:
    subject = await counted()
    future = token(iat=NOW + 100)
    for _ in range(2):
        result = await subject.verifier.verify(future)
        assert isinstance(result, Denial) and result.reason == "not_yet_valid"
    subject.clock.now = NOW + 70
    assert isinstance(await subject.verifier.verify(future), VerifiedToken)


async def test_a_token_without_exp_is_refused_every_time_the_cache_sees_it() -> None:
    subject = await counted()
    endless = token(exp=None)
    for _ in range(3):
        result = await subject.verifier.verify(endless)
        assert isinstance(result, Denial) and result.reason == "malformed_token"


async def test_a_cached_token_of_another_issuer_is_still_refused_where_that_issuer_is_not() -> None:
    subject = await counted()
    good = token()
    assert isinstance(await subject.verifier.verify(good, ["corp"]), VerifiedToken)
    result = await subject.verifier.verify(good, ["partner"])
    assert isinstance(result, Denial) and result.reason == "wrong_issuer"


async def test_a_cached_token_stops_working_once_its_key_is_withdrawn_from_the_jwks() -> None:
    subject = await counted()
    good = token()
    assert isinstance(await subject.verifier.verify(good), VerifiedToken)
    others = [k for k in A.jwks["keys"] if k["kid"] != A.rsa.kid]
    subject.corp_jwks.document = {"keys": others}
    await subject.stores["corp"].refresh()
    result = await subject.verifier.verify(good)
    assert isinstance(result, Denial) and result.reason == "unknown_key"


async def test_a_new_token_of_a_withdrawn_key_is_refused_though_its_header_was_seen_before() -> (
    None
):
    # What a token header allows (its keys, their algorithms) is remembered for the key set
    # it was worked out from, never for the next one.
    subject = await counted()
    assert isinstance(await subject.verifier.verify(token()), VerifiedToken)
    others = [k for k in A.jwks["keys"] if k["kid"] != A.rsa.kid]
    subject.corp_jwks.document = {"keys": others}
    await subject.stores["corp"].refresh()
    result = await subject.verifier.verify(token())  # the same header, a token not seen before
    assert isinstance(result, Denial) and result.reason == "unknown_key"


async def test_a_header_refused_for_an_unknown_kid_passes_once_the_issuer_publishes_the_key() -> (
    None
):
    # An unknown kid is never remembered as such: the next token asks the issuer again.
    subject = await counted()
    subject.corp_jwks.document = {"keys": [k for k in A.jwks["keys"] if k["kid"] != A.rsa.kid]}
    await subject.stores["corp"].refresh()
    refused = await subject.verifier.verify(token())
    assert isinstance(refused, Denial) and refused.reason == "unknown_key"
    subject.corp_jwks.document = A.jwks
    assert isinstance(await subject.verifier.verify(token()), VerifiedToken)


async def test_what_a_header_allows_is_judged_for_each_issuer_that_shares_its_iss() -> None:
    # Two configured issuers with one `iss` and one JWKS: `typ: JWT` passes where no type is
    # required, and must still fail where `at+jwt` is, for a token of the same header.
    store = KeyStore("corp", MemoryJwks(A.jwks), min_refetch_interval=0, metrics=Metrics())
    await store.refresh()
    verifier = JwtVerifier(
        {
            name: issuer_keys(name, A.issuer, ALL_ALGORITHMS, 30.0, typ, "scope", store)
            for name, typ in (("lax", None), ("strict", "at+jwt"))
        },
        Clock(),
    )
    assert isinstance(await verifier.verify(token(typ="JWT", jti="1"), ["lax"]), VerifiedToken)
    refused = await verifier.verify(token(typ="JWT", jti="2"), ["strict"])
    assert isinstance(refused, Denial) and refused.reason == "wrong_type"


async def test_a_refresh_returning_the_same_keys_keeps_cached_tokens() -> None:
    subject = await counted()
    good = token()
    await subject.verifier.verify(good)
    await subject.stores["corp"].refresh()
    assert isinstance(await subject.verifier.verify(good), VerifiedToken)
    assert subject.signature_checks == 1


async def test_a_bad_signature_is_never_cached() -> None:
    subject = await counted()
    header, payload, _ = token().split(".")
    forged = f"{header}.{payload}.{token().split('.')[2][::-1]}"
    for _ in range(2):
        result = await subject.verifier.verify(forged)
        assert isinstance(result, Denial)
    assert subject.signature_checks == 2
    assert subject.hits() == 0


async def test_a_cached_token_leaves_the_cache_once_it_expires() -> None:
    # Expired entries would otherwise sit in memory until evicted by newer ones.
    subject = await counted()
    good = token(exp=NOW + 60)
    await subject.verifier.verify(good)
    assert subject.verifier.cached(token_digest(good), check_lifetime=False) is not None
    subject.clock.now = NOW + 60 + 31  # past exp and the 30 s leeway
    assert subject.verifier.cached(token_digest(good), check_lifetime=False) is None


async def test_a_cached_token_is_still_refused_on_a_route_that_does_not_accept_its_issuer() -> None:
    subject = await counted()
    good = token()
    await subject.verifier.verify(good, ["corp"])
    assert isinstance(subject.verifier.cached(token_digest(good), ["corp"]), VerifiedToken)
    assert subject.verifier.cached(token_digest(good), ["partner"]) is None


async def test_a_token_verified_again_after_a_key_rotation_keeps_one_signature_check() -> None:
    # A refresh that publishes a new key set (same key, one more beside it) costs no
    # signature check for tokens of the key still there.
    subject = await counted()
    good = token()
    await subject.verifier.verify(good)
    subject.corp_jwks.document = {"keys": [*A.jwks["keys"], *B.jwks["keys"]]}
    await subject.stores["corp"].refresh()
    for _ in range(2):
        assert isinstance(await subject.verifier.verify(good), VerifiedToken)
    assert subject.signature_checks == 1


def verified_entry(expires: float) -> _Verified:
    token = VerifiedToken(issuer="corp", claims={}, scopes=frozenset())
    key = SigningKey(kid=None, kty="EC", crv="P-256", alg=None, key=A.ec)
    return _Verified(token, key, KeySet(), expires, NOW)


def test_expired_entries_leave_memory_even_if_never_looked_up_again() -> None:
    clock = Clock()
    cache: ExpiringLru[bytes, _Verified] = ExpiringLru(100_000, clock)
    for n in range(10):
        cache.put(b"short-%d" % n, verified_entry(NOW + 1), NOW + 1)
    clock.now = NOW + 1 + SLOT_SECONDS
    for n in range(10):
        cache.put(b"long-%d" % n, verified_entry(NOW + 3600), NOW + 3600)
    assert len(cache) == 10


def test_the_least_recently_used_entry_goes_first_when_the_cache_is_full() -> None:
    cache: ExpiringLru[bytes, _Verified] = ExpiringLru(2, Clock())
    entry = verified_entry(NOW + 3600)
    cache.put(b"a", entry, entry.expires)
    cache.put(b"b", entry, entry.expires)
    assert cache.get(b"a") is entry  # "b" is now the least recently used
    cache.put(b"c", entry, entry.expires)
    assert cache.get(b"b") is None
    assert cache.get(b"a") is entry and cache.get(b"c") is entry


@given(st.text(HEADER_CHARACTERS, max_size=200))
def test_the_request_path_looks_a_token_up_by_the_digest_the_cache_stores_it_by(text: str) -> None:
    # The request path looks a JWT up by jwt_cache_key; the cache stores it by token_digest.
    key = jwt_cache_key(text)
    if "." in text:
        assert key == token_digest(text)
    else:
        assert key is None
