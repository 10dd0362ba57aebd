"""The README's "Observing the gateway" is what operators read: it must name every metric and
every deny reason, with what to do about it."""

from __future__ import annotations

from pathlib import Path

from gateway.pipeline.decision import REASONS
from tests.observe.metrics_text import exposed_names
from tests.observe.traffic import Scrapes

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Observing the gateway\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_readme_explains_every_deny_reason_in_a_row_of_its_own() -> None:
    rows = [line for line in section().splitlines() if line.startswith("| `")]
    for reason in REASONS:
        (row,) = [r for r in rows if r.startswith(f"| `{reason}` |")]
        assert len([cell for cell in row.split("|") if cell.strip()]) == 4, row


def test_the_readme_names_every_metric_the_gateway_exposes(scrapes: Scrapes) -> None:
    text = section()
    for name in exposed_names(scrapes.after):
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        assert f"`{base}`" in text, base
