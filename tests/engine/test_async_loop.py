"""``async for`` never blocks the caller's loop, on asyncio and on trio (issue 11).

A 5 ms ticker runs beside the construction of a dataset and one shuffled epoch streamed over a
real HTTP server on loopback. Two checks: the engine's blocking work (index loading, shard pins
and opens, waits for downloads) never ran on the loop's thread, and no tick was late by more
than a second (gross blocking only: a threshold no busy machine reaches by itself).
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import astream.engine.prefetch as prefetch
from astream import Prefetcher, StreamingDataset
from astream.plan import World
from tests.engine.datasets import check_sample, write_mds
from tests.storage.conftest import HTTPFiles

N = 1200
TICK = 0.005
GROSS = 1.0


@pytest.fixture(scope="module")
def served(http_files: HTTPFiles, tmp_path_factory: pytest.TempPathFactory) -> str:
    src = write_mds(tmp_path_factory.mktemp("ticker"), N, size_limit=64 << 10, payload=1000)
    name = uuid.uuid4().hex[:12]
    shutil.copytree(src, http_files.root / name)
    return f"{http_files.url}/{name}"


@pytest.fixture
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(what, thread id) of each blocking engine call: the index load and shard opens."""
    calls: list[tuple[str, int]] = []
    real_open = prefetch._open_cached
    real_load = StreamingDataset._load

    def open_cached(*args: Any) -> Any:
        calls.append(("open", threading.get_ident()))
        return real_open(*args)

    def load(self: StreamingDataset) -> None:
        calls.append(("load", threading.get_ident()))
        real_load(self)

    monkeypatch.setattr(prefetch, "_open_cached", open_cached)
    monkeypatch.setattr(StreamingDataset, "_load", load)
    return calls


async def _epoch_beside_a_ticker(url: str, local: Path) -> tuple[list[int], list[int], float]:
    lateness: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        due = time.monotonic() + TICK
        while not done.is_set():
            await anyio.sleep(max(0.0, due - time.monotonic()))
            lateness.append(max(0.0, time.monotonic() - due))
            due = max(due + TICK, time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        dataset = StreamingDataset(remote=url, local=local, shuffle=True, batch_size=8)
        got = [check_sample(s, payload=1000) async for s in dataset]
        # Prefetcher's async path is the same driver; stop it early (closes in a thread).
        async for sample in Prefetcher(dataset, list(range(N - 1, -1, -7))):
            assert check_sample(sample, payload=1000) == N - 1
            break
        done.set()
    expected = [int(i) for i in dataset.worker_sample_ids(World(), 0, 0) if i >= 0]
    return got, expected, max(lateness)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_epoch_never_blocks_the_loop(
    served: str, tmp_path: Path, backend: str, blocking_calls: list[tuple[str, int]]
) -> None:
    loop_thread: list[int] = []

    async def main() -> tuple[list[int], list[int], float]:
        loop_thread.append(threading.get_ident())
        return await _epoch_beside_a_ticker(served, tmp_path / "cache")

    got, expected, worst = anyio.run(main, backend=backend)
    assert got == expected and sorted(got) == list(range(N))
    kinds = {what for what, _ in blocking_calls}
    assert kinds == {"load", "open"}, blocking_calls
    on_loop = [what for what, thread in blocking_calls if thread == loop_thread[0]]
    assert on_loop == [], f"ran on the caller's loop: {on_loop}"
    assert worst < GROSS, f"the loop was blocked for {worst:.3f} s at once"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_async_driver_hands_over_items_errors_and_closes(backend: str) -> None:
    closed = threading.Event()
    threads: set[int] = set()

    def numbers() -> Iterator[int]:
        try:
            for i in range(1000):
                threads.add(threading.get_ident())
                yield i
            raise KeyError("after the items")
        finally:
            closed.set()

    async def main() -> None:
        got: list[int] = []
        with pytest.raises(KeyError):
            async for i in prefetch.aiterate(numbers):
                got.append(i)  # noqa: PERF401 - kept when the error comes
        assert got == list(range(1000)) and closed.is_set()
        assert threading.get_ident() not in threads
        closed.clear()
        iterator = prefetch.aiterate(numbers)
        async for i in iterator:
            if i == 40:
                break
        await iterator.aclose()
        assert closed.is_set()
        # Dropped without aclose(): closed in a thread of its own when collected.
        closed.clear()
        dropped = prefetch.aiterate(numbers)
        assert await dropped.__anext__() == 0
        del dropped
        gc.collect()
        assert closed.wait(30)

    anyio.run(main, backend=backend)


_IMPORTS_ON_THE_LOOP = """
import sys, threading
import {lib}
from astream import StreamingDataset  # a program imports at its top, outside the loop

loop_thread, imported = [], []


def audit(event, args):
    if event == "import" and loop_thread and threading.get_ident() == loop_thread[0]:
        imported.append(args[0])


sys.addaudithook(audit)


async def main():
    loop_thread.append(threading.get_ident())
    dataset = StreamingDataset(remote=sys.argv[1], local=sys.argv[2], shuffle=True, batch_size=8)
    count = 0
    async for _ in dataset:
        count += 1
    loop_thread.clear()
    return count


print({run}, sorted(set(imported)))
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_nothing_is_imported_on_the_loop(served: str, tmp_path: Path, backend: str) -> None:
    # An import on the loop's thread stalls every task for as long as it takes (anyio's
    # backend module: ~25 ms on its first worker thread). A fresh interpreter, as a program,
    # its loop started by asyncio or trio itself (anyio.run would load anyio's backend first).
    run = "asyncio.run(main())" if backend == "asyncio" else "trio.run(main)"
    script = _IMPORTS_ON_THE_LOOP.format(lib=backend, run=run)
    out = (
        subprocess.run(
            [sys.executable, "-c", script, served, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        .stdout.strip()
        .split(maxsplit=1)
    )
    assert out == [str(N), "[]"], out
