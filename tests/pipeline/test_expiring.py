"""The expiring LRU both token caches keep their entries in: never an entry past its time, the
least recently used out first, and expired entries leave memory without a pass over it all."""

from __future__ import annotations

import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.verify.expiring import (
    EXPIRED_PER_PUT,
    SLOT_SECONDS,
    ExpiringLru,
)

NOW = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def lru(maxsize: int = 10) -> tuple[ExpiringLru[str, str], Clock]:
    clock = Clock()
    return ExpiringLru(maxsize, clock), clock


def test_an_entry_is_returned_until_its_time_and_not_from_then_on() -> None:
    cache, clock = lru()
    cache.put("k", "v", NOW + 30)
    clock.now = NOW + 29.999
    assert cache.get("k") == "v"
    clock.now = NOW + 30
    assert cache.get("k") is None
    assert len(cache) == 0  # the look-up that met it dropped it


@pytest.mark.parametrize("expires", [NOW, NOW - 1, -math.inf, math.nan], ids=repr)
def test_an_entry_whose_time_has_come_or_cannot_be_compared_is_not_kept(expires: float) -> None:
    cache, _ = lru()
    cache.put("k", "v", expires)
    assert cache.get("k") is None
    assert len(cache) == 0


def test_an_entry_put_again_with_no_time_left_replaces_the_old_one_with_nothing() -> None:
    cache, _ = lru()
    cache.put("k", "old", NOW + 30)
    cache.put("k", "new", math.nan)
    assert cache.get("k") is None


def test_an_entry_without_an_end_is_kept_until_evicted() -> None:
    cache, clock = lru(maxsize=2)
    cache.put("forever", "v", math.inf)
    clock.now = 1e300
    assert cache.get("forever") == "v"
    cache.put("a", "v", math.inf)
    cache.put("b", "v", math.inf)
    assert cache.get("forever") is None


def test_an_entry_put_again_takes_the_new_value_and_the_new_time() -> None:
    cache, clock = lru()
    cache.put("k", "first", NOW + 10)
    cache.put("k", "second", NOW + 100)
    clock.now = NOW + 10 + SLOT_SECONDS  # the first time's slot is emptied meanwhile
    cache.put("other", "v", NOW + 1000)
    assert cache.get("k") == "second"


def test_the_least_recently_used_entry_is_evicted_when_full() -> None:
    cache, _ = lru(maxsize=3)
    for key in "abc":
        cache.put(key, key, NOW + 100)
    assert cache.get("a") == "a"
    cache.put("d", "d", NOW + 100)
    assert [cache.get(key) for key in "abcd"] == ["a", None, "c", "d"]


def test_expired_entries_at_the_old_end_go_before_a_live_entry_is_evicted() -> None:
    cache, clock = lru(maxsize=3)
    cache.put("old-1", "v", NOW + 1)
    cache.put("old-2", "v", NOW + 1)
    cache.put("live", "v", NOW + 100)
    clock.now = NOW + 2  # their slot's time has not passed yet
    cache.put("new", "v", NOW + 100)
    assert len(cache) == 2
    assert cache.get("live") == "v" and cache.get("new") == "v"


