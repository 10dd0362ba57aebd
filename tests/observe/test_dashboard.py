"""deploy/grafana/gateway-dashboard.json: importable into Grafana (a datasource input, a recent
schema), with the panels an operator needs, querying only metrics the gateway exposes, in
PromQL that Prometheus parses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observe.metrics_text import exposed_names
from tests.observe.traffic import Scrapes

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "gateway-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
# What Grafana puts in place of its variables before it sends a query.
VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$route": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graphs(dashboard) for t in p["targets"]]


def as_prometheus_sees_it(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_the_dashboard_asks_for_a_prometheus_datasource_on_import(
    dashboard: dict[str, Any],
) -> None:
    (datasource,) = dashboard["__inputs"]
    assert (datasource["name"], datasource["type"], datasource["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    # Provisioned from a file (no import step), the same name is a datasource variable.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"


def test_the_dashboard_uses_a_schema_version_of_grafana_9_or_later(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]


def test_every_panel_and_query_uses_the_datasource_input(dashboard: dict[str, Any]) -> None:
    for panel in graphs(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE


def test_panel_ids_are_unique_and_every_panel_lies_on_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_the_dashboard_has_the_panels_an_operator_needs(dashboard: dict[str, Any]) -> None:
    queries = expressions(dashboard)

    def any_query(*fragments: str) -> bool:
        return any(all(f in q for f in fragments) for q in queries)

    assert any_query("sum by (route)", "rate(gateway_requests_total")
    assert any_query("sum by (code)", "rate(gateway_requests_total")
    for histogram in ("gateway_request_duration_seconds", "gateway_upstream_duration_seconds"):
        for quantile in ("0.5", "0.9", "0.99"):
            assert any_query(f"histogram_quantile({quantile}", f"{histogram}_bucket")
    assert any_query("sum by (reason)", 'gateway_auth_decisions_total{result="deny"')
    assert any_query("gateway_jwks_fetches_total")
    assert any_query("gateway_jwks_keys")
    assert any_query("gateway_introspection_requests_total")
    assert any_query('gateway_token_cache_total{result="hit"}', "/")
    assert any_query("gateway_inflight_requests")


def test_every_metric_a_panel_queries_is_exposed_by_the_gateway(
    dashboard: dict[str, Any], scrapes: Scrapes
) -> None:
    exposed = exposed_names(scrapes.after)
    for expr in expressions(dashboard):
        names = re.findall(r"\bgateway_[a-z0-9_]+", expr)
        assert names, expr
        assert set(names) <= exposed, expr


def test_promtool_parses_every_panel_query(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    # promtool has no "parse this expression" command: each query becomes a recording rule,
    # which `check rules` parses.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": as_prometheus_sees_it(expr)}
        for n, expr in enumerate(expressions(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
