"""``validate_hash`` on a local-only dataset: the shards read in place are checked too.

A local-only dataset (``local=`` without ``remote=``) is read where it lies: nothing downloads
it, so the check made on the way into the cache never sees its files. One byte flipped inside
one sample of one shard must still never reach the consumer, on any path (sync, shuffled or
not, ``async for``, DataLoader workers, ``dataset[i]``); each file is hashed once per node while
it stays the same, and again once it changes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import anyio
import pytest
from torch.utils.data import DataLoader

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
    # Tampered after its check, with its size and (coarse) mtime kept as they were: the inode,
    # size and mtime in ns of the record still tell it changed.
    path = root / "shard.00002.mds"
    before = os.stat(path)
    _flip(root, 2)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
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
