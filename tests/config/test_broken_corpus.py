"""Every file in broken/ holds one mistake, and the gateway names it: line, key path and message.

Each file begins with ``# expect: <text>``; some reported problem, rendered as
``line N: error: key.path: message``, must contain that text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_and_compile
from gateway.config.problems import ConfigError

BROKEN = Path(__file__).parent / "broken"
CORPUS = sorted(BROKEN.glob("*.yaml"))


def problems_for(path: Path) -> list[str]:
    """Every problem `gateway check` reports for the file (load, validate, compile), rendered
    without the file name; [] if it is valid."""
    try:
        load_and_compile(path, environ={})
    except ConfigError as error:
        return [problem.describe(None) for problem in error.problems]
    return []


def expectation_of(path: Path) -> str:
    first_line = path.read_text(encoding="utf-8").partition("\n")[0]
    assert first_line.startswith("# expect: "), f"{path.name} must begin with '# expect: ...'"
    return first_line.removeprefix("# expect: ").strip()


def test_the_corpus_has_at_least_thirty_broken_files() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.stem)
def test_a_broken_file_is_rejected_with_the_expected_problem(path: Path) -> None:
    problems = problems_for(path)
    assert problems, f"{path.name} was accepted"
    expected = expectation_of(path)
    assert any(expected in problem for problem in problems), "\n".join(problems)


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.stem)
def test_a_file_with_one_mistake_gets_exactly_one_error(path: Path) -> None:
    errors = [problem for problem in problems_for(path) if ": error: " in problem]
    assert len(errors) == 1, "\n".join(errors)
