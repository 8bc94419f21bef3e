"""With ``validate_hash``, no sample of a shard is served before its hash verifies (issue 13.1).

One byte flipped inside one sample of one shard: read-while-downloading (on by default for
uncompressed MDS) must not serve any sample of that shard from the partial download, on any
path (sync, ``async for``, DataLoader workers, ``dataset[i]``), over a local remote, HTTP and
S3; the shard's ShardCorruptError is raised where its first sample would be consumed, every
epoch. And read-while-downloading checks a shard's header as ``open_shard`` does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from torch.utils.data import DataLoader

from astream import ShardCorruptError, StreamingDataset
from astream.format import load_index
from tests.engine.datasets import check_sample, write_mds
from tests.engine.test_dataset import _serve_http, _upload_dir, s3_env

__all__ = ["s3_env"]  # a fixture this module uses

PAYLOAD = 4000
N = 2400  # about 10 MB: three shards of up to 4 MiB, each downloaded in several parts


def _write(root: Path) -> Path:
    return write_mds(root, N, size_limit=4 << 20, payload=PAYLOAD, hashes=["sha1"])


def _flip(root: Path, shard: int, sample: int = 0) -> None:
    """Flip one byte in the middle of sample ``sample`` of shard ``shard`` (not its header)."""
    path = root / f"shard.{shard:05d}.mds"
    data = bytearray(path.read_bytes())
    (start,) = struct.unpack_from("<I", data, 4 + 4 * sample)
    data[start + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def _first_shard_samples(root: Path) -> int:
    index = load_index((root / "index.json").read_bytes(), source="index.json")
    return int(index.shards[0].samples)


@pytest.fixture(scope="module")
def corrupt_first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _write(tmp_path_factory.mktemp("corrupt0"))
    _flip(root, 0)
    return root


@pytest.fixture(params=["local", "http", "s3"])
def remote(request: pytest.FixtureRequest, corrupt_first: Path) -> str:
    if request.param == "local":
        return str(corrupt_first)
    if request.param == "http":
        return _serve_http(request.getfixturevalue("http_files"), corrupt_first)
    return _upload_dir(request.getfixturevalue("s3_env"), corrupt_first)


def _consume(samples: Iterator[dict[str, Any]], into: list[int]) -> None:
    for sample in samples:
        into.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error


def test_no_sample_of_a_corrupt_shard_is_served(remote: str, tmp_path: Path) -> None:
    dataset = StreamingDataset(remote=remote, local=tmp_path / "cache", validate_hash="sha1")
    for _ in range(3):  # every epoch: a failed shard is never cached, and fails again
        got: list[int] = []
        with pytest.raises(ShardCorruptError, match=r"sha1 of shard\.00000\.mds"):
            _consume(iter(dataset), got)
        assert got == []


def test_the_error_comes_where_the_shard_is_first_needed(tmp_path: Path) -> None:
    src = _write(tmp_path / "src")
    _flip(src, 1, sample=3)
    dataset = StreamingDataset(remote=src, local=tmp_path / "cache", validate_hash="sha1")
    for _ in range(2):
        got: list[int] = []
        with pytest.raises(ShardCorruptError, match=r"shard\.00001\.mds"):
            _consume(iter(dataset), got)
        assert got == list(range(_first_shard_samples(src)))


def test_async_workers_and_random_access_refuse_it_too(corrupt_first: Path, tmp_path: Path) -> None:
    dataset = StreamingDataset(
        remote=str(corrupt_first), local=tmp_path / "cache", validate_hash="sha1", batch_size=4
    )

    async def epoch() -> list[int]:
        got: list[int] = []
        with pytest.raises(ShardCorruptError):
            async for sample in dataset:
                got.append(check_sample(sample, payload=PAYLOAD))  # noqa: PERF401 - kept on error
        return got

    for backend in ("asyncio", "trio"):
        assert anyio.run(epoch, backend=backend) == []
    # fork, not spawn: the error comes from the first shard, and a spawned worker still starting
    # when the abandoned iterator is collected cannot unpickle its queue's semaphore (exit 1,
    # which torch then reports from the iterator's __del__ in a later test).
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ShardCorruptError):
        for batch in loader:
            for i, data in zip(batch["id"].tolist(), batch["data"], strict=True):
                check_sample({"id": i, "data": data}, payload=PAYLOAD)
    with pytest.raises(ShardCorruptError):
        dataset[5]  # a range read cannot be checked: the shard is fetched whole, and fails
    last = N - 1
    assert check_sample(dataset[last], payload=PAYLOAD) == last


def test_early_reads_check_the_header(http_files: Any, tmp_path: Path) -> None:
    src = write_mds(tmp_path / "src", N, size_limit=4 << 20, payload=PAYLOAD)
    path = src / "shard.00000.mds"
    data = bytearray(path.read_bytes())
    (count,) = struct.unpack_from("<I", data, 0)
    struct.pack_into("<I", data, 0, count + 1)  # the index still says count
    path.write_bytes(bytes(data))
    url = _serve_http(http_files, src)
    dataset = StreamingDataset(remote=url, local=tmp_path / "cache")
    got: list[int] = []
    with pytest.raises(ShardCorruptError, match=f"header says {count + 1} samples"):
        _consume(iter(dataset), got)
    assert got == []
