"""``gateway demo``: starts with nothing to set up, prints curl commands that really do what
their comments say, and stops cleanly on Ctrl-C (SPEC §2)."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from tests.cli.conftest import command_env

STARTUP_SECONDS = 10
# Loopback only: never through an HTTP(S)_PROXY from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Curl:
    """One printed curl command: its comment, URL and Authorization header, if any."""

    comment: str
    url: str
    authorization: str | None


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output: list[str]
    commands: list[Curl]

    @property
    def config_path(self) -> Path:
        line = next(line for line in self.output if line.strip().startswith("config:"))
        return Path(line.split(":", 1)[1].strip())


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes


def parse_curl(comment: str, line: str) -> Curl:
    words = shlex.split(line)
    assert words[:3] == ["curl", "-s", "-i"], line
    authorization = None
    if words[3] == "-H":
        name, _, value = words[4].partition(": ")
        assert name == "Authorization"
        authorization = value
    return Curl(comment, words[-1], authorization)


def read_guide(process: subprocess.Popen[bytes]) -> tuple[list[str], list[Curl]]:
    """Read stdout until the fifth curl command, within STARTUP_SECONDS. The pipe is read
    unbuffered: a buffered readline would keep lines that select() no longer sees."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output: list[str] = []
    commands: list[Curl] = []
    pending = b""
    deadline = time.monotonic() + STARTUP_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(commands) < 5:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError("no curl commands in time:\n" + "\n".join(output))
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("the demo exited:\n" + "\n".join(output))
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                output.append(line.decode())
                if output[-1].startswith("curl ") and len(commands) < 5:
                    commands.append(parse_curl(output[-2], output[-1]))
    return output, commands


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--port", "0", "--admin-port", "0"],
        cwd=tmp_path,
        env=command_env(PYTHONUNBUFFERED="1"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, commands = read_guide(process)
        yield Demo(process, output, commands)
    finally:
        if process.poll() is None:
            # Ctrl-C, as a user stops it: SIGKILL would leave its temporary folder behind.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        assert process.stdout is not None
        process.stdout.close()


def perform(command: Curl) -> Answer:
    request = urllib.request.Request(command.url)
    if command.authorization is not None:
        request.add_header("Authorization", command.authorization)
    try:
        with OPENER.open(request, timeout=5) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read())


def test_the_demo_prints_the_four_token_cases_and_a_public_one(demo: Demo) -> None:
    comments = [command.comment for command in demo.commands]
    assert [comment[:5] for comment in comments] == ["# 1. ", "# 2. ", "# 3. ", "# 4. ", "# 5. "]
    with_token = [command.authorization is not None for command in demo.commands]
    assert with_token == [True, False, True, True, False]


def test_the_allowed_command_reaches_the_echo_upstream_with_identity_headers(
    demo: Demo,
) -> None:
    answer = perform(demo.commands[0])
    assert answer.status == 200
    echoed = json.loads(answer.body)
    assert echoed["path"] == "/api/orders/42"
    assert echoed["headers"]["X-Auth-Subject"] == "alice"
    assert echoed["headers"]["X-Auth-Client-Id"] == "demo-client"
    assert echoed["headers"]["X-Auth-Scopes"] == "orders:read profile"
    assert "Authorization" not in echoed["headers"]  # the echo never shows the token


def test_the_refusals_are_the_ones_their_comments_announce(demo: Demo) -> None:
    _, no_token, no_scope, expired, _ = (perform(command) for command in demo.commands)
    assert no_token.status == 401
    assert no_token.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert no_scope.status == 403
    assert 'error="insufficient_scope"' in no_scope.headers["WWW-Authenticate"]
    assert 'scope="orders:read"' in no_scope.headers["WWW-Authenticate"]
    assert expired.status == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert json.loads(expired.body)["error"] == "invalid_token"


def test_the_public_command_needs_no_token(demo: Demo) -> None:
    answer = perform(demo.commands[4])
    assert answer.status == 200
    assert json.loads(answer.body)["path"] == "/status"


def test_ctrl_c_stops_the_demo_with_exit_0_and_removes_its_files(demo: Demo) -> None:
    assert demo.config_path.is_file()
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=5) == 0
    assert not demo.config_path.exists()
    assert not demo.config_path.parent.exists()


def test_the_demo_is_ready_when_it_prints_the_commands(demo: Demo) -> None:
    admin = next(line for line in demo.output if line.strip().startswith("admin:"))
    metrics_url = admin.split()[1]
    ready = metrics_url.removesuffix("/metrics") + "/readyz"
    with OPENER.open(ready, timeout=5) as response:
        assert response.status == 200
