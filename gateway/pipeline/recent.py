"""Answers the request path remembers: bounded, the oldest going first."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """At most ``size`` answers by key; when full, the oldest is forgotten for the new one.

    Look answers up with ``get`` (OrderedDict's own, in C: nothing is added to a hit). An
    OrderedDict because evicting a plain dict's oldest key (``next(iter(d))``) walks every
    slot deleted before it: microseconds a miss once the dict has churned."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: K, value: V) -> None:
        if len(self) >= self.size:
            self.popitem(last=False)
        self[key] = value
