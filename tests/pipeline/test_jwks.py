"""An issuer's signing keys: which JWKs are usable, and when the key set is fetched again."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.verify.fetch import FetchError
from gateway.pipeline.verify.jwks import KeyImporter, KeySet, KeyStore, file_loader
from gateway.pipeline.verify.jwt import JwtVerifier, issuer_keys
from tests.support import ISSUER, TokenIssuer

KEYS = TokenIssuer(ISSUER, prefix="j")
RSA = KEYS.rsa.as_dict(private=False)
EC = KEYS.ec.as_dict(private=False)
ED = KEYS.ed.as_dict(private=False)
# A second RSA key, published later (rotation).
NEXT = RSAKey.generate_key(2048, parameters={"kid": "j-next"})


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryJwks:
    """A JWKS loader serving a document from memory, counting calls; optionally gated."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise FetchError("the identity provider is down")
        return self.document


def usable(*jwks: Any) -> KeySet:
    keys, _ = KeyImporter().key_set({"keys": list(jwks)})
    return keys


def fetches(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_jwks_fetches_total", {"issuer": "corp", "result": result}
    )
    return value or 0.0


def store_for(
    loader: MemoryJwks, *, interval: float = 30.0, clock: Monotonic | None = None
) -> tuple[KeyStore, Metrics]:
    metrics = Metrics()
    store = KeyStore(
        "corp",
        loader,
        min_refetch_interval=interval,
        metrics=metrics,
        monotonic=clock or Monotonic(),
    )
    return store, metrics


# -- the importer -----------------------------------------------------------------------------


def test_a_jwk_without_use_is_usable() -> None:
    assert "use" not in EC
    assert [k.kid for k in usable(EC).keys] == ["j-ec"]


def test_a_jwk_for_signatures_is_usable() -> None:
    assert [k.kid for k in usable({**EC, "use": "sig"}).keys] == ["j-ec"]


def test_a_jwk_for_encryption_is_never_used_to_verify_signatures() -> None:
    keys = usable({**RSA, "use": "enc"}, ED)
    assert [k.kid for k in keys.keys] == ["j-ed"]
    assert "j-rsa" not in keys.by_kid


@pytest.mark.parametrize(
    "oct_jwk",
    [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "use": "sig", "alg": "HS256"},
    ],
)
def test_a_symmetric_key_in_a_jwks_is_never_usable(oct_jwk: dict[str, Any]) -> None:
    keys = usable(oct_jwk, RSA)
    assert [k.kty for k in keys.keys] == ["RSA"]
    assert keys.candidates("HS256") == []


