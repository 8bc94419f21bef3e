"""Adaptive downloads: one streaming GET first, range requests beside it only where they pay.

Two aiohttp servers on loopback, shaped like the two kinds of server the adaptive download tells
apart: one that serves each connection at a capped rate (ranges in parallel pay, as on S3 or
s3rver) and one that makes every range not at the start of the object wait, as moto does while
it copies the whole object for each ranged GET (ranges do not pay).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conformance import payload

from astream.storage import TransferConfig
from astream.storage._transfer import _VERDICTS
from astream.storage.http import HTTPStore

pytestmark = pytest.mark.anyio

DATA = payload(4 << 20, seed=21)
PART = 256 << 10
TRANSFER = TransferConfig(part_size=PART, concurrency=4)


def _store(url: str, transfer: TransferConfig = TRANSFER) -> HTTPStore:
    # aiohttp's client writes each chunk as it arrives (the lean client in 1 MiB steps, too
    # coarse to time a 4 MiB object by), so the rates the probe compares are seen finely.
    return HTTPStore(url, transfer=transfer, fast_ranges=False)


def _range(request: web.Request) -> tuple[int, int]:
    first, last = request.headers["Range"].removeprefix("bytes=").split("-")
    return int(first), int(last) + 1


class Shaped:
    """A server of DATA at ``/data.bin``, logging each request's range."""

    def __init__(self, *, ranges_wait: float = 0.0) -> None:
        self.ranges_wait = ranges_wait
        self.requests: list[tuple[int, int]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        start, end = _range(request)
        self.requests.append((start, end))
        if start > 0:
            await asyncio.sleep(self.ranges_wait)
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}",
                "Content-Length": str(end - start),
            },
        )
        await response.prepare(request)
        # Each connection at about 1.6 MB/s: 64 KiB every 40 ms. Sleeping, not the CPU, sets the
        # rate, so the verdict holds on a loaded machine too.
        for at in range(start, end, 64 << 10):
            await response.write(DATA[at : min(at + (64 << 10), end)])
            await asyncio.sleep(0.04)
        await response.write_eof()
        return response


@pytest.fixture
async def runner() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for one in runners:
        await one.cleanup()


async def _start(server: Shaped, runners: list[web.AppRunner]) -> Shaped:
    app = web.Application()
    app.router.add_get("/data.bin", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}"
    return server


async def _download(store: HTTPStore, dest: Path) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    assert await store.download(
        "data.bin", dest, size=len(DATA), on_progress=lambda a, b: seen.append((a, b))
    ) == len(DATA)
    assert await asyncio.to_thread(dest.read_bytes) == DATA
    covered = 0
    for start, end in sorted(seen):
        assert start == covered, "progress covers the file exactly once"
        covered = end
    assert covered == len(DATA)
    return seen


async def test_ranges_join_the_stream_where_they_pay(
    runner: list[web.AppRunner], tmp_path: Path
) -> None:
    server = await _start(Shaped(), runner)
    async with _store(server.url) as store:
        seen = await _download(store, tmp_path / "a.bin")
        first, *ranges = server.requests
        assert first == (0, len(DATA)), "a streaming GET of the whole object goes first"
        assert len(ranges) >= 3, "the probe paid: more ranges joined"
        assert all(end - start <= PART for start, end in ranges)
        assert _VERDICTS[store].pays is True
        # The stream's first bytes are reported at once, before any range lands.
        assert seen[0][0] == 0
        # The next download starts its ranges without probing.
        server.requests.clear()
        await _download(store, tmp_path / "b.bin")
        assert len(server.requests) >= 4


async def test_ranges_that_wait_for_the_server_are_dropped(
    runner: list[web.AppRunner], tmp_path: Path
) -> None:
    # Every range not at the start waits 1 s first (moto copies the whole object for each).
    server = await _start(Shaped(ranges_wait=1.0), runner)
    async with _store(server.url) as store:
        await _download(store, tmp_path / "a.bin")
        assert server.requests[0] == (0, len(DATA))
        assert len(server.requests) == 2, "the stream and one probe range"
        assert _VERDICTS[store].pays is False
        # From then on one GET does it all.
        server.requests.clear()
        await _download(store, tmp_path / "b.bin")
        assert server.requests == [(0, len(DATA))]


async def test_without_adaptive_every_part_is_a_range(
    runner: list[web.AppRunner], tmp_path: Path
) -> None:
    server = await _start(Shaped(), runner)
    parts = TransferConfig(part_size=1 << 20, concurrency=4, adaptive=False, head_part_size=0)
    async with _store(server.url, parts) as store:
        await _download(store, tmp_path / "a.bin")
    assert sorted(server.requests) == [(i << 20, (i + 1) << 20) for i in range(4)]
