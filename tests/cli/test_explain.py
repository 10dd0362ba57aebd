"""``gateway explain METHOD URL``: the route, what it requires and, with a token, the decision
with every reason, without forwarding anything (SPEC §2). Exit 0 on allow, 1 on deny."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.cli.conftest import GatewayCommand, command_env, write_valid_config
from tests.support import TokenIssuer, echo_upstream

URL = "http://api.example.test/orders/42"
EXPLANATION_KEYS = {"route", "requires", "decision", "reasons", "identity_headers"}


def explained(result: Any) -> dict[str, Any]:
    """The one JSON object ``--json`` prints (json.loads refuses anything after it)."""
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    assert set(value) == EXPLANATION_KEYS
    return value


def test_a_protected_route_without_a_token_is_denied_as_missing_token(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command("explain", "--config", valid_config.name, "GET", URL)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "route:    orders-read",
        "requires: auth: token",
        "requires: issuers: corp",
        "requires: audience: https://api.example.test",
        "requires: scopes: orders:read",
        "requires: upstream: orders",
        "decision: deny",
        "reason:   missing_token",
    ]


def test_a_public_route_is_allowed_without_a_token(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command(
        "explain", "--config", valid_config.name, "GET", "http://api.example.test/status", "--json"
    )
    assert result.returncode == 0
    assert explained(result) == {
        "route": "status",
        "requires": {"auth": "public", "upstream": "orders"},
        "decision": "allow",
        "reasons": [],
        "identity_headers": {},
    }


def test_a_valid_token_is_allowed_and_the_identity_headers_are_shown(
    gateway_command: GatewayCommand, valid_config: Path, token_issuer: TokenIssuer
) -> None:
    token = token_issuer.token()
    result = gateway_command("explain", "--config", valid_config.name, "GET", URL, "--token", token)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "decision: allow" in result.stdout.splitlines()
    assert "header:   X-Auth-Subject: alice" in result.stdout.splitlines()
    assert token not in result.stdout + result.stderr


def test_json_prints_exactly_one_object_with_the_identity_headers(
    gateway_command: GatewayCommand, valid_config: Path, token_issuer: TokenIssuer
) -> None:
    result = gateway_command(
        "explain",
        "--config",
        valid_config.name,
        "--json",
        "GET",
        URL,
        "--token",
        token_issuer.token(alg="ES256"),
    )
    assert result.returncode == 0
    assert explained(result) == {
        "route": "orders-read",
        "requires": {
            "auth": "token",
            "issuers": ["corp"],
            "audience": ["https://api.example.test"],
            "scopes": ["orders:read"],
            "upstream": "orders",
        },
        "decision": "allow",
        "reasons": [],
        "identity_headers": {
            "X-Auth-Subject": "alice",
            "X-Auth-Client-Id": "client-1",
            "X-Auth-Scopes": "orders:read profile",
            "X-Auth-Issuer": token_issuer.issuer,
        },
    }


def test_an_expired_token_for_another_audience_lists_both_reasons(
    gateway_command: GatewayCommand, valid_config: Path, token_issuer: TokenIssuer
) -> None:
    token = token_issuer.token(exp=int(time.time()) - 3600, aud="https://other.example.test")
    result = gateway_command(
        "explain", "--config", valid_config.name, "--json", "GET", URL, "--token", token
    )
    assert result.returncode == 1
    explanation = explained(result)
    assert explanation["decision"] == "deny"
    assert explanation["reasons"] == ["expired", "wrong_audience"]
    assert explanation["identity_headers"] == {}


def test_every_authorisation_reason_is_listed_for_a_token_failing_several_rules(
    valid_config: Path,
    token_issuer: TokenIssuer,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    token = token_issuer.token(aud="https://other.example.test", scope="profile")
    argv = ["explain", "--config", str(valid_config), "--json", "GET", URL, "--token", token]
    assert main(argv) == 1
    reasons = json.loads(capsys.readouterr().out)["reasons"]
    assert reasons == ["wrong_audience", "insufficient_scope"]


def test_a_token_with_a_bad_signature_is_denied_with_that_one_reason(
    valid_config: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    forger = TokenIssuer(prefix="k")  # same kids, other keys
    argv = ["explain", "--config", str(valid_config), "--json", "GET", URL]
    assert main([*argv, "--token", forger.token()]) == 1
    assert json.loads(capsys.readouterr().out)["reasons"] == ["invalid_signature"]


def test_the_token_can_be_read_from_a_file(
    gateway_command: GatewayCommand, valid_config: Path, token_issuer: TokenIssuer
) -> None:
    (valid_config.parent / "token.txt").write_text(token_issuer.token() + "\n")
    result = gateway_command(
        "explain", "--config", valid_config.name, "--json", "GET", URL, "--token-file", "token.txt"
    )
    assert result.returncode == 0, result.stdout
    assert explained(result)["identity_headers"]["X-Auth-Subject"] == "alice"


def test_a_token_file_that_cannot_be_read_is_a_usage_error(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command(
        "explain", "--config", valid_config.name, "GET", URL, "--token-file", "missing.txt"
    )
    assert result.returncode == 2
    assert "cannot read missing.txt" in result.stderr


def test_an_encoded_slash_in_the_path_is_denied(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command(
        "explain",
        "--config",
        valid_config.name,
        "--json",
        "GET",
        "http://api.example.test/status%2F..%2Forders/42",
    )
    assert result.returncode == 1
    explanation = explained(result)
    assert explanation["route"] is None
    assert explanation["decision"] == "deny"
    assert explanation["reasons"] == ["invalid_request"]


def test_a_path_no_route_matches_is_denied_without_a_route(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command(
        "explain", "--config", valid_config.name, "GET", "http://api.example.test/admin"
    )
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == ["route:    (none)", "note:     404: no route matches"]


def test_a_method_the_route_does_not_allow_is_denied_with_the_allowed_ones(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command("explain", "--config", valid_config.name, "DELETE", URL)
    assert result.returncode == 1
    assert "note:     405: allowed: GET, HEAD" in result.stdout.splitlines()


def test_user_info_in_the_url_is_not_taken_for_the_host(
    gateway_command: GatewayCommand, tmp_path: Path, token_issuer: TokenIssuer
) -> None:
    config = write_valid_config(tmp_path, token_issuer)
    text = config.read_text().replace(
        "{path: /status,", "{hosts: [api.example.test], path: /status,"
    )
    config.write_text(text)
    result = gateway_command(
        "explain", "--config", config.name, "GET", "http://someone@api.example.test:8443/status"
    )
    assert result.returncode == 0, result.stdout


async def test_explain_never_forwards_anything(tmp_path: Path, token_issuer: TokenIssuer) -> None:
    async with echo_upstream() as upstream:
        config = write_valid_config(tmp_path, token_issuer, upstream=upstream.url)
        for path in ("/status", "/orders/42"):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "explain",
                "--config",
                str(config),
                "GET",
                f"{upstream.url}{path}",
                "--token",
                token_issuer.token(),
                env=command_env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, _ = await asyncio.wait_for(process.communicate(), 10)
            assert process.returncode == 0, stdout
            assert b"decision: allow" in stdout
        assert upstream.received == []


def test_a_token_also_in_the_query_is_refused_as_the_proxy_refuses_it(
    gateway_command: GatewayCommand, valid_config: Path, token_issuer: TokenIssuer
) -> None:
    url = f"{URL}?access_token=x"
    result = gateway_command(
        "explain", "--config", valid_config.name, "--json", "GET", url,
        "--token", token_issuer.token(),
    )  # fmt: skip
    assert result.returncode == 1
    assert explained(result)["reasons"] == ["invalid_request"]
