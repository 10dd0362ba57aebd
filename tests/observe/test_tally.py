"""The request path counts into plain numbers (``Metrics.tally``) and prometheus-client gets
them when the registry is collected: a scrape must show exactly what counting each request
straight into the metrics would have shown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from gateway.observe.metrics import LATENCY_BUCKETS, DirectTally, Metrics, Tally

# Every bucket bound exactly, either side of each, zero, and beyond the last (+Inf).
DURATIONS = st.one_of(
    st.sampled_from(LATENCY_BUCKETS),
    st.sampled_from([0.0, 59.999, 60.000001, 3600.0]),
    st.floats(min_value=0, max_value=120, allow_nan=False),
)


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), DURATIONS), max_size=40))
def test_a_scrape_shows_the_tallied_requests_as_if_each_was_counted_directly(
    requests: list[tuple[str, float]],
) -> None:
    tallied, direct = Metrics(), Metrics()
    assert isinstance(tallied.tally, Tally) and not isinstance(tallied.tally, DirectTally)
    for route, seconds in requests:
        tallied.tally.inc(tallied.requests.labels(route, "GET", "200"))
        tallied.tally.observe(tallied.request_duration.labels(route), seconds)
        direct.requests.labels(route, "GET", "200").inc()
        direct.request_duration.labels(route).observe(seconds)
    assert scrape(tallied) == scrape(direct)
    assert scrape(tallied) == scrape(direct)  # a second scrape counts nothing twice


def test_counts_made_between_two_scrapes_are_added_to_the_first() -> None:
    metrics = Metrics()
    child = metrics.requests.labels("a", "GET", "200")
    for _ in range(3):
        metrics.tally.inc(child)
    series = {"route": "a", "method": "GET", "code": "200"}
    assert metrics.registry.get_sample_value("gateway_requests_total", series) == 3
    metrics.tally.inc(child)
    assert metrics.registry.get_sample_value("gateway_requests_total", series) == 4


def test_the_in_flight_gauge_shows_the_requests_in_progress_at_the_scrape() -> None:
    metrics = Metrics()
    metrics.tally.enter()
    metrics.tally.enter()
    assert metrics.registry.get_sample_value("gateway_inflight_requests") == 2
    metrics.tally.leave()
    assert metrics.registry.get_sample_value("gateway_inflight_requests") == 1
