"""``gateway check``: the compiled route table on success, every problem with its key path and
line on failure (exit 1), and warnings that do not fail the check (SPEC §2, §3)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from tests.cli.conftest import NOWHERE, GatewayCommand


def write(directory: Path, text: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_prints_the_compiled_route_table_and_exits_0(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command("check", "--config", valid_config.name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "ROUTE", "HOSTS", "PATH", "METHODS", "AUTH", "UPSTREAM"]
    assert lines[1].split() == f"0 status * /status GET public orders -> {NOWHERE}".split()
    assert lines[2].split()[:5] == ["1", "orders-read", "*", "/orders/**", "GET,HEAD"]
    assert "token scopes=orders:read" in lines[2]
    assert lines[3] == "gateway.yaml: ok, 2 routes"


def test_check_called_in_process_returns_0_and_prints_the_table(
    valid_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(valid_config)]) == 0
    out = capsys.readouterr().out
    assert out.index("status") < out.index("orders-read")


def test_check_of_a_broken_file_exits_1_naming_the_key_path_and_the_line(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    write(
        tmp_path,
        f"""\
        upstreams:
          orders:
            url: {NOWHERE}
        routes:
          - name: orders
            match: {{path: /orders}}
            upstream: order
            auth: public
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gateway.yaml:7: error: routes[0].upstream: unknown upstream 'order' (known: orders);"
        " give a name or a URL"
    ]
    assert result.stdout == ""


def test_check_reports_every_error_of_a_file_not_just_the_first(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    write(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: {{path: /a}}
            upstream: {NOWHERE}
            auth: public
          - name: a
            match: {{path: /b}}
            upstream: nowhere
            auth: public
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gateway.yaml:6: error: routes[1].name: route name 'a' is used twice",
        "gateway.yaml:8: error: routes[1].upstream: unknown upstream 'nowhere'"
        " (known: none defined); give a name or a URL",
    ]


def test_a_schema_error_is_reported_with_its_key_path_and_line(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    write(
        tmp_path,
        f"""\
        routes:
          - name: orders
            match: {{path: /orders}}
            upstream: {NOWHERE}
            auth: {{scopes: [orders:read], scope: [x]}}
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith(
        'gateway.yaml:5: error: routes[0].auth.scope: unknown key "scope"'
    )


def test_a_route_shadowed_by_an_earlier_one_is_an_error(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    write(
        tmp_path,
        f"""\
        routes:
          - name: everything
            match: {{path: /orders/**}}
            upstream: {NOWHERE}
            auth: public
          - name: one-order
            match: {{path: "/orders/{{id}}", methods: [GET]}}
            upstream: {NOWHERE}
            auth: public
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gateway.yaml:7: error: routes[1].match: route 'one-order' can never match:"
        " route 'everything' (routes[0]) matches everything it does"
    ]


def test_a_later_route_for_other_methods_is_not_shadowed(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    write(
        tmp_path,
        f"""\
        routes:
          - name: read
            match: {{path: /orders/**, methods: [GET]}}
            upstream: {NOWHERE}
            auth: public
          - name: write
            match: {{path: /orders/**, methods: [GET, POST]}}
            upstream: {NOWHERE}
            auth: public
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 0, result.stderr


def test_a_protected_route_without_an_audience_is_a_warning(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    (tmp_path / "corp.jwks.json").write_text('{"keys": []}')
    write(
        tmp_path,
        f"""\
        issuers:
          corp:
            issuer: https://idp.example.com
            jwks_file: corp.jwks.json
        routes:
          - name: orders
            match: {{path: /orders}}
            upstream: {NOWHERE}
            auth:
              scopes: [orders:read]
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "gateway.yaml:9: warning: routes[0].auth: protected route without an audience:"
        " tokens meant for any API are accepted"
    ]
    assert "orders" in result.stdout


def test_a_public_route_overlapping_a_protected_one_is_a_warning(
    gateway_command: GatewayCommand, tmp_path: Path
) -> None:
    (tmp_path / "corp.jwks.json").write_text('{"keys": []}')
    write(
        tmp_path,
        f"""\
        issuers:
          corp:
            issuer: https://idp.example.com
            jwks_file: corp.jwks.json
            audiences: [https://api.example.test]
        routes:
          - name: public-docs
            match: {{path: "/orders/*/docs"}}
            upstream: {NOWHERE}
            auth: public
          - name: orders
            match: {{path: /orders/**}}
            upstream: {NOWHERE}
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "gateway.yaml:8: warning: routes[0].match.path: public route 'public-docs' overlaps"
        " protected route 'orders'"
    ]


@pytest.mark.parametrize(
    ("source", "key", "line"),
    [
        ("jwks_uri: http://127.0.0.1:8081/jwks", "jwks_uri", 4),
        ("discovery: true", "issuer", 3),
    ],
)
def test_an_issuer_reached_over_plain_http_is_a_warning(
    gateway_command: GatewayCommand, tmp_path: Path, source: str, key: str, line: int
) -> None:
    write(
        tmp_path,
        f"""\
        issuers:
          corp:
            issuer: http://127.0.0.1:8081
            {source}
            audiences: [https://api.example.test]
        routes:
          - name: orders
            match: {{path: /orders}}
            upstream: {NOWHERE}
        """,
    )
    result = gateway_command("check", "--config", "gateway.yaml")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"gateway.yaml:{line}: warning: issuers.corp.{key}: the issuer is reached over plain http"
    ]


def test_a_file_that_cannot_be_read_exits_1(gateway_command: GatewayCommand) -> None:
    result = gateway_command("check", "--config", "missing.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith("missing.yaml: error: (top level): cannot read the file")
