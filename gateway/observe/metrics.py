"""The metrics of SPEC §6, owned by one object per process so that tests can make their own.

Labels are bounded by construction: route names come from the configuration (a request that
matches no route is counted under :data:`UNMATCHED_ROUTE`), methods outside the standard set under
``OTHER``, reasons from the closed set, issuers from the configuration. A raw path, host,
subject or token never becomes a label value.

**Several worker processes.** With ``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the
gateway starts, prometheus-client's multiprocess mode is on: every process writes its values to
files in that directory and ``/metrics`` (in any of them) serves one view of all of them.
Counters and histograms are summed over every process that ever wrote there, so a worker that
exits or is restarted does not take its counts with it. Gauges are merged by their meaning:

- ``gateway_inflight_requests``: ``livesum``, the requests in progress in live processes (a dead
  process has none in progress).
- ``gateway_jwks_keys``: ``livemax``. Every worker fetches the same issuer's JWKS, so the counts
  differ only while a rotation reaches them one after another; the largest live count is what the
  issuer publishes now. A dead worker's count (perhaps of keys since rotated away) is dropped.
  ``liveall`` would add a ``pid`` label outside the contract. Whether each worker has keys at all
  is ``gateway_ready``'s job.
- ``gateway_ready``: ``livemin``, ready only when every live worker is.

The directory must be empty when the gateway (its first process) starts, and whatever starts
the workers must forget each worker that dies (:func:`forget_process`): the supervisor
(``gateway/workers.py``) gives its workers a fresh temporary directory and does both;
:func:`clear_multiprocess_dir` empties a directory that is reused. A worker that stops gracefully
forgets itself (:meth:`Metrics.close`).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

# The names of SPEC §6 are the contract: the `<name>_created` companion series the text format
# would add for every counter and histogram are extra names (and absent in multiprocess mode).
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# From a tenth of a millisecond (a cached token check) to tens of seconds (a slow upstream).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Requests that match no route are counted under this one label, so labels stay bounded.
# Route names cannot contain parentheses (config schema), so it never collides with one.
UNMATCHED_ROUTE = "(none)"
# Methods outside the standard set (RFC 9110 §9, PATCH) are counted under this one label.
OTHER_METHOD = "OTHER"
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when multiprocess mode is on in this process."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        # prometheus-client chose its value storage when it was first imported: the variable
        # must be in the environment before the process starts, not set by the process itself.
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported")
    return path


class Tally:
    """What the request path counts, kept in plain numbers and handed to prometheus-client in
    bulk whenever the registry is collected (every scrape, every ``get_sample_value``).

    A labelled child's ``inc()`` takes a lock and ``observe()`` walks the buckets under two:
    about 8 µs of every request between them. Here a request adds to dicts, and
    :meth:`flush` passes the sums on just before anything reads them, so a scrape sees exactly
    what it would have seen. Only the event loop's thread counts (the gateway's only thread
    that serves requests). In multiprocess mode other processes read the values at any time:
    :class:`DirectTally` writes them through instead.
    """

    def __init__(self, inflight: Gauge) -> None:
        self._inflight_gauge = inflight
        self.inflight = 0  # requests in progress
        self._counts: dict[Counter, int] = {}  # counter child -> increments not yet passed on
        self._observed: dict[Histogram, list[float]] = {}  # child -> [sum, count per bucket]

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    def inc(self, counter: Counter) -> None:
        counts = self._counts
        counts[counter] = counts.get(counter, 0) + 1

    def observe(self, histogram: Histogram, value: float) -> None:
        pending = self._observed.get(histogram)
        if pending is None:
            pending = self._observed[histogram] = [0.0] * (len(histogram._upper_bounds) + 1)
        pending[0] += value
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it (the
        # last bound is +Inf, so there always is one).
        pending[1 + bisect_left(histogram._upper_bounds, value)] += 1

    def flush(self) -> None:
        """Pass every count on to its metric, and the in-flight requests to their gauge."""
        self._inflight_gauge.set(self.inflight)
        counts, self._counts = self._counts, {}
        for counter, increments in counts.items():
            counter.inc(increments)
        for histogram, pending in self._observed.items():
            if not any(pending):
                continue
            # Histogram.observe(), a bucket at a time: its sum and the (non-cumulative) count
            # of each bucket. tests/observe/test_tally.py checks that the exposition matches.
            histogram._sum.inc(pending[0])
            for index, observations in enumerate(pending[1:]):
                if observations:
                    histogram._buckets[index].inc(observations)
            pending[:] = [0.0] * len(pending)


class DirectTally(Tally):
    """A tally that writes every count through at once (multiprocess mode)."""

    def enter(self) -> None:
        self._inflight_gauge.inc()

    def leave(self) -> None:
        self._inflight_gauge.dec()

    def inc(self, counter: Counter) -> None:
        counter.inc()

    def observe(self, histogram: Histogram, value: float) -> None:
        histogram.observe(value)

    def flush(self) -> None:
        pass


class _FlushFirst(Collector):
    """Registered before every metric: collecting the registry flushes the tally first."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        self._metrics.tally.flush()
        return []

    def describe(self) -> Iterable[Any]:
        return []


