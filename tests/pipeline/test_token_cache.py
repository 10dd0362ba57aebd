"""The introspection answer cache: keyed without the token, bounded, never past a token's exp."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.verify.expiring import SLOT_SECONDS
from gateway.pipeline.verify.token_cache import (
    MIN_NEGATIVE_ENTRIES,
    AnswerCache,
    answer_ttl,
    cache_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


ACTIVE = {"active": True, "scope": "read", "exp": 1_000_300}
INACTIVE = {"active": False}


@given(st.text(min_size=1), st.text(min_size=20))
def test_a_cache_key_never_contains_the_token(issuer: str, token: str) -> None:
    key = cache_key(issuer, token)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert token not in key


def test_the_same_token_of_two_issuers_has_two_keys() -> None:
    assert cache_key("a", "tok") != cache_key("b", "tok")


def test_an_active_answer_is_kept_at_most_cache_ttl() -> None:
    ttl = answer_ttl(
        {"active": True, "exp": 2_000_000}, now=1_000_000, cache_ttl=300, negative_cache_ttl=10
    )
    assert ttl == 300


def test_an_active_answer_never_outlives_the_tokens_exp() -> None:
    ttl = answer_ttl(ACTIVE, now=1_000_250, cache_ttl=300, negative_cache_ttl=10)
    assert ttl == 50


def test_an_expired_token_is_not_kept_at_all() -> None:
    assert answer_ttl(ACTIVE, now=1_000_400, cache_ttl=300, negative_cache_ttl=10) == 0


def test_an_inactive_answer_is_kept_negative_cache_ttl() -> None:
    assert answer_ttl(INACTIVE, now=0, cache_ttl=300, negative_cache_ttl=10) == 10


def test_an_answer_with_active_not_exactly_true_counts_as_inactive() -> None:
    for active in ("true", 1, None):
        answer = {"active": active}
        assert answer_ttl(answer, now=0, cache_ttl=300, negative_cache_ttl=10) == 10


def test_an_entry_is_gone_once_its_time_is_up() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock=clock)
    cache.put("k", ACTIVE, 30)
    clock.now += 29
    assert cache.get("k") == ACTIVE
    clock.now += 2
    assert cache.get("k") is None


def test_a_flood_of_inactive_answers_never_evicts_an_active_one() -> None:
    cache = AnswerCache(100)
    cache.put("good", ACTIVE | {"exp": 4_102_444_800}, 300)
    for index in range(10 * MIN_NEGATIVE_ENTRIES):
        cache.put(f"forged-{index}", INACTIVE, 10)
    assert cache.get("good") is not None
    assert len(cache) <= 1 + MIN_NEGATIVE_ENTRIES


def test_a_revoked_token_replaces_its_active_entry() -> None:
    cache = AnswerCache(10)
    cache.put("k", ACTIVE | {"exp": 4_102_444_800}, 300)
    cache.put("k", INACTIVE, 10)
    assert cache.get("k") == INACTIVE


@pytest.mark.parametrize("exp", ["soon", 10**400, float("inf"), float("nan"), True, None], ids=repr)
def test_an_active_answer_whose_exp_cannot_be_read_is_not_kept(exp: object) -> None:
    # Its lifetime is unknown, so no bound can be kept; it is refused as malformed anyway.
    ttl = answer_ttl({"active": True, "exp": exp}, now=0, cache_ttl=300, negative_cache_ttl=10)
    assert ttl == 0


def test_an_answer_kept_for_no_time_is_not_stored() -> None:
    cache = AnswerCache(10)
    cache.put("k", ACTIVE, 0)
    assert cache.get("k") is None
    assert len(cache) == 0


def test_inactive_answers_get_a_tenth_of_a_large_cache_and_no_more() -> None:
    cache = AnswerCache(100_000)
    for index in range(12_000):
        cache.put(f"forged-{index}", INACTIVE, 10)
    assert len(cache) == 10_000


def test_a_token_that_became_active_replaces_its_inactive_entry() -> None:
    cache = AnswerCache(10)
    cache.put("k", INACTIVE, 10)
    cache.put("k", ACTIVE, 300)
    assert cache.get("k") == ACTIVE
    assert len(cache) == 1


def test_the_newest_answers_are_kept_when_the_active_space_is_full() -> None:
    cache = AnswerCache(3)
    for key in ("a", "b", "c", "d"):
        cache.put(key, ACTIVE, 300)
    assert [cache.get(key) is not None for key in ("a", "b", "c", "d")] == [
        False,
        True,
        True,
        True,
    ]


def test_expired_answers_no_request_asks_for_again_leave_memory_as_new_ones_come() -> None:
    clock = Clock()
    cache = AnswerCache(10, clock=clock)
    cache.put("live", ACTIVE, 300)  # at the old end, and alive: no expired one is behind it
    for index in range(5):
        cache.put(f"old-{index}", ACTIVE, 10)
    clock.now += 10 + SLOT_SECONDS  # their slot's time has passed
    for index in range(4):
        cache.put(f"new-{index}", ACTIVE, 300)
    assert len(cache) == 5  # the five expired ones gone, though never looked up


def test_an_answer_asked_for_is_kept_over_one_put_in_after_it_when_the_space_is_full() -> None:
    cache = AnswerCache(3)
    for key in ("a", "b", "c"):
        cache.put(key, ACTIVE, 300)
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", ACTIVE, 300)
    assert [cache.get(key) is not None for key in ("a", "b", "c", "d")] == [
        True,
        False,
        True,
        True,
    ]


def test_expired_answers_at_the_old_end_leave_as_a_new_one_comes_in() -> None:
    clock = Clock()
    cache = AnswerCache(3, clock=clock)
    cache.put("old-1", ACTIVE, 10)
    cache.put("old-2", ACTIVE, 10)
    cache.put("live", ACTIVE, 300)
    clock.now += 11
    cache.put("new", ACTIVE, 300)
    assert len(cache) == 2  # both expired ones gone, not only the one a full space evicts
    assert cache.get("live") is not None


@pytest.mark.parametrize("ttl", [float("nan"), -1.0, 0.0])
def test_an_answer_with_no_usable_time_to_live_is_not_kept(ttl: float) -> None:
    cache = AnswerCache(10)
    cache.put("k", ACTIVE, ttl)
    assert cache.get("k") is None
    assert len(cache) == 0
