"""The metrics of SPEC §6, owned by one object per process so that tests can make their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# From a tenth of a millisecond (a cached token check) to tens of seconds (a slow upstream).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Requests that match no route are counted under this one label, so labels stay bounded.
UNMATCHED_ROUTE = "(none)"


class Metrics:
    """Every gateway metric, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total", "Requests answered", ["route", "method", "code"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to response headers, by route",
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
            "Token decisions by route, result and reason",
            ["route", "result", "reason"],
            registry=r,
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches_total", "JWKS fetches", ["issuer", "result"], registry=r
        )
        self.jwks_keys = Gauge(
            "gateway_jwks_keys", "Usable signing keys per issuer", ["issuer"], registry=r
        )
        self.introspection_requests = Counter(
            "gateway_introspection_requests_total",
            "Introspection calls",
            ["issuer", "result"],
            registry=r,
        )
        self.token_cache = Counter(
            "gateway_token_cache_total", "Token cache lookups", ["cache", "result"], registry=r
        )
        self.inflight = Gauge("gateway_inflight_requests", "Requests in progress", registry=r)
        self.config_reloads = Counter(
            "gateway_config_reloads_total", "Configuration reloads", ["result"], registry=r
        )

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
