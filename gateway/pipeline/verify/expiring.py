"""Entries kept least recently used first out, each until a time of its own: the verified-JWT
cache (``jwt.py``) and the introspection answers (``token_cache.py``) each keep theirs in one.

No entry is returned once its time has come. What expired leaves memory three ways, none of
them a pass over the whole space (a pass over 100,000 entries held the event loop for 15 ms):
dropped when a look-up meets it; dropped from the least recently used end, two at most, when a
new entry needs room, before a live entry is evicted; and, wherever they are, filed by when they
expire in slots of ``SLOT_SECONDS``: once a slot's time has passed, its entries go,
``EXPIRED_PER_PUT`` at most as each new entry comes in.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# An expired entry stays in memory at most this long past its time, while new ones come in
# (never returned meanwhile). A slot left empty (its entries evicted or replaced) is dropped at
# once, and the heap rebuilt when such numbers outnumber the live slots: however long tokens
# live, there are never more slots than entries.
SLOT_SECONDS = 10.0
# More than one a new entry, so that expired entries leave faster than new ones come.
EXPIRED_PER_PUT = 4
# Expired entries looked for at the least recently used end when a new entry needs room: they
# go before a live entry is evicted.
OLD_END_PER_PUT = 2


class ExpiringLru(Generic[K, V]):
    """At most ``maxsize`` entries by key, each with the clock reading at which it expires."""

    def __init__(self, maxsize: int, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._slots: dict[int, set[K]] = {}  # keys by the slot their time falls in
        self._due: list[int] = []  # the numbers of those slots, a heap
        self._draining: set[K] = set()  # keys of a slot whose time has passed
        self._next_due = math.inf  # when the earliest slot's time has passed, or never

    def get(self, key: K) -> V | None:
        """The entry, or None: none ever was, it was evicted, or its time has come."""
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires = found
        if not self._clock() < expires:
            del self._entries[key]
            self._unfile(key, expires)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, expires: float) -> None:
        """Keep ``value`` under ``key`` until ``expires``, replacing what was there. A value
        whose time has come already, or cannot be compared (NaN), is not kept: fail closed."""
        self.discard(key)
        now = self._clock()
        if not now < expires:
            return
        entries = self._entries
        entries[key] = (value, expires)
        self._file(key, expires)
        if len(entries) > self.maxsize:
            self._make_room(now)
        if self._draining or self._next_due <= now:
            self._expire(now)

    def discard(self, key: K) -> None:
        """Forget the entry under ``key``, if any."""
        found = self._entries.pop(key, None)
        if found is not None:
            self._unfile(key, found[1])

    def items(self) -> Iterator[tuple[K, V]]:
        """Every entry held, expired or not, least recently used first (for tests)."""
        return ((key, value) for key, (value, _) in list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)

    def _make_room(self, now: float) -> None:
        """Evict the least recently used entry, unless expired ones at that end make room."""
        entries = self._entries
        for _ in range(OLD_END_PER_PUT):
            oldest, (_, when) = next(iter(entries.items()))
            if now < when:
                break
            del entries[oldest]
            self._unfile(oldest, when)
        if len(entries) > self.maxsize:
            evicted, (_, when) = entries.popitem(last=False)
            self._unfile(evicted, when)

    def _file(self, key: K, expires: float) -> None:
        if expires == math.inf:
            return  # never expires: in no slot
        slot = math.floor(expires / SLOT_SECONDS)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
            heapq.heappush(self._due, slot)
            self._note_next_due()
        members.add(key)

    def _unfile(self, key: K, expires: float) -> None:
        if expires == math.inf:
            return
        slot = math.floor(expires / SLOT_SECONDS)
        members = self._slots.get(slot)
        if members is not None:
            members.discard(key)
            if not members:
                del self._slots[slot]  # its number stays in the heap, skipped when popped
                if len(self._due) > 2 * len(self._slots) + 64:
                    self._due = list(self._slots)
                    heapq.heapify(self._due)
                    self._note_next_due()
        # A key in the slot being drained stays there: it is checked again when its turn comes.

    def _note_next_due(self) -> None:
        """Keep, after each change to the heap, when its earliest slot's time has passed: a put
        compares one float, not the heap's head turned into a time."""
        self._next_due = (self._due[0] + 1) * SLOT_SECONDS if self._due else math.inf

    def _expire(self, now: float) -> None:
        """Drop a few entries whose slot's time has passed."""
        budget = EXPIRED_PER_PUT
        while budget > 0:
            if self._draining:
                key = self._draining.pop()
                found = self._entries.get(key)
                if found is not None and not now < found[1]:
                    del self._entries[key]
                budget -= 1
            elif self._next_due <= now:
                members = self._slots.pop(heapq.heappop(self._due), None)
                self._note_next_due()
                if members is None:
                    budget -= 1  # a slot emptied meanwhile costs a turn too: bounded work a put
                else:
                    self._draining = members
            else:
                return
