"""SIGKILL at the worst moments leaves nothing that blocks or corrupts the next run of the cache.

Each test runs the cache in a child process (``cache_worker.py``), waits for the child to say it
holds a lock, kills it with SIGKILL (no handler, no finally, no atexit runs) and then uses the
cache from this process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_worker import (
    CountingStore,
    downloads,
    shard_bytes,
    temp_files,
    write_dataset,
)

from astream.engine.cache import ShardCache
from astream.errors import CacheError
from astream.format import ShardInfo

WORKER = Path(__file__).with_name("cache_worker.py")
SIZE = 64 * 1024


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:  # a failed test must not leave a child behind
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def start(
    procs: list[subprocess.Popen[str]], mode: str, remote: Path, local: Path, shard: int
) -> subprocess.Popen[str]:
    """Run a cache_worker mode and return once it printed that it holds its lock."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(remote), str(local), str(shard)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the test's timeout bounds this wait
    assert line.strip() in ("started", "pinned"), f"child said {line!r}, exit {proc.poll()}"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


async def one_of_two_cached(
    tmp_path: Path,
) -> tuple[Path, Path, ShardCache, CountingStore, tuple[ShardInfo, ...]]:
    """Two shards in a remote; a cache whose limit holds one, holding shard 0."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    shards = write_dataset(remote, [SIZE] * 2)
    cache = ShardCache(local, limit=SIZE + 1024)  # one shard, its stamp and lock files
    store = CountingStore(remote, tmp_path / "downloads.log")
    await cache.fetch(store, shards[0])
    return remote, local, cache, store, shards


@pytest.mark.anyio
@pytest.mark.timeout(30)
@pytest.mark.parametrize("compression", [None, "zstd"])
async def test_killed_mid_download_the_next_fetch_completes(
    tmp_path: Path, children: list[subprocess.Popen[str]], compression: str | None
) -> None:
    remote, local, log = tmp_path / "remote", tmp_path / "local", tmp_path / "downloads.log"
    shards = write_dataset(remote, [SIZE], compression=compression)
    cache = ShardCache(local, limit="1mb")

    kill(start(children, "fetch-slow", remote, local, 0))
    # Killed with the shard's lock held and part of it written to a temporary file.
    assert len(temp_files(local)) == 1
    assert not cache.is_ready(shards[0])
    assert cache.shard_usage() == 0

    path = await cache.fetch(CountingStore(remote, log), shards[0], validate_hash="sha1")
    assert path.read_bytes() == shard_bytes(0, SIZE)
    assert downloads(log) == {(shards[0].zip or shards[0].raw).basename: 1}
    assert temp_files(local) == []
    assert cache.shard_usage() == SIZE


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_pin_held_by_another_process_blocks_eviction_until_it_is_killed(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    remote, local, cache, store, shards = await one_of_two_cached(tmp_path)

    child = start(children, "pin", remote, local, 0)
    with pytest.raises(CacheError, match=r"cache_limit=66560 bytes, 65[0-9]{3} bytes in use"):
        await cache.fetch(store, shards[1])
    with pytest.raises(CacheError, match="pinned"):
        cache.evict(1024)
    assert cache.is_ready(shards[0])

    kill(child)
    path = await cache.fetch(store, shards[1])
    assert path.read_bytes() == shard_bytes(1, SIZE)
    assert not cache.is_ready(shards[0])
    assert cache.shard_usage() == SIZE
    assert cache.stats().evictions == 1


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_pin_released_normally_allows_eviction(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    remote, local, cache, store, shards = await one_of_two_cached(tmp_path)

    child = start(children, "pin", remote, local, 0)
    assert child.stdin is not None
    child.stdin.close()  # the child leaves its `with cache.pin(...)` and exits
    assert child.wait() == 0
    await cache.fetch(store, shards[1])
    assert [cache.is_ready(s) for s in shards] == [False, True]
