"""SPEC §6 metrics, read the way Prometheus reads them: a scrape of ``/metrics`` after a scripted
mix of requests (tests/observe/traffic.py) against a real gateway and real upstreams."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from gateway.pipeline.decision import REASONS
from tests.observe.metrics_text import moved, samples, value, values
from tests.observe.traffic import ISSUERS, ROUTES, Scrapes

# SPEC §6: name, type, labels (the contract), plus `gateway_ready` (an addition, see README).
CONTRACT = {
    "gateway_requests_total": ("counter", {"route", "method", "code"}),
    "gateway_request_duration_seconds": ("histogram", {"route"}),
    "gateway_upstream_duration_seconds": ("histogram", {"route"}),
    "gateway_auth_decisions_total": ("counter", {"route", "result", "reason"}),
    "gateway_jwks_fetches_total": ("counter", {"issuer", "result"}),
    "gateway_jwks_keys": ("gauge", {"issuer"}),
    "gateway_introspection_requests_total": ("counter", {"issuer", "result"}),
    "gateway_token_cache_total": ("counter", {"cache", "result"}),
    "gateway_inflight_requests": ("gauge", set()),
    "gateway_config_reloads_total": ("counter", {"result"}),
    "gateway_ready": ("gauge", set()),
}

ALLOWED_LABEL_VALUES = {
    "route": {*ROUTES, "(none)"},
    "method": {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
    | {"OTHER"},
    "result": {"allow", "deny", "ok", "error", "active", "inactive", "hit", "miss"},
    "reason": {*REASONS, "none"},
    "issuer": set(ISSUERS),
    "cache": {"jwt", "introspection"},
}


def family_types(text: str) -> dict[str, str]:
    """Metric name -> type, with the name as exposed (the parser drops counters' `_total`)."""
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = family.type
    return found


def test_the_mix_got_the_statuses_it_was_written_for(scrapes: Scrapes) -> None:
    assert scrapes.statuses == [call.status for call in scrapes.calls]


def test_every_contract_metric_is_exposed_with_its_type_and_no_other(scrapes: Scrapes) -> None:
    assert family_types(scrapes.after) == {name: kind for name, (kind, _) in CONTRACT.items()}


def test_every_sample_has_exactly_the_contract_labels(scrapes: Scrapes) -> None:
    for sample in samples(scrapes.after):
        base = re.sub(r"_(bucket|count|sum)$", "", sample.name)
        expected = CONTRACT[base][1] | ({"le"} if sample.name.endswith("_bucket") else set())
        assert set(sample.labels) == expected, sample


def test_label_values_are_bounded_by_the_configuration_and_the_closed_sets(
    scrapes: Scrapes,
) -> None:
    for sample in samples(scrapes.after):
        for label, allowed in ALLOWED_LABEL_VALUES.items():
            if label in sample.labels:
                assert sample.labels[label] in allowed, sample
        if "code" in sample.labels:
            assert re.fullmatch(r"[1-5]\d\d", sample.labels["code"]), sample


def test_no_label_value_is_a_path_subject_or_token(scrapes: Scrapes) -> None:
    label_values = {v for s in samples(scrapes.after) for v in s.labels.values()}
    forbidden = {c.path for c in scrapes.calls} | set(scrapes.tokens) | {"alice", "bob"}
    assert not label_values & forbidden
    assert not any("/" in v or "?" in v for v in label_values)


def test_each_request_is_counted_once_by_route_method_and_code(scrapes: Scrapes) -> None:
    counted = moved(
        scrapes.before, scrapes.after, "gateway_requests_total", ("route", "method", "code")
    )
    assert counted == dict(scrapes.expected_requests())


def test_requests_matching_no_route_are_counted_under_one_fixed_route_label(
    scrapes: Scrapes,
) -> None:
    assert (
        value(scrapes.after, "gateway_requests_total", route="(none)", method="GET", code="404")
        == 1
    )
    assert (
        value(scrapes.after, "gateway_requests_total", route="(none)", method="DELETE", code="405")
        == 1
    )


def test_an_unknown_method_is_counted_under_one_label(scrapes: Scrapes) -> None:
    assert (
        value(scrapes.after, "gateway_requests_total", route="status", method="OTHER", code="200")
        == 1
    )


def test_each_deny_reason_is_counted_once_under_its_route(scrapes: Scrapes) -> None:
    counted = moved(
        scrapes.before, scrapes.after, "gateway_auth_decisions_total", ("route", "result", "reason")
    )
    assert counted == dict(scrapes.expected_decisions())
    denied = {reason for (_, result, reason) in counted if result == "deny"}
    # Every reason of the closed set but DPoP's (no DPoP here) came up in the mix.
    assert denied == set(REASONS) - {"invalid_dpop_proof"}


def test_request_durations_are_observed_once_per_request_by_route(scrapes: Scrapes) -> None:
    observed = moved(
        scrapes.before, scrapes.after, "gateway_request_duration_seconds_count", ("route",)
    )
    assert observed == dict(Counter((c.route,) for c in scrapes.calls))


def test_upstream_durations_are_observed_only_when_the_upstream_answered(scrapes: Scrapes) -> None:
    observed = moved(
        scrapes.before, scrapes.after, "gateway_upstream_duration_seconds_count", ("route",)
    )
    assert observed == dict(Counter((c.route,) for c in scrapes.calls if c.forwarded))


def test_jwks_fetches_and_keys_are_counted_per_issuer(scrapes: Scrapes) -> None:
    fetches = values(scrapes.after, "gateway_jwks_fetches_total", ("issuer", "result"))
    assert fetches == {
        ("corp", "ok"): 1,
        ("corp", "error"): 0,
        ("down", "ok"): 0,
        ("down", "error"): 1,
    }
    keys = values(scrapes.after, "gateway_jwks_keys", ("issuer",))
    assert keys == {("corp",): 3, ("down",): 0}


def test_introspection_calls_are_counted_per_issuer_and_result(scrapes: Scrapes) -> None:
    calls = moved(
        scrapes.before, scrapes.after, "gateway_introspection_requests_total", ("issuer", "result")
    )
    assert calls == {("opaque", "inactive"): 1, ("opaque", "active"): 1, ("flaky", "error"): 1}


def test_introspection_cache_hits_and_misses_are_counted(scrapes: Scrapes) -> None:
    lookups = moved(scrapes.before, scrapes.after, "gateway_token_cache_total", ("cache", "result"))
    introspection_lookups = {k: v for k, v in lookups.items() if k[0] == "introspection"}
    assert introspection_lookups == {("introspection", "miss"): 3, ("introspection", "hit"): 1}
    # Every JWT of the mix is looked up in the verified-token cache once; the valid one that
    # was sent twice is found there the second time.
    assert lookups[("jwt", "hit")] + lookups[("jwt", "miss")] > 0


def test_counters_an_alert_needs_exist_at_zero_before_anything_happens(scrapes: Scrapes) -> None:
    fetches = values(scrapes.before, "gateway_jwks_fetches_total", ("issuer", "result"))
    assert fetches[("corp", "error")] == 0
    introspection = values(
        scrapes.before, "gateway_introspection_requests_total", ("issuer", "result")
    )
    assert set(introspection) == {
        (issuer, result)
        for issuer in ("opaque", "flaky")
        for result in ("active", "inactive", "error")
    }


def test_no_request_is_left_in_flight_after_the_mix(scrapes: Scrapes) -> None:
    assert value(scrapes.after, "gateway_inflight_requests") == 0


def test_readiness_is_exposed_as_a_gauge(scrapes: Scrapes) -> None:
    # The `down` issuer's keys never load: /readyz answers 503, and the gauge says so.
    assert value(scrapes.after, "gateway_ready") == 0


def test_latency_histograms_have_buckets_from_half_a_millisecond_to_a_minute(
    scrapes: Scrapes,
) -> None:
    for name in ("gateway_request_duration_seconds", "gateway_upstream_duration_seconds"):
        bounds = [
            s.labels["le"]
            for s in samples(scrapes.after)
            if s.name == f"{name}_bucket" and s.labels["route"] == "status"
        ]
        assert bounds == [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
            "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "+Inf",
        ]  # fmt: skip


def test_the_exposition_passes_promtool_check_metrics(scrapes: Scrapes, promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrapes.after,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_the_exposition_parses_with_prometheus_clients_parser(scrapes: Scrapes) -> None:
    families = list(text_string_to_metric_families(scrapes.after))
    assert len(families) == len(CONTRACT)
    assert all(f.documentation for f in families)
