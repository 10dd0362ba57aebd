"""Reading standard claims: scopes in every shape identity providers issue them, numeric dates,
audiences and dotted claim paths."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.verify.claims import audiences, claim_at, is_number, parse_scopes

# A scope token (RFC 6749 §3.3): printable ASCII without space, `"` or `\`.
SCOPE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
    min_size=1,
    max_size=12,
)
SCOPES = st.lists(SCOPE, max_size=8)
SEPARATOR = st.text(alphabet=" ", min_size=1, max_size=3)
NOT_A_STRING = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    | st.lists(st.integers(), max_size=2)
)
CLAIM_NAME = st.sampled_from(["permissions", "roles", "authorities", "scopes"])


@st.composite
def space_separated(draw: st.DrawFn, scopes: list[str]) -> str:
    """The scopes joined by runs of spaces, with spaces maybe before and after."""
    text = draw(st.text(alphabet=" ", max_size=2))
    for scope in scopes:
        text += scope + draw(SEPARATOR)
    return text


@given(st.data(), SCOPES)
def test_a_space_separated_scope_string_is_read_as_the_set_of_its_scopes(
    data: st.DataObject, scopes: list[str]
) -> None:
    text = data.draw(space_separated(scopes))
    assert parse_scopes({"scope": text}) == set(scopes)


@given(SCOPES, st.sampled_from(["scope", "scp"]))
def test_an_array_of_scopes_in_scope_or_scp_is_read_as_its_set(
    scopes: list[str], name: str
) -> None:
    assert parse_scopes({name: scopes}) == set(scopes)


@given(SCOPES, st.lists(NOT_A_STRING, max_size=5), st.randoms())
def test_items_of_a_scope_array_that_are_not_strings_are_ignored(
    scopes: list[str], junk: list[Any], random: Any
) -> None:
    mixed: list[Any] = [*scopes, *junk]
    random.shuffle(mixed)
    assert parse_scopes({"scp": mixed}) == set(scopes)


@given(CLAIM_NAME, SCOPES, SCOPES, SCOPES)
def test_the_configured_claim_is_read_first_and_alone(
    name: str, configured: list[str], scope: list[str], scp: list[str]
) -> None:
    claims = {"scp": scp, "scope": " ".join(scope), name: configured}
    assert parse_scopes(claims, name) == set(configured)


@given(CLAIM_NAME, SCOPES, SCOPES)
def test_without_the_configured_claim_scope_comes_before_scp(
    name: str, scope: list[str], scp: list[str]
) -> None:
    assert parse_scopes({"scope": " ".join(scope), "scp": scp}, name) == set(scope)
    assert parse_scopes({"scp": scp}, name) == set(scp)


@given(CLAIM_NAME, SCOPES)
def test_a_configured_claim_may_be_a_space_separated_string_too(
    name: str, scopes: list[str]
) -> None:
    assert parse_scopes({name: " ".join(scopes), "scope": "other"}, name) == set(scopes)


@given(NOT_A_STRING.filter(lambda v: not isinstance(v, list)), SCOPES)
def test_a_scope_claim_that_is_neither_string_nor_array_is_passed_over(
    junk: Any, scp: list[str]
) -> None:
    assert parse_scopes({"scope": junk, "scp": scp}) == set(scp)


@given(st.dictionaries(st.sampled_from(["sub", "aud", "scopes", "permissions"]), SCOPES))
def test_a_token_without_any_scope_claim_has_no_scopes(claims: dict[str, Any]) -> None:
    assert parse_scopes(claims) == frozenset()


def test_an_empty_scope_string_is_no_scopes_and_hides_an_scp_array() -> None:
    assert parse_scopes({"scope": "", "scp": ["admin"]}) == frozenset()


# -- numeric dates, audiences, claim paths ----------------------------------------------------


@pytest.mark.parametrize("value", [0, 1_800_000_000, 1.5, -1, 2**53])
def test_finite_numbers_are_numeric_dates(value: float) -> None:
    assert is_number(value)


@pytest.mark.parametrize(
    "value",
    [True, False, "1", None, [1], {"t": 1}, float("nan"), float("inf"), -float("inf"), 10**400],
    ids=repr,
)
def test_booleans_strings_non_finite_and_overflowing_values_are_not_numeric_dates(
    value: Any,
) -> None:
    assert not is_number(value)


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({}, ()),
        ({"aud": "a"}, ("a",)),
        ({"aud": ["a", "b"]}, ("a", "b")),
        ({"aud": []}, ()),
        ({"aud": 1}, None),
        ({"aud": ["a", 1]}, None),
        ({"aud": {"a": 1}}, None),
    ],
    ids=repr,
)
def test_aud_is_a_string_or_an_array_of_strings(
    claims: dict[str, Any], expected: tuple[str, ...] | None
) -> None:
    assert audiences(claims) == expected


def test_a_dotted_claim_path_walks_into_objects() -> None:
    claims = {"org": {"tenant": "acme", "flags": {"beta": False}}, "sub": "alice"}
    assert claim_at(claims, "org.tenant") == "acme"
    assert claim_at(claims, "org.flags.beta") is False
    assert claim_at(claims, "sub") == "alice"


@pytest.mark.parametrize("path", ["org.missing", "sub.length", "org.tenant.x", "nothing", "org."])
def test_a_claim_path_that_leads_nowhere_is_none(path: str) -> None:
    assert claim_at({"org": {"tenant": "acme"}, "sub": "alice"}, path) is None
