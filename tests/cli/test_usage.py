"""The command line itself (SPEC §2): where the configuration comes from, and exit code 2 for
every usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import EXIT_USAGE, main
from tests.cli.conftest import GatewayCommand


def test_gateway_config_replaces_the_config_option(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command("check", env={"GATEWAY_CONFIG": valid_config.name})
    assert result.returncode == 0, result.stderr
    assert "orders-read" in result.stdout


def test_the_config_option_wins_over_gateway_config(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    (valid_config.parent / "other.yaml").write_text("routes: []\n")
    result = gateway_command(
        "check", "--config", valid_config.name, env={"GATEWAY_CONFIG": "other.yaml"}
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_command_without_a_configuration_is_a_usage_error(
    gateway_command: GatewayCommand, command: str
) -> None:
    result = gateway_command(command)
    assert result.returncode == 2
    assert "--config (or GATEWAY_CONFIG) is required" in result.stderr
    assert result.stdout == ""


def test_explain_without_a_configuration_is_a_usage_error(
    gateway_command: GatewayCommand,
) -> None:
    result = gateway_command("explain", "GET", "http://api.example.test/orders/1")
    assert result.returncode == 2


def test_an_unknown_command_is_a_usage_error(gateway_command: GatewayCommand) -> None:
    result = gateway_command("serve")
    assert result.returncode == 2
    assert "invalid choice: 'serve'" in result.stderr


def test_an_unknown_option_is_a_usage_error(
    gateway_command: GatewayCommand, valid_config: Path
) -> None:
    result = gateway_command("check", "--config", valid_config.name, "--strict")
    assert result.returncode == 2
    assert "unrecognized arguments: --strict" in result.stderr


def test_no_command_at_all_is_a_usage_error(gateway_command: GatewayCommand) -> None:
    assert gateway_command().returncode == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "--config", "gateway.yaml", "GET"],  # no URL
        ["explain", "--config", "gateway.yaml", "GET", "/x", "--token", "a", "--token-file", "f"],
        ["run", "--config", "gateway.yaml", "--workers", "many"],
        ["run", "--config", "gateway.yaml", "--workers", "0"],
        ["run", "--config", "gateway.yaml", "--log-format", "xml"],
        ["demo", "--port", "eighty"],
    ],
    ids=[
        "explain-without-url",
        "two-token-sources",
        "workers-word",
        "workers-zero",
        "log-format",
        "demo-port",
    ],
)
def test_malformed_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for command in ("run", "check", "explain", "demo", "schema"):
        assert command in help_text
