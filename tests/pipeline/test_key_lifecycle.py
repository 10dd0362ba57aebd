"""An issuer's keys over time: background refresh with jitter, retries after a failure, ageing
out after ``max_stale``, and imports kept across refreshes. Timing-free: the store's clock, sleep
and jitter are injected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gateway.observe.metrics import Metrics
from gateway.pipeline.decision import Denial, VerifiedToken
from gateway.pipeline.verify.jwks import KeyImporter, KeySet, KeyStore
from gateway.pipeline.verify.jwt import JwtVerifier, issuer_keys
from tests.pipeline.test_jwks import EC, KEYS, NEXT, RSA, MemoryJwks, Monotonic, fetches
from tests.support import ISSUER

INTERVAL = 900.0  # refresh_interval: 15m
REFETCH = 30.0  # min_refetch_interval
MAX_STALE = 3600.0


class LoopStopped(Exception):
    """Raised by the fake sleep to end a background loop after a number of rounds."""


class FakeSleep:
    """Records each delay the refresh loop asks for, returns at once (after calling ``then``
    with the number of sleeps so far), and stops the loop after ``rounds`` sleeps."""

    def __init__(self, rounds: int, then: Callable[[int], None] | None = None) -> None:
        self.rounds = rounds
        self.then = then
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        if len(self.delays) == self.rounds:
            raise LoopStopped
        self.delays.append(delay)
        if self.then is not None:
            self.then(len(self.delays))
        await asyncio.sleep(0)


def store_with(
    loader: Any,
    *,
    clock: Monotonic | None = None,
    sleep: Any = asyncio.sleep,
    jitter: float | None = 1.0,
    refresh_interval: float | None = INTERVAL,
    max_stale: float | None = MAX_STALE,
    min_refetch_interval: float = REFETCH,
) -> tuple[KeyStore, Metrics]:
    metrics = Metrics()
    extra: dict[str, Any] = {} if jitter is None else {"jitter": lambda: jitter}
    store = KeyStore(
        "corp",
        loader,
        min_refetch_interval=min_refetch_interval,
        metrics=metrics,
        refresh_interval=refresh_interval,
        max_stale=max_stale,
        monotonic=clock or Monotonic(),
        sleep=sleep,
        **extra,
    )
    return store, metrics


def verifier_for(store: Any) -> JwtVerifier:
    keys = issuer_keys("corp", ISSUER, ["RS256", "ES256"], 30.0, None, "scope", store)
    return JwtVerifier({"corp": keys})


# -- when the next background refresh is due ----------------------------------------------------


@pytest.mark.parametrize(("jitter", "expected"), [(0.9, 810.0), (1.0, 900.0), (1.1, 990.0)])
async def test_the_next_refresh_is_due_after_the_refresh_interval_times_the_jitter(
    jitter: float, expected: float
) -> None:
    store, _ = store_with(MemoryJwks({"keys": [RSA]}), jitter=jitter)
    await store.refresh()
    assert store.next_refresh_delay() == pytest.approx(expected)


async def test_the_default_jitter_spreads_refreshes_within_ten_percent_of_the_interval() -> None:
    store, _ = store_with(MemoryJwks({"keys": [RSA]}), jitter=None)
    await store.refresh()
    delays = [store.next_refresh_delay() for _ in range(2000)]
    assert all(0.9 * INTERVAL <= delay <= 1.1 * INTERVAL for delay in delays)
    # Spread over the whole band, so that replicas started together do not fetch in step.
    assert min(delays) < 0.92 * INTERVAL and max(delays) > 1.08 * INTERVAL


async def test_after_a_failed_fetch_the_next_refresh_comes_after_min_refetch_interval() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader)
    await store.refresh()
    loader.failing = True
    await store.refresh()
    assert store.next_refresh_delay() == REFETCH


async def test_a_retry_after_a_failure_waits_at_least_five_seconds() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True
    store, _ = store_with(loader, min_refetch_interval=0.0)
    await store.refresh()
    assert store.next_refresh_delay() == 5.0


async def test_a_store_that_never_loaded_retries_sooner_than_the_refresh_interval() -> None:
    store, _ = store_with(MemoryJwks({"keys": [RSA]}))
    assert not store.loaded
    assert store.next_refresh_delay() == REFETCH


async def test_a_good_fetch_after_a_failure_restores_the_full_refresh_interval() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True
    store, _ = store_with(loader)
    await store.refresh()
    loader.failing = False
    await store.refresh()
    assert store.next_refresh_delay() == INTERVAL


async def test_keys_are_refreshed_before_they_would_go_stale_when_max_stale_is_short() -> None:
    # An operator's max_stale (10m) below refresh_interval (15m) must not give every token a
    # 503 for the last 5 minutes of each interval while the provider is healthy.
    store, _ = store_with(MemoryJwks({"keys": [RSA]}), max_stale=600.0, jitter=1.1)
    await store.refresh()
    assert store.next_refresh_delay() < 600.0


# -- the background loop ------------------------------------------------------------------------


async def test_the_background_loop_fetches_once_per_refresh_interval() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    sleep = FakeSleep(rounds=5)
    store, metrics = store_with(loader, sleep=sleep)
    await store.refresh()
    with pytest.raises(LoopStopped):
        await store.run_refresh_loop()
    assert sleep.delays == [INTERVAL] * 5
    assert loader.calls == 1 + 5
    assert fetches(metrics, "ok") == 6


async def test_the_background_loop_retries_sooner_while_the_provider_is_down() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    sleep = FakeSleep(rounds=2)
    store, metrics = store_with(loader, sleep=sleep)
    await store.refresh()
    loader.failing = True
    with pytest.raises(LoopStopped):
        await store.run_refresh_loop()
    # The first round fetched and failed: the second waits min_refetch_interval, not 15m.
    assert sleep.delays == [INTERVAL, REFETCH]
    assert fetches(metrics, "error") == 2
    assert set(store.keys.by_kid) == {"j-rsa"}


async def test_the_background_loop_returns_to_the_full_interval_once_the_provider_is_back() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    loader.failing = True

    def provider_back_after_one_retry(sleeps: int) -> None:
        loader.failing = sleeps < 2

    sleep = FakeSleep(rounds=3, then=provider_back_after_one_retry)
    store, _ = store_with(loader, sleep=sleep)
    await store.refresh()
    with pytest.raises(LoopStopped):
        await store.run_refresh_loop()
    assert sleep.delays == [REFETCH, REFETCH, INTERVAL]
    assert store.loaded


async def test_the_background_loop_survives_a_loader_that_raises_something_unexpected() -> None:
    calls = 0

    async def erratic() -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("a bug provoked by a strange document")
        return {"keys": [RSA]}

    sleep = FakeSleep(rounds=3)
    store, metrics = store_with(erratic, sleep=sleep)
    await store.refresh()
    with pytest.raises(LoopStopped):
        await store.run_refresh_loop()
    assert calls == 4  # the loop went on after each failure
    assert fetches(metrics, "error") == 3
    assert set(store.keys.by_kid) == {"j-rsa"}


async def test_the_background_refresh_runs_on_its_own_until_the_store_is_closed() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    rounds = asyncio.Event()

    async def instant(delay: float) -> None:
        await asyncio.sleep(0)
        if loader.calls >= 4:
            rounds.set()

    store, _ = store_with(loader, sleep=instant)
    await store.refresh()
    store.start_background_refresh()
    await asyncio.wait_for(rounds.wait(), timeout=5)
    await store.close()
    calls = loader.calls
    for _ in range(10):
        await asyncio.sleep(0)
    assert calls >= 4
    assert loader.calls == calls


async def test_a_store_without_a_refresh_interval_never_refreshes_in_the_background() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, sleep=FakeSleep(rounds=0), refresh_interval=None)
    await store.refresh()
    store.start_background_refresh()
    for _ in range(10):
        await asyncio.sleep(0)
    await store.close()
    assert loader.calls == 1


async def test_a_token_with_a_known_kid_never_fetches_even_when_a_refresh_is_overdue() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA, EC]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    verifier = verifier_for(store)
    clock.now += 3 * INTERVAL  # three refreshes overdue, keys not yet stale
    for alg in ("RS256", "ES256") * 10:
        assert isinstance(await verifier.verify(KEYS.token(alg, typ=None)), VerifiedToken)
    assert loader.calls == 1


async def test_an_unknown_kid_during_a_background_refresh_joins_it_instead_of_fetching_again() -> (
    None
):
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock, sleep=FakeSleep(rounds=1))
    await store.refresh()
    clock.now += INTERVAL
    loader.gate = asyncio.Event()
    loader.document = {"keys": [RSA, NEXT.as_dict(private=False)]}
    background = asyncio.ensure_future(store.run_refresh_loop())
    await asyncio.sleep(0.01)
    assert loader.calls == 2  # the background refresh is in flight
    waiting = asyncio.ensure_future(store.refresh_for_unknown_kid())
    await asyncio.sleep(0.01)
    loader.gate.set()
    await waiting
    assert "j-next" in store.keys.by_kid
    assert loader.calls == 2
    with pytest.raises(LoopStopped):
        await background


# -- ageing out: max_stale ----------------------------------------------------------------------


async def test_the_last_good_keys_keep_verifying_while_the_provider_is_down_until_max_stale() -> (
    None
):
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    loader.failing = True
    verifier = verifier_for(store)
    for _ in range(4):
        clock.now += MAX_STALE / 4 - 1
        await store.refresh()
        assert isinstance(await verifier.verify(KEYS.token(typ=None)), VerifiedToken)
    assert not store.stale


async def test_past_max_stale_a_good_token_is_unavailable_with_retry_after_never_refused() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    loader.failing = True
    clock.now += MAX_STALE + 1
    await store.refresh()
    result = await verifier_for(store).verify(KEYS.token(typ=None))
    assert isinstance(result, Denial)
    assert result.reason == "unavailable"
    assert result.retry_after is not None and result.retry_after > 0


async def test_past_max_stale_a_new_token_whose_header_was_seen_before_is_unavailable() -> None:
    # What a token header allows is remembered with the key set; how old the keys are is
    # judged on every token all the same.
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    verifier = verifier_for(store)
    assert isinstance(await verifier.verify(KEYS.token(typ=None, jti="first")), VerifiedToken)
    loader.failing = True
    clock.now += MAX_STALE + 1
    await store.refresh()
    result = await verifier.verify(KEYS.token(typ=None, jti="second"))
    assert isinstance(result, Denial) and result.reason == "unavailable"


async def test_a_failed_fetch_does_not_restart_the_max_stale_clock() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    loader.failing = True
    clock.now += MAX_STALE
    await store.refresh()
    clock.now += 1
    assert store.stale


async def test_a_good_fetch_makes_stale_keys_usable_again() -> None:
    clock = Monotonic()
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader, clock=clock)
    await store.refresh()
    clock.now += MAX_STALE + 1
    assert store.stale
    await store.refresh()
    assert not store.stale
    assert isinstance(await verifier_for(store).verify(KEYS.token(typ=None)), VerifiedToken)


async def test_keys_without_max_stale_never_age_out() -> None:
    clock = Monotonic()
    store, _ = store_with(MemoryJwks({"keys": [RSA]}), clock=clock, max_stale=None)
    await store.refresh()
    clock.now += 10 * 365 * 86400
    assert not store.stale


# -- imports kept across refreshes --------------------------------------------------------------


async def test_a_refresh_returning_the_same_keys_keeps_the_same_imported_keys() -> None:
    loader = MemoryJwks({"keys": [RSA, EC]})
    store, _ = store_with(loader)
    await store.refresh()
    first = dict(store.keys.by_kid)
    loader.document = {"keys": [dict(reversed(list(EC.items()))), RSA]}
    await store.refresh()
    assert store.keys.by_kid["j-rsa"] is first["j-rsa"]
    assert store.keys.by_kid["j-ec"] is first["j-ec"]


async def test_a_fetch_with_no_usable_key_in_between_does_not_force_a_reimport() -> None:
    loader = MemoryJwks({"keys": [RSA]})
    store, _ = store_with(loader)
    await store.refresh()
    first = store.keys.by_kid["j-rsa"]
    loader.document = {"keys": [{"kty": "RSA", "kid": "broken"}]}
    await store.refresh()
    loader.document = {"keys": [RSA]}
    await store.refresh()
    assert store.keys.by_kid["j-rsa"] is first


async def test_one_malformed_key_in_a_fetched_set_does_not_stop_the_set_from_loading() -> None:
    loader = MemoryJwks({"keys": [{**RSA, "n": "!!", "kid": "bad"}, EC]})
    store, metrics = store_with(loader)
    await store.refresh()
    assert set(store.keys.by_kid) == {"j-ec"}
    assert fetches(metrics, "ok") == 1 and fetches(metrics, "error") == 0


# -- the interface a shared key source would implement ------------------------------------------


class SharedKeys:
    """A stand-in for keys held elsewhere (another process's cache): the verifier needs only
    :class:`gateway.pipeline.verify.jwks.KeySource`."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.loaded = True
        self.stale = False
        self.asked = 0

    async def refresh_for_unknown_kid(self) -> None:
        self.asked += 1


async def test_the_verifier_works_with_any_key_source_not_only_the_in_process_store() -> None:
    keys, _ = KeyImporter().key_set({"keys": [RSA]})
    shared = SharedKeys(keys)
    verifier = verifier_for(shared)
    assert isinstance(await verifier.verify(KEYS.token(typ=None)), VerifiedToken)
    unknown = await verifier.verify(KEYS.token(kid="elsewhere", typ=None))
    assert isinstance(unknown, Denial) and unknown.reason == "unknown_key"
    assert shared.asked == 1
    shared.stale = True
    stale = await verifier.verify(KEYS.token(typ=None))
    assert isinstance(stale, Denial) and stale.reason == "unavailable"
