"""A shuffle's working set against cache_limit: warned at construction, with values that fit;
statistics() reports bytes fetched against the dataset's size."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import check_sample, write_mds

from astream import StreamingDataset
from astream.engine.working_set import live_peak
from astream.errors import CacheLimitWarning

SAMPLES = 3000  # about 60 shards of 50 samples


def test_live_peak_counts_shards_from_first_to_last_read() -> None:
    shards = np.asarray([0, 1, 0, 2, 1], dtype=np.int64)
    sizes = np.asarray([[10], [20], [30]], dtype=np.int64)
    # At the 4th read shards 1 (read again later) and 2 are live: 50 bytes.
    assert live_peak(shards, sizes).tolist() == [50]
    # Two streams: each counts its own shards.
    two = np.asarray([[10, 0], [0, 20], [30, 0]], dtype=np.int64)
    assert live_peak(shards, two).tolist() == [30, 20]
    assert live_peak(np.zeros(0, dtype=np.int64), two).tolist() == [0, 0]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mds(tmp_path_factory.mktemp("ws") / "remote", SAMPLES, size_limit=12_000)


def _bytes(remote: Path) -> int:
    return sum(p.stat().st_size for p in remote.glob("shard.*"))


def _dataset(remote: Path, cache: Path, **options: object) -> StreamingDataset:
    return StreamingDataset(remote=str(remote), local=cache, batch_size=1, **options)  # type: ignore[arg-type]


def test_a_small_cache_under_a_wide_shuffle_warns_with_values_that_fit(
    remote: Path, tmp_path: Path
) -> None:
    total = _bytes(remote)
    assert len(list(remote.glob("shard.*"))) >= 40
    limit = total // 2
    # One shuffle block spans every shard: the working set is about the whole dataset.
    wide = {"shuffle": True, "shuffle_block_size": SAMPLES, "cache_limit": limit}
    with pytest.warns(CacheLimitWarning, match=r"cannot hold this shuffle's working set") as seen:
        _dataset(remote, tmp_path / "a", **wide)
    message = str(seen[0].message)
    suggested_limit = re.search(r"cache_limit >= ([\d.]+ [KMG]?B)", message)
    suggested_block = re.search(r"shuffle_block_size=(\d+)(?! over)", message.split("Use ")[1])
    assert suggested_limit and suggested_block, message
    block = int(suggested_block.group(1))
    assert 0 < block < SAMPLES
    # Each suggestion fits on its own: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheLimitWarning)
        _dataset(remote, tmp_path / "b", **{**wide, "shuffle_block_size": block})
        _dataset(remote, tmp_path / "c", **{**wide, "cache_limit": suggested_limit.group(1)})
        # Unshuffled, or without a limit, nothing to check.
        _dataset(remote, tmp_path / "d", cache_limit=limit)
        _dataset(remote, tmp_path / "e", shuffle=True, shuffle_block_size=SAMPLES)


def test_statistics_report_bytes_fetched_against_the_dataset(remote: Path, tmp_path: Path) -> None:
    total = _bytes(remote)
    dataset = _dataset(remote, tmp_path / "cold", shuffle=True)
    assert sorted(check_sample(s) for s in dataset) == list(range(SAMPLES))
    stats = dataset.statistics()
    assert stats.dataset_bytes == total
    assert stats.fetched_ratio == pytest.approx(1.0), "a cold epoch fetches each shard once"
    # Under a cache that cannot hold the shuffle, shards come again: the ratio shows it.
    with pytest.warns(CacheLimitWarning):
        small = _dataset(
            remote,
            tmp_path / "small",
            shuffle=True,
            shuffle_block_size=SAMPLES,
            cache_limit=total // 2,
        )
    # A fifth of the epoch already fetched more than the whole dataset.
    it = iter(small)
    first = [check_sample(s) for s in itertools.islice(it, SAMPLES // 5)]
    it.close()  # type: ignore[attr-defined]
    assert len(set(first)) == SAMPLES // 5
    assert small.statistics().fetched_ratio > 1.5


@pytest.mark.parametrize("shards", [7, 70_000])
def test_window_plan_orders_shards_by_first_need(shards: int) -> None:
    # Both sorts (16-bit radix keys, and int64 keys past 65536 shards) give what np.unique and
    # a stable argsort give: each shard's first position, in need order, and each next use.
    from astream.engine.window import WindowConfig, WindowPlan

    rng = np.random.default_rng(3)
    shard_of = rng.integers(0, min(shards, 40), 5000).astype(np.int64) * (shards // 40 or 1)
    plan = WindowPlan(shard_of, np.ones(shards, dtype=np.int64), WindowConfig())
    uniq, first = np.unique(shard_of, return_index=True)
    need = np.argsort(first, kind="stable")
    assert plan.order == uniq[need].tolist()
    assert plan.first == first[need].tolist()
    expected = [-1] * len(shard_of)
    later: dict[int, int] = {}
    for k in range(len(shard_of) - 1, -1, -1):
        expected[k] = later.get(int(shard_of[k]), -1)
        later[int(shard_of[k])] = k
    assert plan.next_use.tolist() == expected
    empty = WindowPlan(np.zeros(0, dtype=np.int64), np.ones(shards, dtype=np.int64), WindowConfig())
    assert (empty.order, empty.first, empty.next_use.tolist()) == ([], [], [])
