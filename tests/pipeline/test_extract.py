"""Where the bearer token comes from (RFC 6750 §2): the Authorization header, once, only there."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.decision import Denial
from gateway.pipeline.extract import (
    carries_access_token,
    extract_bearer,
    is_b64token,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
LIMIT = 8192


def extract(*authorization: str, in_query: bool = False, limit: int = LIMIT) -> str | Denial:
    return extract_bearer(list(authorization), query_has_token=in_query, max_token_bytes=limit)


def reason(*authorization: str, in_query: bool = False, limit: int = LIMIT) -> str:
    result = extract(*authorization, in_query=in_query, limit=limit)
    assert isinstance(result, Denial), result
    return result.reason


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_matched_in_any_case(scheme: str) -> None:
    assert extract(f"{scheme} {TOKEN}") == TOKEN


def test_spaces_around_the_token_are_not_part_of_it() -> None:
    assert extract(f"  Bearer   {TOKEN}  ") == TOKEN


def test_no_authorization_header_is_a_missing_token() -> None:
    assert reason() == "missing_token"


@pytest.mark.parametrize("value", ["Basic YWxpY2U6c2VjcmV0", "DPoP x", "Token abc", "", TOKEN])
def test_another_scheme_is_a_missing_bearer_token(value: str) -> None:
    assert reason(value) == "missing_token"


def test_two_authorization_headers_are_an_invalid_request() -> None:
    assert reason(f"Bearer {TOKEN}", f"Bearer {TOKEN}") == "invalid_request"


def test_two_authorization_headers_are_an_invalid_request_even_when_one_is_empty() -> None:
    assert reason(f"Bearer {TOKEN}", "") == "invalid_request"


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "bearer    "])
def test_the_bearer_scheme_without_a_token_is_an_invalid_request(value: str) -> None:
    assert reason(value) == "invalid_request"


def test_a_token_in_the_header_and_the_query_or_form_is_an_invalid_request() -> None:
    assert reason(f"Bearer {TOKEN}", in_query=True) == "invalid_request"


def test_a_token_only_in_the_query_or_form_is_an_invalid_request() -> None:
    # Never accepted (SPEC: header only); a 400 says why instead of a bare challenge.
    assert reason(in_query=True) == "invalid_request"


def test_a_query_token_next_to_another_scheme_is_an_invalid_request() -> None:
    assert reason("Basic YWxpY2U6c2VjcmV0", in_query=True) == "invalid_request"


def test_a_token_at_the_limit_is_extracted() -> None:
    exact = "a" * LIMIT
    assert extract(f"Bearer {exact}") == exact


def test_a_token_over_the_limit_is_refused_as_too_long() -> None:
    result = extract(f"Bearer {'a' * (LIMIT + 1)}")
    assert isinstance(result, Denial)
    assert (result.reason, result.description) == ("malformed_token", "the token is too long")


def test_the_length_is_checked_before_the_token_is_parsed() -> None:
    # Garbage that would be malformed is refused for its length first: no parsing of huge input.
    result = extract(f"Bearer {'{' * (LIMIT + 1)}")
    assert isinstance(result, Denial) and result.description == "the token is too long"


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        '{"payload":"x"}',
        "abc=def",
        "abc\x00",
        "ab\rc",
        "ab\ncd",
        "tok\u00e9n",
        "abc,def",
        "a;b",
    ],
    ids=repr,
)
def test_a_token_outside_the_b64token_alphabet_is_malformed(value: str) -> None:
    assert reason(f"Bearer {value}") == "malformed_token"


@pytest.mark.parametrize("value", ["abc=", "abc==", "a-b_c.d~e+f/g"])
def test_every_b64token_character_is_accepted(value: str) -> None:
    assert extract(f"Bearer {value}") == value


# RFC 6750 §2.1's grammar, as written: what the gateway's faster check must agree with.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@given(
    st.text(alphabet=st.sampled_from("aZ09-._~+/=") | st.characters(), max_size=60)
    | st.text(max_size=60)
)
def test_the_b64token_check_agrees_with_the_rfc_grammar(value: str) -> None:
    assert is_b64token(value) == bool(B64TOKEN.fullmatch(value))


@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=200))
def test_any_header_value_gives_a_token_or_a_denial_never_an_error(value: str) -> None:
    result = extract(value)
    assert isinstance(result, str | Denial)
    if isinstance(result, str):
        assert result and " " not in result and len(result) <= LIMIT


@pytest.mark.parametrize(
    "urlencoded",
    [
        "access_token=t",
        "a=1&access_token=t",
        "a=1;access_token=t",
        "access%5Ftoken=t",
        "access.token=t",
        "access+token=t",
        "access_token[]=t",
        "access_token",
    ],
)
def test_every_spelling_a_framework_reads_as_access_token_is_found(urlencoded: str) -> None:
    assert carries_access_token(urlencoded)


@pytest.mark.parametrize(
    "urlencoded", ["", "a=access_token", "access_tokens=t", "my_access_token=t"]
)
def test_other_parameters_are_not_taken_for_a_token(urlencoded: str) -> None:
    assert not carries_access_token(urlencoded)