def test_expired_entries_behind_live_ones_leave_once_their_slot_has_passed() -> None:
    cache, clock = lru(maxsize=1000)
    cache.put("live-first", "v", NOW + 3600)  # keeps the old end alive
    for index in range(100):
        cache.put(f"short-{index}", "v", NOW + 5)
    clock.now = NOW + 5 + SLOT_SECONDS
    puts = -(-100 // EXPIRED_PER_PUT)  # each put drops a few, never more
    for index in range(puts):
        cache.put(f"long-{index}", "v", NOW + 3600)
    assert len(cache) == 1 + puts


def test_a_put_drops_no_more_than_its_share_of_expired_entries() -> None:
    # The work of a put is bounded, however many entries expired at once.
    cache, clock = lru(maxsize=10_000)
    cache.put("live-first", "v", NOW + 3600)
    for index in range(5000):
        cache.put(f"short-{index}", "v", NOW + 5)
    clock.now = NOW + 5 + SLOT_SECONDS
    cache.put("new", "v", NOW + 3600)
    assert len(cache) == 1 + 5000 + 1 - EXPIRED_PER_PUT


def test_an_entry_put_again_while_its_old_slot_is_being_emptied_is_kept() -> None:
    cache, clock = lru(maxsize=100)
    cache.put("live-first", "v", NOW + 3600)
    short = [f"short-{index}" for index in range(EXPIRED_PER_PUT + 1)]
    for key in short:
        cache.put(key, "old", NOW + 1)
    clock.now = NOW + 1 + SLOT_SECONDS
    cache.put("new", "v", NOW + 3600)  # the slot's time has passed: all but one dropped
    [left] = [key for key, _ in cache.items() if key in short]
    cache.put(left, "again", NOW + 3600)
    cache.put("newer", "v", NOW + 3600)  # the last of the old slot is looked at
    assert cache.get(left) == "again"


def test_its_memory_stays_bounded_by_its_size_however_long_entries_would_live() -> None:
    # Each entry evicted long before its time leaves its slot empty: a slot kept until its
    # time came made 250,000 slots (84 MB) for a 100-entry cache fed tokens living a month.
    cache: ExpiringLru[bytes, int] = ExpiringLru(100, Clock())
    draw = random.Random(7)
    tracemalloc.start()
    try:
        for index in range(50_000):
            cache.put(b"%032d" % index, index, NOW + draw.uniform(60, 30 * 86_400))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache) == 100
    assert held < 1_000_000


def test_an_entry_put_in_a_cache_of_size_zero_is_not_kept() -> None:
    cache, _ = lru(maxsize=0)
    cache.put("k", "v", NOW + 10)
    assert cache.get("k") is None and len(cache) == 0


def test_a_clock_that_goes_back_never_brings_an_expired_entry_back() -> None:
    cache, clock = lru()
    cache.put("k", "v", NOW + 5)
    clock.now = NOW + 5
    assert cache.get("k") is None
    clock.now = NOW  # the entry was dropped when met: a clock stepped back finds nothing
    assert cache.get("k") is None


def test_items_lists_what_is_held_least_recently_used_first() -> None:
    cache, _ = lru()
    cache.put("a", "1", NOW + 10)
    cache.put("b", "2", NOW + 10)
    cache.get("a")
    assert list(cache.items()) == [("b", "2"), ("a", "1")]


def test_discard_forgets_an_entry() -> None:
    cache, _ = lru()
    cache.put("k", "v", NOW + 10)
    cache.discard("k")
    cache.discard("never")
    assert cache.get("k") is None and len(cache) == 0


KEYS = st.sampled_from("abcde")
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), KEYS, st.floats(min_value=-5, max_value=60)),
        st.tuples(st.just("get"), KEYS, st.just(0.0)),
        st.tuples(st.just("wait"), st.just(""), st.floats(min_value=0, max_value=30)),
    ),
    max_size=80,
)


@settings(max_examples=500)
@given(OPERATIONS, st.integers(min_value=1, max_value=4))
def test_an_entry_is_returned_exactly_while_it_is_live_and_recently_enough_used(
    operations: list[tuple[str, str, float]], maxsize: int
) -> None:
    """Against a model: a look-up returns the value last put under its key when, and only when,
    its time has not come, and it is not returned after being crowded out; an entry touched
    since fewer than ``maxsize`` other keys were is never crowded out."""
    cache, clock = lru(maxsize)
    kept: dict[str, tuple[str, float]] = {}  # the model: the last value put, and its time
    touched: list[str] = []  # keys, most recently put or found last
    for step, (operation, key, number) in enumerate(operations):
        if operation == "wait":
            clock.now += number
        elif operation == "put":
            value = f"{key}{step}"
            cache.put(key, value, clock.now + number)
            kept.pop(key, None)
            if clock.now < clock.now + number:
                kept[key] = (value, clock.now + number)
                touched = [k for k in touched if k != key] + [key]
        else:
            found = cache.get(key)
            model = kept.get(key)
            live = model is not None and clock.now < model[1]
            if found is not None:
                assert live and model is not None and found == model[0]
                touched = [k for k in touched if k != key] + [key]
            elif live:
                since = touched[touched.index(key) + 1 :] if key in touched else touched
                assert len(set(since)) >= maxsize, "a live, recently used entry was dropped"
        assert len(cache) <= maxsize