class Metrics:
    """Every gateway metric, registered in a registry of its own.

    In multiprocess mode (see the module's docstring) there must be one per process. What the
    request path counts goes through :attr:`tally`."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None:
            os.makedirs(self.multiprocess_dir, exist_ok=True)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_FlushFirst(self))  # first: every collection flushes before reading a metric
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by route, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time the upstream took to answer with headers, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_decisions = Counter(
            "gateway_auth_decisions_total",
            "Token decisions by route, result (allow/deny) and deny reason",
            ["route", "result", "reason"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches_total",
            "JWKS fetches by issuer and result (ok/error)",
            ["issuer", "result"],
            registry=r,
        )
        self.jwks_keys = Gauge(
            "gateway_jwks_keys",
            "Usable signing keys per issuer",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.introspection_requests = Counter(
            "gateway_introspection_requests_total",
            "Introspection calls by issuer and result (active/inactive/error)",
            ["issuer", "result"],
            registry=r,
        )
        self.token_cache = Counter(
            "gateway_token_cache_total",
            "Token cache lookups by cache (jwt/introspection) and result (hit/miss)",
            ["cache", "result"],
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests in progress",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Configuration reloads by result (ok/error)",
            ["result"],
            registry=r,
        )
        # Beyond SPEC §6: what /readyz answers, for alerting on replicas that take no traffic.
        self.ready = Gauge(
            "gateway_ready",
            "1 while /readyz answers 200, else 0",
            registry=r,
            multiprocess_mode="livemin",
        )
        kind = DirectTally if self.multiprocess_dir is not None else Tally
        self.tally: Tally = kind(self.inflight)

    def declare(
        self,
        *,
        jwks_keys: Mapping[str, int] | None = None,
        introspection_issuers: Iterable[str] = (),
    ) -> None:
        """Create the series a configuration will have before anything happens to them:
        ``increase()`` and ``rate()`` only see a counter's first event if the series existed
        before it, so an alert on the first JWKS failure needs it there already.
        ``jwks_keys``: each JWKS issuer's usable keys now (0 before the first load)."""
        for issuer, count in (jwks_keys or {}).items():
            self.jwks_keys.labels(issuer).set(count)
            for result in ("ok", "error"):
                self.jwks_fetches.labels(issuer, result)
        introspecting = list(introspection_issuers)
        for issuer in introspecting:
            for result in ("active", "inactive", "error"):
                self.introspection_requests.labels(issuer, result)
        if introspecting:
            for result in ("hit", "miss"):
                self.token_cache.labels("introspection", result)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric (of every process, in multiprocess
        mode)."""
        if self.multiprocess_dir is not None:
            return multiprocess_exposition(self.multiprocess_dir)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This process is going away: in multiprocess mode, its live gauges stop counting
        (its counters and histograms stay)."""
        if self.multiprocess_dir is not None:
            forget_process(os.getpid(), self.multiprocess_dir)


def multiprocess_exposition(path: str) -> bytes:
    """One view of every process that wrote to ``path``: counters and histograms summed,
    gauges merged by their ``multiprocess_mode``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def forget_process(pid: int, path: str | None = None) -> None:
    """A worker died: drop its live gauges (in-flight requests, keys, readiness); its counters
    and histograms stay in the sums."""
    mark_process_dead(pid, path or os.environ.get(MULTIPROC_ENV))  # type: ignore[no-untyped-call]


def clear_multiprocess_dir(path: str) -> None:
    """Remove the values of an earlier run (once, before the first worker starts): files of
    processes long gone would otherwise be summed, and their live gauges never forgotten."""
    for file in Path(path).glob("*.db"):
        if file.name.startswith(("counter_", "gauge_", "histogram_", "summary_")):
            file.unlink(missing_ok=True)
