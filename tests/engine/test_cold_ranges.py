"""A shuffled cold epoch's first samples come by range reads while whole shards download.

Over a real HTTP server (the aiohttp file server on loopback) the samples come out right and in
the plan's order, the first by range reads; a store that logs every request (shared by two
DataLoader worker processes) shows that each shard is still downloaded once per node; with
``validate_hash`` or compressed shards, no sample comes by range reads.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_worker import RangedLocalStore
from datasets import check_sample, write_mds

from astream import StreamingDataLoader, StreamingDataset
from astream.engine import ranges
from astream.engine.ranges import RANGE_LANE_JUDGE, RANGE_LEADING, RANGE_START
from astream.plan import World
from astream.storage import RetryConfig, TransferConfig, register_store
from astream.storage._transfer import write_part
from tests.servers.http_files import HTTPFiles

N = 1200
PAYLOAD = 300
SCHEME = "rangelog"


def _ids(samples: Any) -> list[int]:
    return [check_sample(s, payload=PAYLOAD) for s in samples]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # About 24 uncompressed shards of 50 samples: a shuffled stretch spans most of them.
    return write_mds(tmp_path_factory.mktemp("src") / "d", N, size_limit=16_000, payload=PAYLOAD)


def _serve(http_files: HTTPFiles, src: Path) -> str:
    name = uuid.uuid4().hex[:12]
    shutil.copytree(src, http_files.root / name)
    return f"{http_files.url}/{name}"


def test_a_shuffled_cold_epoch_starts_with_range_reads(
    http_files: HTTPFiles, source: Path, tmp_path: Path
) -> None:
    shards = len(list(source.glob("shard.*")))
    dataset = StreamingDataset(
        remote=_serve(http_files, source),
        local=tmp_path / "cache",
        shuffle=True,
        batch_size=8,
        cold_range_reads=True,
    )
    expected = dataset.worker_sample_ids(World(), 0, 0)
    assert _ids(dataset) == [int(i) for i in expected if i >= 0]
    stats = dataset.statistics()
    assert stats.range_samples >= 1, "the first samples came by range reads"
    assert stats.range_reads >= stats.range_samples
    assert stats.cache_misses == shards, "every shard was still downloaded, once"
    # A warm epoch reads local shards only.
    before = dataset.statistics().range_reads
    assert sorted(_ids(dataset)) == list(range(N))
    assert dataset.statistics().range_reads == before


def test_an_unshuffled_cold_epoch_reads_its_shards_as_they_land(
    http_files: HTTPFiles, source: Path, tmp_path: Path
) -> None:
    dataset = StreamingDataset(
        remote=_serve(http_files, source), local=tmp_path / "cache", cold_range_reads=True
    )
    assert _ids(dataset) == list(range(N))
    assert dataset.statistics().range_reads == 0


def test_range_reads_are_on_by_default_and_can_be_turned_off(
    http_files: HTTPFiles, source: Path, tmp_path: Path
) -> None:
    url = _serve(http_files, source)
    dataset = StreamingDataset(remote=url, local=tmp_path / "on", shuffle=True, batch_size=8)
    assert sorted(_ids(dataset)) == list(range(N))
    assert dataset.statistics().range_samples >= 1
    dataset = StreamingDataset(
        remote=url, local=tmp_path / "off", shuffle=True, batch_size=8, cold_range_reads=False
    )
    assert sorted(_ids(dataset)) == list(range(N))
    assert dataset.statistics().range_reads == 0


class LoggingStore(RangedLocalStore):
    """A local directory read as a remote: logs each download and each sample range read."""

    def __init__(
        self, url: str, *, retry: RetryConfig | None = None, transfer: TransferConfig | None = None
    ) -> None:
        del transfer
        parts = TransferConfig(part_size=8192, concurrency=2)
        super().__init__(url.removeprefix(f"{SCHEME}://"), retry=retry, transfer=parts)

    def _log(self, line: str) -> None:
        fd = os.open(os.environ["ASTREAM_TEST_RANGE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)

    def _note(self, key: str) -> None:
        self._log(f"download {key}")

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        self._log(f"range {key}")
        return await super().read_range(key, start, end)

    async def fetch_range_into(self, key: str, start: int, end: int, fd: int) -> None:
        # A part of a download: not a sample range read.
        await write_part(fd, await RangedLocalStore.read_range(self, key, start, end), start)


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    monkeypatch.setenv("ASTREAM_TEST_RANGE_LOG", str(log))
    register_store(SCHEME, LoggingStore, replace=True)
    yield log


def test_the_first_batch_comes_by_range_before_any_shard_downloads(
    logged: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lane: whole-shard downloads wait until every read of the first RANGE_LEADING
    # positions is in, instead of sharing the server with them. (However busy the machine, the
    # lane is not judged too slow here: the rate rule has a test of its own.)
    monkeypatch.setattr(ranges, "RANGE_LANE_MIN_RATE", 0.0)
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}", local=tmp_path / "cache", shuffle=True, batch_size=8
    )
    expected = dataset.worker_sample_ids(World(), 0, 0)
    assert _ids(dataset) == [int(i) for i in expected if i >= 0]
    lines = logged.read_text().splitlines()
    first_download = next(k for k, line in enumerate(lines) if line.startswith("download shard."))
    before = [line for line in lines[:first_download] if line.startswith("range shard.")]
    # Each of the first RANGE_LEADING samples by one read, plus each shard's offsets once.
    assert len(before) >= RANGE_LEADING, f"only {len(before)} range reads before a download"
    assert dataset.statistics().range_samples >= RANGE_LEADING


def test_two_workers_range_read_but_download_each_shard_once(
    logged: Path, source: Path, tmp_path: Path
) -> None:
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}",
        local=tmp_path / "cache",
        shuffle=True,
        batch_size=8,
        cold_range_reads=True,
    )
    loader = StreamingDataLoader(
        dataset, batch_size=8, num_workers=2, collate_fn=list, multiprocessing_context="fork"
    )
    seen = [check_sample(s, payload=PAYLOAD) for batch in loader for s in batch]
    assert sorted(seen) == list(range(N))
    lines = Counter(logged.read_text().splitlines())
    downloads = {line: n for line, n in lines.items() if line.startswith("download shard.")}
    assert len(downloads) == len(list(source.glob("shard.*")))
    assert set(downloads.values()) == {1}, "each shard downloaded once per node"
    assert any(line.startswith("range shard.") for line in lines), "samples came by range"


@pytest.mark.parametrize("kind", ["validate_hash", "compressed"])
def test_no_range_reads_where_bytes_cannot_be_checked_or_located(
    kind: str, tmp_path: Path, http_files: HTTPFiles
) -> None:
    options: dict[str, Any] = {"cold_range_reads": True}
    if kind == "validate_hash":
        src = write_mds(tmp_path / "src", 600, size_limit=16_000, payload=PAYLOAD, hashes=["sha1"])
        options["validate_hash"] = "sha1"
    else:
        src = write_mds(
            tmp_path / "src", 600, size_limit=16_000, payload=PAYLOAD, compression="zstd"
        )
    dataset = StreamingDataset(
        remote=_serve(http_files, src), local=tmp_path / "cache", shuffle=True, **options
    )
    assert sorted(_ids(dataset)) == list(range(600))
    stats = dataset.statistics()
    assert stats.range_reads == 0
    assert stats.range_samples == 0


class SlowRangesStore(LoggingStore):
    """Sample range reads take 0.3 s each; downloads run at local-disk speed."""

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        await asyncio.sleep(0.3)
        return await super().read_range(key, start, end)


def test_range_reads_slower_than_the_shards_stop(
    logged: Path, source: Path, tmp_path: Path
) -> None:
    register_store(SCHEME, SlowRangesStore, replace=True)
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}",
        local=tmp_path / "cache",
        shuffle=True,
        batch_size=8,
        cold_range_reads=True,
    )
    assert sorted(_ids(dataset)) == list(range(N))
    stats = dataset.statistics()
    assert 1 <= stats.range_samples < 64, "the reads stopped once the shards were faster"
    assert stats.cache_misses == len(list(source.glob("shard.*")))


class StallingRangesStore(LoggingStore):
    """The first few sample range reads answer; every later one never does."""

    answered = 0

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if StallingRangesStore.answered >= 6:
            await asyncio.sleep(3600)  # a request that hangs (cancelled when dropped)
        StallingRangesStore.answered += 1
        return await super().read_range(key, start, end)


def test_a_stalled_range_read_gives_way_to_the_shards(
    logged: Path, source: Path, tmp_path: Path
) -> None:
    register_store(SCHEME, StallingRangesStore, replace=True)
    StallingRangesStore.answered = 0
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}", local=tmp_path / "cache", shuffle=True, batch_size=8
    )
    expected = dataset.worker_sample_ids(World(), 0, 0)
    # Without a bound on the wait, the consumer would wait on the stalled read forever.
    assert _ids(dataset) == [int(i) for i in expected if i >= 0]
    stats = dataset.statistics()
    assert 1 <= stats.range_samples < RANGE_LEADING
    assert stats.cache_misses == len(list(source.glob("shard.*")))


LANE = 100


class SerialRangesStore(LoggingStore):
    """Range reads served one at a time, 5 ms each (at most 200 requests/s, offsets reads
    included): a server that copies the object for every ranged GET, as moto does."""

    lock: asyncio.Lock | None = None

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        if SerialRangesStore.lock is None:
            SerialRangesStore.lock = asyncio.Lock()
        async with SerialRangesStore.lock:
            await asyncio.sleep(0.005)
            return await super().read_range(key, start, end)


def test_a_lane_slower_than_its_rate_rule_gives_way_to_the_shards(
    logged: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lane of 100 reads (0.6 s here), well within the hold's 2 s: only the rate rule ends it.
    monkeypatch.setattr(ranges, "RANGE_LEADING", LANE)
    monkeypatch.setattr(ranges, "RANGE_BUDGET", LANE)
    register_store(SCHEME, SerialRangesStore, replace=True)
    SerialRangesStore.lock = None  # made on the IO loop at first use
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}", local=tmp_path / "cache", shuffle=True, batch_size=8
    )
    expected = dataset.worker_sample_ids(World(), 0, 0)
    assert _ids(dataset) == [int(i) for i in expected if i >= 0]
    stats = dataset.statistics()
    # The probe passed (2 samples in about 20 ms), the lane then stopped at its judgement.
    assert RANGE_START + RANGE_LANE_JUDGE <= stats.range_samples < LANE
    assert stats.cache_misses == len(list(source.glob("shard.*")))


def test_the_lane_rate_rule_counts_the_nodes_other_consumers(
    logged: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same slow store, but as one of many processes of a node (ranks x DataLoader workers)
    # whose lanes share it: their reads together are fast enough, and the lane runs its course.
    monkeypatch.setattr(ranges, "RANGE_LEADING", LANE)
    monkeypatch.setattr(ranges, "RANGE_BUDGET", LANE)
    monkeypatch.setattr(StreamingDataset, "_consumers", lambda self: 1000)
    register_store(SCHEME, SerialRangesStore, replace=True)
    SerialRangesStore.lock = None
    dataset = StreamingDataset(
        remote=f"{SCHEME}://{source}", local=tmp_path / "cache", shuffle=True, batch_size=8
    )
    expected = dataset.worker_sample_ids(World(), 0, 0)
    assert _ids(dataset) == [int(i) for i in expected if i >= 0]
    assert dataset.statistics().range_samples == LANE
