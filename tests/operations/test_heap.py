"""A serving process hides what it starts with from the garbage collector, so that collections
do not walk the modules and the configuration again and again, and gives it all back when a
reload makes the old configuration garbage. In-process servers with ``settle_heap=True``, as
``gateway run`` makes them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.config import load_and_compile
from gateway.server import Address, GatewayServer

CONFIG = """\
listen: 127.0.0.1:0
admin: {listen: "127.0.0.1:0"}
shutdown_timeout: 1s
upstreams:
  a: {url: "http://127.0.0.1:9"}
routes:
  - name: api
    match: {path: /api/**}
    upstream: a
    auth: public
"""


class Cycle:
    """An object in a reference cycle: only a collection that sees it can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Everything back in the collector's sight after each test: the test process goes on."""
    yield
    gc.unfreeze()


def server_for(tmp_path: Path, *, settle_heap: bool) -> GatewayServer:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    compiled, _ = load_and_compile(config)
    return GatewayServer(
        compiled,
        public=Address("127.0.0.1", 0),
        admin=Address("127.0.0.1", 0),
        config_path=config,
        settle_heap=settle_heap,
    )


@pytest.fixture
async def settled(tmp_path: Path) -> AsyncIterator[GatewayServer]:
    server = server_for(tmp_path, settle_heap=True)
    try:
        yield server
    finally:
        await server.stop()


async def test_garbage_left_before_the_start_is_collected_at_the_start(
    settled: GatewayServer,
) -> None:
    gc.disable()  # no collection but the one the start makes
    try:
        ref = weakref.ref(Cycle())
        assert ref() is not None
        await settled.start()
        assert ref() is None
    finally:
        gc.enable()


async def start_then_drop(server: GatewayServer) -> weakref.ref[Cycle]:
    """Start ``server`` while a cycle lives, then make the cycle garbage: a reference to it
    that says whether a collection has freed it."""
    alive = Cycle()
    ref = weakref.ref(alive)
    await server.start()
    del alive
    return ref


async def test_what_lives_at_the_start_is_not_walked_by_later_collections(
    settled: GatewayServer,
) -> None:
    ref = await start_then_drop(settled)
    gc.collect()
    assert ref() is not None  # out of the collector's sight: not even seen to be garbage


async def test_a_reload_gives_the_collector_back_what_the_start_hid(
    settled: GatewayServer,
) -> None:
    ref = await start_then_drop(settled)
    assert await settled.reload()
    for _ in range(100):  # the old configuration retires once its requests are done
        if ref() is None:
            break
        await asyncio.sleep(0.05)
    assert ref() is None
    assert gc.get_freeze_count() > 0  # and what is left is hidden again


async def test_a_server_started_without_settling_leaves_the_collector_alone(
    tmp_path: Path,
) -> None:
    server = server_for(tmp_path, settle_heap=False)
    try:
        await server.start()
        assert gc.get_freeze_count() == 0
    finally:
        await server.stop()
