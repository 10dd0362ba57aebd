"""Authorisation: may a verified token use a route? Issuer, audience, scopes, claim conditions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pipeline.authorize import Authorizer, ClaimRule, Requirement
from gateway.pipeline.decision import Denial, Identity, VerifiedToken

API = "https://api.example.test"
ORDERS = "https://api.example.test/orders"
AUTHORIZER = Authorizer({"corp": (API,), "partner": ()})


def verified(issuer: str = "corp", scopes: str = "", **claims: Any) -> VerifiedToken:
    return VerifiedToken(
        issuer=issuer,
        claims={"sub": "alice", "aud": API, **claims},
        scopes=frozenset(scopes.split()),
    )


def judge(requirement: Requirement, token: VerifiedToken) -> Identity | Denial:
    return AUTHORIZER.authorize(requirement, token)


def reason(requirement: Requirement, token: VerifiedToken) -> str | None:
    result = judge(requirement, token)
    return result.reason if isinstance(result, Denial) else None


# -- issuer and audience ----------------------------------------------------------------------


def test_a_token_meeting_every_condition_becomes_an_identity_with_its_claims() -> None:
    token = verified(scopes="orders:read")
    result = judge(Requirement(scopes=("orders:read",)), token)
    assert isinstance(result, Identity)
    assert (result.issuer, result.subject, result.scopes) == ("corp", "alice", token.scopes)


def test_a_token_of_an_issuer_the_route_does_not_accept_is_wrong_issuer() -> None:
    assert reason(Requirement(issuers=("corp",)), verified("partner")) == "wrong_issuer"


def test_the_issuers_default_audience_applies_when_the_route_names_none() -> None:
    assert reason(Requirement(), verified(aud=API)) is None
    assert reason(Requirement(), verified(aud="https://other.test")) == "wrong_audience"


def test_a_route_audience_replaces_the_issuers_default() -> None:
    route = Requirement(audience=(ORDERS,))
    assert reason(route, verified(aud=ORDERS)) is None
    assert reason(route, verified(aud=API)) == "wrong_audience"


def test_one_matching_audience_of_several_is_enough() -> None:
    route = Requirement(audience=("https://a.test", ORDERS))
    assert reason(route, verified(aud=["https://x.test", ORDERS])) is None
    assert reason(route, verified(aud=["https://x.test", "https://y.test"])) == "wrong_audience"


@pytest.mark.parametrize("aud", [None, [], ""], ids=repr)
def test_a_token_without_audience_is_refused_where_one_is_required(aud: Any) -> None:
    token = VerifiedToken(
        "corp", {"sub": "alice", "aud": aud} if aud is not None else {}, frozenset()
    )
    assert reason(Requirement(), token) == "wrong_audience"


def test_audiences_are_compared_exactly() -> None:
    route = Requirement(audience=(ORDERS,))
    for near_miss in (ORDERS + "/", ORDERS.upper(), "https://api.example.test/orders ", API):
        assert reason(route, verified(aud=near_miss)) == "wrong_audience", near_miss


def test_without_any_audience_configured_no_audience_is_checked() -> None:
    assert reason(Requirement(), verified("partner", aud="https://anything.test")) is None


# -- scopes -----------------------------------------------------------------------------------


def test_every_required_scope_must_be_present() -> None:
    route = Requirement(scopes=("orders:read", "orders:write"))
    assert reason(route, verified(scopes="orders:read orders:write profile")) is None
    result = judge(route, verified(scopes="orders:read"))
    assert isinstance(result, Denial) and result.reason == "insufficient_scope"
    assert result.required_scopes == ("orders:read", "orders:write")


def test_one_of_the_any_scopes_is_enough() -> None:
    route = Requirement(any_scopes=("orders:admin", "orders:support"))
    assert reason(route, verified(scopes="orders:support")) is None
    result = judge(route, verified(scopes="orders:read"))
    assert isinstance(result, Denial) and result.reason == "insufficient_scope"
    assert result.required_scopes == ("orders:admin", "orders:support")


def test_all_of_and_any_of_scopes_must_both_hold() -> None:
    route = Requirement(scopes=("orders:read",), any_scopes=("orders:admin", "orders:support"))
    assert reason(route, verified(scopes="orders:read orders:admin")) is None
    assert reason(route, verified(scopes="orders:admin")) == "insufficient_scope"
    assert reason(route, verified(scopes="orders:read")) == "insufficient_scope"


def test_a_scope_is_matched_whole_never_by_prefix_or_case() -> None:
    route = Requirement(scopes=("orders:read",))
    for near_miss in ("orders", "orders:read:all", "ORDERS:READ", "orders:rea"):
        assert reason(route, verified(scopes=near_miss)) == "insufficient_scope", near_miss


# -- claim conditions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "claims"),
    [
        (ClaimRule("tenant", "acme"), {"tenant": "acme"}),
        (ClaimRule("level", 3), {"level": 3}),
        (ClaimRule("verified", True), {"verified": True}),
        (ClaimRule("verified", False), {"verified": False}),
        (ClaimRule("org.tenant", "acme"), {"org": {"tenant": "acme"}}),
        (ClaimRule("groups", "support", contains=True), {"groups": ["dev", "support"]}),
        (ClaimRule("ids", 7, contains=True), {"ids": [1, 7]}),
    ],
    ids=repr,
)
def test_a_claim_condition_that_holds_lets_the_token_pass(
    rule: ClaimRule, claims: dict[str, Any]
) -> None:
    assert reason(Requirement(claims=(rule,)), verified(**claims)) is None


@pytest.mark.parametrize(
    ("rule", "claims"),
    [
        (ClaimRule("admin", True), {"admin": 1}),
        (ClaimRule("admin", 1), {"admin": True}),
        (ClaimRule("level", 1), {"level": "1"}),
        (ClaimRule("level", "1"), {"level": 1}),
        (ClaimRule("admin", False), {"admin": 0}),
        (ClaimRule("admin", False), {}),
        (ClaimRule("tenant", "acme"), {"tenant": "ACME"}),
        (ClaimRule("tenant", "acme"), {"tenant": ["acme"]}),
        (ClaimRule("org.tenant", "acme"), {"org": "acme"}),
        (ClaimRule("groups", "support", contains=True), {"groups": "support"}),
        (ClaimRule("groups", "support", contains=True), {"groups": "supporters"}),
        (ClaimRule("groups", "support", contains=True), {"groups": ["supporters"]}),
        (ClaimRule("ids", 1, contains=True), {"ids": [True]}),
        (ClaimRule("ids", True, contains=True), {"ids": [1]}),
        (ClaimRule("groups", "support", contains=True), {}),
    ],
    ids=repr,
)
def test_a_claim_condition_is_strict_about_types_and_values(
    rule: ClaimRule, claims: dict[str, Any]
) -> None:
    assert reason(Requirement(claims=(rule,)), verified(**claims)) == "claim_mismatch"


def test_every_claim_condition_must_hold() -> None:
    rules = (ClaimRule("tenant", "acme"), ClaimRule("groups", "support", contains=True))
    assert reason(Requirement(claims=rules), verified(tenant="acme", groups=["support"])) is None
    assert reason(Requirement(claims=rules), verified(tenant="acme", groups=[])) == "claim_mismatch"


SCALAR = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.sampled_from(["", "0", "1", "true", "acme"]),
)


@given(SCALAR, SCALAR)
def test_a_claim_equals_a_rule_value_only_with_the_same_type_and_value(
    expected: Any, actual: Any
) -> None:
    holds = ClaimRule("c", expected).holds({"c": actual})
    assert holds == (type(actual) is type(expected) and actual == expected)


# -- all reasons ------------------------------------------------------------------------------


def test_every_failed_condition_is_reported_in_order_and_the_first_decides() -> None:
    route = Requirement(
        issuers=("partner",),
        audience=(ORDERS,),
        scopes=("orders:read",),
        claims=(ClaimRule("tenant", "acme"),),
    )
    token = verified("corp", aud=API)
    reasons = [d.reason for d in AUTHORIZER.denials(route, token)]
    assert reasons == ["wrong_issuer", "wrong_audience", "insufficient_scope", "claim_mismatch"]
    assert reason(route, token) == "wrong_issuer"


def test_no_denial_description_reveals_the_expected_audience_scope_or_claim_value() -> None:
    route = Requirement(
        issuers=("partner",),
        audience=(ORDERS,),
        scopes=("orders:read",),
        claims=(ClaimRule("tenant", "secret-tenant"),),
    )
    for denial in AUTHORIZER.denials(route, verified("corp", aud=API)):
        for secret in (ORDERS, "partner", "secret-tenant", "tenant", "orders:read"):
            assert secret not in denial.description
