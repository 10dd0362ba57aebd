"""A real Redis server (Debian's ``redis-server``) for integration tests.

``start_redis()`` launches ``redis-server`` on a free loopback port with
persistence off and its working directory in a fresh temporary directory (so it
never writes into the repository), waits until it answers ``PING`` and returns a
:class:`RedisServer` handle. The handle can pause the process (SIGSTOP, to
simulate a hung Redis that accepts connections but never answers), resume it,
restart it on the same port, and stop it.

Everything here is synchronous and uses only the standard library: commands go
over a raw socket in RESP (:func:`resp_command`), so the tests of this fixture
do not depend on the Redis client the gateway uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 5


class RedisError(RuntimeError):
    """The test Redis could not be started, or answered with an error reply."""


def redis_server_executable() -> str | None:
    return shutil.which("redis-server")


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _encode_command(args: tuple[str | bytes | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_line(stream: Any) -> bytes:
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a Redis reply")
    return line[:-2]


def _read_reply(stream: Any) -> Any:
    line = _read_line(stream)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data: bytes = stream.read(length + 2)
        if len(data) != length + 2:
            raise ConnectionError("connection closed in the middle of a Redis reply")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise RedisError(f"unexpected Redis reply {line!r}")


def resp_command(
    port: int, *args: str | bytes | int, host: str = HOST, timeout: float = 2.0
) -> Any:
    """Send one command over a fresh connection and return the decoded reply.

    Simple strings come back as ``str``, bulk strings as ``bytes`` (``None`` for a
    nil reply), integers as ``int``, arrays as lists. An error reply raises
    :class:`RedisError`; no answer within ``timeout`` raises :class:`TimeoutError`
    (``socket.timeout``), a closed port :class:`ConnectionRefusedError`.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode_command(args))
        with sock.makefile("rb") as stream:
            reply = _read_reply(stream)
    if isinstance(reply, RedisError):
        raise reply
    return reply


def ping(port: int, *, host: str = HOST, timeout: float = 1.0) -> bool:
    """Whether a Redis on ``port`` answers ``PING`` with ``+PONG`` within ``timeout``."""
    try:
        return bool(resp_command(port, "PING", host=host, timeout=timeout) == "PONG")
    except (OSError, RedisError):
        return False


class RedisServer:
    """Handle on a running ``redis-server`` process (see :func:`start_redis`)."""

    def __init__(self, executable: str, port: int, workdir: Path) -> None:
        self.executable = executable
        self.host: str = HOST
        self.port: int = port
        self.url: str = f"redis://{HOST}:{port}/0"
        self.workdir = workdir
        self.log_path = workdir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- process control ---------------------------------------------------------------------

    def _spawn(self, timeout: float) -> None:
        """Start ``redis-server`` on :attr:`port` and wait until it answers PING."""
        options = {
            "port": str(self.port),
            "bind": HOST,
            "protected-mode": "yes",
            "save": "",
            "appendonly": "no",
            "dir": str(self.workdir),
            "daemonize": "no",
            "loglevel": "notice",
        }
        self.workdir.mkdir(parents=True, exist_ok=True)  # stop() removes it
        argv = [self.executable]
        for name, value in options.items():
            argv += [f"--{name}", value]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._paused = False
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RedisError(
                    f"redis-server exited with code {code} before answering PING "
                    f"on port {self.port}\n{self.log_tail()}"
                )
            if ping(self.port, timeout=0.5):
                return
            if time.monotonic() >= deadline:
                self._terminate(5.0)
                raise RedisError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{timeout:.0f}s\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:  # a stopped process acts on SIGTERM only once continued
                    os.kill(process.pid, signal.SIGCONT)
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=timeout)
        self._paused = False

    @property
    def pid(self) -> int:
        """PID of the current ``redis-server`` process (it changes on :meth:`restart`)."""
        if self._process is None:
            raise RedisError("redis-server is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused process counts as running)."""
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    def pause(self) -> None:
        """SIGSTOP the server: connections are still accepted, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; it then answers what it had queued."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float = 10) -> None:
        """Stop the server and start a fresh one on the same port (all data is lost)."""
        self._terminate(5.0)
        self._spawn(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory. Idempotent."""
        self._terminate(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- commands ----------------------------------------------------------------------------

    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> Any:
        """Run one command (raw RESP over a new connection); see :func:`resp_command`."""
        return resp_command(self.port, *args, timeout=timeout)

    def ping(self, timeout: float = 1.0) -> bool:
        return ping(self.port, timeout=timeout)

    def flushall(self) -> None:
        self.command("FLUSHALL")

    # -- misc --------------------------------------------------------------------------------

    def log_tail(self, limit: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._process.pid if self._process is not None else None
        return f"RedisServer(url={self.url!r}, pid={pid})"


def start_redis(timeout: float = 10, *, executable: str | None = None) -> RedisServer:
    """Start ``redis-server`` on a free loopback port; wait (at most ``timeout`` s) for PING.

    No persistence (``--save ""``, ``--appendonly no``), protected mode on, bound
    to 127.0.0.1 only, working directory and log in a new temporary directory
    that :meth:`RedisServer.stop` removes.
    """
    executable = executable or redis_server_executable()
    if executable is None:
        raise RedisError(
            "`redis-server` is not on PATH; the integration tests need it "
            "(Debian/Ubuntu: apt-get install redis-server)"
        )
    last_error: RedisError | None = None
    for _ in range(_PORT_ATTEMPTS):  # another process may grab the free port first
        server = RedisServer(executable, free_port(), Path(tempfile.mkdtemp(prefix="test-redis-")))
        try:
            server._spawn(timeout)
        except RedisError as exc:
            server.stop()
            last_error = exc
            if "Address already in use" not in str(exc):
                raise
            continue
        except BaseException:
            server.stop()
            raise
        return server
    assert last_error is not None
    raise last_error
