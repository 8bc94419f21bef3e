"""``validate_hash`` checks every file a sample is read from, not only those it downloads.

A local-only dataset (``local=`` without ``remote=``) is read where it lies, and a cache may hold
shards that a run without ``validate_hash`` downloaded: the check made on the way into the cache
never saw those files. One byte flipped inside one sample of one shard must still never reach
the consumer, on any path (sync, shuffled or not, ``async for``, DataLoader workers,
``dataset[i]``); each file is hashed once per node while it stays the same (a download with the
check counts), and again once it changes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import anyio
import pytest
from torch.utils.data import DataLoader

import astream.engine.cache as cache_module
from astream import FormatError, ShardCorruptError, StreamingDataset
from astream.engine.table import local_only_cache
from astream.format import load_index
from tests.engine.datasets import check_sample, write_mds

PAYLOAD = 4000
N = 2400  # three shards of up to 4 MiB


def _write(root: Path, hashes: list[str] | None = None) -> Path:
    return write_mds(root, N, size_limit=4 << 20, payload=PAYLOAD, hashes=hashes or ["sha1"])


def _flip(root: Path, shard: int, sample: int = 0) -> None:
    """Flip one byte in the middle of sample ``sample`` of shard ``shard`` (not its header),
    keeping the file's size (so only its hash can tell)."""
    path = root / f"shard.{shard:05d}.mds"
    data = bytearray(path.read_bytes())
    (start,) = struct.unpack_from("<I", data, 4 + 4 * sample)
    data[start + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def _shard_ids(root: Path, shard: int) -> range:
    index = load_index((root / "index.json").read_bytes(), source="index.json")
    begin = sum(int(s.samples) for s in index.shards[:shard])
    return range(begin, begin + int(index.shards[shard].samples))


@pytest.fixture
def corrupt_middle(tmp_path: Path) -> Path:
    root = _write(tmp_path / "data")
    _flip(root, 1, sample=3)
    return root


@pytest.mark.parametrize("shuffle", [False, True])
def test_no_sample_of_a_corrupt_shard_read_in_place_is_served(
    corrupt_middle: Path, shuffle: bool
) -> None:
    bad = set(_shard_ids(corrupt_middle, 1))
    dataset = StreamingDataset(local=str(corrupt_middle), validate_hash="sha1", shuffle=shuffle)
    for _ in range(2):  # a failed check is not remembered as passed
        got: list[int] = []
        with pytest.raises(ShardCorruptError, match=r"sha1 of shard\.00001\.mds is"):
            for sample in dataset:
                got.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error
        assert not bad & set(got)
        if not shuffle:
            assert got == list(_shard_ids(corrupt_middle, 0))


def test_async_workers_and_random_access_check_it_too(corrupt_middle: Path) -> None:
    dataset = StreamingDataset(local=str(corrupt_middle), validate_hash="sha1", batch_size=4)
    bad = set(_shard_ids(corrupt_middle, 1))

    async def epoch() -> list[int]:
        got: list[int] = []
        with pytest.raises(ShardCorruptError, match=r"shard\.00001\.mds"):
            async for sample in dataset:
                got.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error
        return got

    for backend in ("asyncio", "trio"):
        assert not bad & set(anyio.run(epoch, backend=backend))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ShardCorruptError, match=r"shard\.00001\.mds"):
        for batch in loader:
            for i, data in zip(batch["id"].tolist(), batch["data"], strict=True):
                assert i not in bad
                check_sample({"id": i, "data": data}, payload=PAYLOAD)
    with pytest.raises(ShardCorruptError, match=r"shard\.00001\.mds"):
        dataset[min(bad) + 5]
    assert check_sample(dataset[N - 1], payload=PAYLOAD) == N - 1


def test_a_file_is_checked_once_and_again_when_it_changes(tmp_path: Path) -> None:
    root = _write(tmp_path / "data")
    dataset = StreamingDataset(local=str(root), validate_hash="sha1")
    assert [check_sample(s, payload=PAYLOAD) for s in dataset] == list(range(N))
    records = local_only_cache(root) / ".astream" / "verified"
    assert sorted(p.name for p in records.iterdir()) == [
        f"shard.{k:05d}.mds.sha1.json" for k in range(3)
    ]
    # Tampered after its check, with its size kept: its mtime tells it changed.
    _flip(root, 2)
    _bump(root / "shard.00002.mds")
    for fresh in (dataset, StreamingDataset(local=str(root), validate_hash="sha1")):
        got: list[int] = []
        with pytest.raises(ShardCorruptError, match=r"shard\.00002\.mds"):
            for sample in fresh:
                got.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error
        assert got == list(range(_shard_ids(root, 2).start))


def test_a_hash_the_index_lacks_is_a_format_error(tmp_path: Path) -> None:
    root = _write(tmp_path / "data", hashes=["md5"])
    dataset = StreamingDataset(local=str(root), validate_hash="sha1")
    with pytest.raises(FormatError, match=r"records no sha1 hash of shard\.00000\.mds"):
        next(iter(dataset))
    # Without validate_hash nothing is checked, as before.
    assert check_sample(next(iter(StreamingDataset(local=str(root)))), payload=PAYLOAD) == 0


def _bump(path: Path) -> None:
    """Move the file's mtime by 1 ns: a change a coarse clock could have hidden."""
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))


def test_shards_cached_without_the_check_are_checked_when_read_with_it(tmp_path: Path) -> None:
    src = _write(tmp_path / "src")
    cache = tmp_path / "cache"
    assert len(list(StreamingDataset(remote=str(src), local=str(cache)))) == N
    _flip(cache, 1, sample=3)  # bit rot, or a hand, in the cache since that run
    _bump(cache / "shard.00001.mds")
    dataset = StreamingDataset(remote=str(src), local=str(cache), validate_hash="sha1")
    got: list[int] = []
    with pytest.raises(ShardCorruptError, match=r"sha1 of shard\.00001\.mds is"):
        for sample in dataset:
            got.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error
    assert got == list(_shard_ids(src, 0))
    with pytest.raises(ShardCorruptError, match=r"shard\.00001\.mds"):
        dataset[_shard_ids(src, 1).start]


def test_a_checked_download_is_not_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _write(tmp_path / "src")
    cache = tmp_path / "cache"
    hashed: list[Path] = []
    real = cache_module.hash_file

    def counting(algo: str, path: Path) -> str:
        hashed.append(Path(path))
        return real(algo, path)

    monkeypatch.setattr(cache_module, "hash_file", counting)
    for _ in range(2):  # the second dataset (new caches, nothing remembered in memory) reads
        dataset = StreamingDataset(remote=str(src), local=str(cache), validate_hash="sha1")
        assert sorted(check_sample(s, payload=PAYLOAD) for s in dataset) == list(range(N))
    assert len(hashed) == 3  # each shard once, on its download
    # Changed in the cache since: checked again, and refused.
    _flip(cache, 2)
    _bump(cache / "shard.00002.mds")
    dataset = StreamingDataset(remote=str(src), local=str(cache), validate_hash="sha1")
    with pytest.raises(ShardCorruptError, match=r"shard\.00002\.mds"):
        for sample in dataset:
            check_sample(sample, payload=PAYLOAD)
    assert hashed[3:] == [cache / "shard.00002.mds"]
