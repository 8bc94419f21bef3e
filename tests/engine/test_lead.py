"""The first shard of an iteration fetches its first bytes before the rest of the window starts.

A store of our own (a registered scheme over a local directory, every ranged read slowed and
logged) shows the order of requests as the engine issues them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cache_worker import RangedLocalStore
from datasets import check_sample, write_mds

from astream import StreamingDataset
from astream.storage import RetryConfig, TransferConfig, register_store

SCHEME = "slowlog"
LOG: list[tuple[str, str, int, float]] = []  # (event, key, start, time)
LOCK = threading.Lock()


class SlowLoggingStore(RangedLocalStore):
    """A local directory read the way remote stores are: small ranged requests, each slow."""

    def __init__(
        self, url: str, *, retry: RetryConfig | None = None, transfer: TransferConfig | None = None
    ) -> None:
        del transfer  # small parts and a small head, whatever the dataset asks
        parts = TransferConfig(part_size=8192, concurrency=2, head_part_size=2048)
        super().__init__(url.removeprefix(f"{SCHEME}://"), retry=retry, transfer=parts)

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        with LOCK:
            LOG.append(("begin", key, start, time.monotonic()))
        await asyncio.sleep(0.02)
        await super().fetch_range_into(key, start, end, fd)
        with LOCK:
            LOG.append(("end", key, start, time.monotonic()))


@pytest.fixture
def slow_remote(tmp_path: Path) -> Iterator[str]:
    register_store(SCHEME, SlowLoggingStore, replace=True)
    # Uncompressed shards of about 40 KB: samples are readable as their ranges land.
    write_mds(tmp_path / "remote", 600, size_limit=40_000, payload=300)
    LOG.clear()
    yield f"{SCHEME}://{tmp_path / 'remote'}"
    LOG.clear()


def test_first_shard_head_goes_alone(slow_remote: str, tmp_path: Path) -> None:
    dataset = StreamingDataset(remote=slow_remote, local=tmp_path / "cache", batch_size=1)
    it = iter(dataset)
    first = next(it)
    assert check_sample(first, payload=300) == 0
    rest = [check_sample(s, payload=300) for s in it]
    assert rest == list(range(1, 600))
    with LOCK:
        log = list(LOG)
    shards = [key for event, key, _, _ in log if key.startswith("shard.")]
    assert len(set(shards)) >= 3, "the dataset should span several shards"
    lead = log[0]
    assert lead[:3] == ("begin", "shard.00000.mds", 0)
    head_end = next(t for event, key, start, t in log if (event, key, start) == ("end", lead[1], 0))
    others = [t for event, key, _, t in log if event == "begin" and key != lead[1]]
    assert others, "other shards were downloaded too"
    # Nothing else started before the lead shard's first bytes were on disk.
    assert min(others) >= head_end