@pytest.mark.parametrize(
    "broken",
    [
        {"kty": "RSA"},
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        {**RSA, "n": 5},
        {**EC, "x": "AAAA"},
        {**EC, "crv": "P-999"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
        {**EC, "kid": 7},
        {**EC, "alg": ["ES256"]},
        "not an object",
        None,
        [],
    ],
    ids=repr,
)
def test_a_malformed_key_is_skipped_without_spoiling_the_others(broken: Any) -> None:
    keys, skipped = KeyImporter().key_set({"keys": [broken, RSA, EC]})
    assert [k.kid for k in keys.keys] == ["j-rsa", "j-ec"]
    assert len(skipped) == 1 and skipped[0].startswith("key 0:")


@pytest.mark.parametrize("document", [[], {}, {"keys": {}}, {"keys": "x"}, "keys", None])
def test_a_document_that_is_not_a_jwks_is_a_fetch_error(document: Any) -> None:
    with pytest.raises(FetchError):
        KeyImporter().key_set(document)


def test_private_key_material_published_by_mistake_is_dropped_on_import() -> None:
    keys = usable(KEYS.rsa.as_dict(private=True))
    assert not keys.keys[0].key.is_private


def test_keys_are_found_by_kid_and_keys_without_kid_only_by_type() -> None:
    anonymous = {k: v for k, v in EC.items() if k != "kid"}
    keys = usable(RSA, anonymous)
    assert set(keys.by_kid) == {"j-rsa"}
    assert [k.kty for k in keys.candidates("ES256")] == ["EC"]
    assert [k.kty for k in keys.candidates("PS256")] == ["RSA"]


def test_the_jwk_alg_binds_the_key_to_that_one_algorithm() -> None:
    (pinned,) = usable({**RSA, "alg": "RS256"}).keys
    assert pinned.can_verify("RS256")
    assert not pinned.can_verify("PS256")
    assert not pinned.can_verify("RS512")


@pytest.mark.parametrize(
    ("jwk", "allowed", "refused"),
    [
        (RSA, {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, {"ES256", "EdDSA", "HS256"}),
        (EC, {"ES256"}, {"ES384", "ES512", "RS256", "EdDSA", "HS256"}),
        (ED, {"EdDSA"}, {"ES256", "RS256", "HS256", "none"}),
    ],
    ids=["rsa", "ec-p256", "ed25519"],
)
def test_a_key_verifies_only_the_algorithms_of_its_type_and_curve(
    jwk: dict[str, Any], allowed: set[str], refused: set[str]
) -> None:
    (key,) = usable(jwk).keys
    assert all(key.can_verify(alg) for alg in allowed)
    assert not any(key.can_verify(alg) for alg in refused)


def test_an_ec_p384_key_does_not_verify_es256() -> None:
    p384 = ECKey.generate_key("P-384", parameters={"kid": "p384"}).as_dict(private=False)
    (key,) = usable(p384).keys
    assert key.can_verify("ES384") and not key.can_verify("ES256")


def test_an_x25519_key_never_verifies_eddsa() -> None:
    x25519 = OKPKey.generate_key("X25519", parameters={"kid": "x"}).as_dict(private=False)
    assert usable(x25519).candidates("EdDSA") == []


def test_the_same_jwk_is_not_imported_again_when_the_jwks_is_fetched_again() -> None:
    importer = KeyImporter()
    first, _ = importer.key_set({"keys": [RSA, EC]})
    second, _ = importer.key_set({"keys": [EC, RSA, NEXT.as_dict(private=False)]})
    assert second.by_kid["j-rsa"] is first.by_kid["j-rsa"]
    assert second.by_kid["j-ec"] is first.by_kid["j-ec"]
    assert "j-next" in second.by_kid


def test_a_changed_jwk_under_the_same_kid_is_imported_afresh() -> None:
    importer = KeyImporter()
    first, _ = importer.key_set({"keys": [RSA]})
    replaced = {**NEXT.as_dict(private=False), "kid": "j-rsa"}
    second, _ = importer.key_set({"keys": [replaced]})
    assert second.by_kid["j-rsa"] is not first.by_kid["j-rsa"]
    assert second.by_kid["j-rsa"].key.as_dict()["n"] == replaced["n"]


# -- the key store ----------------------------------------------------------------------------


async def test_a_store_is_not_loaded_until_a_fetch_succeeds() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True
    store, metrics = store_for(loader)
    await store.refresh()
    assert not store.loaded and store.keys.keys == ()
    assert fetches(metrics, "error") == 1
    loader.failing = False
    await store.refresh()
    assert store.loaded and set(store.keys.by_kid) == {"j-rsa"}
    assert fetches(metrics, "ok") == 1
    gauge = metrics.registry.get_sample_value("gateway_jwks_keys", {"issuer": "corp"})
    assert gauge == 1


async def test_a_failed_fetch_keeps_the_last_good_keys() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_for(loader)
    await store.refresh()
    loader.failing = True
    await store.refresh()
    assert set(store.keys.by_kid) == {"j-rsa"}


async def test_a_document_that_is_not_a_jwks_keeps_the_last_good_keys() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    store, metrics = store_for(loader)
    await store.refresh()
    loader.document = {"not": "a jwks"}
    await store.refresh()
    assert set(store.keys.by_kid) == {"j-rsa"}
    assert fetches(metrics, "error") == 1


async def test_an_unknown_kid_fetches_again_at_most_once_per_min_refetch_interval() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_for(loader, interval=30, clock=clock)
    await store.refresh()
    assert loader.calls == 1
    clock.now += 10
    await store.refresh_for_unknown_kid()
    assert loader.calls == 1  # the start-up load was 10 s ago
    clock.now += 21
    await store.refresh_for_unknown_kid()
    await store.refresh_for_unknown_kid()
    assert loader.calls == 2
    clock.now += 29.9
    await store.refresh_for_unknown_kid()
    assert loader.calls == 2
    clock.now += 0.2
    await store.refresh_for_unknown_kid()
    assert loader.calls == 3


async def test_a_failed_fetch_also_counts_against_the_refetch_interval() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True
    store, _ = store_for(loader, interval=30, clock=clock)
    await store.refresh()
    await store.refresh_for_unknown_kid()
    assert loader.calls == 1


async def test_a_rotated_key_is_found_by_the_refetch_an_unknown_kid_triggers() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_for(loader, clock=clock)
    await store.refresh()
    loader.document = {"keys": [RSA, NEXT.as_dict(private=False)]}
    clock.now += 60
    await store.refresh_for_unknown_kid()
    assert "j-next" in store.keys.by_kid


def verifier_for(store: KeyStore) -> JwtVerifier:
    keys = issuer_keys("corp", ISSUER, ["RS256", "ES256"], 30.0, None, "scope", store)
    return JwtVerifier({"corp": keys})


async def test_concurrent_tokens_with_unknown_kids_share_one_fetch() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_for(loader, clock=clock)
    await store.refresh()
    clock.now += 60
    loader.gate = asyncio.Event()
    verifier = verifier_for(store)
    forged = [KEYS.token(kid=f"unknown-{n}", typ=None) for n in range(20)]
    pending = [asyncio.ensure_future(verifier.verify(t)) for t in forged]
    await asyncio.sleep(0.01)
    assert loader.calls == 2  # the start-up load, then one shared refetch
    assert not any(task.done() for task in pending)
    # A token with a known kid is not held up by the fetch in flight.
    known = await asyncio.wait_for(verifier.verify(KEYS.token(typ=None)), timeout=1)
    assert isinstance(known, VerifiedToken)
    loader.gate.set()
    results = await asyncio.gather(*pending)
    assert loader.calls == 2
    assert {r.reason for r in results if isinstance(r, Denial)} == {"unknown_key"}
    assert len(results) == 20


async def test_a_waiter_giving_up_does_not_cancel_the_shared_fetch() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_for(loader, clock=clock)
    await store.refresh()
    clock.now += 60
    loader.gate = asyncio.Event()
    loader.document = {"keys": [RSA, NEXT.as_dict(private=False)]}
    impatient = asyncio.ensure_future(store.refresh_for_unknown_kid())
    patient = asyncio.ensure_future(store.refresh_for_unknown_kid())
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0)
    loader.gate.set()
    await patient
    assert "j-next" in store.keys.by_kid
    assert loader.calls == 2


async def test_unknown_kids_while_the_provider_is_down_cost_one_fetch_per_interval() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True
    store, _ = store_for(loader, clock=clock)
    await store.refresh()
    verifier = verifier_for(store)
    for _ in range(50):
        result = await verifier.verify(KEYS.token(kid="forged", typ=None))
        assert isinstance(result, Denial) and result.reason == "unavailable"
    assert loader.calls == 1


# -- static key files -------------------------------------------------------------------------


async def test_a_jwks_file_is_read_as_json(tmp_path: Path) -> None:
    path = KEYS.write_jwks(tmp_path / "keys.json")
    document = await file_loader(path)()
    assert {k["kid"] for k in document["keys"]} == {"j-rsa", "j-ec", "j-ed"}


async def test_a_missing_jwks_file_is_a_fetch_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError):
        await file_loader(tmp_path / "absent.json")()


async def test_a_jwks_file_that_is_not_json_is_a_fetch_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("keys: [")
    with pytest.raises(FetchError):
        await file_loader(path)()


async def test_a_jwks_file_over_one_mebibyte_is_a_fetch_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [RSA], "padding": "x" * (1024 * 1024)}))
    with pytest.raises(FetchError):
        await file_loader(path)()


def test_keys_of_different_types_under_one_kid_are_all_kept() -> None:
    from joserfc.jwk import ECKey, RSAKey

    from gateway.pipeline.verify.jwks import KeyImporter

    rsa = RSAKey.generate_key(2048, parameters={"kid": "shared"}).as_dict(private=False)
    ec = ECKey.generate_key("P-256", parameters={"kid": "shared"}).as_dict(private=False)
    keys, skipped = KeyImporter().key_set({"keys": [rsa, ec]})
    assert skipped == []
    assert [k.kty for k in keys.all_by_kid["shared"]] == ["RSA", "EC"]
