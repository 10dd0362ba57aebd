"""``${NAME}`` and ``${NAME:-default}`` substitution: properties over any text and environment."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.config.load import SubstitutionError, expand, substitute

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
values = st.text(max_size=30)
defaults = st.text(max_size=20).filter(lambda text: "}" not in text and "${" not in text)
texts_without_dollar = st.text(max_size=60).filter(lambda text: "$" not in text)


@given(texts_without_dollar, st.dictionaries(names, values))
def test_a_string_without_a_dollar_is_unchanged(text: str, environ: dict[str, str]) -> None:
    assert substitute(text, environ) == text


@given(names, values, texts_without_dollar, texts_without_dollar)
def test_a_set_variable_is_replaced_by_its_value(
    name: str, value: str, before: str, after: str
) -> None:
    assert substitute(f"{before}${{{name}}}{after}", {name: value}) == before + value + after


@given(names, values.filter(bool), defaults)
def test_a_default_is_ignored_when_the_variable_has_a_value(
    name: str, value: str, default: str
) -> None:
    assert substitute(f"${{{name}:-{default}}}", {name: value}) == value


@given(names, defaults, st.dictionaries(names, values))
def test_a_default_is_used_when_the_variable_is_unset(
    name: str, default: str, others: dict[str, str]
) -> None:
    environ = {key: value for key, value in others.items() if key != name}
    assert substitute(f"${{{name}:-{default}}}", environ) == default


@given(names, defaults)
def test_a_default_is_used_when_the_variable_is_empty_as_in_the_shell(
    name: str, default: str
) -> None:
    assert substitute(f"${{{name}:-{default}}}", {name: ""}) == default


@given(names, names, values)
def test_a_substituted_value_is_never_expanded_again(name: str, other: str, value: str) -> None:
    assume(name != other)
    secret = f"{value}${{{other}}}$${{x}}"
    assert substitute(f"${{{name}}}", {name: secret, other: "expanded"}) == secret


@given(st.text(max_size=60), st.dictionaries(names, values))
def test_escaping_every_dollar_brace_gives_the_text_back(
    text: str, environ: dict[str, str]
) -> None:
    assert substitute(text.replace("${", "$${"), environ) == text


@given(names, st.dictionaries(names, values))
def test_an_unset_variable_without_default_is_an_error_naming_it(
    name: str, others: dict[str, str]
) -> None:
    environ = {key: value for key, value in others.items() if key != name}
    with pytest.raises(SubstitutionError, match=f"environment variable {name} is not set"):
        substitute(f"x${{{name}}}y", environ)


@given(names, values)
def test_the_expansion_lists_the_variables_it_used(name: str, value: str) -> None:
    expansion = expand(f"${{{name}}}-${{UNSET_{name}:-d}}", {name: value})
    assert expansion.used == (name,)
    assert expansion.unset == ()


@pytest.mark.parametrize("text", ["${}", "${1X}", "${A B}", "${unclosed", "${A:-${B}}"])
def test_a_dollar_brace_that_is_not_a_reference_is_an_error(text: str) -> None:
    with pytest.raises(SubstitutionError, match="is not a variable reference"):
        substitute(text, {"A": "a", "B": "b"})


def test_a_lone_dollar_is_kept() -> None:
    assert substitute("cost: $5, $$ and $", {}) == "cost: $5, $$ and $"
