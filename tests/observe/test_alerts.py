"""deploy/prometheus/alerts.yaml: valid for promtool, unit-tested with promtool, and about
metrics the gateway really exposes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observe.metrics_text import exposed_names
from tests.observe.traffic import Scrapes

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def test_the_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_unit_tests_pass_promtool_test_rules(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_waits_has_a_severity_and_says_what_and_why(
    rules: list[dict[str, Any]],
) -> None:
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alerts_cover_jwks_denials_introspection_5xx_and_readiness(
    rules: list[dict[str, Any]],
) -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in rules}

    def watching(fragment: str) -> list[str]:
        return [name for name, expr in expressions.items() if fragment in expr]

    assert watching('gateway_jwks_fetches_total{result="error"}')
    assert watching('gateway_auth_decisions_total{result="deny"}')
    assert watching('gateway_introspection_requests_total{result="error"}')
    assert watching('gateway_requests_total{code=~"5.."}')
    assert watching("gateway_ready")
    assert watching("up{")


def test_every_metric_the_alerts_use_is_exposed_by_the_gateway(
    rules: list[dict[str, Any]], scrapes: Scrapes
) -> None:
    exposed = exposed_names(scrapes.after)
    for rule in rules:
        for name in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*(?=\{)", rule["expr"]):
            assert name in exposed or name == "up", (rule["alert"], name)
        for name in re.findall(r"\bgateway_[a-z0-9_]+", rule["expr"]):
            assert name in exposed, (rule["alert"], name)
