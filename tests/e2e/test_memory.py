"""Bodies stream through the gateway (SPEC §4 "Forwarding": never buffered whole), measured where
it counts: the resident memory of a real ``gateway run`` process moving 100 MB each way."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.process import GatewayProcess, gateway_process
from tests.e2e.wire import http_upstream
from tests.support import write_config

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc/PID/status", allow_module_level=True)

MB = 1024 * 1024
SIZE = 100 * MB
CHUNK = bytes(64 * 1024)
# Generous for allocator noise, far below what holding a fraction of the body would cost.
GROWTH_LIMIT = 20 * MB

MEMORY_CONFIG = """\
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
shutdown_timeout: 2s
limits: {{max_body_bytes: {limit}}}
upstreams:
  bulk: {{url: "{upstream}", timeout: 60s}}
routes:
  - name: bulk
    match: {{path: /bulk/**}}
    upstream: bulk
    auth: public
"""


async def bulk(request: web.BaseRequest) -> web.StreamResponse:
    """Discard an upload, counting it; or send ``?bytes=N`` of zeros, 64 KiB at a time."""
    if request.method == "POST":
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.Response(text=str(received))
    size = int(request.query["bytes"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    sent = 0
    while sent < size:
        piece = CHUNK[: size - sent]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def zeros(size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = CHUNK[: size - sent]
        yield piece
        sent += len(piece)


async def upload(http: aiohttp.ClientSession, url: str, size: int) -> int:
    async with http.post(f"{url}/bulk/up", data=zeros(size)) as response:
        assert response.status == 200
        return int(await response.text())


async def download(http: aiohttp.ClientSession, url: str, size: int) -> int:
    received = 0
    async with http.get(f"{url}/bulk/down?bytes={size}") as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            received += len(chunk)
    return received


@dataclass
class Bulk:
    gateway: GatewayProcess
    http: aiohttp.ClientSession


@pytest.fixture
async def bulk_gateway(tmp_path: Path) -> AsyncIterator[Bulk]:
    async with http_upstream(bulk) as upstream:
        config = write_config(tmp_path, MEMORY_CONFIG, upstream=upstream.url, limit=2 * SIZE)
        async with gateway_process(config, tmp_path / "gateway.log") as gateway:
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                # Warm up: pools, buffers and lazily imported code are not what is measured.
                assert await upload(http, gateway.url, 4 * MB) == 4 * MB
                assert await download(http, gateway.url, 4 * MB) == 4 * MB
                yield Bulk(gateway, http)


@pytest.fixture
def memory_report(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    lines: list[str] = []
    yield lines
    if lines:
        print(f"\n{request.node.name}: " + "; ".join(lines))


async def test_a_100_mb_upload_streams_through_the_gateway_in_bounded_memory(
    bulk_gateway: Bulk, memory_report: list[str]
) -> None:
    rss_before, peak_before = bulk_gateway.gateway.memory()
    assert await upload(bulk_gateway.http, bulk_gateway.gateway.url, SIZE) == SIZE
    rss_after, peak_after = bulk_gateway.gateway.memory()
    memory_report.append(
        f"RSS {rss_before / MB:.1f} -> {rss_after / MB:.1f} MB, "
        f"peak {peak_before / MB:.1f} -> {peak_after / MB:.1f} MB"
    )
    assert peak_after - peak_before < GROWTH_LIMIT
    assert rss_after - rss_before < GROWTH_LIMIT


async def test_a_100_mb_download_streams_through_the_gateway_in_bounded_memory(
    bulk_gateway: Bulk, memory_report: list[str]
) -> None:
    rss_before, peak_before = bulk_gateway.gateway.memory()
    assert await download(bulk_gateway.http, bulk_gateway.gateway.url, SIZE) == SIZE
    rss_after, peak_after = bulk_gateway.gateway.memory()
    memory_report.append(
        f"RSS {rss_before / MB:.1f} -> {rss_after / MB:.1f} MB, "
        f"peak {peak_before / MB:.1f} -> {peak_after / MB:.1f} MB"
    )
    assert peak_after - peak_before < GROWTH_LIMIT
    assert rss_after - rss_before < GROWTH_LIMIT
