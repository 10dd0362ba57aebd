"""Reading a Prometheus text exposition in tests, with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def value(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when it is absent)."""
    for found in samples(text):
        if found.name == name and found.labels == labels:
            return float(found.value)
    return 0.0


def values(text: str, name: str, label_names: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Every sample of ``name``, keyed by the values of ``label_names``."""
    return {
        tuple(s.labels[n] for n in label_names): float(s.value)
        for s in samples(text)
        if s.name == name
    }


def moved(
    before: str, after: str, name: str, label_names: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """How much each series of ``name`` grew between two scrapes (series that did not move are
    left out)."""
    old, new = values(before, name, label_names), values(after, name, label_names)
    grown = {key: new[key] - old.get(key, 0.0) for key in new}
    return {key: delta for key, delta in grown.items() if delta}


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape of ``text`` gives Prometheus, whether it has samples yet or
    not (a counter that never moved is still declared by its HELP and TYPE lines)."""
    names = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names
