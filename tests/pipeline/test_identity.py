"""What the upstream learns about the caller: spoofed identity headers stripped, real ones set."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.decision import Identity
from gateway.pipeline.identity import HeaderStripper, header_key, identity_headers

DEFAULT_MAP = {
    "X-Auth-Subject": "sub",
    "X-Auth-Client-Id": "client_id",
    "X-Auth-Scopes": "scope",
    "X-Auth-Issuer": "iss",
}
STRIPPER = HeaderStripper.of(["X-Auth-"], [*DEFAULT_MAP, "X-Tenant", "Remote-User"])


def identity(scopes: frozenset[str] = frozenset(), **claims: Any) -> Identity:
    return Identity(issuer="corp", claims=claims, scopes=scopes)


def headers_of(mapping: dict[str, str], **claims: Any) -> dict[str, str]:
    return dict(identity_headers(identity(**claims), mapping))


# -- stripping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "X-Auth-Subject",
        "x-auth-subject",
        "X-AUTH-SUBJECT",
        "X_Auth_Subject",
        "x_auth-subject",
        "X-Auth-Anything",
        "X-AUTH-ROLES",
        "X_AUTH_",
        "X-Tenant",
        "x_tenant",
        "REMOTE_USER",
        "remote-user",
    ],
)
def test_identity_headers_are_recognised_whatever_the_case_or_underscores(name: str) -> None:
    assert STRIPPER.is_identity_header(name)


@pytest.mark.parametrize(
    "name", ["Authorization", "X-Request-Id", "X-Auth", "X-Authx", "Accept", "X-Tenants", "Auth-X"]
)
def test_other_headers_are_not_identity_headers(name: str) -> None:
    assert not STRIPPER.is_identity_header(name)


def test_header_names_compare_without_case_and_with_underscore_equal_to_hyphen() -> None:
    assert header_key("X_Auth_Subject") == header_key("x-auth-subject") == "x-auth-subject"


@given(st.text(alphabet="xXaAuUtThH-_sSbB", min_size=1, max_size=20))
def test_every_spelling_of_a_stripped_name_is_stripped(name: str) -> None:
    expected = header_key(name).startswith("x-auth-") or header_key(name) in {
        header_key(n) for n in (*DEFAULT_MAP, "X-Tenant", "Remote-User")
    }
    assert STRIPPER.is_identity_header(name) == expected


# -- setting ----------------------------------------------------------------------------------


def test_identity_headers_are_made_from_the_mapped_claims() -> None:
    made = headers_of(
        DEFAULT_MAP, sub="alice", client_id="cli", scope="a b", iss="https://issuer.test"
    )
    assert made == {
        "X-Auth-Subject": "alice",
        "X-Auth-Client-Id": "cli",
        "X-Auth-Scopes": "a b",
        "X-Auth-Issuer": "https://issuer.test",
    }


def test_the_client_id_falls_back_to_azp() -> None:
    assert headers_of({"X-Auth-Client-Id": "client_id"}, azp="spa") == {"X-Auth-Client-Id": "spa"}


def test_client_id_is_preferred_to_azp() -> None:
    made = headers_of({"X-Auth-Client-Id": "client_id"}, client_id="cli", azp="spa")
    assert made == {"X-Auth-Client-Id": "cli"}


def test_scopes_given_as_an_scp_array_fill_the_scope_header() -> None:
    made = identity_headers(identity(frozenset({"b", "a"}), scp=["b", "a"]), {"S": "scope"})
    assert made == [("S", "a b")]


def test_a_list_claim_is_joined_with_one_space() -> None:
    assert headers_of({"X-Groups": "groups"}, groups=["dev", "ops", "qa"]) == {
        "X-Groups": "dev ops qa"
    }


def test_a_nested_claim_is_read_by_its_dotted_path() -> None:
    made = headers_of({"X-Tenant": "org.tenant"}, org={"tenant": "acme", "id": 7})
    assert made == {"X-Tenant": "acme"}


@pytest.mark.parametrize(
    ("value", "text"),
    [(7, "7"), (2.5, "2.5"), (True, "true"), (False, "false"), ([1, "a", True], "1 a true")],
    ids=repr,
)
def test_scalar_claims_are_written_as_json_scalars(value: Any, text: str) -> None:
    assert headers_of({"X-V": "v"}, v=value) == {"X-V": text}


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        [],
        {"nested": "object"},
        [["nested"]],
        ["ok", {"x": 1}],
        "alice\r\nX-Admin: true",
        "alice\nX-Admin: true",
        "alice\rX",
        "alice\x00",
        ["ok", "bad\r\n"],
        "bell\x07",
        "del\x7f",
        " admin",
        "admin ",
        "\tadmin",
        "   ",
        [" admin", "x"],
    ],
    ids=repr,
)
def test_a_claim_with_no_safe_single_header_form_leaves_the_header_absent(value: Any) -> None:
    claims = {} if value is None else {"sub": value}
    assert headers_of({"X-Auth-Subject": "sub"}, **claims) == {}


def test_a_missing_claim_leaves_only_its_header_absent() -> None:
    assert headers_of(DEFAULT_MAP, sub="alice") == {"X-Auth-Subject": "alice"}


@given(st.text(max_size=40) | st.lists(st.text(max_size=8), max_size=4))
def test_no_header_value_is_ever_empty_or_holds_cr_lf_nul_or_edge_whitespace(
    value: str | list[str],
) -> None:
    # Edge whitespace would be dropped by the upstream's parser: " admin" must not become "admin".
    for _, text in identity_headers(identity(sub=value), {"X-Auth-Subject": "sub"}):
        assert text and not any(c in text for c in "\r\n\x00")
        assert text == text.strip(" \t")
