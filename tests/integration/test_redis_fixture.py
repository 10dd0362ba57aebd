"""The test Redis fixture starts a real, isolated ``redis-server``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.redis_fixture import (
    HOST,
    RedisError,
    RedisServer,
    ping,
    resp_command,
    start_redis,
)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private server, for tests that pause, restart or stop it."""
    with start_redis() as server:
        yield server


def test_starts_and_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.pid > 0
    assert redis_server.ping()
    # The raw protocol, byte for byte.
    with socket.create_connection((HOST, redis_server.port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"


def test_no_persistence_and_loopback_only(redis_server: RedisServer) -> None:
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    assert redis_server.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    assert redis_server.command("CONFIG", "GET", "protected-mode") == [b"protected-mode", b"yes"]
    assert redis_server.command("CONFIG", "GET", "dir")[1] == str(redis_server.workdir).encode()


def test_set_get_round_trip(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == redis_server.url
    value = b"\x00binary\r\nsafe\xff"
    assert resp_command(redis_server.port, "SET", "leftover", value) == "OK"
    assert resp_command(redis_server.port, "GET", "leftover") == value
    assert redis_server.command("GET", "missing") is None
    assert redis_server.command("INCR", "counter") == 1
    with pytest.raises(RedisError, match="not an integer"):
        redis_server.command("INCR", "leftover")


def test_redis_url_starts_empty(redis_url: str, redis_server: RedisServer) -> None:
    # test_set_get_round_trip left keys behind; the fixture flushed them.
    assert redis_server.command("DBSIZE") == 0


def test_pause_and_resume(own_redis: RedisServer) -> None:
    own_redis.command("SET", "k", "v")
    own_redis.pause()
    assert own_redis.paused
    assert own_redis.running
    started = time.monotonic()
    assert not own_redis.ping(timeout=0.3)
    assert time.monotonic() - started < 2
    with pytest.raises(TimeoutError):  # connects (the kernel accepts) but never answers
        own_redis.command("GET", "k", timeout=0.3)
    own_redis.resume()
    assert not own_redis.paused
    assert own_redis.ping(timeout=2)
    assert own_redis.command("GET", "k") == b"v"


def test_paused_server_stops(own_redis: RedisServer) -> None:
    own_redis.pause()
    started = time.monotonic()
    own_redis.stop()
    assert time.monotonic() - started < 5
    assert not own_redis.running


def test_stop_frees_the_port(own_redis: RedisServer) -> None:
    port, workdir = own_redis.port, own_redis.workdir
    own_redis.stop()
    assert not own_redis.running
    assert not workdir.exists()
    assert not ping(port, timeout=0.5)
    with pytest.raises(ConnectionRefusedError):
        resp_command(port, "PING", timeout=0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    own_redis.stop()  # idempotent


def test_restart_keeps_the_port(own_redis: RedisServer) -> None:
    port, pid = own_redis.port, own_redis.pid
    own_redis.command("SET", "k", "v")
    own_redis.restart()
    assert own_redis.port == port
    assert own_redis.pid != pid
    assert own_redis.ping()
    assert own_redis.command("GET", "k") is None  # no persistence


@pytest.mark.parametrize("break_it", ["pause", "stop"])
def test_redis_url_recovers_the_shared_server(
    redis_server: RedisServer, request: pytest.FixtureRequest, break_it: str
) -> None:
    port = redis_server.port
    redis_server.command("SET", "k", "v")
    getattr(redis_server, break_it)()
    assert not redis_server.ping(timeout=0.2)
    # A later test's redis_url resumes / restarts it (same port) and flushes it.
    url = request.getfixturevalue("redis_url")
    assert url == f"redis://127.0.0.1:{port}/0"
    assert redis_server.ping()
    assert redis_server.command("DBSIZE") == 0
