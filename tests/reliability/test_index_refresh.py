"""A cache never pairs an old index with a rewritten remote's shards.

Every start reads the remote's index (as mosaicml-streaming does); when it changed, the shards
whose entries changed leave the cache before the new index replaces the old. An unreachable
store falls back to the cached index with a warning; a changed shard that another reader still
holds is a clear conflict, not a silent mix of versions.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from reliability_data import check, write_dataset

from astream import StreamingDataset
from astream.engine.cache import ShardCache
from astream.errors import CacheConflictError, CachedIndexWarning
from tests.servers.http_files import http_file_server

N = 40


def _read(remote: str | Path, cache: Path, size: int = 64, **kwargs: Any) -> list[tuple[int, int]]:
    dataset = StreamingDataset(remote=str(remote), local=cache, batch_size=1, **kwargs)
    return sorted(check(sample, size) for sample in dataset)


def _rewrite(remote: Path, **kwargs: Any) -> None:
    shutil.rmtree(remote)
    write_dataset(remote, N, **kwargs)


def test_a_rewrite_with_hashes_is_read_as_rewritten(tmp_path: Path) -> None:
    # Same basenames, same sizes: only the recorded hashes tell the versions apart.
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    write_dataset(remote, N, generation=0, hashes=["sha1"])
    assert _read(remote, cache) == [(0, i) for i in range(N)]
    _rewrite(remote, generation=1, hashes=["sha1"])
    assert _read(remote, cache) == [(1, i) for i in range(N)]


def test_a_rewrite_with_other_sizes_is_read_as_rewritten(tmp_path: Path) -> None:
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    write_dataset(remote, N, generation=0, size=64)
    assert _read(remote, cache) == [(0, i) for i in range(N)]
    _rewrite(remote, generation=1, size=100)
    assert _read(remote, cache, size=100) == [(1, i) for i in range(N)]


def test_an_unchanged_remote_keeps_its_cached_shards(tmp_path: Path) -> None:
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    write_dataset(remote, N, hashes=["sha1"])
    _read(remote, cache)
    before = {p.name: p.stat().st_ino for p in cache.glob("*.mds")}
    assert before
    assert _read(remote, cache) == [(0, i) for i in range(N)]
    assert {p.name: p.stat().st_ino for p in cache.glob("*.mds")} == before


def test_an_unreachable_store_falls_back_to_the_cached_index(tmp_path: Path) -> None:
    served, cache = tmp_path / "served", tmp_path / "cache"
    write_dataset(served / "ds", N)
    with http_file_server(served) as server:
        url = f"{server.url}/ds"
        assert _read(url, cache) == [(0, i) for i in range(N)]
    # The server is gone: the cache holds every shard and the index.
    with pytest.warns(CachedIndexWarning, match="using the index the cache"):
        got = _read(url, cache, download_retry=0, download_timeout=5)
    assert got == [(0, i) for i in range(N)]


def test_a_changed_shard_another_reader_holds_is_a_conflict(tmp_path: Path) -> None:
    remote, cache = tmp_path / "remote", tmp_path / "cache"
    write_dataset(remote, N, generation=0, hashes=["sha1"])
    old = StreamingDataset(remote=str(remote), local=cache, batch_size=1)
    assert sorted(check(sample) for sample in old) == [(0, i) for i in range(N)]
    # Another process reading shard 0 of the old version pins it (as readers under a
    # cache_limit do), so it cannot be swapped for the new version's under it.
    with ShardCache(cache).pin(old.table.shards[0]) as path:
        _rewrite(remote, generation=1, hashes=["sha1"])
        with pytest.raises(CacheConflictError, match="rewritten since the cache"):
            StreamingDataset(remote=str(remote), local=cache, batch_size=1)
        assert path.exists()
    assert _read(remote, cache) == [(1, i) for i in range(N)]
